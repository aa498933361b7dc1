//! Python bindings (`spxquery.drizzle3d._core`). Array checks happen here and
//! become `ValueError`; panics are caught and become `RuntimeError`.

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::spectral;

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

/// Spectral overlaps of one top-hat `[lambda_c ± delta_lambda*z_shrink/2]` (um)
/// with the bins given by `z_edges` (um). Returns `(z_idx int32, f_z float64)`.
#[pyfunction]
fn spectral_overlaps<'py>(
    py: Python<'py>,
    lambda_c: f64,
    delta_lambda: f64,
    z_shrink: f64,
    z_edges: PyReadonlyArray1<'py, f64>,
) -> PyResult<(Bound<'py, PyArray1<i32>>, Bound<'py, PyArray1<f64>>)> {
    let edges = z_edges.as_slice().map_err(|_| PyValueError::new_err("z_edges must be contiguous"))?.to_vec();
    let (idx, frac) = run_detached(py, "spectral_overlaps", move || {
        spectral::validate_edges(&edges)?;
        Ok(spectral::overlaps(lambda_c, delta_lambda, z_shrink, &edges))
    })?;
    Ok((idx.into_pyarray(py), frac.into_pyarray(py)))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(spectral_overlaps, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
