//! Dense corner maps from a coarse grid by separable cubic (Catmull-Rom)
//! interpolation.
//!
//! The WCS transform (SIP distortion + output projection) is smooth on the
//! scale of an input pixel, so Python evaluates it exactly with astropy on a
//! coarse grid of corners and this module fills in the rest.
//!
//! Coarse node `(a, b)` sits at dense index `((a - 1) * step, (b - 1) * step)`:
//! there is one guard node before the first dense point and the grid must reach
//! at least one node beyond the last dense point plus one guard node.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

/// Catmull-Rom weights for nodes -1, 0, 1, 2 at fractional position `t`.
#[inline(always)]
fn weights(t: f64) -> [f64; 4] {
    let t2 = t * t;
    let t3 = t2 * t;
    [0.5 * (-t3 + 2.0 * t2 - t), 0.5 * (3.0 * t3 - 5.0 * t2 + 2.0), 0.5 * (-3.0 * t3 + 4.0 * t2 + t), 0.5 * (t3 - t2)]
}

/// One interpolated point: `w0 * p0 + w1 * p1 + w2 * p2 + w3 * p3`, left to right.
#[inline(always)]
fn blend(w: [f64; 4], p0: f64, p1: f64, p2: f64, p3: f64) -> f64 {
    w[0] * p0 + w[1] * p1 + w[2] * p2 + w[3] * p3
}

/// For each dense index `0..n`, the first of the four coarse nodes and the
/// weights. `k` is the number of coarse nodes along this axis.
fn stencil(n: usize, step: usize, k: usize) -> Result<Vec<(usize, [f64; 4])>, String> {
    if k < 4 {
        return Err(format!("coarse grid needs at least 4 nodes per axis, got {k}"));
    }
    let needed = (n.saturating_sub(1)) as f64 / step as f64 + 3.0;
    if (k as f64) < needed {
        return Err(format!("coarse grid of {k} nodes at step {step} does not cover {n} dense points (needs {})", needed.ceil()));
    }
    Ok((0..n)
        .map(|j| {
            let u = j as f64 / step as f64 + 1.0;
            let a = (u.floor() as usize).min(k - 3);
            let t = u - a as f64;
            (a - 1, weights(t))
        })
        .collect())
}

/// Dense grids of fewer points than this are interpolated on the calling thread.
pub const PARALLEL_MIN_POINTS: usize = 1 << 20;

/// Interpolates the coarse grid `coarse` (nodes as described in the module
/// docs) onto a dense `(ny, nx)` grid.
pub fn densify(coarse: ArrayView2<f64>, step: usize, ny: usize, nx: usize) -> Result<Array2<f64>, String> {
    densify_on(coarse, step, ny, nx, ny * nx >= PARALLEL_MIN_POINTS)
}

/// [`densify`] on the pool's threads (`parallel`) or on the calling thread: the same values
/// (on the calling thread built for AVX2 when the CPU runs it: the same IEEE operations, no
/// fused multiply-add, so the same bits in fewer instructions).
fn densify_on(coarse: ArrayView2<f64>, step: usize, ny: usize, nx: usize, parallel: bool) -> Result<Array2<f64>, String> {
    #[cfg(target_arch = "x86_64")]
    {
        if !parallel && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU runs AVX2 (checked just above).
            return unsafe { densify_avx2(coarse, step, ny, nx) };
        }
    }
    densify_any(coarse, step, ny, nx, parallel)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn densify_avx2(coarse: ArrayView2<f64>, step: usize, ny: usize, nx: usize) -> Result<Array2<f64>, String> {
    densify_any(coarse, step, ny, nx, false)
}

#[inline(always)]
fn densify_any(coarse: ArrayView2<f64>, step: usize, ny: usize, nx: usize, parallel: bool) -> Result<Array2<f64>, String> {
    if step == 0 {
        return Err("step must be >= 1".into());
    }
    let (ky, kx) = coarse.dim();
    let sy = stencil(ny, step, ky)?;
    let sx = stencil(nx, step, kx)?;
    // Small grids stay on the calling thread: waking the pool costs more than the work (and the
    // frame reader calls this beside the kernel). The values are the same either way: each point
    // is the same expression, `w0 * p0 + w1 * p1 + w2 * p2 + w3 * p3` left to right (no fused
    // multiply-add), on slices so that it vectorizes. Nothing is zero-filled first.
    // Pass 1: along x for every coarse row.
    let coarse_rows: Vec<Vec<f64>> = (0..ky).map(|a| coarse.row(a).to_vec()).collect();
    let along_x = |src: &[f64], out: &mut [f64]| {
        for (o, &(b0, w)) in out.iter_mut().zip(sx.iter()) {
            *o = blend(w, src[b0], src[b0 + 1], src[b0 + 2], src[b0 + 3]);
        }
    };
    let mut rows = vec![0.0f64; ky * nx];
    if parallel {
        rows.par_chunks_mut(nx.max(1)).zip(coarse_rows.par_iter()).for_each(|(out, src)| along_x(src, out));
    } else {
        rows.chunks_mut(nx.max(1)).zip(coarse_rows.iter()).for_each(|(out, src)| along_x(src, out));
    }
    // Pass 2: along y.
    let row = |a: usize| &rows[a * nx..(a + 1) * nx];
    let along_y = |j: usize, out: &mut [f64]| {
        let (a0, w) = sy[j];
        let (r0, r1, r2, r3) = (row(a0), row(a0 + 1), row(a0 + 2), row(a0 + 3));
        for ((((o, &p0), &p1), &p2), &p3) in out.iter_mut().zip(r0).zip(r1).zip(r2).zip(r3) {
            *o = blend(w, p0, p1, p2, p3);
        }
    };
    let dense = if parallel {
        let mut dense = vec![0.0f64; ny * nx];
        dense.par_chunks_mut(nx.max(1)).enumerate().for_each(|(j, out)| along_y(j, out));
        dense
    } else {
        let mut dense: Vec<f64> = Vec::with_capacity(ny * nx);
        for &(a0, w) in &sy {
            let (r0, r1, r2, r3) = (row(a0), row(a0 + 1), row(a0 + 2), row(a0 + 3));
            dense.extend(r0.iter().zip(r1).zip(r2).zip(r3).map(|(((&p0, &p1), &p2), &p3)| blend(w, p0, p1, p2, p3)));
        }
        dense
    };
    Array2::from_shape_vec((ny, nx), dense).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calling_thread_and_pool_give_the_same_bits() {
        let coarse = coarse_of(|x, y| (0.001 * x * y).sin() * 50.0 + 0.3 * x - 0.2 * y, 16, 14, 12);
        let a = densify_on(coarse.view(), 16, 161, 130, false).unwrap();
        let b = densify_on(coarse.view(), 16, 161, 130, true).unwrap();
        let c = densify_any(coarse.view(), 16, 161, 130, false).unwrap(); // the baseline build
        assert!(a.iter().zip(b.iter()).all(|(u, v)| u.to_bits() == v.to_bits()));
        assert!(a.iter().zip(c.iter()).all(|(u, v)| u.to_bits() == v.to_bits()));
    }

    fn coarse_of(f: impl Fn(f64, f64) -> f64, step: usize, ky: usize, kx: usize) -> Array2<f64> {
        Array2::from_shape_fn((ky, kx), |(a, b)| f(((b as f64) - 1.0) * step as f64, ((a as f64) - 1.0) * step as f64))
    }

    #[test]
    fn reproduces_nodes_and_cubics_exactly_enough() {
        // Catmull-Rom reproduces polynomials up to degree 2 exactly.
        let f = |x: f64, y: f64| 3.0 + 0.5 * x - 0.25 * y + 1e-3 * x * y + 2e-4 * x * x - 1e-4 * y * y;
        let step = 8;
        let (ny, nx) = (37, 50);
        let ky = (ny - 1) / step + 4;
        let kx = (nx - 1) / step + 4;
        let c = coarse_of(f, step, ky, kx);
        let d = densify(c.view(), step, ny, nx).unwrap();
        for j in 0..ny {
            for i in 0..nx {
                let e = f(i as f64, j as f64);
                assert!((d[[j, i]] - e).abs() < 1e-10, "{j},{i}: {} vs {e}", d[[j, i]]);
            }
        }
    }

    #[test]
    fn smooth_function_error_is_small() {
        // Curvature well beyond a real WCS: 100-pixel swings over ~2000 pixels plus cubic terms.
        let f = |x: f64, y: f64| (x / 2000.0).sin() * 100.0 + (y / 1500.0).cos() * 80.0 + 1e-9 * x * x * x + 3e-9 * x * y * y;
        let step = 16;
        let (ny, nx) = (301, 257);
        let c = coarse_of(f, step, (ny - 1) / step + 4, (nx - 1) / step + 4);
        let d = densify(c.view(), step, ny, nx).unwrap();
        let mut worst: f64 = 0.0;
        for j in 0..ny {
            for i in 0..nx {
                worst = worst.max((d[[j, i]] - f(i as f64, j as f64)).abs());
            }
        }
        assert!(worst < 1e-5, "worst error {worst}");
    }

    #[test]
    fn rejects_a_grid_that_is_too_small() {
        let c = Array2::<f64>::zeros((4, 4));
        assert!(densify(c.view(), 8, 100, 10).is_err());
        assert!(densify(c.view(), 0, 1, 1).is_err());
        assert!(densify(Array2::<f64>::zeros((3, 5)).view(), 1, 1, 1).is_err());
    }
}
