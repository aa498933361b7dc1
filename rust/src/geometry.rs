//! Exact droplet/pixel overlap areas (scalar code).
//!
//! A droplet is the quadrilateral footprint of an input pixel in output pixel
//! coordinates, shrunk about its centre. Output pixel `(r, c)` covers
//! `[c - 0.5, c + 0.5] x [r - 0.5, r + 0.5]`. Areas are computed without
//! building polygons: closed-form edge integrals (Green's theorem) for
//! droplets within 4 x 4 pixels ([`quad_footprint_2x2`]), the signed edge-area
//! ("boxer") sum otherwise. The tests check them against polygon clipping
//! (`reference_clipper`, test-only).
//!
//! `crate::lanes` computes the same footprints over several pixels at once:
//! the two must stay bit-identical (same IEEE operations in the same order,
//! nothing fused or reassociated; tested there), so a change to the
//! arithmetic here must be made in both.

/// `min` without NaN handling (callers check finiteness): one instruction.
#[inline(always)]
pub fn fmin(a: f64, b: f64) -> f64 {
    if a < b {
        a
    } else {
        b
    }
}

/// `max` without NaN handling (callers check finiteness).
#[inline(always)]
pub fn fmax(a: f64, b: f64) -> f64 {
    if a > b {
        a
    } else {
        b
    }
}

/// `floor` for values of magnitude below 2^51 (pixel coordinates), without
/// a libm call: adding and subtracting 1.5 * 2^52 rounds to an integer.
#[inline(always)]
pub fn ffloor(x: f64) -> f64 {
    const ROUND: f64 = 6755399441055744.0;
    let t = (x + ROUND) - ROUND;
    if t > x {
        t - 1.0
    } else {
        t
    }
}

/// The shape of a droplet's quadrilateral.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuadShape {
    /// Simple (convex or concave) quadrilateral with a positive area.
    Simple,
    /// Zero area (collinear or coincident corners) or not finite.
    Degenerate,
    /// Self-intersecting ("bow tie"): the mapping folds the pixel over itself.
    Folded,
}

/// Classifies the quadrilateral `(x[k], y[k])`, k = 0..4, in order.
pub fn classify_quad(x: &[f64; 4], y: &[f64; 4]) -> QuadShape {
    // Any NaN or infinity makes the sum non-finite (and absurdly large values are rejected too).
    if !(x[0] + x[1] + x[2] + x[3] + y[0] + y[1] + y[2] + y[3]).is_finite() {
        return QuadShape::Degenerate;
    }
    let area2 = (x[0] - x[2]) * (y[1] - y[3]) - (x[1] - x[3]) * (y[0] - y[2]);
    let scale = (x[2] - x[0]).abs() + (y[2] - y[0]).abs() + (x[3] - x[1]).abs() + (y[3] - y[1]).abs();
    if !(area2.abs() > 1e-12 * scale * scale) {
        return QuadShape::Degenerate;
    }
    // Turn direction at each vertex; a bow tie has two of each sign.
    let mut opposite = 0;
    for i in 0..4 {
        let a = (i + 3) % 4;
        let b = (i + 1) % 4;
        let cross = (x[i] - x[a]) * (y[b] - y[i]) - (y[i] - y[a]) * (x[b] - x[i]);
        if cross * area2 < 0.0 {
            opposite += 1;
        }
    }
    if opposite >= 2 {
        QuadShape::Folded
    } else {
        QuadShape::Simple
    }
}

/// Fractions below this (relative to the droplet area) are rounding noise from
/// vertices lying exactly on pixel boundaries and are dropped.
pub const NEGLIGIBLE: f64 = 1e-14;

/// Mean of `clamp(p + t (q - p), 0, 1)` over `t` in `[0, 1]`.
#[inline(always)]
fn mean_clamped(p: f64, q: f64) -> f64 {
    let (p, q) = if p <= q { (p, q) } else { (q, p) };
    if q <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    if p >= 0.0 && q <= 1.0 {
        return 0.5 * (p + q);
    }
    let d = q - p; // > 0 here
    let ta = if p < 0.0 { -p / d } else { 0.0 };
    let tb = if q > 1.0 { (1.0 - p) / d } else { 1.0 };
    let ya = if p < 0.0 { 0.0 } else { p };
    let yb = if q > 1.0 { 1.0 } else { q };
    0.5 * (ya + yb) * (tb - ta) + (1.0 - tb)
}

/// Signed area between the segment `(x1, y1) -> (x2, y2)` and the bottom of the
/// unit square `[0, 1]^2`, with the segment clamped to the square: positive
/// for left-to-right segments.
#[inline(always)]
fn edge_area(x1: f64, y1: f64, x2: f64, y2: f64) -> f64 {
    let (xa, ya, xb, yb, sign) = if x1 < x2 {
        (x1, y1, x2, y2, 1.0)
    } else if x2 < x1 {
        (x2, y2, x1, y1, -1.0)
    } else {
        return 0.0;
    };
    if xb <= 0.0 || xa >= 1.0 {
        return 0.0;
    }
    let slope = (yb - ya) / (xb - xa);
    let (xa2, ya2) = if xa < 0.0 { (0.0, ya + (0.0 - xa) * slope) } else { (xa, ya) };
    let (xb2, yb2) = if xb > 1.0 { (1.0, yb - (xb - 1.0) * slope) } else { (xb, yb) };
    sign * (xb2 - xa2) * mean_clamped(ya2, yb2)
}

/// Exact area of the intersection of the quadrilateral `(qx, qy)` (any
/// orientation, simple) with the output pixel `(r, c)`, i.e. the square
/// `[c - 0.5, c + 0.5] x [r - 0.5, r + 0.5]`: the sum of the clamped signed
/// areas under the four edges (the "boxer" construction of drizzle).
#[inline]
pub fn quad_pixel_area(qx: &[f64; 4], qy: &[f64; 4], r: f64, c: f64) -> f64 {
    let (ox, oy) = (c - 0.5, r - 0.5);
    let x: [f64; 4] = std::array::from_fn(|k| qx[k] - ox);
    let y: [f64; 4] = std::array::from_fn(|k| qy[k] - oy);
    let s =
        edge_area(x[0], y[0], x[1], y[1]) + edge_area(x[1], y[1], x[2], y[2]) + edge_area(x[2], y[2], x[3], y[3]) + edge_area(x[3], y[3], x[0], y[0]);
    s.abs()
}

/// Shoelace area (signed) of the quadrilateral.
#[inline(always)]
pub fn quad_signed_area(qx: &[f64; 4], qy: &[f64; 4]) -> f64 {
    0.5 * ((qx[0] - qx[2]) * (qy[1] - qy[3]) - (qx[1] - qx[3]) * (qy[0] - qy[2]))
}

/// Twice the integral of `min(v, 0) du` along a straight segment traversed
/// from `u = a1` (where `v = t1`) to `u = a2` (`v = t2`); `inv_slope` is
/// `du/dv` of the segment's line (used only when the segment crosses `v = 0`).
///
/// No crossing: the trapezoid `(a2 - a1) (min(t1,0) + min(t2,0))`. Crossing:
/// with `n = min(v, 0)`, the antiderivative along the line is `n^2 du/dv / 2`,
/// so the integral is `(n2^2 - n1^2) du/dv / 2`, bounded because `|n| <= |dv|`
/// there. Branch-free (the two cases are selected, not branched on).
#[inline(always)]
pub(crate) fn twice_negative_integral(a1: f64, a2: f64, t1: f64, t2: f64, inv_slope: f64) -> f64 {
    let (n1, n2) = (fmin(t1, 0.0), fmin(t2, 0.0));
    let crossing = (n2 * n2 - n1 * n1) * inv_slope;
    let trapezoid = (a2 - a1) * (n1 + n2);
    if t1 * t2 < 0.0 {
        crossing
    } else {
        trapezoid
    }
}

/// Most output pixels per side of a [`Footprint`].
const FOOTPRINT_MAX: usize = 4;

/// The fractions of a droplet's weight in the output pixels of its bounding
/// box: `f[a][b]` belongs to output pixel `(r0 + a, c0 + b)`. Rows and
/// columns may lie off the grid (callers skip them).
#[derive(Clone, Copy, Debug)]
struct Footprint {
    r0: isize,
    c0: isize,
    nr: usize,
    nc: usize,
    f: [[f64; FOOTPRINT_MAX]; FOOTPRINT_MAX],
}

/// The output pixels spanned by the bounding box of the quadrilateral
/// `(qx, qy)`: `(first row, last row, first column, last column)` (pixel `r`
/// covers `[r - 0.5, r + 0.5]`; the span may lie partly off the grid). `None`
/// when a corner is not finite or absurdly far away.
#[inline(always)]
fn pixel_span(qx: &[f64; 4], qy: &[f64; 4]) -> Option<(f64, f64, f64, f64)> {
    let x0 = fmin(fmin(qx[0], qx[1]), fmin(qx[2], qx[3]));
    let x1 = fmax(fmax(qx[0], qx[1]), fmax(qx[2], qx[3]));
    let y0 = fmin(fmin(qy[0], qy[1]), fmin(qy[2], qy[3]));
    let y1 = fmax(fmax(qy[0], qy[1]), fmax(qy[2], qy[3]));
    if !(x0 > -1e15 && x1 < 1e15 && y0 > -1e15 && y1 < 1e15) {
        return None;
    }
    Some((ffloor(y0 + 0.5), ffloor(y1 + 0.5), ffloor(x0 + 0.5), ffloor(x1 + 0.5)))
}

/// Fractions of a droplet spanning at most 2 x 2 output pixels from
/// `(cr0, cc0)`, for pixels `(cr0 + a, cc0 + b)`; a row or column beyond the
/// span gets 0 up to rounding.
#[inline(always)]
fn fractions_from(qx: &[f64; 4], qy: &[f64; 4], cr0: f64, cc0: f64, one_pixel: bool) -> [[f64; 2]; 2] {
    if one_pixel {
        return [[1.0, 0.0], [0.0, 0.0]];
    }
    let u: [f64; 4] = std::array::from_fn(|k| qx[k] - (cc0 + 0.5));
    let v: [f64; 4] = std::array::from_fn(|k| qy[k] - (cr0 + 0.5));
    fractions_2x2(&u, &v)
}

/// The common case of the overlaps: a droplet whose bounding box spans at
/// most 2 x 2 output pixels. Returns the first output pixel `(r0, c0)` and the
/// fractions `f[a][b]` of pixels `(r0 + a, c0 + b)` (a row or column beyond the
/// bounding box gets 0 up to rounding); `None` for larger or non-finite
/// droplets. [`for_each_quad_overlap`] emits the same values.
///
/// With `u, v` measured from the inner pixel corner `(X, Y)`, Green's theorem
/// gives every needed area as a line integral of `v du` over parts of the
/// edges: the part of the quadrilateral with `u <= 0` integrates over the edge
/// parts with `u <= 0` (the cut along `u = 0` has `du = 0`), the part with
/// `v <= 0` integrates `min(v, 0)` (the cut has `v = 0`), and the quadrant
/// combines both. Each edge is linear, so each integral is closed-form: no
/// polygon is built. The fractions at the corner, differenced, give each
/// pixel's fraction.
#[inline(always)]
pub fn quad_footprint_2x2(qx: &[f64; 4], qy: &[f64; 4]) -> Option<(isize, isize, [[f64; 2]; 2])> {
    let (cr0, cr1, cc0, cc1) = pixel_span(qx, qy)?;
    if !(cr1 - cr0 <= 1.0 && cc1 - cc0 <= 1.0) {
        return None;
    }
    Some((cr0 as isize, cc0 as isize, fractions_from(qx, qy, cr0, cc0, cr1 == cr0 && cc1 == cc0)))
}

/// Exact footprint of the quadrilateral `(qx, qy)` (simple, either
/// orientation, positive area) within the pixel span `span` (from
/// [`pixel_span`]) when it covers at most [`FOOTPRINT_MAX`] output pixels per
/// side; `None` when it is larger. The integrals of [`quad_footprint_2x2`]
/// at every inner corner, differenced.
#[inline(always)]
fn footprint_in_span(qx: &[f64; 4], qy: &[f64; 4], span: (f64, f64, f64, f64)) -> Option<Footprint> {
    let (cr0, cr1, cc0, cc1) = span;
    let (nr, nc) = ((cr1 - cr0) as usize + 1, (cc1 - cc0) as usize + 1);
    if nr > FOOTPRINT_MAX || nc > FOOTPRINT_MAX {
        return None;
    }
    let mut fp = Footprint { r0: cr0 as isize, c0: cc0 as isize, nr, nc, f: [[0.0; FOOTPRINT_MAX]; FOOTPRINT_MAX] };
    if nr <= 2 && nc <= 2 {
        // The same values as quad_footprint_2x2.
        let f = fractions_from(qx, qy, cr0, cc0, nr == 1 && nc == 1);
        fp.nr = 2;
        fp.nc = 2;
        fp.f[0][..2].copy_from_slice(&f[0]);
        fp.f[1][..2].copy_from_slice(&f[1]);
    } else {
        fill_footprint(qx, qy, &mut fp);
    }
    Some(fp)
}

/// The general path's footprint of a quadrilateral on an unbounded grid
/// (tests): first output pixel, rows, columns and `f[a][b]` for pixel
/// `(r0 + a, c0 + b)`.
#[cfg(test)]
pub(crate) type GeneralFootprint = (isize, isize, usize, usize, [[f64; FOOTPRINT_MAX]; FOOTPRINT_MAX]);

#[cfg(test)]
pub(crate) fn quad_footprint(qx: &[f64; 4], qy: &[f64; 4]) -> Option<GeneralFootprint> {
    let fp = footprint_in_span(qx, qy, pixel_span(qx, qy)?)?;
    Some((fp.r0, fp.c0, fp.nr, fp.nc, fp.f))
}

/// `(dv/du, du/dv)` of an edge from one division; 0 where undefined (then
/// unused or multiplied by a zero length).
#[inline(always)]
fn slopes(du: f64, dv: f64) -> (f64, f64) {
    let prod = du * dv;
    let nonzero = prod != 0.0;
    let r = 1.0 / if nonzero { prod } else { 1.0 };
    (if nonzero { dv * dv * r } else { 0.0 }, if nonzero { du * du * r } else { 0.0 })
}

/// Twice the areas (all with the same sign, that of the orientation) of the
/// whole quadrilateral `(u, v)` and of its parts with `u <= 0`, with `v <= 0`
/// and with both, by the edge integrals of [`quad_footprint_2x2`]; written
/// lane-wise over the four edges so the compiler can use SIMD.
#[inline(always)]
fn corner_integrals(u: &[f64; 4], v: &[f64; 4]) -> [f64; 4] {
    let (u1, v1) = (*u, *v);
    let u2 = [u[1], u[2], u[3], u[0]];
    let v2 = [v[1], v[2], v[3], v[0]];
    let mut tot = [0.0; 4];
    let mut lef = [0.0; 4];
    let mut bel = [0.0; 4];
    let mut qua = [0.0; 4];
    for k in 0..4 {
        let (du, dv) = (u2[k] - u1[k], v2[k] - v1[k]);
        let (slope, inv_slope) = slopes(du, dv);
        tot[k] = du * (v1[k] + v2[k]);
        bel[k] = twice_negative_integral(u1[k], u2[k], v1[k], v2[k], inv_slope);
        let (a1, a2) = (fmin(u1[k], 0.0), fmin(u2[k], 0.0));
        let w1 = if u1[k] > 0.0 { v1[k] - u1[k] * slope } else { v1[k] };
        let w2 = if u2[k] > 0.0 { v2[k] - u2[k] * slope } else { v2[k] };
        lef[k] = (a2 - a1) * (w1 + w2);
        qua[k] = twice_negative_integral(a1, a2, w1, w2, inv_slope);
    }
    let sum = |a: [f64; 4]| (a[0] + a[1]) + (a[2] + a[3]);
    [sum(tot), sum(lef), sum(bel), sum(qua)]
}

/// The fractions of the 2 x 2 pixels around the inner corner `u = v = 0`.
#[inline(always)]
fn fractions_2x2(u: &[f64; 4], v: &[f64; 4]) -> [[f64; 2]; 2] {
    let [tot, lef, bel, qua] = corner_integrals(u, v);
    let inv = 1.0 / tot;
    let (left, below, both) = (lef * inv, bel * inv, qua * inv);
    [[both, below - both], [left - both, 1.0 - left - below + both]]
}

/// Fills `fp.f` for the quadrilateral `(qx, qy)` from the integrals of
/// [`corner_integrals`] at the inner corners of the span (its outer edges
/// hold everything): corner `(a, b)` lies at `x = c0 + a + 0.5`,
/// `y = r0 + b + 0.5`, evaluated exactly as the one corner of
/// [`fractions_2x2`].
#[inline(always)]
fn fill_footprint(qx: &[f64; 4], qy: &[f64; 4], fp: &mut Footprint) {
    const N: usize = FOOTPRINT_MAX - 1;
    let (na, nb) = (fp.nc - 1, fp.nr - 1);
    let (c0, r0) = (fp.c0 as f64, fp.r0 as f64);
    let (mut inv, mut left, mut below, mut quadrant) = (0.0, [0.0; N], [0.0; N], [[0.0; N]; N]);
    // At least one corner, for the total (a span one pixel high or wide has no
    // inner corner on that axis; the values on that axis are then unused).
    for a in 0..na.max(1) {
        let u: [f64; 4] = std::array::from_fn(|k| qx[k] - (c0 + (a as f64 + 0.5)));
        for b in 0..nb.max(1) {
            let v: [f64; 4] = std::array::from_fn(|k| qy[k] - (r0 + (b as f64 + 0.5)));
            let [tot, lef, bel, qua] = corner_integrals(&u, &v);
            if a == 0 && b == 0 {
                inv = 1.0 / tot;
            }
            if b == 0 {
                left[a] = lef;
            }
            if a == 0 {
                below[b] = bel;
            }
            quadrant[a][b] = qua;
        }
    }
    // Cumulative fraction g[b][a]: below row corner b - 1 and left of column
    // corner a - 1 (index 0: nothing; beyond the last inner corner: everything).
    let mut g = [[0.0; FOOTPRINT_MAX + 1]; FOOTPRINT_MAX + 1];
    for b in 0..=nb {
        for a in 0..=na {
            g[b + 1][a + 1] = match (b == nb, a == na) {
                (true, true) => 1.0,
                (true, false) => left[a] * inv,
                (false, true) => below[b] * inv,
                (false, false) => quadrant[a][b] * inv,
            };
        }
    }
    for b in 0..=nb {
        for a in 0..=na {
            fp.f[b][a] = g[b + 1][a + 1] - g[b + 1][a] - g[b][a + 1] + g[b][a];
        }
    }
}

/// Bilinear weights of the point `(px, py)` on the four output pixel centres
/// around it, as `(r0, c0, w)` with `w[a][b]` for pixel `(r0 + a, c0 + b)`
/// (the values of [`for_each_bilinear_weight`]); `None` when not finite.
#[inline(always)]
pub fn bilinear_footprint_2x2(px: f64, py: f64) -> Option<(isize, isize, [[f64; 2]; 2])> {
    if !(px.abs() < 1e15 && py.abs() < 1e15) {
        return None;
    }
    let (xf, yf) = (ffloor(px), ffloor(py));
    let (fx, fy) = (px - xf, py - yf);
    let (wy, wx) = ([1.0 - fy, fy], [1.0 - fx, fx]);
    Some((yf as isize, xf as isize, [[wy[0] * wx[0], wy[0] * wx[1]], [wy[1] * wx[0], wy[1] * wx[1]]]))
}

/// Like `reference_clipper::for_each_pixel_overlap` for a quadrilateral droplet, without
/// building polygons: the closed-form integrals of [`quad_footprint_2x2`] for
/// droplets within 4 x 4 output pixels, [`quad_pixel_area`] per pixel for
/// larger ones.
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn for_each_quad_overlap(
    qx: &[f64; 4],
    qy: &[f64; 4],
    area: f64,
    ny: usize,
    nx: usize,
    row_lo: usize,
    row_hi: usize,
    emit: impl FnMut(usize, usize, f64),
) {
    for_each_quad_overlap_in(qx, qy, area, (row_lo, row_hi.min(ny)), (0, nx), emit)
}

/// [`for_each_quad_overlap`] for the output pixels in rows `rows.0 .. rows.1` and columns
/// `cols.0 .. cols.1` (a window of a larger grid: each pixel's fraction is the same whatever
/// the window).
#[inline]
pub fn for_each_quad_overlap_in(
    qx: &[f64; 4],
    qy: &[f64; 4],
    area: f64,
    rows: (usize, usize),
    cols: (usize, usize),
    mut emit: impl FnMut(usize, usize, f64),
) {
    let Some(span) = pixel_span(qx, qy) else { return };
    let (cr0, cr1, cc0, cc1) = span;
    let r_first = fmax(cr0, rows.0 as f64);
    let r_last = fmin(cr1, rows.1 as f64 - 1.0);
    let c_first = fmax(cc0, cols.0 as f64);
    let c_last = fmin(cc1, cols.1 as f64 - 1.0);
    if r_first > r_last || c_first > c_last {
        return;
    }
    if let Some(fp) = footprint_in_span(qx, qy, span) {
        let (rows, cols) = (r_first as isize..r_last as isize + 1, c_first as isize..c_last as isize + 1);
        for_each_cell(fp.r0, fp.c0, &fp.f, rows, cols, NEGLIGIBLE, emit);
        return;
    }
    let inv_area = 1.0 / area;
    let mut r = r_first;
    while r <= r_last {
        let mut c = c_first;
        while c <= c_last {
            let f = quad_pixel_area(qx, qy, r, c) * inv_area;
            if f > NEGLIGIBLE {
                emit(r as usize, c as usize, f);
            }
            c += 1.0;
        }
        r += 1.0;
    }
}

/// Bilinear point kernel: the point `(px, py)` is shared among the (up to)
/// four output pixel centres around it with bilinear weights. Calls
/// `emit(row, col, weight)` for those inside the grid and in rows
/// `row_lo..row_hi`.
#[inline]
pub fn for_each_bilinear_weight(px: f64, py: f64, ny: usize, nx: usize, row_lo: usize, row_hi: usize, emit: impl FnMut(usize, usize, f64)) {
    let Some((r0, c0, w)) = bilinear_footprint_2x2(px, py) else { return };
    for_each_cell(r0, c0, &w, row_lo as isize..row_hi.min(ny) as isize, 0..nx as isize, 0.0, emit);
}

/// Calls `emit(r, c, f[a][b])` for the cells `(r, c) = (r0 + a, c0 + b)` of an
/// N x N block of fractions that lie in `rows` and `cols` and exceed `floor`,
/// in row-major order.
#[inline(always)]
pub fn for_each_cell<const N: usize>(
    r0: isize,
    c0: isize,
    f: &[[f64; N]; N],
    rows: std::ops::Range<isize>,
    cols: std::ops::Range<isize>,
    floor: f64,
    mut emit: impl FnMut(usize, usize, f64),
) {
    for (a, fr) in f.iter().enumerate() {
        let r = r0 + a as isize;
        if !rows.contains(&r) {
            continue;
        }
        for (b, &fc) in fr.iter().enumerate() {
            let c = c0 + b as isize;
            if cols.contains(&c) && fc > floor {
                emit(r as usize, c as usize, fc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference_clipper::{for_each_pixel_overlap, Polygon};
    use proptest::prelude::*;

    fn square(cx: f64, cy: f64, side: f64) -> Polygon {
        let h = side / 2.0;
        Polygon::from_points(&[(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)])
    }

    /// Overlaps by the engine's production path (the polygon must have 4 vertices).
    fn overlaps(p: &Polygon, ny: usize, nx: usize) -> Vec<(usize, usize, f64)> {
        assert_eq!(p.len(), 4);
        let qx: [f64; 4] = std::array::from_fn(|k| p.x[k]);
        let qy: [f64; 4] = std::array::from_fn(|k| p.y[k]);
        let mut v = vec![];
        for_each_quad_overlap(&qx, &qy, p.area(), ny, nx, 0, ny, |r, c, f| v.push((r, c, f)));
        v
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn aligned_pixel_lands_in_one_pixel() {
        let v = overlaps(&square(3.0, 2.0, 1.0), 5, 5);
        assert_eq!(v, vec![(2, 3, 1.0)]);
    }

    #[test]
    fn half_pixel_shift_in_x_splits_evenly() {
        let v = overlaps(&square(3.5, 2.0, 1.0), 5, 5);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].0, v[0].1), (2, 3));
        assert_eq!((v[1].0, v[1].1), (2, 4));
        assert!(close(v[0].2, 0.5, 1e-15) && close(v[1].2, 0.5, 1e-15));
    }

    #[test]
    fn half_pixel_shift_in_both_gives_quarters() {
        let v = overlaps(&square(2.5, 2.5, 1.0), 5, 5);
        assert_eq!(v.len(), 4);
        for &(_, _, f) in &v {
            assert!(close(f, 0.25, 1e-15));
        }
    }

    #[test]
    fn shrunk_droplet_inside_pixel() {
        // side 0.5 centred at 3.2: spans 2.95..3.45, wholly inside pixel 3.
        let v = overlaps(&square(3.2, 1.0, 0.5), 4, 6);
        assert_eq!(v, vec![(1, 3, 1.0)]);
    }

    #[test]
    fn rotated_45_degrees_centred_on_pixel() {
        // Unit-area diamond centred on pixel (2, 2): half-diagonal 1/sqrt(2) = 0.7071
        // reaches beyond the pixel edge at 0.5; the four tips outside are triangles
        // of height h = 0.7071 - 0.5 and base 2h, area h^2 each.
        let d = 0.5f64.sqrt();
        let p = Polygon::from_points(&[(2.0, 2.0 - d), (2.0 + d, 2.0), (2.0, 2.0 + d), (2.0 - d, 2.0)]);
        let v = overlaps(&p, 5, 5);
        let h = d - 0.5;
        let centre = v.iter().find(|t| t.0 == 2 && t.1 == 2).unwrap().2;
        assert!(close(centre, 1.0 - 4.0 * h * h, 1e-14));
        for &(r, c, f) in &v {
            if (r, c) != (2, 2) {
                assert!((r == 2) ^ (c == 2), "only edge neighbours, got {r},{c}");
                assert!(close(f, h * h, 1e-14));
            }
        }
        assert_eq!(v.len(), 5);
    }

    #[test]
    fn flipped_parity_gives_same_fractions() {
        let a = Polygon::from_points(&[(1.2, 1.1), (2.3, 1.3), (2.1, 2.4), (1.0, 2.2)]);
        let b = Polygon::from_points(&[(1.0, 2.2), (2.1, 2.4), (2.3, 1.3), (1.2, 1.1)]);
        assert!(a.signed_area() > 0.0 && b.signed_area() < 0.0);
        let (va, vb) = (overlaps(&a, 5, 5), overlaps(&b, 5, 5));
        assert_eq!(va.len(), vb.len());
        for (x, y) in va.iter().zip(vb.iter()) {
            assert_eq!((x.0, x.1), (y.0, y.1));
            assert!(close(x.2, y.2, 1e-14));
        }
    }

    #[test]
    fn huge_droplet_covers_many_pixels_uniformly() {
        // A 4x4 droplet aligned to pixel edges: 16 pixels of 1/16 each.
        let p = Polygon::from_points(&[(0.5, 0.5), (4.5, 0.5), (4.5, 4.5), (0.5, 4.5)]);
        let v = overlaps(&p, 8, 8);
        assert_eq!(v.len(), 16);
        for &(r, c, f) in &v {
            assert!((1..=4).contains(&r) && (1..=4).contains(&c));
            assert!(close(f, 1.0 / 16.0, 1e-15));
        }
    }

    #[test]
    fn tiny_droplet() {
        let v = overlaps(&square(2.0, 3.4999999, 1e-9), 5, 5);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].2, 1.0);
        let v = overlaps(&square(2.0, 3.5, 1e-9), 5, 5);
        let s: f64 = v.iter().map(|t| t.2).sum();
        assert!(close(s, 1.0, 1e-6));
    }

    #[test]
    fn straddling_the_grid_edge_loses_the_outside_part() {
        // Centred on the left edge (x = -0.5) of column 0: half lost.
        let v = overlaps(&square(-0.5, 1.0, 1.0), 3, 3);
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].0, v[0].1), (1, 0));
        assert!(close(v[0].2, 0.5, 1e-15));
        // Corner of the grid: a quarter survives.
        let v = overlaps(&square(2.5, 2.5, 1.0), 3, 3);
        assert_eq!(v.len(), 1);
        assert!(close(v[0].2, 0.25, 1e-15));
        // Wholly outside.
        assert!(overlaps(&square(-2.0, 1.0, 1.0), 3, 3).is_empty());
        assert!(overlaps(&square(1.0, 9.0, 1.0), 3, 3).is_empty());
    }

    #[test]
    fn row_window_restricts_rows() {
        let p = square(2.0, 2.5, 1.0);
        let mut v = vec![];
        let (qx, qy) = ([p.x[0], p.x[1], p.x[2], p.x[3]], [p.y[0], p.y[1], p.y[2], p.y[3]]);
        for_each_quad_overlap(&qx, &qy, p.area(), 5, 5, 3, 5, |r, c, f| v.push((r, c, f)));
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].0, v[0].1), (3, 2));
    }

    #[test]
    fn quad_classification() {
        assert_eq!(classify_quad(&[0.0, 1.0, 1.0, 0.0], &[0.0, 0.0, 1.0, 1.0]), QuadShape::Simple);
        // A symmetric bow tie has zero net area; an asymmetric one is folded.
        assert_eq!(classify_quad(&[0.0, 1.0, 0.0, 1.0], &[0.0, 0.0, 1.0, 1.0]), QuadShape::Degenerate);
        assert_eq!(classify_quad(&[0.0, 2.0, 0.0, 1.0], &[0.0, 0.0, 1.0, 1.0]), QuadShape::Folded);
        assert_eq!(classify_quad(&[0.0, 1.0, 2.0, 3.0], &[0.0, 1.0, 2.0, 3.0]), QuadShape::Degenerate);
        assert_eq!(classify_quad(&[0.0, 0.0, 0.0, 0.0], &[0.0, 0.0, 0.0, 0.0]), QuadShape::Degenerate);
        assert_eq!(classify_quad(&[0.0, 1.0, f64::NAN, 0.0], &[0.0, 0.0, 1.0, 1.0]), QuadShape::Degenerate);
        // Concave (dart) is simple.
        assert_eq!(classify_quad(&[0.0, 2.0, 0.5, 0.0], &[0.0, 0.0, 0.5, 2.0]), QuadShape::Simple);
    }

    #[test]
    fn concave_quad_area_is_conserved() {
        let p = Polygon::from_points(&[(0.1, 0.1), (2.7, 0.3), (0.9, 0.8), (0.2, 2.6)]);
        let s: f64 = overlaps(&p, 6, 6).iter().map(|t| t.2).sum();
        assert!(close(s, 1.0, 1e-12));
    }

    #[test]
    fn bilinear_weights() {
        let mut v = vec![];
        for_each_bilinear_weight(2.0, 3.0, 5, 5, 0, 5, |r, c, w| v.push((r, c, w)));
        assert_eq!(v, vec![(3, 2, 1.0)]);
        v.clear();
        for_each_bilinear_weight(2.25, 3.5, 5, 5, 0, 5, |r, c, w| v.push((r, c, w)));
        assert_eq!(v, vec![(3, 2, 0.375), (3, 3, 0.125), (4, 2, 0.375), (4, 3, 0.125)]);
        v.clear();
        for_each_bilinear_weight(-0.5, 0.0, 5, 5, 0, 5, |r, c, w| v.push((r, c, w)));
        assert_eq!(v, vec![(0, 0, 0.5)]);
    }

    proptest! {
        #[test]
        fn fractions_sum_to_one_inside_grid(
            cx in 3.0f64..7.0, cy in 3.0f64..7.0,
            a in 0.05f64..2.5, b in 0.05f64..2.5, theta in 0.0f64..6.3, shear in -0.5f64..0.5,
            flip in proptest::bool::ANY,
        ) {
            // A parallelogram from an arbitrary affine map of the unit square.
            let (s, c) = theta.sin_cos();
            let m = [[a * c, -b * s + shear], [a * s, b * c]];
            let sign = if flip { -1.0 } else { 1.0 };
            let pts: Vec<(f64, f64)> = [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]
                .iter()
                .map(|&(u, v)| (cx + sign * (m[0][0] * u + m[0][1] * v), cy + m[1][0] * u + m[1][1] * v))
                .collect();
            let p = Polygon::from_points(&pts);
            prop_assume!(p.area() > 1e-6);
            let v = overlaps(&p, 11, 11);
            let s: f64 = v.iter().map(|t| t.2).sum();
            prop_assert!((s - 1.0).abs() < 1e-12, "sum {}", s);
            prop_assert!(v.iter().all(|t| t.2 > 0.0 && t.2 <= 1.0 + 1e-15));
        }

        #[test]
        fn boxer_agrees_with_polygon_clipping(
            cx in 2.0f64..8.0, cy in 2.0f64..8.0,
            pts in proptest::collection::vec((-1.5f64..1.5, -1.5f64..1.5), 4),
        ) {
            let qx: [f64; 4] = std::array::from_fn(|k| cx + pts[k].0);
            let qy: [f64; 4] = std::array::from_fn(|k| cy + pts[k].1);
            prop_assume!(classify_quad(&qx, &qy) == QuadShape::Simple);
            let poly = Polygon::from_points(&(0..4).map(|k| (qx[k], qy[k])).collect::<Vec<_>>());
            let area = poly.area();
            let mut a = vec![];
            for_each_pixel_overlap(&poly, area, 11, 11, 0, 11, |r, c, f| a.push((r, c, f)));
            let mut b = vec![];
            for_each_quad_overlap(&qx, &qy, area, 11, 11, 0, 11, |r, c, f| b.push((r, c, f)));
            let sa: f64 = a.iter().map(|t| t.2).sum();
            let sb: f64 = b.iter().map(|t| t.2).sum();
            prop_assert!((sb - 1.0).abs() < 1e-12, "production sum {}", sb);
            prop_assert!((sa - 1.0).abs() < 1e-10, "reference sum {}", sa);
            for &(r, c, f) in &a {
                let g = b.iter().find(|t| t.0 == r && t.1 == c).map(|t| t.2).unwrap_or(0.0);
                prop_assert!((f - g).abs() < 1e-10, "cell {},{}: {} vs {}", r, c, f, g);
            }
        }

        #[test]
        fn ffloor_is_floor(x in -1e12f64..1e12, half in proptest::bool::ANY) {
            let x = if half { (x * 2.0).round() / 2.0 } else { x };
            prop_assert_eq!(ffloor(x), x.floor());
            prop_assert_eq!(ffloor(x * 1e-9), (x * 1e-9).floor());
        }

        #[test]
        fn bilinear_weights_sum_to_one_inside(px in 0.0f64..9.0, py in 0.0f64..9.0) {
            let mut s = 0.0;
            for_each_bilinear_weight(px, py, 10, 10, 0, 10, |_, _, w| s += w);
            prop_assert!((s - 1.0).abs() < 1e-14);
        }
    }
}
