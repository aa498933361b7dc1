"""Tiled cubes (issue 20): a tiled run gives the one-piece cube bit for bit, in this process and
on a real dask LocalCluster (worker processes), with a worker killed mid-run, and when resumed."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from spxquery.drizzle3d import Drizzle3DConfig
from spxquery.drizzle3d.assemble import assemble_from_manifest
from spxquery.drizzle3d.cli.main import main as cli_main
from spxquery.drizzle3d.flags import RECOMMENDED_EXCLUDE_FLAGS
from spxquery.drizzle3d.grid import build_output_wcs
from spxquery.drizzle3d.pipeline import drizzle_detector, drizzle_tiled
from spxquery.drizzle3d.preflight import RunBudgetError, check_budget
from spxquery.drizzle3d.simulate import simulate_field
from spxquery.drizzle3d.tiling import auto_tile_arcmin, tile_plan, tiles_dir

RA, DEC = 150.0, 2.0
EXTS = ("SCI", "VARIANCE", "AND_MASK", "OR_MASK", "COUNT")


@pytest.fixture(scope="module")
def cutout_field(tmp_path_factory):
    return simulate_field(tmp_path_factory.mktemp("cutouts"), RA, DEC, detectors=(3,), n_pointings=5, release="qr2",
                          seed=12, cutout_size_deg=0.2)


@pytest.fixture(scope="module")
def cutouts(cutout_field):
    return list(cutout_field.paths)


@pytest.fixture(scope="module")
def full_frames(tmp_path_factory):
    info = simulate_field(tmp_path_factory.mktemp("full"), RA, DEC, detectors=(3,), n_pointings=2, release="qr3",
                          seed=11)
    return list(info.paths)


def _config(out: Path, **kw) -> Drizzle3DConfig:
    base = dict(center_ra=RA, center_dec=DEC, width=8.0, height=7.0, detector=3, output_dir=out, progress=False,
                exclude_flags=list(RECOMMENDED_EXCLUDE_FLAGS))
    base.update(kw)
    return Drizzle3DConfig(**base)


def _one_piece(paths, out: Path, **kw) -> Path:
    config = _config(out, **kw)
    path = drizzle_detector(paths, config, 3, build_output_wcs(config))
    assert path is not None
    return path


def assert_same_cube(a: Path, b: Path) -> None:
    """SCI, VARIANCE, masks, COUNT and WAVELENGTH bit for bit, and the inputs' bookkeeping."""
    with fits.open(a) as ha, fits.open(b) as hb:
        for ext in EXTS:
            da, db = ha[ext].data, hb[ext].data
            assert da.dtype == db.dtype and da.shape == db.shape, ext
            assert da.tobytes() == db.tobytes(), f"{ext} differs"
        assert ha["WAVELENGTH"].data.tobytes() == hb["WAVELENGTH"].data.tobytes()
        pa, pb = ha[0].header, hb[0].header
        keys = ["N_INPUTS", "N_REJECT", "N_EMPTY", "NFRAMLOG", "NX", "NY", "NZ"]
        keys += [k for k in pa if k.startswith(("INF", "ZSC"))]
        assert {k: pa[k] for k in keys} == {k: pb.get(k) for k in keys}
        assert [h.name for h in ha] == [h.name for h in hb]


def test_tile_plan_covers_the_grid_once():
    tiles = tile_plan((70, 66), 25)
    seen = np.zeros((70, 66), dtype=int)
    for t in tiles:
        seen[t.y0:t.y1, t.x0:t.x1] += 1
    assert (seen == 1).all() and len(tiles) == 9 and tiles[-1].shape == (20, 16)


@pytest.mark.parametrize("tile_arcmin", [2.6, 4.5])
def test_tiled_in_process_equals_one_piece(cutouts, tmp_path, tile_arcmin):
    whole = _one_piece(cutouts, tmp_path / "whole")
    config = _config(tmp_path / "tiled", tile_arcmin=tile_arcmin)
    tiled = drizzle_tiled(cutouts, config, 3, tile_arcmin)
    assert tiled is not None
    assert_same_cube(whole, tiled)
    manifest = json.loads((tiles_dir(config, 3) / "manifest.json").read_text())
    assert len(manifest["tiles"]) == len(tile_plan((config.output_ny(), config.output_nx()),
                                                   round(tile_arcmin * 60 / 6.15)))
    # The cube again from the manifest alone: the API and the command line.
    again = assemble_from_manifest(tiles_dir(config, 3) / "manifest.json", tmp_path / "again.fits")
    assert again is not None
    assert_same_cube(whole, again)
    assert cli_main(["assemble", str(tiles_dir(config, 3)), "-o", str(again), "-q"]) == 1  # exists
    assert cli_main(["assemble", str(tiles_dir(config, 3)), "-o", str(again), "--overwrite", "-q"]) == 0
    assert_same_cube(whole, again)


def test_tiled_full_frames_read_in_strips_equal_one_piece(full_frames, tmp_path):
    """Frames whose crops are read in strips of rows (crop origins and strips differ per tile)."""
    kw = dict(width=60.0, height=50.0, xy_oversample=0.5, kernel="bilinear")
    whole = _one_piece(full_frames, tmp_path / "whole", **kw)
    tiled = drizzle_tiled(full_frames, _config(tmp_path / "tiled", **kw), 3, 17.0)
    assert tiled is not None
    assert_same_cube(whole, tiled)


def test_budget_tiles_automatically_and_refuses_tiles_too_large(caplog):
    config = _config(Path("unused"), width=60.0, height=60.0)
    nz, ny, nx = 17, config.output_ny(), config.output_nx()
    need = nz * ny * nx * 36
    room = need + (512 << 20)
    assert auto_tile_arcmin(config, (3,), memory=room) is None
    side = auto_tile_arcmin(config, (3,), memory=room - 1)
    assert side is not None and side < config.width
    with caplog.at_level(logging.INFO):
        check_budget(config, (3,), memory=room - 1, disk=1 << 40)
    assert "tiles" in caplog.text
    with pytest.raises(RunBudgetError, match="tile_arcmin"):
        check_budget(config.replace(tile_arcmin=60.0), (3,), memory=room - 1, disk=1 << 40)


def test_covariance_is_never_tiled(caplog):
    """Cross terms of pairs across a tile edge are not assembled: covariance with tile_arcmin is a
    ValueError naming both settings, automatic tiling stays off with covariance, and a covariance
    cube beyond the memory is refused by the budget instead of being tiled."""
    with pytest.raises(ValueError, match=r"covariance=True cannot be drizzled in tiles \(tile_arcmin=2\)"):
        _config(Path("unused"), covariance=True, tile_arcmin=2.0)
    with pytest.raises(ValueError, match="tile_arcmin"):
        _config(Path("unused"), tile_arcmin=2.0).replace(covariance=True)
    config = _config(Path("unused"), width=60.0, height=60.0, covariance=True)
    plain = config.replace(covariance=False)
    tiny = 17 * plain.output_ny() * plain.output_nx() * 36 + (512 << 20) - 1  # one byte short for the plain cube
    assert auto_tile_arcmin(plain, (3,), memory=tiny) is not None
    assert auto_tile_arcmin(config, (3,), memory=tiny) is None
    check_budget(plain, (3,), memory=tiny, disk=1 << 50)
    with pytest.raises(RunBudgetError, match="covariance is never tiled"):
        check_budget(config, (3,), memory=tiny, disk=1 << 50)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_local_cluster_equals_one_piece(cutouts, tmp_path, workers):
    whole = _one_piece(cutouts, tmp_path / "whole")
    for tile_arcmin in (2.6, 4.5):
        config = _config(tmp_path / f"tiled{tile_arcmin}", tile_arcmin=tile_arcmin, scheduler=f"local:{workers}")
        tiled = drizzle_tiled(cutouts, config, 3, tile_arcmin)
        assert tiled is not None
        assert_same_cube(whole, tiled)


def _worker_pids(client) -> dict:
    return client.run(os.getpid)


@pytest.mark.slow
def test_worker_killed_mid_tile_is_retried_with_the_same_bytes(full_frames, tmp_path):
    """A worker process is SIGKILLed while it drizzles a tile; dask runs the tile again elsewhere."""
    from distributed import Client, LocalCluster

    kw = dict(width=40.0, height=40.0, xy_oversample=0.5)
    whole = _one_piece(full_frames, tmp_path / "whole", **kw)
    killed = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        pids = _worker_pids(client)

        def kill_one_busy_worker() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not killed:
                busy = [w for w, tasks in client.processing().items() if tasks]
                if busy and busy[0] in pids:
                    time.sleep(0.3)  # inside the tile
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    killed.append(busy[0])
                time.sleep(0.05)

        killer = threading.Thread(target=kill_one_busy_worker, daemon=True)
        killer.start()
        config = _config(tmp_path / "tiled", tile_arcmin=20.0, scheduler=cluster.scheduler_address, **kw)
        tiled = drizzle_tiled(full_frames, config, 3, 20.0)
        killer.join(5)
    assert killed, "no worker was killed: the test did not exercise the retry"
    assert tiled is not None
    assert_same_cube(whole, tiled)


def test_interrupted_run_resumes_only_the_missing_tiles(cutouts, tmp_path):
    whole = _one_piece(cutouts, tmp_path / "whole")
    config = _config(tmp_path / "tiled", tile_arcmin=3.1)
    assert drizzle_tiled(cutouts, config, 3, 3.1) is not None
    out = tmp_path / "tiled" / "drizzle_D3.fits"
    pieces = sorted(tiles_dir(config, 3).glob("tile_*.fits"))
    assert len(pieces) >= 4
    # "Interrupt": the cube and two tiles never got written (the second one's record is missing).
    out.unlink()
    pieces[1].unlink()
    pieces[-1].with_suffix(".json").unlink()
    mtimes = {p: p.stat().st_mtime_ns for p in pieces if p.exists()}
    tiled = drizzle_tiled(cutouts, config, 3, 3.1)
    assert tiled is not None
    assert_same_cube(whole, tiled)
    redone = [p for p in pieces if not (p in mtimes and p.stat().st_mtime_ns == mtimes[p])]
    assert redone == [pieces[1], pieces[-1]]
    # Another configuration (other frames) recomputes everything; overwrite restarts.
    fewer = drizzle_tiled(cutouts[:-1], config.replace(overwrite=True), 3, 3.1)
    assert fewer is not None
    assert all(p.stat().st_mtime_ns != mtimes.get(p) for p in pieces)


def test_drizzle_with_tile_arcmin_gives_the_one_piece_cube(cutout_field, tmp_path, caplog):
    """The whole pipeline (query, mirror, drizzle) with tile_arcmin: the same cube file content;
    the tiles are offered the frames by the query's footprints."""
    from spxquery.drizzle3d.pipeline import drizzle
    from spxquery.drizzle3d.testing.archive_server import ArchiveServer

    with ArchiveServer(cutout_field.root) as srv:
        kw = dict(tap_url=srv.tap_url, data_mirror=cutout_field.root, use_cutouts=False)
        whole = drizzle(_config(tmp_path / "whole", **kw))[3]
        with caplog.at_level(logging.INFO, logger="spxquery.drizzle3d.pipeline"):
            tiled = drizzle(_config(tmp_path / "tiled", tile_arcmin=4.5, **kw))[3]
    assert "footprints offer 20 frame-tile pairs; 0 of 5 frames meet no tile" in caplog.text
    assert (tmp_path / "tiled" / "tiles_D3" / "manifest.json").is_file()
    assert_same_cube(whole, tiled)


def _records(config) -> list:
    """The tile records of a finished tiled run, in tile order."""
    manifest = json.loads((tiles_dir(config, 3) / "manifest.json").read_text())
    return [json.loads((tiles_dir(config, 3) / name).read_text()) for name in manifest["records"]]


def _block_means(cube_path: Path, factor: int) -> tuple:
    """Inverse-variance weighted means of SCI over planes and factor x factor blocks, from the cube."""
    with fits.open(cube_path) as h:
        sci = h["SCI"].data.astype(np.float64)
        var = h["VARIANCE"].data.astype(np.float64)
    good = np.isfinite(sci) & np.isfinite(var) & (var > 0)
    w = np.where(good, 1.0 / np.where(good, var, 1.0), 0.0)
    num, wsum = (np.where(good, sci, 0.0) * w).sum(axis=0), w.sum(axis=0)
    ny, nx = num.shape
    nby, nbx = -(-ny // factor), -(-nx // factor)
    pad = ((0, nby * factor - ny), (0, nbx * factor - nx))
    num_b = np.pad(num, pad).reshape(nby, factor, nbx, factor).sum(axis=(1, 3))
    w_b = np.pad(wsum, pad).reshape(nby, factor, nbx, factor).sum(axis=(1, 3))
    return np.where(w_b > 0, num_b / np.where(w_b > 0, w_b, 1.0), np.nan), w_b


def test_mosaic_quicklook_is_the_block_means_of_the_cube_with_its_wcs(cutouts, tmp_path):
    from astropy.wcs import WCS

    from spxquery.drizzle3d.mosaiclook import write_mosaic_quicklook

    config = _config(tmp_path / "tiled", tile_arcmin=2.6)
    cube = drizzle_tiled(cutouts, config, 3, 2.6)
    assert cube is not None
    written = tiles_dir(config, 3) / "quicklook_D3.fits"
    assert written.is_file() and written.with_suffix(".png").is_file()  # by the run, at full resolution
    with fits.open(written) as h:
        assert h[0].header["BINNING"] == 1
        expect, _ = _block_means(cube, 1)
        np.testing.assert_allclose(h[0].data, expect, rtol=1e-6, equal_nan=True)
    # Blocks of 4 (25-pixel tiles: blocks straddle tile edges; the last blocks are cut by the grid).
    out = write_mosaic_quicklook(config, 3, _records(config), tmp_path / "ql", max_pixels=20)
    with fits.open(out["fits"]) as h:
        img, weight, header = h[0].data, h["WEIGHT"].data, h[0].header
    factor = header["BINNING"]
    assert factor == 4 and img.shape == (-(-config.output_ny() // 4), -(-config.output_nx() // 4))
    expect, w_expect = _block_means(cube, factor)
    assert np.isfinite(expect).sum() > 0.8 * expect.size
    np.testing.assert_allclose(img, expect, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(weight, w_expect, rtol=1e-6)
    # The binned WCS: quick-look pixel i is centred on cube pixel i * factor + (factor - 1) / 2.
    with fits.open(cube) as h:
        cube_wcs = WCS(h["SCI"].header).celestial
    ql_wcs = WCS(header)
    iy, ix = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    ra_q, dec_q = ql_wcs.wcs_pix2world(ix.ravel(), iy.ravel(), 0)
    centre = (factor - 1) / 2
    ra_c, dec_c = cube_wcs.wcs_pix2world(ix.ravel() * factor + centre, iy.ravel() * factor + centre, 0)
    np.testing.assert_allclose(ra_q, ra_c, rtol=0, atol=1e-9)
    np.testing.assert_allclose(dec_q, dec_c, rtol=0, atol=1e-9)
    # spxdrizzle assemble writes it again from the manifest.
    written.unlink()
    assert cli_main(["assemble", str(tiles_dir(config, 3)), "-o", str(tmp_path / "again.fits"), "-q"]) == 0
    assert written.is_file()


def _index_footprints(field, paths) -> list:
    """The archive index's footprint (poly) of each of ``paths``."""
    rows = json.loads((field.root / "archive_index.json").read_text())["rows"]
    by_path = {(field.root / r["uri"].split("/data/spherex/", 1)[-1]).resolve(): r["poly"] for r in rows}
    return [by_path[Path(p).resolve()] for p in paths]


def test_frames_by_tile_from_footprints():
    from spxquery.drizzle3d.grid import OutputGrid
    from spxquery.drizzle3d.tileselect import frames_by_tile, margin_pixels

    config = _config(Path("unused"), width=30.0, height=30.0)
    grid = OutputGrid.for_detector(config, 3)
    tiles = [t.bounds() for t in tile_plan(grid.shape, 100)]  # 293 x 293 pixels: 3 x 3 tiles
    # A square of pixels 20..60 (x) and 220..240 (y) in the grid: only tile 6 (rows 200:293, columns 0:100).
    xs, ys = np.array([20.0, 60.0, 60.0, 20.0]), np.array([220.0, 220.0, 240.0, 240.0])
    ra, dec = grid.wcs.wcs_pix2world(xs, ys, 0)
    inside = [v for pair in zip(ra, dec) for v in pair]
    # The same square shifted to straddle the edge between tiles 6 and 7 (within the margin of 7).
    ra2, dec2 = grid.wcs.wcs_pix2world(xs + 40.0 - 1.0 + margin_pixels(grid) / 2, ys, 0)
    edge = [v for pair in zip(ra2, dec2) for v in pair]
    far = [RA + 120.0, -DEC, RA + 121.0, -DEC, RA + 121.0, -DEC + 1.0, RA + 120.0, -DEC + 1.0]
    picks = frames_by_tile(grid, tiles, [inside, None, far, edge])
    assert picks == [[1], [1], [1], [1], [1], [1], [0, 1, 3], [1, 3], [1]]


def test_footprints_leave_a_frame_outside_every_tile_unread(cutout_field, cutouts, tmp_path):
    """A broken file whose footprint lies outside the region is never opened (not rejected); the
    same file offered to the tiles without footprints is read and rejected. The cube is the one-piece cube."""
    whole = _one_piece(cutouts, tmp_path / "whole")
    broken = tmp_path / "level2_2025W20_1A_0001_1D3_spx_l2b-v12-2025-164.fits"
    broken.write_bytes(b"SIMPLE  =                    T" + b"\0" * 5000)
    far = [RA + 30.0, DEC, RA + 33.0, DEC, RA + 33.0, DEC + 3.0, RA + 30.0, DEC + 3.0]
    footprints = _index_footprints(cutout_field, cutouts) + [far]
    config = _config(tmp_path / "tiled", tile_arcmin=2.6)
    tiled = drizzle_tiled([*cutouts, broken], config, 3, 2.6, footprints=footprints)
    assert tiled is not None
    assert_same_cube(whole, tiled)
    with fits.open(tiled) as h:
        assert h[0].header["N_REJECT"] == 0
    assert all(r["offered"] == len(cutouts) for r in _records(config))
    # Control: without footprints every tile reads the broken file and rejects it.
    again = drizzle_tiled([*cutouts, broken], config.replace(output_dir=tmp_path / "control"), 3, 2.6)
    assert again is not None
    with fits.open(again) as h:
        assert h[0].header["N_REJECT"] == 1


def test_empty_tiles_write_no_piece_and_assemble_as_empty(cutouts, tmp_path):
    """A region larger than the cutouts: tiles without frames have a record and no piece; the
    assembled cube is the one-piece cube, bit for bit."""
    whole = _one_piece(cutouts, tmp_path / "whole", width=30.0, height=24.0)
    config = _config(tmp_path / "tiled", width=30.0, height=24.0, tile_arcmin=6.0)
    tiled = drizzle_tiled(cutouts, config, 3, 6.0)
    assert tiled is not None
    assert_same_cube(whole, tiled)
    records = _records(config)
    empty = [r for r in records if r["piece"] is None]
    assert empty and len(empty) < len(records)
    assert not any((tiles_dir(config, 3) / f"tile_{r['index']:05d}.fits").exists() for r in empty)
    # A rerun reuses every tile, empty ones included.
    mtimes = {p: p.stat().st_mtime_ns for p in tiles_dir(config, 3).glob("tile_*")}
    tiled.unlink()
    assert drizzle_tiled(cutouts, config, 3, 6.0) is not None
    assert {p: p.stat().st_mtime_ns for p in tiles_dir(config, 3).glob("tile_*")} == mtimes
    assert_same_cube(whole, tiled)


def test_progress_bar_over_tiles_and_frames_and_dashboard_logged(cutouts, tmp_path, monkeypatch, capsys, caplog):
    """One bar over the tiles, its postfix the frames drizzled summed over tiles; the LocalCluster's
    dashboard address in the log."""
    from spxquery.drizzle3d import progress

    monkeypatch.setattr(progress, "watched", lambda: True)
    config = _config(tmp_path / "tiled", tile_arcmin=4.5, progress=True, scheduler="local:1")
    with caplog.at_level(logging.INFO, logger="spxquery.drizzle3d.executor"):
        assert drizzle_tiled(cutouts, config, 3, 4.5) is not None
    records = _records(config)
    n_frames = sum(len(r["frames"]) for r in records)
    assert n_frames > len(cutouts)  # frames counted once per tile they land in
    err = capsys.readouterr().err
    final = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("D3 tiles")][-1]
    assert f"{len(records)}/{len(records)}" in final and f"{n_frames} frames drizzled" in final
    assert "dashboard http" in caplog.text
