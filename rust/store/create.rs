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

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::crash::crash_point;
use super::lock::{WriterLock, LOCK_FILE};
use super::manifest::{Manifest, MANIFEST_FILE, TEMP_MANIFEST_FILE};
use super::DOCS_DIR;
use crate::durable::sync_dir;
use crate::error::{Error, IoContext, Result};

/// Infix of the temporary directories: `.{name}.creating-{pid}-{nonce}`.
const CREATING: &str = ".creating-";
/// A temporary directory younger than this is never removed as abandoned: its creator may sit
/// between making it and locking it.
const ABANDONED_AFTER: Duration = Duration::from_secs(10);

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

/// True if `dir` holds nothing but what create writes before the store is complete: an empty
/// `LOCK` file, an empty `docs/` directory, a temp manifest, and (`with_manifest`, for temporary
/// directories that never got renamed) the manifest. Symbolic links never qualify.
fn only_create_files(dir: &Path, with_manifest: bool) -> Result<bool> {
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

/// Makes `parent/.{name}.creating-{pid}-{nonce}`.
fn make_temp_dir(parent: &Path, name: &std::ffi::OsStr) -> Result<PathBuf> {
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
fn temp_dir_pid(entry: &std::ffi::OsStr, name: &std::ffi::OsStr) -> Option<u32> {
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
fn remove_abandoned(parent: &Path, name: &std::ffi::OsStr, min_age: Duration) -> usize {
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

/// Removes create's own files from `dir` and then `dir` itself if it is empty; ignores errors.
fn remove_create_files(dir: &Path) {
    let _ = fs::remove_dir(dir.join(DOCS_DIR));
    for f in [TEMP_MANIFEST_FILE, MANIFEST_FILE, LOCK_FILE] {
        let _ = fs::remove_file(dir.join(f));
    }
    let _ = fs::remove_dir(dir);
}

/// Every crash point create passes, in order, per path (unit tests).
#[cfg(test)]
pub(super) const CRASH_POINTS_RENAME: [&str; 6] = [
    "rename: temp dir",
    "rename: locked",
    "rename: docs",
    "manifest: temp written",
    "rename: manifest",
    "rename: renamed",
];
#[cfg(test)]
pub(super) const CRASH_POINTS_IN_PLACE: [&str; 4] = [
    "in-place: locked",
    "in-place: docs",
    "manifest: temp written",
    "in-place: manifest",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Dtype;
    use crate::store::crash::CRASH_AT;
    use crate::store::{MemoryStore, StoreConfig};

    fn config() -> StoreConfig {
        StoreConfig::new(vec![0, 3], 2, 8, Dtype::Float16)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Runs create with a crash at `point`; returns true if it did crash there.
    fn crash_create(root: &Path, point: &'static str) -> bool {
        CRASH_AT.with(|c| c.set(Some(point)));
        let r = std::panic::catch_unwind(|| MemoryStore::create(root, config()).map(drop));
        CRASH_AT.with(|c| c.set(None));
        match r {
            Err(_) => true,
            Ok(done) => {
                done.unwrap();
                false
            }
        }
    }

    fn assert_complete_and_empty(root: &Path) {
        let mut s = MemoryStore::open(root, false).unwrap();
        assert_eq!(s.config(), &config());
        assert!(s.documents().unwrap().is_empty());
        assert_eq!(names(root), ["LOCK", "docs", "manifest.json"]);
    }

    #[test]
    fn crash_at_every_point_of_a_create_by_rename() {
        for point in CRASH_POINTS_RENAME {
            let parent = tempfile::tempdir().unwrap();
            let root = parent.path().join("store");
            assert!(crash_create(&root, point), "{point}: no crash");
            if point == "rename: renamed" {
                assert_complete_and_empty(&root);
                assert!(matches!(
                    MemoryStore::create(&root, config()),
                    Err(Error::Exists(_))
                ));
            } else {
                // Nothing at the path; only the temporary directory, which open ignores.
                assert!(!root.exists(), "{point}");
                let left = names(parent.path());
                assert_eq!(left.len(), 1, "{point}: {left:?}");
                assert!(left[0].starts_with(".store.creating-"), "{left:?}");
                let tmp = parent.path().join(&left[0]);
                assert!(only_create_files(&tmp, true).unwrap(), "{point}");
                // Young, so a create leaves it alone; old enough, it is removed.
                drop(MemoryStore::create(&root, config()).unwrap());
                assert_complete_and_empty(&root);
                assert!(tmp.exists(), "{point}");
                let name = std::ffi::OsStr::new("store");
                if point == "rename: temp dir" {
                    // Crashed before its lock file existed: never touched.
                    assert_eq!(remove_abandoned(parent.path(), name, Duration::ZERO), 0);
                    assert!(tmp.exists());
                } else {
                    assert_eq!(remove_abandoned(parent.path(), name, Duration::ZERO), 1);
                    assert!(!tmp.exists(), "{point}");
                }
            }
        }
    }

    #[test]
    fn crash_at_every_point_of_a_create_in_place() {
        for point in CRASH_POINTS_IN_PLACE {
            let parent = tempfile::tempdir().unwrap();
            let root = parent.path().join("store");
            fs::create_dir(&root).unwrap();
            assert!(crash_create(&root, point), "{point}: no crash");
            if point == "in-place: manifest" {
                assert_complete_and_empty(&root);
            } else {
                assert!(!root.join(MANIFEST_FILE).exists());
                assert!(matches!(
                    MemoryStore::open(&root, false),
                    Err(Error::NotAStore(_))
                ));
                assert!(only_create_files(&root, false).unwrap(), "{point}");
                drop(MemoryStore::create(&root, config()).unwrap());
                assert_complete_and_empty(&root);
            }
            assert_eq!(names(parent.path()), ["store"], "{point}");
        }
    }

    #[test]
    fn an_unfinished_directory_is_not_taken_over_while_locked() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("store");
        fs::create_dir_all(root.join(DOCS_DIR)).unwrap();
        let held = WriterLock::acquire(&root).unwrap(); // another creator, alive
        let err = MemoryStore::create(&root, config()).unwrap_err();
        assert!(matches!(err, Error::Locked(_)), "{err}");
        assert_eq!(names(&root), ["LOCK", "docs"]);
        drop(held);
        drop(MemoryStore::create(&root, config()).unwrap());
        assert_complete_and_empty(&root);
    }

    #[test]
    fn other_content_is_never_taken_over_or_removed() {
        let parent = tempfile::tempdir().unwrap();
        type Make<'a> = &'a dyn Fn(&Path);
        let cases: [(&str, Make); 4] = [
            ("user file", &|d| {
                fs::write(d.join("notes.txt"), "keep").unwrap()
            }),
            ("non-empty LOCK", &|d| {
                fs::write(d.join(LOCK_FILE), "x").unwrap()
            }),
            ("a document", &|d| {
                fs::create_dir_all(d.join(DOCS_DIR).join("d00000000")).unwrap()
            }),
            ("docs is a file", &|d| {
                fs::write(d.join(DOCS_DIR), "").unwrap()
            }),
        ];
        for (i, (what, make)) in cases.iter().enumerate() {
            let root = parent.path().join(format!("s{i}"));
            fs::create_dir(&root).unwrap();
            make(&root);
            let before = names(&root);
            let err = MemoryStore::create(&root, config()).unwrap_err();
            assert!(matches!(err, Error::NotAStore(_)), "{what}: {err}");
            assert_eq!(names(&root), before, "{what}");
        }
        // Temporary directories of the name with foreign content, a held lock, or another
        // name are left alone.
        let foreign = parent.path().join(".t.creating-1-0123456789abcdef");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join(LOCK_FILE), "").unwrap();
        fs::write(foreign.join("data.bin"), "user").unwrap();
        let live = parent.path().join(".t.creating-2-0123456789abcdef");
        fs::create_dir(&live).unwrap();
        let held = WriterLock::acquire(&live).unwrap();
        let other = parent.path().join(".u.creating-3-0123456789abcdef");
        fs::create_dir(&other).unwrap();
        fs::write(other.join(LOCK_FILE), "").unwrap();
        let name = std::ffi::OsStr::new("t");
        assert_eq!(remove_abandoned(parent.path(), name, Duration::ZERO), 0);
        assert!(foreign.join("data.bin").exists() && live.exists() && other.exists());
        drop(held);
        assert_eq!(remove_abandoned(parent.path(), name, Duration::ZERO), 1);
        assert!(!live.exists() && foreign.exists());
    }

    #[test]
    fn temp_dir_names() {
        let n = std::ffi::OsStr::new("my.store");
        let ok = std::ffi::OsStr::new(".my.store.creating-42-00000000deadbeef");
        assert_eq!(temp_dir_pid(ok, n), Some(42));
        for bad in [
            ".my.store.creating-42-deadbeef",
            ".my.store.creating-x-00000000deadbeef",
            "my.store.creating-42-00000000deadbeef",
            ".other.creating-42-00000000deadbeef",
            ".my.store.creating-42-00000000deadbeef/",
        ] {
            assert_eq!(temp_dir_pid(std::ffi::OsStr::new(bad), n), None, "{bad}");
        }
    }

    #[test]
    fn a_rename_onto_a_store_that_appeared_meanwhile_fails_cleanly() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("store");
        let tmp = make_temp_dir(parent.path(), std::ffi::OsStr::new("store")).unwrap();
        drop(MemoryStore::create(&root, config()).unwrap());
        let err =
            build_and_rename(&tmp, &root, &Manifest::new(config()), parent.path()).unwrap_err();
        assert!(matches!(err, Error::Exists(_)), "{err}");
        assert_complete_and_empty(&root);
    }
}
