//! The commit point of a document-layer: a 64-byte `count` file holding two 32-byte slots, each
//! `[magic u32][seq u64][count u64][pad u32][crc32 u32][pad u32]` (little endian). A commit writes the
//! slot the previous commit did not, so a torn write can only damage the slot being written and the
//! reader falls back to the other one. Readers trust the valid slot with the highest sequence number;
//! tokens past its count do not exist, whatever the chunk files hold. The file is born whole (a
//! temp file holding a zero commit, renamed into place), so an empty or unreadable one is
//! corruption, never silently zero tokens; whether a missing one is damage or a layer never
//! written is the layer's call (`layer`).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The commit file's name inside a layer directory.
pub const COUNT_FILE: &str = "count";
const MAGIC: u32 = 0x4354_4f46; // "FOTC"
pub(super) const SLOT: usize = 32;

/// A decoded slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    pub seq: u64,
    pub count: u64,
}

fn encode(c: Commit) -> [u8; SLOT] {
    let mut b = [0u8; SLOT];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..12].copy_from_slice(&c.seq.to_le_bytes());
    b[12..20].copy_from_slice(&c.count.to_le_bytes());
    let crc = crc32fast::hash(&b[0..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

/// A slot's commit, or None when its magic or checksum is wrong (also for short input).
pub(super) fn decode(b: &[u8]) -> Option<Commit> {
    if b.len() < SLOT || u32::from_le_bytes(b[0..4].try_into().ok()?) != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[24..28].try_into().ok()?);
    if crc32fast::hash(&b[0..24]) != crc {
        return None;
    }
    Some(Commit {
        seq: u64::from_le_bytes(b[4..12].try_into().ok()?),
        count: u64::from_le_bytes(b[12..20].try_into().ok()?),
    })
}

/// Reads the committed state of the layer whose count file is `path`; a missing file is an empty
/// layer (the directory was created but its count file not yet renamed into place).
#[cfg(test)]
pub fn read_commit(path: &Path) -> Result<Commit> {
    read_commits(path).map(|(last, _)| last)
}

/// The committed state and, when the other slot holds it intact, the commit before it (whose
/// count tells which chunks the last commit sealed).
pub fn read_commits(path: &Path) -> Result<(Commit, Option<Commit>)> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Commit { seq: 0, count: 0 }, None))
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    let slots: Vec<Commit> = [bytes.get(0..SLOT), bytes.get(SLOT..2 * SLOT)]
        .into_iter()
        .flatten()
        .filter_map(decode)
        .collect();
    let last = slots.iter().copied().max_by_key(|c| c.seq);
    last.map(|last| (last, previous(&slots, last)))
        .ok_or_else(|| {
            Error::Corrupt(format!(
                "{}: neither commit slot is valid ({} bytes)",
                path.display(),
                bytes.len()
            ))
        })
}

/// The commit before `last` among `slots`: sequence `last.seq - 1`, no more tokens.
pub(super) fn previous(slots: &[Commit], last: Commit) -> Option<Commit> {
    slots
        .iter()
        .copied()
        .find(|c| c.seq + 1 == last.seq && c.count <= last.count)
}

/// The writer's open count file.
#[derive(Debug)]
pub struct CommitFile {
    file: File,
    path: PathBuf,
    last: Commit,
    prev: Option<Commit>,
}

impl CommitFile {
    /// Opens the count file for writing, creating it (atomically, holding a zero commit) if needed.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            let tmp = path.with_extension("tmp");
            let mut bytes = [0u8; 2 * SLOT];
            bytes[..SLOT].copy_from_slice(&encode(Commit { seq: 0, count: 0 }));
            crate::durable::replace(path, &tmp, &bytes)?;
        }
        let (last, prev) = read_commits(path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .at(path)?;
        Ok(CommitFile {
            file,
            path: path.to_owned(),
            last,
            prev,
        })
    }

    /// The last committed state.
    pub fn last(&self) -> Commit {
        self.last
    }

    /// The commit before the last one, when known (see [`read_commits`]).
    pub fn previous(&self) -> Option<Commit> {
        self.prev
    }

    /// Durably records `count` tokens. Call only after the tokens' data is flushed.
    pub fn commit(&mut self, count: u64) -> Result<()> {
        let next = Commit {
            seq: self.last.seq + 1,
            count,
        };
        let offset = (next.seq % 2) * SLOT as u64;
        self.file
            .write_all_at(&encode(next), offset)
            .at(&self.path)?;
        self.file.sync_data().at(&self.path)?;
        self.prev = Some(self.last);
        self.last = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_slot_falls_back_to_previous_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(COUNT_FILE);
        assert_eq!(read_commit(&path).unwrap().count, 0);
        let mut c = CommitFile::open(&path).unwrap();
        c.commit(10).unwrap();
        c.commit(25).unwrap();
        assert_eq!(read_commit(&path).unwrap(), Commit { seq: 2, count: 25 });
        assert_eq!(
            read_commits(&path).unwrap().1,
            Some(Commit { seq: 1, count: 10 })
        );
        // Damage the newest slot (seq 2 lives in slot 0): the reader sees the older commit.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[14] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_commit(&path).unwrap(), Commit { seq: 1, count: 10 });
        assert_eq!(read_commits(&path).unwrap().1, None);
        // Both slots damaged: a clear error, never a guess.
        bytes[SLOT + 14] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_commit(&path), Err(Error::Corrupt(_))));
        // So is a count file emptied behind the store's back.
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(read_commit(&path), Err(Error::Corrupt(_))));
    }
}
