//! `Store.search`: the arguments (backend, ef, shapes, k) are checked holding the GIL, then the
//! search runs with it released.

use numpy::PyArrayDyn;
use pyo3::prelude::*;

use super::arrays::{input, output};
use super::errors::to_py;
use super::store::Store;
use crate::error::Error;
use crate::search::{Backend, Queries};

pub(super) type Scored<'py> = (Bound<'py, PyArrayDyn<f32>>, Bound<'py, PyArrayDyn<i64>>);

/// See `Store.search` (`_core.pyi`).
#[allow(clippy::too_many_arguments)] // Python keyword arguments
pub(super) fn search<'py>(
    store: &Store,
    py: Python<'py>,
    docs: Vec<String>,
    layer: i64,
    queries: &Bound<'py, PyAny>,
    k: i64,
    backend: &str,
    ef: Option<i64>,
) -> PyResult<Scored<'py>> {
    let layer = store.layer(py, layer)?;
    let ef = match ef {
        None => store
            .config
            .hnsw
            .as_ref()
            .map_or(128, |h| h.ef_search as usize),
        Some(e) if (1..=65_536).contains(&e) => e as usize,
        Some(e) => {
            return Err(to_py(
                py,
                Error::Value(format!("ef must be between 1 and 65536, got {e}")),
            ))
        }
    };
    let backend = Backend::parse(backend, ef).map_err(|e| to_py(py, e))?;
    let q = input(queries, "queries", 4)?;
    let shape = q.shape.clone();
    if shape[0] != docs.len() {
        return Err(to_py(
            py,
            Error::Shape(format!(
                "queries have batch size {} (shape {shape:?}) but {} documents were given",
                shape[0],
                docs.len()
            )),
        ));
    }
    store.check_dim(py, "queries", &shape, 3, "head_dim", store.config.head_dim)?;
    if k <= 0 {
        return Err(to_py(
            py,
            Error::Value(format!("k must be positive, got {k}")),
        ));
    }
    let k = k as usize;
    let queries = q.into_f32();
    let res = store.with(py, |s| {
        let names: Vec<&str> = docs.iter().map(String::as_str).collect();
        let queries = Queries {
            data: &queries,
            q: shape[1],
            heads: shape[2],
        };
        s.search(&names, layer, queries, k, backend)
    })?;
    let out = [shape[0], shape[1], shape[2], k];
    Ok((output(py, res.scores, &out)?, output(py, res.ids, &out)?))
}
