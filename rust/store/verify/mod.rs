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

mod chunks;
mod hnsw;
mod hnswlib;
mod layer;
mod names;
mod root;
#[cfg(test)]
mod tests;

use std::fs::Metadata;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use super::manifest::MANIFEST_FILE;
use super::DOCS_DIR;
use crate::error::{Error, Result};

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
}
