"""``spxdrizzle assemble``: the cube file of a tiled run, from its manifest."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import PROG, CLIError, add_command


def cmd_assemble(args: argparse.Namespace) -> int:
    from ..assemble import assemble_from_manifest

    manifest: Path = args.manifest
    if manifest.is_dir():
        manifest = manifest / "manifest.json"
    if not manifest.is_file():
        raise CLIError(f"manifest not found: {manifest} (written in output_dir/tiles_D<N>/ by a tiled run)")
    try:
        out = assemble_from_manifest(manifest, args.output, overwrite=args.overwrite)
    except (KeyError, TypeError) as exc:
        raise CLIError(f"{manifest} is not the manifest of a tiled run ({type(exc).__name__}: {exc})") from exc
    if out is None:
        raise CLIError(f"no frame contributed to any tile of {manifest}: no cube written")
    print(out)
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``assemble`` command."""
    p = add_command(
        sub, common, "assemble",
        usage="%(prog)s MANIFEST [-o CUBE.fits] [--overwrite] [options]",
        help="write the cube file of a tiled run from its tiles",
        description="Stream the tiles of a tiled run (tile_arcmin) into one cube file, plane by plane,\n"
                    "bit for bit the cube of a one-piece run, and write the mosaic's quick-look\n"
                    "(tiles_D<N>/quicklook_D<N>.fits and .png, at most 2000 pixels a side).",
        epilog=f"examples:\n  {PROG} assemble drizzle_output/tiles_D3\n"
               f"  {PROG} assemble drizzle_output/tiles_D3/manifest.json -o cube.fits --overwrite",
    )
    p.add_argument("manifest", type=Path, metavar="MANIFEST",
                   help="manifest.json of a tiled run, or the tiles_D<N> directory holding it")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="CUBE.fits",
                   help="cube file to write (default: drizzle_D<N>.fits beside the tiles directory)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cube file")
    p.set_defaults(func=cmd_assemble)
