"""The ``spxdrizzle`` parser and entry point: one sub-command per module of this package."""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Optional, Sequence

from . import archive, assemble, demo, inspect_cube, run, template
from .common import PROG, CLIError, common_parent
from .logs import logging_setup

_EPILOG = f"""\
examples:
  {PROG} demo                                   # offline demo: simulate, drizzle, pictures
  {PROG} init my_target.yaml                    # commented template; edit ra/dec/size
  {PROG} run my_target.yaml                     # real run against IRSA
  {PROG} run --ra 150.1 --dec 2.2 --size 10 --detector 3
  {PROG} inspect drizzle_output/drizzle_D3.fits --wavelength 2.0
  {PROG} run my_target.yaml --tile-arcmin 30 --scheduler local:2   # tiles on 2 worker processes
  {PROG} assemble drizzle_output/tiles_D3            # the cube of a tiled run's tiles
  {PROG} simulate my_field && {PROG} serve my_field --port 8765

Run '{PROG} COMMAND --help' for the options of a command.
exit codes: 0 ok, 1 failure (one 'error:' line; -v shows the traceback), 2 usage, 130 interrupted
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``spxdrizzle`` argument parser."""
    common = common_parent()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Drizzle SPHEREx spectral images into (RA, Dec, wavelength) cubes.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    template.add_parser(sub, common)
    run.add_parser(sub, common)
    demo.add_parser(sub, common)
    inspect_cube.add_parser(sub, common)
    assemble.add_parser(sub, common)
    archive.add_simulate_parser(sub, common)
    archive.add_serve_parser(sub, common)
    return parser


def _version() -> str:
    from .. import __version__

    return str(__version__)


def _one_line(exc: BaseException) -> str:
    """``exc`` as one line; the exception type is named unless it is a plain user-facing error."""
    msg = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (CLIError, ValueError, OSError)):
        return msg
    return f"{type(exc).__name__}: {msg}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``spxdrizzle`` command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) and usage errors (2)
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    verbose = bool(getattr(args, "verbose", False))
    quiet = bool(getattr(args, "quiet", False))
    args.verbose, args.quiet = verbose, quiet
    # the sub-parser, so that run-time usage checks print its usage line
    args._subparser = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr, index]
    try:
        with logging_setup(verbose, quiet):
            return int(args.func(args) or 0)
    except SystemExit as exc:  # parser.error from a run-time usage check
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
