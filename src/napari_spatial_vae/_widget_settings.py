"""The training settings form, generated from the config's settings.

Every :class:`~napari_spatial_vae.core.config.Setting` becomes one magicgui widget (label,
tooltip, bounds, step and choices from the setting), in the main or the advanced section, so
the GUI never drifts from the CLI or from validation. The GUI shows the priors in the units
people think in: the rotation prior in degrees and the shift prior in pixels; the config stores
radians and a fraction of the image size (1 coordinate unit = ``(W - 1) / 2`` pixels, so
``dx_prior = pixels / (W - 1)``). Optional numbers (time limit, resident data) show 0 for
"none". A loaded run's values survive the form exactly, even where a spin box shows fewer
decimals than the saved number has.
"""

from __future__ import annotations

import math
from typing import Any

from magicgui import widgets
from magicgui.widgets.bases import ValueWidget

from napari_spatial_vae.core.config import SettingField, TrainConfig, setting_fields
from napari_spatial_vae.core.device import available_devices

# a stack the widget has not seen yet is taken to be 40 px wide (the sample data)
_DEFAULT_IMAGE_SIZE = 40


class SettingsForm:
    """Main and advanced settings as two magicgui containers.

    Every training setting is an attribute named like its config field (``form.z_dim``,
    ``form.theta_prior`` in degrees, ``form.dx_prior`` in pixels), plus two display
    settings that are not part of a run: ``preview_every`` and ``result_limit``, and one for
    the results of training and of **Apply to layer**: ``search_rotation``.

    Attributes
    ----------
    main, advanced : magicgui.widgets.Container
        The widgets; the dock widget places ``advanced`` in a collapsible section.
    inputs : dict of str to magicgui.ValueWidget
        The widget of each training setting, by field name.
    """

    def __init__(self) -> None:
        self._image_size = _DEFAULT_IMAGE_SIZE
        self._specs = {spec.name: spec for spec in setting_fields()}
        # field -> (value the widget showed after loading, exact saved value)
        self._loaded: dict[str, tuple[Any, Any]] = {}
        self.inputs: dict[str, ValueWidget] = {
            name: self._make_widget(spec) for name, spec in self._specs.items()
        }
        self.preview_every = widgets.SpinBox(
            value=2, min=1, max=10000, label="preview every (epochs)",
            tooltip="Refresh the preview layer's reconstructions every this many epochs.",
        )  # fmt: skip
        self.result_limit = widgets.SpinBox(
            value=5000, min=1, max=10**7, label="result images (max)",
            tooltip="Aligned particles and reconstructions are made for at most this many "
            "particles (poses for all of them); bounds the memory the result layers take.",
        )  # fmt: skip
        self.search_rotation = widgets.CheckBox(
            value=False, label="search rotation in results (noisy particles)",
            tooltip="One latent z: in the results (after training and Apply to layer), search "
            "each particle's rotation on the whole circle against the generator instead of "
            "taking the encoder's (spatial-vae infer --search-rotation). Helps particles at "
            "SNR ~0.1 that the encoder turns far off; inference about five times slower.",
        )  # fmt: skip
        section = {name: spec.setting.gui for name, spec in self._specs.items()}
        self.main = widgets.Container(
            widgets=[w for name, w in self.inputs.items() if section[name] == "main"],
            labels=True,
        )
        self.advanced = widgets.Container(
            widgets=[
                *(w for name, w in self.inputs.items() if section[name] == "advanced"),
                self.preview_every,
                self.result_limit,
                self.search_rotation,
            ],
            labels=True,
        )
        self.inputs["likelihood"].changed.connect(self._likelihood_changed)
        self.inputs["rotate"].changed.connect(self._rotate_changed)

    def __getattr__(self, name: str) -> ValueWidget:
        # only reached for names that are not ordinary attributes: the settings' widgets
        inputs = self.__dict__.get("inputs", {})
        if name in inputs:
            return inputs[name]
        raise AttributeError(name)

    # ------------------------------------------------------------ building

    def _make_widget(self, spec: SettingField) -> ValueWidget:
        s = spec.setting
        common: dict[str, Any] = {"tooltip": s.help}
        if spec.name == "device":
            # the devices of this machine, not free text
            return widgets.ComboBox(
                choices=[(desc, name) for name, desc in available_devices()],
                label=s.label,
                **common,
            )
        if spec.kind is bool:
            return widgets.CheckBox(value=spec.default, text=s.label, **common)
        if s.choices is not None:
            return widgets.ComboBox(value=spec.default, choices=s.choices, label=s.label, **common)
        if spec.kind is int:
            return widgets.SpinBox(
                value=spec.default,
                min=int(s.low if s.low is not None else -(2**63)),
                max=int(s.high if s.high is not None else 2**63 - 1),
                step=int(s.step or 1),
                label=s.label,
                **common,
            )
        low, high = self._shown_bounds(spec)
        box = widgets.FloatSpinBox(min=low, max=high, step=s.step or 0.1, label=s.label, **common)
        box.value = self._shown(spec, spec.default)
        return box

    def _shown_bounds(self, spec: SettingField) -> tuple[float, float]:
        s = spec.setting
        low = self._shown(spec, s.low if s.low is not None else -1e9)
        high = self._shown(spec, s.high if s.high is not None else 1e9)
        if spec.optional:
            low = 0.0  # 0 stands for "none"
        elif s.open_low:
            # the smallest value the box can show above an excluded bound
            low += 10 ** math.floor(math.log10(s.step or 0.1)) / 10
        return low, high

    # ----------------------------------------------------------- units

    def _shown(self, spec: SettingField, value: Any) -> Any:
        """The value as the GUI shows it (degrees, pixels, 0 for none)."""
        if value is None:
            return 0.0
        if spec.setting.shown_as == "degrees":
            return math.degrees(value)
        if spec.setting.shown_as == "pixels":
            return value * max(self._image_size - 1, 1)
        return value

    def _stored(self, spec: SettingField, shown: Any) -> Any:
        """The config's value of what the GUI shows."""
        if spec.optional and not shown:
            return None
        if spec.setting.shown_as == "degrees":
            return math.radians(shown)
        if spec.setting.shown_as == "pixels":
            return shown / max(self._image_size - 1, 1)
        return float(shown) if spec.kind is float else shown

    # ------------------------------------------------------------ reactions

    def _likelihood_changed(self, value: str) -> None:
        # these options only exist for the gaussian likelihood; config.validate() insists
        gaussian = value == "gaussian"
        for name in ("fit_noise", "softplus_mean", "normalize"):
            box = self.inputs[name]
            if not gaussian:
                box.value = False
            box.enabled = gaussian

    def _rotate_changed(self, value: bool) -> None:
        # the equivariant encoder needs rotation inference
        if not value and self.inputs["encoder"].value == "equivariant":
            self.inputs["encoder"].value = "mlp"

    def set_image_size(self, width: int, height: int) -> None:
        """Show the shift prior in pixels of images of this size (the default fraction)."""
        self._image_size = max(width, height)
        for spec in self._specs.values():
            if spec.setting.shown_as == "pixels":
                box: Any = self.inputs[spec.name]
                box.min, box.max = self._shown_bounds(spec)
                box.value = round(self._shown(spec, spec.default), 2)
                self._loaded.pop(spec.name, None)

    # --------------------------------------------------------- config <-> form

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
        self._image_size = image_size
        config = TrainConfig()
        for name, spec in self._specs.items():
            shown = self.inputs[name].value
            loaded = self._loaded.get(name)
            # an untouched loaded value keeps its exact saved number (the box may round it)
            untouched = loaded is not None and loaded[0] == shown
            spec.set(config, loaded[1] if untouched and loaded else self._stored(spec, shown))
        config.validate()
        return config

    def set_from_config(self, config: TrainConfig, image_size: int) -> None:
        """Show a run's settings, every one of them (the device only if this machine has it)."""
        self._image_size = image_size
        self._loaded.clear()
        # set the likelihood first: its handler disables (and clears) gaussian-only boxes
        order = sorted(self._specs.values(), key=lambda spec: spec.name != "likelihood")
        for spec in order:
            value = spec.get(config)
            box: Any = self.inputs[spec.name]
            if spec.name == "device" and value not in box.choices:
                continue  # a device of another machine: keep this machine's choice
            shown = self._shown(spec, value)
            if spec.kind is float:
                # a pixel prior on another image size can fall outside the box's range
                box.min, box.max = min(box.min, shown), max(box.max, shown)
                # the box rounds its bounds to the decimals it shows; the exact value is kept
                shown = min(max(shown, box.min), box.max)
            box.value = shown
            self._loaded[spec.name] = (box.value, value)

    @property
    def all_widgets(self) -> list[widgets.Widget]:
        """Every input widget (the dock disables them while training)."""
        return [*self.main, *self.advanced]
