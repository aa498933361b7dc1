"""Where each frame's per-pixel wavelengths come from: the spectral-WCS product or the L2 lookup.

The ``spectral_wcs`` setting (:mod:`.calnames`) is resolved once per run into a
:class:`WaveSources`: for each (detector, release) of the frames, the product file to use
(the newest version of the frame's release, or the named version, or the user's file) or the
L2 ``WCS-WAVE`` lookup with the reason. Products are found without network in a mirror, in the
download cache beside the images or at the user's path; :func:`resolve` with ``network=True``
(the pipeline, in download mode) also asks the archive (SIA, then the browsable tree) and
fetches each chosen version once into the cache (:mod:`.archive.calibration`). Each chosen
file is opened and checked once (:func:`.productwave.open_product`); :meth:`WaveSources.attach`
then gives each frame the product's wavelengths (:class:`.productwave.ProductWave`) or leaves
it on the lookup when the product does not fit the frame.

A product that is missing, cannot be fetched, is unreadable or does not match never fails the
run: its frames use the lookup, and one warning per run names every detector that does and why
(and one more, after the cube, names the frames a product did not fit) (``spectral_wcs = lookup``
asks for the lookup and warns about nothing).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from . import calnames
from .archive.calibration import (
    CalibrationUnavailable,
    ProductLocation,
    cache_root,
    cached_products,
    directory_products,
    fetch_product,
    mirror_products,
    newest,
    sia_products,
    sia_url_for,
    tree_products,
    tree_releases,
)
from .objectstore import as_location, is_url
from .productwave import ProductError, ProductMaps, frame_wave, open_product
from .textlimits import short_text

logger = logging.getLogger(__name__)

Key = Tuple[int, Optional[str]]
#: Retries of each discovery request (SIA, directory listings): the fallback is only the lookup.
DISCOVERY_RETRIES = 2


@dataclass(frozen=True)
class WaveChoice:
    """The wavelengths of the frames of one detector and release: ``product`` (a local file) or,
    when None, the L2 lookup, with the ``reason``."""

    detector: int
    release: Optional[str]
    product: Optional[Path] = None
    reason: str = ""


@dataclass
class WaveSources:
    """The run's choices by (detector, release); ``releases`` maps frame paths (or the
    :class:`~.objectstore.ObjectLocation` s of objects read in place) to their release (what the
    archive URL said) where the path alone does not show it."""

    setting: str
    choices: Dict[Key, WaveChoice] = field(default_factory=dict)
    releases: Dict[Any, str] = field(default_factory=dict)
    maps: Dict[Path, ProductMaps] = field(default_factory=dict)
    """The opened, checked products by path."""
    refused: List[Tuple[str, str]] = field(default_factory=list)
    """(frame name, reason) of the frames a chosen product did not fit (they kept the lookup)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __getstate__(self) -> Dict[str, Any]:
        """Pickled for tiles on other processes without the lock and the opened maps (reopened
        from the product files, which those processes must see at the same paths)."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("_lock", "maps")}
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self.maps = {}
        for choice in self.choices.values():
            if choice.product is not None and choice.product not in self.maps:
                self.maps[choice.product] = open_product(choice.product, choice.detector)

    def release_of(self, path: Any) -> Optional[str]:
        """The release of a frame file (a path or an object location): as recorded, else from its
        path or URL (a mirror's or an object store's), else None."""
        return self.releases.get(as_location(path)) or calnames.release_of(str(path))

    def choice(self, detector: int, path: Any) -> WaveChoice:
        """What the frame at ``path`` of ``detector`` uses (the lookup when nothing was resolved)."""
        key = (int(detector), self.release_of(path))
        found = self.choices.get(key) or self.choices.get((int(detector), None))
        return found or WaveChoice(int(detector), key[1], None, "not resolved for this frame")

    def attach(self, frame: Any) -> Any:
        """``frame`` (a :class:`.frames.Frame`) with the product's wavelengths when its choice
        is a product that fits it, else unchanged (the L2 lookup); a refusal is kept in
        :attr:`refused`. Thread-safe (frames are read on a reader thread). Without an opened
        product (the lookup for every frame) nothing is looked up per frame."""
        if not self.maps:
            return frame
        choice = self.choice(frame.detector, frame.path)
        maps = self.maps.get(choice.product) if choice.product is not None else None
        if maps is None:
            return frame
        wave = frame_wave(maps, frame)
        if isinstance(wave, str):
            with self._lock:
                self.refused.append((frame.path.name, wave))
            return frame
        return replace(frame, wave=wave)

    def warn_refused(self) -> None:
        """One warning naming the frames that kept the lookup although a product was chosen
        (then forgotten: each is reported once)."""
        with self._lock:
            refused, self.refused = self.refused, []
        if refused:
            listed = "; ".join(f"{name}: {reason}" for name, reason in refused[:5])
            more = f" (and {len(refused) - 5} more)" if len(refused) > 5 else ""
            logger.warning("spectral WCS: %d frame(s) kept the L2 WCS-WAVE lookup: %s%s", len(refused),
                           short_text(listed, 2000), more)

    @classmethod
    def lookup(cls) -> "WaveSources":
        """Every frame from the L2 lookup (``spectral_wcs = lookup``)."""
        return cls(calnames.LOOKUP)


def _candidates(setting: str, kind: str, config, release: Optional[str], base_url: Optional[str],
                network: bool, timeout: float, retries: int, found: Dict[Optional[str], List[ProductLocation]],
                errors: Dict[Optional[str], str]) -> List[ProductLocation]:
    """The products that may serve ``release`` (memoised per release in ``found``)."""
    if release in found:
        return found[release]
    products: List[ProductLocation] = []
    if kind == "path":
        products = [p for p in directory_products(Path(setting)) if release is None or p.release in (None, release)]
    elif config.data_mirror is not None:
        releases = [release] if release else tree_releases(Path(config.data_mirror))
        for rel in releases:
            products += mirror_products(Path(config.data_mirror), rel)
    else:
        releases = [release] if release else tree_releases(cache_root(Path(config.output_dir)))
        for rel in releases:
            products += cached_products(Path(config.output_dir), rel)
        if network and release and base_url:
            try:
                products += sia_products(sia_url_for(base_url), release, timeout=timeout, retries=retries)
            except CalibrationUnavailable as exc:
                errors[release] = exc.reason
    found[release] = products
    return products


def _where(kind: str, config, release: Optional[str], network: bool) -> str:
    """Where products were looked for, for messages."""
    rel = release or "<release>"
    if kind == "path":
        return f"at spectral_wcs = {config.spectral_wcs}"
    if config.data_mirror is not None:
        return f"in the mirror under {Path(config.data_mirror) / rel / calnames.TREE_DIR}"
    where = f"in the cache {cache_root(Path(config.output_dir)) / rel / calnames.TREE_DIR}"
    return where + (" or in the archive (SIA and the browsable tree)" if network else "")


def _unusable(setting: str, kind: str, config) -> str:
    """Why no product can be found for any frame ('' when products may be found): a missing
    ``spectral_wcs`` path, or ``auto`` with an object-store ``data_mirror`` (products are not read
    from an object store; a version there is refused by the configuration's validation)."""
    if kind == "path":
        return "" if Path(setting).exists() else f"spectral_wcs path {setting} does not exist"
    if is_url(config.data_mirror):
        return (f"products are not read from an object store (data_mirror {config.data_mirror}); set spectral_wcs "
                "to a local product file or directory")
    return ""


def resolve(config, needs: Mapping[int, Iterable[Optional[str]]], *, base_url: Optional[str] = None,
            network: bool = False, releases: Optional[Mapping[Path, str]] = None,
            warn: bool = True) -> WaveSources:
    """Resolve ``config.spectral_wcs`` for the frames of each detector and release in ``needs``
    (``{detector: releases}``; a release may be None when unknown).

    ``network``: also ask the archive at ``base_url`` (the root its ``uri`` values are relative
    to) and fetch what is chosen into the cache. Detectors left on the lookup get one warning
    (``warn``) naming each and the reason. Never raises for an unavailable product.
    """
    setting = str(config.spectral_wcs)
    kind = calnames.setting_kind(setting)
    sources = WaveSources(setting, releases={as_location(k): v for k, v in (releases or {}).items()})
    if kind == calnames.LOOKUP:
        for det, rels in needs.items():
            for rel in set(rels):
                sources.choices[(int(det), rel)] = WaveChoice(int(det), rel, None, "spectral_wcs = lookup")
        return sources
    tag = setting if kind == "version" else None
    found: Dict[Optional[str], List[ProductLocation]] = {}
    errors: Dict[Optional[str], str] = {}
    tree_failed: set = set()
    fetched: Dict[Tuple[int, str, Optional[str]], Path] = {}
    # a missing product only costs the lookup: discovery retries at most twice
    timeout, retries = float(config.download_timeout), min(int(config.download_retries), DISCOVERY_RETRIES)
    unusable = _unusable(setting, kind, config)
    if unusable:
        for det, rels in needs.items():
            for rel in set(rels):
                sources.choices[(int(det), rel)] = WaveChoice(int(det), rel, None, unusable)
    for det, rels in sorted(needs.items()):
        for rel in sorted(set(rels), key=lambda r: r or ""):
            key = (int(det), rel)
            if key in sources.choices:
                continue
            products = _candidates(setting, kind, config, rel, base_url, network, timeout, retries, found, errors)
            best = newest(products, int(det), tag)
            if (best is None and network and rel and base_url and config.data_mirror is None and kind != "path"
                    and rel not in tree_failed):
                try:
                    best = newest(tree_products(base_url, rel, int(det), tag=tag, timeout=timeout, retries=retries),
                                  int(det), tag)
                except CalibrationUnavailable as exc:
                    tree_failed.add(rel)
                    errors[rel] = f"{errors[rel]}; {exc.reason}" if rel in errors else exc.reason
            if best is None:
                what = f"version {tag}" if tag else "product"
                reason = f"no spectral-WCS {what} of D{det} {_where(kind, config, rel, network)}"
                if rel in errors:
                    reason += f" ({errors[rel]})"
                sources.choices[key] = WaveChoice(int(det), rel, None, reason)
                continue
            ident = (best.detector, best.tag, best.release)
            try:
                if ident not in fetched:
                    fetched[ident] = fetch_product(best, Path(config.output_dir), timeout=timeout, retries=retries,
                                                   deadline=float(config.download_deadline), progress=config.progress)
                path = fetched[ident]
                if path not in sources.maps:
                    sources.maps[path] = open_product(path, int(det))
                sources.choices[key] = WaveChoice(int(det), rel, path, "")
            except CalibrationUnavailable as exc:
                sources.choices[key] = WaveChoice(int(det), rel, None, f"{best.name.file_name}: {exc.reason}")
            except ProductError as exc:
                sources.choices[key] = WaveChoice(int(det), rel, None, str(exc))
    for choice in sources.choices.values():
        if choice.product is not None:
            logger.info("D%d%s: wavelengths from %s", choice.detector,
                        f" ({choice.release})" if choice.release else "", choice.product)
    if warn:
        warn_lookup([c for c in sources.choices.values() if c.product is None])
    return sources


def warn_lookup(choices: Sequence[WaveChoice]) -> None:
    """One warning naming the detectors whose frames use the L2 lookup instead of the product."""
    if not choices:
        return
    parts = "; ".join(f"D{c.detector}{f' ({c.release})' if c.release else ''}: {c.reason}"
                      for c in sorted(choices, key=lambda c: (c.detector, c.release or "")))
    logger.warning("spectral WCS: wavelengths from the L2 WCS-WAVE lookup (good to ~1 nm) instead of the "
                   "calibration product for %s", short_text(parts, 2000))


__all__ = ["WaveChoice", "WaveSources", "resolve", "warn_lookup"]
