//! The hnsw options of `Store.create` and `Store.config` (a dict each way), and the index
//! builder's statistics.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::{Error, Result};
use crate::store::{HnswConfig, IndexStats};

/// The hnsw configuration from a Python dict: defaults, overridden by the keys given.
pub(super) fn config(d: &Bound<'_, PyDict>, chunk_tokens: u32) -> Result<HnswConfig> {
    let mut c = HnswConfig::new(chunk_tokens);
    for (key, value) in d.iter() {
        let key: String = key
            .extract()
            .map_err(|_| Error::Value("hnsw option names must be strings".into()))?;
        let number = |name: &str| -> Result<u32> {
            let v: i64 = value.extract().map_err(|_| {
                Error::Value(format!("hnsw {name} must be an integer, got {value}"))
            })?;
            u32::try_from(v)
                .map_err(|_| Error::Value(format!("hnsw {name} must be positive, got {v}")))
        };
        match key.as_str() {
            "m" => c.m = number("m")?,
            "ef_construction" => c.ef_construction = number("ef_construction")?,
            "ef_search" => c.ef_search = number("ef_search")?,
            "span_tokens" => c.span_tokens = number("span_tokens")?,
            "linking" => {
                c.linking = value
                    .extract()
                    .map_err(|_| Error::Value(format!("hnsw linking must be a string, got {value}")))?
            }
            other => {
                return Err(Error::Value(format!(
                    "unknown hnsw option {other:?}; expected m, ef_construction, ef_search, span_tokens, linking"
                )))
            }
        }
    }
    Ok(c)
}

/// The hnsw configuration as the dict `config` reads.
pub(super) fn config_dict<'py>(py: Python<'py>, h: &HnswConfig) -> PyResult<Bound<'py, PyDict>> {
    let hd = PyDict::new(py);
    hd.set_item("m", h.m)?;
    hd.set_item("ef_construction", h.ef_construction)?;
    hd.set_item("ef_search", h.ef_search)?;
    hd.set_item("span_tokens", h.span_tokens)?;
    hd.set_item("linking", &h.linking)?;
    Ok(hd)
}

/// The index builder's statistics (`wait_for_indexes`, `index_stats`).
pub(super) fn stats_dict<'py>(py: Python<'py>, st: &IndexStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("pending", st.pending)?;
    d.set_item("built", st.built)?;
    d.set_item("keys", st.keys)?;
    d.set_item("seconds", st.seconds)?;
    d.set_item("errors", st.errors.clone())?;
    Ok(d)
}
