"""The loopback archive server itself: geometry, ADQL evaluation, TAP (sync and
async through pyvo unchanged), Range serving, cutouts and fault injection."""

from __future__ import annotations

import hashlib
import io
import socket

import numpy as np
import pytest
import pyvo
import requests
from astropy.io import fits

from spxquery.drizzle3d.testing import (
    AdqlError,
    ArchiveServer,
    Fault,
    evaluate_adql,
    polygon_contains_point,
    polygon_intersects_circle,
    simple_cutout,
    square_poly,
    write_index,
    write_small_frame,
)

ADQL = (
    "SELECT p.obs_publisher_did, a.uri, p.time_bounds_lower, p.poly "
    "FROM spherex.artifact a JOIN spherex.plane p ON a.planeid = p.planeid "
    "WHERE INTERSECTS(p.poly, CIRCLE('ICRS', {ra}, {dec}, {r})) = 1 "
    "AND p.energy_bandpassname = 'SPHEREx-D3' ORDER BY p.time_bounds_lower"
)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("arch")
    rows = [
        write_small_frame(root, "2025W18_2B_0001_1", 3, ra=10.0, dec=0.0, mjd=60800.0, seed=1),
        write_small_frame(root, "2025W18_2B_0002_1", 3, ra=10.5, dec=0.0, mjd=60801.0, seed=2),
        write_small_frame(root, "2025W18_2B_0003_1", 4, ra=10.0, dec=0.0, mjd=60802.0, seed=3),
    ]
    write_index(root, rows)
    return root, rows


# ---------------------------------------------------------------- geometry


def test_polygon_circle_edge_cases():
    poly = square_poly(10.0, 0.0, 0.1)  # covers ra 9.9..10.1, dec -0.1..0.1
    assert polygon_intersects_circle(poly, 10.0, 0.0, 0.01)  # centre inside
    # circle centre 0.15 deg east of the east edge... distance to edge 0.05
    assert polygon_intersects_circle(poly, 10.15, 0.0, 0.051)
    assert not polygon_intersects_circle(poly, 10.15, 0.0, 0.049)
    # near a corner: distance to the corner (10.1, 0.1) is sqrt(2)*0.05 = 0.0707
    assert polygon_intersects_circle(poly, 10.15, 0.15, 0.072)
    assert not polygon_intersects_circle(poly, 10.15, 0.15, 0.069)
    # circle containing the whole polygon
    assert polygon_intersects_circle(poly, 10.0, 0.0, 5.0)
    assert polygon_contains_point(poly, 10.05, 0.05)
    assert not polygon_contains_point(poly, 10.15, 0.0)


def test_polygon_across_ra_zero_and_near_pole():
    poly = square_poly(0.0, 0.0, 0.2)  # ra 359.8..0.2
    assert polygon_intersects_circle(poly, 359.9, 0.0, 0.01)
    assert polygon_intersects_circle(poly, 0.25, 0.0, 0.06)
    assert not polygon_intersects_circle(poly, 0.25, 0.0, 0.04)
    polar = square_poly(45.0, 89.5, 0.2)
    assert polygon_intersects_circle(polar, 45.0, 89.5, 0.01)
    assert not polygon_intersects_circle(polar, 225.0, 89.0, 0.1)


def test_evaluate_adql_filters_and_rejects_unknown(archive):
    _, rows = archive
    cols, out = evaluate_adql(ADQL.format(ra=10.0, dec=0.0, r=0.05), rows)
    assert cols == ["obs_publisher_did", "uri", "time_bounds_lower", "poly"]
    assert [r["obs_publisher_did"][-21:] for r in out] == ["?2025W18_2B_0001_1/D3"]
    # 10.5 +- 0.05 frame: east edge of region circle at 10.0 + r reaches 10.45 only with r >= 0.45
    _, out = evaluate_adql(ADQL.format(ra=10.0, dec=0.0, r=0.46), rows)
    assert len(out) == 2
    with pytest.raises(AdqlError, match="does not exist"):
        evaluate_adql(ADQL.replace("a.uri", "a.no_such_col").format(ra=10, dec=0, r=1), rows)
    with pytest.raises(AdqlError, match="no INTERSECTS"):
        evaluate_adql("SELECT a.uri FROM spherex.artifact a WHERE a.contentlength > 0", rows)
    q = ADQL.format(ra=10.0, dec=0.0, r=1.0).replace("ORDER", "AND p.time_bounds_lower >= 60800.5 ORDER")
    _, out = evaluate_adql(q, rows)
    assert [r["time_bounds_lower"] for r in out] == [60801.0]


# ---------------------------------------------------------------- TAP


def test_pyvo_sync_and_async_unchanged(archive):
    root, _ = archive
    with ArchiveServer(root) as srv:
        service = pyvo.dal.TAPService(srv.tap_url)
        q = ADQL.format(ra=10.0, dec=0.0, r=0.05)
        sync = service.search(q).to_table()
        asyn = service.run_async(q).to_table()
        assert list(sync["obs_publisher_did"]) == list(asyn["obs_publisher_did"])
        assert len(sync) == 1
        assert np.allclose(np.asarray(sync["poly"][0], float), square_poly(10.0, 0.0, 0.05))
        assert srv.queries == [q, q]
        methods = [(r["method"], r["path"].rsplit("/", 1)[-1]) for r in srv.requests]
        assert ("POST", "async") in methods and ("POST", "phase") in methods and ("DELETE", methods[-1][1]) in methods
        assert not srv.jobs  # pyvo deleted its job
        # a query error reaches pyvo as an error, not as rows
        with pytest.raises(pyvo.dal.DALQueryError, match="does not exist"):
            service.search(q.replace("a.uri", "a.bogus"))


def test_vosi_tables_and_capabilities(archive):
    root, _ = archive
    with ArchiveServer(root) as srv:
        service = pyvo.dal.TAPService(srv.tap_url)
        assert sorted(service.tables.keys()) == ["spherex.artifact", "spherex.plane"]
        assert "poly" in [c.name for c in service.tables["spherex.plane"].columns]
        assert [c.standardid for c in service.capabilities] == ["ivo://ivoa.net/std/TAP"]


def test_tap_fault_status_reaches_pyvo(archive):
    root, _ = archive
    with ArchiveServer(root) as srv:
        srv.faults.add("/TAP/sync", Fault(status=503))
        service = pyvo.dal.TAPService(srv.tap_url)
        with pytest.raises(pyvo.dal.DALServiceError) as info:
            service.search(ADQL.format(ra=10, dec=0, r=0.05))
        assert info.value.code == 503
        assert len(service.search(ADQL.format(ra=10, dec=0, r=0.05))) == 1
        assert srv.faults.pending() == 0


def test_overflow_marks_result(archive):
    root, _ = archive
    with ArchiveServer(root, max_rows=1) as srv:
        res = pyvo.dal.TAPService(srv.tap_url).search(ADQL.format(ra=10.0, dec=0.0, r=1.0))
        assert res.query_status == "OVERFLOW"
        assert len(res) == 1


# ---------------------------------------------------------------- files


def test_range_requests_and_headers(archive):
    root, rows = archive
    data = (root / rows[0]["uri"][len("ibe/data/spherex/"):]).read_bytes()
    with ArchiveServer(root) as srv:
        url = srv.url_for(rows[0]["uri"])
        r = requests.get(url, timeout=5)
        assert r.status_code == 200 and r.content == data
        assert int(r.headers["Content-Length"]) == len(data) and r.headers["Accept-Ranges"] == "bytes"
        r = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=5)
        assert r.status_code == 206 and r.content == data[100:200]
        assert r.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
        r = requests.get(url, headers={"Range": "bytes=1000-"}, timeout=5)
        assert r.status_code == 206 and r.content == data[1000:]
        r = requests.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=5)
        assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(data)}"
        assert requests.get(srv.base_url + "/ibe/data/spherex/../archive_index.json", timeout=5).status_code == 404
        assert requests.get(srv.base_url + "/ibe/data/spherex/qr2/nothing.fits", timeout=5).status_code == 404
        srv.faults.add("0001_1D3", Fault(ignore_range=True))
        r = requests.get(url, headers={"Range": "bytes=100-"}, timeout=5)
        assert r.status_code == 200 and r.content == data


def test_faults_drop_and_lie(archive):
    root, rows = archive
    data = (root / rows[0]["uri"][len("ibe/data/spherex/"):]).read_bytes()
    with ArchiveServer(root) as srv:
        url = srv.url_for(rows[0]["uri"])
        srv.faults.add("0001_1D3", Fault(drop_after=3000))
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            _ = requests.get(url, timeout=5).content
        srv.faults.add("0001_1D3", Fault(content_length_delta=-500))
        r = requests.get(url, timeout=5)
        assert len(r.content) == len(data) - 500
        srv.faults.add("0001_1D3", Fault(status=429, retry_after=2))
        r = requests.get(url, timeout=5)
        assert r.status_code == 429 and r.headers["Retry-After"] == "2"
        srv.faults.add("0001_1D3", Fault(delay=1.0))
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(url, timeout=0.2)
        assert requests.get(url, timeout=5).content == data


def test_cutout_query_string(archive):
    root, rows = archive
    with ArchiveServer(root, cutout_func=simple_cutout) as srv:
        url = srv.url_for(rows[0]["uri"]) + "?center=10.0,0.0&size=0.02"
        r = requests.get(url, timeout=10)
        assert r.status_code == 200
        with fits.open(io.BytesIO(r.content)) as hdul:
            full = fits.getdata(root / rows[0]["uri"][len("ibe/data/spherex/"):], "IMAGE")
            cut = hdul["IMAGE"].data
            assert cut.shape[0] < full.shape[0] and cut.shape[1] < full.shape[1]
            assert hdul["IMAGE"].header["CRPIX1"] < fits.getheader(
                root / rows[0]["uri"][len("ibe/data/spherex/"):], "IMAGE")["CRPIX1"]
        assert requests.get(srv.url_for(rows[0]["uri"]) + "?center=10,0&size=1furlong", timeout=5).status_code == 400
        # same cutout twice: identical bytes
        assert hashlib.md5(requests.get(url, timeout=10).content).hexdigest() == hashlib.md5(r.content).hexdigest()


def test_server_really_listens_on_loopback(archive):
    root, _ = archive
    with ArchiveServer(root) as srv:
        host, port = srv.base_url.split("//")[1].split(":")
        assert host == "127.0.0.1"
        with socket.create_connection((host, int(port)), timeout=2):
            pass
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=0.5)
