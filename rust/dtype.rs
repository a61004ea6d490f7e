//! Storage element types and the conversions between them. Every element that enters the store is
//! checked to be finite after conversion, so a search never meets NaN or infinity.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How keys and values are stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Float32,
    Float16,
    Bfloat16,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Float32 => 4,
            Dtype::Float16 | Dtype::Bfloat16 => 2,
        }
    }

    /// The name used in the manifest and in Python.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Float32 => "float32",
            Dtype::Float16 => "float16",
            Dtype::Bfloat16 => "bfloat16",
        }
    }

    /// Parses a dtype name as numpy and torch spell it.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "float32" | "f32" | "fp32" => Ok(Dtype::Float32),
            "float16" | "f16" | "fp16" | "half" => Ok(Dtype::Float16),
            "bfloat16" | "bf16" => Ok(Dtype::Bfloat16),
            other => Err(Error::Dtype(format!(
                "unknown storage dtype {other:?}; expected \"float32\", \"float16\" or \"bfloat16\""
            ))),
        }
    }
}

/// A borrowed run of input or stored elements.
#[derive(Clone, Copy, Debug)]
pub enum Elements<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl<'a> Elements<'a> {
    /// Reinterprets stored bytes (aligned for `dtype`) as elements.
    pub fn from_bytes(dtype: Dtype, bytes: &'a [u8]) -> Self {
        match dtype {
            Dtype::Float32 => Elements::F32(bytemuck::cast_slice(bytes)),
            Dtype::Float16 => Elements::F16(bytemuck::cast_slice(bytes)),
            Dtype::Bfloat16 => Elements::Bf16(bytemuck::cast_slice(bytes)),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        match self {
            Elements::F32(_) => Dtype::Float32,
            Elements::F16(_) => Dtype::Float16,
            Elements::Bf16(_) => Dtype::Bfloat16,
        }
    }

    /// The elements' bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Elements::F32(s) => bytemuck::cast_slice(s),
            Elements::F16(s) => bytemuck::cast_slice(s),
            Elements::Bf16(s) => bytemuck::cast_slice(s),
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Elements::F32(s) => s.len(),
            Elements::F16(s) => s.len(),
            Elements::Bf16(s) => s.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements `range`, same type.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Elements<'a> {
        match self {
            Elements::F32(s) => Elements::F32(&s[range]),
            Elements::F16(s) => Elements::F16(&s[range]),
            Elements::Bf16(s) => Elements::Bf16(&s[range]),
        }
    }

    /// Widens the elements into `out` (same length).
    pub fn to_f32(&self, out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.len());
        match self {
            Elements::F32(s) => out.copy_from_slice(s),
            // `half`'s slice conversions use F16C / SIMD where the CPU has them.
            Elements::F16(s) => s.convert_to_f32_slice(out),
            Elements::Bf16(s) => s.convert_to_f32_slice(out),
        }
    }

    /// Converts the elements into `dtype`, written to `out` (bytes, `len * dtype.size()` long).
    /// Fails, naming the first bad element (its flat index in the caller's array is `base + i`),
    /// if a value is NaN, infinite, or overflows `dtype`.
    pub fn encode_into(&self, dtype: Dtype, out: &mut [u8], what: &str, base: usize) -> Result<()> {
        debug_assert_eq!(out.len(), self.len() * dtype.size());
        // Convert whole runs (SIMD where `half` has it), then look for non-finite results: a
        // stored value is finite exactly when the input was finite and in range.
        let bad = match dtype {
            Dtype::Float32 => {
                let out: &mut [f32] = bytemuck::cast_slice_mut(out);
                match self {
                    Elements::F32(s) => out.copy_from_slice(s),
                    other => other.to_f32(out),
                }
                out.iter().position(|v| !v.is_finite())
            }
            Dtype::Float16 => {
                let out: &mut [f16] = bytemuck::cast_slice_mut(out);
                match self {
                    Elements::F32(s) => out.convert_from_f32_slice(s),
                    Elements::F16(s) => out.copy_from_slice(s),
                    Elements::Bf16(s) => out
                        .iter_mut()
                        .zip(s.iter())
                        .for_each(|(o, x)| *o = f16::from_f32(x.to_f32())),
                }
                out.iter().position(|v| !v.is_finite())
            }
            Dtype::Bfloat16 => {
                let out: &mut [bf16] = bytemuck::cast_slice_mut(out);
                match self {
                    Elements::F32(s) => out.convert_from_f32_slice(s),
                    Elements::Bf16(s) => out.copy_from_slice(s),
                    Elements::F16(s) => out
                        .iter_mut()
                        .zip(s.iter())
                        .for_each(|(o, x)| *o = bf16::from_f32(x.to_f32())),
                }
                out.iter().position(|v| !v.is_finite())
            }
        };
        match bad {
            None => Ok(()),
            Some(i) => {
                let v = self.get(i);
                let at = base + i;
                Err(Error::Value(if v.is_finite() {
                    format!(
                        "{what} contain {v} at flat index {at}, outside the range of {}",
                        dtype.name()
                    )
                } else {
                    format!("{what} contain {v} at flat index {at}")
                }))
            }
        }
    }

    /// Fails exactly when `encode_into(dtype, ...)` would, without writing anything.
    pub fn check_storable(&self, dtype: Dtype, what: &str) -> Result<()> {
        const RUN: usize = 4096;
        let mut scratch = vec![0u8; RUN.min(self.len()) * dtype.size()];
        for start in (0..self.len()).step_by(RUN) {
            let run = self.slice(start..(start + RUN).min(self.len()));
            run.encode_into(dtype, &mut scratch[..run.len() * dtype.size()], what, start)?;
        }
        Ok(())
    }

    /// Element `i` as f32.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Elements::F32(s) => s[i],
            Elements::F16(s) => s[i].to_f32(),
            Elements::Bf16(s) => s[i].to_f32(),
        }
    }

    /// Checks that every element is finite, naming the first that is not.
    pub fn check_finite(&self, what: &str) -> Result<()> {
        for i in 0..self.len() {
            let v = self.get(i);
            if !v.is_finite() {
                return Err(Error::Value(format!(
                    "{what} contain {v} at flat index {i}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_rounds_and_rejects_overflow() {
        let input = [1.0f32, -2.5, 70000.0];
        let mut out = vec![0u8; 3 * 2];
        let err = Elements::F32(&input)
            .encode_into(Dtype::Float16, &mut out, "keys", 0)
            .unwrap_err();
        assert!(err.to_string().contains("70000"), "{err}");
        let mut out = vec![0u8; 3 * 2];
        Elements::F32(&input)
            .encode_into(Dtype::Bfloat16, &mut out, "keys", 0)
            .unwrap();
        let back = Elements::from_bytes(Dtype::Bfloat16, &out);
        assert_eq!(back.get(0), 1.0);
        assert_eq!(back.get(1), -2.5);
        assert_eq!(back.get(2), 70144.0); // nearest bf16
    }

    #[test]
    fn encode_rejects_nan() {
        let input = [0.0f32, f32::NAN];
        let mut out = vec![0u8; 8];
        let err = Elements::F32(&input)
            .encode_into(Dtype::Float32, &mut out, "values", 0)
            .unwrap_err();
        assert!(err.to_string().contains("flat index 1"), "{err}");
    }
}
