"""One writer per run folder: a lock file naming the process that trains there.

Two trainings in one folder (a second ``spatial-vae train --resume``, or the widget, while
another process still trains) would interleave their epochs in ``history.csv`` and the
checkpoint. The lock is a file created exclusively (``O_EXCL``: atomic on local and NFSv3+
file systems) holding the owner's process id and host. A lock whose process is gone (a
``kill -9``, a crash, a reboot) is stale and taken over; a live one, or one from another host
whose process cannot be checked from here, is refused with one line naming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from napari_spatial_vae.core.errors import CheckpointError

__all__ = ["LOCK_FILE", "hold_run_lock"]

LOCK_FILE = ".spatial-vae.lock"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _read_owner(lock: Path) -> dict | None:
    try:
        owner = json.loads(lock.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or damaged: treated as held by an unknown process
    return owner if isinstance(owner, dict) else {}


def _is_stale(owner: dict) -> bool:
    pid, host = owner.get("pid"), owner.get("host")
    return host == socket.gethostname() and isinstance(pid, int) and not _process_alive(pid)


def _describe(owner: dict) -> str:
    if not owner:
        return "an unknown process"
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(owner.get("started", 0)))
    return f"process {owner.get('pid')} on {owner.get('host')} (since {since})"


def _try_create(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(owner, f)
    return True


@contextlib.contextmanager
def hold_run_lock(run_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the run folder's lock for the duration of the block (the folder is created).

    Parameters
    ----------
    run_dir
        The run folder. A folder this call created and that is still empty at the end
        (training failed before writing anything) is removed again.

    Yields
    ------
    pathlib.Path
        The lock file.

    Raises
    ------
    CheckpointError
        Another live process holds the folder; the message names it and what to do.
    """
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    # two tries: the second after removing a stale lock (another process may win the race)
    for _ in range(2):
        if _try_create(lock):
            break
        owner = _read_owner(lock)
        if owner is None:
            continue  # released between our two calls
        if not _is_stale(owner):
            raise CheckpointError(
                f"{run_dir}: {_describe(owner)} is training in this folder; wait for it, stop "
                f"it, or choose another folder (if that process is gone, delete {lock})"
            )
        lock.unlink(missing_ok=True)
    else:
        raise CheckpointError(f"{run_dir}: could not take the run folder's lock {lock}")
    try:
        yield lock
    finally:
        owner = _read_owner(lock)
        if owner and owner.get("pid") == os.getpid():
            lock.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only succeeds when nothing was written
