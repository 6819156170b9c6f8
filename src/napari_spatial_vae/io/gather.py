"""Open the stacks that a particle list (STAR or cryoSPARC) points into."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import StackError
from .mrc import open_mrc
from .paths import describe_search, resolve_stack_path
from .sources import FileSource, GatherSource

__all__ = ["gather_stacks"]


def gather_stacks(
    list_path: Path,
    stack_names: Sequence[str] | np.ndarray | pd.Series,
    local_indices: np.ndarray,
    base_dirs: Sequence[Path],
    datadir: Path | None,
    column: str,
    index_base: int,
) -> GatherSource:
    """Open each distinct stack once and check every particle's index against it.

    Parameters
    ----------
    list_path : pathlib.Path
        The STAR or cs file (named in every error).
    stack_names : sequence of str
        ``(N,)`` stack file name per particle, as written in the list.
    local_indices : numpy.ndarray
        ``(N,)`` 0-based image index inside that stack.
    base_dirs, datadir
        Where to look, see :func:`~.paths.candidate_paths`.
    column : str
        The list's column that named the stack (for messages).
    index_base : int
        1 for RELION (``N@stack``), 0 for cryoSPARC, to quote indices as the file has them.

    Returns
    -------
    GatherSource
        ``(N, H, W)`` lazy images in list order.
    """
    codes, uniques = pd.factorize(pd.Series(stack_names, dtype=object), sort=False)
    first_rows = np.unique(codes, return_index=True)[1]
    sources: list[FileSource] = []
    for k, name in enumerate(uniques):
        row = int(first_rows[k])
        resolved = resolve_stack_path(str(name), base_dirs, datadir)
        if resolved is None:
            raise StackError(
                list_path,
                f"stack '{name}' ({column} on row {row + 1}) not found;"
                f" {describe_search(base_dirs, datadir)}",
            )
        try:
            source, _ = open_mrc(resolved)
        except StackError as exc:
            raise StackError(list_path, f"stack '{name}' ({resolved}): {exc.problem}") from None
        if sources and source.shape[1:] != sources[0].shape[1:]:
            h0, w0 = sources[0].shape[1:]
            h, w = source.shape[1:]
            raise StackError(
                list_path,
                f"mixed image sizes: '{uniques[0]}' holds {h0}x{w0} images"
                f" but '{name}' holds {h}x{w} images",
            )
        sources.append(source)

    counts = np.array([len(s) for s in sources], dtype=np.int64)
    local = np.asarray(local_indices, dtype=np.int64)
    bad = local >= counts[codes]
    if bad.any():
        row = int(np.argmax(bad))
        name = uniques[codes[row]]
        raise StackError(
            list_path,
            f"row {row + 1} asks for image {local[row] + index_base} of '{name}',"
            f" which holds only {counts[codes[row]]} images",
        )
    return GatherSource(sources, codes, local)
