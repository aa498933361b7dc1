"""Per-pixel wavelengths from the spectral-WCS calibration product (issue 18): the cutout mapping
to parent pixels, the product used and recorded in the cube header, and the fallback to the L2
lookup (missing, corrupt or mismatched product: one warning, lookup used, recorded)."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from spxquery.drizzle3d import Drizzle3DConfig
from spxquery.drizzle3d.frames import open_frame
from spxquery.drizzle3d.grid import build_output_wcs
from spxquery.drizzle3d.pipeline import drizzle_detector
from spxquery.drizzle3d.productwave import (
    MATCH_TOLERANCE_UM,
    ProductError,
    ProductWave,
    frame_wave,
    open_product,
)
from spxquery.drizzle3d.simulate import simulate_field
from spxquery.drizzle3d.simulate.calproduct import CAL_TAGS, product_maps, true_wave_maps, write_spectral_wcs_product

RA0, DEC0 = 150.0, 2.0
PRODUCT = f"spectral_wcs_D3_spx_{CAL_TAGS['qr2']}.fits"


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """Four QR2 cutouts of D3 rendered at the product's true wavelengths, in a mirror tree."""
    root = tmp_path_factory.mktemp("product_field")
    info = simulate_field(root, RA0, DEC0, detectors=(3,), n_pointings=4, release="qr2", seed=11,
                          cutout_size_deg=0.1, psf_size=11, psf_zones=2, true_wavelengths=True)
    (product,) = root.glob(f"qr2/spectral_wcs/*/3/{PRODUCT}")
    return root, list(info.paths), product


def _drizzle(field, out: Path, **kw) -> Path:
    root, paths, _ = field
    cfg = Drizzle3DConfig(center_ra=RA0, center_dec=DEC0, width=3.0, height=3.0, detector=3, static_zodi=True,
                          output_dir=out, data_mirror=root, progress=False, overwrite=True, **kw)
    path = drizzle_detector(paths, cfg, 3, build_output_wcs(cfg))
    assert path is not None
    return path


def _spectral_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "spectral WCS" in r.getMessage()]


@pytest.fixture(scope="module")
def lookup_cube(field, tmp_path_factory):
    return _drizzle(field, tmp_path_factory.mktemp("lookup"), spectral_wcs="lookup")


def test_a_cutout_maps_to_parent_pixels_with_crpix_a(field):
    """File pixel x (0-based) is parent pixel x + 1 - CRPIX1A; the product read there is what the
    simulator rendered the pixels with, and differs from the L2 lookup by less than the match
    tolerance but more than rounding."""
    _, paths, product = field
    maps = open_product(product, 3)
    true_lam, true_bw = true_wave_maps(3)
    for path in paths:
        header = fits.getheader(path, "IMAGE")
        frame = open_frame(path)
        ny, nx = frame.shape
        wave = frame_wave(maps, frame)
        assert isinstance(wave, ProductWave)
        dx, dy = 1 - int(header["CRPIX1A"]), 1 - int(header["CRPIX2A"])
        assert wave.offset == (dx, dy) and (dx, dy) != (0, 0)
        lam, bw = wave.evaluate_crop(0, nx, 0, ny)
        assert np.array_equal(lam, true_lam[dy:dy + ny, dx:dx + nx])
        assert np.array_equal(bw, true_bw[dy:dy + ny, dx:dx + nx])
        sub = wave.evaluate_crop(3, 7, 2, 5)
        assert np.array_equal(sub[0], lam[2:5, 3:7]) and np.array_equal(sub[1], bw[2:5, 3:7])
        lookup = frame.wave.evaluate_crop(0, nx, 0, ny)[0]
        assert 1e-5 < np.max(np.abs(lam - lookup)) < MATCH_TOLERANCE_UM


def test_the_product_is_used_and_recorded(field, lookup_cube, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        cube = _drizzle(field, tmp_path)
    assert not _spectral_warnings(caplog)
    h = fits.getheader(cube)
    assert h["WAVESRC"] == "SPECTRAL_WCS" and h["WVF00001"] == PRODUCT and "WVF00002" not in h
    assert fits.getheader(lookup_cube)["WAVESRC"] == "LOOKUP" and "WVF00001" not in fits.getheader(lookup_cube)
    with fits.open(cube) as a, fits.open(lookup_cube) as b:
        assert a["SCI"].data.shape == b["SCI"].data.shape
        assert not np.array_equal(a["SCI"].data, b["SCI"].data, equal_nan=True)  # other wavelengths, other cube


def _bad_products(product: Path, where: Path):
    """name -> a directory holding one broken D3 product (``spectral_wcs`` = that directory)."""
    def put(name, write):
        d = where / name
        d.mkdir()
        write(d / PRODUCT)
        return name, d

    lam, bw = product_maps(product)

    def truncated(p):
        data = product.read_bytes()
        p.write_bytes(data[: len(data) // 2])

    def not_fits(p):
        p.write_bytes(b"\0" * 5760)

    def small(p):
        write_spectral_wcs_product(where / "tmp_small", "qr2", 3, maps=(lam[:8, :8], bw[:8, :8]))
        shutil.move(next((where / "tmp_small").rglob("*.fits")), p)

    def other_detector(p):  # the D4 maps under a D3 name and header: refused frame by frame
        write_spectral_wcs_product(where / "tmp_d4", "qr2", 3, maps=true_wave_maps(4))
        shutil.move(next((where / "tmp_d4").rglob("*.fits")), p)

    def detector_keyword(p):
        shutil.copy(product, p)
        with fits.open(p, mode="update") as hdul:
            hdul[0].header["DETECTOR"] = 4

    def no_band(p):
        with fits.open(product) as hdul:
            fits.HDUList([hdul[0].copy(), hdul["CWAVE"].copy()]).writeto(p)

    def nan_values(p):
        write_spectral_wcs_product(where / "tmp_nan", "qr2", 3, maps=(np.where(lam > 0, np.nan, lam), bw))
        shutil.move(next((where / "tmp_nan").rglob("*.fits")), p)

    return dict(put(n, w) for n, w in (("truncated", truncated), ("not_fits", not_fits), ("small", small),
                                        ("other_detector", other_detector), ("detector_keyword", detector_keyword),
                                        ("no_band", no_band), ("nan_values", nan_values)))


REASONS = {"truncated": "truncated", "not_fits": "unreadable", "small": "expected (2040, 2040)",
           "other_detector": "differs from the frame's L2 lookup", "detector_keyword": "DETECTOR = 4",
           "no_band": "no CBAND", "nan_values": "CWAVE holds values", "missing": "does not exist",
           "none_in_mirror": "no spectral-WCS product of D3"}


@pytest.fixture(scope="module")
def bad_products(field, tmp_path_factory):
    return _bad_products(field[2], tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case", sorted(REASONS))
def test_an_unusable_product_falls_back_to_the_lookup_with_one_warning(case, field, bad_products, lookup_cube,
                                                                       tmp_path, caplog):
    if case == "missing":
        setting = str(tmp_path / "nowhere")
    elif case == "none_in_mirror":  # the mirror without its spectral_wcs tree
        root, paths, _ = field
        mirror = tmp_path / "mirror"
        for p in paths:
            dest = mirror / p.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dest)
        field = (mirror, [mirror / p.relative_to(root) for p in paths], None)
        setting = "auto"
    else:
        setting = str(bad_products[case])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        cube = _drizzle(field, tmp_path / "out", spectral_wcs=setting)
    (warning,) = _spectral_warnings(caplog)
    assert "L2 WCS-WAVE lookup" in warning and REASONS[case] in warning, warning
    assert fits.getheader(cube)["WAVESRC"] == "LOOKUP" and "WVF00001" not in fits.getheader(cube)
    with fits.open(cube) as a, fits.open(lookup_cube) as b:
        for name in ("SCI", "VARIANCE", "COUNT"):
            assert np.array_equal(a[name].data, b[name].data, equal_nan=True), name


def test_open_product_bounds_the_file_size(field, monkeypatch):
    from spxquery.drizzle3d import productwave

    monkeypatch.setattr(productwave, "MAX_PRODUCT_BYTES", 1000)
    with pytest.raises(ProductError, match="more than the 1000"):
        open_product(field[2], 3)


def test_a_frame_outside_the_product_or_off_by_a_fraction_is_refused(field):
    _, paths, product = field
    maps = open_product(product, 3)
    frame = open_frame(paths[0])
    from dataclasses import replace

    assert "whole number" in frame_wave(maps, replace(frame, parent_offset=(10.5, 3.0)))
    assert "outside the product" in frame_wave(maps, replace(frame, parent_offset=(2030.0, 3.0)))
    assert "outside the product" in frame_wave(maps, replace(frame, parent_offset=(-1.0, 3.0)))
    shifted = frame_wave(maps, replace(frame, parent_offset=(frame.parent_offset[0], frame.parent_offset[1] + 200)))
    assert "differs from the frame's L2 lookup" in shifted  # a wrong mapping is caught by the lookup check


def test_drizzle_fetches_the_products_once_and_makes_one_cube_of_two_detectors(tmp_path_factory, caplog):
    """drizzle() in download mode against the loopback archive: the frames of D3 and D4 into
    drizzle_all.fits, each detector's product found through SIA, fetched once into the cache
    beside the images and used (WAVESRC, WVFnnnnn); a second run reuses the cache."""
    from spxquery.drizzle3d.pipeline import drizzle
    from spxquery.drizzle3d.testing import ArchiveServer

    root = tmp_path_factory.mktemp("two_detectors")
    simulate_field(root, RA0, DEC0, detectors=(3, 4), n_pointings=2, release="qr2", seed=3, cutout_size_deg=0.1,
                   psf_size=11, psf_zones=2, true_wavelengths=True)
    out = tmp_path_factory.mktemp("two_out")
    with ArchiveServer(root) as srv:
        cfg = Drizzle3DConfig(center_ra=RA0, center_dec=DEC0, width=3.0, height=3.0, detector=0,
                              combine_detectors=True, tap_url=srv.tap_url, output_dir=out, use_cutouts=False,
                              static_zodi=True, progress=False, overwrite=True)
        with caplog.at_level(logging.WARNING):
            results = drizzle(cfg)
        assert list(results) == [0] and results[0] == out / "drizzle_all.fits"
        assert not _spectral_warnings(caplog)
        h = fits.getheader(results[0])
        assert h["WAVESRC"] == "SPECTRAL_WCS" and h["N_INPUTS"] == 4
        assert {h["WVF00001"], h["WVF00002"]} == {f"spectral_wcs_D{d}_spx_{CAL_TAGS['qr2']}.fits" for d in (3, 4)}
        cached = sorted((out / "images" / "qr2" / "spectral_wcs").rglob("*.fits"))
        assert [p.parent.name for p in cached] == ["3", "4"]
        assert srv.hits("spectral_wcs_D3_spx_") == 1 and srv.hits("spectral_wcs_D4_spx_") == 1
        with fits.open(results[0]) as hdul:
            t = hdul["WAVELENGTH"].data
            covered = hdul["COUNT"].data.reshape(len(t), -1).max(axis=1) > 0
            assert set(np.asarray(t["DETECTOR"])[covered]) == {3, 4}
        drizzle(cfg)  # again: the cached products are used, nothing fetched
        assert srv.hits("spectral_wcs_D3_spx_") == 1 and srv.hits("spectral_wcs_D4_spx_") == 1
        assert fits.getheader(results[0])["WAVESRC"] == "SPECTRAL_WCS"


@pytest.mark.parametrize("scheduler", [None, "local:1"])
def test_tiles_use_the_product_like_the_one_piece_cube(field, tmp_path, scheduler):
    """A tiled run gives every frame the product's wavelengths on the reader thread of each tile (in
    this process, and in a dask worker process that reopens the product): the one-piece cube, bit
    for bit, with the same WAVESRC and WVFnnnnn."""
    from spxquery.drizzle3d.pipeline import drizzle_tiled

    root, paths, _ = field
    whole = _drizzle(field, tmp_path / "whole")
    cfg = Drizzle3DConfig(center_ra=RA0, center_dec=DEC0, width=3.0, height=3.0, detector=3, static_zodi=True,
                          output_dir=tmp_path / "tiled", data_mirror=root, progress=False, tile_arcmin=1.3,
                          scheduler=scheduler)
    tiled = drizzle_tiled(paths, cfg, 3, 1.3)
    assert tiled is not None
    with fits.open(whole) as a, fits.open(tiled) as b:
        assert a[0].header["WAVESRC"] == b[0].header["WAVESRC"] == "SPECTRAL_WCS"
        assert b[0].header["WVF00001"] == PRODUCT
        for ext in ("SCI", "VARIANCE", "AND_MASK", "OR_MASK", "COUNT", "WAVELENGTH"):
            assert a[ext].data.tobytes() == b[ext].data.tobytes(), ext


def test_combined_cube_refuses_tiles():
    base = dict(center_ra=RA0, center_dec=DEC0, width=3.0, height=3.0, detector=0, combine_detectors=True)
    for extra in ({"tile_arcmin": 1.0}, {"scheduler": "local:1"}):
        with pytest.raises(ValueError, match="combine_detectors=True is drizzled in one piece"):
            Drizzle3DConfig(**base, **extra)


def test_a_tiled_rerun_does_not_reuse_pieces_made_with_other_wavelengths(field, tmp_path):
    """The tiles' run key holds each release's product choice: pieces drizzled with the L2 lookup
    are not reused once the product is found (and the other way round)."""
    from spxquery.drizzle3d.tiling import run_key, tile_plan
    from spxquery.drizzle3d.wavesources import WaveChoice, WaveSources

    _, paths, product = field
    cfg = Drizzle3DConfig(center_ra=RA0, center_dec=DEC0, width=3.0, height=3.0, detector=3, output_dir=tmp_path)
    tiles = tile_plan((cfg.output_ny(), cfg.output_nx()), 13)

    def key(choice: WaveChoice) -> str:
        return run_key(cfg, 3, tiles, paths, WaveSources("auto", choices={(3, "qr2"): choice}))

    with_product = key(WaveChoice(3, "qr2", product, ""))
    assert with_product == key(WaveChoice(3, "qr2", product, ""))
    assert with_product != key(WaveChoice(3, "qr2", None, "no product"))


def test_combined_cube_refuses_outlier_rejection():
    base = dict(center_ra=RA0, center_dec=DEC0, width=3.0, height=3.0, detector=0, combine_detectors=True)
    with pytest.raises(ValueError, match="combine_detectors=True and reject_outliers=True cannot be combined"):
        Drizzle3DConfig(**base, reject_outliers=True)
    assert Drizzle3DConfig(**base).combine_detectors  # either alone is fine
    assert Drizzle3DConfig(**{**base, "detector": 3, "combine_detectors": False}, reject_outliers=True).reject_outliers


def test_outlier_rejection_builds_its_model_with_the_products_wavelengths(tmp_path):
    """Both passes of outlier rejection read the frames with the product's wavelengths: the model
    of pass 1 differs from the one made with the lookup, and the cube records the product."""
    from spxquery.drizzle3d import wavesources
    from spxquery.drizzle3d.accumulate import DrizzleCube
    from spxquery.drizzle3d.grid import OutputGrid
    from spxquery.drizzle3d.outliermodel import build_model

    root = tmp_path / "field"  # five pointings with the centre on the same rows: the same wavelengths
    info = simulate_field(root, RA0, DEC0, detectors=(3,), release="qr2", seed=12, cutout_size_deg=0.1,
                          psf_size=11, psf_zones=2, true_wavelengths=True, centre_rows=[1000.0] * 5)
    (product,) = root.glob(f"qr2/spectral_wcs/*/3/{PRODUCT}")
    paths = list(info.paths)
    cube_path = _drizzle((root, paths, product), tmp_path / "cube", reject_outliers=True, outlier_min_inputs=3)
    with fits.open(cube_path) as hdul:
        assert hdul[0].header["WAVESRC"] == "SPECTRAL_WCS" and hdul[0].header["OUTREJ"]
        assert "REJECTED" in hdul and (hdul["REJECTED"].data >= 0).any()
    cfg = Drizzle3DConfig(center_ra=RA0, center_dec=DEC0, width=3.0, height=3.0, detector=3, static_zodi=True,
                          output_dir=tmp_path / "model", data_mirror=root, progress=False, reject_outliers=True,
                          outlier_min_inputs=3)
    grid = OutputGrid.for_detector(cfg, 3, build_output_wcs(cfg))
    waves = wavesources.resolve(cfg, {3: ["qr2"]})
    assert waves.choices[(3, "qr2")].product == product

    def model(w):
        cube = DrizzleCube.create(grid.wcs, grid.pixscale, grid.zgrid, cfg, 3)
        return build_model(paths, cfg, grid, cube, lambda n: 1, waves=w).values

    with_product, with_lookup = model(waves), model(None)
    defined = ~np.isnan(with_product) & ~np.isnan(with_lookup)
    assert defined.sum() > 100
    assert not np.array_equal(with_product[defined], with_lookup[defined])
