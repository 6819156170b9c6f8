"""ELBO bookkeeping and the agreement metrics the paper reports.

* :func:`evaluate_elbo`: held-out ELBO (one reparameterised sample per image).
* :func:`pearson`: linear correlation of a latent with a known factor.
* :func:`circular_correlation_js`: Jammalamadaka & SenGupta (the paper's number).
* :func:`circular_correlation_fl`: Fisher & Lee, which needs no mean directions and is stable
  when the true angles are uniform.
* :func:`angle_alignment`: mean resultant length of the angle error, best over a global
  offset and a reflection (1 = the angles agree up to a global rotation).
* :func:`frame_drift` / :func:`circular_correlation_fl_within_state`: the part of the angle
  error that follows the inferred state z (which frame a flexible particle's pose is
  measured in), and Fisher-Lee without it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from napari_spatial_vae.core.step import summed_terms

# A latent dimension whose KL stays below this many nats per image carries (almost) nothing
# about the images: the posterior equals the prior, the decoder ignores it (posterior collapse).
COLLAPSED_NATS = 0.5

# A model whose held-out particles fit better a half turn away from their inferred pose this
# often has learned some of them upside down (docs/defaults.md: healthy runs stay below it)
HALF_TURN_WARNING_SHARE = 0.03
# Held-out images the share is measured on (the first ones, whole batches): enough to tell
# 3 % from 6 %, and a few percent of an epoch's time instead of doubling the evaluation
HALF_TURN_SAMPLE = 256
# Share of the schedule after which ``half_turn_check="auto"`` may switch the check on, and
# the number of epochs in a row that must show the fault
HALF_TURN_SWITCH_FROM = 0.3
HALF_TURN_SWITCH_EPOCHS = 2


@dataclass(frozen=True)
class EpochMetrics:
    """Per-image averages over an epoch or a held-out set (nats; ``elbo`` is the ELBO itself).

    ``kl_z_dims`` holds the KL of each z dimension (``kl_z`` is their sum). ``binned`` is the
    share of a training epoch's steps that compared 2x2-binned particles (coarse-to-fine):
    their ELBO covers a quarter of the pixels and is not comparable with full-size epochs.
    ``half_turn_better`` (held-out sets only, None where the model cannot tell) is the share
    of images the half turn of their inferred pose fits better
    (:meth:`~.model.SpatialVAE.half_turn_fits_better`), over the first
    :data:`HALF_TURN_SAMPLE` or so.
    """

    elbo: float
    recon: float
    kl: float
    kl_theta: float
    kl_shift: float
    kl_z: float
    kl_z_dims: tuple[float, ...] = ()
    binned: float = 0.0
    half_turn_better: float | None = None

    @classmethod
    def from_sums(cls, sums: list[float], count: int) -> EpochMetrics:
        """From summed ``[-elbo, recon, kl_theta, kl_shift, kl_z, kl_z1..]`` over ``count``."""
        neg_elbo, recon, kl_theta, kl_shift, kl_z, *dims = (s / max(count, 1) for s in sums)
        return cls(
            -neg_elbo, recon, kl_theta + kl_shift + kl_z, kl_theta, kl_shift, kl_z, tuple(dims)
        )

    def as_row(self, epoch: int, split: str, lr: float, seconds: float) -> dict[str, Any]:
        """A ``history.csv`` row (one ``kl_zK`` column per z dimension)."""
        values = {k: v for k, v in self.__dict__.items() if k != "kl_z_dims"}
        per_dim = {f"kl_z{k + 1}": v for k, v in enumerate(self.kl_z_dims)}
        return {"epoch": epoch, "split": split, "lr": lr, "seconds": round(seconds, 3),
                **values, **per_dim}  # fmt: skip

    def collapsed_dims(self) -> list[int]:
        """1-based z dimensions that carry less than :data:`COLLAPSED_NATS` per image."""
        return [k + 1 for k, kl in enumerate(self.kl_z_dims) if kl < COLLAPSED_NATS]


def describe_latent_use(metrics: EpochMetrics) -> str:
    """``"KL per z dim 3.21 0.02"``: what each latent dimension carries, in nats per image."""
    return "KL per z dim " + " ".join(f"{kl:.2f}" for kl in metrics.kl_z_dims)


def collapse_warning(metrics: EpochMetrics, epoch: int, z_delay: int) -> str | None:
    """One line naming the z dimensions that collapsed, with what to try; None if none did.

    Parameters
    ----------
    metrics
        The last epoch's metrics (held-out ones where there are).
    epoch, z_delay
        The epoch they are from and the run's z-delay: z is frozen (KL 0) during the delay
        and needs an epoch to start carrying information, so earlier epochs never warn.
    """
    dims = metrics.collapsed_dims()
    if not dims or epoch < z_delay + 2:
        return None
    names = ", ".join(f"z{k}" for k in dims)
    values = ", ".join(f"{metrics.kl_z_dims[k - 1]:.2f}" for k in dims)
    some = "some of z" if len(dims) < len(metrics.kl_z_dims) else "z"
    return (
        f"{names} carr{'ies' if len(dims) == 1 else 'y'} almost nothing ({values} nats per "
        f"image, below {COLLAPSED_NATS}): the model explains the images without "
        f"{some} (posterior collapse); if the particles move, train longer (--epochs, "
        f"--max-minutes){', without a z delay (--z-delay 0)' if z_delay else ''} or with "
        "fewer latent dimensions (--z-dim), and see docs/defaults.md"
    )


def shows_half_turn_fault(share: float | None) -> bool:
    """Whether a held-out share that fits better turned by 180 degrees (``half_turn_better``)
    is the fault: a minority, but more than :data:`HALF_TURN_WARNING_SHARE`."""
    # the fault turns a minority (one end of the motion); when most particles fit better
    # turned, they look alike both ways up (a symmetric particle, noise-free data where any
    # misfit is many nats) or the model is far from trained: not this fault
    return share is not None and HALF_TURN_WARNING_SHARE <= share <= 0.5


def switches_half_turn_check(shares: Sequence[float | None], schedule_progress: float) -> bool:
    """Whether a run with ``half_turn_check="auto"`` turns the check on after this epoch.

    Parameters
    ----------
    shares
        The held-out ``half_turn_better`` of the epochs so far, this one last.
    schedule_progress
        Share of the run's schedule done (0..1). Not before :data:`HALF_TURN_SWITCH_FROM`:
        in the first epochs the particles' poses still swing (the coarse phase).

    Notes
    -----
    The fault has to show in :data:`HALF_TURN_SWITCH_EPOCHS` epochs in a row: a healthy run
    can turn a few percent of its particles for one epoch and take them back the next (the
    project's hinge did at epochs 6, 10, 13 and 26), while a run that learned part of the
    motion upside down keeps them.
    """
    recent = list(shares)[-HALF_TURN_SWITCH_EPOCHS:]
    return (
        schedule_progress >= HALF_TURN_SWITCH_FROM
        and len(recent) == HALF_TURN_SWITCH_EPOCHS
        and all(shows_half_turn_fault(share) for share in recent)
    )


def half_turn_warning(metrics: EpochMetrics, half_turn_check: str) -> str | None:
    """One line when the run ends with the half-turn fault (:func:`shows_half_turn_fault`)
    and the check ``"off"``; else None (with "auto" the run switches the check on itself)."""
    share = metrics.half_turn_better
    if half_turn_check != "off" or share is None or not shows_half_turn_fault(share):
        return None
    return (
        f"{100 * share:.1f} % of the held-out particles fit better turned by 180 degrees than "
        "at their inferred pose: the model may have learned part of the motion upside down "
        "(z then carries the flip); train again with the half-turn check "
        "(--half-turn-check auto or on), see docs/defaults.md"
    )


@torch.no_grad()
def evaluate_elbo(
    model: Any,
    feeder: Any,
    batch_size: int,
    generator: torch.Generator | None = None,
    freeze_z: bool = False,
    ctf: Any | None = None,
) -> EpochMetrics:
    """Average ELBO terms of ``model`` over every image a feeder serves (no augmentation).

    Parameters
    ----------
    model
        A :class:`~napari_spatial_vae.core.model.SpatialVAE`.
    feeder
        An :class:`~napari_spatial_vae.core.data.ImageFeeder`.
    ctf
        A :class:`~napari_spatial_vae.core.ctf.CtfBatches` over the feeder's images (same
        positions), or None when the model ignores the CTF.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(5 + model.config.z_dim, dtype=torch.float64, device=device)
    turned = None if freeze_z else torch.zeros((), dtype=torch.float64, device=device)
    checked = 0
    for start, batch in zip(
        range(0, len(feeder), batch_size), feeder.batches(batch_size), strict=True
    ):
        filters = None
        if ctf is not None:
            filters = ctf.filters(torch.arange(start, start + len(batch)))
        terms = model.loss_terms(batch, freeze_z=freeze_z, generator=generator, ctf=filters)
        sums += summed_terms(terms)
        if turned is not None and checked < HALF_TURN_SAMPLE:
            # (z-delay epochs skip it: with z frozen the turned particle's own z is unused)
            better = model.half_turn_fits_better(batch, filters)
            turned = None if better is None else turned + better.sum()
            checked += len(batch)
    model.train(was_training)
    metrics = EpochMetrics.from_sums(sums.cpu().tolist(), len(feeder))
    if turned is None or checked == 0:
        return metrics
    return replace(metrics, half_turn_better=float(turned) / checked)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two ``(N,)`` arrays (0 when either is constant)."""
    a = np.asarray(a, dtype=np.float64) - np.mean(a)
    b = np.asarray(b, dtype=np.float64) - np.mean(b)
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def ranks(values: np.ndarray) -> np.ndarray:
    """``(N,)`` 1-based ranks of ``values`` ``(N,)``, ties given their average rank."""
    _, inverse, counts = np.unique(np.asarray(values), return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return (last - (counts - 1) / 2.0)[inverse.ravel()]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two ``(N,)`` arrays (0 when either is constant).

    Unlike :func:`pearson` it does not depend on the latent's scale along the motion: a z
    that follows the motion's order exactly reads 1 whatever shape its prior gives it.
    """
    return pearson(ranks(a), ranks(b))


def multiple_correlation(latents: np.ndarray, target: np.ndarray) -> float:
    """How well a linear function of all latents predicts ``target``: the multiple R.

    With one latent this is |Pearson|. With several it does not depend on how the latent
    space is rotated: an isotropic prior leaves the axes of a multi-dimensional z free to mix
    independent motions, which the per-axis |Pearson| would count as missing.

    Parameters
    ----------
    latents
        ``(N, D)`` latent values.
    target
        ``(N,)`` the quantity to predict (a conformation).

    Returns
    -------
    float
        ``sqrt(R^2)`` of the least-squares fit with an intercept, in 0..1.
    """
    x = np.asarray(latents, dtype=np.float64).reshape(len(target), -1)
    y = np.asarray(target, dtype=np.float64) - np.mean(target)
    x = x - x.mean(0)
    total = (y * y).sum()
    if total == 0 or not x.any():
        return 0.0
    coefficients, *_ = np.linalg.lstsq(x, y, rcond=None)
    explained = 1.0 - ((y - x @ coefficients) ** 2).sum() / total
    return float(np.sqrt(np.clip(explained, 0.0, 1.0)))


def sum_and_difference(latents: np.ndarray, motions: np.ndarray) -> tuple[float, float]:
    """How well all latents read two motions' sum and their difference (multiple R each).

    Both domains moving the same way (the sum) is, for two in-plane hinges, nearly a turn of
    the whole particle, which the inferred rotation can take instead of z; the difference
    no turn imitates. A z that reads the difference and misses the sum lost a motion to the
    rotation (docs/defaults.md, "Two motions: the rotation takes their sum").

    Parameters
    ----------
    latents
        ``(N, D)`` latent values.
    motions
        ``(N, 2)`` the two motions' true states, each on its own scale (-1..1 in the
        simulators).

    Returns
    -------
    tuple of float
        ``multiple_correlation`` of ``latents`` with ``motions[:, 0] + motions[:, 1]`` and
        with ``motions[:, 0] - motions[:, 1]``.
    """
    motions = np.asarray(motions, dtype=np.float64).reshape(len(latents), 2)
    return (
        multiple_correlation(latents, motions[:, 0] + motions[:, 1]),
        multiple_correlation(latents, motions[:, 0] - motions[:, 1]),
    )


def angle_error_from_motions(estimated: np.ndarray, true: np.ndarray, motions: np.ndarray) -> float:
    """How much of the rotation's error a linear function of the motions explains.

    The multiple correlation of ``aligned_angle_errors(estimated, true)`` with the true
    motions: near 1 when the inferred frame turns with the conformation (a motion taken by
    the rotation, see :func:`sum_and_difference`), near 0 when the error is noise.

    Parameters
    ----------
    estimated, true
        ``(N,)`` angles in radians.
    motions
        ``(N, M)`` the motions' true states.
    """
    return multiple_correlation(motions, aligned_angle_errors(estimated, true))


# Particles whose angle error exceeds this are turned off, not drifting with their state:
# left out of :func:`sum_with_angle_error` (0.2-1.7 % of the kept two-motion runs)
FAR_OFF_DEG = 30.0


def sum_with_angle_error(
    latents: np.ndarray, estimated: np.ndarray, true: np.ndarray, motions: np.ndarray
) -> float:
    """How well z and the rotation's error together read two motions' sum (multiple R).

    Where the rotation took part of the sum (:func:`sum_and_difference`), the part z lacks
    should be in the frame's turn: a linear function of the latents and of each particle's
    angle error then reads the sum even where the latents alone do not. Near 1 means the
    sum is split between z and the frame, not lost. Particles turned more than
    ``FAR_OFF_DEG`` off are left out (their error is a misalignment, not a drift).

    Parameters
    ----------
    latents
        ``(N, D)`` latent values.
    estimated, true
        ``(N,)`` angles in radians.
    motions
        ``(N, 2)`` the two motions' true states.
    """
    latents = np.asarray(latents, dtype=np.float64).reshape(len(estimated), -1)
    motions = np.asarray(motions, dtype=np.float64).reshape(len(estimated), 2)
    errors = aligned_angle_errors(estimated, true)
    near = np.abs(errors) <= np.radians(FAR_OFF_DEG)
    if not near.any():
        return 0.0
    return multiple_correlation(np.c_[latents, errors][near], motions[near, 0] + motions[near, 1])


def circular_mean(angles: np.ndarray) -> float:
    """Mean direction of ``(N,)`` angles in radians."""
    return float(np.arctan2(np.sin(angles).sum(), np.cos(angles).sum()))


def circular_correlation_js(a: np.ndarray, b: np.ndarray) -> float:
    """Jammalamadaka-SenGupta circular correlation of two ``(N,)`` angle arrays (radians).

    Depends on the sample mean directions, which are ill-defined for uniform angles, so it
    fluctuates a lot there; see :func:`circular_correlation_fl` for a stable alternative.
    """
    sa, sb = np.sin(a - circular_mean(a)), np.sin(b - circular_mean(b))
    denominator = np.sqrt((sa * sa).sum() * (sb * sb).sum())
    return float((sa * sb).sum() / denominator) if denominator > 0 else 0.0


def circular_correlation_fl(a: np.ndarray, b: np.ndarray) -> float:
    """Fisher-Lee circular correlation of two ``(N,)`` angle arrays (radians).

    ``sum_{i<j} sin(a_i - a_j) sin(b_i - b_j) / sqrt(sum sin^2(a_i - a_j) sum sin^2(b_i - b_j))``,
    computed in O(N) from the trigonometric moments. Invariant to rotating either set.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)

    def moments(x: np.ndarray, y: np.ndarray) -> float:
        # sum_{i,j} sin(x_i - x_j) sin(y_i - y_j) = 2 [ (S_cc S_ss) - (S_cs S_sc) ] with sums
        cx, sx, cy, sy = np.cos(x), np.sin(x), np.cos(y), np.sin(y)
        return float(2 * ((cx * cy).sum() * (sx * sy).sum() - (cx * sy).sum() * (sx * cy).sum()))

    denominator = np.sqrt(moments(a, a) * moments(b, b))
    return float(moments(a, b) / denominator) if denominator > 0 else 0.0


def aligned_angle_errors(estimated: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``(N,)`` errors of estimated angles, radians in (-pi, pi], after the best global offset.

    ``estimated - true``, or ``estimated + true`` where the estimate runs the other way (a
    reflection of the angle direction), whichever is more concentrated, centred on its
    circular mean: what is left is each particle's own error.
    """
    estimated, true = np.asarray(estimated, np.float64), np.asarray(true, np.float64)
    errors = max(
        (estimated - true, estimated + true),
        key=lambda e: float(np.abs(np.mean(np.exp(1j * e)))),
    )
    return np.angle(np.exp(1j * (errors - circular_mean(errors))))


# Degree of the polynomial in z that describes the frame drift: a hinge's drift is smooth
# in z (linear and cubic fits left the same residual on the kept CTF runs, docs/results.md)
FRAME_DRIFT_DEGREE = 3


def frame_drift(
    estimated: np.ndarray, true: np.ndarray, latents: np.ndarray, degree: int = FRAME_DRIFT_DEGREE
) -> np.ndarray:
    """``(N,)`` the part of each angle error (radians) that is a smooth function of z.

    A flexible particle has no single "right" frame: the simulator measures the angle on one
    domain, while a model (like a consensus 2D alignment) overlays the whole particle, so its
    angle drifts from the simulator's by an amount that depends on the conformation alone.
    That drift changes no particle's alignment to the others in its state (averages,
    subsets, the aligned particles), only which part of the particle stands still along z.

    Fitted by least squares, a polynomial of ``degree`` in the ``(N, Z)`` latents (all
    monomials, z standardised first) to :func:`aligned_angle_errors`, on the particles
    aligned within 45 degrees: a far-off or half-turned particle is a wrong pose, not a frame.
    """
    errors = aligned_angle_errors(estimated, true)
    z = np.asarray(latents, np.float64).reshape(len(errors), -1)
    z = (z - z.mean(0)) / np.maximum(z.std(0), 1e-12)
    columns = [np.ones(len(z))] + [
        np.prod(z[:, list(combination)], axis=1)
        for power in range(1, degree + 1)
        for combination in itertools.combinations_with_replacement(range(z.shape[1]), power)
    ]
    features = np.stack(columns, axis=1)
    near = np.abs(errors) < np.pi / 4
    if near.sum() <= features.shape[1]:
        return np.zeros_like(errors)
    coefficients, *_ = np.linalg.lstsq(features[near], errors[near], rcond=None)
    return features @ coefficients


def circular_correlation_fl_within_state(
    estimated: np.ndarray, true: np.ndarray, latents: np.ndarray
) -> float:
    """Fisher-Lee of ``(N,)`` angles once the :func:`frame_drift` along ``(N, Z)`` z is removed.

    1 when every particle is aligned exactly to the others of its state, whatever frame the
    model measures each state in; the plain :func:`circular_correlation_fl` also counts the
    frame. The drift is subtracted from the estimate (an error is the estimate minus, or
    mirrored plus, the truth: either way the estimate enters with sign +1).
    """
    corrected = np.asarray(estimated, np.float64) - frame_drift(estimated, true, latents)
    return circular_correlation_fl(corrected, true)


def angle_alignment(estimated: np.ndarray, true: np.ndarray) -> float:
    """Mean resultant length of ``estimated - true``, best over a global offset and reflection.

    1 means the estimate equals the truth up to one global rotation (and possibly a
    reflection of the angle direction); 0 means unrelated.
    """
    return float(np.abs(np.mean(np.exp(1j * aligned_angle_errors(estimated, true)))))


def half_turned(estimated: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: which estimated angles are a half turn away from the rest (radians).

    The angle errors ``estimated - true`` (or ``+ true`` when the direction is mirrored,
    whichever is more concentrated) are centred on their best global offset modulo a half
    turn; an error beyond 90 degrees from it counts as flipped, and the smaller of the two
    groups is the flipped one.
    """
    estimated, true = np.asarray(estimated, np.float64), np.asarray(true, np.float64)
    errors = max(
        (estimated - true, estimated + true),
        key=lambda e: float(np.abs(np.mean(np.exp(2j * e)))),
    )
    offset = np.angle(np.mean(np.exp(2j * errors))) / 2.0
    centred = np.angle(np.exp(1j * (errors - offset)))
    flipped = np.abs(centred) > np.pi / 2
    return ~flipped if flipped.mean() > 0.5 else flipped


def half_turn_fraction(estimated: np.ndarray, true: np.ndarray) -> float:
    """Share of ``(N,)`` estimated angles a half turn away from the rest (:func:`half_turned`).

    0: no particle aligned upside down; up to 0.5.
    """
    return float(np.mean(half_turned(estimated, true)))
