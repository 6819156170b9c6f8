"""Where do the stacks named in a STAR or cryoSPARC file live?"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import StackError

__all__ = ["as_datadir", "candidate_paths", "describe_search", "resolve_stack_path"]


def candidate_paths(name: str, base_dirs: Sequence[Path], datadir: Path | None) -> list[Path]:
    """Places to look for a stack, most specific first.

    The name as written, relative to each base folder (the list file's folder first),
    then relative to ``datadir``, then relative to the current working folder (RELION
    resolves names from the project folder it runs in, so a STAR file used from its project
    folder needs no ``datadir``), then its bare file name in ``datadir`` and in the base
    folders (for stacks copied next to each other without their job folders).
    """
    p = Path(name)
    out: list[Path] = []
    if p.is_absolute():
        out.append(p)
    else:
        out.extend(d / p for d in base_dirs)
        if datadir is not None:
            out.append(datadir / p)
        out.append(Path.cwd() / p)
    if datadir is not None:
        out.append(datadir / p.name)
    out.extend(d / p.name for d in base_dirs)
    seen: set[Path] = set()
    unique = []
    for c in out:
        if c not in seen:
            seen.add(c)
            unique.append(c)
    return unique


def resolve_stack_path(name: str, base_dirs: Sequence[Path], datadir: Path | None) -> Path | None:
    """The first existing file among :func:`candidate_paths`, or None."""
    for c in candidate_paths(name, base_dirs, datadir):
        if c.is_file():
            return c
    return None


def describe_search(base_dirs: Iterable[Path], datadir: Path | None) -> str:
    """Say (in one clause) where stacks were looked for, for error messages."""
    folders = [str(d) for d in base_dirs]
    here = str(Path.cwd())
    folders.append("the current folder" if here in folders else f"the current folder {here}")
    where = "looked in " + ", ".join(folders)
    if datadir is None:
        return where + "; pass datadir= (--datadir) to name the folder that holds the stacks"
    return where + f" and datadir {datadir}"


def as_datadir(datadir: str | os.PathLike[str] | None) -> Path | None:
    """Check a user-given stack folder; None stays None."""
    if datadir is None:
        return None
    folder = Path(datadir).expanduser()
    if not folder.is_dir():
        raise StackError(folder, "datadir is not a folder")
    return folder
