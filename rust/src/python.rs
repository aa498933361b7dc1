//! Python bindings (`spxquery.drizzle3d._core`; types in `_core.pyi`).
//!
//! [`EngineParams`] holds the engine's parameters, validated once (a
//! `ValueError` names the parameter); `DrizzleCube` builds one per cube and
//! passes it to every call. Every entry point takes keyword arguments only, so
//! two values cannot be swapped silently. A cube's accumulators come as one
//! mapping from name to array (`DrizzleCube.accumulators()`), read by
//! [`CubeArrays`]: an optional accumulator of a later issue is one more
//! (optional) entry there, and the call sites do not change. Shape and value
//! checks become `ValueError`; a panic is caught and becomes `RuntimeError`.
//! All heavy work runs with the GIL released.

use ndarray::{Array2, Dimension};
use numpy::{
    Element, IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray3, PyReadonlyArray4,
    PyReadonlyArray5, PyReadwriteArray, PyReadwriteArray1, PyReadwriteArray3, PyReadwriteArray5, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::cards::{self, CardValue};
use crate::contributions::{self, Contributions};
use crate::covariance::{CovMut, Stencil};
use crate::fitsplanes;
use crate::frame::FrameView;
use crate::params::{Kernel, Params, Settings};
#[cfg(unix)]
use crate::rawrows;
use crate::rice::{self, Columns, RiceParams, Tile};
use crate::scan::{CubeMut, FrameStats};
use crate::wavelookup::{self, Axis};
use crate::zodifit::{self, FitPixels};
use crate::{interp, outliers, scan, spectral};

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

fn slice_of<'a, T: Element>(a: &'a PyReadonlyArray1<'_, T>, name: &str) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| PyValueError::new_err(format!("{name} must be a contiguous 1-D array")))
}

/// The engine's parameters for one cube, validated once (see `_core.pyi`).
#[pyclass(frozen, module = "spxquery.drizzle3d._core", name = "EngineParams")]
pub struct EngineParams {
    params: Params,
}

#[pymethods]
impl EngineParams {
    #[new]
    #[pyo3(signature = (*, z_edges, xy_shrink, z_shrink, ivar_max, min_overlap, kernel))]
    fn new(z_edges: Vec<f64>, xy_shrink: f64, z_shrink: f64, ivar_max: f64, min_overlap: f64, kernel: &str) -> PyResult<Self> {
        let kernel = Kernel::parse(kernel).map_err(PyValueError::new_err)?;
        let settings = Settings { z_edges, xy_shrink, z_shrink, ivar_max, min_overlap, kernel };
        Ok(EngineParams { params: Params::new(settings).map_err(PyValueError::new_err)? })
    }

    /// Output wavelength bin edges (um), a copy.
    #[getter]
    fn z_edges<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        PyArray1::from_slice(py, &self.params.z_edges)
    }

    #[getter]
    fn xy_shrink(&self) -> f64 {
        self.params.xy_shrink
    }

    #[getter]
    fn z_shrink(&self) -> f64 {
        self.params.z_shrink
    }

    #[getter]
    fn ivar_max(&self) -> f64 {
        self.params.ivar_max
    }

    #[getter]
    fn min_overlap(&self) -> f64 {
        self.params.min_overlap
    }

    #[getter]
    fn kernel(&self) -> &'static str {
        self.params.kernel.name()
    }

    /// Number of output wavelength planes.
    #[getter]
    fn n_z(&self) -> usize {
        self.params.n_z()
    }

    /// The keyword arguments that rebuild this object.
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("z_edges", self.params.z_edges.clone())?;
        d.set_item("xy_shrink", self.params.xy_shrink)?;
        d.set_item("z_shrink", self.params.z_shrink)?;
        d.set_item("ivar_max", self.params.ivar_max)?;
        d.set_item("min_overlap", self.params.min_overlap)?;
        d.set_item("kernel", self.params.kernel.name())?;
        Ok(d)
    }

    /// Pickling (e.g. to dask workers): rebuilt from its keyword arguments.
    fn __getnewargs_ex__<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyTuple>, Bound<'py, PyDict>)> {
        Ok((PyTuple::empty(py), self.as_dict(py)?))
    }

    fn __repr__(&self) -> String {
        let p = &self.params;
        format!(
            "EngineParams(n_z={}, z_edges=[{} .. {}], xy_shrink={}, z_shrink={}, ivar_max={}, min_overlap={}, kernel={:?})",
            p.n_z(),
            p.z_edges[0],
            p.z_edges[p.n_z()],
            p.xy_shrink,
            p.z_shrink,
            p.ivar_max,
            p.min_overlap,
            p.kernel.name()
        )
    }
}

/// Array `name` of the mapping `cube`, writable; errors name the array.
fn cube_array<'py, T: Element, D: Dimension>(cube: &Bound<'py, PyAny>, name: &str) -> PyResult<PyReadwriteArray<'py, T, D>> {
    let value = cube.get_item(name).map_err(|_| PyKeyError::new_err(format!("cube has no accumulator {name:?}")))?;
    value.extract::<PyReadwriteArray<'py, T, D>>().map_err(|e| {
        let py = cube.py();
        PyErr::from_type(e.get_type(py), format!("cube array {name}: {}", e.value(py)))
    })
}

/// The accumulators of a cube, from a mapping of name -> array (the names of
/// the `DrizzleCube` fields). An optional accumulator joins as an `Option`
/// field read when its name is in the mapping, and as an `Option` in
/// [`CubeMut`].
struct CubeArrays<'py> {
    flux_weighted: PyReadwriteArray3<'py, f64>,
    weight_total: PyReadwriteArray3<'py, f64>,
    var_accum: PyReadwriteArray3<'py, f64>,
    count_map: PyReadwriteArray3<'py, u32>,
    and_mask: PyReadwriteArray3<'py, u32>,
    or_mask: PyReadwriteArray3<'py, u32>,
    /// Optional: the covariance cross terms `cov_cross` `(n_parts, n_z, ny, nx,
    /// slots)` and their offsets `cov_offsets` `(n_offsets, 3)` int64 `(dz, dy,
    /// dx)` (each offset's part and slot: `Stencil::places`).
    cov: Option<(PyReadwriteArray5<'py, f64>, Stencil)>,
}

impl<'py> CubeArrays<'py> {
    fn extract(cube: &Bound<'py, PyAny>) -> PyResult<Self> {
        Ok(CubeArrays {
            flux_weighted: cube_array(cube, "flux_weighted")?,
            weight_total: cube_array(cube, "weight_total")?,
            var_accum: cube_array(cube, "var_accum")?,
            count_map: cube_array(cube, "count_map")?,
            and_mask: cube_array(cube, "and_mask")?,
            or_mask: cube_array(cube, "or_mask")?,
            cov: cov_arrays(cube)?,
        })
    }

    fn view(&mut self) -> CubeMut<'_> {
        CubeMut {
            flux: self.flux_weighted.as_array_mut(),
            weight: self.weight_total.as_array_mut(),
            var: self.var_accum.as_array_mut(),
            count: self.count_map.as_array_mut(),
            and_mask: self.and_mask.as_array_mut(),
            or_mask: self.or_mask.as_array_mut(),
            cov: self.cov.as_mut().map(|(a, st)| CovMut { cross: a.as_array_mut(), stencil: st.clone() }),
        }
    }
}

/// The covariance accumulator of the mapping `cube`, when it has `cov_cross`
/// (then `cov_offsets` is required); errors name the array.
fn cov_arrays<'py>(cube: &Bound<'py, PyAny>) -> PyResult<Option<(PyReadwriteArray5<'py, f64>, Stencil)>> {
    if !cube.contains("cov_cross")? {
        return Ok(None);
    }
    let value = cube.get_item("cov_offsets").map_err(|_| PyKeyError::new_err("cube has cov_cross but no cov_offsets"))?;
    let arr: PyReadonlyArray2<'py, i64> =
        value.extract().map_err(|e| PyValueError::new_err(format!("cube array cov_offsets (int64, (n, 3)): {e}")))?;
    Ok(Some((cube_array(cube, "cov_cross")?, stencil_of(&arr, "cube array cov_offsets")?)))
}

/// The stencil of the `(n, 3)` offsets `arr` (`what` names them in errors).
fn stencil_of(arr: &PyReadonlyArray2<'_, i64>, what: &str) -> PyResult<Stencil> {
    let a = arr.as_array();
    if a.dim().1 != 3 {
        return Err(PyValueError::new_err(format!("{what} has shape {:?}, expected (n, 3)", a.dim())));
    }
    let offsets: Vec<[i64; 3]> = a.rows().into_iter().map(|r| [r[0], r[1], r[2]]).collect();
    Stencil::new(&offsets).map_err(PyValueError::new_err)
}

/// `(part, slot)` (int64, `(n, 2)`) of each covariance offset of `offsets`
/// (`(n, 3)` int64 `(dz, dy, dx)`, each positive) in the cross terms
/// `(n_parts, n_z, ny, nx, slots)` (`covariance.rs`: part 0 for `|dz| <= 1`,
/// else part 1, slots in the stencil's order). Bad offsets: ValueError.
#[pyfunction]
#[pyo3(signature = (*, offsets))]
fn covariance_places<'py>(py: Python<'py>, offsets: PyReadonlyArray2<'py, i64>) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let stencil = stencil_of(&offsets, "offsets")?;
    let flat: Vec<i64> = stencil.places.iter().flat_map(|p| p.map(|v| v as i64)).collect();
    let n = stencil.places.len();
    Ok(ndarray::Array2::from_shape_vec((n, 2), flat).expect("two per offset").into_pyarray(py))
}

/// `(n_pixels, n_contributions, planes)` of a call.
type Stats<'py> = (u64, u64, Bound<'py, PyArray1<bool>>);

fn stats_of(py: Python<'_>, s: FrameStats) -> Stats<'_> {
    (s.n_pixels, s.n_contributions, s.planes.into_pyarray(py))
}

/// Drizzles one frame (or crop, or strip of rows) into the cube's
/// accumulators in place, straight from its corner map. `origin`: the grid
/// pixel `(row, column)` of the cube's first voxel (a tile of a larger grid
/// whose pixels the corner map is in).
#[pyfunction]
#[pyo3(signature = (*, cube, params, corners_x, corners_y, image, variance, flags, lambda_c, delta_lambda, exclude_mask=None, threads=0,
                    origin=(0, 0)))]
#[allow(clippy::too_many_arguments)]
fn accumulate_frame<'py>(
    py: Python<'py>,
    cube: &Bound<'py, PyAny>,
    params: &Bound<'py, EngineParams>,
    corners_x: PyReadonlyArray2<'py, f64>,
    corners_y: PyReadonlyArray2<'py, f64>,
    image: PyReadonlyArray2<'py, f64>,
    variance: PyReadonlyArray2<'py, f64>,
    flags: PyReadonlyArray2<'py, u32>,
    lambda_c: PyReadonlyArray2<'py, f64>,
    delta_lambda: PyReadonlyArray2<'py, f64>,
    exclude_mask: Option<PyReadonlyArray2<'py, bool>>,
    threads: usize,
    origin: (usize, usize),
) -> PyResult<Stats<'py>> {
    let p = &params.get().params;
    let mut arrays = CubeArrays::extract(cube)?;
    let cube = arrays.view();
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
    let stats = run_detached(py, "accumulate_frame", move || scan::accumulate_frame_at(cube, origin, &frame, p, threads))?;
    Ok(stats_of(py, stats))
}

/// Accumulates a flat contribution list (the spxquery 0.4.1 API) in place.
#[pyfunction]
#[pyo3(signature = (*, cube, params, image, variance, flags, lambda_c, delta_lambda, pixel_idx, out_y, out_x, f_xy,
                    exclude_mask=None, threads=0))]
#[allow(clippy::too_many_arguments)]
fn accumulate_contributions<'py>(
    py: Python<'py>,
    cube: &Bound<'py, PyAny>,
    params: &Bound<'py, EngineParams>,
    image: PyReadonlyArray1<'py, f64>,
    variance: PyReadonlyArray1<'py, f64>,
    flags: PyReadonlyArray1<'py, u32>,
    lambda_c: PyReadonlyArray1<'py, f64>,
    delta_lambda: PyReadonlyArray1<'py, f64>,
    pixel_idx: PyReadonlyArray1<'py, i64>,
    out_y: PyReadonlyArray1<'py, i32>,
    out_x: PyReadonlyArray1<'py, i32>,
    f_xy: PyReadonlyArray1<'py, f64>,
    exclude_mask: Option<PyReadonlyArray1<'py, bool>>,
    threads: usize,
) -> PyResult<Stats<'py>> {
    let p = &params.get().params;
    let mut arrays = CubeArrays::extract(cube)?;
    let cube = arrays.view();
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
    let stats = run_detached(py, "accumulate_contributions", move || contributions::accumulate_contributions(cube, &c, p, threads))?;
    Ok(stats_of(py, stats))
}

/// The flat mapping of the spxquery 0.4.1 API from a corner map:
/// `(valid (ny, nx) bool, pixel_idx int64, out_y int32, out_x int32, f_xy float64)`.
#[pyfunction]
#[pyo3(signature = (*, corners_x, corners_y, out_ny, out_nx, xy_shrink, kernel, threads=0))]
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
    let m = run_detached(py, "spatial_mapping", move || contributions::spatial_mapping(cx, cy, out_ny, out_nx, xy_shrink, kernel, threads))?;
    let valid = Array2::from_shape_vec(shape, m.valid).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok((valid.into_pyarray(py), m.pixel_idx.into_pyarray(py), m.out_y.into_pyarray(py), m.out_x.into_pyarray(py), m.f_xy.into_pyarray(py)))
}

/// Output bin indices and fractions.
type BinFractions<'py> = (Bound<'py, PyArray1<i32>>, Bound<'py, PyArray1<f64>>);

/// Spectral overlaps of one top-hat `[lambda_c ± delta_lambda*z_shrink/2]` (um)
/// with the bins given by `z_edges` (um). Returns `(z_idx int32, f_z float64)`.
#[pyfunction]
#[pyo3(signature = (*, lambda_c, delta_lambda, z_shrink, z_edges))]
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
#[pyo3(signature = (*, coarse, step, ny, nx))]
fn densify<'py>(py: Python<'py>, coarse: PyReadonlyArray2<'py, f64>, step: usize, ny: usize, nx: usize) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let c = coarse.as_array();
    let out: Array2<f64> = run_detached(py, "densify", move || interp::densify(c, step, ny, nx))?;
    Ok(out.into_pyarray(py))
}

/// Per-pixel `(wavelength, bandwidth)` (um) from a `WCS-WAVE` table `values`
/// `(knot rows, knot columns, 2)` and each pixel row's and column's cell and
/// fraction (see `wavelookup.rs`).
#[pyfunction]
#[pyo3(signature = (*, values, row_cell, row_frac, column_cell, column_frac))]
#[allow(clippy::type_complexity)]
fn wave_lookup<'py>(
    py: Python<'py>,
    values: PyReadonlyArray3<'py, f64>,
    row_cell: PyReadonlyArray1<'py, i64>,
    row_frac: PyReadonlyArray1<'py, f64>,
    column_cell: PyReadonlyArray1<'py, i64>,
    column_frac: PyReadonlyArray1<'py, f64>,
) -> PyResult<(Bound<'py, PyArray2<f64>>, Bound<'py, PyArray2<f64>>)> {
    let (row_cell, column_cell) = (sizes("row_cell", &row_cell)?, sizes("column_cell", &column_cell)?);
    let (row_frac, column_frac) = (slice_of(&row_frac, "row_frac")?, slice_of(&column_frac, "column_frac")?);
    let v = values.as_array();
    let (lam, dlam) = run_detached(py, "wave_lookup", move || {
        let rows = Axis { index: &row_cell, frac: row_frac };
        let columns = Axis { index: &column_cell, frac: column_frac };
        wavelookup::lookup(v, &rows, &columns)
    })?;
    Ok((lam.into_pyarray(py), dlam.into_pyarray(py)))
}

/// The zodi fit's sums over the background pixels of a sample (see
/// `zodifit.rs`): `(pixels, sum(w * I * Z), sum(w * Z * Z))`, numpy's bits.
#[pyfunction]
#[pyo3(signature = (*, image, zodi, variance, flags, reject))]
fn zodi_fit_sums<'py>(
    py: Python<'py>,
    image: PyReadonlyArray1<'py, f64>,
    zodi: PyReadonlyArray1<'py, f64>,
    variance: Option<PyReadonlyArray1<'py, f64>>,
    flags: Option<PyReadonlyArray1<'py, u32>>,
    reject: u32,
) -> PyResult<(usize, f64, f64)> {
    let (image, zodi) = (slice_of(&image, "image")?, slice_of(&zodi, "zodi")?);
    let variance = variance.as_ref().map(|v| slice_of(v, "variance")).transpose()?;
    let flags = flags.as_ref().map(|f| slice_of(f, "flags")).transpose()?;
    let px = FitPixels { image, zodi, variance, flags };
    run_detached(py, "zodi_fit_sums", move || zodifit::fit_sums(&px, reject))
}

/// A SCI/VARIANCE plane of the cube file (see `fitsplanes.rs`): `out[i]` gets
/// the big-endian bytes of float32 `numerator[i] / weight[i]` (`/ weight[i]**2`
/// when `squared`) where `weight[i] > 0`, NaN elsewhere.
#[pyfunction]
#[pyo3(signature = (*, numerator, weight, squared, out))]
fn fits_ratio_plane<'py>(
    py: Python<'py>,
    numerator: PyReadonlyArray1<'py, f64>,
    weight: PyReadonlyArray1<'py, f64>,
    squared: bool,
    mut out: PyReadwriteArray1<'py, u32>,
) -> PyResult<()> {
    let (num, w) = (slice_of(&numerator, "numerator")?, slice_of(&weight, "weight")?);
    let out = out.as_slice_mut().map_err(|_| PyValueError::new_err("out must be a contiguous 1-D array"))?;
    run_detached(py, "fits_ratio_plane", move || fitsplanes::ratio_plane(num, w, squared, out))
}

/// A band of the COVARIANCE image (see `fitsplanes::covariance_band`): plane
/// `k`, rows `y0 ..` (as many as `cross` `(parts, rows, nx, slots)` has), the
/// offsets `offsets` (term `columns[j]` = `part * slots + slot` of `cross` for
/// offset `j`), into `out` as the big-endian bytes of float64, offset-major.
#[pyfunction]
#[pyo3(signature = (*, cross, var, weight, offsets, columns, k, y0, out))]
#[allow(clippy::too_many_arguments)]
fn fits_covariance_band<'py>(
    py: Python<'py>,
    cross: PyReadonlyArray4<'py, f64>,
    var: PyReadonlyArray1<'py, f64>,
    weight: PyReadonlyArray3<'py, f64>,
    offsets: PyReadonlyArray2<'py, i64>,
    columns: PyReadonlyArray1<'py, i64>,
    k: usize,
    y0: usize,
    mut out: PyReadwriteArray1<'py, u64>,
) -> PyResult<()> {
    let var = slice_of(&var, "var")?;
    let shape = weight.as_array().dim();
    let weight = weight.as_slice().map_err(|_| PyValueError::new_err("weight must be a C-contiguous (nz, ny, nx) array"))?;
    let offsets = offsets.as_array();
    if offsets.ncols() != 3 {
        return Err(PyValueError::new_err(format!("offsets must be (n, 3) (dz, dy, dx), got {:?}", offsets.dim())));
    }
    let offsets: Vec<[i64; 3]> = offsets.rows().into_iter().map(|r| [r[0], r[1], r[2]]).collect();
    let columns = sizes("columns", &columns)?;
    let cross = cross.as_array();
    let out = out.as_slice_mut().map_err(|_| PyValueError::new_err("out must be a contiguous 1-D array"))?;
    let band = fitsplanes::CovBand { cross, var, weight, shape, k, y0, offsets: &offsets, columns: &columns };
    run_detached(py, "fits_covariance_band", move || fitsplanes::covariance_band(&band, out))
}

/// Per term `part * slots + slot` of the cross-term accumulator `cross`
/// `(parts, nz, ny, nx, slots)` (any strides), whether any voxel's term is
/// nonzero (`fitsplanes::terms_used`).
#[pyfunction]
#[pyo3(signature = (*, cross))]
fn covariance_terms_used<'py>(py: Python<'py>, cross: PyReadonlyArray5<'py, f64>) -> PyResult<Bound<'py, PyArray1<bool>>> {
    let cross = cross.as_array();
    let used = run_detached(py, "covariance_terms_used", move || Ok(fitsplanes::terms_used(cross)))?;
    Ok(used.into_pyarray(py))
}

fn sizes(name: &str, a: &PyReadonlyArray1<'_, i64>) -> PyResult<Vec<usize>> {
    let s = a.as_slice().map_err(|_| PyValueError::new_err(format!("{name} must be a contiguous 1-D array")))?;
    s.iter().map(|&v| usize::try_from(v).map_err(|_| PyValueError::new_err(format!("{name} holds a negative value {v}")))).collect()
}

/// Decodes RICE_1 tiles of whole rows of `nx` pixels from `heap` (tile `k` is
/// `heap[offsets[k]:offsets[k]+lengths[k]]` and holds `rows[k]` rows) and
/// returns columns `x0:x1` of every row as a `(sum(rows), x1 - x0)` uint32
/// array: 16-bit values sign-extended, then `bzero` added modulo 2**32.
#[pyfunction]
#[pyo3(signature = (*, heap, offsets, lengths, rows, nx, x0, x1, bytepix, blocksize, bzero))]
#[allow(clippy::too_many_arguments)]
fn rice_decode_rows<'py>(
    py: Python<'py>,
    heap: PyReadonlyArray1<'py, u8>,
    offsets: PyReadonlyArray1<'py, i64>,
    lengths: PyReadonlyArray1<'py, i64>,
    rows: PyReadonlyArray1<'py, i64>,
    nx: usize,
    x0: usize,
    x1: usize,
    bytepix: usize,
    blocksize: usize,
    bzero: i64,
) -> PyResult<Bound<'py, PyArray2<u32>>> {
    let (offsets, lengths, rows) = (sizes("offsets", &offsets)?, sizes("lengths", &lengths)?, sizes("rows", &rows)?);
    if offsets.len() != lengths.len() || offsets.len() != rows.len() {
        return Err(PyValueError::new_err("offsets, lengths and rows must have one value per tile"));
    }
    if x1 <= x0 || x1 > nx {
        return Err(PyValueError::new_err(format!("columns {x0}:{x1} are outside rows of {nx} pixels")));
    }
    let tiles: Vec<Tile> = (0..rows.len()).map(|k| Tile { offset: offsets[k], length: lengths[k], rows: rows[k] }).collect();
    let total: usize = rows.iter().sum();
    let heap = heap.as_slice().map_err(|_| PyValueError::new_err("heap must be a contiguous 1-D uint8 array"))?;
    let width = x1 - x0;
    let out = run_detached(py, "rice_decode_rows", move || {
        let mut out = vec![0u32; total * width];
        rice::decode_rows(heap, &tiles, Columns { nx, x0, x1 }, RiceParams { bytepix, blocksize }, bzero, &mut out)?;
        Ok(out)
    })?;
    let array = PyArray1::from_vec(py, out);
    array.reshape([total, width])
}

/// Pixels `[rows, x0:x1]` of a plain image of the open local file `fd` (`size`
/// bytes when opened; the descriptor is duplicated, the caller keeps its own),
/// rows `start, start + step, ...` (`count`): a float image as float64, an
/// integer one as uint32 (`value + bzero` modulo 2**32); `(count, x1 - x0)`,
/// written into `out` when given (C-contiguous, that shape and dtype).
/// `ValueError` naming `name` and the row for a short read or a bad box.
#[cfg(unix)]
#[pyfunction]
#[pyo3(signature = (*, fd, size, name, offset, ny, nx, bitpix, bzero, start, step, count, x0, x1, out=None, minus_name=None, minus_offset=None, minus_bitpix=None, minus_scale=None))]
#[allow(clippy::too_many_arguments)]
fn read_plain_rows<'py>(
    py: Python<'py>,
    fd: i32,
    size: u64,
    name: String,
    offset: u64,
    ny: usize,
    nx: usize,
    bitpix: i32,
    bzero: i64,
    start: usize,
    step: usize,
    count: usize,
    x0: usize,
    x1: usize,
    out: Option<Bound<'py, PyAny>>,
    minus_name: Option<String>,
    minus_offset: Option<u64>,
    minus_bitpix: Option<i32>,
    minus_scale: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    use std::os::fd::BorrowedFd;
    if fd < 0 {
        return Err(PyValueError::new_err(format!("{name}: file descriptor {fd} is not open")));
    }
    // SAFETY: `fd` is open (the caller's LocalFile holds it) and stays so while the
    // GIL is held; it is only duplicated here, and the duplicate is what is read.
    let file = std::fs::File::from(
        unsafe { BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .map_err(|e| PyValueError::new_err(format!("{name}: cannot use file descriptor {fd} ({e})")))?,
    );
    let part = rawrows::PlainPart { name: &name, offset, ny, nx, bitpix };
    let win = rawrows::Window { rows: rawrows::RowSet { start, step, count }, x0, x1 };
    // Before allocating: the window lies in the file. A second image of the same shape whose
    // window, times a scale, is subtracted (float images only) is checked likewise.
    part.check(win, size).map_err(PyValueError::new_err)?;
    let minus = match (&minus_name, minus_offset, minus_bitpix, minus_scale) {
        (None, None, None, None) => None,
        (Some(mname), Some(moffset), Some(mbitpix), Some(scale)) if bitpix < 0 => {
            let other = rawrows::PlainPart { name: mname, offset: moffset, ny, nx, bitpix: mbitpix };
            other.check(win, size).map_err(PyValueError::new_err)?;
            Some((other, scale))
        }
        _ => {
            return Err(PyValueError::new_err(format!(
                "{name}: minus_name, minus_offset, minus_bitpix and minus_scale go together, with a floating-point image"
            )))
        }
    };
    let width = x1.saturating_sub(x0);
    // The result is allocated by numpy (as numpy's own reader would), then filled with the GIL released.
    if bitpix < 0 {
        // SAFETY: every element is written by `read_float` before the array is returned.
        let array = match out {
            Some(o) => output_array::<f64>(&o, &name, [count, width])?,
            None => unsafe { PyArray2::<f64>::new(py, [count, width], false) },
        };
        {
            let mut rw = array.readwrite();
            let out = rw.as_slice_mut().map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
            run_detached(py, "read_plain_rows", move || {
                rawrows::read_float(&file, size, &part, win, out)?;
                match minus {
                    Some((other, scale)) => rawrows::subtract_float(&file, size, &other, win, scale, out),
                    None => Ok(()),
                }
            })?;
        }
        Ok(array.into_any())
    } else {
        // SAFETY: every element is written by `read_flags` before the array is returned.
        let array = match out {
            Some(o) => output_array::<u32>(&o, &name, [count, width])?,
            None => unsafe { PyArray2::<u32>::new(py, [count, width], false) },
        };
        {
            let mut rw = array.readwrite();
            let out = rw.as_slice_mut().map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
            run_detached(py, "read_plain_rows", move || rawrows::read_flags(&file, size, &part, win, bzero, out))?;
        }
        Ok(array.into_any())
    }
}

/// `out` as the C-contiguous `shape` array of `T` a read fills, or a ValueError naming `name`.
#[cfg(unix)]
fn output_array<'py, T: Element>(out: &Bound<'py, PyAny>, name: &str, shape: [usize; 2]) -> PyResult<Bound<'py, PyArray2<T>>> {
    let array = out
        .extract::<Bound<'py, PyArray2<T>>>()
        .map_err(|_| PyValueError::new_err(format!("{name}: out must be a 2-D array of {}", std::any::type_name::<T>())))?;
    if array.shape() != shape || !array.is_c_contiguous() {
        return Err(PyValueError::new_err(format!("{name}: out must be a C-contiguous {shape:?} array, got {:?}", array.shape())));
    }
    Ok(array)
}

/// The values of a FITS header's standard cards (see `cards.rs`): `(dict of
/// keyword -> str/bool/int/float/None, list of keywords left to the Python parser)`.
#[pyfunction]
#[pyo3(signature = (*, text))]
fn header_values<'py>(py: Python<'py>, text: &str) -> PyResult<(Bound<'py, PyDict>, Vec<String>)> {
    let (values, others) = cards::header_values(text.as_bytes());
    let out = PyDict::new(py);
    for (key, value) in values {
        match value {
            CardValue::Str(s) => out.set_item(key, s)?,
            CardValue::Bool(b) => out.set_item(key, b)?,
            CardValue::Int(i) => out.set_item(key, i)?,
            CardValue::Float(f) => out.set_item(key, f)?,
            CardValue::Undefined => out.set_item(key, py.None())?,
        }
    }
    Ok((out, others))
}

/// `(end, garbage)` of a chunk of header blocks (see `cards.rs`): the byte
/// offset of its END card (-1: none) and whether a byte before it is not FITS
/// header text.
#[pyfunction]
#[pyo3(signature = (*, chunk))]
fn header_end(chunk: &[u8]) -> (i64, bool) {
    let (end, garbage) = cards::header_end(chunk);
    (end.map_or(-1, |e| e as i64), garbage)
}

/// The mandatory keywords of a header's `text` (see `cards.rs`):
/// `(xtension or None, bitpix, (NAXIS1, ...), pcount, gcount, EXTNAME string or
/// None)`, or None when the Python reader must judge the header.
#[pyfunction]
#[pyo3(signature = (*, text, primary))]
#[allow(clippy::type_complexity)]
fn header_mandatory(text: &[u8], primary: bool) -> Option<(Option<String>, i64, Vec<i64>, i64, i64, Option<String>)> {
    cards::mandatory_cards(text, primary).map(|m| (m.xtension, m.bitpix, m.dims, m.pcount, m.gcount, m.extname))
}

/// Merges a frame drizzled alone into scratch arrays into the robust model of
/// outlier rejection (see `_core.pyi`).
#[pyfunction]
#[pyo3(signature = (*, scratch_flux, scratch_weight, flux_weighted, weight_total, n_frames, hi_v, hi_w, hi2_v, hi2_w, boxes, threads=0))]
#[allow(clippy::too_many_arguments)]
fn model_merge<'py>(
    py: Python<'py>,
    mut scratch_flux: PyReadwriteArray3<'py, f64>,
    mut scratch_weight: PyReadwriteArray3<'py, f64>,
    mut flux_weighted: PyReadwriteArray3<'py, f64>,
    mut weight_total: PyReadwriteArray3<'py, f64>,
    mut n_frames: PyReadwriteArray3<'py, u16>,
    mut hi_v: PyReadwriteArray3<'py, f32>,
    mut hi_w: PyReadwriteArray3<'py, f32>,
    mut hi2_v: PyReadwriteArray3<'py, f32>,
    mut hi2_w: PyReadwriteArray3<'py, f32>,
    boxes: PyReadonlyArray2<'py, i64>,
    threads: usize,
) -> PyResult<()> {
    let b = boxes.as_array();
    if b.ncols() != 5 {
        return Err(PyValueError::new_err(format!("boxes must be (n, 5): plane, y0, y1, x0, x1; got {:?}", b.dim())));
    }
    let mut list = Vec::with_capacity(b.nrows());
    for row in b.rows() {
        let mut one = [0usize; 5];
        for (o, &v) in one.iter_mut().zip(row.iter()) {
            *o = usize::try_from(v).map_err(|_| PyValueError::new_err(format!("boxes hold a negative value {v}")))?;
        }
        list.push(one);
    }
    let state = outliers::ModelState {
        flux: flux_weighted.as_array_mut(),
        weight: weight_total.as_array_mut(),
        n_frames: n_frames.as_array_mut(),
        hi_v: hi_v.as_array_mut(),
        hi_w: hi_w.as_array_mut(),
        hi2_v: hi2_v.as_array_mut(),
        hi2_w: hi2_w.as_array_mut(),
    };
    let (fw, wt) = (scratch_flux.as_array_mut(), scratch_weight.as_array_mut());
    run_detached(py, "model_merge", move || outliers::merge_frame(state, fw, wt, &list, threads))
}

/// `(core, candidate, n_tested)` of [`outlier_test`].
type OutlierTest<'py> = (Bound<'py, PyArray2<bool>>, Bound<'py, PyArray2<bool>>, u64);

/// Outlier rejection's test of a strip of pixels against the model cube
/// blotted at each pixel's own (x, y, lambda) (see `_core.pyi`).
#[pyfunction]
#[pyo3(signature = (*, model, steps, centers, corners_x, corners_y, image, variance, lambda_c, exclude_mask=None, snr, scale, edge,
                    max_undefined, threads=0))]
#[allow(clippy::too_many_arguments)]
fn outlier_test<'py>(
    py: Python<'py>,
    model: PyReadonlyArray3<'py, f32>,
    steps: PyReadonlyArray3<'py, f32>,
    centers: PyReadonlyArray1<'py, f64>,
    corners_x: PyReadonlyArray2<'py, f64>,
    corners_y: PyReadonlyArray2<'py, f64>,
    image: PyReadonlyArray2<'py, f64>,
    variance: PyReadonlyArray2<'py, f64>,
    lambda_c: PyReadonlyArray2<'py, f64>,
    exclude_mask: Option<PyReadonlyArray2<'py, bool>>,
    snr: (f64, f64),
    scale: (f64, f64),
    edge: f64,
    max_undefined: f64,
    threads: usize,
) -> PyResult<OutlierTest<'py>> {
    let centers = slice_of(&centers, "centers")?;
    let m = outliers::Model { values: model.as_array(), steps: steps.as_array(), centers };
    let px = outliers::Pixels {
        corners_x: corners_x.as_array(),
        corners_y: corners_y.as_array(),
        image: image.as_array(),
        variance: variance.as_array(),
        lambda_c: lambda_c.as_array(),
        exclude: exclude_mask.as_ref().map(|e| e.as_array()),
    };
    let t = outliers::Thresholds { snr: [snr.0, snr.1], scale: [scale.0, scale.1], edge, max_undefined };
    let r = run_detached(py, "outlier_test", move || outliers::test_pixels(&m, &px, &t, threads))?;
    Ok((r.core.into_pyarray(py), r.candidate.into_pyarray(py), r.n_tested))
}

/// Trilinear interpolation of `cube` at output positions `x, y` (pixels) and
/// fractional planes `z` (see `_core.pyi`).
#[pyfunction]
#[pyo3(signature = (*, cube, x, y, z, max_undefined, threads=0))]
fn blot_cube<'py>(
    py: Python<'py>,
    cube: PyReadonlyArray3<'py, f32>,
    x: PyReadonlyArray1<'py, f64>,
    y: PyReadonlyArray1<'py, f64>,
    z: PyReadonlyArray1<'py, f64>,
    max_undefined: f64,
    threads: usize,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let (x, y, z) = (slice_of(&x, "x")?, slice_of(&y, "y")?, slice_of(&z, "z")?);
    let c = cube.as_array();
    let out = run_detached(py, "blot_cube", move || outliers::blot(&c, x, y, z, max_undefined, threads))?;
    Ok(out.into_pyarray(py))
}

/// Test hook: panics inside the detached, panic-guarded section, to show that a
/// panic surfaces as a Python RuntimeError instead of aborting the interpreter.
#[pyfunction]
fn _panic_for_test(py: Python<'_>, message: String) -> PyResult<()> {
    run_detached(py, "_panic_for_test", move || -> Result<(), String> { panic!("{message}") })
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<EngineParams>()?;
    m.add_function(wrap_pyfunction!(accumulate_frame, m)?)?;
    m.add_function(wrap_pyfunction!(header_values, m)?)?;
    m.add_function(wrap_pyfunction!(header_end, m)?)?;
    m.add_function(wrap_pyfunction!(header_mandatory, m)?)?;
    m.add_function(wrap_pyfunction!(accumulate_contributions, m)?)?;
    m.add_function(wrap_pyfunction!(spatial_mapping, m)?)?;
    m.add_function(wrap_pyfunction!(spectral_overlaps, m)?)?;
    m.add_function(wrap_pyfunction!(densify, m)?)?;
    m.add_function(wrap_pyfunction!(wave_lookup, m)?)?;
    m.add_function(wrap_pyfunction!(zodi_fit_sums, m)?)?;
    m.add_function(wrap_pyfunction!(fits_ratio_plane, m)?)?;
    m.add_function(wrap_pyfunction!(fits_covariance_band, m)?)?;
    m.add_function(wrap_pyfunction!(covariance_terms_used, m)?)?;
    m.add_function(wrap_pyfunction!(covariance_places, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_test, m)?)?;
    m.add_function(wrap_pyfunction!(rice_decode_rows, m)?)?;
    #[cfg(unix)]
    m.add_function(wrap_pyfunction!(read_plain_rows, m)?)?;
    m.add_function(wrap_pyfunction!(outlier_test, m)?)?;
    m.add_function(wrap_pyfunction!(blot_cube, m)?)?;
    m.add_function(wrap_pyfunction!(model_merge, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
