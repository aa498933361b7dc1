//! The cube's accumulators as the engine writes them: [`CubeMut`] (the six
//! arrays), [`Band`] (a band of output rows owned by one task), [`Voxels`]
//! (the one voxel update of every path) and [`FrameStats`] (what a call did).
//!
//! Weight of one contribution: `w = min(1/variance, ivar_max) * f_xy * f_z`.
//! Accumulators, each `(n_z, ny, nx)`: `flux += w*F`, `weight += w`,
//! `var += w^2 * variance`, `count += 1`, `and_mask &= flags` (set to `flags`
//! on the first contribution, so it stays 0 where nothing landed),
//! `or_mask |= flags`. Bands come from `split_at` on the views, so no two tasks
//! write the same voxel and there are no locks or atomics on the accumulators.

use ndarray::{ArrayViewMut3, Axis};

use crate::frame::PixelValue;
use crate::prefetch::prefetch;

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
pub(crate) struct Band<'a> {
    /// First output row (of the whole cube) and number of rows.
    pub(crate) r0: usize,
    pub(crate) rows: usize,
    pub(crate) nz: usize,
    pub(crate) nx: usize,
    pub(crate) strides: [isize; 3],
    pub(crate) vox: Voxels,
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
        Ok(s)
    }

    /// The cube cut into bands of `rows` output rows.
    pub(crate) fn into_bands(self, rows: usize) -> Vec<Band<'a>> {
        let ny = self.flux.dim().1;
        let starts: Vec<usize> = (0..ny).step_by(rows.max(1)).chain([ny]).collect();
        self.into_bands_at(&starts)
    }

    /// The cube cut into bands of output rows `starts[b] .. starts[b + 1]`
    /// (`starts` increasing from 0 to the number of rows).
    pub(crate) fn into_bands_at(self, starts: &[usize]) -> Vec<Band<'a>> {
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
