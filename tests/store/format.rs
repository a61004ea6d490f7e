//! Format validation: damaged or foreign manifests, truncated or missing files, paths that are
//! not stores, and invalid configurations.

use super::*;

#[test]
fn manifest_with_a_flipped_byte_is_corrupt() {
    let (_tmp, root) = store_dir();
    small_store(&root);
    let path = root.join("manifest.json");
    let original = std::fs::read(&path).unwrap();
    let header_end = original.iter().position(|&b| b == b'\n').unwrap();
    // Flip bytes throughout the JSON body (the checksum covers all of it).
    for at in [
        header_end + 1,
        header_end + 20,
        original.len() / 2,
        original.len() - 2,
    ] {
        let mut bytes = original.clone();
        bytes[at] ^= 0x04;
        std::fs::write(&path, &bytes).unwrap();
        for readonly in [true, false] {
            let err = open_err(&root, readonly);
            assert!(matches!(err, Error::Corrupt(_)), "byte {at}: {err}");
        }
    }
    // Damage to the checksum itself.
    let mut bytes = original.clone();
    bytes[header_end - 1] = if bytes[header_end - 1] == b'0' {
        b'1'
    } else {
        b'0'
    };
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(open_err(&root, true), Error::Corrupt(_)));
    // A truncated manifest.
    std::fs::write(&path, &original[..original.len() - 10]).unwrap();
    assert!(matches!(open_err(&root, true), Error::Corrupt(_)));
    // Restored, the store opens again.
    std::fs::write(&path, &original).unwrap();
    let mut store = MemoryStore::open(&root, false).unwrap();
    assert_eq!(store.length("a", 1).unwrap(), 17);
}

#[test]
fn manifest_of_another_version_is_refused() {
    let (_tmp, root) = store_dir();
    small_store(&root);
    let path = root.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let version = format!("version={}", fot_mem::store::FORMAT_VERSION);
    assert!(text.lines().next().unwrap().contains(&version), "{text}");
    let newer = fot_mem::store::FORMAT_VERSION + 1;
    std::fs::write(
        &path,
        text.replacen(&version, &format!("version={newer}"), 1),
    )
    .unwrap();
    for readonly in [true, false] {
        match open_err(&root, readonly) {
            Error::Version {
                found, supported, ..
            } => {
                assert_eq!(found, newer);
                assert_eq!(supported, fot_mem::store::FORMAT_VERSION);
            }
            other => panic!("expected Error::Version, got {other}"),
        }
    }
}

#[test]
fn truncated_chunk_fails_only_its_layer() {
    for readonly in [true, false] {
        let (_tmp, root) = store_dir();
        small_store(&root);
        let chunk = doc_dir(&root, "a").join("layer-1").join("000001.keys");
        let len = std::fs::metadata(&chunk).unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&chunk)
            .unwrap();
        file.set_len(len - 10).unwrap();
        drop(file);

        let mut store = MemoryStore::open(&root, readonly).unwrap();
        let err = store.length("a", 1).unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("000001.keys"), "{err}");
        let query = vec![0.5f32; KV_HEADS * HEAD_DIM];
        let err = store
            .search(&["a"], 1, qs(&query, 1, KV_HEADS), 4, Backend::Exact)
            .unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
        let err = store
            .search(
                &["b", "a"],
                1,
                qs(&[query.clone(), query.clone()].concat(), 1, KV_HEADS),
                4,
                Backend::Exact,
            )
            .unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
        assert!(matches!(store.read("a", 1, 0, 1), Err(Error::Corrupt(_))));
        // Still an error the second time: nothing half-open was cached.
        assert!(matches!(store.length("a", 1), Err(Error::Corrupt(_))));

        // The other layer of the document and the other document are untouched.
        assert_eq!(store.length("a", 3).unwrap(), 17);
        assert_eq!(store.length("b", 1).unwrap(), 17);
        let found = store
            .search(&["b"], 1, qs(&query, 1, KV_HEADS), 4, Backend::Exact)
            .unwrap();
        assert!(
            found.ids.iter().all(|&i| (0..17).contains(&i)),
            "{:?}",
            found.ids
        );
        store.read("b", 1, 0, 17).unwrap();
        if !readonly {
            let mut rng = Lcg(4);
            let (k, v) = tokens(&mut rng, 4);
            assert_eq!(append_f32(&mut store, "b", 1, &k, &v), 21);
        }
    }
}

#[test]
fn missing_commit_chunk_is_corrupt() {
    let (_tmp, root) = store_dir();
    small_store(&root);
    std::fs::remove_file(doc_dir(&root, "b").join("layer-3").join("000002.values")).unwrap();
    let mut store = MemoryStore::open(&root, true).unwrap();
    assert!(matches!(store.length("b", 3), Err(Error::Corrupt(_))));
    assert_eq!(store.length("b", 1).unwrap(), 17);
}

#[test]
fn paths_that_are_not_stores() {
    let tmp = tempfile::tempdir().unwrap();
    // Nothing there.
    let missing = tmp.path().join("missing");
    for readonly in [true, false] {
        assert!(matches!(
            open_err(&missing, readonly),
            Error::NotFound { .. }
        ));
    }
    // A directory without a manifest, empty or not.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for readonly in [true, false] {
        assert!(matches!(open_err(&empty, readonly), Error::NotAStore(_)));
    }
    std::fs::write(empty.join("notes.txt"), "hello").unwrap();
    assert!(matches!(open_err(&empty, true), Error::NotAStore(_)));
    // A manifest that is some other file.
    std::fs::write(
        empty.join("manifest.json"),
        "{\"name\": \"something else\"}\n{}",
    )
    .unwrap();
    assert!(matches!(open_err(&empty, true), Error::NotAStore(_)));
    // A regular file where the store should be.
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    assert!(MemoryStore::open(&file, true).is_err());
    assert!(MemoryStore::create(&file, config(Dtype::Float32, CHUNK)).is_err());
    // Creating in a non-empty directory is refused and leaves it alone.
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("data"), "keep me").unwrap();
    let err = MemoryStore::create(&full, config(Dtype::Float32, CHUNK)).unwrap_err();
    assert!(matches!(err, Error::NotAStore(_)), "{err}");
    assert_eq!(
        std::fs::read_to_string(full.join("data")).unwrap(),
        "keep me"
    );
    assert!(!full.join("manifest.json").exists());
    // Creating in an existing empty directory works.
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    drop(MemoryStore::create(&fresh, config(Dtype::Float32, CHUNK)).unwrap());
    MemoryStore::open(&fresh, true).unwrap();
}

#[test]
fn create_over_an_existing_store_fails_and_keeps_it() {
    let (_tmp, root) = store_dir();
    small_store(&root);
    let manifest = std::fs::read(root.join("manifest.json")).unwrap();
    let err = MemoryStore::create(&root, config(Dtype::Float16, 16)).unwrap_err();
    assert!(matches!(err, Error::Exists(_)), "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(std::fs::read(root.join("manifest.json")).unwrap(), manifest);
    // Also while a writer holds it open.
    let mut writer = MemoryStore::open(&root, false).unwrap();
    assert!(MemoryStore::create(&root, config(Dtype::Float32, CHUNK)).is_err());
    assert_eq!(writer.length("a", 1).unwrap(), 17);
}

#[test]
fn invalid_configurations_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bad = vec![];
    let mut c = config(Dtype::Float32, CHUNK);
    c.layers = vec![];
    bad.push(c);
    let mut c = config(Dtype::Float32, CHUNK);
    c.layers = vec![3, 1];
    bad.push(c);
    let mut c = config(Dtype::Float32, CHUNK);
    c.layers = vec![1, 1];
    bad.push(c);
    bad.push(config(Dtype::Float32, 0));
    let mut c = config(Dtype::Float32, CHUNK);
    c.kv_heads = 0;
    bad.push(c);
    let mut c = config(Dtype::Float32, CHUNK);
    c.value_dim = 0;
    bad.push(c);
    for (i, c) in bad.into_iter().enumerate() {
        let root = tmp.path().join(format!("s{i}"));
        let err = MemoryStore::create(&root, c.clone()).unwrap_err();
        assert!(matches!(err, Error::Value(_)), "{c:?}: {err}");
        assert!(!root.join("manifest.json").exists());
    }
}
