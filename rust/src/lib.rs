//! Rust core of `spxquery.drizzle3d`: the hot path of 3-D drizzling.
//!
//! Conventions: output pixel `j` covers `[j - 0.5, j + 0.5]` in 0-based pixel
//! coordinates; wavelengths are in micrometres. Every public entry point is
//! deterministic: the same inputs give the same bits for any thread count.
//!
//! Where each concept lives:
//! - [`params`]: the kernel, the settings and [`Params`] (validated once).
//! - [`frame`]: a frame as handed over ([`FrameView`]), the pixel skip rules.
//! - [`droplet`]: an input pixel's footprint and how far it reaches.
//! - [`geometry`]: exact droplet/pixel overlaps (scalar); [`lanes`]: the same
//!   arithmetic over several pixels at once (SIMD), bit-identical to it.
//! - [`spectral`]: a pixel's spectral top-hat against the wavelength bins.
//! - `culling`: the input blocks that can reach the grid.
//! - `schedule`: thread pools, band layout, bucketing.
//! - [`scan`]: the fused path, [`accumulate_frame`], the SIMD band scan, and the
//!   accumulators it writes ([`CubeMut`], bands of rows, the voxel update).
//! - [`covariance`]: the optional covariance cross terms (a stencil of voxel
//!   pairs, accumulated by the scan when the cube has them).
//! - [`contributions`]: the spxquery 0.4.1 API's contribution lists.
//! - [`outliers`]: outlier rejection: the merge of a frame into the robust model,
//!   the 3-D blot of the model at each input pixel and the test against it.
//! - [`interp`]: dense corner maps from a coarse grid.
//! - [`cards`]: the values of a FITS header's standard cards in one pass (the
//!   frame reader's keyword lookups).
//! - [`rawrows`]: rows of plain images read from a local file (`pread`, big-endian
//!   to native, only the columns asked for): the frame reader's fast path.
//! - [`rice`]: the FITS RICE_1 tile decoder of the frame reader (FLAGS).
//! - [`zodifit`]: the zodi fit's sums, bit for bit numpy's (`zodi.py`).
//! - [`fitsplanes`]: the cube file's SCI/VARIANCE planes as FITS stores them (`cubefile.py`).
//! - `python` (feature `python`): the `_core` extension module.
//! - `reference_clipper` (tests only): polygon clipping, the reference the
//!   exact overlaps are tested against.

// `!(x > 0.0)` is used on purpose throughout: unlike `x <= 0.0` it is also
// true for NaN, so invalid values are rejected by the same test.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod cards;
pub mod contributions;
pub mod covariance;
mod culling;
pub mod droplet;
pub mod fitsplanes;
pub mod frame;
pub mod geometry;
pub mod interp;
pub mod lanes;
pub mod outliers;
pub mod params;
mod prefetch;
#[cfg(unix)]
pub mod rawrows;
pub mod rice;
pub mod scan;
mod schedule;
pub mod spectral;
pub mod wavelookup;
pub mod zodifit;

#[cfg(feature = "python")]
mod python;

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod reference_clipper;

pub use contributions::{accumulate_contributions, spatial_mapping, Contributions, SpatialMapping};
pub use frame::FrameView;
pub use params::{Kernel, Params, Settings};
pub use scan::{accumulate_frame, CubeMut, FrameStats};
