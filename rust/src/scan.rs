//! The fused path and the accumulators it writes.
//!
//! [`accumulate_frame`] drizzles a frame (or crop) straight from its corner
//! map into the cube, one band of output rows per thread. Within a band, input
//! pixels are visited in increasing input index, so every voxel sums its
//! contributions in the same order for any thread count, band layout or strip
//! of rows: the result is bit-for-bit reproducible. [`BandTask`] is one band's
//! work: the SIMD block scan ([`BandTask::block`], footprints from
//! [`crate::lanes`]), the scalar path for the rest ([`BandTask::pixel`]), the
//! fast landing of droplets inside the band and grid ([`BandTask::land_cells`],
//! with the cube prefetched ahead) and the general one ([`BandTask::land`]).
//! The scan is compiled for AVX-512, AVX2 and portable code ([`Isa`]), all
//! giving the same bits.
//!
//! The accumulators, at the end of this file: [`CubeMut`] (the six arrays),
//! [`Band`] (a band of output rows owned by one task), [`Voxels`] (the one
//! voxel update of every path) and [`FrameStats`] (what a call did). Weight of
//! one contribution: `w = min(1/variance, ivar_max) * f_xy * f_z`;
//! accumulators, each `(n_z, ny, nx)`: `flux += w*F`, `weight += w`,
//! `var += w^2 * variance`, `count += 1`, `and_mask &= flags` (set to `flags`
//! on the first contribution, so it stays 0 where nothing landed),
//! `or_mask |= flags`. Bands come from `split_at` on the views, so no two
//! tasks write the same voxel and there are no locks or atomics on the
//! accumulators.
//!
//! The accumulators share this module with the scan on purpose: with them in a
//! module of their own, the compiler builds a slower band scan from the same
//! source (the extension: 68.3 M instead of 61.1 M instructions per
//! geometry-A frame, docs/performance.md). Re-measure before splitting it.

use std::sync::Mutex;

use ndarray::{ArrayViewMut3, Axis};

use crate::covariance::{CovBand, CovMut, PixelCells, Touch};
use crate::culling::{live_blocks, LiveBlock, Window, BLOCK};
use crate::droplet::{make_droplet, reach, Droplet};
use crate::frame::{pixel_value, FrameRow, FrameView, PixelValue, RawRow};
use crate::geometry::{bilinear_footprint_2x2, ffloor, fmax, fmin, for_each_cell, for_each_quad_overlap_in, quad_footprint_2x2};
use crate::lanes::{footprints, footprints_medium, Lane, Shape, LANES};
use crate::params::{Kernel, Params};
use crate::prefetch::prefetch;
use crate::schedule::{band_starts, bucket_by_band, merge_stats, pool_of, run_indexed};
use crate::spectral;

/// Input rows ahead of the current one whose pixels are prefetched: the scan
/// reads each row's live part only (a few KiB per array), too short for the
/// hardware prefetcher to pick up each new row in time (~4% faster).
const INPUT_AHEAD: usize = 2;

/// Input rows ahead of the current one whose cube cells are prefetched: the
/// droplets of the next rows land on cells next to this row's, and those that
/// no earlier row touched come from main memory when the cube is not in the
/// cache (as in a pipeline, where reading files evicts it between frames).
/// Measured on one frame of the kernel benchmark: 8.0 ms prefetching the
/// pixel's own cells, 7.5 ms one row ahead, 6.2 ms two rows ahead (three to
/// five alike).
const CUBE_AHEAD: usize = 2;

/// Drizzles one frame (or crop, or strip of rows) into the cube: the fused
/// entry point. Returns what was deposited; cube, frame and parameters that do
/// not fit each other are an error naming the array.
///
/// `threads`: the calling thread and `threads - 1` pool workers; `0`: as many
/// threads as rayon's global pool has (`RAYON_NUM_THREADS`).
pub fn accumulate_frame(cube: CubeMut<'_>, frame: &FrameView<'_>, p: &Params, threads: usize) -> Result<FrameStats, String> {
    accumulate_frame_at(cube, (0, 0), frame, p, threads)
}

/// [`accumulate_frame`] into a tile of a larger output grid: the cube holds the
/// grid's pixels from `origin = (row, column)` on, and the corner map is in the
/// grid's pixels. Every voxel of the tile gets the same contributions, in the
/// same order and with the same bits, as the same voxel of the whole grid.
pub fn accumulate_frame_at(
    cube: CubeMut<'_>,
    origin: (usize, usize),
    frame: &FrameView<'_>,
    p: &Params,
    threads: usize,
) -> Result<FrameStats, String> {
    accumulate_frame_with(cube, origin, frame, p, threads, Isa::widest())
}

/// [`accumulate_frame_at`] with the band scan built for `isa` at most (tests
/// compare the builds; all give the same bits).
pub(crate) fn accumulate_frame_with(
    cube: CubeMut<'_>,
    origin: (usize, usize),
    frame: &FrameView<'_>,
    p: &Params,
    threads: usize,
    isa: Isa,
) -> Result<FrameStats, String> {
    let (nz, ny_out, nx_out) = cube.shape()?;
    if origin.0.checked_add(ny_out).is_none_or(|n| n > u32::MAX as usize) || origin.1.checked_add(nx_out).is_none_or(|n| n > u32::MAX as usize) {
        return Err(format!("a tile at {origin:?} of {ny_out} x {nx_out} pixels lies beyond any grid"));
    }
    p.check_planes(nz)?;
    let (ny, nx) = frame.check()?;
    if ny.checked_mul(nx).is_none_or(|n| n > u32::MAX as usize) {
        return Err(format!("input of {ny} x {nx} pixels is too large"));
    }
    if nz == 0 || ny_out == 0 || nx_out == 0 || ny == 0 || nx == 0 {
        return Ok(FrameStats { n_pixels: 0, n_contributions: 0, planes: vec![false; nz] });
    }
    let isa = isa.min(Isa::widest());
    let m = reach(p.kernel);
    // The calling thread and `threads - 1` pool workers (see `run_indexed`).
    let threads = if threads == 0 { rayon::current_num_threads() } else { threads };
    let pool = if threads > 1 { Some(pool_of(threads - 1)?) } else { None };
    let helpers = pool.as_deref();
    let win = Window::at(origin, ny_out, nx_out);
    let mut blocks = live_blocks(frame, m, win, helpers);
    blocks.sort_unstable_by_key(|b| (b.j0, b.i0));
    let starts = band_starts(ny_out, threads, blocks.iter().map(|b| (b.row_lo, b.row_hi)));
    let n_bands = starts.len() - 1;
    let band_of = |r: u32| starts.partition_point(|&s| s <= r as usize) as u32 - 1;
    let (offsets, items) = bucket_by_band(blocks.len(), n_bands, |b| (band_of(blocks[b].row_lo), band_of(blocks[b].row_hi)));
    let bands: Vec<Mutex<Option<Band<'_>>>> = cube.into_bands_at(&starts, origin).into_iter().map(|b| Mutex::new(Some(b))).collect();
    let parts: Vec<BandResult> = run_indexed(helpers, bands.len(), |b| {
        let band = bands[b].lock().unwrap_or_else(|e| e.into_inner()).take().expect("each band is taken once");
        let mut task = BandTask::new(band, p, m, win, isa);
        let shared = task.scan(frame, &blocks, &items[offsets[b]..offsets[b + 1]]);
        (task.n_pixels, task.n_contributions, task.planes, shared, task.cov_overflow)
    });
    if let Some(o) = parts.iter().find_map(|t| t.4) {
        return Err(format!(
            "covariance: an input pixel couples voxels {o:?} (dz, dy, dx) apart, beyond the stencil of cov_offsets; \
             the droplets or spectral top-hats of this frame are larger than the configuration implies"
        ));
    }
    // Pixels that may reach several bands are counted once.
    let mut shared: Vec<u32> = parts.iter().flat_map(|t| t.3.iter().copied()).collect();
    shared.sort_unstable();
    shared.dedup();
    let n_pixels = shared.len() as u64 + parts.iter().map(|t| t.0).sum::<u64>();
    Ok(merge_stats(nz, parts.into_iter().map(|(_, nc, pl, _, _)| (nc, pl)), n_pixels))
}

/// What one band's task returns: pixels counted here, voxel updates, planes
/// touched, pixels that may reach other bands, and a covariance pair offset
/// beyond the stencil (if any).
type BandResult = (u64, u64, Vec<bool>, Vec<u32>, Option<[i64; 3]>);

/// The instruction sets the band scan is compiled for, narrowest first. The
/// builds run the same arithmetic, so they give the same bits (tested).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    Portable,
    Avx2,
    /// AVX2 code with the AVX-512 registers (32 vector registers, mask registers).
    Avx512,
}

impl Isa {
    /// The widest build this CPU runs.
    pub(crate) fn widest() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512dq") && has!("avx512vl") {
                return Isa::Avx512;
            }
            if has!("avx2") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

/// Where a droplet lands: within the 2 x 2 output pixels from `(r0, c0)` with
/// fractions `f[a][b]`, within 3 x 3, or a larger square droplet `(qx, qy, area)`.
#[derive(Clone, Copy)]
enum Spot {
    Cells(isize, isize, [[f64; 2]; 2]),
    /// Within the 3 x 3 output pixels from `(r0, c0)`, `f[a][b]` for `(r0 + a, c0 + b)`.
    Cells3(isize, isize, [[f64; 3]; 3]),
    Quad([f64; 4], [f64; 4], f64),
}

/// One band's task in [`accumulate_frame`]: its slice of the cube and what it has
/// deposited.
struct BandTask<'a, 'p> {
    band: Band<'a>,
    p: &'p Params,
    /// See [`reach`].
    m: f64,
    /// The cube's place in the grid (rows and columns of the corner map).
    win: Window,
    /// Smallest weight fraction that is deposited.
    negligible: f64,
    /// [`Params::keep_from`].
    keep_from: f64,
    /// Spectral overlaps `(plane, f_z)` of the current pixel: the first
    /// `n_zov` entries (room for one per plane, so filling it never allocates).
    zov_buf: Vec<(usize, f64)>,
    n_zov: usize,
    /// First plane of the previous pixel (a search hint).
    z_hint: usize,
    /// Input pixels that deposited and can reach only this band.
    n_pixels: u64,
    n_contributions: u64,
    planes: Vec<bool>,
    /// Per plane, the cube offset / 8 of the last prefetch (see [`CUBE_AHEAD`]).
    pf_last: Vec<isize>,
    /// The build of the scan: at most [`Isa::widest`].
    isa: Isa,
    /// With covariance: the voxels the current pixel touches (any band), and
    /// the first pair offset found beyond the stencil.
    touched: Vec<Touch>,
    cov_overflow: Option<[i64; 3]>,
}

impl<'a, 'p> BandTask<'a, 'p> {
    fn new(band: Band<'a>, p: &'p Params, m: f64, win: Window, isa: Isa) -> Self {
        let negligible = match p.kernel {
            Kernel::Square => crate::geometry::NEGLIGIBLE,
            Kernel::Bilinear => 0.0,
        };
        let nz = band.nz;
        // The fast path relies on this: spectral overlaps name planes below
        // `p.n_z()`, so they index the cube and the per-plane buffers unchecked.
        assert_eq!(nz, p.n_z(), "cube planes vs z_edges");
        BandTask {
            band,
            p,
            m,
            win,
            negligible,
            keep_from: p.keep_from(),
            zov_buf: vec![(0, 0.0); nz],
            n_zov: 0,
            z_hint: 0,
            n_pixels: 0,
            n_contributions: 0,
            planes: vec![false; nz],
            pf_last: vec![isize::MIN; nz],
            isa,
            touched: Vec::new(),
            cov_overflow: None,
        }
    }

    /// Drizzles the band's blocks `mine` (indices into `blocks`, sorted) of the
    /// checked `frame`; returns the input pixels that deposited here and may
    /// also reach another band. Uses the build `self.isa` (same bits in each).
    fn scan(&mut self, frame: &FrameView<'_>, blocks: &[LiveBlock], mine: &[u32]) -> Vec<u32> {
        // The cross terms take a separate instance of the scan, so that the default one is unchanged.
        if self.band.cov.is_some() {
            self.scan_isa::<true>(frame, blocks, mine)
        } else {
            self.scan_isa::<false>(frame, blocks, mine)
        }
    }

    /// [`Self::scan`] in the build `self.isa`; `COV`: with the covariance cross terms.
    #[inline(always)]
    fn scan_isa<const COV: bool>(&mut self, frame: &FrameView<'_>, blocks: &[LiveBlock], mine: &[u32]) -> Vec<u32> {
        match self.isa {
            // SAFETY: the CPU supports these features (`isa` is at most `Isa::widest()`).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { self.scan_avx512::<COV>(frame, blocks, mine) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.scan_avx2::<COV>(frame, blocks, mine) },
            _ => self.scan_any::<COV>(frame, blocks, mine),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn scan_avx2<const COV: bool>(&mut self, frame: &FrameView<'_>, blocks: &[LiveBlock], mine: &[u32]) -> Vec<u32> {
        self.scan_any::<COV>(frame, blocks, mine)
    }

    /// The AVX2 build with the AVX-512 instruction set (32 vector registers,
    /// mask registers): same arithmetic, so the same bits as the other builds.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl")]
    fn scan_avx512<const COV: bool>(&mut self, frame: &FrameView<'_>, blocks: &[LiveBlock], mine: &[u32]) -> Vec<u32> {
        self.scan_any::<COV>(frame, blocks, mine)
    }

    /// `COV`: also the covariance cross terms of every pixel ([`Self::land_cells`], [`Self::land`]).
    #[inline(always)]
    fn scan_any<const COV: bool>(&mut self, frame: &FrameView<'_>, blocks: &[LiveBlock], mine: &[u32]) -> Vec<u32> {
        let (ny, nx) = frame.image.dim();
        // The SIMD block path reads rows with unit stride (else pixel by pixel).
        let unit = [frame.corners_x.strides()[1], frame.corners_y.strides()[1], frame.image.strides()[1], frame.variance.strides()[1]]
            .into_iter()
            .chain([frame.flags.strides()[1], frame.lambda_c.strides()[1], frame.delta_lambda.strides()[1]])
            .chain(frame.exclude.as_ref().map(|e| e.strides()[1]))
            .all(|st| st == 1);
        let mut shared = Vec::new();
        // Row-major over the band's blocks: one block row at a time, each
        // input row across all of its live blocks (sequential reads).
        for group in mine.chunk_by(|&x, &y| blocks[x as usize].j0 == blocks[y as usize].j0) {
            let j0 = blocks[group[0] as usize].j0 as usize;
            for j in j0..(j0 + BLOCK).min(ny) {
                // SAFETY: the frame was checked by the caller; j and i are inside it.
                let row = unsafe { FrameRow::new(frame, j) };
                // The same columns a few rows further on, fetched ahead (see `block`).
                let ahead = (j + INPUT_AHEAD < ny).then(|| unsafe { FrameRow::new(frame, j + INPUT_AHEAD) });
                for &bi in group {
                    let i0 = blocks[bi as usize].i0 as usize;
                    if let Some(a) = &ahead {
                        a.prefetch(i0);
                    }
                    if unit && i0 + BLOCK <= nx {
                        unsafe { self.block::<COV>(&row, i0, j * nx, &mut shared) };
                        continue;
                    }
                    for i in i0..(i0 + BLOCK).min(nx) {
                        if unsafe { self.pixel::<COV>(&row, i) } {
                            shared.push((j * nx + i) as u32);
                        }
                    }
                }
            }
        }
        shared
    }

    /// Drizzles input pixel `i` of `row` into this band. Returns true when the
    /// pixel deposited here and may also reach another band (the caller then
    /// counts it in the shared set instead of `n_pixels`).
    ///
    /// SAFETY: `i` must be a column of the checked frame behind `row`.
    #[inline(always)]
    unsafe fn pixel<const COV: bool>(&mut self, row: &FrameRow, i: usize) -> bool {
        let p = self.p;
        let (row_lo, row_hi) = (self.band.r0, self.band.r0 + self.band.rows);
        let Some((qx, qy, y0, y1)) = (unsafe { self.reaching_quad(row, i) }) else { return false };
        let Some(droplet) = make_droplet(&qx, &qy, p.xy_shrink, p.kernel) else { return false };
        let cells = match droplet {
            Droplet::Square { qx, qy, .. } => quad_footprint_2x2(&qx, &qy),
            Droplet::Point { x, y } => bilinear_footprint_2x2(x, y),
        };
        let fp = match (cells, droplet) {
            (Some((r0, c0, f)), _)
                if r0 >= row_lo as isize && r0 + 1 < row_hi as isize && c0 >= self.win.left as isize && c0 + 1 < self.win.right as isize =>
            {
                // All four cells inside this band and the grid: the fast path.
                return unsafe { self.land_cells::<2, 2, false, COV>(row, i, y0, y1, r0 as usize, c0 as usize, &f, None) };
            }
            (Some((r0, c0, f)), _) => Spot::Cells(r0, c0, f),
            (None, Droplet::Square { qx, qy, area }) => Spot::Quad(qx, qy, area),
            (None, Droplet::Point { .. }) => return false,
        };
        unsafe { self.land::<COV>(row, i, y0, y1, fp) }
    }

    /// The corners `(qx, qy)` of pixel `i`'s unshrunk quadrilateral and the
    /// lowest and highest output row positions `y0`, `y1` of its corners; None
    /// when it cannot reach this band's rows or the grid's columns (the cheap
    /// rejection).
    ///
    /// SAFETY: `i` must be a column of the checked frame behind `row`.
    #[inline(always)]
    unsafe fn reaching_quad(&self, row: &FrameRow, i: usize) -> Option<([f64; 4], [f64; 4], f64, f64)> {
        let m = self.m;
        let (row_lo, row_hi) = (self.band.r0, self.band.r0 + self.band.rows);
        let qy = unsafe { [row.cy0.at(i), row.cy0.at(i + 1), row.cy1.at(i + 1), row.cy1.at(i)] };
        let y0 = fmin(fmin(qy[0], qy[1]), fmin(qy[2], qy[3]));
        let y1 = fmax(fmax(qy[0], qy[1]), fmax(qy[2], qy[3]));
        if !(y1 + m > row_lo as f64 && y0 - m < (row_hi - 1) as f64) {
            return None;
        }
        let qx = unsafe { [row.cx0.at(i), row.cx0.at(i + 1), row.cx1.at(i + 1), row.cx1.at(i)] };
        let x0 = fmin(fmin(qx[0], qx[1]), fmin(qx[2], qx[3]));
        let x1 = fmax(fmax(qx[0], qx[1]), fmax(qx[2], qx[3]));
        if !(x1 + m > self.win.left as f64 && x0 - m < (self.win.right - 1) as f64) {
            return None;
        }
        Some((qx, qy, y0, y1))
    }

    /// Drizzles the [`BLOCK`] pixels from column `i0` of `row` (all inside the
    /// frame; all rows contiguous): rejection and footprints a batch of
    /// [`LANES`] pixels at a time, then each pixel in column order: the fast path
    /// ([`Self::land_cells`]) where its cells lie inside the band and grid, else [`Self::land`].
    /// Marks pixels that may reach another band in `shared` (row-major index
    /// `base + i`). Same results as [`Self::pixel`] on each pixel.
    ///
    /// SAFETY: columns `i0 .. i0 + BLOCK` (and corner column `i0 + BLOCK`) must
    /// exist in the checked frame behind `row`, whose rows all have unit stride.
    #[inline(always)]
    unsafe fn block<const COV: bool>(&mut self, row: &FrameRow, i0: usize, base: usize, shared: &mut Vec<u32>) {
        let m = self.m;
        let (lo, hi) = (self.band.r0 as f64, (self.band.r0 + self.band.rows - 1) as f64);
        let (x_lo, x_hi) = (self.win.left as f64, (self.win.right - 1) as f64);
        let square = self.p.kernel == Kernel::Square;
        for i in (i0..i0 + BLOCK).step_by(LANES) {
            let at = |r: &RawRow<f64>, k: usize| -> Lane { std::array::from_fn(|l| unsafe { *r.ptr.add(i + k + l) }) };
            let qy = [at(&row.cy0, 0), at(&row.cy0, 1), at(&row.cy1, 1), at(&row.cy1, 0)];
            let qx = [at(&row.cx0, 0), at(&row.cx0, 1), at(&row.cx1, 1), at(&row.cx1, 0)];
            let y0: Lane = std::array::from_fn(|l| fmin(fmin(qy[0][l], qy[1][l]), fmin(qy[2][l], qy[3][l])));
            let y1: Lane = std::array::from_fn(|l| fmax(fmax(qy[0][l], qy[1][l]), fmax(qy[2][l], qy[3][l])));
            let x0: Lane = std::array::from_fn(|l| fmin(fmin(qx[0][l], qx[1][l]), fmin(qx[2][l], qx[3][l])));
            let x1: Lane = std::array::from_fn(|l| fmax(fmax(qx[0][l], qx[1][l]), fmax(qx[2][l], qx[3][l])));
            let reach: [bool; LANES] = std::array::from_fn(|l| (y1[l] + m > lo) & (y0[l] - m < hi) & (x1[l] + m > x_lo) & (x0[l] - m < x_hi));
            if !reach.iter().any(|&r| r) {
                continue;
            }
            let fp = footprints(&qx, &qy, self.p.xy_shrink, square);
            // Where this column's pixel lands `ahead` input rows further on (the
            // corner map's step from one input row to the next), clamped into
            // the band and grid: its cube lines are fetched now.
            // Only where an input row moves the droplets by a good part of an
            // output pixel: smaller input pixels land on the previous rows' cells
            // (measured: the bookkeeping alone cost 11% when every droplet was a
            // tenth of an output pixel).
            let prefetching = (qy[3][0] - qy[0][0]).abs() + (qx[3][0] - qx[0][0]).abs() > 0.5;
            let ahead = CUBE_AHEAD as f64;
            let pf_r: Lane = std::array::from_fn(|l| fmin(fmax(ffloor(fp.r0[l] + ahead * (qy[3][l] - qy[0][l]) + 0.5), lo), hi));
            let pf_c: Lane = std::array::from_fn(|l| fmin(fmax(ffloor(fp.c0[l] + ahead * (qx[3][l] - qx[0][l]) + 0.5), x_lo), x_hi));
            // The voxel offset in plane 0 of the band (exact: whole numbers far below 2^53;
            // the clamping maps NaN to the band's first row and column 0).
            let (st_r, st_c) = (self.band.strides[1] as f64, self.band.strides[2] as f64);
            let pf_off: Lane = std::array::from_fn(|l| (pf_r[l] - lo) * st_r + (pf_c[l] - x_lo) * st_c);
            // The same for the covariance cross terms (their own strides).
            let pf_cov: Lane = match self.band.cov.as_ref().filter(|_| COV) {
                Some(cov) => {
                    let [_, sr, sc] = cov.strides().map(|s| s as f64);
                    std::array::from_fn(|l| (pf_r[l] - lo) * sr + (pf_c[l] - x_lo) * sc)
                }
                None => [0.0; LANES],
            };
            let f3 = if fp.any_medium() { footprints_medium(&fp) } else { [[[0.0; LANES]; 3]; 3] };
            if COV && fp.any_medium() {
                self.prefetch_far(&fp, &reach);
            }
            for l in 0..LANES {
                if !reach[l] {
                    continue;
                }
                // The common case: a droplet within 2 x 2 output pixels, all inside this band and the grid.
                let (r0, c0) = (fp.r0[l], fp.c0[l]);
                let inside = |rows: f64, cols: f64| r0 >= lo && r0 + rows <= hi && c0 >= x_lo && c0 + cols <= x_hi;
                let wide = fp.c1[l] - c0 == 2.0;
                // Every other lane: neighbouring pixels target the same cache lines
                // (measured on the extension: ~1.5% faster than every lane; the
                // first lane only was slower). With the cross terms, every lane: each
                // cell's terms have lines of their own, and the neighbours' boxes
                // leave gaps (geometry A: 14.5-14.6 ms instead of 15.0, load ~4).
                // SAFETY: `pf_off` is finite and a whole number (see above).
                let pf = (prefetching && (COV || l % 2 == 0))
                    .then(|| unsafe { (pf_off[l].to_int_unchecked::<isize>(), pf_cov[l].to_int_unchecked::<isize>()) });
                // SAFETY (the casts): `inside` makes `r0`, `c0` finite whole numbers in 0 .. 2^32.
                let cells = || unsafe { (r0.to_int_unchecked::<isize>() as usize, c0.to_int_unchecked::<isize>() as usize) };
                let landed = match fp.shape(l) {
                    Shape::Small if inside(1.0, 1.0) => {
                        let f = [[fp.f[0][l], fp.f[1][l]], [fp.f[2][l], fp.f[3][l]]];
                        let (r0, c0) = cells();
                        Some(unsafe { self.land_cells::<2, 2, true, COV>(row, i + l, y0[l], y1[l], r0, c0, &f, pf) })
                    }
                    // Three columns and at most two rows (the third row of `f3` is zero), or the transpose.
                    Shape::Medium if wide && inside(1.0, 2.0) => {
                        let f: [[f64; 3]; 2] = std::array::from_fn(|a| std::array::from_fn(|b| f3[a][b][l]));
                        let (r0, c0) = cells();
                        Some(unsafe { self.land_cells::<2, 3, true, COV>(row, i + l, y0[l], y1[l], r0, c0, &f, pf) })
                    }
                    Shape::Medium if !wide && inside(2.0, 1.0) => {
                        let f: [[f64; 2]; 3] = std::array::from_fn(|a| std::array::from_fn(|b| f3[a][b][l]));
                        let (r0, c0) = cells();
                        Some(unsafe { self.land_cells::<3, 2, true, COV>(row, i + l, y0[l], y1[l], r0, c0, &f, pf) })
                    }
                    _ => None,
                };
                if let Some(shared_pixel) = landed {
                    if shared_pixel {
                        shared.push((base + i + l) as u32);
                    }
                    continue;
                }
                let spot = match fp.shape(l) {
                    Shape::Skip => continue,
                    Shape::Small => Spot::Cells(fp.r0[l] as isize, fp.c0[l] as isize, [[fp.f[0][l], fp.f[1][l]], [fp.f[2][l], fp.f[3][l]]]),
                    Shape::Medium => {
                        Spot::Cells3(fp.r0[l] as isize, fp.c0[l] as isize, std::array::from_fn(|a| std::array::from_fn(|b| f3[a][b][l])))
                    }
                    Shape::Large => {
                        let (qx, qy) = (std::array::from_fn(|k| qx[k][l]), std::array::from_fn(|k| qy[k][l]));
                        match make_droplet(&qx, &qy, self.p.xy_shrink, self.p.kernel) {
                            Some(Droplet::Square { qx, qy, area }) => Spot::Quad(qx, qy, area),
                            _ => continue,
                        }
                    }
                };
                if unsafe { self.land::<COV>(row, i + l, y0[l], y1[l], spot) } {
                    shared.push((base + i + l) as u32);
                }
            }
        }
    }

    /// With the cross terms: asks for the lines of the terms between cells two
    /// apart of the 3-wide droplets of this batch of lanes (in the planes of the
    /// previous pixel and the next: [`CovBand::prefetch_far`]), before any lands.
    /// Not inlined: the batch scan keeps its registers (rare: batches with a 3-wide droplet).
    #[inline(never)]
    fn prefetch_far(&self, fp: &crate::lanes::Footprints, reach: &[bool; LANES]) {
        let Some(cov) = self.band.cov.as_ref() else { return };
        let (lo, hi) = (self.band.r0 as f64, (self.band.r0 + self.band.rows - 1) as f64);
        let (x_lo, x_hi) = (self.win.left as f64, (self.win.right - 1) as f64);
        let [sz, sr, sc] = cov.strides();
        for (l, &reaches) in reach.iter().enumerate() {
            let (r0, c0) = (fp.r0[l], fp.c0[l]);
            if !(reaches && matches!(fp.shape(l), Shape::Medium) && r0 >= lo && r0 + 2.0 <= hi && c0 >= x_lo && c0 + 2.0 <= x_hi) {
                continue;
            }
            // SAFETY (the casts): checked above to be finite whole numbers inside the band and grid.
            let at = unsafe { (r0 - lo).to_int_unchecked::<isize>() * sr + (c0 - x_lo).to_int_unchecked::<isize>() * sc } + self.z_hint as isize * sz;
            cov.prefetch_far(at, fp.c1[l] - c0 == 2.0);
        }
    }

    /// [`Self::land`] for a droplet within the R x C output pixels from
    /// `(r0, c0)` (fractions `f[a][b]` for `(r0 + a, c0 + b)`), all inside this
    /// band and the grid: the voxel updates of [`Self::deposit_checked`] (each
    /// voxel receives at most one update per pixel, so their order within the
    /// pixel does not matter), the six array pointers and the pixel's values in
    /// locals.
    ///
    /// SAFETY: `i` must be a column of the checked frame behind `row`; the R x C
    /// output pixels must lie in this band and on the grid; `UNIT` only if the
    /// frame's rows have unit stride.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn land_cells<const R: usize, const C: usize, const UNIT: bool, const COV: bool>(
        &mut self,
        row: &FrameRow,
        i: usize,
        y0: f64,
        y1: f64,
        r0: usize,
        c0: usize,
        f: &[[f64; C]; R],
        prefetch_at: Option<(isize, isize)>,
    ) -> bool {
        let Some((pix, n_z)) = (unsafe { self.value_and_overlaps::<UNIT>(row, i) }) else { return false };
        // SAFETY: the first `n_z` entries were just written.
        let zov = unsafe { self.zov_buf.get_unchecked(..n_z) };
        let (band, planes, keep_from, neg) = (&mut self.band, &mut self.planes, self.keep_from, self.negligible);
        let pf_last = &mut self.pf_last;
        debug_assert!(r0 >= band.r0 && r0 + R <= band.r0 + band.rows && c0 >= band.c0 && c0 + C <= band.c0 + band.nx);
        let st = band.strides;
        let nz = band.nz;
        let base = (r0 - band.r0) as isize * st[1] + (c0 - band.c0) as isize * st[2];
        // Cells with a negligible fraction get nothing (a zero fraction fails `keep_from`).
        let f = f.map(|fr| fr.map(|x| if x > neg { x } else { 0.0 }));
        // The pointers and values in locals, so that the compiler need not
        // reload them after every store into the cube.
        let vox = band.vox;
        let (value, variance, ivar, flags) = (pix.value, pix.variance, pix.ivar, pix.flags);
        let cell: [[isize; C]; R] = std::array::from_fn(|a| std::array::from_fn(|b| a as isize * st[1] + b as isize * st[2]));
        let mut n = 0usize;
        for &(k, f_z) in zov {
            // `k < nz`: the per-plane buffers (length `nz`) are indexed unchecked.
            debug_assert!(k < nz && pf_last.len() == nz && planes.len() == nz);
            if COV {
                if let (Some((_, at)), Some(cov)) = (prefetch_at, band.cov.as_ref()) {
                    cov.prefetch(at + k as isize * cov.strides()[0]);
                }
            }
            if let Some(at) = prefetch_at.map(|p| p.0).filter(|&at| {
                // Once per cache line of the float arrays and plane (a line holds
                // eight neighbouring cells, which the next pixels target too).
                let line = (at + k as isize * st[0]) >> 3;
                // SAFETY: `k < nz` (above).
                let last = unsafe { pf_last.get_unchecked_mut(k) };
                let fresh = *last != line;
                *last = line;
                fresh
            }) {
                vox.prefetch(at + k as isize * st[0], flags);
            }
            let off = base + k as isize * st[0];
            let mut kept = 0usize;
            for a in 0..R {
                for b in 0..C {
                    let fc = f[a][b] * f_z;
                    if fc >= keep_from {
                        // SAFETY: (k, r0 + a, c0 + b) lies inside this band (the caller's contract).
                        unsafe { vox.add(off + cell[a][b], ivar * fc, value, variance, flags) };
                        kept += 1;
                    }
                }
            }
            n += kept;
            // SAFETY: `k < nz` (above).
            unsafe { *planes.get_unchecked_mut(k) |= kept > 0 };
        }
        if n == 0 {
            return false;
        }
        if COV {
            if let Some(cov) = band.cov.as_mut() {
                // SAFETY: the R x C output pixels lie in this band and on the grid (the
                // caller's contract), the planes of `zov` in the cube (above).
                let px = PixelCells { r0, c0, f: &f, zov, ivar, variance, keep_from };
                if let Err(o) = unsafe { cov.add_cells(px) } {
                    self.cov_overflow.get_or_insert(o);
                }
            }
        }
        self.n_contributions += n as u64;
        self.count_pixel(y0, y1)
    }

    /// The value of pixel `i` of `row` ([`pixel_value`]) and its spectral
    /// overlaps, written to the start of `zov_buf` (their number returned);
    /// `None` when the pixel is skipped.
    ///
    /// SAFETY: `i` must be a column of the checked frame behind `row`; `UNIT`
    /// only if the frame's rows have unit stride.
    #[inline(always)]
    unsafe fn value_and_overlaps<const UNIT: bool>(&mut self, row: &FrameRow, i: usize) -> Option<(PixelValue, usize)> {
        let p = self.p;
        let excluded = row.exclude.is_some_and(|e| unsafe { e.get::<UNIT>(i) });
        let (value, variance, flags) = unsafe { (row.image.get::<UNIT>(i), row.variance.get::<UNIT>(i), row.flags.get::<UNIT>(i)) };
        let pix = pixel_value(value, variance, flags, unsafe { row.lam.get::<UNIT>(i) }, unsafe { row.dlam.get::<UNIT>(i) }, excluded, p)?;
        let (buf, mut n) = (self.zov_buf.as_mut_ptr(), 0);
        debug_assert_eq!(self.zov_buf.len(), self.band.nz);
        // Each plane is emitted at most once and is below the cube's plane count
        // (the planes of `p.z_edges`; see `BandTask::new`), the buffer's length.
        spectral::for_each_overlap_hinted(pix.lambda_c, pix.delta_lambda, p.z_shrink, &p.z_edges, &mut self.z_hint, |k, f_z| {
            // SAFETY: `n` is below the buffer's length (above).
            unsafe { buf.add(n).write((k, f_z)) };
            n += 1;
        });
        Some((pix, n))
    }

    /// Counts a pixel that deposited here when no other band can receive it;
    /// returns true when another band may (the caller then counts it in the
    /// shared set instead).
    #[inline(always)]
    fn count_pixel(&mut self, y0: f64, y1: f64) -> bool {
        let (row_lo, row_hi, m) = (self.band.r0, self.band.r0 + self.band.rows, self.m);
        let alone = (row_lo == self.win.top || y0 - m >= row_lo as f64 - 1.0) && (row_hi == self.win.bottom || y1 + m <= row_hi as f64);
        if alone {
            self.n_pixels += 1;
        }
        !alone
    }

    /// Deposits pixel `i` of `row`, whose unshrunk quadrilateral spans output
    /// rows `y0 ..= y1` and whose droplet covers `spot`, after the value checks
    /// and spectral overlaps. Returns what [`Self::pixel`] returns.
    ///
    /// Not inlined: the band scan's hot loop (the fast path) keeps more in
    /// registers without this rarer path's code (2-3% faster); the results do
    /// not depend on the instruction set it is compiled for.
    ///
    /// SAFETY: `i` must be a column of the checked frame behind `row`.
    #[inline(never)]
    unsafe fn land<const COV: bool>(&mut self, row: &FrameRow, i: usize, y0: f64, y1: f64, spot: Spot) -> bool {
        let (row_lo, row_hi) = (self.band.r0, self.band.r0 + self.band.rows);
        let Some((pix, n)) = (unsafe { self.value_and_overlaps::<false>(row, i) }) else { return false };
        if n == 0 {
            return false;
        }
        self.n_zov = n;
        let deposited = match spot {
            // At the band's or the grid's edge (callers send droplets inside both
            // to `land_cells`): check each pixel.
            Spot::Cells(r0, c0, f) => self.deposit_checked(r0, c0, &f, &pix),
            Spot::Cells3(r0, c0, f) => self.deposit_checked(r0, c0, &f, &pix),
            // Larger than 2 x 2 output pixels (or absurdly far away).
            Spot::Quad(qx, qy, area) => {
                let mut n = 0;
                let (band, zov, planes, keep_from) = (&mut self.band, &self.zov_buf[..self.n_zov], &mut self.planes, self.keep_from);
                let (rows, cols) = ((row_lo, row_hi.min(self.win.bottom)), (self.win.left, self.win.right));
                for_each_quad_overlap_in(&qx, &qy, area, rows, cols, |r, c, f| {
                    n += band.deposit(r, c, f, &pix, zov, keep_from, planes);
                });
                n
            }
        };
        if deposited == 0 {
            return false;
        }
        if COV {
            self.cross_terms(spot, &pix);
        }
        self.n_contributions += deposited as u64;
        self.count_pixel(y0, y1)
    }

    /// The covariance cross terms of a pixel that [`Self::land`] deposited: the
    /// voxels its droplet `spot` gives weight on the whole grid (every band's
    /// rows, with the same fractions and weights as the deposits), of which the
    /// pairs anchored in this band are added ([`CovBand::add_pairs`]).
    fn cross_terms(&mut self, spot: Spot, pix: &PixelValue) {
        let Some(cov) = self.band.cov.as_mut() else { return };
        let win = self.win;
        let (rows, cols) = (win.top as isize..win.bottom as isize, win.left as isize..win.right as isize);
        let (zov, keep_from, touched) = (&self.zov_buf[..self.n_zov], self.keep_from, &mut self.touched);
        touched.clear();
        // As `Band::deposit`: each plane of each cell, in (row, column, plane) order.
        let mut emit = |r: usize, c: usize, f_xy: f64| {
            for &(k, f_z) in zov {
                let f = f_xy * f_z;
                if f >= keep_from {
                    touched.push(Touch { z: k, r, c, w: pix.ivar * f });
                }
            }
        };
        match spot {
            Spot::Cells(r0, c0, f) => for_each_cell(r0, c0, &f, rows, cols, self.negligible, &mut emit),
            Spot::Cells3(r0, c0, f) => for_each_cell(r0, c0, &f, rows, cols, self.negligible, &mut emit),
            Spot::Quad(qx, qy, area) => for_each_quad_overlap_in(&qx, &qy, area, (win.top, win.bottom), (win.left, win.right), &mut emit),
        }
        if let Err(o) = cov.add_pairs(touched, pix.variance) {
            self.cov_overflow.get_or_insert(o);
        }
    }

    /// Deposits those of the N x N output pixels from `(r0, c0)` that lie in
    /// this band and on the grid (and have a weight above rounding noise).
    #[inline(always)]
    fn deposit_checked<const N: usize>(&mut self, r0: isize, c0: isize, f_xy: &[[f64; N]; N], pix: &PixelValue) -> usize {
        let rows = self.band.r0 as isize..(self.band.r0 + self.band.rows).min(self.win.bottom) as isize;
        let cols = self.win.left as isize..self.win.right as isize;
        let (band, zov, planes, keep_from) = (&mut self.band, &self.zov_buf[..self.n_zov], &mut self.planes, self.keep_from);
        let mut n = 0;
        for_each_cell(r0, c0, f_xy, rows, cols, self.negligible, |r, c, f| {
            n += band.deposit(r, c, f, pix, zov, keep_from, planes);
        });
        n
    }
}

/// The six accumulators of a cube, each `(n_z, ny, nx)`.
pub struct CubeMut<'a> {
    pub flux: ArrayViewMut3<'a, f64>,
    pub weight: ArrayViewMut3<'a, f64>,
    pub var: ArrayViewMut3<'a, f64>,
    pub count: ArrayViewMut3<'a, u32>,
    pub and_mask: ArrayViewMut3<'a, u32>,
    pub or_mask: ArrayViewMut3<'a, u32>,
    /// The covariance cross terms, when asked for ([`crate::covariance`]).
    pub cov: Option<CovMut<'a>>,
}

/// One band of output rows `r0 .. r0 + rows` of every accumulator, as raw
/// pointers sharing one set of strides (checked in [`CubeMut::shape`]). Bands
/// come from `split_at` on the views, so they never overlap.
pub(crate) struct Band<'a> {
    /// First output row (of the grid) and number of rows.
    pub(crate) r0: usize,
    /// First output column (of the grid: the cube's origin).
    pub(crate) c0: usize,
    pub(crate) rows: usize,
    pub(crate) nz: usize,
    pub(crate) nx: usize,
    pub(crate) strides: [isize; 3],
    pub(crate) vox: Voxels,
    /// This band's rows of the covariance cross terms, when the cube has them.
    pub(crate) cov: Option<CovBand<'a>>,
    _views: std::marker::PhantomData<&'a mut f64>,
}

/// Base pointers of the six accumulators of a band (flux, weight, variance;
/// count, AND, OR), which share their strides. Copied into locals by the fast
/// path so that the compiler need not reload them after every store.
#[derive(Clone, Copy)]
pub(crate) struct Voxels {
    f: [*mut f64; 3],
    u: [*mut u32; 3],
}

impl Voxels {
    /// Adds weight `w` of a pixel (`value`, `variance`, `flags`) to the voxel
    /// at offset `o` of the six arrays: flux, weight, variance, count, and the
    /// flag masks (AND starting from the first contribution's flags, so it
    /// stays 0 where nothing landed). The one voxel update of every path.
    ///
    /// SAFETY: `o` must be a voxel of the band these pointers belong to (all six
    /// arrays share the strides, and a band's memory is disjoint from every
    /// other band's).
    #[inline(always)]
    pub(crate) unsafe fn add(self, o: isize, w: f64, value: f64, variance: f64, flags: u32) {
        unsafe {
            *self.f[0].offset(o) += w * value;
            *self.f[1].offset(o) += w;
            *self.f[2].offset(o) += w * w * variance;
            let cnt = self.u[0].offset(o);
            let and = self.u[1].offset(o);
            if flags == 0 {
                *and = 0;
            } else {
                let first = 0u32.wrapping_sub((*cnt == 0) as u32);
                *and = (*and | first) & flags;
                *self.u[2].offset(o) |= flags;
            }
            *cnt = (*cnt).saturating_add(1);
        }
    }

    /// Asks for the cache lines of voxel offset `o` in the arrays a pixel with
    /// `flags` updates (the OR mask only when flags are set).
    #[inline(always)]
    pub(crate) fn prefetch(self, o: isize, flags: u32) {
        prefetch(self.f[0].wrapping_offset(o));
        prefetch(self.f[1].wrapping_offset(o));
        prefetch(self.f[2].wrapping_offset(o));
        prefetch(self.u[0].wrapping_offset(o));
        prefetch(self.u[1].wrapping_offset(o));
        if flags != 0 {
            prefetch(self.u[2].wrapping_offset(o));
        }
    }
}

// SAFETY: a band is the only handle to its disjoint slice of the accumulators.
unsafe impl Send for Band<'_> {}

impl<'a> CubeMut<'a> {
    /// `(n_z, ny, nx)`, after checking that all six arrays agree.
    pub fn shape(&self) -> Result<(usize, usize, usize), String> {
        let s = self.flux.dim();
        let others = [
            ("weight_total", self.weight.dim()),
            ("var_accum", self.var.dim()),
            ("count_map", self.count.dim()),
            ("and_mask", self.and_mask.dim()),
            ("or_mask", self.or_mask.dim()),
        ];
        for (name, d) in others {
            if d != s {
                return Err(format!("cube array {name} has shape {d:?}, flux_weighted has {s:?}"));
            }
        }
        let st = self.flux.strides();
        let all = [self.weight.strides(), self.var.strides(), self.count.strides(), self.and_mask.strides(), self.or_mask.strides()];
        if all.iter().any(|o| *o != st) {
            return Err("cube arrays must share one memory layout (use C-contiguous arrays)".to_string());
        }
        if let Some(cov) = &self.cov {
            cov.check(s)?;
        }
        Ok(s)
    }

    /// The cube cut into bands of `rows` output rows.
    pub(crate) fn into_bands(self, rows: usize) -> Vec<Band<'a>> {
        let ny = self.flux.dim().1;
        let starts: Vec<usize> = (0..ny).step_by(rows.max(1)).chain([ny]).collect();
        self.into_bands_at(&starts, (0, 0))
    }

    /// The cube cut into bands of output rows `starts[b] .. starts[b + 1]`
    /// (`starts` increasing from 0 to the number of rows), for a cube whose
    /// first voxel is grid pixel `origin` (the bands' rows and columns count from
    /// the grid's).
    pub(crate) fn into_bands_at(self, starts: &[usize], origin: (usize, usize)) -> Vec<Band<'a>> {
        let ny = self.flux.dim().1;
        assert!(starts.first() == Some(&0) && starts.last() == Some(&ny) && starts.windows(2).all(|w| w[0] < w[1] || ny == 0));
        let mut bands = Vec::with_capacity(starts.len());
        let mut cov_bands = self.cov.map(|c| c.into_bands_at(starts, origin).into_iter());
        let (mut flux, mut weight, mut var) = (self.flux, self.weight, self.var);
        let (mut count, mut and_mask, mut or_mask) = (self.count, self.and_mask, self.or_mask);
        for w in starts.windows(2) {
            let (r0, n) = (w[0], w[1] - w[0]);
            if n == 0 {
                continue;
            }
            let (f, f_rest) = flux.split_at(Axis(1), n);
            let (w, w_rest) = weight.split_at(Axis(1), n);
            let (v, v_rest) = var.split_at(Axis(1), n);
            let (c, c_rest) = count.split_at(Axis(1), n);
            let (a, a_rest) = and_mask.split_at(Axis(1), n);
            let (mut o, o_rest) = or_mask.split_at(Axis(1), n);
            let st = [f.strides()[0], f.strides()[1], f.strides()[2]];
            let (mut f, mut w, mut v, mut c, mut a) = (f, w, v, c, a);
            bands.push(Band {
                r0: r0 + origin.0,
                c0: origin.1,
                rows: n,
                nz: f.dim().0,
                nx: f.dim().2,
                strides: st,
                vox: Voxels { f: [f.as_mut_ptr(), w.as_mut_ptr(), v.as_mut_ptr()], u: [c.as_mut_ptr(), a.as_mut_ptr(), o.as_mut_ptr()] },
                cov: cov_bands.as_mut().and_then(|b| b.next()),
                _views: std::marker::PhantomData,
            });
            flux = f_rest;
            weight = w_rest;
            var = v_rest;
            count = c_rest;
            and_mask = a_rest;
            or_mask = o_rest;
        }
        bands
    }
}

impl Band<'_> {
    /// Adds one pixel's contribution to output pixel `(r, c)` (global row)
    /// for every spectral overlap whose voxel fraction is at least
    /// `keep_from` ([`crate::params::Params::keep_from`]). Returns the number of voxel updates.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn deposit(
        &mut self,
        r: usize,
        c: usize,
        f_xy: f64,
        pix: &PixelValue,
        zov: &[(usize, f64)],
        keep_from: f64,
        planes: &mut [bool],
    ) -> usize {
        let (rl, cl) = (r.wrapping_sub(self.r0), c.wrapping_sub(self.c0));
        assert!(rl < self.rows && cl < self.nx, "output pixel ({r}, {c}) outside band at ({}, {})", self.r0, self.c0);
        let base = rl as isize * self.strides[1] + cl as isize * self.strides[2];
        let mut n = 0;
        for &(k, f_z) in zov {
            let f = f_xy * f_z;
            if !(f >= keep_from) {
                continue;
            }
            assert!(k < self.nz, "plane {k} outside the cube");
            // SAFETY: (k, rl, c) lies inside this band (asserted above).
            unsafe { self.add(base + k as isize * self.strides[0], pix.ivar * f, pix) };
            planes[k] = true;
            n += 1;
        }
        n
    }

    /// [`Voxels::add`] for `pix`.
    ///
    /// SAFETY: `o` must be a voxel of this band.
    #[inline(always)]
    unsafe fn add(&mut self, o: isize, w: f64, pix: &PixelValue) {
        unsafe { self.vox.add(o, w, pix.value, pix.variance, pix.flags) }
    }
}

/// Per-call statistics.
#[derive(Clone, Debug, Default)]
pub struct FrameStats {
    /// Input pixels that deposited into at least one voxel.
    pub n_pixels: u64,
    /// Voxel updates.
    pub n_contributions: u64,
    /// Planes that received at least one contribution.
    pub planes: Vec<bool>,
}
