"""Verified, resumable, parallel downloads against a real loopback HTTP server
(requests unchanged) with injected faults; mirror mode; cutout naming."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from astropy.io import fits

from spxquery.drizzle3d.archive.download import DownloadTask, download_files
from spxquery.drizzle3d.archive.fetch import resolve_mirror
from spxquery.drizzle3d.archive.locations import FrameLocation, cutout_url, locate_frame
from spxquery.drizzle3d.archive.retry import (
    MAX_BACKOFF,
    MAX_RETRY_AFTER,
    backoff_delay,
    is_retryable_status,
    parse_retry_after,
)
from spxquery.drizzle3d.archive.verify import check_fits_file
from spxquery.drizzle3d.query import (
    DrizzleObservation,
    download_observations,
    download_observations_report,
    local_file_name,
    mirror_path,
)
from spxquery.drizzle3d.testing import ArchiveServer, Fault, simple_cutout, write_index, write_small_frame
from spxquery.drizzle3d.testing.small_frames import row_observation, row_path

FAST = {"backoff_base": 0.01, "progress": False, "timeout": 5.0}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    rows = [
        write_small_frame(root, f"2025W18_2B_000{i}_1", 1 + i % 3, ra=10.0 + 0.01 * i, dec=0.0,
                          mjd=60800.0 + i, npix=64, seed=i)
        for i in range(1, 6)
    ]
    write_index(root, rows)
    return root, rows


def _obs(rows, srv):
    return [row_observation(r, srv.url_for(r["uri"])) for r in rows]


def _source(root, row) -> bytes:
    return row_path(root, row).read_bytes()


def _assert_all_good(paths, root, rows, out_dir):
    assert len(paths) == len(rows)
    for p, r in zip(paths, rows):
        assert p.read_bytes() == _source(root, r)  # byte-identical, in input order
        assert p.parent == out_dir / "images" / f"D{int(r['energy_bandpassname'][-1])}"
        assert p.name == r["uri"].rsplit("/", 1)[1]
    assert not list(out_dir.rglob("*.part"))


def test_parallel_download_clean(archive, tmp_path):
    root, rows = archive
    with ArchiveServer(root) as srv:
        paths = download_observations(_obs(rows, srv), tmp_path, max_workers=3, **FAST)
        _assert_all_good(paths, root, rows, tmp_path)
        assert srv.hits("/ibe/data/spherex/") == len(rows)


def test_503_and_429_then_success(archive, tmp_path):
    root, rows = archive
    with ArchiveServer(root) as srv:
        srv.faults.add("0001_1D", Fault(status=503), Fault(status=503))
        srv.faults.add("0002_1D", Fault(status=429, retry_after=0.05))
        srv.faults.add("0003_1D", Fault(status=502))
        report = download_observations_report(_obs(rows, srv), tmp_path, max_workers=2, **FAST)
        assert report.ok and report.retries == 4
        _assert_all_good(report.verified, root, rows, tmp_path)
        assert srv.faults.pending() == 0
        assert srv.hits("0001_1D") == 3


def test_dropped_connection_resumes_with_range(archive, tmp_path):
    root, rows = archive
    with ArchiveServer(root) as srv:
        srv.faults.add("0002_1D", Fault(drop_after=20480))
        srv.faults.add("0004_1D", Fault(drop_after=5120), Fault(drop_after=7168))
        report = download_observations_report(_obs(rows, srv), tmp_path, max_workers=3, chunk_size=1024, **FAST)
        assert report.ok and report.resumed == 3
        _assert_all_good(report.verified, root, rows, tmp_path)
        ranges = [r["range"] for r in srv.requests if "0004_1D" in r["path"]]
        assert ranges == [None, "bytes=5120-", "bytes=12288-"]
        assert [r["range"] for r in srv.requests if "0002_1D" in r["path"]] == [None, "bytes=20480-"]


def test_resume_refused_restarts_from_zero(archive, tmp_path):
    root, rows = archive
    with ArchiveServer(root) as srv:
        srv.faults.add("0003_1D", Fault(drop_after=9216), Fault(ignore_range=True))
        report = download_observations_report(_obs(rows, srv), tmp_path, max_workers=2, chunk_size=1024, **FAST)
        _assert_all_good(report.verified, root, rows, tmp_path)
        assert [r["range"] for r in srv.requests if "0003_1D" in r["path"]] == [None, "bytes=9216-"]
        assert report.resumed == 0 and report.bytes_received > sum(r["contentlength"] for r in rows)


@pytest.mark.parametrize("delta", [-3000, +3000])
def test_wrong_content_length(archive, tmp_path, delta):
    root, rows = archive
    with ArchiveServer(root) as srv:
        srv.faults.add("0001_1D", Fault(content_length_delta=delta))
        report = download_observations_report(_obs(rows, srv), tmp_path, max_workers=2, **FAST)
        assert report.ok and report.retries >= 1
        _assert_all_good(report.verified, root, rows, tmp_path)


@pytest.mark.parametrize("delta", [-2880 * 3, +5000])
def test_wrong_content_length_without_archive_length(archive, tmp_path, delta):
    """No archive contentlength: FITS structure / connection checks catch the lie."""
    root, rows = archive
    with ArchiveServer(root) as srv:
        srv.faults.add("0001_1D", Fault(content_length_delta=delta))
        obs = _obs(rows, srv)
        for o in obs:
            o.content_length = None
            o.checksum = None
        paths = download_observations(obs, tmp_path, max_workers=2, **FAST)
        _assert_all_good(paths, root, rows, tmp_path)
        assert srv.hits("0001_1D") == 2


def test_server_slower_than_timeout(archive, tmp_path):
    root, rows = archive
    with ArchiveServer(root) as srv:
        srv.faults.add("0005_1D", Fault(delay=1.0))
        paths = download_observations(_obs(rows, srv), tmp_path, max_workers=2,
                                      backoff_base=0.01, progress=False, timeout=0.3)
        _assert_all_good(paths, root, rows, tmp_path)
        assert srv.hits("0005_1D") == 2


def test_persistent_failures_are_reported_not_returned(archive, tmp_path, caplog):
    root, rows = archive
    with ArchiveServer(root) as srv:
        srv.faults.add("0002_1D", Fault(delay=1.0), times=-1)
        srv.faults.add("0004_1D", Fault(status=404), times=-1)
        obs = _obs(rows, srv)
        with caplog.at_level(logging.WARNING, logger="spxquery.drizzle3d"):
            report = download_observations_report(obs, tmp_path, max_workers=3, retries=2,
                                                  backoff_base=0.01, progress=False, timeout=0.3)
        assert [f.url for f in report.failures] == [obs[1].download_url, obs[3].download_url] or \
            sorted(f.url for f in report.failures) == sorted([obs[1].download_url, obs[3].download_url])
        reasons = {f.url: f.reason for f in report.failures}
        assert "Timeout" in reasons[obs[1].download_url] and "3 attempts" in reasons[obs[1].download_url]
        assert "HTTP 404" in reasons[obs[3].download_url]
        assert srv.hits("0004_1D") == 1  # 404 is not retried
        assert srv.hits("0002_1D") == 3
        # returned list: input order, only verified files
        assert report.paths[1] is None and report.paths[3] is None
        good = [rows[i] for i in (0, 2, 4)]
        _assert_all_good(report.verified, root, good, tmp_path)
        assert not (tmp_path / "images" / "D3" / rows[1]["uri"].rsplit("/", 1)[1]).exists()
        summary = [r.message for r in caplog.records if "3/5 files ready" in r.message]
        assert len(summary) == 1 and "2 failed" in summary[0]


def test_checksum_mismatch_fails(archive, tmp_path):
    root, rows = archive
    with ArchiveServer(root) as srv:
        obs = _obs(rows[:1], srv)
        obs[0].checksum = "md5:" + "0" * 32
        report = download_observations_report(obs, tmp_path, retries=1, **FAST)
        assert not report.ok and "md5 checksum" in report.failures[0].reason
        assert report.verified == [] and not list(tmp_path.rglob("*.fits*"))


def test_skip_existing_only_keeps_complete_files(archive, tmp_path):
    root, rows = archive
    with ArchiveServer(root) as srv:
        obs = _obs(rows, srv)
        paths = download_observations(obs, tmp_path, **FAST)
        n0 = srv.hits("/ibe/")
        # all complete: nothing fetched
        assert download_observations(obs, tmp_path, **FAST) == paths
        assert srv.hits("/ibe/") == n0
        # damage: truncate one, replace one with garbage of the right size, leave a stale .part
        data1 = paths[1].read_bytes()
        paths[1].write_bytes(data1[: len(data1) // 2])
        paths[2].write_bytes(b"x" * paths[2].stat().st_size)
        part = paths[3].with_name(paths[3].name + ".part")
        paths[3].unlink()
        part.write_bytes(_source(root, rows[3])[:10000])
        again = download_observations(obs, tmp_path, **FAST)
        _assert_all_good(again, root, rows, tmp_path)
        assert srv.hits("/ibe/") == n0 + 3
        assert [r["range"] for r in srv.requests if "0004_1D" in r["path"]][-1] == "bytes=10000-"
        # skip_existing=False fetches everything again
        download_observations(obs, tmp_path, skip_existing=False, **FAST)
        assert srv.hits("/ibe/") == n0 + 3 + len(rows)


def test_stale_part_from_another_version_is_not_trusted(archive, tmp_path):
    """A .part holding bytes of a different file fails verification and is refetched whole."""
    root, rows = archive
    with ArchiveServer(root) as srv:
        obs = _obs(rows[:1], srv)
        dest = tmp_path / "images" / f"D{obs[0].detector}" / obs[0].file_name
        dest.parent.mkdir(parents=True)
        Path(str(dest) + ".part").write_bytes(_source(root, rows[1])[:20000])
        paths = download_observations(obs, tmp_path, **FAST)
        assert paths[0].read_bytes() == _source(root, rows[0])
        assert [r["range"] for r in srv.requests] == ["bytes=20000-", None]


def test_duplicate_inputs_download_once(archive, tmp_path):
    root, rows = archive
    with ArchiveServer(root) as srv:
        obs = _obs(rows[:2], srv)
        paths = download_observations([obs[0], obs[1], obs[0]], tmp_path, max_workers=3, **FAST)
        assert paths[0] == paths[2] and paths[0] != paths[1]
        assert srv.hits("0001_1D") == 1


def test_cutouts_named_apart_from_full_frames(archive, tmp_path):
    root, rows = archive
    with ArchiveServer(root, cutout_func=simple_cutout) as srv:
        obs = _obs(rows[:2], srv)
        full = download_observations(obs, tmp_path, **FAST)
        srv.faults.add("0002_1D", Fault(status=503))
        cut = download_observations(obs, tmp_path, cutout=(10.0, 0.0, 0.03), **FAST)
        assert len(cut) == 2 and not set(cut) & set(full)
        for f, c, o in zip(full, cut, obs):
            assert c.parent == f.parent
            assert c.name == f.name[:-5] + "_cutout_10.000000_0.000000_0.030000deg.fits"
            assert f.read_bytes() == _source(root, rows[obs.index(o)])  # full frame untouched
            with fits.open(c) as hc, fits.open(f) as hf:
                assert hc["IMAGE"].data.shape[0] < hf["IMAGE"].data.shape[0]
        queries = [r["query"] for r in srv.requests if r["query"]]
        assert queries and all(q == "center=10.000000,0.000000&size=0.030000" for q in queries)
        assert srv.hits("0002_1D") == 3  # full + 503 + cutout
        assert not list(tmp_path.rglob("*.part"))


def test_cutout_cut_at_hdu_boundary_is_caught(archive, tmp_path):
    """A cutout (no archive length) whose body stops exactly before the last HDU
    is valid FITS; the required-extension check must still reject it."""
    import io

    import requests

    root, rows = archive
    with ArchiveServer(root, cutout_func=simple_cutout) as srv:
        obs = _obs(rows[:1], srv)
        url = obs[0].download_url + "?center=10.010000,0.000000&size=0.030000"
        body = requests.get(url, timeout=5).content
        with fits.open(io.BytesIO(body)) as h:
            assert h[-1].name == "WCS-WAVE"
            cut_at = h.fileinfo(len(h) - 1)["hdrLoc"]
        srv.faults.add("0001_1D", Fault(content_length_delta=cut_at - len(body)))
        report = download_observations_report(obs, tmp_path, cutout=(10.01, 0.0, 0.03), **FAST)
        assert report.ok and report.retries == 1
        assert report.verified[0].read_bytes() == body


def test_check_fits_file_and_retry_after(tmp_path):
    good = tmp_path / "a.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU([[1.0, 2.0]])]).writeto(good)
    size = good.stat().st_size
    assert check_fits_file(good) is None and check_fits_file(good, size) is None
    assert "expected" in check_fits_file(good, size + 1)
    data = good.read_bytes()
    # a cut exactly at an HDU boundary is valid FITS: only the archive length can catch it
    (tmp_path / "b.fits").write_bytes(data[:2880])
    assert check_fits_file(tmp_path / "b.fits") is None
    assert "expected" in check_fits_file(tmp_path / "b.fits", size)
    (tmp_path / "e.fits").write_bytes(data[:-2880])  # image data cut short
    why = check_fits_file(tmp_path / "e.fits")
    assert "truncated" in why.lower() or "ends at" in why
    (tmp_path / "c.fits").write_bytes(data[:-2880] + b"\0" * 100)
    assert "2880" in check_fits_file(tmp_path / "c.fits")
    (tmp_path / "d.fits").write_bytes(b"SIMPLE  = garbage".ljust(2880, b" "))
    assert "FITS" in check_fits_file(tmp_path / "d.fits")
    assert check_fits_file(tmp_path / "missing.fits") == "file missing"
    assert "WCS-WAVE" in check_fits_file(good, required_hdus=("WCS-WAVE",))
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_mirror_mode(archive, tmp_path, caplog):
    root, rows = archive
    base = "https://irsa.ipac.caltech.edu/"
    obs = [DrizzleObservation("x", "D1", 1, 0.0, base + r["uri"], content_length=r["contentlength"]) for r in rows]
    obs.insert(2, DrizzleObservation("gone", "D1", 1, 0.0, base + "ibe/data/spherex/qr2/level2/nope.fits"))
    obs.insert(0, DrizzleObservation("evil", "D1", 1, 0.0, base + "ibe/data/spherex/../../../etc/passwd"))
    too_long = rows[0]["contentlength"] + 1
    obs.append(DrizzleObservation("x", "D1", 1, 0.0, base + rows[0]["uri"], content_length=too_long))
    with caplog.at_level(logging.WARNING, logger="spxquery.drizzle3d"):
        paths = download_observations(obs, tmp_path / "unused", data_mirror=root)
    assert paths == [root.resolve() / r["uri"][len("ibe/data/spherex/"):] for r in rows]
    text = caplog.text
    assert "nope.fits" in text and "outside the mirror root" in text and "contentlength" in text
    assert not (tmp_path / "unused").exists()  # no network, nothing written
    with pytest.raises(ValueError, match="outside the mirror"):
        mirror_path(root, base + "ibe/data/spherex/qr2/%2e%2e/%2e%2e/x.fits")
    with pytest.raises(ValueError, match="no '/ibe/data/spherex/'"):
        mirror_path(root, "https://example.org/other/x.fits")
    report = resolve_mirror(obs, root)
    assert len(report.failures) == 3 and report.requested == len(obs)


def test_download_files_validates_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_workers"):
        download_files([DownloadTask("http://127.0.0.1:1/x.fits", tmp_path / "x.fits")], max_workers=0)
    with pytest.raises(ValueError, match="timeout"):
        download_files([], timeout=0)


def test_local_names_never_collide(archive):
    _, rows = archive
    o = DrizzleObservation("2025W18_2B_0001_1", "D2", 2, 0.0, "https://h/" + rows[0]["uri"])
    full = local_file_name(o)
    cut = local_file_name(o, (10.0, -0.5, 0.1))
    assert full == rows[0]["uri"].rsplit("/", 1)[1]
    assert cut == full[:-5] + "_cutout_10.000000_-0.500000_0.100000deg.fits"
    assert cut != local_file_name(o, (10.0, -0.5, 0.2))
    assert os.sep not in local_file_name(DrizzleObservation("a", "D1", 1, 0.0, "https://h/x/..%2f..%2fevil.fits"))


def test_retry_policy():
    assert all(is_retryable_status(c) for c in (408, 425, 429, 500, 503, 504, 599))
    assert not any(is_retryable_status(c) for c in (200, 206, 301, 400, 403, 404, 416, 600))
    for attempt in range(1, 12):
        d = backoff_delay(attempt, 1.0)
        assert 0.5 * min(MAX_BACKOFF, 2.0 ** (attempt - 1)) <= d <= 1.5 * min(MAX_BACKOFF, 2.0 ** (attempt - 1))
    assert backoff_delay(1, 0.01, retry_after=7.0) == 7.0  # the server's wait wins
    assert backoff_delay(1, 0.01, retry_after=1e6) == MAX_RETRY_AFTER  # but is capped


def test_locate_frame_says_where_the_bytes_are(archive, tmp_path):
    root, rows = archive
    url = "https://irsa.ipac.caltech.edu/" + rows[1]["uri"]
    o = DrizzleObservation("2025W18_2B_0002_1", "D3", 3, 0.0, url, content_length=rows[1]["contentlength"],
                           checksum=rows[1]["contentchecksum"])
    m = locate_frame(o, data_mirror=root, output_dir=tmp_path, cutout=(10.0, 0.0, 0.1))  # the mirror wins
    assert m == FrameLocation("mirror", mirror_path(root, url), url, rows[1]["contentlength"],
                              rows[1]["contentchecksum"])
    assert m.path.is_file() and m.path.stat().st_size == m.expected_length
    d = locate_frame(o, output_dir=tmp_path)
    assert d == FrameLocation("download", tmp_path / "images" / "D3" / local_file_name(o), url,
                              rows[1]["contentlength"], rows[1]["contentchecksum"])
    c = locate_frame(o, output_dir=tmp_path, cutout=(10.0, 0.0, 0.1))
    assert c.kind == "download" and c.url == cutout_url(url, (10.0, 0.0, 0.1))
    assert c.path == tmp_path / "images" / "D3" / local_file_name(o, (10.0, 0.0, 0.1))
    assert c.expected_length is None and c.checksum is None  # the archive describes the whole file only
    with pytest.raises(ValueError, match="data_mirror or output_dir"):
        locate_frame(o)
    with pytest.raises(ValueError, match="no '/ibe/data/spherex/'"):
        locate_frame(DrizzleObservation("x", "D1", 1, 0.0, "https://example.org/x.fits"), data_mirror=root)
