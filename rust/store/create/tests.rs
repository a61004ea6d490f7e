//! Unit tests of `create`: a crash at every step, takeovers, and what is never removed.

use std::time::Duration;

use super::temp_dir::temp_dir_pid;
use super::*;
use crate::dtype::Dtype;
use crate::store::crash::CRASH_AT;
use crate::store::{MemoryStore, StoreConfig};

/// Every crash point create passes, in order, per path.
const CRASH_POINTS_RENAME: [&str; 6] = [
    "rename: temp dir",
    "rename: locked",
    "rename: docs",
    "manifest: temp written",
    "rename: manifest",
    "rename: renamed",
];
const CRASH_POINTS_IN_PLACE: [&str; 4] = [
    "in-place: locked",
    "in-place: docs",
    "manifest: temp written",
    "in-place: manifest",
];

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
    let err = build_and_rename(&tmp, &root, &Manifest::new(config()), parent.path()).unwrap_err();
    assert!(matches!(err, Error::Exists(_)), "{err}");
    assert_complete_and_empty(&root);
}
