//! Rust core of `spxquery.drizzle3d`: the hot path of 3-D drizzling.
//!
//! Conventions: output pixel `j` covers `[j - 0.5, j + 0.5]` in 0-based pixel
//! coordinates; wavelengths are in micrometres. Every public entry point is
//! deterministic: the same inputs give the same bits for any thread count.

// `!(x > 0.0)` is used on purpose throughout: unlike `x <= 0.0` it is also
// true for NaN, so invalid values are rejected by the same test.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod engine;
pub mod geometry;
pub mod interp;
pub mod lanes;
pub mod spectral;

#[cfg(feature = "python")]
mod python;
