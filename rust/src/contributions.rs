//! The spxquery 0.4.1 API's contribution lists: [`spatial_mapping`] (for each
//! input pixel, the output pixels its droplet touches and the fractions) and
//! [`accumulate_contributions`] (a list deposited into the cube), behind
//! `spatial.compute_spatial_mapping` and `accumulate.drizzle_image`. The fused
//! path ([`crate::scan::accumulate_frame`]) gives the same cubes without the
//! lists.

use std::sync::atomic::{AtomicBool, Ordering};

use ndarray::{ArrayView1, ArrayView2};
use rayon::prelude::*;

use crate::droplet::make_droplet;
use crate::frame::pixel_value;
use crate::params::{Kernel, Params};
use crate::scan::{Band, CubeMut, FrameStats};
use crate::schedule::{bucket_by_band, merge_stats, run_in_pool};
use crate::spectral;

/// Output rows per band of [`accumulate_contributions`] (one rayon task each).
/// Results do not depend on it.
pub const BAND_ROWS: usize = 16;

/// Driver of [`accumulate_contributions`]: buckets the items by the bands they
/// can touch (`range(item)`), then lets one task per band visit its items in
/// item order. `visit(item, band, planes, zov)` deposits and
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
    visit: impl Fn(usize, &mut Band<'_>, &mut [bool], &mut Vec<(usize, f64)>) -> usize + Sync,
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
            for &item in &items[offsets[b]..offsets[b + 1]] {
                let deposited = visit(item as usize, &mut band, &mut planes, &mut zov);
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

/// Flat contribution list of the spxquery 0.4.1 API: for each input pixel (row-major
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

/// Computes the 0.4.1-compatible flat mapping (deterministic order: input
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

/// Per-pixel arrays of the spxquery 0.4.1 API, flattened (row-major), plus the flat
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

/// Accumulates a flat contribution list (the spxquery 0.4.1 API's `drizzle_image`). Contributions
/// are applied per voxel in list order, deterministically.
pub fn accumulate_contributions(cube: CubeMut<'_>, c: &Contributions<'_>, p: &Params, threads: usize) -> Result<FrameStats, String> {
    let (nz, ny_out, nx_out) = cube.shape()?;
    p.check_planes(nz)?;
    if cube.cov.is_some() {
        return Err("covariance cross terms are accumulated by accumulate_frame (drizzle_frame), not from contribution lists".to_string());
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
            |k, band, planes, zov| {
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
