//! The one conversion path between numpy arrays and the core. Inputs are copied out of numpy while
//! the GIL is held (another Python thread could write to them once it is released); outputs are
//! handed to numpy without a copy.

use half::{bf16, f16};
use numpy::{PyArray, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::errors::to_py;
use crate::dtype::Elements;
use crate::error::Error;

/// An owned input array: its elements and shape.
pub enum Owned {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

/// An input array copied out of numpy.
pub struct Input {
    pub data: Owned,
    pub shape: Vec<usize>,
}

impl Input {
    /// The elements, borrowed.
    pub fn elements(&self) -> Elements<'_> {
        match &self.data {
            Owned::F32(v) => Elements::F32(v),
            Owned::F16(v) => Elements::F16(v),
            Owned::Bf16(v) => Elements::Bf16(v),
        }
    }

    /// The elements as f32 (queries are always scored in f32).
    pub fn into_f32(self) -> Vec<f32> {
        if let Owned::F32(v) = self.data {
            return v;
        }
        let e = self.elements();
        let mut out = vec![0f32; e.len()];
        e.to_f32(&mut out);
        out
    }
}

fn copy<T: numpy::Element + Copy>(a: &Bound<'_, PyArrayDyn<T>>) -> PyResult<Vec<T>> {
    let ro = a.try_readonly()?;
    Ok(match ro.as_slice() {
        Ok(s) => s.to_vec(),
        Err(_) => ro.as_array().iter().copied().collect(),
    })
}

/// Copies a float array: float32, float16, or uint16 holding bfloat16 bit patterns (the Python
/// layer turns torch/ml_dtypes bfloat16 into that form). `ndim` is checked; `what` names it.
pub fn input(obj: &Bound<'_, PyAny>, what: &str, ndim: usize) -> PyResult<Input> {
    let py = obj.py();
    let untyped = obj.cast::<PyUntypedArray>().map_err(|_| {
        super::errors::to_py(
            py,
            Error::Dtype(format!(
                "{what} must be a numpy array, got {}",
                obj.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            )),
        )
    })?;
    if untyped.ndim() != ndim {
        return Err(super::errors::to_py(
            py,
            Error::Shape(format!(
                "{what} must have {ndim} dimensions, got shape {:?}",
                untyped.shape()
            )),
        ));
    }
    let shape = untyped.shape().to_vec();
    let data = if let Ok(a) = obj.cast::<PyArrayDyn<f32>>() {
        Owned::F32(copy(a)?)
    } else if let Ok(a) = obj.cast::<PyArrayDyn<f16>>() {
        Owned::F16(copy(a)?)
    } else if let Ok(a) = obj.cast::<PyArrayDyn<u16>>() {
        Owned::Bf16(copy(a)?.into_iter().map(bf16::from_bits).collect())
    } else {
        return Err(super::errors::to_py(
            py,
            Error::Dtype(format!(
                "{what} have dtype {}; expected float32, float16 or bfloat16",
                untyped.dtype()
            )),
        ));
    };
    Ok(Input { data, shape })
}

/// Copies an int64 array of `ndim` dimensions.
pub fn input_i64(
    obj: &Bound<'_, PyAny>,
    what: &str,
    ndim: usize,
) -> PyResult<(Vec<i64>, Vec<usize>)> {
    let py = obj.py();
    let a = obj.cast::<PyArrayDyn<i64>>().map_err(|_| {
        super::errors::to_py(
            py,
            Error::Dtype(format!("{what} must be a numpy int64 array")),
        )
    })?;
    if a.ndim() != ndim {
        return Err(super::errors::to_py(
            py,
            Error::Shape(format!(
                "{what} must have {ndim} dimensions, got shape {:?}",
                a.shape()
            )),
        ));
    }
    Ok((copy(a)?, a.shape().to_vec()))
}

/// Hands a vector to numpy as an array of `shape`, without copying.
pub fn output<'py, T: numpy::Element>(
    py: Python<'py>,
    data: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    PyArray::from_vec(py, data).reshape(shape)
}

/// Fails with a shape error unless `shape[axis]` (the `name` of the array `what`) is `want`.
pub fn check_dim(
    py: Python<'_>,
    what: &str,
    shape: &[usize],
    axis: usize,
    name: &str,
    want: u32,
) -> PyResult<()> {
    if shape[axis] != want as usize {
        return Err(to_py(
            py,
            Error::Shape(format!(
                "{what} have {name} {} (shape {shape:?}), the store was created with {want}",
                shape[axis]
            )),
        ));
    }
    Ok(())
}
