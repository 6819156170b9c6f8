"""The particle stack that every reader returns, and train/test splitting."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .ctf_params import CtfTable
from .errors import StackError
from .sources import ArraySource, ImageSource, SubsetSource, normalize_indices

__all__ = ["ParticleStack", "split_indices"]


@dataclass(repr=False)
class ParticleStack:
    """A lazily read stack of particle images with optional per-image metadata.

    Attributes
    ----------
    path : pathlib.Path
        What the user opened (a stack, a STAR/cs list, an array file or a folder).
    images : ImageSource
        ``(N, H, W)`` or ``(N, H, W, C)`` lazy images in the file's data type.
    pixel_size : float or None
        Å per pixel; None when unknown.
    metadata : pandas.DataFrame or None
        One row per image in stack order (STAR/cs tables, file names of a folder).
    image_names : list of str or None
        ``"N@stack"`` names per image when the input says them (STAR, cs).
    ctf : CtfTable or None
        Every particle's CTF parameters when the input carries them (STAR, cs).
    ctf_problem : str or None
        One line saying why the input's CTF columns cannot be used (partly missing).
    """

    path: Path
    images: ImageSource
    pixel_size: float | None = None
    metadata: pd.DataFrame | None = field(default=None)
    image_names: list[str] | None = field(default=None)
    ctf: CtfTable | None = field(default=None)
    ctf_problem: str | None = field(default=None)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        n = len(self.images)
        if self.metadata is not None and len(self.metadata) != n:
            raise ValueError(f"metadata has {len(self.metadata)} rows for {n} images")
        if self.image_names is not None and len(self.image_names) != n:
            raise ValueError(f"{len(self.image_names)} image names for {n} images")
        if self.ctf is not None and len(self.ctf) != n:
            raise ValueError(f"CTF parameters for {len(self.ctf)} of {n} images")

    @classmethod
    def from_array(
        cls,
        images: np.ndarray,
        pixel_size: float | None = None,
        path: str | Path = "<array>",
    ) -> ParticleStack:
        """Wrap an in-memory array ``(N, H, W)`` / ``(N, H, W, C)`` (tests, simulations)."""
        array = np.asarray(images)
        if array.ndim == 2:
            array = array[None]
        if array.ndim not in (3, 4) or array.shape[0] == 0:
            raise StackError(path, f"expected images (N, H, W), got shape {array.shape}")
        return cls(Path(path), ArraySource(array), pixel_size)

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (
            f"ParticleStack(path={str(self.path)!r}, shape={self.shape},"
            f" dtype={self.images.dtype}, pixel_size={self.pixel_size})"
        )

    @property
    def shape(self) -> tuple[int, ...]:
        """``(N, H, W)`` or ``(N, H, W, C)``."""
        return tuple(self.images.shape)

    def _indices(self, indices: Any) -> np.ndarray:
        try:
            return normalize_indices(indices, len(self))
        except (IndexError, TypeError) as exc:
            raise StackError(self.path, str(exc)) from None

    def read_batch(self, indices: Any) -> np.ndarray:
        """Read some images as float32.

        Parameters
        ----------
        indices : int, slice, range, sequence of int, or int/bool array
            Images to read, in the order wanted (repeats allowed).

        Returns
        -------
        numpy.ndarray
            ``(B, H, W)`` or ``(B, H, W, C)`` float32, in the order given.

        Raises
        ------
        StackError
            An index is out of range, or an image holds NaN or infinite pixels (the message
            names the first such image in the order given).
        """
        idx = self._indices(indices)
        batch = np.asarray(self.images[idx]).astype(np.float32, copy=False)
        finite = np.isfinite(batch.reshape(idx.size, -1)).all(axis=1)
        if not finite.all():
            first = int(idx[np.argmin(finite)])
            raise StackError(self.path, f"image {first} contains NaN or infinite pixel values")
        return batch

    def subset(self, indices: Any) -> ParticleStack:
        """A lazy view of some images, with their metadata rows and names.

        Parameters
        ----------
        indices : int, slice, range, sequence of int, or int/bool array
            Images to keep, in the order wanted.

        Returns
        -------
        ParticleStack
            Same path and pixel size; ``len`` equals the number of indices.
        """
        idx = self._indices(indices)
        metadata = None
        if self.metadata is not None:
            metadata = self.metadata.iloc[idx].reset_index(drop=True)
        names = None
        if self.image_names is not None:
            names = [self.image_names[i] for i in idx.tolist()]
        ctf = None if self.ctf is None else self.ctf.subset(idx)
        return ParticleStack(
            self.path,
            SubsetSource(self.images, idx),
            self.pixel_size,
            metadata,
            names,
            ctf,
            self.ctf_problem,
        )


def split_indices(
    n: int, test_fraction: float, seed: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly split ``range(n)`` into train and test indices.

    Parameters
    ----------
    n : int
        Number of images.
    test_fraction : float
        Fraction in ``[0, 1)`` held out for testing; at least one test image when it is
        positive, and at least one training image always.
    seed : int or None
        Seed for :func:`numpy.random.default_rng`; the same seed gives the same split.

    Returns
    -------
    train, test : numpy.ndarray
        Sorted int64 index arrays that partition ``range(n)``.
    """
    if n < 1:
        raise ValueError(f"cannot split {n} images")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    n_test = round(n * test_fraction)
    if test_fraction > 0:
        n_test = max(n_test, 1)
    n_test = min(n_test, n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_test:]).astype(np.int64), np.sort(order[:n_test]).astype(np.int64)
