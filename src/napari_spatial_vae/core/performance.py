"""Speed settings of a training run: precision, optimiser kernels, allocator, compilation.

Everything here changes how fast a step runs, never what it computes (up to rounding, and
up to the precision the user asked for). Measurements behind the choices are in
``docs/performance.md``; ``benchmarks/throughput.py`` reproduces them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from typing import Any

import torch

from napari_spatial_vae.core.config import PRECISIONS
from napari_spatial_vae.core.errors import ConfigError

# glibc mallopt parameter numbers and defaults (malloc.h, mallopt(3))
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536


@contextlib.contextmanager
def retained_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Inside the block, glibc keeps large freed blocks instead of returning them to the kernel.

    Every training step allocates and frees activation buffers of 50-300 MB. glibc serves
    blocks that large with ``mmap`` and returns them with ``munmap``, so every step the kernel
    zero-fills them again, page by page: ~250,000 page faults and a quarter of the CPU time
    per step at 28x28, H=500 (measured; docs/performance.md). Inside the block big blocks
    come from the heap and stay there, so the next step reuses them. On exit the defaults
    are restored and the free heap is trimmed, so the process does not keep the memory.

    Only allocations from the main thread's heap benefit (the CLI and torchrun workers);
    elsewhere, or off glibc (macOS, musl), this does nothing.

    Yields
    ------
    bool
        Whether the allocator was reconfigured.
    """
    libc = _glibc() if enabled else None
    active = bool(
        libc is not None
        and libc.mallopt(_M_MMAP_MAX, 0) == 1
        and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    )
    try:
        yield active
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)


def release_large_blocks() -> bool:
    """Make glibc serve every block above 128 KiB with ``mmap`` and return it when freed.

    By default glibc raises this threshold each time a large mmapped block is freed, after
    which large buffers come from the heap; a heap only shrinks from its top, so small
    arrays that outlive a batch (the poses inference keeps for every image) pin the freed
    batch buffers below them, and memory grows with the stack: measured 4.2 GB anonymous
    memory over 300,000 images, flat at ~210 MB with the fixed threshold. Inference calls
    this so its memory stays bounded by the batch size. Does nothing off glibc.

    The setting is process-wide and stays: 128 KiB is glibc's own starting value, it just
    stops drifting upwards. Training is unaffected (:func:`retained_freed_memory` disables
    mmap altogether while it runs).

    Returns
    -------
    bool
        Whether the allocator was reconfigured.
    """
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_MMAP_THRESHOLD))


def _glibc() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallopt  # noqa: B018 - musl has no mallopt: probe it
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def check_precision(precision: str, device: torch.device) -> None:
    """Raise :class:`ConfigError` if ``precision`` cannot run on ``device``.

    ``tf32`` exists on NVIDIA GPUs only (Ampere and newer); ``bf16`` runs everywhere torch
    has bf16 kernels (CUDA, recent x86 CPUs, where AVX512-BF16/AMX make it fast).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "tf32" and device.type != "cuda":
        raise ConfigError("precision 'tf32' needs an NVIDIA GPU; use fp32 or bf16 on this device")


# /proc/cpuinfo flags of x86 CPUs with bf16 dot-product instructions (Cooper Lake, Zen 4,
# Sapphire Rapids and newer); without them torch emulates bf16 and it is slower than fp32
_NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 instruction sets this CPU advertises (empty off Linux or without them).

    Parameters
    ----------
    cpuinfo
        Text of ``/proc/cpuinfo`` (read from the system when None).
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read()
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break  # every core lists the same flags
    return [flag for flag in _NATIVE_BF16_CPU_FLAGS if flag in flags]


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """The precision a run computes in, and why, for a setting that may be ``auto``.

    ``auto`` picks bf16 where the hardware has native bf16 arithmetic (CUDA GPUs that
    report it, x86 CPUs with AVX512-BF16 or AMX: 2-4x the fp32 GEMM rate, measured in
    docs/performance.md) and fp32 elsewhere (emulated bf16 is slower than fp32, and Apple
    MPS autocast gains little). Any other value is returned as is.

    Returns
    -------
    precision, reason
        One of ``fp32``, ``bf16``, ``tf32``, and a short phrase for the run's log.
    """
    check_precision(precision, device)
    if precision != "auto":
        return precision, "as set"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: the GPU runs bf16 natively"
        return "fp32", "auto: the GPU has no native bf16"
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        if flags:
            return "bf16", f"auto: the CPU has {'/'.join(f.upper() for f in flags)}"
        return "fp32", "auto: the CPU has no native bf16"
    return "fp32", f"auto: fp32 on {device.type}"


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Allow TF32 matmuls inside the block for ``precision='tf32'`` on CUDA, restore after."""
    if precision != "tf32" or device.type != "cuda":
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 tensor cores for fp32 matmuls
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def generator_autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context the generator runs in: bf16 autocast for ``precision='bf16'``, else none.

    Only the generator's per-pixel layers run in bf16 (they are >95 % of the FLOPs); the
    encoder, the coordinate transform, the first generator layer and the losses stay fp32,
    so poses and the ELBO are computed at full precision.
    """
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_adam(params: Any, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam with the fused kernel where torch has one for ``device`` (one pass per tensor).

    The default CPU Adam launches ~10 element-wise ops per parameter tensor per step; the
    fused kernel does them in one pass (same update up to rounding).
    """
    try:
        return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda", "mps"))
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=lr)
