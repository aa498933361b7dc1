//! Rust core of `spxquery.drizzle3d`: the hot path of 3-D drizzling.
//!
//! Conventions: output pixel `j` covers `[j - 0.5, j + 0.5]` in 0-based pixel
//! coordinates; wavelengths are in micrometres. Every public entry point is
//! deterministic: the same inputs give the same bits for any thread count.

pub mod engine;
pub mod geometry;
pub mod interp;
pub mod spectral;

#[cfg(feature = "python")]
mod python;
