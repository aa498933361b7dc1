//! Python binding of the frame reader's tile decoder: `_core.rice_decode_rows`
//! (see [`crate::rice`]). Keyword arguments only; bad input is a `ValueError`
//! naming the tile; the decoding runs with the GIL released.

use numpy::{PyArray2, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::python::run_detached;
use crate::rice::{self, Columns, RiceParams, Tile};

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
    let array = numpy::PyArray1::from_vec(py, out);
    array.reshape([total, width])
}

/// Adds the functions of this file to the `_core` module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(rice_decode_rows, m)?)
}
