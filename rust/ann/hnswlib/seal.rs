//! The seal of a cached hnswlib index: `hnswlib-<span>-h<head>.seal` beside the `.bin`, JSON
//! holding the file's size, CRC-32 and the parameters it was built with. It is written (under a
//! temporary name, synced, renamed) only after the index file is in place and has passed
//! [`check`], and the writer removes the old seal before replacing an index file; so a seal that
//! matches vouches for the file, and a missing or mismatched one means "rebuild".

use std::path::{Path, PathBuf};

use super::format::{check, Params};
use crate::error::{Error, IoContext, Result};

const FORMAT: u32 = 1;

/// What a seal records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seal {
    pub format: u32,
    pub bytes: u64,
    pub crc32: u32,
    pub params: Params,
}

/// `hnswlib-000000-h0.bin` -> `hnswlib-000000-h0.seal`.
pub fn seal_path(bin: &Path) -> PathBuf {
    bin.with_extension("seal")
}

/// Checks the index file `bin` against `p` and writes its seal to `seal`, atomically.
pub fn write_seal(bin: &Path, seal: &Path, p: &Params) -> Result<()> {
    let bytes = std::fs::read(bin).at(bin)?;
    check(&bytes, p).map_err(|e| Error::Corrupt(format!("{}: {e}", bin.display())))?;
    let s = Seal {
        format: FORMAT,
        bytes: bytes.len() as u64,
        crc32: crc32fast::hash(&bytes),
        params: *p,
    };
    let json = serde_json::to_vec(&s).map_err(|e| Error::Value(e.to_string()))?;
    let dir = seal.parent().unwrap_or(Path::new("."));
    let name = seal
        .file_name()
        .map_or("seal".into(), |n| n.to_string_lossy());
    // The `.<name>.<pid>.tmp` form that `verify` knows as a writer's temporary file.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    crate::durable::replace(seal, &tmp, &json)
}

/// Reads the seal at `seal` and checks the index file `bin` against it: size always, checksum
/// and structure (against the seal's parameters) when `deep`. The error says what is wrong.
pub fn check_sealed(bin: &Path, seal: &Path, deep: bool) -> std::result::Result<Seal, String> {
    let text = std::fs::read(seal).map_err(|e| format!("cannot read its seal: {e}"))?;
    let s: Seal = serde_json::from_slice(&text).map_err(|e| format!("unreadable seal: {e}"))?;
    if s.format != FORMAT {
        return Err(format!(
            "seal format {} (this build writes {FORMAT})",
            s.format
        ));
    }
    let len = std::fs::metadata(bin)
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if len != s.bytes {
        return Err(format!("{len} bytes, its seal says {}", s.bytes));
    }
    if deep {
        let bytes = std::fs::read(bin).map_err(|e| format!("cannot read: {e}"))?;
        let crc = crc32fast::hash(&bytes);
        if bytes.len() as u64 != s.bytes || crc != s.crc32 {
            return Err(format!(
                "checksum {crc:08x}, its seal says {:08x}: the file is damaged",
                s.crc32
            ));
        }
        check(&bytes, &s.params)?;
    }
    Ok(s)
}
