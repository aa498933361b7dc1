//! Outlier rejection (issue 19) in the engine: the merge of one frame into
//! the robust model (pass 1) and the 3-D blot of the model at every input
//! pixel's own (x, y, lambda) with the drizzlepac / JWST test of the pixel
//! against it (pass 2). Python (`spxquery.drizzle3d.outliermodel`,
//! `spxquery.drizzle3d.outliers`) documents the model and the test.
//!
//! Merge: per voxel the frame's weighted mean `flux / weight` (float32) is
//! compared with the two highest frames so far, the totals are summed and the
//! scratch cleared; only the boxes the frame reached are visited, one plane
//! per task.
//!
//! Blot: the pixel's position is the mean of its four corners in the corner map
//! (output pixels), its plane the fractional index of its central wavelength
//! between the plane centres (numpy's `interp`). The interpolation is
//! trilinear in float32 (like the model), undefined (NaN) voxels left out with
//! the weights renormalised, NaN where they hold more than `max_undefined` of
//! the weight.
//!
//! The arithmetic is numpy's, operation for operation (the same sums in the
//! same order, no fused multiply-add), so the results are bit-identical to the
//! numpy formulation the tests keep as a reference. Every voxel and every
//! pixel depends on its own inputs only: the same bits for any thread count.

use ndarray::{s, Array2, ArrayView1, ArrayView2, ArrayView3, ArrayViewMut2, ArrayViewMut3, Axis};
use rayon::prelude::*;

use crate::schedule::run_in_pool;

/// The robust model while frames are merged, all `(n_z, ny, nx)`: the totals
/// of weighted flux and weight (the cube's accumulators), the frames counted
/// per voxel (saturating), and the mean and weight of the highest and second
/// highest frame (`-inf` and 0 before any).
pub struct ModelState<'a> {
    pub flux: ArrayViewMut3<'a, f64>,
    pub weight: ArrayViewMut3<'a, f64>,
    pub n_frames: ArrayViewMut3<'a, u16>,
    pub hi_v: ArrayViewMut3<'a, f32>,
    pub hi_w: ArrayViewMut3<'a, f32>,
    pub hi2_v: ArrayViewMut3<'a, f32>,
    pub hi2_w: ArrayViewMut3<'a, f32>,
}

/// A plane's box of the merge: plane `k`, rows `y0..y1`, columns `x0..x1`.
pub type PlaneBox = [usize; 5];

/// One plane's box of every array (row-major 2-D views of the same shape).
struct PlaneViews<'a> {
    fw: ArrayViewMut2<'a, f64>,
    wt: ArrayViewMut2<'a, f64>,
    flux: ArrayViewMut2<'a, f64>,
    weight: ArrayViewMut2<'a, f64>,
    n: ArrayViewMut2<'a, u16>,
    hi_v: ArrayViewMut2<'a, f32>,
    hi_w: ArrayViewMut2<'a, f32>,
    hi2_v: ArrayViewMut2<'a, f32>,
    hi2_w: ArrayViewMut2<'a, f32>,
}

/// Rows merged by one task: boxes are cut into chunks of this many rows, so
/// that the threads share the work whatever the number of planes.
const MERGE_ROWS: usize = 16;

impl<'a> PlaneViews<'a> {
    /// The first `rows` rows and the rest.
    fn split(self, rows: usize) -> (Self, Self) {
        let (fw, fw2) = self.fw.split_at(Axis(0), rows);
        let (wt, wt2) = self.wt.split_at(Axis(0), rows);
        let (flux, flux2) = self.flux.split_at(Axis(0), rows);
        let (weight, weight2) = self.weight.split_at(Axis(0), rows);
        let (n, n2) = self.n.split_at(Axis(0), rows);
        let (hi_v, hi_v2) = self.hi_v.split_at(Axis(0), rows);
        let (hi_w, hi_w2) = self.hi_w.split_at(Axis(0), rows);
        let (hi2_v, hi2_v2) = self.hi2_v.split_at(Axis(0), rows);
        let (hi2_w, hi2_w2) = self.hi2_w.split_at(Axis(0), rows);
        (
            PlaneViews { fw, wt, flux, weight, n, hi_v, hi_w, hi2_v, hi2_w },
            PlaneViews { fw: fw2, wt: wt2, flux: flux2, weight: weight2, n: n2, hi_v: hi_v2, hi_w: hi_w2, hi2_v: hi2_v2, hi2_w: hi2_w2 },
        )
    }

    /// The views cut into chunks of at most [`MERGE_ROWS`] rows, appended to `out`.
    fn chunks(self, out: &mut Vec<PlaneViews<'a>>) {
        let mut rest = self;
        while rest.fw.nrows() > MERGE_ROWS {
            let (head, tail) = rest.split(MERGE_ROWS);
            out.push(head);
            rest = tail;
        }
        out.push(rest);
    }
}

/// Takes plane `k` of `planes` (each plane once), cut to the box.
fn take_plane<'a, T>(planes: &mut [Option<ArrayViewMut2<'a, T>>], b: &PlaneBox) -> ArrayViewMut2<'a, T> {
    let plane = planes[b[0]].take().expect("planes of the boxes are distinct (checked)");
    plane.slice_move(s![b[1]..b[2], b[3]..b[4]])
}

fn planes_of<T>(a: ArrayViewMut3<'_, T>) -> Vec<Option<ArrayViewMut2<'_, T>>> {
    a.into_outer_iter_mut().map(Some).collect()
}

/// Row `j` of a view whose rows are contiguous (checked by [`merge_frame`]).
fn row<'b, T>(a: &'b mut ArrayViewMut2<'_, T>, j: usize) -> &'b mut [T] {
    a.row_mut(j).into_slice().expect("rows are contiguous (checked)")
}

/// Merges rows of one plane's box (module docs) and clears the scratch there. Voxels
/// the frame did not reach (flux and weight +0) are left alone: nothing would
/// change, and their untouched pages of the cube stay unmapped.
fn merge_plane(mut v: PlaneViews) {
    let (rows, cols) = v.fw.dim();
    for j in 0..rows {
        let (fw, wt) = (row(&mut v.fw, j), row(&mut v.wt, j));
        let (flux, weight, n) = (row(&mut v.flux, j), row(&mut v.weight, j), row(&mut v.n, j));
        let (hi_v, hi_w, hi2_v, hi2_w) = (row(&mut v.hi_v, j), row(&mut v.hi_w, j), row(&mut v.hi2_v, j), row(&mut v.hi2_w, j));
        // the same length for all (the compiler then drops the bounds checks)
        let (fw, wt, flux, weight, n) = (&mut fw[..cols], &mut wt[..cols], &mut flux[..cols], &mut weight[..cols], &mut n[..cols]);
        let (hi_v, hi_w, hi2_v, hi2_w) = (&mut hi_v[..cols], &mut hi_w[..cols], &mut hi2_v[..cols], &mut hi2_w[..cols]);
        for i in 0..cols {
            let (f, w) = (fw[i], wt[i]);
            if f.to_bits() == 0 && w.to_bits() == 0 {
                continue;
            }
            let mean = if w > 0.0 { (f / w) as f32 } else { f32::NEG_INFINITY };
            flux[i] += f;
            weight[i] += w;
            if mean > hi_v[i] {
                hi2_v[i] = hi_v[i];
                hi2_w[i] = hi_w[i];
                hi_v[i] = mean;
                hi_w[i] = w as f32;
            } else if mean > hi2_v[i] {
                hi2_v[i] = mean;
                hi2_w[i] = w as f32;
            }
            if w > 0.0 && n[i] < u16::MAX {
                n[i] += 1;
            }
            fw[i] = 0.0;
            wt[i] = 0.0;
        }
    }
}

/// Merges a frame drizzled alone into the scratch `fw`, `wt` (weighted flux and
/// weight, `(n_z, ny, nx)`) into `state`, over `boxes` (distinct planes, each
/// within the grid), and clears the scratch there.
pub fn merge_frame(state: ModelState, fw: ArrayViewMut3<f64>, wt: ArrayViewMut3<f64>, boxes: &[PlaneBox], threads: usize) -> Result<(), String> {
    let dim = fw.dim();
    let shapes = [
        ("wt", wt.dim()),
        ("flux", state.flux.dim()),
        ("weight", state.weight.dim()),
        ("n_frames", state.n_frames.dim()),
        ("hi_v", state.hi_v.dim()),
        ("hi_w", state.hi_w.dim()),
        ("hi2_v", state.hi2_v.dim()),
        ("hi2_w", state.hi2_w.dim()),
    ];
    if let Some((name, d)) = shapes.iter().find(|(_, d)| *d != dim) {
        return Err(format!("{name} has shape {d:?}, fw has {dim:?}"));
    }
    let layouts = [
        fw.is_standard_layout(),
        wt.is_standard_layout(),
        state.flux.is_standard_layout(),
        state.weight.is_standard_layout(),
        state.n_frames.is_standard_layout(),
        state.hi_v.is_standard_layout(),
        state.hi_w.is_standard_layout(),
        state.hi2_v.is_standard_layout(),
        state.hi2_w.is_standard_layout(),
    ];
    if !layouts.iter().all(|c| *c) {
        return Err("the arrays of the model merge must be C-contiguous".to_string());
    }
    let mut seen = vec![false; dim.0];
    for b in boxes {
        if b[0] >= dim.0 || b[1] > b[2] || b[2] > dim.1 || b[3] > b[4] || b[4] > dim.2 {
            return Err(format!("box {b:?} (plane, y0, y1, x0, x1) is outside the cube {dim:?}"));
        }
        if std::mem::replace(&mut seen[b[0]], true) {
            return Err(format!("plane {} has two boxes", b[0]));
        }
    }
    let (mut p_fw, mut p_wt, mut p_flux, mut p_weight) = (planes_of(fw), planes_of(wt), planes_of(state.flux), planes_of(state.weight));
    let mut p_n = planes_of(state.n_frames);
    let (mut p_hv, mut p_hw, mut p_h2v, mut p_h2w) = (planes_of(state.hi_v), planes_of(state.hi_w), planes_of(state.hi2_v), planes_of(state.hi2_w));
    let mut views: Vec<PlaneViews> = Vec::new();
    for view in boxes.iter().map(|b| PlaneViews {
        fw: take_plane(&mut p_fw, b),
        wt: take_plane(&mut p_wt, b),
        flux: take_plane(&mut p_flux, b),
        weight: take_plane(&mut p_weight, b),
        n: take_plane(&mut p_n, b),
        hi_v: take_plane(&mut p_hv, b),
        hi_w: take_plane(&mut p_hw, b),
        hi2_v: take_plane(&mut p_h2v, b),
        hi2_w: take_plane(&mut p_h2w, b),
    }) {
        view.chunks(&mut views);
    }
    run_in_pool(threads, || views.into_par_iter().for_each(merge_plane))
}

/// Thresholds of the test (the module docs of `outliers.py`): `snr` and
/// `scale` of the detection (`[0]`) and of the neighbours (`[1]`), `edge`
/// (output pixels beyond the outer voxel centres still tested) and
/// `max_undefined` (largest share of the blot weight undefined voxels may hold).
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    pub snr: [f64; 2],
    pub scale: [f64; 2],
    pub edge: f64,
    pub max_undefined: f64,
}

impl Thresholds {
    fn check(&self) -> Result<(), String> {
        for (name, v) in [("snr", self.snr), ("scale", self.scale)] {
            if !v.iter().all(|x| x.is_finite() && *x >= 0.0) {
                return Err(format!("{name} must be two finite values >= 0, got {v:?}"));
            }
        }
        if !(self.edge.is_finite() && self.edge >= 0.0) {
            return Err(format!("edge must be finite and >= 0, got {}", self.edge));
        }
        if !(0.0..1.0).contains(&self.max_undefined) {
            return Err(format!("max_undefined must be in [0, 1), got {}", self.max_undefined));
        }
        Ok(())
    }
}

/// The robust model: values and local steps (MJy/sr, `(n_z, ny, nx)`, NaN
/// where undefined) and the plane centres (um, strictly increasing).
pub struct Model<'a> {
    pub values: ArrayView3<'a, f32>,
    pub steps: ArrayView3<'a, f32>,
    pub centers: &'a [f64],
}

impl Model<'_> {
    fn check(&self) -> Result<(), String> {
        if self.steps.dim() != self.values.dim() {
            return Err(format!("steps has shape {:?}, model has {:?}", self.steps.dim(), self.values.dim()));
        }
        if self.centers.len() != self.values.dim().0 {
            return Err(format!("{} plane centres for a model of {} planes", self.centers.len(), self.values.dim().0));
        }
        if !self.centers.iter().all(|c| c.is_finite()) || self.centers.windows(2).any(|w| !(w[0] < w[1])) {
            return Err("plane centres must be finite and strictly increasing".to_string());
        }
        Ok(())
    }
}

/// The pixels of a strip to test: corner map `(ny + 1, nx + 1)` in output
/// pixels, then `(ny, nx)` value (MJy/sr, zodi subtracted), variance, central
/// wavelength (um) and the pixels already excluded (True), if any.
pub struct Pixels<'a> {
    pub corners_x: ArrayView2<'a, f64>,
    pub corners_y: ArrayView2<'a, f64>,
    pub image: ArrayView2<'a, f64>,
    pub variance: ArrayView2<'a, f64>,
    pub lambda_c: ArrayView2<'a, f64>,
    pub exclude: Option<ArrayView2<'a, bool>>,
}

impl Pixels<'_> {
    fn check(&self) -> Result<(usize, usize), String> {
        let (ny, nx) = self.image.dim();
        let mut shapes = vec![("variance", self.variance.dim()), ("lambda_c", self.lambda_c.dim())];
        if let Some(e) = &self.exclude {
            shapes.push(("exclude_mask", e.dim()));
        }
        for (name, d) in shapes {
            if d != (ny, nx) {
                return Err(format!("{name} has shape {d:?}, image has {:?}", (ny, nx)));
            }
        }
        for (name, d) in [("corners_x", self.corners_x.dim()), ("corners_y", self.corners_y.dim())] {
            if d != (ny + 1, nx + 1) {
                return Err(format!("{name} has shape {d:?}, expected {:?} for an image of {:?}", (ny + 1, nx + 1), (ny, nx)));
            }
        }
        Ok((ny, nx))
    }
}

/// The outcome of [`test_pixels`]: `(ny, nx)` pixels past the detection and
/// the neighbour thresholds, and the number of pixels tested.
#[derive(Debug)]
pub struct Tested {
    pub core: Array2<bool>,
    pub candidate: Array2<bool>,
    pub n_tested: u64,
}

/// Lower voxel index and weight of the upper neighbour along an axis of `n >= 1`
/// voxels: the position clamped to `[0, n - 1]` (NaN: 0), the lower index at
/// most `n - 2` (numpy: `clip`, truncation, `astype(float32)`).
#[inline(always)]
fn axis(pos: f64, n: usize) -> (usize, f32) {
    let p = if pos.is_nan() { 0.0 } else { pos.clamp(0.0, (n - 1) as f64) };
    let i0 = (p as usize).min(n.saturating_sub(2));
    (i0, (p - i0 as f64) as f32)
}

/// A C-contiguous cube read by the blot: its voxels in row-major order and its shape.
#[derive(Clone, Copy)]
pub struct Voxels<'a> {
    flat: &'a [f32],
    nz: usize,
    ny: usize,
    nx: usize,
}

impl<'a> Voxels<'a> {
    /// The voxels of `cube` (`n_z, ny, nx`), which must be C-contiguous.
    pub fn new(cube: &ArrayView3<'a, f32>, name: &str) -> Result<Self, String> {
        let (nz, ny, nx) = cube.dim();
        let flat = cube.to_slice().ok_or_else(|| format!("{name} must be C-contiguous"))?;
        Ok(Voxels { flat, nz, ny, nx })
    }

    fn is_empty(&self) -> bool {
        self.flat.is_empty()
    }

    /// Trilinear interpolation at output position `(x, y)` (pixels) and
    /// fractional plane `z` (the cube not empty); beyond the outer centres the
    /// outer voxels. NaN voxels are left out (weights renormalised); NaN when
    /// they hold more than `max_undefined` of the weight.
    #[inline]
    pub fn blot(&self, x: f64, y: f64, z: f64, max_undefined: f64) -> f32 {
        let (nz, ny, nx) = (self.nz, self.ny, self.nx);
        let (x0, fx) = axis(x, nx);
        let (y0, fy) = axis(y, ny);
        let (z0, fz) = axis(z, nz);
        let base = (z0 * ny + y0) * nx + x0;
        let (dx, dy, dz) = (usize::from(nx > 1), usize::from(ny > 1) * nx, usize::from(nz > 1) * nx * ny);
        let mut value = 0.0f32;
        let mut weight = 0.0f32;
        for (wz, oz) in [(1.0 - fz, 0), (fz, dz)] {
            for (wy, oy) in [(1.0 - fy, 0), (fy, dy)] {
                let wzy = wz * wy;
                for (wx, ox) in [(1.0 - fx, 0), (fx, dx)] {
                    let v = self.flat[base + oz + oy + ox];
                    let (w, v) = if v.is_nan() { (0.0, 0.0) } else { (wzy * wx, v) };
                    value += w * v;
                    weight += w;
                }
            }
        }
        let value = value / weight;
        if weight < (1.0 - max_undefined) as f32 {
            f32::NAN
        } else {
            value
        }
    }
}

/// Fractional plane index of wavelength `lam` (um) between the plane `centers`
/// (strictly increasing): numpy's `interp(lam, centers, arange(n))`, the same
/// arithmetic (0 below the first centre, `n - 1` above the last, NaN for NaN).
#[inline]
pub fn fractional_plane(lam: f64, centers: &[f64]) -> f64 {
    fractional_plane_from(lam, centers, &mut 0)
}

/// [`fractional_plane`], trying first the bin found for the previous pixel
/// (`guess`, updated): neighbouring pixels see nearly the same wavelength.
#[inline]
fn fractional_plane_from(lam: f64, centers: &[f64], guess: &mut usize) -> f64 {
    let n = centers.len();
    if n == 1 {
        return 0.0;
    }
    if lam.is_nan() {
        return lam;
    }
    // j: the number of centres <= lam
    let g = *guess;
    let fits = (g == 0 || centers[g - 1] <= lam) && (g == n || lam < centers[g]);
    let j = if g <= n && fits { g } else { centers.partition_point(|&c| c <= lam) };
    *guess = j;
    if j == 0 {
        0.0
    } else if lam > centers[n - 1] {
        (n - 1) as f64
    } else if j == n || centers[j - 1] == lam {
        (j - 1) as f64
    } else {
        let slope = 1.0 / (centers[j] - centers[j - 1]);
        slope * (lam - centers[j - 1]) + (j - 1) as f64
    }
}

/// numpy's `nan_to_num` of a float64.
#[inline(always)]
fn nan_to_num(v: f64) -> f64 {
    if v.is_nan() {
        0.0
    } else if v == f64::INFINITY {
        f64::MAX
    } else if v == f64::NEG_INFINITY {
        f64::MIN
    } else {
        v
    }
}

/// The test of one row `j` of pixels: writes the row's detections and
/// candidates, returns the number of pixels tested.
fn test_row(
    model: &Model,
    cubes: (Voxels, Voxels),
    px: &Pixels,
    t: &Thresholds,
    j: usize,
    mut core: ndarray::ArrayViewMut1<bool>,
    mut cand: ndarray::ArrayViewMut1<bool>,
) -> u64 {
    let (_, ny_out, nx_out) = model.values.dim();
    let (xmax, ymax) = ((nx_out - 1) as f64 + t.edge, (ny_out - 1) as f64 + t.edge);
    let (cx0, cx1) = (px.corners_x.row(j), px.corners_x.row(j + 1));
    let (cy0, cy1) = (px.corners_y.row(j), px.corners_y.row(j + 1));
    let (image, variance, lam): (ArrayView1<f64>, ArrayView1<f64>, ArrayView1<f64>) = (px.image.row(j), px.variance.row(j), px.lambda_c.row(j));
    let exclude = px.exclude.as_ref().map(|e| e.row(j));
    let mut n = 0;
    let mut guess = 0;
    for i in 0..image.len() {
        if exclude.as_ref().is_some_and(|e| e[i]) {
            continue;
        }
        let (d, var) = (image[i], variance[i]);
        if !(d.is_finite() && var > 0.0 && var.is_finite()) {
            continue;
        }
        let x = 0.25 * (((cx0[i] + cx0[i + 1]) + cx1[i]) + cx1[i + 1]);
        let y = 0.25 * (((cy0[i] + cy0[i + 1]) + cy1[i]) + cy1[i + 1]);
        if !(x >= -t.edge && x <= xmax && y >= -t.edge && y <= ymax) {
            continue;
        }
        let z = fractional_plane_from(lam[i], model.centers, &mut guess);
        let m = cubes.0.blot(x, y, z, t.max_undefined) as f64;
        if !m.is_finite() {
            continue;
        }
        n += 1;
        let diff = (d - m).abs();
        let sigma = var.sqrt();
        // the local step only matters where the noise term alone is exceeded (rare)
        let step = if diff > t.snr[1] * sigma { nan_to_num(cubes.1.blot(x, y, z, t.max_undefined) as f64) } else { 0.0 };
        core[i] = diff > t.snr[0] * sigma + t.scale[0] * step;
        cand[i] = diff > t.snr[1] * sigma + t.scale[1] * step;
    }
    n
}

/// Every pixel of `px` against `model` (module docs; the test itself in
/// `outliers.py`): the detections, the candidates and the number tested. A
/// pixel is tested when it is not excluded, its value and variance are finite,
/// the variance > 0, its centre is within `edge` of the outer voxel centres
/// and the blotted model is defined. `threads`: 0 for rayon's global pool.
pub fn test_pixels(model: &Model, px: &Pixels, t: &Thresholds, threads: usize) -> Result<Tested, String> {
    model.check()?;
    t.check()?;
    let (ny, nx) = px.check()?;
    let mut core = Array2::from_elem((ny, nx), false);
    let mut candidate = Array2::from_elem((ny, nx), false);
    let cubes = (Voxels::new(&model.values, "model")?, Voxels::new(&model.steps, "steps")?);
    if cubes.0.is_empty() {
        return Ok(Tested { core, candidate, n_tested: 0 });
    }
    let counts: Vec<u64> = run_in_pool(threads, || {
        core.axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(candidate.axis_iter_mut(Axis(0)))
            .enumerate()
            .map(|(j, (c, d))| test_row(model, cubes, px, t, j, c, d))
            .collect()
    })?;
    Ok(Tested { core, candidate, n_tested: counts.iter().sum() })
}

/// [`Voxels::blot`] at each of the positions `x, y, z` (equal lengths).
pub fn blot(cube: &ArrayView3<f32>, x: &[f64], y: &[f64], z: &[f64], max_undefined: f64, threads: usize) -> Result<Vec<f32>, String> {
    if y.len() != x.len() || z.len() != x.len() {
        return Err(format!("x, y and z must have one length, got {}, {} and {}", x.len(), y.len(), z.len()));
    }
    if !(0.0..1.0).contains(&max_undefined) {
        return Err(format!("max_undefined must be in [0, 1), got {max_undefined}"));
    }
    let voxels = Voxels::new(cube, "cube")?;
    if voxels.is_empty() {
        return Ok(vec![f32::NAN; x.len()]);
    }
    run_in_pool(threads, || (0..x.len()).into_par_iter().with_min_len(4096).map(|k| voxels.blot(x[k], y[k], z[k], max_undefined)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn at(cube: &ArrayView3<f32>, x: f64, y: f64, z: f64, max_undefined: f64) -> f32 {
        Voxels::new(cube, "cube").unwrap().blot(x, y, z, max_undefined)
    }

    fn linear(nz: usize, ny: usize, nx: usize) -> Array3<f32> {
        Array3::from_shape_fn((nz, ny, nx), |(k, j, i)| (1.0 + 2.0 * i as f64 - 0.5 * j as f64 + 3.0 * k as f64) as f32)
    }

    #[test]
    fn blot_is_exact_on_a_linear_cube_and_clamps_beyond_the_centres() {
        let c = linear(4, 5, 6);
        let v = c.view();
        let f = |x: f64, y: f64, z: f64| 1.0 + 2.0 * x - 0.5 * y + 3.0 * z;
        for (x, y, z) in [(1.25, 2.75, 0.4), (4.5, 0.5, 2.9), (0.0, 0.0, 0.0), (5.0, 4.0, 3.0)] {
            assert!((at(&v, x, y, z, 0.5) as f64 - f(x, y, z)).abs() < 1e-5);
        }
        assert_eq!(at(&v, -3.0, -1.0, -2.0, 0.5), c[[0, 0, 0]]);
        assert_eq!(at(&v, 9.0, 9.0, 9.0, 0.5), c[[3, 4, 5]]);
        assert_eq!(at(&v, f64::NAN, f64::NAN, f64::NAN, 0.5), c[[0, 0, 0]]);
        let one = Array3::from_elem((1, 1, 1), 7.0f32);
        assert_eq!(at(&one.view(), 0.3, -0.2, 5.0, 0.5), 7.0);
    }

    #[test]
    fn undefined_voxels_are_left_out_up_to_the_limit() {
        let mut c = linear(2, 2, 2);
        c[[0, 0, 0]] = f32::NAN;
        // at the cell's centre the NaN holds 1/8 of the weight: the mean of the other seven
        let got = at(&c.view(), 0.5, 0.5, 0.5, 0.5);
        let want: f32 = c.iter().filter(|v| !v.is_nan()).map(|v| 0.125 * v).sum::<f32>() / 0.875;
        assert!((got - want).abs() < 1e-5, "{got} {want}");
        c[[0, 0, 1]] = f32::NAN;
        c[[0, 1, 0]] = f32::NAN;
        c[[0, 1, 1]] = f32::NAN;
        assert!(at(&c.view(), 0.5, 0.5, 0.5, 0.5).is_finite()); // exactly half: kept
        assert!(at(&c.view(), 0.5, 0.5, 0.4, 0.5).is_nan()); // more than half
        assert!(at(&c.view(), 0.5, 0.5, 1.0, 0.5).is_finite()); // only the defined plane
    }

    #[test]
    fn fractional_plane_follows_numpy_interp() {
        let c = [1.0, 1.5, 2.5, 4.0];
        assert_eq!(fractional_plane(0.5, &c), 0.0);
        assert_eq!(fractional_plane(1.0, &c), 0.0);
        assert_eq!(fractional_plane(1.25, &c), 0.5);
        assert_eq!(fractional_plane(2.5, &c), 2.0);
        assert_eq!(fractional_plane(3.25, &c), 2.5);
        assert_eq!(fractional_plane(4.0, &c), 3.0);
        assert_eq!(fractional_plane(9.0, &c), 3.0);
        assert!(fractional_plane(f64::NAN, &c).is_nan());
        assert_eq!(fractional_plane(f64::NAN, &[2.0]), 0.0);
        let mut guess = 0;
        for lam in [1.25, 1.3, 3.9, 0.2, 4.0, 9.0, 1.0, 2.5, 2.4, 1.49] {
            assert_eq!(fractional_plane_from(lam, &c, &mut guess).to_bits(), fractional_plane(lam, &c).to_bits(), "{lam}");
        }
    }

    /// Corner maps, wavelengths, image and variance of a test strip.
    type StripArrays = (Array2<f64>, Array2<f64>, Array2<f64>, Array2<f64>, Array2<f64>);

    fn strip(ny: usize, nx: usize, shift: f64) -> StripArrays {
        let cx = Array2::from_shape_fn((ny + 1, nx + 1), |(j, i)| i as f64 - 0.5 + shift + 0.01 * j as f64);
        let cy = Array2::from_shape_fn((ny + 1, nx + 1), |(j, i)| j as f64 - 0.5 - 0.02 * i as f64);
        let lam = Array2::from_shape_fn((ny, nx), |(j, _)| 1.0 + 0.1 * j as f64);
        let image = Array2::from_shape_fn((ny, nx), |(j, i)| if (j, i) == (3, 4) { 50.0 } else { 1.0 + 0.01 * ((j * 7 + i * 3) % 5) as f64 });
        let var = Array2::from_elem((ny, nx), 0.01);
        (cx, cy, lam, image, var)
    }

    #[test]
    fn a_hit_is_detected_and_results_do_not_depend_on_threads() {
        let values = Array3::from_elem((8, 10, 12), 1.0f32);
        let steps = Array3::from_elem((8, 10, 12), 0.0f32);
        let centers: Vec<f64> = (0..8).map(|k| 1.05 + 0.1 * k as f64).collect();
        let model = Model { values: values.view(), steps: steps.view(), centers: &centers };
        let (cx, cy, lam, image, var) = strip(9, 12, 0.0);
        let px =
            Pixels { corners_x: cx.view(), corners_y: cy.view(), image: image.view(), variance: var.view(), lambda_c: lam.view(), exclude: None };
        let t = Thresholds { snr: [5.0, 4.0], scale: [1.2, 0.7], edge: 1.5, max_undefined: 0.5 };
        let one = test_pixels(&model, &px, &t, 1).unwrap();
        assert_eq!(one.n_tested, 9 * 12);
        assert!(one.core[[3, 4]] && one.candidate[[3, 4]]);
        assert_eq!(one.core.iter().filter(|v| **v).count(), 1);
        let two = test_pixels(&model, &px, &t, 2).unwrap();
        assert_eq!((one.core, one.candidate, one.n_tested), (two.core, two.candidate, two.n_tested));
        // excluded pixels and pixels beyond the edge are not tested
        let mut excl = Array2::from_elem((9, 12), false);
        excl[[3, 4]] = true;
        let (cx, cy, ..) = strip(9, 12, 5.0);
        let px = Pixels { corners_x: cx.view(), corners_y: cy.view(), exclude: Some(excl.view()), ..px };
        let r = test_pixels(&model, &px, &t, 1).unwrap();
        assert!(!r.core[[3, 4]]);
        assert!(r.n_tested < 9 * 12 - 9 * 3 && r.n_tested > 9 * 6, "{}", r.n_tested);
    }

    #[test]
    fn bad_shapes_and_thresholds_are_refused() {
        let values = Array3::from_elem((2, 3, 3), 1.0f32);
        let centers = [1.0, 2.0];
        let model = Model { values: values.view(), steps: values.view(), centers: &centers };
        let (cx, cy, lam, image, var) = strip(2, 3, 0.0);
        let px =
            Pixels { corners_x: cx.view(), corners_y: cy.view(), image: image.view(), variance: var.view(), lambda_c: lam.view(), exclude: None };
        let t = Thresholds { snr: [5.0, 4.0], scale: [1.2, 0.7], edge: 1.5, max_undefined: 0.5 };
        assert!(test_pixels(&model, &px, &t, 1).is_ok());
        let bad = Pixels {
            corners_x: cx.slice(ndarray::s![..2, ..]),
            corners_y: cy.view(),
            image: image.view(),
            variance: var.view(),
            lambda_c: lam.view(),
            exclude: None,
        };
        assert!(test_pixels(&model, &bad, &t, 1).unwrap_err().contains("corners_x"));
        let bad_t = Thresholds { snr: [f64::NAN, 4.0], ..t };
        assert!(test_pixels(&model, &px, &bad_t, 1).unwrap_err().contains("snr"));
        let wrong = Model { centers: &[2.0, 1.0], ..model };
        assert!(test_pixels(&wrong, &px, &t, 1).unwrap_err().contains("increasing"));
        assert!(blot(&values.view(), &[0.0], &[0.0, 1.0], &[0.0], 0.5, 1).is_err());
    }
    /// The model's arrays of a merge test.
    struct State {
        flux: Array3<f64>,
        weight: Array3<f64>,
        n: Array3<u16>,
        hv: Array3<f32>,
        hw: Array3<f32>,
        h2v: Array3<f32>,
        h2w: Array3<f32>,
    }

    impl State {
        fn new(shape: (usize, usize, usize)) -> Self {
            let (lowest, zero) = (Array3::from_elem(shape, f32::NEG_INFINITY), Array3::<f32>::zeros(shape));
            State {
                flux: Array3::zeros(shape),
                weight: Array3::zeros(shape),
                n: Array3::zeros(shape),
                hv: lowest.clone(),
                hw: zero.clone(),
                h2v: lowest,
                h2w: zero,
            }
        }

        fn view(&mut self) -> ModelState<'_> {
            ModelState {
                flux: self.flux.view_mut(),
                weight: self.weight.view_mut(),
                n_frames: self.n.view_mut(),
                hi_v: self.hv.view_mut(),
                hi_w: self.hw.view_mut(),
                hi2_v: self.h2v.view_mut(),
                hi2_w: self.h2w.view_mut(),
            }
        }
    }

    #[test]
    fn merge_keeps_the_two_highest_frames_and_clears_the_scratch() {
        let shape = (3, 4, 5);
        let mut m = State::new(shape);
        let boxes = [[0, 1, 3, 0, 5], [2, 0, 4, 2, 4]];
        for (frame, mean) in [2.0, 7.0, 1.0, 5.0].into_iter().enumerate() {
            let mut fw = Array3::<f64>::zeros(shape);
            let mut wt = Array3::<f64>::zeros(shape);
            wt.slice_mut(s![0, 1..3, ..]).fill(2.0);
            fw.slice_mut(s![0, 1..3, ..]).fill(2.0 * mean);
            wt[[2, 3, 3]] = 1.0 + frame as f64;
            fw[[2, 3, 3]] = (1.0 + frame as f64) * mean;
            merge_frame(m.view(), fw.view_mut(), wt.view_mut(), &boxes, 1 + frame % 2).unwrap();
            assert!(fw.iter().all(|v| *v == 0.0) && wt.iter().all(|v| *v == 0.0));
        }
        assert_eq!((m.hv[[0, 1, 0]], m.h2v[[0, 1, 0]], m.hw[[0, 1, 0]]), (7.0, 5.0, 2.0));
        assert_eq!((m.hv[[2, 3, 3]], m.hw[[2, 3, 3]], m.h2v[[2, 3, 3]], m.h2w[[2, 3, 3]]), (7.0, 2.0, 5.0, 4.0));
        assert_eq!((m.n[[0, 2, 4]], m.n[[2, 3, 3]], m.n[[0, 0, 0]], m.n[[2, 2, 3]]), (4, 4, 0, 0));
        assert_eq!((m.flux[[0, 1, 1]], m.weight[[0, 1, 1]]), (2.0 * 15.0, 8.0));
        assert_eq!(m.hv[[0, 0, 0]], f32::NEG_INFINITY);
        let (mut z, mut z2) = (Array3::<f64>::zeros(shape), Array3::<f64>::zeros(shape));
        let err = merge_frame(m.view(), z.view_mut(), z2.view_mut(), &[[0, 0, 1, 0, 1], [0, 1, 2, 0, 1]], 1).unwrap_err();
        assert!(err.contains("two boxes"), "{err}");
        let err = merge_frame(m.view(), z.view_mut(), z2.view_mut(), &[[1, 0, 9, 0, 1]], 1).unwrap_err();
        assert!(err.contains("outside"), "{err}");
    }
}
