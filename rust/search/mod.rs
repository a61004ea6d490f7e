//! Top-k inner-product search over document-layers. A search takes queries `[q, heads, dim]` per
//! batch slot and returns, per query and head, the k best token ids (positions in the document)
//! with their scores, best first; `-1` / `-inf` pad when a document holds fewer than k tokens.
//! Query head `h` searches kv head `h / (heads / kv_heads)` (grouped-query attention).

mod exact;
#[cfg(target_arch = "x86_64")]
mod fast;
mod hnsw;
mod portable;
mod stats;
mod topk;

pub use crate::simd::{cpu_model, has_avx512_bf16, has_avx512_vnni};
pub use exact::{kernel, kernel_features, kernel_name, search_with, ExactKernel};
pub use stats::{stats, ExactStats};
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

/// A sealed span of keys with an HNSW graph: searched through the graph instead of scanned.
pub struct IndexedSpan<'a> {
    pub first_id: u64,
    pub graph: crate::ann::GraphRef<'a>,
    pub rows: crate::ann::SpanRows<'a>,
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
    /// The spans of `kv_head` that have graphs (none by default), in token order.
    fn indexed(&self, _kv_head: usize) -> Vec<IndexedSpan<'_>> {
        Vec::new()
    }
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
        // The output (f32 scores and i64 ids) and, as much again, the top-k lists behind it.
        let bytes = crate::budget::product(&[self.batch, self.q, self.heads, self.k, 24]);
        crate::budget::check(bytes, || {
            format!(
                "a search of [{} x {} queries x {} heads] with k = {} ({} result entries)",
                self.batch,
                self.q,
                self.heads,
                self.k,
                crate::budget::product(&[self.batch, self.q, self.heads, self.k])
                    .map_or("too many".into(), |n| n.to_string())
            )
        })
    }

    /// Query heads per kv head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Entries in each output array.
    pub fn out_len(&self) -> usize {
        self.batch * self.q * self.heads * self.k
    }

    /// The flat index (in vectors) of query row `r` of kv head `kv_head` in batch slot `slot`.
    /// A kv head's rows are its queries times the heads of its group: row `r` is query
    /// `r / group` at head `kv_head * group + r % group`.
    pub fn row_index(&self, slot: usize, kv_head: usize, r: usize) -> usize {
        let group = self.group();
        (slot * self.q + r / group) * self.heads + kv_head * group + r % group
    }

    /// Query rows `rows` of (slot, kv head), gathered into one row-major `[m, dim]` matrix.
    pub fn gather_rows(
        &self,
        queries: &[f32],
        slot: usize,
        kv_head: usize,
        rows: std::ops::Range<usize>,
    ) -> Vec<f32> {
        let dim = self.dim;
        let mut out = Vec::with_capacity(rows.len() * dim);
        for r in rows {
            let from = self.row_index(slot, kv_head, r) * dim;
            out.extend_from_slice(&queries[from..from + dim]);
        }
        out
    }
}

/// Scores and ids, `[batch, q, heads, k]`, best first.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchResult {
    pub scores: Vec<f32>,
    pub ids: Vec<i64>,
}

impl SearchResult {
    /// All padding: ids -1, scores -inf.
    pub fn padding(shape: &SearchShape) -> Self {
        SearchResult {
            scores: vec![f32::NEG_INFINITY; shape.out_len()],
            ids: vec![-1; shape.out_len()],
        }
    }

    /// Writes the best entries of query row `r` of (slot, kv head), best first.
    pub fn set_row(
        &mut self,
        shape: &SearchShape,
        slot: usize,
        kv_head: usize,
        r: usize,
        best: impl IntoIterator<Item = (f32, i64)>,
    ) {
        let base = shape.row_index(slot, kv_head, r) * shape.k;
        for (j, (s, id)) in best.into_iter().take(shape.k).enumerate() {
            self.scores[base + j] = s;
            self.ids[base + j] = id;
        }
    }
}

/// The search implementations, chosen by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Brute force: every key scored, exact top-k. The oracle for every other backend.
    Exact,
    /// HNSW graphs over sealed spans (searched with `ef` candidates), exact scans elsewhere.
    Hnsw { ef: usize },
}

impl Backend {
    /// Parses a backend name; `ef` is the hnsw search width.
    pub fn parse(name: &str, ef: usize) -> Result<Self> {
        match name {
            "exact" => Ok(Backend::Exact),
            "hnsw" => Ok(Backend::Hnsw { ef }),
            other => Err(Error::Value(format!(
                "unknown search backend {other:?}; this build has \"exact\" and \"hnsw\""
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
            Backend::Hnsw { ef } => Ok(hnsw::search(sources, queries, shape, ef)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_too_big_for_the_machine_is_refused_before_it_allocates() {
        let shape = SearchShape {
            batch: 1,
            q: 4096,
            heads: 256,
            kv_heads: 1,
            dim: 4,
            k: 65536,
        };
        let e = shape.validate().unwrap_err().to_string();
        assert!(
            e.contains("k = 65536 (68719476736 result entries) needs 1536.0 GiB"),
            "{e}"
        );
        assert!(SearchShape { q: 4, ..shape }.validate().is_ok());
    }
}
