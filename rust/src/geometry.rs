//! Exact droplet/pixel overlap areas.
//!
//! A droplet is the quadrilateral footprint of an input pixel in output pixel
//! coordinates, shrunk about its centre. Output pixel `(r, c)` covers
//! `[c - 0.5, c + 0.5] x [r - 0.5, r + 0.5]`. Clipping a polygon against an
//! axis-aligned half-plane (Sutherland–Hodgman) is exact up to floating-point
//! rounding and works for any simple subject polygon, convex or not, because
//! the clip window (a pixel) is convex. The engine computes areas without
//! building polygons: inclusion–exclusion of half-plane clips for droplets
//! within 2 x 2 pixels, the signed edge-area ("boxer") sum otherwise; the
//! general clipper is kept as an independent reference for the tests.

/// `min` without NaN handling (callers check finiteness): one instruction.
#[inline(always)]
pub fn fmin(a: f64, b: f64) -> f64 {
    if a < b { a } else { b }
}

/// `max` without NaN handling (callers check finiteness).
#[inline(always)]
pub fn fmax(a: f64, b: f64) -> f64 {
    if a > b { a } else { b }
}

/// `floor` for finite values of magnitude below 2^52 (pixel coordinates),
/// without a libm call.
#[inline(always)]
pub fn ffloor(x: f64) -> f64 {
    let t = x as i64 as f64;
    if t > x { t - 1.0 } else { t }
}

#[cfg(test)]
/// Enough vertices for a quadrilateral clipped by four half-planes.
pub const MAX_VERTICES: usize = 12;

#[cfg(test)]
/// A small polygon with inline storage (no heap allocation on the hot path).
#[derive(Clone, Copy, Debug)]
pub struct Polygon {
    n: usize,
    x: [f64; MAX_VERTICES],
    y: [f64; MAX_VERTICES],
}

#[cfg(test)]
impl Default for Polygon {
    fn default() -> Self {
        Polygon { n: 0, x: [0.0; MAX_VERTICES], y: [0.0; MAX_VERTICES] }
    }
}

#[cfg(test)]
/// Which side of an axis-aligned line to keep.
#[derive(Clone, Copy, Debug)]
enum Keep {
    XAtLeast(f64),
    XAtMost(f64),
    YAtLeast(f64),
    YAtMost(f64),
}

#[cfg(test)]
impl Keep {
    #[inline(always)]
    fn inside(self, x: f64, y: f64) -> bool {
        match self {
            Keep::XAtLeast(b) => x >= b,
            Keep::XAtMost(b) => x <= b,
            Keep::YAtLeast(b) => y >= b,
            Keep::YAtMost(b) => y <= b,
        }
    }

    /// Intersection of segment p->q with the line; the coordinate on the line
    /// is set exactly to the bound.
    #[inline(always)]
    fn cross(self, px: f64, py: f64, qx: f64, qy: f64) -> (f64, f64) {
        match self {
            Keep::XAtLeast(b) | Keep::XAtMost(b) => {
                let t = (b - px) / (qx - px);
                (b, py + t * (qy - py))
            }
            Keep::YAtLeast(b) | Keep::YAtMost(b) => {
                let t = (b - py) / (qy - py);
                (px + t * (qx - px), b)
            }
        }
    }
}

#[cfg(test)]
impl Polygon {
    /// Builds a polygon from vertices (at most [`MAX_VERTICES`]).
    pub fn from_points(points: &[(f64, f64)]) -> Self {
        assert!(points.len() <= MAX_VERTICES, "too many vertices");
        let mut p = Polygon::default();
        for &(x, y) in points {
            p.push(x, y);
        }
        p
    }

    #[inline(always)]
    fn push(&mut self, x: f64, y: f64) {
        // Sutherland–Hodgman against one half-plane adds at most one vertex
        // per clip; four clips of a quad stay within 8 < MAX_VERTICES.
        if self.n < MAX_VERTICES {
            self.x[self.n] = x;
            self.y[self.n] = y;
            self.n += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n < 3
    }

    /// Signed area (shoelace): positive for counter-clockwise vertices.
    #[inline]
    pub fn signed_area(&self) -> f64 {
        if self.n < 3 {
            return 0.0;
        }
        let mut s = 0.0;
        let mut j = self.n - 1;
        for i in 0..self.n {
            s += (self.x[j] - self.x[i]) * (self.y[j] + self.y[i]);
            j = i;
        }
        0.5 * s
    }

    /// Absolute area.
    #[inline]
    pub fn area(&self) -> f64 {
        self.signed_area().abs()
    }

    /// Bounding box `(xmin, xmax, ymin, ymax)`.
    #[inline]
    pub fn bbox(&self) -> (f64, f64, f64, f64) {
        let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
        for i in 0..self.n {
            x0 = x0.min(self.x[i]);
            x1 = x1.max(self.x[i]);
            y0 = y0.min(self.y[i]);
            y1 = y1.max(self.y[i]);
        }
        (x0, x1, y0, y1)
    }

    #[inline]
    fn clip(&self, keep: Keep) -> Polygon {
        let mut out = Polygon::default();
        if self.n == 0 {
            return out;
        }
        let mut px = self.x[self.n - 1];
        let mut py = self.y[self.n - 1];
        let mut pin = keep.inside(px, py);
        for i in 0..self.n {
            let (qx, qy) = (self.x[i], self.y[i]);
            let qin = keep.inside(qx, qy);
            if qin {
                if !pin {
                    let (ix, iy) = keep.cross(px, py, qx, qy);
                    out.push(ix, iy);
                }
                out.push(qx, qy);
            } else if pin {
                let (ix, iy) = keep.cross(px, py, qx, qy);
                out.push(ix, iy);
            }
            px = qx;
            py = qy;
            pin = qin;
        }
        out
    }

    /// The part of the polygon with `lo <= y <= hi`.
    #[inline]
    pub fn clip_y(&self, lo: f64, hi: f64) -> Polygon {
        self.clip(Keep::YAtLeast(lo)).clip(Keep::YAtMost(hi))
    }

    /// The part with `x <= b` and the part with `x >= b`.
    #[inline]
    pub fn split_x(&self, b: f64) -> (Polygon, Polygon) {
        (self.clip(Keep::XAtMost(b)), self.clip(Keep::XAtLeast(b)))
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
    if !(x.iter().chain(y.iter()).all(|v| v.is_finite())) {
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
const NEGLIGIBLE: f64 = 1e-14;

/// Reference implementation by Sutherland–Hodgman clipping (tests only: the
/// engine uses [`for_each_quad_overlap`]).
///
/// Calls `emit(row, col, fraction)` for every output pixel in rows
/// `row_lo..row_hi` (clamped to `0..ny`) and columns `0..nx` that the droplet
/// overlaps; `fraction = area(droplet ∩ pixel) / area(droplet)`.
/// Parts of the droplet off the grid are lost (not renormalised).
/// `area` must be the droplet's (positive) area.
#[cfg(test)]
#[inline]
pub fn for_each_pixel_overlap(
    droplet: &Polygon,
    area: f64,
    ny: usize,
    nx: usize,
    row_lo: usize,
    row_hi: usize,
    mut emit: impl FnMut(usize, usize, f64),
) {
    let (x0, x1, y0, y1) = droplet.bbox();
    let r_first = (y0 + 0.5).floor().max(row_lo as f64).max(0.0);
    let r_last = (y1 + 0.5).floor().min(row_hi as f64 - 1.0).min(ny as f64 - 1.0);
    let c_first = (x0 + 0.5).floor();
    let c_last = (x1 + 0.5).floor();
    if r_first > r_last || c_last < 0.0 || c_first > nx as f64 - 1.0 {
        return;
    }
    let (r_first, r_last) = (r_first as usize, r_last as usize);
    // Whole droplet inside a single output pixel: the common fast path.
    if c_first == c_last && (y0 + 0.5).floor() == (y1 + 0.5).floor() {
        emit(r_first, c_first as usize, 1.0);
        return;
    }
    let inv_area = 1.0 / area;
    for r in r_first..=r_last {
        let rf = r as f64;
        let strip = if y0 >= rf - 0.5 && y1 <= rf + 0.5 { *droplet } else { droplet.clip_y(rf - 0.5, rf + 0.5) };
        if strip.is_empty() {
            continue;
        }
        let (sx0, sx1, _, _) = strip.bbox();
        let mut c = (sx0 + 0.5).floor();
        let c_end = (sx1 + 0.5).floor();
        // Discard what lies left of the grid.
        let mut rest = if c < 0.0 {
            c = 0.0;
            strip.split_x(-0.5).1
        } else {
            strip
        };
        while c <= c_end && c <= nx as f64 - 1.0 {
            let cell = if c == c_end {
                let keep = rest;
                rest = Polygon::default();
                keep
            } else {
                let (left, right) = rest.split_x(c + 0.5);
                rest = right;
                left
            };
            let f = cell.area() * inv_area;
            if f > NEGLIGIBLE {
                emit(r, c as usize, f);
            }
            if rest.is_empty() {
                break;
            }
            c += 1.0;
        }
    }
}

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
    let (xa, ya, xb, yb, sign) = if x1 < x2 { (x1, y1, x2, y2, 1.0) } else if x2 < x1 { (x2, y2, x1, y1, -1.0) } else { return 0.0 };
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
    let s = edge_area(x[0], y[0], x[1], y[1]) + edge_area(x[1], y[1], x[2], y[2]) + edge_area(x[2], y[2], x[3], y[3]) + edge_area(x[3], y[3], x[0], y[0]);
    s.abs()
}

/// Shoelace area (signed) of the quadrilateral.
#[inline(always)]
pub fn quad_signed_area(qx: &[f64; 4], qy: &[f64; 4]) -> f64 {
    0.5 * ((qx[0] - qx[2]) * (qy[1] - qy[3]) - (qx[1] - qx[3]) * (qy[0] - qy[2]))
}

/// Clips the polygon `(x, y)[..n]` to the half-plane `coord <= b` (or
/// `coord >= b` when `GE`), where coord is x (`Y = false`) or y (`Y = true`),
/// writing at most `n + 2` vertices into `(ox, oy)`; returns the vertex count.
/// Monomorphic in the axis and side so the inner loop has no dispatch.
#[inline(always)]
fn clip_into<const Y: bool, const GE: bool>(x: &[f64], y: &[f64], n: usize, b: f64, ox: &mut [f64; 8], oy: &mut [f64; 8]) -> usize {
    let inside = |px: f64, py: f64| {
        let v = if Y { py } else { px };
        if GE { v >= b } else { v <= b }
    };
    let mut m = 0;
    let (mut px, mut py) = (x[n - 1], y[n - 1]);
    let mut pin = inside(px, py);
    for i in 0..n {
        let (qx, qy) = (x[i], y[i]);
        let qin = inside(qx, qy);
        if qin != pin && m < 8 {
            if Y {
                let t = (b - py) / (qy - py);
                ox[m] = px + t * (qx - px);
                oy[m] = b;
            } else {
                let t = (b - px) / (qx - px);
                ox[m] = b;
                oy[m] = py + t * (qy - py);
            }
            m += 1;
        }
        if qin && m < 8 {
            ox[m] = qx;
            oy[m] = qy;
            m += 1;
        }
        px = qx;
        py = qy;
        pin = qin;
    }
    m
}

#[inline(always)]
fn poly_area(x: &[f64; 8], y: &[f64; 8], n: usize) -> f64 {
    if n < 3 {
        return 0.0;
    }
    let mut s = 0.0;
    let mut j = n - 1;
    for i in 0..n {
        s += (x[j] - x[i]) * (y[j] + y[i]);
        j = i;
    }
    0.5 * s.abs()
}

/// Area of the quadrilateral with `x <= b` (`Y = false`) or `y <= b` (`Y = true`).
#[inline(always)]
fn quad_area_below<const Y: bool>(qx: &[f64; 4], qy: &[f64; 4], b: f64) -> f64 {
    let (mut ox, mut oy) = ([0.0; 8], [0.0; 8]);
    let m = clip_into::<Y, false>(qx, qy, 4, b, &mut ox, &mut oy);
    poly_area(&ox, &oy, m)
}

/// Area of the quadrilateral inside the quadrant `x <= xb, y <= yb`.
#[inline(always)]
fn quad_area_in_quadrant(qx: &[f64; 4], qy: &[f64; 4], xb: f64, yb: f64) -> f64 {
    let (mut ax, mut ay) = ([0.0; 8], [0.0; 8]);
    let m = clip_into::<false, false>(qx, qy, 4, xb, &mut ax, &mut ay);
    if m < 3 {
        return 0.0;
    }
    let (mut bx, mut by) = ([0.0; 8], [0.0; 8]);
    let k = clip_into::<true, false>(&ax, &ay, m, yb, &mut bx, &mut by);
    poly_area(&bx, &by, k)
}

/// Like [`for_each_pixel_overlap`] for a quadrilateral droplet, computing each
/// output pixel's area with [`quad_pixel_area`] (no polygon construction).
#[inline]
pub fn for_each_quad_overlap(
    qx: &[f64; 4],
    qy: &[f64; 4],
    area: f64,
    ny: usize,
    nx: usize,
    row_lo: usize,
    row_hi: usize,
    mut emit: impl FnMut(usize, usize, f64),
) {
    let x0 = fmin(fmin(qx[0], qx[1]), fmin(qx[2], qx[3]));
    let x1 = fmax(fmax(qx[0], qx[1]), fmax(qx[2], qx[3]));
    let y0 = fmin(fmin(qy[0], qy[1]), fmin(qy[2], qy[3]));
    let y1 = fmax(fmax(qy[0], qy[1]), fmax(qy[2], qy[3]));
    if !(x0 > -1e15 && x1 < 1e15 && y0 > -1e15 && y1 < 1e15) {
        return; // not finite, or absurdly far away
    }
    let (cr0, cr1) = (ffloor(y0 + 0.5), ffloor(y1 + 0.5));
    let (cc0, cc1) = (ffloor(x0 + 0.5), ffloor(x1 + 0.5));
    let r_first = fmax(fmax(cr0, row_lo as f64), 0.0);
    let r_last = fmin(fmin(cr1, row_hi as f64 - 1.0), ny as f64 - 1.0);
    let c_first = fmax(cc0, 0.0);
    let c_last = fmin(cc1, nx as f64 - 1.0);
    if r_first > r_last || c_first > c_last {
        return;
    }
    // Whole droplet inside a single output pixel: the common fast path.
    if cc0 == cc1 && cr0 == cr1 {
        emit(r_first as usize, c_first as usize, 1.0);
        return;
    }
    let inv_area = 1.0 / area;
    // At most 2 x 2 pixels: inclusion-exclusion from the areas left of the
    // column boundary, below the row boundary, and in the quadrant of both.
    if cr1 - cr0 <= 1.0 && cc1 - cc0 <= 1.0 {
        let (xb, yb) = (cc0 + 0.5, cr0 + 0.5);
        let left = if cc1 > cc0 { quad_area_below::<false>(qx, qy, xb) } else { area };
        let below = if cr1 > cr0 { quad_area_below::<true>(qx, qy, yb) } else { area };
        let both = if cc1 > cc0 && cr1 > cr0 { quad_area_in_quadrant(qx, qy, xb, yb) } else if cc1 > cc0 { left } else { below };
        let cells = [
            (cr0, cc0, both),
            (cr0, cc1, below - both),
            (cr1, cc0, left - both),
            (cr1, cc1, area - left - below + both),
        ];
        let n_cells = if cc1 > cc0 && cr1 > cr0 { 4 } else { 2 };
        let pick: [usize; 4] = if cc1 > cc0 && cr1 > cr0 { [0, 1, 2, 3] } else if cc1 > cc0 { [0, 1, 0, 0] } else { [0, 2, 0, 0] };
        for &k in &pick[..n_cells] {
            let (r, c, a) = cells[k];
            if r < r_first || r > r_last || c < c_first || c > c_last {
                continue;
            }
            let f = a * inv_area;
            if f > NEGLIGIBLE {
                emit(r as usize, c as usize, f);
            }
        }
        return;
    }
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
pub fn for_each_bilinear_weight(
    px: f64,
    py: f64,
    ny: usize,
    nx: usize,
    row_lo: usize,
    row_hi: usize,
    mut emit: impl FnMut(usize, usize, f64),
) {
    if !(px.is_finite() && py.is_finite()) {
        return;
    }
    let xf = px.floor();
    let yf = py.floor();
    let fx = px - xf;
    let fy = py - yf;
    let wy = [1.0 - fy, fy];
    let wx = [1.0 - fx, fx];
    for dy in 0..2 {
        let r = yf + dy as f64;
        if r < 0.0 || r >= ny as f64 || r < row_lo as f64 || r >= row_hi as f64 || wy[dy] <= 0.0 {
            continue;
        }
        for dx in 0..2 {
            let c = xf + dx as f64;
            if c < 0.0 || c >= nx as f64 || wx[dx] <= 0.0 {
                continue;
            }
            emit(r as usize, c as usize, wy[dy] * wx[dx]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        fn bilinear_weights_sum_to_one_inside(px in 0.0f64..9.0, py in 0.0f64..9.0) {
            let mut s = 0.0;
            for_each_bilinear_weight(px, py, 10, 10, 0, 10, |_, _, w| s += w);
            prop_assert!((s - 1.0).abs() < 1e-14);
        }
    }
}
