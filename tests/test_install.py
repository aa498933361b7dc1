"""The abi3 wheel installed for real, in fresh virtual environments, alone and beside spxquery 0.4.1.

spxquery 0.4.1 (PyPI) ships ``spxquery/__init__.py`` and nine ``spxquery/drizzle3d/*.py`` files
at the same paths as ours. The wheel ships no ``spxquery/__init__.py`` (``spxquery`` is a namespace
package when spxquery is absent), so the three install orders the README describes behave so:

- alone: ``import spxquery.drizzle3d``, ``spxdrizzle``, a small drizzle run, and without the
  ``plot`` extra a clear message for pictures;
- spxquery 0.4.1 first, then ours: all of spxquery works as before and ``spxquery.drizzle3d`` is
  ours; uninstalling spxquery removes our nine files, ``spxdrizzle`` says so and the repair works;
- ours first, then spxquery 0.4.1: pip replaces our nine files, ``spxdrizzle`` refuses with the
  repair command, and the repair gives the state above; uninstalling ours then leaves spxquery
  working, and reinstalling spxquery 0.4.1 brings its own drizzle3d back.

The sdist is checked too: it builds (as pip builds it where no wheel fits) the same wheel.

Marked ``install`` (deselected by default; ``.ci/run`` runs ``python -m pytest -m install``): the
wheel is built once (``maturin build --release``, reusing the release build of ``tools/env.sh``),
and each venv installs its dependencies from PyPI through pip's cache.
"""

from __future__ import annotations

import email
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

pytestmark = pytest.mark.install

ROOT = Path(__file__).resolve().parents[1]
SPXQUERY_041 = "spxquery==0.4.1"
#: The ``spxquery/drizzle3d/`` modules of spxquery 0.4.1 (checked against its RECORD below).
MODULES_041 = {"__init__", "accumulate", "config", "grid", "io", "pipeline", "query", "spatial", "spectral"}
REPAIR = "pip install --force-reinstall --no-deps spxquery-drizzle3d"
PLOT_MESSAGE = "quick-look pictures need matplotlib, which is not installed: pip install 'spxquery-drizzle3d[plot]'"
TIMEOUT = 900  # s, per command (a pip install that downloads)

SPXQUERY_WORKS = """
import spxquery, spxquery.core.config, spxquery.batch
from spxquery import SPXQueryPipeline, Source
print(spxquery.__version__, SPXQueryPipeline.__name__)
"""
OURS = """
import spxquery.drizzle3d as d, spxquery.drizzle3d._core as c
from spxquery.drizzle3d import Drizzle3DConfig, drizzle, DrizzleCube
print(d.__version__, c.__version__, d.__file__, c.__file__)
"""
TINY_RUN = """
from spxquery.drizzle3d import Drizzle3DConfig, drizzle
from spxquery.drizzle3d.simulate import simulate_field
from spxquery.drizzle3d.testing.archive_server import ArchiveServer
field = simulate_field("field", 150.0, 2.0, detectors=(3,), n_pointings=2, cutout_size_deg=0.1,
                       psf_size=21, psf_zones=1)
with ArchiveServer(field.root) as archive:
    cubes = drizzle(Drizzle3DConfig(center_ra=150.0, center_dec=2.0, width=3.0, height=3.0, detector=3,
                                    tap_url=archive.tap_url, data_mirror=field.root, output_dir="out",
                                    progress=False))
print(cubes[3])
"""


def _run(cmd: Sequence[object], cwd: Path, check: bool = True,
         extra_env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra_env or {})
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


class Venv:
    """A fresh virtual environment under ``path`` (its own pip; commands run in ``path/work``)."""

    def __init__(self, path: Path):
        self.path = path
        self.work = path / "work"
        _run([sys.executable, "-m", "venv", path], cwd=path.parent)
        self.work.mkdir()
        self.bin = path / "bin"
        out = self.py("import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout
        self.site = Path(out.strip())

    def pip(self, *args: object) -> subprocess.CompletedProcess:
        return _run([self.bin / "python", "-m", "pip", *args], cwd=self.work)

    def py(self, code: str, *args: object, check: bool = True) -> subprocess.CompletedProcess:
        return _run([self.bin / "python", "-c", code, *args], cwd=self.work, check=check)

    def cmd(self, name: str, *args: object, check: bool = True) -> subprocess.CompletedProcess:
        return _run([self.bin / name, *args], cwd=self.work, check=check)

    def spxquery_state(self) -> Tuple[str, Tuple[int, str, str]]:
        """What spxquery's users see: its imports, and its ``spxquery`` command with ``--help``."""
        imports = self.py(SPXQUERY_WORKS).stdout.strip()
        command = self.cmd("spxquery", "--help", check=False)
        return imports, (command.returncode, command.stdout, command.stderr)

    def assert_ours(self, version: str) -> None:
        got = self.py(OURS).stdout.split()
        assert got[0] == got[1] == version
        assert Path(got[2]).parent == Path(got[3]).parent == self.site / "spxquery" / "drizzle3d"
        assert Path(got[3]).name == "_core.abi3.so"
        assert self.cmd("spxdrizzle", "--version").stdout.strip() == f"spxdrizzle {version}"


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> Dict[str, Path]:
    """The wheel and the sdist, built once from this tree."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "maturin", "build", "--release", "--out", out], cwd=ROOT)
    _run([sys.executable, "-m", "maturin", "sdist", "--out", out], cwd=ROOT)
    (wheel,), (sdist,) = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    return {"wheel": wheel, "sdist": sdist}


@pytest.fixture(scope="module")
def version() -> str:
    from spxquery.drizzle3d import __version__

    return __version__


def test_wheel_is_abi3_and_holds_license_and_typing_marker(dists, version):
    wheel = dists["wheel"]
    assert f"-{version}-cp310-abi3-" in wheel.name  # one wheel for CPython >= 3.10
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"spxquery_drizzle3d-{version}.dist-info"
        meta = email.message_from_bytes(z.read(f"{info}/METADATA"))
        assert "Tag: cp310-abi3-" in z.read(f"{info}/WHEEL").decode()
        assert z.read(f"{info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
    assert "spxquery/__init__.py" not in names  # spxquery stays a namespace package
    assert {"spxquery/drizzle3d/py.typed", "spxquery/drizzle3d/_core.abi3.so", "spxquery/drizzle3d/_core.pyi"} <= names
    assert not [n for n in names if n.startswith("spxquery/drizzle3d/_core.") and n.endswith(".so") and "abi3" not in n]
    # every module name of 0.4.1's drizzle3d is ours (a module or a package, which wins over a
    # module): a stale 0.4.1 file left in our directory can never be imported in place of ours
    for mod in MODULES_041:
        assert {f"spxquery/drizzle3d/{mod}.py", f"spxquery/drizzle3d/{mod}/__init__.py"} & names, mod
    assert meta["License-Expression"] == "BSD-3-Clause"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["Requires-Python"] == ">=3.10"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Repository", "Changelog", "Issues"} <= set(urls)
    requires = meta.get_all("Requires-Dist")
    assert [r for r in requires if r.startswith("matplotlib")] == [
        "matplotlib>=3.6 ; extra == 'plot'", "matplotlib>=3.6 ; extra == 'test'"]
    assert "Install with pip" in meta.get_payload()


def test_sdist_holds_what_a_build_needs(dists, version):
    with tarfile.open(dists["sdist"]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
        top = f"spxquery_drizzle3d-{version}"
        assert t.extractfile(f"{top}/LICENSE").read() == (ROOT / "LICENSE").read_bytes()
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "Cargo.toml", "Cargo.lock",
            "rust/Cargo.toml", "rust/src/lib.rs", "python/spxquery/drizzle3d/py.typed",
            "python/spxquery/drizzle3d/__init__.py"} <= names
    assert "python/spxquery/__init__.py" not in names


def test_sdist_builds_the_same_wheel(dists, tmp_path):
    """What pip does where no wheel fits: build from the sdist, in an isolated build environment
    (maturin from PyPI, as build-system.requires says) and a fresh cargo target directory."""
    env_target = {"CARGO_TARGET_DIR": str(tmp_path / "target")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp_path / "out", dists["sdist"]], cwd=tmp_path,
         extra_env=env_target)
    (built,) = list((tmp_path / "out").glob("*.whl"))
    assert "-cp310-abi3-" in built.name

    def package_files(wheel: Path) -> set:
        return {n for n in zipfile.ZipFile(wheel).namelist() if not n.endswith((".dist-info/RECORD", ".json"))}

    assert package_files(built) == package_files(dists["wheel"])


def test_alone(dists, version, tmp_path):
    """Without spxquery: the namespace package, the command, a small run, pictures without matplotlib."""
    v = Venv(tmp_path / "venv")
    v.pip("install", dists["wheel"])
    assert v.py("import spxquery; print(getattr(spxquery, '__file__', None))").stdout.strip() == "None"
    v.assert_ours(version)
    assert v.py("import matplotlib", check=False).returncode != 0  # the plot extra is not installed
    cube = Path(v.py(TINY_RUN).stdout.strip().splitlines()[-1])
    assert (v.work / cube).is_file()
    summary = v.cmd("spxdrizzle", "inspect", cube, "--no-png")
    assert "N_INPUTS" in summary.stdout
    pictures = v.cmd("spxdrizzle", "inspect", cube, check=False)
    assert pictures.returncode == 1
    assert PLOT_MESSAGE in pictures.stderr
    assert not list((v.work / cube).parent.glob("*.png"))
    # uninstalling leaves no file behind (pip may leave the empty spxquery/ directory)
    v.pip("uninstall", "-y", "spxquery-drizzle3d")
    assert not [p for p in (v.site / "spxquery").rglob("*") if p.is_file()]
    assert not (v.bin / "spxdrizzle").exists()


def _files_041(v: Venv) -> List[str]:
    show = v.pip("show", "-f", "spxquery").stdout
    return [ln.strip() for ln in show.splitlines() if ln.strip().startswith("spxquery/drizzle3d/")]


def test_spxquery_041_first(dists, version, tmp_path):
    """spxquery 0.4.1, then ours: spxquery as before, drizzle3d ours; uninstalling spxquery, repaired."""
    v = Venv(tmp_path / "venv")
    v.pip("install", SPXQUERY_041)
    modules = {Path(f).stem for f in _files_041(v) if f.count("/") == 2 and f.endswith(".py")}
    assert modules == MODULES_041
    before = v.spxquery_state()
    assert before[0] == "0.4.1 SPXQueryPipeline"
    v.pip("install", dists["wheel"])
    assert v.spxquery_state() == before  # `spxquery --help` included, whatever 0.4.1 makes of it
    v.assert_ours(version)
    assert v.py("import spxquery; print(spxquery.__file__)").stdout.strip() == str(v.site / "spxquery" / "__init__.py")
    # what 0.4.1 leaves in our directory that we do not ship: its README, nothing importable
    ours = {n[len("spxquery/drizzle3d/"):] for n in zipfile.ZipFile(dists["wheel"]).namelist()
            if n.startswith("spxquery/drizzle3d/")}
    left = {f[len("spxquery/drizzle3d/"):] for f in _files_041(v)} - ours
    assert {f for f in left if "__pycache__" not in f} == {"README.md"}
    v.pip("check")
    # uninstalling spxquery deletes the files both distributions list; spxdrizzle says how to repair
    v.pip("uninstall", "-y", "spxquery")
    broken = v.cmd("spxdrizzle", "--version", check=False)
    assert broken.returncode == 1
    assert "files are missing" in broken.stderr and REPAIR in broken.stderr
    v.pip("install", "--force-reinstall", "--no-deps", dists["wheel"])  # the repair, from the wheel
    v.assert_ours(version)


def test_spxquery_041_after(dists, version, tmp_path):
    """Ours, then spxquery 0.4.1: the mix is refused with the repair command, which works."""
    v = Venv(tmp_path / "venv")
    v.pip("install", dists["wheel"])
    v.pip("install", SPXQUERY_041)
    for cmd in (["spxdrizzle", "--version"], ["python", "-m", "spxquery.drizzle3d", "--version"]):
        broken = v.cmd(*cmd, check=False)
        assert broken.returncode == 1, broken.stdout
        assert f"spxquery-drizzle3d {version} is broken" in broken.stderr
        assert "overwritten by spxquery 0.4.1" in broken.stderr and REPAIR in broken.stderr
    # a plain import silently gives 0.4.1's drizzle3d, which has no __version__ (README says so)
    assert v.py("import spxquery.drizzle3d as d; print(hasattr(d, '__version__'))").stdout.strip() == "False"
    v.pip("install", "--force-reinstall", "--no-deps", dists["wheel"])  # the repair, from the wheel
    v.assert_ours(version)
    assert v.spxquery_state()[0] == "0.4.1 SPXQueryPipeline"
    # uninstalling ours removes the nine shared files: spxquery works, its drizzle3d is gone until
    # spxquery is reinstalled (the README's repair for that direction)
    v.pip("uninstall", "-y", "spxquery-drizzle3d")
    assert v.spxquery_state()[0] == "0.4.1 SPXQueryPipeline"
    assert v.py("from spxquery.drizzle3d import drizzle", check=False).returncode != 0
    v.pip("install", "--force-reinstall", "--no-deps", SPXQUERY_041)
    assert v.py("from spxquery.drizzle3d import drizzle; import spxquery.drizzle3d as d; "
                "print(hasattr(d, '__version__'))").stdout.strip() == "False"
