"""``python -m napari_spatial_vae`` runs the ``spatial-vae`` command line (also under torchrun)."""

from napari_spatial_vae.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
