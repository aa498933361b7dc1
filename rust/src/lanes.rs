//! Droplet footprints of several neighbouring input pixels at once.
//!
//! The same arithmetic as the scalar path ([`classify_quad`],
//! [`crate::engine::make_droplet`], [`quad_footprint_2x2`],
//! [`bilinear_footprint_2x2`]), written lane by lane over [`LANES`] pixels
//! with selects instead of branches so that the compiler maps each step to
//! one SIMD instruction. IEEE operations are the same in every lane and
//! nothing is fused or reassociated, so every lane holds exactly the bits the
//! scalar functions give (tested below): results do not depend on the SIMD
//! width the machine offers.
//!
//! [`classify_quad`]: crate::geometry::classify_quad
//! [`quad_footprint_2x2`]: crate::geometry::quad_footprint_2x2
//! [`bilinear_footprint_2x2`]: crate::geometry::bilinear_footprint_2x2

use crate::geometry::{ffloor, fmax, fmin, twice_negative_integral};

/// Pixels per batch.
pub const LANES: usize = 4;

/// One value per lane.
pub type Lane = [f64; LANES];

/// What a lane's droplet needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Nothing: degenerate or folded quadrilateral, zero area, or not finite.
    Skip,
    /// The footprint lies within the 2 x 2 output pixels from `(r0, c0)`.
    Small,
    /// Larger than 2 x 2 output pixels (or absurdly far away): the general path.
    Large,
}

/// Footprints of [`LANES`] droplets: for a `Small` lane `l`, `f[2a + b][l]`
/// is the fraction of output pixel `(r0[l] + a, c0[l] + b)`.
#[derive(Clone, Copy, Debug)]
pub struct Footprints {
    pub shape: [Shape; LANES],
    pub r0: Lane,
    pub c0: Lane,
    pub f: [Lane; 4],
}

#[inline(always)]
fn lane(f: impl FnMut(usize) -> f64) -> Lane {
    std::array::from_fn(f)
}

/// Footprints of the droplets of the quadrilaterals `(qx[k][l], qy[k][l])`,
/// corners `k` in order, one pixel per lane `l`: square droplets shrunk by
/// `xy_shrink` about the mean corner (`square`), else bilinear points at the
/// mean corner.
#[inline(always)]
pub fn footprints(qx: &[Lane; 4], qy: &[Lane; 4], xy_shrink: f64, square: bool) -> Footprints {
    // classify_quad
    let sum = lane(|l| qx[0][l] + qx[1][l] + qx[2][l] + qx[3][l] + qy[0][l] + qy[1][l] + qy[2][l] + qy[3][l]);
    let area2 = lane(|l| (qx[0][l] - qx[2][l]) * (qy[1][l] - qy[3][l]) - (qx[1][l] - qx[3][l]) * (qy[0][l] - qy[2][l]));
    let scale = lane(|l| (qx[2][l] - qx[0][l]).abs() + (qy[2][l] - qy[0][l]).abs() + (qx[3][l] - qx[1][l]).abs() + (qy[3][l] - qy[1][l]).abs());
    let mut opposite = [0.0; LANES];
    for i in 0..4 {
        let (a, b) = ((i + 3) % 4, (i + 1) % 4);
        for l in 0..LANES {
            let cross = (qx[i][l] - qx[a][l]) * (qy[b][l] - qy[i][l]) - (qy[i][l] - qy[a][l]) * (qx[b][l] - qx[i][l]);
            opposite[l] += if cross * area2[l] < 0.0 { 1.0 } else { 0.0 };
        }
    }
    let simple: [bool; LANES] = std::array::from_fn(|l| sum[l].is_finite() & (area2[l].abs() > 1e-12 * scale[l] * scale[l]) & (opposite[l] < 2.0));
    // make_droplet
    let mx = lane(|l| 0.25 * (qx[0][l] + qx[1][l] + qx[2][l] + qx[3][l]));
    let my = lane(|l| 0.25 * (qy[0][l] + qy[1][l] + qy[2][l] + qy[3][l]));
    if !square {
        // bilinear_footprint_2x2 of the centre
        let (xf, yf) = (lane(|l| ffloor(mx[l])), lane(|l| ffloor(my[l])));
        let (fx, fy) = (lane(|l| mx[l] - xf[l]), lane(|l| my[l] - yf[l]));
        let (gx, gy) = (lane(|l| 1.0 - fx[l]), lane(|l| 1.0 - fy[l]));
        let shape = std::array::from_fn(|l| if simple[l] & (mx[l].abs() < 1e15) & (my[l].abs() < 1e15) { Shape::Small } else { Shape::Skip });
        let f = [lane(|l| gy[l] * gx[l]), lane(|l| gy[l] * fx[l]), lane(|l| fy[l] * gx[l]), lane(|l| fy[l] * fx[l])];
        return Footprints { shape, r0: yf, c0: xf, f };
    }
    let sx: [Lane; 4] = std::array::from_fn(|k| lane(|l| mx[l] + xy_shrink * (qx[k][l] - mx[l])));
    let sy: [Lane; 4] = std::array::from_fn(|k| lane(|l| my[l] + xy_shrink * (qy[k][l] - my[l])));
    let area = lane(|l| (0.5 * ((sx[0][l] - sx[2][l]) * (sy[1][l] - sy[3][l]) - (sx[1][l] - sx[3][l]) * (sy[0][l] - sy[2][l]))).abs());
    // pixel_span
    let x0 = lane(|l| fmin(fmin(sx[0][l], sx[1][l]), fmin(sx[2][l], sx[3][l])));
    let x1 = lane(|l| fmax(fmax(sx[0][l], sx[1][l]), fmax(sx[2][l], sx[3][l])));
    let y0 = lane(|l| fmin(fmin(sy[0][l], sy[1][l]), fmin(sy[2][l], sy[3][l])));
    let y1 = lane(|l| fmax(fmax(sy[0][l], sy[1][l]), fmax(sy[2][l], sy[3][l])));
    let (cr0, cr1) = (lane(|l| ffloor(y0[l] + 0.5)), lane(|l| ffloor(y1[l] + 0.5)));
    let (cc0, cc1) = (lane(|l| ffloor(x0[l] + 0.5)), lane(|l| ffloor(x1[l] + 0.5)));
    let shape = std::array::from_fn(|l| {
        let in_range = (x0[l] > -1e15) & (x1[l] < 1e15) & (y0[l] > -1e15) & (y1[l] < 1e15);
        let small = (cr1[l] - cr0[l] <= 1.0) & (cc1[l] - cc0[l] <= 1.0);
        match (simple[l] & (area[l] > 0.0), in_range & small) {
            (false, _) => Shape::Skip,
            (true, true) => Shape::Small,
            (true, false) => Shape::Large,
        }
    });
    // fractions_from / fractions_2x2, edge k from corner k to corner k + 1
    let u: [Lane; 4] = std::array::from_fn(|k| lane(|l| sx[k][l] - (cc0[l] + 0.5)));
    let v: [Lane; 4] = std::array::from_fn(|k| lane(|l| sy[k][l] - (cr0[l] + 0.5)));
    let mut tot = [[0.0; LANES]; 4];
    let mut lef = [[0.0; LANES]; 4];
    let mut bel = [[0.0; LANES]; 4];
    let mut qua = [[0.0; LANES]; 4];
    for k in 0..4 {
        let n = (k + 1) & 3;
        let (u1, v1, u2, v2) = (&u[k], &v[k], &u[n], &v[n]);
        let du = lane(|l| u2[l] - u1[l]);
        let dv = lane(|l| v2[l] - v1[l]);
        // slopes(du, dv)
        let prod = lane(|l| du[l] * dv[l]);
        let r = lane(|l| 1.0 / if prod[l] != 0.0 { prod[l] } else { 1.0 });
        let slope = lane(|l| if prod[l] != 0.0 { dv[l] * dv[l] * r[l] } else { 0.0 });
        let inv_slope = lane(|l| if prod[l] != 0.0 { du[l] * du[l] * r[l] } else { 0.0 });
        tot[k] = lane(|l| du[l] * (v1[l] + v2[l]));
        bel[k] = lane(|l| twice_negative_integral(u1[l], u2[l], v1[l], v2[l], inv_slope[l]));
        let a1 = lane(|l| fmin(u1[l], 0.0));
        let a2 = lane(|l| fmin(u2[l], 0.0));
        let w1 = lane(|l| if u1[l] > 0.0 { v1[l] - u1[l] * slope[l] } else { v1[l] });
        let w2 = lane(|l| if u2[l] > 0.0 { v2[l] - u2[l] * slope[l] } else { v2[l] });
        lef[k] = lane(|l| (a2[l] - a1[l]) * (w1[l] + w2[l]));
        qua[k] = lane(|l| twice_negative_integral(a1[l], a2[l], w1[l], w2[l], inv_slope[l]));
    }
    let sum4 = |a: &[Lane; 4], l: usize| (a[0][l] + a[1][l]) + (a[2][l] + a[3][l]);
    let inv = lane(|l| 1.0 / sum4(&tot, l));
    let left = lane(|l| sum4(&lef, l) * inv[l]);
    let below = lane(|l| sum4(&bel, l) * inv[l]);
    let both = lane(|l| sum4(&qua, l) * inv[l]);
    let one = std::array::from_fn::<bool, LANES, _>(|l| (cr1[l] == cr0[l]) & (cc1[l] == cc0[l]));
    let f = [
        lane(|l| if one[l] { 1.0 } else { both[l] }),
        lane(|l| if one[l] { 0.0 } else { below[l] - both[l] }),
        lane(|l| if one[l] { 0.0 } else { left[l] - both[l] }),
        lane(|l| if one[l] { 0.0 } else { 1.0 - left[l] - below[l] + both[l] }),
    ];
    Footprints { shape, r0: cr0, c0: cc0, f }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{make_droplet, Droplet, Kernel};
    use crate::geometry::{bilinear_footprint_2x2, quad_footprint_2x2};
    use proptest::prelude::*;

    /// The scalar path's answer for one quadrilateral, in the lanes' terms.
    fn scalar(qx: &[f64; 4], qy: &[f64; 4], shrink: f64, kernel: Kernel) -> (Shape, Option<(isize, isize, [f64; 4])>) {
        let Some(d) = make_droplet(qx, qy, shrink, kernel) else { return (Shape::Skip, None) };
        let small = match d {
            Droplet::Square { qx, qy, .. } => quad_footprint_2x2(&qx, &qy),
            Droplet::Point { x, y } => bilinear_footprint_2x2(x, y),
        };
        match small {
            Some((r0, c0, f)) => (Shape::Small, Some((r0, c0, [f[0][0], f[0][1], f[1][0], f[1][1]]))),
            None if kernel == Kernel::Square => (Shape::Large, None),
            None => (Shape::Skip, None),
        }
    }

    fn check(quads: &[([f64; 4], [f64; 4])], shrink: f64, kernel: Kernel) {
        let mut qx = [[0.0; LANES]; 4];
        let mut qy = [[0.0; LANES]; 4];
        for (l, (x, y)) in quads.iter().enumerate() {
            for k in 0..4 {
                qx[k][l] = x[k];
                qy[k][l] = y[k];
            }
        }
        let fp = footprints(&qx, &qy, shrink, kernel == Kernel::Square);
        for (l, (x, y)) in quads.iter().enumerate() {
            let (shape, cells) = scalar(x, y, shrink, kernel);
            assert_eq!(fp.shape[l], shape, "lane {l}: {x:?} {y:?}");
            if let Some((r0, c0, f)) = cells {
                assert_eq!((fp.r0[l] as isize, fp.c0[l] as isize), (r0, c0), "lane {l}");
                for (k, (lanes, want)) in fp.f.iter().zip(f).enumerate() {
                    assert_eq!(lanes[l].to_bits(), want.to_bits(), "lane {l} cell {k}: {} vs {want}", lanes[l]);
                }
            }
        }
    }

    fn quad(cx: f64, cy: f64, theta: f64, sx: f64, sy: f64, skew: f64) -> ([f64; 4], [f64; 4]) {
        let (c, s) = (theta.cos(), theta.sin());
        let corners = [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)];
        let mut x = [0.0; 4];
        let mut y = [0.0; 4];
        for (k, &(u, v)) in corners.iter().enumerate() {
            let (u, v) = (sx * u + skew * v, sy * v);
            x[k] = cx + c * u - s * v;
            y[k] = cy + s * u + c * v;
        }
        (x, y)
    }

    #[test]
    fn special_quadrilaterals_match_the_scalar_path() {
        let nan = f64::NAN;
        let square = quad(3.0, 4.0, 0.0, 1.0, 1.0, 0.0);
        let quads = [
            square,
            ([0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]), // folded (bow tie)
            ([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]), // collinear
            ([0.0, 1.0, nan, 0.0], [0.0, 0.0, 1.0, 1.0]), // not finite
            ([1e300, 1e300 + 1e290, 1e300, 1e300 - 1e290], [0.0, 1e290, 2e290, 1e290]),
            quad(2.0, 2.0, 0.4, 3.5, 2.5, 0.2), // large
            quad(0.5, 0.5, 0.0, 1.0, 1.0, 0.0), // corners on pixel edges
            ([0.2, 0.8, 0.2, 0.8], [0.2, 0.3, 0.7, 0.9]),
        ];
        for kernel in [Kernel::Square, Kernel::Bilinear] {
            for shrink in [1.0, 0.8, 0.3] {
                for chunk in quads.chunks(LANES) {
                    check(chunk, shrink, kernel);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn lanes_equal_the_scalar_path(cs in prop::collection::vec((-3.0f64..300.0, -3.0f64..300.0, 0.0f64..6.3, 0.05f64..3.0, 0.05f64..3.0, -1.0f64..1.0), LANES),
                                       shrink in 0.1f64..=1.0, bilinear in any::<bool>()) {
            let quads: Vec<_> = cs.iter().map(|&(x, y, t, a, b, k)| quad(x, y, t, a, b, k)).collect();
            check(&quads, shrink, if bilinear { Kernel::Bilinear } else { Kernel::Square });
        }
    }
}
