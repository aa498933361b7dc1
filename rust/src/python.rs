//! Python bindings (`spxquery.drizzle3d._core`). Shape and value checks become
//! `ValueError`; a panic is caught and becomes `RuntimeError`. All heavy work
//! runs with the GIL released.

use ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray3};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::engine::{self, Contributions, CubeMut, FrameView, Kernel, Params};
use crate::{interp, spectral};

/// Runs `f` with the GIL released and turns a panic into a RuntimeError.
fn run_detached<T: Send>(py: Python<'_>, what: &str, f: impl FnOnce() -> Result<T, String> + Send) -> PyResult<T> {
    let out = py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    match out {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(msg)) => Err(PyValueError::new_err(msg)),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(PyRuntimeError::new_err(format!("internal error in {what}: {msg}")))
        }
    }
}

fn slice_of<'a, T: numpy::Element>(a: &'a PyReadonlyArray1<'_, T>, name: &str) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| PyValueError::new_err(format!("{name} must be a contiguous 1-D array")))
}

/// Output bin indices and fractions.
type BinFractions<'py> = (Bound<'py, PyArray1<i32>>, Bound<'py, PyArray1<f64>>);

/// Spectral overlaps of one top-hat `[lambda_c ± delta_lambda*z_shrink/2]` (um)
/// with the bins given by `z_edges` (um). Returns `(z_idx int32, f_z float64)`.
#[pyfunction]
fn spectral_overlaps<'py>(
    py: Python<'py>,
    lambda_c: f64,
    delta_lambda: f64,
    z_shrink: f64,
    z_edges: PyReadonlyArray1<'py, f64>,
) -> PyResult<BinFractions<'py>> {
    let edges = slice_of(&z_edges, "z_edges")?;
    let (idx, frac) = run_detached(py, "spectral_overlaps", move || {
        spectral::validate_edges(edges)?;
        Ok(spectral::overlaps(lambda_c, delta_lambda, z_shrink, edges))
    })?;
    Ok((idx.into_pyarray(py), frac.into_pyarray(py)))
}

/// Dense `(ny, nx)` grid from a coarse grid by Catmull-Rom interpolation;
/// coarse node `(a, b)` lies at dense index `((a-1)*step, (b-1)*step)`.
#[pyfunction]
fn densify<'py>(py: Python<'py>, coarse: PyReadonlyArray2<'py, f64>, step: usize, ny: usize, nx: usize) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let c = coarse.as_array();
    let out: Array2<f64> = run_detached(py, "densify", move || interp::densify(c, step, ny, nx))?;
    Ok(out.into_pyarray(py))
}

#[allow(clippy::too_many_arguments)]
fn params(z_edges: &[f64], xy_shrink: f64, z_shrink: f64, ivar_max: f64, min_overlap: f64, kernel: &str, exclude_bits: u32) -> PyResult<Params> {
    let kernel = Kernel::parse(kernel).map_err(PyValueError::new_err)?;
    Ok(Params { z_edges: z_edges.to_vec(), xy_shrink, z_shrink, ivar_max, min_overlap, kernel, exclude_bits })
}

/// The six accumulators of a cube as mutable views.
fn cube_mut<'a>(
    flux: &'a mut PyReadwriteArray3<'_, f64>,
    weight: &'a mut PyReadwriteArray3<'_, f64>,
    var: &'a mut PyReadwriteArray3<'_, f64>,
    count: &'a mut PyReadwriteArray3<'_, u32>,
    and_mask: &'a mut PyReadwriteArray3<'_, u32>,
    or_mask: &'a mut PyReadwriteArray3<'_, u32>,
) -> CubeMut<'a> {
    CubeMut {
        flux: flux.as_array_mut(),
        weight: weight.as_array_mut(),
        var: var.as_array_mut(),
        count: count.as_array_mut(),
        and_mask: and_mask.as_array_mut(),
        or_mask: or_mask.as_array_mut(),
    }
}

/// Drizzles one frame (or crop) into the cube accumulators in place.
/// Returns `(n_pixels, n_contributions, planes)`; `planes[k]` is True when
/// plane `k` received anything.
#[pyfunction]
#[pyo3(signature = (flux, weight, var, count, and_mask, or_mask, corners_x, corners_y, image, variance, flags,
                    lambda_c, delta_lambda, z_edges, xy_shrink, z_shrink, ivar_max, min_overlap, kernel,
                    exclude_bits=0, exclude_mask=None, threads=0))]
#[allow(clippy::too_many_arguments)]
fn drizzle_frame<'py>(
    py: Python<'py>,
    mut flux: PyReadwriteArray3<'py, f64>,
    mut weight: PyReadwriteArray3<'py, f64>,
    mut var: PyReadwriteArray3<'py, f64>,
    mut count: PyReadwriteArray3<'py, u32>,
    mut and_mask: PyReadwriteArray3<'py, u32>,
    mut or_mask: PyReadwriteArray3<'py, u32>,
    corners_x: PyReadonlyArray2<'py, f64>,
    corners_y: PyReadonlyArray2<'py, f64>,
    image: PyReadonlyArray2<'py, f64>,
    variance: PyReadonlyArray2<'py, f64>,
    flags: PyReadonlyArray2<'py, u32>,
    lambda_c: PyReadonlyArray2<'py, f64>,
    delta_lambda: PyReadonlyArray2<'py, f64>,
    z_edges: PyReadonlyArray1<'py, f64>,
    xy_shrink: f64,
    z_shrink: f64,
    ivar_max: f64,
    min_overlap: f64,
    kernel: &str,
    exclude_bits: u32,
    exclude_mask: Option<PyReadonlyArray2<'py, bool>>,
    threads: usize,
) -> PyResult<(u64, u64, Bound<'py, PyArray1<bool>>)> {
    let p = params(slice_of(&z_edges, "z_edges")?, xy_shrink, z_shrink, ivar_max, min_overlap, kernel, exclude_bits)?;
    let cube = cube_mut(&mut flux, &mut weight, &mut var, &mut count, &mut and_mask, &mut or_mask);
    let frame = FrameView {
        corners_x: corners_x.as_array(),
        corners_y: corners_y.as_array(),
        image: image.as_array(),
        variance: variance.as_array(),
        flags: flags.as_array(),
        lambda_c: lambda_c.as_array(),
        delta_lambda: delta_lambda.as_array(),
        exclude: exclude_mask.as_ref().map(|e| e.as_array()),
    };
    let stats = run_detached(py, "drizzle_frame", move || engine::drizzle_frame(cube, &frame, &p, threads))?;
    Ok((stats.n_pixels, stats.n_contributions, stats.planes.into_pyarray(py)))
}

/// Seed-compatible flat mapping from a corner map: returns
/// `(valid (ny, nx) bool, pixel_idx int64, out_y int32, out_x int32, f_xy float64)`.
#[pyfunction]
#[pyo3(signature = (corners_x, corners_y, out_ny, out_nx, xy_shrink, kernel, threads=0))]
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn spatial_mapping<'py>(
    py: Python<'py>,
    corners_x: PyReadonlyArray2<'py, f64>,
    corners_y: PyReadonlyArray2<'py, f64>,
    out_ny: usize,
    out_nx: usize,
    xy_shrink: f64,
    kernel: &str,
    threads: usize,
) -> PyResult<(Bound<'py, PyArray2<bool>>, Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i32>>, Bound<'py, PyArray1<i32>>, Bound<'py, PyArray1<f64>>)>
{
    let kernel = Kernel::parse(kernel).map_err(PyValueError::new_err)?;
    let (cx, cy) = (corners_x.as_array(), corners_y.as_array());
    let shape = (cx.dim().0.saturating_sub(1), cx.dim().1.saturating_sub(1));
    let m = run_detached(py, "spatial_mapping", move || engine::spatial_mapping(cx, cy, out_ny, out_nx, xy_shrink, kernel, threads))?;
    let valid = Array2::from_shape_vec(shape, m.valid).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok((valid.into_pyarray(py), m.pixel_idx.into_pyarray(py), m.out_y.into_pyarray(py), m.out_x.into_pyarray(py), m.f_xy.into_pyarray(py)))
}

/// Seed-compatible accumulation of a flat contribution list (1-D per-pixel arrays).
#[pyfunction]
#[pyo3(signature = (flux, weight, var, count, and_mask, or_mask, image, variance, flags, lambda_c, delta_lambda,
                    pixel_idx, out_y, out_x, f_xy, z_edges, z_shrink, ivar_max, min_overlap,
                    exclude_bits=0, exclude_mask=None, threads=0))]
#[allow(clippy::too_many_arguments)]
fn accumulate_contributions<'py>(
    py: Python<'py>,
    mut flux: PyReadwriteArray3<'py, f64>,
    mut weight: PyReadwriteArray3<'py, f64>,
    mut var: PyReadwriteArray3<'py, f64>,
    mut count: PyReadwriteArray3<'py, u32>,
    mut and_mask: PyReadwriteArray3<'py, u32>,
    mut or_mask: PyReadwriteArray3<'py, u32>,
    image: PyReadonlyArray1<'py, f64>,
    variance: PyReadonlyArray1<'py, f64>,
    flags: PyReadonlyArray1<'py, u32>,
    lambda_c: PyReadonlyArray1<'py, f64>,
    delta_lambda: PyReadonlyArray1<'py, f64>,
    pixel_idx: PyReadonlyArray1<'py, i64>,
    out_y: PyReadonlyArray1<'py, i32>,
    out_x: PyReadonlyArray1<'py, i32>,
    f_xy: PyReadonlyArray1<'py, f64>,
    z_edges: PyReadonlyArray1<'py, f64>,
    z_shrink: f64,
    ivar_max: f64,
    min_overlap: f64,
    exclude_bits: u32,
    exclude_mask: Option<PyReadonlyArray1<'py, bool>>,
    threads: usize,
) -> PyResult<(u64, u64, Bound<'py, PyArray1<bool>>)> {
    // xy_shrink does not enter here (f_xy is given); any valid value will do.
    let p = params(slice_of(&z_edges, "z_edges")?, 1.0, z_shrink, ivar_max, min_overlap, "square", exclude_bits)?;
    let cube = cube_mut(&mut flux, &mut weight, &mut var, &mut count, &mut and_mask, &mut or_mask);
    let c = Contributions {
        image: image.as_array(),
        variance: variance.as_array(),
        flags: flags.as_array(),
        lambda_c: lambda_c.as_array(),
        delta_lambda: delta_lambda.as_array(),
        exclude: exclude_mask.as_ref().map(|e| e.as_array()),
        pixel_idx: pixel_idx.as_array(),
        out_y: out_y.as_array(),
        out_x: out_x.as_array(),
        f_xy: f_xy.as_array(),
    };
    let stats = run_detached(py, "accumulate_contributions", move || engine::accumulate_contributions(cube, &c, &p, threads))?;
    Ok((stats.n_pixels, stats.n_contributions, stats.planes.into_pyarray(py)))
}

/// Test hook: panics inside the detached, panic-guarded section, to show that a
/// panic surfaces as a Python RuntimeError instead of aborting the interpreter.
#[pyfunction]
fn _panic_for_test(py: Python<'_>, message: String) -> PyResult<()> {
    run_detached(py, "_panic_for_test", move || -> Result<(), String> { panic!("{message}") })
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(spectral_overlaps, m)?)?;
    m.add_function(wrap_pyfunction!(densify, m)?)?;
    m.add_function(wrap_pyfunction!(drizzle_frame, m)?)?;
    m.add_function(wrap_pyfunction!(spatial_mapping, m)?)?;
    m.add_function(wrap_pyfunction!(accumulate_contributions, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_test, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
