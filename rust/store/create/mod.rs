//! Crash-safe creation of a store directory.
//!
//! A store at a path that does not exist yet is built in a sibling temporary directory
//! `.{name}.creating-{pid}-{nonce}` (same parent, so the final rename is atomic): take its writer
//! lock, make `docs/`, write the manifest (temp file, fsync, rename, fsync of the directory), then
//! rename the directory to the store's path and fsync the parent. A crash before the rename leaves
//! nothing at the path (only the temporary directory); a crash after it leaves a complete, empty
//! store. The lock taken on the temporary directory travels with the rename, so the new handle
//! holds it throughout.
//!
//! A path that is an existing empty directory is filled in place under its writer lock instead
//! (its inode, owner and permissions are the caller's). A crash there leaves a directory holding
//! only what create writes (an empty `LOCK`, an empty `docs/`, maybe `manifest.json.tmp`) and no
//! manifest: such an *unfinished* directory counts as "not yet created", and the next create takes
//! it over, under its lock, so never while another process is creating it.
//!
//! Temporary directories of crashed creates are ignored by everything else; a later create of the
//! same path removes those whose lock is free (their creator is gone), that are older than a few
//! seconds, and that hold only create's own files.

mod own_files;
mod temp_dir;
#[cfg(test)]
mod tests;

use std::fs;
use std::path::{Path, PathBuf};

use super::crash::crash_point;
use super::lock::{WriterLock, LOCK_FILE};
use super::manifest::{Manifest, MANIFEST_FILE};
use super::DOCS_DIR;
use crate::durable::sync_dir;
use crate::error::{Error, IoContext, Result};
use own_files::{only_create_files, remove_create_files};
use temp_dir::{make_temp_dir, remove_abandoned, ABANDONED_AFTER};

/// Creates the store files for `manifest` at `root` and returns the held writer lock.
pub(super) fn create(root: &Path, manifest: &Manifest) -> Result<WriterLock> {
    match classify(root)? {
        Target::Missing => create_by_rename(root, manifest),
        Target::Unfinished => create_in_place(root, manifest),
    }
}

/// What `root` is, for a create that may go on.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// Nothing there yet.
    Missing,
    /// An empty directory, or one an interrupted create left.
    Unfinished,
}

/// Classifies `root`; a store, a file or a directory with other content are the errors create
/// reports.
fn classify(root: &Path) -> Result<Target> {
    if root.join(MANIFEST_FILE).exists() {
        return Err(exists(root));
    }
    match fs::metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Target::Missing),
        Err(e) => Err(Error::io(root, e)),
        Ok(m) if !m.is_dir() => Err(Error::NotAStore(format!(
            "cannot create a store at {}: it is a file, not a directory",
            root.display()
        ))),
        Ok(_) if only_create_files(root, false)? => Ok(Target::Unfinished),
        Ok(_) => Err(Error::NotAStore(format!(
            "cannot create a store in {}: the directory is not empty",
            root.display()
        ))),
    }
}

fn exists(root: &Path) -> Error {
    Error::Exists(format!(
        "a fot_mem store already exists at {}; open it with MemoryStore.open",
        root.display()
    ))
}

/// Fills an empty or unfinished directory in place, under its lock.
fn create_in_place(root: &Path, manifest: &Manifest) -> Result<WriterLock> {
    let lock = WriterLock::acquire(root).map_err(|e| match e {
        Error::Locked(_) => Error::Locked(format!(
            "cannot create a store at {}: another process is creating it (its lock {} is held)",
            root.display(),
            root.join(LOCK_FILE).display()
        )),
        e => e,
    })?;
    crash_point("in-place: locked");
    // Under the lock: another create may have finished, or someone put files there, meanwhile.
    if classify(root)? != Target::Unfinished {
        return Err(Error::NotFound {
            path: root.to_owned(),
            reason: "the directory was removed while the store was being created".into(),
        });
    }
    let docs = root.join(DOCS_DIR);
    match fs::create_dir(&docs) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(Error::io(docs, e)),
        _ => {}
    }
    crash_point("in-place: docs");
    manifest.save(root)?; // makes docs/ durable too (fsync of root)
    crash_point("in-place: manifest");
    sync_dir(&parent_of(root))?;
    Ok(lock)
}

fn parent_of(root: &Path) -> PathBuf {
    match root.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Builds the store in a sibling temporary directory and renames it to `root`.
fn create_by_rename(root: &Path, manifest: &Manifest) -> Result<WriterLock> {
    let name = root.file_name().ok_or_else(|| {
        Error::NotAStore(format!(
            "cannot create a store at {}: the path does not end in a directory name",
            root.display()
        ))
    })?;
    let parent = parent_of(root);
    fs::create_dir_all(&parent).at(&parent)?;
    remove_abandoned(&parent, name, ABANDONED_AFTER);
    let tmp = make_temp_dir(&parent, name)?;
    crash_point("rename: temp dir");
    let built = build_and_rename(&tmp, root, manifest, &parent);
    if built.is_err() {
        // Nothing of ours must stay behind; after a successful rename `tmp` is gone anyway.
        remove_create_files(&tmp);
    }
    built
}

fn build_and_rename(
    tmp: &Path,
    root: &Path,
    manifest: &Manifest,
    parent: &Path,
) -> Result<WriterLock> {
    let lock = WriterLock::acquire(tmp)?;
    crash_point("rename: locked");
    let docs = tmp.join(DOCS_DIR);
    fs::create_dir(&docs).at(&docs)?;
    crash_point("rename: docs");
    manifest.save(tmp)?; // fsyncs the manifest and the temporary directory
    crash_point("rename: manifest");
    // rename(2) replaces `root` only if it is missing or an empty directory (someone made an
    // empty one meanwhile: create accepts those anyway); anything else fails.
    if let Err(e) = fs::rename(tmp, root) {
        return Err(match fs::symlink_metadata(root) {
            Err(_) => Error::io(root, e),
            Ok(_) => match classify(root) {
                Err(err @ Error::NotAStore(_)) => err,
                _ => Error::Exists(format!(
                    "a fot_mem store already exists at {} (another process created it meanwhile)",
                    root.display()
                )),
            },
        });
    }
    crash_point("rename: renamed");
    sync_dir(parent)?;
    Ok(lock)
}
