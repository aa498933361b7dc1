//! Test-only reference for the exact overlaps of [`crate::geometry`]:
//! polygons clipped against axis-aligned half-planes (Sutherland–Hodgman).
//! Clipping is exact up to floating-point rounding and works for any simple
//! subject polygon, convex or not, because the clip window (a pixel) is
//! convex. The engine never builds polygons; the tests check its closed-form
//! overlaps against this independent construction.

use crate::geometry::NEGLIGIBLE;

/// Enough vertices for a quadrilateral clipped by four half-planes.
pub const MAX_VERTICES: usize = 12;

/// A small polygon with inline storage.
#[derive(Clone, Copy, Debug)]
pub struct Polygon {
    n: usize,
    pub(crate) x: [f64; MAX_VERTICES],
    pub(crate) y: [f64; MAX_VERTICES],
}

impl Default for Polygon {
    fn default() -> Self {
        Polygon { n: 0, x: [0.0; MAX_VERTICES], y: [0.0; MAX_VERTICES] }
    }
}

/// Which side of an axis-aligned line to keep.
#[derive(Clone, Copy, Debug)]
enum Keep {
    XAtLeast(f64),
    XAtMost(f64),
    YAtLeast(f64),
    YAtMost(f64),
}

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

/// Reference implementation by Sutherland–Hodgman clipping (the engine uses
/// [`crate::geometry::for_each_quad_overlap`]).
///
/// Calls `emit(row, col, fraction)` for every output pixel in rows
/// `row_lo..row_hi` (clamped to `0..ny`) and columns `0..nx` that the droplet
/// overlaps; `fraction = area(droplet ∩ pixel) / area(droplet)`.
/// Parts of the droplet off the grid are lost (not renormalised).
/// `area` must be the droplet's (positive) area.
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
