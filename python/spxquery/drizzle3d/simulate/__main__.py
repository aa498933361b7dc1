"""``python -m spxquery.drizzle3d.simulate ROOT``: write a simulated field (mirror tree, index, truth)."""

from __future__ import annotations

import argparse
import logging

from .field import simulate_field


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spxquery.drizzle3d.simulate", description=__doc__)
    p.add_argument("root", help="output directory (mirror tree root)")
    p.add_argument("--ra", type=float, default=150.0, help="field centre RA [deg]")
    p.add_argument("--dec", type=float, default=2.0, help="field centre Dec [deg]")
    p.add_argument("--detectors", type=int, nargs="+", default=[3], help="detectors 1-6")
    p.add_argument("--n-pointings", type=int, default=16)
    p.add_argument("--release", choices=["qr2", "qr3"], default="qr2")
    p.add_argument("--cutout-size-deg", type=float, default=None, help="write IRSA-style cutouts of this size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duplicates", action="store_true", help="also write superseded processing versions")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    info = simulate_field(args.root, args.ra, args.dec, detectors=tuple(args.detectors), n_pointings=args.n_pointings,
                          release=args.release, cutout_size_deg=args.cutout_size_deg, seed=args.seed,
                          include_reprocessed_duplicates=args.duplicates)
    print(f"wrote {len(info.frames)} files, {info.index_path} and {info.truth_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
