"""Typed, validated training configuration.

One :class:`TrainConfig` drives the CLI, the napari widget and the benchmarks; it is saved
next to the weights (``config.json``) so a run folder fully describes its model. Defaults are
the ones a user should get good results with on a CPU; docs/defaults.md records the
measurements behind them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from napari_spatial_vae.core.errors import ConfigError

Likelihood = Literal["gaussian", "bernoulli"]
Activation = Literal["tanh", "relu", "leaky_relu", "elu", "gelu", "silu"]
EncoderKind = Literal["mlp", "equivariant"]
ThetaKL = Literal["free-mean", "standard"]

ACTIVATIONS: tuple[str, ...] = ("tanh", "relu", "leaky_relu", "elu", "gelu", "silu")
ENCODERS: tuple[str, ...] = ("mlp", "equivariant")
LIKELIHOODS: tuple[str, ...] = ("gaussian", "bernoulli")
THETA_KLS: tuple[str, ...] = ("free-mean", "standard")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "tf32")
CTF_CHOICES: tuple[str, ...] = ("auto", "on", "off")
CTF_ENCODER_INPUTS: tuple[str, ...] = ("raw", "flip")


@dataclass
class ModelConfig:
    """Architecture and the probabilistic model.

    Attributes
    ----------
    z_dim
        Size of the unstructured (content) latent ``z``.
    hidden_dim, num_layers
        Width and number of hidden layers of the generator and the encoder MLPs.
    activation
        Non-linearity of the hidden layers.
    encoder
        ``"mlp"``: the paper's inference MLP on the flattened image. ``"equivariant"``: one
        shared MLP scores ``encoder_rotations`` rotated copies of the input and theta is read
        from the scores (rotation-equivariant by construction): see ``rotation_search``.
    encoder_rotations
        Number of rotated copies the equivariant encoder looks at.
    rotation_search
        With the equivariant encoder: treat the copy angles as a discrete latent and
        marginalise the likelihood over them (theta = a bin angle plus a small continuous
        offset), instead of their circular soft-argmax. Every candidate rotation is
        scored against the data in every step, which avoids the half-turn local optimum of
        alignment by gradient descent. ``theta_prior``/``theta_kl`` then do not apply: the
        bins have a uniform prior and the offset a free-mean prior of half a bin.
    likelihood
        ``"gaussian"`` (cryo-EM, continuous data) or ``"bernoulli"`` (binary images in 0..1).
    rotate, translate
        Infer the in-plane rotation / the translation. Both off gives the fixed-pose
        spatial baseline.
    vanilla
        Replace the spatial generator with an MLP from ``z`` straight to all pixels (the
        paper's baseline; implies no rotation or translation).
    theta_prior
        Standard deviation of the prior on theta, in radians.
    theta_kl
        ``"free-mean"``: the paper's eq. 3, no penalty on the mean angle (particles, whose
        mean rotation is arbitrary). ``"standard"``: KL to ``N(0, theta_prior^2)``.
    dx_prior
        Standard deviation of the prior on the translation, as a fraction of the image size.
    fit_noise
        Learn a per-pixel noise standard deviation (Gaussian likelihood only).
    softplus_mean
        Constrain the Gaussian mean to be positive (softplus).
    circular_mask
        Model only the pixels inside the inscribed circle (corners are ignored and never
        evaluated, which also saves ~21 % of the generator's work).
    ctf_encoder
        What the encoder sees of particles that carry a CTF: ``"raw"`` images, or
        ``"flip"``: phase-flipped (multiplied by the sign of their CTF in Fourier space, so
        every particle's contrast has the sign of the projection). See docs/results.md.
    """

    z_dim: int = 2
    hidden_dim: int = 128
    num_layers: int = 2
    activation: Activation = "tanh"
    encoder: EncoderKind = "equivariant"
    encoder_rotations: int = 16
    rotation_search: bool = True
    likelihood: Likelihood = "gaussian"
    rotate: bool = True
    translate: bool = True
    vanilla: bool = False
    theta_prior: float = math.pi
    theta_kl: ThetaKL = "free-mean"
    dx_prior: float = 0.1
    fit_noise: bool = True
    softplus_mean: bool = False
    circular_mask: bool = True
    ctf_encoder: str = "raw"

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
        _check_int("z_dim", self.z_dim, 0, 1024)
        _check_int("hidden_dim", self.hidden_dim, 1, 65536)
        _check_int("num_layers", self.num_layers, 1, 64)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("encoder", self.encoder, ENCODERS)
        _check_int("encoder_rotations", self.encoder_rotations, 2, 360)
        _check_choice("likelihood", self.likelihood, LIKELIHOODS)
        _check_choice("theta_kl", self.theta_kl, THETA_KLS)
        _check_float("theta_prior", self.theta_prior, 0.0, 1e3, open_low=True)
        _check_float("dx_prior", self.dx_prior, 0.0, 10.0, open_low=True)
        _check_choice("ctf_encoder", self.ctf_encoder, CTF_ENCODER_INPUTS)
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
    """Everything that defines a training run.

    Attributes
    ----------
    model
        The :class:`ModelConfig`.
    epochs
        Passes over the training images.
    max_minutes
        Wall-clock budget; training stops cleanly and saves when it is spent (None: no limit).
    batch_size, lr
        Adam minibatch size and learning rate.
    lr_min_fraction
        Cosine decay of the learning rate to ``lr * lr_min_fraction`` over ``epochs``
        (1.0 keeps it constant, as in the paper).
    z_delay
        Epochs during which ``z`` is frozen at 0, so pose is learned before content.
    augment_rotation
        Show the encoder each image rotated by a random angle gamma and subtract gamma from
        the predicted theta (one batched resampling per step).
    normalize
        Standardise each image to zero mean and unit variance before training (gaussian only).
    test_fraction
        Fraction of the images held out to report the test ELBO (ignored when a separate
        test stack is given).
    seed
        Seeds initialisation, the split, shuffling, noise and augmentation: same seed on the
        CPU gives the same run.
    device
        ``"auto"`` (cuda, then mps, then cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    checkpoint_every
        Save the run folder every this many epochs (the last epoch is always saved).
    precision
        ``"fp32"``; ``"bf16"``: the generator's per-pixel layers under bf16 autocast (the
        encoder, poses and losses stay fp32; fast on GPUs and on CPUs with AVX512-BF16/AMX);
        ``"tf32"``: TF32 tensor-core matmuls (NVIDIA GPUs only). See docs/performance.md.
    compile
        ``torch.compile`` the generator (minutes of compilation; pays off on long GPU runs).
    resident_gb
        Keep the training images on the device when they take at most this many GB as
        float32, else stream them from the (memory-mapped) stack; None: 2 GB on the CPU,
        half the free memory on a GPU.
    ctf
        Model each particle's CTF (from the STAR/cs file) in the likelihood: ``"auto"`` when
        the input carries CTF parameters, ``"on"`` (an input without them is an error),
        ``"off"``. Gaussian likelihood only. See docs/conventions.md.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 40
    max_minutes: float | None = None
    batch_size: int = 64
    lr: float = 2e-3
    lr_min_fraction: float = 0.05
    z_delay: int = 2
    augment_rotation: bool = True
    normalize: bool = True
    test_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 1
    precision: str = "fp32"
    compile: bool = False
    resident_gb: float | None = None
    ctf: str = "auto"

    def validate(self) -> None:
        """Raise :class:`ConfigError` with a one-line message on the first invalid field."""
        self.model.validate()
        _check_int("epochs", self.epochs, 1, 10**7)
        if self.max_minutes is not None:
            _check_float("max_minutes", self.max_minutes, 0.0, 1e7, open_low=True)
        _check_int("batch_size", self.batch_size, 1, 10**6)
        _check_float("lr", self.lr, 0.0, 10.0, open_low=True)
        _check_float("lr_min_fraction", self.lr_min_fraction, 0.0, 1.0)
        _check_int("z_delay", self.z_delay, 0, 10**7)
        _check_float("test_fraction", self.test_fraction, 0.0, 0.9)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("checkpoint_every", self.checkpoint_every, 1, 10**7)
        if self.normalize and self.model.likelihood == "bernoulli":
            raise ConfigError("normalize applies to the gaussian likelihood only")
        if not (
            self.device in ("auto", "cpu", "cuda", "mps")
            or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        ):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        _check_choice("precision", self.precision, PRECISIONS)
        if not isinstance(self.compile, bool):
            raise ConfigError(f"compile must be true or false, got {self.compile!r}")
        if self.resident_gb is not None:
            _check_float("resident_gb", self.resident_gb, 0.0, 1e6)
        _check_choice("ctf", self.ctf, CTF_CHOICES)
        if self.ctf == "on" and self.model.likelihood != "gaussian":
            raise ConfigError("ctf applies to the gaussian likelihood only (use --ctf off)")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dictionary."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from :meth:`to_dict` output, rejecting unknown keys with a clear message."""
        data = dict(data)
        model = _build(ModelConfig, data.pop("model", {}), "model")
        config = _build(cls, data, "config")
        config.model = model
        return config


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
