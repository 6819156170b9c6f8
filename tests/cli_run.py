"""Running ``spatial-vae`` in-process from a test, as a user would from a shell."""

from __future__ import annotations

from typing import Any

from napari_spatial_vae.cli import main


def run_cli(capsys: Any, *args: Any) -> tuple[int, str]:
    """Run ``spatial-vae ARGS`` (each argument as ``str``); returns the exit status and stderr.

    argparse's usage errors exit through ``SystemExit``; their status is returned like any
    other, so a test can assert on the one-line message a user would read.
    """
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    return code, capsys.readouterr().err
