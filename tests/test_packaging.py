"""Packaging promises that hold in the source tree (fast; the installed wheel is tested in
test_install.py): the namespace package, one version, the abi3 extension, the license and
changelog, README links that work on PyPI, matplotlib as an optional extra with a clear message,
and the installation check that ``spxdrizzle`` runs first."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

import pytest

import spxquery
import spxquery.drizzle3d as d3
from spxquery.drizzle3d import _core, _install_check

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
PLOT_MESSAGE = "quick-look pictures need matplotlib, which is not installed: pip install 'spxquery-drizzle3d[plot]'"


def _repository() -> str:
    m = re.search(r'^Repository = "(https://github\.com/[\w.-]+/[\w.-]+)"$', PYPROJECT, re.M)
    assert m is not None, "[project.urls] Repository"
    return m.group(1)


def test_spxquery_is_a_namespace_package():
    assert not (ROOT / "python" / "spxquery" / "__init__.py").exists()
    assert getattr(spxquery, "__file__", None) is None
    assert str(ROOT / "python" / "spxquery") in list(spxquery.__path__)


def test_version_is_written_once():
    cargo = (ROOT / "rust" / "Cargo.toml").read_text(encoding="utf-8")
    crate_version = re.search(r'^version = "([^"]+)"$', cargo, re.M).group(1)
    project = PYPROJECT[PYPROJECT.index("[project]"):PYPROJECT.index("[project.optional-dependencies]")]
    assert 'dynamic = ["version"]' in project and not re.search(r"^version\s*=", project, re.M)
    assert d3.__version__ == _core.__version__ == metadata.version("spxquery-drizzle3d") == crate_version
    assert re.search(rf"^## \[{re.escape(crate_version)}\] - \d{{4}}-\d\d-\d\d$",
                     (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.M)


def test_extension_is_built_for_the_stable_abi():
    assert Path(_core.__file__).name == "_core.abi3.so"  # no stale per-version build shadows it
    assert '"pyo3/abi3-py310"' in PYPROJECT and 'requires-python = ">=3.10"' in PYPROJECT


def test_license_file_and_metadata():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("BSD 3-Clause License\n") and "Neither the name of the copyright holder" in text
    assert 'license = "BSD-3-Clause"' in PYPROJECT and 'license-files = ["LICENSE"]' in PYPROJECT
    assert "License ::" not in PYPROJECT  # PEP 639: the expression alone, no license classifier
    assert 'license = "BSD-3-Clause"' in (ROOT / "rust" / "Cargo.toml").read_text(encoding="utf-8")
    assert (ROOT / "python" / "spxquery" / "drizzle3d" / "py.typed").is_file()


def test_changelog_keeps_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "keepachangelog.com" in text
    headings = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert headings[0] == "Unreleased" and d3.__version__ in headings
    for name in headings:
        assert re.search(rf"^\[{re.escape(name)}\]: {re.escape(_repository())}/", text, re.M), name


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_work_on_pypi():
    """Images and files by absolute URLs of the repository (PyPI has no repository to resolve a
    relative link against), each naming a file that exists; in-page anchors name a heading."""
    repo = _repository()
    raw = repo.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    blob = repo + "/blob/main/"
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", README, re.M)}
    links = re.findall(r"(!?)\[[^\]]*\]\(([^)\s]+)\)", README)
    assert len(links) > 10
    for image, target in links:
        if target.startswith("#"):
            assert target[1:] in anchors, target
        elif image:
            assert target.startswith(raw) and (ROOT / target[len(raw):]).is_file(), target
        elif target.startswith(blob):
            assert (ROOT / target[len(blob):].split("#")[0]).is_file(), target
        else:
            assert target.startswith("https://"), target


def test_readme_install_section_for_pip_users():
    section = README[README.index("## Install with pip"):README.index("## Install from a clone")]
    assert "pip install spxquery-drizzle3d" in section and "pip install 'spxquery-drizzle3d[plot]'" in section
    beside = README[README.index("## Installing beside spxquery 0.4.1"):README.index("## Command-line quickstart")]
    assert _install_check.REPAIR in beside.replace("\n  ", " ")
    assert "pip install --force-reinstall --no-deps spxquery==0.4.1" in beside


def test_matplotlib_is_an_optional_extra():
    deps = PYPROJECT[PYPROJECT.index("dependencies = ["):PYPROJECT.index("[project.optional-dependencies]")]
    assert "matplotlib" not in deps
    assert re.search(r'^plot = \["matplotlib>=[\d.]+"\]', PYPROJECT, re.M)
    assert re.search(r'^test = \["matplotlib>=[\d.]+"', PYPROJECT, re.M)


@pytest.fixture(scope="module")
def small_cube(tmp_path_factory) -> Path:
    from spxquery.drizzle3d.config import Drizzle3DConfig
    from spxquery.drizzle3d.grid import build_output_wcs
    from spxquery.drizzle3d.pipeline import drizzle_detector
    from spxquery.drizzle3d.simulate import simulate_field

    root = tmp_path_factory.mktemp("pkg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = simulate_field(root / "archive", 150.0, 2.0, detectors=(3,), n_pointings=2, cutout_size_deg=0.1,
                              psf_size=21, psf_zones=1)
        cfg = Drizzle3DConfig(center_ra=150.0, center_dec=2.0, width=3.0, height=3.0, detector=3,
                              output_dir=root / "out", progress=False)
        path = drizzle_detector(info.paths, cfg, 3, build_output_wcs(cfg))
    assert path is not None
    return path


def _spxdrizzle_without_matplotlib(*args: object) -> subprocess.CompletedProcess:
    """``spxdrizzle ARGS`` in a fresh interpreter in which ``import matplotlib`` fails."""
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from spxquery.drizzle3d._install_check import main\n"
            "sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_pictures_without_matplotlib_say_how_to_install_it(small_cube, tmp_path):
    summary = _spxdrizzle_without_matplotlib("inspect", small_cube, "--no-png")
    assert summary.returncode == 0, summary.stderr
    assert "N_INPUTS" in summary.stdout
    pictures = _spxdrizzle_without_matplotlib("inspect", small_cube, "--png-dir", tmp_path / "png")
    assert pictures.returncode == 1
    assert PLOT_MESSAGE in pictures.stderr
    assert not list(tmp_path.rglob("*.png"))


# ── the installation check ─────────────────────────────────────────────────────


def _record_line(rel: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{rel},sha256={digest},{len(data)}"


def _install(site: Path, name: str, version: str, files: dict) -> None:
    """Write ``files`` ({relative path: bytes}) and a dist-info with their RECORD, as pip does."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
        lines.append(_record_line(rel, data))
    lines += ["spxquery/drizzle3d/__pycache__/config.cpython-311.pyc,,", f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(lines) + "\n")


OURS = {"spxquery/drizzle3d/__init__.py": b"# ours\n", "spxquery/drizzle3d/config.py": b"# our config\n",
        "spxquery/drizzle3d/cli.py": b"# our cli\n", "../../../bin/spxdrizzle": b"#!python\n"}


def test_damaged_files_compares_the_record_with_the_disk(tmp_path):
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    _install(site, "spxquery-drizzle3d", "9.9", OURS)
    dist = metadata.PathDistribution(site / "spxquery_drizzle3d-9.9.dist-info")
    assert _install_check.damaged_files(dist) == []
    (site / "spxquery/drizzle3d/config.py").write_bytes(b"# 0.4.1's config\n")
    (site / "spxquery/drizzle3d/cli.py").unlink()
    assert sorted(_install_check.damaged_files(dist)) == [("spxquery/drizzle3d/cli.py", "missing"),
                                                         ("spxquery/drizzle3d/config.py", "replaced")]


def test_this_installation_is_intact():
    # an editable install (maturin develop) records no package files: nothing to compare
    assert _install_check.installation_problem() is None


def test_spxdrizzle_refuses_a_mixed_installation(tmp_path, monkeypatch, capsys):
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    _install(site, "spxquery-drizzle3d", "9.9", OURS)
    _install(site, "spxquery", "0.4.1", {})
    theirs = b"from .accumulate import DrizzleCube  # 0.4.1\n"
    (site / "spxquery/drizzle3d/__init__.py").write_bytes(theirs)  # what pip does installing 0.4.1 after us
    record = site / "spxquery-0.4.1.dist-info" / "RECORD"
    record.write_text(_record_line("spxquery/drizzle3d/__init__.py", theirs) + "\n" + record.read_text())
    monkeypatch.syspath_prepend(str(site))
    assert _install_check.main(["--version"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the installation of spxquery-drizzle3d 9.9 is broken: 1 of its files were "
                          "overwritten by spxquery 0.4.1 (__init__.py)")
    assert err.rstrip().endswith("Repair with: pip install --force-reinstall --no-deps spxquery-drizzle3d")
    (site / "spxquery/drizzle3d/__init__.py").write_bytes(OURS["spxquery/drizzle3d/__init__.py"])
    (site / "spxquery/drizzle3d/config.py").unlink()  # what uninstalling spxquery does
    assert _install_check.main(["--version"]) == 1
    assert "1 of its files are missing (config.py); uninstalling spxquery removes them" in capsys.readouterr().err
