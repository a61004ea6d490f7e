//! `fot_mem._core.hnswlib_seal` / `hnswlib_check`: the seal and the structural check that stand
//! between a cached hnswlib index file and hnswlib (see `crate::ann::hnswlib`).

use std::path::PathBuf;

use pyo3::prelude::*;

use super::errors::run;
use crate::ann::hnswlib::{check_sealed, write_seal, Params};
use crate::error::Error;

fn params(start: u64, count: u64, dim: u32, m: u32, ef_construction: u32) -> Params {
    Params {
        start,
        count,
        dim,
        m,
        ef_construction,
    }
}

/// Checks the index file `bin` and writes its seal `seal`; StoreCorruptError if hnswlib wrote
/// something the check refuses.
#[pyfunction]
#[allow(clippy::too_many_arguments)] // the parameters of one index, as Python passes them
pub fn hnswlib_seal(
    py: Python<'_>,
    bin: PathBuf,
    seal: PathBuf,
    start: u64,
    count: u64,
    dim: u32,
    m: u32,
    ef_construction: u32,
) -> PyResult<()> {
    let p = params(start, count, dim, m, ef_construction);
    run(py, move || write_seal(&bin, &seal, &p))
}

/// True when `bin` (which may be a `/proc/self/fd/N` path, so that what is checked is what
/// hnswlib then opens) is whole by its seal `seal` and hnswlib's structure, and was built with
/// these parameters; False when it is whole but built with others; StoreCorruptError when it is
/// damaged.
#[pyfunction]
#[allow(clippy::too_many_arguments)] // the parameters of one index, as Python passes them
pub fn hnswlib_check(
    py: Python<'_>,
    bin: PathBuf,
    seal: PathBuf,
    start: u64,
    count: u64,
    dim: u32,
    m: u32,
    ef_construction: u32,
) -> PyResult<bool> {
    let p = params(start, count, dim, m, ef_construction);
    run(py, move || {
        check_sealed(&bin, &seal, true)
            .map(|s| s.params == p)
            .map_err(Error::Corrupt)
    })
}
