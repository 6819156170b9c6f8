"""Particle stacks in and out: MRC, RELION STAR, cryoSPARC, numpy, TIFF, image folders.

Everything opens lazily (:func:`read_stack` reads headers; pixels are read per batch) and
bad input raises :class:`StackError` with a one-line ``"<path>: <problem>"`` message.
numpy/pandas only: no torch here.
"""

from .coordinates import match_picks, read_coordinates
from .cryosparc import parse_cs_table
from .errors import StackError
from .micrographs import MicrographSet, read_micrographs
from .poses import read_poses, write_poses
from .reader import SUPPORTED_SUFFIXES, can_read, read_stack
from .sources import ImageSource
from .stack import ParticleStack, split_indices
from .star import parse_star_table
from .writers import MrcsWriter, write_mrcs

__all__ = [
    "SUPPORTED_SUFFIXES",
    "ImageSource",
    "MicrographSet",
    "MrcsWriter",
    "ParticleStack",
    "StackError",
    "can_read",
    "match_picks",
    "parse_cs_table",
    "parse_star_table",
    "read_coordinates",
    "read_micrographs",
    "read_poses",
    "read_stack",
    "split_indices",
    "write_mrcs",
    "write_poses",
]
