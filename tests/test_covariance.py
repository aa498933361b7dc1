"""Covariance of drizzled voxels (issue 22): the engine's cross terms against a brute-force sum
over the input pixels, the file round trip, determinism, and the fallback."""

from __future__ import annotations

import os
import re
import sys
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from memory_support import resident_pages
from spxquery.drizzle3d import _core, covariance, directio, vmhints
from spxquery.drizzle3d.accumulate import DrizzleCube, drizzle_frame
from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.covariance import (
    aperture_variance,
    correction_factor,
    cross_terms,
    layout,
    padded_terms,
    plane_variances,
    spatial_offsets,
    spatial_reach,
    spectral_reach,
    stencil,
    term_places,
)
from spxquery.drizzle3d.cubefile import load_cube, save_cube
from spxquery.drizzle3d.fitsbytes import image_data
from spxquery.drizzle3d.spectral import ZGrid, build_z_grid_native

EDGES = np.array([1.50, 1.52, 1.54, 1.56, 1.58, 1.60])


def make_cube(n, oversample=1.0, shrink=0.8, kernel="square", covariance=True, edges=EDGES, **cfg):
    """An empty ``(len(edges) - 1, n, n)`` cube whose configuration has ``oversample``."""
    side = n * 6.15 / oversample / 60.0
    config = Drizzle3DConfig(center_ra=10.0, center_dec=0.0, width=side, height=side, xy_shrink=shrink,
                             xy_oversample=oversample, kernel=kernel, covariance=covariance, **cfg)
    cube = DrizzleCube.create(WCS(naxis=2), 6.15 / oversample, ZGrid.from_edges(edges), config, 3)
    assert cube.flux_weighted.shape == (len(edges) - 1, n, n)
    return cube


def frames(n_in, oversample, n_frames=3, seed=0, noise=None):
    """``n_frames`` input frames of ``n_in`` x ``n_in`` pixels, rotated and shifted onto the output grid
    at ``oversample`` output pixels per input pixel: (corners_x, corners_y, image, variance, flags,
    lambda_c, delta_lambda) each, wavelengths spread so that top-hats span one to three bins."""
    rng = np.random.default_rng(seed)
    out = []
    for f in range(n_frames):
        theta, t = rng.uniform(0, np.pi / 2), rng.uniform(1.0, 3.0, 2)
        c, s = np.cos(theta) * oversample, np.sin(theta) * oversample
        yy, xx = np.mgrid[0 : n_in + 1, 0 : n_in + 1].astype(float) - 0.5
        cx = c * xx - s * yy + t[0] + (n_in * s if s > 0 else 0)
        cy = s * xx + c * yy + t[1]
        variance = rng.uniform(0.5, 2.0, (n_in, n_in))
        image = rng.normal(0.0, np.sqrt(variance)) if noise is None else noise(rng, variance)
        lam = rng.uniform(1.51, 1.59, (n_in, n_in))
        dlam = rng.uniform(0.01, 0.035, (n_in, n_in))
        out.append((cx, cy, image, variance, np.zeros((n_in, n_in), np.int32), lam, dlam))
    return out


def brute_force_variance(cube, frame_list, mask):
    """sum_i (sum_{k in mask} c_ki)^2 sigma_i^2 over every input pixel ``i``, from the contribution
    lists of the spxquery 0.4.1 API (spatial_mapping, spectral_overlaps): each a_ki, by hand."""
    nz, ny, nx = cube.flux_weighted.shape
    cfg, edges = cube.config, cube.zgrid.edges
    pixels = []  # per input pixel: (voxel flat indices, weights w_ki, sigma^2)
    for cx, cy, image, variance, _, lam, dlam in frame_list:
        _, pix, oy, ox, fxy = _core.spatial_mapping(corners_x=cx, corners_y=cy, out_ny=ny, out_nx=nx,
                                                    xy_shrink=cfg.xy_shrink, kernel=cfg.kernel)
        ivar = np.minimum(1.0 / variance.ravel(), cfg.ivar_max)
        for i in np.unique(pix):
            sel = pix == i
            z, fz = _core.spectral_overlaps(lambda_c=float(lam.ravel()[i]), delta_lambda=float(dlam.ravel()[i]),
                                            z_shrink=cfg.effective_z_shrink(), z_edges=edges)
            idx, w = [], []
            for zk, fzk in zip(z, fz):
                f = fxy[sel] * fzk
                keep = f > 0
                idx.append((zk * ny + oy[sel][keep]) * nx + ox[sel][keep])
                w.append(ivar[i] * f[keep])
            pixels.append((np.concatenate(idx), np.concatenate(w), variance.ravel()[i]))
    weight = np.zeros(nz * ny * nx)
    for idx, w, _ in pixels:
        np.add.at(weight, idx, w)
    selected = mask.ravel() & (weight > 0)
    total = 0.0
    for idx, w, var in pixels:
        total += np.sum(np.where(selected[idx], w / np.where(weight[idx] > 0, weight[idx], 1.0), 0.0)) ** 2 * var
    return total


def drizzled(n_out, oversample, shrink, kernel, frame_list, **kw):
    cube = make_cube(n_out, oversample, shrink, kernel, **kw)
    for fr in frame_list:
        drizzle_frame(cube, *fr)
    return cube


@pytest.mark.parametrize("kernel", ["square", "bilinear"])
@pytest.mark.parametrize("shrink", [1.0, 0.5])
@pytest.mark.parametrize("oversample", [1.0, 2.0])
def test_aperture_variance_equals_brute_force_sum_over_input_pixels(kernel, shrink, oversample, tmp_path):
    frame_list = frames(int(9 / oversample) + 2, oversample, seed=int(10 * shrink + oversample))
    cube = drizzled(14, oversample, shrink, kernel, frame_list)
    path = save_cube(cube, tmp_path / "cube.fits")  # its offsets: those some pixel coupled
    assert len(load_cube(path)["cov_offsets"]) <= len(cube.cov_offsets) + 1
    rng = np.random.default_rng(5)
    masks = [np.zeros(cube.flux_weighted.shape, bool) for _ in range(4)]
    masks[0][2, 4:9, 3:10] = True  # one plane, a box
    masks[1][1:4, 5:8, 5:8] = True  # three planes
    masks[2][:] = rng.random(masks[2].shape) < 0.3  # scattered voxels
    masks[3][:, 6, 6] = True  # one pixel's spectrum
    for mask in masks:
        want = brute_force_variance(cube, frame_list, mask)
        got = aperture_variance(cube, mask)
        assert got == pytest.approx(want, rel=1e-10)
        assert aperture_variance(path, mask) == pytest.approx(want, rel=1e-10)
        # Without the cross terms the sum of the variances is smaller (it is a lower bound here).
        assert np.nansum(np.where(mask, cube.variance, np.nan)) < want


def test_top_hats_spanning_three_planes_write_part_one_and_match_the_brute_force(tmp_path):
    """Pixels whose top-hats span three planes couple voxels two planes apart: their terms live in
    part 1 of the cross terms (issue 22, seventh part), exact against the brute force and in the file."""
    wide = frames(9, 1.0, seed=21)
    wide = [(cx, cy, im, var, fl, lam, np.full_like(dlam, 0.034)) for cx, cy, im, var, fl, lam, dlam in wide]
    cube = drizzled(14, 1.0, 0.8, "square", wide)
    assert cube.cov_cross.shape[0] == 2
    far = [n for n, o in enumerate(cube.cov_offsets) if abs(int(o[0])) == 2]
    assert far and all(term_places(cube.cov_offsets)[n][0] == 1 for n in far)
    assert cube.cov_cross[1].any() and any(cube.cov_term(n).any() for n in far)
    path = save_cube(cube, tmp_path / "wide.fits")
    assert any(abs(int(o[0])) == 2 for o in load_cube(path)["cov_offsets"])
    for mask_planes in (slice(0, 3), slice(1, 5)):
        mask = np.zeros(cube.flux_weighted.shape, bool)
        mask[mask_planes, 3:10, 4:11] = True
        want = brute_force_variance(cube, wide, mask)
        assert aperture_variance(cube, mask) == pytest.approx(want, rel=1e-10)
        assert aperture_variance(path, mask) == pytest.approx(want, rel=1e-10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/pagemap")
def test_part_one_stays_untouched_where_no_top_hat_spans_three_planes(tmp_path):
    """Top-hats of at most two planes (as every cube of the cached benchmark fields): no page of
    part 1 is ever mapped by the kernel (its memory is fresh: 2 x 18 MB, beyond malloc's heap)."""
    narrow = frames(20, 1.0, seed=22)
    narrow = [(cx, cy, im, var, fl, lam, np.full_like(dlam, 0.012)) for cx, cy, im, var, fl, lam, dlam in narrow]
    cube = drizzled(120, 1.0, 0.8, "square", narrow)
    assert cube.cov_cross.shape[0] == 2 and cube.cov_cross[1].nbytes > 16 << 20
    assert resident_pages(cube.cov_cross[1]) == 0
    assert resident_pages(cube.cov_cross[0]) > 0
    loaded = load_cube(save_cube(cube, tmp_path / "narrow.fits"))
    assert len(loaded["cov_offsets"]) > 1 and all(abs(int(o[0])) <= 1 for o in loaded["cov_offsets"])


def test_mean_per_plane_and_two_d_masks():
    frame_list = frames(10, 1.0, seed=3)
    cube = drizzled(14, 1.0, 0.8, "square", frame_list)
    mask = np.zeros((14, 14), bool)
    mask[4:9, 5:10] = True
    three_d = np.broadcast_to(mask, cube.flux_weighted.shape)
    assert aperture_variance(cube, mask) == aperture_variance(cube, three_d)
    n = int(np.count_nonzero(three_d & np.isfinite(cube.variance)))
    assert aperture_variance(cube, mask, mean=True) == pytest.approx(aperture_variance(cube, mask) / n**2, rel=1e-14)
    # Each plane on its own: the variance of that plane's sum, brute force.
    per_plane = plane_variances(cube, three_d, same_plane=True)
    for k in range(cube.nz):
        one = np.zeros_like(three_d)
        one[k] = mask
        assert per_plane[k] == pytest.approx(brute_force_variance(cube, frame_list, one), rel=1e-10)


def test_the_file_holds_the_covariance_and_gives_the_same_variances(tmp_path):
    cube = drizzled(14, 1.0, 0.8, "square", frames(10, 1.0, seed=4))
    path = save_cube(cube, tmp_path / "cov.fits")
    loaded = load_cube(path)
    # The offsets some pixel coupled, in the stencil's order; the others' terms are all zero.
    coupled = [n for n in range(len(cube.cov_offsets)) if cube.cov_term(n).any()]
    assert 0 < len(coupled) < len(cube.cov_offsets)
    np.testing.assert_array_equal(loaded["cov_offsets"][1:], cube.cov_offsets[coupled])
    assert loaded["covariance"].shape == (len(coupled) + 1, *cube.flux_weighted.shape)
    assert loaded["cov_offsets"][0].tolist() == [0, 0, 0]
    assert loaded["header"]["COVAR"] is True
    assert loaded["header"]["COVCORR"] == pytest.approx(correction_factor(cube.config), abs=1e-6)
    # Each written plane bit for bit the in-memory one; every plane left out is zero.
    planes = np.stack(list(covariance.file_planes(cube))).reshape(-1, *cube.flux_weighted.shape)
    assert loaded["covariance"].astype("<f8").tobytes() == planes[[0, *(1 + n for n in coupled)]].tobytes()
    assert not np.delete(planes, [0, *(1 + n for n in coupled)], axis=0).any()
    mask = np.zeros(cube.flux_weighted.shape, bool)
    mask[1:3, 3:10, 4:11] = True
    want = aperture_variance(cube, mask)
    for source in (path, str(path), loaded):
        assert aperture_variance(source, mask) == pytest.approx(want, rel=1e-13)
    np.testing.assert_array_equal(loaded["covariance"][0], cube.variance)


def test_written_terms_are_the_offsets_of_the_pairs_some_pixel_touched(tmp_path):
    """A few pixels by hand (the 0.4.1 contribution lists): the file lists exactly the offsets of
    the voxel pairs they share, the farthest of the stencil included (a pixel 1.1 native pixels wide,
    turned by 45 degrees, spans three columns; its top-hat three planes)."""
    cube = make_cube(8)
    nz, ny, nx = cube.flux_weighted.shape
    c, s = np.cos(np.pi / 4) * 1.1, np.sin(np.pi / 4) * 1.1
    yy, xx = np.mgrid[0:2, 0:4].astype(float) - 0.5
    cx, cy = c * xx - s * yy + 2.0, s * xx + c * yy + 3.0
    lam = np.array([[1.55, 1.53, 1.57]])
    dlam = np.array([[0.055, 0.01, 0.03]])
    frame = (cx, cy, np.ones((1, 3)), np.ones((1, 3)), np.zeros((1, 3), np.int32), lam, dlam)
    drizzle_frame(cube, *frame)
    cfg = cube.config
    _, pix, oy, ox, fxy = _core.spatial_mapping(corners_x=cx, corners_y=cy, out_ny=ny, out_nx=nx,
                                                xy_shrink=cfg.xy_shrink, kernel=cfg.kernel)
    pairs = set()
    for i in np.unique(pix):
        z, fz = _core.spectral_overlaps(lambda_c=float(lam.ravel()[i]), delta_lambda=float(dlam.ravel()[i]),
                                        z_shrink=cfg.effective_z_shrink(), z_edges=cube.zgrid.edges)
        voxels = [(int(zk), int(y), int(x)) for zk, fzk in zip(z, fz) for y, x, f in
                  zip(oy[pix == i], ox[pix == i], fxy[pix == i]) if f * fzk > 0]
        for a in voxels:
            for b in voxels:
                o = (b[0] - a[0], b[1] - a[1], b[2] - a[2])
                if o[1] > 0 or (o[1] == 0 and (o[2] > 0 or (o[2] == 0 and o[0] > 0))):
                    pairs.add(o)
    stencil_order = [tuple(int(v) for v in o) for o in cube.cov_offsets]
    want = [o for o in stencil_order if o in pairs]
    assert max(abs(o[0]) for o in want) == 2 and max(abs(o[2]) for o in want) == 2  # the far ones
    assert len(want) < len(stencil_order)
    loaded = load_cube(save_cube(cube, tmp_path / "few.fits"))
    assert [tuple(int(v) for v in o) for o in loaded["cov_offsets"][1:]] == want
    mask = np.ones(cube.flux_weighted.shape, bool)
    assert aperture_variance(loaded, mask) == pytest.approx(aperture_variance(cube, mask), rel=1e-13)


def test_a_cube_whose_planes_are_zero_omits_them(tmp_path):
    """Regression (issue 22, sixth part): all-zero COVARIANCE planes are not written. Cross terms of
    one offset only: the file has the variance and that offset; none at all: the variance alone."""
    cube = make_cube(6)
    cube.weight_total[...], cube.flux_weighted[...], cube.var_accum[...] = 2.0, 2.0, 4.0
    cube.count_map[...], cube.n_input_sc[...] = 1, 1
    n = [tuple(o) for o in cube.cov_offsets].index((0, 1, -1))
    cube.cov_term(n)[1:3, 2, 3] = 0.5
    mask = np.zeros(cube.flux_weighted.shape, bool)
    mask[1, 2:4, 1:4] = True
    for name, want in (("one.fits", [[0, 0, 0], [0, 1, -1]]), ("none.fits", [[0, 0, 0]])):
        path = save_cube(cube, tmp_path / name)
        loaded = load_cube(path)
        assert loaded["cov_offsets"].tolist() == want
        assert loaded["covariance"].shape == (len(want), *cube.flux_weighted.shape)
        with fits.open(path) as hdul:
            assert hdul["COVARIANCE"].header["NAXIS4"] == len(want) and len(hdul["COVAR-OFFSETS"].data) == len(want)
        assert aperture_variance(path, mask) == aperture_variance(cube, mask)
        cube.cov_cross[...] = 0.0
    assert aperture_variance(path, mask) == 6 * 1.0


def _plane_by_plane_image(f, cube, terms):
    """The reference: the COVARIANCE writer before the band pass (issue 22), each plane of
    ``file_planes`` converted by numpy and written in order."""
    nbytes = 0
    for plane in covariance.file_planes(cube, terms):
        data = image_data(plane)
        f.write(data.data)
        nbytes += data.nbytes
    return nbytes


def _undated(data: bytes) -> bytes:
    """A cube file's bytes without the value of its creation time (the PRIMARY card DATE)."""
    out, n = re.subn(rb"DATE    = '[0-9T:-]{19}'", b"DATE    = ''", data)
    assert n == 1
    return out


@pytest.mark.parametrize("kernel, shrink, oversample, edges", [
    ("square", 0.8, 1.0, EDGES),
    ("bilinear", 1.0, 1.0, EDGES),
    ("square", 1.0, 2.0, EDGES),
    ("square", 0.8, 1.0, np.linspace(1.50, 1.60, 12)),  # narrow bins: offsets reach 3+ planes
])
def test_band_writer_gives_the_bytes_of_the_plane_by_plane_writer(tmp_path, monkeypatch, kernel, shrink,
                                                                   oversample, edges):
    cube = drizzled(15, oversample, shrink, kernel, frames(int(9 / oversample) + 2, oversample, seed=11),
                    edges=edges)
    nz, ny, nx = cube.weight_total.shape
    # Edges of the case: empty voxels, and offsets whose partner plane lies beyond the cube.
    assert (cube.weight_total == 0).any() and (cube.weight_total > 0).any()
    assert max(int(o[0]) for o in cube.cov_offsets) >= 1 and any(int(o[2]) < 0 for o in cube.cov_offsets)
    monkeypatch.setattr(covariance, "write_image", _plane_by_plane_image)
    want = _undated(save_cube(cube, tmp_path / "old.fits").read_bytes())
    monkeypatch.undo()
    sizes = []
    band = _core.fits_covariance_band

    def recorded(**kw):
        sizes.append(kw["out"].nbytes)
        band(**kw)

    monkeypatch.setattr(_core, "fits_covariance_band", recorded)
    n_off = len(covariance.written_terms(cube)) + 1
    # The whole plane in one band; one row per band; bands of 4 rows (the last one shorter).
    for limit in (covariance.WRITE_BUFFER_BYTES, 1, 4 * n_off * nx * 8):
        sizes.clear()
        monkeypatch.setattr(covariance, "WRITE_BUFFER_BYTES", limit)
        got = _undated(save_cube(cube, tmp_path / "new.fits", overwrite=True).read_bytes())
        assert got == want
        assert max(sizes) <= max(limit, n_off * nx * 8)  # memory: one buffer of a band
    assert len(sizes) == nz * -(-ny // 4)


def _recorded_writers(monkeypatch) -> list:
    """The ``directio.PlacedWriter``s made from now on (the list fills as they are made)."""
    writers = []
    real = directio.PlacedWriter
    monkeypatch.setattr(directio, "PlacedWriter", lambda *a, **kw: writers.append(real(*a, **kw)) or writers[-1])
    return writers


def test_the_writer_sends_whole_blocks_direct_or_starts_the_writeback_and_the_bytes_do_not_depend_on_it(
        tmp_path, monkeypatch):
    cube = drizzled(12, 1.0, 0.8, "square", frames(9, 1.0, seed=5))
    nz, ny, nx = cube.weight_total.shape
    n_off = len(covariance.written_terms(cube)) + 1
    assert n_off < len(cube.cov_offsets) + 1
    monkeypatch.setattr(covariance, "WRITE_BUFFER_BYTES", 5 * n_off * nx * 8)  # bands of 5 rows
    monkeypatch.setattr(directio, "DIRECT_MIN_BYTES", 0)  # as a large cube's
    started = []
    real = vmhints.start_writeback
    monkeypatch.setattr(vmhints, "start_writeback", lambda fd, *a: started.append((fd, a)) or real(fd, *a))
    reserved = []
    real_pre = vmhints.preallocate
    monkeypatch.setattr(vmhints, "preallocate", lambda *a: reserved.append(a) or real_pre(*a))
    writers = _recorded_writers(monkeypatch)
    raw = save_cube(cube, tmp_path / "a.fits").read_bytes()
    want = _undated(raw)
    n_bytes = n_off * nz * ny * nx * 8
    (placed,) = writers  # the cube file's writer, lent to the COVARIANCE image
    assert placed.direct_bytes + placed.cached_bytes == len(raw)
    if directio.supported(tmp_path):  # each offset's image direct but for its two ends
        assert placed.cached_bytes < 2 * directio.ALIGN * (n_off + 1) and not started
    else:
        assert len(started) == nz * -(-ny // 5) and all(a == () for _, a in started)
    assert len(reserved) == 1 and reserved[0][2] == n_bytes
    start = reserved[0][1]  # the image's data: after the COVARIANCE header, before the next header
    assert start % 2880 == 0 and raw.rfind(b"XTENSION", 0, start) < raw.rfind(b"EXTNAME = 'COVARIANCE'", 0, start)
    assert raw.find(b"XTENSION", start) == start + n_bytes + (-n_bytes % 2880)
    monkeypatch.setattr(vmhints, "_SYNC_FILE_RANGE", None)  # a system without the calls
    monkeypatch.setattr(vmhints, "_FALLOCATE", None)
    monkeypatch.setattr(vmhints, "_MADVISE", None)
    assert _undated(save_cube(drizzled(12, 1.0, 0.8, "square", frames(9, 1.0, seed=5)), tmp_path / "b.fits")
                    .read_bytes()) == want


def test_a_large_image_goes_to_the_disk_directly_with_the_same_bytes_as_through_the_page_cache(
        tmp_path, monkeypatch):
    cube = drizzled(40, 1.0, 0.8, "square", frames(34, 1.0, n_frames=2, seed=6))
    nz, ny, nx = cube.weight_total.shape
    monkeypatch.setattr(directio, "DIRECT_MIN_BYTES", 0)  # as a large cube's
    n_bytes = (len(covariance.written_terms(cube)) + 1) * nz * ny * nx * 8
    writers = _recorded_writers(monkeypatch)
    started = []
    real = vmhints.start_writeback
    monkeypatch.setattr(vmhints, "start_writeback", lambda fd, *a: started.append(fd) or real(fd, *a))
    raw = save_cube(cube, tmp_path / "direct.fits").read_bytes()
    direct = _undated(raw)
    (placed,) = writers  # the cube file's writer, lent to the COVARIANCE image
    assert placed.direct_bytes + placed.cached_bytes == len(raw) > n_bytes
    if directio.supported(tmp_path):  # each offset's image direct but for its two ends
        assert placed.cached_bytes < 2 * directio.ALIGN * (n_bytes // (nz * ny * nx * 8) + 1) and not started
    else:
        assert placed.direct_bytes == 0
    # A small cube (through the page cache) with a large COVARIANCE image: the image's own writer.
    monkeypatch.setattr(directio, "DIRECT_MIN_BYTES", n_bytes)
    writers.clear()
    assert _undated(save_cube(cube, tmp_path / "image.fits").read_bytes()) == direct
    (own,) = writers
    assert own.direct_bytes + own.cached_bytes == n_bytes
    if directio.supported(tmp_path):
        assert own.cached_bytes < 2 * directio.ALIGN * (n_bytes // (nz * ny * nx * 8)) and not started
    monkeypatch.delattr(os, "O_DIRECT", raising=False)  # a system without it
    writers.clear()
    assert _undated(save_cube(cube, tmp_path / "cached.fits").read_bytes()) == direct
    assert writers[0].direct_bytes == 0 and len(started) == nz  # a writeback started after each band (a plane)
    got = load_cube(tmp_path / "direct.fits")
    want = np.stack(list(covariance.file_planes(cube, covariance.written_terms(cube))))
    assert np.array_equal(got["covariance"].reshape(want.shape), want, equal_nan=True)


def test_covariance_band_rejects_wrong_shapes_naming_them():
    cube = drizzled(8, 1.0, 0.8, "square", frames(6, 1.0, n_frames=1, seed=2))
    nz, ny, nx = cube.weight_total.shape
    n_off = len(cube.cov_offsets) + 1
    columns = covariance.term_columns(cube.cov_offsets)
    args = dict(cross=cube.cov_cross[:, 0], var=cube.var_accum[0].ravel(), weight=cube.weight_total,
                offsets=cube.cov_offsets, columns=columns, k=0, y0=0,
                out=np.empty(n_off * ny * nx, np.uint64))
    _core.fits_covariance_band(**args)
    with pytest.raises(ValueError, match="var"):
        _core.fits_covariance_band(**{**args, "var": cube.var_accum[0, 1:].ravel()})
    with pytest.raises(ValueError, match="outside the cube"):
        _core.fits_covariance_band(**{**args, "k": nz})
    with pytest.raises(ValueError, match="offsets"):
        _core.fits_covariance_band(**{**args, "offsets": cube.cov_offsets[:, :2].copy()})
    with pytest.raises(ValueError, match="weight"):
        _core.fits_covariance_band(**{**args, "weight": cube.weight_total[:, :, ::-1]})
    with pytest.raises(ValueError, match="columns"):
        _core.fits_covariance_band(**{**args, "columns": np.full(n_off - 1, cube.cov_cross[:, 0].size // (ny * nx))})
    with pytest.raises(ValueError, match="columns"):
        _core.fits_covariance_band(**{**args, "columns": columns[:-1]})


def test_bitwise_identical_for_any_thread_count_and_science_unchanged():
    frame_list = frames(30, 1.0, n_frames=2, seed=7)
    results = []
    for threads in (1, 2, 3, 5):
        cube = make_cube(34)
        for fr in frame_list:
            drizzle_frame(cube, *fr, threads=threads)
        results.append([a.tobytes() for a in cube.accumulators().values()])
    assert all(r == results[0] for r in results[1:])
    plain = make_cube(34, covariance=False)
    for fr in frame_list:
        drizzle_frame(plain, *fr)
    # The science bit for bit as without covariance: the same scan deposits it.
    assert [a.tobytes() for a in plain.accumulators().values()] == results[0][: len(plain.accumulators())]


def test_a_pixel_beyond_the_stencil_is_an_error_not_dropped_terms():
    cube = make_cube(14)
    # Input pixels three times the size the configuration implies.
    cx, cy, *rest = frames(3, 3.0, n_frames=1)[0]
    with pytest.raises(ValueError, match="beyond the stencil"):
        drizzle_frame(cube, cx, cy, *rest)


def test_stencil_follows_the_geometry():
    cfg = Drizzle3DConfig(center_ra=10.0, center_dec=0.0, width=2.0, height=2.0)
    assert spatial_reach(cfg) == 2  # 0.8 x 1.1 x sqrt(2) = 1.24 output pixels: three pixels apart at most
    assert spatial_reach(cfg.replace(xy_shrink=0.5)) == 1
    assert spatial_reach(cfg.replace(xy_oversample=2.0)) == 3
    assert spatial_reach(cfg.replace(kernel="bilinear", xy_oversample=4.0)) == 1
    assert spectral_reach(np.array([1.0, 1.1, 1.2, 1.3]), 0.05) == 1
    assert spectral_reach(np.array([1.0, 1.1, 1.2, 1.3]), 0.15) == 2
    assert spectral_reach(np.array([1.0, 1.1, 1.2, 1.3]), 0.25) == 2  # three bins at most
    # Rows and columns up to 2 apart, but not both: the droplet's diagonal (1.24) is shorter than
    # the sqrt(2) between pixels two apart in both.
    assert sorted(spatial_offsets(cfg)) == sorted((dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                                                  if abs(dy) + abs(dx) < 4)
    offsets = stencil(cfg, np.array([1.0, 1.1, 1.2]))
    assert len(offsets) == len({tuple(o) for o in offsets}) == (21 * 3 - 1) // 2


def test_correction_factor_is_fruchter_and_hook():
    cfg = Drizzle3DConfig(center_ra=10.0, center_dec=0.0, width=2.0, height=2.0, xy_shrink=1.0)
    assert correction_factor(cfg) == pytest.approx(1.5)  # r = 1
    assert correction_factor(cfg.replace(xy_oversample=2.0)) == pytest.approx(2.0 / (1 - 1 / 6))
    assert correction_factor(cfg.replace(xy_shrink=0.5)) == pytest.approx(1.0 / (1 - 0.5 / 3))
    assert correction_factor(cfg.replace(kernel="bilinear")) == pytest.approx(1.5)


def test_without_covariance_the_fallback_warns_and_scales_by_r_squared(tmp_path):
    cube = drizzled(14, 1.0, 0.8, "square", frames(10, 1.0, seed=4), covariance=False)
    assert cube.cov_cross is None
    mask = np.zeros(cube.flux_weighted.shape, bool)
    mask[2, 4:9, 4:9] = True
    r2 = correction_factor(cube.config) ** 2
    summed = np.nansum(np.where(mask, cube.variance, np.nan))
    path = save_cube(cube, tmp_path / "plain.fits")
    for source in (cube, path):
        with pytest.warns(UserWarning, match="no COVARIANCE HDU"):
            got = aperture_variance(source, mask)
        assert got == pytest.approx(summed * r2, rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aperture_variance(drizzled(14, 1.0, 0.8, "square", frames(10, 1.0, seed=4)), mask)


# ── Monte Carlo ──────────────────────────────────────────────────────────────


def noise_frames(n_in, n_frames, seed):
    """Pure-noise SPHEREx-like frames: native scale, rotated and dithered, xy_shrink 0.8; the
    linear variable filter's wavelength runs along the frame (bandwidth lambda / 40), so top-hats
    span one or two of the 0.04 um bins."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_frames):
        theta = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(theta), np.sin(theta)
        yy, xx = np.mgrid[0 : n_in + 1, 0 : n_in + 1].astype(float) - 0.5 - n_in / 2
        cx = c * xx - s * yy + n_in / 2 + rng.uniform(-1, 1)
        cy = s * xx + c * yy + n_in / 2 + rng.uniform(-1, 1)
        lam = 1.60 + 0.002 * np.arange(n_in)[:, None] * np.ones((1, n_in)) + rng.uniform(0, 0.04)
        out.append((cx, cy, rng.uniform(0.5, 2.0, (n_in, n_in)), np.zeros((n_in, n_in), np.int32), lam, lam / 40.0))
    return out


@pytest.mark.slow
def test_monte_carlo_aperture_sums_scatter_as_aperture_variance_says():
    """>= 200 realisations of pure noise on fixed geometry: for apertures of 1x1, 3x3 and 7x7
    pixels over 1-3 planes, the measured variance of the aperture sums (pooled over aperture
    positions, each normalised by its predicted variance) is aperture_variance within 5%, while
    the plain sum of VARIANCE is far off (printed)."""
    n, n_real = 48, 400
    edges = np.arange(1.60, 1.80001, 0.04)
    geometry = noise_frames(n + 8, 4, seed=11)
    rng = np.random.default_rng(12)

    def drizzle_noise(covariance):
        cube = make_cube(n, 1.0, 0.8, "square", covariance=covariance, edges=edges)
        for cx, cy, variance, flags, lam, dlam in geometry:
            drizzle_frame(cube, cx, cy, rng.normal(0.0, np.sqrt(variance)), variance, flags, lam, dlam)
        return cube

    reference = drizzle_noise(True)
    sci = np.stack([drizzle_noise(False).flux for _ in range(n_real)])
    report = []
    for side in (1, 3, 7):
        for planes in (1, 2, 3):
            ratios, naive = [], []
            for k0 in range(0, len(edges) - 1 - planes + 1, planes):
                for y0 in range(4, n - 4 - side, side + 1):
                    for x0 in range(4, n - 4 - side, side + 1):
                        mask = np.zeros(reference.flux_weighted.shape, bool)
                        mask[k0 : k0 + planes, y0 : y0 + side, x0 : x0 + side] = True
                        if not np.all(np.isfinite(reference.variance[mask])):
                            continue
                        sums = sci[:, mask].sum(axis=1)
                        measured = np.var(sums, ddof=1)
                        ratios.append(measured / aperture_variance(reference, mask))
                        naive.append(measured / reference.variance[mask].sum())
            ratio, plain = float(np.mean(ratios)), float(np.mean(naive))
            report.append(f"{side}x{side} x {planes} planes: measured / aperture_variance {ratio:.3f}, "
                          f"measured / summed VARIANCE {plain:.3f} ({len(ratios)} apertures)")
            assert abs(ratio - 1.0) < 0.05, report[-1]
    print("\n".join(report))


def _positive_offsets(z: int, s: int) -> np.ndarray:
    """The positive offsets within ``|dz| <= z``, ``|dy|, |dx| <= s``, nearest first (as :func:`stencil`)."""
    out = [(dz, dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1) for dz in range(-z, z + 1)
           if dy > 0 or (dy == 0 and (dx > 0 or (dx == 0 and dz > 0)))]
    out.sort(key=lambda o: max(abs(v) for v in o))
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def test_each_voxels_cross_terms_start_on_a_cache_line_and_each_part_on_a_huge_page():
    for z, s, parts in ((0, 1, 1), (1, 1, 1), (1, 2, 1), (2, 2, 2), (3, 1, 2)):
        offsets = _positive_offsets(z, s)
        a = cross_terms((3, 4, 5), offsets)
        near = int(np.count_nonzero(np.abs(offsets[:, 0]) <= 1))
        far = len(offsets) - near  # |dz| >= 2: part 1
        slots = padded_terms(max(near, far))
        assert layout(offsets) == (parts, slots) and a.shape == (parts, 3, 4, 5, slots)
        assert a.dtype == np.float64 and not a.any()
        assert slots % 8 == 0 and a.strides[1:] == (4 * 5 * slots * 8, 5 * slots * 8, slots * 8, 8)
        assert a.ctypes.data % covariance.HUGE_PAGE == 0 and (parts == 1 or a.strides[0] % covariance.HUGE_PAGE == 0)
        places = term_places(offsets)
        for p in range(parts):  # a part's slots number its offsets in the stencil's order
            mine = [n for n, o in enumerate(offsets) if int(abs(o[0]) > 1) == p]
            assert places[mine].tolist() == [[p, k] for k in range(len(mine))]
    cube = make_cube(6)
    assert cube.cov_cross.ctypes.data % 64 == 0 and cube.cov_cross.strides[3] % 64 == 0
    n = len(cube.cov_offsets) - 1
    part, slot = term_places(cube.cov_offsets)[n]
    view = cube.cov_term(n)
    view[1, 2, 3] = 7.0
    assert cube.cov_cross[part, 1, 2, 3, slot] == 7.0 and np.count_nonzero(cube.cov_cross) == 1


def test_preflight_counts_the_cross_terms():
    from spxquery.drizzle3d.preflight import RunBudgetError, bytes_per_voxel, check_budget

    cfg = Drizzle3DConfig(center_ra=10.0, center_dec=0.0, width=30.0, height=30.0, detector=3)
    plain, with_cov = bytes_per_voxel(cfg, 3), bytes_per_voxel(cfg.replace(covariance=True), 3)
    n = len(stencil(cfg, build_z_grid_native(3).edges, 3))
    parts, slots = layout(stencil(cfg, build_z_grid_native(3).edges, 3))  # each voxel's terms from a line's start
    assert (parts, slots) == (2, 32)  # D3: 31 offsets with |dz| <= 1, 21 with |dz| = 2, in 32 slots each
    assert with_cov == (plain[0] + 8 * parts * slots, plain[1] + 8 * (n + 1))
    voxels = 17 * cfg.output_ny() * cfg.output_nx()
    memory = voxels * plain[0] + (600 << 20)  # enough without the cross terms, not with them
    check_budget(cfg, [3], memory=memory, disk=1 << 50)
    with pytest.raises(RunBudgetError, match="without covariance"):
        check_budget(cfg.replace(covariance=True), [3], memory=memory, disk=1 << 50)
    # With outlier rejection too: the model's bytes and the cross terms add up, REJECTED is on disk.
    both = cfg.replace(covariance=True, reject_outliers=True)
    rejecting = bytes_per_voxel(cfg.replace(reject_outliers=True), 3)
    assert bytes_per_voxel(both, 3) == (rejecting[0] + 8 * parts * slots, rejecting[1] + 8 * (n + 1))
    assert rejecting[1] == plain[1] + 4
    roomy = voxels * bytes_per_voxel(both, 3)[0] + (600 << 20)
    check_budget(both, [3], memory=roomy, disk=1 << 50)
    with pytest.raises(RunBudgetError, match="with outlier rejection and covariance.*cannot be drizzled in tiles"):
        check_budget(both, [3], memory=roomy - (100 << 20), disk=1 << 50)
    with pytest.raises(RunBudgetError, match="cube file"):
        check_budget(both, [3], memory=roomy, disk=voxels * bytes_per_voxel(both, 3)[1] - 1)


@pytest.mark.parametrize("grid_kw", [{}, {"z_oversample": 2.0, "xy_oversample": 2.0}, {"kernel": "bilinear"}])
def test_pipeline_writes_the_covariance_of_simulated_frames(drizzled_cubes, tmp_path, grid_kw):
    """The pipeline on the simulated SPHEREx cutouts (distortion, the linear variable filter):
    every coupled pair lies in the stencil derived from the configuration (else an error), the
    file has the covariance HDUs, SCI is the one of the default path, and an aperture's exact
    variance exceeds the summed variances."""
    from astropy.io import fits

    from spxquery.drizzle3d.grid import build_output_wcs
    from spxquery.drizzle3d.pipeline import drizzle_detector

    cfg = drizzled_cubes.configs["native"].replace(output_dir=tmp_path, covariance=True, width=3.0, height=3.0,
                                                   **grid_kw)
    path = drizzle_detector(drizzled_cubes.field.paths, cfg, 3, build_output_wcs(cfg))
    plain = drizzle_detector(drizzled_cubes.field.paths, cfg.replace(covariance=False, output_dir=tmp_path / "p"), 3,
                             build_output_wcs(cfg))
    with fits.open(path) as hdul, fits.open(plain) as ref:
        names = [h.name for h in hdul]
        assert names[: len(ref)] == [h.name for h in ref] and names[len(ref):] == ["COVARIANCE", "COVAR-OFFSETS"]
        for name in ("SCI", "VARIANCE", "COUNT", "AND_MASK", "OR_MASK"):  # bit for bit the default path's
            assert hdul[name].data.tobytes() == ref[name].data.tobytes(), name
        assert hdul[0].header["COVAR"] is True and ref[0].header["COVAR"] is False
    cube = load_cube(path)
    ny, nx = cube["sci"].shape[1:]
    mask = np.zeros(cube["sci"].shape, bool)
    k = int(np.argmax(np.convolve((cube["count"][:, ny // 2, nx // 2] > 0).astype(int), np.ones(3), "valid")))
    mask[k : k + 3, ny // 2 - 3 : ny // 2 + 4, nx // 2 - 3 : nx // 2 + 4] = True
    summed = np.nansum(np.where(mask, cube["covariance"][0], np.nan))
    assert aperture_variance(path, mask) > 1.2 * summed


def test_covariance_is_refused_for_the_cube_of_all_detectors():
    """The stencil comes from one detector's bandwidths: a ValueError naming both settings."""
    with pytest.raises(ValueError, match="combine_detectors=True and covariance=True cannot be combined"):
        Drizzle3DConfig(center_ra=10.0, center_dec=0.0, width=1.0, height=1.0, detector=0, combine_detectors=True,
                        covariance=True)
    Drizzle3DConfig(center_ra=10.0, center_dec=0.0, width=1.0, height=1.0, detector=3, covariance=True)
