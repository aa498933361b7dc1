//! The covariance cross terms: an optional accumulator of the fused path.
//!
//! The cube's SCI is `SCI_k = sum_i c_ki x_i` with `c_ki = w_ki / W_k`, where
//! `w_ki = ivar_i * f_xy * f_z` is the weight input pixel `i` gives voxel `k`
//! and `W_k = sum_i w_ki` (the weight accumulator). So
//! `Cov(k, l) = X_kl / (W_k W_l)` with `X_kl = sum_i w_ki w_li sigma_i^2`; the
//! diagonal `X_kk` is the variance accumulator. [`CovMut`] holds `X_kl` for
//! the voxel pairs `l = k + o`, `o` one of a stencil of offsets `(dz, dy, dx)`
//! (array `(n_z, ny, nx, n_offsets)`, offset `o` of voxel `k` at `[k, o]`: the
//! terms of one anchor share a few cache lines, which a pixel's pairs mostly hit).
//! Each unordered pair is stored once, at its *anchor*: the voxel with the
//! smaller row, then the smaller column, then the smaller plane (so every
//! stencil offset is positive in that order, [`positive`]).
//!
//! An input pixel adds `w_ki w_li sigma_i^2` to each pair of the voxels it
//! touches; a band (a task's output rows) adds only the pairs anchored in its
//! rows, so bands never write the same element, and each element sums its
//! terms in input-pixel order: bit-identical for any thread count. A pair
//! farther apart than the stencil is an error naming the offset, never
//! dropped.

use ndarray::{ArrayViewMut4, Axis};

/// The stencil of offsets `(dz, dy, dx)`, each [`positive`], and a dense
/// lookup from an offset to its index.
#[derive(Clone, Debug)]
pub struct Stencil {
    /// The offsets in array order.
    pub offsets: Vec<[i64; 3]>,
    /// Largest `|dz|`, `|dy|`, `|dx|` of the offsets.
    ext: [i64; 3],
    /// Index + 1 of each offset of the box `[-ext, ext]` (0: not in the stencil).
    lut: Vec<u32>,
    /// Elements of `lut` from one plane offset to the next.
    plane: i64,
    /// The place in `lut` of `(0, dy, dx)` for `dy` in 0..=2 and `dx` in
    /// -2..=2 at `[dy][dx + 2]` (u32::MAX: outside the box): the spatial
    /// offsets of the cells of the scan's fast path.
    near: [[u32; 5]; 3],
}

/// True for the offsets that point from a pair's anchor to its other voxel:
/// `dy > 0`, or `dy == 0` and `dx > 0`, or `dy == dx == 0` and `dz > 0`.
#[inline(always)]
pub fn positive(o: [i64; 3]) -> bool {
    let [dz, dy, dx] = o;
    dy > 0 || (dy == 0 && (dx > 0 || (dx == 0 && dz > 0)))
}

impl Stencil {
    /// The stencil of `offsets` (each `(dz, dy, dx)`): each positive, no
    /// repeats, at most 64 per axis away. Errors name the offset.
    pub fn new(offsets: &[[i64; 3]]) -> Result<Stencil, String> {
        let mut ext = [0i64; 3];
        for &o in offsets {
            if !positive(o) {
                return Err(format!("covariance offset {o:?} is not positive (dy > 0, or dy = 0 and dx > 0, or dy = dx = 0 and dz > 0)"));
            }
            if o.iter().any(|v| v.abs() > 64) {
                return Err(format!("covariance offset {o:?} is more than 64 voxels long"));
            }
            for (e, v) in ext.iter_mut().zip(o) {
                *e = (*e).max(v.abs());
            }
        }
        let side = ext.map(|e| (2 * e + 1) as usize);
        let mut lut = vec![0u32; side.iter().product()];
        for (n, &o) in offsets.iter().enumerate() {
            let at = Self::slot(ext, o);
            if lut[at] != 0 {
                return Err(format!("covariance offset {o:?} is listed twice"));
            }
            lut[at] = n as u32 + 1;
        }
        let near = std::array::from_fn(|dy| {
            std::array::from_fn(|b| {
                let dx = b as i64 - 2;
                if dy as i64 <= ext[1] && dx.abs() <= ext[2] {
                    Self::slot(ext, [0, dy as i64, dx]) as u32
                } else {
                    u32::MAX
                }
            })
        });
        Ok(Stencil { offsets: offsets.to_vec(), ext, lut, plane: (side[1] * side[2]) as i64, near })
    }

    fn slot(ext: [i64; 3], o: [i64; 3]) -> usize {
        let side = ext.map(|e| 2 * e + 1);
        (((o[0] + ext[0]) * side[1] + o[1] + ext[1]) * side[2] + o[2] + ext[2]) as usize
    }

    /// Index of the positive offset `o`, or None when it is not in the stencil.
    #[inline(always)]
    pub fn index(&self, o: [i64; 3]) -> Option<usize> {
        if (0..3).any(|a| o[a].abs() > self.ext[a]) {
            return None;
        }
        let n = self.lut[Self::slot(self.ext, o)];
        (n > 0).then(|| n as usize - 1)
    }
}

/// The cross-term accumulator `(n_z, ny, nx, n_offsets)` with its stencil.
pub struct CovMut<'a> {
    pub cross: ArrayViewMut4<'a, f64>,
    pub stencil: Stencil,
}

impl<'a> CovMut<'a> {
    /// Checks the array against the cube's shape `(n_z, ny, nx)` and the stencil.
    pub fn check(&self, shape: (usize, usize, usize)) -> Result<(), String> {
        let d = self.cross.dim();
        let want = (shape.0, shape.1, shape.2, self.stencil.offsets.len());
        if d != want {
            return Err(format!("cube array cov_cross has shape {d:?}, expected {want:?} (n_z, ny, nx, offsets)"));
        }
        Ok(())
    }

    /// The rows `starts[b] .. starts[b + 1]` of each band (as
    /// [`crate::scan::CubeMut::into_bands_at`] cuts the other arrays), for an
    /// accumulator whose first voxel is grid pixel `origin` (rows and columns
    /// of the bands count from the grid's).
    pub(crate) fn into_bands_at(self, starts: &[usize], origin: (usize, usize)) -> Vec<CovBand<'a>> {
        let mut rest = self.cross;
        let stencil = std::sync::Arc::new(self.stencil);
        let mut out = Vec::with_capacity(starts.len());
        for w in starts.windows(2) {
            let (r0, n) = (w[0], w[1] - w[0]);
            if n == 0 {
                continue;
            }
            let (mut b, b_rest) = rest.split_at(Axis(1), n);
            let st = b.strides();
            out.push(CovBand {
                r0: r0 + origin.0,
                c0: origin.1,
                rows: n,
                strides: [st[0], st[1], st[2], st[3]],
                ptr: b.as_mut_ptr(),
                stencil: stencil.clone(),
                scratch: Vec::new(),
                _view: std::marker::PhantomData,
            });
            rest = b_rest;
        }
        out
    }
}

/// One band's rows of the cross-term accumulator.
pub(crate) struct CovBand<'a> {
    /// First row and column (of the grid) of the band.
    r0: usize,
    c0: usize,
    rows: usize,
    strides: [isize; 4],
    ptr: *mut f64,
    stencil: std::sync::Arc<Stencil>,
    /// The voxels of a pixel for [`Self::add_pairs`] (kept: no allocation per pixel).
    scratch: Vec<Touch>,
    _view: std::marker::PhantomData<&'a mut f64>,
}

// SAFETY: a band is the only handle to its disjoint rows of the accumulator.
unsafe impl Send for CovBand<'_> {}

/// One voxel a pixel touches: plane, row, column (of the grid, within the cube's window) and weight.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Touch {
    pub(crate) z: usize,
    pub(crate) r: usize,
    pub(crate) c: usize,
    pub(crate) w: f64,
}

impl CovBand<'_> {
    /// Adds `w_k w_l variance` for every pair of `touched` (the voxels one
    /// pixel gives weight `w`) whose anchor lies in this band's rows. A pair
    /// beyond the stencil stops it with the pair's offset (the call fails).
    pub(crate) fn add_pairs(&mut self, touched: &[Touch], variance: f64) -> Result<(), [i64; 3]> {
        let key = |t: &Touch| [t.z as i64, t.r as i64, t.c as i64];
        let (lo, hi, st) = (self.r0, self.r0 + self.rows, self.strides);
        for (a, ta) in touched.iter().enumerate() {
            for tb in &touched[a + 1..] {
                let (ka, kb) = (key(ta), key(tb));
                let o = [kb[0] - ka[0], kb[1] - ka[1], kb[2] - ka[2]];
                let (anchor, o) = if positive(o) { (ta, o) } else { (tb, o.map(|v| -v)) };
                if anchor.r < lo || anchor.r >= hi {
                    continue;
                }
                let n = self.stencil.index(o).ok_or(o)?;
                let at = anchor.z as isize * st[0] + (anchor.r - lo) as isize * st[1] + (anchor.c - self.c0) as isize * st[2] + n as isize * st[3];
                // SAFETY: offset `n` exists, the anchor is a voxel of the grid
                // (the caller's contract) in this band's rows (tested above).
                unsafe { *self.ptr.offset(at) += ta.w * tb.w * variance };
            }
        }
        Ok(())
    }
}

/// Most planes one pixel's top-hat overlaps on the fast path of
/// [`CovBand::add_cells`] (more take [`CovBand::add_pairs`]).
const FAST_PLANES: usize = 8;

impl CovBand<'_> {
    /// [`Self::add_pairs`] for a pixel whose voxels all lie in this band (the
    /// scan's fast path): the R x C output pixels from grid pixel `(r0, c0)`
    /// with fractions `f[a][b]` (0 where nothing lands), the spectral overlaps
    /// `zov` (`(plane, f_z)`, planes ascending) and the voxel weights
    /// `ivar * (f[a][b] * f_z)` where that fraction is at least `keep_from`, as
    /// the deposits. The same pairs, anchors and products as [`Self::add_pairs`]
    /// on those voxels in (row, column, plane) order, so the same bits (each
    /// pair's anchor is its first voxel in that order), without its searches:
    /// the spatial part of each pair's offset is known from the two cells.
    ///
    /// SAFETY: the R x C output pixels lie in this band's rows and the grid's
    /// columns; every plane of `zov` is a plane of the cube.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn add_cells<const R: usize, const C: usize>(
        &mut self,
        r0: usize,
        c0: usize,
        f: &[[f64; C]; R],
        zov: &[(usize, f64)],
        ivar: f64,
        variance: f64,
        keep_from: f64,
    ) -> Result<(), [i64; 3]> {
        let nz = zov.len();
        if nz > FAST_PLANES || R > 3 || C > 3 {
            return self.add_cells_listed(r0, c0, f, zov, ivar, variance, keep_from);
        }
        // Each voxel's weight, and whether it is one (its fraction at least `keep_from`).
        let mut w = [[[0.0f64; FAST_PLANES]; C]; R];
        let mut on = [[[false; FAST_PLANES]; C]; R];
        for a in 0..R {
            for b in 0..C {
                for (z, &(_, f_z)) in zov.iter().enumerate() {
                    let fc = f[a][b] * f_z;
                    on[a][b][z] = fc >= keep_from;
                    w[a][b][z] = ivar * fc;
                }
            }
        }
        let st = self.strides;
        let (ptr, lut) = (self.ptr, self.stencil.lut.as_slice());
        let (ez, plane) = (self.stencil.ext[0], self.stencil.plane);
        let near = self.stencil.near;
        let base = (r0 - self.r0) as isize * st[1] + (c0 - self.c0) as isize * st[2];
        // Adds `term` at offset `(dz, dy, dx)` of the anchor at `at`; `xy`: the
        // lookup's place of `(dy, dx)` (u32::MAX: not in the stencil).
        let add = |at: isize, xy: u32, dz: i64, dy: usize, dx: isize, term: f64| -> Result<(), [i64; 3]> {
            let n = if xy != u32::MAX && dz.abs() <= ez { lut[(xy as i64 + dz * plane) as usize] } else { 0 };
            if n == 0 {
                return Err([dz, dy as i64, dx as i64]);
            }
            // SAFETY: offset `n - 1` exists; the anchor is a voxel of this band (the caller's contract).
            unsafe { *ptr.offset(at + (n - 1) as isize * st[3]) += term };
            Ok(())
        };
        for a1 in 0..R {
            for b1 in 0..C {
                let cell1 = base + a1 as isize * st[1] + b1 as isize * st[2];
                for z1 in 0..nz {
                    if !on[a1][b1][z1] {
                        continue;
                    }
                    let (w1, k1) = (w[a1][b1][z1], zov[z1].0 as i64);
                    let at = cell1 + k1 as isize * st[0];
                    // The same cell in the later planes, then the later cells in every plane.
                    for z2 in z1 + 1..nz {
                        if on[a1][b1][z2] {
                            add(at, near[0][2], zov[z2].0 as i64 - k1, 0, 0, w1 * w[a1][b1][z2] * variance)?;
                        }
                    }
                    for a2 in a1..R {
                        for b2 in if a2 == a1 { b1 + 1 } else { 0 }..C {
                            let (dy, dx) = (a2 - a1, b2 as isize - b1 as isize);
                            let xy = near[dy][(dx + 2) as usize];
                            for z2 in 0..nz {
                                if on[a2][b2][z2] {
                                    add(at, xy, zov[z2].0 as i64 - k1, dy, dx, w1 * w[a2][b2][z2] * variance)?;
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// [`Self::add_cells`] through the list of voxels and [`Self::add_pairs`].
    #[cold]
    #[allow(clippy::too_many_arguments)]
    fn add_cells_listed<const R: usize, const C: usize>(
        &mut self,
        r0: usize,
        c0: usize,
        f: &[[f64; C]; R],
        zov: &[(usize, f64)],
        ivar: f64,
        variance: f64,
        keep_from: f64,
    ) -> Result<(), [i64; 3]> {
        let mut touched = std::mem::take(&mut self.scratch);
        touched.clear();
        for (a, fr) in f.iter().enumerate() {
            for (b, &f_xy) in fr.iter().enumerate() {
                for &(z, f_z) in zov {
                    let fc = f_xy * f_z;
                    if fc >= keep_from {
                        touched.push(Touch { z, r: r0 + a, c: c0 + b, w: ivar * fc });
                    }
                }
            }
        }
        let done = self.add_pairs(&touched, variance);
        self.scratch = touched;
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stencil_rejects_negative_and_repeated_offsets() {
        assert!(Stencil::new(&[[0, 0, -1]]).unwrap_err().contains("not positive"));
        assert!(Stencil::new(&[[1, -1, 0]]).unwrap_err().contains("not positive"));
        assert!(Stencil::new(&[[0, 1, 0], [0, 1, 0]]).unwrap_err().contains("twice"));
        let s = Stencil::new(&[[1, 0, 0], [0, 0, 1], [-1, 1, -1]]).unwrap();
        assert_eq!(s.index([1, 0, 0]), Some(0));
        assert_eq!(s.index([0, 0, 1]), Some(1));
        assert_eq!(s.index([-1, 1, -1]), Some(2));
        assert_eq!(s.index([0, 1, 0]), None);
        assert_eq!(s.index([0, 0, 2]), None);
    }
}
