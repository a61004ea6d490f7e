//! The manifest: the store's configuration and its documents, in one small file that is only ever
//! replaced whole (temp file, fsync, rename, fsync of the directory), so a reader sees the old or
//! the new manifest and never a mix. Its first line carries the format version and a CRC-32 of the
//! JSON body that follows.
//!
//! Everything the store later turns into a path is checked here, at load, in every mode: a
//! document's directory must be a name this store writes (`d` and at least 8 digits), unique, and
//! below `next_document`, so no manifest, however crafted, makes the store touch a path outside
//! its folder or share one directory between two documents.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::StoreConfig;
use crate::durable::sync_dir;
use crate::error::{Error, IoContext, Result};

/// The file name of the manifest inside a store directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The temp file a new manifest is written to before it is renamed over the manifest.
pub const TEMP_MANIFEST_FILE: &str = "manifest.json.tmp";
/// The on-disk format this build writes (and the newest it reads). Version 2 added per-document
/// layouts (below) and chunk checksums; version 1 stores are read and upgraded on their next write.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest on-disk format this build reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// Documents written before format 2: a layer directory appears on the layer's first append (so a
/// missing one reads as empty) and sealed chunks carry no checksum.
pub const LEGACY_LAYOUT: u32 = 1;
/// Documents of format 2: every layer directory and count file exists before the document is
/// listed, and every sealed chunk has a checksum file, so anything missing is damage.
pub const SEALED_LAYOUT: u32 = 2;
const MAGIC: &str = "fot_mem-manifest";

/// One document of the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentEntry {
    /// Directory under `docs/`; a new document always gets a new one, so a deleted and re-created
    /// document never sees the old files.
    pub dir: String,
    /// How the document's files are laid out: [`LEGACY_LAYOUT`] (absent in format 1) or
    /// [`SEALED_LAYOUT`].
    #[serde(default = "legacy_layout")]
    pub layout: u32,
}

fn legacy_layout() -> u32 {
    LEGACY_LAYOUT
}

impl DocumentEntry {
    /// True for documents whose layer directories, count files and chunk checksums must all exist.
    pub fn sealed(&self) -> bool {
        self.layout >= SEALED_LAYOUT
    }
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
            layout: SEALED_LAYOUT,
        };
        self.next_document += 1;
        self.documents.insert(name.to_owned(), entry.clone());
        entry
    }

    /// Reads and validates `root/manifest.json`.
    pub fn load(root: &Path) -> Result<Self> {
        let (text, path) = Self::read(root)?;
        Self::parse(&text, &path)
    }

    fn read(root: &Path) -> Result<(Vec<u8>, PathBuf)> {
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
        Ok((text, path))
    }

    /// `load` without the document checks ([`Manifest::document_problems`]), for `verify`,
    /// which reports each bad document instead of refusing the whole store.
    pub(super) fn load_unchecked(root: &Path) -> Result<Self> {
        let (text, path) = Self::read(root)?;
        Self::parse_body(&text, &path)
    }

    fn parse(text: &[u8], path: &Path) -> Result<Self> {
        let manifest = Self::parse_body(text, path)?;
        if let Some((_, why)) = manifest.document_problems().into_iter().next() {
            return Err(Error::Corrupt(format!("{}: {why}", path.display())));
        }
        Ok(manifest)
    }

    /// Each document entry the store must not trust, with why: a directory that is not a name
    /// this store writes (it could lead outside the store), one shared with another document, or
    /// one that `next_document` would hand out again; an unknown layout.
    pub fn document_problems(&self) -> Vec<(String, String)> {
        let mut seen = std::collections::HashMap::new();
        let mut out = Vec::new();
        for (name, e) in &self.documents {
            let number = e
                .dir
                .strip_prefix('d')
                .filter(|d| d.len() >= 8 && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<u64>().ok());
            let why = match number {
                None => format!(
                    "document {name:?} has directory {:?}, which is not a document directory \
                     name (d and 8 or more digits); refusing a path that may lead outside the store",
                    e.dir
                ),
                Some(_) if seen.contains_key(&e.dir) => format!(
                    "documents {:?} and {name:?} share the directory {:?}",
                    seen[&e.dir], e.dir
                ),
                Some(n) if n >= self.next_document => format!(
                    "document {name:?} has directory {:?}, but next_document is {}, so a new \
                     document would be given the same directory",
                    e.dir, self.next_document
                ),
                Some(_) if !(LEGACY_LAYOUT..=SEALED_LAYOUT).contains(&e.layout) => format!(
                    "document {name:?} has layout {}; this build knows layouts \
                     {LEGACY_LAYOUT}..={SEALED_LAYOUT}",
                    e.layout
                ),
                Some(_) => {
                    seen.insert(e.dir.clone(), name.clone());
                    continue;
                }
            };
            seen.entry(e.dir.clone()).or_insert_with(|| name.clone());
            out.push((name.clone(), why));
        }
        out
    }

    fn parse_body(text: &[u8], path: &Path) -> Result<Self> {
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
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
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
        super::crash::crash_point("manifest: temp written");
        fs::rename(&tmp, &path).at(&path)?;
        sync_dir(root)
    }
}

/// Removes a temp manifest left by a crash before its rename (writers only).
pub fn remove_temp(root: &Path) {
    let _ = fs::remove_file(root.join(TEMP_MANIFEST_FILE));
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
            .replacen("version=2", "version=9", 1);
        fs::write(&path, text).unwrap();
        let err = Manifest::load(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Version { found: 9, .. }), "{err}");
    }
}
