//! One document-layer: its chunk files and its commit point. Invariant: tokens `0..count` are fully
//! written and flushed in the chunk files before `count` is committed; nothing past `count` is ever
//! read, and nothing before it is ever written again. A chunk whose rows are all committed (sealed)
//! has a checksum file, written (no fsync) right after the commit that seals it; one the writer did
//! not get to write is written before its next commit, or by the next writer to open the layer,
//! from the committed data (see `seal.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::chunk::{ChunkFile, OpenMode};
use super::commit::{read_commits, Commit, CommitFile, COUNT_FILE};
use super::config::StoreConfig;
use super::indexer::SpanJob;
use super::manifest::sync_dir;
use super::seal;
use crate::ann::{SpanIndex, SpanRows};
use crate::dtype::Elements;
use crate::error::{Error, IoContext, Result};
use crate::search::{IndexedSpan, KeyBlock, KeySource};

/// The keys and values file of one chunk, shared with zero-copy views that may outlive the layer.
#[derive(Debug)]
pub struct Chunk {
    keys: ChunkFile,
    values: ChunkFile,
}

impl Chunk {
    /// Committed key bytes `start..start + len` (see [`ChunkFile::range`]).
    pub fn key_bytes(&self, start: usize, len: usize) -> &[u8] {
        self.keys.range(start, len)
    }
}

/// A run of one kv head's committed keys inside a chunk, `[rows, head_dim]` of the store dtype,
/// that keeps its chunk mapped for as long as it lives.
#[derive(Clone, Debug)]
pub struct KeyView {
    pub first_id: u64,
    pub rows: usize,
    pub chunk: Arc<Chunk>,
    /// Byte offset of the first row in the keys file.
    pub offset: usize,
}

impl KeyView {
    /// The viewed bytes.
    pub fn bytes(&self, row_bytes: usize) -> &[u8] {
        self.chunk.key_bytes(self.offset, self.rows * row_bytes)
    }
}

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

    /// Chunks whose rows are all committed.
    fn sealed_chunks(&self) -> usize {
        (self.count / self.chunk_tokens()) as usize
    }

    /// The first chunk sealed by the last commit, given the commit before it (`None`: unknown).
    fn first_last_sealed(&self, prev: Option<Commit>) -> usize {
        let sealed = self.sealed_chunks();
        prev.map_or(sealed, |p| {
            ((p.count / self.chunk_tokens()) as usize).min(sealed)
        })
    }

    /// Writes the checksum files still pending (writers), in chunk order.
    fn write_pending(&mut self) -> Result<()> {
        let cfg = &self.config;
        let (kb, vb) = (
            cfg.chunk_bytes(cfg.head_dim) as usize,
            cfg.chunk_bytes(cfg.value_dim) as usize,
        );
        while let Some(&c) = self.pending.first() {
            let chunk = &self.chunks[c];
            let crc = seal::checksum(chunk.keys.range(0, kb), chunk.values.range(0, vb));
            seal::write(&self.dir, c, crc)?;
            self.pending.remove(0);
        }
        Ok(())
    }

    /// Checks every sealed chunk not checked yet against its checksum (`verify_reads`): each chunk
    /// is read whole once per handle. A chunk without a checksum file is damage in a strict layer
    /// and unchecked in a format-1 one, except for the chunks the last commit sealed: their
    /// checksum may not be written yet (a writer at work, or one that died after the commit; the
    /// next writer writes it), so a missing or torn one is no error: those chunks are left
    /// unchecked for now and looked at again on the next call.
    pub fn verify_sealed(&mut self) -> Result<()> {
        let cfg = &self.config;
        let sealed = self.sealed_chunks();
        let (kb, vb) = (
            cfg.chunk_bytes(cfg.head_dim) as usize,
            cfg.chunk_bytes(cfg.value_dim) as usize,
        );
        while self.verified < sealed {
            let c = self.verified;
            let recent = self.strict && c >= self.last_sealed_from;
            match seal::read(&self.dir, c) {
                Ok(None) | Err(Error::Corrupt(_)) if recent => break,
                Err(e) => return Err(e),
                Ok(Some(want)) => {
                    let chunk = &self.chunks[c];
                    seal::check(
                        &self.dir,
                        c,
                        chunk.keys.range(0, kb),
                        chunk.values.range(0, vb),
                        want,
                    )?;
                }
                Ok(None) if self.strict => {
                    return Err(Error::Corrupt(format!(
                        "{} is missing: sealed chunk {c} cannot be checked",
                        seal::path(&self.dir, c).display()
                    )))
                }
                Ok(None) => {}
            }
            self.verified += 1;
        }
        Ok(())
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
        let es = cfg.dtype.size();
        for t in 0..tokens {
            let (c, s) = ((start + t) / ct, (start + t) % ct);
            let chunk = &self.chunks[c];
            for h in 0..kvh {
                let src = (t * kvh + h) * hd;
                let dst = (h * ct + s) * hd * es;
                // SAFETY: token start + t is past the committed count and `&mut self` makes this
                // the only writer.
                let out = unsafe { chunk.keys.range_mut(dst, hd * es) };
                keys.slice(src..src + hd)
                    .encode_into(cfg.dtype, out, "keys", src)?;
                let src = (t * kvh + h) * vd;
                let dst = (h * ct + s) * vd * es;
                // SAFETY: as above.
                let out = unsafe { chunk.values.range_mut(dst, vd * es) };
                values
                    .slice(src..src + vd)
                    .encode_into(cfg.dtype, out, "values", src)?;
            }
        }
        // Data first, then the count (the commit point), then the checksums of the chunks this
        // append fills (see `seal.rs`).
        for c in start / ct..end.div_ceil(ct) {
            let first = start.max(c * ct) - c * ct;
            let last = end.min((c + 1) * ct) - c * ct;
            let chunk = &self.chunks[c];
            for h in 0..kvh {
                let row = h * ct + first;
                let rows = last - first;
                chunk.keys.flush_range(row * hd * es, rows * hd * es)?;
                chunk.values.flush_range(row * vd * es, rows * vd * es)?;
            }
        }
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

    /// Tokens per indexed span, when the store keeps hnsw indexes.
    fn span_tokens(&self) -> Option<u64> {
        self.config.hnsw.as_ref().map(|h| h.span_tokens as u64)
    }

    /// Spans wholly committed (each one is indexed, or queued to be).
    pub fn sealed_spans(&self) -> usize {
        self.span_tokens().map_or(0, |s| (self.count / s) as usize)
    }

    fn index_path(&self, span: usize) -> PathBuf {
        self.dir.join(format!("hnsw-{span:06}.idx"))
    }

    /// Temporary files of builds and seals that died (spans are built again, chunks sealed again).
    fn remove_partial_indexes(&self) {
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

    /// Copies the key and value of token `pos` of kv head `head`, widened to f32, into the outputs.
    pub fn read_token(&self, head: usize, pos: u64, key: &mut [f32], value: &mut [f32]) {
        let cfg = &self.config;
        self.token_row(|c| &c.keys, cfg.head_dim, head, pos)
            .to_f32(key);
        self.token_row(|c| &c.values, cfg.value_dim, head, pos)
            .to_f32(value);
    }

    /// Row `pos` of kv head `head` in the keys or values files (`file` picks which).
    fn token_row(
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
    fn committed_runs(&self) -> impl Iterator<Item = (usize, u64, usize)> + '_ {
        let ct = self.config.chunk_tokens as usize;
        let count = self.count as usize;
        (0..count.div_ceil(ct)).map(move |c| (c, (c * ct) as u64, (count - c * ct).min(ct)))
    }

    /// Byte offset of kv head `head`'s keys in a keys file, and the bytes of one key row.
    fn head_offset(&self, head: usize) -> (usize, usize) {
        let cfg = &self.config;
        let row = cfg.head_dim as usize * cfg.dtype.size();
        (head * cfg.chunk_tokens as usize * row, row)
    }

    /// Zero-copy views of the committed keys of `kv_head`, one per chunk, in token order.
    pub fn key_views(&self, kv_head: usize) -> Vec<KeyView> {
        let (offset, _) = self.head_offset(kv_head);
        self.committed_runs()
            .map(|(c, first_id, rows)| KeyView {
                first_id,
                rows,
                chunk: Arc::clone(&self.chunks[c]),
                offset,
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
        let (offset, row) = self.head_offset(kv_head);
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
