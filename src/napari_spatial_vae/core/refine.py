"""Refining each particle's z against the trained generator (inference only).

The encoder's z is an amortised guess: one network maps every particle to its posterior mean
in a single pass, and it ends training short of what the generator itself would choose for
the particle (the amortisation gap). With the pose the encoder found held fixed, a few
gradient steps on z towards the mode of ``log p(y | pose, z) + log p(z)`` close much of that
gap: on simulated particles at SNR 0.5 |Pearson(z, conformation)| rose on every run, by up
to 0.04; at SNR 0.1 it was mixed (docs/defaults.md, "z refined against the generator").

The steps are Adam's, which scales every coordinate by its own gradient history, so each
particle's path depends on that particle alone (not on the others in its batch), and each
particle keeps the best z it visited: its cost never rises above that of the encoder's z.

Each rendering is scaled to its particle before the comparison (:func:`.losses.fitted_amplitude`):
per-image standardisation gives a noisier particle less signal than the model was trained
on, and without the scale the fit drifted towards z of lower contrast (on SNR 0.1 particles
of a model trained at SNR 0.5 the refinement then scored below the encoder's z; with it,
about level with it and above on most designs; at the training SNR it changes nothing).
"""

from __future__ import annotations

import torch

from napari_spatial_vae.core.config import REFINE_Z_STEP_SIZE, REFINE_Z_STEPS
from napari_spatial_vae.core.layout import PixelLayout
from napari_spatial_vae.core.model import SpatialVAE

# particles refined at once: the backward pass keeps the generator's activations for every
# pixel of every particle in the chunk (with the default model on 64 x 64 images, 2 x 2 bins,
# peak RSS rose by 75 MB: benchmarks/infer_large.py --model defaults)
REFINE_Z_CHUNK = 256


def map_cost(
    model: SpatialVAE,
    targets: torch.Tensor,
    theta: torch.Tensor | None,
    shift: torch.Tensor | None,
    z: torch.Tensor,
    ctf: torch.Tensor | None = None,
    layout: PixelLayout | None = None,
) -> torch.Tensor:
    """``-log p(y | theta, shift, a z) - log p(z)`` up to a constant, ``(B,)`` nats.

    ``targets`` ``(B, C, N)`` modelled pixels of ``layout``; ``z`` ``(B, Z)``; the rest as
    in :meth:`SpatialVAE.fit_nll`; ``a`` each particle's fitted amplitude of the rendering.
    """
    nll = model.fit_nll(targets, theta, shift, z, ctf, layout, fit_amplitude=True)
    return nll + 0.5 * (z**2).sum(1)


def refine_z(
    model: SpatialVAE,
    images: torch.Tensor,
    theta: torch.Tensor | None,
    shift: torch.Tensor | None,
    z: torch.Tensor,
    ctf: torch.Tensor | None = None,
    steps: int = REFINE_Z_STEPS,
    step_size: float = REFINE_Z_STEP_SIZE,
    binning: int | None = None,
) -> torch.Tensor:
    """Move each particle's z towards the generator's mode at the particle's pose.

    Parameters
    ----------
    model
        A trained model (left unchanged: no gradient reaches its parameters).
    images
        ``(B, C, H, W)`` preprocessed particles, as the model was trained on.
    theta, shift
        ``(B,)`` radians and ``(B, 2)`` coordinate units (or None): the pose, held fixed.
    z
        ``(B, Z)`` the encoder's posterior mean, the starting point.
    ctf
        ``(B, H, W // 2 + 1)`` the particles' CTF filters when the model was trained with
        them (the rendering is compared with the data as in training), else None.
    steps, step_size
        Adam steps and step size (z units).
    binning
        Compare ``b x b`` bins of the particles with renderings of the bins' centres; default
        2 where the model can render them (:attr:`SpatialVAE.coarse_binning`), else 1. On the
        tune designs 2 x 2 bins gained nearly as much as full-size images at a third of the cost,
        and more on particles noisier than the training set (docs/defaults.md).

    Returns
    -------
    torch.Tensor
        ``(B, Z)`` the lowest-cost z each particle visited (its starting z if no step helped).
    """
    if steps < 0:
        raise ValueError(f"refinement steps must be 0 or more, got {steps}")
    if steps == 0 or z.shape[1] == 0:
        return z
    layout = model.binned_layout(model.coarse_binning if binning is None else binning)
    targets = layout.targets(images)
    # the backward pass keeps every hidden activation of the generator (B x pixels x hidden):
    # chunks bound that memory whatever the inference batch (each particle is refined on its
    # own, so chunking changes nothing in the result)
    parts = []
    for rows in torch.split(torch.arange(len(z), device=z.device), REFINE_Z_CHUNK):
        parts.append(
            _refine_rows(
                model,
                targets[rows],
                None if theta is None else theta[rows],
                None if shift is None else shift[rows],
                z[rows],
                None if ctf is None else ctf[rows],
                layout,
                steps,
                step_size,
            )
        )
    return torch.cat(parts)


def _refine_rows(
    model: SpatialVAE,
    targets: torch.Tensor,
    theta: torch.Tensor | None,
    shift: torch.Tensor | None,
    z: torch.Tensor,
    ctf: torch.Tensor | None,
    layout: PixelLayout,
    steps: int,
    step_size: float,
) -> torch.Tensor:
    """:func:`refine_z` of one chunk, ``targets`` ``(B, C, N)`` in ``layout``."""
    best = z.detach().clone()
    with torch.enable_grad():
        current = best.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([current], lr=step_size)
        best_cost = torch.full((len(z),), torch.inf, device=z.device)
        for step in range(steps + 1):
            cost = map_cost(model, targets, theta, shift, current, ctf, layout)
            with torch.no_grad():
                better = cost < best_cost
                best = torch.where(better[:, None], current, best)
                best_cost = torch.where(better, cost, best_cost)
            if step == steps:
                break
            # the gradient of z alone: the model's parameters keep no .grad
            (current.grad,) = torch.autograd.grad(cost.sum(), current)
            optimizer.step()
    return best.detach()
