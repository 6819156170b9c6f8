"""Write files under their final name only once they are complete.

Shared by the core (run folders) and io (stacks, pose tables); standard library only, so
either layer can use it without importing the other. Failures raise :class:`OSError` with
the file name and a one-line reason, which the command line prints as ``<path>: <reason>``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_output", "commit_temp_file", "make_temp_file"]


def _umask() -> int:
    # os.umask can only be read by setting it, which races with other threads (the
    # napari plugin writes from a worker thread); Linux publishes it in /proc instead.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def make_temp_file(path: Path) -> Path:
    """Create an empty hidden temporary file beside ``path`` (same file system)."""
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(
            errno.ENOENT, f"output folder {folder} does not exist", os.fspath(path)
        )
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=folder)
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot write in {folder} ({exc.strerror})", os.fspath(path)
        ) from None
    os.close(fd)
    return Path(tmp)


def commit_temp_file(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk and rename it to ``path`` in one atomic step."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    # mkstemp makes 0600 files; give the result the permissions of an ordinary new file
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, else it vanishes.

    Examples
    --------
    >>> with atomic_output("poses.csv") as tmp:  # doctest: +SKIP
    ...     table.to_csv(tmp, index=False)
    """
    path = Path(path)
    tmp = make_temp_file(path)
    try:
        yield tmp
        commit_temp_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
