//! `Store.search`: the arguments (backend, ef, shapes, k) are checked holding the GIL, then the
//! search runs with it released. Apart from `Store` so that the store's other methods need not
//! know about queries and backends.

use numpy::PyArrayDyn;
use pyo3::prelude::*;

use super::arrays::{check_dim, input, output};
use super::errors::to_py;
use crate::error::{Error, Result};
use crate::search::{Backend, Queries, SearchResult};
use crate::store::{MemoryStore, StoreConfig};

pub(super) type Scored<'py> = (Bound<'py, PyArrayDyn<f32>>, Bound<'py, PyArrayDyn<i64>>);

/// A checked search: its documents, queries (f32, `shape` `[batch, q, heads, head_dim]`), k and
/// backend.
pub(super) struct Request {
    docs: Vec<String>,
    queries: Vec<f32>,
    shape: Vec<usize>,
    k: usize,
    backend: Backend,
}

/// Checks the arguments of `Store.search` (`_core.pyi`) against the store's configuration.
pub(super) fn prepare(
    py: Python<'_>,
    config: &StoreConfig,
    docs: Vec<String>,
    queries: &Bound<'_, PyAny>,
    k: i64,
    backend: &str,
    ef: Option<i64>,
) -> PyResult<Request> {
    let ef = match ef {
        None => config.hnsw.as_ref().map_or(128, |h| h.ef_search as usize),
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
    check_dim(py, "queries", &shape, 3, "head_dim", config.head_dim)?;
    if k <= 0 {
        return Err(to_py(
            py,
            Error::Value(format!("k must be positive, got {k}")),
        ));
    }
    Ok(Request {
        docs,
        queries: q.into_f32(),
        shape,
        k: k as usize,
        backend,
    })
}

impl Request {
    /// Searches memory layer `layer` of `store` (without the GIL).
    pub(super) fn run(&self, store: &mut MemoryStore, layer: u32) -> Result<SearchResult> {
        let names: Vec<&str> = self.docs.iter().map(String::as_str).collect();
        let queries = Queries {
            data: &self.queries,
            q: self.shape[1],
            heads: self.shape[2],
        };
        store.search(&names, layer, queries, self.k, self.backend)
    }

    /// The scores and ids as numpy arrays `[batch, q, heads, k]`.
    pub(super) fn output<'py>(&self, py: Python<'py>, res: SearchResult) -> PyResult<Scored<'py>> {
        let s = &self.shape;
        let out = [s[0], s[1], s[2], self.k];
        Ok((output(py, res.scores, &out)?, output(py, res.ids, &out)?))
    }
}
