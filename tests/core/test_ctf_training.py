"""The CTF in the model and the training loop: filtering every candidate, feeding each batch."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from napari_spatial_vae.core.ctf import CtfBatches, CtfParameters, apply_filter, resolve_ctf
from napari_spatial_vae.core.errors import ConfigError, DataError
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.simulate import CtfSimulation, simulate_particles
from napari_spatial_vae.core.train import train

SIZE = 24


@pytest.fixture(scope="module")
def ctf_particles():
    """64 noisy 24x24 particles behind a CTF (0.5-3.5 µm at 3 Å/px), white."""
    return simulate_particles(
        64, SIZE, snr=1.0, max_shift_px=0.7, blob_sigma_px=1.2, seed=5, ctf=CtfSimulation()
    )


def _model(make_config, **overrides):
    torch.manual_seed(0)
    return SpatialVAE(make_config(**overrides).model, (1, SIZE, SIZE))


def _filters(particles, positions):
    batches = CtfBatches(particles.ctf, (SIZE, SIZE), torch.device("cpu"))
    return batches.filters(torch.as_tensor(positions))


def test_apply_ctf_filters_each_rendering_over_the_whole_box(make_config, ctf_particles):
    model = _model(make_config, rotation_search=False)
    ctf = _filters(ctf_particles, [0, 1, 2])
    mean, _ = model.decode(torch.randn(3, 1), torch.zeros(3), torch.zeros(3, 2))
    expected = model.targets(apply_filter(model.render(mean), ctf[:, None]))
    assert torch.allclose(model.apply_ctf(mean, ctf), expected, atol=1e-5)


def test_every_rotation_candidate_gets_its_images_ctf(make_config, ctf_particles):
    model = _model(make_config)  # equivariant encoder with rotation search
    batch, k = 3, model.config.encoder_rotations
    ctf = _filters(ctf_particles, [4, 9, 1])
    mean, _ = model.decode_candidates(
        torch.randn(batch, 1), torch.zeros(batch), torch.zeros(batch, 2), -model.encoder.angles
    )
    assert mean.shape[0] == batch * k
    filtered = model.apply_ctf(mean, ctf)
    repeated = ctf.repeat_interleave(k, dim=0)  # row b * K + k belongs to image b
    expected = model.targets(apply_filter(model.render(mean), repeated[:, None]))
    assert torch.allclose(filtered, expected, atol=1e-5)
    # and a different image's CTF would not do
    assert not torch.allclose(filtered, model.apply_ctf(mean, ctf.flip(0)), atol=1e-3)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1), b.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def test_binned_renderings_get_the_ctf_of_the_binned_image(make_config, ctf_particles):
    # coarse-to-fine with a CTF: a smooth particle rendered at the 2x2 bins' centres and
    # filtered by the cropped CTF must look like the full-size filtered rendering, binned
    model = _model(make_config, rotation_search=False, circular_mask=False)
    binned = model.binned_layout(2)
    ctf = _filters(ctf_particles, range(4))

    def particle(grid):  # two blobs of 3 px std (coordinates span 2 over the box)
        centres = torch.tensor([[0.2, -0.1], [-0.3, 0.25]])
        distance2 = ((grid[None] - centres[:, None]) ** 2).sum(-1)
        return torch.exp(-distance2 / (2 * (3 * 2 / SIZE) ** 2)).sum(0).expand(4, 1, -1)

    reference = binned.targets(model.render(model.apply_ctf(particle(model.layout.grid), ctf)))
    coarse = model.apply_ctf(particle(binned.grid), ctf, binned)
    assert coarse.shape == reference.shape
    assert (_correlation(coarse, reference) > 0.999).all()
    assert (coarse - reference).norm() < 0.06 * reference.norm()
    # the binned grid's own CTF at the full-size pixel size (frequencies misread) is far off
    misread = CtfBatches(ctf_particles.ctf, (SIZE // 2, SIZE // 2), torch.device("cpu"))
    canvas = torch.zeros(4, 1, (SIZE // 2) ** 2)
    canvas[:, :, binned.pixel_index] = particle(binned.grid)
    half = (4, 1, SIZE // 2, SIZE // 2)
    filtered = apply_filter(canvas.reshape(half), misread.filters(torch.arange(4))[:, None])
    wrong = filtered.flatten(2)[:, :, binned.pixel_index]
    assert (_correlation(wrong, reference) < 0.95).all()


def test_coarse_to_fine_trains_with_the_ctf(tmp_path, make_config, ctf_particles):
    started = []
    result = train(
        make_config(epochs=2, coarse_fraction=0.5),
        ctf_particles.images,
        tmp_path / "run",
        ctf=ctf_particles.ctf,
        on_update=lambda u: started.append(u.message) if u.kind == "started" else None,
    )
    assert "coarse-to-fine: 2x2-binned particles for the first 50%" in started[0]
    assert "CTF: 64 particles" in started[0]
    test = [r["elbo"] for r in result.history if r["split"] == "test"]
    assert len(test) == 2 and all(np.isfinite(test))


def test_a_flat_unit_transfer_changes_nothing(make_config, ctf_particles):
    model = _model(make_config)
    images = torch.from_numpy(ctf_particles.images[:4])[:, None]
    eps = torch.randn(4, model.n_latent, generator=torch.Generator().manual_seed(0))
    plain = model.terms_from_noise(images, None, None, eps)
    ones = torch.ones(4, SIZE, SIZE // 2 + 1)
    with_ones = model.terms_from_noise(images, None, None, eps, ctf=ones)
    assert torch.allclose(plain.neg_elbo, with_ones.neg_elbo, rtol=1e-4, atol=1e-3)
    real = model.terms_from_noise(images, None, None, eps, ctf=_filters(ctf_particles, range(4)))
    assert not torch.allclose(plain.recon, real.recon)


@pytest.mark.parametrize("dark", [False, True])
def test_training_with_the_ctf_runs_end_to_end(tmp_path, make_config, dark):
    # dark (as recorded) and white (inverted) particles train with the same CTF sign: the
    # generator's template is free in sign, so the dark stack's template is simply negative
    sim = simulate_particles(
        64,
        SIZE,
        snr=1.0,
        max_shift_px=0.7,
        blob_sigma_px=1.2,
        seed=5,
        ctf=CtfSimulation(dark=dark),
    )
    # full size throughout, so the train ELBOs of the epochs compare (a binned epoch's do not)
    config = make_config(epochs=3, coarse_fraction=0.0)
    result = train(config, sim.images, tmp_path / "run", ctf=sim.ctf)
    test = [r["elbo"] for r in result.history if r["split"] == "test"]
    assert len(test) == 3 and all(np.isfinite(test))
    trained = [r["elbo"] for r in result.history if r["split"] == "train"]
    assert trained[-1] > trained[0] + 5.0  # it learns: the first epoch starts untrained
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert re.fullmatch(r"CTF: 64 particles, defocus 0\.\d-3\.\d µm, astigmatic", saved["ctf"])
    assert saved["config"]["ctf"] == "auto"


def test_the_ctf_is_in_the_likelihood_of_training(tmp_path, make_config, ctf_particles):
    on = train(make_config(epochs=1), ctf_particles.images, tmp_path / "on", ctf=ctf_particles.ctf)
    off = train(
        make_config(epochs=1, ctf="off"),
        ctf_particles.images,
        tmp_path / "off",
        ctf=ctf_particles.ctf,
    )
    assert on.history[0]["elbo"] != off.history[0]["elbo"]
    assert json.loads((tmp_path / "off" / "config.json").read_text())["ctf"] == "CTF: off"


def test_a_separate_test_stack_needs_its_ctf(tmp_path, make_config, ctf_particles):
    images = ctf_particles.images
    with pytest.raises(DataError, match="test particles do not"):
        train(
            make_config(),
            images[:48],
            tmp_path / "r",
            test_images=images[48:],
            ctf=ctf_particles.ctf.subset(np.arange(48)),
        )
    result = train(
        make_config(epochs=1),
        images[:48],
        tmp_path / "r2",
        test_images=images[48:],
        ctf=ctf_particles.ctf.subset(np.arange(48)),
        test_ctf=ctf_particles.ctf.subset(np.arange(48, 64)),
    )
    assert [r["split"] for r in result.history] == ["train", "test"]


def test_resolve_ctf_choices(ctf_particles):
    ctf = ctf_particles.ctf
    assert resolve_ctf("auto", ctf, None, 64) is ctf
    assert resolve_ctf("off", ctf, "x.star: CTF columns partly missing", 64) is None
    assert resolve_ctf("auto", None, None, 64) is None
    assert resolve_ctf("auto", ctf, None, 64, likelihood="bernoulli") is None
    with pytest.raises(DataError, match=r"^x\.star: CTF columns partly missing$"):
        resolve_ctf("auto", None, "x.star: CTF columns partly missing", 64)
    with pytest.raises(DataError, match="--ctf on, but the particles carry no CTF"):
        resolve_ctf("on", None, None, 64)
    with pytest.raises(DataError, match="CTF parameters for 64 of 10 images"):
        resolve_ctf("on", ctf, None, 10)
    bad = CtfParameters(ctf.values.copy(), source="p.star")
    bad.values[6, 0] = -5.0
    with pytest.raises(DataError, match=r"^p\.star: particle row 7: negative defocus"):
        resolve_ctf("auto", bad, None, 64)


def test_config_validates_the_ctf_choice(make_config):
    with pytest.raises(ConfigError, match="ctf must be one of auto, on, off"):
        make_config(ctf="yes").validate()
    with pytest.raises(ConfigError, match="gaussian likelihood only"):
        make_config(ctf="on", likelihood="bernoulli", fit_noise=False, normalize=False).validate()


def test_phase_flipped_encoder_view(make_config, ctf_particles):
    model = _model(make_config, ctf_encoder="flip")
    ctf = _filters(ctf_particles, [0, 1])
    clean = torch.randn(2, 1, SIZE, SIZE)
    recorded = apply_filter(clean, ctf[:, None])
    flipped = model.encoder_view(recorded, ctf)
    expected = apply_filter(clean, ctf.abs()[:, None])
    # compare spectra below the Nyquist column (an astigmatic CTF is not Hermitian there, so
    # irfft2 symmetrises that column differently after one or two filterings)
    spectrum, wanted = torch.fft.rfft2(flipped)[..., :-1], torch.fft.rfft2(expected)[..., :-1]
    assert torch.allclose(spectrum, wanted, atol=1e-3)
    assert torch.equal(_model(make_config).encoder_view(recorded, ctf), recorded)


def test_a_flipping_encoder_trains_and_needs_the_ctf_to_infer(tmp_path, make_config, ctf_particles):
    from napari_spatial_vae.core.infer import encode_stack, iter_inference

    config = make_config(epochs=1, ctf_encoder="flip")
    result = train(config, ctf_particles.images, tmp_path / "run", ctf=ctf_particles.ctf)
    first = ctf_particles.ctf.subset(np.arange(8))
    [batch] = iter_inference(result.model, config, ctf_particles.images[:8], ctf=first)
    assert np.isfinite(batch.poses.theta).all()
    with pytest.raises(DataError, match="encoder sees phase-flipped particles"):
        encode_stack(result.model, config, ctf_particles.images[:8])
    with pytest.raises(ConfigError, match="ctf_encoder='flip' needs the particles' CTF"):
        train(make_config(ctf_encoder="flip"), ctf_particles.images, tmp_path / "r2")


def test_streamed_and_resident_stacks_feed_the_same_ctf(tmp_path, make_config, ctf_particles):
    # the CTF parameters follow each batch's positions whether the images stay on the device
    # or are streamed from the stack batch by batch
    resident = train(
        make_config(epochs=1), ctf_particles.images, tmp_path / "a", ctf=ctf_particles.ctf
    )
    streamed = train(
        make_config(epochs=1, resident_gb=0.0),
        ctf_particles.images,
        tmp_path / "b",
        ctf=ctf_particles.ctf,
    )
    elbos = [(r["split"], r["elbo"]) for r in resident.history]
    assert [(r["split"], r["elbo"]) for r in streamed.history] == elbos
