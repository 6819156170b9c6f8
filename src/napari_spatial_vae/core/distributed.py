"""Data-parallel training across processes with ``torch.distributed`` (launched by torchrun).

``torchrun --nproc-per-node N -m napari_spatial_vae train ...`` starts N copies of the
command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in
their environment; :func:`init_from_environment` turns them into a process group (NCCL
between GPUs, gloo on CPUs). The training loop then

* shards every global batch across ranks like ``DistributedSampler`` does (rank ``r`` takes
  positions ``r, r + W, r + 2W, ...`` of the epoch's seeded permutation, identical on all
  ranks), so each rank reads only its own images from the memory-mapped stack;
* wraps the model in ``DistributedDataParallel``, which averages gradients;
* all-reduces the epoch's ELBO sums and the stop decision, and lets rank 0 alone write the
  run folder and report progress.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from napari_spatial_vae.core.errors import ConfigError


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly single-process) run.

    Attributes
    ----------
    rank, world_size, local_rank
        Global rank, number of processes, rank on this node.
    owns_group
        Whether this context created the process group (and must destroy it).
    control_group
        A gloo group for small CPU-side agreements (the stop flag) that must not wait
        for, or synchronise with, the GPU; None when single-process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    control_group: object | None = None

    @property
    def enabled(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and reports progress."""
        return self.rank == 0


def environment_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def environment_rank() -> int:
    """``RANK`` set by torchrun (0 when absent): the CLI uses it to stay quiet on ranks > 0."""
    return int(os.environ.get("RANK", "0") or 0)


def backend_for(device: torch.device) -> str:
    """NCCL between CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """One GPU per process: rank ``local_rank`` of a node uses ``cuda:local_rank``."""
    if device.type != "cuda":
        return device
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
            "use --nproc-per-node <= the number of GPUs"
        )
    return torch.device("cuda", local_rank)


def init_from_environment(device: torch.device) -> tuple[DistributedContext, torch.device]:
    """Join the torchrun process group when ``WORLD_SIZE > 1``; a no-op otherwise.

    Returns the context and the device this rank trains on (``cuda:LOCAL_RANK`` on GPUs).
    An already initialised default group (a user's own launcher) is reused, not replaced.
    """
    if environment_world_size() <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistributedContext(), device
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    device = rank_device(device, local_rank)
    owns = not dist.is_initialized()
    if owns:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend_for(device), timeout=datetime.timedelta(minutes=30))
    control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    context = DistributedContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        owns_group=owns,
        control_group=control,
    )
    return context, device


def shutdown(context: DistributedContext) -> None:
    """Destroy the process group if :func:`init_from_environment` created it."""
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard_rows(global_size: int, context: DistributedContext) -> tuple[slice, bool]:
    """Rows of a global batch of ``global_size`` that this rank processes.

    Returns
    -------
    rows : slice
        ``rank::world_size`` (``DistributedSampler``'s striding), or ``0:1`` when the
        global batch has fewer images than ranks and this rank would get none.
    padding : bool
        True in the latter case: the row is a stand-in that keeps every rank in the
        collective calls and must get weight 0.
    """
    if context.rank < global_size:
        return slice(context.rank, None, context.world_size), False
    return slice(0, 1), True


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (identity when single-process)."""
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def max_over_ranks(values: list[float], context: DistributedContext) -> list[float]:
    """Element-wise maximum of ``values`` over ranks, on the CPU control group.

    Used once per step for the stop request and the time-budget progress, which must be the
    same on every rank: a rank that stopped alone would leave the others waiting forever in
    the gradient all-reduce, and different learning rates would make the weights diverge.
    """
    if not context.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=context.control_group)
    return tensor.tolist()


def barrier(context: DistributedContext) -> None:
    """Wait for all ranks on the CPU control group (no-op when single-process)."""
    if context.enabled:
        dist.barrier(group=context.control_group)  # type: ignore[arg-type]
