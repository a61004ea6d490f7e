//! Top-k inner-product search over document-layers. A search takes queries `[q, heads, dim]` per
//! batch slot and returns, per query and head, the k best token ids (positions in the document)
//! with their scores, best first; `-1` / `-inf` pad when a document holds fewer than k tokens.
//! Query head `h` searches kv head `h / (heads / kv_heads)` (grouped-query attention).

mod exact;
#[cfg(target_arch = "x86_64")]
mod fast;
mod portable;
mod topk;

pub use exact::{
    has_avx512_bf16, kernel, kernel_name, search_with, stats, ExactKernel, ExactStats,
};
pub use topk::TopK;

use crate::dtype::Elements;
use crate::error::{Error, Result};

/// The largest k a search accepts (the output is `q * heads * k` entries).
pub const MAX_K: usize = 1 << 16;

/// A contiguous run of one kv head's keys, `[rows, dim]`, whose first row is token `first_id`.
#[derive(Clone, Copy, Debug)]
pub struct KeyBlock<'a> {
    pub first_id: u64,
    pub keys: Elements<'a>,
}

/// Anything whose keys can be searched: a document-layer of the store, or keys in memory.
pub trait KeySource: Sync {
    /// Number of tokens.
    fn len(&self) -> u64;
    /// True when there are no tokens.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The keys of `kv_head`, as blocks in ascending token order covering `0..len()`.
    fn blocks(&self, kv_head: usize) -> Vec<KeyBlock<'_>>;
    /// The key of token `id` (< `len()`) of `kv_head`, `dim` elements.
    fn row(&self, kv_head: usize, id: u64) -> Elements<'_>;
}

/// Queries for one search, flat `[batch, q, heads, dim]`.
#[derive(Clone, Copy, Debug)]
pub struct Queries<'a> {
    pub data: &'a [f32],
    pub q: usize,
    pub heads: usize,
}

/// The shape of a search: `batch` slots of `queries [q, heads, dim]` against `kv_heads` heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchShape {
    pub batch: usize,
    pub q: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub dim: usize,
    pub k: usize,
}

impl SearchShape {
    /// Checks the numbers that do not depend on data.
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 || self.k > MAX_K {
            return Err(Error::Value(format!(
                "k must be between 1 and {MAX_K}, got {}",
                self.k
            )));
        }
        if self.heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::Shape(format!(
                "queries have {} heads, which is not a positive multiple of the store's {} kv_heads",
                self.heads, self.kv_heads
            )));
        }
        Ok(())
    }

    /// Query heads per kv head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Entries in each output array.
    pub fn out_len(&self) -> usize {
        self.batch * self.q * self.heads * self.k
    }
}

/// Scores and ids, `[batch, q, heads, k]`, best first.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchResult {
    pub scores: Vec<f32>,
    pub ids: Vec<i64>,
}

/// The search implementations, chosen by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Brute force: every key scored, exact top-k. The oracle for every other backend.
    Exact,
}

impl Backend {
    /// Parses a backend name.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "exact" => Ok(Backend::Exact),
            other => Err(Error::Value(format!(
                "unknown search backend {other:?}; this build has \"exact\""
            ))),
        }
    }

    /// Searches `sources` (one per batch slot; `None` is an empty document) with `queries`,
    /// flat `[batch, q, heads, dim]`.
    pub fn search(
        self,
        sources: &[Option<&dyn KeySource>],
        queries: &[f32],
        shape: SearchShape,
    ) -> Result<SearchResult> {
        shape.validate()?;
        if sources.len() != shape.batch
            || queries.len() != shape.batch * shape.q * shape.heads * shape.dim
        {
            return Err(Error::Shape(format!(
                "{} sources and {} query elements do not match the shape {shape:?}",
                sources.len(),
                queries.len()
            )));
        }
        Elements::F32(queries).check_finite("queries")?;
        match self {
            Backend::Exact => Ok(exact::search(sources, queries, shape)),
        }
    }
}
