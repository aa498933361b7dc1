//! The engine's parameters: the spatial kernel, the settings a caller chooses,
//! and [`Params`], those settings validated once.
//!
//! A [`Params`] can only be made by [`Params::new`], which checks every value
//! (an error names the parameter), so the accumulation entry points take a
//! `&Params` and never validate, copy or parse them again. The Python binding
//! wraps one `Params` per cube (`_core.EngineParams`).

use std::ops::Deref;

use crate::spectral;

/// Spatial kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Exact area overlap of the shrunk pixel footprint.
    Square,
    /// Pixel centre shared among the four nearest output pixel centres.
    Bilinear,
}

impl Kernel {
    /// The kernel named `name` (`"square"` or `"bilinear"`).
    pub fn parse(name: &str) -> Result<Kernel, String> {
        match name {
            "square" => Ok(Kernel::Square),
            "bilinear" => Ok(Kernel::Bilinear),
            other => Err(format!("kernel must be 'square' or 'bilinear', got {other:?}")),
        }
    }

    /// The kernel's name, as [`Kernel::parse`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Square => "square",
            Kernel::Bilinear => "bilinear",
        }
    }
}

/// The settings of the engine, by name (not yet validated: see [`Params::new`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Output wavelength bin edges (um), finite and strictly increasing, at least two.
    pub z_edges: Vec<f64>,
    /// Linear size of a droplet relative to its input pixel, in (0, 1].
    pub xy_shrink: f64,
    /// Width of a pixel's spectral top-hat relative to its bandwidth, in (0, 1].
    pub z_shrink: f64,
    /// Cap on a pixel's inverse variance (1 / (MJy/sr)^2), > 0.
    pub ivar_max: f64,
    /// Smallest voxel fraction `f_xy * f_z` that is deposited, in [0, 1).
    pub min_overlap: f64,
    pub kernel: Kernel,
}

/// Validated [`Settings`]: read them through `Deref` (`params.xy_shrink`);
/// the only way to make one is [`Params::new`].
#[derive(Clone, Debug)]
pub struct Params {
    settings: Settings,
    keep_from: f64,
}

impl Params {
    /// Checks every setting; the error names the first bad one and its value.
    pub fn new(settings: Settings) -> Result<Params, String> {
        let s = &settings;
        spectral::validate_edges(&s.z_edges)?;
        if !(s.xy_shrink > 0.0 && s.xy_shrink <= 1.0) {
            return Err(format!("xy_shrink must be in (0, 1], got {}", s.xy_shrink));
        }
        if !(s.z_shrink > 0.0 && s.z_shrink <= 1.0) {
            return Err(format!("z_shrink must be in (0, 1], got {}", s.z_shrink));
        }
        if !(s.ivar_max > 0.0) {
            return Err(format!("ivar_max must be > 0, got {}", s.ivar_max));
        }
        if !(s.min_overlap >= 0.0 && s.min_overlap < 1.0) {
            return Err(format!("min_overlap must be in [0, 1), got {}", s.min_overlap));
        }
        // The smallest positive double when min_overlap is 0, so that `f >= keep_from`
        // is `f > 0 && f >= min_overlap` (and false for NaN).
        let keep_from = if s.min_overlap > 0.0 { s.min_overlap } else { f64::from_bits(1) };
        Ok(Params { settings, keep_from })
    }

    /// Number of output wavelength planes.
    #[inline]
    pub fn n_z(&self) -> usize {
        self.settings.z_edges.len() - 1
    }

    /// Smallest voxel fraction `f_xy * f_z` that is deposited: `min_overlap`,
    /// or the smallest positive double when that is 0, so that `f >= keep_from`
    /// is `f > 0 && f >= min_overlap` (and false for NaN).
    #[inline]
    pub fn keep_from(&self) -> f64 {
        self.keep_from
    }

    /// `Ok` when a cube of `n_z` planes fits these parameters.
    pub fn check_planes(&self, n_z: usize) -> Result<(), String> {
        if n_z != self.n_z() {
            return Err(format!("cube has {n_z} planes but z_edges define {} bins", self.n_z()));
        }
        Ok(())
    }
}

impl Deref for Params {
    type Target = Settings;

    #[inline(always)]
    fn deref(&self) -> &Settings {
        &self.settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings { z_edges: vec![1.0, 1.5, 2.0], xy_shrink: 0.8, z_shrink: 1.0, ivar_max: 1e10, min_overlap: 0.0, kernel: Kernel::Square }
    }

    #[test]
    fn each_bad_setting_is_named() {
        type Spoil = fn(&mut Settings);
        let cases: [(Spoil, &str); 9] = [
            (|s| s.z_edges = vec![1.0], "z_edges"),
            (|s| s.z_edges = vec![1.0, f64::NAN], "z_edges"),
            (|s| s.z_edges = vec![2.0, 1.0], "z_edges"),
            (|s| s.xy_shrink = 0.0, "xy_shrink"),
            (|s| s.xy_shrink = f64::NAN, "xy_shrink"),
            (|s| s.z_shrink = 1.5, "z_shrink"),
            (|s| s.ivar_max = 0.0, "ivar_max"),
            (|s| s.min_overlap = 1.0, "min_overlap"),
            (|s| s.min_overlap = -0.1, "min_overlap"),
        ];
        for (spoil, name) in cases {
            let mut s = settings();
            spoil(&mut s);
            let err = Params::new(s).unwrap_err();
            assert!(err.starts_with(name), "{err}");
        }
        assert!(Kernel::parse("gaussian").unwrap_err().starts_with("kernel"));
    }

    #[test]
    fn keep_from_is_min_overlap_or_the_smallest_positive_double() {
        let p = Params::new(settings()).unwrap();
        assert_eq!((p.keep_from(), p.n_z(), p.xy_shrink), (f64::from_bits(1), 2, 0.8));
        let p = Params::new(Settings { min_overlap: 0.25, ..settings() }).unwrap();
        assert_eq!(p.keep_from(), 0.25);
        assert!(p.check_planes(2).is_ok() && p.check_planes(3).unwrap_err().contains("planes"));
        for k in [Kernel::Square, Kernel::Bilinear] {
            assert_eq!(Kernel::parse(k.name()), Ok(k));
        }
    }
}
