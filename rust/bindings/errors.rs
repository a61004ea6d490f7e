//! The one GIL helper and the one error mapping: core errors become the classes of
//! `fot_mem.exceptions` (rooted at `FotMemError`), and a Rust panic becomes `FotMemError` instead
//! of aborting the interpreter.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::error::Error;

/// The name of the `fot_mem.exceptions` class raised for `err`.
fn class_name(err: &Error) -> &'static str {
    match err {
        Error::NotFound { .. } => "StoreNotFoundError",
        Error::NotAStore(_) => "NotAStoreError",
        Error::Exists(_) => "StoreExistsError",
        Error::Corrupt(_) => "StoreCorruptError",
        Error::Version { .. } => "FormatVersionError",
        Error::Locked(_) => "StoreLockedError",
        Error::ReadOnly(_) => "ReadOnlyError",
        Error::Closed(_) => "StoreClosedError",
        Error::Shape(_) => "ShapeError",
        Error::Dtype(_) => "DtypeError",
        Error::Value(_) => "InvalidValueError",
        Error::UnknownLayer { .. } => "UnknownLayerError",
        Error::Index(_) => "TokenIndexError",
        Error::Memory(_) => "AllocationError",
        Error::Io { .. } => "StoreIOError",
    }
}

fn raise(py: Python<'_>, name: &str, message: String) -> PyErr {
    let class = py
        .import("fot_mem.exceptions")
        .and_then(|m| m.getattr(name))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match class {
        Ok(class) => PyErr::from_type(class, message),
        Err(e) => {
            PyRuntimeError::new_err(format!("{message} (and fot_mem.exceptions failed: {e})"))
        }
    }
}

/// Converts a core error into its Python exception.
pub fn to_py(py: Python<'_>, err: Error) -> PyErr {
    let name = class_name(&err);
    raise(py, name, err.to_string())
}

/// Runs `f` with the GIL released; errors and panics come back as Python exceptions.
pub fn run<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> crate::Result<T> + Send,
{
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_py(py, e)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(raise(
                py,
                "FotMemError",
                format!("internal error in fot_mem (please report): {what}"),
            ))
        }
    }
}
