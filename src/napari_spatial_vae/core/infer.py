"""Using a trained model: poses and latents, aligned particles, reconstructions, traversals.

Everything runs in batches read from the (possibly memory-mapped) stack, each computed in parts
of at most :data:`COMPUTE_PIXELS` pixels, so memory is bounded by the batch size and not by the
box size; :func:`iter_inference` yields results batch by batch for callers that write them
incrementally.

Reported pose (see docs/conventions.md): in the displayed image (x right, y down) the particle
is its pose-free reconstruction rotated by ``theta`` radians counter-clockwise on screen, with
its centre at ``(dx, dy)`` pixels from the image centre.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_spatial_vae.core.config import REFINE_Z_STEPS, ModelConfig, TrainConfig
from napari_spatial_vae.core.coords import (
    align_images,
    centre_std,
    particle_centre,
    shift_to_pixels,
)
from napari_spatial_vae.core.ctf import CtfBatches, CtfParameters, resolve_ctf
from napari_spatial_vae.core.data import gather, input_scale, preprocess, stack_image_shape
from napari_spatial_vae.core.errors import DataError
from napari_spatial_vae.core.frame import PoseFrame, to_frame
from napari_spatial_vae.core.memory import COMPUTE_PIXELS
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.posterior_z import TemplateCache, likeliest_rotation, posterior_z
from napari_spatial_vae.core.refine import refine_z


@dataclass
class Poses:
    """Posterior means and standard deviations for every image, in input order.

    Attributes
    ----------
    theta, theta_std
        ``(N,)`` radians (zeros when rotation is not inferred).
    dx, dy, dx_std, dy_std
        ``(N,)`` particle centre offset in pixels, x right, y down (zeros when translation is
        not inferred). The std is the posterior's along x and y of the display (the shift's
        posterior is diagonal in the template's axes, turned by theta into the display's:
        :func:`~napari_spatial_vae.core.coords.centre_std`).
    z, z_std
        ``(N, Z)``.
    """

    theta: np.ndarray
    theta_std: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    dx_std: np.ndarray
    dy_std: np.ndarray
    z: np.ndarray
    z_std: np.ndarray

    def columns(self) -> dict[str, np.ndarray]:
        """Ordered ``name -> (N,)`` columns: theta, dx, dy, z1..zK, then the std columns."""
        out = {"theta": self.theta, "dx": self.dx, "dy": self.dy}
        out.update({f"z{k + 1}": self.z[:, k] for k in range(self.z.shape[1])})
        out.update({"theta_std": self.theta_std, "dx_std": self.dx_std, "dy_std": self.dy_std})
        out.update({f"z{k + 1}_std": self.z_std[:, k] for k in range(self.z_std.shape[1])})
        return out

    @classmethod
    def concatenate(cls, parts: list[Poses]) -> Poses:
        """Join batches in order."""
        return cls(
            **{
                name: np.concatenate([getattr(p, name) for p in parts])
                for name in cls.__dataclass_fields__
            }
        )


@dataclass
class InferenceBatch:
    """Results for images ``start .. start + len(poses.theta)`` of the stack.

    ``aligned`` and ``reconstructions`` are ``(B, H, W)`` (or ``(B, H, W, C)``) float32 in the
    input's units, or None when not requested. ``half_turned``: how many of the images were
    read a half turn from the encoder's own pose (:meth:`SpatialVAE.encode_with_turns`).
    """

    start: int
    poses: Poses
    aligned: np.ndarray | None = None
    reconstructions: np.ndarray | None = None
    half_turned: int = 0


@dataclass
class ParticleReading:
    """A batch read as inference reports it, in model units (``None``: not inferred).

    ``theta`` / ``theta_std`` ``(B,)``, ``shift`` / ``shift_std`` ``(B, 2)``, ``z`` / ``z_std``
    ``(B, Z)``; ``turned`` ``(B,)`` bool: read a half turn from the encoder's own pose.
    """

    theta: torch.Tensor | None
    theta_std: torch.Tensor | None
    shift: torch.Tensor | None
    shift_std: torch.Tensor | None
    z: torch.Tensor | None
    z_std: torch.Tensor | None
    turned: torch.Tensor


def read_particles(
    model: SpatialVAE,
    model_input: torch.Tensor,
    ctf: torch.Tensor | None,
    refine_steps: int = REFINE_Z_STEPS,
    search_rotation: bool = False,
    templates: TemplateCache | None = None,
) -> ParticleReading:
    """Poses and z of preprocessed particles ``(B, C, H, W)``, as inference reads them.

    The encoder's posterior with its half-turn check; ``search_rotation`` then replaces the
    rotation by the likeliest on the whole circle; ``refine_steps`` 0 keeps the encoder's z,
    otherwise z is read against the generator (:func:`read_z`). ``ctf`` ``(B, H, W // 2 + 1)``
    or None; ``templates`` keeps rendered templates from one batch of a pass to the next.
    """
    templates = templates if templates is not None else TemplateCache()
    posterior, turned = model.encode_with_turns(model_input, ctf)
    theta, shift, z = model.split_latent(posterior.mu)
    theta_std, shift_std, z_std = model.split_latent(torch.exp(posterior.logstd))
    if search_rotation:
        assert theta is not None and model.training_z is not None
        theta, shift = likeliest_rotation(
            model, model_input, theta, shift, model.training_z, ctf, templates
        )
    if refine_steps and z is not None:
        assert z_std is not None
        z, z_std = read_z(model, model_input, theta, shift, z, z_std, ctf, refine_steps, templates)
    return ParticleReading(theta, theta_std, shift, shift_std, z, z_std, turned)


def _to_stack_layout(images: torch.Tensor) -> np.ndarray:
    """``(B, C, H, W)`` tensor -> ``(B, H, W)`` or ``(B, H, W, C)`` float32 numpy."""
    array = images.detach().float().cpu().numpy()
    return array[:, 0] if array.shape[1] == 1 else np.moveaxis(array, 1, -1)


@torch.no_grad()
def iter_inference(
    model: SpatialVAE,
    config: TrainConfig,
    stack: Any,
    batch_size: int = 256,
    aligned: bool = False,
    reconstructions: bool = False,
    ctf: Any | None = None,
    with_ctf: bool = False,
    refine_steps: int = REFINE_Z_STEPS,
    search_rotation: bool = False,
    frame: PoseFrame | None = None,
) -> Iterator[InferenceBatch]:
    """Encode a stack batch by batch.

    Parameters
    ----------
    model
        Trained model (its device is used).
    config
        The run's config (preprocessing must match training).
    stack
        Array-like ``(N, H, W)`` or ``(N, H, W, C)``, same image size as training.
    batch_size
        Images read and yielded at once; bounds memory. Large images are computed a part of
        the batch at a time (at most :data:`COMPUTE_PIXELS` pixels), with the same results.
    aligned
        Also return each input image rotated and shifted back by its inferred pose.
    reconstructions
        Also return the generator's image at theta = 0, dx = 0 for each particle's z,
        rescaled to the image's own intensity scale when images were standardised.
    ctf
        The stack's CTF parameters (default: its ``ctf`` attribute); used by a model whose
        encoder sees phase-flipped particles (``ctf_encoder="flip"``) and by ``with_ctf``.
    with_ctf
        Reconstructions as the data should look: each particle's template rendered at its
        inferred pose and filtered by its CTF (default: the CTF-free template at theta = 0,
        dx = 0).
    refine_steps
        0 reports the encoder's posterior mean and std of z. Otherwise z is read against the
        trained generator at each particle's pose (:func:`read_z`): with one latent, its
        posterior mean and std on a grid; with more, this many gradient steps towards the
        generator's mode (``z_std`` stays the encoder's).
    search_rotation
        Replace the encoder's rotation by the likeliest under the generator on the whole
        circle (:func:`~napari_spatial_vae.core.posterior_z.likeliest_rotation`; the shift
        turned with it about the particle's centre, ``theta_std`` still the encoder's): for
        noisy particles the encoder places far off. z is then read about the new angle (with
        ``refine_steps`` 0 it stays the encoder's, read at the encoder's angle). Needs a model
        with one latent z that infers the rotation, trained since 2026-12-05; about five
        times slower.
    frame
        Report poses, aligned particles and reconstructions in the frame that holds a masked
        region of the particle still (:func:`~napari_spatial_vae.core.frame.fit_pose_frame`);
        None: the model's own frame.

    Yields
    ------
    InferenceBatch

    Notes
    -----
    Over hundreds of thousands of images, memory stays bounded by the batch only once
    :func:`~napari_spatial_vae.core.performance.release_large_blocks` has fixed glibc's
    mmap threshold; that setting is process-wide, so the command line opts in and a host
    process (the napari viewer) keeps its allocator as it is.
    """
    image_shape = stack_image_shape(stack)
    if image_shape != model.image_shape:
        raise DataError(
            f"the model was trained on {model.image_shape} (C, H, W) images, these are "
            f"{image_shape}"
        )
    # restore the caller's mode afterwards: the napari worker previews a model mid-training
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        scale = input_scale(config.model.likelihood, getattr(stack, "dtype", np.float32))
        _, height, width = image_shape
        if refine_steps < 0:
            raise DataError(f"refinement steps must be 0 or more, got {refine_steps}")
        refines = refine_steps > 0 and model.config.z_dim > 0
        if search_rotation:
            check_rotation_search(model)
        if frame is not None:
            frame.check(model)
        filters = _ctf_filters(model, stack, ctf, device, needed=reconstructions and with_ctf)
        if filters is None and (model.reads_half_turns or refines or search_rotation):
            # the half-turn check and the refinement of z compare renderings with the
            # particles: with the CTF the run's setting uses for them, as in training
            used = resolve_ctf(
                config.ctf,
                ctf if ctf is not None else getattr(stack, "ctf", None),
                None,
                len(stack),
                config.model.likelihood,
            )
            filters = None if used is None else CtfBatches(used, image_shape[1:], device)
        # the posterior's templates, rendered once for the whole pass (the model is fixed)
        templates = TemplateCache()
        # images computed at once: the encoder's rotated copies and the generator's per-pixel
        # activations grow with the pixels, so large boxes go in smaller parts
        part_size = max(1, COMPUTE_PIXELS // (height * width))
        for start in range(0, len(stack), batch_size):
            indices = np.arange(start, min(start + batch_size, len(stack)))
            raw = torch.from_numpy(gather(stack, indices)).to(device)
            parts = []
            for first in range(0, len(indices), part_size):
                rows = slice(first, first + part_size)
                part_filters = None if filters is None else filters.filters(indices[rows])
                part = _infer_part(
                    model, config, raw[rows], scale, part_filters, aligned, reconstructions,
                    with_ctf, refine_steps if refines else 0, search_rotation, templates,
                    frame,
                )  # fmt: skip
                parts.append(part)
            yield InferenceBatch(
                start,
                Poses.concatenate([part.poses for part in parts]),
                np.concatenate([part.aligned for part in parts]) if aligned else None,
                np.concatenate([part.reconstructions for part in parts])
                if reconstructions
                else None,
                sum(part.half_turned for part in parts),
            )
    finally:
        model.train(was_training)


def _infer_part(
    model: SpatialVAE,
    config: TrainConfig,
    raw: torch.Tensor,
    scale: float,
    batch_filters: torch.Tensor | None,
    aligned: bool,
    reconstructions: bool,
    with_ctf: bool,
    refine_steps: int,
    search_rotation: bool,
    templates: TemplateCache,
    frame: PoseFrame | None = None,
) -> InferenceBatch:
    """One part of a batch, ``raw`` ``(b, C, H, W)`` as read: :func:`iter_inference`'s work.

    ``batch_filters`` ``(b, H, W // 2 + 1)`` or None; ``refine_steps`` 0 keeps the encoder's z.
    The result's ``start`` is 0 (the caller places the part).
    """
    model_input = preprocess(raw, scale, config.normalize)
    reading = read_particles(
        model, model_input, batch_filters, refine_steps, search_rotation, templates
    )
    theta, shift, z = reading.theta, reading.shift, reading.z
    theta_std, shift_std, z_std = reading.theta_std, reading.shift_std, reading.z_std
    turned = reading.turned
    count, _, height, width = raw.shape
    # the pose as the model measures it renders the particle (with its CTF) either way
    model_theta, model_shift = theta, shift
    turn = offset = None
    if frame is not None:
        assert theta is not None and z is not None  # fit_pose_frame refuses other models
        turn, offset = frame.at(z)
        theta, shift = to_frame(theta, shift, turn, offset)
    out = InferenceBatch(
        0,
        _poses(theta, theta_std, shift, shift_std, turn, z, z_std, count, height, width),
        half_turned=int(turned.sum()),
    )
    if aligned:
        zeros = raw.new_zeros(count)
        out.aligned = _to_stack_layout(
            align_images(
                raw,
                theta if theta is not None else zeros,
                shift if shift is not None else raw.new_zeros(count, 2),
            )
        )
    if reconstructions and with_ctf:
        assert batch_filters is not None
        mean, _ = model.decode(z, model_theta, model_shift, batch_size=count)
        images = model.expected_image(model.apply_ctf(mean, batch_filters))
    elif reconstructions:
        # in the frame, the template T_z(x R(phi) + t) (no rotation or shift otherwise)
        mean, _ = model.decode(z, turn, offset if shift is not None else None, batch_size=count)
        images = model.expected_image(mean)
    if reconstructions:
        if config.normalize:
            flat = (raw * scale).flatten(1)
            images = (
                images * flat.std(1).clamp_min(1e-8)[:, None, None, None]
                + flat.mean(1)[:, None, None, None]
            )
        out.reconstructions = _to_stack_layout(images)
    return out


def check_rotation_search(model: SpatialVAE) -> None:
    """DataError in one line unless ``model`` can search rotations (:func:`likeliest_rotation`)."""
    check_rotation_search_settings(model.config)
    if model.training_z is None:
        raise DataError(
            "the rotation search needs a model with one latent z that infers the rotation; "
            "this one was trained before 2026-12-05 and keeps no summary of its z"
        )


def check_rotation_search_settings(config: ModelConfig) -> None:
    """DataError in one line unless a model of ``config`` could search rotations.

    For a training that is to search them in its results: refused before it starts.
    """
    if config.z_dim != 1:
        reason = f"this one has z-dim {config.z_dim}"
    elif not config.infers_rotation:
        reason = "this one infers none"
    else:
        return
    raise DataError(
        f"the rotation search needs a model with one latent z that infers the rotation; {reason}"
    )


def read_z(
    model: SpatialVAE,
    images: torch.Tensor,
    theta: torch.Tensor | None,
    shift: torch.Tensor | None,
    z: torch.Tensor,
    z_std: torch.Tensor,
    ctf: torch.Tensor | None = None,
    refine_steps: int = REFINE_Z_STEPS,
    templates: TemplateCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """z read against the trained generator at each particle's pose, as inference reports it.

    With one latent, the posterior mean and std on the grid of the training particles' z
    (:func:`~napari_spatial_vae.core.posterior_z.posterior_z`); with more, or a run saved
    before the training particles' z was kept (2026-12-05), the encoder's ``z`` ``(B, Z)``
    moved ``refine_steps`` gradient steps towards the generator's mode
    (:func:`~napari_spatial_vae.core.refine.refine_z`) and the encoder's ``z_std``.
    ``images`` ``(B, C, H, W)`` preprocessed; ``ctf`` ``(B, H, W // 2 + 1)`` or None;
    ``templates`` keeps the posterior's templates from one batch of a pass to the next.
    """
    if model.training_z is not None:
        return posterior_z(model, images, theta, shift, model.training_z, ctf, templates)
    return refine_z(model, images, theta, shift, z, ctf, refine_steps), z_std


def _ctf_filters(
    model: SpatialVAE, stack: Any, ctf: Any | None, device: torch.device, needed: bool
) -> CtfBatches | None:
    """The stack's CTF filters when the encoder (phase-flipped input) or ``needed`` asks."""
    flips = model.config.ctf_encoder != "raw"
    if not (flips or needed):
        return None
    ctf = ctf if ctf is not None else getattr(stack, "ctf", None)
    if ctf is None:
        what = "the model's encoder sees phase-flipped particles" if flips else "with CTF"
        raise DataError(
            f"{what}, but these particles carry no CTF parameters (open the .star/.cs file "
            "they came from)"
        )
    parameters = CtfParameters.from_any(ctf)
    if len(parameters) != len(stack):
        raise DataError(f"CTF parameters for {len(parameters)} of {len(stack)} images")
    return CtfBatches(parameters, model.image_shape[1:], device)


def _poses(theta, theta_std, shift, shift_std, turn, z, z_std, n, height, width) -> Poses:
    """The batch's table rows: the shift as the particle's centre in pixels, its std turned
    the same way (``turn``: the frame's, or None)."""
    zeros = np.zeros(n, dtype=np.float32)
    if shift is not None:
        angle = theta if theta is not None else torch.zeros_like(shift[:, 0])
        centre = shift_to_pixels(particle_centre(angle, shift), height, width).cpu().numpy()
        spread_px = shift_to_pixels(centre_std(angle, shift_std, turn), height, width)
        spread = spread_px.cpu().numpy()
    else:
        centre = spread = np.zeros((n, 2), dtype=np.float32)
    empty = np.zeros((n, 0), dtype=np.float32)
    return Poses(
        theta=_owned(theta) if theta is not None else zeros,
        theta_std=_owned(theta_std) if theta_std is not None else zeros,
        dx=_owned(centre[:, 0]),
        dy=_owned(centre[:, 1]),
        dx_std=_owned(spread[:, 0]),
        dy_std=_owned(spread[:, 1]),
        z=_owned(z) if z is not None else empty,
        z_std=_owned(z_std) if z_std is not None else empty,
    )


def _owned(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """A compact float32 copy that owns its memory.

    ``Tensor.numpy()`` of a slice shares its tensor's storage, and callers keep the poses of
    every batch of a stack: a view would keep that storage alive for the whole run. Copying
    alone did not bound memory (the heap still grew, see
    :func:`~napari_spatial_vae.core.performance.release_large_blocks`); both are needed.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.array(values, dtype=np.float32, copy=True, order="C")


def encode_stack(
    model: SpatialVAE,
    config: TrainConfig,
    stack: Any,
    batch_size: int = 256,
    refine_steps: int = REFINE_Z_STEPS,
    search_rotation: bool = False,
    frame: PoseFrame | None = None,
) -> Poses:
    """Poses and latents of every image, in input order (see :func:`iter_inference`)."""
    batches = iter_inference(
        model, config, stack, batch_size, refine_steps=refine_steps,
        search_rotation=search_rotation, frame=frame,
    )  # fmt: skip
    return Poses.concatenate([b.poses for b in batches])


def traversal_values(steps: int) -> np.ndarray:
    """``(steps,)`` latent values equally spaced in probability (5 % .. 95 %) of ``N(0, 1)``."""
    if steps < 2:
        raise ValueError("a traversal needs at least 2 steps")
    return torch.special.ndtri(torch.linspace(0.05, 0.95, steps, dtype=torch.float64)).numpy()


def render_templates(
    model: SpatialVAE,
    z: torch.Tensor | None,
    frame: PoseFrame | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """``(B, H, W[, C])`` expected images of ``(B, Z)`` z: theta = 0, dx = 0, or in ``frame``.

    ``z`` None (a model without z): ``batch_size`` copies of its one template. The frame is
    the one :func:`~napari_spatial_vae.core.frame.fit_pose_frame` fitted for ``model``.
    """
    turn = offset = None
    if frame is not None and z is not None:
        frame.check(model)
        turn, offset = frame.at(z)
        offset = offset if model.config.infers_translation else None
    mean, _ = model.decode(z, turn, offset, batch_size=batch_size)
    return _to_stack_layout(model.expected_image(mean))


@torch.no_grad()
def reference_template(model: SpatialVAE) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)``: the template at z = 0, theta = 0, dx = 0.

    The image a hold-still mask is drawn on (:func:`~napari_spatial_vae.core.frame.fit_pose_frame`
    matches every z's template to it); the middle image of an odd-numbered traversal.
    """
    device = next(model.parameters()).device
    return render_templates(model, torch.zeros(1, model.config.z_dim, device=device), None)[0]


@torch.no_grad()
def latent_traversal(
    model: SpatialVAE, steps: int = 9, frame: PoseFrame | None = None
) -> np.ndarray:
    """Images along each latent axis (others at 0), theta = 0, dx = 0 (the paper's Fig. 4).

    With ``frame`` (:func:`~napari_spatial_vae.core.frame.fit_pose_frame`) each image is the
    template in that frame: the masked region stands still along the walk.

    Returns
    -------
    np.ndarray
        ``(Z, steps, H, W)`` or ``(Z, steps, H, W, C)`` expected pixel values (standardised
        units when the model was trained on standardised images).
    """
    z_dim = model.config.z_dim
    if z_dim == 0:
        raise DataError("the model has no content latent (z_dim = 0) to traverse")
    device = next(model.parameters()).device
    values = torch.as_tensor(traversal_values(steps), dtype=torch.float32, device=device)
    z = torch.zeros(z_dim, steps, z_dim, device=device)
    for k in range(z_dim):  # Z is tiny; this builds the (Z * steps, Z) query, not a data loop
        z[k, :, k] = values
    images = render_templates(model, z.reshape(-1, z_dim), frame)
    return images.reshape(z_dim, steps, *images.shape[1:])


@torch.no_grad()
def latent_grid(
    model: SpatialVAE,
    steps: int = 9,
    dims: tuple[int, int] = (0, 1),
    frame: PoseFrame | None = None,
) -> np.ndarray:
    """Images on a grid over two latent dimensions (the paper's Fig. 3 manifold).

    ``frame``: as :func:`latent_traversal`.

    Returns
    -------
    np.ndarray
        ``(steps, steps, H, W)`` (or with a trailing channel axis); row index walks
        ``dims[1]``, column index walks ``dims[0]``.
    """
    z_dim = model.config.z_dim
    if z_dim < 2 or max(dims) >= z_dim or dims[0] == dims[1]:
        raise DataError(f"a latent grid needs two distinct dimensions of z (z_dim = {z_dim})")
    device = next(model.parameters()).device
    values = torch.as_tensor(traversal_values(steps), dtype=torch.float32, device=device)
    rows, cols = torch.meshgrid(values, values, indexing="ij")
    z = torch.zeros(steps * steps, z_dim, device=device)
    z[:, dims[0]] = cols.reshape(-1)
    z[:, dims[1]] = rows.reshape(-1)
    images = render_templates(model, z, frame)
    return images.reshape(steps, steps, *images.shape[1:])
