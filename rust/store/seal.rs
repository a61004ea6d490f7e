//! Chunk checksums. When an append fills a chunk (seals it: every row of every head committed),
//! the writer hashes the whole keys file then the whole values file (CRC-32) and writes the sum to
//! a 16-byte sidecar `<chunk>.crc`, `[magic "FOTS"][chunk u32][crc32 of the data][crc32 of the
//! first 12 bytes]`, by temp file and rename, *after* the commit that seals the chunk and without
//! fsync: the chunk's rows were flushed before that commit, so the data's durability never
//! depended on the sidecar, and the sidecar is self-checksummed, so one torn by a crash is seen.
//! Sealed rows are never written again, so the sidecar and the data agree for good.
//!
//! Only the chunks sealed by a layer's *last* commit can lack their sidecar legitimately (the
//! writer died between that commit and the sidecar, or is writing it now): a writer writes every
//! pending sidecar before its next commit, and the next writer to open the layer recomputes those
//! from the committed data (`layer`). `verify` reports them as warnings, and a missing or
//! damaged sidecar of any earlier sealed chunk as an error. Which chunks the last commit sealed is
//! read from the count file: its other slot holds the commit before (`commit::read_commits`).
//! The open tail chunk has no checksum.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

const MAGIC: u32 = 0x5354_4f46; // "FOTS"
const LEN: usize = 16;

/// The sidecar of chunk `index` in layer directory `dir`.
pub fn path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("{index:06}.crc"))
}

/// CRC-32 of a sealed chunk: its keys file's bytes, then its values file's.
pub fn checksum(keys: &[u8], values: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(keys);
    h.update(values);
    h.finalize()
}

fn encode(index: usize, crc: u32) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&(index as u32).to_le_bytes());
    b[8..12].copy_from_slice(&crc.to_le_bytes());
    let own = crc32fast::hash(&b[0..12]);
    b[12..16].copy_from_slice(&own.to_le_bytes());
    b
}

/// Writes the sidecar of chunk `index`: temp file then rename, so a reader never sees half of
/// one, and no fsync (see the module doc: after a crash it may be missing or torn, never wrong).
pub fn write(dir: &Path, index: usize, crc: u32) -> Result<()> {
    let path = path(dir, index);
    let tmp = path.with_extension("crc.tmp");
    std::fs::write(&tmp, encode(index, crc)).at(&tmp)?;
    std::fs::rename(&tmp, &path).at(&path)
}

/// True when chunk `index` has an intact sidecar (its data is not checked).
pub fn present(dir: &Path, index: usize) -> bool {
    matches!(read(dir, index), Ok(Some(_)))
}

/// The checksum recorded for chunk `index`: `Ok(None)` when there is no sidecar, `Corrupt` when
/// it is damaged or names another chunk.
pub fn read(dir: &Path, index: usize) -> Result<Option<u32>> {
    let path = path(dir, index);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    decode(&bytes, index)
        .map(Some)
        .map_err(|why| Error::Corrupt(format!("{}: {why}", path.display())))
}

/// The data checksum in a sidecar's bytes, or why they are not a sidecar of chunk `index`.
pub fn decode(b: &[u8], index: usize) -> std::result::Result<u32, String> {
    let word = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    if b.len() != LEN || word(0) != MAGIC || crc32fast::hash(&b[0..12]) != word(12) {
        return Err(format!(
            "chunk checksum file is damaged ({} bytes)",
            b.len()
        ));
    }
    if word(4) as usize != index {
        return Err(format!(
            "chunk checksum file belongs to chunk {}, not {index}",
            word(4)
        ));
    }
    Ok(word(8))
}

/// Fails with `Corrupt` unless the sealed chunk `index` hashes to `want`.
pub fn check(dir: &Path, index: usize, keys: &[u8], values: &[u8], want: u32) -> Result<()> {
    let got = checksum(keys, values);
    if got == want {
        Ok(())
    } else {
        Err(Error::Corrupt(format!(
            "chunk {index} in {} fails its checksum (recorded {want:08x}, data hashes to \
             {got:08x}): its keys or values were altered after they were committed",
            dir.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path(), 3).unwrap(), None);
        write(dir.path(), 3, 0xdead_beef).unwrap();
        assert_eq!(read(dir.path(), 3).unwrap(), Some(0xdead_beef));
        std::fs::copy(path(dir.path(), 3), path(dir.path(), 4)).unwrap();
        assert!(matches!(read(dir.path(), 4), Err(Error::Corrupt(_))));
        let mut b = std::fs::read(path(dir.path(), 3)).unwrap();
        b[9] ^= 1;
        std::fs::write(path(dir.path(), 3), &b).unwrap();
        assert!(matches!(read(dir.path(), 3), Err(Error::Corrupt(_))));
        assert!(check(dir.path(), 0, b"ab", b"c", checksum(b"ab", b"c")).is_ok());
        assert!(check(dir.path(), 0, b"ab", b"d", checksum(b"ab", b"c")).is_err());
    }
}
