"""SPHEREx Level 2 simulator: sky model, L2 files (QR2/QR3, cutouts), fields, truth and scoring.

Typical use::

    info = simulate_field(root, ra, dec, detectors=(3,), n_pointings=16, release="qr2",
                          cutout_size_deg=None, seed=0)        # mirror tree + archive_index.json + truth.json
    sky, truth = load_truth(root)
    cube_truth = truth_cube(sky, output_wcs, zgrid)             # (n_z, ny, nx) MJy/sr, PSF-convolved
    scores = score_cube(cube_sci, cube_var, cube_truth, sky=sky, output_wcs=output_wcs,
                        wavelengths=zgrid.centers)

Conventions: 0-based pixels, um, MJy/sr; point-source spectra in mJy, extended-source spectra
in MJy/sr (peak, before the PSF). The intended geometry of a written file is
``frame_pixel_to_world(meta, x, y)``; its intended wavelengths are ``wave_lookup_bilinear`` of
the file's WCS-WAVE table.
"""

from .field import (
    FieldInfo,
    default_sky,
    frame_footprint,
    load_index,
    load_truth,
    simulate_field,
    simulate_frame,
    solve_pointing,
)
from .injections import Injections, bright_stars, inject_file, injected_image
from .instrument import (
    FLAG_BITS,
    NPIX,
    PIXSCALE_ARCSEC,
    FrameMeta,
    detector_band,
    frame_pixel_to_world,
    frame_world_to_pixel,
    lvf_model,
    make_frame_meta,
    wave_lookup_bilinear,
    wave_table,
    zodi_spectrum,
)
from .l2file import build_l2_hdulist, l2_filename, l2_relpath, make_cutout, render_frame, write_l2_file
from .scoring import centroid_offsets, emission_line_centre, normalised_residuals, score_cube
from .sky import EmissionLine, ExtendedSource, PointSource, SkyModel, Spectrum, truth_cube

__all__ = [
    "Injections",
    "bright_stars",
    "inject_file",
    "injected_image",
    "FLAG_BITS",
    "NPIX",
    "PIXSCALE_ARCSEC",
    "EmissionLine",
    "ExtendedSource",
    "FieldInfo",
    "FrameMeta",
    "PointSource",
    "SkyModel",
    "Spectrum",
    "build_l2_hdulist",
    "centroid_offsets",
    "default_sky",
    "detector_band",
    "emission_line_centre",
    "frame_footprint",
    "frame_pixel_to_world",
    "frame_world_to_pixel",
    "l2_filename",
    "l2_relpath",
    "load_index",
    "load_truth",
    "lvf_model",
    "make_cutout",
    "make_frame_meta",
    "normalised_residuals",
    "render_frame",
    "score_cube",
    "simulate_field",
    "simulate_frame",
    "solve_pointing",
    "truth_cube",
    "wave_lookup_bilinear",
    "wave_table",
    "write_l2_file",
    "zodi_spectrum",
]
