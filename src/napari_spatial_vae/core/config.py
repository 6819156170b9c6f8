"""Typed, validated training configuration: the one source of every training setting.

One :class:`TrainConfig` drives the CLI, the napari widget and the benchmarks; it is saved
next to the weights (``config.json``) so a run folder fully describes its model. Each field
carries a :class:`Setting` in its metadata (bounds, choices, help text, GUI label and unit,
whether it may change on resume); validation here, the ``spatial-vae train`` arguments
(:mod:`napari_spatial_vae.cli.settings`) and the widget's form
(:mod:`napari_spatial_vae._widget_settings`) are generated from it, so no bound or default is
written twice. Defaults are the ones a user should get good results with on a CPU;
docs/defaults.md records the measurements behind them.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import textwrap
import types
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from napari_spatial_vae.core.errors import ConfigError

Likelihood = Literal["gaussian", "bernoulli"]
Activation = Literal["tanh", "relu", "leaky_relu", "elu", "gelu", "silu"]
EncoderKind = Literal["mlp", "equivariant"]
ThetaKL = Literal["free-mean", "standard"]

ACTIVATIONS: tuple[str, ...] = ("tanh", "relu", "leaky_relu", "elu", "gelu", "silu")
ENCODERS: tuple[str, ...] = ("mlp", "equivariant")
LIKELIHOODS: tuple[str, ...] = ("gaussian", "bernoulli")
THETA_KLS: tuple[str, ...] = ("free-mean", "standard")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "tf32")
CTF_CHOICES: tuple[str, ...] = ("auto", "on", "off")
HALF_TURN_CHECK_CHOICES: tuple[str, ...] = ("auto", "on", "off")
CTF_ENCODER_INPUTS: tuple[str, ...] = ("raw", "flip")
#: seeds are 0 .. SEED_COUNT - 1 (the seed setting's range, which the config's check and the
#: widget's spin box enforce); seeds derived from a seed (each epoch's, a restart's) are
#: reduced into it
SEED_COUNT = 2**63

# Inference, not training (the run's config does not store them): gradient steps that fit
# each particle's z to the trained generator at its inferred pose (core/refine.py; 0 reports
# the encoder's posterior mean), and their size in units of z's prior std. Chosen on the tune
# designs, docs/defaults.md "z refined against the generator".
REFINE_Z_STEPS = 5
REFINE_Z_STEP_SIZE = 0.1


@dataclass(frozen=True)
class Setting:
    """What the CLI, the GUI and validation need to know about one config field.

    Attributes
    ----------
    help
        One or two sentences: the CLI's ``--help`` and the GUI's tooltip.
    label
        Short GUI label (the CLI flag is the field name with dashes).
    low, high
        Inclusive bounds of a number (``low`` exclusive with ``open_low``).
    choices
        Allowed values of a string field.
    group
        ``"model"``, ``"training"`` or ``"speed"``: the CLI's argument group.
    gui
        ``"main"`` or ``"advanced"`` section of the widget's form, or None: CLI only.
    shown_as
        ``"degrees"`` (stored in radians) or ``"pixels"`` (stored as a fraction of the image
        size): the GUI shows the unit people think in. None: as stored.
    step
        Step of the GUI's spin box.
    resumable
        May differ from the saved value when a run is resumed (budget and speed settings);
        every other field must equal the saved one.
    metavar
        Placeholder in the CLI's usage line.
    """

    help: str
    label: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple[str, ...] | None = None
    group: str = "training"
    gui: str | None = "advanced"
    shown_as: str | None = None
    step: float | None = None
    resumable: bool = False
    metavar: str | None = None


def setting(default: Any, **kwargs: Any) -> Any:
    """A dataclass field with ``default`` and its :class:`Setting` as metadata."""
    return field(default=default, metadata={"setting": Setting(**kwargs)})


@dataclass(frozen=True)
class SettingField:
    """One config field with its resolved type: what generators iterate over.

    Attributes
    ----------
    name
        Field name (``z_dim``); the CLI flag is ``--z-dim``.
    owner
        :class:`ModelConfig` or :class:`TrainConfig`.
    kind
        ``bool``, ``int``, ``float`` or ``str``.
    optional
        None is allowed (it means "no limit" or "automatic").
    default
        The dataclass default.
    setting
        The field's :class:`Setting`.
    """

    name: str
    owner: type
    kind: type
    optional: bool
    default: Any
    setting: Setting

    @property
    def flag(self) -> str:
        """The CLI option, e.g. ``--z-dim``."""
        return "--" + self.name.replace("_", "-")

    def get(self, config: TrainConfig) -> Any:
        """This field's value in ``config``."""
        return getattr(config.model if self.owner is ModelConfig else config, self.name)

    def set(self, config: TrainConfig, value: Any) -> None:
        """Set this field's value in ``config`` (no validation)."""
        setattr(config.model if self.owner is ModelConfig else config, self.name, value)

    def check(self, value: Any) -> None:
        """Raise :class:`ConfigError` naming this field when ``value`` is out of bounds."""
        s = self.setting
        if value is None:
            if not self.optional:
                raise ConfigError(f"{self.name} must be given")
            return
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{self.name} must be true or false, got {value!r}")
        elif self.kind is int:
            _check_int(self.name, value, int(s.low or 0), int(s.high if s.high is not None else 0))
        elif self.kind is float:
            low = s.low if s.low is not None else -math.inf
            high = s.high if s.high is not None else math.inf
            _check_float(self.name, value, low, high, open_low=s.open_low)
        elif s.choices is not None:
            _check_choice(self.name, value, s.choices)
        elif not isinstance(value, str):
            raise ConfigError(f"{self.name} must be text, got {value!r}")


@dataclass
class ModelConfig:
    """Architecture and the probabilistic model (fields listed below, from their settings)."""

    z_dim: int = setting(
        2,
        help="Size of the unstructured (content) latent z.",
        label="z dim",
        low=0,
        high=1024,
        group="model",
        gui="main",
    )
    hidden_dim: int = setting(
        128,
        help="Width of the hidden layers of the generator and the encoder MLPs.",
        label="hidden width",
        low=1,
        high=65536,
        step=32,
        group="model",
        gui="main",
    )
    num_layers: int = setting(
        2,
        help="Number of hidden layers of the generator and the encoder MLPs.",
        label="hidden layers",
        low=1,
        high=64,
        group="model",
    )
    activation: Activation = setting(
        "tanh",
        help="Non-linearity of the hidden layers.",
        label="activation",
        choices=ACTIVATIONS,
        group="model",
    )
    encoder: EncoderKind = setting(
        "equivariant",
        help="'mlp': the paper's inference MLP on the flattened image. 'equivariant': one "
        "shared MLP scores encoder_rotations rotated copies of the input and theta is read "
        "from the scores (rotation-equivariant by construction); see rotation_search.",
        label="encoder",
        choices=ENCODERS,
        group="model",
    )
    encoder_rotations: int = setting(
        32,
        help="Number of rotated copies the equivariant encoder looks at (with rotation search, "
        "the number of rotation bins; 32 = 11.25 degrees, so the in-bin offset leaves z less "
        "pose to explain: docs/defaults.md).",
        label="encoder rotations",
        low=2,
        high=360,
        group="model",
    )
    rotation_search: bool = setting(
        True,
        help="With the equivariant encoder: treat the copy angles as a discrete latent and "
        "marginalise the likelihood over them (theta = a bin angle plus a small continuous "
        "offset) instead of their circular soft-argmax; every candidate rotation is scored "
        "against the data in every step, which avoids the half-turn local optimum of alignment "
        "by gradient descent. theta_prior/theta_kl then do not apply: the bins have a uniform "
        "prior and the offset a free-mean prior of half a bin.",
        label="search rotation bins",
        group="model",
    )
    z_from_aligned: bool = setting(
        True,
        help="With the equivariant encoder: infer z from the particle aligned by the encoder's "
        "own rotation and shift (one extra resampling and MLP per image) instead of from the "
        "rotated copies, which are aligned only to the nearest rotation bin; the left-over "
        "in-bin rotation looks like a swinging domain and z follows it (docs/defaults.md).",
        label="z from aligned particle",
        group="model",
    )
    z_half_turn_invariant: bool = setting(
        False,
        help="With z from the aligned particle: read z from the aligned particle and from it "
        "turned by 180 degrees and average the two, so z cannot tell a particle aligned the "
        "right way round from one aligned upside down. Without it z can describe the "
        "half-turn flip of a pseudo-symmetric particle instead of its conformation; with it "
        "the generator can turn its template upside down part-way along z (off by default: "
        "docs/defaults.md).",
        label="z ignores half turns",
        group="model",
    )
    half_turn_check: str = setting(
        "auto",
        help="With rotation search and z from the aligned particle: also try each particle "
        "turned by 180 degrees about its centre, with z read from the turned aligned "
        "particle, and keep the turned fit where it is clearly better (reconstruction plus "
        "KL, scored without gradient; about 10 % more training time). 'auto' switches it on "
        "for the rest of the run when, after 30 % of the schedule, more than 3 % of the "
        "held-out particles fit better turned in two epochs in a row (a particle whose "
        "motion passes through a nearly symmetric shape can be learned partly upside "
        "down); 'on' from the start; "
        "'off' never (training then warns instead). Unless 'off', reading particles "
        "(inference) tries each one turned too, compared at the particle's own noise "
        "level. See docs/defaults.md.",
        label="check half turns",
        group="model",
        choices=HALF_TURN_CHECK_CHOICES,
    )
    refine_pose: bool = setting(
        True,
        help="With z from the aligned particle: the same network also corrects the rotation "
        "and shift the particle was aligned with. Otherwise the pose error left by the "
        "encoder's first look has no outlet but z, and z can end up describing it instead "
        "of the conformation.",
        label="refine pose",
        group="model",
    )
    z_every_layer: bool = setting(
        True,
        help="z shifts every hidden layer of the generator, not only the first, so the "
        "generator moves a domain with z more readily (one extra bias per image and layer).",
        label="z in every layer",
        group="model",
    )
    likelihood: Likelihood = setting(
        "gaussian",
        help="'gaussian' (cryo-EM, continuous data) or 'bernoulli' (binary images in 0..1).",
        label="likelihood",
        choices=LIKELIHOODS,
        group="model",
        gui="main",
    )
    rotate: bool = setting(
        True,
        help="Infer the in-plane rotation (off with translate off: the fixed-pose "
        "spatial baseline).",
        label="infer rotation",
        group="model",
        gui="main",
    )
    translate: bool = setting(
        True,
        help="Infer the translation.",
        label="infer translation",
        group="model",
        gui="main",
    )
    vanilla: bool = setting(
        False,
        help="Replace the spatial generator with an MLP from z straight to all pixels "
        "(the paper's baseline; implies no rotation or translation).",
        label="vanilla VAE baseline",
        group="model",
    )
    theta_prior: float = setting(
        math.pi,
        help="Standard deviation of the prior on theta (radians; degrees in the GUI).",
        label="rotation prior (°)",
        low=0.0,
        high=1e3,
        open_low=True,
        group="model",
        gui="main",
        shown_as="degrees",
        step=5.0,
        metavar="RAD",
    )
    theta_kl: ThetaKL = setting(
        "free-mean",
        help="'free-mean': the paper's eq. 3, no penalty on the mean angle "
        "(particles, whose mean rotation is arbitrary). 'standard': KL to N(0, theta_prior^2).",
        label="rotation KL",
        choices=THETA_KLS,
        group="model",
    )
    dx_prior: float = setting(
        0.1,
        help="Standard deviation of the prior on the translation, as a fraction of the "
        "image size (pixels in the GUI).",
        label="shift prior (px)",
        low=0.0,
        high=10.0,
        open_low=True,
        group="model",
        gui="main",
        shown_as="pixels",
        step=0.5,
        metavar="FRACTION",
    )
    fit_noise: bool = setting(
        True,
        help="Learn a per-pixel noise standard deviation (gaussian likelihood only).",
        label="fit per-pixel noise",
        group="model",
    )
    softplus_mean: bool = setting(
        False,
        help="Constrain the gaussian mean to be positive (softplus).",
        label="positive mean (softplus)",
        group="model",
    )
    circular_mask: bool = setting(
        True,
        help="Model only the pixels inside the inscribed circle (corners are ignored and "
        "never evaluated, which also saves ~21 % of the generator's work).",
        label="circular mask",
        group="model",
    )
    ctf_encoder: str = setting(
        "raw",
        help="What the encoder sees of particles that carry a CTF: 'raw' images, or 'flip': "
        "phase-flipped (multiplied by the sign of their CTF in Fourier space, so every "
        "particle's contrast has the sign of the projection). See docs/results.md.",
        label="encoder input (CTF)",
        choices=CTF_ENCODER_INPUTS,
        group="model",
    )

    @property
    def infers_rotation(self) -> bool:
        """Whether theta is a latent variable of this model."""
        return self.rotate and not self.vanilla

    @property
    def infers_translation(self) -> bool:
        """Whether dx is a latent variable of this model."""
        return self.translate and not self.vanilla

    @property
    def searches_rotation(self) -> bool:
        """Whether the likelihood is marginalised over the encoder's discrete rotations."""
        return self.rotation_search and self.encoder == "equivariant" and self.infers_rotation

    def validate(self) -> None:
        """Raise :class:`ConfigError` with a one-line message on the first invalid field."""
        for spec in setting_fields(ModelConfig):
            spec.check(getattr(self, spec.name))
        if self.likelihood == "bernoulli" and (self.fit_noise or self.softplus_mean):
            raise ConfigError("fit_noise and softplus_mean apply to the gaussian likelihood only")
        if self.vanilla and self.encoder == "equivariant":
            raise ConfigError(
                "the vanilla VAE infers no rotation: use encoder='mlp' with vanilla=True"
            )
        if self.encoder == "equivariant" and not self.infers_rotation:
            raise ConfigError("encoder='equivariant' needs rotation inference (drop --no-rotate)")
        if self.z_dim == 0 and not (self.infers_rotation or self.infers_translation):
            raise ConfigError("a model with z_dim=0 and no pose inference has no latent at all")


@dataclass
class TrainConfig:
    """Everything that defines a training run: ``model`` plus the fields listed below."""

    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = setting(
        40,
        help="Passes over the training images.",
        label="epochs",
        low=1,
        high=10**7,
        gui="main",
        resumable=True,
    )
    max_minutes: float | None = setting(
        None,
        help="Wall-clock budget in minutes; training stops cleanly and saves when it is "
        "spent (none: no limit; 0 in the GUI).",
        label="time limit (min)",
        low=0.0,
        high=1e7,
        open_low=True,
        step=5.0,
        resumable=True,
        metavar="M",
    )
    batch_size: int = setting(
        16,
        help="Adam minibatch size.",
        label="batch size",
        low=1,
        high=10**6,
        gui="main",
    )
    lr: float = setting(
        2e-3,
        help="Adam learning rate.",
        label="learning rate",
        low=0.0,
        high=10.0,
        open_low=True,
        gui="main",
        step=1e-5,
    )
    lr_min_fraction: float = setting(
        0.05,
        help="Cosine decay of the learning rate to lr times this over the epochs (1 keeps "
        "it constant, as in the paper).",
        label="final lr fraction",
        low=0.0,
        high=1.0,
        step=0.05,
    )
    z_delay: int = setting(
        0,
        help="Epochs during which z is frozen at 0 (pose is then learned before content; "
        "0, the default, learns both from the start: a delay lets theta absorb part of the "
        "motion, see docs/defaults.md).",
        label="z delay (epochs)",
        low=0,
        high=10**7,
        gui="main",
        metavar="E",
    )
    z_free_nats: float = setting(
        1.5,
        help="Free bits: a z dimension's KL (batch mean, nats per image) is not penalised "
        "below this, so the optimiser cannot buy ELBO by switching z off early (Kingma et al. "
        "2016). 0: the plain ELBO. Reported ELBOs always use the true KL.",
        label="z free nats",
        low=0.0,
        high=100.0,
        step=0.25,
        metavar="NATS",
    )
    coarse_fraction: float = setting(
        0.3,
        help="Share of the run (by the learning-rate schedule's progress) trained on 2x2-binned "
        "particles before full size: the generator renders a quarter of the pixels, so early "
        "epochs run ~2-3x faster (coarse-to-fine; gaussian likelihood, even box "
        "sizes). 0 trains at full size throughout.",
        label="coarse-to-fine share",
        low=0.0,
        high=0.9,
        step=0.05,
        metavar="F",
    )
    fold_restart: bool = setting(
        True,
        help="With z-dim 1: once a third of the schedule has run, measure whether z reads "
        "two states of the motion as one (a folded z: the particles then share a variation "
        "the model does not render) and, if so, start again from a fresh initialisation "
        "in the time left, checking each new attempt the same way, at most twice "
        "(not when the particles plainly vary in more ways than z renders: the run then says "
        "so and goes on; docs/defaults.md). Costs one measure per attempt (~12 s for 2,048 "
        "40-px particles on 2 CPU cores).",
        label="restart a folded z",
        resumable=True,
    )
    augment_rotation: bool = setting(
        True,
        help="Show the encoder each image rotated by a random angle gamma and subtract "
        "gamma from the predicted theta (one batched resampling per step).",
        label="rotation augmentation",
        gui="main",
    )
    encoder_noise: float = setting(
        0.0,
        help="Training only: add white noise to what the encoder sees, each image at its own "
        "level drawn between 0 and this many times the image's own noise (the std outside a "
        "circle of 75% of the box, as RELION measures it), so pose and z are also read from "
        "particles up to (1 + LEVEL^2) times noisier (2: 5x lower SNR); noise-free images get "
        "none. The generator still reconstructs the images as they are. For a model that will "
        "encode noisier particles than it was trained on; 0 (default): off.",
        label="encoder noise",
        low=0.0,
        high=10.0,
        step=0.25,
        metavar="LEVEL",
    )
    normalize: bool = setting(
        True,
        help="Standardise each image to zero mean and unit variance before training "
        "(gaussian likelihood only).",
        label="standardise images",
    )
    test_fraction: float = setting(
        0.1,
        help="Fraction of the images held out to report the test ELBO (ignored when a "
        "separate test stack is given).",
        label="test fraction",
        low=0.0,
        high=0.9,
        step=0.05,
    )
    seed: int = setting(
        0,
        help="Seeds initialisation, the split, shuffling, noise and augmentation: the same "
        "seed on the same CPU gives the same run (another CPU model rounds differently, and a "
        "long run can then take another path).",
        label="seed",
        low=0,
        high=SEED_COUNT - 1,
        gui="main",
    )
    device: str = setting(
        "auto",
        help="'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'.",
        label="device",
        gui="main",
        resumable=True,
    )
    checkpoint_every: int = setting(
        1,
        help="Save the run folder every this many epochs (the last epoch is always saved).",
        label="checkpoint every (epochs)",
        low=1,
        high=10**7,
        resumable=True,
    )
    precision: str = setting(
        "auto",
        help="Generator arithmetic: 'auto' (default): bf16 where the hardware runs it natively "
        "(CPUs with AVX512-BF16 or AMX, CUDA GPUs with bf16), else fp32; 'fp32'; 'bf16': the "
        "generator's per-pixel layers "
        "under bf16 autocast (encoder, poses and losses stay fp32; fast on GPUs and on CPUs with "
        "AVX512-BF16/AMX); 'tf32': TF32 tensor-core matmuls (NVIDIA GPUs only). See "
        "docs/performance.md.",
        label="precision",
        choices=PRECISIONS,
        group="speed",
        resumable=True,
    )
    compile: bool = setting(
        False,
        help="torch.compile the generator (minutes of compilation; pays off on long GPU runs).",
        label="torch.compile",
        group="speed",
        resumable=True,
    )
    resident_gb: float | None = setting(
        None,
        help="Keep the training images on the device when they take at most this many GB "
        "as float32, else stream them from the (memory-mapped) stack; 0 always streams; none: "
        "2 GB on the CPU, half the free memory on a GPU (the GUI shows none as 0).",
        label="resident data (GB)",
        low=0.0,
        high=1e6,
        step=0.5,
        group="speed",
        resumable=True,
        metavar="GB",
    )
    ctf: str = setting(
        "auto",
        help="Model each particle's CTF (from the STAR/cs file) in the likelihood: 'auto' when "
        "the input carries CTF parameters, 'on' (an input without them is an error), 'off'. "
        "Gaussian likelihood only. See docs/conventions.md.",
        label="CTF",
        choices=CTF_CHOICES,
    )

    def validate(self) -> None:
        """Raise :class:`ConfigError` with a one-line message on the first invalid field."""
        self.model.validate()
        for spec in setting_fields(TrainConfig):
            spec.check(getattr(self, spec.name))
        if self.normalize and self.model.likelihood == "bernoulli":
            raise ConfigError("normalize applies to the gaussian likelihood only")
        if self.ctf == "on" and self.model.likelihood != "gaussian":
            raise ConfigError("ctf applies to the gaussian likelihood only (use --ctf off)")
        if not (
            self.device in ("auto", "cpu", "cuda", "mps")
            or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        ):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dictionary."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from :meth:`to_dict` output, rejecting unknown keys with a clear message."""
        data = dict(data)
        model_data = {**_MODEL_BEFORE_THE_FIELD, **data.pop("model", {})}
        # saved while the half-turn check was a bool (2026-12-03 morning)
        if isinstance(model_data["half_turn_check"], bool):
            model_data["half_turn_check"] = "on" if model_data["half_turn_check"] else "off"
        model = _build(ModelConfig, model_data, "model")
        config = _build(cls, data, "config")
        config.model = model
        return config


# model settings that change the networks' shapes or what they compute, added after run folders
# existed: the value a config.json without the key means (what those models were built with)
_MODEL_BEFORE_THE_FIELD: dict[str, Any] = {
    "z_from_aligned": False,
    "z_half_turn_invariant": False,
    "refine_pose": False,
    "z_every_layer": False,
    "half_turn_check": "off",
}


def setting_fields(*owners: type) -> list[SettingField]:
    """Every setting of ``owners`` (default: model, then training) in declaration order."""
    return [spec for owner in owners or (ModelConfig, TrainConfig) for spec in _fields_of(owner)]


@functools.cache
def _fields_of(owner: type) -> tuple[SettingField, ...]:
    hints = get_type_hints(owner)
    specs = []
    for f in dataclasses.fields(owner):
        if "setting" not in f.metadata:
            continue  # TrainConfig.model
        kind, optional = _resolve_type(hints[f.name])
        specs.append(SettingField(f.name, owner, kind, optional, f.default, f.metadata["setting"]))
    return tuple(specs)


def _resolve_type(hint: Any) -> tuple[type, bool]:
    """``(bool|int|float|str, optional)`` of a field's annotation (Literal counts as str)."""
    args = get_args(hint)
    optional = get_origin(hint) in (Union, types.UnionType) and type(None) in args
    if optional:
        (hint,) = [a for a in args if a is not type(None)]
    if get_origin(hint) is Literal:
        return str, optional
    if hint not in (bool, int, float, str):
        raise TypeError(f"unsupported setting type {hint!r}")
    return hint, optional


def _attributes_section(owner: type) -> str:
    lines = ["", "Attributes", "----------"]
    if owner is TrainConfig:
        lines += ["model", "    The :class:`ModelConfig`."]
    for spec in _fields_of(owner):
        lines += [spec.name, textwrap.fill(spec.setting.help, 92, initial_indent="    ",
                                           subsequent_indent="    ")]  # fmt: skip
    return "\n".join(lines)


# numpydoc Attributes generated from the settings, so help() and the API docs show them
for _owner in (ModelConfig, TrainConfig):
    _owner.__doc__ = inspect.cleandoc(_owner.__doc__ or "") + "\n" + _attributes_section(_owner)


def _build(cls, data: dict[str, Any], where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {where} field(s): {', '.join(unknown)}")
    return cls(**data)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")


def _check_float(name: str, value: Any, low: float, high: float, open_low: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    too_low = value <= low if open_low else value < low
    if too_low or value > high:
        bound = ">" if open_low else ">="
        raise ConfigError(f"{name} must be {bound} {low} and <= {high}, got {value}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
