"""The configuration fields are described once: every field's description drives validation,
the YAML template, the options of ``spxdrizzle run``, the cube header and the README table,
and a new described field reaches all of them with no edit anywhere else."""

import argparse
import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from spxquery.drizzle3d.accumulate import DrizzleCube
from spxquery.drizzle3d.cli import build_parser, config_from_args
from spxquery.drizzle3d.cli.options import add_config_options
from spxquery.drizzle3d.config import GROUPS, Drizzle3DConfig
from spxquery.drizzle3d.cubefile import save_cube
from spxquery.drizzle3d.grid import build_output_wcs
from spxquery.drizzle3d.settings import (
    Cli,
    Fits,
    Int,
    NoHeader,
    Real,
    described,
    header_cards,
    reference_table,
    setting,
)
from spxquery.drizzle3d.spectral import build_z_grid

BASE = dict(center_ra=150.0, center_dec=2.0, width=2.0, height=1.5, detector=3)
ROOT = Path(__file__).resolve().parents[1]

#: Fields set only in the config file (no option of ``spxdrizzle run``): a deliberate list.
CONFIG_FILE_ONLY = {"z_lambda_edges", "skip_existing", "static_zodi", "ivar_max", "min_overlap",
                    "cutout_margin_arcmin", "download_timeout", "download_retries", "progress",
                    "download_deadline", "storage_options"}


def _run_help() -> str:
    return build_parser()._subparsers._group_actions[0].choices["run"].format_help()  # type: ignore[union-attr]


def _outside(rule):
    """A value just outside a bounded Real/Int rule, or None."""
    if isinstance(rule, (Real, Int)):
        if rule.lo is not None:
            return rule.lo - (0 if getattr(rule, "lo_open", False) else 1)
        if rule.hi is not None:
            return rule.hi + 1
    return None


def _saved_header(cfg, tmp_path) -> fits.Header:
    cube = DrizzleCube.create(build_output_wcs(cfg), cfg.effective_pixscale(), build_z_grid(3, 1.0, None), cfg, 3)
    path = save_cube(cube, tmp_path / "c.fits")
    with fits.open(path) as hdul:
        return hdul[0].header.copy()


@pytest.mark.parametrize("d", described(Drizzle3DConfig), ids=lambda d: d.name)
def test_every_field_is_validated_templated_offered_and_recorded(d, tmp_path):
    s = d.setting
    assert s.group in GROUPS and s.help.strip() and d.name in [f.name for f in dataclasses.fields(Drizzle3DConfig)]
    # validation: a value of the wrong type, and one just outside the range, raise naming the field
    with pytest.raises(ValueError, match=d.name):
        Drizzle3DConfig(**{**BASE, d.name: object()})
    bad = _outside(s.rule)
    if bad is not None:
        with pytest.raises(ValueError, match=rf"{d.name}.*{re.escape(str(bad))}"):
            Drizzle3DConfig(**{**BASE, d.name: bad})
    # YAML template: the key, under a comment with its help text
    lines = Drizzle3DConfig(**BASE).yaml_text().splitlines()
    at = [i for i, ln in enumerate(lines) if ln.startswith(f"{d.name}:")]
    assert len(at) == 1
    above = list(itertools.takewhile(lambda ln: ln.startswith("# "), reversed(lines[:at[0]])))
    comment = " ".join(ln[2:] for ln in reversed(above))  # the whole comment just above the key
    assert s.help[:40] in comment
    # command line: an option of ``run`` whose help names the unit and the default, or config-file only
    if s.cli is None:
        assert d.name in CONFIG_FILE_ONLY
    else:
        assert d.name not in CONFIG_FILE_ONLY
        help_text = " ".join(_run_help().split())
        assert f" {s.cli.flag} " in help_text or f" {s.cli.flag}\n" in help_text
        if s.unit:
            assert f"[{s.unit}]" in help_text
    # cube header: the keyword with the config's value, or a reason why not
    if isinstance(s.header, Fits):
        header = _saved_header(Drizzle3DConfig(**BASE), tmp_path)
        expected = dict((k, v) for k, v, _ in header_cards(Drizzle3DConfig(**BASE)))[s.header.keyword]
        assert header[s.header.keyword] == expected
        if s.header.value is None:
            assert expected == getattr(Drizzle3DConfig(**BASE), d.name)
    else:
        assert isinstance(s.header, NoHeader) and len(s.header.reason) > 10


def test_header_values_follow_the_config(tmp_path):
    cfg = Drizzle3DConfig(**BASE, z_shrink=0.4, kernel="bilinear", static_zodi=True, ivar_max=30.0, min_overlap=0.1)
    h = _saved_header(cfg, tmp_path)
    assert (h["ZSHRINK"], h["KERNEL"], h["ZODISTAT"], h["IVARMAX"], h["MINOVRLP"]) == (0.4, "bilinear", True, 30.0, 0.1)
    assert h["XYSHRINK"] == 0.8 and h["RA_CEN"] == 150.0 and h.comments["RA_CEN"] == "[deg] output centre"
    assert _saved_header(Drizzle3DConfig(**BASE), tmp_path / "b")["ZSHRINK"] == 0.8  # the effective value


def test_readme_table_is_the_described_one():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Configuration reference"):text.index("## Output format")]
    assert reference_table(Drizzle3DConfig) in section, "regenerate with settings.reference_table(Drizzle3DConfig)"


# ── adding a field: one description (here, in this file) and nothing else ───────────────────


@dataclass(eq=False)
class WithGainCap(Drizzle3DConfig):
    """The 0.4.1-compatible config plus one new described field (a stand-in for a future setting)."""

    gain_cap: float = field(default=2.0, metadata=setting(
        group="accumulate", unit="e-/ADU", rule=Real(0.0, 100.0, lo_open=True), help="largest gain used",
        header=Fits("GAINCAP", "[e-/ADU] largest gain used"), cli=Cli("--gain-cap", "G")))


def test_a_new_described_field_needs_no_other_edit(tmp_path):
    # validated
    with pytest.raises(ValueError, match=r"gain_cap must be in \(0, 100\] e-/ADU, got 150.0"):
        WithGainCap(**BASE, gain_cap=150.0)
    cfg = WithGainCap(**BASE, gain_cap=3)
    assert cfg.gain_cap == 3.0 and type(cfg.gain_cap) is float
    # templated, and read back
    text = cfg.yaml_text()
    assert "# largest gain used [e-/ADU]; in (0, 100]\ngain_cap: 3.0\n" in text
    cfg.to_yaml_file(tmp_path / "c.yaml")
    assert WithGainCap.from_yaml_file(tmp_path / "c.yaml").gain_cap == 3.0
    assert WithGainCap.from_dict({**BASE, "gain_cap": "4"}).gain_cap == 4.0  # YAML 1.1 number strings
    # offered by the command line, with its range checked by the parser
    parser = argparse.ArgumentParser(prog="spxdrizzle run", exit_on_error=False)
    parser.add_argument("config", nargs="?", type=Path)
    add_config_options(parser, WithGainCap)
    assert "--gain-cap G" in parser.format_help() and "largest gain used [e-/ADU]; in (0, 100] (default 2.0)" in \
        " ".join(parser.format_help().split())
    args = parser.parse_args(["--ra", "150", "--dec", "2", "--size", "2", "--gain-cap", "7.5"])
    assert config_from_args(args, config_cls=WithGainCap).gain_cap == 7.5
    with pytest.raises(argparse.ArgumentError, match="in \\(0, 100\\]"):
        parser.parse_args(["--gain-cap", "0"])
    # written to the cube header
    header = _saved_header(WithGainCap(**BASE, gain_cap=7.5), tmp_path)
    assert header["GAINCAP"] == 7.5 and header.comments["GAINCAP"] == "[e-/ADU] largest gain used"
    # and documented
    assert "| `gain_cap` | float | `2.0` | e-/ADU | largest gain used; in (0, 100] |" in reference_table(WithGainCap)


def test_a_description_needs_a_header_keyword_or_a_reason():
    with pytest.raises(TypeError, match="NoHeader"):
        setting(group="output", help="x", rule=Real(), header=NoHeader(" "))
    with pytest.raises(TypeError, match="NoHeader"):
        setting(group="output", help="x", rule=Real(), header=None)  # type: ignore[arg-type]


def test_every_range_in_words_matches_the_rule():
    """The words shown in help and YAML say what the rule accepts, at the boundaries."""
    for d in described(Drizzle3DConfig):
        rule = d.setting.rule
        if isinstance(rule, Real) and rule.lo is not None:
            ok = rule.lo + (1e-9 if rule.lo_open else 0.0)
            assert rule.inside(ok) and not rule.inside(rule.lo - 1e-9)
            assert rule.range().startswith(("in (", ">") if rule.lo_open else ("in [", ">="))
        if isinstance(rule, Real) and rule.hi is not None:
            assert rule.inside(rule.hi - 1e-9) and not rule.inside(rule.hi + 1e-9)
            assert rule.inside(rule.hi) != rule.hi_open
    assert np.isclose(Drizzle3DConfig(**BASE).effective_pixscale(), 6.15)
