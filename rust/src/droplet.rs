//! Droplets: the spatial footprint of one input pixel on the output grid
//! (a shrunk quadrilateral for the square kernel, a point for the bilinear
//! one), and how far beyond its corners a droplet can reach.

use crate::geometry::{classify_quad, for_each_bilinear_weight, for_each_quad_overlap, quad_signed_area, QuadShape};
use crate::params::Kernel;

/// The spatial footprint of one input pixel on the output grid.
#[derive(Clone, Copy, Debug)]
pub enum Droplet {
    /// The shrunk quadrilateral (output pixel coordinates) and its area.
    Square { qx: [f64; 4], qy: [f64; 4], area: f64 },
    /// The pixel centre (output pixel coordinates).
    Point { x: f64, y: f64 },
}

/// Builds the droplet of the quadrilateral `(qx, qy)`: shrunk by `xy_shrink`
/// about the mean of its corners (square kernel) or its centre (bilinear).
/// None for degenerate or folded quadrilaterals.
#[inline]
pub fn make_droplet(qx: &[f64; 4], qy: &[f64; 4], xy_shrink: f64, kernel: Kernel) -> Option<Droplet> {
    if classify_quad(qx, qy) != QuadShape::Simple {
        return None;
    }
    let mx = 0.25 * (qx[0] + qx[1] + qx[2] + qx[3]);
    let my = 0.25 * (qy[0] + qy[1] + qy[2] + qy[3]);
    match kernel {
        Kernel::Bilinear => Some(Droplet::Point { x: mx, y: my }),
        Kernel::Square => {
            let sx: [f64; 4] = std::array::from_fn(|k| mx + xy_shrink * (qx[k] - mx));
            let sy: [f64; 4] = std::array::from_fn(|k| my + xy_shrink * (qy[k] - my));
            let area = quad_signed_area(&sx, &sy).abs();
            if !(area > 0.0) {
                return None;
            }
            Some(Droplet::Square { qx: sx, qy: sy, area })
        }
    }
}

impl Droplet {
    /// Calls `emit(row, col, f_xy)` for output pixels in rows `row_lo..row_hi`.
    #[inline]
    pub fn for_each_overlap(&self, ny: usize, nx: usize, row_lo: usize, row_hi: usize, emit: impl FnMut(usize, usize, f64)) {
        match self {
            Droplet::Square { qx, qy, area } => for_each_quad_overlap(qx, qy, *area, ny, nx, row_lo, row_hi, emit),
            Droplet::Point { x, y } => for_each_bilinear_weight(*x, *y, ny, nx, row_lo, row_hi, emit),
        }
    }
}

/// How far (in output pixels) beyond its corners' bounding box a droplet can
/// reach output pixel centres it gives weight to: a square droplet touches
/// pixel `r` only if `r - 0.5 < y1` and `r + 0.5 > y0`; a bilinear point at
/// `y` gives weight to rows within 1 of it.
pub(crate) fn reach(kernel: Kernel) -> f64 {
    match kernel {
        Kernel::Square => 0.5,
        Kernel::Bilinear => 1.0,
    }
}
