"""Frames read in place from S3 (issue 21), against a real S3 server (moto) on 127.0.0.1.

The bucket holds the simulator's archive trees (QR2 and QR3, IRSA-style cutouts and full
frames) under the keys of IRSA's S3 copy. Cubes drizzled from the bucket equal those from the
local mirror bit for bit; throttling (503 SlowDown) and dropped connections injected by a proxy
in front of the server are survived; a missing object is reported, counted and skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from spxquery.drizzle3d import objectstore  # noqa: E402
from spxquery.drizzle3d.access import AccessError, coalesce, open_source  # noqa: E402
from spxquery.drizzle3d.archive.locations import cloud_location  # noqa: E402
from spxquery.drizzle3d.archive.observations import DrizzleObservation, rows_to_observations  # noqa: E402
from spxquery.drizzle3d.config import Drizzle3DConfig  # noqa: E402
from spxquery.drizzle3d.grid import build_output_wcs  # noqa: E402
from spxquery.drizzle3d.objectstore import (  # noqa: E402
    FsspecSource,
    ObjectLocation,
    TransferCounter,
    storage_options_for,
)
from spxquery.drizzle3d.pipeline import drizzle, drizzle_detector, drizzle_tiled  # noqa: E402
from spxquery.drizzle3d.simulate import simulate_field  # noqa: E402
from spxquery.drizzle3d.testing.archive_server import ArchiveServer  # noqa: E402
from spxquery.drizzle3d.testing.s3_server import FaultProxy, S3Server  # noqa: E402

BUCKET = "nasa-irsa-spherex"
RA, DEC = 150.0, 2.0
#: field name -> simulate_field arguments (QR2/QR3, cutouts/full frames).
FIELDS = {
    "qr2_cutouts": dict(release="qr2", n_pointings=4, cutout_size_deg=0.2, seed=21),
    "qr3_cutouts": dict(release="qr3", n_pointings=3, cutout_size_deg=0.2, seed=22),
    "qr2_full": dict(release="qr2", n_pointings=1, seed=23),
    "qr3_full": dict(release="qr3", n_pointings=1, seed=24),
    "qr2_true_wavelengths": dict(release="qr2", n_pointings=3, cutout_size_deg=0.2, seed=25, true_wavelengths=True),
}


#: botocore's own retries off (one attempt), so that every fault reaches the byte source.
NO_BOTOCORE_RETRIES = {"retries": {"total_max_attempts": 1}}


class _Bucket:
    """The S3 server and the fields of :data:`FIELDS`, each simulated and uploaded under
    ``s3://BUCKET/<field>/`` when first asked for (:meth:`field`)."""

    def __init__(self, server: S3Server, root: Path):
        self.server, self.root, self._fields = server, root, {}

    def field(self, name: str):
        if name not in self._fields:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                info = simulate_field(self.root / name, RA, DEC, detectors=(3,), psf_size=21, psf_zones=1,
                                      **FIELDS[name])
            self.server.upload_tree(self.root / name, BUCKET, prefix=f"{name}/")
            self._fields[name] = info
        return self._fields[name]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The S3 server on 127.0.0.1 with the simulated fields (:class:`_Bucket`)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with S3Server() as server:
        yield _Bucket(server, tmp_path_factory.mktemp("cloud"))


@pytest.fixture
def fast_retries(monkeypatch):
    """Backoff of milliseconds, so that retried tests stay fast."""
    monkeypatch.setattr(objectstore, "BACKOFF_BASE", 0.001)


def _config(out: Path, **kw) -> Drizzle3DConfig:
    kw.setdefault("progress", False)
    return Drizzle3DConfig(center_ra=RA, center_dec=DEC, width=6.0, height=6.0, detector=3, output_dir=out, **kw)


def _locations(s3, name: str, endpoint: str, **options) -> list:
    info = s3.field(name)
    opts = {"endpoint_url": endpoint, **options}
    return [ObjectLocation(f"s3://{BUCKET}/{name}/{p.relative_to(info.root).as_posix()}", p.stat().st_size, opts)
            for p in info.paths]


def cube_digest(path: Path, keys=("NCOMBINE", "N_REJECT", "N_EMPTY")) -> str:
    """The cube's arrays and bookkeeping ``keys`` (not the date of writing)."""
    h = hashlib.sha256()
    with fits.open(path) as hdul:
        for key in keys:
            h.update(repr(hdul[0].header.get(key)).encode())
        for hdu in hdul[1:]:
            h.update(hdu.name.encode())
            h.update(np.ascontiguousarray(hdu.data).tobytes() if hdu.data is not None else b"")
    return h.hexdigest()


def _drizzle(paths, out: Path, **kw) -> Path:
    cfg = _config(out, **kw)
    result = drizzle_detector(paths, cfg, 3, build_output_wcs(cfg))
    assert result is not None
    return result


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if "full" in n else [])
                                  for n in FIELDS if "true" not in n])
def test_cube_from_s3_equals_cube_from_the_mirror(s3, name, tmp_path):
    counter = objectstore.TRANSFERS
    counter.reset()
    from_s3 = _drizzle(_locations(s3, name, s3.server.endpoint_url), tmp_path / "s3")
    local = _drizzle(s3.field(name).paths, tmp_path / "local")
    assert cube_digest(from_s3) == cube_digest(local)
    sizes = {p.name: p.stat().st_size for p in s3.field(name).paths}
    assert set(counter.by_name) == set(sizes)
    for fname, nbytes in counter.by_name.items():
        share = nbytes / sizes[fname]
        # a 6' region of a full frame: its rows (~5% of each image) and the frame's sample of rows;
        # a small cutout is read whole, its headers in 4-block chunks that overlap the data, and its
        # images in one request that spans the headers between them (PREFETCH_GAP_BYTES)
        assert 0 < share < (0.12 if "full" in name else 1.3), (fname, share)


def test_drizzle_end_to_end_from_s3_with_the_archives_cloud_keys(s3, tmp_path, monkeypatch):
    """drizzle(config) with data_mirror = s3://bucket/prefix: the query asks for cloud_access, the
    keys come from it, AWS_ENDPOINT_URL points the anonymous client at the test server."""
    info = s3.field("qr3_cutouts")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.server.endpoint_url)
    with ArchiveServer(info.root) as server:
        cloud = _config(tmp_path / "s3", tap_url=server.tap_url, data_mirror=f"s3://{BUCKET}/qr3_cutouts")
        assert cloud.data_mirror == f"s3://{BUCKET}/qr3_cutouts"
        from spxquery.drizzle3d.query import query_observations

        observations = query_observations(cloud)[3]
        assert observations and all(o.cloud_key and o.cloud_key.startswith("qr3/level2/") for o in observations)
        out_s3 = drizzle(cloud)[3]
        out_local = drizzle(_config(tmp_path / "local", tap_url=server.tap_url, data_mirror=info.root))[3]
    assert cube_digest(out_s3) == cube_digest(out_local)


def test_tiled_run_from_s3_equals_the_one_piece_cube(s3, tmp_path):
    """Tiles (in this process) read the objects themselves: the locations pickle with their
    storage_options (as dask sends them to workers) and the assembled cube is the one-piece cube."""
    import pickle

    locations = _locations(s3, "qr3_cutouts", s3.server.endpoint_url)
    again = pickle.loads(pickle.dumps(locations))
    assert again == locations and [dict(p.storage_options) for p in again] == [dict(p.storage_options)
                                                                               for p in locations]
    one_piece = _drizzle(locations, tmp_path / "one")
    cfg = _config(tmp_path / "tiled", tile_arcmin=2.5)
    tiled = drizzle_tiled(locations, cfg, 3, 2.5)
    assert tiled is not None
    assert cube_digest(tiled) == cube_digest(one_piece)
    manifest = json.loads((tmp_path / "tiled" / "tiles_D3" / "manifest.json").read_text())
    assert len(manifest["tiles"]) == 9
    assert manifest["frames"] == [p.url for p in locations]


@pytest.mark.parametrize("name", ["qr3_cutouts", pytest.param("qr2_full", marks=pytest.mark.slow)])
def test_throttling_and_dropped_connections_are_survived(s3, name, tmp_path, monkeypatch, fast_retries):
    """Every 4th object read answered 503 SlowDown, every 7th cut off half-way: with the
    libraries' own retries off, the byte source's retries carry the run to the same cube."""
    import s3fs

    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    counter = objectstore.TRANSFERS
    counter.reset()
    # At most two faults per request: with several reads in flight the global count could otherwise
    # hit one range six times in a row, and the frame would (rightly) be skipped.
    with FaultProxy(s3.server.endpoint_url, slowdown_every=4, drop_every=7, faults_per_request=2) as proxy:
        locs = _locations(s3, name, proxy.endpoint_url, config_kwargs=NO_BOTOCORE_RETRIES)
        from_s3 = _drizzle(locs, tmp_path / "s3")
    assert proxy.counts["slowdown"] > 0 and proxy.counts["dropped"] > 0, proxy.counts
    assert counter.retries > 0
    assert cube_digest(from_s3) == cube_digest(_drizzle(s3.field(name).paths, tmp_path / "local"))


def test_throttled_cutout_frames_with_library_retries(s3, tmp_path, fast_retries):
    """The same faults with s3fs/botocore's own retries on (the default configuration)."""
    with FaultProxy(s3.server.endpoint_url, slowdown_every=6, drop_every=9, faults_per_request=2) as proxy:
        from_s3 = _drizzle(_locations(s3, "qr2_cutouts", proxy.endpoint_url), tmp_path / "s3")
    assert proxy.counts["slowdown"] > 0 and proxy.counts["dropped"] > 0, proxy.counts
    assert cube_digest(from_s3) == cube_digest(_drizzle(s3.field("qr2_cutouts").paths, tmp_path / "local"))


def test_a_range_failing_on_every_attempt_is_an_error_naming_the_object(s3, monkeypatch, fast_retries):
    import s3fs

    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    with FaultProxy(s3.server.endpoint_url, slowdown_every=1) as proxy:
        loc = _locations(s3, "qr3_cutouts", proxy.endpoint_url, config_kwargs=NO_BOTOCORE_RETRIES)[0]
        src = FsspecSource(loc, retries=2, counter=TransferCounter())
        with pytest.raises(AccessError, match=r"still failing after 3 attempts.*SlowDown|still failing after 3"):
            src.read(0, 2880)
    assert src.name in str(loc) and proxy.counts["slowdown"] == 3


def test_the_fault_proxy_breaks_one_request_at_most_faults_per_request_times(s3, monkeypatch, fast_retries):
    import s3fs

    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    with FaultProxy(s3.server.endpoint_url, slowdown_every=1, faults_per_request=2) as proxy:
        loc = _locations(s3, "qr3_cutouts", proxy.endpoint_url, config_kwargs=NO_BOTOCORE_RETRIES)[0]
        src = FsspecSource(loc, retries=2, counter=TransferCounter())
        assert len(src.read(0, 2880)) == 2880  # the third attempt forwarded
        assert len(src.read(2880, 2880)) == 2880  # another range: broken twice again
    assert proxy.counts["slowdown"] == 4 and proxy.counts["forwarded"] >= 2


def test_a_missing_object_is_reported_counted_and_skipped(s3, tmp_path, caplog):
    locs = _locations(s3, "qr3_cutouts", s3.server.endpoint_url)
    missing = ObjectLocation(locs[1].url.replace(".fits", "_gone.fits"), None, locs[1].storage_options)
    with caplog.at_level(logging.WARNING, logger="spxquery.drizzle3d.pipeline"):
        from_s3 = _drizzle([locs[0], missing, locs[2]], tmp_path / "s3")
    assert any("no such object" in r.getMessage() and missing.url in r.getMessage() for r in caplog.records)
    paths = s3.field("qr3_cutouts").paths
    local = _drizzle([paths[0], paths[2]], tmp_path / "local")
    assert fits.getheader(from_s3)["N_REJECT"] == 1
    assert cube_digest(from_s3, keys=("NCOMBINE",)) == cube_digest(local, keys=("NCOMBINE",))


def test_the_archives_length_is_checked_when_an_object_is_opened(s3):
    loc = _locations(s3, "qr3_cutouts", s3.server.endpoint_url)[0]
    wrong = ObjectLocation(loc.url, loc.expected_length + 1, loc.storage_options)
    with pytest.raises(AccessError, match="the archive lists"):
        open_source(wrong)


def test_ranges_are_coalesced_and_complete(s3):
    """Rows far apart are separate requests, neighbours one; every byte equals the file's."""
    loc = _locations(s3, "qr2_cutouts", s3.server.endpoint_url)[0]
    path = s3.field("qr2_cutouts").paths[0]
    data = path.read_bytes()
    counter = TransferCounter()
    src = FsspecSource(loc, counter=counter)
    ranges = [(0, 100), (150, 50), (len(data) - 10, 10), (3000, 0)]
    got = src.read_ranges(ranges)
    assert [g.tobytes() for g in got] == [data[o:o + n] for o, n in ranges]
    assert counter.requests == 2 + 1  # HEAD, then [0, 200) and the last 10 bytes
    assert counter.bytes == 210
    assert coalesce([(500, 10), (0, 10), (20, 10)], gap=5) == [(0, 10), (20, 10), (500, 10)]
    assert coalesce([(500, 10), (0, 10), (20, 10)], gap=10) == [(0, 30), (500, 10)]
    with pytest.raises(AccessError, match="asked for"):
        src.read(len(data) - 5, 10)


def test_storage_options_anonymous_by_default_and_aws_endpoint_url(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert storage_options_for("s3", None) == {"anon": True}
    assert storage_options_for("s3", {"key": "k", "secret": "s"}) == {"key": "k", "secret": "s"}
    assert storage_options_for("gcs", None) == {}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert storage_options_for("s3", None) == {"anon": True, "endpoint_url": "http://127.0.0.1:9"}
    assert storage_options_for("s3", {"endpoint_url": "http://x"})["endpoint_url"] == "http://x"


def test_data_mirror_takes_a_url_or_a_path_and_storage_options_a_mapping(tmp_path):
    cfg = _config(tmp_path, data_mirror=" s3://nasa-irsa-spherex ", storage_options={"anon": True})
    assert cfg.data_mirror == "s3://nasa-irsa-spherex" and cfg.storage_options == {"anon": True}
    assert _config(tmp_path, data_mirror=str(tmp_path)).data_mirror == tmp_path
    with pytest.raises(ValueError, match="storage_options"):
        _config(tmp_path, storage_options=["anon"])
    with pytest.raises(ValueError, match="storage_options"):
        _config(tmp_path, storage_options={"not a name": 1})


def test_the_command_line_takes_an_s3_mirror_and_yaml_storage_options(tmp_path):
    from spxquery.drizzle3d.cli import build_parser, config_from_args

    yml = tmp_path / "c.yaml"
    yml.write_text("center_ra: 1.0\ncenter_dec: 1.0\nwidth: 3\nheight: 3\n"
                   "storage_options: {anon: false, profile: science}\n")
    args = build_parser().parse_args(["run", str(yml), "--mirror", "s3://nasa-irsa-spherex"])
    cfg = config_from_args(args)
    assert cfg.data_mirror == "s3://nasa-irsa-spherex"
    assert cfg.storage_options == {"anon": False, "profile": "science"}
    cfg.to_yaml_file(tmp_path / "back.yaml")
    back = Drizzle3DConfig.from_yaml_file(tmp_path / "back.yaml")
    assert (back.storage_options, back.data_mirror) == (cfg.storage_options, cfg.data_mirror)


def _obs(**kw) -> DrizzleObservation:
    url = "https://irsa.ipac.caltech.edu/ibe/data/spherex/qr2/level2/P/l2b-v1-2025-1/3/f.fits"
    return DrizzleObservation(obs_id="P_0001_1", band="D3", detector=3, mjd=1.0, download_url=url, **kw)


def test_object_keys_come_from_cloud_access_or_the_url():
    assert cloud_location(_obs(), "s3://b/").url == "s3://b/qr2/level2/P/l2b-v1-2025-1/3/f.fits"
    assert cloud_location(_obs(cloud_key="qr2/x/g.fits"), "s3://b/pre").url == "s3://b/pre/qr2/x/g.fits"
    row = {"obs_publisher_did": "ivo://irsa.ipac/spherex_qr2?P_0001_1/D3", "uri": "ibe/data/spherex/qr2/f.fits",
           "time_bounds_lower": 1.0, "time_bounds_upper": 1.1}
    good = json.dumps({"aws": {"bucket_name": BUCKET, "key": "qr2/level2/f.fits"}})
    keys = []
    for value in (good, "{not json", json.dumps({"aws": {"key": "../../etc/passwd"}}), None):
        (obs,) = rows_to_observations([dict(row, cloud_access=value)], "https://irsa.ipac.caltech.edu/")
        keys.append(obs.cloud_key)
    assert keys == ["qr2/level2/f.fits", None, None, None]


def test_fsspec_and_s3fs_are_imported_only_when_an_object_is_read():
    code = ("import sys, spxquery.drizzle3d, spxquery.drizzle3d.pipeline, spxquery.drizzle3d.query; "
            "print(sorted(m for m in ('fsspec', 's3fs') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_service_without_cloud_access_is_asked_again_and_keys_follow_from_urls(s3, tmp_path, monkeypatch,
                                                                                  caplog):
    from spxquery.drizzle3d.query import query_observations
    from spxquery.drizzle3d.testing import tap_schema

    monkeypatch.setattr(tap_schema, "STRING_COLUMNS", tuple(c for c in tap_schema.STRING_COLUMNS
                                                            if c != "cloud_access"))
    info = s3.field("qr3_cutouts")
    with ArchiveServer(info.root) as server, caplog.at_level(logging.WARNING):
        cfg = _config(tmp_path, tap_url=server.tap_url, data_mirror=f"s3://{BUCKET}/qr3_cutouts")
        observations = query_observations(cfg)[3]
    assert len(observations) == len(info.paths) and all(o.cloud_key is None for o in observations)
    assert any("without the cloud_access column" in r.getMessage() for r in caplog.records)


def test_any_fsspec_url_works_the_same(s3, tmp_path):
    """file:// URLs go through the same byte source (fsspec's local filesystem)."""
    paths = s3.field("qr3_cutouts").paths
    urls = [p.resolve().as_uri() for p in paths]
    assert all(u.startswith("file:///") for u in urls)
    assert cube_digest(_drizzle(urls, tmp_path / "url")) == cube_digest(_drizzle(paths, tmp_path / "local"))


def test_unusable_storage_options_reject_the_frame_with_the_reason():
    with pytest.raises(AccessError, match="storage_options|cannot open"):
        open_source(ObjectLocation("s3://nasa-irsa-spherex/qr2/x.fits", None,
                                   {"endpoint_url": "http://127.0.0.1:9", "no_such_option": 1}))


def test_prefetch_fetches_in_one_batch_and_serves_the_reads_after(s3):
    """prefetch: one batch of coalesced requests; the reads it covers cost no request and give
    the file's bytes; a range it does not cover is fetched; the next prefetch replaces the held bytes."""
    loc = _locations(s3, "qr2_cutouts", s3.server.endpoint_url)[0]
    data = s3.field("qr2_cutouts").paths[0].read_bytes()
    counter = TransferCounter()
    src = FsspecSource(loc, counter=counter)
    far = len(data) - 100
    src.prefetch([(0, 100), (150, 50), (far, 100)])
    assert counter.requests == 1 + 2  # HEAD, [0, 200) and the tail
    got = src.read_ranges([(160, 20), (far + 10, 90), (0, 0), (10, 5)])
    assert [g.tobytes() for g in got] == [data[160:180], data[far + 10:far + 100], b"", data[10:15]]
    assert counter.requests == 3 and counter.bytes == 300
    assert src.read(5000, 10).tobytes() == data[5000:5010] and counter.requests == 4
    src.prefetch([(5000, 10)])
    assert src.read(0, 10).tobytes() == data[:10] and counter.requests == 6  # [0, 200) is no longer held
    with pytest.raises(AccessError, match="asked for"):
        src.prefetch([(far, 200)])
    src.close()
    with pytest.raises(AccessError, match="after close"):
        src.prefetch([(0, 1)])


def _requests_per_frame(locations, out: Path, monkeypatch, prefetch: bool) -> tuple:
    """(digest, requests, bytes, round trips per frame) of a cube drizzled from ``locations``, with
    the frame reader's prefetch or (``prefetch`` False) each extension read on its own."""
    if not prefetch:
        monkeypatch.setattr(FsspecSource, "prefetch", lambda self, ranges: None)
    counter = objectstore.TRANSFERS
    counter.reset()
    digest = cube_digest(_drizzle(locations, out))
    monkeypatch.undo()
    n = len(locations)
    return digest, counter.requests / n, counter.bytes / n, counter.round_trips / n


@pytest.mark.parametrize("name", ["qr2_cutouts", pytest.param("qr2_full", marks=pytest.mark.slow)])
def test_prefetch_cuts_requests_per_frame_and_keeps_the_cube(s3, name, tmp_path, monkeypatch):
    """One batch per frame for the sample and the region's rows: fewer requests (a cutout's
    extensions are one request; a full frame's sample rows near the region ride in its
    request) and round trips (measured: 13 -> 10 requests, each its own round trip, per cutout;
    141 -> 133 and 17 -> 10 per full frame), bytes within a bounded excess (coalesced gaps),
    the same cube bit for bit."""
    locations = _locations(s3, name, s3.server.endpoint_url)
    before = _requests_per_frame(locations, tmp_path / "each", monkeypatch, prefetch=False)
    after = _requests_per_frame(locations, tmp_path / "batch", monkeypatch, prefetch=True)
    assert after[0] == before[0]
    assert after[1] <= before[1] - (2 if "cutouts" in name else 6), (before, after)
    assert after[3] <= before[3] - (2 if "cutouts" in name else 5), (before, after)
    assert after[2] <= before[2] + 8 * objectstore.PREFETCH_GAP_BYTES, (before, after)


def test_cloud_runs_show_a_progress_bar_in_bytes(s3, tmp_path, monkeypatch, capsys):
    """In cloud mode a byte bar runs beside the frame bar and ends at the bytes received."""
    from tqdm import tqdm

    from spxquery.drizzle3d import progress

    monkeypatch.setattr(progress, "watched", lambda: True)
    counter = objectstore.TRANSFERS
    counter.reset()
    _drizzle(_locations(s3, "qr3_cutouts", s3.server.endpoint_url), tmp_path / "s3", progress=True)
    err = capsys.readouterr().err
    assert counter.bytes > 0 and "D3 read: " in err
    assert f"D3 read: {tqdm.format_sizeof(counter.bytes, divisor=1000)}B " in err, err[-2000:]
    _drizzle(s3.field("qr3_cutouts").paths, tmp_path / "local", progress=True)
    assert "D3 read" not in capsys.readouterr().err  # local files: frames only


@pytest.mark.slow
def test_distributed_tiles_read_s3_on_worker_processes(s3, tmp_path, monkeypatch, capsys):
    """drizzle(config) tiled on a dask LocalCluster whose worker processes were started without
    AWS_ENDPOINT_URL: the locations carry the endpoint resolved in the client, each worker reads
    its frames from S3 itself, the cube equals the local mirror's bit for bit, and the bytes the
    workers read feed the byte bar."""
    from distributed import Client, LocalCluster
    from tqdm import tqdm

    from spxquery.drizzle3d import progress

    info = s3.field("qr3_cutouts")
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client, ArchiveServer(info.root) as server:
        assert not any(client.run(lambda: os.environ.get("AWS_ENDPOINT_URL")).values())
        workers = set(client.run(os.getpid).values())
        assert os.getpid() not in workers and len(workers) == 2
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.server.endpoint_url)  # this process only
        monkeypatch.setattr(progress, "watched", lambda: True)
        cloud = _config(tmp_path / "s3", tap_url=server.tap_url, data_mirror=f"s3://{BUCKET}/qr3_cutouts",
                        tile_arcmin=2.5, scheduler=cluster.scheduler_address, progress=True)
        out_s3 = drizzle(cloud)[3]
        err = capsys.readouterr().err
        out_local = drizzle(_config(tmp_path / "local", tap_url=server.tap_url, data_mirror=info.root))[3]
    assert cube_digest(out_s3) == cube_digest(out_local)
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "s3" / "tiles_D3").glob("tile_*.json"))]
    read = sum(r["bytes_read"] for r in records)
    assert len(records) == 9 and read > 0
    assert f"D3 read: {tqdm.format_sizeof(read, divisor=1000)}B " in err, err[-2000:]


def test_cloud_locations_carry_the_endpoint_resolved_in_the_client(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    loc = cloud_location(_obs(cloud_key="qr2/level2/x.fits"), "s3://bucket")
    assert dict(loc.storage_options) == {"anon": True, "endpoint_url": "http://127.0.0.1:9"}
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    loc = cloud_location(_obs(cloud_key="qr2/level2/x.fits"), "s3://bucket", {"key": "k", "secret": "s"})
    assert dict(loc.storage_options) == {"key": "k", "secret": "s"}  # on AWS: nothing added


def test_frames_from_s3_use_a_local_spectral_wcs_product(s3, tmp_path, caplog):
    """Frames read in place take the wavelengths of a local product file (spectral_wcs = its path)
    bit for bit as the same frames on disk; with auto and an s3:// data_mirror the product is not
    looked for in the bucket: the lookup, with one warning saying why."""
    name = "qr2_true_wavelengths"
    info = s3.field(name)
    (product,) = info.root.glob("qr2/spectral_wcs/*/3/*.fits")
    locations = _locations(s3, name, s3.server.endpoint_url)
    from_s3 = _drizzle(locations, tmp_path / "s3", spectral_wcs=str(product))
    local = _drizzle(info.paths, tmp_path / "local", spectral_wcs=str(product))
    assert fits.getheader(from_s3)["WAVESRC"] == "SPECTRAL_WCS" and fits.getheader(from_s3)["WVF00001"] == product.name
    assert cube_digest(from_s3) == cube_digest(local)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        auto = _drizzle(locations, tmp_path / "auto", data_mirror=f"s3://{BUCKET}/{name}")
    warned = [r.getMessage() for r in caplog.records if "spectral WCS" in r.getMessage()]
    assert len(warned) == 1 and "not read from an object store" in warned[0]
    assert fits.getheader(auto)["WAVESRC"] == "LOOKUP"
    assert cube_digest(auto) != cube_digest(from_s3)


def test_a_product_version_with_an_s3_mirror_is_refused():
    with pytest.raises(ValueError, match="spectral_wcs=cal-wcs-v4-2025-254 names an archive product version"):
        _config(Path("out"), data_mirror=f"s3://{BUCKET}", spectral_wcs="cal-wcs-v4-2025-254")
    assert _config(Path("out"), data_mirror=f"s3://{BUCKET}", spectral_wcs="lookup").spectral_wcs == "lookup"
