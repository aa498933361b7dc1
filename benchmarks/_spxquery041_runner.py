"""One timed ``drizzle_detector`` run, executed in a fresh interpreter by ``bench_pipeline.py``.

The same script is run by both interpreters so that the harness is identical:

* ``~/.cache/spxdrizzle-bench/venv-spxquery041/bin/python`` -> spxquery 0.4.1 from PyPI
  (its pure-numpy ``spxquery.drizzle3d``);
* this repository's venv -> this package's ``spxquery.drizzle3d`` (Rust core).

Both expose the same API (``spxquery.drizzle3d.config.Drizzle3DConfig``,
``spxquery.drizzle3d.grid.build_output_wcs``, ``spxquery.drizzle3d.pipeline.drizzle_detector``),
so the script only imports those. Nothing of the old algorithm is changed or patched.
The only setting that differs: ``progress=False`` is passed when the config has that
field (ours; it just hides the tqdm bar). The timed region is exactly the
``drizzle_detector(paths, config, detector, output_wcs)`` call, which in both packages
reads the files, drizzles them and writes the cube FITS file.

Usage (normally called by bench_pipeline.py)::

    python _spxquery041_runner.py --result R.json --baseline
    python _spxquery041_runner.py --result R.json --paths-file P.txt --ra 150 --dec 2 \
        --size-arcmin 30 --output-dir DIR [--detector 3 | --combine]

The result JSON holds: package version and file, numpy/astropy/python versions, import
seconds, drizzle seconds, cube shape (n_z, ny, nx), peak RSS of this process (VmHWM,
``ru_maxrss``) in MiB, and ``error`` (or null). Exit code 0 = ok, 3 = MemoryError,
4 = import failure, 5 = any other error.
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402


def _status_mib(field: str) -> float | None:
    """``/proc/self/status`` field (VmHWM, VmRSS, VmPeak) in MiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _memory() -> dict:
    return {
        "vmhwm_mib": _status_mib("VmHWM"),
        "vmpeak_mib": _status_mib("VmPeak"),
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def _write(path: Path, result: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--result", required=True, type=Path, help="JSON file receiving the result")
    ap.add_argument("--baseline", action="store_true", help="only import the package, then report memory")
    ap.add_argument("--paths-file", type=Path, help="text file: one L2 FITS path per line, in drizzle order")
    ap.add_argument("--ra", type=float, help="cube centre RA [deg]")
    ap.add_argument("--dec", type=float, help="cube centre Dec [deg]")
    ap.add_argument("--size-arcmin", type=float, help="cube width = height [arcmin]")
    ap.add_argument("--detector", type=int, default=3)
    ap.add_argument("--output-dir", type=Path, help="receives drizzle_D{detector}.fits")
    ap.add_argument("--reject-outliers", action="store_true", help="this package only: outlier rejection on")
    ap.add_argument("--covariance", action="store_true", help="this package only: covariance cross terms on")
    ap.add_argument("--combine", action="store_true",
                    help="this package only: one cube of all detectors (drizzle_all_detectors; the detector of "
                         "each file is read from its name) -> drizzle_all.fits")
    args = ap.parse_args()

    result: dict = {
        "mode": "baseline" if args.baseline else "run",
        "python": platform.python_version(),
        "executable": sys.executable,
        "error": None,
    }
    warnings.simplefilter("ignore")  # FITSFixedWarning chatter from both packages' WCS reads
    t_imp = time.perf_counter()
    try:
        import astropy
        import numpy as np

        import spxquery.drizzle3d as pkg
        from spxquery.drizzle3d.config import Drizzle3DConfig
        from spxquery.drizzle3d.grid import build_output_wcs
        from spxquery.drizzle3d.pipeline import drizzle_detector
    except Exception as exc:  # the Rust extension may be mid-rebuild: the caller retries
        result["error"] = f"import failed: {type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
        _write(args.result, result)
        return 4
    result["import_s"] = time.perf_counter() - t_imp
    try:
        from importlib.metadata import version

        dist = "spxquery" if "site-packages" in (pkg.__file__ or "") else "spxquery-drizzle3d"
        result["package_version"] = version(dist)
        result["package_dist"] = dist
    except Exception:
        result["package_version"] = getattr(pkg, "__version__", "unknown")
    result["package_file"] = pkg.__file__
    result["numpy"] = np.__version__
    result["astropy"] = astropy.__version__

    if args.baseline:
        result.update(_memory())
        result["total_s"] = time.perf_counter() - _T_START
        _write(args.result, result)
        return 0

    from astropy import log as astropy_log

    astropy_log.setLevel("ERROR")
    paths = [Path(line.strip()) for line in args.paths_file.read_text().splitlines() if line.strip()]
    kwargs = dict(
        center_ra=args.ra,
        center_dec=args.dec,
        width=args.size_arcmin,
        height=args.size_arcmin,
        detector=args.detector,
        xy_oversample=1.0,
        z_oversample=1.0,
        output_dir=args.output_dir,
        overwrite=True,
    )
    import dataclasses

    if "progress" in {f.name for f in dataclasses.fields(Drizzle3DConfig)}:
        kwargs["progress"] = False
    if args.reject_outliers:
        kwargs["reject_outliers"] = True
    if args.covariance:
        kwargs["covariance"] = True
    code = 0
    try:
        if args.combine:
            kwargs.update(detector=0, combine_detectors=True)
        config = Drizzle3DConfig(**kwargs)
        output_wcs = build_output_wcs(config)
        result["n_frames"] = len(paths)
        t0 = time.perf_counter()
        if args.combine:
            import re

            from spxquery.drizzle3d.pipeline import drizzle_all_detectors

            by_det: dict = {}
            for p in paths:
                by_det.setdefault(int(re.search(r"D([1-6])_spx", p.name).group(1)), []).append(p)
            out = drizzle_all_detectors(by_det, config, output_wcs)
        else:
            out = drizzle_detector(paths, config, args.detector, output_wcs)
        result["drizzle_s"] = time.perf_counter() - t0
        result["output"] = str(out) if out is not None else None
        if os.environ.get("SPXDRIZZLE_STAGE_TIMES"):
            try:  # this package only (spxquery 0.4.1 has no stage times)
                from spxquery.drizzle3d import stagetimes

                result["stages"] = stagetimes.snapshot()
            except ImportError:
                pass
        if out is not None:
            from astropy.io import fits

            h = fits.getheader(out, "SCI")
            result["cube_shape"] = [int(h["NAXIS3"]), int(h["NAXIS2"]), int(h["NAXIS1"])]
    except MemoryError as exc:
        result["error"] = f"MemoryError: {exc}"
        code = 3
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
        code = 5
    result.update(_memory())
    result["total_s"] = time.perf_counter() - _T_START
    _write(args.result, result)
    return code


if __name__ == "__main__":
    sys.exit(main())
