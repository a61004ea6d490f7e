//! The manifest: the store's configuration and its documents, in one small file that is only ever
//! replaced whole (temp file, fsync, rename, fsync of the directory), so a reader sees the old or
//! the new manifest and never a mix. Its first line carries the format version and a CRC-32 of the
//! JSON body that follows.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::StoreConfig;
use crate::error::{Error, IoContext, Result};

/// The file name of the manifest inside a store directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The temp file a new manifest is written to before it is renamed over the manifest.
pub const TEMP_MANIFEST_FILE: &str = "manifest.json.tmp";
/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &str = "fot_mem-manifest";

/// One document of the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentEntry {
    /// Directory under `docs/`; a new document always gets a new one, so a deleted and re-created
    /// document never sees the old files.
    pub dir: String,
}

/// Everything the manifest holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub config: StoreConfig,
    pub next_document: u64,
    pub documents: BTreeMap<String, DocumentEntry>,
}

impl Manifest {
    /// A manifest with no documents.
    pub fn new(config: StoreConfig) -> Self {
        Manifest {
            config,
            next_document: 0,
            documents: BTreeMap::new(),
        }
    }

    /// Adds a document with a fresh directory name and returns the entry.
    pub fn add_document(&mut self, name: &str) -> DocumentEntry {
        let entry = DocumentEntry {
            dir: format!("d{:08}", self.next_document),
        };
        self.next_document += 1;
        self.documents.insert(name.to_owned(), entry.clone());
        entry
    }

    /// Reads and validates `root/manifest.json`.
    pub fn load(root: &Path) -> Result<Self> {
        let path = root.join(MANIFEST_FILE);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if root.is_dir() {
                    Error::NotAStore(format!(
                        "{} is a directory but not a fot_mem store (it has no {MANIFEST_FILE})",
                        root.display()
                    ))
                } else {
                    Error::NotFound {
                        path: root.to_owned(),
                        reason: "no such directory".into(),
                    }
                });
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        Self::parse(&text, &path)
    }

    fn parse(text: &[u8], path: &Path) -> Result<Self> {
        let corrupt = |why: String| Error::Corrupt(format!("{}: {why}", path.display()));
        let newline = text
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| corrupt("no header line".into()))?;
        let header = std::str::from_utf8(&text[..newline])
            .map_err(|_| corrupt("header is not UTF-8".into()))?;
        let body = &text[newline + 1..];
        let fields: Vec<&str> = header.split(' ').collect();
        let (version, crc) = match fields.as_slice() {
            [magic, v, c] if *magic == MAGIC => (
                v.strip_prefix("version=")
                    .and_then(|v| v.parse::<u32>().ok()),
                c.strip_prefix("crc32=")
                    .and_then(|c| u32::from_str_radix(c, 16).ok()),
            ),
            _ => {
                return Err(Error::NotAStore(format!(
                    "{} is not a fot_mem manifest (header {header:?})",
                    path.display()
                )))
            }
        };
        let version = version.ok_or_else(|| corrupt(format!("bad version in {header:?}")))?;
        if version != FORMAT_VERSION {
            return Err(Error::Version {
                path: path.to_owned(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let crc = crc.ok_or_else(|| corrupt(format!("bad checksum field in {header:?}")))?;
        let actual = crc32fast::hash(body);
        if actual != crc {
            return Err(corrupt(format!(
                "checksum mismatch: header says {crc:08x}, body hashes to {actual:08x}"
            )));
        }
        let manifest: Manifest =
            serde_json::from_slice(body).map_err(|e| corrupt(format!("bad JSON: {e}")))?;
        manifest
            .config
            .validate()
            .map_err(|e| corrupt(format!("invalid configuration: {e}")))?;
        Ok(manifest)
    }

    /// Replaces `root/manifest.json` atomically and durably.
    pub fn save(&self, root: &Path) -> Result<()> {
        let body = serde_json::to_vec_pretty(self).expect("manifest serialises");
        let header = format!(
            "{MAGIC} version={FORMAT_VERSION} crc32={:08x}\n",
            crc32fast::hash(&body)
        );
        let tmp: PathBuf = root.join(TEMP_MANIFEST_FILE);
        let path = root.join(MANIFEST_FILE);
        {
            let mut f = File::create(&tmp).at(&tmp)?;
            f.write_all(header.as_bytes()).at(&tmp)?;
            f.write_all(&body).at(&tmp)?;
            f.sync_all().at(&tmp)?;
        }
        super::create::crash_point("manifest: temp written");
        fs::rename(&tmp, &path).at(&path)?;
        sync_dir(root)
    }
}

/// Removes a temp manifest left by a crash before its rename (writers only).
pub fn remove_temp(root: &Path) {
    let _ = fs::remove_file(root.join(TEMP_MANIFEST_FILE));
}

/// Makes a rename or a new file in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Dtype;

    #[test]
    fn round_trip_and_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::new(StoreConfig::new(vec![2, 5], 2, 8, Dtype::Float16));
        m.add_document("a");
        m.save(dir.path()).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), m);

        let path = dir.path().join(MANIFEST_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = Manifest::load(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
    }

    #[test]
    fn rejects_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manifest::new(StoreConfig::new(vec![0], 1, 4, Dtype::Float32));
        m.save(dir.path()).unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        let text = fs::read_to_string(&path)
            .unwrap()
            .replacen("version=1", "version=9", 1);
        fs::write(&path, text).unwrap();
        let err = Manifest::load(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Version { found: 9, .. }), "{err}");
    }
}
