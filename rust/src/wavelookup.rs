//! Per-pixel wavelengths and bandwidths from a SPHEREx `WCS-WAVE` table:
//! bilinear interpolation of the table's control points, separable (along x
//! at the two knot rows of each output row, then along y), with the very
//! operations of the numpy form it replaces, so the results are the same bit
//! for bit. Python (`wavetable.py`) finds the cells and fractions.

use ndarray::{Array2, ArrayView3};

/// The cell and fraction of each pixel along one axis.
pub struct Axis<'a> {
    /// First knot of the pixel's cell (0-based; the cell is `[index, index + 1]`).
    pub index: &'a [usize],
    /// Fraction of the way to the next knot.
    pub frac: &'a [f64],
}

/// `(value 0, value 1)` on the `(rows, columns)` grid of pixels: `values` is
/// `(knot rows, knot columns, 2)`; each pixel gets
/// `(1 - fy) * ax[iy] + fy * ax[iy + 1]` with
/// `ax[k] = (1 - fx) * v[k, ix] + fx * v[k, ix + 1]`.
pub fn lookup(values: ArrayView3<f64>, rows: &Axis, columns: &Axis) -> Result<(Array2<f64>, Array2<f64>), String> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU runs AVX2 (checked just above).
            return unsafe { lookup_avx2(values, rows, columns) };
        }
    }
    lookup_any(values, rows, columns)
}

/// [`lookup`] built for AVX2: the same IEEE operations (no fused multiply-add), so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn lookup_avx2(values: ArrayView3<f64>, rows: &Axis, columns: &Axis) -> Result<(Array2<f64>, Array2<f64>), String> {
    lookup_any(values, rows, columns)
}

#[inline(always)]
fn lookup_any(values: ArrayView3<f64>, rows: &Axis, columns: &Axis) -> Result<(Array2<f64>, Array2<f64>), String> {
    let (nky, nkx, two) = values.dim();
    if two != 2 {
        return Err(format!("values must be (knot rows, knot columns, 2), got a last axis of {two}"));
    }
    if rows.index.len() != rows.frac.len() || columns.index.len() != columns.frac.len() {
        return Err("each axis needs one cell index and one fraction per pixel".to_string());
    }
    if let Some(bad) = rows.index.iter().find(|&&k| k + 1 >= nky) {
        return Err(format!("row cell {bad} is outside a table of {nky} knot rows"));
    }
    if let Some(bad) = columns.index.iter().find(|&&k| k + 1 >= nkx) {
        return Err(format!("column cell {bad} is outside a table of {nkx} knot columns"));
    }
    let (ny, nx) = (rows.index.len(), columns.index.len());
    let mut lower = vec![0.0f64; nx];
    let mut upper = vec![0.0f64; nx];
    let mut value = |m: usize| {
        // Row by row into memory that is not zero-filled first (each value written once).
        let mut res: Vec<f64> = Vec::with_capacity(ny * nx);
        let mut cached = usize::MAX;
        for (&k, &fy) in rows.index.iter().zip(rows.frac) {
            if k != cached {
                along_x(values, m, k, columns, &mut lower);
                along_x(values, m, k + 1, columns, &mut upper);
                cached = k;
            }
            let (wy0, wy1) = (1.0 - fy, fy);
            // Over slices, so that the loop has no bounds checks and is vectorised (the
            // same operations per pixel, hence the same bits; ~2x fewer instructions).
            res.extend(lower.iter().zip(&upper).map(|(&lo, &up)| wy0 * lo + wy1 * up));
        }
        Array2::from_shape_vec((ny, nx), res).map_err(|e| e.to_string())
    };
    let lam = value(0)?;
    let dlam = value(1)?;
    Ok((lam, dlam))
}

/// Knot row `k` of value `m`, interpolated along x at every column.
#[inline(always)]
fn along_x(values: ArrayView3<f64>, m: usize, k: usize, columns: &Axis, out: &mut [f64]) {
    for (c, out) in out.iter_mut().enumerate() {
        let (i, fx) = (columns.index[c], columns.frac[c]);
        *out = (1.0 - fx) * values[[k, i, m]] + fx * values[[k, i + 1, m]];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn bilinear_on_a_plane_is_exact_and_cells_are_checked() {
        // values = 2 + x + 10 y (and its double): bilinear interpolation reproduces a plane
        let v = Array3::from_shape_fn((3, 4, 2), |(k, i, m)| (2.0 + i as f64 + 10.0 * k as f64) * (m + 1) as f64);
        let rows = Axis { index: &[0, 1, 1], frac: &[0.25, 0.0, 0.5] };
        let columns = Axis { index: &[0, 2], frac: &[0.5, 0.75] };
        let (a, b) = lookup(v.view(), &rows, &columns).unwrap();
        let want = |y: f64, x: f64| 2.0 + x + 10.0 * y;
        assert_eq!(a[[0, 0]], want(0.25, 0.5));
        assert_eq!(a[[2, 1]], want(1.5, 2.75));
        assert_eq!(b[[1, 1]], 2.0 * want(1.0, 2.75));
        let outside = Axis { index: &[2], frac: &[0.0] };
        assert!(lookup(v.view(), &outside, &columns).unwrap_err().contains("row cell 2"));
        assert!(lookup(v.view(), &rows, &Axis { index: &[3], frac: &[0.0] }).is_err());
    }
}
