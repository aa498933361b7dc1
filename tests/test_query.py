"""TAP query (pyvo unchanged) against the loopback archive server: INTERSECTS
semantics, detector/mjd/product filters, newest-version de-duplication,
retries, async fallback, max_images, validated ADQL, cutout rule; and the
pipeline end to end on simulator files in download, cutout and mirror modes."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import pyvo

from spxquery.drizzle3d.archive import retry
from spxquery.drizzle3d.archive.adql import build_adql
from spxquery.drizzle3d.archive.locations import cutout_size_deg, data_base_url
from spxquery.drizzle3d.archive.observations import deduplicate_newest, parse_version
from spxquery.drizzle3d.archive.search import SEARCH_MARGIN_DEG, spread_in_time
from spxquery.drizzle3d.archive.tap import ArchiveQueryError, run_tap_query
from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.query import DrizzleObservation, query_observations, resolve_cutout
from spxquery.drizzle3d.testing import ArchiveServer, Fault, write_index, write_small_frame

RA, DEC = 10.0, 0.0


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Region: 6' x 6' at (10, 0); search radius = half-diagonal + margin ~ 0.074 deg."""
    root = tmp_path_factory.mktemp("qarch")

    def w(*a, **k):
        return write_small_frame(root, *a, **k)

    rows = {
        "A_old": w("2025W18_2B_0001_1", 3, ra=RA, dec=DEC, mjd=60800.0, version=12, date="2025-164"),
        "A_new": w("2025W18_2B_0001_1", 3, ra=RA, dec=DEC, mjd=60800.0, version=13, date="2025-200"),
        # only its west edge (ra 10.04) reaches into the region; the region centre is outside it
        "B_edge": w("2025W18_2B_0002_1", 3, ra=RA + 0.09, dec=DEC, mjd=60801.0),
        "C_far": w("2025W18_2B_0003_1", 3, ra=RA + 0.5, dec=DEC, mjd=60802.0),
        "D_det4": w("2025W18_2B_0004_1", 4, ra=RA, dec=DEC, mjd=60803.0),
        "E_preview": w("2025W18_2B_0005_1", 3, ra=RA, dec=DEC, mjd=60804.0, producttype="preview"),
        "F_late": w("2025W18_2B_0006_1", 3, ra=RA, dec=DEC, mjd=60900.0),
        # same exposure in another release, older processing: must lose against A_new
        "A_qr3_old": w("2025W18_2B_0001_1", 3, ra=RA, dec=DEC, mjd=60800.0, version=11, date="2025-150", release="qr3"),
    }
    bad = dict(rows["A_new"], obs_publisher_did="ivo://irsa.ipac/garbage")
    write_index(root, list(rows.values()) + [bad])
    return root, rows


def _cfg(srv, **kw):
    base = {"center_ra": RA, "center_dec": DEC, "width": 6.0, "height": 6.0, "detector": 3, "tap_url": srv.tap_url,
            "mjd_range": (60790.0, 60850.0), "download_timeout": 5.0, "download_retries": 2, "progress": False}
    base.update(kw)
    return Drizzle3DConfig(**base)


def _name(obs):
    return obs.obs_id, obs.detector, obs.version


def test_intersects_dedup_and_filters(archive, caplog):
    root, rows = archive
    with ArchiveServer(root) as srv:
        with caplog.at_level(logging.WARNING, logger="spxquery.drizzle3d"):
            res = query_observations(_cfg(srv), backoff_base=0.01)
        assert list(res) == [3]
        assert [_name(o) for o in res[3]] == [
            ("2025W18_2B_0001_1", 3, "l2b-v13-2025-200"),
            ("2025W18_2B_0002_1", 3, "l2b-v12-2025-164"),
        ]
        a = res[3][0]
        assert a.download_url == srv.url_for(rows["A_new"]["uri"])
        assert a.content_length == rows["A_new"]["contentlength"] and a.checksum == rows["A_new"]["contentchecksum"]
        assert a.band == "D3" and a.collection == "spherex_qr2" and a.mjd == pytest.approx(60800.0005)
        assert a.poly == pytest.approx(tuple(rows["A_new"]["poly"]))
        assert "garbage" in caplog.text  # malformed row reported, not silently dropped
        q = srv.queries[-1]
        assert "INTERSECTS(p.poly, CIRCLE('ICRS', 10.0, 0.0, " in q
        assert "p.energy_bandpassname = 'SPHEREx-D3'" in q
        assert "p.time_bounds_upper >= 60790.0" in q and "p.time_bounds_lower <= 60850.0" in q
        r = float(q.split("CIRCLE('ICRS', 10.0, 0.0, ")[1].split(")")[0])
        assert r == pytest.approx(math.hypot(6, 6) / 120 + SEARCH_MARGIN_DEG)
        # the seed's centre-point query misses the edge frame on the very same server
        centre_point = "CONTAINS(POINT('ICRS', 10.0, 0.0), p.poly) = 1"
        seed_q = q.replace(q[q.index("INTERSECTS"):q.index("= 1") + 3], centre_point)
        seed = pyvo.dal.TAPService(srv.tap_url).search(seed_q).to_table()
        assert not any("0002_1" in d for d in seed["obs_publisher_did"])


def test_all_detectors_and_env_url(archive, monkeypatch):
    root, _ = archive
    with ArchiveServer(root) as srv:
        monkeypatch.setenv("SPXQUERY_TAP_URL", srv.tap_url)
        cfg = _cfg(srv, detector=0, tap_url=None)
        assert cfg.resolved_tap_url() == srv.tap_url
        res = query_observations(cfg, backoff_base=0.01)
        assert sorted(res) == [3, 4]
        assert [o.obs_id for o in res[4]] == ["2025W18_2B_0004_1"]
        assert "p.energy_bandpassname IN ('SPHEREx-D1', 'SPHEREx-D2', 'SPHEREx-D3', 'SPHEREx-D4', " \
               "'SPHEREx-D5', 'SPHEREx-D6')" in srv.queries[-1]


@pytest.mark.parametrize("fault", [Fault(status=503), Fault(status=429, retry_after=0.05), Fault(status=504),
                                   Fault(delay=1.5)])
def test_transient_tap_faults_are_retried(archive, fault):
    root, _ = archive
    with ArchiveServer(root) as srv:
        srv.faults.add("/TAP/sync", fault)
        res = query_observations(_cfg(srv, download_timeout=0.5), backoff_base=0.01)
        assert len(res[3]) == 2
        assert srv.hits("/TAP/sync") == 2 and srv.faults.pending() == 0
        assert srv.hits("/TAP/async") == 0


def test_sync_keeps_failing_falls_back_to_async(archive):
    root, _ = archive
    with ArchiveServer(root) as srv:
        srv.faults.add("/TAP/sync", Fault(status=504), times=-1)
        res = query_observations(_cfg(srv), backoff_base=0.01)
        assert [o.obs_id for o in res[3]] == ["2025W18_2B_0001_1", "2025W18_2B_0002_1"]
        assert srv.hits("/TAP/sync") == 3 and srv.hits("/TAP/async") >= 3
        assert "INTERSECTS" in srv.queries[-1]


def test_sync_too_slow_switches_to_async(archive):
    root, _ = archive
    with ArchiveServer(root) as srv:
        srv.faults.add("/TAP/sync", Fault(delay=1.0), times=-1)
        res = query_observations(_cfg(srv, download_timeout=0.3, download_retries=5), backoff_base=0.01)
        assert len(res[3]) == 2
        assert srv.hits("/TAP/sync") == 2  # two timeouts, then no more waiting on sync
        assert srv.hits("/TAP/async") >= 3


def test_async_mode_on_request(archive):
    root, _ = archive
    with ArchiveServer(root) as srv:
        res = query_observations(_cfg(srv), mode="async", backoff_base=0.01)
        assert len(res[3]) == 2 and srv.hits("/TAP/sync") == 0 and not srv.jobs


def test_clear_error_after_last_try(archive):
    root, _ = archive
    with ArchiveServer(root) as srv:
        srv.faults.add("/TAP/", Fault(status=503), times=-1)
        with pytest.raises(ArchiveQueryError) as info:
            query_observations(_cfg(srv), backoff_base=0.01)
        msg = str(info.value)
        assert srv.tap_url in msg and "503" in msg and "6 attempts" in msg
        assert srv.hits("/TAP/sync") == 3


def test_query_error_is_not_retried(archive):
    root, _ = archive
    with ArchiveServer(root) as srv:
        with pytest.raises(ArchiveQueryError, match="does not exist"):
            run_tap_query(srv.tap_url, "SELECT p.nope FROM spherex.plane p WHERE "
                          "INTERSECTS(p.poly, CIRCLE('ICRS', 1.0, 1.0, 1.0)) = 1", backoff_base=0.01)
        assert srv.hits("/TAP/") == 1


def test_max_images_caps_each_detector_without_raising(archive, caplog):
    root, _ = archive
    with ArchiveServer(root) as srv:
        everything = query_observations(_cfg(srv), backoff_base=0.01)
        with caplog.at_level(logging.WARNING, logger="spxquery.drizzle3d"):
            capped = query_observations(_cfg(srv, max_images=1), backoff_base=0.01)
    assert {d: len(v) for d, v in everything.items()} == {3: 2}
    assert {d: len(v) for d, v in capped.items()} == {3: 1}
    assert capped[3][0] in everything[3]
    assert "D3: 2 frames match; max_images=1 keeps 1 spread evenly in time, 1 left out" in caplog.text


def test_spread_in_time_is_even_and_deterministic():
    obs = [DrizzleObservation(f"2025W18_2B_{i:04d}_1", "D3", 3, 60800.0 + i, f"u{i}") for i in range(10)]
    assert [o.mjd - 60800 for o in spread_in_time(obs, 4)] == [0, 3, 6, 9]
    assert [o.mjd - 60800 for o in spread_in_time(obs, 5)] == [0, 2, 4, 7, 9]
    assert spread_in_time(obs, 10) == obs and spread_in_time(obs, 50) == obs
    assert len(spread_in_time(obs, 1)) == 1 and len(spread_in_time(obs, 9)) == 9
    assert spread_in_time(obs, 4) == spread_in_time(list(obs), 4)


def test_truncated_result_is_never_silent(archive):
    root, _ = archive
    with ArchiveServer(root, max_rows=2) as srv:
        with pytest.raises(ArchiveQueryError, match="truncated"):
            query_observations(_cfg(srv), backoff_base=0.01)
        assert srv.hits("/TAP/sync") == 1 and srv.hits("/TAP/async") >= 1


def test_adql_only_takes_validated_numbers():
    q = build_adql(359.5, -89.9, 0.25, 6, (60000, 60001.5))
    assert "CIRCLE('ICRS', 359.5, -89.9, 0.25)" in q and "'SPHEREx-D6'" in q
    assert "60001.5" in q and "time_bounds_upper >= 60000.0" in q
    assert "1e-" not in build_adql(1e-7, 0.0, 1e-5, 1)  # positional decimals only
    for bad in [float("nan"), float("inf"), "10 OR 1=1", "10", None, 400.0, -1.0, True]:
        with pytest.raises(ValueError, match="center_ra"):
            build_adql(bad, 0.0, 0.1)
    with pytest.raises(ValueError, match="center_dec"):
        build_adql(10.0, 91.0, 0.1)
    with pytest.raises(ValueError, match="radius"):
        build_adql(10.0, 0.0, 0.0)
    for det in (7, -1, True, "3", 3.0):
        with pytest.raises(ValueError, match="detector"):
            build_adql(10.0, 0.0, 0.1, det)
    with pytest.raises(ValueError, match="mjd_range"):
        build_adql(10.0, 0.0, 0.1, 0, (60001, "60002'; DROP"))


def test_versions_and_dedup():
    url = "https://x/qr3/level2/p/l2b-v20-2025-247/3/level2_A_1D3_spx_l2b-v20-2025-247.fits"
    assert parse_version(url) == (20, 2025, 247)
    assert parse_version("no-version.fits") == (-1, -1, -1)

    def mk(oid, det, url, mjd=1.0):
        return DrizzleObservation(oid, f"D{det}", det, mjd, url)

    obs = [
        mk("A", 3, "u/l2b-v12-2025-164/x_l2b-v12-2025-164.fits", 2.0),
        mk("A", 3, "u/l2b-v12-2025-170/x_l2b-v12-2025-170.fits", 2.0),  # same version, later date wins
        mk("A", 4, "u/x_l2b-v9-2025-100.fits", 2.0),  # other detector: kept
        mk("B", 3, "u/x_l2b-v20-2025-247.fits", 1.0),
        mk("B", 3, "u/x_l2b-v3-2026-001.fits", 1.0),  # v20 > v3 regardless of date
    ]
    out = deduplicate_newest(obs)
    assert [(o.obs_id, o.detector, o.download_url[-21:]) for o in out] == [
        ("B", 3, "x_l2b-v20-2025-247.fits"[-21:]),
        ("A", 3, "x_l2b-v12-2025-170.fits"[-21:]),
        ("A", 4, "_x_l2b-v9-2025-100.fits"[-21:]),
    ]
    assert data_base_url("https://irsa.ipac.caltech.edu/TAP") == "https://irsa.ipac.caltech.edu/"
    assert data_base_url("http://127.0.0.1:8080/TAP/") == "http://127.0.0.1:8080/"


def test_resolve_cutout_rule():
    small = Drizzle3DConfig(center_ra=RA, center_dec=DEC, width=6.0, height=6.0)
    ra, dec, size = resolve_cutout(small)
    assert (ra, dec) == (RA, DEC)
    assert size == pytest.approx(2 * math.hypot(6, 6) / 120 + 4.0 / 60) == cutout_size_deg(small)
    big = Drizzle3DConfig(center_ra=RA, center_dec=DEC, width=60.0, height=60.0)
    assert resolve_cutout(big) is None  # ~1.5 deg cutout: not "much smaller" than a 3.5 deg frame
    assert resolve_cutout(big.replace(use_cutouts=True))[2] == pytest.approx(cutout_size_deg(big))
    assert resolve_cutout(small.replace(use_cutouts=False)) is None


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    sim = pytest.importorskip("spxquery.drizzle3d.simulate.field")
    root = tmp_path_factory.mktemp("field")
    info = sim.simulate_field(root, 150.0, 2.0, detectors=(3,), n_pointings=6, cutout_size_deg=0.25,
                              include_reprocessed_duplicates=True, psf_size=21, psf_zones=3)
    return info


def _field_cfg(srv, out, **kw):
    base = {"center_ra": 150.0, "center_dec": 2.0, "width": 4.0, "height": 4.0, "detector": 3,
            "tap_url": srv.tap_url, "output_dir": out, "progress": False, "use_cutouts": False,
            "download_timeout": 0.5, "download_retries": 3}
    base.update(kw)
    return Drizzle3DConfig(**base)


def test_pipeline_end_to_end_download_cutout_and_mirror(field, tmp_path, monkeypatch):
    pipeline = pytest.importorskip("spxquery.drizzle3d.pipeline")
    from spxquery.drizzle3d.io import load_cube

    monkeypatch.setattr(retry, "DEFAULT_BACKOFF_BASE", 0.01)  # our own knob: fast retries
    current = {p.name: p for _, p in field.current_frames()}
    superseded = {p.name for m, p in zip(field.frames, field.paths) if m.extra.get("superseded")}
    assert len(current) == 6 and len(superseded) == 2
    names = sorted(current)
    with ArchiveServer(field.root) as srv:
        srv.faults.add("/TAP/sync", Fault(status=503))
        srv.faults.add(names[0], Fault(status=503))
        srv.faults.add(names[1], Fault(drop_after=100_000))
        srv.faults.add(names[2], Fault(content_length_delta=-50_000))
        srv.faults.add(names[3], Fault(delay=1.5))
        out = tmp_path / "dl"
        res = pipeline.drizzle(_field_cfg(srv, out))
        assert srv.faults.pending() == 0
        frame_query = [q for q in srv.queries if not q.startswith("SIA")][-1]  # then the spectral-WCS search
        assert "INTERSECTS" in frame_query and "'SPHEREx-D3'" in frame_query
        assert 'spherex_qr2_cal' in srv.queries[-1]
        got = sorted(p for p in (out / "images" / "D3").iterdir() if not p.name.startswith("."))
        assert [p.name for p in got] == names  # newest versions only, no .part (hidden: verification records)
        for p in got:
            assert p.read_bytes() == current[p.name].read_bytes()
        cube_dl = load_cube(res[3])
        assert cube_dl["header"]["N_INPUTS"] == 6 and np.isfinite(cube_dl["sci"]).any()

        # cutout mode: the server cuts each file; new names, full frames untouched
        out_c = tmp_path / "cut"
        res_c = pipeline.drizzle(_field_cfg(srv, out_c, use_cutouts=True))
        cut_files = sorted(p for p in (out_c / "images" / "D3").iterdir() if not p.name.startswith("."))
        assert len(cut_files) == 6 and all("_cutout_150.000000_2.000000_" in p.name for p in cut_files)
        assert all(p.stat().st_size < current[p.name.split("_cutout_")[0] + ".fits"].stat().st_size for p in cut_files)
        assert load_cube(res_c[3])["header"]["N_INPUTS"] == 6

    # mirror mode: same query, files read in place, identical cube
    with ArchiveServer(field.root) as srv:
        out_m = tmp_path / "mirror"
        res_m = pipeline.drizzle(_field_cfg(srv, out_m, data_mirror=field.root))
        assert srv.hits("/ibe/") == 0 and not (out_m / "images").exists()
    cube_m = load_cube(res_m[3])
    np.testing.assert_array_equal(cube_m["sci"], cube_dl["sci"])
    np.testing.assert_array_equal(cube_m["count"], cube_dl["count"])


def test_query_module_keeps_the_041_api():
    """``spxquery.drizzle3d.query`` is the 0.4.1 API module: its names are the archive
    package's objects, with the 0.4.1 signatures."""
    import inspect

    from spxquery.drizzle3d import archive, query
    from spxquery.drizzle3d.archive import fetch, locations, observations, search

    assert query.DrizzleObservation is observations.DrizzleObservation
    assert query.query_observations is search.query_observations is archive.query_observations
    assert query.download_observations is fetch.download_observations
    for name in ("resolve_cutout", "mirror_path", "local_file_name"):
        assert getattr(query, name) is getattr(locations, name)
    assert query.download_observations_report is fetch.download_observations_report
    for name in query.__all__:
        assert getattr(query, name).__module__.startswith("spxquery.drizzle3d.archive."), name
    o = DrizzleObservation("2025W18_2B_0001_1", "D3", 3, 60800.5, "https://h/x.fits")  # 0.4.1 positional order
    assert (o.obs_id, o.band, o.detector, o.mjd, o.download_url) == ("2025W18_2B_0001_1", "D3", 3, 60800.5,
                                                                     "https://h/x.fits")
    params = inspect.signature(query.download_observations).parameters
    assert [(p.name, p.default) for p in list(params.values())[:5]] == [
        ("observations", inspect.Parameter.empty), ("output_dir", inspect.Parameter.empty), ("max_workers", 4),
        ("skip_existing", True), ("data_mirror", None),
    ]
    assert next(iter(inspect.signature(query.query_observations).parameters)) == "config"
