//! `fot_mem._core.verify_store`: the read-only store check as a plain dict (the report is data,
//! not a handle, so nothing here opens the store).

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::errors::run;
use crate::store::{verify, VerifyReport};

fn report_dict<'py>(py: Python<'py>, r: &VerifyReport) -> PyResult<Bound<'py, PyDict>> {
    let problems = r
        .problems
        .iter()
        .map(|p| {
            let d = PyDict::new(py);
            d.set_item("severity", p.severity.name())?;
            d.set_item("path", &p.path)?;
            d.set_item("message", &p.message)?;
            Ok(d)
        })
        .collect::<PyResult<Vec<_>>>()?;
    let c = &r.checked;
    let checked = PyDict::new(py);
    checked.set_item("documents", c.documents)?;
    checked.set_item("layers", c.layers)?;
    checked.set_item("chunks", c.chunks)?;
    checked.set_item("index_files", c.index_files)?;
    checked.set_item("checksums", c.checksums)?;
    checked.set_item("tokens", c.tokens)?;
    checked.set_item("bytes", c.bytes)?;
    let d = PyDict::new(py);
    d.set_item("ok", r.is_ok())?;
    d.set_item("problems", problems)?;
    d.set_item("checked", checked)?;
    Ok(d)
}

/// Checks the store at `path` without changing anything; see `fot_mem.MemoryStore.verify`.
#[pyfunction]
#[pyo3(signature = (path, deep=true))]
pub fn verify_store(py: Python<'_>, path: PathBuf, deep: bool) -> PyResult<Bound<'_, PyDict>> {
    let report = run(py, move || verify(&path, deep))?;
    report_dict(py, &report)
}
