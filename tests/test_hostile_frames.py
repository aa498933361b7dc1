"""Hostile-input corpus, frame side (issue 16 classes 1-3): broken L2 files among good ones.

Every case is a good simulated cutout with one defect (headers, tables, data, structure), built
at test time. Each runs through the public API beside three good frames, bounded in time, and
must end as documented: the bad frame skipped with one warning line naming the file and the
reason, counted in N_REJECT, the run going on, and the cube equal, bit for bit, to the cube of
the good frames alone. The cases that once aborted the interpreter (astropy/wcslib on a broken
``W`` WCS) and a few more run in a subprocess with an address-space limit. One run goes through
``drizzle()`` with every bad frame in a mirror behind the loopback archive server, one through
the ``spxdrizzle`` command line.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import pytest
from astropy.io import fits

from hostile_support import bounded, run_cli, run_python
from spxquery.drizzle3d import Drizzle3DConfig
from spxquery.drizzle3d.grid import build_output_wcs
from spxquery.drizzle3d.io import load_cube
from spxquery.drizzle3d.pipeline import drizzle, drizzle_detector
from spxquery.drizzle3d.quicklook import cube_summary, format_summary
from spxquery.drizzle3d.testing import ArchiveServer, load_index, write_index

pytestmark = pytest.mark.hostile

RA, DEC = 150.0, 2.0
CONFIG = dict(center_ra=RA, center_dec=DEC, width=6.0, height=6.0, detector=3, progress=False)
ARRAYS = ("sci", "variance", "and_mask", "or_mask", "count")


# ── building the corpus ──────────────────────────────────────────────────────────────────────


def _with_hdul(edit: Callable[[fits.HDUList], None]) -> Callable[[Path, Path], None]:
    """A mutation made through astropy: ``edit`` changes the HDU list, which is written anew."""

    def make(src: Path, dst: Path) -> None:
        with fits.open(src) as hdul:
            hdul = fits.HDUList([h.copy() for h in hdul])
        edit(hdul)
        hdul.writeto(dst)

    return make


def _cards(extname: str, **raw: str) -> Callable[[Path, Path], None]:
    """A mutation of raw card values (what astropy will not write, e.g. NaN): keyword -> the
    text after ``= `` (None removes the card) in the header of ``extname``."""

    def make(src: Path, dst: Path) -> None:
        data = bytearray(src.read_bytes())
        start = data.index(f"EXTNAME = '{extname}".encode())
        start = data.rindex(b"XTENSION= ", 0, start)  # the header holding that EXTNAME
        end = data.index(b"END" + b" " * 77, start)
        for key, value in raw.items():
            probe = f"{key:<8}= ".encode()
            pos = data.find(probe, start, end)
            while pos >= 0 and (pos - start) % 80:
                pos = data.find(probe, pos + 1, end)
            card = b" " * 80 if value is None else f"{key:<8}= {value}".ljust(80).encode()
            if pos < 0:  # a new card where END was; END moves into the padding after it
                assert (end + 80) % 2880, "no room for a new card in this header block"
                pos, end = end, end + 80
                data[end:end + 80] = b"END" + b" " * 77
            data[pos:pos + 80] = card
        dst.write_bytes(bytes(data))

    return make


def _bytes(edit: Callable[[bytearray], bytes]) -> Callable[[Path, Path], None]:
    def make(src: Path, dst: Path) -> None:
        dst.write_bytes(edit(bytearray(src.read_bytes())))

    return make


def _set(ext: str, **cards) -> Callable[[fits.HDUList], None]:
    def edit(hdul: fits.HDUList) -> None:
        for k, v in cards.items():
            if v is None:
                del hdul[ext].header[k]
            else:
                hdul[ext].header[k] = v
    return edit


def _data(ext: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[fits.HDUList], None]:
    def edit(hdul: fits.HDUList) -> None:
        hdu = hdul[ext]
        new = fn(np.array(hdu.data))
        if isinstance(hdu, fits.CompImageHDU):
            hdul[ext] = fits.CompImageHDU(new, header=hdu.header, name=ext, compression_type="RICE_1",
                                          tile_shape=(1, new.shape[1]))
        else:
            hdu.data = new
    return edit


def _wave_values(fn: Callable[[np.ndarray], np.ndarray], col: str = "VALUES") -> Callable[[fits.HDUList], None]:
    def edit(hdul: fits.HDUList) -> None:
        tab = hdul["WCS-WAVE"]
        cols = [fits.Column(c.name, c.format, dim=c.dim, array=(fn(np.array(tab.data[c.name])) if c.name == col
                                                               else np.array(tab.data[c.name])))
                for c in tab.columns]
        hdul["WCS-WAVE"] = fits.BinTableHDU.from_columns(cols, header=tab.header, name="WCS-WAVE")
    return edit


def _float_flags_with_nan(hdul: fits.HDUList) -> None:
    flags = np.array(hdul["FLAGS"].data).astype(np.float32)
    flags[::7, ::5] = np.nan
    hdul["FLAGS"] = fits.ImageHDU(flags, header=fits.Header([c for c in hdul["FLAGS"].header.cards
                                                             if not c.keyword.startswith("Z")]), name="FLAGS")


def _duplicate(ext: str) -> Callable[[fits.HDUList], None]:
    def edit(hdul: fits.HDUList) -> None:
        hdul.insert(hdul.index_of(ext) + 1, hdul[ext].copy())
    return edit


def _drop(ext: str) -> Callable[[fits.HDUList], None]:
    def edit(hdul: fits.HDUList) -> None:
        del hdul[ext]
    return edit


def _replace(ext: str, make_hdu: Callable[[fits.HDUList], fits.ImageHDU]) -> Callable[[fits.HDUList], None]:
    def edit(hdul: fits.HDUList) -> None:
        hdul[ext] = make_hdu(hdul)
    return edit


def _heap_noise(src: Path, dst: Path) -> None:
    """Random bytes over the compressed FLAGS tiles (the table's heap), structure intact."""
    with fits.open(src, disable_image_compression=True) as hdul:
        tab = hdul["FLAGS"]
        heap = tab.fileinfo()["datLoc"] + tab.header["NAXIS1"] * tab.header["NAXIS2"]
        size = tab.header["PCOUNT"]
    data = bytearray(src.read_bytes())
    data[heap:heap + size] = np.random.default_rng(3).integers(0, 256, size, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))


def _no_end(data: bytearray) -> bytes:
    start = data.index(b"EXTNAME = 'IMAGE")
    end = data.index(b"END" + b" " * 77, start)
    data[end:end + 80] = b"COMMENT " + b" " * 72
    return bytes(data)


def _variance_only_off_grid(a: np.ndarray) -> np.ndarray:
    out = np.full_like(a, np.nan)
    out[0, 0] = 0.01  # a finite positive value the sample sees, on a pixel that lands nowhere
    return out


#: name -> (mutation, words of the reason, or "empty" for a frame that must be counted in N_EMPTY).
CASES: Dict[str, Tuple[Callable[[Path, Path], None], str]] = {
    # file and structure
    "truncated_half": (_bytes(lambda d: bytes(d[: len(d) // 2])), "truncated file"),
    "truncated_in_header": (_bytes(lambda d: bytes(d[: d.index(b"EXTNAME = 'VARIANCE") + 400])), "truncated"),
    "text_file": (_bytes(lambda d: b"not a FITS file\n" * 400), "not a FITS file"),
    "empty_file": (_bytes(lambda d: b""), "not a FITS file"),
    "zero_block": (_bytes(lambda d: bytes(2880)), "not a FITS file"),
    "garbage_after_primary": (_bytes(lambda d: bytes(d[:2880]) + b"\x00\xff" * 20000), "XTENSION card"),
    "image_header_without_end": (_bytes(_no_end), "END card"),
    "two_image_extensions": (_with_hdul(_duplicate("IMAGE")), "IMAGE appears 2 times"),
    "two_flags_extensions": (_with_hdul(_duplicate("FLAGS")), "FLAGS appears 2 times"),
    "no_image": (_with_hdul(_drop("IMAGE")), "no IMAGE extension"),
    "no_flags": (_with_hdul(_drop("FLAGS")), "missing extension FLAGS"),
    "no_variance": (_with_hdul(_drop("VARIANCE")), "missing extension VARIANCE"),
    "no_zodi": (_with_hdul(_drop("ZODI")), "missing extension ZODI"),
    "no_wave_table": (_with_hdul(_drop("WCS-WAVE")), "missing extension WCS-WAVE"),
    "image_3d": (_with_hdul(_data("IMAGE", lambda a: np.stack([a, a]))), "IMAGE is 3-D"),
    "image_integer": (_with_hdul(_data("IMAGE", lambda a: a.astype(np.int16))), "IMAGE has BITPIX = 16"),
    "image_scaled": (_cards("IMAGE", BSCALE="2.0"), "scaled"),
    # BSCALE/BZERO are first looked for in one search of the header text: any spelling is found
    "variance_offset": (_cards("VARIANCE", BZERO="1.0"), "VARIANCE is scaled"),
    "image_scaled_by_hierarch": (_cards("IMAGE", **{"HIERARCH bscale": "2.0"}), "IMAGE is scaled"),
    "flags_offset_by_hierarch": (_cards("FLAGS", **{"HIERARCH Bzero": "5"}), "FLAGS is scaled"),
    "variance_other_shape": (_with_hdul(_data("VARIANCE", lambda a: a[:-3])), "VARIANCE has shape"),
    "flags_float_with_nan": (_with_hdul(_float_flags_with_nan), "FLAGS are integers"),
    "flags_compressed_float": (_with_hdul(_replace("FLAGS", lambda h: fits.CompImageHDU(
        np.array(h["FLAGS"].data, np.float32), name="FLAGS", compression_type="RICE_1", quantize_level=0))),
        "SPHEREx FLAGS are integers"),
    "flags_hcompress": (_with_hdul(_replace("FLAGS", lambda h: fits.CompImageHDU(
        np.array(h["FLAGS"].data), name="FLAGS", compression_type="HCOMPRESS_1"))), "not supported"),
    "flags_heap_noise": (_heap_noise, "FLAGS: tile"),
    # keywords
    "detector_7": (_with_hdul(_set("IMAGE", DETECTOR=7)), "DETECTOR = '7' is not a SPHEREx detector"),
    "detector_4": (_with_hdul(_set("IMAGE", DETECTOR=4)), "belongs to detector D4"),
    "detector_malformed": (_cards("IMAGE", DETECTOR="'D3"), "DETECTOR has a malformed string"),
    # celestial WCS (class 3)
    "crpix_nan": (_cards("IMAGE", CRPIX1="NaN"), "CRPIX1 has a malformed value"),
    "crval_inf": (_cards("IMAGE", CRVAL1="1E999"), "CRVAL1 = inf is not finite"),
    "crval_dec_over_90": (_with_hdul(_set("IMAGE", CRVAL2=91.0)), "not a declination"),
    "cd_zero": (_with_hdul(_set("IMAGE", CD1_1=0.0, CD1_2=0.0, CD2_1=0.0, CD2_2=0.0)), "singular"),
    "cd_singular": (_with_hdul(_set("IMAGE", CD1_1=1e-3, CD1_2=2e-3, CD2_1=1e-3, CD2_2=2e-3)), "singular"),
    "cd_huge": (_with_hdul(_set("IMAGE", CD1_1=-5.0, CD1_2=0.0, CD2_1=0.0, CD2_2=5.0)), "pixel scale"),
    "sip_absurd": (_with_hdul(_set("IMAGE", A_2_0=1e-2)), "SIP distortion reaches"),
    "sip_order_missing": (_with_hdul(_set("IMAGE", B_ORDER=None)), "B_ORDER is missing"),
    "ctype_missing": (_with_hdul(_set("IMAGE", CTYPE1=None)), "no celestial WCS"),
    "ctype_galactic": (_with_hdul(_set("IMAGE", CTYPE1="GLON-TAN-SIP", CTYPE2="GLAT-TAN-SIP")), "RA---/DEC--"),
    "crpix_repeated": (_with_hdul(lambda h: h["IMAGE"].header.append(("CRPIX1", 3.0), end=True)), "appears 2 times"),
    # wavelength WCS keywords (classes 1 and 2)
    "ctype1w_missing": (_with_hdul(_set("IMAGE", CTYPE1W=None)), "CTYPE1W missing"),
    "ps1_0w_names_image": (_with_hdul(_set("IMAGE", PS1_0W="IMAGE", PS2_0W="IMAGE")), "not a binary table"),
    "ps1_0w_names_nothing": (_with_hdul(_set("IMAGE", PS1_0W="NOPE", PS2_0W="NOPE")), "missing extension NOPE"),
    "ps_tables_disagree": (_with_hdul(_set("IMAGE", PS2_0W="EPSF")), "must name one table"),
    "cdelt2w_zero": (_with_hdul(_set("IMAGE", CDELT2W=0.0)), "CDELT2W = 0"),
    "cdelt1w_huge": (_with_hdul(_set("IMAGE", CDELT1W=1e6)), "CDELT1W"),
    "crpix2w_far": (_with_hdul(_set("IMAGE", CRPIX2W=-1e5)), "CRPIX2W"),
    "values_column_missing": (_with_hdul(_set("IMAGE", PS1_1W="NOPE", PS2_1W="NOPE")), "no column NOPE"),
    "pv_axes_swapped": (_with_hdul(_set("IMAGE", PV1_3W=2)), "PV1_3W = 2"),
    "cunitw_nm": (_with_hdul(_set("IMAGE", CUNIT1W="nm")), "CUNIT1W = 'nm'"),
    # wavelength table values (class 3)
    "values_all_nan": (_with_hdul(_wave_values(lambda v: np.full_like(v, np.nan))), "non-finite"),
    "values_negative": (_with_hdul(_wave_values(lambda v: -np.abs(v))), "not all positive"),
    "values_other_band": (_with_hdul(_wave_values(lambda v: v * 2.2)), "do not fit the detector's band"),
    "x_not_monotonic": (_with_hdul(_wave_values(lambda v: v[..., ::-1], col="X")), "not monotonic"),
    "x_all_equal": (_with_hdul(_wave_values(lambda v: np.full_like(v, 5.0), col="X")), "two distinct values"),
    # pixels (class 3)
    "image_all_nan": (_with_hdul(_data("IMAGE", lambda a: np.full_like(a, np.nan))), "IMAGE has no finite pixel"),
    "image_all_zero": (_with_hdul(_data("IMAGE", np.zeros_like)), "IMAGE is all zero"),
    "image_all_negative": (_with_hdul(_data("IMAGE", lambda a: -np.abs(a) - 1)), "IMAGE has no positive pixel"),
    "variance_all_zero": (_with_hdul(_data("VARIANCE", np.zeros_like)), "VARIANCE has no finite positive"),
    "variance_all_negative": (_with_hdul(_data("VARIANCE", lambda a: -np.abs(a) - 1)), "VARIANCE has no finite"),
    "variance_all_nan": (_with_hdul(_data("VARIANCE", lambda a: np.full_like(a, np.nan))), "VARIANCE has no"),
    "zodi_all_nan": (_with_hdul(_data("ZODI", lambda a: np.full_like(a, np.nan))), "ZODI has no finite pixel"),
    "zodi_all_zero": (_with_hdul(_data("ZODI", np.zeros_like)), "ZODI is all zero"),
    # overlaps the region, lands nothing: reported and counted in N_EMPTY
    "lands_nothing": (_with_hdul(_data("VARIANCE", _variance_only_off_grid)), "empty"),
}

#: Cases run (also) in a subprocess: what aborted the interpreter before, and malformed bytes.
RISKY = ("ctype1w_missing", "ps1_0w_names_image", "ps1_0w_names_nothing", "ps_tables_disagree", "cdelt2w_zero",
         "values_column_missing", "pv_axes_swapped", "flags_heap_noise", "garbage_after_primary",
         "image_header_without_end")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three good QR3 cutouts, every bad file (one per case), and the cube of the good ones."""
    from spxquery.drizzle3d.simulate import simulate_field

    root = tmp_path_factory.mktemp("hostile_frames")
    info = simulate_field(root, RA, DEC, detectors=(3,), n_pointings=4, release="qr3", cutout_size_deg=0.2,
                          psf_size=11, psf_zones=2, seed=4)
    good = list(info.paths[:3])
    donor = info.paths[3]
    bad = {}
    for name, (make, _) in CASES.items():
        dst = donor.with_name(donor.name.replace("_4D3_", f"_9{len(bad):03d}D3_").replace(".fits", f"_{name}.fits"))
        make(donor, dst)
        bad[name] = dst
    cfg = Drizzle3DConfig(**CONFIG, output_dir=root / "good")
    ref = load_cube(drizzle_detector(good, cfg, 3, build_output_wcs(cfg)))
    return {"root": root, "good": good, "bad": bad, "ref": ref, "index": load_index(root), "donor": donor}


def _assert_same_cube(got: dict, ref: dict) -> None:
    for name in ARRAYS:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    assert got["header"]["N_INPUTS"] == ref["header"]["N_INPUTS"]


# ── every case through drizzle_detector ─────────────────────────────────────────────────────


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_frame_is_skipped_with_its_reason(corpus, case, tmp_path, caplog):
    bad = corpus["bad"][case]
    words = CASES[case][1]
    paths = corpus["good"][:2] + [bad] + corpus["good"][2:]
    cfg = Drizzle3DConfig(**CONFIG, output_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="spxquery.drizzle3d"), bounded(60):
        out = drizzle_detector(paths, cfg, 3, build_output_wcs(cfg))
    cube = load_cube(out)
    _assert_same_cube(cube, corpus["ref"])
    named = [r for r in caplog.records if r.levelno >= logging.WARNING and bad.name in r.getMessage()]
    lines = [r.getMessage() for r in named if r.name == "spxquery.drizzle3d.pipeline"]
    assert len(lines) == 1, lines
    if words == "empty":
        assert cube["header"]["N_REJECT"] == 0 and cube["header"]["N_EMPTY"] == 1
        assert "landed no pixel" in lines[0]
        assert "N_REJECT 0, N_EMPTY 1;" in format_summary(cube_summary(out))  # what `spxdrizzle inspect` shows
    else:
        assert len(named) == 1, [r.getMessage() for r in named]  # the reason, nothing else
        assert cube["header"]["N_REJECT"] == 1 and cube["header"]["N_EMPTY"] == 0
        assert words in lines[0], lines[0]


_RISKY_RUN = """
import json, logging, sys
from pathlib import Path
from spxquery.drizzle3d import Drizzle3DConfig
from spxquery.drizzle3d.grid import build_output_wcs
from spxquery.drizzle3d.pipeline import drizzle_detector
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
paths = [Path(p) for p in json.loads(sys.argv[1])]
cfg = Drizzle3DConfig(**json.loads(sys.argv[2]), output_dir=Path(sys.argv[3]))
print(drizzle_detector(paths, cfg, 3, build_output_wcs(cfg)))
"""


def test_risky_frames_in_a_subprocess(corpus, tmp_path):
    """The frames whose headers aborted astropy/wcslib with a double free (exit 134), and broken
    bytes, in one run of a separate interpreter: it must finish normally and reject each."""
    bad = [corpus["bad"][c] for c in RISKY]
    paths = corpus["good"] + bad
    proc = run_python(_RISKY_RUN, json.dumps([str(p) for p in paths]), json.dumps(CONFIG), str(tmp_path),
                      timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cube = load_cube(Path(proc.stdout.strip().splitlines()[-1]))
    _assert_same_cube(cube, corpus["ref"])
    assert cube["header"]["N_REJECT"] == len(RISKY)
    for p in bad:
        assert sum(p.name in line for line in proc.stderr.splitlines()) == 1, p.name


# ── all cases at once through drizzle() and the command line ────────────────────────────────


def _archive_with_bad_frames(corpus, root: Path) -> Tuple[Path, int]:
    """A copy of the archive tree whose index also lists every bad frame (as new observations)."""
    from spxquery.drizzle3d.testing.archive_index import md5_of

    shutil.copytree(corpus["root"], root, ignore=shutil.ignore_patterns("good", "out*"))
    rows = [r for r in corpus["index"] if not r["uri"].endswith(corpus["donor"].name)]
    template = rows[0]
    n = 0
    for i, (name, path) in enumerate(sorted(corpus["bad"].items())):
        if CASES[name][1] in ("empty", "missing extension WCS-WAVE", "no IMAGE extension", "missing extension FLAGS",
                              "missing extension VARIANCE"):
            continue  # the archive's own completeness check already refuses those before the drizzle
        if name.startswith(("truncated", "text_file", "empty_file", "zero_block", "garbage")):
            continue
        rel = Path(template["uri"]).parent / path.name
        local = root / str(rel)[len("ibe/data/spherex/"):]
        obs = f"2025W30_1C_{9000 + i:04d}_1"
        rows.append({**template, "uri": str(rel), "contentlength": local.stat().st_size,
                     "contentchecksum": f"md5:{md5_of(local)}",
                     "obs_publisher_did": template["obs_publisher_did"].split("?")[0] + f"?{obs}/D3"})
        n += 1
    write_index(root, rows)
    return root, n


def test_all_bad_frames_through_drizzle_with_a_mirror(corpus, tmp_path, caplog):
    root, n_bad = _archive_with_bad_frames(corpus, tmp_path / "archive")
    assert n_bad >= 40
    with ArchiveServer(root) as srv, bounded(300), caplog.at_level(logging.WARNING, logger="spxquery.drizzle3d"):
        cfg = Drizzle3DConfig(**CONFIG, tap_url=srv.tap_url, data_mirror=root, use_cutouts=False,
                              max_images=1000, output_dir=tmp_path / "out")
        out = drizzle(cfg)
    cube = load_cube(out[3])
    _assert_same_cube(cube, corpus["ref"])
    assert cube["header"]["N_REJECT"] == n_bad


def test_all_bad_frames_through_the_command_line(corpus, tmp_path):
    root, n_bad = _archive_with_bad_frames(corpus, tmp_path / "archive")
    with ArchiveServer(root) as srv:
        proc = run_cli("run", "--ra", str(RA), "--dec", str(DEC), "--width", "6", "--height", "6", "--detector", "3",
                       "--tap-url", srv.tap_url, "--mirror", str(root), "--cutouts", "no", "--max-images", "1000",
                       "--exclude-flags", "none", "--output-dir", str(tmp_path / "out"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cube = load_cube(tmp_path / "out" / "drizzle_D3.fits")
    _assert_same_cube(cube, corpus["ref"])
    assert cube["header"]["N_REJECT"] == n_bad
    rejected = [line for line in proc.stderr.splitlines() if "skipping" in line]
    assert len(rejected) == n_bad, proc.stderr[-3000:]
