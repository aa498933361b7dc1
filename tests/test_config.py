"""Drizzle3DConfig: validation, derived quantities, JSON/YAML round trips."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spxquery.drizzle3d.config import DEFAULT_TAP_URL, Drizzle3DConfig
from spxquery.drizzle3d.flags import DEFAULT_FLAG_BITS

BASE = dict(center_ra=150.0, center_dec=2.2, width=10.0, height=8.0)

API_041_FIELDS = [
    ("center_ra", None), ("center_dec", None), ("width", None), ("height", None),
    ("detector", 0), ("xy_shrink", 0.8), ("z_shrink", None), ("xy_oversample", 1.0),
    ("z_oversample", 1.0), ("z_lambda_edges", None), ("mjd_range", None), ("max_images", 500),
    ("download_workers", 4), ("skip_existing", True), ("data_mirror", None), ("subtract_zodi", True),
    ("static_zodi", False), ("exclude_flags", []), ("ivar_max", 1e10), ("min_overlap", 0.0),
    ("output_dir", Path("drizzle_output")), ("overwrite", False),
]
EXTRA_FIELDS = [
    ("kernel", "square"), ("tap_url", None), ("use_cutouts", None), ("cutout_margin_arcmin", 2.0),
    ("download_timeout", 60.0), ("download_retries", 5), ("progress", True), ("download_deadline", 900.0),
    ("tile_arcmin", None), ("scheduler", None), ("storage_options", None),
    ("reject_outliers", False), ("outlier_snr", (5.0, 3.0)), ("outlier_scale", (1.2, 0.7)), ("outlier_grow", 1),
    ("outlier_min_inputs", 4), ("outlier_masks", False),
    ("covariance", False),
    ("combine_detectors", False), ("spectral_wcs", "auto"),
]


def make(**kw):
    return Drizzle3DConfig(**{**BASE, **kw})


# ── Field layout and positional construction ─────────────────────────────────


def test_field_order_and_defaults():
    import dataclasses

    fields = [f for f in dataclasses.fields(Drizzle3DConfig) if f.init]
    assert [f.name for f in fields] == [n for n, _ in API_041_FIELDS + EXTRA_FIELDS]
    c = make()
    for name, default in API_041_FIELDS[4:] + EXTRA_FIELDS:
        assert getattr(c, name) == default, name
    assert c.BASE_PIXSCALE == 6.15
    assert "BASE_PIXSCALE" not in c.to_dict()


def test_positional_construction_041_order():
    c = Drizzle3DConfig(
        10.0, -5.0, 6.0, 4.0, 3, 0.7, 0.5, 2.0, 1.5, None, (60000.0, 60010.0), 50, 2, False,
        Path("/mirror"), False, True, [0, 10], 1e8, 0.1, Path("out"), True,
    )
    assert (c.center_ra, c.center_dec, c.width, c.height) == (10.0, -5.0, 6.0, 4.0)
    assert c.detector == 3 and c.xy_shrink == 0.7 and c.z_shrink == 0.5
    assert c.xy_oversample == 2.0 and c.z_oversample == 1.5 and c.z_lambda_edges is None
    assert c.mjd_range == (60000.0, 60010.0) and c.max_images == 50 and c.download_workers == 2
    assert c.skip_existing is False and c.data_mirror == Path("/mirror")
    assert c.subtract_zodi is False and c.static_zodi is True and c.exclude_flags == [0, 10]
    assert c.ivar_max == 1e8 and c.min_overlap == 0.1 and c.output_dir == Path("out") and c.overwrite is True
    assert c.kernel == "square"


# ── Validation ───────────────────────────────────────────────────────────────

NAN = float("nan")
INF = float("inf")

INVALID = [
    ("center_ra", -0.1), ("center_ra", 360.0), ("center_ra", NAN), ("center_ra", INF), ("center_ra", "10"),
    ("center_dec", -90.5), ("center_dec", 91.0), ("center_dec", NAN),
    ("width", 0.0), ("width", -1.0), ("width", NAN), ("width", INF),
    ("height", 0.0), ("height", -3.0), ("height", NAN), ("height", INF),
    ("detector", -1), ("detector", 7), ("detector", 1.5), ("detector", True), ("detector", "2"),
    ("xy_shrink", 0.0), ("xy_shrink", 1.01), ("xy_shrink", NAN), ("xy_shrink", -0.5),
    ("z_shrink", 0.0), ("z_shrink", 1.5), ("z_shrink", NAN),
    ("xy_oversample", 0.0), ("xy_oversample", -2.0), ("xy_oversample", NAN), ("xy_oversample", INF),
    ("z_oversample", 0.0), ("z_oversample", -1.0), ("z_oversample", NAN),
    ("z_lambda_edges", [1.0]), ("z_lambda_edges", [1.0, NAN]), ("z_lambda_edges", [2.0, 1.0]),
    ("z_lambda_edges", [[1.0, 2.0]]), ("z_lambda_edges", [-1.0, 1.0]),
    ("mjd_range", (60010.0, 60000.0)), ("mjd_range", (60000.0, 60000.0)), ("mjd_range", (NAN, 60000.0)),
    ("mjd_range", (60000.0,)), ("mjd_range", (1.0, 2.0, 3.0)), ("mjd_range", "60000"), ("mjd_range", (0.0, INF)),
    ("max_images", 0), ("max_images", -5), ("max_images", 2.5), ("max_images", True),
    ("download_workers", 0), ("download_workers", 1.0),
    ("skip_existing", "yes"), ("skip_existing", 1), ("subtract_zodi", None),
    ("static_zodi", "false"), ("overwrite", 0), ("progress", "no"),
    ("data_mirror", 5), ("data_mirror", ""), ("output_dir", None), ("output_dir", ""),
    ("exclude_flags", [32]), ("exclude_flags", [-1]), ("exclude_flags", ["NOT_A_FLAG"]),
    ("exclude_flags", [1.5]), ("exclude_flags", [True]), ("exclude_flags", {"HOT": 1}),
    ("ivar_max", 0.0), ("ivar_max", -1.0), ("ivar_max", NAN), ("ivar_max", INF),
    ("min_overlap", -0.1), ("min_overlap", 1.0), ("min_overlap", NAN),
    ("kernel", "gaussian"), ("kernel", None), ("kernel", 3),
    ("tap_url", "ftp://x"), ("tap_url", ""), ("tap_url", 42),
    ("use_cutouts", "auto"), ("use_cutouts", 1),
    ("cutout_margin_arcmin", -1.0), ("cutout_margin_arcmin", NAN),
    ("download_timeout", 0.0), ("download_timeout", -1.0), ("download_timeout", NAN), ("download_timeout", INF),
    ("download_retries", -1), ("download_retries", 1.5),
]


def _value_pattern(value):
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, (list, tuple, dict)):
        return None  # checked separately below
    return re.escape(str(value)) if str(value) else None


@pytest.mark.parametrize("name, value", INVALID, ids=[f"{n}={v!r}" for n, v in INVALID])
def test_invalid_value_raises_naming_field_and_value(name, value):
    with pytest.raises(ValueError) as ei:
        make(**{name: value})
    msg = str(ei.value)
    assert name in msg
    pat = _value_pattern(value)
    if pat is not None:
        assert re.search(pat, msg, flags=re.IGNORECASE), msg


@pytest.mark.parametrize(
    "name, value, token",
    [
        ("z_lambda_edges", [2.0, 1.0], "strictly increasing"),
        ("z_lambda_edges", [1.0, NAN], "index 1"),
        ("mjd_range", (60010.0, 60000.0), "60010.0"),
        ("exclude_flags", [32], "32"),
        ("exclude_flags", ["NOT_A_FLAG"], "NOT_A_FLAG"),
        ("center_ra", 360.0, "[0, 360)"),
        ("xy_shrink", 1.01, "(0, 1]"),
        ("min_overlap", 1.0, "[0, 1)"),
        ("kernel", "gaussian", "bilinear"),
    ],
)
def test_invalid_message_details(name, value, token):
    with pytest.raises(ValueError) as ei:
        make(**{name: value})
    assert token in str(ei.value)


def test_zero_pixel_grid_rejected():
    with pytest.raises(ValueError, match="enlarge width/height"):
        make(width=0.05)  # 3 arcsec < 6.15 arcsec pixel
    with pytest.raises(ValueError, match="0 x"):
        make(width=0.1, height=8.0)
    assert make(width=0.1, xy_oversample=2.0).output_nx() == 1


def test_boundary_values_accepted():
    c = make(center_ra=0.0, center_dec=-90.0, xy_shrink=1.0, z_shrink=1.0, min_overlap=0.0, detector=6)
    assert c.center_dec == -90.0
    c = make(center_ra=359.999, center_dec=90.0, download_retries=0, cutout_margin_arcmin=0.0)
    assert c.download_retries == 0


def test_normalisation():
    c = make(
        center_ra=np.float32(10.5), detector=np.int64(2), max_images=np.int32(7),
        z_lambda_edges=(1, 2, 3), mjd_range=[60000, 60001], data_mirror="/data/mirror",
        output_dir="results", exclude_flags=["hot", 3, " nonfunc ", "ghost*"], kernel="Bilinear",
        use_cutouts=np.bool_(True),
    )
    assert type(c.center_ra) is float and type(c.detector) is int and type(c.max_images) is int
    assert isinstance(c.z_lambda_edges, np.ndarray) and c.z_lambda_edges.dtype == np.float64
    assert c.mjd_range == (60000.0, 60001.0) and all(type(x) is float for x in c.mjd_range)
    assert c.data_mirror == Path("/data/mirror") and c.output_dir == Path("results")
    assert c.exclude_flags == ["HOT", 3, "NONFUNC", "GHOST*"]
    assert c.kernel == "bilinear" and c.use_cutouts is True


# ── Derived quantities ───────────────────────────────────────────────────────


def test_derived_quantities():
    c = make(width=10.0, height=8.0, xy_oversample=2.0, xy_shrink=0.6)
    assert c.effective_pixscale() == pytest.approx(3.075)
    assert c.effective_z_shrink() == 0.6
    assert make(z_shrink=0.3).effective_z_shrink() == 0.3
    assert c.output_nx() == int(600 / 3.075) == 195
    assert c.output_ny() == int(480 / 3.075) == 156
    assert c.spatial_radius_deg() == pytest.approx(math.hypot(10, 8) / 2 / 60)


def test_output_size_floating_guard():
    # 6.15" x 100 = 10.25'. Without the guard 10.25*60/6.15 could floor to 99.
    assert make(width=10.25, height=6.15 * 7 / 60).output_nx() == 100
    assert make(width=10.25, height=6.15 * 7 / 60).output_ny() == 7
    for n in range(1, 400):
        assert make(width=6.15 * n / 60.0, height=1.0).output_nx() == n


def test_resolved_tap_url(monkeypatch):
    monkeypatch.delenv("SPXQUERY_TAP_URL", raising=False)
    assert make().resolved_tap_url() == DEFAULT_TAP_URL == "https://irsa.ipac.caltech.edu/TAP"
    monkeypatch.setenv("SPXQUERY_TAP_URL", "http://127.0.0.1:8000/TAP")
    assert make().resolved_tap_url() == "http://127.0.0.1:8000/TAP"
    assert make(tap_url="https://example.org/tap").resolved_tap_url() == "https://example.org/tap"


def test_replace_validates_and_copies():
    c = make(exclude_flags=["HOT"])
    d = c.replace(width=20.0, detector=2)
    assert d.width == 20.0 and d.detector == 2 and c.width == 10.0
    assert d.height == c.height
    with pytest.raises(ValueError, match="xy_shrink"):
        c.replace(xy_shrink=2.0)
    with pytest.raises(ValueError, match="no_such_field"):
        c.replace(no_such_field=1)


def test_equality_with_arrays():
    a = make(z_lambda_edges=[1.0, 2.0])
    b = make(z_lambda_edges=np.array([1.0, 2.0]))
    assert a == b
    assert a != make(z_lambda_edges=[1.0, 2.5])
    assert a != make()


# ── Serialisation ────────────────────────────────────────────────────────────

_flag_names = sorted(DEFAULT_FLAG_BITS)


@st.composite
def configs(draw):
    pixscale = 6.15 / draw(st.floats(0.25, 4.0))
    min_arcmin = pixscale / 60.0 * 1.01
    finite = dict(allow_nan=False, allow_infinity=False)
    edges = draw(
        st.none()
        | st.lists(st.floats(0.5, 6.0, **finite), min_size=2, max_size=12, unique=True).map(sorted)
    )
    if edges is not None and np.any(np.diff(edges) <= 0):
        edges = None
    mjd = draw(st.none() | st.tuples(st.floats(55000, 70000, **finite), st.floats(0.001, 5000, **finite)))
    flags = draw(st.lists(st.integers(0, 31) | st.sampled_from(_flag_names) | st.just("GHOST*"), max_size=6))
    return Drizzle3DConfig(
        center_ra=draw(st.floats(0.0, 360.0, exclude_max=True, **finite)),
        center_dec=draw(st.floats(-90.0, 90.0, **finite)),
        width=draw(st.floats(min_arcmin, 300.0, **finite)),
        height=draw(st.floats(min_arcmin, 300.0, **finite)),
        detector=draw(st.integers(0, 6)),
        xy_shrink=draw(st.floats(0.01, 1.0, **finite)),
        z_shrink=draw(st.none() | st.floats(0.01, 1.0, **finite)),
        xy_oversample=6.15 / pixscale,
        z_oversample=draw(st.floats(0.1, 10.0, **finite)),
        z_lambda_edges=edges,
        mjd_range=None if mjd is None else (mjd[0], mjd[0] + mjd[1]),
        max_images=draw(st.integers(1, 100000)),
        download_workers=draw(st.integers(1, 64)),
        skip_existing=draw(st.booleans()),
        data_mirror=draw(st.none() | st.sampled_from([Path("/data/spherex"), Path("rel/mirror"), Path("/a b/c:d")])),
        subtract_zodi=draw(st.booleans()),
        static_zodi=draw(st.booleans()),
        exclude_flags=flags,
        ivar_max=draw(st.floats(1e-3, 1e30, **finite)),
        min_overlap=draw(st.floats(0.0, 0.999, **finite)),
        output_dir=draw(st.sampled_from([Path("drizzle_output"), Path("/tmp/out dir"), Path("x/#y")])),
        overwrite=draw(st.booleans()),
        kernel=draw(st.sampled_from(["square", "bilinear"])),
        tap_url=draw(st.none() | st.sampled_from(["http://127.0.0.1:5000/TAP", "https://irsa.ipac.caltech.edu/TAP"])),
        use_cutouts=draw(st.sampled_from([None, True, False])),
        cutout_margin_arcmin=draw(st.floats(0.0, 60.0, **finite)),
        download_timeout=draw(st.floats(0.1, 600.0, **finite)),
        download_retries=draw(st.integers(0, 20)),
        progress=draw(st.booleans()),
    )


def _assert_same(a: Drizzle3DConfig, b: Drizzle3DConfig):
    assert a == b
    assert a.to_dict() == b.to_dict()
    if a.z_lambda_edges is None:
        assert b.z_lambda_edges is None
    else:
        np.testing.assert_array_equal(a.z_lambda_edges, b.z_lambda_edges)
    assert a.mjd_range == b.mjd_range and (a.mjd_range is None or isinstance(b.mjd_range, tuple))
    assert a.data_mirror == b.data_mirror and a.output_dir == b.output_dir
    assert isinstance(b.output_dir, Path)
    assert a.exclude_flags == b.exclude_flags


@settings(max_examples=60, deadline=None)
@given(configs())
def test_json_round_trip(cfg):
    text = cfg.to_json()
    json.loads(text)  # plain JSON
    _assert_same(cfg, Drizzle3DConfig.from_json(text))
    _assert_same(cfg, Drizzle3DConfig.from_dict(cfg.to_dict()))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=configs())
def test_yaml_round_trip(tmp_path, cfg):
    path = tmp_path / "deep" / "nested" / "cfg.yaml"
    cfg.to_yaml_file(path)
    _assert_same(cfg, Drizzle3DConfig.from_yaml_file(path))


def test_yaml_file_has_group_comments(tmp_path):
    path = tmp_path / "a" / "b" / "c.yaml"
    make(z_lambda_edges=[1.0, 1.5, 2.0], exclude_flags=["HOT", 3]).to_yaml_file(path)
    text = path.read_text()
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#")).lower()
    for group in ("region", "detector", "shrink", "output grid", "query / download", "pre-processing",
                  "accumulation", "output:"):
        assert group in comments, group
    data = yaml.safe_load(text)
    assert data["z_lambda_edges"] == [1.0, 1.5, 2.0]
    assert data["exclude_flags"] == ["HOT", 3]
    assert set(data) == {n for n, _ in API_041_FIELDS + EXTRA_FIELDS}


def test_yaml_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        Drizzle3DConfig.from_yaml_file(path)


@pytest.mark.parametrize("content, kind", [("- 1\n- 2\n", "list"), ("just a string\n", "str"), ("", "NoneType")])
def test_yaml_not_a_mapping(tmp_path, content, kind):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"mapping.*{kind}"):
        Drizzle3DConfig.from_yaml_file(path)


def test_yaml_unknown_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("center_ra: 1\ncenter_dec: 2\nwidth: 3\nheight: 3\nwidht: 4\nfoo: 1\n")
    with pytest.raises(ValueError) as ei:
        Drizzle3DConfig.from_yaml_file(path)
    assert "widht" in str(ei.value) and "foo" in str(ei.value) and "bad.yaml" in str(ei.value)


def test_yaml_missing_required_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("center_ra: 1\ncenter_dec: 2\nwidth: 3\n")
    with pytest.raises(ValueError, match="height"):
        Drizzle3DConfig.from_yaml_file(path)


def test_yaml_invalid_value_names_file_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("center_ra: 1\ncenter_dec: 2\nwidth: 3\nheight: 3\nxy_shrink: 1.5\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*xy_shrink.*1\.5"):
        Drizzle3DConfig.from_yaml_file(path)


def test_yaml_rejects_python_tags(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text(
        "center_ra: 1\ncenter_dec: 2\nwidth: 3\nheight: 3\n"
        "output_dir: !!python/object/apply:os.getcwd []\n"
    )
    with pytest.raises(ValueError, match="evil.yaml"):
        Drizzle3DConfig.from_yaml_file(path)
    path.write_text("!!python/object:pathlib.PosixPath {}\n")
    with pytest.raises(ValueError):
        Drizzle3DConfig.from_yaml_file(path)


def test_yaml_hand_written(tmp_path):
    # YAML 1.1 reads "1e10" as a string: numeric fields accept it; 0.4.1 files may carry BASE_PIXSCALE.
    path = tmp_path / "hand.yaml"
    path.write_text(
        "center_ra: 150\ncenter_dec: 2.2\nwidth: 30\nheight: 30\nivar_max: 1e12\n"
        "mjd_range: [60000, 60100]\nexclude_flags: [hot, 6, GHOST*]\nBASE_PIXSCALE: 6.15\n"
    )
    c = Drizzle3DConfig.from_yaml_file(path)
    assert c.ivar_max == 1e12 and c.mjd_range == (60000.0, 60100.0)
    assert c.exclude_flags == ["HOT", 6, "GHOST*"]


def test_json_errors():
    with pytest.raises(ValueError, match="JSON"):
        Drizzle3DConfig.from_json("{not json")
    with pytest.raises(ValueError, match="mapping"):
        Drizzle3DConfig.from_json("[1, 2]")
    with pytest.raises(ValueError, match="bogus"):
        Drizzle3DConfig.from_json(json.dumps({**BASE, "bogus": 1}))
