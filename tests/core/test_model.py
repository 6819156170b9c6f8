import dataclasses
import math

import pytest
import torch

from napari_spatial_vae.core.config import ACTIVATIONS, ModelConfig
from napari_spatial_vae.core.encoders import Posterior, RotationSearch
from napari_spatial_vae.core.errors import ConfigError
from napari_spatial_vae.core.model import HALF_TURN_MARGIN, SpatialVAE
from tests.untrained import sharp_untrained_model, smooth_blobs

SHAPE = (1, 16, 16)


def small(**fields) -> SpatialVAE:
    torch.manual_seed(0)
    base = dict(z_dim=2, hidden_dim=24, encoder_rotations=8)
    base.update(fields)
    return SpatialVAE(ModelConfig(**base), SHAPE)


def pose_gradients(model: SpatialVAE) -> tuple[torch.Tensor, torch.Tensor | None]:
    """d(-ELBO)/d(posterior means) (and d/d(rotation-bin probabilities) when searching)."""
    images = torch.randn(4, *SHAPE)
    mu = torch.randn(4, model.n_latent, requires_grad=True)
    posterior = Posterior(mu, torch.full_like(mu, -3.0))
    attention = None
    if model.config.searches_rotation:
        k = model.config.encoder_rotations
        attention = torch.full((4, k), 1.0 / k, requires_grad=True)
        candidates = -2 * math.pi * torch.arange(k) / k
        model.encoder.search_rotation = lambda _, half_turn=False: [
            (posterior, RotationSearch(attention, candidates))
        ]
    else:
        model.encoder.forward = lambda _: posterior
    model.loss_terms(images).neg_elbo.sum().backward()
    return mu.grad, None if attention is None else attention.grad


@pytest.mark.parametrize(
    ("encoder", "search"), [("mlp", False), ("equivariant", False), ("equivariant", True)]
)
def test_gradients_reach_theta_and_the_shift(encoder, search):
    model = small(encoder=encoder, rotation_search=search)
    assert model.n_latent == 1 + 2 + 2
    grad, bins = pose_gradients(model)
    assert grad[:, 0].abs().min() > 0  # theta (the in-bin offset when searching)
    assert grad[:, 1:3].abs().min() > 0  # dx, dy
    if search:
        assert bins.abs().sum(dim=1).min() > 0  # every image's bin probabilities


def test_without_rotation_and_translation_the_pose_gets_exactly_zero_gradient():
    images = torch.randn(4, *SHAPE)
    gamma = torch.full((4,), 0.7, requires_grad=True)
    # with rotation inferred, the augmentation offset feeds theta and receives gradient
    rotating = small(encoder="mlp")
    rotating.loss_terms(images, images, gamma).neg_elbo.sum().backward()
    assert gamma.grad.abs().sum() > 0
    gamma.grad = None
    # --no-rotate --no-translate: no pose latent exists, the offset is ignored: exactly zero
    fixed = small(encoder="mlp", rotate=False, translate=False)
    assert fixed.n_latent == 2
    theta, shift, z = fixed.split_latent(torch.randn(3, fixed.n_latent))
    assert theta is None and shift is None and z.shape == (3, 2)
    loss = fixed.loss_terms(images, images, gamma).neg_elbo.sum() + 0.0 * gamma.sum()
    loss.backward()
    assert torch.equal(gamma.grad, torch.zeros(4))


def test_no_translate_keeps_rotation_only():
    model = small(encoder="mlp", translate=False)
    theta, shift, _z = model.split_latent(torch.randn(2, model.n_latent))
    assert theta is not None and shift is None
    grad, _ = pose_gradients(model)
    assert grad[:, 0].abs().min() > 0


@torch.no_grad()
@pytest.mark.parametrize("search", [False, True])
def test_equivariant_encoder_theta_follows_an_exact_rotation_of_the_input(search):
    model = small(encoder="equivariant", encoder_rotations=8, rotation_search=search)
    images = torch.randn(1, *SHAPE)
    from napari_spatial_vae.core.coords import warp_images

    quarter = torch.tensor([math.pi / 2])
    rotated = warp_images(images, quarter, None)  # exact pixel permutation for 90 degrees
    before = model.encode(images).mu[0, 0]
    after = model.encode(rotated).mu[0, 0]
    # warp by +gamma makes the encoder predict theta + gamma
    difference = torch.remainder(after - before - math.pi / 2 + math.pi, 2 * math.pi) - math.pi
    assert abs(float(difference)) < 1e-4
    # and the other latents are invariant
    torch.testing.assert_close(
        model.encode(images).mu[:, 1:], model.encode(rotated).mu[:, 1:], atol=1e-5, rtol=1e-4
    )


@torch.no_grad()
@pytest.mark.parametrize(
    ("masked", "size", "binning"),
    [(True, 33, 1), (False, 33, 1), (False, 28, 1), (True, 40, 2), (False, 40, 2)],
)
def test_rotation_search_candidates_equal_rendering_at_each_candidate_pose(masked, size, binning):
    # without the mask the rotated corners must come from the generator too (not zeros:
    # zero logits would read as p = 0.5 on a black MNIST background)
    torch.manual_seed(1)
    model = SpatialVAE(
        ModelConfig(
            z_dim=2,
            hidden_dim=24,
            encoder_rotations=8,
            fit_noise=False,
            rotation_search=True,
            circular_mask=masked,
        ),
        (1, size, size),
    )
    z, offset = torch.randn(2, 2), torch.tensor([0.1, -0.2])
    shift = torch.tensor([[0.05, 0.0], [0.0, -0.08]])
    candidates = -2 * math.pi * torch.arange(8) / 8
    layout = model.binned_layout(binning)
    searched, _ = model.decode_candidates(z, offset, shift, candidates, layout)  # (2 * 8, 1, N)
    assert searched.shape == (16, 1, len(layout.pixel_index))
    for b in range(2):
        for k in (0, 1, 3, 6):
            direct, _ = model.decode(
                z[b : b + 1], offset[b : b + 1] + candidates[k], shift[b : b + 1], layout=layout
            )
            difference = (searched[b * 8 + k, 0] - direct[0, 0]).abs().max()
            assert difference < 0.05 * direct.abs().max()


def test_vanilla_and_fixed_pose_baselines_produce_images():
    vanilla = small(encoder="mlp", vanilla=True)
    assert vanilla.n_latent == 2
    mean, logstd = vanilla.decode(torch.randn(3, 2))
    assert mean.shape == (3, 1, len(vanilla.pixel_index))
    assert vanilla.render(mean).shape == (3, *SHAPE)
    assert logstd is not None  # fit_noise default


def test_bernoulli_model_outputs_logits_and_rgb_channels_work():
    model = SpatialVAE(
        ModelConfig(z_dim=1, hidden_dim=16, likelihood="bernoulli", fit_noise=False, encoder="mlp"),
        (3, 12, 12),
    )
    images = torch.rand(2, 3, 12, 12).round()
    terms = model.loss_terms(images)
    assert terms.recon.shape == (2,) and torch.isfinite(terms.neg_elbo).all()
    assert model.expected_image(model.decode(torch.zeros(2, 1))[0]).shape == (2, 3, 12, 12)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"z_dim": -1}, "z_dim must be between"),
        ({"likelihood": "poisson"}, "likelihood must be one of"),
        ({"vanilla": True}, "use encoder='mlp'"),
        ({"rotate": False}, "needs rotation inference"),
        ({"theta_prior": 0.0}, "theta_prior must be >"),
        ({"likelihood": "bernoulli"}, "gaussian likelihood only"),
    ],
)
def test_invalid_model_settings_are_rejected_with_one_line(fields, message):
    with pytest.raises(ConfigError, match=message) as info:
        ModelConfig(**fields).validate()
    assert "\n" not in str(info.value)


@torch.no_grad()
@pytest.mark.parametrize("search", [False, True])
def test_z_is_read_from_the_particle_aligned_by_the_encoders_own_pose(search):
    from napari_spatial_vae.core.coords import pixel_grid, warp_images

    shape = (1, 32, 32)
    model = SpatialVAE(
        ModelConfig(z_dim=1, hidden_dim=16, encoder_rotations=8, rotation_search=search), shape
    )
    encoder = model.encoder
    # a smooth asymmetric template, posed by a rotation between two bins and a shift
    grid = pixel_grid(32, 32)
    blobs = torch.tensor([[-0.3, 0.1], [0.35, -0.2], [0.0, 0.4]])
    template = torch.exp(-((grid[:, None, :] - blobs) ** 2).sum(-1) / 0.05).sum(1)
    template = template.reshape(1, 1, 32, 32)
    k = 8
    attention = torch.zeros(1, k)
    attention[0, 3] = 1.0
    offset = torch.tensor([0.15])
    theta = -2 * math.pi * 3 / k + offset if search else torch.tensor([-2 * math.pi * 3 / k])
    shift = torch.tensor([[0.08, -0.05]])
    posed = warp_images(template, theta, shift)
    pose_mu = shift / model.dx_scale
    view = encoder.aligned_view(posed, attention, offset, pose_mu)
    # inside a smaller disk (the posed template's corners left the field of view)
    near = (grid.norm(dim=-1) < 0.7).reshape(1, 1, 32, 32)
    error = (view - template)[near].abs().max()
    assert error < 0.1 * template.max()  # two bilinear resamplings blur by ~6 %
    # the opposite rotation would leave the particle misaligned: the check can fail
    wrong = encoder.aligned_view(posed, attention, -offset, -pose_mu)
    assert (wrong - template)[near].abs().max() > 0.5 * template.max()


@torch.no_grad()
def test_z_that_ignores_half_turns_is_the_same_for_a_particle_aligned_upside_down():
    shape = (1, 24, 24)
    config = ModelConfig(z_dim=2, hidden_dim=16, encoder_rotations=8)
    aligned = torch.randn(3, *shape)
    turned = aligned.flip(-2, -1)  # the same particle turned by 180 degrees about the centre
    invariant = SpatialVAE(dataclasses.replace(config, z_half_turn_invariant=True), shape).encoder
    assert torch.allclose(invariant._read_z(aligned)[0], invariant._read_z(turned)[0], atol=1e-6)
    # without the option z tells them apart: the check can fail
    plain = SpatialVAE(dataclasses.replace(config, z_half_turn_invariant=False), shape).encoder
    assert not torch.allclose(plain._read_z(aligned)[0], plain._read_z(turned)[0], atol=1e-3)


@torch.no_grad()
@pytest.mark.parametrize("search", [False, True])
def test_the_pose_refinement_starts_at_the_first_look_and_corrects_theta_and_shift(search):
    shape = (1, 24, 24)
    k = 8
    config = ModelConfig(z_dim=1, hidden_dim=16, encoder_rotations=k, rotation_search=search)
    images = torch.randn(4, *shape)
    first_look = SpatialVAE(dataclasses.replace(config, refine_pose=False), shape)
    refined = SpatialVAE(dataclasses.replace(config, refine_pose=True), shape)
    # the same networks; the refinement's extra output rows start at zero: the same pose
    state = first_look.state_dict()
    for name, value in refined.state_dict().items():
        if value.shape == state[name].shape:
            value.copy_(state[name])
        else:
            value[: len(state[name])] = state[name]
    before = (
        first_look.encoder.search_rotation(images)[0][0] if search else first_look.encode(images)
    )
    after = refined.encoder.search_rotation(images)[0][0] if search else refined.encode(images)
    assert torch.allclose(before.mu, after.mu, atol=1e-6)
    # a correction moves theta's in-bin offset (search only) and the shift, nothing else
    refined.encoder.z_net[-1].bias[2:] = torch.tensor(
        [1.0, 0.5, -0.25][-refined.encoder.n_correction :]
    )
    moved = refined.encoder.search_rotation(images)[0][0] if search else refined.encode(images)
    expected = before.mu.clone()
    if search:
        expected[:, 0] += math.tanh(1.0) * math.pi / k
    expected[:, 1:3] += torch.tensor([0.5, -0.25])
    assert torch.allclose(moved.mu, expected, atol=1e-5)
    assert torch.equal(moved.logstd, after.logstd)


def test_a_batch_split_in_two_gives_the_gradient_of_the_whole_batch():
    # what data-parallel training relies on, with every default (pose refinement, z read
    # from the aligned particle and its half turn, rotation search): no image's terms depend
    # on the other images of its batch
    torch.manual_seed(0)
    model = SpatialVAE(ModelConfig(z_dim=1, hidden_dim=32, encoder_rotations=8), (1, 20, 20))
    with torch.no_grad():  # a refinement that is already doing something
        model.encoder.z_net[-1].weight[2:].normal_(0.0, 0.3)
    images = torch.randn(17, 1, 20, 20)
    eps = torch.randn(17, model.n_latent)

    def gradients(parts):
        model.zero_grad()
        for part in parts:
            model.terms_from_noise(images[part], None, None, eps[part]).neg_elbo.sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    whole = gradients([slice(0, 17)])
    split = gradients([slice(0, 9), slice(9, 17)])
    for name, gradient in whole.items():
        scale = gradient.abs().max().clamp_min(1e-12)
        assert (gradient - split[name]).abs().max() / scale < 1e-5, name


@torch.no_grad()
def test_the_half_turn_hypothesis_is_the_particle_turned_about_its_own_centre():
    from napari_spatial_vae.core.coords import align_images, particle_centre

    shape = (1, 24, 24)
    model = SpatialVAE(ModelConfig(z_dim=1, hidden_dim=16, half_turn_check="on"), shape)
    encoder = model.encoder
    images = torch.randn(5, *shape)
    (upright, search), (turned, turned_search) = encoder.search_rotation(images, half_turn=True)
    a = encoder.single_angle(search.attention, upright)
    b = encoder.single_angle(turned_search.attention, turned)
    theta_a, shift_a, z_a = model.split_latent(a.mu)
    theta_b, shift_b, z_b = model.split_latent(b.mu)
    # the pose correction starts at zero: the turned pose is a half turn with the same centre
    torch.testing.assert_close(torch.cos(theta_b - theta_a), -torch.ones(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(particle_centre(theta_b, shift_b), particle_centre(theta_a, shift_a))
    # the view z is read from at that pose is the aligned particle flipped on both axes
    upright_view = align_images(images, theta_a, shift_a)
    turned_view = align_images(images, theta_b, shift_b)
    torch.testing.assert_close(turned_view, upright_view.flip(-2, -1), atol=1e-4, rtol=0)
    torch.testing.assert_close(z_b, encoder._read_z(turned_view * encoder.mask)[0][:, :1])
    assert not torch.allclose(z_a, z_b, atol=1e-3)  # z of the two views differ: can fail


@torch.no_grad()
def test_the_half_turn_check_keeps_whichever_pose_renders_the_particle():
    shape = (1, 24, 24)
    k = 8
    # fixed noise: the cost is then the residual (a learned noise map of an untrained
    # generator would weigh the two poses' pixels differently)
    config = ModelConfig(
        z_dim=1, hidden_dim=16, encoder_rotations=k, half_turn_check="on", fit_noise=False
    )
    model = SpatialVAE(config, shape)
    with torch.no_grad():  # an untrained generator is nearly flat: make its template sharp
        model.generator.coord_layer.weight.mul_(3.0)
        model.generator.body[-1].weight.mul_(20.0)
    # particles the generator renders at known poses and z
    n = 6
    true = torch.cat(
        [torch.zeros(n, 1), torch.randn(n, 2) * 0.3, torch.randn(n, 1)], dim=1
    )  # in-bin offset 0, shift latents, z
    bins = torch.arange(n) % k
    candidates = -2 * math.pi * torch.arange(k) / k
    _, shift, z = model.split_latent(true)
    targets, _ = model.decode(z, candidates[bins], shift)  # noise-free renderings (B, C, N)
    right = torch.nn.functional.one_hot(bins, k).float()
    wrong = right.roll(k // 2, dims=1)  # the half turn ...
    wrong_mu = true.clone()
    wrong_mu[:, 1:3] *= -1.0  # ... about the same centre
    logstd = torch.full_like(true, -3.0)
    # rows 0-2: the encoder's pose is right; rows 3-5: the half turn is
    first = (torch.arange(n) < 3)[:, None]
    upright = (
        Posterior(torch.where(first, true, wrong_mu), logstd),
        RotationSearch(torch.where(first, right, wrong), candidates),
    )
    other = (
        Posterior(torch.where(first, wrong_mu, true), logstd),
        RotationSearch(torch.where(first, wrong, right), candidates),
    )
    chosen, search = model.better_hypothesis([upright, other], targets)
    # the turned pose is taken only when it is better by more than the margin
    right_cost, wrong_cost = (
        model._hypothesis_cost(*hypothesis, targets, None, model.layout, None)
        for hypothesis in (other, upright)
    )
    assert ((wrong_cost - right_cost)[3:] > HALF_TURN_MARGIN).all()
    torch.testing.assert_close(chosen.mu, true)
    torch.testing.assert_close(search.attention, right)


@torch.no_grad()
def test_the_half_turn_signal_names_the_particles_the_check_would_turn():
    model = sharp_untrained_model(fit_noise=False, half_turn_check="on")
    images = smooth_blobs()
    better = model.half_turn_fits_better(images, binning=1)  # full size
    # the training step's choice (the training objective's cost) at the same size
    hypotheses = model.encoder.search_rotation(model.encoder_view(images, None) * model.input_mask,
                                               half_turn=True)  # fmt: skip
    chosen, _ = model.better_hypothesis(hypotheses, model.targets(images))
    turned = ~torch.isclose(chosen.mu, hypotheses[0][0].mu).all(dim=1)
    # the check turns exactly the particles the signal names, and (an untrained encoder's
    # poses being arbitrary) some but not all of them
    assert torch.equal(better, turned)
    assert 0 < int(better.sum()) < len(images)


@torch.no_grad()
def test_particles_are_read_a_half_turn_away_unless_the_check_is_off():
    model = sharp_untrained_model(fit_noise=False)  # half_turn_check "auto", never switched
    images = smooth_blobs()
    assert not model.checks_half_turns and model.reads_half_turns
    read = model.encode(images)
    view = model.encoder_view(images, None) * model.input_mask
    hypotheses = model.encoder.search_rotation(view, half_turn=True)
    # compared in 2 x 2 bins, as training's check
    layout = model.binned_layout(model.coarse_binning)
    assert layout.binning == 2
    named = model._prefers_half_turn(
        hypotheses, layout.targets(images), None, layout, None, own_noise=True
    )
    model.config.half_turn_check = "off"
    assert not model.reads_half_turns
    plain = model.encode(images)
    torch.testing.assert_close(plain.mu, model.encoder(view).mu)
    turned = ~torch.isclose(read.mu, plain.mu).all(dim=1)
    assert torch.equal(turned, named)
    assert 0 < int(named.sum()) < len(images)
    # the rows read turned are reported (inference counts them), none with the check off
    assert not model.encode_with_turns(images)[1].any()
    model.config.half_turn_check = "auto"
    torch.testing.assert_close(model.encode_with_turns(images)[0].mu, read.mu)
    assert torch.equal(model.encode_with_turns(images)[1], named)


def test_inference_counts_the_particles_it_read_a_half_turn_away():
    from napari_spatial_vae.core.config import TrainConfig
    from napari_spatial_vae.core.data import preprocess
    from napari_spatial_vae.core.infer import iter_inference

    model = sharp_untrained_model(fit_noise=False)
    stack = smooth_blobs(20)[:, 0].numpy()
    config = TrainConfig(model=model.config, normalize=True)
    batches = list(iter_inference(model, config, stack, batch_size=8, refine_steps=0))
    with torch.no_grad():
        images = preprocess(torch.from_numpy(stack)[:, None], 1.0, normalize=True)
        expected = int(model.encode_with_turns(images)[1].sum())
    assert 0 < expected < len(stack)
    assert sum(batch.half_turned for batch in batches) == expected


@torch.no_grad()
def test_reading_compares_the_half_turn_at_the_particles_own_scale_and_noise():
    """Particles noisier than the training stack are standardised to less signal, and the
    learned noise varies with z: neither may decide which way round a particle is read."""
    model = sharp_untrained_model(fit_noise=True)
    images = smooth_blobs()
    view = model.encoder_view(images, None) * model.input_mask
    hypotheses = model.encoder.search_rotation(view, half_turn=True)

    def named(targets: torch.Tensor, own_noise: bool = True) -> torch.Tensor:
        return model._prefers_half_turn(hypotheses, targets, None, model.layout, None, own_noise)

    targets = model.targets(images)
    before, by_objective = named(targets), named(targets, own_noise=False)
    assert 0 < int(before.sum()) < len(images)
    # the same particles at a third of the contrast on another background level
    assert torch.equal(named(0.3 * targets + 2.0), before)
    # the generator's noise output changed (much more noise predicted at some z and pixels)
    model.generator.body[-1].weight[1].mul_(40.0)
    model.generator.body[-1].bias[1].add_(1.0)
    assert torch.equal(named(targets), before)
    assert not torch.equal(named(targets, own_noise=False), by_objective)  # it matters there


def test_there_is_no_half_turn_signal_without_z_read_from_the_aligned_particle():
    config = ModelConfig(z_dim=1, hidden_dim=16, encoder_rotations=8, z_from_aligned=False)
    model = SpatialVAE(config, (1, 24, 24))
    assert not model.can_check_half_turns
    assert model.half_turn_fits_better(torch.randn(4, 1, 24, 24)) is None


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_a_config_may_name_builds_a_model(activation):
    config = ModelConfig(z_dim=1, hidden_dim=8, num_layers=2, activation=activation)
    model = SpatialVAE(config, SHAPE)
    terms = model.loss_terms(torch.randn(2, *SHAPE))
    assert torch.isfinite(terms.recon).all()
