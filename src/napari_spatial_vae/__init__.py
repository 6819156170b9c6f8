"""spatial-VAE for particle stacks: a napari plugin, a headless library and a command line.

The torch core (:mod:`napari_spatial_vae.core`) runs without any GUI; file formats live in
:mod:`napari_spatial_vae.io`; the command line is :mod:`napari_spatial_vae.cli`.
"""

__version__ = "0.1.0"
