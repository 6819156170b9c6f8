"""The ``spatial-vae`` command line.

Each subcommand lives in its own module with a ``register(subparsers)`` function; this
module builds the parser from them and turns errors into one line on stderr and an exit
status, never a traceback. Ctrl-C during training stops at the next step and saves the run,
like ``--max-minutes``; a second Ctrl-C aborts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from napari_spatial_vae import __version__
from napari_spatial_vae.cli import explore, extract, infer, simulate, train
from napari_spatial_vae.cli._common import EXIT_ERROR, EXIT_USAGE, PROG, Parser, UsageError, say
from napari_spatial_vae.cli.settings import config_from_args
from napari_spatial_vae.core.errors import ConfigError, DataError, SpatialVAEError

# one module per group of subcommands, in the order ``--help`` lists them
_COMMAND_MODULES = (train, infer, simulate, extract, explore)

__all__ = ["build_parser", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The full ``spatial-vae`` parser."""
    parser = Parser(prog=PROG, description="spatial-VAE for particle stacks (Bepler et al. 2019)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in _COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spatial-vae`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from napari_spatial_vae.io import StackError

    try:
        return int(args.run(args))
    except UsageError as err:
        say(f"{PROG} {args.command}: error: {err}")
        return EXIT_USAGE
    except (ConfigError, StackError) as err:
        say(f"{PROG} {args.command}: error: {err}")
        return EXIT_ERROR
    except DataError as err:
        where = getattr(args, "particles", None)
        # messages that already name their file (a CTF row of PARTICLES or --test) stay as is
        named = tuple(str(p) + ":" for p in (where, getattr(args, "test", None)) if p)
        if named and str(err).startswith(named):
            where = None
        say(f"{PROG} {args.command}: error: {where + ': ' if where else ''}{err}")
        return EXIT_ERROR
    except SpatialVAEError as err:
        say(f"{PROG} {args.command}: error: {err}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        say(f"{PROG} {args.command}: aborted")
        return 130
    except MemoryError:
        say(f"{PROG} {args.command}: error: out of memory; lower --batch-size")
        return EXIT_ERROR
    except OSError as err:
        say(f"{PROG} {args.command}: error: {err.filename or ''}: {err.strerror or err}")
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
