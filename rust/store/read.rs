//! The read side of the store: search, gather, token ranges and zero-copy key views. Each call
//! opens (or, for read-only handles, refreshes) the layers it touches, then reads only committed
//! tokens.

use rayon::prelude::*;

use super::{KeyView, LayerMemory, MemoryStore, Part};
use crate::error::{Error, Result};
use crate::search::{Backend, KeySource, Queries, SearchResult, SearchShape};

impl MemoryStore {
    /// Top-k search of `docs[b]` with `queries` flat `[batch = docs.len(), q, heads, head_dim]`.
    pub fn search(
        &mut self,
        docs: &[&str],
        layer: u32,
        queries: Queries,
        k: usize,
        backend: Backend,
    ) -> Result<SearchResult> {
        let shape = SearchShape {
            batch: docs.len(),
            q: queries.q,
            heads: queries.heads,
            kv_heads: self.config.kv_heads as usize,
            dim: self.config.head_dim as usize,
            k,
        };
        shape.validate()?;
        if matches!(backend, Backend::Hnsw { .. }) && self.config.hnsw.is_none() {
            return Err(Error::Value(format!(
                "backend \"hnsw\" needs a store created with hnsw indexes; {} has none",
                self.root.display()
            )));
        }
        for doc in docs {
            if let Some(l) = self.layer(doc, layer)? {
                if matches!(backend, Backend::Hnsw { .. }) {
                    l.load_indexes();
                }
            }
        }
        let sources: Vec<Option<&dyn KeySource>> = docs
            .iter()
            .map(|d| {
                self.open
                    .get(&(d.to_string(), layer))
                    .map(|l| l as &dyn KeySource)
            })
            .collect();
        backend.search(&sources, queries.data, shape)
    }

    /// Keys and values (widened to f32) of the tokens `ids`, flat `[q, heads, k]` (`heads` and `k`
    /// are its last two dimensions): outputs are `[q, heads, k, head_dim]` and
    /// `[q, heads, k, value_dim]`; id -1 gives zeros.
    pub fn gather(
        &mut self,
        doc: &str,
        layer: u32,
        ids: &[i64],
        heads: usize,
        k: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (kvh, hd, vd) = (
            self.config.kv_heads as usize,
            self.config.head_dim as usize,
            self.config.value_dim as usize,
        );
        if heads == 0 || !heads.is_multiple_of(kvh) {
            return Err(Error::Shape(format!(
                "ids have {heads} heads, which is not a positive multiple of the store's {kvh} kv_heads"
            )));
        }
        if !ids.len().is_multiple_of(heads * k.max(1)) || (k == 0 && !ids.is_empty()) {
            return Err(Error::Shape(format!(
                "{} ids are not a whole number of [heads {heads}, k {k}] blocks",
                ids.len()
            )));
        }
        crate::budget::check(crate::budget::product(&[ids.len(), hd + vd, 4]), || {
            format!("gathering {} ids ({} floats each)", ids.len(), hd + vd)
        })?;
        let group = heads / kvh;
        let layer_mem = self.layer(doc, layer)?;
        let len = layer_mem.as_ref().map_or(0, |l| l.len());
        if let Some(bad) = ids.iter().find(|&&i| i < -1 || i >= len as i64) {
            return Err(Error::Index(format!(
                "token id {bad} is out of range: document {doc:?} layer {layer} holds {len} tokens \
                 (ids run 0..{len}, -1 marks padding)"
            )));
        }
        let mut keys = vec![0f32; ids.len() * hd];
        let mut values = vec![0f32; ids.len() * vd];
        if let Some(l) = layer_mem {
            let l: &LayerMemory = l;
            keys.par_chunks_mut(hd.max(1) * 1024)
                .zip(values.par_chunks_mut(vd.max(1) * 1024))
                .enumerate()
                .for_each(|(c, (kout, vout))| {
                    for j in 0..kout.len() / hd {
                        let flat = c * 1024 + j;
                        let id = ids[flat];
                        if id >= 0 {
                            let h = (flat / k.max(1)) % heads;
                            l.read_token(
                                h / group,
                                id as u64,
                                &mut kout[j * hd..(j + 1) * hd],
                                &mut vout[j * vd..(j + 1) * vd],
                            );
                        }
                    }
                });
        }
        Ok((keys, values))
    }

    /// Zero-copy views of the committed keys (or values, `part`) of one kv head of a
    /// document-layer, one per chunk, each keeping its chunk mapped while it lives (empty for a
    /// document that does not exist).
    pub fn views(
        &mut self,
        doc: &str,
        layer: u32,
        kv_head: usize,
        part: Part,
    ) -> Result<Vec<KeyView>> {
        let kvh = self.config.kv_heads as usize;
        if kv_head >= kvh {
            return Err(Error::Index(format!(
                "kv head {kv_head} does not exist: the store has {kvh} kv_heads"
            )));
        }
        Ok(self
            .layer(doc, layer)?
            .map_or_else(Vec::new, |l| l.views(kv_head, part)))
    }

    /// `views` of the keys.
    pub fn key_views(&mut self, doc: &str, layer: u32, kv_head: usize) -> Result<Vec<KeyView>> {
        self.views(doc, layer, kv_head, Part::Keys)
    }

    /// Keys and values of tokens `start..stop`, widened to f32: `[tokens, kv_heads, head_dim]`
    /// and `[tokens, kv_heads, value_dim]`.
    pub fn read(
        &mut self,
        doc: &str,
        layer: u32,
        start: u64,
        stop: u64,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (kvh, hd, vd) = (
            self.config.kv_heads as usize,
            self.config.head_dim as usize,
            self.config.value_dim as usize,
        );
        let layer_mem = self.layer(doc, layer)?;
        let len = layer_mem.as_ref().map_or(0, |l| l.len());
        if start > stop || stop > len {
            return Err(Error::Index(format!(
                "cannot read tokens {start}..{stop}: document {doc:?} layer {layer} holds {len} tokens"
            )));
        }
        let n = (stop - start) as usize;
        crate::budget::check(crate::budget::product(&[n, kvh * (hd + vd), 4]), || {
            format!(
                "reading tokens {start}..{stop} ({} floats each)",
                kvh * (hd + vd)
            )
        })?;
        let mut keys = vec![0f32; n * kvh * hd];
        let mut values = vec![0f32; n * kvh * vd];
        if let Some(l) = layer_mem {
            for t in 0..n {
                for h in 0..kvh {
                    let r = t * kvh + h;
                    l.read_token(
                        h,
                        start + t as u64,
                        &mut keys[r * hd..(r + 1) * hd],
                        &mut values[r * vd..(r + 1) * vd],
                    );
                }
            }
        }
        Ok((keys, values))
    }
}
