"""Choosing the torch device and describing what is present."""

from __future__ import annotations

import torch

from napari_spatial_vae.core.errors import ConfigError


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` into a usable device.

    ``auto`` picks CUDA, then Apple MPS, then the CPU.

    Raises
    ------
    ConfigError
        When the requested device is not present on this machine.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available here")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
        return torch.device("cuda", index)
    if name == "mps":
        if not _mps_available():
            raise ConfigError("device 'mps' requested but Apple MPS is not available here")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")


def describe_device(device: torch.device) -> str:
    """One line such as ``cuda:0 (NVIDIA H100, 79.1 GiB)`` or ``cpu (2 threads)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 1024**3:.1f} GiB)"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({torch.get_num_threads()} threads)"


def available_devices() -> list[tuple[str, str]]:
    """``(name, description)`` of every device present, for menus; ``auto`` first."""
    devices = [("auto", f"auto: {describe_device(resolve_device('auto'))}")]
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        devices.append((f"cuda:{index}", describe_device(torch.device("cuda", index))))
    if _mps_available():
        devices.append(("mps", describe_device(torch.device("mps"))))
    devices.append(("cpu", describe_device(torch.device("cpu"))))
    return devices
