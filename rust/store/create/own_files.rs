//! The files create itself writes before a store is complete: telling a directory that holds
//! nothing else (an unfinished create, safe to take over or remove), and removing them.

use std::fs;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::store::lock::LOCK_FILE;
use crate::store::manifest::{MANIFEST_FILE, TEMP_MANIFEST_FILE};
use crate::store::DOCS_DIR;

/// True if `dir` holds nothing but what create writes before the store is complete: an empty
/// `LOCK` file, an empty `docs/` directory, a temp manifest, and (`with_manifest`, for temporary
/// directories that never got renamed) the manifest. Symbolic links never qualify.
pub(super) fn only_create_files(dir: &Path, with_manifest: bool) -> Result<bool> {
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let path = entry.path();
        let meta = entry.metadata().at(&path)?; // does not follow symlinks
        let ok = match entry.file_name().to_str() {
            Some(LOCK_FILE) => meta.is_file() && meta.len() == 0,
            Some(DOCS_DIR) => meta.is_dir() && fs::read_dir(&path).at(&path)?.next().is_none(),
            Some(TEMP_MANIFEST_FILE) => meta.is_file(),
            Some(MANIFEST_FILE) => with_manifest && meta.is_file(),
            _ => false,
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes create's own files from `dir` and then `dir` itself if it is empty; ignores errors.
pub(super) fn remove_create_files(dir: &Path) {
    let _ = fs::remove_dir(dir.join(DOCS_DIR));
    for f in [TEMP_MANIFEST_FILE, MANIFEST_FILE, LOCK_FILE] {
        let _ = fs::remove_file(dir.join(f));
    }
    let _ = fs::remove_dir(dir);
}
