"""Hostile-input corpus, archive side (issue 16, classes 2, 4, 5, 6, 7): odd or endless TAP answers, lying
or endless or trickling file servers, colliding local names, altered files kept from an earlier
run, Ctrl-C during downloads, mirror paths that are no files. Everything runs against the real
loopback archive server (pyvo and requests unchanged); each case is bounded in time and asserts
the documented outcome: a clear error naming the file, field or value, or the bad item skipped
with one warning and counted, the run going on, and nothing partial under a final name."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from hostile_support import bounded, no_partial_under_final_name, run_python, small_archive, wait_for
from spxquery.drizzle3d import Drizzle3DConfig
from spxquery.drizzle3d.archive import download as download_mod
from spxquery.drizzle3d.archive import retry, tap_answer, verify
from spxquery.drizzle3d.archive.download import DownloadTask, download_files
from spxquery.drizzle3d.archive.observations import MAX_ROW_WARNINGS
from spxquery.drizzle3d.archive.tap import ArchiveQueryError
from spxquery.drizzle3d.archive.verify import record_path
from spxquery.drizzle3d.query import (
    DrizzleObservation,
    download_observations,
    download_observations_report,
    local_file_name,
    query_observations,
)
from spxquery.drizzle3d.testing import ArchiveServer, Fault
from spxquery.drizzle3d.testing.small_frames import row_observation, row_path
from spxquery.drizzle3d.testing.votable import votable_bytes

pytestmark = pytest.mark.hostile

RA, DEC = 10.0, 0.0
FAST = {"backoff_base": 0.01, "progress": False, "timeout": 5.0}
COLUMNS = ["obs_publisher_did", "energy_bandpassname", "energy_bounds_lower", "energy_bounds_upper",
           "time_bounds_lower", "time_bounds_upper", "poly", "uri", "contentlength", "contentchecksum", "producttype"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return small_archive(tmp_path_factory.mktemp("hostile_archive"), RA, DEC, 0.01)


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch):
    monkeypatch.setattr(retry, "DEFAULT_BACKOFF_BASE", 0.01)


def _cfg(srv, tmp_path, **kw):
    base = {"center_ra": RA, "center_dec": DEC, "width": 6.0, "height": 6.0, "detector": 3, "tap_url": srv.tap_url,
            "download_timeout": 5.0, "download_retries": 0, "progress": False, "output_dir": tmp_path / "out"}
    base.update(kw)
    return Drizzle3DConfig(**base)


def _obs(rows, srv):
    return [row_observation(r, srv.url_for(r["uri"])) for r in rows]


def _source(root, row) -> bytes:
    return row_path(root, row).read_bytes()


def _warnings(caplog, text):
    return [r for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage()]


# ── class 6: odd TAP values skip their row, with one warning naming row, column and value ────

ROW_CASES = {
    # id: (column, value, VOTable datatype of the column or None for the usual one)
    "length_text": ("contentlength", "12abc", "char"),
    "length_nan": ("contentlength", "NaN-as-text", "char"),
    "length_negative": ("contentlength", -5, "long"),
    "length_huge_float": ("contentlength", "1e300", "double"),
    "length_fraction": ("contentlength", "12.5", "double"),
    "length_saturated": ("contentlength", "99999999999999999999999", "long"),
    "checksum_not_hex": ("contentchecksum", "md5:" + "z" * 32, None),
    "checksum_unknown_algorithm": ("contentchecksum", "crc32:abcd1234", None),
    "checksum_short": ("contentchecksum", "md5:" + "a" * 31, None),
    "time_nan": ("time_bounds_lower", "NaN", "double"),
    "time_reversed": ("time_bounds_lower", "60999.0", "double"),
    "time_overflow": ("time_bounds_upper", "1e308", "double"),
    "time_text": ("time_bounds_lower", "yesterday", "char"),
    "did_garbage": ("obs_publisher_did", "ivo://irsa.ipac/garbage", None),
    "did_detector_7": ("obs_publisher_did", "ivo://irsa.ipac/spherex_qr2?2025W18_2B_0009_1/D7", None),
    "band_disagrees": ("energy_bandpassname", "SPHEREx-D5", None),
    "uri_not_fits": ("uri", "ibe/data/spherex/qr2/readme.txt", None),
    "uri_file_scheme": ("uri", "file:///etc/passwd.fits", None),
    "uri_ftp_scheme": ("uri", "ftp://example.org/x.fits", None),
    "uri_huge": ("uri", "ibe/" + "x" * 100_000 + ".txt", None),
    "poly_nan": ("poly", "10.0 0.0 nan 0.0 10.1 0.1 10.0 0.1", "double[]"),
    "poly_declination_100": ("poly", [10.0, 0.0, 10.1, 100.0, 10.1, 0.1, 10.0, 0.1], None),
    "poly_too_short": ("poly", [10.0, 0.0], None),
}


@pytest.mark.parametrize("case", sorted(ROW_CASES))
def test_odd_tap_value_skips_its_row(archive, tmp_path, caplog, case):
    root, rows = archive
    column, value, datatype = ROW_CASES[case]
    bad = dict(rows[3], **{column: value})
    datatypes = {column: datatype} if datatype else None
    body = votable_bytes(COLUMNS, rows[:3] + [bad], datatypes=datatypes)
    with ArchiveServer(root) as srv, bounded(20):
        srv.faults.add("/TAP/sync", Fault(body=body))
        with caplog.at_level(logging.WARNING):
            got = query_observations(_cfg(srv, tmp_path))
    obs = got[3]
    assert [o.obs_id for o in obs] == [f"2025W18_2B_000{i}_1" for i in (1, 2, 3)]  # the run goes on
    warned = _warnings(caplog, "TAP row 3 skipped")
    assert len(warned) == 1, caplog.text
    message = warned[0].getMessage()
    assert column.split("_bounds")[0] in message and len(message) < 600
    shown = {"length_huge_float": "1e+300", "length_fraction": "12.5", "length_saturated": "9223372036854775807",
             "time_nan": "None", "time_reversed": "60999.0", "time_overflow": "1e+308", "poly_nan": "nan",
             "poly_declination_100": "100.0", "poly_too_short": "[10.0, 0.0]"}.get(case, str(value)[:20])
    assert shown in message


def test_text_in_a_long_column_skips_its_row(archive, tmp_path, caplog):
    """'12abc' in a column declared long (as IRSA declares contentlength) breaks astropy's
    VOTable parser for the whole answer: the answer is read again with that column as text and
    just that row is skipped, with one warning; a NULL (empty) cell of the column stays NULL."""
    root, rows = archive
    body = votable_bytes(COLUMNS, [rows[0], rows[1], dict(rows[2], contentlength=""),
                                   dict(rows[3], contentlength="12abc")], datatypes={"contentlength": "long"})
    with ArchiveServer(root) as srv, bounded(20):
        srv.faults.add("/TAP/sync", Fault(body=body))
        with caplog.at_level(logging.WARNING):
            got = query_observations(_cfg(srv, tmp_path))
        assert srv.hits("/TAP/") == 1  # read once, not retried
    obs = got[3]
    assert [o.obs_id for o in obs] == [f"2025W18_2B_000{i}_1" for i in (1, 2, 3)]
    assert [o.content_length for o in obs] == [rows[0]["contentlength"], rows[1]["contentlength"], None]
    warned = _warnings(caplog, "TAP row 3 skipped")
    assert len(warned) == 1 and "contentlength='12abc'" in warned[0].getMessage(), caplog.text
    assert len(_warnings(caplog, "skipped")) == 1


_IRSA_SHAPED = b"""<?xml version="1.0" encoding="UTF-8"?>
<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3"><RESOURCE type="results">
<INFO name="QUERY_STATUS" value="OK"/><TABLE>
<FIELD name="obs id" datatype="char" arraysize="*"/>
<FIELD name="contentlength" datatype="long" ucd="phys.size;meta.file" unit="byte">
 <DESCRIPTION>size (bytes)</DESCRIPTION><VALUES null="-1"/></FIELD>
<FIELD name="t" datatype="double" width="12" precision="5"/>
<DATA><TABLEDATA>
<TR><TD>a</TD><TD>123</TD><TD>1.5</TD></TR><TR><TD>b</TD><TD>12abc</TD><TD>2.5</TD></TR>
<TR><TD>c</TD><TD>NaN</TD><TD>3.5</TD></TR><TR><TD>d</TD><TD>-1</TD><TD>4.5</TD></TR>
<TR><TD>e</TD><TD/><TD>5.5</TD></TR>
</TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>"""


def test_numeric_field_read_as_text_keeps_its_null_and_the_other_columns():
    """A FIELD as IRSA writes it (no ID, a description, a NULL value) read again as text: what
    the declared type reads as NULL (NaN, the NULL value, empty) stays NULL, the other columns
    keep their types."""
    table = tap_answer.parse_answer(_IRSA_SHAPED).get_first_table().to_table()
    assert list(table["contentlength"].filled("NULL")) == ["123", "12abc", "NULL", "NULL", "NULL"]
    assert table["t"].dtype.kind == "f" and list(table["t"]) == [1.5, 2.5, 3.5, 4.5, 5.5]
    assert list(table["obs_id"]) == ["a", "b", "c", "d", "e"]


def test_odd_cells_in_two_numeric_columns_of_an_async_answer(archive, tmp_path, caplog):
    """Two columns broken in two rows (one long, one double), in the result of an async job:
    both columns are read as text, both rows skipped, the others used."""
    root, rows = archive
    body = votable_bytes(COLUMNS, [rows[0], dict(rows[1], time_bounds_lower="yesterday"), rows[2],
                                   dict(rows[3], contentlength="12abc")],
                         datatypes={"contentlength": "long", "time_bounds_lower": "double"})
    with ArchiveServer(root) as srv, bounded(20):
        srv.faults.add("/results/result", Fault(body=body))
        with caplog.at_level(logging.WARNING):
            got = query_observations(_cfg(srv, tmp_path), mode="async")
    assert [o.obs_id for o in got[3]] == ["2025W18_2B_0001_1", "2025W18_2B_0003_1"]
    assert len(_warnings(caplog, "TAP row 1 skipped: time_bounds_lower")) == 1
    assert len(_warnings(caplog, "TAP row 3 skipped: contentlength")) == 1


def test_broken_answer_of_another_kind_is_still_a_clear_error(archive, tmp_path):
    """Only cells of numeric columns are read again as text; a broken document stays one error."""
    root, rows = archive
    body = votable_bytes(COLUMNS, rows).replace(b"</TR>", b"</TD></TR>", 1)
    with ArchiveServer(root) as srv, bounded(20):
        srv.faults.add("/TAP", Fault(body=body), times=-1)
        with pytest.raises(ArchiveQueryError) as err:
            query_observations(_cfg(srv, tmp_path), mode="sync")
        url = srv.tap_url
    assert url in str(err.value) and "unreadable response" in str(err.value) and len(str(err.value)) < 2000


@pytest.mark.parametrize("mode,path", [("auto", "/TAP/sync"), ("async", "/results/result")])
def test_endless_tap_answer_is_refused_at_the_cap(archive, tmp_path, monkeypatch, mode, path):
    """An answer longer than MAX_TAP_ANSWER_BYTES (here 1 MiB; the body never ends) is one
    error naming the URL and the limit, read no further than the cap, and not retried."""
    root, rows = archive
    monkeypatch.setattr(tap_answer, "MAX_TAP_ANSWER_BYTES", 1 << 20)
    with ArchiveServer(root) as srv, bounded(20):
        srv.faults.add(path, Fault(body=votable_bytes(COLUMNS, rows), extra_bytes=1 << 40), times=-1)
        tracemalloc.start()
        try:
            with pytest.raises(ArchiveQueryError) as err:
                query_observations(_cfg(srv, tmp_path), mode=mode)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert srv.hits(path) == 1
        url = srv.tap_url
    text = str(err.value)
    assert text.startswith("the TAP answer from " + url) and "larger than 1048576 bytes" in text and len(text) < 1000
    assert peak < 16 << 20


def test_many_bad_rows_give_bounded_warnings(archive, tmp_path, caplog):
    root, rows = archive
    bad = [dict(rows[0], obs_publisher_did=f"junk{i}") for i in range(200)]
    with ArchiveServer(root) as srv, bounded(30):
        srv.faults.add("/TAP/sync", Fault(body=votable_bytes(COLUMNS, rows[:2] + bad)))
        with caplog.at_level(logging.WARNING):
            got = query_observations(_cfg(srv, tmp_path))
    assert len(got[3]) == 2
    assert len(_warnings(caplog, "skipped: obs_publisher_did")) == MAX_ROW_WARNINGS
    assert len(_warnings(caplog, "200 TAP rows skipped in all")) == 1


def test_missing_required_column_names_it(archive, tmp_path):
    root, rows = archive
    cols = [c for c in COLUMNS if c != "uri"]
    with ArchiveServer(root) as srv, bounded(20):
        srv.faults.add("/TAP/sync", Fault(body=votable_bytes(cols, rows)))
        with pytest.raises(ArchiveQueryError, match="lacks column.*uri"):
            query_observations(_cfg(srv, tmp_path))


def test_missing_checksum_column_warns_once_and_goes_on(archive, tmp_path, caplog):
    root, rows = archive
    cols = [c for c in COLUMNS if c != "contentchecksum"]
    with ArchiveServer(root) as srv, bounded(20):
        srv.faults.add("/TAP/sync", Fault(body=votable_bytes(cols, rows)))
        with caplog.at_level(logging.WARNING):
            got = query_observations(_cfg(srv, tmp_path))
    assert len(got[3]) == 4 and all(o.checksum is None for o in got[3])
    assert len(_warnings(caplog, "no contentchecksum column")) == 1


@pytest.mark.parametrize("body,status", [
    (b"<html><body>maintenance</body></html>", 200),
    (b"", 200),
    (b"E" * 2_000_000, 400),
    (votable_bytes([], [], "ERROR", "x" * 1_000_000), 200),
], ids=["html_page", "empty_body", "huge_error_text", "huge_votable_error"])
def test_unusable_tap_answer_is_one_bounded_error(archive, tmp_path, body, status):
    root, _ = archive
    with ArchiveServer(root) as srv, bounded(30):
        srv.faults.add("/TAP", Fault(status=status, body=body, content_type="text/html"), times=-1)
        with pytest.raises(ArchiveQueryError) as err:
            query_observations(_cfg(srv, tmp_path))
        url = srv.tap_url
    assert url in str(err.value) and len(str(err.value)) < 2000


def test_uppercase_checksum_is_normalised_and_verified(archive, tmp_path):
    root, rows = archive
    row = dict(rows[0], contentchecksum=rows[0]["contentchecksum"].upper().replace("MD5:", "MD5:"))
    with ArchiveServer(root) as srv, bounded(30):
        srv.faults.add("/TAP/sync", Fault(body=votable_bytes(COLUMNS, [row])))
        obs = query_observations(_cfg(srv, tmp_path))[3]
        assert obs[0].checksum == rows[0]["contentchecksum"].lower()
        paths = download_observations(obs, tmp_path, **FAST)
    assert paths[0].read_bytes() == _source(root, rows[0])


# ── class 4: budgets of a transfer ────────────────────────────────────────────────────────────


def test_body_longer_than_the_file_is_cut_at_its_length(archive, tmp_path, monkeypatch):
    """The server sends 64 MB of junk after the file (and no length): the client never writes
    past the file's length, fails the attempt and gets the file on the next one."""
    root, rows = archive
    sizes = []
    real_stream = download_mod._Fetcher._stream

    def watched(self, *a, **k):
        try:
            return real_stream(self, *a, **k)
        finally:
            sizes.append(self.part.stat().st_size if self.part.exists() else 0)

    monkeypatch.setattr(download_mod._Fetcher, "_stream", watched)
    with ArchiveServer(root) as srv, bounded(30):
        srv.faults.add("0001_1D", Fault(extra_bytes=64 << 20, no_length=True))
        report = download_observations_report(_obs(rows[:1], srv), tmp_path, retries=1, chunk_size=4096, **FAST)
    assert report.ok and report.retries == 1
    assert max(sizes) <= rows[0]["contentlength"]
    assert report.bytes_received < 2 * rows[0]["contentlength"]
    assert report.verified[0].read_bytes() == _source(root, rows[0])


def test_lying_length_and_endless_body_fails_cleanly(archive, tmp_path):
    root, rows = archive
    with ArchiveServer(root) as srv, bounded(30):
        srv.faults.add("0002_1D", Fault(extra_bytes=1 << 40), times=-1)
        report = download_observations_report(_obs(rows[:2], srv), tmp_path, retries=1, **FAST)
    assert len(report.verified) == 1 and len(report.failures) == 1
    assert "contentlength" in report.failures[0].reason
    assert not no_partial_under_final_name(tmp_path)
    assert all(p.stat().st_size <= rows[1]["contentlength"] for p in tmp_path.rglob("*.part"))


def test_unstated_length_is_capped(archive, tmp_path, monkeypatch):
    """No length from archive or server (a cutout-like answer) and an endless body: the
    transfer stops at MAX_UNSTATED_BYTES."""
    root, rows = archive
    monkeypatch.setattr(download_mod, "MAX_UNSTATED_BYTES", 200_000)
    with ArchiveServer(root) as srv, bounded(30):
        srv.faults.add("0001_1D", Fault(extra_bytes=1 << 40, no_length=True), times=-1)
        task = DownloadTask(srv.url_for(rows[0]["uri"]), tmp_path / "x.fits")
        report = download_files([task], retries=0, **FAST)
    assert not report.ok and "more than 200000 bytes" in report.failures[0].reason
    assert not (tmp_path / "x.fits").exists() and report.bytes_received <= 200_000


def test_trickle_ends_at_the_file_deadline(archive, tmp_path):
    """256 B/s never trips a per-read timeout; the per-file deadline ends it with a clear reason."""
    root, rows = archive
    with ArchiveServer(root) as srv, bounded(20):
        srv.faults.add("0003_1D", Fault(rate=256), times=-1)
        t0 = time.monotonic()
        report = download_observations_report(_obs(rows[:3], srv), tmp_path, deadline=1.5, **FAST)
        elapsed = time.monotonic() - t0
    assert elapsed < 4.0
    assert len(report.verified) == 2 and "per-file deadline of 1.5 s" in report.failures[0].reason
    assert not no_partial_under_final_name(tmp_path)


def test_silent_server_ends_at_the_file_deadline(archive, tmp_path):
    """A server that accepts the request and never answers, with a long read timeout."""
    root, rows = archive
    with ArchiveServer(root) as srv, bounded(20):
        srv.faults.add("0001_1D", Fault(delay=60.0), times=-1)
        t0 = time.monotonic()
        report = download_observations_report(_obs(rows[:1], srv), tmp_path, deadline=1.0,
                                              backoff_base=0.01, progress=False, timeout=30.0)
        elapsed = time.monotonic() - t0
    assert elapsed < 3.0 and "per-file deadline" in report.failures[0].reason


def test_download_arguments_are_checked(tmp_path):
    task = DownloadTask("http://127.0.0.1:9/x.fits", tmp_path / "x.fits")
    for kw, word in [({"deadline": 0}, "deadline"), ({"deadline": float("inf")}, "deadline"),
                     ({"timeout": float("nan")}, "timeout")]:
        with pytest.raises(ValueError, match=word):
            download_files([task], **kw)


def test_unsupported_url_scheme_is_one_failure(tmp_path):
    tasks = [DownloadTask("ftp://127.0.0.1/x.fits", tmp_path / "x.fits"),
             DownloadTask("http://[::1/x.fits", tmp_path / "y.fits")]
    with bounded(20):
        report = download_files(tasks, retries=0, **FAST)
    assert len(report.failures) == 2 and all("request error" in f.reason for f in report.failures)


def test_destination_under_a_file_is_a_named_failure(archive, tmp_path):
    root, rows = archive
    blocker = tmp_path / "out"
    blocker.write_text("a file where a directory should be")
    with ArchiveServer(root) as srv, bounded(20):
        report = download_observations_report(_obs(rows[:1], srv), blocker, **FAST)
    assert not report.ok and "local file error" in report.failures[0].reason


def test_destination_that_is_a_directory_is_a_named_failure(archive, tmp_path):
    root, rows = archive
    with ArchiveServer(root) as srv, bounded(20):
        obs = _obs(rows[:2], srv)
        (tmp_path / "images" / "D3" / obs[0].file_name).mkdir(parents=True)
        report = download_observations_report(obs, tmp_path, retries=0, **FAST)
    assert len(report.verified) == 1 and "directory" in report.failures[0].reason.lower()


# ── class 5: Ctrl-C cancels running transfers within a second ───────────────────────────────

_INTERRUPTED_DOWNLOAD = """
import sys, logging
from spxquery.drizzle3d.query import DrizzleObservation, download_observations
url, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
obs = [DrizzleObservation(f"o{i}", "D3", 3, 60800.0, url.replace("0001_1D", f"000{i}_1D")) for i in range(1, n + 1)]
print("start", flush=True)
try:
    download_observations(obs, out, max_workers=n, progress=False, timeout=30.0)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
print("finished", flush=True)
"""


def test_ctrl_c_cancels_transfers_within_a_second(archive, tmp_path):
    root, rows = archive
    out = tmp_path / "out"
    with ArchiveServer(root) as srv:
        srv.faults.add("_1D3_", Fault(rate=2000), times=-1)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-c", _INTERRUPTED_DOWNLOAD, srv.url_for(rows[0]["uri"]), str(out),
                                 "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            wait_for(lambda: len(list(out.rglob("*.part"))) == 3 and srv.hits("_1D3_") == 3, 30,
                     "three transfers under way")
            time.sleep(0.3)  # bodies trickling
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=10)
            elapsed = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stdout and elapsed < 1.0, (elapsed, stderr[-2000:])
    assert not list(out.rglob("*.fits")) and len(list(out.rglob("*.part"))) == 3


def test_cancel_event_stops_a_batch_in_process(archive, tmp_path):
    root, rows = archive
    cancel = threading.Event()
    with ArchiveServer(root) as srv:
        srv.faults.add("_1D3_", Fault(rate=2000), times=-1)
        tasks = [DownloadTask(srv.url_for(r["uri"]), tmp_path / f"{i}.fits", r["contentlength"])
                 for i, r in enumerate(rows)]
        threading.Timer(0.5, cancel.set).start()
        t0 = time.monotonic()
        with bounded(10), pytest.raises(KeyboardInterrupt):
            download_files(tasks, max_workers=2, cancel=cancel, **FAST)
        assert time.monotonic() - t0 < 1.6
    assert not list(tmp_path.glob("*.fits"))


# ── class 2: local names unique and stable; files kept from a run are verified ───────────────


def test_two_frames_sharing_a_file_name_get_two_files(archive, tmp_path, tmp_path_factory):
    """Two exposures whose URLs end in the same file name (two directories): each is fetched
    to its own stable name, neither is drizzled twice, neither is lost."""
    root, rows = archive
    other = dict(rows[1])
    same_name = rows[0]["uri"].rsplit("/", 1)[1]
    moved = other["uri"].rsplit("/", 1)[0].replace("/qr2/", "/qr2_deep/") + "/" + same_name
    src = root / other["uri"][len("ibe/data/spherex/"):]
    dst = root / moved[len("ibe/data/spherex/"):]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    other["uri"] = moved
    with ArchiveServer(root) as srv, bounded(30):
        obs = _obs([rows[0], other], srv)
        paths = download_observations(obs, tmp_path, **FAST)
        again = download_observations(obs, tmp_path, **FAST)  # stable: the same names, nothing fetched
        assert srv.hits("/ibe/") == 2
    assert len(paths) == 2 and paths[0] != paths[1] and again == paths
    assert paths[0].read_bytes() == _source(root, rows[0]) and paths[1].read_bytes() == src.read_bytes()
    assert paths[0].name == same_name and obs[1].obs_id in paths[1].name


def test_one_exposure_from_two_places_gets_two_files(archive, tmp_path):
    """The same exposure and detector at two URLs with one file name (e.g. two collections,
    passed without de-duplication): the second is fetched to its tagged name."""
    root, rows = archive
    uri2 = rows[2]["uri"].replace("/qr2/", "/qr2_wide/")
    dst = root / uri2[len("ibe/data/spherex/"):]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(_source(root, rows[2]))
    with ArchiveServer(root) as srv, bounded(30):
        obs = _obs([rows[2], dict(rows[2], uri=uri2)], srv)
        paths = download_observations(obs, tmp_path, **FAST)
        assert srv.hits("/ibe/") == 2
    assert len(set(paths)) == 2 and paths[0].name == rows[2]["uri"].rsplit("/", 1)[1]


def test_same_url_for_two_observations_is_fetched_once_and_reported(archive, tmp_path, caplog):
    root, rows = archive
    with ArchiveServer(root) as srv, bounded(30):
        obs = _obs(rows[:2], srv)
        twin = DrizzleObservation("2025W18_2B_0099_1", "D3", 3, 60800.0, obs[0].download_url,
                                  content_length=obs[0].content_length, checksum=obs[0].checksum)
        with caplog.at_level(logging.WARNING):
            report = download_observations_report([obs[0], twin, obs[1]], tmp_path, **FAST)
    assert report.paths[0] is not None and report.paths[1] is None and report.paths[2] is not None
    assert len(report.failures) == 1 and "2025W18_2B_0099_1" in report.failures[0].reason
    assert len(set(report.verified)) == len(report.verified) == 2


def test_local_names_are_unique_stable_and_bounded():
    url = "https://h/ibe/data/spherex/qr2/level2/p/v/3/level2_A_1D3_spx_l2b-v12-2025-164.fits"
    own = DrizzleObservation("A_1", "D3", 3, 0.0, url)
    assert local_file_name(own) == "level2_A_1D3_spx_l2b-v12-2025-164.fits"
    other = DrizzleObservation("B_1", "D3", 3, 0.0, url)  # claims a file named for another exposure
    assert local_file_name(other) != local_file_name(own) and "B_1D3" in local_file_name(other)
    assert local_file_name(other) == local_file_name(DrizzleObservation("B_1", "D3", 3, 1.0, url))
    elsewhere = DrizzleObservation("B_1", "D3", 3, 0.0, url.replace("/p/", "/q/"))
    assert local_file_name(elsewhere) != local_file_name(other)
    assert local_file_name(DrizzleObservation("B_1", "D3", 3, 0.0, url.replace("https://h", "http://m"))) \
        == local_file_name(other)  # the host does not change the file
    huge = DrizzleObservation("C" * 5000, "D3", 3, 0.0, "https://h/" + "y" * 5000 + ".fits")
    for cut in (None, (10.0, 0.0, 0.1)):
        name = local_file_name(huge, cut)
        assert len(name.encode()) < 255 and "/" not in name
    weird = DrizzleObservation("../../x", "D3", 3, 0.0, "https://h/a/%2e%2e%2f%00evil\u00e9.fits")
    assert all(c.isalnum() or c in "._+-" for c in local_file_name(weird))


def test_same_size_altered_file_is_not_reused(archive, tmp_path):
    root, rows = archive
    with ArchiveServer(root) as srv, bounded(30):
        obs = _obs(rows[:2], srv)
        paths = download_observations(obs, tmp_path, **FAST)
        data = bytearray(paths[0].read_bytes())
        data[-100] ^= 0xFF  # one byte of the last HDU's data: same size, valid FITS
        paths[0].write_bytes(bytes(data))
        n0 = srv.hits("/ibe/")
        again = download_observations(obs, tmp_path, **FAST)
        assert srv.hits("/ibe/") == n0 + 1
    assert again[0].read_bytes() == _source(root, rows[0])


def test_verified_files_are_not_rehashed_on_a_rerun(archive, tmp_path, monkeypatch):
    root, rows = archive
    hashed = []
    real = verify.file_digest
    monkeypatch.setattr(verify, "file_digest", lambda p, a: hashed.append(Path(p).name) or real(p, a))
    with ArchiveServer(root) as srv, bounded(30):
        obs = _obs(rows, srv)
        paths = download_observations(obs, tmp_path, **FAST)
        assert len(hashed) == len(rows) and all(record_path(p).is_file() for p in paths)
        hashed.clear()
        assert download_observations(obs, tmp_path, **FAST) == paths
        assert hashed == [] and srv.hits("/ibe/") == len(rows)
        os.utime(paths[1], ns=(1, 1))  # touched: checked again (and still good)
        assert download_observations(obs, tmp_path, **FAST) == paths
        assert hashed == [paths[1].name] and srv.hits("/ibe/") == len(rows)


def test_a_record_for_another_checksum_is_not_trusted(archive, tmp_path):
    root, rows = archive
    with ArchiveServer(root) as srv, bounded(30):
        obs = _obs(rows[:1], srv)
        download_observations(obs, tmp_path, **FAST)
        obs[0].checksum = "md5:" + "0" * 32  # the archive now describes other bytes
        report = download_observations_report(obs, tmp_path, retries=0, **FAST)
    assert not report.ok and "md5 checksum" in report.failures[0].reason


# ── class 7: mirror paths that are no files are reported as what they are ───────────────────


def _mirror_target(root: Path, row) -> Path:
    return root / row["uri"][len("ibe/data/spherex/"):]


@pytest.mark.parametrize("kind", ["directory", "fifo", "dev_zero_link", "dangling_link"])
def test_mirror_path_that_is_no_file(archive, tmp_path, caplog, kind):
    src_root, rows = archive
    root = tmp_path / "mirror"
    for r in rows:
        dst = _mirror_target(root, r)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(_source(src_root, r))
    target = _mirror_target(root, rows[1])
    target.unlink()
    expected = {"directory": "is a directory", "fifo": "is a FIFO", "dev_zero_link": "character device",
                "dangling_link": "missing from mirror"}[kind]
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "dev_zero_link":
        target.symlink_to("/dev/zero")
    else:
        target.symlink_to(tmp_path / "nowhere.fits")
    with ArchiveServer(src_root) as srv, bounded(10), caplog.at_level(logging.WARNING):
        report = download_observations_report(_obs(rows, srv), tmp_path / "unused", data_mirror=root)
    assert report.paths[1] is None and len(report.verified) == 3
    assert expected in report.failures[0].reason
    if kind == "dev_zero_link":
        assert "/dev/zero" in report.failures[0].reason


def test_mirror_root_that_is_a_file(archive, tmp_path):
    _, rows = archive
    blocker = tmp_path / "mirror"
    blocker.write_text("not a directory")
    obs = [DrizzleObservation("a", "D3", 3, 0.0, "https://h/ibe/data/spherex/x.fits")]
    with pytest.raises(FileNotFoundError, match="is a file, not a directory"):
        download_observations(obs, tmp_path, data_mirror=blocker)


def test_mirror_file_claimed_by_two_observations(archive, tmp_path):
    root, rows = archive
    with ArchiveServer(root) as srv:
        obs = _obs(rows[:1], srv)
        twin = DrizzleObservation("2025W18_2B_0099_1", "D3", 3, 0.0, obs[0].download_url)
        report = download_observations_report([obs[0], twin], tmp_path, data_mirror=root)
    assert report.paths[0] is not None and report.paths[1] is None
    assert "2025W18_2B_0099_1" in report.failures[0].reason


def test_risky_download_runs_within_an_address_space_limit(archive, tmp_path):
    """The endless-body case in a subprocess whose address space is limited: it ends with
    a failure, not a MemoryError or a crash."""
    root, rows = archive
    code = """
import sys
from spxquery.drizzle3d.archive.download import DownloadTask, download_files
r = download_files([DownloadTask(sys.argv[1], __import__("pathlib").Path(sys.argv[2]), int(sys.argv[3]))],
                   retries=1, progress=False, backoff_base=0.01, timeout=5.0)
print("failures", len(r.failures), r.failures[0].reason if r.failures else "")
"""
    with ArchiveServer(root) as srv:
        srv.faults.add("0001_1D", Fault(extra_bytes=1 << 40, no_length=True), times=-1)
        res = run_python(code, srv.url_for(rows[0]["uri"]), str(tmp_path / "x.fits"), str(rows[0]["contentlength"]),
                         timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "failures 1" in res.stdout and "more than the file's" in res.stdout
