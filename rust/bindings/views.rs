//! Zero-copy numpy views of committed keys (`Store.key_views`): each keeps its chunk mapped.

use pyo3::prelude::*;

use crate::dtype::Dtype;
use crate::store::KeyView;

/// Keeps a chunk mapped while a numpy view of it lives (the view's base object).
#[pyclass(module = "fot_mem._core", frozen)]
pub struct MappedKeys {
    _view: KeyView,
}

pub(super) fn key_view<'py>(
    py: Python<'py>,
    v: KeyView,
    hd: usize,
    dtype: Dtype,
) -> PyResult<Bound<'py, PyAny>> {
    use numpy::ndarray::ArrayView2;
    use numpy::PyArray2;
    let rows = v.rows;
    let holder = Bound::new(py, MappedKeys { _view: v.clone() })?.into_any();
    let bytes = v.bytes(hd * dtype.size());
    let shape_err =
        |e: numpy::ndarray::ShapeError| pyo3::exceptions::PyRuntimeError::new_err(e.to_string());
    // SAFETY: the data lives in a mapping that `holder` (the array's base) keeps alive, and the
    // committed rows it covers are never written again.
    let array = unsafe {
        match dtype {
            Dtype::Float32 => {
                let a = ArrayView2::from_shape((rows, hd), bytemuck::cast_slice::<u8, f32>(bytes))
                    .map_err(shape_err)?;
                PyArray2::borrow_from_array(&a, holder).into_any()
            }
            Dtype::Float16 => {
                let a = ArrayView2::from_shape(
                    (rows, hd),
                    bytemuck::cast_slice::<u8, half::f16>(bytes),
                )
                .map_err(shape_err)?;
                PyArray2::borrow_from_array(&a, holder).into_any()
            }
            Dtype::Bfloat16 => {
                let a = ArrayView2::from_shape((rows, hd), bytemuck::cast_slice::<u8, u16>(bytes))
                    .map_err(shape_err)?;
                PyArray2::borrow_from_array(&a, holder).into_any()
            }
        }
    };
    // The mapping may be read-only: a write through the view must be refused, not fault.
    array.getattr("flags")?.setattr("writeable", false)?;
    Ok(array)
}
