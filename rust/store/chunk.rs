//! One chunk of a document-layer: a keys file and a values file of exactly
//! `kv_heads * chunk_tokens * dim * dtype.size()` bytes, laid out head-major
//! (`[kv_heads][chunk_tokens][dim]`) so one head's keys are one contiguous run. Writers preallocate
//! the whole file at creation; a file of any other size is refused before it is mapped, so a
//! truncated file is an error, never a SIGBUS.
//!
//! The mapping is raw (no Rust borrow of the whole file) so that it can be shared: searches and
//! zero-copy numpy views read committed rows, which never change again, while the one writer
//! writes rows past the committed count, which nobody reads. The writer writes through the file
//! (`write_at`), never the mapping, which is read-only for every handle.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, IoContext, Result};
use crate::store::StoreConfig;

/// One mapped chunk file with its path.
#[derive(Debug)]
pub struct ChunkFile {
    map: MmapRaw,
    /// The open file of a writable chunk, which appends write through.
    file: Option<File>,
    path: PathBuf,
}

/// How to treat a chunk file that is missing or has the wrong size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// The chunk holds committed tokens: it must exist with the exact size.
    Committed { writable: bool },
    /// The chunk holds no committed token yet: create or resize it (writers only).
    Fresh,
}

impl ChunkFile {
    /// Opens and maps `path`, which must be (or, for `Fresh`, is made) `bytes` long.
    pub fn open(path: &Path, bytes: u64, mode: OpenMode) -> Result<Self> {
        let writable = !matches!(mode, OpenMode::Committed { writable: false });
        let file = match mode {
            OpenMode::Fresh => {
                let f = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .read(true)
                    .write(true)
                    .open(path)
                    .at(path)?;
                if f.metadata().at(path)?.len() != bytes {
                    f.set_len(bytes).at(path)?;
                }
                f
            }
            OpenMode::Committed { .. } => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(writable)
                    .open(path)
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => Error::Corrupt(format!(
                            "chunk file {} is missing but the commit count says it holds tokens",
                            path.display()
                        )),
                        _ => Error::io(path, e),
                    })?;
                let len = f.metadata().at(path)?.len();
                if len != bytes {
                    return Err(Error::Corrupt(format!(
                        "chunk file {} has {len} bytes, expected {bytes} (truncated or damaged)",
                        path.display()
                    )));
                }
                f
            }
        };
        let map = MmapOptions::new().map_raw_read_only(&file).at(path)?;
        Ok(ChunkFile {
            map,
            file: writable.then_some(file),
            path: path.to_owned(),
        })
    }

    /// Bytes `start..start + len` of the file, for reading. They must be committed (never written
    /// again); the bounds are checked.
    pub fn range(&self, start: usize, len: usize) -> &[u8] {
        assert!(
            start + len <= self.map.len(),
            "range past the end of {}",
            self.path.display()
        );
        // SAFETY: in bounds (checked), mapped for the life of `self`, and committed bytes are
        // never written again, so no write can race with this borrow.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(start), len) }
    }

    /// Writes `bytes` at `offset` through the file (pwrite), not the mapping: a store to a fresh
    /// page of the mapping faults it in (the kernel zero-fills it first), which cost appends more
    /// than half their time. The page cache is shared, so the mapping sees the bytes. The range
    /// must lie past the committed count (nobody reads it), written by the store's one writer
    /// (several threads of it may write disjoint ranges). A read-only chunk is an error.
    pub fn write_at(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        let file = self.file.as_ref().ok_or_else(|| {
            Error::ReadOnly(format!("chunk {} is open read-only", self.path.display()))
        })?;
        assert!(
            offset + bytes.len() <= self.map.len(),
            "range past the end of {}",
            self.path.display()
        );
        file.write_all_at(bytes, offset as u64).at(&self.path)
    }

    /// Makes what `write_at` wrote durable (fdatasync) before a commit.
    pub fn sync(&self) -> Result<()> {
        match &self.file {
            Some(file) => file.sync_data().at(&self.path),
            None => Ok(()),
        }
    }
}

/// The keys and values file of one chunk, shared with zero-copy views that may outlive the layer.
#[derive(Debug)]
pub struct Chunk {
    pub(super) keys: ChunkFile,
    pub(super) values: ChunkFile,
}

impl Chunk {
    /// Committed key bytes `start..start + len` (see [`ChunkFile::range`]).
    pub fn key_bytes(&self, start: usize, len: usize) -> &[u8] {
        self.keys.range(start, len)
    }
}

/// Which file of a chunk a view reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Keys,
    Values,
}

impl Part {
    /// Elements of one row of this part: the store's head_dim or value_dim.
    pub fn dim(self, config: &StoreConfig) -> usize {
        match self {
            Part::Keys => config.head_dim as usize,
            Part::Values => config.value_dim as usize,
        }
    }
}

/// A run of one kv head's committed keys (or values) inside a chunk, `[rows, dim]` of the store
/// dtype, that keeps its chunk mapped for as long as it lives.
#[derive(Clone, Debug)]
pub struct KeyView {
    pub first_id: u64,
    pub rows: usize,
    pub chunk: Arc<Chunk>,
    /// Byte offset of the first row in the file `part` names.
    pub offset: usize,
    pub part: Part,
}

impl KeyView {
    /// The viewed bytes.
    pub fn bytes(&self, row_bytes: usize) -> &[u8] {
        let file = match self.part {
            Part::Keys => &self.chunk.keys,
            Part::Values => &self.chunk.values,
        };
        file.range(self.offset, self.rows * row_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_at_goes_to_the_mapping_and_is_an_error_on_read_only_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000000.keys");
        let w = ChunkFile::open(&path, 3 * 4096, OpenMode::Fresh).unwrap();
        // Across a page boundary, into a fresh (never touched) page.
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        w.write_at(4000, &bytes).unwrap();
        w.sync().unwrap();
        assert_eq!(w.range(4000, bytes.len()), &bytes[..]);
        assert!(w.range(0, 4000).iter().all(|&b| b == 0));

        let r = ChunkFile::open(&path, 3 * 4096, OpenMode::Committed { writable: false }).unwrap();
        assert_eq!(r.range(4000, bytes.len()), &bytes[..]);
        match r.write_at(0, &[1, 2, 3]) {
            Err(Error::ReadOnly(msg)) => assert!(msg.contains("000000.keys"), "{msg}"),
            other => panic!("expected a read-only error, got {other:?}"),
        }
        // Syncing a read-only chunk has nothing to do; the bytes are unchanged.
        r.sync().unwrap();
        assert_eq!(r.range(0, 3), &[0, 0, 0]);
    }
}
