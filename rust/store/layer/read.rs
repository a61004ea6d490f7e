//! Reading a layer's committed tokens: copies, zero-copy views, and the key blocks and graph
//! spans that searches read.

use std::sync::Arc;

use super::LayerMemory;
use crate::ann::SpanRows;
use crate::dtype::Elements;
use crate::search::{IndexedSpan, KeyBlock, KeySource};
use crate::store::chunk::{Chunk, ChunkFile, KeyView, Part};

impl LayerMemory {
    /// Copies the key and value of token `pos` of kv head `head`, widened to f32, into the outputs.
    pub fn read_token(&self, head: usize, pos: u64, key: &mut [f32], value: &mut [f32]) {
        let cfg = &self.config;
        self.token_row(|c| &c.keys, cfg.head_dim, head, pos)
            .to_f32(key);
        self.token_row(|c| &c.values, cfg.value_dim, head, pos)
            .to_f32(value);
    }

    /// Row `pos` of kv head `head` in the keys or values files (`file` picks which).
    pub(super) fn token_row(
        &self,
        file: impl Fn(&Chunk) -> &ChunkFile,
        dim: u32,
        head: usize,
        pos: u64,
    ) -> Elements<'_> {
        let cfg = &self.config;
        let ct = cfg.chunk_tokens as usize;
        let row = dim as usize * cfg.dtype.size();
        let (c, s) = ((pos as usize) / ct, (pos as usize) % ct);
        Elements::from_bytes(
            cfg.dtype,
            file(&self.chunks[c]).range((head * ct + s) * row, row),
        )
    }

    /// Per chunk holding committed tokens: its index, first token and committed rows.
    pub(super) fn committed_runs(&self) -> impl Iterator<Item = (usize, u64, usize)> + '_ {
        let ct = self.config.chunk_tokens as usize;
        let count = self.count as usize;
        (0..count.div_ceil(ct)).map(move |c| (c, (c * ct) as u64, (count - c * ct).min(ct)))
    }

    /// Byte offset of kv head `head`'s rows in a keys (or values, `part`) file, and the bytes of
    /// one row.
    pub(super) fn head_offset(&self, head: usize, part: Part) -> (usize, usize) {
        let cfg = &self.config;
        let row = part.dim(cfg) * cfg.dtype.size();
        (head * cfg.chunk_tokens as usize * row, row)
    }

    /// Zero-copy views of the committed keys (or values, `part`) of `kv_head`, one per chunk,
    /// in token order.
    pub fn views(&self, kv_head: usize, part: Part) -> Vec<KeyView> {
        let (offset, _) = self.head_offset(kv_head, part);
        self.committed_runs()
            .map(|(c, first_id, rows)| KeyView {
                first_id,
                rows,
                chunk: Arc::clone(&self.chunks[c]),
                offset,
                part,
            })
            .collect()
    }
}

impl KeySource for LayerMemory {
    fn len(&self) -> u64 {
        self.count
    }

    fn row(&self, kv_head: usize, id: u64) -> Elements<'_> {
        self.token_row(|c| &c.keys, self.config.head_dim, kv_head, id)
    }

    fn indexed(&self, kv_head: usize) -> Vec<IndexedSpan<'_>> {
        let Some(span) = self.span_tokens() else {
            return Vec::new();
        };
        let blocks = self.blocks(kv_head);
        let per = (span / self.chunk_tokens()) as usize;
        let dim = self.config.head_dim as usize;
        self.spans
            .iter()
            .enumerate()
            .filter_map(|(s, ix)| {
                let ix = ix.as_ref()?;
                let runs: Vec<Elements> = blocks[s * per..(s + 1) * per]
                    .iter()
                    .map(|b| b.keys)
                    .collect();
                Some(IndexedSpan {
                    first_id: s as u64 * span,
                    graph: ix.graph(kv_head),
                    rows: SpanRows::new(&runs, dim, self.config.chunk_tokens as usize),
                })
            })
            .collect()
    }

    fn blocks(&self, kv_head: usize) -> Vec<KeyBlock<'_>> {
        let (offset, row) = self.head_offset(kv_head, Part::Keys);
        self.committed_runs()
            .map(|(c, first_id, rows)| KeyBlock {
                first_id,
                keys: Elements::from_bytes(
                    self.config.dtype,
                    self.chunks[c].keys.range(offset, rows * row),
                ),
            })
            .collect()
    }
}
