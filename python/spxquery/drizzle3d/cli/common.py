"""What every ``spxdrizzle`` command shares: the program name, the one-line error, the
``-v``/``-q`` options and argument types built from the settings' rules."""

from __future__ import annotations

import argparse
from typing import Any, Callable, NoReturn, Optional

from ..config import Drizzle3DConfig
from ..settings import by_name

PROG = "spxdrizzle"

#: Centre of the default demo / template / simulated field [deg].
DEMO_RA, DEMO_DEC = 150.0, 2.0


class CLIError(Exception):
    """A failure reported as one ``error: ...`` line (exit code 1)."""


def usage_error(parser: Optional[argparse.ArgumentParser], message: str) -> NoReturn:
    """Report a usage error: through ``parser`` (exit code 2) or as a CLIError."""
    if parser is not None:
        parser.error(message)  # exits 2
    raise CLIError(message)


def setting_type(name: str) -> Callable[[str], Any]:
    """argparse ``type`` of configuration field ``name``: its rule's parser (message names the range)."""
    return by_name(Drizzle3DConfig)[name].setting.rule.parse_arg


def add_command(sub: Any, common: argparse.ArgumentParser, name: str, *, usage: str, help: str, description: str,
                epilog: str) -> argparse.ArgumentParser:
    """The parser of sub-command ``name``: the shared ``-v``/``-q`` options, description and
    epilog printed as written."""
    return sub.add_parser(name, parents=[common], usage=usage, help=help, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def common_parent() -> argparse.ArgumentParser:
    """The ``-v``/``-q`` options, accepted before and after the command."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug messages, and a traceback on errors")
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="warnings and errors only, no progress bars")
    return p
