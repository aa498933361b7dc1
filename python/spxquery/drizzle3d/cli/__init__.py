"""``spxdrizzle``: the command line of spxquery.drizzle3d.

Subcommands: ``init`` (commented YAML template), ``run`` (drizzle from YAML and/or flags),
``demo`` (offline end-to-end demo on a simulated field), ``inspect`` (summary + quick-look
PNGs of a cube), ``simulate`` (write a simulated archive) and ``serve`` (serve a simulated
archive over loopback TAP/HTTP).

Exit codes: 0 success, 1 runtime failure (one line ``error: ...`` on stderr; traceback
with ``-v``), 2 usage error (argparse), 130 interrupted (Ctrl-C).

Modules: :mod:`.main` (parser and entry point), :mod:`.common` (shared pieces), :mod:`.logs`
(logging and progress), :mod:`.options` (``run``'s options, derived from the setting
descriptions, and the config they give), one module per command (:mod:`.template` = ``init``,
:mod:`.run`, :mod:`.demo` with :mod:`.demo_text`, :mod:`.inspect_cube`, :mod:`.archive` =
``simulate`` and ``serve``).
"""

from .common import CLIError
from .main import build_parser, main
from .options import config_from_args
from .template import template_text

__all__ = ["main", "build_parser", "template_text", "config_from_args", "CLIError"]
