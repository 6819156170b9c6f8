"""The training settings form: magicgui widgets <-> :class:`core.config.TrainConfig`.

Defaults and tooltips come from the config dataclasses themselves (their numpydoc
``Attributes`` sections), so the GUI never drifts from the CLI. The GUI shows the priors in
the units people think in: the rotation prior in degrees and the shift prior in pixels; the
config stores radians and a fraction of the image size (1 coordinate unit = ``(W - 1) / 2``
pixels, so ``dx_prior = pixels / (W - 1)``).
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

from magicgui import widgets

from napari_spatial_vae.core.config import (
    ACTIVATIONS,
    CTF_CHOICES,
    ENCODERS,
    LIKELIHOODS,
    THETA_KLS,
    ModelConfig,
    TrainConfig,
)
from napari_spatial_vae.core.device import available_devices


def field_docs(cls: type) -> dict[str, str]:
    """``field -> description`` from a dataclass's numpydoc ``Attributes`` section.

    A heading line such as ``rotate, translate`` gives both fields the same description.
    """
    doc = inspect.cleandoc(cls.__doc__ or "")
    match = re.search(r"^Attributes\n-+\n(.*)", doc, flags=re.S | re.M)
    if not match:
        return {}
    docs: dict[str, str] = {}
    names: list[str] = []
    lines: list[str] = []
    for line in match.group(1).splitlines():
        if line and not line.startswith(" "):
            for name in names:
                docs[name] = " ".join(lines)
            names = [n.strip() for n in line.split(":")[0].split(",")]
            lines = []
        elif line.strip():
            lines.append(line.strip())
    for name in names:
        docs[name] = " ".join(lines)
    return docs


_DOCS = {**field_docs(ModelConfig), **field_docs(TrainConfig)}


def _tip(name: str, extra: str = "") -> str:
    return (_DOCS.get(name, "") + (" " + extra if extra else "")).strip()


class SettingsForm:
    """Main and advanced settings as two magicgui containers.

    Attributes
    ----------
    main, advanced : magicgui.widgets.Container
        The widgets; the dock widget places ``advanced`` in a collapsible section.
    """

    def __init__(self) -> None:
        m, t = ModelConfig(), TrainConfig()
        w = widgets
        self.z_dim = w.SpinBox(value=m.z_dim, min=0, max=64, label="z dim", tooltip=_tip("z_dim"))
        self.epochs = w.SpinBox(
            value=t.epochs, min=1, max=100000, label="epochs", tooltip=_tip("epochs")
        )
        self.hidden_dim = w.SpinBox(
            value=m.hidden_dim, min=8, max=8192, step=32, label="hidden width",
            tooltip=_tip("hidden_dim"),
        )  # fmt: skip
        self.likelihood = w.ComboBox(
            value=m.likelihood, choices=LIKELIHOODS, label="likelihood", tooltip=_tip("likelihood")
        )
        self.rotate = w.CheckBox(value=m.rotate, text="infer rotation", tooltip=_tip("rotate"))
        self.translate = w.CheckBox(
            value=m.translate, text="infer translation", tooltip=_tip("translate")
        )
        self.theta_prior_deg = w.FloatSpinBox(
            value=math.degrees(m.theta_prior), min=0.1, max=3600.0, step=5.0,
            label="rotation prior (°)",
            tooltip=_tip("theta_prior", "Shown here in degrees."),
        )  # fmt: skip
        self.dx_prior_px = w.FloatSpinBox(
            value=round(m.dx_prior * 39, 2), min=0.01, max=10000.0, step=0.5,
            label="shift prior (px)",
            tooltip=_tip("dx_prior", "Shown here in pixels (std of the particle's shift)."),
        )  # fmt: skip
        self.augment_rotation = w.CheckBox(
            value=t.augment_rotation, text="rotation augmentation",
            tooltip=_tip("augment_rotation"),
        )  # fmt: skip
        self.z_delay = w.SpinBox(
            value=t.z_delay, min=0, max=100000, label="z delay (epochs)", tooltip=_tip("z_delay")
        )
        self.batch_size = w.SpinBox(
            value=t.batch_size, min=1, max=100000, label="batch size", tooltip=_tip("batch_size")
        )
        self.lr = w.FloatSpinBox(
            value=t.lr,
            min=1e-5,
            max=1.0,
            step=1e-5,
            label="learning rate",
            tooltip=_tip("lr"),
        )  # fmt: skip  (a step of 1e-5 makes the box show 5 decimals)
        self.seed = w.SpinBox(
            value=t.seed, min=0, max=2**31 - 1, label="seed", tooltip=_tip("seed")
        )
        self.device = w.ComboBox(
            choices=[(desc, name) for name, desc in available_devices()],
            label="device",
            tooltip=_tip("device"),
        )
        self.main = w.Container(
            widgets=[
                self.z_dim, self.epochs, self.hidden_dim, self.likelihood, self.rotate,
                self.translate, self.theta_prior_deg, self.dx_prior_px, self.augment_rotation,
                self.z_delay, self.batch_size, self.lr, self.seed, self.device,
            ],
            labels=True,
        )  # fmt: skip

        self.num_layers = w.SpinBox(
            value=m.num_layers, min=1, max=16, label="hidden layers", tooltip=_tip("num_layers")
        )
        self.activation = w.ComboBox(
            value=m.activation, choices=ACTIVATIONS, label="activation", tooltip=_tip("activation")
        )
        self.encoder = w.ComboBox(
            value=m.encoder, choices=ENCODERS, label="encoder", tooltip=_tip("encoder")
        )
        self.encoder_rotations = w.SpinBox(
            value=m.encoder_rotations, min=2, max=360, label="encoder rotations",
            tooltip=_tip("encoder_rotations"),
        )  # fmt: skip
        self.rotation_search = w.CheckBox(
            value=m.rotation_search, text="search rotation bins", tooltip=_tip("rotation_search")
        )
        self.theta_kl = w.ComboBox(
            value=m.theta_kl, choices=THETA_KLS, label="rotation KL", tooltip=_tip("theta_kl")
        )
        self.vanilla = w.CheckBox(
            value=m.vanilla, text="vanilla VAE baseline", tooltip=_tip("vanilla")
        )
        self.fit_noise = w.CheckBox(
            value=m.fit_noise, text="fit per-pixel noise", tooltip=_tip("fit_noise")
        )
        self.softplus_mean = w.CheckBox(
            value=m.softplus_mean, text="positive mean (softplus)", tooltip=_tip("softplus_mean")
        )
        self.circular_mask = w.CheckBox(
            value=m.circular_mask, text="circular mask", tooltip=_tip("circular_mask")
        )
        self.normalize = w.CheckBox(
            value=t.normalize, text="standardise images", tooltip=_tip("normalize")
        )
        self.test_fraction = w.FloatSpinBox(
            value=t.test_fraction, min=0.0, max=0.9, step=0.05, label="test fraction",
            tooltip=_tip("test_fraction"),
        )  # fmt: skip
        self.lr_min_fraction = w.FloatSpinBox(
            value=t.lr_min_fraction, min=0.0, max=1.0, step=0.05, label="final lr fraction",
            tooltip=_tip("lr_min_fraction"),
        )  # fmt: skip
        self.max_minutes = w.FloatSpinBox(
            value=0.0, min=0.0, max=1e6, step=5.0, label="time limit (min)",
            tooltip=_tip("max_minutes", "0 means no limit."),
        )  # fmt: skip
        self.preview_every = w.SpinBox(
            value=2, min=1, max=10000, label="preview every (epochs)",
            tooltip="Refresh the preview layer's reconstructions every this many epochs.",
        )  # fmt: skip
        self.result_limit = w.SpinBox(
            value=5000, min=1, max=10**7, label="result images (max)",
            tooltip="Aligned particles and reconstructions are made for at most this many "
            "particles (poses for all of them); bounds the memory the result layers take.",
        )  # fmt: skip
        self.ctf = w.ComboBox(value=t.ctf, choices=CTF_CHOICES, label="CTF", tooltip=_tip("ctf"))
        self.advanced = w.Container(
            widgets=[
                self.num_layers, self.activation, self.encoder, self.encoder_rotations,
                self.rotation_search, self.theta_kl, self.vanilla, self.fit_noise,
                self.softplus_mean, self.circular_mask, self.normalize, self.test_fraction,
                self.lr_min_fraction,
                self.max_minutes, self.preview_every, self.result_limit, self.ctf,
            ],
            labels=True,
        )  # fmt: skip
        self.likelihood.changed.connect(self._likelihood_changed)
        self.rotate.changed.connect(self._rotate_changed)

    def _likelihood_changed(self, value: str) -> None:
        # these options only exist for the gaussian likelihood; config.validate() insists
        gaussian = value == "gaussian"
        for box in (self.fit_noise, self.softplus_mean, self.normalize):
            if not gaussian:
                box.value = False
            box.enabled = gaussian

    def _rotate_changed(self, value: bool) -> None:
        # the equivariant encoder needs rotation inference
        if not value and self.encoder.value == "equivariant":
            self.encoder.value = "mlp"

    def set_image_size(self, width: int, height: int) -> None:
        """Re-express the default shift prior in pixels for images of this size."""
        size = max(width, height)
        self.dx_prior_px.value = round(ModelConfig().dx_prior * (size - 1), 2)

    def to_config(self, image_size: int) -> TrainConfig:
        """The :class:`TrainConfig` these settings describe, validated.

        Parameters
        ----------
        image_size
            ``max(H, W)`` of the input images, to turn the shift prior in pixels into a
            fraction of the image.

        Raises
        ------
        ConfigError
            One-line message naming the first invalid setting.
        """
        model = ModelConfig(
            z_dim=self.z_dim.value,
            hidden_dim=self.hidden_dim.value,
            num_layers=self.num_layers.value,
            activation=self.activation.value,
            encoder=self.encoder.value,
            encoder_rotations=self.encoder_rotations.value,
            rotation_search=self.rotation_search.value,
            likelihood=self.likelihood.value,
            rotate=self.rotate.value,
            translate=self.translate.value,
            vanilla=self.vanilla.value,
            theta_prior=math.radians(self.theta_prior_deg.value),
            theta_kl=self.theta_kl.value,
            dx_prior=self.dx_prior_px.value / max(image_size - 1, 1),
            fit_noise=self.fit_noise.value,
            softplus_mean=self.softplus_mean.value,
            circular_mask=self.circular_mask.value,
        )
        config = TrainConfig(
            model=model,
            epochs=self.epochs.value,
            max_minutes=self.max_minutes.value or None,
            batch_size=self.batch_size.value,
            lr=float(self.lr.value),
            lr_min_fraction=self.lr_min_fraction.value,
            z_delay=self.z_delay.value,
            augment_rotation=self.augment_rotation.value,
            normalize=self.normalize.value,
            test_fraction=self.test_fraction.value,
            seed=self.seed.value,
            device=self.device.value,
            ctf=self.ctf.value,
        )
        config.validate()
        return config

    def set_from_config(self, config: TrainConfig, image_size: int) -> None:
        """Show a loaded run's settings (device left as chosen here)."""
        m = config.model
        values: dict[str, Any] = {
            "z_dim": m.z_dim, "hidden_dim": m.hidden_dim, "num_layers": m.num_layers,
            "activation": m.activation, "encoder": m.encoder,
            "encoder_rotations": m.encoder_rotations, "likelihood": m.likelihood,
            "rotate": m.rotate, "translate": m.translate, "vanilla": m.vanilla,
            "theta_prior_deg": math.degrees(m.theta_prior), "theta_kl": m.theta_kl,
            "dx_prior_px": m.dx_prior * max(image_size - 1, 1), "fit_noise": m.fit_noise,
            "softplus_mean": m.softplus_mean, "circular_mask": m.circular_mask,
            "epochs": config.epochs, "max_minutes": config.max_minutes or 0.0,
            "batch_size": config.batch_size, "lr": config.lr,
            "lr_min_fraction": config.lr_min_fraction, "z_delay": config.z_delay,
            "augment_rotation": config.augment_rotation, "normalize": config.normalize,
            "test_fraction": config.test_fraction, "seed": config.seed, "ctf": config.ctf,
        }  # fmt: skip
        for name, value in values.items():
            getattr(self, name).value = value
        # the likelihood handler may have disabled boxes; set their saved values again
        for name in ("fit_noise", "softplus_mean", "normalize"):
            getattr(self, name).value = values[name]

    @property
    def all_widgets(self) -> list[widgets.Widget]:
        """Every input widget (the dock disables them while training)."""
        return [*self.main, *self.advanced]
