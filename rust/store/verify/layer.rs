//! A document and its layers: the directories, the commit point (both slots) and which files a
//! layer holds.

use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::names::{classify, LayerFile};
use super::{sorted_entries, Verifier};
use crate::store::commit::{self, COUNT_FILE, SLOT};
use crate::store::config::StoreConfig;

/// The committed state of one commit slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Slot {
    /// All zero: never written (slot 1 before the first commit).
    Blank,
    Valid {
        seq: u64,
        count: u64,
    },
    Damaged,
}

pub(super) fn slot(b: &[u8]) -> Slot {
    let Some(b) = b.get(..SLOT) else {
        return Slot::Damaged;
    };
    if b.iter().all(|&x| x == 0) {
        return Slot::Blank;
    }
    match commit::decode(b) {
        Some(c) => Slot::Valid {
            seq: c.seq,
            count: c.count,
        },
        None => Slot::Damaged,
    }
}

impl Verifier<'_> {
    /// `strict`: the document's layout has every layer directory, count file and chunk checksum.
    pub(super) fn document(&mut self, dir: &Path, config: Option<&StoreConfig>, strict: bool) {
        let entries = match sorted_entries(dir) {
            Ok(e) => e,
            Err(e) => return self.error(dir, format!("cannot list the document directory: {e}")),
        };
        let mut seen = Vec::new();
        for (name, path, meta) in &entries {
            let layer = name
                .strip_prefix("layer-")
                .and_then(|l| l.parse::<u32>().ok())
                .filter(|l| format!("layer-{l}") == *name);
            let is_dir = meta.as_ref().is_some_and(|m| m.is_dir());
            match (layer, config) {
                (Some(l), Some(c)) if is_dir && c.layers.contains(&l) => seen.push(l),
                (Some(_), None) if is_dir => {
                    self.report.checked.layers += 1;
                    self.layer(path, None, strict);
                }
                (Some(l), Some(c)) if is_dir => self.warn(
                    path,
                    format!(
                        "layer {l} is not a memory layer of this store ({:?})",
                        c.layers
                    ),
                ),
                _ => {
                    self.count_bytes(meta.as_ref().filter(|m| m.is_file()));
                    self.warn(path, "unknown file in a document directory".into());
                }
            }
        }
        if let Some(c) = config {
            for &l in &c.layers {
                self.report.checked.layers += 1;
                let path = dir.join(format!("layer-{l}"));
                if seen.contains(&l) {
                    self.layer(&path, Some(c), strict);
                } else if strict {
                    self.error(
                        &path,
                        "missing: this document's layers were all created with it, so this \
                         layer's committed tokens are lost and readers refuse it"
                            .into(),
                    );
                }
                // Format-1 documents: a layer without a directory was never written.
            }
        }
    }

    /// The committed count of a layer and the count of the commit before it (the other slot, when
    /// intact; else the count itself): `None` when unreadable (reported), 0 when there is no count
    /// file (an empty layer).
    pub(super) fn commit(&mut self, path: &Path) -> Option<(u64, u64)> {
        let mut bytes = Vec::new();
        let read = File::open(path).and_then(|f| {
            let len = f.metadata()?.len();
            f.take(2 * SLOT as u64 + 1).read_to_end(&mut bytes)?;
            Ok(len)
        });
        let len = match read {
            Ok(len) => len,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some((0, 0)),
            Err(e) => {
                self.error(path, format!("cannot read the commit point: {e}"));
                return None;
            }
        };
        self.report.checked.bytes += len;
        let slots = [
            bytes.get(..SLOT).map_or(Slot::Damaged, slot),
            bytes.get(SLOT..2 * SLOT).map_or(Slot::Damaged, slot),
        ];
        let best = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match *s {
                Slot::Valid { seq, count } => Some((i, seq, count)),
                _ => None,
            })
            .max_by_key(|&(_, seq, _)| seq);
        let Some((best_slot, seq, count)) = best else {
            self.error(
                path,
                format!(
                    "neither commit slot is valid ({len} bytes): the committed token count is \
                     lost and readers refuse this layer"
                ),
            );
            return None;
        };
        // The file is born whole at its full size and only ever rewritten in place.
        if len != 2 * SLOT as u64 {
            self.error(path, format!("has {len} bytes, expected {}", 2 * SLOT));
        }
        for (i, s) in slots.iter().enumerate() {
            match *s {
                // Slots lie within one disk sector, so a torn write is unlikely: report damage,
                // which may have been the newest commit (then tokens past `count` are lost).
                Slot::Damaged if i != best_slot && len >= (SLOT * (i + 1)) as u64 => self.error(
                    path,
                    format!(
                        "commit slot {i} fails its checksum; readers use slot {best_slot} \
                         (sequence {seq}, {count} tokens), so if slot {i} held the newest commit \
                         its tokens are lost"
                    ),
                ),
                // A commit writes slot seq % 2: anything else was not written by fot_mem.
                Slot::Valid { seq, .. } if seq % 2 != i as u64 => self.warn(
                    path,
                    format!(
                        "commit slot {i} holds sequence {seq}, which belongs in the other slot"
                    ),
                ),
                _ => {}
            }
        }
        let prev = slots.iter().find_map(|s| match *s {
            Slot::Valid { seq: p, count: c } if p + 1 == seq && c <= count => Some(c),
            _ => None,
        });
        Some((count, prev.unwrap_or(count)))
    }

    pub(super) fn layer(&mut self, dir: &Path, config: Option<&StoreConfig>, strict: bool) {
        // The count before the listing: a concurrent append writes its chunks before it
        // commits, so every chunk the count needs is already there when the listing is taken.
        let count_path = dir.join(COUNT_FILE);
        let commit = self.commit(&count_path);
        let count = commit.map(|c| c.0);
        let entries = match sorted_entries(dir) {
            Ok(e) => e,
            Err(e) => return self.error(dir, format!("cannot list the layer directory: {e}")),
        };
        self.report.checked.tokens += count.unwrap_or(0);
        let mut keys: BTreeMap<u64, (PathBuf, Option<Metadata>)> = BTreeMap::new();
        let mut values: BTreeMap<u64, (PathBuf, Option<Metadata>)> = BTreeMap::new();
        let mut indexes = Vec::new();
        let mut sums: BTreeMap<u64, PathBuf> = BTreeMap::new();
        let mut hnswlib = Vec::new();
        let mut has_count = false;
        for (name, path, meta) in entries {
            let is_file = meta.as_ref().is_some_and(|m| m.is_file());
            let kind = if is_file {
                classify(&name)
            } else {
                LayerFile::Unknown
            };
            match kind {
                LayerFile::Count => has_count = true,
                LayerFile::Keys(n) => drop(keys.insert(n, (path, meta))),
                LayerFile::Values(n) => drop(values.insert(n, (path, meta))),
                LayerFile::Index(n) => indexes.push((n, path, meta)),
                LayerFile::Checksum(n) => {
                    self.count_bytes(meta.as_ref());
                    sums.insert(n, path);
                }
                LayerFile::Hnswlib => {
                    self.count_bytes(meta.as_ref());
                    hnswlib.push(path);
                }
                LayerFile::HnswlibSeal => self.count_bytes(meta.as_ref()),
                LayerFile::Temp => {
                    self.count_bytes(meta.as_ref());
                    self.warn(
                        &path,
                        "temporary file left by a writer that died (or one being written now); \
                         the next writer removes or replaces it"
                            .into(),
                    );
                }
                LayerFile::Unknown => {
                    self.count_bytes(meta.as_ref().filter(|m| m.is_file()));
                    self.warn(&path, "unknown file in a layer directory".into());
                }
            }
        }
        if !has_count && strict {
            self.error(
                &count_path,
                "missing: the layer's committed tokens are lost and readers refuse it".into(),
            );
        } else if !has_count && (!keys.is_empty() || !values.is_empty() || !indexes.is_empty()) {
            self.error(
                &count_path,
                "missing, but the layer has chunk or index files: any tokens it held are lost \
                 and readers refuse it"
                    .into(),
            );
        }
        self.chunks(dir, config, count, &keys, &values);
        let prev = commit.map_or(0, |c| c.1);
        self.checksums(dir, config, count, prev, &keys, &values, &sums, strict);
        for (span, path, meta) in indexes {
            self.count_bytes(meta.as_ref());
            self.report.checked.index_files += 1;
            self.index(&path, span, config, count);
        }
        for path in hnswlib {
            self.hnswlib(&path, config, count);
        }
    }
}
