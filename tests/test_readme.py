"""The README's promises: the two commands at the top, quickstarts and analysis examples that run
as written (executed here, offline, in a temporary directory), a configuration table listing
every Drizzle3DConfig field, and the demo picture it shows."""

import contextlib
import dataclasses
import io
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.io import load_cube

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _text():
    return README.read_text(encoding="utf-8")


def _block_after(marker: str, lang: str) -> str:
    """The fenced ``lang`` code block that follows the HTML comment ``marker``."""
    text = _text()
    i = text.index(f"<!-- {marker} -->")
    m = re.compile(rf"```{lang}\n(.*?)\n```", re.S).search(text, i)
    assert m is not None, f"no ```{lang} block after <!-- {marker} -->"
    assert text[i:m.start()].strip() == f"<!-- {marker} -->", "the code block must follow the marker directly"
    return m.group(1)


def test_two_commands_at_the_top():
    text = _text()
    first = re.search(r"```bash\n(.*?)\n```", text, re.S)
    assert first is not None and first.start() < 200
    commands = [ln.split("#")[0].strip() for ln in first.group(1).splitlines() if ln.strip()]
    assert commands == ["bash tools/demo.sh", "bash tools/test.sh"]
    demo = (ROOT / "tools" / "demo.sh").read_text()
    assert demo.startswith("#!/usr/bin/env bash") and "env.sh" in demo and " demo " in demo


def test_config_reference_lists_every_field():
    text = _text()
    section = text[text.index("## Configuration reference"):text.index("## Output format")]
    rows = {m.group(1) for m in re.finditer(r"^\| `(\w+)` \|", section, re.M)}
    fields = [f.name for f in dataclasses.fields(Drizzle3DConfig) if f.init]
    assert set(fields) == rows, (set(fields) - rows, rows - set(fields))
    # listed in constructor order, each with type, default, unit and meaning columns
    order = [m.group(1) for m in re.finditer(r"^\| `(\w+)` \|", section, re.M)]
    assert order == fields
    for line in section.splitlines():
        if line.startswith("| `"):
            assert line.count("|") == 6, line


def test_output_format_names_every_hdu_and_column():
    text = _text()
    section = text[text.index("## Output format"):text.index("## Performance")]
    for name in ("PRIMARY", "SCI", "VARIANCE", "AND_MASK", "OR_MASK", "COUNT", "WAVELENGTH", "N_INPUT_SC",
                 "LAMBDA_MIN", "R_EFF", "N_INPUTS", "N_REJECT", "WAVE-LOG", "WAVEMAXE", "INFnnnnn", "ZSCnnnnn",
                 "WCS-TAB", "WAVE-TAB", "SPECSYS", "MJD-BEG", "MJD-END", "DATE-OBS", "TELESCOP", "MJy2 / sr2"):
        assert name in section, name


def test_demo_pictures_exist_and_are_small():
    text = _text()
    raw = "https://raw.githubusercontent.com/spxquery-drizzle3d/spxquery-drizzle3d/main/"  # see test_packaging
    for url in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text):
        assert url.startswith(raw), url  # absolute, so that the pictures show on PyPI too
        rel = url[len(raw):]
        p = ROOT / rel
        assert p.is_file(), rel
        assert 5_000 < p.stat().st_size < 200_000, (rel, p.stat().st_size)
        img = mpimg.imread(p)
        assert img.ndim == 3 and img[..., :3].std() > 0.05
    assert "docs/images/demo_collapsed.png" in text


def _run_block(marker: str, cwd: Path) -> tuple:
    """Execute the README's ```python block after ``<!-- marker -->`` in ``cwd``: (namespace, stdout)."""
    code = _block_after(marker, "python")
    namespace = {"__name__": "__readme__"}
    out = io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"{README}:{marker}", "exec"), namespace)
    finally:
        os.chdir(here)
    return namespace, out.getvalue()


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The Python quickstart, run once as written; the analysis examples run on its cube."""
    where = tmp_path_factory.mktemp("readme")
    namespace, out = _run_block("quickstart", where)
    return where, namespace, out


def test_python_quickstart_runs_as_written(quickstart):
    where, namespace, out = quickstart
    cube_path = where / "my_cubes" / "drizzle_D3.fits"
    assert namespace["cubes"] == {3: Path("my_cubes/drizzle_D3.fits")}
    assert cube_path.is_file()
    assert "(17, 78, 78)" in out  # the shape the comment promises
    cube = load_cube(cube_path)
    assert cube["header"]["N_INPUTS"] == 8
    for suffix in ("collapsed", "spectrum"):
        assert (where / "my_cubes" / f"drizzle_D3_{suffix}.png").is_file()


def test_analysis_example_runs_as_written(quickstart):
    """read_cube: exact wavelengths, an aperture spectrum in mJy, images, the spectral-cube view."""
    import astropy.units as u

    where, _, _ = quickstart
    ns, out = _run_block("analysis", where)
    cube, sp = ns["cube"], ns["sp"]
    lam = load_cube(where / "my_cubes" / "drizzle_D3.fits")["wavelength"]["LAMBDA"]
    assert list(cube.wavelength.to_value(u.um)) == list(lam) and "um" in out
    assert sp.flux.unit == u.mJy and sp.meta["n_pixels"] > 20 and (~sp.mask).sum() >= 8
    assert 5 < float(sp.flux[~sp.mask].to_value(u.mJy).mean()) < 60  # the 30 mJy x lambda^-1 source
    assert ns["pixel"].flux.unit == u.MJy / u.sr
    assert ns["image"].meta["planes"] and ns["plane"].meta["bin"][0] <= 2.0 * u.um <= ns["plane"].meta["bin"][1]
    assert "1.9925" in out  # spectral_slab(1.98, 2.01): the plane whose bin holds the request


def test_readers_example_runs_as_written(quickstart):
    """spectral-cube, specutils and astropy read the cube as the README shows."""
    import astropy.units as u
    import numpy as np

    where, _, _ = quickstart
    ns, _ = _run_block("readers", where)
    lam = np.asarray(load_cube(where / "my_cubes" / "drizzle_D3.fits")["wavelength"]["LAMBDA"])
    np.testing.assert_allclose(ns["sc"].spectral_axis.to_value(u.um), lam, rtol=1e-15)
    np.testing.assert_array_equal(ns["spec"].spectral_axis.to_value(u.um), lam)
    assert ns["ccd"].unit == u.MJy / u.sr and type(ns["ccd"].uncertainty).__name__ == "VarianceUncertainty"
    n = lam.size
    exact = ns["exact"].pixel_to_world(np.zeros(n), np.zeros(n), np.arange(n))[1].to_value(u.um)
    approx = ns["approx"].pixel_to_world(np.zeros(n), np.zeros(n), np.arange(n))[1].to_value(u.um)
    np.testing.assert_array_equal(exact, lam)
    assert 0 < np.max(np.abs(approx - lam)) <= 0.0054  # the native D3 grid: WAVEMAXE 5.4 nm (README)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_cli_quickstart_runs_as_written(tmp_path):
    script = _block_after("cli-quickstart", "bash")
    ports = {int(p) for p in re.findall(r"--port (\d+)", script)}
    assert ports == {8765}
    if not _port_free(8765):
        pytest.skip("port 8765 on 127.0.0.1 is in use")
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # the venv's spxdrizzle
    proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "D3: my_cubes/drizzle_D3.fits" in out
    assert "N_INPUTS 8" in out
    for name in ("drizzle_D3.fits", "drizzle_D3_collapsed.png", "drizzle_D3_spectrum.png"):
        assert (tmp_path / "my_cubes" / name).is_file(), name
    assert len(list((tmp_path / "my_cubes").glob("drizzle_D3_plane*.png"))) == 1
    assert _port_free(8765), "the README's 'kill %1' did not stop the server"
