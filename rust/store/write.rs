//! The writer's changes to a store: appends (the first one creates the document), deletions,
//! and flush.

use std::sync::Arc;

use super::{crash, LayerMemory, MemoryStore, DOCS_DIR};
use crate::dtype::Elements;
use crate::durable::sync_dir;
use crate::error::{Error, IoContext, Result};

impl MemoryStore {
    /// Appends tokens to a document-layer, creating the document on its first append. `keys` is
    /// flat `[tokens, kv_heads, head_dim]`, `values` flat `[tokens, kv_heads, value_dim]`.
    /// Returns the new length; on error nothing is committed.
    pub fn append(
        &mut self,
        doc: &str,
        layer: u32,
        keys: Elements,
        values: Elements,
    ) -> Result<u64> {
        self.require_writable(&format!("append to document {doc:?}"))?;
        self.config.check_layer(layer)?;
        let cfg = &self.config;
        let (kvh, hd, vd) = (
            cfg.kv_heads as usize,
            cfg.head_dim as usize,
            cfg.value_dim as usize,
        );
        if !keys.len().is_multiple_of(kvh * hd) {
            return Err(Error::Shape(format!(
                "keys have {} elements, not a whole number of tokens of [kv_heads {kvh}, head_dim {hd}]",
                keys.len()
            )));
        }
        let tokens = keys.len() / (kvh * hd);
        if values.len() != tokens * kvh * vd {
            return Err(Error::Shape(format!(
                "values have {} elements, expected {tokens} tokens x kv_heads {kvh} x value_dim {vd} = {}",
                values.len(),
                tokens * kvh * vd
            )));
        }
        if tokens == 0 {
            return self.length(doc, layer);
        }
        if !self.manifest.documents.contains_key(doc) {
            return self.append_new(doc, layer, keys, values);
        }
        let l = self.layer(doc, layer)?.expect("document exists");
        let sealed = l.sealed_spans();
        let len = l.append(keys, values)?;
        let jobs = l.index_jobs(sealed..l.sealed_spans());
        for job in jobs {
            self.indexer.submit(job);
        }
        Ok(len)
    }

    /// The first append of a document. Its directory, every layer's directory and count file, and
    /// this append's tokens are all written and committed before the manifest lists it: a crash
    /// before that leaves an unlisted directory (removed by the next writer), never a listed
    /// document without tokens, and a listed document whose layer directory or count file is
    /// missing is known to be damaged.
    fn append_new(
        &mut self,
        doc: &str,
        layer: u32,
        keys: Elements,
        values: Elements,
    ) -> Result<u64> {
        let mut next = self.manifest.clone();
        let entry = next.add_document(doc);
        let dir = self.root.join(DOCS_DIR).join(&entry.dir);
        let written = (|| {
            if dir.exists() {
                // Left by a crash in an earlier first append (unlisted, so nobody reads it).
                std::fs::remove_dir_all(&dir).at(&dir)?;
            }
            std::fs::create_dir(&dir).at(&dir)?;
            let mut target = None;
            for &l in &self.config.layers {
                let m = LayerMemory::open(
                    &dir.join(format!("layer-{l}")),
                    Arc::clone(&self.config),
                    true,
                    false,
                )?;
                if l == layer {
                    target = Some(m);
                }
            }
            sync_dir(&dir)?;
            sync_dir(&self.root.join(DOCS_DIR))?;
            crash::crash_point("append: document laid out");
            let mut target = target.expect("layer checked by the caller");
            let len = target.append(keys, values)?;
            crash::crash_point("append: first tokens committed");
            Ok((target, len))
        })();
        let (target, len) = match written {
            Ok(w) => w,
            Err(e) => {
                // Nothing is listed: the directory is unreachable, remove it now.
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        next.save(&self.root)?;
        self.manifest = next;
        self.adopt((doc.to_owned(), layer), target);
        Ok(len)
    }

    /// Deletes a document and its files. Returns false if it did not exist.
    pub fn delete_document(&mut self, doc: &str) -> Result<bool> {
        self.require_writable(&format!("delete document {doc:?}"))?;
        let Some(entry) = self.manifest.documents.get(doc).cloned() else {
            return Ok(false);
        };
        let mut next = self.manifest.clone();
        next.documents.remove(doc);
        next.save(&self.root)?;
        self.manifest = next;
        self.open.retain(|(d, _), _| d != doc);
        let dir = self.root.join(DOCS_DIR).join(entry.dir);
        self.indexer.forget(&dir);
        std::fs::remove_dir_all(&dir).at(&dir)?;
        Ok(true)
    }

    /// Makes everything written so far durable. Appends already commit durably when they return,
    /// so this only re-syncs the store directory; it is here so callers can be explicit.
    pub fn flush(&mut self) -> Result<()> {
        if !self.is_readonly() {
            sync_dir(&self.root.join(DOCS_DIR))?;
            sync_dir(&self.root)?;
        }
        Ok(())
    }
}
