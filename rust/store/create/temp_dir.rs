//! The sibling temporary directories a create builds a store in: their names, and the removal of
//! those abandoned by crashed creates.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::own_files::{only_create_files, remove_create_files};
use crate::error::{Error, Result};
use crate::store::lock::WriterLock;

/// Infix of the temporary directories: `.{name}.creating-{pid}-{nonce}`.
pub(super) const CREATING: &str = ".creating-";
/// A temporary directory younger than this is never removed as abandoned: its creator may sit
/// between making it and locking it.
pub(super) const ABANDONED_AFTER: Duration = Duration::from_secs(10);

/// Makes `parent/.{name}.creating-{pid}-{nonce}`.
pub(super) fn make_temp_dir(parent: &Path, name: &std::ffi::OsStr) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    let mut attempt = 0;
    loop {
        let clock = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let nonce = clock ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(40);
        let mut dir_name = OsString::from(".");
        dir_name.push(name);
        dir_name.push(format!("{CREATING}{pid}-{nonce:016x}"));
        let tmp = parent.join(dir_name);
        match fs::create_dir(&tmp) {
            Ok(()) => return Ok(tmp),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                attempt += 1
            }
            Err(e) => return Err(Error::io(tmp, e)),
        }
    }
}

/// The pid in a temporary directory name of `name`, or `None` for any other name.
pub(super) fn temp_dir_pid(entry: &std::ffi::OsStr, name: &std::ffi::OsStr) -> Option<u32> {
    let rest = entry.as_encoded_bytes().strip_prefix(b".")?;
    let rest = rest.strip_prefix(name.as_encoded_bytes())?;
    let rest = std::str::from_utf8(rest.strip_prefix(CREATING.as_bytes())?).ok()?;
    let (pid, nonce) = rest.split_once('-')?;
    if nonce.len() != 16 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    pid.parse().ok()
}

/// Best effort: removes the temporary directories of earlier creates of `name` in `parent` that
/// are abandoned: at least `min_age` old, lock file present and free (so their creator is gone or
/// failed; a live creator holds it from just after making the directory), and holding only
/// create's own files. Everything else is left alone; errors are ignored.
pub(super) fn remove_abandoned(parent: &Path, name: &std::ffi::OsStr, min_age: Duration) -> usize {
    let Ok(entries) = fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if temp_dir_pid(&entry.file_name(), name).is_none() {
            continue;
        }
        let dir = entry.path();
        let old_enough = entry
            .metadata()
            .ok()
            .filter(|m| m.is_dir())
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        if !old_enough {
            continue;
        }
        let Some(_lock) = WriterLock::try_existing(&dir) else {
            continue;
        };
        if only_create_files(&dir, true).unwrap_or(false) {
            remove_create_files(&dir);
            removed += usize::from(!dir.exists());
        }
    }
    removed
}
