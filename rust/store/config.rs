//! The shape of every token a store holds. Fixed at creation, validated on every open and append.

use serde::{Deserialize, Serialize};

use crate::dtype::Dtype;
use crate::error::{Error, Result};

/// Tokens per chunk file when the caller does not say.
pub const DEFAULT_CHUNK_TOKENS: u32 = 4096;

/// The store-wide configuration, written into the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// Indices of the model's memory layers, sorted and unique.
    pub layers: Vec<u32>,
    /// Key/value heads per token.
    pub kv_heads: u32,
    /// Dimension of one key head.
    pub head_dim: u32,
    /// Dimension of one value head.
    pub value_dim: u32,
    /// Storage element type of keys and values.
    pub dtype: Dtype,
    /// Tokens per chunk file.
    pub chunk_tokens: u32,
}

impl StoreConfig {
    /// A configuration with `value_dim = head_dim` and the default chunk size.
    pub fn new(layers: Vec<u32>, kv_heads: u32, head_dim: u32, dtype: Dtype) -> Self {
        StoreConfig {
            layers,
            kv_heads,
            head_dim,
            value_dim: head_dim,
            dtype,
            chunk_tokens: DEFAULT_CHUNK_TOKENS,
        }
    }

    /// Checks every number, naming the first one that is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.layers.is_empty() {
            return Err(Error::Value(
                "a store needs at least one memory layer".into(),
            ));
        }
        let mut sorted = self.layers.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted != self.layers {
            return Err(Error::Value(format!(
                "memory layers must be sorted and unique, got {:?}",
                self.layers
            )));
        }
        for (name, v) in [
            ("kv_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("value_dim", self.value_dim),
            ("chunk_tokens", self.chunk_tokens),
        ] {
            if v == 0 {
                return Err(Error::Value(format!("{name} must be positive, got 0")));
            }
        }
        if self.kv_heads > 4096 || self.head_dim > 65536 || self.value_dim > 65536 {
            return Err(Error::Value(format!(
                "kv_heads {} / head_dim {} / value_dim {} are beyond what a model uses",
                self.kv_heads, self.head_dim, self.value_dim
            )));
        }
        let chunk_bytes = self.chunk_bytes(self.head_dim.max(self.value_dim));
        if chunk_bytes > (1u64 << 34) {
            return Err(Error::Value(format!(
                "chunk_tokens {} makes chunk files of {chunk_bytes} bytes; keep them under 16 GiB",
                self.chunk_tokens
            )));
        }
        Ok(())
    }

    /// Fails with `UnknownLayer` unless `layer` is a memory layer.
    pub fn check_layer(&self, layer: u32) -> Result<()> {
        if self.layers.binary_search(&layer).is_ok() {
            Ok(())
        } else {
            Err(Error::UnknownLayer {
                layer: layer.into(),
                layers: self.layers.clone(),
            })
        }
    }

    /// Bytes of one chunk file whose rows have `dim` elements.
    pub fn chunk_bytes(&self, dim: u32) -> u64 {
        self.kv_heads as u64 * self.chunk_tokens as u64 * dim as u64 * self.dtype.size() as u64
    }

    /// Bytes one token occupies on disk (keys and values).
    pub fn token_bytes(&self) -> u64 {
        self.kv_heads as u64 * (self.head_dim + self.value_dim) as u64 * self.dtype.size() as u64
    }
}
