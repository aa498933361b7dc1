"""``spxdrizzle demo``: simulate a field, serve it on 127.0.0.1, drizzle it, draw it (offline)."""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

from ..settings import Int, Real
from .archive import _archive_server_cls, loopback_no_proxy
from .common import DEMO_DEC, DEMO_RA, PROG, CLIError, add_command
from .logs import show_progress, simulate_with_progress

logger = logging.getLogger(__name__)

#: Default demo field: region side (arcmin), pointings, detector (centre: DEMO_RA, DEMO_DEC).
DEMO_SIZE_ARCMIN = 8.0
DEMO_N_POINTINGS = 16
DEMO_DETECTOR = 3
#: Margin added to the region's diagonal for the simulated cutouts [arcmin].
CUTOUT_MARGIN_ARCMIN = 1.0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..config import Drizzle3DConfig
    from ..flags import RECOMMENDED_EXCLUDE_FLAGS
    from ..pipeline import drizzle
    from ..quicklook import plot_spectrum, world_to_pixel, write_quicklooks
    from ..simulate import load_truth
    from .demo_text import demo_explanation

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
    info = simulate_with_progress(args, archive, args.n_pointings, center_ra=DEMO_RA, center_dec=DEMO_DEC,
                                   detectors=(det,), n_pointings=args.n_pointings, release="qr2",
                                   cutout_size_deg=cutout_deg, seed=args.seed, psf_size=21, psf_zones=1,
                                   true_wavelengths=True)
    t_sim = time.perf_counter()
    with loopback_no_proxy(), _archive_server_cls()(archive) as server:
        logger.info("demo 2/3: drizzling through the local archive %s (mirror mode, no downloads)", server.tap_url)
        cfg = Drizzle3DConfig(center_ra=DEMO_RA, center_dec=DEMO_DEC, width=size, height=size, detector=det,
                              tap_url=server.tap_url, data_mirror=archive, output_dir=out, overwrite=True,
                              exclude_flags=list(RECOMMENDED_EXCLUDE_FLAGS), progress=show_progress(args))
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
    explanation = demo_explanation(cube_path, truth, pngs, ext_png)
    if not args.keep:
        shutil.rmtree(archive)
    print(f"demo finished in {t_end - t_start:.1f} s (simulate {t_sim - t_start:.1f} s, query + drizzle "
          f"{t_drz - t_sim:.1f} s over {n_queries} TAP query, pictures {t_end - t_drz:.1f} s)")
    print("wrote:")
    print(f"  {cube_path}   (cube: SCI, VARIANCE, AND_MASK, OR_MASK, COUNT, WAVELENGTH; wavelengths from "
          f"{_wavelength_source(cube_path)})")
    print(f"  {truth}   (the simulated true sky)")
    for p in list(pngs.values()) + ([ext_png] if ext_png is not None else []):
        print(f"  {p}")
    if args.keep:
        print(f"  {archive}/   (simulated archive: {len(info.paths)} cutouts, archive_index.json, truth.json)")
    print()
    print(textwrap.fill(explanation, width=100))
    print()
    print(f"next: {PROG} inspect {cube_path} --wavelength 2.0   |   {PROG} init my_target.yaml "
          f"(then edit ra/dec/size and '{PROG} run my_target.yaml' against IRSA)")
    return 0


def _wavelength_source(cube_path: Path) -> str:
    """The cube's ``WAVESRC`` in words: the calibration product's file, or the L2 lookup."""
    from astropy.io import fits

    header = fits.getheader(cube_path)
    if header.get("WAVESRC") == "SPECTRAL_WCS":
        return f"the spectral-WCS calibration product {header.get('WVF00001', '')}".rstrip()
    return f"the L2 WCS-WAVE lookup (WAVESRC = {header.get('WAVESRC', 'LOOKUP')})"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``demo`` command."""
    p = add_command(
        sub, common, "demo",
        usage="%(prog)s [--output-dir DIR] [--n-pointings N] [--keep] [options]",
        help="offline demo: simulate, serve, drizzle, draw",
        description="Simulate a small field of SPHEREx cutouts, serve it on 127.0.0.1 (IRSA-like TAP), drizzle it\n"
                    "in mirror mode and write the cube and quick-look PNGs. No network access beyond 127.0.0.1.",
        epilog=f"example:\n  {PROG} demo --output-dir spxdrizzle_demo",
    )
    p.add_argument("--output-dir", type=Path, default=Path("spxdrizzle_demo"), metavar="DIR",
                   help="where the cube, PNGs and the simulated archive (DIR/archive) go (default spxdrizzle_demo)")
    p.add_argument("--n-pointings", type=Int(1, 200).parse_arg, default=DEMO_N_POINTINGS, metavar="N",
                   help=f"simulated exposures, 1-200 (~1 s each) (default {DEMO_N_POINTINGS})")
    p.add_argument("--detector", type=Int(1, 6, "1-6").parse_arg, default=DEMO_DETECTOR, metavar="N",
                   help=f"detector to simulate, 1-6 (default {DEMO_DETECTOR})")
    p.add_argument("--size", type=Real(1.0, 20.0).parse_arg, default=DEMO_SIZE_ARCMIN, metavar="ARCMIN",
                   help=f"side of the drizzled region, 1-20 [arcmin] (default {DEMO_SIZE_ARCMIN:g})")
    p.add_argument("--seed", type=int, default=0, help="random seed of the simulation (default 0)")
    p.add_argument("--keep", action="store_true",
                   help="keep the simulated archive DIR/archive afterwards (default: delete it)")
    p.set_defaults(func=cmd_demo)
