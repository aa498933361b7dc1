//! The zodi fit's sums (`zodi.py`): over the background pixels of a frame's
//! sample, `sum(w * Z * Z)` and `sum(w * I * Z)` with `w = 1 / VARIANCE`,
//! bit for bit what numpy gives for
//!
//! ```text
//! mask = isfinite(I) & isfinite(Z) & isfinite(V) & (V > 0) & (FLAGS & reject == 0) & (Z != 0)
//! w = 1.0 / V[mask];  den = np.sum(w * Z[mask] * Z[mask]);  num = np.sum(w * I[mask] * Z[mask])
//! ```
//!
//! The products are the same IEEE operations in the same order (`(w * Z) * Z`,
//! `(w * I) * Z`; no fused multiply-add) and the sums follow numpy's pairwise
//! summation of a contiguous float64 array ([`numpy_sum`]), so the fitted scale
//! does not change by a bit while the work runs without the GIL.

/// numpy's sum of a contiguous float64 array (`np.add.reduce`, numpy 2):
/// `0.0 + pairwise(a)`, where blocks of at most 128 elements are summed in
/// eight interleaved partial sums and longer arrays are split in two halves
/// (the first a multiple of eight long) and the halves' sums added.
pub fn numpy_sum(a: &[f64]) -> f64 {
    let pairs: Vec<[f64; 2]> = a.iter().map(|&x| [x, 0.0]).collect();
    0.0 + pairwise(&pairs)[0]
}

/// [`numpy_sum`] of both components of `a` at once (without the leading `0.0 +`).
fn pairwise(a: &[[f64; 2]]) -> [f64; 2] {
    let n = a.len();
    if n < 8 {
        let mut res = [0.0, 0.0];
        for x in a {
            res[0] += x[0];
            res[1] += x[1];
        }
        res
    } else if n <= 128 {
        let mut r = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
        let whole = n - n % 8;
        for block in a[8..whole].chunks_exact(8) {
            for (acc, x) in r.iter_mut().zip(block) {
                acc[0] += x[0];
                acc[1] += x[1];
            }
        }
        let mut res = [0.0; 2];
        for (c, out) in res.iter_mut().enumerate() {
            *out = ((r[0][c] + r[1][c]) + (r[2][c] + r[3][c])) + ((r[4][c] + r[5][c]) + (r[6][c] + r[7][c]));
        }
        for x in &a[whole..] {
            res[0] += x[0];
            res[1] += x[1];
        }
        res
    } else {
        let half = n / 2;
        let half = half - half % 8;
        let (first, second) = (pairwise(&a[..half]), pairwise(&a[half..]));
        [first[0] + second[0], first[1] + second[1]]
    }
}

/// The pixels of one fit, same length, in the sample's (C) order: IMAGE, ZODI,
/// VARIANCE (None: unit weights) and FLAGS (None: no flag test).
pub struct FitPixels<'a> {
    pub image: &'a [f64],
    pub zodi: &'a [f64],
    pub variance: Option<&'a [f64]>,
    pub flags: Option<&'a [u32]>,
}

thread_local! {
    /// Each thread's scratch for the selected products (kept between calls, up to
    /// [`MAX_SCRATCH`] elements: a fresh allocation of a sample's size costs page faults).
    static SCRATCH: std::cell::RefCell<Vec<[f64; 2]>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Scratch elements a thread keeps after a fit (a full frame's sample is ~65k pixels).
const MAX_SCRATCH: usize = 1 << 18;
/// Pixels judged at once by [`select`].
const BLOCK: usize = 256;

/// `(background pixels, sum(w * I * Z), sum(w * Z * Z))` over the pixels whose
/// image, zodi and variance are finite, variance > 0, zodi != 0 and flags carry
/// none of `reject`'s bits (see the module documentation).
pub fn fit_sums(px: &FitPixels<'_>, reject: u32) -> Result<(usize, f64, f64), String> {
    let n = px.image.len();
    if px.zodi.len() != n || px.variance.is_some_and(|v| v.len() != n) || px.flags.is_some_and(|f| f.len() != n) {
        return Err(format!("zodi fit: image, zodi, variance and flags must have the same size ({n} image pixels)"));
    }
    SCRATCH.with_borrow_mut(|terms| {
        if terms.len() < n {
            terms.resize(n, [0.0; 2]);
        }
        let kept = match (px.variance.is_some(), px.flags.is_some()) {
            (true, true) => select_widest::<true, true>(px, reject, terms),
            (true, false) => select_widest::<true, false>(px, reject, terms),
            (false, true) => select_widest::<false, true>(px, reject, terms),
            (false, false) => select_widest::<false, false>(px, reject, terms),
        };
        let sums = pairwise(&terms[..kept]);
        if terms.capacity() > MAX_SCRATCH {
            *terms = Vec::new();
        }
        Ok((kept, 0.0 + sums[0], 0.0 + sums[1]))
    })
}

/// [`select`] built for the widest instruction set this CPU runs (the same IEEE operations,
/// so the same bits, in every build).
fn select_widest<const VAR: bool, const FLAGS: bool>(px: &FitPixels<'_>, reject: u32, terms: &mut [[f64; 2]]) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU runs AVX2 (checked just above).
            return unsafe { select_avx2::<VAR, FLAGS>(px, reject, terms) };
        }
    }
    select::<VAR, FLAGS>(px, reject, terms)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn select_avx2<const VAR: bool, const FLAGS: bool>(px: &FitPixels<'_>, reject: u32, terms: &mut [[f64; 2]]) -> usize {
    select::<VAR, FLAGS>(px, reject, terms)
}

/// Writes `[w * I * Z, w * Z * Z]` of the background pixels to `terms` in pixel order and
/// returns how many there are. In blocks: the products and verdicts of a block first (a loop
/// without branches, which the compiler vectorises), then the block's background pixels moved
/// to the next free places. `VAR`/`FLAGS`: whether the variance/flags are there (tested).
#[inline(always)]
fn select<const VAR: bool, const FLAGS: bool>(px: &FitPixels<'_>, reject: u32, terms: &mut [[f64; 2]]) -> usize {
    let (image, zodi) = (px.image, px.zodi);
    let (variance, flags) = (px.variance.unwrap_or(&[]), px.flags.unwrap_or(&[]));
    let mut kept = 0;
    let (mut prod, mut ok) = ([[0.0; 2]; BLOCK], [false; BLOCK]);
    for start in (0..image.len()).step_by(BLOCK) {
        let len = BLOCK.min(image.len() - start);
        let (im, zo) = (&image[start..start + len], &zodi[start..start + len]);
        let va = if VAR { &variance[start..start + len] } else { &[][..] };
        let fl = if FLAGS { &flags[start..start + len] } else { &[][..] };
        for j in 0..len {
            let (i, z) = (im[j], zo[j]);
            let (w, weight_ok) = if VAR { (1.0 / va[j], va[j].is_finite() & (va[j] > 0.0)) } else { (1.0, true) };
            let flags_ok = !FLAGS || fl[j] & reject == 0;
            prod[j] = [w * i * z, w * z * z];
            ok[j] = i.is_finite() & z.is_finite() & (z != 0.0) & weight_ok & flags_ok;
        }
        for j in 0..len {
            terms[kept] = prod[j];
            kept += usize::from(ok[j]);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_sums_are_sequential_from_zero() {
        assert_eq!(numpy_sum(&[]), 0.0);
        assert_eq!(numpy_sum(&[1e16, 1.0, -1e16]), ((0.0 + 1e16) + 1.0) + -1e16);
        assert!(numpy_sum(&[-0.0]).is_sign_positive());
    }

    #[test]
    fn blocks_use_eight_partial_sums() {
        let a: Vec<f64> = (0..19).map(|k| 1.0 / (k as f64 + 1.0)).collect();
        let mut r = [0.0; 8];
        r.copy_from_slice(&a[..8]);
        for (j, acc) in r.iter_mut().enumerate() {
            *acc += a[8 + j];
        }
        let expected = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7])) + a[16] + a[17] + a[18];
        assert_eq!(numpy_sum(&a), expected);
    }

    #[test]
    fn pixels_failing_a_test_are_left_out() {
        let image = [1.0, f64::NAN, 2.0, 3.0, 4.0, 5.0];
        let zodi = [1.0, 1.0, 0.0, 1.0, 1.0, 2.0];
        let var = [1.0, 1.0, 1.0, -1.0, 1.0, 4.0];
        let flags = [0, 0, 0, 0, 8, 0];
        let px = FitPixels { image: &image, zodi: &zodi, variance: Some(&var), flags: Some(&flags) };
        let (n, num, den) = fit_sums(&px, 8).unwrap();
        assert_eq!(n, 2);
        assert_eq!(num, 0.0 + (1.0 + 0.25 * 5.0 * 2.0));
        assert_eq!(den, 0.0 + (1.0 + 0.25 * 2.0 * 2.0));
        let short = FitPixels { image: &image[..2], zodi: &zodi, variance: None, flags: None };
        assert!(fit_sums(&short, 0).is_err());
    }
}
