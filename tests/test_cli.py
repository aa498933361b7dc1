"""The ``spxdrizzle`` command line: every subcommand, bad arguments (one clear line, non-zero
exit, no traceback unless -v), init round trip, flag-only and YAML runs against a simulated
archive served by the real loopback archive server, the demo end to end, and the
``python -m spxquery.drizzle3d`` entry in subprocesses (serve + Ctrl-C, interrupted run)."""

import os
import signal
import subprocess
import sys
import time

import matplotlib.image as mpimg
import numpy as np
import pytest
import requests

from spxquery.drizzle3d.cli import main, template_text
from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.flags import FLAG_DESCRIPTIONS, INFORMATIONAL_FLAGS, RECOMMENDED_EXCLUDE_FLAGS
from spxquery.drizzle3d.io import load_cube
from spxquery.drizzle3d.query import build_adql
from spxquery.drizzle3d.quicklook import (
    brightest_pixel,
    brightest_source,
    collapsed_image,
    pixel_to_world,
    world_to_pixel,
)
from spxquery.drizzle3d.simulate import load_truth
from spxquery.drizzle3d.testing.archive_server import ArchiveServer

RA0, DEC0 = 150.0, 2.0
N_POINTINGS = 5
SUBCOMMANDS = ["init", "run", "demo", "inspect", "simulate", "serve"]


def _env():
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A simulated archive written by the ``simulate`` subcommand (cutouts, few pointings)."""
    root = tmp_path_factory.mktemp("cli") / "field"
    rc = main(["-q", "simulate", str(root), "--n-pointings", str(N_POINTINGS), "--cutout-size", "10",
               "--seed", "1"])
    assert rc == 0
    return root


@pytest.fixture(scope="module")
def server(archive):
    with ArchiveServer(archive) as srv:
        yield srv


@pytest.fixture(scope="module")
def flag_run(archive, server, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_flags")
    argv = ["run", "--ra", str(RA0), "--dec", str(DEC0), "--size", "6", "--detector", "3", "--mirror", str(archive),
            "--tap-url", server.tap_url, "--output-dir", str(out), "--exclude-flags", "recommended"]
    return out, argv


def _stderr_lines(capsys):
    cap = capsys.readouterr()
    return cap.out, [ln for ln in cap.err.splitlines() if ln.strip()]


def _option_help(help_text, opt):
    """The help of option ``opt`` (its line and wrapped continuation lines) in ``--help`` output."""
    lines = help_text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("  " + opt + " "))
    out = [lines[start]]
    for ln in lines[start + 1:]:
        if not ln.startswith(" " * 8) or ln.strip().startswith("-"):
            break
        out.append(ln)
    return " ".join(" ".join(out).split())


# ── help ──────────────────────────────────────────────────────────────────────


def test_help_texts(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in SUBCOMMANDS:
        assert cmd in out
    assert "examples:" in out and "exit codes" in out
    for cmd in SUBCOMMANDS:
        assert main([cmd, "--help"]) == 0
        text = capsys.readouterr().out
        assert "usage: spxdrizzle " + cmd in text
        assert "example" in text, cmd
    assert main(["run", "--help"]) == 0
    run_help = capsys.readouterr().out
    for opt, unit in [("--ra", "[deg"), ("--size", "[arcmin]"), ("--xy-shrink", "default 0.8"),
                      ("--detector", "default 0"), ("--max-images", "default 500"), ("--workers", "default 4"),
                      ("--mjd-range", "MJD"), ("--tap-url", "irsa.ipac.caltech.edu")]:
        assert unit in _option_help(run_help, opt), opt
    assert main(["--version"]) == 0
    assert "spxdrizzle" in capsys.readouterr().out


# ── bad arguments ─────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "argv, code, needle",
    [
        (["run"], 2, "--ra, --dec, --size"),
        (["run", "--ra", "150"], 2, "--dec, --size"),
        (["run", "--ra", "1", "--dec", "1", "--size", "-1"], 2,
         "argument --size: must be a number in (0, 10800), got -1"),
        (["run", "--ra", "1", "--dec", "1", "--size", "3", "--detector", "9"], 2,
         "argument --detector: must be an integer 0 (all six) or 1-6, got 9"),
        (["run", "--ra", "400", "--dec", "1", "--size", "3"], 2, "argument --ra: must be a number in [0, 360)"),
        (["run", "--ra", "1", "--dec", "1", "--size", "3", "--xy-shrink", "1.5"], 2, "argument --xy-shrink"),
        (["run", "--ra", "1", "--dec", "1", "--size", "3", "--width", "4"], 2, "either --size or --width"),
        (["run", "--ra", "1", "--dec", "1", "--size", "abc"], 2, "must be a number in (0, 10800), got 'abc'"),
        (["run", "--bogus"], 2, "unrecognized arguments: --bogus"),
        (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
        (["init"], 2, "required: CONFIG.yaml"),
        (["inspect", "x.fits", "--plane", "-1"], 2, "argument --plane"),
        (["inspect", "x.fits", "--plane", "1", "--wavelength", "2"], 2, "not allowed with argument"),
        (["demo", "--n-pointings", "0"], 2, "argument --n-pointings"),
        (["serve", "somewhere", "--port", "70000"], 2, "argument --port"),
        (["-v", "-q", "run"], 2, "not allowed with argument"),
    ],
)
def test_usage_errors(argv, code, needle, capsys):
    assert main(argv) == code
    out, err = _stderr_lines(capsys)
    assert not any("Traceback" in ln for ln in err)
    assert any(needle in ln for ln in err), err
    assert sum("error:" in ln for ln in err) == 1
    assert err[-1].split(": error: ")[0].startswith("spxdrizzle")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["run", "{tmp}/missing.yaml"], "config file not found: {tmp}/missing.yaml"),
        (["inspect", "{tmp}/missing.fits"], "cube file not found: {tmp}/missing.fits"),
        (["serve", "{tmp}"], "archive_index.json not found"),
        (["run", "--ra", "1", "--dec", "1", "--size", "3", "--mirror", "{tmp}/nomirror"], "--mirror"),
        (["run", "{tmp}/bad.yaml"], "xy_shrink must be in (0, 1], got 3.0"),
        (["run", "{tmp}/bad.yaml", "--xy-shrink", "0.5", "--detector", "3", "--tap-url", "ftp://x"],
         "tap_url must be None or an http(s) URL"),
        (["inspect", "{tmp}/notfits.fits"], "is not a drizzled cube"),
    ],
)
def test_runtime_errors_are_one_line(argv, needle, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("center_ra: 1.0\ncenter_dec: 1.0\nwidth: 3\nheight: 3\nxy_shrink: 3.0\n")
    (tmp_path / "notfits.fits").write_text("this is not FITS\n" * 10)
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 1
    out, err = _stderr_lines(capsys)
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and needle.format(tmp=tmp_path) in err[0], err
    # with -v the same failure shows a traceback before the error line
    assert main(["-v"] + argv) == 1
    err_v = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err_v
    assert err_v.strip().splitlines()[-1] == err[0]


def test_flags_override_yaml_values(tmp_path):
    """Flags win over the YAML, even over a YAML value that is invalid on its own."""
    from spxquery.drizzle3d.cli import build_parser, config_from_args

    yml = tmp_path / "bad.yaml"
    yml.write_text("center_ra: 1.0\ncenter_dec: 1.0\nwidth: 3\nheight: 3\nxy_shrink: 3.0\ndetector: 2\n")
    args = build_parser().parse_args(["run", str(yml), "--xy-shrink", "0.5", "--ra", "20", "--width", "4",
                                      "--exclude-flags", "recommended", "7", "--cutouts", "no"])
    cfg = config_from_args(args)
    assert (cfg.xy_shrink, cfg.center_ra, cfg.width, cfg.height, cfg.detector) == (0.5, 20.0, 4.0, 3.0, 2)
    assert cfg.exclude_flags == list(RECOMMENDED_EXCLUDE_FLAGS) + [7] and cfg.use_cutouts is False
    good = tmp_path / "good.yaml"
    Drizzle3DConfig(center_ra=1.0, center_dec=1.0, width=3, height=3, z_shrink=0.3).to_yaml_file(good)
    args = build_parser().parse_args(["run", str(good), "--mjd-range", "60000", "60100", "--no-zodi",
                                      "--output-dir", str(tmp_path / "o"), "--mirror", str(tmp_path)])
    cfg = config_from_args(args)
    assert cfg.mjd_range == (60000.0, 60100.0) and cfg.subtract_zodi is False and cfg.z_shrink == 0.3
    assert cfg.output_dir == tmp_path / "o" and cfg.data_mirror == tmp_path


# ── init ──────────────────────────────────────────────────────────────────────


def test_init_round_trip(tmp_path, capsys):
    path = tmp_path / "sub" / "target.yaml"
    assert main(["init", str(path), "--ra", "202.4696", "--dec", "47.1952", "--size", "12", "--detector", "2"]) == 0
    assert str(path) in capsys.readouterr().out
    cfg = Drizzle3DConfig.from_yaml_file(path)
    expected = Drizzle3DConfig(center_ra=202.4696, center_dec=47.1952, width=12.0, height=12.0, detector=2,
                               exclude_flags=list(RECOMMENDED_EXCLUDE_FLAGS))
    assert cfg == expected
    assert cfg.tap_url is None and cfg.data_mirror is None  # a real IRSA run
    text = path.read_text()
    lines = text.splitlines()
    for name in RECOMMENDED_EXCLUDE_FLAGS:  # one commented line per recommended flag
        hit = [ln for ln in lines if ln.strip().startswith(f"- {name} ")]
        assert len(hit) == 1 and FLAG_DESCRIPTIONS[name] in hit[0], name
    for name in INFORMATIONAL_FLAGS:  # named in the note, not excluded
        assert name in text and name not in cfg.exclude_flags
    assert "informational" in text
    # every config field is in the file
    for f in Drizzle3DConfig.__dataclass_fields__.values():
        if f.init:
            assert any(ln.startswith(f"{f.name}:") for ln in lines), f.name
    # refuses to overwrite without --force
    path.write_text("# mine\n")
    assert main(["init", str(path)]) == 1
    assert "already exists (use --force" in capsys.readouterr().err
    assert path.read_text() == "# mine\n"
    assert main(["init", str(path), "--force"]) == 0
    assert Drizzle3DConfig.from_yaml_file(path).center_ra == 150.0
    assert main(["init", str(tmp_path)]) == 1  # a directory
    assert template_text() == path.read_text()


# ── run ───────────────────────────────────────────────────────────────────────


def test_run_flag_only(flag_run, archive, capsys):
    out, argv = flag_run
    assert main(["-q"] + argv) == 0
    stdout, err = _stderr_lines(capsys)
    cube_path = out / "drizzle_D3.fits"
    assert stdout.strip().splitlines() == [f"D3: {cube_path}"]
    # -q: no info lines, no progress bars; the one warning: this archive has no spectral-WCS product
    assert len(err) == 1 and "spectral WCS: wavelengths from the L2 WCS-WAVE lookup" in err[0], err
    cube = load_cube(cube_path)
    h = cube["header"]
    assert h["N_INPUTS"] == N_POINTINGS and h["DETECTOR"] == 3 and h["WAVESRC"] == "LOOKUP"
    assert h["RA_CEN"] == RA0 and h["DEC_CEN"] == DEC0 and h["NX"] == h["NY"] == 58
    # the recommended flags were applied: no hot-pixel spikes, sources where the truth puts them
    sky, _ = load_truth(archive)
    bx, by = brightest_pixel(cube)
    d = [np.hypot(bx - x, by - y) for x, y in (world_to_pixel(cube, s.ra, s.dec) for s in sky.point_sources)]
    assert min(d) <= 1.5, d
    assert np.nanmax(collapsed_image(cube)) < 100


def test_run_existing_output_then_overwrite(flag_run, capsys):
    out, argv = flag_run
    if not (out / "drizzle_D3.fits").exists():
        assert main(["-q"] + argv) == 0
    capsys.readouterr()
    before = (out / "drizzle_D3.fits").read_bytes()
    assert main(["-q"] + argv) == 1
    _, err = _stderr_lines(capsys)
    assert len(err) == 1 and err[0].startswith("error: ") and "--overwrite" in err[0] and "drizzle_D3.fits" in err[0]
    assert (out / "drizzle_D3.fits").read_bytes() == before
    assert main(["-q"] + argv + ["--overwrite", "--xy-shrink", "0.5", "--quicklook"]) == 0
    stdout = capsys.readouterr().out
    h = load_cube(out / "drizzle_D3.fits")["header"]
    assert h["XYSHRINK"] == 0.5
    for suffix in ("collapsed", "spectrum"):
        p = out / f"drizzle_D3_{suffix}.png"
        assert p.is_file() and str(p) in stdout


def test_run_yaml_with_overrides(archive, server, tmp_path, capsys):
    yml = tmp_path / "t.yaml"
    assert main(["init", str(yml), "--ra", str(RA0), "--dec", str(DEC0), "--size", "5", "--detector", "3"]) == 0
    capsys.readouterr()
    out = tmp_path / "cubes"
    rc = main(["run", str(yml), "--mirror", str(archive), "--tap-url", server.tap_url, "--output-dir", str(out),
               "--kernel", "bilinear", "--height", "4", "--z-oversample", "2"])
    assert rc == 0
    stdout, err = _stderr_lines(capsys)
    assert f"D3: {out / 'drizzle_D3.fits'}" in stdout
    assert any("Drizzle3D complete" in ln for ln in err)  # default verbosity shows progress messages
    h = load_cube(out / "drizzle_D3.fits")["header"]
    assert h["KERNEL"] == "bilinear" and h["ZOVRSM"] == 2.0
    assert h["NX"] == 48 and h["NY"] == 39  # width 5' from the YAML, height 4' from the flag
    assert h["NZ"] > 17


def test_run_region_without_frames_fails_clearly(archive, server, tmp_path, capsys):
    rc = main(["-q", "run", "--ra", "10", "--dec", "-40", "--size", "3", "--detector", "3", "--mirror", str(archive),
               "--tap-url", server.tap_url, "--output-dir", str(tmp_path)])
    assert rc == 1
    _, err = _stderr_lines(capsys)
    assert err[-1].startswith("error: no cube was written")
    assert not list(tmp_path.glob("*.fits"))


# ── inspect ───────────────────────────────────────────────────────────────────


def test_inspect(flag_run, tmp_path, capsys):
    out, argv = flag_run
    cube_path = out / "drizzle_D3.fits"
    if not cube_path.exists():
        assert main(["-q"] + argv) == 0
    capsys.readouterr()
    png_dir = tmp_path / "pngs"
    cube = load_cube(cube_path)
    ra, dec = pixel_to_world(cube, 20.2, 30.9)  # --at rounds to the nearest pixel
    assert main(["inspect", str(cube_path), "--wavelength", "2.0", "--at", repr(ra), repr(dec),
                 "--png-dir", str(png_dir)]) == 0
    stdout = capsys.readouterr().out
    wl = cube["wavelength"]
    k = int(np.flatnonzero((wl["LAMBDA_MIN"] <= 2.0) & (wl["LAMBDA_MAX"] >= 2.0))[0])
    for needle in ("17 planes x 58 x 58", "N_INPUTS 5", "COUNT > 0", "zodi scales", "1.6360-2.4400 um",
                   'aperture spectrum (r = 18") around pixel (20, 31)', f"plane {k} ="):
        assert needle in stdout, (needle, stdout)
    names = sorted(p.name for p in png_dir.iterdir())
    assert names == ["drizzle_D3_collapsed.png", f"drizzle_D3_plane{k}.png", "drizzle_D3_spectrum.png"]
    for name in names:
        img = mpimg.imread(png_dir / name)
        assert img.ndim == 3 and img[..., :3].std() > 0.05
    # --pixel and --plane; --no-png writes nothing
    assert main(["-q", "inspect", str(cube_path), "--pixel", "3", "4", "--plane", "0", "--aperture", "0",
                 "--png-dir", str(tmp_path / "p2")]) == 0
    assert (tmp_path / "p2" / "drizzle_D3_plane0.png").is_file()
    assert "spectrum at pixel (3, 4)" in capsys.readouterr().out
    assert main(["inspect", str(cube_path), "--no-png", "--png-dir", str(tmp_path / "none")]) == 0
    assert not (tmp_path / "none").exists()
    # positions/planes outside the cube: one clear line, exit 1
    for extra, needle in [(["--pixel", "58", "0"], "outside the image"), (["--plane", "17"], "outside 0..16"),
                          (["--at", "10", "10"], "outside the 58 x 58 image"),
                          (["--wavelength", "3.5"], "outside the cube's range")]:
        capsys.readouterr()
        assert main(["inspect", str(cube_path), "--png-dir", str(tmp_path / "bad")] + extra) == 1
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (extra, err)


# ── simulate ──────────────────────────────────────────────────────────────────


def test_simulate_wrote_archive_and_hint(archive, tmp_path, capsys):
    from spxquery.drizzle3d.simulate import load_index

    rows = load_index(archive)
    assert len(rows) == N_POINTINGS and all(r["energy_bandpassname"] == "SPHEREx-D3" for r in rows)
    files = sorted(archive.rglob("*.fits"))
    assert len(files) == N_POINTINGS and all(f.stat().st_size < 2_000_000 for f in files)  # cutouts
    # refuses a non-empty directory; prints a runnable hint otherwise
    assert main(["simulate", str(archive), "--n-pointings", "1"]) == 1
    assert "not empty" in capsys.readouterr().err
    root = tmp_path / "one"
    assert main(["-q", "simulate", str(root), "--n-pointings", "1", "--ra", "10", "--dec", "-30",
                 "--release", "qr3"]) == 0
    out = capsys.readouterr().out
    assert f"spxdrizzle serve {root} --port 8765" in out
    assert f"spxdrizzle run --ra 10 --dec -30 --size 8 --detector 3 --mirror {root}" in out
    assert "--tap-url http://127.0.0.1:8765/TAP" in out
    assert list(root.glob("qr3/level2/*/*/3/*.fits"))


# ── demo ──────────────────────────────────────────────────────────────────────


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    t0 = time.perf_counter()
    assert main(["demo", "--output-dir", str(out), "--n-pointings", "6", "--keep"]) == 0
    elapsed = time.perf_counter() - t0
    assert elapsed < 40, elapsed
    stdout = capsys.readouterr().out
    cube_path = out / "drizzle_D3.fits"
    pngs = [out / f"drizzle_D3_{s}.png" for s in ("collapsed", "spectrum", "spectrum_ext0")]
    for p in [cube_path] + pngs:
        assert p.is_file() and str(p) in stdout, p
    assert len(list(out.glob("drizzle_D3_plane*.png"))) == 1
    assert "What you are looking at" in stdout and "ps3" in stdout and "ext0" in stdout
    cube = load_cube(cube_path)
    assert cube["header"]["N_INPUTS"] == 6
    # the frames were rendered at the product's wavelengths, and the cube used them
    assert cube["header"]["WAVESRC"] == "SPECTRAL_WCS"
    assert "wavelengths from the spectral-WCS calibration product spectral_wcs_D3_spx_" in " ".join(stdout.split())
    # the brightest spot of the collapsed image is the brightest simulated source (ps3)
    sky, _ = load_truth(out / "archive")
    ps3 = next(s for s in sky.point_sources if s.name == "ps3")
    sx, sy = world_to_pixel(cube, ps3.ra, ps3.dec)
    bx, by = brightest_source(cube)
    assert np.hypot(bx - sx, by - sy) <= 1.5
    assert f"brightest source, circled at pixel ({bx}, {by}), is ps3" in " ".join(stdout.split())
    for p in pngs:
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 200 and img[..., :3].std() > 0.05
    # without --keep the simulated archive is removed; rerunning overwrites the cube
    assert main(["-q", "demo", "--output-dir", str(out), "--n-pointings", "2"]) == 0
    assert not (out / "archive").exists()
    assert load_cube(cube_path)["header"]["N_INPUTS"] == 2


def test_demo_refuses_foreign_archive_dir(tmp_path, capsys):
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "precious.txt").write_text("keep me")
    assert main(["demo", "--output-dir", str(tmp_path)]) == 1
    assert "not a simulated archive" in capsys.readouterr().err
    assert (tmp_path / "archive" / "precious.txt").read_text() == "keep me"


# ── python -m entry, serve, interrupts ─────────────────────────────────────────


def _read_line_with(proc, needle, timeout=30.0):
    t_end = time.time() + timeout
    lines = []
    while time.time() < t_end:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return line, lines
    raise AssertionError(f"{needle!r} not printed; got {lines!r}")


def test_python_m_serve_until_interrupt(archive):
    proc = subprocess.Popen([sys.executable, "-m", "spxquery.drizzle3d", "serve", str(archive), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        line, _ = _read_line_with(proc, "TAP URL:")
        tap_url = line.split("TAP URL:")[1].strip()
        assert tap_url.startswith("http://127.0.0.1:") and tap_url.endswith("/TAP")
        r = requests.get(tap_url + "/sync", params={"REQUEST": "doQuery", "LANG": "ADQL",
                                                    "QUERY": build_adql(RA0, DEC0, 0.05, 3)}, timeout=10)
        assert r.status_code == 200 and r.text.count("ivo://irsa.ipac/spherex_qr2") == N_POINTINGS
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_python_m_interrupted_simulation_exits_130(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "spxquery.drizzle3d", "simulate", str(tmp_path / "f"),
                             "--n-pointings", "200"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    try:
        t_end = time.time() + 30
        while time.time() < t_end and not list((tmp_path / "f").rglob("*.fits")):
            time.sleep(0.2)
        assert list((tmp_path / "f").rglob("*.fits")), "simulation did not start"
        proc.send_signal(signal.SIGINT)
        # The interrupt is handled when the main thread next runs Python code, which on a
        # loaded machine can be a while into the current frame: generous timeout; the
        # pipes are drained while waiting.
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 130
        assert "interrupted" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_python_m_usage_error_exit_code():
    r = subprocess.run([sys.executable, "-m", "spxquery.drizzle3d", "run", "--detector", "7"], capture_output=True,
                       text=True, env=_env(), timeout=60)
    assert r.returncode == 2
    assert "argument --detector: must be an integer 0 (all six) or 1-6, got 7" in r.stderr
    assert "Traceback" not in r.stderr


def test_demo_keeps_the_truth_beside_the_cube(tmp_path, capsys):
    """Regression: the demo's message pointed at archive/truth.json, which is deleted
    without --keep. The truth now stays beside the cube."""
    from spxquery.drizzle3d.cli import main

    out = tmp_path / "demo"
    assert main(["-q", "demo", "--output-dir", str(out), "--n-pointings", "4"]) == 0
    text = capsys.readouterr().out
    truth = out / "truth.json"
    assert truth.is_file() and not (out / "archive").exists()
    assert str(truth) in text
