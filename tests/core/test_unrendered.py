"""The variation particles share that the model does not render (core/unrendered.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_spatial_vae.core.coords import warp_images
from napari_spatial_vae.core.data import ImageFeeder
from napari_spatial_vae.core.unrendered import (
    SEVERAL_DIRECTIONS_RATIO,
    UNRENDERED_MIN_PARTICLES,
    UNRENDERED_WARNING_SHARE,
    UnrenderedVariation,
    _random_symmetries,
    measure_unrendered,
    residuals_at,
    shared_excesses,
    unrendered_warning,
)
from tests.untrained import sharp_untrained_model

SIZE = 24


def _pattern(size: int = SIZE, plus_at=(7, 15), minus_at=(16, 9)) -> torch.Tensor:
    """``(size, size)`` a positive and a negative blob off-centre: no symmetry of the grid."""
    rows, columns = np.mgrid[:size, :size]
    plus = np.exp(-((rows - plus_at[0]) ** 2 + (columns - plus_at[1]) ** 2) / 4.0)
    minus = np.exp(-((rows - minus_at[0]) ** 2 + (columns - minus_at[1]) ** 2) / 4.0)
    pattern = plus - minus
    return torch.from_numpy(pattern / np.linalg.norm(pattern)).float()


def test_each_image_is_turned_by_one_symmetry_of_the_grid_exactly():
    image = _pattern()[None]
    turned = _random_symmetries(image.expand(8, 1, SIZE, SIZE), np.arange(8))
    # eight distinct images, each a permutation of the same pixels (no interpolation)
    assert len({tuple(t.flatten().tolist()) for t in turned}) == 8
    for t in turned:
        assert torch.equal(t.flatten().sort().values, image.flatten().sort().values)
    # a picture the square's symmetries keep comes back unchanged, whichever is drawn
    rows, columns = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    round_image = torch.from_numpy(np.exp(-(rows**2 + columns**2) / 20.0)).float()[None]
    kept = _random_symmetries(round_image.expand(8, 1, SIZE, SIZE), np.arange(8))
    assert torch.equal(kept, round_image.expand(8, 1, SIZE, SIZE))
    # a box that is not square keeps its shape (half turns and mirrors only)
    assert _random_symmetries(torch.randn(8, 1, 20, 30), np.arange(8)).shape == (8, 1, 20, 30)


def test_noise_shares_nothing_and_a_pattern_every_residual_holds_is_found():
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(1024, 1, SIZE, SIZE, generator=generator)
    amplitude = 3.0 * torch.randn(1024, generator=generator)  # variance 9 along the pattern
    patterned = noise + amplitude[:, None, None, None] * _pattern()
    assert shared_excesses(noise)[0] < 0.05 * 9.0
    assert shared_excesses(patterned)[0] > 0.5 * 9.0
    # smoothed noise: its strongest direction is strong, but the same in every orientation
    smooth = torch.nn.functional.avg_pool2d(noise, 5, 1, 2)
    smooth = smooth / smooth.std()
    top = torch.linalg.svdvals(smooth.flatten(1) - smooth.flatten(1).mean(0))[0] ** 2 / 1024
    assert shared_excesses(smooth)[0] < 0.1 * float(top)
    # colour channels and a box that is not square are measured the same way
    assert shared_excesses(torch.randn(512, 3, 20, 26, generator=generator))[0] < 0.05 * 9.0


def test_one_shared_pattern_leaves_the_second_direction_empty_and_two_fill_it():
    # a fold leaves one variation unrendered; more kinds of variation than z renders, several
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(2048, 1, SIZE, SIZE, generator=generator)
    first, second = _pattern(), _pattern(plus_at=(5, 10), minus_at=(18, 14))
    assert abs(float((first * second).sum())) < 0.05  # two independent directions
    one = noise + 3.0 * torch.randn(2048, generator=generator)[:, None, None, None] * first
    two = one + 3.0 * torch.randn(2048, generator=generator)[:, None, None, None] * second
    strongest, runner_up = shared_excesses(one)
    assert strongest > 0.5 * 9.0 and runner_up < 0.1 * 9.0
    strongest, runner_up = shared_excesses(two)
    # the null's spectrum holds more of two spread patterns, so each excess is a little lower
    assert strongest > 0.4 * 9.0 and runner_up > 0.4 * 9.0
    assert shared_excesses(two, count=1)[0] == strongest  # the first, alone too
    variation = UnrenderedVariation(residual=strongest, rendered=1.0, particles=2048,
                                    runner_up=runner_up)  # fmt: skip
    assert 0.5 < variation.runner_up_ratio < 2.0 and variation.several_directions
    strongest, runner_up = shared_excesses(one)
    assert not UnrenderedVariation(strongest, 1.0, 2048, runner_up).several_directions
    nothing = UnrenderedVariation(0.0, 1.0, 2048)
    assert nothing.runner_up_ratio == 0.0 and not nothing.several_directions


def _rendered_particles(model, count: int, generator: torch.Generator):
    """Particles the model renders itself at random poses and z, with white noise."""
    theta = (torch.rand(count, generator=generator) * 2 - 1) * np.pi
    shift = 0.1 * torch.randn(count, 2, generator=generator)
    z = torch.randn(count, 1, generator=generator)
    with torch.no_grad():
        clean = model.expected_image(model.decode(z, theta, shift, batch_size=count)[0])
    noise = 0.3 * clean.std() * torch.randn(clean.shape, generator=generator)
    return clean + noise, theta, shift, z


def test_residuals_at_the_true_pose_hold_only_what_the_model_does_not_render():
    model = sharp_untrained_model()
    generator = torch.Generator().manual_seed(1)
    images, theta, shift, z = _rendered_particles(model, 512, generator)
    # a pattern that moves with each particle (its pose) and varies in strength
    pattern = _pattern().expand(len(images), 1, SIZE, SIZE)
    moving = warp_images(pattern, theta, shift)
    amplitude = 2.0 * images.std() * torch.randn(len(images), generator=generator)
    with torch.no_grad():
        plain, rendering = residuals_at(model, images, None, theta, shift, z)
        added, _ = residuals_at(
            model, images + amplitude[:, None, None, None] * moving, None, theta, shift, z
        )
        expected = model.expected_image(model.decode(z, None, None, len(z))[0])
    torch.testing.assert_close(rendering, expected)
    pattern_variance = float(amplitude.var())
    assert shared_excesses(plain)[0] < 0.05 * pattern_variance
    # found only if the residual is turned back by the pose it was rendered at: a wrong
    # sign or order of the alignment would smear the pattern over many directions
    assert shared_excesses(added)[0] > 0.5 * pattern_variance


def test_measuring_reads_each_particle_as_inference_does():
    model = sharp_untrained_model()
    generator = torch.Generator().manual_seed(2)
    images, *_ = _rendered_particles(model, UNRENDERED_MIN_PARTICLES, generator)
    feed = ImageFeeder(images[:, 0].numpy(), None, torch.device("cpu"), normalize=False)
    positions = torch.arange(len(feed))
    measured = measure_unrendered(model, feed, None, positions)
    assert measured is not None and measured.particles == len(feed)
    assert measured.rendered > 0 and np.isfinite(measured.residual)
    assert measured.runner_up >= 0 and np.isfinite(measured.runner_up)
    assert not model.training  # left in the mode it was in
    # by default the first UNRENDERED_SAMPLE particles: here all of them, the same measure
    assert measure_unrendered(model, feed, None) == measured
    # too few particles, or no z to compare with: no measure
    assert measure_unrendered(model, feed, None, positions[:-1]) is None
    assert measure_unrendered(sharp_untrained_model(z_dim=0), feed, None, positions) is None


@pytest.mark.parametrize(
    ("share", "words"), [(1.04, "104% as strong"), (5e4, "more than ten times as strong")]
)
def test_the_warning_names_the_share_and_what_to_try(share, words):
    # one direction (a fold leaves one): a folded z or a missing dimension, both remedies
    warning = unrendered_warning(UnrenderedVariation(share, 1.0, 2048))
    assert warning is not None and "\n" not in warning
    assert words in warning and "--seed" in warning and "--z-dim" in warning
    assert "folded" in warning
    below = UNRENDERED_WARNING_SHARE * 0.99
    assert unrendered_warning(UnrenderedVariation(below, 1.0, 2048)) is None
    assert unrendered_warning(None) is None


@pytest.mark.parametrize(
    ("runner_up_ratio", "several"),
    [
        (0.0, False),
        (SEVERAL_DIRECTIONS_RATIO * 0.99, False),
        (SEVERAL_DIRECTIONS_RATIO, True),
        (1.43, True),
    ],
)
def test_the_warning_points_to_more_latents_when_the_variation_has_several_directions(
    runner_up_ratio, several
):
    # the ends measured (docs/defaults.md): folds 0.0, the Hubble galaxies with z-dim 1 1.43
    share = 1.10
    variation = UnrenderedVariation(share, 1.0, 2048, runner_up=runner_up_ratio * share)
    warning = unrendered_warning(variation)
    assert warning is not None and "110% as strong" in warning and "--z-dim" in warning
    if several:
        assert "vary in more ways than z renders" in warning and "folded" not in warning
        assert "another --seed would not" in warning
    else:
        assert "folded" in warning and "train again with another --seed" in warning
