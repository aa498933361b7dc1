//! Spectral boxcar overlaps: a top-hat in wavelength against output bin edges.
//!
//! Units: micrometres throughout. The top-hat of an input pixel is
//! `[lambda_c - width/2, lambda_c + width/2]` with `width = delta_lambda * z_shrink`.
//! The fraction for bin `k` is `overlap length / width`. There is no
//! renormalisation: the part of the top-hat outside the grid is lost.

use crate::geometry::{fmax, fmin};

/// Initial capacity of the vectors [`overlaps`] fills (a hint only: a top-hat
/// may touch any number of bins).
pub const INLINE_BINS: usize = 8;

/// Calls `emit(bin_index, fraction)` for every bin that overlaps the top-hat
/// with a strictly positive length, in increasing bin order.
///
/// `edges` must be strictly increasing (checked by the callers that take
/// user input). Returns without emitting anything when the top-hat is empty or
/// any input is not finite.
#[inline]
pub fn for_each_overlap(lambda_c: f64, delta_lambda: f64, z_shrink: f64, edges: &[f64], emit: impl FnMut(usize, f64)) {
    let mut no_hint = usize::MAX;
    for_each_overlap_hinted(lambda_c, delta_lambda, z_shrink, edges, &mut no_hint, emit);
}

/// The first bin whose upper edge lies above `lo` (`edges.len() - 1` when
/// none does). `hint`, a guess (e.g. the previous pixel's answer; any value,
/// `usize::MAX` for none), is checked in O(1) before falling back to a binary
/// search; the answer is the same.
#[inline(always)]
fn first_bin(edges: &[f64], lo: f64, hint: usize) -> usize {
    let n_bins = edges.len() - 1;
    if hint < n_bins && edges[hint + 1] > lo && (hint == 0 || edges[hint] <= lo) {
        return hint;
    }
    edges[1..].partition_point(|&e| e <= lo)
}

/// [`for_each_overlap`] starting the bin search at `*hint` and leaving the
/// first overlapped bin there (neighbouring pixels have nearly equal
/// wavelengths). Emits exactly what [`for_each_overlap`] emits.
#[inline(always)]
pub fn for_each_overlap_hinted(lambda_c: f64, delta_lambda: f64, z_shrink: f64, edges: &[f64], hint: &mut usize, mut emit: impl FnMut(usize, f64)) {
    let width = delta_lambda * z_shrink;
    // `x - x` is 0 for every finite `x` and NaN otherwise: one floating-point
    // test for both (the compiler turns `is_finite` into integer bit tests).
    #[allow(clippy::eq_op)] // deliberate: `x - x` is the finiteness test
    let finite = (width - width) + (lambda_c - lambda_c) == 0.0;
    if !(finite && width > 0.0) || edges.len() < 2 {
        return;
    }
    let lo = lambda_c - 0.5 * width;
    let hi = lambda_c + 0.5 * width;
    // Divide by the span actually represented in floating point, so a top-hat
    // wholly inside one bin gets exactly 1.0.
    let span = hi - lo;
    let n_bins = edges.len() - 1;
    let mut k = first_bin(edges, lo, *hint);
    *hint = k;
    while k < n_bins && edges[k] < hi {
        // Plain min/max: every operand is finite here.
        let overlap = fmin(hi, edges[k + 1]) - fmax(lo, edges[k]);
        if overlap > 0.0 {
            emit(k, overlap / span);
        }
        k += 1;
    }
}

/// Collects the overlaps of one top-hat into `(bin indices, fractions)`.
pub fn overlaps(lambda_c: f64, delta_lambda: f64, z_shrink: f64, edges: &[f64]) -> (Vec<i32>, Vec<f64>) {
    let mut idx = Vec::with_capacity(INLINE_BINS);
    let mut frac = Vec::with_capacity(INLINE_BINS);
    for_each_overlap(lambda_c, delta_lambda, z_shrink, edges, |k, f| {
        idx.push(k as i32);
        frac.push(f);
    });
    (idx, frac)
}

/// Checks that bin edges are finite, strictly increasing and at least two.
pub fn validate_edges(edges: &[f64]) -> Result<(), String> {
    if edges.len() < 2 {
        return Err(format!("z_edges must hold at least 2 values, got {}", edges.len()));
    }
    for (i, w) in edges.windows(2).enumerate() {
        if !w[0].is_finite() || !w[1].is_finite() {
            return Err(format!(
                "z_edges must be finite, got {} at index {}",
                if w[0].is_finite() { w[1] } else { w[0] },
                if w[0].is_finite() { i + 1 } else { i }
            ));
        }
        if !(w[1] > w[0]) {
            return Err(format!("z_edges must be strictly increasing, got {} then {} at index {}", w[0], w[1], i + 1));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EDGES: [f64; 5] = [1.0, 1.1, 1.2, 1.3, 1.4];

    #[test]
    fn inside_one_bin() {
        let (i, f) = overlaps(1.15, 0.05, 1.0, &EDGES);
        assert_eq!(i, vec![1]);
        assert_eq!(f[0], 1.0);
    }

    #[test]
    fn straddles_two_bins_evenly() {
        let (i, f) = overlaps(1.2, 0.1, 1.0, &EDGES);
        assert_eq!(i, vec![1, 2]);
        assert!((f[0] - 0.5).abs() < 1e-12 && (f[1] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn shrink_narrows_the_top_hat() {
        // width 0.16 * 0.5 = 0.08 centred on 1.15: [1.11, 1.19], inside bin 1.
        let (i, f) = overlaps(1.15, 0.16, 0.5, &EDGES);
        assert_eq!(i, vec![1]);
        assert!((f[0] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn half_outside_grid_is_lost_not_renormalised() {
        let (i, f) = overlaps(1.0, 0.05, 1.0, &EDGES);
        assert_eq!(i, vec![0]);
        assert!((f[0] - 0.5).abs() < 1e-12);
        let (i, f) = overlaps(1.4, 0.05, 1.0, &EDGES);
        assert_eq!(i, vec![3]);
        assert!((f[0] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn wider_than_grid() {
        let (i, f) = overlaps(1.2, 1.0, 1.0, &EDGES);
        assert_eq!(i, vec![0, 1, 2, 3]);
        let s: f64 = f.iter().sum();
        assert!((s - 0.4).abs() < 1e-12);
    }

    #[test]
    fn empty_and_invalid() {
        assert!(overlaps(0.5, 0.1, 1.0, &EDGES).0.is_empty());
        assert!(overlaps(2.0, 0.1, 1.0, &EDGES).0.is_empty());
        assert!(overlaps(1.2, 0.0, 1.0, &EDGES).0.is_empty());
        assert!(overlaps(1.2, -0.1, 1.0, &EDGES).0.is_empty());
        assert!(overlaps(f64::NAN, 0.1, 1.0, &EDGES).0.is_empty());
        assert!(overlaps(1.2, f64::INFINITY, 1.0, &EDGES).0.is_empty());
    }

    #[test]
    fn edge_validation() {
        assert!(validate_edges(&[1.0]).is_err());
        assert!(validate_edges(&[1.0, 1.0]).is_err());
        assert!(validate_edges(&[1.0, f64::NAN]).is_err());
        assert!(validate_edges(&[2.0, 1.0]).is_err());
        assert!(validate_edges(&EDGES).is_ok());
    }

    proptest! {
        #[test]
        fn fractions_sum_to_inside_fraction(lc in 0.5f64..2.0, dl in 1e-4f64..0.8, s in 0.01f64..=1.0) {
            let (_, f) = overlaps(lc, dl, s, &EDGES);
            let w = dl * s;
            // The top-hat as represented in floating point: [lo, hi].
            let (lo, hi) = (lc - 0.5 * w, lc + 0.5 * w);
            let inside = (hi.min(1.4) - lo.max(1.0)).max(0.0) / (hi - lo);
            let total: f64 = f.iter().sum();
            prop_assert!((total - inside).abs() < 1e-12, "{} vs {}", total, inside);
            prop_assert!(f.iter().all(|&x| x > 0.0 && x <= 1.0 + 1e-15));
        }
    }
}
