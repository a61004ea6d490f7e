//! A read-only check of a whole store (`fot-mem verify`): walks what is on disk and reports every
//! problem it finds instead of stopping at the first. It opens files for reading only, takes no
//! lock, repairs nothing and removes nothing, so it works on a read-only filesystem and next to a
//! live writer (whose in-flight work may then show up as warnings; see [`verify`]).
//!
//! Checked: the manifest (header, version, checksum, JSON, configuration, document directory
//! names); per document-layer the commit point (both slots' checksums), the chunk files the
//! committed count needs (present, exact size), chunk files past it, HNSW index files (header and
//! directory checksum, section bounds, every section checksum when `deep`, and that the span,
//! size, heads and dim match the layer); stray temp files and unknown files. With `deep`, the
//! committed rows of every chunk are read and must be finite (the store never writes NaN or
//! infinity).
//!
//! Also checked: every sealed chunk's checksum file (intact; with `deep`, matching the chunk), and
//! in layout-2 documents that every layer directory and count file exists. A writer writes the
//! checksum files of the chunks a commit seals just after that commit (`seal.rs`), so for the
//! chunks sealed by a layer's last commit (told by the count file's other slot) a missing or torn
//! one is a warning — the writer died before writing it, or is writing it now, and the next
//! writer writes it — and an error for every earlier chunk, or for all of them when the other
//! slot is damaged.
//!
//! Not covered: the open tail chunk of a layer and chunks sealed by format 1 have no checksum, so
//! a flipped bit there that leaves a finite number is invisible; bytes past the committed count
//! are never looked at. hnswlib's index files (`hnswlib-*.bin`, derived, rebuilt on demand) are
//! checked against their seals (`hnswlib`).

use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use super::commit::{self, COUNT_FILE, SLOT};
use super::config::StoreConfig;
use super::lock::LOCK_FILE;
use super::manifest::{Manifest, FORMAT_VERSION, MANIFEST_FILE};
use super::seal;
use super::DOCS_DIR;
use crate::ann::SpanIndex;
use crate::dtype::Dtype;
use crate::error::{Error, Result};

mod hnswlib;

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Damage or an inconsistency that loses or misreads data.
    Error,
    /// Harmless to readers: leftovers of a crash or of a writer at work, unknown files.
    Warning,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// Relative to the store directory, `/`-separated; `.` for the directory itself.
    pub path: String,
    pub message: String,
}

/// What was looked at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Documents of the manifest (or, when it is unusable, document directories).
    pub documents: u64,
    /// Document-layers: documents x memory layers.
    pub layers: u64,
    /// Committed chunks whose keys and values files were both present.
    pub chunks: u64,
    /// HNSW index files (`hnsw-*.idx`), usable or not.
    pub index_files: u64,
    /// Sealed chunks with an intact checksum file (with `deep`, also checked against the data).
    pub checksums: u64,
    /// Committed tokens over all document-layers.
    pub tokens: u64,
    /// Total size of the files examined.
    pub bytes: u64,
}

/// The outcome of [`verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub problems: Vec<Problem>,
    pub checked: Checked,
}

impl VerifyReport {
    /// True when no problem is an error (warnings allowed).
    pub fn is_ok(&self) -> bool {
        self.problems.iter().all(|p| p.severity != Severity::Error)
    }
}

/// The warning for chunk `i`'s sidecar, `what` (missing, or why it is unreadable), when the last
/// commit sealed the chunk.
fn recent_missing(i: u64, what: &str) -> String {
    format!(
        "{what}: chunk {i} was sealed by the last commit and the writer died before writing its \
         checksum (or is writing it now); the next writer writes it"
    )
}

/// Missing or stray files reported one by one per layer; more are summed up in one line.
const LISTED: usize = 16;
/// Bytes read at a time by the deep scan of chunk rows.
const SCAN_BLOCK: usize = 1 << 20;

/// Checks the store at `root`. Fails only when there is nothing to check: `root` does not exist
/// (`NotFound`), is a file, or is a directory holding neither a manifest nor a `docs` directory
/// (`NotAStore`). Everything else, damage included, is a [`Problem`] in the report.
///
/// `deep` also reads every index section (checksums) and every committed chunk row
/// (finiteness): the whole store, where the quick check reads only metadata, headers and commit
/// points. Next to a live writer, documents or tokens added during the walk may be reported as
/// in-flight files (warnings); a manifest that changed during the walk is reported too.
pub fn verify(root: &Path, deep: bool) -> Result<VerifyReport> {
    let meta = std::fs::metadata(root).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound {
            path: root.to_owned(),
            reason: "no such file or directory".into(),
        },
        _ => Error::io(root, e),
    })?;
    if !meta.is_dir() {
        return Err(Error::NotAStore(format!(
            "{} is a file, not a fot_mem store directory",
            root.display()
        )));
    }
    let manifest_path = root.join(MANIFEST_FILE);
    let docs_path = root.join(DOCS_DIR);
    if !manifest_path.exists() && !docs_path.is_dir() {
        return Err(Error::NotAStore(format!(
            "{} is a directory but not a fot_mem store (it has no {MANIFEST_FILE})",
            root.display()
        )));
    }
    let mut v = Verifier {
        root,
        deep,
        report: VerifyReport::default(),
    };
    let before = std::fs::read(&manifest_path).ok();
    let manifest = v.manifest(&manifest_path, docs_path.is_dir())?;
    v.root_entries();
    v.documents(manifest.as_ref());
    if before.is_some() && std::fs::read(&manifest_path).ok() != before {
        v.warn(
            &manifest_path,
            "the manifest changed while the store was verified (a writer is at work): documents \
             created or deleted meanwhile may be misreported; verify again for a settled view"
                .into(),
        );
    }
    v.report.problems.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(v.report)
}

struct Verifier<'a> {
    root: &'a Path,
    deep: bool,
    report: VerifyReport,
}

/// What a file in a layer directory is, by its name.
#[derive(Debug, PartialEq, Eq)]
enum LayerFile {
    Count,
    Keys(u64),
    Values(u64),
    Index(u64),
    Checksum(u64),
    Hnswlib,
    HnswlibSeal,
    Temp,
    Unknown,
}

/// `digits` as written by `{:06}`: at least six digits, no extra leading zeros.
fn parse_index(digits: &str) -> Option<u64> {
    let n: u64 = digits.parse().ok()?;
    (digits.bytes().all(|b| b.is_ascii_digit()) && format!("{n:06}") == digits).then_some(n)
}

fn classify(name: &str) -> LayerFile {
    if name == COUNT_FILE {
        return LayerFile::Count;
    }
    if let Some(n) = name.strip_suffix(".keys").and_then(parse_index) {
        return LayerFile::Keys(n);
    }
    if let Some(n) = name.strip_suffix(".values").and_then(parse_index) {
        return LayerFile::Values(n);
    }
    if let Some(n) = name.strip_suffix(".crc").and_then(parse_index) {
        return LayerFile::Checksum(n);
    }
    if name
        .strip_suffix(".crc.tmp")
        .and_then(parse_index)
        .is_some()
    {
        return LayerFile::Temp;
    }
    if name.starts_with("hnswlib-") && name.ends_with(".bin") {
        return LayerFile::Hnswlib;
    }
    if name.starts_with("hnswlib-") && name.ends_with(".seal") {
        return LayerFile::HnswlibSeal;
    }
    if let Some(rest) = name.strip_prefix("hnsw-") {
        return match rest.strip_suffix(".idx").and_then(parse_index) {
            Some(n) => LayerFile::Index(n),
            // `write` renames from `hnsw-<span>.tmp<pid>`; writers remove any other `hnsw-*`.
            None if rest.contains(".tmp") => LayerFile::Temp,
            None => LayerFile::Unknown,
        };
    }
    // The commit file's birth name, and hnswlib_backend's `.<name>.<pid>.<uuid>.tmp`.
    if name == format!("{COUNT_FILE}.tmp") || (name.starts_with('.') && name.ends_with(".tmp")) {
        return LayerFile::Temp;
    }
    LayerFile::Unknown
}

/// The committed state of one commit slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// All zero: never written (slot 1 before the first commit).
    Blank,
    Valid {
        seq: u64,
        count: u64,
    },
    Damaged,
}

fn slot(b: &[u8]) -> Slot {
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

/// A core error's message without the absolute path it starts with (the report has the path).
fn message(e: &Error, path: &Path) -> String {
    let text = e.to_string();
    let abs = format!("{}: ", path.display());
    match text.find(&abs) {
        Some(i) => format!("{}{}", &text[..i], &text[i + abs.len()..]),
        None => text,
    }
}

fn sorted_entries(dir: &Path) -> std::io::Result<Vec<(String, PathBuf, Option<Metadata>)>> {
    let mut out: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, e.path(), e.metadata().ok())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// CRC-32 of the files' bytes in order, read in blocks (`seal::checksum` of whole chunks).
fn hash_files(paths: &[&PathBuf]) -> std::io::Result<u32> {
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; SCAN_BLOCK];
    for p in paths {
        let mut f = File::open(p)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(h.finalize())
}

/// True if any element of `bytes` (little endian, `dtype`) is NaN or infinite; returns its index.
fn first_non_finite(dtype: Dtype, bytes: &[u8]) -> Option<usize> {
    match dtype {
        Dtype::Float32 => bytes.chunks_exact(4).position(|b| {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000
        }),
        Dtype::Float16 => bytes
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00),
        Dtype::Bfloat16 => bytes
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80),
    }
}

impl Verifier<'_> {
    fn rel(&self, path: &Path) -> String {
        match path.strip_prefix(self.root) {
            Ok(r) if r.as_os_str().is_empty() => ".".into(),
            Ok(r) => r.to_string_lossy().into_owned(),
            Err(_) => path.to_string_lossy().into_owned(),
        }
    }

    fn problem(&mut self, severity: Severity, path: &Path, message: String) {
        let path = self.rel(path);
        self.report.problems.push(Problem {
            severity,
            path,
            message,
        });
    }

    fn error(&mut self, path: &Path, message: String) {
        self.problem(Severity::Error, path, message);
    }

    fn warn(&mut self, path: &Path, message: String) {
        self.problem(Severity::Warning, path, message);
    }

    fn count_bytes(&mut self, meta: Option<&Metadata>) {
        self.report.checked.bytes += meta.map_or(0, |m| m.len());
    }

    /// The manifest, or `None` when it is unusable (reported). A manifest that fails its own
    /// checks but whose JSON still holds a valid configuration is used for the rest of the walk.
    fn manifest(&mut self, path: &Path, has_docs: bool) -> Result<Option<Manifest>> {
        self.count_bytes(std::fs::metadata(path).ok().as_ref());
        let err = match Manifest::load_unchecked(self.root) {
            Ok(m) => return Ok(Some(self.check_document_dirs(path, m))),
            Err(e) => e,
        };
        match &err {
            // Some other program's manifest.json in a directory that has no docs either.
            Error::NotAStore(_) if !has_docs => return Err(err),
            Error::Version { found, .. } => {
                self.error(
                    path,
                    format!(
                        "format version {found} (or a damaged header); this build reads versions 1 to \
                         {FORMAT_VERSION}: nothing else was checked"
                    ),
                );
                return Ok(None);
            }
            _ => {}
        }
        let best_effort = std::fs::read(path).ok().and_then(|text| {
            let body = &text[text.iter().position(|&b| b == b'\n')? + 1..];
            let m: Manifest = serde_json::from_slice(body).ok()?;
            m.config.validate().ok().map(|()| m)
        });
        let tail = if best_effort.is_some() {
            "; its JSON still parses, so the rest of this report trusts it"
        } else {
            "; the configuration is unknown, so chunk sizes and index shapes were not checked"
        };
        self.error(path, format!("{}{tail}", message(&err, path)));
        Ok(best_effort.map(|m| self.check_document_dirs(path, m)))
    }

    /// Documents the store refuses to trust (a directory that could lead outside the store, one
    /// shared or reusable, an unknown layout) are reported and left out of the walk.
    fn check_document_dirs(&mut self, path: &Path, mut m: Manifest) -> Manifest {
        for (name, why) in m.document_problems() {
            m.documents.remove(&name);
            self.error(path, format!("{why}; stores refuse to open"));
        }
        m
    }

    fn root_entries(&mut self) {
        let entries = match sorted_entries(self.root) {
            Ok(e) => e,
            Err(e) => {
                let root = self.root.to_owned();
                return self.error(&root, format!("cannot list the store directory: {e}"));
            }
        };
        for (name, path, meta) in entries {
            let is_file = meta.as_ref().is_some_and(|m| m.is_file());
            match name.as_str() {
                MANIFEST_FILE | DOCS_DIR => {}
                LOCK_FILE => self.count_bytes(meta.as_ref()),
                _ if name == format!("{MANIFEST_FILE}.tmp") && is_file => {
                    self.count_bytes(meta.as_ref());
                    self.warn(
                        &path,
                        "temporary manifest left by a writer that died before renaming it (or \
                         one being written now); the next writer removes it"
                            .into(),
                    );
                }
                _ => {
                    self.count_bytes(meta.as_ref().filter(|m| m.is_file()));
                    self.warn(&path, "unknown file, not part of a fot_mem store".into());
                }
            }
        }
    }

    fn documents(&mut self, manifest: Option<&Manifest>) {
        let docs = self.root.join(DOCS_DIR);
        let entries = match sorted_entries(&docs) {
            Ok(e) => e,
            Err(e) => {
                let has_docs = manifest.is_some_and(|m| !m.documents.is_empty());
                let msg = format!("cannot list the documents directory: {e}");
                if has_docs || e.kind() != std::io::ErrorKind::NotFound {
                    self.error(&docs, msg);
                } else {
                    self.warn(&docs, msg);
                }
                Vec::new()
            }
        };
        let config = manifest.map(|m| &m.config);
        match manifest {
            Some(m) => {
                for (name, entry) in &m.documents {
                    self.report.checked.documents += 1;
                    let dir = docs.join(&entry.dir);
                    if !dir.is_dir() {
                        self.error(&dir, format!("directory of document {name:?} is missing"));
                        // Its layers count as checked: they are absent, which the error says.
                        self.report.checked.layers += m.config.layers.len() as u64;
                        continue;
                    }
                    let strict = entry.sealed();
                    self.guarded(&dir, |v| v.document(&dir, config, strict));
                }
                let known: std::collections::HashSet<&str> =
                    m.documents.values().map(|e| e.dir.as_str()).collect();
                for (name, path, meta) in &entries {
                    if !known.contains(name.as_str()) {
                        let what = if meta.as_ref().is_some_and(|m| m.is_dir()) {
                            "document directory that the manifest does not name (left by a \
                             crash or an interrupted delete, or a document being created now); \
                             the next writer removes it"
                        } else {
                            "unknown file in the documents directory"
                        };
                        self.count_bytes(meta.as_ref().filter(|m| m.is_file()));
                        self.warn(path, what.into());
                    }
                }
            }
            None => {
                // No usable manifest: check what each document directory holds on its own.
                for (_, path, meta) in &entries {
                    if meta.as_ref().is_some_and(|m| m.is_dir()) {
                        self.report.checked.documents += 1;
                        self.guarded(path, |v| v.document(path, None, false));
                    } else {
                        self.count_bytes(meta.as_ref());
                        self.warn(path, "unknown file in the documents directory".into());
                    }
                }
            }
        }
    }

    /// Runs one document's checks; a panic (a bug) becomes an error instead of ending the walk.
    fn guarded(&mut self, path: &Path, f: impl FnOnce(&mut Self)) {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(self))) {
            self.error(
                path,
                format!(
                    "internal error while checking (a bug in fot_mem): {}",
                    panic_text(p)
                ),
            );
        }
    }

    /// `strict`: the document's layout has every layer directory, count file and chunk checksum.
    fn document(&mut self, dir: &Path, config: Option<&StoreConfig>, strict: bool) {
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
    fn commit(&mut self, path: &Path) -> Option<(u64, u64)> {
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

    fn layer(&mut self, dir: &Path, config: Option<&StoreConfig>, strict: bool) {
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

    fn chunks(
        &mut self,
        dir: &Path,
        config: Option<&StoreConfig>,
        count: Option<u64>,
        keys: &BTreeMap<u64, (PathBuf, Option<Metadata>)>,
        values: &BTreeMap<u64, (PathBuf, Option<Metadata>)>,
    ) {
        for (_, meta) in keys.values().chain(values.values()) {
            self.count_bytes(meta.as_ref());
        }
        let (Some(c), Some(count)) = (config, count) else {
            return; // sizes unknown without a configuration, or extent unknown without a count
        };
        let ct = c.chunk_tokens as u64;
        let needed = count.div_ceil(ct.max(1));
        for (files, ext, dim) in [(keys, "keys", c.head_dim), (values, "values", c.value_dim)] {
            let present = files.range(..needed).count() as u64;
            let mut listed = 0;
            for i in 0..needed {
                if listed == LISTED || listed as u64 == needed - present {
                    break;
                }
                if !files.contains_key(&i) {
                    listed += 1;
                    self.error(
                        &dir.join(format!("{i:06}.{ext}")),
                        format!(
                            "missing, but the commit count ({count} tokens) says chunk {i} holds \
                             tokens"
                        ),
                    );
                }
            }
            if needed - present > listed as u64 {
                self.error(
                    dir,
                    format!(
                        "{} more .{ext} chunk files that hold committed tokens are missing",
                        needed - present - listed as u64
                    ),
                );
            }
            let want = c.chunk_bytes(dim);
            for (&i, (path, meta)) in files.range(..needed) {
                let len = meta.as_ref().map_or(0, |m| m.len());
                if len != want {
                    self.error(
                        path,
                        format!(
                            "has {len} bytes, expected {want} (kv_heads {} x chunk_tokens {ct} x \
                             {ext} dim {dim} x {} bytes): truncated or damaged, readers refuse \
                             this layer",
                            c.kv_heads,
                            c.dtype.size()
                        ),
                    );
                } else if self.deep {
                    let rows = (count - i * ct).min(ct);
                    self.scan_rows(path, c, dim, i * ct, rows);
                }
            }
            let stray: Vec<_> = files.range(needed..).collect();
            for (i, (path, _)) in stray.iter().take(LISTED) {
                self.warn(
                    path,
                    format!(
                        "chunk {i} holds no committed token (left by an append that failed or \
                         died, or one in progress); the next append reuses it"
                    ),
                );
            }
            if stray.len() > LISTED {
                self.warn(
                    dir,
                    format!(
                        "{} more .{ext} chunk files past the committed count",
                        stray.len() - LISTED
                    ),
                );
            }
        }
        // Over the files present, never over 0..needed (a damaged count can be huge).
        let both = keys.range(..needed).filter(|(i, _)| values.contains_key(i));
        self.report.checked.chunks += both.count() as u64;
    }

    /// Chunk checksums: every sealed chunk's sidecar must be intact and, with `deep`, match the
    /// chunk. A sealed chunk without one is an error in a `strict` document and a warning (its
    /// contents cannot be checked) in a format-1 one; sidecars of unsealed chunks are leftovers.
    /// Except: the chunks sealed by the last commit (from the count `prev` of the commit before
    /// it) get their sidecar right after that commit, so a missing or torn one there is a warning
    /// (the writer died in between, or is at work; the next writer writes it).
    #[allow(clippy::too_many_arguments)]
    fn checksums(
        &mut self,
        dir: &Path,
        config: Option<&StoreConfig>,
        count: Option<u64>,
        prev: u64,
        keys: &BTreeMap<u64, (PathBuf, Option<Metadata>)>,
        values: &BTreeMap<u64, (PathBuf, Option<Metadata>)>,
        sums: &BTreeMap<u64, PathBuf>,
        strict: bool,
    ) {
        let (Some(c), Some(count)) = (config, count) else {
            return;
        };
        let sealed = count / c.chunk_tokens as u64;
        let recent = (prev / c.chunk_tokens as u64).min(sealed)..sealed;
        let mut unchecked = 0u64;
        for i in 0..sealed {
            let Some(path) = sums.get(&i) else {
                if strict && recent.contains(&i) {
                    self.warn(&seal::path(dir, i as usize), recent_missing(i, "missing"));
                    continue;
                }
                if strict && unchecked < LISTED as u64 {
                    self.error(
                        &seal::path(dir, i as usize),
                        format!("missing: chunk {i} is sealed, so its checksum should be here"),
                    );
                }
                unchecked += 1;
                continue;
            };
            let want = match std::fs::read(path) {
                Ok(b) => seal::decode(&b, i as usize),
                Err(e) => Err(format!("cannot read: {e}")),
            };
            let want = match want {
                Ok(w) => w,
                Err(why) if strict && recent.contains(&i) => {
                    self.warn(path, recent_missing(i, &why));
                    continue;
                }
                Err(why) => {
                    self.error(path, why);
                    continue;
                }
            };
            self.report.checked.checksums += 1;
            let (Some((kp, km)), Some((vp, vm))) = (keys.get(&i), values.get(&i)) else {
                continue; // a missing chunk file is reported by `chunks`
            };
            let size = |m: &Option<Metadata>| m.as_ref().map_or(0, |m| m.len());
            if size(km) != c.chunk_bytes(c.head_dim) || size(vm) != c.chunk_bytes(c.value_dim) {
                continue; // so is a wrong size
            }
            if self.deep {
                match hash_files(&[kp, vp]) {
                    Ok(got) => {
                        if got != want {
                            self.error(
                                kp,
                                format!(
                                    "chunk {i} (this file and its .values) fails its checksum \
                                     (recorded {want:08x}, data hashes to {got:08x}): altered \
                                     after it was committed"
                                ),
                            );
                        }
                    }
                    Err(e) => self.error(kp, format!("cannot read chunk {i}: {e}")),
                }
            }
        }
        if strict && unchecked > LISTED as u64 {
            self.error(
                dir,
                format!(
                    "{} more sealed chunks have no checksum file",
                    unchecked - LISTED as u64
                ),
            );
        } else if !strict && unchecked > 0 {
            self.warn(
                dir,
                format!(
                    "no checksum for {unchecked} sealed chunks (written before format 2): their \
                     contents cannot be checked"
                ),
            );
        }
        for (&i, path) in sums.range(sealed..).take(LISTED) {
            self.warn(
                path,
                format!(
                    "checksum of chunk {i}, which is not sealed (written before its commit by an \
                     older fot_mem whose append died, or by a writer that committed during this \
                     walk); the next seal replaces it"
                ),
            );
        }
    }

    /// Deep check of one chunk file: the committed rows of every head must be finite.
    fn scan_rows(&mut self, path: &Path, c: &StoreConfig, dim: u32, first: u64, rows: u64) {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => return self.error(path, format!("cannot read: {e}")),
        };
        let es = c.dtype.size();
        let row = dim as usize * es;
        let block = (SCAN_BLOCK / row).max(1) * row;
        let mut buf = vec![0u8; block];
        for h in 0..c.kv_heads as usize {
            let start = (h * c.chunk_tokens as usize * row) as u64;
            let len = rows as usize * row;
            let mut done = 0;
            while done < len {
                let n = block.min(len - done);
                if let Err(e) = file.read_exact_at(&mut buf[..n], start + done as u64) {
                    return self.error(path, format!("cannot read: {e}"));
                }
                if let Some(at) = first_non_finite(c.dtype, &buf[..n]) {
                    let token = first + ((done + at * es) / row) as u64;
                    return self.error(
                        path,
                        format!(
                            "kv head {h} holds a NaN or infinity at token {token}; the store never \
                             writes one, so the file is damaged"
                        ),
                    );
                }
                done += n;
            }
        }
    }

    fn index(&mut self, path: &Path, span: u64, config: Option<&StoreConfig>, count: Option<u64>) {
        let ix = match SpanIndex::open(path) {
            Ok(ix) => ix,
            Err(e) => {
                return self.error(
                    path,
                    format!("{} (searches scan this span instead)", message(&e, path)),
                )
            }
        };
        if self.deep {
            if let Err(e) = ix.verify(path) {
                // Opening checks only the header: a damaged section would be searched.
                return self.error(path, message(&e, path));
            }
        }
        let Some(c) = config else { return };
        let Some(h) = &c.hnsw else {
            return self.warn(
                path,
                "an hnsw index in a store configured without hnsw indexes".into(),
            );
        };
        let st = h.span_tokens as u64;
        let mut wrong = Vec::new();
        if ix.first != span * st {
            wrong.push(format!("first token {} (expected {})", ix.first, span * st));
        }
        if ix.n as u64 != st {
            wrong.push(format!("{} tokens (expected span_tokens {st})", ix.n));
        }
        if ix.heads() != c.kv_heads as usize {
            wrong.push(format!("{} kv heads (expected {})", ix.heads(), c.kv_heads));
        }
        if ix.dim != c.head_dim {
            wrong.push(format!("dim {} (expected head_dim {})", ix.dim, c.head_dim));
        }
        if !wrong.is_empty() {
            return self.error(
                path,
                format!(
                    "does not match its span: {} (searches scan this span instead)",
                    wrong.join(", ")
                ),
            );
        }
        if let Some(count) = count {
            if (span + 1).saturating_mul(st) > count {
                self.error(
                    path,
                    format!(
                        "indexes tokens {}..{} but only {count} are committed",
                        span * st,
                        (span + 1).saturating_mul(st)
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Elements;
    use crate::store::{HnswConfig, MemoryStore};

    const CT: u32 = 4;

    fn config(hnsw: bool) -> StoreConfig {
        let mut c = StoreConfig::new(vec![1, 3], 2, 8, Dtype::Float32);
        c.value_dim = 5;
        c.chunk_tokens = CT;
        if hnsw {
            let mut h = HnswConfig::new(CT);
            h.span_tokens = 8;
            c.hnsw = Some(h);
        }
        c
    }

    fn append(s: &mut MemoryStore, doc: &str, layer: u32, n: usize) {
        let k: Vec<f32> = (0..n * 16).map(|i| (i as f32 * 0.37).sin()).collect();
        let v: Vec<f32> = (0..n * 10).map(|i| (i as f32 * 0.11).cos()).collect();
        s.append(doc, layer, Elements::F32(&k), Elements::F32(&v))
            .unwrap();
    }

    /// A store with two documents, both layers, 2 sealed spans (indexed) in doc "a" layer 1.
    fn healthy(hnsw: bool) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let mut s = MemoryStore::create(&root, config(hnsw)).unwrap();
        append(&mut s, "a", 1, 18);
        append(&mut s, "a", 3, 3);
        append(&mut s, "b", 1, 4);
        s.wait_for_indexes().unwrap();
        drop(s);
        (dir, root)
    }

    fn errors(r: &VerifyReport) -> Vec<&Problem> {
        r.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .collect()
    }

    fn all_files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_owned()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    out.insert(e.path(), std::fs::read(e.path()).unwrap());
                }
            }
        }
        out
    }

    #[test]
    fn healthy_store_is_clean_and_counted() {
        for hnsw in [false, true] {
            let (_d, root) = healthy(hnsw);
            let before = all_files(&root);
            let r = verify(&root, true).unwrap();
            assert!(r.problems.is_empty(), "{:?}", r.problems);
            assert!(r.is_ok());
            let c = &r.checked;
            assert_eq!((c.documents, c.layers, c.tokens), (2, 4, 25));
            // 18 tokens: 5 chunks; 3: 1; 4: 1 (layer 3 of "b" was never written).
            assert_eq!(c.chunks, 7);
            assert_eq!(c.index_files, if hnsw { 2 } else { 0 });
            let total: u64 = before.values().map(|b| b.len() as u64).sum();
            assert_eq!(c.bytes, total);
            assert_eq!(all_files(&root), before, "verify changed a file");
        }
    }

    #[test]
    fn not_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(
            verify(&missing, false),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            verify(dir.path(), false),
            Err(Error::NotAStore(_))
        ));
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(verify(&file, false), Err(Error::NotAStore(_))));
    }

    fn layer_dir(root: &Path, doc: usize, layer: u32) -> PathBuf {
        root.join(DOCS_DIR)
            .join(format!("d{doc:08}"))
            .join(format!("layer-{layer}"))
    }

    fn find<'r>(r: &'r VerifyReport, path: &str) -> Vec<&'r Problem> {
        r.problems.iter().filter(|p| p.path == path).collect()
    }

    #[test]
    fn each_kind_of_damage_is_found_where_it_is() {
        let rel = "docs/d00000000/layer-1";
        type Damage = fn(&Path);
        let cases: [(&str, Damage, &str, Severity); 11] = [
            (
                "truncated chunk",
                |d| {
                    let f = File::options()
                        .write(true)
                        .open(d.join("000001.keys"))
                        .unwrap();
                    f.set_len(10).unwrap();
                },
                "000001.keys",
                Severity::Error,
            ),
            (
                "missing chunk",
                |d| std::fs::remove_file(d.join("000002.values")).unwrap(),
                "000002.values",
                Severity::Error,
            ),
            (
                "both slots",
                |d| flip(&d.join(COUNT_FILE), &[14, SLOT + 14]),
                "count",
                Severity::Error,
            ),
            (
                "older slot",
                |d| flip(&d.join(COUNT_FILE), &[3]),
                "count",
                Severity::Error,
            ),
            (
                "index header",
                |d| flip(&d.join("hnsw-000001.idx"), &[4 * 5]),
                "hnsw-000001.idx",
                Severity::Error,
            ),
            (
                "index section",
                |d| {
                    let p = d.join("hnsw-000000.idx");
                    let len = std::fs::metadata(&p).unwrap().len() as usize;
                    flip(&p, &[len - 5]);
                },
                "hnsw-000000.idx",
                Severity::Error,
            ),
            (
                "stray temp",
                |d| std::fs::write(d.join("hnsw-000002.tmp77"), b"x").unwrap(),
                "hnsw-000002.tmp77",
                Severity::Warning,
            ),
            (
                "non-finite",
                |d| {
                    // In the open tail chunk (4 of 18 tokens), which has no checksum.
                    let p = d.join("000004.values");
                    let mut b = std::fs::read(&p).unwrap();
                    b[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
                    std::fs::write(&p, b).unwrap();
                },
                "000004.values",
                Severity::Error,
            ),
            (
                "finite bit flip in a sealed chunk",
                |d| flip(&d.join("000001.keys"), &[0]),
                "000001.keys",
                Severity::Error,
            ),
            // The one append of 18 tokens sealed chunks 0-3: a writer dying before their
            // checksums leaves this (tests/damage.rs has earlier chunks, errors).
            (
                "missing checksum of the last seal",
                |d| std::fs::remove_file(d.join("000002.crc")).unwrap(),
                "000002.crc",
                Severity::Warning,
            ),
            (
                "damaged checksum of the last seal",
                |d| flip(&d.join("000003.crc"), &[9]),
                "000003.crc",
                Severity::Warning,
            ),
        ];
        for (what, damage, file, severity) in cases {
            let (_d, root) = healthy(true);
            damage(&layer_dir(&root, 0, 1));
            let before = all_files(&root);
            let r = verify(&root, true).unwrap();
            assert_eq!(all_files(&root), before, "{what}: verify changed a file");
            let found = find(&r, &format!("{rel}/{file}"));
            assert_eq!(found.len(), 1, "{what}: {:?}", r.problems);
            assert_eq!(found[0].severity, severity, "{what}: {found:?}");
            assert_eq!(
                r.problems.len(),
                1,
                "{what}: nothing else should be reported: {:?}",
                r.problems
            );
        }
    }

    fn flip(path: &Path, at: &[usize]) {
        let mut b = std::fs::read(path).unwrap();
        for &i in at {
            b[i] ^= 0x10;
        }
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn manifest_damage_is_reported_and_the_walk_goes_on() {
        let (_d, root) = healthy(false);
        let path = root.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        // A checksum mismatch whose JSON still parses: reported, and the documents still checked.
        std::fs::write(
            &path,
            text.replacen("\"kv_heads\": 2", "\"kv_heads\":  2", 1),
        )
        .unwrap();
        std::fs::remove_file(layer_dir(&root, 1, 1).join("000000.keys")).unwrap();
        let r = verify(&root, false).unwrap();
        assert_eq!(errors(&r).len(), 2, "{:?}", r.problems);
        assert!(find(&r, MANIFEST_FILE)[0].message.contains("checksum"));
        assert_eq!(r.checked.documents, 2);
        // Garbage: the documents are still walked, without a configuration.
        std::fs::write(&path, b"\xff\x00garbage").unwrap();
        let r = verify(&root, true).unwrap();
        assert!(!r.is_ok());
        assert_eq!(r.checked.documents, 2);
    }

    #[test]
    fn orphans_unknown_files_and_uncommitted_chunks_are_warnings() {
        let (_d, root) = healthy(false);
        std::fs::create_dir(root.join(DOCS_DIR).join("d00000099")).unwrap();
        std::fs::write(root.join("notes.txt"), b"hi").unwrap();
        std::fs::write(root.join("manifest.json.tmp"), b"{").unwrap();
        let dir = layer_dir(&root, 1, 1);
        std::fs::write(dir.join("000001.keys"), b"").unwrap();
        std::fs::write(dir.join("count.tmp"), b"").unwrap();
        let r = verify(&root, true).unwrap();
        assert!(r.is_ok(), "{:?}", r.problems);
        let paths: Vec<&str> = r.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "docs/d00000001/layer-1/000001.keys",
                "docs/d00000001/layer-1/count.tmp",
                "docs/d00000099",
                "manifest.json.tmp",
                "notes.txt"
            ]
        );
    }

    #[test]
    fn slot_decoding_agrees_with_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(COUNT_FILE);
        let mut c = super::super::commit::CommitFile::open(&path).unwrap();
        for n in [0u64, 5, 9] {
            if n > 0 {
                c.commit(n).unwrap();
            }
            let b = std::fs::read(&path).unwrap();
            let best = [slot(&b[..SLOT]), slot(&b[SLOT..])]
                .into_iter()
                .filter_map(|s| match s {
                    Slot::Valid { seq, count } => Some(super::super::commit::Commit { seq, count }),
                    _ => None,
                })
                .max_by_key(|c| c.seq);
            assert_eq!(
                best,
                Some(super::super::commit::read_commit(&path).unwrap())
            );
        }
    }

    #[test]
    fn classify_names() {
        assert_eq!(classify("000000.keys"), LayerFile::Keys(0));
        assert_eq!(classify("1234567.values"), LayerFile::Values(1_234_567));
        assert_eq!(classify("00001.keys"), LayerFile::Unknown);
        assert_eq!(classify("0000001.keys"), LayerFile::Unknown);
        assert_eq!(classify("hnsw-000003.idx"), LayerFile::Index(3));
        assert_eq!(classify("hnsw-000003.tmp42"), LayerFile::Temp);
        assert_eq!(classify("hnswlib-000000-h1.bin"), LayerFile::Hnswlib);
        assert_eq!(classify("hnswlib-000000-h1.seal"), LayerFile::HnswlibSeal);
        assert_eq!(classify(".hnswlib-000000-h1.seal.7.tmp"), LayerFile::Temp);
        assert_eq!(classify(".hnswlib-000000-h1.bin.7.ab.tmp"), LayerFile::Temp);
        assert_eq!(classify("count.tmp"), LayerFile::Temp);
        assert_eq!(classify("+00000.keys"), LayerFile::Unknown);
    }

    /// Truncations and byte flips in every file of a store: never a panic, never a change.
    #[test]
    fn fuzzed_files_never_panic() {
        let (_d, root) = healthy(true);
        let pristine = all_files(&root);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n.max(1) as u64) as usize
        };
        for (path, bytes) in &pristine {
            if bytes.is_empty() {
                continue;
            }
            for round in 0..12 {
                let mut b = bytes.clone();
                match round % 3 {
                    0 => b.truncate(next(b.len())),
                    1 => {
                        for _ in 0..1 + next(4) {
                            let i = next(b.len());
                            b[i] ^= 1 << next(8);
                        }
                    }
                    _ => {
                        let i = next(b.len());
                        let n = next(64).min(b.len() - i);
                        b[i..i + n].fill(0xff);
                    }
                }
                std::fs::write(path, &b).unwrap();
                let damaged = all_files(&root);
                let r = verify(&root, true).unwrap();
                assert!(
                    r.problems
                        .iter()
                        .all(|p| !p.message.contains("internal error")),
                    "{}: {:?}",
                    path.display(),
                    r.problems
                );
                assert_eq!(all_files(&root), damaged);
                std::fs::write(path, bytes).unwrap();
            }
        }
    }
}
