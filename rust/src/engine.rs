//! Deterministic parallel accumulation of input pixels into the cube.
//!
//! The cube is split into bands of output rows; one rayon task owns one band,
//! so no two tasks write the same voxel and there are no locks or atomics on
//! the accumulators. Within a band, input pixels are visited in increasing
//! input index, so every voxel sums its contributions in the same order for
//! any thread count and any band size: the result is bit-for-bit reproducible.
//!
//! Weight of one contribution: `w = min(1/variance, ivar_max) * f_xy * f_z`.
//! Accumulators: `flux += w*F`, `weight += w`, `var += w^2 * variance`,
//! `count += 1`, `and_mask &= flags` (set to `flags` on the first
//! contribution, so it stays 0 where nothing landed), `or_mask |= flags`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut3, Axis};
use rayon::prelude::*;

use crate::geometry::{
    bilinear_footprint_2x2, classify_quad, ffloor, fmax, fmin, for_each_bilinear_weight, for_each_cell, for_each_quad_overlap, quad_footprint_2x2,
    QuadShape,
};
use crate::lanes::{footprints, footprints_medium, Lane, Shape, LANES};
use crate::spectral;

/// Output rows per band of the seed API's accumulation (one rayon task each).
/// Results do not depend on it.
pub const BAND_ROWS: usize = 16;

/// Band boundaries of [`drizzle_frame`] on `threads` threads: one band per
/// thread, the boundaries chosen so that each band has about the same work,
/// estimated from the live input blocks (each block's pixels spread evenly
/// over the output rows it can reach, `rows[b] = (first, last)`), so that
/// every thread stays busy when the frame covers the grid unevenly. One band
/// per thread scans the fewest input blocks twice (a block that straddles two
/// bands is scanned by both); with the cube cells prefetched (see
/// [`CUBE_AHEAD`]) shorter bands gain nothing from their smaller part of the
/// cube (measured: 300-row bands 5-11% faster than 40- and 80-row bands,
/// 150-row ones alike). Returns
/// the first row of each band and `ny_out` at the end. Results do not depend
/// on it.
fn band_starts(ny_out: usize, threads: usize, rows: impl Iterator<Item = (u32, u32)>) -> Vec<usize> {
    let n_bands = threads.clamp(1, ny_out.max(1));
    if n_bands == 1 {
        return vec![0, ny_out];
    }
    // Work per output row, then the rows where the cumulative work crosses k / n_bands.
    let mut work = vec![0.0f64; ny_out];
    for (r0, r1) in rows {
        let share = 1.0 / (r1 - r0 + 1) as f64;
        work[r0 as usize..=r1 as usize].iter_mut().for_each(|w| *w += share);
    }
    let total: f64 = work.iter().sum();
    let mut starts = vec![0];
    let mut cum = 0.0;
    for (r, w) in work.iter().enumerate() {
        cum += w;
        let next = starts.len();
        if next < n_bands && cum >= total * next as f64 / n_bands as f64 && r + 1 < ny_out && r + 1 > *starts.last().unwrap() {
            starts.push(r + 1);
        }
    }
    starts.push(ny_out);
    starts
}

/// Spatial kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Exact area overlap of the shrunk pixel footprint.
    Square,
    /// Pixel centre shared among the four nearest output pixel centres.
    Bilinear,
}

impl Kernel {
    pub fn parse(name: &str) -> Result<Kernel, String> {
        match name {
            "square" => Ok(Kernel::Square),
            "bilinear" => Ok(Kernel::Bilinear),
            other => Err(format!("kernel must be 'square' or 'bilinear', got {other:?}")),
        }
    }
}

/// Parameters of one accumulation call.
#[derive(Clone, Debug)]
pub struct Params {
    /// Output wavelength bin edges (um), strictly increasing.
    pub z_edges: Vec<f64>,
    pub xy_shrink: f64,
    pub z_shrink: f64,
    pub ivar_max: f64,
    pub min_overlap: f64,
    pub kernel: Kernel,
    /// Input pixels with any of these flag bits set are skipped.
    pub exclude_bits: u32,
}

impl Params {
    pub fn validate(&self) -> Result<(), String> {
        spectral::validate_edges(&self.z_edges)?;
        if !(self.xy_shrink > 0.0 && self.xy_shrink <= 1.0) {
            return Err(format!("xy_shrink must be in (0, 1], got {}", self.xy_shrink));
        }
        if !(self.z_shrink > 0.0 && self.z_shrink <= 1.0) {
            return Err(format!("z_shrink must be in (0, 1], got {}", self.z_shrink));
        }
        if !(self.ivar_max > 0.0) {
            return Err(format!("ivar_max must be > 0, got {}", self.ivar_max));
        }
        if !(self.min_overlap >= 0.0 && self.min_overlap < 1.0) {
            return Err(format!("min_overlap must be in [0, 1), got {}", self.min_overlap));
        }
        Ok(())
    }

    fn n_z(&self) -> usize {
        self.z_edges.len() - 1
    }

    /// Smallest voxel fraction `f_xy * f_z` that is deposited: `min_overlap`,
    /// or the smallest positive double when that is 0, so that `f >= keep_from`
    /// is `f > 0 && f >= min_overlap` (and false for NaN).
    fn keep_from(&self) -> f64 {
        if self.min_overlap > 0.0 {
            self.min_overlap
        } else {
            f64::from_bits(1)
        }
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
}

/// One band of output rows `r0 .. r0 + rows` of every accumulator, as raw
/// pointers sharing one set of strides (checked in [`CubeMut::shape`]). Bands
/// come from `split_at` on the views, so they never overlap.
struct Band<'a> {
    r0: usize,
    rows: usize,
    nz: usize,
    nx: usize,
    strides: [isize; 3],
    vox: Voxels,
    _views: std::marker::PhantomData<&'a mut f64>,
}

/// Base pointers of the six accumulators of a band (flux, weight, variance;
/// count, AND, OR), which share their strides. Copied into locals by the fast
/// path so that the compiler need not reload them after every store.
#[derive(Clone, Copy)]
struct Voxels {
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
    unsafe fn add(self, o: isize, w: f64, value: f64, variance: f64, flags: u32) {
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
    fn prefetch(self, o: isize, flags: u32) {
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
        Ok(s)
    }

    /// The cube cut into bands of `rows` output rows.
    fn into_bands(self, rows: usize) -> Vec<Band<'a>> {
        let ny = self.flux.dim().1;
        let starts: Vec<usize> = (0..ny).step_by(rows.max(1)).chain([ny]).collect();
        self.into_bands_at(&starts)
    }

    /// The cube cut into bands of output rows `starts[b] .. starts[b + 1]`
    /// (`starts` increasing from 0 to the number of rows).
    fn into_bands_at(self, starts: &[usize]) -> Vec<Band<'a>> {
        let ny = self.flux.dim().1;
        assert!(starts.first() == Some(&0) && starts.last() == Some(&ny) && starts.windows(2).all(|w| w[0] < w[1] || ny == 0));
        let mut bands = Vec::with_capacity(starts.len());
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
                r0,
                rows: n,
                nz: f.dim().0,
                nx: f.dim().2,
                strides: st,
                vox: Voxels { f: [f.as_mut_ptr(), w.as_mut_ptr(), v.as_mut_ptr()], u: [c.as_mut_ptr(), a.as_mut_ptr(), o.as_mut_ptr()] },
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

/// What one input pixel brings: value, variance, capped inverse variance, flags.
#[derive(Clone, Copy, Debug)]
pub struct PixelValue {
    pub value: f64,
    pub variance: f64,
    pub ivar: f64,
    pub flags: u32,
    /// Central wavelength and bandwidth (um).
    pub lambda_c: f64,
    pub delta_lambda: f64,
}

/// Returns the pixel's contribution data, or None when it must be skipped:
/// value, wavelength or bandwidth not finite, bandwidth <= 0, variance <= 0 or
/// not finite, excluded by flags or mask.
#[inline]
pub fn pixel_value(value: f64, variance: f64, flags: u32, lam: f64, dlam: f64, excluded: bool, p: &Params) -> Option<PixelValue> {
    if excluded || flags & p.exclude_bits != 0 {
        return None;
    }
    // `x - x` is 0 for every finite `x` and NaN otherwise, so the sum is 0 exactly
    // when all four are finite (one test instead of four).
    #[allow(clippy::eq_op)] // deliberate: `x - x` is the finiteness test
    let finite = (value - value) + (lam - lam) + (dlam - dlam) + (variance - variance) == 0.0;
    if !(finite && dlam > 0.0 && variance > 0.0) {
        return None;
    }
    // 1 / variance is positive (infinite at most), never NaN: a plain minimum.
    let ivar = 1.0 / variance;
    Some(PixelValue { value, variance, ivar: if ivar < p.ivar_max { ivar } else { p.ivar_max }, flags, lambda_c: lam, delta_lambda: dlam })
}

impl Band<'_> {
    /// Adds one pixel's contribution to output pixel `(r, c)` (global row)
    /// for every spectral overlap whose voxel fraction is at least
    /// `keep_from` ([`Params::keep_from`]). Returns the number of voxel updates.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn deposit(&mut self, r: usize, c: usize, f_xy: f64, pix: &PixelValue, zov: &[(usize, f64)], keep_from: f64, planes: &mut [bool]) -> usize {
        let rl = r - self.r0;
        assert!(rl < self.rows && c < self.nx, "output pixel ({r}, {c}) outside band at row {}", self.r0);
        let base = rl as isize * self.strides[1] + c as isize * self.strides[2];
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

/// Asks the CPU to bring the cache line at `p` into all its caches, L1 too (a
/// hint: no effect on results, no fault for any address). Measured on the
/// kernel benchmark: ~2% faster than into L2 only.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching never faults and does not access memory architecturally.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
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

/// A frame (or crop) to drizzle: corner map and per-pixel arrays.
pub struct FrameView<'a> {
    /// Output pixel x of input corners, `(ny + 1, nx + 1)`; `[j, i]` is the
    /// corner at input `(i - 0.5, j - 0.5)`.
    pub corners_x: ArrayView2<'a, f64>,
    pub corners_y: ArrayView2<'a, f64>,
    pub image: ArrayView2<'a, f64>,
    pub variance: ArrayView2<'a, f64>,
    pub flags: ArrayView2<'a, u32>,
    pub lambda_c: ArrayView2<'a, f64>,
    pub delta_lambda: ArrayView2<'a, f64>,
    pub exclude: Option<ArrayView2<'a, bool>>,
}

impl FrameView<'_> {
    fn check(&self) -> Result<(usize, usize), String> {
        let (ny, nx) = self.image.dim();
        for (name, d) in [
            ("variance", self.variance.dim()),
            ("flags", self.flags.dim()),
            ("lambda_c", self.lambda_c.dim()),
            ("delta_lambda", self.delta_lambda.dim()),
        ] {
            if d != (ny, nx) {
                return Err(format!("{name} has shape {d:?}, image has {:?}", (ny, nx)));
            }
        }
        if let Some(e) = &self.exclude {
            if e.dim() != (ny, nx) {
                return Err(format!("exclude_mask has shape {:?}, image has {:?}", e.dim(), (ny, nx)));
            }
        }
        for (name, d) in [("corners_x", self.corners_x.dim()), ("corners_y", self.corners_y.dim())] {
            if d != (ny + 1, nx + 1) {
                return Err(format!("{name} has shape {d:?}, expected {:?} (image shape + 1)", (ny + 1, nx + 1)));
            }
        }
        Ok((ny, nx))
    }
}

/// The spatial footprint of one input pixel on the output grid.
#[derive(Clone, Copy, Debug)]
pub enum Droplet {
    Square { qx: [f64; 4], qy: [f64; 4], area: f64 },
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
            let area = crate::geometry::quad_signed_area(&sx, &sy).abs();
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

/// Runs `f` in a rayon pool of `threads` threads (`0`: the global pool).
/// Pools are built once per thread count and kept for later calls.
fn run_in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    if threads == 0 {
        return Ok(f());
    }
    Ok(pool_of(threads)?.install(f))
}

/// The rayon pool of `threads` (> 0) threads, built on first use and kept.
fn pool_of(threads: usize) -> Result<Arc<rayon::ThreadPool>, String> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pool) = pools.get(&threads) {
        return Ok(Arc::clone(pool));
    }
    let pool = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| e.to_string())?);
    pools.insert(threads, Arc::clone(&pool));
    Ok(pool)
}

/// `f(0), ..., f(n - 1)` in index order, computed by the calling thread and
/// the workers of `helpers` (each taking the next index when it finishes one).
/// The calling thread starts at once, while the helpers (asleep between calls,
/// tens of microseconds to wake) join in; which thread computes what does not
/// change the results.
fn run_indexed<R: Send>(helpers: Option<&rayon::ThreadPool>, n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        let r = f(i);
        *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    };
    match helpers {
        Some(pool) if n > 1 => pool.in_place_scope(|s| {
            for _ in 0..pool.current_num_threads().min(n - 1) {
                s.spawn(|_| work());
            }
            work();
        }),
        _ => work(),
    }
    slots.into_iter().map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()).expect("every index is computed")).collect()
}

/// Stable counting sort of `n_items` items into bands: returns `(offsets,
/// items)` with the items of band `b` at `items[offsets[b]..offsets[b + 1]]`,
/// in input order. `range(item)` gives the first and last band of an item.
fn bucket_by_band(n_items: usize, n_bands: usize, range: impl Fn(usize) -> (u32, u32)) -> (Vec<usize>, Vec<u32>) {
    let mut counts = vec![0usize; n_bands + 1];
    for idx in 0..n_items {
        let (b0, b1) = range(idx);
        for b in b0..=b1 {
            counts[b as usize + 1] += 1;
        }
    }
    for b in 0..n_bands {
        counts[b + 1] += counts[b];
    }
    let mut fill = counts.clone();
    let mut items = vec![0u32; counts[n_bands]];
    for idx in 0..n_items {
        let (b0, b1) = range(idx);
        for b in b0..=b1 {
            let slot = &mut fill[b as usize];
            items[*slot] = idx as u32;
            *slot += 1;
        }
    }
    (counts, items)
}

/// Statistics from the band tasks' `(voxel updates, planes hit)` and the number
/// of contributing input pixels.
fn merge_stats(n_z: usize, parts: impl IntoIterator<Item = (u64, Vec<bool>)>, n_pixels: u64) -> FrameStats {
    let mut planes = vec![false; n_z];
    let mut n_contributions = 0;
    for (n, p) in parts {
        n_contributions += n;
        for (acc, v) in planes.iter_mut().zip(p) {
            *acc |= v;
        }
    }
    FrameStats { n_pixels, n_contributions, planes }
}

/// Input pixels per side of the blocks that are assigned to bands (and
/// rejected) wholesale.
const BLOCK: usize = 16;

/// Blocks per side of the super-blocks tested before their blocks.
const SUPER: usize = 8;

/// Super-blocks per side of the regions tested first, so that the far parts
/// of a frame cost a few boundary reads per region (the column reads, a cache
/// line per corner, dominate).
const TOP: usize = 4;

/// How far (in output pixels) beyond its corners' bounding box a droplet can
/// reach output pixel centres it gives weight to: a square droplet touches
/// pixel `r` only if `r - 0.5 < y1` and `r + 0.5 > y0`; a bilinear point at
/// `y` gives weight to rows within 1 of it.
fn reach(kernel: Kernel) -> f64 {
    match kernel {
        Kernel::Square => 0.5,
        Kernel::Bilinear => 1.0,
    }
}

/// A block of input pixels whose droplets can reach the grid, and the output
/// rows `row_lo ..= row_hi` they can touch.
struct LiveBlock {
    j0: u32,
    i0: u32,
    row_lo: u32,
    row_hi: u32,
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

/// The blocks of the frame whose droplets can reach the `ny_out x nx_out`
/// grid (in super-block order). For an injective (physical) mapping the image of a block is
/// bounded by the image of its boundary, so the bounding box of the boundary
/// corners bounds every droplet in the block; `m` widens it by the kernel's
/// reach. A non-finite boundary corner makes a block reach every band (its
/// pixels are then tested one by one). Regions of [`TOP`] x [`TOP`]
/// super-blocks are tested first, then the super-blocks of live regions, then
/// the blocks of live super-blocks; at each level a boundary segment (a row or
/// column of corners between two cuts) is read once and shared by the two
/// parts it separates.
fn live_blocks(frame: &FrameView<'_>, m: f64, ny_out: usize, nx_out: usize, helpers: Option<&rayon::ThreadPool>) -> Vec<LiveBlock> {
    let (ny, nx) = frame.image.dim();
    let reaches = |bbox: Option<(f64, f64, f64, f64)>| match bbox {
        None => Some((0, ny_out as u32 - 1)),
        Some((x0, x1, y0, y1)) => (x1 + m > 0.0 && x0 - m < nx_out as f64 - 1.0 && y1 + m > 0.0 && y0 - m < ny_out as f64 - 1.0).then(|| {
            let r0 = fmax(ffloor(y0 - m), 0.0) as u32;
            let r1 = fmin(ffloor(y1 + m), ny_out as f64 - 1.0) as u32;
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

/// Unchecked reads from one row of a 2-D view whose shape the caller checked.
#[derive(Clone, Copy)]
struct RawRow<T> {
    ptr: *const T,
    step: isize,
}

impl<T: Copy> RawRow<T> {
    /// Row `j` of `a`. SAFETY: `j` must be a row of `a`.
    #[inline(always)]
    unsafe fn new(a: &ArrayView2<'_, T>, j: usize) -> Self {
        RawRow { ptr: unsafe { a.as_ptr().offset(j as isize * a.strides()[0]) }, step: a.strides()[1] }
    }

    /// SAFETY: `i` must be a column of the view.
    #[inline(always)]
    unsafe fn at(&self, i: usize) -> T {
        unsafe { *self.ptr.offset(i as isize * self.step) }
    }

    /// [`Self::at`], with the step known to be 1 when `UNIT` (no multiplication).
    ///
    /// SAFETY: `i` must be a column of the view; `UNIT` only if the step is 1.
    #[inline(always)]
    unsafe fn get<const UNIT: bool>(&self, i: usize) -> T {
        debug_assert!(!UNIT || self.step == 1);
        if UNIT {
            unsafe { *self.ptr.add(i) }
        } else {
            unsafe { self.at(i) }
        }
    }
}

/// Row `j` of every per-pixel array of a checked frame, and corner rows `j`
/// and `j + 1`.
struct FrameRow {
    cx0: RawRow<f64>,
    cx1: RawRow<f64>,
    cy0: RawRow<f64>,
    cy1: RawRow<f64>,
    image: RawRow<f64>,
    variance: RawRow<f64>,
    flags: RawRow<u32>,
    lam: RawRow<f64>,
    dlam: RawRow<f64>,
    exclude: Option<RawRow<bool>>,
}

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

impl FrameRow {
    /// Prefetches the [`BLOCK`] pixels from column `i0` (clipped to the row) of
    /// every array of this row, and of its lower corner row.
    #[inline(always)]
    fn prefetch(&self, i0: usize) {
        fn at<T: Copy>(r: &RawRow<T>, i: usize) -> *const T {
            r.ptr.wrapping_offset(i as isize * r.step)
        }
        for i in [i0, i0 + BLOCK / 2] {
            prefetch(at(&self.cx1, i));
            prefetch(at(&self.cy1, i));
            prefetch(at(&self.image, i));
            prefetch(at(&self.variance, i));
            prefetch(at(&self.lam, i));
            prefetch(at(&self.dlam, i));
        }
        prefetch(at(&self.flags, i0));
    }

    /// SAFETY: `frame.check()` must have passed and `j` must be a pixel row.
    #[inline(always)]
    unsafe fn new(frame: &FrameView<'_>, j: usize) -> Self {
        unsafe {
            FrameRow {
                cx0: RawRow::new(&frame.corners_x, j),
                cx1: RawRow::new(&frame.corners_x, j + 1),
                cy0: RawRow::new(&frame.corners_y, j),
                cy1: RawRow::new(&frame.corners_y, j + 1),
                image: RawRow::new(&frame.image, j),
                variance: RawRow::new(&frame.variance, j),
                flags: RawRow::new(&frame.flags, j),
                lam: RawRow::new(&frame.lambda_c, j),
                dlam: RawRow::new(&frame.delta_lambda, j),
                exclude: frame.exclude.as_ref().map(|e| RawRow::new(e, j)),
            }
        }
    }
}

/// Driver of [`accumulate_contributions`]: buckets the items by the bands they
/// can touch (`range(item)`), then lets one task per band visit its items in
/// item order. `visit(item, band, row_lo, row_hi, planes, zov)` deposits and
/// returns the number of voxel updates; `pixel_of(item)` names the input pixel
/// (out of `n_pixels`) for the statistics.
#[allow(clippy::too_many_arguments)]
fn run_bands(
    cube: CubeMut<'_>,
    n_z: usize,
    ny_out: usize,
    n_items: usize,
    range: impl Fn(usize) -> (u32, u32),
    n_pixels: usize,
    pixel_of: impl Fn(usize) -> usize + Sync,
    visit: impl Fn(usize, &mut Band<'_>, usize, usize, &mut [bool], &mut Vec<(usize, f64)>) -> usize + Sync,
) -> FrameStats {
    let n_bands = ny_out.div_ceil(BAND_ROWS);
    let (offsets, items) = bucket_by_band(n_items, n_bands, range);
    let touched: Vec<AtomicBool> = (0..n_pixels).map(|_| AtomicBool::new(false)).collect();
    let parts: Vec<(u64, Vec<bool>)> = cube
        .into_bands(BAND_ROWS)
        .into_par_iter()
        .enumerate()
        .map(|(b, mut band)| {
            let mut planes = vec![false; n_z];
            let mut n = 0u64;
            let mut zov: Vec<(usize, f64)> = Vec::with_capacity(8);
            let (row_lo, row_hi) = (band.r0, band.r0 + band.rows);
            for &item in &items[offsets[b]..offsets[b + 1]] {
                let deposited = visit(item as usize, &mut band, row_lo, row_hi, &mut planes, &mut zov);
                if deposited > 0 {
                    n += deposited as u64;
                    touched[pixel_of(item as usize)].store(true, Ordering::Relaxed);
                }
            }
            (n, planes)
        })
        .collect();
    merge_stats(n_z, parts, touched.iter().filter(|t| t.load(Ordering::Relaxed)).count() as u64)
}

/// Drizzles one frame into the cube: the fused entry point.
///
/// `threads`: the calling thread and `threads - 1` pool workers; `0`: as many
/// threads as rayon's global pool has (`RAYON_NUM_THREADS`).
pub fn drizzle_frame(cube: CubeMut<'_>, frame: &FrameView<'_>, p: &Params, threads: usize) -> Result<FrameStats, String> {
    p.validate()?;
    let (nz, ny_out, nx_out) = cube.shape()?;
    if nz != p.n_z() {
        return Err(format!("cube has {nz} planes but z_edges define {} bins", p.n_z()));
    }
    let (ny, nx) = frame.check()?;
    if ny.checked_mul(nx).is_none_or(|n| n > u32::MAX as usize) {
        return Err(format!("input of {ny} x {nx} pixels is too large"));
    }
    if nz == 0 || ny_out == 0 || nx_out == 0 || ny == 0 || nx == 0 {
        return Ok(FrameStats { n_pixels: 0, n_contributions: 0, planes: vec![false; nz] });
    }
    let m = reach(p.kernel);
    // The calling thread and `threads - 1` pool workers (see `run_indexed`).
    let threads = if threads == 0 { rayon::current_num_threads() } else { threads };
    let pool = if threads > 1 { Some(pool_of(threads - 1)?) } else { None };
    let helpers = pool.as_deref();
    let mut blocks = live_blocks(frame, m, ny_out, nx_out, helpers);
    blocks.sort_unstable_by_key(|b| (b.j0, b.i0));
    let starts = band_starts(ny_out, threads, blocks.iter().map(|b| (b.row_lo, b.row_hi)));
    let n_bands = starts.len() - 1;
    let band_of = |r: u32| starts.partition_point(|&s| s <= r as usize) as u32 - 1;
    let (offsets, items) = bucket_by_band(blocks.len(), n_bands, |b| (band_of(blocks[b].row_lo), band_of(blocks[b].row_hi)));
    let bands: Vec<Mutex<Option<Band<'_>>>> = cube.into_bands_at(&starts).into_iter().map(|b| Mutex::new(Some(b))).collect();
    let parts: Vec<(u64, u64, Vec<bool>, Vec<u32>)> = run_indexed(helpers, bands.len(), |b| {
        let band = bands[b].lock().unwrap_or_else(|e| e.into_inner()).take().expect("each band is taken once");
        let mut task = BandTask::new(band, p, m, ny_out, nx_out);
        let shared = task.scan(frame, &blocks, &items[offsets[b]..offsets[b + 1]]);
        (task.n_pixels, task.n_contributions, task.planes, shared)
    });
    // Pixels that may reach several bands are counted once.
    let mut shared: Vec<u32> = parts.iter().flat_map(|t| t.3.iter().copied()).collect();
    shared.sort_unstable();
    shared.dedup();
    let n_pixels = shared.len() as u64 + parts.iter().map(|t| t.0).sum::<u64>();
    Ok(merge_stats(nz, parts.into_iter().map(|(_, nc, pl, _)| (nc, pl)), n_pixels))
}

/// Tests can cap the build of the scan to compare the builds (all give the
/// same bits): 0 the widest the CPU has, 1 at most AVX2, 2 portable.
#[cfg(test)]
static BUILD_CAP: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn build_cap() -> u8 {
    #[cfg(test)]
    return BUILD_CAP.load(Ordering::Relaxed);
    #[cfg(not(test))]
    0
}

/// Where a droplet lands: within the 2 x 2 output pixels from `(r0, c0)` with
/// fractions `f[a][b]`, within 3 x 3, or a larger square droplet `(qx, qy, area)`.
enum Spot {
    Cells(isize, isize, [[f64; 2]; 2]),
    /// Within the 3 x 3 output pixels from `(r0, c0)`, `f[a][b]` for `(r0 + a, c0 + b)`.
    Cells3(isize, isize, [[f64; 3]; 3]),
    Quad([f64; 4], [f64; 4], f64),
}

/// One band's task in [`drizzle_frame`]: its slice of the cube and what it has
/// deposited.
struct BandTask<'a, 'p> {
    band: Band<'a>,
    p: &'p Params,
    /// See [`reach`].
    m: f64,
    ny_out: usize,
    nx_out: usize,
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
}

impl<'a, 'p> BandTask<'a, 'p> {
    fn new(band: Band<'a>, p: &'p Params, m: f64, ny_out: usize, nx_out: usize) -> Self {
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
            ny_out,
            nx_out,
            negligible,
            keep_from: p.keep_from(),
            zov_buf: vec![(0, 0.0); nz],
            n_zov: 0,
            z_hint: 0,
            n_pixels: 0,
            n_contributions: 0,
            planes: vec![false; nz],
            pf_last: vec![isize::MIN; nz],
        }
    }

    /// Drizzles the band's blocks `mine` (indices into `blocks`, sorted) of the
    /// checked `frame`; returns the input pixels that deposited here and may
    /// also reach another band. Uses the AVX-512 or AVX2 build where the CPU has it (same bits).
    fn scan(&mut self, frame: &FrameView<'_>, blocks: &[LiveBlock], mine: &[u32]) -> Vec<u32> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && build_cap() == 0
        {
            // SAFETY: the CPU supports these features (checked just above).
            return unsafe { self.scan_avx512(frame, blocks, mine) };
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && build_cap() <= 1 {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { self.scan_avx2(frame, blocks, mine) };
        }
        self.scan_any(frame, blocks, mine)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn scan_avx2(&mut self, frame: &FrameView<'_>, blocks: &[LiveBlock], mine: &[u32]) -> Vec<u32> {
        self.scan_any(frame, blocks, mine)
    }

    /// The AVX2 build with the AVX-512 instruction set (32 vector registers,
    /// mask registers): same arithmetic, so the same bits as the other builds.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl")]
    fn scan_avx512(&mut self, frame: &FrameView<'_>, blocks: &[LiveBlock], mine: &[u32]) -> Vec<u32> {
        self.scan_any(frame, blocks, mine)
    }

    #[inline(always)]
    fn scan_any(&mut self, frame: &FrameView<'_>, blocks: &[LiveBlock], mine: &[u32]) -> Vec<u32> {
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
                        unsafe { self.block(&row, i0, j * nx, &mut shared) };
                        continue;
                    }
                    for i in i0..(i0 + BLOCK).min(nx) {
                        if unsafe { self.pixel(&row, i) } {
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
    unsafe fn pixel(&mut self, row: &FrameRow, i: usize) -> bool {
        let (p, m) = (self.p, self.m);
        let (row_lo, row_hi) = (self.band.r0, self.band.r0 + self.band.rows);
        // Cheap rejection by the rows and columns the unshrunk quadrilateral can reach.
        let qy = unsafe { [row.cy0.at(i), row.cy0.at(i + 1), row.cy1.at(i + 1), row.cy1.at(i)] };
        let y0 = fmin(fmin(qy[0], qy[1]), fmin(qy[2], qy[3]));
        let y1 = fmax(fmax(qy[0], qy[1]), fmax(qy[2], qy[3]));
        if !(y1 + m > row_lo as f64 && y0 - m < (row_hi - 1) as f64) {
            return false;
        }
        let qx = unsafe { [row.cx0.at(i), row.cx0.at(i + 1), row.cx1.at(i + 1), row.cx1.at(i)] };
        let x0 = fmin(fmin(qx[0], qx[1]), fmin(qx[2], qx[3]));
        let x1 = fmax(fmax(qx[0], qx[1]), fmax(qx[2], qx[3]));
        if !(x1 + m > 0.0 && x0 - m < (self.nx_out - 1) as f64) {
            return false;
        }
        let Some(droplet) = make_droplet(&qx, &qy, p.xy_shrink, p.kernel) else { return false };
        let cells = match droplet {
            Droplet::Square { qx, qy, .. } => quad_footprint_2x2(&qx, &qy),
            Droplet::Point { x, y } => bilinear_footprint_2x2(x, y),
        };
        let fp = match (cells, droplet) {
            (Some((r0, c0, f)), _) if r0 >= row_lo as isize && r0 + 1 < row_hi as isize && c0 >= 0 && c0 + 1 < self.nx_out as isize => {
                // All four cells inside this band and the grid: the fast path.
                return unsafe { self.land_cells::<2, 2, false>(row, i, y0, y1, r0 as usize, c0 as usize, &f, None) };
            }
            (Some((r0, c0, f)), _) => Spot::Cells(r0, c0, f),
            (None, Droplet::Square { qx, qy, area }) => Spot::Quad(qx, qy, area),
            (None, Droplet::Point { .. }) => return false,
        };
        unsafe { self.land(row, i, y0, y1, fp) }
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
    unsafe fn block(&mut self, row: &FrameRow, i0: usize, base: usize, shared: &mut Vec<u32>) {
        let m = self.m;
        let (lo, hi) = (self.band.r0 as f64, (self.band.r0 + self.band.rows - 1) as f64);
        let x_hi = (self.nx_out - 1) as f64;
        let square = self.p.kernel == Kernel::Square;
        for i in (i0..i0 + BLOCK).step_by(LANES) {
            let at = |r: &RawRow<f64>, k: usize| -> Lane { std::array::from_fn(|l| unsafe { *r.ptr.add(i + k + l) }) };
            let qy = [at(&row.cy0, 0), at(&row.cy0, 1), at(&row.cy1, 1), at(&row.cy1, 0)];
            let qx = [at(&row.cx0, 0), at(&row.cx0, 1), at(&row.cx1, 1), at(&row.cx1, 0)];
            let y0: Lane = std::array::from_fn(|l| fmin(fmin(qy[0][l], qy[1][l]), fmin(qy[2][l], qy[3][l])));
            let y1: Lane = std::array::from_fn(|l| fmax(fmax(qy[0][l], qy[1][l]), fmax(qy[2][l], qy[3][l])));
            let x0: Lane = std::array::from_fn(|l| fmin(fmin(qx[0][l], qx[1][l]), fmin(qx[2][l], qx[3][l])));
            let x1: Lane = std::array::from_fn(|l| fmax(fmax(qx[0][l], qx[1][l]), fmax(qx[2][l], qx[3][l])));
            let reach: [bool; LANES] = std::array::from_fn(|l| (y1[l] + m > lo) & (y0[l] - m < hi) & (x1[l] + m > 0.0) & (x0[l] - m < x_hi));
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
            let pf_c: Lane = std::array::from_fn(|l| fmin(fmax(ffloor(fp.c0[l] + ahead * (qx[3][l] - qx[0][l]) + 0.5), 0.0), x_hi));
            // The voxel offset in plane 0 of the band (exact: whole numbers far below 2^53;
            // the clamping maps NaN to the band's first row and column 0).
            let (st_r, st_c) = (self.band.strides[1] as f64, self.band.strides[2] as f64);
            let pf_off: Lane = std::array::from_fn(|l| (pf_r[l] - lo) * st_r + pf_c[l] * st_c);
            let f3 = if fp.any_medium() { footprints_medium(&fp) } else { [[[0.0; LANES]; 3]; 3] };
            for l in 0..LANES {
                if !reach[l] {
                    continue;
                }
                // The common case: a droplet within 2 x 2 output pixels, all inside this band and the grid.
                let (r0, c0) = (fp.r0[l], fp.c0[l]);
                let inside = |rows: f64, cols: f64| r0 >= lo && r0 + rows <= hi && c0 >= 0.0 && c0 + cols <= x_hi;
                let wide = fp.c1[l] - c0 == 2.0;
                // Every other lane: neighbouring pixels target the same cache lines
                // (measured on the extension: ~1.5% faster than every lane; the
                // first lane only was slower).
                // SAFETY: `pf_off` is finite and a whole number (see above).
                let pf = (prefetching && l % 2 == 0).then(|| unsafe { pf_off[l].to_int_unchecked::<isize>() });
                // SAFETY (the casts): `inside` makes `r0`, `c0` finite whole numbers in 0 .. 2^32.
                let cells = || unsafe { (r0.to_int_unchecked::<isize>() as usize, c0.to_int_unchecked::<isize>() as usize) };
                let landed = match fp.shape(l) {
                    Shape::Small if inside(1.0, 1.0) => {
                        let f = [[fp.f[0][l], fp.f[1][l]], [fp.f[2][l], fp.f[3][l]]];
                        let (r0, c0) = cells();
                        Some(unsafe { self.land_cells::<2, 2, true>(row, i + l, y0[l], y1[l], r0, c0, &f, pf) })
                    }
                    // Three columns and at most two rows (the third row of `f3` is zero), or the transpose.
                    Shape::Medium if wide && inside(1.0, 2.0) => {
                        let f: [[f64; 3]; 2] = std::array::from_fn(|a| std::array::from_fn(|b| f3[a][b][l]));
                        let (r0, c0) = cells();
                        Some(unsafe { self.land_cells::<2, 3, true>(row, i + l, y0[l], y1[l], r0, c0, &f, pf) })
                    }
                    Shape::Medium if !wide && inside(2.0, 1.0) => {
                        let f: [[f64; 2]; 3] = std::array::from_fn(|a| std::array::from_fn(|b| f3[a][b][l]));
                        let (r0, c0) = cells();
                        Some(unsafe { self.land_cells::<3, 2, true>(row, i + l, y0[l], y1[l], r0, c0, &f, pf) })
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
                if unsafe { self.land(row, i + l, y0[l], y1[l], spot) } {
                    shared.push((base + i + l) as u32);
                }
            }
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
    unsafe fn land_cells<const R: usize, const C: usize, const UNIT: bool>(
        &mut self,
        row: &FrameRow,
        i: usize,
        y0: f64,
        y1: f64,
        r0: usize,
        c0: usize,
        f: &[[f64; C]; R],
        prefetch_at: Option<isize>,
    ) -> bool {
        let Some((pix, n_z)) = (unsafe { self.value_and_overlaps::<UNIT>(row, i) }) else { return false };
        // SAFETY: the first `n_z` entries were just written.
        let zov = unsafe { self.zov_buf.get_unchecked(..n_z) };
        let (band, planes, keep_from, neg) = (&mut self.band, &mut self.planes, self.keep_from, self.negligible);
        let pf_last = &mut self.pf_last;
        debug_assert!(r0 >= band.r0 && r0 + R <= band.r0 + band.rows && c0 + C <= band.nx);
        let st = band.strides;
        let nz = band.nz;
        let base = (r0 - band.r0) as isize * st[1] + c0 as isize * st[2];
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
            if let Some(at) = prefetch_at.filter(|&at| {
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
        let alone = (row_lo == 0 || y0 - m >= row_lo as f64 - 1.0) && (row_hi == self.ny_out || y1 + m <= row_hi as f64);
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
    unsafe fn land(&mut self, row: &FrameRow, i: usize, y0: f64, y1: f64, spot: Spot) -> bool {
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
                for_each_quad_overlap(&qx, &qy, area, self.ny_out, self.nx_out, row_lo, row_hi, |r, c, f| {
                    n += band.deposit(r, c, f, &pix, zov, keep_from, planes);
                });
                n
            }
        };
        if deposited == 0 {
            return false;
        }
        self.n_contributions += deposited as u64;
        self.count_pixel(y0, y1)
    }

    /// Deposits those of the N x N output pixels from `(r0, c0)` that lie in
    /// this band and on the grid (and have a weight above rounding noise).
    #[inline(always)]
    fn deposit_checked<const N: usize>(&mut self, r0: isize, c0: isize, f_xy: &[[f64; N]; N], pix: &PixelValue) -> usize {
        let rows = self.band.r0 as isize..(self.band.r0 + self.band.rows).min(self.ny_out) as isize;
        let (band, zov, planes, keep_from) = (&mut self.band, &self.zov_buf[..self.n_zov], &mut self.planes, self.keep_from);
        let mut n = 0;
        for_each_cell(r0, c0, f_xy, rows, 0..self.nx_out as isize, self.negligible, |r, c, f| {
            n += band.deposit(r, c, f, pix, zov, keep_from, planes);
        });
        n
    }
}

/// Flat contribution list of the seed API: for each input pixel (row-major
/// index), the output pixels its droplet touches and the fractions.
pub struct SpatialMapping {
    /// `(ny, nx)` row-major: whether the pixel has a well-formed droplet that
    /// touches the output grid.
    pub valid: Vec<bool>,
    pub pixel_idx: Vec<i64>,
    pub out_y: Vec<i32>,
    pub out_x: Vec<i32>,
    pub f_xy: Vec<f64>,
}

/// Computes the seed-compatible flat mapping (deterministic order: input
/// pixel index, then output row, then column).
pub fn spatial_mapping(
    corners_x: ArrayView2<f64>,
    corners_y: ArrayView2<f64>,
    out_ny: usize,
    out_nx: usize,
    xy_shrink: f64,
    kernel: Kernel,
    threads: usize,
) -> Result<SpatialMapping, String> {
    if corners_x.dim() != corners_y.dim() {
        return Err(format!("corners_x has shape {:?}, corners_y has {:?}", corners_x.dim(), corners_y.dim()));
    }
    let (cy_n, cx_n) = corners_x.dim();
    if cy_n < 2 || cx_n < 2 {
        return Err(format!("corner maps must be at least 2 x 2, got {:?}", corners_x.dim()));
    }
    if !(xy_shrink > 0.0 && xy_shrink <= 1.0) {
        return Err(format!("xy_shrink must be in (0, 1], got {xy_shrink}"));
    }
    let (ny, nx) = (cy_n - 1, cx_n - 1);
    run_in_pool(threads, || {
        type Row = (Vec<bool>, Vec<i64>, Vec<i32>, Vec<i32>, Vec<f64>);
        let rows: Vec<Row> = (0..ny)
            .into_par_iter()
            .map(|j| {
                let mut row: Row = (vec![false; nx], vec![], vec![], vec![], vec![]);
                for i in 0..nx {
                    let qx = [corners_x[[j, i]], corners_x[[j, i + 1]], corners_x[[j + 1, i + 1]], corners_x[[j + 1, i]]];
                    let qy = [corners_y[[j, i]], corners_y[[j, i + 1]], corners_y[[j + 1, i + 1]], corners_y[[j + 1, i]]];
                    let Some(d) = make_droplet(&qx, &qy, xy_shrink, kernel) else { continue };
                    let idx = (j * nx + i) as i64;
                    d.for_each_overlap(out_ny, out_nx, 0, out_ny, |r, c, f| {
                        row.0[i] = true;
                        row.1.push(idx);
                        row.2.push(r as i32);
                        row.3.push(c as i32);
                        row.4.push(f);
                    });
                }
                row
            })
            .collect();
        let mut m = SpatialMapping { valid: Vec::with_capacity(ny * nx), pixel_idx: vec![], out_y: vec![], out_x: vec![], f_xy: vec![] };
        for (v, p, y, x, f) in rows {
            m.valid.extend(v);
            m.pixel_idx.extend(p);
            m.out_y.extend(y);
            m.out_x.extend(x);
            m.f_xy.extend(f);
        }
        m
    })
}

/// Per-pixel arrays of the seed API, flattened (row-major), plus the flat
/// contribution list.
pub struct Contributions<'a> {
    pub image: ArrayView1<'a, f64>,
    pub variance: ArrayView1<'a, f64>,
    pub flags: ArrayView1<'a, u32>,
    pub lambda_c: ArrayView1<'a, f64>,
    pub delta_lambda: ArrayView1<'a, f64>,
    pub exclude: Option<ArrayView1<'a, bool>>,
    pub pixel_idx: ArrayView1<'a, i64>,
    pub out_y: ArrayView1<'a, i32>,
    pub out_x: ArrayView1<'a, i32>,
    pub f_xy: ArrayView1<'a, f64>,
}

/// Accumulates a flat contribution list (seed `drizzle_image`). Contributions
/// are applied per voxel in list order, deterministically.
pub fn accumulate_contributions(cube: CubeMut<'_>, c: &Contributions<'_>, p: &Params, threads: usize) -> Result<FrameStats, String> {
    p.validate()?;
    let (nz, ny_out, nx_out) = cube.shape()?;
    if nz != p.n_z() {
        return Err(format!("cube has {nz} planes but z_edges define {} bins", p.n_z()));
    }
    let n_in = c.image.len();
    for (name, n) in
        [("variance", c.variance.len()), ("flags", c.flags.len()), ("lambda_c_map", c.lambda_c.len()), ("delta_lambda_map", c.delta_lambda.len())]
    {
        if n != n_in {
            return Err(format!("{name} has {n} pixels, image has {n_in}"));
        }
    }
    if let Some(e) = &c.exclude {
        if e.len() != n_in {
            return Err(format!("exclude_mask has {} pixels, image has {n_in}", e.len()));
        }
    }
    let m = c.pixel_idx.len();
    if m > u32::MAX as usize {
        return Err(format!("{m} contributions are too many for one call; split the image"));
    }
    for (name, n) in [("out_y", c.out_y.len()), ("out_x", c.out_x.len()), ("f_xy", c.f_xy.len())] {
        if n != m {
            return Err(format!("{name} has {n} entries, pixel_idx has {m}"));
        }
    }
    for k in 0..m {
        let (pi, y, x, f) = (c.pixel_idx[k], c.out_y[k], c.out_x[k], c.f_xy[k]);
        if pi < 0 || pi as usize >= n_in {
            return Err(format!("pixel_idx[{k}] = {pi} is outside the image of {n_in} pixels"));
        }
        if y < 0 || y as usize >= ny_out || x < 0 || x as usize >= nx_out {
            return Err(format!("output pixel (y={y}, x={x}) at index {k} is outside the {ny_out} x {nx_out} grid"));
        }
        if !f.is_finite() || f < 0.0 {
            return Err(format!("f_xy[{k}] = {f} must be finite and >= 0"));
        }
    }
    let keep_from = p.keep_from();
    run_in_pool(threads, || {
        let band_of = |k: usize| {
            let b = (c.out_y[k] as usize / BAND_ROWS) as u32;
            (b, b)
        };
        run_bands(
            cube,
            nz,
            ny_out,
            m,
            band_of,
            n_in,
            |k| c.pixel_idx[k] as usize,
            |k, band, _, _, planes, zov| {
                let q = c.pixel_idx[k] as usize;
                let excluded = c.exclude.as_ref().is_some_and(|e| e[q]);
                let Some(pix) = pixel_value(c.image[q], c.variance[q], c.flags[q], c.lambda_c[q], c.delta_lambda[q], excluded, p) else { return 0 };
                zov.clear();
                spectral::for_each_overlap(c.lambda_c[q], c.delta_lambda[q], p.z_shrink, &p.z_edges, |kz, f| zov.push((kz, f)));
                band.deposit(c.out_y[k] as usize, c.out_x[k] as usize, c.f_xy[k], &pix, zov, keep_from, planes)
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array3};
    use proptest::prelude::*;

    struct Cube {
        flux: Array3<f64>,
        weight: Array3<f64>,
        var: Array3<f64>,
        count: Array3<u32>,
        and_mask: Array3<u32>,
        or_mask: Array3<u32>,
    }

    impl Cube {
        fn new(nz: usize, ny: usize, nx: usize) -> Cube {
            Cube {
                flux: Array3::zeros((nz, ny, nx)),
                weight: Array3::zeros((nz, ny, nx)),
                var: Array3::zeros((nz, ny, nx)),
                count: Array3::zeros((nz, ny, nx)),
                and_mask: Array3::zeros((nz, ny, nx)),
                or_mask: Array3::zeros((nz, ny, nx)),
            }
        }
        fn view(&mut self) -> CubeMut<'_> {
            CubeMut {
                flux: self.flux.view_mut(),
                weight: self.weight.view_mut(),
                var: self.var.view_mut(),
                count: self.count.view_mut(),
                and_mask: self.and_mask.view_mut(),
                or_mask: self.or_mask.view_mut(),
            }
        }
    }

    /// Input frame under an affine map: output = a * (x, y) + t.
    struct Frame {
        cx: Array2<f64>,
        cy: Array2<f64>,
        image: Array2<f64>,
        variance: Array2<f64>,
        flags: Array2<u32>,
        lam: Array2<f64>,
        dlam: Array2<f64>,
    }

    fn affine_frame(ny: usize, nx: usize, a: [[f64; 2]; 2], t: [f64; 2], value: impl Fn(usize, usize) -> f64) -> Frame {
        let cx = Array2::from_shape_fn((ny + 1, nx + 1), |(j, i)| {
            let (x, y) = (i as f64 - 0.5, j as f64 - 0.5);
            a[0][0] * x + a[0][1] * y + t[0]
        });
        let cy = Array2::from_shape_fn((ny + 1, nx + 1), |(j, i)| {
            let (x, y) = (i as f64 - 0.5, j as f64 - 0.5);
            a[1][0] * x + a[1][1] * y + t[1]
        });
        Frame {
            cx,
            cy,
            image: Array2::from_shape_fn((ny, nx), |(j, i)| value(j, i)),
            variance: Array2::from_elem((ny, nx), 0.25),
            flags: Array2::from_shape_fn((ny, nx), |(j, i)| 1 << ((j + i) % 3)),
            lam: Array2::from_shape_fn((ny, nx), |(j, _)| 1.0 + 0.01 * j as f64),
            dlam: Array2::from_elem((ny, nx), 0.02),
        }
    }

    impl Frame {
        fn view(&self) -> FrameView<'_> {
            FrameView {
                corners_x: self.cx.view(),
                corners_y: self.cy.view(),
                image: self.image.view(),
                variance: self.variance.view(),
                flags: self.flags.view(),
                lambda_c: self.lam.view(),
                delta_lambda: self.dlam.view(),
                exclude: None,
            }
        }
    }

    fn params(kernel: Kernel, xy_shrink: f64) -> Params {
        Params { z_edges: vec![0.9, 1.05, 1.2, 1.5], xy_shrink, z_shrink: 1.0, ivar_max: 1e10, min_overlap: 0.0, kernel, exclude_bits: 0 }
    }

    fn rotation(theta: f64, scale: f64) -> [[f64; 2]; 2] {
        let (s, c) = theta.sin_cos();
        [[scale * c, -scale * s], [scale * s, scale * c]]
    }

    #[test]
    fn bands_share_the_work_evenly() {
        // Uniform work: equal heights.
        let uniform = (0..100u32).map(|r| (r, r));
        assert_eq!(band_starts(100, 4, uniform), vec![0, 25, 50, 75, 100]);
        assert_eq!(band_starts(300, 1, (0..300u32).map(|r| (r, r))), vec![0, 300]);
        // All the work in rows 60..80: the boundaries fall there.
        let s = band_starts(100, 2, (60..80u32).map(|r| (r, r)));
        assert_eq!(s, vec![0, 70, 100]);
        // A block reaching rows 0..=99 counts a hundredth per row.
        let s = band_starts(100, 2, [(0u32, 99u32)].into_iter().chain((0..10).map(|_| (90, 99))));
        assert!(s[1] > 90 && s[1] < 99, "{s:?}");
        // More threads than rows; no work at all; a short grid on one thread.
        assert_eq!(band_starts(3, 8, (0..3u32).map(|r| (r, r))), vec![0, 1, 2, 3]);
        let s = band_starts(50, 4, std::iter::empty());
        assert!(s.windows(2).all(|w| w[0] < w[1]) && s[0] == 0 && *s.last().unwrap() == 50 && s.len() <= 5);
        assert_eq!(band_starts(50, 1, (0..50u32).map(|r| (r, r))), vec![0, 50]);
    }

    #[test]
    fn bitwise_identical_for_any_thread_count() {
        // One band per thread, with boundaries that follow the work (1, 2, 3
        // and 8 bands on each grid).
        let small = affine_frame(40, 37, rotation(0.3, 0.8), [5.0, -3.0], |j, i| (j * 31 + i * 17) as f64 % 7.0 - 2.0);
        let tall = affine_frame(120, 110, rotation(0.3, 2.1), [60.0, -10.0], |j, i| (j * 31 + i * 17) as f64 % 7.0 - 2.0);
        for (f, (ny, nx)) in [(&small, (33, 29)), (&tall, (260, 250))] {
            let mut results = vec![];
            for threads in [1, 2, 3, 8] {
                for kernel in [Kernel::Square, Kernel::Bilinear] {
                    let mut c = Cube::new(3, ny, nx);
                    let stats = drizzle_frame(c.view(), &f.view(), &params(kernel, 0.7), threads).unwrap();
                    results.push((threads, kernel, stats.n_contributions, c.flux, c.weight, c.var, c.count, c.and_mask, c.or_mask));
                }
            }
            assert!(results[0].2 > 1000);
            for r in &results[2..] {
                let base = &results[if r.1 == Kernel::Square { 0 } else { 1 }];
                assert_eq!(r.2, base.2);
                assert!(r.3.iter().zip(base.3.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "flux differs at {} threads", r.0);
                assert!(r.4.iter().zip(base.4.iter()).all(|(a, b)| a.to_bits() == b.to_bits()));
                assert!(r.5.iter().zip(base.5.iter()).all(|(a, b)| a.to_bits() == b.to_bits()));
                assert_eq!(r.6, base.6);
                assert_eq!(r.7, base.7);
                assert_eq!(r.8, base.8);
            }
        }
    }

    #[test]
    fn strips_of_rows_give_the_same_bits_as_one_call() {
        // Input pixels are visited row-major, so feeding a frame in strips of rows
        // (as the pipeline does for large crops) changes nothing.
        use ndarray::s;
        let f = affine_frame(40, 37, rotation(0.4, 0.45), [3.0, 1.0], |j, i| ((j * 13 + i * 7) % 11) as f64 - 3.0);
        for kernel in [Kernel::Square, Kernel::Bilinear] {
            let mut whole = Cube::new(3, 33, 29);
            drizzle_frame(whole.view(), &f.view(), &params(kernel, 0.7), 2).unwrap();
            let mut strips = Cube::new(3, 33, 29);
            for (j0, j1) in [(0, 13), (13, 14), (14, 29), (29, 40)] {
                let v = FrameView {
                    corners_x: f.cx.slice(s![j0..=j1, ..]),
                    corners_y: f.cy.slice(s![j0..=j1, ..]),
                    image: f.image.slice(s![j0..j1, ..]),
                    variance: f.variance.slice(s![j0..j1, ..]),
                    flags: f.flags.slice(s![j0..j1, ..]),
                    lambda_c: f.lam.slice(s![j0..j1, ..]),
                    delta_lambda: f.dlam.slice(s![j0..j1, ..]),
                    exclude: None,
                };
                drizzle_frame(strips.view(), &v, &params(kernel, 0.7), 2).unwrap();
            }
            assert!(whole.flux.iter().any(|v| *v != 0.0));
            assert!(whole.flux.iter().zip(strips.flux.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "{kernel:?}");
            assert!(whole.var.iter().zip(strips.var.iter()).all(|(a, b)| a.to_bits() == b.to_bits()));
            assert_eq!(whole.count, strips.count);
            assert_eq!(whole.and_mask, strips.and_mask);
        }
    }

    #[test]
    fn empty_cubes_and_frames_deposit_nothing() {
        // Regression: a zero-row cube with a non-finite corner panicked (band range underflow).
        let mut f = affine_frame(6, 5, rotation(0.0, 1.0), [0.0, 0.0], |_, _| 1.0);
        f.cx.fill(f64::NAN);
        for (ny, nx) in [(0, 4), (4, 0), (0, 0)] {
            for kernel in [Kernel::Square, Kernel::Bilinear] {
                let mut c = Cube::new(3, ny, nx);
                let st = drizzle_frame(c.view(), &f.view(), &params(kernel, 0.8), 1).unwrap();
                assert_eq!((st.n_pixels, st.n_contributions, st.planes.len()), (0, 0, 3));
            }
        }
        let empty = affine_frame(0, 5, rotation(0.0, 1.0), [0.0, 0.0], |_, _| 1.0);
        let mut c = Cube::new(3, 4, 4);
        assert_eq!(drizzle_frame(c.view(), &empty.view(), &params(Kernel::Square, 0.8), 1).unwrap().n_pixels, 0);
    }

    /// Drizzles `f` with the fused path and with the seed API (contribution list,
    /// then accumulation) and checks that they agree voxel for voxel, with the same
    /// statistics. Returns the number of contributing pixels.
    fn assert_fused_equals_seed(f: &Frame, p: &Params, shape: (usize, usize, usize)) -> u64 {
        let (nz, ny, nx) = shape;
        let mut fused = Cube::new(nz, ny, nx);
        let st = drizzle_frame(fused.view(), &f.view(), p, 2).unwrap();
        let m = spatial_mapping(f.cx.view(), f.cy.view(), ny, nx, p.xy_shrink, p.kernel, 2).unwrap();
        let flat = |a: &Array2<f64>| a.iter().copied().collect::<Vec<f64>>();
        let (img, var, lam, dlam) = (flat(&f.image), flat(&f.variance), flat(&f.lam), flat(&f.dlam));
        let flags: Vec<u32> = f.flags.iter().copied().collect();
        let c = Contributions {
            image: ArrayView1::from(&img),
            variance: ArrayView1::from(&var),
            flags: ArrayView1::from(&flags),
            lambda_c: ArrayView1::from(&lam),
            delta_lambda: ArrayView1::from(&dlam),
            exclude: None,
            pixel_idx: ArrayView1::from(&m.pixel_idx),
            out_y: ArrayView1::from(&m.out_y),
            out_x: ArrayView1::from(&m.out_x),
            f_xy: ArrayView1::from(&m.f_xy),
        };
        let mut seed = Cube::new(nz, ny, nx);
        let ss = accumulate_contributions(seed.view(), &c, p, 2).unwrap();
        assert_eq!((st.n_pixels, st.n_contributions, &st.planes), (ss.n_pixels, ss.n_contributions, &ss.planes));
        for (a, b) in fused.flux.iter().zip(seed.flux.iter()).chain(fused.var.iter().zip(seed.var.iter())) {
            assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
        }
        assert_eq!(fused.count, seed.count);
        assert_eq!((&fused.and_mask, &fused.or_mask), (&seed.and_mask, &seed.or_mask));
        st.n_pixels
    }

    #[test]
    fn fused_path_equals_seed_path_and_counts_each_pixel_once() {
        // Pixels whose droplets straddle band boundaries are drizzled by two band
        // tasks; the statistics must still count each once, and every voxel must
        // equal the seed API's result (contribution list, then accumulation).
        for (theta, scale, kernel) in
            [(0.3, 0.45, Kernel::Square), (1.1, 1.7, Kernel::Square), (0.3, 0.45, Kernel::Bilinear), (2.0, 3.3, Kernel::Square)]
        {
            let mut f = affine_frame(40, 37, rotation(theta, scale), [16.0, 14.0], |j, i| ((j * 13 + i * 7) % 11) as f64 - 3.0);
            f.image[[5, 5]] = f64::NAN;
            let n = assert_fused_equals_seed(&f, &params(kernel, 0.7), (3, 33, 29));
            assert!(n > 20, "{theta} {scale}: {n}");
        }
    }

    #[test]
    fn live_blocks_across_region_boundaries_find_every_pixel() {
        // A frame larger than the regions tested first (TOP super-blocks), the
        // grid seeing a patch that straddles region, super-block and block
        // boundaries, or lies inside one region: the fused path (live blocks)
        // must find every pixel the seed path (all pixels) finds.
        let side = (BLOCK * SUPER * TOP) as f64;
        for (centre, theta) in [((side, side), 0.4), ((side, 2.0 * side), 1.3), ((1.5 * side, 0.5 * side), 2.9)] {
            let a = rotation(theta, 1.0);
            // Input pixel `centre` lands on output pixel (30, 30).
            let t = [30.0 - (a[0][0] * centre.0 + a[0][1] * centre.1), 30.0 - (a[1][0] * centre.0 + a[1][1] * centre.1)];
            let mut f = affine_frame(1100, 1300, a, t, |j, i| ((j * 13 + i * 7) % 11) as f64 - 3.0);
            f.lam = Array2::from_shape_fn((1100, 1300), |(j, i)| 1.0 + 0.05 * ((j + 2 * i) % 9) as f64);
            let n = assert_fused_equals_seed(&f, &params(Kernel::Square, 0.8), (3, 61, 60));
            assert!(n > 3000, "{centre:?}: {n}");
        }
    }

    /// Drizzles `f` once with contiguous corner rows (whole blocks go through
    /// the SIMD lanes) and once with strided corner rows (every pixel through
    /// the scalar path); the cubes must be bit for bit the same.
    fn assert_lanes_equal_scalar(f: &Frame, p: &Params, shape: (usize, usize, usize)) {
        let (nz, ny, nx) = shape;
        let strided = |a: &Array2<f64>| {
            let mut wide = Array2::from_elem((a.nrows(), 2 * a.ncols()), f64::NAN);
            wide.slice_mut(ndarray::s![.., ..;2]).assign(a);
            wide
        };
        let (wx, wy) = (strided(&f.cx), strided(&f.cy));
        let mut view = f.view();
        assert_eq!(view.corners_x.strides()[1], 1);
        let mut lanes = Cube::new(nz, ny, nx);
        let a = drizzle_frame(lanes.view(), &view, p, 2).unwrap();
        view.corners_x = wx.slice(ndarray::s![.., ..;2]);
        view.corners_y = wy.slice(ndarray::s![.., ..;2]);
        let mut scalar = Cube::new(nz, ny, nx);
        let b = drizzle_frame(scalar.view(), &view, p, 2).unwrap();
        assert_eq!((a.n_pixels, a.n_contributions, &a.planes), (b.n_pixels, b.n_contributions, &b.planes));
        let bits = |c: &Cube| -> Vec<u64> { c.flux.iter().chain(c.weight.iter()).chain(c.var.iter()).map(|v| v.to_bits()).collect() };
        assert!(bits(&lanes) == bits(&scalar), "SIMD lanes and the scalar path differ");
        assert_eq!((&lanes.count, &lanes.and_mask, &lanes.or_mask), (&scalar.count, &scalar.and_mask, &scalar.or_mask));
        // Contiguous corners but a strided image: the block path reads rows
        // with unit stride only, so these pixels too go the scalar way.
        let wi = strided(&f.image);
        let mut view = f.view();
        view.image = wi.slice(ndarray::s![.., ..;2]);
        let mut strided_image = Cube::new(nz, ny, nx);
        let c = drizzle_frame(strided_image.view(), &view, p, 2).unwrap();
        assert_eq!((a.n_pixels, a.n_contributions), (c.n_pixels, c.n_contributions));
        assert!(bits(&lanes) == bits(&strided_image), "SIMD lanes and the scalar path (strided image) differ");
        assert_eq!((&lanes.count, &lanes.and_mask, &lanes.or_mask), (&strided_image.count, &strided_image.and_mask, &strided_image.or_mask));
    }

    #[test]
    fn simd_lanes_equal_the_scalar_path_with_bad_corners_and_values() {
        for (theta, scale, kernel, shrink) in
            [(0.4, 1.0, Kernel::Square, 0.8), (0.4, 1.0, Kernel::Bilinear, 0.8), (2.5, 0.3, Kernel::Square, 1.0), (1.0, 2.6, Kernel::Square, 0.5)]
        {
            let mut f = affine_frame(24, 45, rotation(theta, scale), [20.0, 6.0], |j, i| ((j * 13 + i * 7) % 11) as f64 - 3.0);
            f.cx[[3, 4]] = f64::NAN; // four pixels lose their droplet
            f.cy[[7, 20]] = f64::INFINITY;
            f.cx[[9, 30]] = 1e300;
            // A folded (bow-tie) pixel: swap two corners of pixel (12, 10).
            let t = f.cx[[12, 10]];
            f.cx[[12, 10]] = f.cx[[12, 11]];
            f.cx[[12, 11]] = t;
            // Variances that are not powers of two, so that every rounding of the
            // weight arithmetic shows in the bits.
            f.variance.indexed_iter_mut().for_each(|((j, i), v)| *v = 0.23 + 0.0137 * ((j * 5 + i * 3) % 7) as f64);
            // Unflagged pixels among flagged ones (the deposit has a path for each).
            f.flags.indexed_iter_mut().filter(|((j, i), _)| (j * 7 + i) % 4 == 0).for_each(|(_, v)| *v = 0);
            f.image[[5, 5]] = f64::NAN;
            f.variance[[6, 17]] = 0.0;
            f.dlam[[8, 18]] = -1.0;
            let shape = (3, 40, 50);
            assert_lanes_equal_scalar(&f, &params(kernel, shrink), shape);
            assert_fused_equals_seed(&f, &params(kernel, shrink), shape);
        }
    }

    #[test]
    fn avx512_avx2_and_portable_builds_give_the_same_bits() {
        let f = affine_frame(64, 80, rotation(0.4, 1.1), [10.0, -20.0], |j, i| ((j * 13 + i * 7) % 11) as f64 - 3.0);
        let run = |cap: u8, kernel: Kernel| {
            BUILD_CAP.store(cap, Ordering::Relaxed);
            let mut c = Cube::new(3, 60, 70);
            drizzle_frame(c.view(), &f.view(), &params(kernel, 0.8), 1).unwrap();
            BUILD_CAP.store(0, Ordering::Relaxed);
            let floats = c.flux.iter().chain(c.weight.iter()).chain(c.var.iter()).map(|v| v.to_bits());
            floats.chain(c.count.iter().chain(c.and_mask.iter()).chain(c.or_mask.iter()).map(|&v| v as u64)).collect::<Vec<u64>>()
        };
        for kernel in [Kernel::Square, Kernel::Bilinear] {
            let (portable, avx2, native) = (run(2, kernel), run(1, kernel), run(0, kernel));
            assert!(portable.iter().any(|&b| b != 0));
            assert!(portable == avx2, "AVX2 and portable builds differ ({kernel:?})");
            assert!(native == avx2, "AVX-512 and AVX2 builds differ ({kernel:?})");
        }
    }

    #[test]
    fn voxels_that_receive_nothing_keep_their_bits() {
        // Regression: the 2 x 2 fast path added a zero weight to cells below
        // min_overlap, which turned a -0.0 already in the cube into +0.0. Cells
        // that receive nothing must keep their bits exactly.
        let f = affine_frame(40, 37, rotation(0.4, 1.0), [2.0, 1.5], |j, i| ((j * 13 + i * 7) % 11) as f64 - 3.0);
        let mut p = params(Kernel::Square, 0.8);
        p.min_overlap = 0.15;
        let mut cube = Cube::new(3, 45, 45);
        for a in [&mut cube.flux, &mut cube.weight, &mut cube.var] {
            a.fill(-0.0);
        }
        let st = drizzle_frame(cube.view(), &f.view(), &p, 1).unwrap();
        assert!(st.n_contributions > 1000);
        let mut untouched = 0;
        for (idx, &n) in cube.count.indexed_iter() {
            if n == 0 {
                untouched += 1;
                for a in [&cube.flux, &cube.weight, &cube.var] {
                    assert_eq!(a[idx].to_bits(), (-0.0f64).to_bits(), "voxel {idx:?}");
                }
            }
        }
        assert!(untouched > 100, "{untouched}");
    }

    #[test]
    fn and_mask_is_zero_where_nothing_landed_and_masks_combine() {
        let f = affine_frame(10, 10, rotation(0.0, 1.0), [2.0, 2.0], |_, _| 1.0);
        let mut c = Cube::new(3, 20, 20);
        drizzle_frame(c.view(), &f.view(), &params(Kernel::Square, 1.0), 1).unwrap();
        for ((a, o), n) in c.and_mask.iter().zip(c.or_mask.iter()).zip(c.count.iter()) {
            if *n == 0 {
                assert_eq!((*a, *o), (0, 0));
            } else {
                assert_eq!(*a & !*o, 0, "AND must be a subset of OR");
            }
        }
        // An aligned pixel lands whole in one output pixel: AND == OR == its flags.
        let (j, i) = (4, 4);
        // lambda = 1.04 +- 0.01 lies wholly in bin 0 ([0.9, 1.05]).
        assert_eq!(c.count[[0, j + 2, i + 2]], 1);
        assert_eq!(c.and_mask[[0, j + 2, i + 2]], f.flags[[j, i]]);
        assert_eq!(c.or_mask[[0, j + 2, i + 2]], f.flags[[j, i]]);
    }

    #[test]
    fn invalid_pixels_are_skipped() {
        // 20 columns: the first 16 go through the SIMD block path, the rest pixel by pixel.
        let mut f = affine_frame(4, 20, rotation(0.0, 1.0), [0.0, 0.0], |_, _| 1.0);
        type Spoil = fn(&mut Frame, usize, usize);
        let bad: [((usize, usize), Spoil); 14] = [
            ((0, 0), |f, j, i| f.image[[j, i]] = f64::NAN),
            ((0, 1), |f, j, i| f.variance[[j, i]] = 0.0),
            ((0, 2), |f, j, i| f.variance[[j, i]] = f64::INFINITY),
            ((0, 3), |f, j, i| f.lam[[j, i]] = f64::NAN),
            ((1, 0), |f, j, i| f.dlam[[j, i]] = 0.0),
            ((1, 1), |f, j, i| f.dlam[[j, i]] = -1.0),
            ((1, 2), |f, j, i| f.flags[[j, i]] = 1 << 7),
            ((2, 5), |f, j, i| f.image[[j, i]] = f64::NEG_INFINITY),
            ((2, 6), |f, j, i| f.variance[[j, i]] = f64::NAN),
            ((2, 7), |f, j, i| f.variance[[j, i]] = -0.5),
            ((2, 8), |f, j, i| f.lam[[j, i]] = f64::INFINITY),
            ((2, 9), |f, j, i| f.dlam[[j, i]] = f64::INFINITY),
            ((3, 17), |f, j, i| f.image[[j, i]] = f64::INFINITY),
            ((3, 18), |f, j, i| f.dlam[[j, i]] = f64::NAN),
        ];
        for ((j, i), spoil) in bad {
            spoil(&mut f, j, i);
        }
        let mut p = params(Kernel::Square, 1.0);
        p.exclude_bits = 1 << 7;
        let mut c = Cube::new(3, 4, 20);
        let stats = drizzle_frame(c.view(), &f.view(), &p, 1).unwrap();
        assert_eq!(stats.n_pixels, 80 - bad.len() as u64);
        for ((j, i), _) in bad {
            assert_eq!(c.count.slice(ndarray::s![.., j, i]).sum(), 0, "pixel {j},{i}");
        }
        assert!(c.flux.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn shape_errors_are_reported() {
        let f = affine_frame(4, 4, rotation(0.0, 1.0), [0.0, 0.0], |_, _| 1.0);
        let mut c = Cube::new(2, 4, 4);
        let err = drizzle_frame(c.view(), &f.view(), &params(Kernel::Square, 1.0), 1).unwrap_err();
        assert!(err.contains("planes"), "{err}");
        let mut p = params(Kernel::Square, 1.0);
        p.xy_shrink = 0.0;
        let mut c = Cube::new(3, 4, 4);
        assert!(drizzle_frame(c.view(), &f.view(), &p, 1).unwrap_err().contains("xy_shrink"));
        let mut bad = affine_frame(4, 4, rotation(0.0, 1.0), [0.0, 0.0], |_, _| 1.0);
        bad.cx = Array2::zeros((4, 4));
        assert!(drizzle_frame(c.view(), &bad.view(), &params(Kernel::Square, 1.0), 1).unwrap_err().contains("corners_x"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn fused_path_equals_seed_path_for_random_geometry(theta in 0.0f64..6.3, scale in 0.15f64..4.5, shrink in 0.1f64..=1.0,
                                                           tx in -2.0f64..2.0, ty in -2.0f64..2.0, min_overlap in prop_oneof![Just(0.0), 0.0f64..0.3],
                                                           flip in proptest::bool::ANY, bilinear in proptest::bool::ANY) {
            // Every path of the fused engine (2x2 and three-pixel fast path, band and grid
            // edges, 4x4 footprints, per-pixel areas) against the seed API.
            let mut a = rotation(theta, scale);
            if flip { a[0][0] = -a[0][0]; a[1][0] = -a[1][0]; }
            let n = (24.0 / scale).ceil() as usize + 2;
            let f = affine_frame(n, n, a, [17.0 + tx, 19.0 + ty], |j, i| ((j * 7 + i * 3) % 5) as f64 + 0.5);
            let mut p = params(if bilinear { Kernel::Bilinear } else { Kernel::Square }, shrink);
            p.min_overlap = min_overlap;
            assert_fused_equals_seed(&f, &p, (3, 37, 35));
        }

        #[test]
        fn constant_image_gives_the_constant(theta in 0.0f64..6.3, scale in 0.3f64..2.5, shrink in 0.1f64..=1.0,
                                             tx in -3.0f64..3.0, ty in -3.0f64..3.0, bilinear in proptest::bool::ANY) {
            let f = affine_frame(30, 30, rotation(theta, scale), [12.0 + tx, 12.0 + ty], |_, _| 3.25);
            let kernel = if bilinear { Kernel::Bilinear } else { Kernel::Square };
            let mut c = Cube::new(3, 24, 24);
            drizzle_frame(c.view(), &f.view(), &params(kernel, shrink), 0).unwrap();
            let mut covered = 0;
            for (fl, w) in c.flux.iter().zip(c.weight.iter()) {
                if *w > 0.0 {
                    covered += 1;
                    prop_assert!((fl / w - 3.25).abs() < 1e-12 * 3.25, "{}", fl / w);
                }
            }
            prop_assert!(covered > 0);
        }

        #[test]
        fn flux_is_conserved_for_affine_maps(theta in 0.0f64..6.3, scale in 0.4f64..2.0, tx in 0.0f64..1.0, ty in 0.0f64..1.0,
                                             flip in proptest::bool::ANY) {
            // One input whose footprint lies wholly inside the grid, xy_shrink = 1,
            // equal variances: sum_j f_ij = 1 for each input pixel, so
            // sum(flux_weighted) / ivar = sum_i F_i (input pixel area 1, in output units = |det A|).
            let mut a = rotation(theta, scale);
            if flip { a[0][0] = -a[0][0]; a[0][1] = -a[0][1]; }
            let f = affine_frame(8, 8, a, [30.0 + tx, 30.0 + ty], |j, i| 1.0 + ((j * 8 + i) % 5) as f64);
            let mut c = Cube::new(3, 60, 60);
            drizzle_frame(c.view(), &f.view(), &params(Kernel::Square, 1.0), 0).unwrap();
            let ivar = 4.0;
            let total_in: f64 = f.image.iter().sum();
            // Every pixel's top-hat lies inside the z grid (0.99..1.09 within 0.9..1.5).
            let total_out: f64 = c.flux.iter().sum::<f64>() / ivar;
            prop_assert!((total_out - total_in).abs() < 1e-9 * total_in, "{} vs {}", total_out, total_in);
        }
    }
}

#[cfg(test)]
mod perf_probe {
    //! `cargo test --release --lib probe_ -- --ignored --nocapture`: timing probes
    //! mirroring geometry A of benchmarks/bench_kernel.py (run under callgrind for
    //! stable counts). Environment: `PROBE_REPS` (runs, best kept; default 5),
    //! `PROBE_THREADS` (default 1), `PROBE_CROP` (set: only the 440 x 440 input
    //! pixels around the grid, as the pipeline's crops), `PROBE_COLD` (set: the
    //! caches flushed before each run).
    use super::*;
    use ndarray::{Array2, Array3};

    fn run(offset: f64, kernel: Kernel, n_planes: usize) {
        run_scaled(offset, 1.0, kernel, n_planes)
    }

    /// `scale`: output pixels per input pixel (1: geometry A; 300 / 2040 * 0.98:
    /// geometry B, the whole frame on the grid).
    fn run_scaled(offset: f64, scale: f64, kernel: Kernel, n_planes: usize) {
        let n = 2040;
        let (c, s) = (scale * 23f64.to_radians().cos(), scale * 23f64.to_radians().sin());
        let map = |x: f64, y: f64| {
            let (u, v) = (x - 1019.5, y - 1019.5);
            (c * u - s * v + 149.5 + offset, s * u + c * v + 149.5)
        };
        let cx = Array2::from_shape_fn((n + 1, n + 1), |(j, i)| map(i as f64 - 0.5, j as f64 - 0.5).0);
        let cy = Array2::from_shape_fn((n + 1, n + 1), |(j, i)| map(i as f64 - 0.5, j as f64 - 0.5).1);
        let img = Array2::from_elem((n, n), 1.0);
        let var = Array2::from_elem((n, n), 0.01);
        let fl = Array2::<u32>::zeros((n, n));
        let lam = Array2::from_shape_fn((n, n), |(j, _)| 2.4 - 0.8 * j as f64 / n as f64);
        let dl = lam.mapv(|l| l / 41.0);
        let edges: Vec<f64> =
            if n_planes == 1 { vec![0.5, 5.5] } else { (0..=n_planes).map(|k| 1.6 * (2.45f64 / 1.6).powf(k as f64 / n_planes as f64)).collect() };
        let nz = edges.len() - 1;
        let p = Params { z_edges: edges, xy_shrink: 0.8, z_shrink: 0.8, ivar_max: 1e10, min_overlap: 0.0, kernel, exclude_bits: 0 };
        let mut a = [Array3::<f64>::ones((nz, 300, 300)), Array3::ones((nz, 300, 300)), Array3::ones((nz, 300, 300))];
        let mut b = [Array3::<u32>::ones((nz, 300, 300)), Array3::ones((nz, 300, 300)), Array3::ones((nz, 300, 300))];
        let [f, w, v] = &mut a;
        let [cn, am, om] = &mut b;
        let crop = std::env::var("PROBE_CROP").is_ok();
        let (j0, j1, i0, i1) = if crop { (800, 1240, 800, 1240) } else { (0, n, 0, n) };
        use ndarray::s;
        let (cx, cy) = (cx.slice(s![j0..=j1, i0..=i1]).to_owned(), cy.slice(s![j0..=j1, i0..=i1]).to_owned());
        let (img, var, fl) =
            (img.slice(s![j0..j1, i0..i1]).to_owned(), var.slice(s![j0..j1, i0..i1]).to_owned(), fl.slice(s![j0..j1, i0..i1]).to_owned());
        let (lam, dl) = (lam.slice(s![j0..j1, i0..i1]).to_owned(), dl.slice(s![j0..j1, i0..i1]).to_owned());
        let frame = FrameView {
            corners_x: cx.view(),
            corners_y: cy.view(),
            image: img.view(),
            variance: var.view(),
            flags: fl.view(),
            lambda_c: lam.view(),
            delta_lambda: dl.view(),
            exclude: None,
        };
        let reps: usize = std::env::var("PROBE_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
        let mut best = f64::INFINITY;
        let mut st = FrameStats::default();
        // PROBE_COLD: read 64 MiB before each run, so that the frame and cube
        // come from main memory (as in the benchmark, where implementations
        // take turns, and in a pipeline).
        let mut junk = if std::env::var("PROBE_COLD").is_ok() { vec![1.0f64; 8 << 20] } else { Vec::new() };
        for rep in 0..reps {
            if !junk.is_empty() {
                junk[rep % 1000] += 1.0;
                std::hint::black_box(junk.iter().sum::<f64>());
            }
            let t = std::time::Instant::now();
            let cube = CubeMut {
                flux: f.view_mut(),
                weight: w.view_mut(),
                var: v.view_mut(),
                count: cn.view_mut(),
                and_mask: am.view_mut(),
                or_mask: om.view_mut(),
            };
            st = drizzle_frame(cube, &frame, &p, std::env::var("PROBE_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(1)).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        eprintln!(
            "{kernel:?} offset {offset} planes {nz}: best {:.2} ms of {reps} ({} pixels, {} contributions)",
            best * 1e3,
            st.n_pixels,
            st.n_contributions
        );
    }

    #[test]
    #[ignore]
    fn probe_square_17() {
        run(0.0, Kernel::Square, 17);
    }

    #[test]
    #[ignore]
    fn probe_square_1() {
        run(0.0, Kernel::Square, 1);
    }

    #[test]
    #[ignore]
    fn probe_bilinear_17() {
        run(0.0, Kernel::Bilinear, 17);
    }

    #[test]
    #[ignore]
    fn probe_whole_frame() {
        run_scaled(0.0, 0.7 * 300.0 / 2040.0, Kernel::Square, 17);
    }

    #[test]
    #[ignore]
    fn probe_off_grid() {
        run(10000.0, Kernel::Square, 17);
    }
}
