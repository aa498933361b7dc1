"""Finding the spectral-WCS calibration product and choosing each frame's wavelength source
(issue 18): names and versions, the mirror, a user's path, the loopback archive's SIA service
and browsable tree, the download cache, and the fallback to the L2 lookup with one warning."""

import logging
from pathlib import Path

import numpy as np
import pytest

from spxquery.drizzle3d import Drizzle3DConfig, calnames
from spxquery.drizzle3d.archive.calibration import (
    CalibrationUnavailable,
    ProductLocation,
    directory_products,
    mirror_products,
    newest,
    sia_products,
    tree_products,
)
from spxquery.drizzle3d.archive.locations import data_base_url
from spxquery.drizzle3d.productwave import PRODUCT_SHAPE
from spxquery.drizzle3d.simulate.calproduct import calibration_row, write_spectral_wcs_product
from spxquery.drizzle3d.testing import ArchiveServer, Fault
from spxquery.drizzle3d.testing.archive_index import write_index
from spxquery.drizzle3d.wavesources import resolve

TAGS = ("cal-wcs-v3-2025-200", "cal-wcs-v4-2025-254", "cal-wcs-v10-2025-100")


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    from spxquery.drizzle3d.archive import retry

    monkeypatch.setattr(retry, "DEFAULT_BACKOFF_BASE", 0.01)


def _small_maps(det: int, shift: float = 0.0):
    """Constant maps of the product's full shape (products of another shape are refused)."""
    lam = np.full(PRODUCT_SHAPE, 1.0 + det + shift, dtype=np.float32)
    return lam, np.full(PRODUCT_SHAPE, 0.03, dtype=np.float32)


@pytest.fixture
def archive(tmp_path):
    """A tree with three versions of the D3 product, one of D4, in qr2; the index lists them."""
    root = tmp_path / "archive"
    rows = []
    for tag in TAGS:
        p = write_spectral_wcs_product(root, "qr2", 3, tag, maps=_small_maps(3))
        rows.append(calibration_row(p, root, "qr2", 3))
    p = write_spectral_wcs_product(root, "qr2", 4, TAGS[1], maps=_small_maps(4))
    rows.append(calibration_row(p, root, "qr2", 4))
    write_index(root, [], calibration=rows)
    return root


def test_names_versions_and_releases():
    name = calnames.parse_name("https://x/ibe/data/spherex/qr2/spectral_wcs/cal-wcs-v4-2025-254/1/"
                               "spectral_wcs_D1_spx_cal-wcs-v4-2025-254.fits")
    assert name == calnames.ProductName(1, "cal-wcs-v4-2025-254")
    assert name.relpath("qr2") == "qr2/spectral_wcs/cal-wcs-v4-2025-254/1/spectral_wcs_D1_spx_cal-wcs-v4-2025-254.fits"
    assert calnames.parse_name("spectral_wcs_D7_spx_cal-wcs-v4-2025-254.fits") is None
    assert calnames.parse_name("level2_2025W18_2B_0001_1D3_spx_l2b-v12-2025-164.fits") is None
    assert calnames.parse_name("spectral_wcs_D2_spx_base-2025-158.fits").version_key == (0, 2025, 158)
    assert sorted(TAGS, key=calnames.tag_key) == ["cal-wcs-v3-2025-200", "cal-wcs-v4-2025-254", "cal-wcs-v10-2025-100"]
    assert calnames.release_of("/m/qr3/level2/2025W30_1C/l2b-v20-2025-247/3/f.fits") == "qr3"
    assert calnames.release_of("https://irsa.ipac.caltech.edu/ibe/data/spherex/qr2/spectral_wcs/t/1/f.fits") == "qr2"
    assert calnames.release_of("/out/images/D3/level2_x.fits") is None
    for value, kind in (("auto", "auto"), (" LOOKUP", "lookup"), ("cal-wcs-v4-2025-254", "version"),
                        ("/data/spectral_wcs_D3.fits", "path"), (Path("products"), "path")):
        assert calnames.setting_kind(calnames.check_setting("spectral_wcs", value)) == kind
    for bad in ("", "  ", 3, None, "a\0b"):
        with pytest.raises(ValueError, match="spectral_wcs"):
            Drizzle3DConfig(150.0, 2.0, 2.0, 2.0, spectral_wcs=bad)


def test_newest_version_in_a_mirror_unless_one_is_named(archive):
    found = mirror_products(archive, "qr2")
    assert {p.tag for p in found if p.detector == 3} == set(TAGS)
    assert newest(found, 3).tag == "cal-wcs-v10-2025-100"  # version 10 > 4 > 3, whatever the date
    assert newest(found, 3, "cal-wcs-v3-2025-200").tag == "cal-wcs-v3-2025-200"
    assert newest(found, 4).tag == TAGS[1] and newest(found, 5) is None
    assert mirror_products(archive, "qr3") == []
    assert [p.detector for p in directory_products(archive)] == [3, 3, 3, 4]
    (archive / "qr2" / "spectral_wcs" / TAGS[0] / "3" / "notes.fits").write_bytes(b"x")
    assert len(mirror_products(archive, "qr2")) == 4  # other names are ignored


def test_newest_prefers_a_local_copy_of_the_same_version():
    name = calnames.ProductName(3, TAGS[1])
    remote = ProductLocation(name, "qr2", url="https://a/b.fits")
    local = ProductLocation(name, "qr2", path=Path("/c/b.fits"))
    assert newest([remote, local], 3) is local and newest([local, remote], 3) is local


def test_sia_and_the_browsable_tree_of_the_loopback_archive(archive):
    with ArchiveServer(archive) as srv:
        found = sia_products(srv.sia_url, "qr2")
        assert sorted((p.detector, p.tag) for p in found) == sorted([(3, t) for t in TAGS] + [(4, TAGS[1])])
        assert all(p.url.startswith(srv.base_url + "/ibe/data/spherex/qr2/spectral_wcs/") for p in found)
        assert sia_products(srv.sia_url, "qr3") == []
        assert any(q.startswith("SIA") and "spherex_qr2_cal" in q for q in srv.queries)
        base = data_base_url(srv.tap_url)
        (tree,) = tree_products(base, "qr2", 3)
        assert tree.tag == "cal-wcs-v10-2025-100" and tree.url.endswith(tree.name.file_name)
        (named,) = tree_products(base, "qr2", 3, tag=TAGS[0])
        assert named.tag == TAGS[0]
        assert tree_products(base, "qr2", 5) == []
        with pytest.raises(CalibrationUnavailable, match="HTTP 404"):
            tree_products(base, "qr9", 3)
        srv.faults.add("/SIA", Fault(status=500), times=-1)
        with pytest.raises(CalibrationUnavailable, match="SIA"):
            sia_products(srv.sia_url, "qr2", retries=1)


def _config(tmp_path, **kw):
    return Drizzle3DConfig(150.0, 2.0, 2.0, 2.0, output_dir=tmp_path / "out", progress=False, **kw)


def _lookup_warnings(caplog):
    return [r for r in caplog.records if r.levelno == logging.WARNING and "L2 WCS-WAVE lookup" in r.getMessage()]


def test_auto_fetches_the_newest_version_once_and_reuses_the_cache(archive, tmp_path, caplog):
    cfg = _config(tmp_path)
    with ArchiveServer(archive) as srv:
        base = data_base_url(srv.tap_url)
        with caplog.at_level(logging.INFO):
            sources = resolve(cfg, {3: ["qr2"], 4: ["qr2"], 5: ["qr2"]}, base_url=base, network=True)
        d3 = sources.choices[(3, "qr2")].product
        assert d3 == tmp_path / "out/images/qr2/spectral_wcs/cal-wcs-v10-2025-100/3/" \
            "spectral_wcs_D3_spx_cal-wcs-v10-2025-100.fits"
        assert d3.is_file() and sources.choices[(4, "qr2")].product.is_file()
        assert srv.hits("spectral_wcs_D3_spx_cal-wcs-v10") == 1 and srv.hits("spectral_wcs_D3_spx_cal-wcs-v3") == 0
        (warning,) = _lookup_warnings(caplog)  # one warning, for D5, saying where it looked
        assert "D5 (qr2)" in warning.getMessage() and "D3" not in warning.getMessage()
        assert "archive" in sources.choices[(5, "qr2")].reason
        again = resolve(cfg, {3: ["qr2"]}, base_url=base, network=True)
        assert again.choices[(3, "qr2")].product == d3 and srv.hits("spectral_wcs_D3_spx_cal-wcs-v10") == 1
        named = resolve(cfg.replace(spectral_wcs=TAGS[0]), {3: ["qr2"]}, base_url=base, network=True)
        assert named.choices[(3, "qr2")].product.name == f"spectral_wcs_D3_spx_{TAGS[0]}.fits"


def test_the_tree_is_asked_when_sia_lists_nothing_or_fails(archive, tmp_path, caplog):
    with ArchiveServer(archive) as srv:
        base = data_base_url(srv.tap_url)
        srv.calibration = []  # an SIA collection without the product
        sources = resolve(_config(tmp_path / "a"), {3: ["qr2"]}, base_url=base, network=True)
        assert sources.choices[(3, "qr2")].product.name.endswith("cal-wcs-v10-2025-100.fits")
        srv.faults.add("/SIA", Fault(status=503), times=-1)
        sources = resolve(_config(tmp_path / "b"), {4: ["qr2"]}, base_url=base, network=True)
        assert sources.choices[(4, "qr2")].product is not None
        assert not _lookup_warnings(caplog)


def test_nothing_found_falls_back_to_the_lookup_with_one_warning(archive, tmp_path, caplog):
    with ArchiveServer(archive) as srv:
        srv.faults.add("/SIA", Fault(status=500), times=-1)
        srv.faults.add("/ibe/data/spherex/qr2/spectral_wcs/", Fault(status=500), times=-1)
        with caplog.at_level(logging.INFO):
            sources = resolve(_config(tmp_path), {3: ["qr2"], 4: ["qr2"]}, base_url=data_base_url(srv.tap_url),
                              network=True)
    assert all(c.product is None for c in sources.choices.values())
    (warning,) = _lookup_warnings(caplog)
    assert "D3 (qr2)" in warning.getMessage() and "D4 (qr2)" in warning.getMessage()
    assert "HTTP 500" in warning.getMessage()


def test_mirror_path_lookup_and_missing_settings(archive, tmp_path, caplog):
    mirror = _config(tmp_path, data_mirror=archive)
    sources = resolve(mirror, {3: ["qr2", None], 6: ["qr2"]})
    assert sources.choices[(3, "qr2")].product.parent.parent.name == "cal-wcs-v10-2025-100"
    assert sources.choices[(3, None)].product == sources.choices[(3, "qr2")].product  # release unknown: any
    assert sources.choices[(6, "qr2")].product is None and "mirror" in sources.choices[(6, "qr2")].reason
    caplog.clear()
    lookup = resolve(mirror.replace(spectral_wcs="lookup"), {3: ["qr2"]})
    assert lookup.choices[(3, "qr2")].product is None and not _lookup_warnings(caplog)
    one = archive / "qr2/spectral_wcs" / TAGS[0] / "3" / f"spectral_wcs_D3_spx_{TAGS[0]}.fits"
    by_file = resolve(_config(tmp_path, spectral_wcs=str(one)), {3: ["qr2"], 4: ["qr2"]})
    assert by_file.choices[(3, "qr2")].product == one and by_file.choices[(4, "qr2")].product is None
    by_dir = resolve(_config(tmp_path, spectral_wcs=str(archive)), {4: ["qr2"]})
    assert by_dir.choices[(4, "qr2")].product.name.startswith("spectral_wcs_D4")
    caplog.clear()
    missing = resolve(_config(tmp_path, spectral_wcs=str(tmp_path / "nowhere")), {3: ["qr2"]})
    assert missing.choices[(3, "qr2")].product is None
    (warning,) = _lookup_warnings(caplog)
    assert "does not exist" in warning.getMessage()
    assert missing.choice(3, Path("/m/qr2/level2/p/v/3/f.fits")).product is None
    assert missing.choice(3, Path("/elsewhere/f.fits")).reason  # an unresolved frame: the lookup, with a reason
