//! The shape of every token a store holds. Fixed at creation, validated on every open and append.

use serde::{Deserialize, Serialize};

use crate::dtype::Dtype;
use crate::error::{Error, Result};

/// Tokens per chunk file when the caller does not say.
pub const DEFAULT_CHUNK_TOKENS: u32 = 4096;

/// HNSW indexing of sealed spans (`backend="hnsw"`), fixed at creation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswConfig {
    /// Links per node (2m on level 0).
    pub m: u32,
    /// Candidates searched per insertion while building.
    pub ef_construction: u32,
    /// Candidates searched per query when the search does not say.
    pub ef_search: u32,
    /// Tokens per indexed span (a multiple of `chunk_tokens`): a span gets its graphs once full.
    pub span_tokens: u32,
    /// How the graph links keys: "hybrid" (default), "reduction", "angular" or "ip".
    pub linking: String,
}

impl HnswConfig {
    /// The defaults, with spans of about 64k tokens rounded up to whole chunks.
    pub fn new(chunk_tokens: u32) -> Self {
        HnswConfig {
            m: 16,
            ef_construction: 100,
            ef_search: 128,
            span_tokens: 65_536u32
                .div_ceil(chunk_tokens)
                .max(1)
                .saturating_mul(chunk_tokens),
            linking: "hybrid".into(),
        }
    }

    fn validate(&self, chunk_tokens: u32) -> Result<()> {
        let bad = |what: String| Err(Error::Value(what));
        if !(2..=256).contains(&self.m) {
            return bad(format!("hnsw m must be between 2 and 256, got {}", self.m));
        }
        for (name, v) in [
            ("ef_construction", self.ef_construction),
            ("ef_search", self.ef_search),
        ] {
            if !(1..=65_536).contains(&v) {
                return bad(format!("hnsw {name} must be between 1 and 65536, got {v}"));
            }
        }
        if self.span_tokens == 0
            || !self.span_tokens.is_multiple_of(chunk_tokens)
            || self.span_tokens > 1 << 26
        {
            return bad(format!(
                "hnsw span_tokens must be a positive multiple of chunk_tokens ({chunk_tokens}) up to 2^26, got {}",
                self.span_tokens
            ));
        }
        if crate::ann::Linking::parse(&self.linking).is_none() {
            return bad(format!(
                "hnsw linking must be \"hybrid\", \"reduction\", \"angular\" or \"ip\", got {:?}",
                self.linking
            ));
        }
        Ok(())
    }

    /// The graph-building parameters.
    pub fn build_params(&self) -> crate::ann::BuildParams {
        crate::ann::BuildParams {
            m: self.m as usize,
            ef_construction: self.ef_construction as usize,
            linking: crate::ann::Linking::parse(&self.linking).unwrap_or_default(),
            seed: 0x0f07_6e3d,
        }
    }
}

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
    /// HNSW indexes of sealed spans; `None` when the store keeps none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hnsw: Option<HnswConfig>,
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
            hnsw: None,
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
        if let Some(h) = &self.hnsw {
            h.validate(self.chunk_tokens)?;
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
