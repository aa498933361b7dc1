"""SPHEREx Level 2 simulator: sky model, L2 files (QR2/QR3, cutouts), fields, truth and scoring."""

from .instrument import (
    FLAG_BITS, NPIX, PIXSCALE_ARCSEC, FrameMeta, detector_band, frame_pixel_to_world, frame_world_to_pixel,
    lvf_model, make_frame_meta, wave_lookup_bilinear, wave_table, zodi_spectrum,
)
from .l2file import build_l2_hdulist, l2_filename, l2_relpath, make_cutout, render_frame, write_l2_file
from .field import (
    FieldInfo, default_sky, frame_footprint, load_index, load_truth, simulate_field, simulate_frame, solve_pointing,
)
from .sky import (
    EmissionLine, ExtendedSource, PointSource, SkyModel, Spectrum, centroid_offsets, emission_line_centre,
    normalised_residuals, score_cube, truth_cube,
)

__all__ = [
    "FieldInfo", "default_sky", "frame_footprint", "load_index", "load_truth", "simulate_field",
    "simulate_frame", "solve_pointing",
    "FLAG_BITS", "NPIX", "PIXSCALE_ARCSEC", "FrameMeta", "detector_band", "frame_pixel_to_world",
    "frame_world_to_pixel", "lvf_model", "make_frame_meta", "wave_lookup_bilinear", "wave_table",
    "zodi_spectrum", "build_l2_hdulist", "l2_filename", "l2_relpath", "make_cutout", "render_frame",
    "write_l2_file", "EmissionLine", "ExtendedSource", "PointSource", "SkyModel", "Spectrum",
    "centroid_offsets", "emission_line_centre", "normalised_residuals", "score_cube", "truth_cube",
]
