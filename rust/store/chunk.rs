//! One chunk of a document-layer: a keys file and a values file of exactly
//! `kv_heads * chunk_tokens * dim * dtype.size()` bytes, laid out head-major
//! (`[kv_heads][chunk_tokens][dim]`) so one head's keys are one contiguous run. Writers preallocate
//! the whole file at creation; a file of any other size is refused before it is mapped, so a
//! truncated file is an error, never a SIGBUS.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut};

use crate::error::{Error, IoContext, Result};

/// A mapped chunk file.
#[derive(Debug)]
enum Mapping {
    ReadOnly(Mmap),
    Writable(MmapMut),
}

/// One mapped chunk file with its path.
#[derive(Debug)]
pub struct ChunkFile {
    map: Mapping,
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
        let map = map_file(&file, path, writable)?;
        Ok(ChunkFile {
            map,
            path: path.to_owned(),
        })
    }

    /// The whole mapped file.
    pub fn bytes(&self) -> &[u8] {
        match &self.map {
            Mapping::ReadOnly(m) => m,
            Mapping::Writable(m) => m,
        }
    }

    /// The whole mapped file, writable (writers only).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.map {
            Mapping::Writable(m) => m,
            Mapping::ReadOnly(_) => {
                unreachable!("chunk {} is mapped read-only", self.path.display())
            }
        }
    }

    /// Writes `len` bytes at `offset` back to disk (msync) before a commit.
    pub fn flush_range(&self, offset: usize, len: usize) -> Result<()> {
        match &self.map {
            Mapping::Writable(m) if len > 0 => m.flush_range(offset, len).at(&self.path),
            _ => Ok(()),
        }
    }
}

fn map_file(file: &File, path: &Path, writable: bool) -> Result<Mapping> {
    // SAFETY: chunk files are only written through this crate's single writer (enforced by the
    // store lock), and only in the region past the committed count, which readers never read.
    unsafe {
        if writable {
            MmapMut::map_mut(file).map(Mapping::Writable).at(path)
        } else {
            Mmap::map(file).map(Mapping::ReadOnly).at(path)
        }
    }
}
