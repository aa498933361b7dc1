//! Droplet footprints of several neighbouring input pixels at once (SIMD lanes).
//!
//! The same arithmetic as the scalar path ([`classify_quad`],
//! [`crate::droplet::make_droplet`], [`quad_footprint_2x2`],
//! [`bilinear_footprint_2x2`]), written lane by lane over [`LANES`] pixels
//! with selects instead of branches so that the compiler maps each step to
//! one SIMD instruction. IEEE operations are the same in every lane and
//! nothing is fused or reassociated, so every lane holds exactly the bits the
//! scalar functions give (tested below): results do not depend on the SIMD
//! width the machine offers. This module and [`crate::geometry`] must stay
//! bit-identical to each other: a change to the arithmetic of one must be
//! made in the other.
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
    /// Three output pixels along one axis and at most two along the other:
    /// see [`footprints_medium`].
    Medium,
    /// Larger (or absurdly far away): the general path.
    Large,
}

/// Footprints of [`LANES`] droplets: for a `Small` lane `l`, `f[2a + b][l]`
/// is the fraction of output pixel `(r0[l] + a, c0[l] + b)`. The span is
/// rows `r0 ..= r1`, columns `c0 ..= c1`.
#[derive(Clone, Copy, Debug)]
pub struct Footprints {
    /// The lanes' [`Shape`]s as numbers (see [`Footprints::shape`]): computed
    /// with vector selects instead of a branch per lane.
    kind: Lane,
    pub r0: Lane,
    pub c0: Lane,
    pub r1: Lane,
    pub c1: Lane,
    pub f: [Lane; 4],
    /// The shrunk corners and the integrals at the first inner corner
    /// (`1 / total`, left, below, both), for [`footprints_medium`].
    sx: [Lane; 4],
    sy: [Lane; 4],
    first: [Lane; 4],
}

/// Codes of [`Shape`] in [`Footprints::kind`].
const SKIP: f64 = 0.0;
const SMALL: f64 = 1.0;
const MEDIUM: f64 = 2.0;
const LARGE: f64 = 3.0;

impl Footprints {
    /// What lane `l`'s droplet needs.
    #[inline(always)]
    pub fn shape(&self, l: usize) -> Shape {
        let k = self.kind[l];
        if k == SMALL {
            Shape::Small
        } else if k == MEDIUM {
            Shape::Medium
        } else if k == SKIP {
            Shape::Skip
        } else {
            Shape::Large
        }
    }

    /// Whether any lane is [`Shape::Medium`].
    #[inline(always)]
    pub fn any_medium(&self) -> bool {
        self.kind.iter().fold(false, |a, &k| a | (k == MEDIUM))
    }
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
        let kind = lane(|l| if simple[l] & (mx[l].abs() < 1e15) & (my[l].abs() < 1e15) { SMALL } else { SKIP });
        let f = [lane(|l| gy[l] * gx[l]), lane(|l| gy[l] * fx[l]), lane(|l| fy[l] * gx[l]), lane(|l| fy[l] * fx[l])];
        let (r1, c1) = (lane(|l| yf[l] + 1.0), lane(|l| xf[l] + 1.0));
        return Footprints { kind, r0: yf, c0: xf, r1, c1, f, sx: *qx, sy: *qy, first: [[0.0; LANES]; 4] };
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
    let kind = lane(|l| {
        let in_range = (x0[l] > -1e15) & (x1[l] < 1e15) & (y0[l] > -1e15) & (y1[l] < 1e15);
        let (rows, cols) = (cr1[l] - cr0[l], cc1[l] - cc0[l]);
        let small = in_range & (rows <= 1.0) & (cols <= 1.0);
        let medium = in_range & (((rows == 2.0) & (cols <= 1.0)) | ((rows <= 1.0) & (cols == 2.0)));
        // Small and medium exclude each other: SMALL, MEDIUM or LARGE without branches.
        let one = |c: bool| if c { 1.0 } else { 0.0 };
        one(simple[l] & (area[l] > 0.0)) * (LARGE - (LARGE - SMALL) * one(small) - (LARGE - MEDIUM) * one(medium))
    });
    // fractions_from / fractions_2x2
    let [tot, lef, bel, qua] = corner_integrals(&sx, &sy, &cc0, &cr0, &[0.5; LANES], &[0.5; LANES]);
    let inv = lane(|l| 1.0 / tot[l]);
    let left = lane(|l| lef[l] * inv[l]);
    let below = lane(|l| bel[l] * inv[l]);
    let both = lane(|l| qua[l] * inv[l]);
    let one = std::array::from_fn::<bool, LANES, _>(|l| (cr1[l] == cr0[l]) & (cc1[l] == cc0[l]));
    let f = [
        lane(|l| if one[l] { 1.0 } else { both[l] }),
        lane(|l| if one[l] { 0.0 } else { below[l] - both[l] }),
        lane(|l| if one[l] { 0.0 } else { left[l] - both[l] }),
        lane(|l| if one[l] { 0.0 } else { 1.0 - left[l] - below[l] + both[l] }),
    ];
    Footprints { kind, r0: cr0, c0: cc0, r1: cr1, c1: cc1, f, sx, sy, first: [inv, lef, bel, qua] }
}

/// The edge integrals of `geometry::corner_integrals` lane by lane, at the
/// corner `x = c0 + da`, `y = r0 + db` of the quadrilaterals `(sx, sy)`: twice
/// the areas of the whole and of the parts left of, below, and left of and
/// below the corner.
#[inline(always)]
fn corner_integrals(sx: &[Lane; 4], sy: &[Lane; 4], c0: &Lane, r0: &Lane, da: &Lane, db: &Lane) -> [Lane; 4] {
    // Edge k runs from corner k to corner k + 1.
    let u: [Lane; 4] = std::array::from_fn(|k| lane(|l| sx[k][l] - (c0[l] + da[l])));
    let v: [Lane; 4] = std::array::from_fn(|k| lane(|l| sy[k][l] - (r0[l] + db[l])));
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
    [lane(|l| sum4(&tot, l)), lane(|l| sum4(&lef, l)), lane(|l| sum4(&bel, l)), lane(|l| sum4(&qua, l))]
}

/// The fractions of `Medium` droplets (three output pixels along one axis, at
/// most two along the other) in the 3 x 3 output pixels from `(r0, c0)`:
/// `f[a][b][l]` for pixel `(r0 + a, c0 + b)`, zero beyond the lane's span.
/// The scalar general path's arithmetic (`geometry::fill_footprint`): the
/// integrals at the span's two inner corners along the long axis, each
/// evaluated like the single corner of the 2 x 2 case, then the cumulative
/// fractions differenced; a `Medium` lane holds the scalar path's bits.
#[inline(always)]
pub fn footprints_medium(fp: &Footprints) -> [[Lane; 3]; 3] {
    let rows = lane(|l| fp.r1[l] - fp.r0[l]); // inner row corners (nb)
    let cols = lane(|l| fp.c1[l] - fp.c0[l]); // inner column corners (na)
    let wide = std::array::from_fn::<bool, LANES, _>(|l| cols[l] == 2.0);
    // The second inner corner: (1, 0) for three columns, (0, 1) for three rows.
    let da = lane(|l| if wide[l] { 1.5 } else { 0.5 });
    let db = lane(|l| if wide[l] { 0.5 } else { 1.5 });
    let [_, lef1, bel1, qua1] = corner_integrals(&fp.sx, &fp.sy, &fp.c0, &fp.r0, &da, &db);
    let [inv, lef0, bel0, qua0] = fp.first;
    // left[a] is needed for a < na (a <= 1), below[b] for b < nb, quadrant
    // [a][b] for a < na and b < nb: (0, 0) and the second corner.
    let left = [lef0, lef1];
    let below = [bel0, bel1];
    let quadrant = |a: usize, b: usize| if a + b == 0 { &qua0 } else { &qua1 };
    // g[b][a]: cumulative fraction below row corner b - 1 and left of column
    // corner a - 1 (index 0: nothing; past the last inner corner: everything).
    let mut g = [[[0.0; LANES]; 4]; 4];
    for b in 0..3 {
        for a in 0..3 {
            // Past the last row corner (`all_b`) and / or column corner (`all_a`);
            // selects, not branches.
            g[b + 1][a + 1] = lane(|l| {
                let (all_b, all_a) = (b as f64 >= rows[l], a as f64 >= cols[l]);
                let below_only = if all_b { 1.0 } else { below[b.min(1)][l] * inv[l] };
                let with_left = if all_b { left[a.min(1)][l] * inv[l] } else { quadrant(a, b)[l] * inv[l] };
                if all_a {
                    below_only
                } else {
                    with_left
                }
            });
        }
    }
    // Plain loops, not nested `array::from_fn`: LLVM may leave a generic closure
    // call out of line, and `fp` then lives in memory (13% more instructions
    // per frame when it did).
    let mut f = [[[0.0; LANES]; 3]; 3];
    for (b, fb) in f.iter_mut().enumerate() {
        for (a, fa) in fb.iter_mut().enumerate() {
            *fa = lane(|l| {
                let f = g[b + 1][a + 1][l] - g[b + 1][a][l] - g[b][a + 1][l] + g[b][a][l];
                if (b as f64 <= rows[l]) & (a as f64 <= cols[l]) {
                    f
                } else {
                    0.0
                }
            });
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::droplet::{make_droplet, Droplet};
    use crate::geometry::{bilinear_footprint_2x2, quad_footprint, quad_footprint_2x2};
    use crate::params::Kernel;
    use proptest::prelude::*;

    /// Shape and, for small and medium droplets, first output pixel and 3 x 3 fractions.
    type Answer = (Shape, Option<(isize, isize, [[f64; 3]; 3])>);

    /// The scalar path's answer for one quadrilateral, in the lanes' terms.
    fn scalar(qx: &[f64; 4], qy: &[f64; 4], shrink: f64, kernel: Kernel) -> Answer {
        let Some(d) = make_droplet(qx, qy, shrink, kernel) else { return (Shape::Skip, None) };
        let small = match d {
            Droplet::Square { qx, qy, .. } => quad_footprint_2x2(&qx, &qy),
            Droplet::Point { x, y } => bilinear_footprint_2x2(x, y),
        };
        if let Some((r0, c0, f)) = small {
            return (Shape::Small, Some((r0, c0, [[f[0][0], f[0][1], 0.0], [f[1][0], f[1][1], 0.0], [0.0; 3]])));
        }
        let Droplet::Square { qx, qy, .. } = d else { return (Shape::Skip, None) };
        match quad_footprint(&qx, &qy) {
            Some((r0, c0, nr, nc, f)) if (nr == 3 && nc <= 2) || (nr <= 2 && nc == 3) => {
                (Shape::Medium, Some((r0, c0, std::array::from_fn(|a| std::array::from_fn(|b| if a < nr && b < nc { f[a][b] } else { 0.0 })))))
            }
            _ => (Shape::Large, None),
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
        let f3 = footprints_medium(&fp);
        for (l, (x, y)) in quads.iter().enumerate() {
            let (shape, cells) = scalar(x, y, shrink, kernel);
            assert_eq!(fp.shape(l), shape, "lane {l}: {x:?} {y:?}");
            let Some((r0, c0, want)) = cells else { continue };
            assert_eq!((fp.r0[l] as isize, fp.c0[l] as isize), (r0, c0), "lane {l}");
            let got: [[f64; 3]; 3] = match shape {
                Shape::Small => [[fp.f[0][l], fp.f[1][l], 0.0], [fp.f[2][l], fp.f[3][l], 0.0], [0.0; 3]],
                _ => std::array::from_fn(|a| std::array::from_fn(|b| f3[a][b][l])),
            };
            for (a, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                for b in 0..3 {
                    assert_eq!(g[b].to_bits(), w[b].to_bits(), "lane {l} cell ({a}, {b}): {} vs {}", g[b], w[b]);
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
            quad(2.0, 2.0, 0.4, 1.9, 1.2, 0.1), // three columns or rows
            quad(2.0, 2.0, 0.0, 2.4, 0.3, 0.0), // medium, one row
            quad(2.0, 2.0, 0.0, 0.3, 2.4, 0.0), // medium, one column
            quad(2.0, 2.6, 0.0, 0.7, 2.4, 0.0), // medium, two columns
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
