"""The posterior of a one-dimensional z on a grid at inference (core/posterior_z.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from napari_spatial_vae.core import metrics
from napari_spatial_vae.core import posterior_z as posterior_module
from napari_spatial_vae.core.checkpoint import load_model
from napari_spatial_vae.core.coords import rotation_matrices, wrap_angle
from napari_spatial_vae.core.ctf import CtfBatches
from napari_spatial_vae.core.errors import CheckpointError, DataError
from napari_spatial_vae.core.infer import Poses, encode_stack, iter_inference
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.posterior_z import (
    TrainingZ,
    likeliest_rotation,
    posterior_z,
    summarise_training_z,
)
from napari_spatial_vae.core.refine import refine_z
from napari_spatial_vae.core.simulate import CtfSimulation, simulate_particles
from napari_spatial_vae.core.train import train
from tests.encoded import encode


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_particles, make_config):
    run = tmp_path_factory.mktemp("run")
    train(make_config(epochs=4, z_dim=1), tiny_particles.images, run)
    return load_model(run)


# a grid over z's prior, for particles rendered by the model itself at chosen z
WIDE = TrainingZ(-4.0, 4.0, [0.0] * 81)


def _rendering(model, z, theta, shift):
    """The generator's noise-free image ``(1, 1, H, W)`` at one z and pose."""
    with torch.no_grad():
        mean, _ = model.decode(torch.tensor([[z]]), torch.tensor([theta]), torch.tensor([shift]))
    return model.expected_image(mean)


def test_templates_on_the_canvas_are_the_renderings_at_each_pose(trained):
    model, _, _ = trained
    theta = torch.tensor([0.0, 1.1, -2.5])
    shift = torch.tensor([[0.0, 0.0], [0.08, -0.05], [-0.1, 0.12]])
    points = posterior_module._pose_points(model.layout, theta, shift)
    grid = model.training_z.grid()
    with torch.no_grad():
        canvas = posterior_module._TemplateCanvas(model, grid, float(points.abs().max()))
        sampled = canvas.at(points)
        sampled = sampled.reshape(3, len(grid), *sampled.shape[1:])
        for g in (0, 30, 50, len(grid) - 1):
            exact, _ = model.decode(grid[[g]].expand(3, 1), theta, shift)
            error = (sampled[:, g] - exact).norm() / exact.norm()
            # one bilinear resampling of the pixel grid, as the rotation search makes
            assert error < 0.05, (g, float(error))


def test_the_posterior_finds_the_z_a_particle_was_rendered_with(trained):
    model, _, _ = trained
    generator = torch.Generator().manual_seed(0)
    images, truth = [], [-1.5, -0.5, 0.5, 1.5]
    for z in truth:
        clean = _rendering(model, z, 0.7, [0.05, -0.03])
        images.append(clean + 0.02 * clean.std() * torch.randn(clean.shape, generator=generator))
    images = torch.cat(images)
    theta, shift = torch.full((4,), 0.7), torch.tensor([[0.05, -0.03]]).expand(4, 2)
    mean, std = posterior_z(model, images, theta, shift, WIDE)
    assert mean.shape == std.shape == (4, 1)
    np.testing.assert_allclose(mean[:, 0].numpy(), truth, atol=0.15)
    assert (std < 0.3).all()


def test_the_rotation_window_turns_each_template_about_the_particles_centre():
    theta = torch.tensor([0.3, -2.0, 3.0])
    shift = torch.tensor([[0.1, -0.2], [0.0, 0.15], [-0.3, 0.05]])
    angles, shifts = posterior_module._rotation_window(theta, shift)
    window = torch.deg2rad(torch.tensor(posterior_module.ROTATION_WINDOW_DEGREES))
    assert angles.shape == (3, len(window)) and shifts.shape == (3, len(window), 2)
    torch.testing.assert_close(angles - theta[:, None], window.expand(3, -1))
    # the pixel the template's origin lands on at the encoder's pose, c R(theta) + shift = 0
    centre = -torch.bmm(shift[:, None], rotation_matrices(theta).transpose(1, 2))
    for p in range(len(window)):
        landed = torch.bmm(centre, rotation_matrices(angles[:, p]))[:, 0] + shifts[:, p]
        torch.testing.assert_close(landed, torch.zeros(3, 2), atol=1e-6, rtol=0)


def test_a_particle_turned_off_the_encoders_angle_is_read_at_its_own(trained, monkeypatch):
    model, _, _ = trained
    off = math.radians(posterior_module.ROTATION_WINDOW_DEGREES[-1])
    _, (turned_shift,) = posterior_module._rotation_window(
        torch.tensor([0.7]), torch.tensor([[0.05, -0.03]])
    )
    truth = [-1.5, -0.5, 0.5, 1.5]
    images = torch.cat([_rendering(model, z, 0.7 + off, turned_shift[-1].tolist()) for z in truth])
    theta, shift = torch.full((4,), 0.7), torch.tensor([[0.05, -0.03]]).expand(4, 2)
    windowed, _ = posterior_z(model, images, theta, shift, WIDE)
    monkeypatch.setattr(posterior_module, "ROTATION_WINDOW_DEGREES", (0.0,))
    fixed, _ = posterior_z(model, images, theta, shift, WIDE)
    error_windowed = (windowed[:, 0] - torch.tensor(truth)).abs().max()
    error_fixed = (fixed[:, 0] - torch.tensor(truth)).abs().max()
    assert error_windowed < 0.15
    assert error_windowed < error_fixed


def test_the_search_finds_the_rotation_of_a_particle_the_encoder_placed_far_off(
    make_config, monkeypatch
):
    # an untrained model: its renderings have no symmetry a turn could hide behind
    torch.manual_seed(3)
    model = SpatialVAE(make_config(z_dim=1).model, (1, 32, 32)).eval()
    prior = TrainingZ(-2.0, 2.0, [0.0] * 81)
    true_theta, true_shift = torch.tensor([0.4, -1.2, 2.9, 0.1]), torch.randn(4, 2) * 0.1
    # the encoder's angles this far off (multiples of the search's step, so it can hit them)
    off = torch.tensor([0.0, 97.5, 180.0, -45.0])
    assert all(float(o) in posterior_module.SEARCH_DEGREES for o in off)
    with torch.no_grad():
        mean, _ = model.decode(prior.grid()[[20, 40, 60, 70]], true_theta, true_shift)
    clean = model.render(mean)
    images = clean + 0.05 * clean.std() * torch.randn(4, 1, 32, 32)
    # the encoder's poses: turned back by `off` about each particle's centre
    encoder_theta = true_theta - torch.deg2rad(off)
    encoder_shift = torch.einsum("bi,bij->bj", true_shift, rotation_matrices(-torch.deg2rad(off)))
    theta, shift = likeliest_rotation(model, images, encoder_theta, encoder_shift, prior)
    # within half a search step (its finest look): these smooth random templates change less
    # under a turn of a few degrees than under the canvas's bilinear resampling
    half_step = math.radians(posterior_module.SEARCH_STEP_DEGREES / 2) + 1e-5
    assert ((theta >= -math.pi) & (theta < math.pi)).all()  # as the encoder reports angles
    assert _circular_distance(theta, true_theta).max() < half_step
    torch.testing.assert_close(shift, true_shift, atol=0.02, rtol=0)
    # the particle whose angle the encoder found keeps it
    assert float(theta[0]) == pytest.approx(float(true_theta[0]), abs=1e-6)
    # split into chunks of one particle, the same angles
    monkeypatch.setattr(posterior_module, "VALUES_PER_CHUNK", 1)
    again, _ = likeliest_rotation(model, images, encoder_theta, encoder_shift, prior)
    torch.testing.assert_close(again, theta)
    # a first look that misses (here: it sees only angles far from the truth) cannot move a
    # particle whose angle the encoder found: the encoder's angle is in the second look
    monkeypatch.setattr(posterior_module, "SEARCH_DEGREES", (120.0, 240.0))
    kept, _ = likeliest_rotation(model, images[:1], true_theta[:1], true_shift[:1], prior)
    assert float(kept[0]) == pytest.approx(float(true_theta[0]), abs=1e-6)


def _circular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``|a - b|`` in radians, the short way round the circle."""
    return wrap_angle(a - b).abs()


def test_inference_searches_the_rotation_only_when_asked(trained, tiny_particles, make_config):
    model, config, _ = trained
    images, theta, shift, _ = encode(model, config, tiny_particles.images)
    searched_theta, searched_shift = likeliest_rotation(
        model, images, theta, shift, model.training_z
    )
    read = encode_stack(model, config, tiny_particles.images, search_rotation=True)
    np.testing.assert_allclose(read.theta, searched_theta.numpy(), atol=1e-5)
    # z is read about the angle found
    mean, _ = posterior_z(model, images, searched_theta, searched_shift, model.training_z)
    np.testing.assert_allclose(read.z, mean.numpy(), rtol=1e-4, atol=1e-4)
    # this 4-epoch model's encoder is far off on most particles (Fisher-Lee 0.34): the
    # angles the generator prefers are closer to the truth (0.46)
    truth = tiny_particles.theta
    encoder_fl = metrics.circular_correlation_fl(theta.numpy(), truth)
    assert metrics.circular_correlation_fl(read.theta, truth) > encoder_fl + 0.05
    plain = encode_stack(model, config, tiny_particles.images)
    np.testing.assert_array_equal(plain.theta, theta.numpy())
    # each particle turned about its centre: the centre reported stays the encoder's
    np.testing.assert_allclose(read.dx, plain.dx, atol=1e-3)
    np.testing.assert_allclose(read.dy, plain.dy, atol=1e-3)
    two = SpatialVAE(make_config(z_dim=2).model, model.image_shape)
    with pytest.raises(
        DataError, match="one latent z that infers the rotation; this one has z-dim 2"
    ):
        encode_stack(two, config, tiny_particles.images[:4], search_rotation=True)


@pytest.mark.parametrize("level", [0.0, 1000.0])  # 1000: an unnormalised stack's background
def test_the_fit_of_each_template_and_blend_is_least_squares_with_the_scale_kept_positive(level):
    generator = torch.Generator().manual_seed(5)
    observed = torch.randn(3, 50, generator=generator) + level
    templates = torch.randn(3, 2, 4, 50, generator=generator) + level  # (b, P, G, M)
    templates[:, 0, 0] = 2.0 * observed + 1.0  # fits exactly once scaled and offset
    templates[:, 0, 1] = -observed  # fits only turned negative: scale 0, the mean alone
    chi2 = posterior_module._fitted_chi2(observed, templates)
    steps = posterior_module.BLENDS_PER_STEP
    assert chi2.shape == (3, 2, 3 * steps + 1)
    for b in range(3):
        for p in range(2):
            for f in range(chi2.shape[2]):
                g, t = divmod(f, steps)
                t = t / steps
                # the fine grid's template: a grid value's, or the blend of two neighbours'
                blend = templates[b, p, g].double() * (1 - t)
                if t:
                    blend = blend + templates[b, p, g + 1].double() * t
                design = torch.stack([blend, torch.ones(50).double()], 1)
                solution = torch.linalg.lstsq(design, observed[b].double()[:, None]).solution
                if solution[0] < 0:  # the best non-negative scale is then 0: the offset alone
                    solution = torch.tensor([[0.0], [observed[b].double().mean()]])
                residual = observed[b].double() - (design @ solution)[:, 0]
                expected = float(residual.pow(2).sum())
                assert float(chi2[b, p, f]) == pytest.approx(expected, abs=1e-3), (b, p, f)
    assert (chi2[:, 0, 0] < 1e-4).all()  # float32 sums: exact to ~1e-7 of the total (~50)


def _explicit_posterior(model, images, theta, shift, training_z):
    """The posterior mean and std ``(B,)`` the slow way: every rotation of the window and every
    grid value rendered by the generator at that pose, each fitted to its particle."""
    grid, log_prior = training_z.fine_grid(), training_z.fine_log_prior()
    n_grid = len(training_z.log_density)
    steps = posterior_module.BLENDS_PER_STEP
    targets = model.layout.targets(images).flatten(1).double()
    means, stds = [], []
    for b in range(len(images)):
        centre = -shift[b] @ rotation_matrices(theta[b : b + 1])[0].T
        chi2 = []
        for delta in posterior_module.ROTATION_WINDOW_DEGREES:
            angle = theta[b] + math.radians(delta)
            turned = -centre @ rotation_matrices(angle[None])[0]  # the same centre
            with torch.no_grad():
                rendered, _ = model.decode(
                    training_z.grid(), angle.expand(n_grid), turned.expand(n_grid, 2)
                )
            rendered = rendered.flatten(1).double()
            # between grid values, the blends of the two neighbours' renderings
            t = torch.arange(steps, dtype=torch.float64)[:, None] / steps
            t = torch.cat(
                [(rendered[:-1, None] * (1 - t) + rendered[1:, None] * t).flatten(0, 1),
                 rendered[-1:]]
            )  # fmt: skip
            t = t - t.mean(-1, keepdim=True)
            o = targets[b] - targets[b].mean()
            scale = ((t @ o) / t.pow(2).sum(-1)).clamp_min(0.0)
            chi2.append((o - scale[:, None] * t).pow(2).sum(-1))
        chi2 = torch.stack(chi2)  # (P, G)
        log_likelihood = torch.logsumexp(-0.5 * chi2 / (chi2.min() / targets.shape[1]), dim=0)
        posterior = torch.softmax(log_likelihood + log_prior, dim=0)
        mean = posterior @ grid
        means.append(mean)
        stds.append((posterior @ grid**2 - mean**2).clamp_min(0.0).sqrt())
    return torch.stack(means), torch.stack(stds)


def test_the_posterior_is_the_one_computed_pose_by_pose(make_config, monkeypatch):
    # an untrained model of a non-square image, so no symmetry of the box can hide a mistake
    # in the canvas, the rotation window or the order of the rows
    torch.manual_seed(0)
    model = SpatialVAE(make_config(z_dim=1).model, (1, 24, 32)).eval()
    prior = TrainingZ(-2.0, 2.0, [-((v / 20) ** 2) for v in range(-40, 41)])
    theta, shift = torch.rand(5) * 6.0 - 3.0, torch.randn(5, 2) * 0.3
    with torch.no_grad():
        mean, _ = model.decode(prior.grid()[[5, 20, 40, 60, 75]], theta + 0.05, shift)
    images = model.render(mean) + 0.3 * torch.randn(5, 1, 24, 32)
    expected_mean, expected_std = _explicit_posterior(model, images, theta, shift, prior)
    # particles split over chunks: 2 particles of 3 x 81 templates at a time
    monkeypatch.setattr(posterior_module, "VALUES_PER_CHUNK", 2 * 3 * 81 * 24 * 32)
    read_mean, read_std = posterior_z(model, images, theta, shift, prior)
    # one bilinear resampling of the canvas against rendering at each pose
    np.testing.assert_allclose(read_mean[:, 0].numpy(), expected_mean.numpy(), atol=3e-3)
    np.testing.assert_allclose(read_std[:, 0].numpy(), expected_std.numpy(), atol=2e-3)
    assert float(expected_std.min()) > 0.01  # wide enough that the comparison means something


def test_a_noisier_particle_has_a_wider_posterior(trained):
    model, _, _ = trained
    clean = _rendering(model, 0.5, -0.4, [0.0, 0.0])
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(clean.shape, generator=generator) * clean.std()
    images = torch.cat([clean + 0.05 * noise, clean + 3.0 * noise])
    mean, std = posterior_z(model, images, torch.full((2,), -0.4), torch.zeros(2, 2), WIDE)
    # the noise level is the particle's own, not the one the model was trained at
    assert std[1, 0] > 3 * std[0, 0]
    assert abs(float(mean[0, 0]) - 0.5) < 0.15


def test_each_particle_is_read_on_its_own(trained, tiny_particles, monkeypatch):
    model, config, _ = trained
    images, theta, shift, _ = encode(model, config, tiny_particles.images)
    prior = model.training_z
    whole = posterior_z(model, images, theta, shift, prior)
    part = posterior_z(model, images[10:20], theta[10:20], shift[10:20], prior)
    torch.testing.assert_close(part, tuple(t[10:20] for t in whole), rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(posterior_module, "VALUES_PER_CHUNK", 7 * len(prior.log_density) * 400)
    torch.testing.assert_close(posterior_z(model, images, theta, shift, prior), whole)


def test_one_rendering_of_the_templates_serves_every_batch_of_a_pass(
    trained, tiny_particles, monkeypatch
):
    model, config, _ = trained
    rendered = []
    render = posterior_module._TemplateCanvas.__init__

    def counted(self, *args, **kwargs):
        rendered.append(args[2])  # the reach asked for
        render(self, *args, **kwargs)

    monkeypatch.setattr(posterior_module._TemplateCanvas, "__init__", counted)
    batched = encode_stack(model, config, tiny_particles.images, batch_size=8)
    # 12 batches: rendered once, again only where a batch reached past the margin
    assert 1 <= len(rendered) <= 3 and rendered == sorted(rendered)
    whole = encode_stack(model, config, tiny_particles.images, batch_size=96)
    np.testing.assert_allclose(batched.z, whole.z, rtol=1e-4, atol=1e-4)
    # a batch whose poses reach past the kept canvas gets a larger one
    cache = posterior_module.TemplateCache()
    grid = model.training_z.grid()
    first = cache.canvas(model, grid, torch.full((1, 4, 2), 0.5))
    assert cache.canvas(model, grid, torch.full((1, 4, 2), 0.9)) is first
    farther = cache.canvas(model, grid, torch.full((1, 4, 2), first.reach + 0.1))
    assert farther is not first and farther.reach >= first.reach + 0.1
    # another grid, or another model, is never served the kept templates
    assert cache.canvas(model, grid[::2], torch.full((1, 4, 2), 0.5)).n_grid == len(grid[::2])
    other = SpatialVAE(model.config, model.image_shape)
    assert cache.canvas(other, grid[::2], torch.full((1, 4, 2), 0.5)).model is other


def test_inference_reports_the_posterior_and_no_steps_the_encoder(trained, tiny_particles):
    model, config, _ = trained
    plain = encode_stack(model, config, tiny_particles.images, refine_steps=0)
    images, theta, shift, z = encode(model, config, tiny_particles.images)
    np.testing.assert_allclose(plain.z, z.numpy(), rtol=1e-5, atol=1e-6)
    read = encode_stack(model, config, tiny_particles.images)
    mean, std = posterior_z(model, images, theta, shift, model.training_z)
    np.testing.assert_allclose(read.z, mean.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(read.z_std, std.numpy(), rtol=1e-4, atol=1e-4)
    # the pose is the encoder's either way
    np.testing.assert_array_equal(read.theta, plain.theta)


def test_the_posterior_compares_with_the_particles_ctf(tmp_path, make_config):
    particles = simulate_particles(
        48, 24, snr=1.0, max_shift_px=0.7, blob_sigma_px=1.2, seed=5, ctf=CtfSimulation()
    )
    train(make_config(epochs=2), particles.images, tmp_path, ctf=particles.ctf)
    model, config, _ = load_model(tmp_path)
    filters = CtfBatches(particles.ctf, (24, 24), torch.device("cpu")).filters(
        torch.arange(len(particles.images))
    )
    images, theta, shift, _ = encode(model, config, particles.images, filters)
    with_ctf, _ = posterior_z(model, images, theta, shift, model.training_z, filters)
    without, _ = posterior_z(model, images, theta, shift, model.training_z)
    assert (with_ctf - without).abs().max() > 1e-3
    # inference reads z with the stack's CTF
    batches = iter_inference(model, config, particles.images, ctf=particles.ctf)
    poses = Poses.concatenate([b.poses for b in batches])
    np.testing.assert_allclose(poses.z, with_ctf.numpy(), rtol=1e-4, atol=1e-4)
    # and searches the rotation with it
    searched, _ = likeliest_rotation(model, images, theta, shift, model.training_z, filters)
    blind, _ = likeliest_rotation(model, images, theta, shift, model.training_z)
    assert (searched - blind).abs().max() > 1e-3
    batches = iter_inference(
        model, config, particles.images, ctf=particles.ctf, search_rotation=True
    )
    poses = Poses.concatenate([b.poses for b in batches])
    np.testing.assert_allclose(poses.theta, searched.numpy(), atol=1e-5)


def test_only_one_latent_is_read_on_a_grid(tmp_path, tiny_particles, make_config):
    train(make_config(epochs=1, z_dim=2), tiny_particles.images[:32], tmp_path)
    model, config, _ = load_model(tmp_path)
    # two latents keep no training z: inference refines them (tests/core/test_refine.py)
    assert model.training_z is None
    images, theta, shift, _ = encode(model, config, tiny_particles.images[:4])
    with pytest.raises(ValueError, match="z-dim 1"):
        posterior_z(model, images, theta, shift, WIDE)


def test_training_keeps_its_particles_z_in_the_checkpoint(trained, tiny_particles, tmp_path):
    model, config, _ = trained
    kept = model.training_z
    assert isinstance(kept, TrainingZ) and len(kept.log_density) == 81
    # the grid spans the training particles' z means
    _, _, _, z = encode(model, config, tiny_particles.images[:72])
    assert kept.low < float(z.min()) and float(z.max()) < kept.high
    assert max(kept.log_density) == 0.0


@pytest.mark.parametrize(
    "stored",
    [
        {"low": 0.0, "high": 1.0},  # no densities
        {"low": "a", "high": 1.0, "log_density": [0.0, 0.0]},
        {"low": 1.0, "high": 0.0, "log_density": [0.0, 0.0]},
        {"low": 0.0, "high": 1.0, "log_density": [0.0, float("nan")]},
        [0.0, 1.0],
    ],
)
def test_a_damaged_training_z_is_a_one_line_checkpoint_error(
    tmp_path, tiny_particles, make_config, stored
):
    train(make_config(epochs=1), tiny_particles.images[:32], tmp_path)
    path = tmp_path / "checkpoint.safetensors"
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    meta = json.loads(metadata["spatial_vae"])
    meta["training_z"] = stored
    save_file(tensors, str(path), {**metadata, "spatial_vae": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="unreadable checkpoint") as error:
        load_model(tmp_path)
    assert "\n" not in str(error.value)


def test_a_run_saved_before_keeps_refining_z(trained, tiny_particles, monkeypatch):
    model, config, _ = trained
    monkeypatch.setattr(model, "training_z", None)
    images, theta, shift, z = encode(model, config, tiny_particles.images)
    read = encode_stack(model, config, tiny_particles.images)
    np.testing.assert_allclose(read.z, refine_z(model, images, theta, shift, z).numpy(), atol=1e-4)


def test_a_posterior_narrower_than_the_grids_step_is_read_between_grid_values(trained):
    model, _, _ = trained
    coarse = TrainingZ(-4.0, 4.0, [0.0] * 33)  # a step of 0.25
    truth = [-0.625, 0.125, 1.125]  # half-way between grid values
    images = torch.cat([_rendering(model, z, 0.3, [0.0, 0.0]) for z in truth])
    generator = torch.Generator().manual_seed(2)
    images = images + 0.01 * images.std() * torch.randn(images.shape, generator=generator)
    theta, shift = torch.full((3,), 0.3), torch.zeros(3, 2)
    mean, std = posterior_z(model, images, theta, shift, coarse)
    # read at the nearest grid value, each would be 0.125 off
    np.testing.assert_allclose(mean[:, 0].numpy(), truth, atol=0.06)
    assert (std < 0.1).all()


def test_a_particle_the_encoder_could_not_place_does_not_stretch_the_grid():
    mean = torch.linspace(-1.0, 2.0, 100)[:, None]
    std = torch.full_like(mean, 0.05)
    std[10] = 5.0  # junk: a posterior wider than the prior
    summary = summarise_training_z(mean, std)
    # the extreme means and four typical stds past them
    assert summary.low == pytest.approx(-1.2) and summary.high == pytest.approx(2.2)


def test_the_prior_is_the_training_particles_z():
    # two groups of particles, at -1 and at 2: the prior has its modes there
    mean = torch.tensor([[-1.0]] * 30 + [[2.0]] * 10)
    summary = summarise_training_z(mean, torch.full_like(mean, 0.1))
    grid, prior = summary.grid()[:, 0], summary.log_prior()
    assert summary.low == pytest.approx(-1.4) and summary.high == pytest.approx(2.4)
    assert abs(float(grid[prior.argmax()]) + 1.0) < 0.05
    at_two = int((grid - 2.0).abs().argmin())
    # three times the particles, three times the density (log 3 apart)
    assert float(prior.max() - prior[at_two]) == pytest.approx(np.log(3.0), abs=0.05)
    assert float(prior[int((grid - 0.5).abs().argmin())]) < -20


@pytest.mark.parametrize(
    "fields",
    [
        {"vanilla": True, "encoder": "mlp"},  # no pose: the templates compared as rendered
        {"likelihood": "bernoulli", "fit_noise": False, "normalize": False, "coarse_fraction": 0.0},
    ],
)
def test_models_without_a_pose_or_with_binary_images_are_read_too(tmp_path, make_config, fields):
    images = simulate_particles(
        32, 20, snr=None, max_shift_px=0.0, blob_sigma_px=1.2, seed=2
    ).images
    if fields.get("likelihood") == "bernoulli":
        images = (images > images.mean()).astype(np.float32)
    train(make_config(epochs=1, **fields), images, tmp_path)
    model, config, _ = load_model(tmp_path)
    poses = encode_stack(model, config, images)
    assert np.isfinite(poses.z).all() and (poses.z_std > 0).all()
    assert model.training_z.low <= poses.z.min() and poses.z.max() <= model.training_z.high
