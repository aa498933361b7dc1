"""``spxdrizzle run``: drizzle a region from a YAML config and/or options."""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Dict

from .common import PROG, CLIError, add_command
from .logs import show_progress
from .options import ARCHIVE, add_config_options, apply_run_defaults, config_from_args

logger = logging.getLogger(__name__)


def cmd_run(args: argparse.Namespace) -> int:
    from ..pipeline import drizzle
    from ..preflight import OutputExistsError

    cfg = config_from_args(args, getattr(args, "_subparser", None))
    cfg = cfg.replace(progress=show_progress(args) and cfg.progress)
    cfg = apply_run_defaults(cfg, args)
    logger.info("exclude_flags: %s", " ".join(map(str, cfg.exclude_flags)) or "none (every pixel is used)")
    logger.info("run: centre (%.6f, %.6f) deg, %g' x %g', detector %s, output %s", cfg.center_ra, cfg.center_dec,
                cfg.width, cfg.height, ("all, one cube" if cfg.combine_detectors else "all") if cfg.detector == 0
                else cfg.detector, cfg.output_dir)
    t0 = time.perf_counter()
    try:
        results = drizzle(cfg)
    except OutputExistsError as exc:  # only an existing cube is cured by overwriting it
        raise CLIError(f"{exc}; pass --overwrite (or set overwrite: true) to replace") from exc
    if not results:
        raise CLIError("no cube was written: no frame of the archive contributed to the region "
                       f"(centre {cfg.center_ra}, {cfg.center_dec}; see the warnings above)")
    for det, path in sorted(results.items()):
        print(f"{f'D{det}' if det else 'all'}: {path}")
        if args.quicklook:
            for p in quicklooks(path).values():
                print(f"     {p}")
    logger.info("done in %.1f s", time.perf_counter() - t0)
    return 0


def quicklooks(path: Path, **kwargs: Any) -> Dict[str, Path]:
    """Quick-look PNGs of the cube at ``path`` (empty-plane warnings silenced)."""
    from ..quicklook import write_quicklooks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return write_quicklooks(path, **kwargs)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``run`` command: a positional CONFIG.yaml and one option per described setting."""
    p = add_command(
        sub, common, "run",
        usage="%(prog)s [CONFIG.yaml] [--ra DEG --dec DEG --size ARCMIN] [options]",
        help="drizzle a region (YAML config and/or flags)",
        description="Query the archive, fetch the frames and drizzle one cube per detector (or one of all six).\n"
                    "Flags override the values of CONFIG.yaml; without CONFIG.yaml, --ra, --dec and\n"
                    "--size (or --width and --height) are required.",
        epilog=f"examples:\n  {PROG} run my_target.yaml\n  {PROG} run my_target.yaml --detector 2 --overwrite\n"
               f"  {PROG} run my_target.yaml --detector all   (one cube, 0.75-5 um)\n"
               f"  {PROG} run --ra 150.1 --dec 2.2 --size 10 --detector 3 --exclude-flags recommended\n"
               f"  {PROG} run --ra 150 --dec 2 --size 8 --detector 3 --mirror my_field "
               f"--tap-url http://127.0.0.1:8765/TAP",
    )
    p.add_argument("config", type=Path, nargs="?", metavar="CONFIG.yaml", help="configuration file (optional)")
    sections = add_config_options(p)
    sections[ARCHIVE].add_argument("--quicklook", action="store_true",
                                   help="also write quick-look PNGs next to each cube")
    p.set_defaults(func=cmd_run)
