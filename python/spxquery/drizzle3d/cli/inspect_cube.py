"""``spxdrizzle inspect``: summary and quick-look pictures of a cube."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from ..quicklook import QUICKLOOK_APERTURE_ARCSEC
from ..settings import Int, Real
from .common import PROG, CLIError, add_command


def cmd_inspect(args: argparse.Namespace) -> int:
    import numpy as np

    from ..cubefile import load_cube
    from ..quicklook import (
        brightest_pixel,
        brightest_source,
        cube_summary,
        default_plane,
        format_summary,
        plane_for_wavelength,
        world_to_pixel,
        write_quicklooks,
    )

    path: Path = args.cube
    if not path.is_file():
        raise CLIError(f"cube file not found: {path}")
    try:
        cube = load_cube(path)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise CLIError(f"{path} is not a drizzled cube ({type(exc).__name__}: {exc})") from exc
    aperture = args.aperture or None  # 0: the pixel's own spectrum
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
                position = brightest_pixel(cube) if aperture is None else brightest_source(cube, aperture)
            except ValueError as exc:
                raise CLIError(f"{path}: {exc}") from None
        pngs = write_quicklooks(path, args.png_dir, plane=plane, position=position, cube=cube,
                                aperture_arcsec=aperture)
    what = "spectrum at pixel" if aperture is None else f"aperture spectrum (r = {aperture:g}\") around pixel"
    print(f"{what} ({position[0]}, {position[1]}); plane {plane} = "
          f"{float(cube['wavelength']['LAMBDA'][plane]):.4f} um")
    print("wrote:")
    for p in pngs.values():
        print(f"  {p}")
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``inspect`` command."""
    p = add_command(
        sub, common, "inspect",
        usage="%(prog)s CUBE.fits [--plane K | --wavelength UM] [--at RA DEC | --pixel X Y] [--aperture ARCSEC] "
              "[options]",
        help="summary and quick-look PNGs of a cube",
        description="Print a summary of a drizzled cube and write <stem>_collapsed.png, <stem>_plane<k>.png\n"
                    "and <stem>_spectrum.png.",
        epilog=f"examples:\n  {PROG} inspect drizzle_output/drizzle_D3.fits\n"
               f"  {PROG} inspect cube.fits --wavelength 2.1 --at 150.02 1.98 --png-dir pngs",
    )
    p.add_argument("cube", type=Path, metavar="CUBE.fits", help="cube written by run/demo/drizzle()")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--plane", type=Int(0).parse_arg, metavar="K",
                   help="plane (0-based) to draw (default: the plane with the most coverage)")
    g.add_argument("--wavelength", type=Real(0.0, lo_open=True).parse_arg, metavar="UM",
                   help="draw the plane containing this wavelength [um]")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--at", nargs=2, type=float, metavar=("RA", "DEC"),
                   help="spectrum position [deg] (default: the brightest source of the collapsed image)")
    g.add_argument("--pixel", nargs=2, type=int, metavar=("X", "Y"),
                   help="spectrum position as 0-based pixel (x, y)")
    p.add_argument("--aperture", type=Real(0.0).parse_arg, default=QUICKLOOK_APERTURE_ARCSEC, metavar="ARCSEC",
                   help=f"radius of the spectrum's aperture [arcsec]; the spectrum is a flux density [mJy]; "
                        f"0 = the pixel's surface brightness [MJy/sr] (default {QUICKLOOK_APERTURE_ARCSEC:g})")
    p.add_argument("--png-dir", type=Path, metavar="DIR", help="where the PNGs go (default: next to the cube)")
    p.add_argument("--no-png", action="store_true", help="print the summary only")
    p.set_defaults(func=cmd_inspect)
