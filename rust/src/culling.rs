//! Which input blocks can reach the output grid ("live blocks"), found from
//! the corner map's block boundaries before any pixel is read.
//!
//! The frame is cut into blocks of [`BLOCK`] x [`BLOCK`] input pixels, grouped
//! into super-blocks of [`SUPER`] x [`SUPER`] blocks and regions of [`TOP`] x
//! [`TOP`] super-blocks. For an injective (physical) mapping the image of a
//! part of the frame is bounded by the image of its boundary, so a part whose
//! boundary corners stay away from the grid is dropped whole.

use ndarray::ArrayView1;

use crate::frame::FrameView;
use crate::geometry::{ffloor, fmax, fmin};
use crate::schedule::run_indexed;

/// Input pixels per side of the blocks that are assigned to bands (and
/// rejected) wholesale.
pub(crate) const BLOCK: usize = 16;

/// Blocks per side of the super-blocks tested before their blocks.
pub(crate) const SUPER: usize = 8;

/// Super-blocks per side of the regions tested first, so that the far parts
/// of a frame cost a few boundary reads per region (the column reads, a cache
/// line per corner, dominate).
pub(crate) const TOP: usize = 4;

/// A block of input pixels whose droplets can reach the grid, and the output
/// rows `row_lo ..= row_hi` they can touch.
pub(crate) struct LiveBlock {
    /// First input row and column of the block.
    pub(crate) j0: u32,
    pub(crate) i0: u32,
    pub(crate) row_lo: u32,
    pub(crate) row_hi: u32,
}

/// The bounding box of a set of corners, and whether all were finite.
#[derive(Clone, Copy)]
struct CornerBox {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    /// Sum of all coordinates: NaN or infinity anywhere makes it non-finite.
    sum: f64,
}

impl CornerBox {
    const EMPTY: CornerBox = CornerBox { x0: f64::INFINITY, x1: f64::NEG_INFINITY, y0: f64::INFINITY, y1: f64::NEG_INFINITY, sum: 0.0 };

    #[inline(always)]
    fn take(&mut self, x: f64, y: f64) {
        self.sum += x + y;
        self.x0 = fmin(self.x0, x);
        self.x1 = fmax(self.x1, x);
        self.y0 = fmin(self.y0, y);
        self.y1 = fmax(self.y1, y);
    }

    #[inline(always)]
    fn union(self, o: CornerBox) -> CornerBox {
        CornerBox { x0: fmin(self.x0, o.x0), x1: fmax(self.x1, o.x1), y0: fmin(self.y0, o.y0), y1: fmax(self.y1, o.y1), sum: self.sum + o.sum }
    }

    /// `(x0, x1, y0, y1)`, or `None` when a corner was not finite.
    fn bbox(self) -> Option<(f64, f64, f64, f64)> {
        self.sum.is_finite().then_some((self.x0, self.x1, self.y0, self.y1))
    }
}

/// The bounding box of the corners `(xs[k], ys[k])`, `k` in `lo ..= hi`, with
/// four independent accumulators (a single one makes every min and max wait
/// for the previous one).
#[inline(always)]
fn corners_box(xs: &ArrayView1<'_, f64>, ys: &ArrayView1<'_, f64>, lo: usize, hi: usize) -> CornerBox {
    let mut acc = [CornerBox::EMPTY; 4];
    let mut k = lo;
    while k + 3 <= hi {
        for (a, b) in acc.iter_mut().enumerate() {
            b.take(xs[k + a], ys[k + a]);
        }
        k += 4;
    }
    while k <= hi {
        acc[0].take(xs[k], ys[k]);
        k += 1;
    }
    acc[0].union(acc[1]).union(acc[2].union(acc[3]))
}

/// The corners `(j, i0 ..= i1)` (one row: contiguous reads).
fn row_box(frame: &FrameView<'_>, j: usize, i0: usize, i1: usize) -> CornerBox {
    corners_box(&frame.corners_x.row(j), &frame.corners_y.row(j), i0, i1)
}

/// The corners `(j0 ..= j1, i)` (one column: a cache line per corner, so each
/// column segment is read once and shared by the blocks on both sides).
fn column_box(frame: &FrameView<'_>, j0: usize, j1: usize, i: usize) -> CornerBox {
    corners_box(&frame.corners_x.column(i), &frame.corners_y.column(i), j0, j1)
}

/// Boundaries `lo, lo + step, ..., hi` (the last one `hi`).
fn cuts(lo: usize, hi: usize, step: usize) -> Vec<usize> {
    (lo..hi).step_by(step).chain(std::iter::once(hi)).collect()
}

/// Where a cube lies in the output grid its corner maps refer to: rows
/// `top .. bottom` and columns `left .. right` (`0 .. ny, 0 .. nx` for a whole
/// cube; a tile of a larger grid otherwise). Corner maps are in the grid's
/// pixels, so a tile sees every droplet exactly as the whole grid does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) top: usize,
    pub(crate) left: usize,
    pub(crate) bottom: usize,
    pub(crate) right: usize,
}

impl Window {
    /// The `(ny, nx)` cube whose first voxel is grid pixel `origin = (row, column)`.
    pub(crate) fn at(origin: (usize, usize), ny: usize, nx: usize) -> Window {
        Window { top: origin.0, left: origin.1, bottom: origin.0 + ny, right: origin.1 + nx }
    }
}

/// The blocks of the frame whose droplets can reach the window `win` of the
/// grid (in super-block order), with rows counted from `win.top`. For an injective (physical) mapping the image of a block is
/// bounded by the image of its boundary, so the bounding box of the boundary
/// corners bounds every droplet in the block; `m` widens it by the kernel's
/// reach. A non-finite boundary corner makes a block reach every band (its
/// pixels are then tested one by one). Regions of [`TOP`] x [`TOP`]
/// super-blocks are tested first, then the super-blocks of live regions, then
/// the blocks of live super-blocks; at each level a boundary segment (a row or
/// column of corners between two cuts) is read once and shared by the two
/// parts it separates.
pub(crate) fn live_blocks(frame: &FrameView<'_>, m: f64, win: Window, helpers: Option<&rayon::ThreadPool>) -> Vec<LiveBlock> {
    let (ny, nx) = frame.image.dim();
    let (top, bottom) = (win.top as f64, win.bottom as f64 - 1.0);
    let (left, right) = (win.left as f64, win.right as f64 - 1.0);
    let reaches = |bbox: Option<(f64, f64, f64, f64)>| match bbox {
        None => Some((0, (win.bottom - win.top) as u32 - 1)),
        Some((x0, x1, y0, y1)) => (x1 + m > left && x0 - m < right && y1 + m > top && y0 - m < bottom).then(|| {
            let r0 = (fmax(ffloor(y0 - m), top) - top) as u32;
            let r1 = (fmin(ffloor(y1 + m), bottom) - top) as u32;
            (r0, r1)
        }),
    };
    let side = BLOCK * SUPER;
    let top = side * TOP;
    // Of the parts of pixel rows `j0 .. j1` between consecutive column cuts `cols`,
    // those whose outline reaches the grid.
    let live_parts = |j0: usize, j1: usize, cols: &[usize]| -> Vec<(usize, usize)> {
        let sides: Vec<CornerBox> = cols.iter().map(|&i| column_box(frame, j0, j1, i)).collect();
        let mut live = Vec::new();
        for (s, w) in cols.windows(2).enumerate() {
            let outline = row_box(frame, j0, w[0], w[1]).union(row_box(frame, j1, w[0], w[1])).union(sides[s]).union(sides[s + 1]);
            if reaches(outline.bbox()).is_some() {
                live.push((w[0], w[1]));
            }
        }
        live
    };
    // The blocks of super-row `sj0 .. sj1` between corner columns `ci0` and `ci1`.
    let super_row = |sj0: usize, sj1: usize, ci0: usize, ci1: usize, live: &mut Vec<LiveBlock>| {
        for (si0, si1) in live_parts(sj0, sj1, &cuts(ci0, ci1, side)) {
            let cols = cuts(si0, si1, BLOCK);
            let mut top: Vec<CornerBox> = cols.windows(2).map(|c| row_box(frame, sj0, c[0], c[1])).collect();
            for j0 in (sj0..sj1).step_by(BLOCK) {
                let j1 = (j0 + BLOCK).min(ny);
                let bottom: Vec<CornerBox> = cols.windows(2).map(|c| row_box(frame, j1, c[0], c[1])).collect();
                let left_right: Vec<CornerBox> = cols.iter().map(|&i| column_box(frame, j0, j1, i)).collect();
                for b in 0..cols.len() - 1 {
                    let outline = top[b].union(bottom[b]).union(left_right[b]).union(left_right[b + 1]);
                    if let Some((row_lo, row_hi)) = reaches(outline.bbox()) {
                        live.push(LiveBlock { j0: j0 as u32, i0: cols[b] as u32, row_lo, row_hi });
                    }
                }
                top = bottom;
            }
        }
    };
    let top_cols = cuts(0, nx, top);
    run_indexed(helpers, ny.div_ceil(top), |tr| {
        let (tj0, tj1) = (tr * top, ((tr + 1) * top).min(ny));
        let mut live = Vec::new();
        for (ti0, ti1) in live_parts(tj0, tj1, &top_cols) {
            for sj0 in (tj0..tj1).step_by(side) {
                super_row(sj0, (sj0 + side).min(tj1), ti0, ti1, &mut live);
            }
        }
        live
    })
    .into_iter()
    .flatten()
    .collect()
}
