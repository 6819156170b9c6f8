"""Run folders: what a training writes, how it resumes, how a model is loaded back.

Layout of ``RUN_DIR``::

    config.json               format tag, package version, image shape, TrainConfig, command
    checkpoint.safetensors    weights ("model.*"), Adam state ("optimizer.*") and, in the
                              safetensors metadata, the progress (epochs completed, step)
                              and, z-dim 1, the training particles' z (posterior_z.TrainingZ)
    history.csv               epoch, split, elbo, recon, kl, kl_theta, kl_shift, kl_z, lr, seconds

Weights and optimizer state share one file so a checkpoint is replaced in a single atomic
``os.replace``: a crash at any moment leaves either the previous or the new checkpoint,
never a mix. Nothing is ever unpickled: safetensors and JSON only.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from napari_spatial_vae import __version__
from napari_spatial_vae._atomic import atomic_output
from napari_spatial_vae.core.config import TrainConfig
from napari_spatial_vae.core.errors import CheckpointError, ConfigError
from napari_spatial_vae.core.model import SpatialVAE
from napari_spatial_vae.core.posterior_z import TrainingZ

FORMAT = "napari-spatial-vae-run"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
HISTORY_FILE = "history.csv"
HISTORY_FIELDS = (
    "epoch",
    "split",
    "elbo",
    "recon",
    "kl",
    "kl_theta",
    "kl_shift",
    "kl_z",
    "lr",
    "seconds",
    "binned",
    "half_turn_better",
    # the fold check's measure (core/fold_restart.py), on the train row of the epoch it ran
    "unrendered",
)


@dataclass
class Progress:
    """Where a run stands; stored in the checkpoint's metadata."""

    epochs_completed: int = 0
    global_step: int = 0
    lr_progress: float = 0.0
    finished: bool = False
    # times training started again from a fresh initialisation (core/fold_restart.py)
    restarts: int = 0


def write_atomically(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, then fsync and move the result over ``path`` in one rename.

    A crash at any moment leaves the previous file or the new one, never a partial file; the
    file gets the usual permissions (readable by colleagues on a shared cluster).
    """
    with atomic_output(path) as tmp:
        write(tmp)


def write_text_atomically(path: Path, text: str) -> None:
    """Atomic text file write."""
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds a saved model."""
    return (Path(run_dir) / CHECKPOINT_FILE).exists()


def save_config(
    run_dir: Path, config: TrainConfig, image_shape: tuple[int, int, int], extra: dict[str, Any]
) -> None:
    """Write ``config.json`` (atomically)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "image_shape": list(image_shape),
        "config": config.to_dict(),
        **extra,
    }
    write_text_atomically(Path(run_dir) / CONFIG_FILE, json.dumps(payload, indent=2) + "\n")


def load_config(run_dir: Path) -> tuple[TrainConfig, tuple[int, int, int], dict[str, Any]]:
    """Read ``config.json``: the config, the image shape ``(C, H, W)`` and the whole payload."""
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"{run_dir}: run folder not found")
    if not path.exists():
        raise CheckpointError(f"{run_dir}: not a spatial-VAE run folder (no {CONFIG_FILE})")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a spatial-VAE run configuration")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer napari-spatial-vae ({payload.get('package_version')}); "
            "upgrade to read it"
        )
    try:
        config = TrainConfig.from_dict(payload["config"])
        config.validate()
        channels, height, width = (int(s) for s in payload["image_shape"])
        image_shape = (channels, height, width)
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid configuration ({err})") from None
    return config, image_shape, payload


def save_checkpoint(
    run_dir: Path, model: SpatialVAE, optimizer: torch.optim.Optimizer | None, progress: Progress
) -> None:
    """Write weights, optimizer state and progress in one atomic file replace."""
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {"progress": progress.__dict__}
    if model.training_z is not None:
        meta["training_z"] = asdict(model.training_z)
    if optimizer is not None:
        state = optimizer.state_dict()
        for index, slots in state["state"].items():
            for name, value in slots.items():
                tensor = value if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"optimizer.{index}.{name}"] = tensor.detach().contiguous().cpu()
        meta["param_groups"] = state["param_groups"]
    metadata = {"format": FORMAT, "spatial_vae": json.dumps(meta)}
    write_atomically(
        Path(run_dir) / CHECKPOINT_FILE, lambda tmp: save_file(tensors, str(tmp), metadata)
    )


def _read_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists():
        raise CheckpointError(f"{run_dir}: no saved model ({CHECKPOINT_FILE} is missing)")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        meta = json.loads(metadata["spatial_vae"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({err})") from None
    return tensors, meta


def load_model(
    run_dir: Path, device: torch.device | str = "cpu"
) -> tuple[SpatialVAE, TrainConfig, Progress]:
    """Rebuild the model of a run folder with its saved weights, in eval mode."""
    config, image_shape, _ = load_config(run_dir)
    tensors, meta = _read_checkpoint(run_dir)
    model = SpatialVAE(config.model, image_shape)
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{run_dir}: weights do not match config.json ({first})") from None
    progress = Progress(**meta.get("progress", {}))
    # runs saved before 2026-12-05 have none: inference then refines z (core/infer.read_z)
    if "training_z" in meta:
        try:
            model.training_z = TrainingZ.from_dict(meta["training_z"])
        except ValueError as err:
            raise CheckpointError(f"{run_dir}: unreadable checkpoint ({err})") from None
    return model.to(device).eval(), config, progress


def restore_optimizer(run_dir: Path, optimizer: torch.optim.Optimizer) -> None:
    """Load the saved Adam state into ``optimizer`` (built over the same parameters)."""
    tensors, meta = _read_checkpoint(run_dir)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    if "param_groups" not in meta:
        raise CheckpointError(f"{run_dir}: checkpoint has no optimizer state to resume from")
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def write_history(run_dir: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Rewrite ``history.csv`` atomically (with a ``kl_zK`` column per z dimension)."""
    kept = list(rows)

    def write(tmp: Path) -> None:
        fields = [*HISTORY_FIELDS, *_per_dim_fields(kept)]
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            for row in kept:
                writer.writerow({k: row.get(k, "") for k in fields})

    write_atomically(Path(run_dir) / HISTORY_FILE, write)


def _per_dim_fields(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The ``kl_z1, kl_z2, ...`` columns the rows have (one per z dimension), in order."""
    names = {k for row in rows for k in row if re.fullmatch(r"kl_z\d+", k)}
    return sorted(names, key=lambda name: int(name[4:]))


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of ``history.csv`` with numbers parsed (empty list when absent)."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.exists():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, Any] = {"epoch": int(row["epoch"]), "split": row["split"]}
            for key in [*HISTORY_FIELDS[2:], *_per_dim_fields([row])]:
                parsed[key] = float(row[key]) if row.get(key) not in (None, "") else None
            rows.append(parsed)
    return rows
