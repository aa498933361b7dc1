"""The cube file: the FITS layout of a drizzled cube, written atomically and read back.

(:mod:`.io` re-exports :func:`save_cube` and :func:`load_cube` under their spxquery 0.4.1 path.)

The seven HDUs of the 0.4.1 layout come first, in this order: 0 PRIMARY (metadata, input
files and their zodi scales), 1 SCI (float32, MJy/sr), 2 VARIANCE (float32, ``MJy2 / sr2``),
3 AND_MASK (uint32), 4 OR_MASK (uint32), 5 COUNT (uint32, contributing input pixels),
6 WAVELENGTH (binary table; after the 0.4.1 columns, DETECTOR: the detector of each plane).
New content follows them, found by EXTNAME: 7 WCS-TAB (the exact plane centres of the
alternate WCS, :mod:`.cubewcs`), then, with outlier rejection only, 8 REJECTED (int32: rejected
contributions per voxel, -1 where nothing was tested), then, with ``covariance=True``,
COVARIANCE (float64 image, streamed; the variance, then the offsets some input pixel coupled)
and COVAR-OFFSETS (table) (:mod:`.covariance`): 8 and 9 without REJECTED, 9 and 10 with it.
A cube of several detectors has DETECTOR = 0 in PRIMARY.

Every image extension carries the same two 3-D WCSs (:mod:`.cubewcs`): the primary one with a
least-squares ``WAVE-LOG`` (or ``WAVE``) spectral axis (its largest error in ``WAVEMAXE``, um) and the exact
alternate WCS ``W`` (``WAVE-TAB``). Plane ``k`` (0-based) of the cube is FITS pixel ``k + 1`` on
axis 3. TELESCOP, INSTRUME, the inputs' time span (MJD-BEG/MJD-END, DATE-OBS) and SPECSYS
are in the PRIMARY header and in every image extension's header.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import tempfile
import threading
from datetime import datetime, timezone
from math import isfinite
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from . import _core, covariance, directio
from .cubewcs import SPECSYS, cube_wcs_cards, spectral_wcs_keywords, wcs_tab_bytes, wcs_tab_hdu
from .fitsbytes import EMPTY_PRIMARY, Column, bintable, image_cards, image_data, padding
from .fitscards import CardText
from .productwave import SOURCE_LOOKUP, SOURCE_MIXED
from .progress import progress_bar
from .settings import header_cards

logger = logging.getLogger(__name__)

#: Keyword-series prefixes in the PRIMARY header (5-digit 1-based index follows).
INPUT_KEY = "INF"  # input file name
ZODI_KEY = "ZSC"  # zodi scale applied to that input
OUTLIER_KEY = "ORJ"  # outlier pixels rejected in that input (outlier rejection only)
#: EXTNAME of the rejected-contribution counts (after the tables; outlier rejection only).
REJECTED_EXTNAME = "REJECTED"
#: Keyword series of the spectral-WCS product files used (5-digit 1-based index follows).
WAVE_FILE_KEY = "WVF"
#: ``BUNIT`` of the image extensions that have a unit (strings astropy's ``u.Unit`` parses).
EXTENSION_UNITS = {"SCI": "MJy/sr", "VARIANCE": "MJy2 / sr2"}
#: PRIMARY ``FILETYPE`` of a cube file (how readers recognise one).
FILETYPE = "DRIZZLED_CUBE"


def _versions() -> Dict[str, str]:
    from . import __version__

    try:
        from ._core import __version__ as core_version
    except Exception:  # pragma: no cover - the extension is always built in this package
        core_version = "unknown"
    return {"package": str(__version__), "core": str(core_version)}


#: Columns of the WAVELENGTH table in the spxquery 0.4.1 layout; ours follow them.
WAVELENGTH_COLUMNS_041 = ("INDEX", "LAMBDA", "LAMBDA_MIN", "LAMBDA_MAX", "DLAMBDA", "NU", "DNU", "R_EFF", "N_INPUT_SC")


def _wavelength_columns(zgrid, n_input_sc: np.ndarray, plane_detector: np.ndarray) -> List[Column]:
    """The WAVELENGTH table's columns: the 0.4.1 ones (:data:`WAVELENGTH_COLUMNS_041`), then DETECTOR
    (the detector, 1-6, each plane comes from)."""
    n_z = zgrid.n_z
    f8 = functools.partial(np.asarray, dtype=np.float64)
    return [
        Column("INDEX", "J", np.arange(n_z, dtype=np.int32)),
        Column("LAMBDA", "D", f8(zgrid.centers), "um"),
        Column("LAMBDA_MIN", "D", f8(zgrid.edges[:-1]), "um"),
        Column("LAMBDA_MAX", "D", f8(zgrid.edges[1:]), "um"),
        Column("DLAMBDA", "D", f8(zgrid.widths), "um"),
        Column("NU", "D", f8(zgrid.frequencies()), "Hz"),
        Column("DNU", "D", f8(zgrid.delta_nu()), "Hz"),
        Column("R_EFF", "D", f8(zgrid.resolving_power())),
        Column("N_INPUT_SC", "J", np.asarray(n_input_sc, dtype=np.int32)),
        Column("DETECTOR", "I", np.asarray(plane_detector, dtype=np.int16)),
    ]


def _wavelength_table(zgrid, n_input_sc: np.ndarray, plane_detector: np.ndarray) -> fits.BinTableHDU:
    """The WAVELENGTH table built by astropy (:func:`build_hdulist`; :func:`save_cube` writes the same
    bytes directly)."""
    cols = [fits.Column(name=c.name, format=c.tform, unit=c.unit or None, array=c.values)
            for c in _wavelength_columns(zgrid, n_input_sc, plane_detector)]
    return fits.BinTableHDU.from_columns(cols, name="WAVELENGTH")


def observation_cards(cube) -> List[Tuple[str, Any, str]]:
    """TELESCOP, INSTRUME and the inputs' time span: MJD-BEG/MJD-END (earliest start, latest
    end of the contributing frames, from ``cube.frame_log``), with DATE-OBS/MJD-OBS = the start
    and the matching DATE-BEG/DATE-END (ISO, UTC). Times are left out when no frame has one."""
    cards: List[Tuple[str, Any, str]] = [("TELESCOP", "SPHEREx", "telescope"), ("INSTRUME", "SPHEREx", "instrument")]
    starts, ends = [], []
    for entry in getattr(cube, "frame_log", []) or []:
        mid = _finite_or_nan(entry.get("mjd"))  # a frame without MJD-BEG/END spans its mid-time
        beg, end = _finite_or_nan(entry.get("mjd_beg")), _finite_or_nan(entry.get("mjd_end"))
        beg, end = (beg if isfinite(beg) else mid), (end if isfinite(end) else mid)
        if isfinite(beg) and isfinite(end):
            starts.append(beg)
            ends.append(end)
    if starts:
        beg, end = min(starts), max(ends)
        start = _isot(beg)  # (each takes an astropy Time conversion)
        cards += [
            ("DATE-OBS", start, "UTC start of the earliest input frame"),
            ("MJD-OBS", beg, "[d] MJD of DATE-OBS"),
            ("DATE-BEG", start, "UTC start of the earliest input frame"),
            ("MJD-BEG", beg, "[d] start of the earliest input frame"),
            ("DATE-END", _isot(end), "UTC end of the latest input frame"),
            ("MJD-END", end, "[d] end of the latest input frame"),
        ]
    return cards


def _finite_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _isot(mjd: float) -> str:
    """ISO-8601 UTC time of ``mjd`` (to the microsecond, consistent with the MJD for wcslib)."""
    return str(Time(mjd, format="mjd", scale="utc", precision=6).isot)


def _plane_detector(cube) -> np.ndarray:
    """The detector of each plane (``cube.plane_detector``, else the cube's detector)."""
    dets = getattr(cube, "plane_detector", None)
    if dets is None:
        return np.full(cube.zgrid.n_z, int(cube.detector), dtype=np.int64)
    return np.asarray(dets, dtype=np.int64)


def band_name(plane_detector: np.ndarray) -> str:
    """``D3`` for planes of one detector, ``D1-D6`` for planes of D1 to D6."""
    dets = sorted({int(d) for d in np.asarray(plane_detector).tolist()})
    return f"D{dets[0]}" if len(dets) == 1 else f"D{dets[0]}-D{dets[-1]}"


def _primary_cards(cube, observation: Sequence[Tuple[str, Any, str]] = ()) -> List[Tuple[str, Any, str]]:
    """``(keyword, value, comment)`` of the PRIMARY header after the structural cards, in the
    order they are set (a keyword set twice keeps its first place and its last value).
    ``observation``: :func:`observation_cards` of the cube when already made."""
    observation = list(observation) or observation_cards(cube)
    cfg = cube.config
    zgrid = cube.zgrid
    n_z, n_y, n_x = _shape(cube)
    base = getattr(cfg, "BASE_PIXSCALE", 6.15)
    cards: List[Tuple[str, Any, str]] = list(observation[:2])
    cards += [
        ("FILETYPE", FILETYPE, "spxquery.drizzle3d output"),
        ("DETECTOR", int(cube.detector), "SPHEREx detector (1-6)") if int(cube.detector) else
        ("DETECTOR", 0, "several: see WAVELENGTH column DETECTOR"),
        ("BAND_NM", band_name(_plane_detector(cube)), "band name"),
        ("N_INPUTS", int(cube.n_inputs), "input frames that contributed"),
        ("N_REJECT", int(cube.n_rejected), "input files rejected (unusable)"),
        ("N_EMPTY", int(getattr(cube, "n_empty", 0)), "frames on the region that landed no pixel"),
        ("PIXSCALE", float(base), "[arcsec] native pixel scale"),
        ("EPIXSCLE", float(cube.pixscale), "[arcsec] output pixel scale"),
        ("BUNIT", "MJy/sr", "unit of SCI"),
        ("LAM_MIN", float(zgrid.edges[0]), "[um] lowest bin edge"),
        ("LAM_MAX", float(zgrid.edges[-1]), "[um] highest bin edge"),
        ("NZ", int(n_z), "spectral planes"),
        ("NX", int(n_x), "spatial x size"),
        ("NY", int(n_y), "spatial y size"),
    ]
    cards += header_cards(cfg)  # the settings, from their descriptions
    cards += observation[2:]
    v = _versions()
    cards.append(("SPECSYS", SPECSYS, "spectral frame of the WCS: the observatory's"))
    cards += covariance.header_cards(cube)
    cards += [
        ("DRIZVER", v["package"], "spxquery.drizzle3d version"),
        ("COREVER", v["core"], "Rust core version"),
        ("DATE", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC file creation"),
    ]
    log: List[dict] = list(getattr(cube, "frame_log", []) or [])
    cards += wavelength_source_cards(log)
    cards.append(("NFRAMLOG", len(log), f"inputs listed in {INPUT_KEY}nnnnn/{ZODI_KEY}nnnnn"))
    for i, entry in enumerate(log, start=1):
        cards.append((f"{INPUT_KEY}{i:05d}", str(entry.get("name", "")), "input file"))
        scale = entry.get("zodi_scale")
        if scale is not None and isfinite(scale):
            cards.append((f"{ZODI_KEY}{i:05d}", float(scale), f"zodi scale ({entry.get('zodi_source', 'fit')})"))
    if getattr(cube, "reject_count", None) is not None:
        cards += _outlier_cards(log)
    return cards


def _primary(cube) -> fits.PrimaryHDU:
    """The PRIMARY HDU built by astropy (:func:`build_hdulist`; :func:`save_cube` writes the same
    cards as text, :func:`_primary_text`)."""
    h = fits.PrimaryHDU().header
    for keyword, value, comment in _primary_cards(cube):
        h[keyword] = (value, comment)
    return fits.PrimaryHDU(header=h)


def _primary_text(cube, observation: Sequence[Tuple[str, Any, str]] = ()) -> bytes:
    """The PRIMARY header as written: the cards of :func:`_primary` formatted directly
    (:mod:`.fitscards`; thousands of input cards in milliseconds)."""
    text = CardText()
    text.update(EMPTY_PRIMARY)
    text.update(_primary_cards(cube, observation))
    return text.text()


def _outlier_cards(log: List[dict]) -> List[Tuple[str, Any, str]]:
    """N_OUTPIX / N_OUTTST (outlier pixels rejected / pixels tested in all inputs) and ORJnnnnn
    (rejected per input, numbered as INFnnnnn)."""
    cards: List[Tuple[str, Any, str]] = [
        ("N_OUTPIX", sum(int(e.get("n_outliers", 0)) for e in log), "outlier pixels rejected (all inputs)"),
        ("N_OUTTST", sum(int(e.get("n_tested", 0)) for e in log), "pixels tested for outliers (all inputs)"),
    ]
    for i, entry in enumerate(log, start=1):
        cards.append((f"{OUTLIER_KEY}{i:05d}", int(entry.get("n_outliers", 0)), "outlier pixels rejected"))
    return cards


def wavelength_source_cards(frame_log: List[dict]) -> List[Tuple[str, Any, str]]:
    """``WAVESRC`` (where the contributing frames' per-pixel wavelengths came from: SPECTRAL_WCS,
    the calibration product, for all; LOOKUP, the L2 WCS-WAVE table, for all; or MIXED) and
    ``WVFnnnnn``, the product files used (each once, in the order of first use)."""
    sources = [str(e.get("wave_source", SOURCE_LOOKUP)) for e in frame_log]
    if not sources:
        return []
    kinds = set(sources)
    value = kinds.pop() if len(kinds) == 1 else SOURCE_MIXED
    cards: List[Tuple[str, Any, str]] = [("WAVESRC", value, "source of the per-pixel wavelengths")]
    files = list(dict.fromkeys(str(e["wave_product"]) for e in frame_log if e.get("wave_product")))
    for i, name in enumerate(files, start=1):
        cards.append((f"{WAVE_FILE_KEY}{i:05d}", name, "spectral WCS" if len(name) <= 40 else ""))
    return cards


def _image_header(name: str, dtype, shape, extra: Sequence[Tuple[str, Any, str]] = (),
                  memo: Optional[Dict[Any, str]] = None) -> CardText:
    """Header of an image extension of ``dtype`` and ``shape``: astropy's structural cards, then
    ``extra`` as ``Header.update`` adds them (no data allocated); ``memo``: card images shared
    with the other extensions' headers (:class:`.fitscards.CardText`)."""
    text = CardText(memo)
    text.update(_structural_cards(name, np.dtype(dtype).str, tuple(shape)))
    text.update(extra)
    return text


def _structural_cards(name: str, dtype: str, shape: Tuple[int, ...]) -> List[Tuple[str, Any, str]]:
    """XTENSION ... EXTNAME (and BZERO/BSCALE) of an astropy ``ImageHDU`` of ``dtype`` and ``shape``."""
    return image_cards(name, dtype, shape)


#: The image extensions in file order, with their data types.
IMAGE_EXTENSIONS = (
    ("SCI", np.float32), ("VARIANCE", np.float32), ("AND_MASK", np.uint32), ("OR_MASK", np.uint32),
    ("COUNT", np.uint32),
)


def _shape(cube) -> Tuple[int, int, int]:
    """``(n_z, ny, nx)`` of a cube (``cube_shape`` of a cube without accumulators, e.g. the
    pieces of a tiled run, :mod:`.assemble`)."""
    shape = getattr(cube, "cube_shape", None)
    return tuple(shape) if shape is not None else cube.flux_weighted.shape


def _plane(cube, name: str, k: int) -> np.ndarray:
    """Plane ``k`` of the output extension ``name`` (SCI and VARIANCE NaN where empty); a cube
    with a ``plane(name, k)`` method (the pieces of a tiled run) gives its own."""
    if hasattr(cube, "plane"):
        return cube.plane(name, k)
    if name in ("SCI", "VARIANCE"):
        w = cube.weight_total[k]
        out = np.full(w.shape, np.nan, dtype=np.float64)
        covered = w > 0
        if name == "SCI":
            np.divide(cube.flux_weighted[k], w, out=out, where=covered)
        else:
            np.divide(cube.var_accum[k], w * w, out=out, where=covered)
        return out.astype(np.float32)
    if name == "AND_MASK":
        return np.where(cube.count_map[k] > 0, np.asarray(cube.and_mask[k], dtype=np.uint32), np.uint32(0))
    if name == "OR_MASK":
        return np.asarray(cube.or_mask[k], dtype=np.uint32)
    return np.asarray(cube.count_map[k], dtype=np.uint32)


def _label(cube) -> str:
    return f"D{int(cube.detector)}" if int(cube.detector) else "all"


def _fits_bytes(a: np.ndarray) -> bytes:
    """Big-endian FITS data bytes; uint32 as int32 with BZERO = 2**31."""
    return image_data(a).tobytes()


def _data_chunks(cube, name: str) -> Iterator[np.ndarray]:
    """Extension ``name`` plane by plane in FITS order (:func:`.fitsbytes.image_data`); SCI and
    VARIANCE of a cube's accumulators in one pass each (:func:`_ratio_plane`)."""
    ratio = name in ("SCI", "VARIANCE") and not hasattr(cube, "plane")
    for k in range(_shape(cube)[0]):
        yield _ratio_plane(cube, name, k) if ratio else image_data(_plane(cube, name, k))


def _ratio_plane(cube, name: str, k: int) -> np.ndarray:
    """SCI or VARIANCE plane ``k`` as written: :func:`_plane`'s values (the same float64 division
    and rounding, NaN where empty), big-endian float32, by ``_core.fits_ratio_plane`` in one pass
    with the GIL released."""
    w = np.ascontiguousarray(cube.weight_total[k], dtype=np.float64)
    num = cube.flux_weighted[k] if name == "SCI" else cube.var_accum[k]
    out = np.empty(w.shape, dtype=np.uint32)
    _core.fits_ratio_plane(numerator=np.ascontiguousarray(num, dtype=np.float64).reshape(-1), weight=w.reshape(-1),
                           squared=name == "VARIANCE", out=out.reshape(-1))
    return out.view(">f4")


def _tables(cube) -> List[fits.BinTableHDU]:
    """The table HDUs after the image extensions, in file order: WAVELENGTH (the seventh HDU
    of the 0.4.1 layout), then WCS-TAB. Later additions are appended here, after the seven."""
    return [_wavelength_table(cube.zgrid, _n_input_sc(cube), _plane_detector(cube)), wcs_tab_hdu(cube.zgrid)]


def _table_bytes(cube) -> bytes:
    """The bytes of :func:`_tables`, written directly (:mod:`.fitsbytes`; no astropy HDUs)."""
    columns = _wavelength_columns(cube.zgrid, _n_input_sc(cube), _plane_detector(cube))
    return bintable("WAVELENGTH", columns) + wcs_tab_bytes(cube.zgrid)


def build_hdulist(cube) -> fits.HDUList:
    """The HDUs of ``cube`` in memory (see module docstring). :func:`save_cube`
    streams the same content plane by plane instead of building this."""
    extra = _extension_cards(cube)
    hdus: List[Any] = [_primary(cube)]
    for name, _ in IMAGE_EXTENSIONS:
        data = np.stack([_plane(cube, name, k) for k in range(_shape(cube)[0])])
        hdu = fits.ImageHDU(data, name=name)
        hdu.header.update(_extension_keywords(name, extra))  # astropy applies the same cards
        hdus.append(hdu)
    hdus.extend(_tables(cube))
    if getattr(cube, "reject_count", None) is not None:
        hdu = fits.ImageHDU(np.asarray(cube.reject_count, dtype=np.int32), name=REJECTED_EXTNAME)
        hdu.header.update(_rejected_keywords(extra))
        hdus.append(hdu)
    if covariance.has_covariance(cube):
        terms = covariance.written_terms(cube)
        planes = np.stack(list(covariance.file_planes(cube, terms)))
        hdus.append(fits.ImageHDU(planes.reshape(-1, *cube.flux_weighted.shape),
                                  header=covariance.image_header(cube, terms)))
        hdus.append(covariance.offsets_table(cube, terms))
    return fits.HDUList(hdus)


def _rejected_keywords(shared: List[Tuple[str, Any, str]]) -> List[Tuple[str, Any, str]]:
    return [*shared, ("COMMENT", "-1: fewer input frames than OUTMININ here, nothing was tested", "")]


def _write_rejected(f, cube, extra: List[Tuple[str, Any, str]]) -> None:
    """The REJECTED image extension after the tables, streamed plane by plane (int32)."""
    counts = cube.reject_count
    f.write(_image_header(REJECTED_EXTNAME, np.int32, counts.shape, _rejected_keywords(extra)).text())
    nbytes = 0
    for k in range(counts.shape[0]):
        chunk = np.asarray(counts[k], dtype=">i4").tobytes()
        f.write(chunk)
        nbytes += len(chunk)
    f.write(padding(nbytes))


def _n_input_sc(cube) -> np.ndarray:
    n_input_sc = getattr(cube, "n_input_sc", None)
    if n_input_sc is None:
        raise ValueError("cube.n_input_sc is missing: cannot write the N_INPUT_SC column")
    return np.asarray(n_input_sc)


def _extension_cards(cube, observation: Sequence[Tuple[str, Any, str]] = ()) -> List[Tuple[str, Any, str]]:
    """The cards every image extension shares: observation facts, then both WCSs."""
    return [*(observation or observation_cards(cube)), *cube_wcs_cards(cube.wcs, cube.zgrid)]


def _extension_keywords(name: str, shared: List[Tuple[str, Any, str]]) -> List[Tuple[str, Any, str]]:
    """The header cards of image extension ``name``: ``shared`` (:func:`_extension_cards`),
    its BUNIT if it has a unit, and UTYPE on VARIANCE (read by astropy's ``CCDData``)."""
    extra = list(shared)
    if name in EXTENSION_UNITS:
        extra.append(("BUNIT", EXTENSION_UNITS[name], "unit of the data"))
    if name == "VARIANCE":
        extra.append(("UTYPE", "VarianceUncertainty", "uncertainty type of SCI (astropy CCDData)"))
    return extra


def _write_streamed(f, cube, progress: bool = False) -> None:
    """Write the HDUs to the open binary file ``f``: the five image extensions are streamed
    plane by plane (memory: one plane of each, not whole-cube copies)."""
    tables = _table_bytes(cube)  # built first: a cube that cannot be written fails before any byte
    shape = _shape(cube)
    observation = observation_cards(cube)  # made once: each takes astropy Time conversions
    extra = _extension_cards(cube, observation)
    f.write(_primary_text(cube, observation))
    memo: Dict[Any, str] = {}  # the extensions share most cards: each formatted once
    with progress_bar(len(IMAGE_EXTENSIONS) * shape[0], f"write {_label(cube)}", "plane", progress) as bar:
        for name, dtype in IMAGE_EXTENSIONS:
            f.write(_image_header(name, dtype, shape, _extension_keywords(name, extra), memo).text())
            nbytes = 0
            for chunk in _data_chunks(cube, name):
                f.write(chunk.data)
                nbytes += chunk.nbytes
                bar.update(1)
            f.write(padding(nbytes))
    f.write(tables)
    if getattr(cube, "reject_count", None) is not None:
        _write_rejected(f, cube, extra)
    if covariance.has_covariance(cube):
        terms = covariance.written_terms(cube)  # the offsets some pixel coupled (the others are 0)
        f.write(covariance.image_header(cube, terms).tostring().encode("ascii"))
        f.write(padding(covariance.write_image(f, cube, terms)))
        _write_tables(f, [covariance.offsets_table(cube, terms)])


def _write_tables(f, tables: List[fits.BinTableHDU]) -> None:
    """Append the table extensions ``tables`` to the open file ``f``."""
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), *tables]).writeto(buf)
    primary_len = len(fits.PrimaryHDU().header.tostring())
    f.write(buf.getvalue()[primary_len:])  # the table extensions without their dummy primary


def _open_replaced(path: Path) -> Optional[int]:
    """A descriptor of the cube ``path`` about to be replaced (None: none there, or not POSIX).
    Held across the rename, it moves the freeing of the old cube's blocks (~15 ms for a 29 MB
    cube on ext4 with ``discard``) out of ``os.replace`` to the descriptor's close."""
    if os.name != "posix":
        return None
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def _close_in_background(fd: Optional[int]) -> Optional[threading.Thread]:
    """Close ``fd`` (the replaced cube: its blocks are freed then) on a daemon thread, so the
    caller does not wait for the file system; at exit the process closes it anyway."""
    if fd is None:
        return None
    thread = threading.Thread(target=os.close, args=(fd,), name="drizzle-free-replaced-cube", daemon=True)
    thread.start()
    return thread


def save_cube(cube, path, overwrite: bool = False, *, progress: bool = False) -> Path:
    """Write ``cube`` as a FITS file (module docstring), atomically (temporary file + rename).

    The image extensions are written plane by plane, so the extra memory is a few
    planes, not copies of the cube. Raises FileExistsError when ``path`` exists and
    ``overwrite`` is False. On any error the temporary file is removed and an
    existing ``path`` is left untouched. ``progress``: a bar over the planes written (on a
    terminal only, :mod:`.progress`). Returns the path written. The bytes go to the disk while
    the rest is formatted, past the page cache where the system allows (``O_DIRECT``,
    :func:`.directio.stream_writer`; else the page cache's writeback started every few MB,
    :class:`.vmhints.WritebackFile`), so the ``fsync`` that makes the cube durable before the
    rename waits for little.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"Output file already exists: {path} (set overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".fits.tmp", delete=False)
    tmp_path = Path(tmp.name)
    try:
        with tmp:
            image_bytes = int(np.prod(_shape(cube))) * sum(np.dtype(t).itemsize for _, t in IMAGE_EXTENSIONS)
            with directio.stream_writer(tmp, image_bytes) as out:  # the disk writes while the rest is formatted
                _write_streamed(out, cube, progress)
            tmp.flush()
            os.fsync(tmp.fileno())
        # NamedTemporaryFile is created 0600; give the cube the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        if path.exists() and not overwrite:
            raise FileExistsError(f"Output file already exists: {path} (appeared while writing)")
        old = _open_replaced(path)
        try:
            os.replace(tmp_path, path)
        finally:
            _close_in_background(old)
    except BaseException:
        try:
            tmp_path.unlink()
        except FileNotFoundError:
            pass
        raise
    size_mb = path.stat().st_size / 1024 / 1024
    logger.info("Saved %s cube to %s (%.1f MB)", _label(cube), path, size_mb)
    return path


def load_cube(path) -> Dict[str, Any]:
    """Read a cube written by :func:`save_cube` into memory.

    Returns a dict with ``sci``, ``variance`` (float32), ``and_mask``, ``or_mask``,
    ``count`` (uint32), ``wavelength`` (FITS_rec of the WAVELENGTH table), ``rejected`` (int32,
    only in cubes made with outlier rejection), ``header``
    (PRIMARY), ``sci_header`` and ``wcs`` (3-D astropy WCS of SCI); with covariance HDUs also
    ``covariance`` (float64 ``(n_offsets, n_z, ny, nx)``) and ``cov_offsets`` (int64 ``(n, 3)``).
    """
    path = Path(path)
    with fits.open(path, memmap=False) as hdul:
        sci_header = hdul["SCI"].header.copy()
        out = {
            "header": hdul[0].header.copy(),
            "sci_header": sci_header,
            "sci": np.array(hdul["SCI"].data),
            "variance": np.array(hdul["VARIANCE"].data),
            "and_mask": np.array(hdul["AND_MASK"].data),
            "or_mask": np.array(hdul["OR_MASK"].data),
            "count": np.array(hdul["COUNT"].data),
            "wavelength": hdul["WAVELENGTH"].data.copy(),
        }
        if REJECTED_EXTNAME in hdul:
            out["rejected"] = np.array(hdul[REJECTED_EXTNAME].data)
        if covariance.COVARIANCE_HDU in hdul:
            t = hdul[covariance.OFFSETS_HDU].data
            out["covariance"] = np.array(hdul[covariance.COVARIANCE_HDU].data)
            out["cov_offsets"] = np.stack([t["DZ"], t["DY"], t["DX"]], axis=1).astype(np.int64)
    out["wcs"] = WCS(sci_header)
    logger.debug("Loaded cube %s: SCI shape %s", path, out["sci"].shape)
    return out


__all__ = ["save_cube", "load_cube", "build_hdulist", "spectral_wcs_keywords", "observation_cards", "FILETYPE",
           "WAVELENGTH_COLUMNS_041", "band_name", "wavelength_source_cards"]
