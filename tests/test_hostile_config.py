"""Hostile-input corpus, configuration and output side (issue 16, classes 4, 6, 7): values that
overflow or that later stages would reject under internal names, hostile YAML/JSON files
(alias bombs, deep nesting, wrong encodings, FIFOs, devices), output directories that cannot
take a cube, runs too big for the machine, mirror trees with no files where frames should be,
through the public API and the ``spxdrizzle`` command line. Every case is bounded in time and
asserts a clear error naming the file, field or value, raised before the first archive query
(the loopback server records none), or the bad item skipped and counted, the run going on."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hostile_support import bounded, no_partial_under_final_name, run_cli, small_archive
from spxquery.drizzle3d import Drizzle3DConfig, drizzle
from spxquery.drizzle3d import preflight as preflight_mod
from spxquery.drizzle3d.cubefile import load_cube
from spxquery.drizzle3d.preflight import OutputExistsError, RunBudgetError
from spxquery.drizzle3d.testing import ArchiveServer, load_index

pytestmark = pytest.mark.hostile

RA, DEC = 10.0, 0.0
BASE = {"center_ra": RA, "center_dec": DEC, "width": 4.0, "height": 4.0, "detector": 3}
#: The alias bomb of the campaign: 421 bytes, a billion strings once expanded.
ALIAS_BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
              + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n"
                        for i in range(8))
              + "center_ra: *i\ncenter_dec: 0\nwidth: 4\nheight: 4\n")


def _cfg(**kw):
    return Drizzle3DConfig(**{**BASE, **kw})


# ── values: overflow and later-stage limits are ValueErrors naming the field ─────────────────

VALUE_CASES = {
    "width_1e308": ({"width": 1e308}, "width"),
    "height_inf": ({"height": float("inf")}, "height"),
    "width_nan": ({"width": float("nan")}, "width"),
    "xy_oversample_1e308": ({"xy_oversample": 1e308}, "xy_oversample"),
    "z_oversample_1e308": ({"z_oversample": 1e308}, "z_oversample"),
    "download_timeout_1e308": ({"download_timeout": 1e308}, "download_timeout"),
    "download_deadline_zero": ({"download_deadline": 0.0}, "download_deadline"),
    "download_retries_1e9": ({"download_retries": 10**9}, "download_retries"),
    "download_workers_1e6": ({"download_workers": 10**6}, "download_workers"),
    "cutout_margin_1e9": ({"cutout_margin_arcmin": 1e9}, "cutout_margin_arcmin"),
    "cutout_wider_than_180_deg": ({"width": 10799.0, "height": 10799.0, "use_cutouts": True}, "cutout_margin_arcmin"),
    "mjd_range_1e300": ({"mjd_range": (0.0, 1e300)}, "mjd_range"),
    "mjd_range_negative": ({"mjd_range": (-5.0, 10.0)}, "mjd_range"),
    "ra_huge_string": ({"center_ra": "x" * 10_000_000}, "center_ra"),
    "flags_huge_list": ({"exclude_flags": ["NOPE"] * 100_000}, "exclude_flags"),
    "edges_huge_garbage": ({"z_lambda_edges": ["a"] * 100_000}, "z_lambda_edges"),
}


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_bad_value_is_a_bounded_valueerror_naming_the_field(case):
    kw, field = VALUE_CASES[case]
    with bounded(10), pytest.raises(ValueError) as err:
        _cfg(**kw)
    assert type(err.value) is ValueError and field in str(err.value) and len(str(err.value)) < 1500


def test_output_grid_too_big_for_a_pixel_index_is_refused_early():
    """The widest grid allowed still has pixel counts that fit easily in 64 bits."""
    cfg = _cfg(width=10799.0, height=10799.0, xy_oversample=100.0)
    assert cfg.output_nx() * cfg.output_ny() * 1000 < 2**63


# ── files: hostile YAML and JSON name the file, in bounded time and size ──────────────────────


def _yaml_case(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / f"{kind}.yaml"
    if kind == "alias_bomb":
        p.write_text(ALIAS_BOMB)
    elif kind == "deep_nesting":
        p.write_bytes(b"center_ra: " + b"[" * 200_000 + b"]" * 200_000 + b"\n")
    elif kind == "deep_mapping":
        p.write_text("center_ra: 1\n" + "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "x: 1\n")
    elif kind == "latin1":
        p.write_bytes("center_ra: 10  # caf\xe9\n".encode("latin-1"))
    elif kind == "png_bytes":
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    elif kind == "utf16":
        p.write_bytes("center_ra: 10\n".encode("utf-16"))
    elif kind == "huge":
        p.write_bytes(b"# padding\n" * 200_000)
    elif kind == "python_tag":
        p.write_text("center_ra: !!python/object/apply:os.system ['true']\n")
    elif kind == "many_unknown_keys":
        p.write_text("".join(f"key_{i}: {i}\n" for i in range(20_000)))
    elif kind == "scalar":
        p.write_text("just a string\n")
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "directory":
        p.mkdir()
    elif kind == "dev_zero":
        p.symlink_to("/dev/zero")
    return p


YAML_CASES = {
    "alias_bomb": (ValueError, "alias bomb"),
    "deep_nesting": (ValueError, "nested deeper"),
    "deep_mapping": (ValueError, "nested deeper"),
    "latin1": (ValueError, "not UTF-8 text (byte 0xe9"),
    "png_bytes": (ValueError, "not UTF-8 text (byte 0x89 at offset 0)"),
    "utf16": (ValueError, "not UTF-8"),
    "huge": (ValueError, "larger than"),
    "python_tag": (ValueError, "invalid YAML"),
    "many_unknown_keys": (ValueError, "unknown config key"),
    "scalar": (ValueError, "expected a YAML mapping"),
    "fifo": (FileNotFoundError, "FIFO"),
    "directory": (FileNotFoundError, "is a directory"),
    "dev_zero": (FileNotFoundError, "character device (a symbolic link to /dev/zero)"),
}


@pytest.mark.parametrize("kind", sorted(YAML_CASES))
def test_hostile_yaml_names_the_file(tmp_path, kind):
    path = _yaml_case(tmp_path, kind)
    exc_type, words = YAML_CASES[kind]
    with bounded(10), pytest.raises(exc_type) as err:
        Drizzle3DConfig.from_yaml_file(path)
    text = str(err.value)
    assert str(path) in text and words in text and len(text) < 2000


def test_deeply_nested_json_is_a_valueerror():
    with bounded(10), pytest.raises(ValueError, match="nested too deeply"):
        Drizzle3DConfig.from_json("[" * 200_000 + "]" * 200_000)


# ── the run: outputs, budgets and inputs checked before the first query ───────────────────────


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return small_archive(tmp_path_factory.mktemp("hostile_cfg_archive"), RA, DEC, 0.005)


def _run_cfg(srv, out, **kw):
    base = {**BASE, "tap_url": srv.tap_url, "output_dir": out, "progress": False, "download_retries": 0,
            "download_timeout": 5.0, "use_cutouts": False, "subtract_zodi": False}
    base.update(kw)
    return Drizzle3DConfig(**base)


def _blocked_output(tmp_path: Path, kind: str) -> Path:
    if kind == "output_dir_is_a_file":
        p = tmp_path / "out"
        p.write_text("x")
        return p
    if kind == "output_dir_under_a_file":
        (tmp_path / "file").write_text("x")
        return tmp_path / "file" / "out"
    if kind == "cube_path_is_a_directory":
        (tmp_path / "out" / "drizzle_D3.fits").mkdir(parents=True)
        return tmp_path / "out"
    if kind == "output_dir_not_writable":
        return Path("/sys/kernel")  # root ignores permission bits; sysfs refuses new files
    raise AssertionError(kind)


OUTPUT_CASES = {
    "output_dir_is_a_file": (NotADirectoryError, "is a file, not a directory"),
    "output_dir_under_a_file": (OSError, "cannot be created"),
    "cube_path_is_a_directory": (IsADirectoryError, "is a directory, not a cube file"),
    "output_dir_not_writable": (OSError, "is not writable"),
}


@pytest.mark.parametrize("kind", sorted(OUTPUT_CASES))
def test_unusable_output_is_named_before_any_query(archive, tmp_path, kind):
    root, _ = archive
    out = _blocked_output(tmp_path, kind)
    exc_type, words = OUTPUT_CASES[kind]
    with ArchiveServer(root) as srv, bounded(15):
        with pytest.raises(exc_type) as err:
            drizzle(_run_cfg(srv, out))
        assert srv.requests == []
    assert "output" in str(err.value) and words in str(err.value) and not isinstance(err.value, OutputExistsError)


def test_existing_cube_is_the_one_overwrite_case(archive, tmp_path):
    root, _ = archive
    (tmp_path / "drizzle_D3.fits").write_bytes(b"old")
    with ArchiveServer(root) as srv, bounded(15):
        with pytest.raises(OutputExistsError, match="drizzle_D3.fits"):
            drizzle(_run_cfg(srv, tmp_path))
        assert srv.requests == []


def test_accumulators_bigger_than_memory_are_refused_before_any_query(archive, tmp_path, monkeypatch):
    """width=1e4 arcmin: ~97,500^2 pixels x 17 planes; the campaign's 1.2 TiB MemoryError after the query.
    A cube beyond the memory is drizzled in tiles (issue 20): refused when not even the smallest
    tiles fit (256 MiB here, below the headroom)."""
    root, _ = archive
    monkeypatch.setattr(preflight_mod, "available_memory", lambda: 256 << 20)
    with ArchiveServer(root) as srv, bounded(15):
        with pytest.raises(RunBudgetError) as err:
            drizzle(_run_cfg(srv, tmp_path / "out", width=1e4, height=1e4))
        assert srv.requests == []
    text = str(err.value)
    assert "TiB" in text or "GiB" in text
    assert "accumulators" in text and "smaller region" in text and "xy_oversample" in text and "tile" in text


def test_budget_counts_the_largest_cube_against_the_memory_given():
    cfg = _cfg(width=60.0, height=60.0, xy_oversample=2.0, detector=0)
    shapes = preflight_mod.cube_shapes(cfg, (1, 2, 3, 4, 5, 6))
    need = max(n * y * x for _, n, y, x in shapes) * preflight_mod.ACCUMULATOR_BYTES_PER_VOXEL
    room = need + preflight_mod.MEMORY_HEADROOM
    preflight_mod.check_budget(cfg, (1, 2, 3, 4, 5, 6), memory=room, disk=1 << 40)  # just fits
    preflight_mod.check_budget(cfg, (1, 2, 3, 4, 5, 6), memory=room - 1, disk=1 << 40)  # drizzled in tiles
    with pytest.raises(RunBudgetError, match="more than the"):  # tiles as large as the cube do not fit
        preflight_mod.check_budget(cfg.replace(tile_arcmin=60.0), (1, 2, 3, 4, 5, 6), memory=room - 1,
                                   disk=1 << 40)


def test_cubes_bigger_than_the_free_disk_are_refused(archive, tmp_path, monkeypatch):
    root, _ = archive
    monkeypatch.setattr(preflight_mod, "free_disk", lambda path: 1000)  # a full disk is not made on demand here
    with ArchiveServer(root) as srv, bounded(15):
        with pytest.raises(RunBudgetError, match="output_dir .* which has"):
            drizzle(_run_cfg(srv, tmp_path / "out"))
        assert srv.requests == []


@pytest.mark.parametrize("kind", ["file", "fifo", "missing"])
def test_mirror_root_that_is_no_directory_is_named_before_any_query(archive, tmp_path, kind):
    root, _ = archive
    mirror = tmp_path / "mirror"
    if kind == "file":
        mirror.write_text("x")
    elif kind == "fifo":
        os.mkfifo(mirror)
    with ArchiveServer(root) as srv, bounded(15):
        with pytest.raises(OSError) as err:
            drizzle(_run_cfg(srv, tmp_path / "out", data_mirror=mirror))
        assert srv.requests == []
    assert "data_mirror" in str(err.value) and {"file": "is a file", "fifo": "FIFO",
                                                "missing": "does not exist"}[kind] in str(err.value)


@pytest.fixture(scope="module")
def sim_field(tmp_path_factory):
    sim = pytest.importorskip("spxquery.drizzle3d.simulate.field")
    root = tmp_path_factory.mktemp("hostile_field")
    sim.simulate_field(root, 150.0, 2.0, detectors=(3,), n_pointings=4, cutout_size_deg=0.2, psf_size=21,
                       psf_zones=3)
    return root


def test_mirror_with_a_fifo_and_dev_zero_for_frames_goes_on_without_them(sim_field, tmp_path):
    """Through drizzle(): two of four mirror files are a FIFO and a link to /dev/zero. Both are
    reported and left out, never opened; the cube is the cube of the two good frames."""
    mirror = tmp_path / "mirror"
    rows = load_index(sim_field)
    for r in rows:
        dst = mirror / r["uri"][len("ibe/data/spherex/"):]
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes((sim_field / r["uri"][len("ibe/data/spherex/"):]).read_bytes())
    cfg = {"center_ra": 150.0, "center_dec": 2.0, "width": 4.0, "height": 4.0, "detector": 3, "progress": False,
           "use_cutouts": False, "data_mirror": mirror}
    with ArchiveServer(sim_field) as srv, bounded(120):
        srv.rows = [rows[0], rows[3]]
        good = drizzle(Drizzle3DConfig(**cfg, tap_url=srv.tap_url, output_dir=tmp_path / "clean"))
        srv.rows = rows
        for r, how in ((rows[1], "fifo"), (rows[2], "dev_zero")):
            bad = mirror / r["uri"][len("ibe/data/spherex/"):]
            bad.unlink()
            os.mkfifo(bad) if how == "fifo" else bad.symlink_to("/dev/zero")
        got = drizzle(Drizzle3DConfig(**cfg, tap_url=srv.tap_url, output_dir=tmp_path / "out"))
    a, b = load_cube(good[3]), load_cube(got[3])
    assert b["header"]["N_INPUTS"] == a["header"]["N_INPUTS"] == 2
    np.testing.assert_array_equal(a["sci"], b["sci"])
    assert not no_partial_under_final_name(tmp_path / "out")


# ── the command line: one error line whose advice follows the cause ──────────────────────────


CLI_CASES = {
    "alias_bomb": ("alias_bomb", [], "alias bomb"),
    "deep_nesting": ("deep_nesting", [], "nested deeper"),
    "latin1": ("latin1", [], "not UTF-8"),
    "fifo": ("fifo", [], "FIFO"),
    "dev_zero": ("dev_zero", [], "character device"),
    "alias_bomb_with_options": ("alias_bomb", ["--ra", "10"], "alias bomb"),
    "deep_nesting_with_options": ("deep_nesting", ["--dec", "1"], "nested deeper"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_hostile_config_file(tmp_path, case):
    kind, extra, words = CLI_CASES[case]
    path = _yaml_case(tmp_path, kind)
    res = run_cli("run", str(path), *extra, timeout=60)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and lines[-1].startswith("error: ") and words in lines[-1] and str(path) in lines[-1]
    assert "Traceback" not in res.stderr and len(res.stderr) < 3000


def _cli_run(srv, out, *extra):
    return run_cli("run", "--ra", str(RA), "--dec", str(DEC), "--size", "4", "--detector", "3", "--tap-url",
                   srv.tap_url, "--output-dir", str(out), "-q", *extra, timeout=120)


def test_cli_output_dir_that_is_a_file_gets_no_overwrite_advice(archive, tmp_path):
    root, _ = archive
    out = tmp_path / "out"
    out.write_text("x")
    with ArchiveServer(root) as srv:
        res = _cli_run(srv, out)
        assert srv.requests == []
    assert res.returncode == 1 and "is a file, not a directory" in res.stderr and "--overwrite" not in res.stderr


def test_cli_existing_cube_gets_the_overwrite_advice(archive, tmp_path):
    root, _ = archive
    (tmp_path / "drizzle_D3.fits").write_bytes(b"old")
    with ArchiveServer(root) as srv:
        res = _cli_run(srv, tmp_path)
        assert srv.requests == []
    assert res.returncode == 1 and "--overwrite" in res.stderr


def test_cli_too_big_a_run_says_how_big_and_what_to_do(archive, tmp_path):
    root, _ = archive
    with ArchiveServer(root) as srv:
        res = run_cli("run", "--ra", "10", "--dec", "0", "--size", "10000", "--tap-url", srv.tap_url,
                      "--output-dir", str(tmp_path / "out"), "-q", timeout=120)
        assert srv.requests == []
    # Beyond the memory it would be tiled (issue 20); ~18,000 GiB of cube files do not fit on the disk.
    assert res.returncode == 1 and "cube file(s) need" in res.stderr and "smaller region" in res.stderr
    assert "MemoryError" not in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("argv,words", [
    (["--size", "1e308"], "--size"),
    (["--size", "nan"], "--size"),
    (["--xy-oversample", "1e308"], "--xy-oversample"),
    (["--mjd-range", "0", "1e300"], "mjd_range"),
])
def test_cli_overflowing_options(tmp_path, argv, words):
    base = ["run", "--ra", "10", "--dec", "0", "--size", "4", "--output-dir", str(tmp_path / "o")]
    res = run_cli(*base, *argv, timeout=60)
    assert res.returncode in (1, 2) and words in res.stderr and "Traceback" not in res.stderr
    assert "OverflowError" not in res.stderr
