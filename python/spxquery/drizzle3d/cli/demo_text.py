"""The words the demo prints about its pictures: which simulated sources they show, and where."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional

from ..cubefile import load_cube
from ..quicklook import QUICKLOOK_APERTURE_ARCSEC, brightest_source, world_to_pixel


def demo_explanation(cube_path: Path, truth: Path, pngs: Mapping[str, Path], ext_png: Optional[Path]) -> str:
    """What the demo's pictures show, in words: the simulated sources found in the cube."""
    from ..simulate import load_truth  # test scaffolding: imported when the demo runs

    sky, meta = load_truth(truth)
    cube = load_cube(cube_path)
    bx, by = brightest_source(cube)
    ny, nx = cube["sci"].shape[1:]
    parts = []
    nearest = None
    for s in sky.point_sources:
        x, y = world_to_pixel(cube, s.ra, s.dec)
        inside = -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5
        if not inside:
            continue
        d = math.hypot(x - bx, y - by)
        if nearest is None or d < nearest[0]:
            nearest = (d, s.name, s.spectrum.continuum_index)
        sp = s.spectrum
        parts.append(f"{s.name} ({sp.continuum_amp:g} mJy x (lambda/um)^{sp.continuum_index:g}) "
                     f"at pixel ({x:.0f}, {y:.0f})")
    ext_txt = ""
    for e in sky.extended_sources:
        x, y = world_to_pixel(cube, e.ra, e.dec)
        if -0.5 <= x < nx - 0.5 and -0.5 <= y < ny - 0.5:
            lines = ", ".join(f"{ln.centre_um:.3f} um" for ln in e.spectrum.lines)
            ext_txt = (f" The elliptical smudge at pixel ({x:.0f}, {y:.0f}) is {e.name}, an extended source "
                       f"({e.sigma_major_arcsec:g}\" x {e.sigma_minor_arcsec:g}\" sigma) with an emission line at "
                       f"{lines}" + (f" -- its spectrum is in {ext_png.name}." if ext_png is not None else "."))
    n_frames = len(meta.get("frames", []))
    if nearest is not None and nearest[0] <= 3:
        red = " (rising: a red source)" if nearest[2] > 0 else ""
        bright = (f" The brightest source, circled at pixel ({bx}, {by}), is {nearest[1]}; "
                  f"{pngs['spectrum'].name} shows its spectrum{red}: the flux density [mJy] in an aperture of "
                  f"{QUICKLOOK_APERTURE_ARCSEC:g}\" radius, with 1-sigma error bars.")
    else:
        bright = (f" The circle marks the brightest source, at pixel ({bx}, {by}); {pngs['spectrum'].name} is its "
                  f"spectrum in an aperture of {QUICKLOOK_APERTURE_ARCSEC:g}\" radius.")
    return (
        f"What you are looking at: {n_frames} simulated SPHEREx exposures (cutouts, two roll angles, each seeing the "
        f"field at different wavelengths) drizzled into a {cube['sci'].shape[0]}-plane cube of "
        f"{ny} x {nx} pixels of 6.15\". {pngs['collapsed'].name} is the inverse-variance mean over all planes "
        f"(x = 0-based column, y = row; north up, east left). Point sources: " + "; ".join(parts) + "." + bright
        + ext_txt + f" {pngs['plane'].name} is a single wavelength plane. The true sky is in {truth}."
    )


