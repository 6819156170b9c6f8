"""The astigmatic contrast transfer function (CTF), RELION's conventions, batched in torch.

Units and conventions (those of RELION's STAR files; see docs/conventions.md):

* defocus ``U``, ``V`` in Å, positive for underfocus; ``angle`` in degrees, the direction of
  defocus ``U`` measured from the x axis (image columns) towards the y axis (image rows);
* voltage in kV, spherical aberration ``Cs`` in mm, amplitude contrast ``w`` in [0, 1),
  phase shift in degrees (phase plates), B-factor in Å², scale a plain factor;
* spatial frequency ``s`` in 1/Å, direction ``phi = atan2(s_y, s_x)``.

The formula (RELION's ``CTF::getCTF``, written with positive underfocus)::

    defocus(phi) = (U + V) / 2 + (U - V) / 2 * cos(2 (phi - angle))
    gamma(s, phi) = pi lambda defocus(phi) s^2 - pi/2 Cs lambda^3 s^4 + phase_shift
                    + atan(w / sqrt(1 - w^2))
    CTF(s, phi)   = scale * sin(gamma) * exp(-B s^2 / 4)

with the relativistic electron wavelength ``lambda = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))``
Å (V in volts). RELION's sign: the CTF is ``+w`` at ``s = 0`` and positive at low
frequencies, so a *white* particle (contrast inverted at extraction, RELION's default) is the
CTF-filtered projection of positive density, and a dark one (as recorded) its negative.

Everything is evaluated on the ``rfft2`` grid of an ``H x W`` image: shape ``(H, W // 2 + 1)``,
rows in :func:`numpy.fft.fftfreq` order (``s_y``), columns in :func:`numpy.fft.rfftfreq`
order (``s_x``), so a CTF multiplies ``torch.fft.rfft2(image)`` directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_spatial_vae.core.errors import DataError

__all__ = [
    "PARAMETER_NAMES",
    "CtfBatches",
    "CtfParameters",
    "FrequencyGrid",
    "apply_filter",
    "check_parameters",
    "crop_filter",
    "electron_wavelength",
    "evaluate_ctf",
    "resolve_ctf",
]

# Column order of a (N, 10) parameter array; the io layer's CtfTable has the same columns.
PARAMETER_NAMES: tuple[str, ...] = (
    "defocus_u",  # Å
    "defocus_v",  # Å
    "defocus_angle",  # degrees
    "voltage",  # kV
    "cs",  # mm
    "amplitude_contrast",  # fraction in [0, 1)
    "phase_shift",  # degrees
    "bfactor",  # Å^2
    "scale",
    "pixel_size",  # Å per pixel
)


def electron_wavelength(voltage_kv: torch.Tensor | float) -> torch.Tensor | float:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV."""
    volts = voltage_kv * 1e3
    if isinstance(volts, torch.Tensor):
        return 12.2643247 / torch.sqrt(volts * (1.0 + 0.978466e-6 * volts))
    return 12.2643247 / math.sqrt(volts * (1.0 + 0.978466e-6 * volts))


class FrequencyGrid:
    """Spatial frequencies of the ``rfft2`` grid of ``H x W`` images, computed once.

    Attributes
    ----------
    s2
        ``(H, W // 2 + 1)`` squared frequency in cycles per pixel squared, float64.
    phi
        ``(H, W // 2 + 1)`` direction ``atan2(s_y, s_x)`` in radians, float64.
    """

    def __init__(self, height: int, width: int, device: torch.device | str = "cpu"):
        self.shape = (height, width)
        sy = torch.fft.fftfreq(height, dtype=torch.float64, device=device)
        sx = torch.fft.rfftfreq(width, dtype=torch.float64, device=device)
        grid_y, grid_x = torch.meshgrid(sy, sx, indexing="ij")
        self.s2 = grid_x**2 + grid_y**2
        self.phi = torch.atan2(grid_y, grid_x)

    def to(self, device: torch.device | str) -> FrequencyGrid:
        """The same grid on ``device``."""
        moved = FrequencyGrid.__new__(FrequencyGrid)
        moved.shape = self.shape
        moved.s2, moved.phi = self.s2.to(device), self.phi.to(device)
        return moved


def evaluate_ctf(
    grid: FrequencyGrid,
    defocus_u: torch.Tensor,
    defocus_v: torch.Tensor,
    defocus_angle: torch.Tensor,
    voltage: torch.Tensor,
    cs: torch.Tensor,
    amplitude_contrast: torch.Tensor,
    pixel_size: torch.Tensor,
    phase_shift: torch.Tensor | None = None,
    bfactor: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The CTF of ``N`` particles on the ``rfft2`` grid (formula in the module docstring).

    Parameters
    ----------
    grid
        :class:`FrequencyGrid` of the image size.
    defocus_u, defocus_v, defocus_angle, voltage, cs, amplitude_contrast, pixel_size
        ``(N,)`` in Å, Å, degrees, kV, mm, fraction, Å per pixel.
    phase_shift, bfactor, scale
        ``(N,)`` degrees, Å², factor; None for 0, 0, 1.
    dtype
        Output dtype; the phase is computed in float64 (it reaches hundreds of radians).

    Returns
    -------
    torch.Tensor
        ``(N, H, W // 2 + 1)``: rows in fftfreq order, columns in rfftfreq order.
    """

    def column(values: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float64, device=grid.s2.device)[:, None, None]

    wavelength = electron_wavelength(column(voltage))
    s2 = grid.s2 / column(pixel_size) ** 2  # 1/Å^2
    mean = 0.5 * (column(defocus_u) + column(defocus_v))
    half_difference = 0.5 * (column(defocus_u) - column(defocus_v))
    defocus = mean + half_difference * torch.cos(
        2.0 * (grid.phi - torch.deg2rad(column(defocus_angle)))
    )
    w = column(amplitude_contrast)
    gamma = (
        math.pi * wavelength * defocus * s2
        - 0.5 * math.pi * column(cs) * 1e7 * wavelength**3 * s2**2
        + torch.atan(w / torch.sqrt(1.0 - w**2))
    )
    if phase_shift is not None:
        gamma = gamma + torch.deg2rad(column(phase_shift))
    ctf = torch.sin(gamma)
    if bfactor is not None:
        ctf = ctf * torch.exp(-column(bfactor) * s2 / 4.0)
    if scale is not None:
        ctf = ctf * column(scale)
    return ctf.to(dtype)


def evaluate_ctf_rows(grid: FrequencyGrid, rows: torch.Tensor) -> torch.Tensor:
    """:func:`evaluate_ctf` of parameter rows ``(N, 10)`` in :data:`PARAMETER_NAMES` order."""
    column = {name: rows[:, i] for i, name in enumerate(PARAMETER_NAMES)}
    return evaluate_ctf(
        grid,
        column["defocus_u"],
        column["defocus_v"],
        column["defocus_angle"],
        column["voltage"],
        column["cs"],
        column["amplitude_contrast"],
        column["pixel_size"],
        phase_shift=column["phase_shift"],
        bfactor=column["bfactor"],
        scale=column["scale"],
    )


def apply_filter(images: torch.Tensor, transfer: torch.Tensor) -> torch.Tensor:
    """Multiply images by a transfer function in Fourier space (rfft2 -> x -> irfft2).

    Parameters
    ----------
    images
        ``(..., H, W)`` real images.
    transfer
        ``(..., H, W // 2 + 1)`` real filter broadcastable against ``rfft2(images)`` (a CTF
        from :func:`evaluate_ctf`, its sign, ...).

    Returns
    -------
    torch.Tensor
        ``(..., H, W)`` filtered images (a circular convolution over the box).
    """
    height, width = images.shape[-2:]
    spectrum = torch.fft.rfft2(images)
    return torch.fft.irfft2(spectrum * transfer, s=(height, width))


def crop_filter(transfer: torch.Tensor, width: int, binning: int) -> torch.Tensor:
    """A filter of ``H x W`` images, restricted to the rfft2 grid of ``b x b``-binned ones.

    An image binned by ``b`` (one pixel per ``b x b`` block, ``b`` times the pixel size) has
    ``H // b`` frequency rows and ``W // b // 2 + 1`` columns; in cycles per full-size pixel
    they are the lowest frequencies of the full grid (row ``k`` of the binned grid is
    frequency ``k / H`` in both), so the binned image's filter is that corner of the full
    filter: rows ``0 .. ceil(h / 2) - 1`` and the last ``floor(h / 2)`` rows, the first
    ``w // 2 + 1`` columns (Fourier cropping). The CTF evaluated directly on the binned grid
    at ``b`` times the pixel size is exactly this.

    Parameters
    ----------
    transfer
        ``(..., H, W // 2 + 1)`` filter on the full rfft2 grid.
    width
        ``W`` (the rfft2 grid's column count does not tell an odd width from an even one).
    binning
        ``b``; ``H`` and ``W`` must be multiples of it.

    Returns
    -------
    torch.Tensor
        ``(..., H // b, (W // b) // 2 + 1)``.
    """
    if binning == 1:
        return transfer
    height = transfer.shape[-2]
    if height % binning or width % binning:
        raise ValueError(f"a {height}x{width} filter cannot be binned by {binning}")
    rows = height // binning
    # non-negative frequencies first, then the negative ones (fftfreq order)
    kept_rows = torch.cat(
        [torch.arange((rows + 1) // 2), torch.arange(height - rows // 2, height)]
    ).to(transfer.device)
    return transfer[..., kept_rows, : (width // binning) // 2 + 1]


@dataclass
class CtfParameters:
    """Per-particle CTF parameters of a stack, in RELION units (numpy only).

    Attributes
    ----------
    values
        ``(N, 10)`` float64, columns :data:`PARAMETER_NAMES`.
    phase_flipped
        The images were phase-flipped (multiplied by ``sign(CTF)``): the data see ``|CTF|``.
    premultiplied
        The images were multiplied by their CTF (RELION's ``rlnCtfDataAreCtfPremultiplied``):
        the data see ``CTF^2``.
    source
        Where the parameters came from (for messages).
    """

    values: np.ndarray
    phase_flipped: bool = False
    premultiplied: bool = False
    source: str = ""

    @classmethod
    def from_table(
        cls,
        table: Mapping[str, Any] | Any,
        phase_flipped: bool = False,
        premultiplied: bool = False,
        source: str = "",
    ) -> CtfParameters:
        """Build from any table with the :data:`PARAMETER_NAMES` columns (a DataFrame)."""
        values = np.stack(
            [np.asarray(table[name], dtype=np.float64) for name in PARAMETER_NAMES], axis=1
        )
        return cls(values, phase_flipped, premultiplied, source)

    @classmethod
    def from_any(cls, ctf: Any) -> CtfParameters:
        """Accept a :class:`CtfParameters` or an object with ``table``/flags (io's CtfTable)."""
        if isinstance(ctf, CtfParameters):
            return ctf
        return cls.from_table(
            ctf.table,
            bool(getattr(ctf, "phase_flipped", False)),
            bool(getattr(ctf, "premultiplied", False)),
            str(getattr(ctf, "source", "")),
        )

    def __len__(self) -> int:
        return len(self.values)

    def subset(self, indices: np.ndarray) -> CtfParameters:
        """The rows ``indices``."""
        return CtfParameters(
            self.values[np.asarray(indices)], self.phase_flipped, self.premultiplied, self.source
        )

    def column(self, name: str) -> np.ndarray:
        """One parameter for every particle, ``(N,)``."""
        return self.values[:, PARAMETER_NAMES.index(name)]

    def summary(self) -> str:
        """One line, e.g. ``4,000 particles, defocus 0.5-3.5 µm, astigmatic, from x.star``."""
        mean_defocus = 0.5 * (self.column("defocus_u") + self.column("defocus_v"))
        astigmatism = np.abs(self.column("defocus_u") - self.column("defocus_v"))
        text = (
            f"{len(self):,} particles, defocus {mean_defocus.min() / 1e4:.1f}-"
            f"{mean_defocus.max() / 1e4:.1f} µm, "
            + ("astigmatic" if astigmatism.max() > 1.0 else "no astigmatism")
        )
        if self.phase_flipped:
            text += ", phase-flipped"
        if self.premultiplied:
            text += ", CTF-premultiplied"
        return text + (f", from {self.source}" if self.source else "")


class CtfBatches:
    """Per-particle CTF parameters on the training device; builds each batch's filter once.

    Parameters
    ----------
    parameters
        :class:`CtfParameters` of the served images, in the feeder's position order.
    image_shape
        ``(H, W)``.
    device
        Where the filters are built.
    """

    def __init__(
        self, parameters: CtfParameters, image_shape: tuple[int, int], device: torch.device
    ):
        self.parameters = parameters
        self.values = torch.as_tensor(parameters.values, dtype=torch.float64, device=device)
        self.grid = FrequencyGrid(*image_shape, device=device)

    def __len__(self) -> int:
        return len(self.values)

    def filters(self, positions: torch.Tensor | np.ndarray) -> torch.Tensor:
        """What the data at ``positions`` see: ``(B, H, W // 2 + 1)`` float32.

        The CTF, its absolute value for phase-flipped stacks, its square for premultiplied ones.
        """
        rows = self.values[torch.as_tensor(positions, device=self.values.device)]
        ctf = evaluate_ctf_rows(self.grid, rows)
        if self.parameters.premultiplied:
            return ctf * ctf
        if self.parameters.phase_flipped:
            return ctf.abs()
        return ctf


class StackCtfFilters:
    """What every particle of a stack sees of its CTF, computed only for the rows read.

    Array-like ``(N, H, W // 2 + 1)`` float32 on the rfft2 grid (the layout
    :func:`evaluate_ctf` returns): ``filters[rows]`` builds the rows' CTFs (``|CTF|`` for
    phase-flipped stacks, ``CTF^2`` for premultiplied ones), so averaging 100,000 particles
    never holds 100,000 CTFs.

    Parameters
    ----------
    parameters
        The stack's :class:`CtfParameters` (or io's ``CtfTable``).
    image_shape
        ``(H, W)``.
    """

    def __init__(self, parameters: Any, image_shape: tuple[int, int]):
        self.parameters = CtfParameters.from_any(parameters)
        self._batches = CtfBatches(self.parameters, image_shape, torch.device("cpu"))
        height, width = image_shape
        self.shape = (len(self.parameters), height, width // 2 + 1)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        positions = np.arange(self.shape[0])[rows]
        return self._batches.filters(np.atleast_1d(positions)).numpy()

    @classmethod
    def of_stack(cls, stack: Any) -> StackCtfFilters | None:
        """The filters of a stack that carries CTF parameters (a STAR/cs ``ParticleStack``)."""
        parameters = getattr(stack, "ctf", None)
        if parameters is None:
            return None
        return cls(parameters, tuple(stack.shape[1:3]))


def check_parameters(parameters: CtfParameters) -> None:
    """Raise :class:`DataError` naming the first particle row with non-physical values.

    Rows count from 1, as in the STAR/cs file the parameters came from.
    """
    checks = (
        ("defocus_u", lambda v: v >= 0.0, "negative defocus"),
        ("defocus_v", lambda v: v >= 0.0, "negative defocus"),
        ("voltage", lambda v: v > 0.0, "voltage must be positive"),
        ("cs", lambda v: v >= 0.0, "Cs must be >= 0"),
        (
            "amplitude_contrast",
            lambda v: (v >= 0.0) & (v < 1.0),
            "amplitude contrast outside [0, 1)",
        ),
        ("pixel_size", lambda v: v > 0.0, "pixel size missing or not positive"),
        ("scale", lambda v: v > 0.0, "CTF scale must be positive"),
    )
    where = f"{parameters.source}: " if parameters.source else ""
    finite = np.isfinite(parameters.values).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        bad = [
            name
            for name, value in zip(PARAMETER_NAMES, parameters.values[row], strict=True)
            if not np.isfinite(value)
        ]
        raise DataError(
            f"{where}particle row {row + 1}: CTF {', '.join(bad)} missing or not a number"
        )
    for name, ok, problem in checks:
        values = parameters.column(name)
        good = ok(values)
        if not good.all():
            row = int(np.argmin(good))
            raise DataError(f"{where}particle row {row + 1}: {problem} ({name} = {values[row]:g})")


def resolve_ctf(
    choice: str,
    ctf: Any | None,
    problem: str | None,
    n_images: int,
    likelihood: str = "gaussian",
) -> CtfParameters | None:
    """The CTF a run uses, from the ``ctf`` setting and what the input carries.

    Parameters
    ----------
    choice
        ``"auto"``, ``"on"`` or ``"off"`` (:attr:`TrainConfig.ctf`).
    ctf
        The stack's parameters (:class:`CtfParameters` or the io layer's ``CtfTable``), or None.
    problem
        The reader's one-line reason why the stack's CTF columns are unusable, or None.
    n_images
        Images in the stack (the parameters must cover each).
    likelihood
        The model's likelihood; ``auto`` ignores the CTF of binary (bernoulli) data.

    Raises
    ------
    DataError
        CTF columns partly missing (unless ``off``), ``on`` without parameters, or a
        non-physical value (naming the particle row).
    """
    if choice == "off":
        return None
    if problem:
        raise DataError(problem)
    if ctf is None or (choice == "auto" and likelihood != "gaussian"):
        if choice == "on":
            raise DataError(
                "--ctf on, but the particles carry no CTF parameters (give a RELION .star or "
                "cryoSPARC .cs file with defocus columns, or use --ctf off)"
            )
        return None
    parameters = CtfParameters.from_any(ctf)
    if len(parameters) != n_images:
        raise DataError(f"CTF parameters for {len(parameters)} of {n_images} images")
    check_parameters(parameters)
    return parameters
