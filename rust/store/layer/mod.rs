//! One document-layer: its chunk files and its commit point. Invariant: tokens `0..count` are fully
//! written and flushed in the chunk files before `count` is committed; nothing past `count` is ever
//! read, and nothing before it is ever written again. A chunk whose rows are all committed (sealed)
//! has a checksum file, written (no fsync) right after the commit that seals it; one the writer did
//! not get to write is written before its next commit, or by the next writer to open the layer,
//! from the committed data (see `seal.rs`).

mod append;
mod checksums;
mod indexes;
mod read;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::chunk::{Chunk, ChunkFile, OpenMode};
use super::commit::{read_commits, CommitFile, COUNT_FILE};
use super::config::StoreConfig;
use super::seal;
use crate::ann::SpanIndex;
use crate::dtype::Elements;
use crate::durable::sync_dir;
use crate::error::{Error, IoContext, Result};

/// An open document-layer.
#[derive(Debug)]
pub struct LayerMemory {
    dir: PathBuf,
    config: Arc<StoreConfig>,
    chunks: Vec<Arc<Chunk>>,
    count: u64,
    /// The commit file, open for writing; `None` for read-only handles.
    commit: Option<CommitFile>,
    /// The HNSW index of each sealed span, once its file exists.
    spans: Vec<Option<Arc<SpanIndex>>>,
    /// The document's layout has every layer's count file and every sealed chunk's checksum, so
    /// a missing one is damage (format-1 documents may lack them).
    strict: bool,
    /// Leading sealed chunks already checked against their checksums (`verify_sealed`).
    verified: usize,
    /// The first chunk the last commit sealed: chunks from here to the sealed count may lack their
    /// checksum file legitimately (see `seal.rs`). The sealed count when the commit before the
    /// last is unknown (damaged slot): then every sealed chunk must have one.
    last_sealed_from: usize,
    /// Writers: sealed chunks whose checksum file is still to be written, before the next commit.
    pending: Vec<usize>,
}

/// Fails unless `path` is a real directory (not a link, which could lead outside the store);
/// `Ok(false)` when it does not exist.
pub(super) fn real_dir(path: &Path, what: &str) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(Error::Corrupt(format!(
            "{} ({what}) is not a directory (a file or a symbolic link)",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// True if the layer directory holds chunk or index files (so a missing count file lost tokens).
fn has_data_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|d| {
        d.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.ends_with(".keys") || n.ends_with(".values") || n.ends_with(".idx")
        })
    })
}

impl LayerMemory {
    /// Opens the layer stored in `dir`. `strict` (documents of the sealed layout): the directory
    /// and its count file must exist. Otherwise (format-1 documents, whose layer directories appear
    /// on first use) writers create them and readers of a layer nobody wrote see zero tokens; but a
    /// count file missing next to chunk files is damage, never an empty layer to write over.
    pub fn open(
        dir: &Path,
        config: Arc<StoreConfig>,
        writable: bool,
        strict: bool,
    ) -> Result<Self> {
        let count_path = dir.join(COUNT_FILE);
        let lost = |path: &Path, what: &str| {
            Error::Corrupt(format!(
                "{} ({what}) is missing: the layer's committed tokens are lost; restore it from a \
                 copy, or delete the document",
                path.display()
            ))
        };
        let dir_exists = real_dir(dir, "a layer directory")?;
        if !dir_exists && strict {
            return Err(lost(dir, "a layer directory of a listed document"));
        }
        if dir_exists && !count_path.exists() && (strict || has_data_files(dir)) {
            return Err(lost(&count_path, "the layer's commit point"));
        }
        let (commit, count, prev) = if writable {
            if !dir_exists {
                std::fs::create_dir_all(dir).at(dir)?;
                sync_dir(dir.parent().unwrap_or(dir))?;
            }
            let c = CommitFile::open(&count_path)?;
            let (count, prev) = (c.last().count, c.previous());
            (Some(c), count, prev)
        } else {
            let (last, prev) = read_commits(&count_path)?;
            (None, last.count, prev)
        };
        let mut layer = LayerMemory {
            dir: dir.to_owned(),
            config,
            chunks: Vec::new(),
            count: 0,
            commit,
            spans: Vec::new(),
            strict,
            verified: 0,
            last_sealed_from: 0,
            pending: Vec::new(),
        };
        layer.map_committed(count)?;
        layer.last_sealed_from = layer.first_last_sealed(prev);
        if writable {
            layer.remove_partial_indexes();
            if strict {
                // The previous writer may have died between its last commit and the checksums of
                // the chunks that commit sealed: write them from the committed data. Only those:
                // a missing checksum of an earlier chunk is damage, left for `verify` to report.
                layer.pending = (layer.last_sealed_from..layer.sealed_chunks())
                    .filter(|&c| !seal::present(dir, c))
                    .collect();
                // Best effort here (a failure must not keep readers out); the next append
                // writes them before it commits, or fails.
                let _ = layer.write_pending();
            }
        }
        Ok(layer)
    }

    /// Re-reads the commit point (readers): tokens a writer committed since are now visible.
    pub fn refresh(&mut self) -> Result<()> {
        if self.commit.is_none() {
            let (last, prev) = read_commits(&self.dir.join(COUNT_FILE))?;
            self.map_committed(last.count)?;
            self.last_sealed_from = self.first_last_sealed(prev);
        }
        Ok(())
    }

    fn chunk_tokens(&self) -> u64 {
        self.config.chunk_tokens as u64
    }

    fn map_committed(&mut self, count: u64) -> Result<()> {
        if count < self.count {
            return Err(Error::Corrupt(format!(
                "{}: committed count went back from {} to {count}",
                self.dir.display(),
                self.count
            )));
        }
        let needed = count.div_ceil(self.chunk_tokens()) as usize;
        let writable = self.commit.is_some();
        while self.chunks.len() < needed {
            let c = self.open_chunk(self.chunks.len(), OpenMode::Committed { writable })?;
            self.chunks.push(Arc::new(c));
        }
        self.count = count;
        Ok(())
    }

    fn open_chunk(&self, index: usize, mode: OpenMode) -> Result<Chunk> {
        let cfg = &self.config;
        let keys = self.dir.join(format!("{index:06}.keys"));
        let values = self.dir.join(format!("{index:06}.values"));
        let chunk = Chunk {
            keys: ChunkFile::open(&keys, cfg.chunk_bytes(cfg.head_dim), mode)?,
            values: ChunkFile::open(&values, cfg.chunk_bytes(cfg.value_dim), mode)?,
        };
        if mode == OpenMode::Fresh {
            sync_dir(&self.dir)?;
        }
        Ok(chunk)
    }

    /// Committed tokens.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// True when no token is committed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends `keys` `[tokens, kv_heads, head_dim]` and `values` `[tokens, kv_heads, value_dim]`
    /// (flat, token-major), flushes them, then commits. Returns the new length. On error nothing
    /// is committed and the layer keeps its previous length.
    pub fn append(&mut self, keys: Elements, values: Elements) -> Result<u64> {
        self.append_threads(keys, values, None)
    }

    /// `append` on `forced_threads` writer threads if given (tests), else as many as pays.
    fn append_threads(
        &mut self,
        keys: Elements,
        values: Elements,
        forced_threads: Option<usize>,
    ) -> Result<u64> {
        let cfg = Arc::clone(&self.config);
        let (kvh, hd, vd) = (
            cfg.kv_heads as usize,
            cfg.head_dim as usize,
            cfg.value_dim as usize,
        );
        let tokens = keys.len() / (kvh * hd);
        debug_assert_eq!(keys.len(), tokens * kvh * hd);
        debug_assert_eq!(values.len(), tokens * kvh * vd);
        if self.commit.is_none() {
            return Err(Error::ReadOnly(format!(
                "cannot append to {}: the store is open read-only",
                self.dir.display()
            )));
        }
        if tokens == 0 {
            return Ok(self.count);
        }
        // Checksums of chunks sealed earlier come before any later commit.
        self.write_pending()?;
        let ct = cfg.chunk_tokens as usize;
        let start = self.count as usize;
        let end = start + tokens;
        while self.chunks.len() < end.div_ceil(ct) {
            let c = self.open_chunk(self.chunks.len(), OpenMode::Fresh)?;
            self.chunks.push(Arc::new(c));
        }
        // Data first (written and synced), then the count (the commit point), then the
        // checksums of the chunks this append fills (see `seal.rs`).
        append::write_rows(
            &self.dir,
            &cfg,
            &self.chunks,
            keys,
            values,
            start,
            end,
            forced_threads,
        )?;
        self.commit
            .as_mut()
            .expect("checked writable above")
            .commit(end as u64)?;
        self.count = end as u64;
        self.last_sealed_from = start / ct;
        self.pending.extend(start / ct..end / ct);
        // The tokens are committed whatever happens here: a checksum that cannot be written now
        // is written before the next commit (which fails if it still cannot), or by the next
        // writer after a crash.
        let _ = self.write_pending();
        Ok(self.count)
    }
}
