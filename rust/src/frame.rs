//! What one input pixel brings, and how the engine reads a frame.
//!
//! [`FrameView`] is a frame (or crop, or strip of rows) as the caller hands it
//! over: the corner map and the per-pixel arrays, checked once by
//! [`FrameView::check`]. [`RawRow`] and [`FrameRow`] read the rows of a checked
//! frame without bounds checks (the band scan's inner loop). [`pixel_value`]
//! holds the rules that skip a pixel (non-finite value, wavelength or
//! bandwidth, bandwidth <= 0, variance <= 0 or not finite, excluded by the mask).

use ndarray::ArrayView2;

use crate::culling::BLOCK;
use crate::params::Params;
use crate::prefetch::prefetch;

/// What one input pixel brings: value, variance, capped inverse variance, flags.
#[derive(Clone, Copy, Debug)]
pub struct PixelValue {
    pub value: f64,
    pub variance: f64,
    pub ivar: f64,
    pub flags: u32,
    /// Central wavelength and bandwidth (um).
    pub lambda_c: f64,
    pub delta_lambda: f64,
}

/// Returns the pixel's contribution data, or None when it must be skipped:
/// value, wavelength or bandwidth not finite, bandwidth <= 0, variance <= 0 or
/// not finite, or excluded (by the caller's mask).
#[inline]
pub fn pixel_value(value: f64, variance: f64, flags: u32, lam: f64, dlam: f64, excluded: bool, p: &Params) -> Option<PixelValue> {
    if excluded {
        return None;
    }
    // `x - x` is 0 for every finite `x` and NaN otherwise, so the sum is 0 exactly
    // when all four are finite (one test instead of four).
    #[allow(clippy::eq_op)] // deliberate: `x - x` is the finiteness test
    let finite = (value - value) + (lam - lam) + (dlam - dlam) + (variance - variance) == 0.0;
    if !(finite && dlam > 0.0 && variance > 0.0) {
        return None;
    }
    // 1 / variance is positive (infinite at most), never NaN: a plain minimum.
    let ivar = 1.0 / variance;
    Some(PixelValue { value, variance, ivar: if ivar < p.ivar_max { ivar } else { p.ivar_max }, flags, lambda_c: lam, delta_lambda: dlam })
}

/// A frame (or crop) to drizzle: corner map and per-pixel arrays.
pub struct FrameView<'a> {
    /// Output pixel x of input corners, `(ny + 1, nx + 1)`; `[j, i]` is the
    /// corner at input `(i - 0.5, j - 0.5)`.
    pub corners_x: ArrayView2<'a, f64>,
    pub corners_y: ArrayView2<'a, f64>,
    pub image: ArrayView2<'a, f64>,
    pub variance: ArrayView2<'a, f64>,
    pub flags: ArrayView2<'a, u32>,
    pub lambda_c: ArrayView2<'a, f64>,
    pub delta_lambda: ArrayView2<'a, f64>,
    /// Pixels to skip (True), if any.
    pub exclude: Option<ArrayView2<'a, bool>>,
}

impl FrameView<'_> {
    /// `(ny, nx)` of the pixel arrays, after checking that every array fits.
    pub fn check(&self) -> Result<(usize, usize), String> {
        let (ny, nx) = self.image.dim();
        for (name, d) in [
            ("variance", self.variance.dim()),
            ("flags", self.flags.dim()),
            ("lambda_c", self.lambda_c.dim()),
            ("delta_lambda", self.delta_lambda.dim()),
        ] {
            if d != (ny, nx) {
                return Err(format!("{name} has shape {d:?}, image has {:?}", (ny, nx)));
            }
        }
        if let Some(e) = &self.exclude {
            if e.dim() != (ny, nx) {
                return Err(format!("exclude_mask has shape {:?}, image has {:?}", e.dim(), (ny, nx)));
            }
        }
        for (name, d) in [("corners_x", self.corners_x.dim()), ("corners_y", self.corners_y.dim())] {
            if d != (ny + 1, nx + 1) {
                return Err(format!("{name} has shape {d:?}, expected {:?} (image shape + 1)", (ny + 1, nx + 1)));
            }
        }
        Ok((ny, nx))
    }
}

/// Unchecked reads from one row of a 2-D view whose shape the caller checked.
#[derive(Clone, Copy)]
pub(crate) struct RawRow<T> {
    pub(crate) ptr: *const T,
    pub(crate) step: isize,
}

impl<T: Copy> RawRow<T> {
    /// Row `j` of `a`. SAFETY: `j` must be a row of `a`.
    #[inline(always)]
    pub(crate) unsafe fn new(a: &ArrayView2<'_, T>, j: usize) -> Self {
        RawRow { ptr: unsafe { a.as_ptr().offset(j as isize * a.strides()[0]) }, step: a.strides()[1] }
    }

    /// SAFETY: `i` must be a column of the view.
    #[inline(always)]
    pub(crate) unsafe fn at(&self, i: usize) -> T {
        unsafe { *self.ptr.offset(i as isize * self.step) }
    }

    /// [`Self::at`], with the step known to be 1 when `UNIT` (no multiplication).
    ///
    /// SAFETY: `i` must be a column of the view; `UNIT` only if the step is 1.
    #[inline(always)]
    pub(crate) unsafe fn get<const UNIT: bool>(&self, i: usize) -> T {
        debug_assert!(!UNIT || self.step == 1);
        if UNIT {
            unsafe { *self.ptr.add(i) }
        } else {
            unsafe { self.at(i) }
        }
    }
}

/// Row `j` of every per-pixel array of a checked frame, and corner rows `j`
/// and `j + 1`.
pub(crate) struct FrameRow {
    pub(crate) cx0: RawRow<f64>,
    pub(crate) cx1: RawRow<f64>,
    pub(crate) cy0: RawRow<f64>,
    pub(crate) cy1: RawRow<f64>,
    pub(crate) image: RawRow<f64>,
    pub(crate) variance: RawRow<f64>,
    pub(crate) flags: RawRow<u32>,
    pub(crate) lam: RawRow<f64>,
    pub(crate) dlam: RawRow<f64>,
    pub(crate) exclude: Option<RawRow<bool>>,
}

impl FrameRow {
    /// Prefetches the [`BLOCK`] pixels from column `i0` (clipped to the row) of
    /// every array of this row, and of its lower corner row.
    #[inline(always)]
    pub(crate) fn prefetch(&self, i0: usize) {
        fn at<T: Copy>(r: &RawRow<T>, i: usize) -> *const T {
            r.ptr.wrapping_offset(i as isize * r.step)
        }
        for i in [i0, i0 + BLOCK / 2] {
            prefetch(at(&self.cx1, i));
            prefetch(at(&self.cy1, i));
            prefetch(at(&self.image, i));
            prefetch(at(&self.variance, i));
            prefetch(at(&self.lam, i));
            prefetch(at(&self.dlam, i));
        }
        prefetch(at(&self.flags, i0));
    }

    /// SAFETY: `frame.check()` must have passed and `j` must be a pixel row.
    #[inline(always)]
    pub(crate) unsafe fn new(frame: &FrameView<'_>, j: usize) -> Self {
        unsafe {
            FrameRow {
                cx0: RawRow::new(&frame.corners_x, j),
                cx1: RawRow::new(&frame.corners_x, j + 1),
                cy0: RawRow::new(&frame.corners_y, j),
                cy1: RawRow::new(&frame.corners_y, j + 1),
                image: RawRow::new(&frame.image, j),
                variance: RawRow::new(&frame.variance, j),
                flags: RawRow::new(&frame.flags, j),
                lam: RawRow::new(&frame.lambda_c, j),
                dlam: RawRow::new(&frame.delta_lambda, j),
                exclude: frame.exclude.as_ref().map(|e| RawRow::new(e, j)),
            }
        }
    }
}
