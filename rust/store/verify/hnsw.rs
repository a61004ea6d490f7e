//! The layer's own HNSW index files (`hnsw-<span>.idx`): header, sections and fit to the layer.

use std::path::Path;

use super::{message, Verifier};
use crate::ann::SpanIndex;
use crate::store::config::StoreConfig;

impl Verifier<'_> {
    pub(super) fn index(
        &mut self,
        path: &Path,
        span: u64,
        config: Option<&StoreConfig>,
        count: Option<u64>,
    ) {
        let ix = match SpanIndex::open(path) {
            Ok(ix) => ix,
            Err(e) => {
                return self.error(
                    path,
                    format!("{} (searches scan this span instead)", message(&e, path)),
                )
            }
        };
        if self.deep {
            if let Err(e) = ix.verify(path) {
                // Opening checks only the header: a damaged section would be searched.
                return self.error(path, message(&e, path));
            }
        }
        let Some(c) = config else { return };
        let Some(h) = &c.hnsw else {
            return self.warn(
                path,
                "an hnsw index in a store configured without hnsw indexes".into(),
            );
        };
        let st = h.span_tokens as u64;
        let mut wrong = Vec::new();
        if ix.first != span * st {
            wrong.push(format!("first token {} (expected {})", ix.first, span * st));
        }
        if ix.n as u64 != st {
            wrong.push(format!("{} tokens (expected span_tokens {st})", ix.n));
        }
        if ix.heads() != c.kv_heads as usize {
            wrong.push(format!("{} kv heads (expected {})", ix.heads(), c.kv_heads));
        }
        if ix.dim != c.head_dim {
            wrong.push(format!("dim {} (expected head_dim {})", ix.dim, c.head_dim));
        }
        if !wrong.is_empty() {
            return self.error(
                path,
                format!(
                    "does not match its span: {} (searches scan this span instead)",
                    wrong.join(", ")
                ),
            );
        }
        if let Some(count) = count {
            if (span + 1).saturating_mul(st) > count {
                self.error(
                    path,
                    format!(
                        "indexes tokens {}..{} but only {count} are committed",
                        span * st,
                        (span + 1).saturating_mul(st)
                    ),
                );
            }
        }
    }
}
