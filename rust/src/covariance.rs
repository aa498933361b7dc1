//! The covariance cross terms: an optional accumulator of the fused path.
//!
//! The cube's SCI is `SCI_k = sum_i c_ki x_i` with `c_ki = w_ki / W_k`, where
//! `w_ki = ivar_i * f_xy * f_z` is the weight input pixel `i` gives voxel `k`
//! and `W_k = sum_i w_ki` (the weight accumulator). So
//! `Cov(k, l) = X_kl / (W_k W_l)` with `X_kl = sum_i w_ki w_li sigma_i^2`; the
//! diagonal `X_kk` is the variance accumulator. [`CovMut`] holds `X_kl` for
//! the voxel pairs `l = k + o`, `o` one of a stencil of offsets `(dz, dy, dx)`,
//! in an array `(n_parts, n_z, ny, nx, slots)`: offset `o` of voxel `k` at
//! `[part, k, slot]` ([`Stencil::places`]; the terms of one anchor share a few
//! cache lines, which a pixel's pairs mostly hit). Part 0 holds the offsets
//! with `|dz| <= 1`, part 1 (when the stencil has any) those with `|dz| >= 2`,
//! each part in the stencil's order: a pixel couples voxels two planes apart
//! only when its top-hat spans three planes, so where none does, part 1's
//! memory is never touched (never faulted in). Both parts have the same
//! strides, so an offset's element step from its anchor is one constant.
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

use ndarray::{ArrayViewMut5, Axis};

/// The stencil of offsets `(dz, dy, dx)`, each [`positive`], a dense
/// lookup from an offset to its index, and each offset's place in the
/// accumulator.
#[derive(Clone, Debug)]
pub struct Stencil {
    /// The offsets in the stencil's order (the file's).
    pub offsets: Vec<[i64; 3]>,
    /// `(part, slot)` of each offset: part 0 for `|dz| <= 1`, else part 1; the
    /// slots of a part number its offsets in the stencil's order.
    pub places: Vec<[usize; 2]>,
    /// Largest `|dz|`, `|dy|`, `|dx|` of the offsets.
    ext: [i64; 3],
    /// Index + 1 of each offset of the box `[-ext, ext]` (0: not in the stencil).
    lut: Vec<u32>,
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
        let mut used = [0usize; 2];
        let places = offsets
            .iter()
            .map(|o| {
                let part = usize::from(o[0].abs() > 1);
                used[part] += 1;
                [part, used[part] - 1]
            })
            .collect();
        Ok(Stencil { offsets: offsets.to_vec(), places, ext, lut })
    }

    /// Parts of the accumulator: 2 when some offset has `|dz| >= 2`, else 1.
    pub fn parts(&self) -> usize {
        1 + self.places.iter().map(|p| p[0]).max().unwrap_or(0)
    }

    /// Least slots per voxel and part that hold the offsets.
    pub fn slots(&self) -> usize {
        self.places.iter().map(|p| p[1] + 1).max().unwrap_or(0)
    }

    /// The element step of each offset from its anchor's first term in an
    /// accumulator of strides `st` (part, plane, row, column, slot).
    pub fn steps(&self, st: [isize; 5]) -> Vec<isize> {
        self.places.iter().map(|&[p, s]| p as isize * st[0] + s as isize * st[4]).collect()
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

/// The cross-term accumulator `(n_parts, n_z, ny, nx, slots)` with its stencil.
pub struct CovMut<'a> {
    pub cross: ArrayViewMut5<'a, f64>,
    pub stencil: Stencil,
}

impl<'a> CovMut<'a> {
    /// Checks the array against the cube's shape `(n_z, ny, nx)` and the
    /// stencil: its parts, and at least its slots per voxel.
    pub fn check(&self, shape: (usize, usize, usize)) -> Result<(), String> {
        let d = self.cross.dim();
        let (parts, slots) = (self.stencil.parts(), self.stencil.slots());
        if (d.0, d.1, d.2, d.3) != (parts, shape.0, shape.1, shape.2) || d.4 < slots {
            return Err(format!(
                "cube array cov_cross has shape {d:?}, expected ({parts}, {}, {}, {}, at least {slots}) (parts, n_z, ny, nx, slots)",
                shape.0, shape.1, shape.2
            ));
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
            let (mut b, b_rest) = rest.split_at(Axis(2), n);
            let st5: [isize; 5] = b.strides().try_into().expect("five axes");
            let steps = stencil.steps(st5);
            let st = [st5[1], st5[2], st5[3], st5[4]];
            let fast = FastTable::new(&stencil, &steps);
            out.push(CovBand {
                r0: r0 + origin.0,
                c0: origin.1,
                rows: n,
                strides: st,
                ptr: b.as_mut_ptr(),
                far: [far_pairs::<2, 3>(&fast, st), far_pairs::<3, 2>(&fast, st)],
                fast,
                near_lines: near_lines(near_span(&stencil, &steps, 1), b.as_ptr() as usize, st),
                flat_lines: near_lines(near_span(&stencil, &steps, 0), b.as_ptr() as usize, st),
                steps,
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
    /// Strides of part 0 (plane, row, column, slot); part 1 has the same.
    strides: [isize; 4],
    /// The first term of the band's first voxel (part 0).
    ptr: *mut f64,
    stencil: std::sync::Arc<Stencil>,
    /// Per offset of the stencil, its element step from an anchor's first term ([`Stencil::steps`]).
    steps: Vec<isize>,
    /// The stencil's steps for [`Self::add_cells`].
    fast: FastTable,
    /// Per 3-wide box (2 x 3, 3 x 2), the elements from its first cell's terms
    /// of the pairs of cells two apart ([`far_pairs`]), for [`Self::prefetch_far`].
    far: [[isize; 4]; 2],
    /// Element offsets, from an anchor's first cross term, of one element in
    /// each cache line that its offsets `|dz|, |dy|, |dx| <= 1` (what most
    /// pixels update) may span, and their number, for [`Self::prefetch`].
    near_lines: ([isize; 8], usize),
    /// The same for the offsets `dy = 0`, `|dz|, |dx| <= 1` (what a cell of a
    /// droplet's lower row updates as an anchor).
    flat_lines: ([isize; 8], usize),
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

/// The largest element step (`steps`, [`Stencil::steps`]) of the offsets
/// `|dz|, |dx| <= 1`, `dy <= max_dy` (0 or 1) of the stencil (all in part 0).
fn near_span(stencil: &Stencil, steps: &[isize], max_dy: i64) -> isize {
    let near = stencil.offsets.iter().zip(steps).filter(|(o, _)| o[1] <= max_dy && o.iter().all(|v| v.abs() <= 1));
    near.map(|(_, &e)| e).max().unwrap_or(0)
}

/// [`CovBand::near_lines`] for the terms `0 ..= span` (elements) of anchors
/// from address `addr` with strides `st`: one element per cache line from the
/// first, and the last element too unless every anchor starts on a line.
fn near_lines(span: isize, addr: usize, st: [isize; 4]) -> ([isize; 8], usize) {
    let aligned = addr.is_multiple_of(64) && st[..3].iter().all(|s| (s * 8) % 64 == 0) && st[3] == 1;
    let mut out = ([0isize; 8], 0);
    let mut e = 0;
    while e <= span && out.1 < 8 {
        out.0[out.1] = e;
        out.1 += 1;
        e += 8;
    }
    if !aligned && out.1 < 8 {
        out.0[out.1] = span;
        out.1 += 1;
    }
    out
}

impl CovBand<'_> {
    /// The strides `(plane, row, column)` of the cross terms (elements).
    pub(crate) fn strides(&self) -> [isize; 3] {
        [self.strides[0], self.strides[1], self.strides[2]]
    }

    /// Asks for the cache lines of the terms that a droplet on the 2 x 2 cells
    /// from element `at` (a voxel of this band: plane, row and column times
    /// [`Self::strides`], rows from the band's first) updates: the nearest
    /// offsets ([`Self::near_lines`]) of its upper cells, those with `dy = 0`
    /// ([`Self::flat_lines`]) of its lower ones. Never faults, whatever `at`.
    #[inline(always)]
    pub(crate) fn prefetch(&self, at: isize) {
        let [_, sr, sc] = self.strides();
        if self.near_lines.1 == 2 && self.flat_lines.1 == 1 {
            // The usual case (D3's stencil, terms from a line's start): two lines
            // above, one below, without the loops.
            let (p, e) = (self.ptr.wrapping_offset(at), self.near_lines.0[1]);
            for q in [p, p.wrapping_offset(sc)] {
                crate::prefetch::prefetch(q);
                crate::prefetch::prefetch(q.wrapping_offset(e));
            }
            crate::prefetch::prefetch(p.wrapping_offset(sr));
            crate::prefetch::prefetch(p.wrapping_offset(sr + sc));
            return;
        }
        for (cell, (lines, n)) in [(at, &self.near_lines), (at + sc, &self.near_lines), (at + sr, &self.flat_lines), (at + sr + sc, &self.flat_lines)]
        {
            let p = self.ptr.wrapping_offset(cell);
            for &e in &lines[..*n] {
                crate::prefetch::prefetch(p.wrapping_offset(e));
            }
        }
    }
}

impl CovBand<'_> {
    /// Asks for the cache lines of the terms that a droplet on the 2 x 3 cells
    /// (`wide`) or 3 x 2 cells from element `at` (as in [`Self::prefetch`], in
    /// plane `z`) updates between cells two apart (offsets with `|dy|` or `|dx|
    /// = 2`, beyond the nearest terms that the prefetch ahead asks for), `dz = 0`
    /// of planes `z` and `z + 1`. Never faults, whatever `at`.
    #[inline(always)]
    pub(crate) fn prefetch_far(&self, at: isize, wide: bool) {
        let sz = self.strides[0];
        for e in self.far[usize::from(!wide)] {
            crate::prefetch::prefetch(self.ptr.wrapping_offset(at + e));
            crate::prefetch::prefetch(self.ptr.wrapping_offset(at + e + sz));
        }
    }

    /// Adds `w_k w_l variance` for every pair of `touched` (the voxels one
    /// pixel gives weight `w`) whose anchor lies in this band's rows. A pair
    /// beyond the stencil stops it with the pair's offset (the call fails).
    pub(crate) fn add_pairs(&mut self, touched: &[Touch], variance: f64) -> Result<(), [i64; 3]> {
        let place = Place { ptr: self.ptr, strides: self.strides, r0: self.r0, rows: self.rows, c0: self.c0 };
        // SAFETY: the band's memory and geometry (the caller's contract: the voxels lie in the grid).
        unsafe { add_touched_pairs(place, &self.stencil, &self.steps, touched, variance) }
    }
}

/// A band's terms for [`add_touched_pairs`]: its first term, strides, first row, rows and first column.
#[derive(Clone, Copy)]
struct Place {
    ptr: *mut f64,
    strides: [isize; 4],
    r0: usize,
    rows: usize,
    c0: usize,
}

/// [`CovBand::add_pairs`] with the stencil and its steps as separate shared
/// references (so that the compiler knows the stores do not change them).
///
/// SAFETY: `steps` has one step per offset of `stencil`; the voxels of
/// `touched` lie in the grid of the band `place`.
unsafe fn add_touched_pairs(place: Place, stencil: &Stencil, steps: &[isize], touched: &[Touch], variance: f64) -> Result<(), [i64; 3]> {
    let key = |t: &Touch| [t.z as i64, t.r as i64, t.c as i64];
    let (lo, hi, st) = (place.r0, place.r0 + place.rows, place.strides);
    for (a, ta) in touched.iter().enumerate() {
        for tb in &touched[a + 1..] {
            let (ka, kb) = (key(ta), key(tb));
            let o = [kb[0] - ka[0], kb[1] - ka[1], kb[2] - ka[2]];
            let (anchor, o) = if positive(o) { (ta, o) } else { (tb, o.map(|v| -v)) };
            if anchor.r < lo || anchor.r >= hi {
                continue;
            }
            let n = stencil.index(o).ok_or(o)?;
            // SAFETY: `n` is an offset of the stencil, which has one step per offset.
            let step = unsafe { *steps.get_unchecked(n) };
            let at = anchor.z as isize * st[0] + (anchor.r - lo) as isize * st[1] + (anchor.c - place.c0) as isize * st[2] + step;
            // SAFETY: offset `n` exists, the anchor is a voxel of the grid
            // (the caller's contract) in this band's rows (tested above).
            unsafe { *place.ptr.offset(at) += ta.w * tb.w * variance };
        }
    }
    Ok(())
}

/// One pixel on the scan's fast path, for [`CovBand::add_cells`]: the R x C
/// output pixels from grid pixel `(r0, c0)` with fractions `f[a][b]` (0 where
/// nothing lands), the spectral overlaps `zov` (`(plane, f_z)`, planes
/// ascending), its weight per unit fraction `ivar` and `variance`, and
/// `keep_from`, the least fraction that is deposited.
#[derive(Clone, Copy)]
pub(crate) struct PixelCells<'p, const R: usize, const C: usize> {
    pub(crate) r0: usize,
    pub(crate) c0: usize,
    pub(crate) f: &'p [[f64; C]; R],
    pub(crate) zov: &'p [(usize, f64)],
    pub(crate) ivar: f64,
    pub(crate) variance: f64,
    pub(crate) keep_from: f64,
}

/// Most planes one pixel's top-hat overlaps on the fast path of
/// [`CovBand::add_cells`] (more take [`CovBand::add_pairs`]).
const FAST_PLANES: usize = 3;
/// The plane offsets `dz` of the fast path's table, `-(FAST_PLANES - 1) ..= FAST_PLANES - 1`.
const FAST_DZ: usize = 2 * FAST_PLANES - 1;

/// The fast path's view of a stencil for one band's strides: the element
/// step ([`Stencil::steps`]) of each offset `(dz, dy, dx)` with `dy` in 0..=2,
/// `dx` in -2..=2 and `|dz| < FAST_PLANES` (0 where not in the stencil), and
/// per droplet box of `R x C` cells (`R`, `C` in 1..=3) the most planes whose
/// every pair of voxels has its offset in the stencil, and whether each pair
/// of its cells has its offsets `dz = -1, 0, 1` in three consecutive
/// elements (`runs`: two planes then add two terms at once, see [`add_box_terms`]).
#[derive(Clone, Debug)]
struct FastTable {
    step: [[[isize; FAST_DZ]; 5]; 3],
    planes: [[usize; 3]; 3],
    runs: [[bool; 3]; 3],
}

impl FastTable {
    fn new(stencil: &Stencil, steps: &[isize]) -> FastTable {
        let step: [[[isize; FAST_DZ]; 5]; 3] = std::array::from_fn(|dy| {
            std::array::from_fn(|b| {
                std::array::from_fn(|z| {
                    let o = [z as i64 - (FAST_PLANES as i64 - 1), dy as i64, b as i64 - 2];
                    stencil.index(o).map_or(0, |n| steps[n])
                })
            })
        });
        // A box of R x C cells and `nz` planes couples the positive offsets with
        // `dy < R`, `|dx| < C`, `|dz| < nz`: all must be in the stencil.
        let complete = |r: i64, c: i64, nz: i64| {
            (0..r).all(|dy| (1 - c..c).all(|dx| (1 - nz..nz).all(|dz| !positive([dz, dy, dx]) || stencil.index([dz, dy, dx]).is_some())))
        };
        let planes = std::array::from_fn(|a| {
            std::array::from_fn(|b| (1..=FAST_PLANES).take_while(|&nz| complete(a as i64 + 1, b as i64 + 1, nz as i64)).last().unwrap_or(0))
        });
        // The pairs of cells of a box: `dy` in 0..R, `dx` in -(C - 1)..C, `dx > 0` when `dy == 0`.
        let run = |dy: usize, dx: i64| {
            let s = &step[dy][(dx + 2) as usize];
            let z = FAST_PLANES - 1;
            complete(dy as i64 + 1, dx.abs() + 1, 2) && s[z] - s[z - 1] == 1 && s[z + 1] - s[z] == 1
        };
        let runs = std::array::from_fn(|a| {
            std::array::from_fn(|b| (0..=a).all(|dy| (-(b as i64)..=b as i64).all(|dx| (dy == 0 && dx <= 0) || run(dy, dx))))
        });
        FastTable { step, planes, runs }
    }
}

impl CovBand<'_> {
    /// [`Self::add_pairs`] for a pixel whose voxels all lie in this band (the
    /// scan's fast path, [`PixelCells`]) with the voxel weights
    /// `ivar * (f[a][b] * f_z)` where that fraction is at least `keep_from`, as
    /// the deposits. The same sums as [`Self::add_pairs`] on those voxels, bit
    /// for bit: the same anchors and products `(w_k * w_l) * variance`, each
    /// element of the accumulator getting at most one term per pixel.
    ///
    /// Where the box of cells and planes lies inside the stencil (nearly
    /// always), [`Self::add_box`] visits every pair of the box's cells (a cell
    /// that gets nothing adds `+0.0`) without searches, branches or error
    /// checks; else [`Self::add_pairs`] (which errors on a pair beyond the stencil).
    ///
    /// SAFETY: the R x C output pixels lie in this band's rows and the grid's
    /// columns; every plane of `zov` is a plane of the cube.
    #[inline(always)]
    pub(crate) unsafe fn add_cells<const R: usize, const C: usize>(&mut self, px: PixelCells<'_, R, C>) -> Result<(), [i64; 3]> {
        let (zov, ivar) = (px.zov, px.ivar);
        let nz = zov.len();
        // Planes consecutive (a top-hat's overlaps are), the box inside the stencil and the
        // weights finite (so a zero weight's products are zero: see `add_box_terms`).
        let fast = nz > 0
            && R <= 3
            && C <= 3
            && nz <= self.fast.planes[R - 1][C - 1]
            && zov[nz - 1].0.wrapping_sub(zov[0].0) == nz - 1
            && ivar < f64::INFINITY;
        if !fast {
            return self.add_cells_listed(px);
        }
        // SAFETY: forwarded (the caller's contract), and `fast` above.
        unsafe {
            match nz {
                1 => self.add_box::<R, C, 1>(px),
                2 => self.add_box::<R, C, 2>(px),
                _ => self.add_box::<R, C, 3>(px),
            }
        }
        Ok(())
    }

    /// [`Self::add_cells`] for `NZ` consecutive planes whose box of pairs lies in
    /// the stencil: the weights of every cell and plane (0 for a fraction that
    /// fails `keep_from`), then [`add_box_terms`].
    ///
    /// SAFETY: as [`Self::add_cells`]; `zov` has `NZ` consecutive planes and
    /// `NZ <= self.fast.planes[R - 1][C - 1]`.
    #[inline(always)]
    unsafe fn add_box<const R: usize, const C: usize, const NZ: usize>(&mut self, px: PixelCells<'_, R, C>) {
        let PixelCells { r0, c0, f, zov, ivar, variance, keep_from } = px;
        debug_assert!(zov.len() == NZ);
        let st = self.strides;
        let w: [[[f64; NZ]; C]; R] = std::array::from_fn(|a| {
            std::array::from_fn(|b| {
                std::array::from_fn(|z| {
                    let fc = f[a][b] * zov[z].1;
                    if fc >= keep_from {
                        ivar * fc
                    } else {
                        0.0
                    }
                })
            })
        });
        let at0 = (r0 - self.r0) as isize * st[1] + (c0 - self.c0) as isize * st[2] + zov[0].0 as isize * st[0];
        let runs = NZ == 2 && self.fast.runs[R - 1][C - 1];
        // SAFETY: forwarded (the caller's contract and `fast.planes`).
        unsafe { add_box_terms(self.ptr, at0, [st[0], st[1], st[2]], &self.fast.step, runs, &w, variance) };
    }

    /// [`Self::add_cells`] through the list of voxels and [`Self::add_pairs`].
    #[cold]
    fn add_cells_listed<const R: usize, const C: usize>(&mut self, px: PixelCells<'_, R, C>) -> Result<(), [i64; 3]> {
        let PixelCells { r0, c0, f, zov, ivar, variance, keep_from } = px;
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

/// The cross terms of one pixel on the fast path: every pair of the `R x C`
/// cells and `NZ` consecutive planes of a box whose anchor voxel (cell 0,
/// first plane) is element `at0` of `ptr` (strides `st`: plane, row, column),
/// weights `w[a][b][z]`, adds `(w_k * w_l) * variance` at the anchor's term of
/// the pair's offset (`step`, [`FastTable`]). A cell with itself: its planes
/// after each. `runs` (two planes, offsets `dz = -1, 0, 1` of each pair of
/// cells in consecutive elements): the two terms of an anchor plane go to
/// neighbouring elements, added as one pair (vector code, the same products
/// and sums). Every element gets at most one term per pixel, so the order of
/// the pairs does not matter; a zero weight adds `+0.0`, which leaves an
/// element as it was (the elements are sums of non-negative terms, never
/// `-0.0`; the weights are finite, so no product is NaN): the bits of
/// [`CovBand::add_pairs`] on the cells that receive something, without its
/// branches. `step` is a separate reference so that the compiler knows the
/// stores do not change it.
///
/// SAFETY: the box's voxels lie in the band behind `ptr`, each pair's offset
/// in the stencil (`NZ <= FastTable::planes`), `runs` only when
/// `FastTable::runs` holds for the box and `NZ == 2`.
#[inline(always)]
unsafe fn add_box_terms<const R: usize, const C: usize, const NZ: usize>(
    ptr: *mut f64,
    at0: isize,
    st: [isize; 3],
    step: &[[[isize; FAST_DZ]; 5]; 3],
    runs: bool,
    w: &[[[f64; NZ]; C]; R],
    variance: f64,
) {
    // SAFETY (both): an element of the band (the caller's contract).
    let add = |at: isize, term: f64| unsafe { *ptr.offset(at) += term };
    let add2 = |at: isize, t: [f64; 2]| unsafe {
        let p = ptr.offset(at);
        *p += t[0];
        *p.add(1) += t[1];
    };
    let z = FAST_PLANES - 1;
    let cell = |a: usize, b: usize| at0 + a as isize * st[1] + b as isize * st[2];
    // A constant list of pairs: the compiler unrolls the loops (the weights stay in registers).
    for k in 0..R * C {
        let (a, b) = (k / C, k % C);
        let w1 = &w[a][b];
        for z1 in 0..NZ {
            for z2 in z1 + 1..NZ {
                add(cell(a, b) + z1 as isize * st[0] + step[0][2][z + z2 - z1], w1[z1] * w1[z2] * variance);
            }
        }
    }
    let (pairs, n) = const { box_pairs(R, C) };
    for &(a1, b1, a2, b2) in &pairs[..n] {
        let (at, w1, w2, s) = (cell(a1, b1), &w[a1][b1], &w[a2][b2], &step[a2 - a1][b2 + 2 - b1]);
        if runs {
            // Anchor plane 0: dz = 0, 1; plane 1: dz = -1, 0.
            add2(at + s[z], [w1[0] * w2[0] * variance, w1[0] * w2[1] * variance]);
            add2(at + st[0] + s[z - 1], [w1[1] * w2[0] * variance, w1[1] * w2[1] * variance]);
            continue;
        }
        for z1 in 0..NZ {
            for z2 in 0..NZ {
                add(at + z1 as isize * st[0] + s[z + z2 - z1], w1[z1] * w2[z2] * variance);
            }
        }
    }
}

/// The elements, from the first cell's terms of an `R x C` box (strides `st`),
/// of the `dz = 0` term of each pair of its cells two apart (at most 4; more
/// are dropped, fewer repeat the last): what [`CovBand::prefetch_far`] asks for.
fn far_pairs<const R: usize, const C: usize>(fast: &FastTable, st: [isize; 4]) -> [isize; 4] {
    let (pairs, n) = box_pairs(R, C);
    let far = pairs[..n].iter().filter(|&&(a1, b1, a2, b2)| a2 - a1 == 2 || b2.abs_diff(b1) == 2);
    let at: Vec<isize> =
        far.map(|&(a1, b1, a2, b2)| a1 as isize * st[1] + b1 as isize * st[2] + fast.step[a2 - a1][b2 + 2 - b1][FAST_PLANES - 1]).collect();
    std::array::from_fn(|k| at[k.min(at.len() - 1)])
}

/// The pairs of cells `(a1, b1, a2, b2)` of a box of `r x c` cells (at most
/// 9), the second after the first in row-major order, and their number.
const fn box_pairs(r: usize, c: usize) -> ([(usize, usize, usize, usize); 36], usize) {
    let (mut out, mut n, mut i) = ([(0, 0, 0, 0); 36], 0, 0);
    while i < r * c {
        let mut j = i + 1;
        while j < r * c {
            out[n] = (i / c, i % c, j / c, j % c);
            n += 1;
            j += 1;
        }
        i += 1;
    }
    (out, n)
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

    /// The positive offsets within `|dz| <= z`, `|dy|, |dx| <= s`, nearest first, without `skip`.
    fn stencil(z: i64, s: i64, skip: &[[i64; 3]]) -> Stencil {
        let mut o: Vec<[i64; 3]> = (-z..=z)
            .flat_map(|dz| (-s..=s).flat_map(move |dy| (-s..=s).map(move |dx| [dz, dy, dx])))
            .filter(|&o| positive(o) && !skip.contains(&o))
            .collect();
        o.sort_by_key(|o| o.iter().map(|v| v.abs()).max());
        Stencil::new(&o).unwrap()
    }

    /// The stencil as `covariance.stencil` orders it: planes innermost (`dz` of
    /// one `(dy, dx)` consecutive), then nearest first.
    fn stencil_planes_inner(z: i64, s: i64) -> Stencil {
        let mut o: Vec<[i64; 3]> =
            (-s..=s).flat_map(|dy| (-s..=s).flat_map(move |dx| (-z..=z).map(move |dz| [dz, dy, dx]))).filter(|&o| positive(o)).collect();
        o.sort_by_key(|o| o.iter().map(|v| v.abs()).max());
        Stencil::new(&o).unwrap()
    }

    /// Pixels of R x C cells into `fast` ([`CovBand::add_cells`]) and `slow`
    /// (its list of voxels and [`CovBand::add_pairs`]): the same result, bit for bit.
    fn same_as_pairs<const R: usize, const C: usize>(stencil: &Stencil, seed: u64) -> usize {
        let (nz, ny, nx) = (7, 9, 8);
        let shape = (stencil.parts(), nz, ny, nx, stencil.slots() + 1);
        let (mut fast, mut slow) = (ndarray::Array5::<f64>::zeros(shape), ndarray::Array5::<f64>::zeros(shape));
        fn band<'a>(a: &'a mut ndarray::Array5<f64>, stencil: &Stencil) -> CovBand<'a> {
            let starts = [0, 4, a.dim().2];
            CovMut { cross: a.view_mut(), stencil: stencil.clone() }.into_bands_at(&starts, (0, 0)).remove(1)
        }
        let (mut bf, mut bs) = (band(&mut fast, stencil), band(&mut slow, stencil));
        let mut state = seed;
        let mut rand = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut errors = 0;
        for _ in 0..3000 {
            let (r0, c0) = (4 + (rand() * (ny - 4 - R + 1) as f64) as usize, (rand() * (nx - C + 1) as f64) as usize);
            let f: [[f64; C]; R] = std::array::from_fn(|_| std::array::from_fn(|_| if rand() < 0.3 { 0.0 } else { rand() }));
            let n_planes = 1 + (rand() * 4.0) as usize;
            let k0 = (rand() * (nz - n_planes + 1) as f64) as usize;
            let gap = usize::from(n_planes > 1 && n_planes < 4 && rand() < 0.1);
            let zov: Vec<(usize, f64)> = (0..n_planes).map(|z| (k0 + z + gap * usize::from(z > 0), rand())).filter(|v| v.0 < nz).collect();
            let (ivar, variance, keep_from) = (1.0 / (0.1 + rand()), 0.1 + rand(), if rand() < 0.5 { 1e-12 } else { 0.05 });
            // SAFETY: the cells lie in band 1's rows (4 .. ny) and the grid; the planes in the cube.
            let px = PixelCells { r0, c0, f: &f, zov: &zov, ivar, variance, keep_from };
            let a = unsafe { bf.add_cells(px) };
            let b = bs.add_cells_listed(px);
            assert_eq!(a.is_err(), b.is_err(), "{a:?} {b:?}");
            errors += usize::from(a.is_err());
        }
        drop((bf, bs));
        assert!(fast.iter().filter(|v| **v > 0.0).count() > 100);
        assert!(fast.iter().zip(slow.iter()).all(|(a, b)| a.to_bits() == b.to_bits()));
        errors
    }

    #[test]
    fn prefetch_asks_for_each_line_of_the_nearest_terms() {
        // 13 terms (elements 0 ..= 12) from a line's start span two lines; from anywhere, up to three.
        assert_eq!(near_lines(12, 128, [17 * 56 * 9, 56 * 9, 56, 1]), ([0, 8, 0, 0, 0, 0, 0, 0], 2));
        assert_eq!(near_lines(12, 128 + 32, [17 * 52 * 9, 52 * 9, 52, 1]), ([0, 8, 12, 0, 0, 0, 0, 0], 3));
        assert_eq!(near_lines(12, 128, [17 * 52 * 9, 52 * 9, 52, 1]).1, 3);
        assert_eq!(near_lines(0, 64, [8, 8, 8, 1]), ([0; 8], 1));
        let unit = |s: &Stencil| s.steps([1000, 0, 0, 0, 1]);
        let full = stencil(2, 2, &[]);
        assert_eq!(near_span(&full, &unit(&full), 1), 12);
        // Planes innermost (D3): the lower cells' offsets (dy = 0) are the first four, one line.
        let d3 = stencil_planes_inner(2, 2);
        assert_eq!((near_span(&d3, &unit(&d3), 1), near_span(&d3, &unit(&d3), 0)), (12, 3));
        assert_eq!(near_lines(3, 128, [17 * 56 * 9, 56 * 9, 56, 1]).1, 1);
    }

    #[test]
    fn far_pairs_are_the_pairs_of_cells_two_apart() {
        let d3 = stencil_planes_inner(2, 2);
        let st = [17 * 62 * 9, 62 * 9, 62, 1];
        let steps = d3.steps([1 << 20, 0, 0, 0, 1]);
        let fast = FastTable::new(&d3, &steps);
        let idx = |o: [i64; 3]| steps[d3.index(o).unwrap()];
        // 2 x 3: (0,0)-(0,2), (0,0)-(1,2), (0,2)-(1,0), (1,0)-(1,2); 3 x 2: (0,0)-(2,0), (0,0)-(2,1), (0,1)-(2,0), (0,1)-(2,1).
        assert_eq!(far_pairs::<2, 3>(&fast, st), [idx([0, 0, 2]), idx([0, 1, 2]), 2 * 62 + idx([0, 1, -2]), 62 * 9 + idx([0, 0, 2])]);
        assert_eq!(far_pairs::<3, 2>(&fast, st), [idx([0, 2, 0]), idx([0, 2, 1]), 62 + idx([0, 2, -1]), 62 + idx([0, 2, 0])]);
    }

    #[test]
    fn add_cells_is_add_pairs_bit_for_bit() {
        // Four planes, or three with a gap, reach beyond `|dz| <= 2`: errors on both paths.
        let full = stencil(2, 2, &[]);
        assert!(same_as_pairs::<2, 2>(&full, 1) < 1000);
        assert!(same_as_pairs::<2, 3>(&full, 2) < 1000);
        assert!(same_as_pairs::<3, 2>(&full, 3) < 1000);
        assert!(same_as_pairs::<1, 1>(&full, 4) < 1000);
        // Planes innermost (as D3's stencil, with all of dy, dx in -2..=2): two planes add their terms two at a time.
        let d3 = stencil_planes_inner(2, 2);
        assert_eq!(d3.offsets.len(), 62);
        let table = |s: &Stencil, slot: isize| FastTable::new(s, &s.steps([1 << 20, 0, 0, 0, slot]));
        assert_eq!(table(&d3, 1).runs, [[true; 3]; 3]);
        // Not with terms two elements apart (a single cell has no pairs of cells).
        assert_eq!(table(&d3, 2).runs, [[true, false, false], [false; 3], [false; 3]]);
        assert!(!table(&full, 1).runs[1][1]);
        assert!(same_as_pairs::<2, 2>(&d3, 8) < 1000);
        assert!(same_as_pairs::<2, 3>(&d3, 9) < 1000);
        assert!(same_as_pairs::<3, 2>(&d3, 10) < 1000);
        assert!(same_as_pairs::<1, 2>(&d3, 11) < 1000);
        // Narrower stencils: boxes beyond them take the checked path, which errors on real pairs only.
        let flat = stencil(1, 2, &[]);
        assert!(same_as_pairs::<2, 2>(&flat, 5) > 0);
        let holed = stencil(2, 2, &[[0, 1, -1], [1, 2, 0]]);
        assert!(same_as_pairs::<2, 3>(&holed, 6) > 0);
        assert!(same_as_pairs::<3, 2>(&holed, 7) > 0);
    }
}
