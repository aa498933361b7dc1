"""``spxdrizzle``: the command line of spxquery.drizzle3d.

Subcommands: ``init`` (commented YAML template), ``run`` (drizzle from YAML and/or flags),
``demo`` (offline end-to-end demo on a simulated field), ``inspect`` (summary + quick-look
PNGs of a cube), ``simulate`` (write a simulated archive) and ``serve`` (serve a simulated
archive over loopback TAP/HTTP).

Exit codes: 0 success, 1 runtime failure (one line ``error: ...`` on stderr; traceback
with ``-v``), 2 usage error (argparse), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import shutil
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

PROG = "spxdrizzle"
logger = logging.getLogger(__name__)

#: Default demo field: centre (deg), region side (arcmin), pointings, detector.
DEMO_RA, DEMO_DEC = 150.0, 2.0
DEMO_SIZE_ARCMIN = 8.0
DEMO_N_POINTINGS = 16
DEMO_DETECTOR = 3
#: Margin added to the region's diagonal for the simulated cutouts [arcmin].
CUTOUT_MARGIN_ARCMIN = 1.0


_SIM_LOGGER = "spxquery.drizzle3d.simulate"


class CLIError(Exception):
    """A failure reported as one ``error: ...`` line (exit code 1)."""


# ── argument types ─────────────────────────────────────────────────────────────


def _float_in(name: str, lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False,
              hi_open: bool = False):
    """argparse type: a finite float inside the given range (message names the range)."""
    if lo is not None and hi is not None:
        rng = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        rng = f"{'>' if lo_open else '>='} {lo:g}"
    elif hi is not None:
        rng = f"{'<' if hi_open else '<='} {hi:g}"
    else:
        rng = "(any finite value)"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {rng}, got {text!r}") from None
        ok = math.isfinite(v)
        if ok and lo is not None:
            ok = v > lo if lo_open else v >= lo
        if ok and hi is not None:
            ok = v < hi if hi_open else v <= hi
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a number {rng}, got {text}")
        return v

    return parse


def _int_in(name: str, lo: int, hi: Optional[int] = None, what: str = ""):
    """argparse type: an integer in [lo, hi]."""
    rng = what or (f"{lo}-{hi}" if hi is not None else f">= {lo}")

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {rng}, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be an integer {rng}, got {v}")
        return v

    return parse


# ── logging / progress ─────────────────────────────────────────────────────────


class _TqdmHandler(logging.StreamHandler):
    """Logging handler that writes through ``tqdm.write`` so messages do not break bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


@contextlib.contextmanager
def _logging_setup(verbose: bool, quiet: bool) -> Iterator[None]:
    """Configure the ``spxquery`` loggers for one CLI invocation (restored afterwards).

    Default: INFO for this package except the simulator's per-file messages;
    ``-v``: DEBUG everywhere (ours); ``-q``: WARNING. Astropy's FITSFixedWarning chatter is
    silenced unless ``-v``.
    """
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    pkg = logging.getLogger("spxquery")
    old = (pkg.level, pkg.propagate, list(pkg.handlers))
    handler = _TqdmHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"))
    if not verbose:  # the simulator's per-file lines become a progress bar instead
        handler.addFilter(lambda r: r.levelno >= logging.WARNING or not r.name.startswith(_SIM_LOGGER))
    pkg.handlers = [handler]
    pkg.setLevel(level)
    pkg.propagate = False
    with warnings.catch_warnings():
        if not verbose:
            try:
                from astropy.wcs import FITSFixedWarning

                warnings.simplefilter("ignore", FITSFixedWarning)
            except ImportError:  # pragma: no cover
                pass
            warnings.filterwarnings("ignore", message=".*datfix.*")
        try:
            yield
        finally:
            pkg.setLevel(old[0])
            pkg.propagate = old[1]
            pkg.handlers = old[2]


class _LogCounter(logging.Handler):
    """Advances a tqdm bar for every record of a logger whose message starts with ``prefix``."""

    def __init__(self, bar: Any, prefix: str) -> None:
        super().__init__(level=logging.DEBUG)
        self.bar = bar
        self.prefix = prefix

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith(self.prefix):
            self.bar.update(1)


def _show_progress(args: argparse.Namespace) -> bool:
    """Progress bars unless ``-q`` or stderr is not a terminal."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _simulate_with_progress(args: argparse.Namespace, root: Path, n_files: int, **kwargs: Any) -> Any:
    """``simulate_field(root, **kwargs)`` with a progress bar over the files written."""
    from tqdm.auto import tqdm

    from .simulate import simulate_field

    field_logger = logging.getLogger("spxquery.drizzle3d.simulate.field")
    bar = tqdm(total=n_files, desc="simulate", unit="file", disable=not _show_progress(args))
    counter = _LogCounter(bar, "wrote")
    old_level = field_logger.level
    field_logger.addHandler(counter)
    if field_logger.getEffectiveLevel() > logging.INFO:
        field_logger.setLevel(logging.INFO)  # records reach the counter; other handlers filter
    try:
        return simulate_field(root, **kwargs)
    finally:
        field_logger.removeHandler(counter)
        field_logger.setLevel(old_level)
        bar.close()


# ── parser ─────────────────────────────────────────────────────────────────────


def _config_defaults() -> Dict[str, Any]:
    from .config import Drizzle3DConfig

    out = {}
    for f in dataclasses.fields(Drizzle3DConfig):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


_EPILOG = f"""\
examples:
  {PROG} demo                                   # offline demo: simulate, drizzle, pictures
  {PROG} init my_target.yaml                    # commented template; edit ra/dec/size
  {PROG} run my_target.yaml                     # real run against IRSA
  {PROG} run --ra 150.1 --dec 2.2 --size 10 --detector 3
  {PROG} inspect drizzle_output/drizzle_D3.fits --wavelength 2.0
  {PROG} simulate my_field && {PROG} serve my_field --port 8765

Run '{PROG} COMMAND --help' for the options of a command.
exit codes: 0 ok, 1 failure (one 'error:' line; -v shows the traceback), 2 usage, 130 interrupted
"""


def _common_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug messages, and a traceback on errors")
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="warnings and errors only, no progress bars")
    return p


def _add_region_options(p: argparse.ArgumentParser, required_note: str) -> None:
    d = _config_defaults()
    g = p.add_argument_group("target region" + required_note)
    g.add_argument("--ra", type=_float_in("--ra", 0.0, 360.0, hi_open=True), metavar="DEG",
                   help="centre right ascension, ICRS [deg, 0-360]")
    g.add_argument("--dec", type=_float_in("--dec", -90.0, 90.0), metavar="DEG",
                   help="centre declination, ICRS [deg, -90..90]")
    g.add_argument("--size", type=_float_in("--size", 0.0, lo_open=True), metavar="ARCMIN",
                   help="side of a square region [arcmin] (sets width and height)")
    g.add_argument("--width", type=_float_in("--width", 0.0, lo_open=True), metavar="ARCMIN",
                   help="region width along RA [arcmin]")
    g.add_argument("--height", type=_float_in("--height", 0.0, lo_open=True), metavar="ARCMIN",
                   help="region height along Dec [arcmin]")
    g.add_argument("--detector", type=_int_in("--detector", 0, 6, "0 (all six) or 1-6"), metavar="N",
                   help=f"detector 1-6, or 0 for all six (default {d['detector']})")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    d = _config_defaults()
    g = p.add_argument_group("drizzle settings (override the YAML; defaults are the config's)")
    g.add_argument("--xy-shrink", type=_float_in("--xy-shrink", 0.0, 1.0, lo_open=True), metavar="F",
                   help=f"spatial droplet size relative to an input pixel, (0, 1] (default {d['xy_shrink']})")
    g.add_argument("--z-shrink", type=_float_in("--z-shrink", 0.0, 1.0, lo_open=True), metavar="F",
                   help="spectral droplet size, (0, 1] (default: same as --xy-shrink)")
    g.add_argument("--xy-oversample", type=_float_in("--xy-oversample", 0.0, lo_open=True), metavar="F",
                   help=f"output pixels per native 6.15 arcsec pixel, > 0 (default {d['xy_oversample']})")
    g.add_argument("--z-oversample", type=_float_in("--z-oversample", 0.0, lo_open=True), metavar="F",
                   help=f"spectral oversampling, > 0; 1 = the 17 native channels (default {d['z_oversample']})")
    g.add_argument("--kernel", choices=["square", "bilinear"],
                   help=f"drizzle kernel (default {d['kernel']})")
    g.add_argument("--exclude-flags", nargs="+", metavar="FLAG",
                   help="FLAGS bits (0-31) or names (e.g. HOT GHOST*) whose pixels are dropped; "
                        "'recommended' = the recommended set; 'none' = keep all (default: none)")
    g.add_argument("--no-zodi", action="store_true", default=None,
                   help="do not subtract the zodiacal-light model (default: subtract, fitted scale)")
    g.add_argument("--mjd-range", nargs=2, type=float, metavar=("MIN", "MAX"),
                   help="only frames observed within [MIN, MAX] MJD (default: all)")
    g.add_argument("--max-images", type=_int_in("--max-images", 1), metavar="N",
                   help=f"at most N frames per detector (default {d['max_images']})")
    g = p.add_argument_group("archive and output")
    g.add_argument("--output-dir", type=Path, metavar="DIR",
                   help=f"where drizzle_D{{N}}.fits (and downloads) go (default {d['output_dir']})")
    g.add_argument("--overwrite", action="store_true", default=None,
                   help="replace existing output cubes (default: refuse)")
    g.add_argument("--mirror", type=Path, metavar="DIR",
                   help="local archive mirror (directory holding qr2/, qr3/, ...): no downloads (default: download)")
    g.add_argument("--tap-url", metavar="URL",
                   help="TAP service (default: $SPXQUERY_TAP_URL, else https://irsa.ipac.caltech.edu/TAP)")
    g.add_argument("--workers", type=_int_in("--workers", 1), metavar="N",
                   help=f"parallel downloads (default {d['download_workers']})")
    g.add_argument("--cutouts", choices=["auto", "yes", "no"],
                   help="download IRSA cutouts instead of full frames (default auto: when the region is small)")
    g.add_argument("--quicklook", action="store_true",
                   help="also write quick-look PNGs next to each cube")


def build_parser() -> argparse.ArgumentParser:
    """The ``spxdrizzle`` argument parser."""
    common = _common_parent()
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
    fmt = argparse.RawDescriptionHelpFormatter

    # init
    p = sub.add_parser(
        "init", parents=[common], usage="%(prog)s CONFIG.yaml [--force] [--ra DEG --dec DEG --size ARCMIN --detector N]", formatter_class=fmt, help="write a commented YAML config template",
        description="Write a commented YAML configuration (with the recommended exclude_flags) to CONFIG.yaml.",
        epilog=f"example:\n  {PROG} init m51.yaml --ra 202.4696 --dec 47.1952 --size 10 --detector 3\n"
               f"  {PROG} run m51.yaml",
    )
    p.add_argument("path", type=Path, metavar="CONFIG.yaml", help="file to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing file (default: refuse)")
    p.add_argument("--ra", type=_float_in("--ra", 0.0, 360.0, hi_open=True), default=DEMO_RA, metavar="DEG",
                   help=f"centre RA written to the template [deg] (default {DEMO_RA})")
    p.add_argument("--dec", type=_float_in("--dec", -90.0, 90.0), default=DEMO_DEC, metavar="DEG",
                   help=f"centre Dec written to the template [deg] (default {DEMO_DEC})")
    p.add_argument("--size", type=_float_in("--size", 0.0, lo_open=True), default=10.0, metavar="ARCMIN",
                   help="region side written to the template [arcmin] (default 10)")
    p.add_argument("--detector", type=_int_in("--detector", 0, 6, "0 (all six) or 1-6"), default=3, metavar="N",
                   help="detector written to the template, 0 = all six (default 3)")
    p.set_defaults(func=cmd_init)

    # run
    p = sub.add_parser(
        "run", parents=[common], usage="%(prog)s [CONFIG.yaml] [--ra DEG --dec DEG --size ARCMIN] [options]", formatter_class=fmt, help="drizzle a region (YAML config and/or flags)",
        description="Query the archive, fetch the frames and drizzle one cube per detector.\n"
                    "Flags override the values of CONFIG.yaml; without CONFIG.yaml, --ra, --dec and\n"
                    "--size (or --width and --height) are required.",
        epilog=f"examples:\n  {PROG} run my_target.yaml\n  {PROG} run my_target.yaml --detector 2 --overwrite\n"
               f"  {PROG} run --ra 150.1 --dec 2.2 --size 10 --detector 3 --exclude-flags recommended\n"
               f"  {PROG} run --ra 150 --dec 2 --size 8 --detector 3 --mirror my_field "
               f"--tap-url http://127.0.0.1:8765/TAP",
    )
    p.add_argument("config", type=Path, nargs="?", metavar="CONFIG.yaml", help="configuration file (optional)")
    _add_region_options(p, " (required without CONFIG.yaml)")
    _add_run_options(p)
    p.set_defaults(func=cmd_run)

    # demo
    p = sub.add_parser(
        "demo", parents=[common], usage="%(prog)s [--output-dir DIR] [--n-pointings N] [--keep] [options]", formatter_class=fmt, help="offline demo: simulate, serve, drizzle, draw",
        description="Simulate a small field of SPHEREx cutouts, serve it on 127.0.0.1 (IRSA-like TAP), drizzle it\n"
                    "in mirror mode and write the cube and quick-look PNGs. No network access beyond 127.0.0.1.",
        epilog=f"example:\n  {PROG} demo --output-dir spxdrizzle_demo",
    )
    p.add_argument("--output-dir", type=Path, default=Path("spxdrizzle_demo"), metavar="DIR",
                   help="where the cube, PNGs and the simulated archive (DIR/archive) go (default spxdrizzle_demo)")
    p.add_argument("--n-pointings", type=_int_in("--n-pointings", 1, 200), default=DEMO_N_POINTINGS, metavar="N",
                   help=f"simulated exposures, 1-200 (~1 s each) (default {DEMO_N_POINTINGS})")
    p.add_argument("--detector", type=_int_in("--detector", 1, 6, "1-6"), default=DEMO_DETECTOR, metavar="N",
                   help=f"detector to simulate, 1-6 (default {DEMO_DETECTOR})")
    p.add_argument("--size", type=_float_in("--size", 1.0, 20.0), default=DEMO_SIZE_ARCMIN, metavar="ARCMIN",
                   help=f"side of the drizzled region, 1-20 [arcmin] (default {DEMO_SIZE_ARCMIN:g})")
    p.add_argument("--seed", type=int, default=0, help="random seed of the simulation (default 0)")
    p.add_argument("--keep", action="store_true",
                   help="keep the simulated archive DIR/archive afterwards (default: delete it)")
    p.set_defaults(func=cmd_demo)

    # inspect
    p = sub.add_parser(
        "inspect", parents=[common], usage="%(prog)s CUBE.fits [--plane K | --wavelength UM] [--at RA DEC | --pixel X Y] [options]", formatter_class=fmt, help="summary and quick-look PNGs of a cube",
        description="Print a summary of a drizzled cube and write <stem>_collapsed.png, <stem>_plane<k>.png\n"
                    "and <stem>_spectrum.png.",
        epilog=f"examples:\n  {PROG} inspect drizzle_output/drizzle_D3.fits\n"
               f"  {PROG} inspect cube.fits --wavelength 2.1 --at 150.02 1.98 --png-dir pngs",
    )
    p.add_argument("cube", type=Path, metavar="CUBE.fits", help="cube written by run/demo/drizzle()")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--plane", type=_int_in("--plane", 0), metavar="K",
                   help="plane (0-based) to draw (default: the plane with the most coverage)")
    g.add_argument("--wavelength", type=_float_in("--wavelength", 0.0, lo_open=True), metavar="UM",
                   help="draw the plane containing this wavelength [um]")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--at", nargs=2, type=float, metavar=("RA", "DEC"),
                   help="spectrum position [deg] (default: brightest pixel of the collapsed image)")
    g.add_argument("--pixel", nargs=2, type=int, metavar=("X", "Y"),
                   help="spectrum position as 0-based pixel (x, y)")
    p.add_argument("--png-dir", type=Path, metavar="DIR", help="where the PNGs go (default: next to the cube)")
    p.add_argument("--no-png", action="store_true", help="print the summary only")
    p.set_defaults(func=cmd_inspect)

    # simulate
    p = sub.add_parser(
        "simulate", parents=[common], usage="%(prog)s DIR [--ra DEG --dec DEG] [--n-pointings N] [options]", formatter_class=fmt, help="write a simulated archive to test settings",
        description="Write a simulated SPHEREx field: an IRSA-like mirror tree, archive_index.json and\n"
                    "truth.json (the true sky). Serve it with 'serve' and drizzle it with 'run --mirror'.",
        epilog=f"example:\n  {PROG} simulate my_field --n-pointings 12\n  {PROG} serve my_field --port 8765 &\n"
               f"  {PROG} run --ra 150 --dec 2 --size 8 --detector 3 --mirror my_field "
               f"--tap-url http://127.0.0.1:8765/TAP",
    )
    p.add_argument("root", type=Path, metavar="DIR", help="directory to write (the mirror root)")
    p.add_argument("--ra", type=_float_in("--ra", 0.0, 360.0, hi_open=True), default=DEMO_RA, metavar="DEG",
                   help=f"field centre RA [deg] (default {DEMO_RA})")
    p.add_argument("--dec", type=_float_in("--dec", -90.0, 90.0), default=DEMO_DEC, metavar="DEG",
                   help=f"field centre Dec [deg] (default {DEMO_DEC})")
    p.add_argument("--detectors", type=_int_in("--detectors", 1, 6, "1-6"), nargs="+", default=[3], metavar="N",
                   help="detectors to simulate, 1-6 (default 3)")
    p.add_argument("--n-pointings", type=_int_in("--n-pointings", 1, 1000), default=16, metavar="N",
                   help="exposures per detector (~1 s each) (default 16)")
    p.add_argument("--release", choices=["qr2", "qr3"], default="qr2", help="file layout (default qr2)")
    p.add_argument("--cutout-size", type=_float_in("--cutout-size", 0.0, 200.0, lo_open=True), default=12.0,
                   metavar="ARCMIN", help="write IRSA-style cutouts of this side around the centre [arcmin] "
                                          "(default 12: enough for an 8' region)")
    p.add_argument("--full-frames", action="store_true",
                   help="write full 2040x2040 frames (~70 MB each) instead of cutouts")
    p.add_argument("--full-psf", action="store_true",
                   help="write the real-size PSF extension (default: a compact 21x21 PSF, faster and smaller)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--force", action="store_true", help="write into a non-empty DIR (default: refuse)")
    p.set_defaults(func=cmd_simulate)

    # serve
    p = sub.add_parser(
        "serve", parents=[common], usage="%(prog)s DIR [--port N]", formatter_class=fmt, help="serve a simulated archive on 127.0.0.1",
        description="Serve DIR (written by 'simulate') as an IRSA-like TAP service and file server on\n"
                    "127.0.0.1 until Ctrl-C. Prints the TAP URL to pass to 'run --tap-url'.",
        epilog=f"example:\n  {PROG} serve my_field --port 8765",
    )
    p.add_argument("root", type=Path, metavar="DIR", help="directory holding archive_index.json")
    p.add_argument("--port", type=_int_in("--port", 0, 65535), default=0, metavar="N",
                   help="TCP port on 127.0.0.1, 0 = any free port (default 0)")
    p.set_defaults(func=cmd_serve)
    return parser


def _version() -> str:
    try:
        from . import __version__

        return str(__version__)
    except Exception:  # pragma: no cover - broken install
        return "unknown"


# ── init ───────────────────────────────────────────────────────────────────────


def template_text(ra: float = DEMO_RA, dec: float = DEMO_DEC, size: float = 10.0, detector: int = 3) -> str:
    """YAML text of a commented configuration template with the recommended ``exclude_flags``."""
    import tempfile

    from .config import Drizzle3DConfig
    from .flags import FLAG_DESCRIPTIONS, INFORMATIONAL_FLAGS, RECOMMENDED_EXCLUDE_FLAGS

    cfg = Drizzle3DConfig(center_ra=ra, center_dec=dec, width=size, height=size, detector=detector,
                          exclude_flags=list(RECOMMENDED_EXCLUDE_FLAGS))
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "c.yaml"
        cfg.to_yaml_file(p)
        base = p.read_text(encoding="utf-8")
    width = max(len(n) for n in RECOMMENDED_EXCLUDE_FLAGS) + 3
    block = [
        "# exclude_flags: the recommended set -- pixels flagged with any of these are dropped.",
        "# Delete a line to keep those pixels; add bit numbers (0-31) or names (GHOST* = all GHOST bits).",
        f"# Not listed on purpose: {', '.join(INFORMATIONAL_FLAGS)} are informational (SOURCE marks",
        "# 40-70% of all pixels); excluding them throws away good data.",
        "exclude_flags:",
    ]
    for name in RECOMMENDED_EXCLUDE_FLAGS:
        block.append(f"  - {name:<{width}}# {FLAG_DESCRIPTIONS.get(name, '')}".rstrip())
    head = [
        "# spxdrizzle configuration. Edit center_ra/center_dec/width/height (and detector), then:",
        "#     spxdrizzle run THIS_FILE.yaml",
        "# With tap_url: null and data_mirror: null the run queries IRSA and downloads the frames",
        "# (cutouts for small regions) into output_dir/images/. Command-line flags override values here.",
    ]
    lines = base.splitlines()
    out: List[str] = []
    replaced = False
    skipping = False
    for line in lines:
        if skipping and line[:1] in (" ", "\t"):
            continue  # continuation of the flow list written by to_yaml_file
        skipping = False
        if line.startswith("exclude_flags:"):
            out.extend(block)
            replaced = True
            skipping = True
        else:
            out.append(line)
    if not replaced:  # pragma: no cover - config writes every field
        out.extend(block)
    text = "\n".join(head + out) + "\n"
    with tempfile.TemporaryDirectory() as tmp:  # the template must load back as the same config
        p = Path(tmp) / "check.yaml"
        p.write_text(text, encoding="utf-8")
        if Drizzle3DConfig.from_yaml_file(p) != cfg:
            raise RuntimeError("the YAML template does not load back as the intended configuration")
    return text


def cmd_init(args: argparse.Namespace) -> int:
    path: Path = args.path
    if path.is_dir():
        raise CLIError(f"{path} is a directory; give a file name such as {path / 'config.yaml'}")
    if path.exists() and not args.force:
        raise CLIError(f"{path} already exists (use --force to overwrite it)")
    text = template_text(args.ra, args.dec, args.size, args.detector)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    print(f"next: edit center_ra/center_dec/width/height, then: {PROG} run {path}")
    return 0


# ── run ────────────────────────────────────────────────────────────────────────


def _exclude_flags_arg(values: Sequence[str]) -> List[Any]:
    from .flags import RECOMMENDED_EXCLUDE_FLAGS

    out: List[Any] = []
    for v in values:
        low = v.strip().lower()
        if low == "none":
            continue
        if low == "recommended":
            out.extend(RECOMMENDED_EXCLUDE_FLAGS)
        elif v.strip().isdigit():
            out.append(int(v))
        else:
            out.append(v.strip())
    return out


def config_from_args(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None) -> Any:
    """The :class:`Drizzle3DConfig` of a ``run`` invocation: YAML (if given) with flags applied.

    Raises CLIError (or calls ``parser.error``) with one clear line on bad input.
    """
    from .config import Drizzle3DConfig

    changes: Dict[str, Any] = {}
    if args.ra is not None:
        changes["center_ra"] = args.ra
    if args.dec is not None:
        changes["center_dec"] = args.dec
    if args.size is not None:
        if args.width is not None or args.height is not None:
            _usage(parser, "use either --size or --width/--height, not both")
        changes["width"] = changes["height"] = args.size
    if args.width is not None:
        changes["width"] = args.width
    if args.height is not None:
        changes["height"] = args.height
    simple = {
        "detector": "detector", "xy_shrink": "xy_shrink", "z_shrink": "z_shrink", "xy_oversample": "xy_oversample",
        "z_oversample": "z_oversample", "kernel": "kernel", "max_images": "max_images", "output_dir": "output_dir",
        "mirror": "data_mirror", "tap_url": "tap_url", "workers": "download_workers",
    }
    for attr, fieldname in simple.items():
        v = getattr(args, attr, None)
        if v is not None:
            changes[fieldname] = v
    if args.overwrite:
        changes["overwrite"] = True
    if args.no_zodi:
        changes["subtract_zodi"] = False
    if args.mjd_range is not None:
        changes["mjd_range"] = tuple(args.mjd_range)
    if args.exclude_flags is not None:
        changes["exclude_flags"] = _exclude_flags_arg(args.exclude_flags)
    if args.cutouts is not None:
        changes["use_cutouts"] = {"auto": None, "yes": True, "no": False}[args.cutouts]
    if args.mirror is not None and not Path(args.mirror).is_dir():
        raise CLIError(f"--mirror {args.mirror}: not a directory")

    if args.config is not None:
        try:
            cfg = Drizzle3DConfig.from_yaml_file(args.config)
        except FileNotFoundError:
            raise CLIError(f"config file not found: {args.config}") from None
        except ValueError as exc:
            if not changes:
                raise CLIError(str(exc)) from None
            # the flags may replace the offending value: merge the raw YAML with them, then validate
            return _merge_yaml(args.config, changes, exc)
        try:
            return cfg.replace(**changes)
        except ValueError as exc:
            raise CLIError(f"invalid option value: {exc}") from None
    missing = [flag for flag, key in (("--ra", "center_ra"), ("--dec", "center_dec")) if key not in changes]
    if "width" not in changes or "height" not in changes:
        missing.append("--size (or --width and --height)")
    if missing:
        _usage(parser, f"without CONFIG.yaml these options are required: {', '.join(missing)}")
    try:
        return Drizzle3DConfig(**changes)
    except ValueError as exc:
        raise CLIError(f"invalid option value: {exc}") from None


def _merge_yaml(path: Path, changes: Dict[str, Any], original: ValueError) -> Any:
    """Config from the YAML mapping at ``path`` updated with ``changes`` (CLIError if invalid)."""
    import yaml

    from .config import Drizzle3DConfig

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        raise CLIError(str(original)) from None
    if not isinstance(data, dict):
        raise CLIError(str(original))
    data.update(changes)
    try:
        return Drizzle3DConfig.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise CLIError(f"{path} with the command-line options: {exc}") from None


def _usage(parser: Optional[argparse.ArgumentParser], message: str) -> None:
    if parser is not None:
        parser.error(message)  # exits 2
    raise CLIError(message)


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import drizzle

    cfg = config_from_args(args, getattr(args, "_subparser", None))
    cfg = cfg.replace(progress=_show_progress(args) and cfg.progress)
    logger.info("run: centre (%.6f, %.6f) deg, %g' x %g', detector %s, output %s", cfg.center_ra, cfg.center_dec,
                cfg.width, cfg.height, "all" if cfg.detector == 0 else cfg.detector, cfg.output_dir)
    t0 = time.perf_counter()
    try:
        results = drizzle(cfg)
    except FileExistsError as exc:
        raise CLIError(f"{exc}; pass --overwrite (or set overwrite: true) to replace") from exc
    if not results:
        raise CLIError("no cube was written: no frame of the archive contributed to the region "
                       f"(centre {cfg.center_ra}, {cfg.center_dec}; see the warnings above)")
    for det, path in sorted(results.items()):
        print(f"D{det}: {path}")
        if args.quicklook:
            for p in _quicklooks(path).values():
                print(f"     {p}")
    logger.info("done in %.1f s", time.perf_counter() - t0)
    return 0


def _quicklooks(path: Path, **kwargs: Any) -> Dict[str, Path]:
    from .quicklook import write_quicklooks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return write_quicklooks(path, **kwargs)


# ── simulate / serve / demo ────────────────────────────────────────────────────


def _archive_server_cls() -> Any:
    from .testing.archive_server import ArchiveServer

    return ArchiveServer


@contextlib.contextmanager
def _loopback_no_proxy() -> Iterator[None]:
    """Make sure requests to 127.0.0.1 never go through an HTTP proxy (restored afterwards)."""
    keys = ("NO_PROXY", "no_proxy")
    old = {k: os.environ.get(k) for k in keys}
    for k in keys:
        parts = [p for p in (old[k] or "").split(",") if p]
        for host in ("127.0.0.1", "localhost"):
            if host not in parts:
                parts.append(host)
        os.environ[k] = ",".join(parts)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cmd_simulate(args: argparse.Namespace) -> int:
    root: Path = args.root
    if root.exists() and not root.is_dir():
        raise CLIError(f"{root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not args.force:
        raise CLIError(f"{root} is not empty (use --force to write into it)")
    cutout = None if args.full_frames else args.cutout_size / 60.0
    n_files = args.n_pointings * len(args.detectors)
    psf = {} if args.full_psf else {"psf_size": 21, "psf_zones": 1}
    t0 = time.perf_counter()
    info = _simulate_with_progress(
        args, root, n_files, center_ra=args.ra, center_dec=args.dec, detectors=tuple(args.detectors),
        n_pointings=args.n_pointings, release=args.release, cutout_size_deg=cutout, seed=args.seed, **psf)
    dt = time.perf_counter() - t0
    # a region whose diagonal fits in the (frame-aligned) cutout is covered at any roll angle
    size = 8.0 if cutout is None else max(1.0, min(8.0, math.floor(args.cutout_size / math.sqrt(2.0))))
    det = args.detectors[0] if len(args.detectors) == 1 else 0
    print(f"wrote {len(info.paths)} files under {root} in {dt:.1f} s, plus {info.index_path.name} "
          f"(the archive's TAP rows) and {info.truth_path.name} (the true sky)")
    print("sources (name, RA, Dec):")
    for s in list(info.sky.point_sources) + list(info.sky.extended_sources):
        print(f"  {s.name:5s} {s.ra:.6f} {s.dec:+.6f}")
    print("next -- serve it (leave running) and drizzle it from another terminal:")
    print(f"  {PROG} serve {root} --port 8765")
    print(f"  {PROG} run --ra {args.ra:g} --dec {args.dec:g} --size {size:g} --detector {det} --mirror {root} "
          f"--tap-url http://127.0.0.1:8765/TAP --exclude-flags recommended")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    root: Path = args.root
    if not (root / "archive_index.json").is_file():
        raise CLIError(f"{root}/archive_index.json not found: not a simulated archive (write one with '{PROG} simulate')")
    server = _archive_server_cls()(root, port=args.port)
    try:
        server.start()
    except OSError as exc:
        raise CLIError(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror or exc}") from None
    try:
        print(f"serving {root} at {server.base_url}", flush=True)
        print(f"TAP URL: {server.tap_url}", flush=True)
        print(f"use: {PROG} run ... --mirror {root} --tap-url {server.tap_url}   (Ctrl-C stops the server)",
              flush=True)
        stop = threading.Event()
        with _stop_on_signals(stop):
            try:
                while not stop.wait(3600):
                    pass
            except KeyboardInterrupt:
                pass
        print("stopped", file=sys.stderr)
    finally:
        server.stop()
    return 0


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM and SIGINT (also when a non-interactive shell started us with
    SIGINT ignored, as it does for ``cmd &``); previous handlers are restored. Main thread only."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        old[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _demo_explanation(cube_path: Path, truth: Path, pngs: Mapping[str, Path], ext_png: Optional[Path]) -> str:
    from .cubefile import load_cube
    from .quicklook import brightest_pixel, world_to_pixel
    from .simulate import load_truth

    sky, meta = load_truth(truth)
    cube = load_cube(cube_path)
    bx, by = brightest_pixel(cube)
    ny, nx = cube["sci"].shape[1:]
    parts = []
    nearest = None
    for s in sky.point_sources:
        x, y = world_to_pixel(cube, s.ra, s.dec)
        inside = -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5
        if not inside:
            continue
        d = math.hypot(x - bx, y - by)
        if nearest is None or d < nearest[0]:
            nearest = (d, s.name, s.spectrum.continuum_index)
        sp = s.spectrum
        parts.append(f"{s.name} ({sp.continuum_amp:g} mJy x (lambda/um)^{sp.continuum_index:g}) at pixel ({x:.0f}, {y:.0f})")
    ext_txt = ""
    for e in sky.extended_sources:
        x, y = world_to_pixel(cube, e.ra, e.dec)
        if -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5:
            lines = ", ".join(f"{ln.centre_um:.3f} um" for ln in e.spectrum.lines)
            ext_txt = (f" The elliptical smudge at pixel ({x:.0f}, {y:.0f}) is {e.name}, an extended source "
                       f"({e.sigma_major_arcsec:g}\" x {e.sigma_minor_arcsec:g}\" sigma) with an emission line at "
                       f"{lines}" + (f" -- its spectrum is in {ext_png.name}." if ext_png is not None else "."))
    n_frames = len(meta.get("frames", []))
    if nearest is not None and nearest[0] <= 3:
        red = " (rising: a red source)" if nearest[2] > 0 else ""
        bright = (f" The brightest pixel ({bx}, {by}), circled, is {nearest[1]}; {pngs['spectrum'].name} shows its "
                  f"spectrum with 1-sigma error bars{red}.")
    else:
        bright = f" The circle marks the brightest pixel ({bx}, {by}); {pngs['spectrum'].name} is its spectrum."
    return (
        f"What you are looking at: {n_frames} simulated SPHEREx exposures (cutouts, two roll angles, each seeing the "
        f"field at different wavelengths) drizzled into a {cube['sci'].shape[0]}-plane cube of "
        f"{ny} x {nx} pixels of 6.15\". {pngs['collapsed'].name} is the inverse-variance mean over all planes "
        f"(x = 0-based column, y = row; north up, east left). Point sources: " + "; ".join(parts) + "." + bright
        + ext_txt + f" {pngs['plane'].name} is a single wavelength plane. The true sky is in {truth}."
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from .config import Drizzle3DConfig
    from .flags import RECOMMENDED_EXCLUDE_FLAGS
    from .pipeline import drizzle
    from .quicklook import plot_spectrum, world_to_pixel, write_quicklooks
    from .simulate import load_truth

    out: Path = args.output_dir
    archive = out / "archive"
    if out.exists() and not out.is_dir():
        raise CLIError(f"--output-dir {out} exists and is not a directory")
    if archive.exists():
        if not (archive / "archive_index.json").is_file():
            raise CLIError(f"{archive} exists but is not a simulated archive; choose another --output-dir")
        shutil.rmtree(archive)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    det = args.detector
    size = float(args.size)
    cutout_deg = (size * math.sqrt(2.0) + 2 * CUTOUT_MARGIN_ARCMIN) / 60.0
    logger.info("demo 1/3: simulating %d exposures of D%d (cutouts %.1f') in %s", args.n_pointings, det,
                cutout_deg * 60, archive)
    info = _simulate_with_progress(args, archive, args.n_pointings, center_ra=DEMO_RA, center_dec=DEMO_DEC,
                                   detectors=(det,), n_pointings=args.n_pointings, release="qr2",
                                   cutout_size_deg=cutout_deg, seed=args.seed, psf_size=21, psf_zones=1)
    t_sim = time.perf_counter()
    with _loopback_no_proxy(), _archive_server_cls()(archive) as server:
        logger.info("demo 2/3: drizzling through the local archive %s (mirror mode, no downloads)", server.tap_url)
        cfg = Drizzle3DConfig(center_ra=DEMO_RA, center_dec=DEMO_DEC, width=size, height=size, detector=det,
                              tap_url=server.tap_url, data_mirror=archive, output_dir=out, overwrite=True,
                              exclude_flags=list(RECOMMENDED_EXCLUDE_FLAGS), progress=_show_progress(args))
        results = drizzle(cfg)
        n_queries = len(server.queries)
    if det not in results:
        raise CLIError(f"the demo wrote no cube for D{det} (see the warnings above)")
    cube_path = results[det]
    t_drz = time.perf_counter()
    logger.info("demo 3/3: quick-look pictures")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pngs = write_quicklooks(cube_path, out)
        ext_png = None
        sky, _ = load_truth(archive)
        if sky.extended_sources:
            e = sky.extended_sources[0]
            x, y = world_to_pixel(cube_path, e.ra, e.dec)
            ny, nx = cfg.output_ny(), cfg.output_nx()
            if 0 <= round(x) < nx and 0 <= round(y) < ny:
                ext_png = plot_spectrum(cube_path, out / f"{cube_path.stem}_spectrum_{e.name}.png",
                                        int(round(x)), int(round(y)),
                                        title=f"D{det} spectrum of the extended source {e.name} "
                                              f"(pixel {int(round(x))}, {int(round(y))})")
    t_end = time.perf_counter()
    truth = out / "truth.json"  # the true sky stays beside the cube, with or without --keep
    shutil.copyfile(archive / "truth.json", truth)
    explanation = _demo_explanation(cube_path, truth, pngs, ext_png)
    if not args.keep:
        shutil.rmtree(archive)
    print(f"demo finished in {t_end - t_start:.1f} s (simulate {t_sim - t_start:.1f} s, query + drizzle "
          f"{t_drz - t_sim:.1f} s over {n_queries} TAP query, pictures {t_end - t_drz:.1f} s)")
    print("wrote:")
    print(f"  {cube_path}   (cube: SCI, VARIANCE, AND_MASK, OR_MASK, COUNT, WAVELENGTH)")
    print(f"  {truth}   (the simulated true sky)")
    for p in list(pngs.values()) + ([ext_png] if ext_png is not None else []):
        print(f"  {p}")
    if args.keep:
        print(f"  {archive}/   (simulated archive: {len(info.paths)} cutouts, archive_index.json, truth.json)")
    print()
    print(_wrap(explanation))
    print()
    print(f"next: {PROG} inspect {cube_path} --wavelength 2.0   |   {PROG} init my_target.yaml "
          f"(then edit ra/dec/size and '{PROG} run my_target.yaml' against IRSA)")
    return 0


def _wrap(text: str, width: int = 100) -> str:
    import textwrap

    return textwrap.fill(text, width=width)


# ── inspect ────────────────────────────────────────────────────────────────────


def cmd_inspect(args: argparse.Namespace) -> int:
    import numpy as np

    from .cubefile import load_cube
    from .quicklook import (
        brightest_pixel, cube_summary, default_plane, format_summary, plane_for_wavelength, world_to_pixel,
        write_quicklooks,
    )

    path: Path = args.cube
    if not path.is_file():
        raise CLIError(f"cube file not found: {path}")
    try:
        cube = load_cube(path)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise CLIError(f"{path} is not a drizzled cube ({type(exc).__name__}: {exc})") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        summary = cube_summary(cube)
        print(format_summary(summary, path))
        if args.no_png:
            return 0
        n_z, ny, nx = summary["shape"]
        if args.plane is not None:
            if args.plane >= n_z:
                raise CLIError(f"--plane {args.plane} is outside 0..{n_z - 1}")
            plane = args.plane
        elif args.wavelength is not None:
            try:
                plane = plane_for_wavelength(cube, args.wavelength)
            except ValueError as exc:
                raise CLIError(f"--wavelength: {exc}") from None
        else:
            plane = default_plane(cube)
        if args.at is not None:
            x, y = world_to_pixel(cube, args.at[0], args.at[1])
            xi, yi = (int(round(x)), int(round(y))) if np.isfinite([x, y]).all() else (-1, -1)
            if not (0 <= xi < nx and 0 <= yi < ny):
                raise CLIError(f"--at {args.at[0]} {args.at[1]} falls at pixel ({x:.1f}, {y:.1f}), outside the "
                               f"{nx} x {ny} image")
            position = (xi, yi)
        elif args.pixel is not None:
            xi, yi = args.pixel
            if not (0 <= xi < nx and 0 <= yi < ny):
                raise CLIError(f"--pixel {xi} {yi} is outside the image (x 0..{nx - 1}, y 0..{ny - 1})")
            position = (xi, yi)
        else:
            try:
                position = brightest_pixel(cube)
            except ValueError as exc:
                raise CLIError(f"{path}: {exc}") from None
        pngs = write_quicklooks(path, args.png_dir, plane=plane, position=position, cube=cube)
    print(f"spectrum at pixel ({position[0]}, {position[1]}); plane {plane} = "
          f"{float(cube['wavelength']['LAMBDA'][plane]):.4f} um")
    print("wrote:")
    for p in pngs.values():
        print(f"  {p}")
    return 0


# ── main ───────────────────────────────────────────────────────────────────────


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
    args._subparser = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
    try:
        with _logging_setup(verbose, quiet):
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


__all__ = ["main", "build_parser", "template_text", "config_from_args", "CLIError"]
