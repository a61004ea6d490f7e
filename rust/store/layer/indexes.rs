//! The layer's HNSW span indexes: mapping the files of sealed spans, and the build jobs of spans
//! without one.

use std::path::PathBuf;
use std::sync::Arc;

use super::LayerMemory;
use crate::ann::SpanIndex;
use crate::store::indexer::SpanJob;

impl LayerMemory {
    /// Tokens per indexed span, when the store keeps hnsw indexes.
    pub(super) fn span_tokens(&self) -> Option<u64> {
        self.config.hnsw.as_ref().map(|h| h.span_tokens as u64)
    }

    /// Spans wholly committed (each one is indexed, or queued to be).
    pub fn sealed_spans(&self) -> usize {
        self.span_tokens().map_or(0, |s| (self.count / s) as usize)
    }

    pub(super) fn index_path(&self, span: usize) -> PathBuf {
        self.dir.join(format!("hnsw-{span:06}.idx"))
    }

    /// Temporary files of builds and seals that died (spans are built again, chunks sealed again).
    pub(super) fn remove_partial_indexes(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if (name.starts_with("hnsw-") && !name.ends_with(".idx"))
                    || name.ends_with(".crc.tmp")
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Maps the index files of sealed spans that appeared since the last look. A file that does
    /// not match this layer (or fails its header checks) is left unused: the span is scanned.
    pub fn load_indexes(&mut self) {
        let sealed = self.sealed_spans();
        self.spans.resize(sealed, None);
        let span = self.span_tokens().unwrap_or(0);
        for s in 0..sealed {
            if self.spans[s].is_some() {
                continue;
            }
            let path = self.index_path(s);
            if !path.exists() {
                continue;
            }
            if let Ok(ix) = SpanIndex::open(&path) {
                let cfg = &self.config;
                if ix.first == s as u64 * span
                    && ix.n as u64 == span
                    && ix.heads() == cfg.kv_heads as usize
                    && ix.dim == cfg.head_dim
                {
                    self.spans[s] = Some(Arc::new(ix));
                }
            }
        }
    }

    /// Tokens covered by mapped indexes.
    pub fn indexed_tokens(&self) -> u64 {
        self.spans.iter().flatten().count() as u64 * self.span_tokens().unwrap_or(0)
    }

    /// Jobs for the sealed spans in `spans` that have no usable index file.
    pub fn index_jobs(&mut self, spans: std::ops::Range<usize>) -> Vec<SpanJob> {
        self.load_indexes();
        let (Some(span), true) = (self.span_tokens(), self.commit.is_some()) else {
            return Vec::new();
        };
        let per = (span / self.chunk_tokens()) as usize;
        spans
            .filter(|&s| s < self.spans.len() && self.spans[s].is_none())
            .map(|s| SpanJob {
                path: self.index_path(s),
                first: s as u64 * span,
                chunks: self.chunks[s * per..(s + 1) * per].to_vec(),
                config: Arc::clone(&self.config),
            })
            .collect()
    }
}
