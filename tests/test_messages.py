"""Messages that help: an unreachable TAP service fails at once with one line (measured), a
region of a few pixels warns and suggests arcmin, a mirror holding none of the files says so
with an example path, ``spxdrizzle run`` excludes the recommended flags unless told otherwise,
and progress bars are drawn only where someone watches (a terminal), including during the TAP
query and the cube write."""

import fcntl
import logging
import os
import pty
import shutil
import socket
import struct
import termios
import time

import pytest

from spxquery.drizzle3d import Drizzle3DConfig, drizzle, progress
from spxquery.drizzle3d.cli import main
from spxquery.drizzle3d.cli.main import build_parser
from spxquery.drizzle3d.cli.options import apply_run_defaults, config_from_args
from spxquery.drizzle3d.cubefile import save_cube
from spxquery.drizzle3d.flags import RECOMMENDED_EXCLUDE_FLAGS
from spxquery.drizzle3d.grid import small_region_warning
from spxquery.drizzle3d.query import ArchiveQueryError, ArchiveUnreachableError, query_observations
from spxquery.drizzle3d.testing.archive_server import ArchiveServer


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(tmp_path, **kw):
    base = dict(center_ra=150.0, center_dec=2.0, width=6.0, height=6.0, detector=3, output_dir=tmp_path / "out",
                progress=False)
    return Drizzle3DConfig(**{**base, **kw})


def test_connection_refused_fails_at_once(tmp_path, caplog):
    url = f"http://127.0.0.1:{_closed_port()}/TAP"
    t0 = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="spxquery"):
        with pytest.raises(ArchiveUnreachableError) as info:
            query_observations(_cfg(tmp_path, tap_url=url))
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, elapsed
    msg = str(info.value)
    assert msg.startswith(f"cannot reach the TAP service {url}: connection refused") and "\n" not in msg
    assert "tap_url" in msg
    assert isinstance(info.value, ArchiveQueryError) and isinstance(info.value, ConnectionError)
    assert "retry" not in caplog.text and "async" not in caplog.text


def test_unknown_host_fails_at_once(tmp_path, caplog):
    url = "http://irsa-misspelt.invalid/TAP"
    t0 = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="spxquery"):
        with pytest.raises(ArchiveUnreachableError, match="host name 'irsa-misspelt.invalid' not found"):
            query_observations(_cfg(tmp_path, tap_url=url))
    assert time.perf_counter() - t0 < 10.0  # one name lookup, no retries
    assert "retry" not in caplog.text


def test_cli_wrong_tap_url_is_one_line_and_fast(tmp_path, capsys):
    url = f"http://127.0.0.1:{_closed_port()}/TAP"
    t0 = time.perf_counter()
    rc = main(["run", "--ra", "150", "--dec", "2", "--size", "6", "--detector", "3", "--tap-url", url,
               "--output-dir", str(tmp_path)])
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert rc == 1 and elapsed < 2.0, (rc, elapsed)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: cannot reach the TAP service {url}: connection refused by 127.0.0.1 port "
                      f"{url.split(':')[2].split('/')[0]} (no service listens there); check tap_url (--tap-url) "
                      f"or $SPXQUERY_TAP_URL"]
    assert "Traceback" not in err and "retry" not in err


def test_region_of_a_few_pixels_suggests_arcmin(tmp_path, capsys):
    msg = small_region_warning(_cfg(tmp_path, width=0.5, height=0.5))
    assert msg is not None and "4 x 4 pixels" in msg and "in arcmin" in msg and "--size 30" in msg
    assert small_region_warning(_cfg(tmp_path)) is None  # 6' = 58 pixels
    assert small_region_warning(_cfg(tmp_path, width=2.0, height=2.0)) is None  # 19 pixels: a real small cube
    assert "9 x 9 pixels" in small_region_warning(_cfg(tmp_path, width=1.0, height=1.0))  # "1 degree"
    rc = main(["run", "--ra", "150", "--dec", "2", "--size", "0.5", "--detector", "3", "--tap-url",
               f"http://127.0.0.1:{_closed_port()}/TAP", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "the region is only 4 x 4 pixels (0.5' x 0.5'" in err and "--size 30)" in err


@pytest.fixture(scope="module")
def served(drizzled_cubes):
    with ArchiveServer(drizzled_cubes.field.root) as srv:
        yield srv, drizzled_cubes.field


def test_mirror_with_none_of_the_files(tmp_path, served, caplog, capsys):
    srv, field = served
    empty = tmp_path / "mirror"
    empty.mkdir()
    cfg = _cfg(tmp_path, tap_url=srv.tap_url, data_mirror=empty)
    with caplog.at_level(logging.WARNING, logger="spxquery"):
        with pytest.raises(FileNotFoundError) as info:
            drizzle(cfg)
    msg = str(info.value)
    n = len(field.paths)
    assert f"holds none of the {n} files" in msg and str(empty) in msg and "qr2/level2/" in msg
    assert "no frame contributed" not in msg
    assert caplog.text.count("mirror file not found") == 0  # one summary line, not one line per file
    rc = main(["run", "--ra", "150", "--dec", "2", "--size", "6", "--detector", "3", "--tap-url", srv.tap_url,
               "--mirror", str(empty), "--output-dir", str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert rc == 1
    assert [ln for ln in err.splitlines() if ln.startswith("error:")][0].startswith(
        f"error: D3: data_mirror {empty} holds none of the {n} files")


def test_mirror_with_some_files_names_a_few(tmp_path, served, caplog):
    srv, field = served
    mirror = tmp_path / "mirror"
    keep = field.paths[:1]
    for p in keep:
        rel = p.relative_to(field.root)
        (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, mirror / rel)
    with caplog.at_level(logging.WARNING, logger="spxquery"):
        out = drizzle(_cfg(tmp_path, tap_url=srv.tap_url, data_mirror=mirror))
    assert 3 in out
    missing = len(field.paths) - len(keep)
    assert caplog.text.count("mirror file not found") == min(3, missing)
    assert f"{missing - 3} more missing files not named" in caplog.text


def _run_config(tmp_path, *words):
    parser = build_parser()
    args = parser.parse_args(["run", *words])
    sub = parser._subparsers._group_actions[0].choices["run"]
    return apply_run_defaults(config_from_args(args, sub), args)


def test_run_excludes_the_recommended_flags_unless_told(tmp_path):
    region = ["--ra", "150", "--dec", "2", "--size", "6"]
    assert _run_config(tmp_path, *region).exclude_flags == list(RECOMMENDED_EXCLUDE_FLAGS)
    assert _run_config(tmp_path, *region, "--exclude-flags", "none").exclude_flags == []
    assert _run_config(tmp_path, *region, "--exclude-flags", "HOT").exclude_flags == ["HOT"]
    yaml_without = tmp_path / "without.yaml"
    yaml_without.write_text("center_ra: 150\ncenter_dec: 2\nwidth: 6\nheight: 6\n")
    assert _run_config(tmp_path, str(yaml_without)).exclude_flags == list(RECOMMENDED_EXCLUDE_FLAGS)
    yaml_empty = tmp_path / "empty.yaml"
    yaml_empty.write_text("center_ra: 150\ncenter_dec: 2\nwidth: 6\nheight: 6\nexclude_flags: []\n")
    assert _run_config(tmp_path, str(yaml_empty)).exclude_flags == []
    assert Drizzle3DConfig(center_ra=1, center_dec=1, width=1, height=1).exclude_flags == []  # Python: 0.4.1's


def test_no_progress_bars_off_a_terminal(tmp_path, served, capfd):
    srv, field = served
    out = drizzle(_cfg(tmp_path, tap_url=srv.tap_url, data_mirror=field.root, progress=True))
    assert 3 in out
    err = capfd.readouterr().err
    assert "\r" not in err and "frame/s" not in err and "TAP query" not in err


@pytest.fixture
def terminal(monkeypatch):
    """A pseudo-terminal: yields (``use()``: make it sys.stderr -- call it in the test body, as
    pytest's capture resets sys.stderr after fixtures ran -- and ``written()``: what it received)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns for the bars
    stream = os.fdopen(slave, "w", buffering=1)

    def use() -> None:
        monkeypatch.setattr("sys.stderr", stream)

    def written() -> str:
        stream.flush()
        chunks = []
        os.set_blocking(master, False)
        while True:
            try:
                chunk = os.read(master, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    yield use, written
    stream.close()
    os.close(master)


def test_bars_on_a_terminal_for_the_query_and_the_write(tmp_path, terminal):
    use, written = terminal
    assert not progress.watched()  # pytest captures stderr: not a terminal
    use()
    assert progress.watched()
    assert progress.progress_bar(3, "x", enabled=False).disable
    with progress.waiting("TAP query", enabled=True):
        time.sleep(3 * progress.WAIT_REFRESH_S)
    shown = written()
    assert "TAP query: 00:0" in shown and shown.count("TAP query") >= 2  # redrawn while waiting
    from spxquery.drizzle3d.accumulate import DrizzleCube
    from spxquery.drizzle3d.grid import OutputGrid

    cfg = _cfg(tmp_path)
    grid = OutputGrid.for_detector(cfg, 3)
    cube = DrizzleCube.create(grid.wcs, grid.pixscale, grid.zgrid, cfg, 3)
    save_cube(cube, tmp_path / "c.fits", progress=True)
    shown = written()
    assert "write D3" in shown and "85/85" in shown  # 5 image extensions x 17 planes
