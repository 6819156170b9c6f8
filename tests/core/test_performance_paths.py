"""The fast paths compute what the plain formulation computes (up to the chosen precision)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from napari_spatial_vae.core.config import ModelConfig
from napari_spatial_vae.core.ctf import FrequencyGrid, evaluate_ctf
from napari_spatial_vae.core.data import ImageFeeder
from napari_spatial_vae.core.errors import ConfigError, DataError
from napari_spatial_vae.core.generators import SpatialGenerator
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.performance import (
    check_precision,
    cpu_bf16_flags,
    generator_autocast,
    resolve_precision,
    retained_freed_memory,
)
from napari_spatial_vae.core.schedule import plan_coarse_to_fine
from napari_spatial_vae.core.step import draw_noise, loss_terms
from napari_spatial_vae.core.train import train

CPU = torch.device("cpu")


def reference_generator(gen: SpatialGenerator, coords: torch.Tensor, z: torch.Tensor | None):
    """The textbook form: Linear on [x, y], plus W_z z, activation, then the body modules."""
    hidden = gen.coord_layer(coords)
    if z is not None and gen.z_layer is not None:
        hidden = hidden + gen.z_layer(z)[:, None, :]
    return gen.body(gen.first_activation(hidden))


@pytest.mark.parametrize("activation", ["tanh", "relu", "leaky_relu", "gelu", "silu"])
@pytest.mark.parametrize("shared", [False, True])
def test_fused_generator_equals_the_plain_mlp(activation, shared):
    torch.manual_seed(0)
    gen = SpatialGenerator(z_dim=3, n_out=2, hidden=16, num_layers=3, activation=activation)
    z = torch.randn(4, 3, requires_grad=True)
    coords = torch.randn(7, 2) if shared else torch.randn(4, 7, 2)
    fast = gen(coords, z)
    slow = reference_generator(gen, coords, z)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    # gradients too: the in-place activations must not corrupt the backward pass
    (grad_fast,) = torch.autograd.grad(fast.square().sum(), z)
    (grad_slow,) = torch.autograd.grad(slow.square().sum(), z)
    torch.testing.assert_close(grad_fast, grad_slow, rtol=1e-4, atol=1e-6)


def test_generator_without_z_still_needs_a_batch_for_shared_coordinates():
    gen = SpatialGenerator(z_dim=0, n_out=1, hidden=8, num_layers=2, activation="tanh")
    coords = torch.randn(2, 5, 2)
    torch.testing.assert_close(gen(coords, None), reference_generator(gen, coords, None))
    with pytest.raises(ValueError, match="need z"):
        gen(torch.randn(5, 2), None)


@pytest.mark.parametrize("augment", [False, True])
def test_step_loss_terms_equal_the_model_loss_terms_on_the_same_random_stream(augment):
    torch.manual_seed(0)
    model = SpatialVAE(ModelConfig(z_dim=2, hidden_dim=16, encoder="mlp"), (1, 12, 12))
    images = torch.randn(5, 1, 12, 12)
    ours = loss_terms(
        model,
        images,
        draw_noise(torch.Generator().manual_seed(3), 5, model.n_latent, augment, slice(None), CPU),
        freeze_z=False,
    )
    generator = torch.Generator().manual_seed(3)
    encoder_images, gamma = images, None
    if augment:  # what the loop drew before: gamma first, then the model's eps
        from napari_spatial_vae.core.coords import warp_images

        gamma = torch.rand(5, generator=generator) * (2.0 * torch.pi)
        encoder_images = warp_images(images, gamma, None)
    theirs = model.loss_terms(images, encoder_images, gamma, False, generator)
    torch.testing.assert_close(ours.neg_elbo, theirs.neg_elbo)


def test_a_rank_slice_of_the_noise_is_the_matching_rows_of_the_global_draw():
    full = draw_noise(torch.Generator().manual_seed(1), 9, 4, True, slice(None), CPU)
    part = draw_noise(torch.Generator().manual_seed(1), 9, 4, True, slice(1, None, 2), CPU)
    assert torch.equal(part.eps, full.eps[1::2]) and torch.equal(part.gamma, full.gamma[1::2])


def _defocused_ctf(batch: int, size: int) -> torch.Tensor:
    """``(batch, size, size // 2 + 1)`` CTFs, defocus 1-2.5 µm at 3 Å/px, 300 kV."""
    ones = torch.ones(batch, dtype=torch.float64)
    defocus = torch.linspace(10000.0, 25000.0, batch, dtype=torch.float64)
    return evaluate_ctf(
        FrequencyGrid(size, size), defocus, defocus + 200.0, 30.0 * ones, 300.0 * ones,
        2.7 * ones, 0.1 * ones, 3.0 * ones,
    )  # fmt: skip


# the three paths the bf16 autocast covers: the paper's MLP encoder, the default rotation
# search (K candidate renderings per image) and the same with each particle's CTF applied
@pytest.mark.parametrize(
    ("encoder", "search", "with_ctf"),
    [("mlp", False, False), ("equivariant", True, False), ("equivariant", True, True)],
)
def test_bf16_generator_stays_close_to_fp32(encoder, search, with_ctf):
    torch.manual_seed(0)
    config = ModelConfig(
        z_dim=2, hidden_dim=64, encoder=encoder, rotation_search=search, encoder_rotations=8
    )
    model = SpatialVAE(config, (1, 16, 16))
    images = torch.randn(8, 1, 16, 16)
    noise = draw_noise(torch.Generator().manual_seed(0), 8, model.n_latent, False, slice(None), CPU)
    ctf = _defocused_ctf(8, 16) if with_ctf else None
    fp32 = loss_terms(model, images, noise, False, ctf=ctf)
    bf16 = loss_terms(model, images, noise, False, generator_autocast("bf16", CPU), ctf=ctf)
    assert bf16.recon.dtype == torch.float32
    torch.testing.assert_close(bf16.neg_elbo, fp32.neg_elbo, rtol=2e-2, atol=0.5)
    bf16.neg_elbo.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_precision_checks():
    check_precision("bf16", CPU)
    with pytest.raises(ConfigError, match="NVIDIA"):
        check_precision("tf32", CPU)
    with pytest.raises(ConfigError, match="precision"):
        check_precision("fp8", CPU)


def test_cpu_bf16_flags_come_from_the_first_flags_line():
    zen3 = "processor\t: 0\nflags\t\t: fpu avx avx2 fma\nprocessor\t: 1\n"
    sapphire = "flags\t\t: avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
    assert cpu_bf16_flags(zen3) == []
    assert cpu_bf16_flags(sapphire) == ["avx512_bf16", "amx_bf16"]
    assert cpu_bf16_flags("") == []


def test_auto_precision_follows_the_cpu_and_explicit_choices_pass_through():
    chosen, reason = resolve_precision("auto", CPU)
    assert chosen == ("bf16" if cpu_bf16_flags() else "fp32")
    assert reason.startswith("auto: ")
    assert resolve_precision("fp32", CPU) == ("fp32", "as set")
    assert resolve_precision("bf16", CPU) == ("bf16", "as set")
    with pytest.raises(ConfigError, match="NVIDIA"):
        resolve_precision("tf32", CPU)


def _train_and_say(config, images, run_dir):
    """Train; return the first line training states (the "started" message) and the history."""
    messages = []
    result = train(
        config,
        images,
        run_dir,
        on_update=lambda u: messages.append(u.message) if u.kind == "started" else None,
    )
    return messages[0], result.history


def test_the_run_states_the_precision_it_chose(tmp_path, tiny_particles, make_config):
    message, _ = _train_and_say(make_config(epochs=1), tiny_particles.images, tmp_path / "r")
    expected = f"precision: {resolve_precision('auto', CPU)[0]} (auto: "
    assert make_config().precision == "auto"
    assert expected in message
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["precision"].startswith(expected) and saved["config"]["precision"] == "auto"


def test_streamed_batches_equal_resident_batches(tiny_particles):
    images = tiny_particles.images
    resident = ImageFeeder(images, np.arange(10, 60), CPU, normalize=True)
    streamed = ImageFeeder(images, np.arange(10, 60), CPU, normalize=True, resident_limit_bytes=0)
    assert resident.resident and not streamed.resident
    order = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    for a, b in zip(resident.batches(16, order), streamed.batches(16, order), strict=True):
        torch.testing.assert_close(a, b)


def test_streamed_bernoulli_range_check_reports_the_bad_values():
    images = np.full((6, 8, 8), 2.0, dtype=np.float32)
    feeder = ImageFeeder(
        images, None, CPU, normalize=False, check_unit_range=True, resident_limit_bytes=0
    )
    with pytest.raises(DataError, match=r"0\.\.1"):
        list(feeder.batches(4))


def test_retained_freed_memory_is_scoped():
    with retained_freed_memory() as active:
        assert isinstance(active, bool)
        torch.empty(64 * 1024**2, dtype=torch.uint8).fill_(1)  # a block glibc would mmap
    with retained_freed_memory(enabled=False) as active:
        assert active is False


def test_bf16_training_runs_and_records_its_precision(tmp_path, tiny_particles, make_config):
    result = train(make_config(epochs=1, precision="bf16"), tiny_particles.images, tmp_path / "r")
    assert result.epochs_completed == 1
    assert np.isfinite(result.history[0]["elbo"])
    with pytest.raises(ConfigError, match="NVIDIA"):
        train(make_config(precision="tf32"), tiny_particles.images, tmp_path / "t")


def test_in_place_activation_choice_is_safe_for_autograd():
    from napari_spatial_vae.core.generators import _can_run_in_place

    assert _can_run_in_place(nn.Tanh()) and _can_run_in_place(nn.ReLU())
    assert not _can_run_in_place(nn.GELU()) and not _can_run_in_place(nn.SiLU())
    assert not _can_run_in_place(nn.LeakyReLU(0.0))


def test_coarse_to_fine_runs_where_binning_applies_and_says_why_not_elsewhere(make_config):
    shape = (1, 20, 20)
    assert plan_coarse_to_fine(make_config(coarse_fraction=0.5), shape).binning == 2
    assert plan_coarse_to_fine(make_config(coarse_fraction=0.0), shape).describe() == (
        "coarse-to-fine: off"
    )
    odd = plan_coarse_to_fine(make_config(coarse_fraction=0.5), (1, 21, 21))
    assert odd.binning == 1 and odd.describe() == "coarse-to-fine: off (odd box 21x21)"
    assert "bernoulli" in plan_coarse_to_fine(make_config(likelihood="bernoulli"), shape).why_not


def test_coarse_epochs_train_on_binned_particles(tmp_path, tiny_particles, make_config):
    def run(fraction):
        config = make_config(epochs=2, coarse_fraction=fraction)
        return _train_and_say(config, tiny_particles.images, tmp_path / f"r{fraction}")

    message, history = run(0.5)
    assert "coarse-to-fine: 2x2-binned particles for the first 50% of the run" in message
    # history.csv says which epochs were binned (their train ELBO covers the bins)
    train_rows = [row for row in history if row["split"] == "train"]
    assert train_rows[0]["binned"] == 1.0 and train_rows[1]["binned"] == 0.0
    _, plain = run(0.0)
    # epoch 1 compared binned images (a quarter of the pixels), epoch 2 full-size ones
    assert history[0]["recon"] != pytest.approx(plain[0]["recon"], rel=0.2)
    assert all(math.isfinite(row["elbo"]) for row in history)


def test_z_in_every_layer_is_a_per_image_bias_of_each_hidden_layer():
    torch.manual_seed(0)
    gen = SpatialGenerator(z_dim=2, n_out=1, hidden=8, num_layers=3, activation="tanh",
                           z_every_layer=True)  # fmt: skip
    coords, z = torch.randn(3, 10, 2), torch.randn(3, 2)
    # the same function written out: Linear -> tanh with z added to every hidden layer
    hidden = torch.tanh(gen.coord_layer(coords) + gen.z_layer(z)[:, None])
    linears = [m for m in gen.body if isinstance(m, torch.nn.Linear)]
    for linear, z_bias in zip(linears[:-1], gen.z_hidden, strict=True):
        hidden = torch.tanh(linear(hidden) + z_bias(z)[:, None])
    expected = linears[-1](hidden)
    assert torch.allclose(gen(coords, z), expected, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.allclose(gen(coords, z).float(), expected, atol=5e-2)
