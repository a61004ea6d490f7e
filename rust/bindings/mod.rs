//! The Python extension module `fot_mem._core`: the only code in the crate that knows Python.
//! Every call goes through `errors::run`, which releases the GIL, turns panics into exceptions and
//! maps core errors onto `fot_mem.exceptions`.

mod arrays;
mod errors;
mod hnsw;
mod hnswlib;
mod search;
mod store;
mod verify;
mod views;

use pyo3::prelude::*;

/// Panics inside the GIL helper, exactly as a bug in the core would; tests use it to prove that a
/// panic reaches Python as `FotMemError` and the interpreter lives on.
#[pyfunction]
fn _panic_for_tests(py: Python<'_>, message: String) -> PyResult<()> {
    errors::run(py, move || -> crate::Result<()> { panic!("{message}") })
}

/// Which exact kernel this process uses, the CPU features it uses, the CPU (brand, family,
/// model), and its counters (rows searched, rows that needed the f32 fallback to stay exact).
#[pyfunction]
fn exact_kernel_info(py: Python<'_>) -> PyResult<Bound<'_, pyo3::types::PyDict>> {
    let d = pyo3::types::PyDict::new(py);
    let s = crate::search::stats();
    d.set_item("kernel", crate::search::kernel_name())?;
    d.set_item("rows", s.rows)?;
    d.set_item("fallback_rows", s.fallback_rows)?;
    d.set_item("features", crate::search::kernel_features().to_vec())?;
    d.set_item("cpu", crate::search::cpu_model())?;
    Ok(d)
}

/// Raises AllocationError when `nbytes` (None: beyond 2^64) is more than this machine has
/// available; `what` names the request (the Python search backends call it before allocating).
#[pyfunction]
#[pyo3(signature = (nbytes, what))]
fn check_allocation(py: Python<'_>, nbytes: Option<u64>, what: String) -> PyResult<()> {
    errors::run(py, move || crate::budget::check(nbytes, || what))
}

#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<store::Store>()?;
    m.add_class::<views::MappedKeys>()?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    m.add_function(wrap_pyfunction!(exact_kernel_info, m)?)?;
    m.add_function(wrap_pyfunction!(check_allocation, m)?)?;
    m.add_function(wrap_pyfunction!(verify::verify_store, m)?)?;
    m.add_function(wrap_pyfunction!(hnswlib::hnswlib_seal, m)?)?;
    m.add_function(wrap_pyfunction!(hnswlib::hnswlib_check, m)?)?;
    m.add("FORMAT_VERSION", crate::store::FORMAT_VERSION)?;
    m.add("DEFAULT_CHUNK_TOKENS", crate::store::DEFAULT_CHUNK_TOKENS)?;
    m.add("MAX_K", crate::search::MAX_K)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
