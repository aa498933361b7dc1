"""``spxdrizzle simulate`` and ``spxdrizzle serve``: write a simulated archive, serve it on 127.0.0.1."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from ..settings import Int, Real
from .common import DEMO_DEC, DEMO_RA, PROG, CLIError, add_command, setting_type
from .logs import simulate_with_progress


def _archive_server_cls() -> Any:
    """The loopback archive server class (imported when a command needs it)."""
    from ..testing.archive_server import ArchiveServer

    return ArchiveServer


@contextlib.contextmanager
def loopback_no_proxy() -> Iterator[None]:
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
    info = simulate_with_progress(
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
        raise CLIError(f"{root}/archive_index.json not found: not a simulated archive "
                       f"(write one with '{PROG} simulate')")
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


def add_simulate_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``simulate`` command."""
    p = add_command(
        sub, common, "simulate",
        usage="%(prog)s DIR [--ra DEG --dec DEG] [--n-pointings N] [options]",
        help="write a simulated archive to test settings",
        description="Write a simulated SPHEREx field: an IRSA-like mirror tree, archive_index.json and\n"
                    "truth.json (the true sky). Serve it with 'serve' and drizzle it with 'run --mirror'.",
        epilog=f"example:\n  {PROG} simulate my_field --n-pointings 12\n  {PROG} serve my_field --port 8765 &\n"
               f"  {PROG} run --ra 150 --dec 2 --size 8 --detector 3 --mirror my_field "
               f"--tap-url http://127.0.0.1:8765/TAP",
    )
    p.add_argument("root", type=Path, metavar="DIR", help="directory to write (the mirror root)")
    p.add_argument("--ra", type=setting_type("center_ra"), default=DEMO_RA, metavar="DEG",
                   help=f"field centre RA [deg] (default {DEMO_RA})")
    p.add_argument("--dec", type=setting_type("center_dec"), default=DEMO_DEC, metavar="DEG",
                   help=f"field centre Dec [deg] (default {DEMO_DEC})")
    p.add_argument("--detectors", type=Int(1, 6, "1-6").parse_arg, nargs="+", default=[3], metavar="N",
                   help="detectors to simulate, 1-6 (default 3)")
    p.add_argument("--n-pointings", type=Int(1, 1000).parse_arg, default=16, metavar="N",
                   help="exposures per detector (~1 s each) (default 16)")
    p.add_argument("--release", choices=["qr2", "qr3"], default="qr2", help="file layout (default qr2)")
    p.add_argument("--cutout-size", type=Real(0.0, 200.0, lo_open=True).parse_arg, default=12.0,
                   metavar="ARCMIN", help="write IRSA-style cutouts of this side around the centre [arcmin] "
                                          "(default 12: enough for an 8' region)")
    p.add_argument("--full-frames", action="store_true",
                   help="write full 2040x2040 frames (~70 MB each) instead of cutouts")
    p.add_argument("--full-psf", action="store_true",
                   help="write the real-size PSF extension (default: a compact 21x21 PSF, faster and smaller)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--force", action="store_true", help="write into a non-empty DIR (default: refuse)")
    p.set_defaults(func=cmd_simulate)


def add_serve_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``serve`` command."""
    p = add_command(
        sub, common, "serve",
        usage="%(prog)s DIR [--port N]",
        help="serve a simulated archive on 127.0.0.1",
        description="Serve DIR (written by 'simulate') as an IRSA-like TAP service and file server on\n"
                    "127.0.0.1 until Ctrl-C. Prints the TAP URL to pass to 'run --tap-url'.",
        epilog=f"example:\n  {PROG} serve my_field --port 8765",
    )
    p.add_argument("root", type=Path, metavar="DIR", help="directory holding archive_index.json")
    p.add_argument("--port", type=Int(0, 65535).parse_arg, default=0, metavar="N",
                   help="TCP port on 127.0.0.1, 0 = any free port (default 0)")
    p.set_defaults(func=cmd_serve)
