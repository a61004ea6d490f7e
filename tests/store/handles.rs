//! Handles: the writer lock, read-only handles, deletion seen by readers, and unknown layers.

use super::*;

#[test]
fn second_writer_is_locked_out_but_readers_open() {
    let (_tmp, root) = store_dir();
    let mut first = MemoryStore::create(&root, config(Dtype::Float32, CHUNK)).unwrap();
    let mut rng = Lcg(1);
    let (k, v) = tokens(&mut rng, 3);
    append_f32(&mut first, "a", 1, &k, &v);
    let err = open_err(&root, false);
    assert!(matches!(err, Error::Locked(_)), "{err}");
    let mut r1 = MemoryStore::open(&root, true).unwrap();
    let mut r2 = MemoryStore::open(&root, true).unwrap();
    assert_eq!(r1.length("a", 1).unwrap(), 3);
    assert_eq!(r2.length("a", 1).unwrap(), 3);
    // The writer keeps writing while readers are open.
    append_f32(&mut first, "a", 1, &k, &v);
    assert_eq!(r1.length("a", 1).unwrap(), 6);
    drop(first);
    // Once the writer is gone, the next one gets the lock (readers do not hold it).
    let mut second = MemoryStore::open(&root, false).unwrap();
    assert!(matches!(open_err(&root, false), Error::Locked(_)));
    append_f32(&mut second, "a", 1, &k, &v);
    assert_eq!(r2.length("a", 1).unwrap(), 9);
}

#[test]
fn readonly_handles_refuse_writes() {
    let (_tmp, root) = store_dir();
    small_store(&root);
    let mut ro = MemoryStore::open(&root, true).unwrap();
    let mut rng = Lcg(2);
    let (k, v) = tokens(&mut rng, 2);
    for doc in ["a", "new"] {
        let err = ro
            .append(doc, 1, Elements::F32(&k), Elements::F32(&v))
            .unwrap_err();
        assert!(matches!(err, Error::ReadOnly(_)), "{err}");
    }
    assert!(matches!(ro.delete_document("a"), Err(Error::ReadOnly(_))));
    assert!(matches!(
        ro.delete_document("nope"),
        Err(Error::ReadOnly(_))
    ));
    assert_eq!(ro.length("a", 1).unwrap(), 17);
    assert_eq!(
        ro.documents().unwrap(),
        vec!["a".to_string(), "b".to_string()]
    );
    // A read-only handle does not block a writer.
    let mut w = MemoryStore::open(&root, false).unwrap();
    append_f32(&mut w, "a", 1, &k, &v);
}

#[test]
fn delete_document_removes_it_and_a_new_one_starts_empty() {
    let dtype = Dtype::Float16;
    let (_tmp, root) = store_dir();
    let mut store = MemoryStore::create(&root, config(dtype, CHUNK)).unwrap();
    let mut rng = Lcg(8);
    let (ka, va) = tokens(&mut rng, 15);
    let (kb, vb) = tokens(&mut rng, 9);
    append_f32(&mut store, "a", 1, &ka, &va);
    append_f32(&mut store, "a", 3, &ka, &va);
    append_f32(&mut store, "b", 1, &kb, &vb);
    let old_dir = doc_dir(&root, "a");
    assert!(old_dir.exists());

    assert!(store.delete_document("a").unwrap());
    assert!(!old_dir.exists());
    assert!(!store.delete_document("a").unwrap());
    assert!(!store.delete_document("never").unwrap());
    assert_eq!(store.documents().unwrap(), vec!["b".to_string()]);
    assert_eq!(store.length("a", 1).unwrap(), 0);
    assert_eq!(store.length("a", 3).unwrap(), 0);
    let query = vec![1.0f32; KV_HEADS * HEAD_DIM];
    let found = store
        .search(&["a"], 1, qs(&query, 1, KV_HEADS), 3, Backend::Exact)
        .unwrap();
    assert!(found.ids.iter().all(|&i| i == -1));

    // Re-creating the name starts from zero in a fresh directory.
    let (kc, vc) = tokens(&mut rng, 4);
    assert_eq!(append_f32(&mut store, "a", 1, &kc, &vc), 4);
    assert_ne!(doc_dir(&root, "a"), old_dir);
    assert_holds(
        &mut store,
        "a",
        1,
        &stored_vec(dtype, &kc),
        &stored_vec(dtype, &vc),
    );
    assert_eq!(store.length("a", 3).unwrap(), 0);
    drop(store);

    let mut store = MemoryStore::open(&root, true).unwrap();
    assert_eq!(
        store.documents().unwrap(),
        vec!["a".to_string(), "b".to_string()]
    );
    assert_holds(
        &mut store,
        "a",
        1,
        &stored_vec(dtype, &kc),
        &stored_vec(dtype, &vc),
    );
    assert_holds(
        &mut store,
        "b",
        1,
        &stored_vec(dtype, &kb),
        &stored_vec(dtype, &vb),
    );
}

#[test]
fn reader_sees_a_deletion() {
    let (_tmp, root) = store_dir();
    small_store(&root);
    let mut writer = MemoryStore::open(&root, false).unwrap();
    let mut reader = MemoryStore::open(&root, true).unwrap();
    assert_eq!(reader.length("a", 1).unwrap(), 17);
    writer.delete_document("a").unwrap();
    assert_eq!(reader.documents().unwrap(), vec!["b".to_string()]);
    assert_eq!(reader.length("a", 1).unwrap(), 0);
    assert_eq!(reader.length("b", 1).unwrap(), 17);
}

#[test]
fn unknown_layers_are_named() {
    let (_tmp, root) = store_dir();
    small_store(&root);
    let mut store = MemoryStore::open(&root, false).unwrap();
    let check = |r: Result<(), Error>| match r {
        Err(Error::UnknownLayer { layer, layers }) => {
            assert_eq!(layer, 2);
            assert_eq!(layers, LAYERS.to_vec());
        }
        Err(other) => panic!("expected UnknownLayer, got {other}"),
        Ok(()) => panic!("expected UnknownLayer, got Ok"),
    };
    let mut rng = Lcg(6);
    let (k, v) = tokens(&mut rng, 2);
    check(
        store
            .append("a", 2, Elements::F32(&k), Elements::F32(&v))
            .map(drop),
    );
    check(
        store
            .append("new", 2, Elements::F32(&k), Elements::F32(&v))
            .map(drop),
    );
    check(store.length("a", 2).map(drop));
    check(store.read("a", 2, 0, 0).map(drop));
    check(store.gather("a", 2, &[0, 1], KV_HEADS, 1).map(drop));
    let query = vec![1.0f32; KV_HEADS * HEAD_DIM];
    check(
        store
            .search(&["a"], 2, qs(&query, 1, KV_HEADS), 1, Backend::Exact)
            .map(drop),
    );
    // The failed append of a new document did not create it.
    assert_eq!(
        store.documents().unwrap(),
        vec!["a".to_string(), "b".to_string()]
    );
}

/// A reader that has a layer open when the writer deletes (and re-creates) its document sees
/// the change on its next call: no false "corrupt" and no stale data.
#[test]
fn reader_sees_a_deletion_without_listing_documents() {
    let (_tmp, root) = store_dir();
    small_store(&root);
    let mut writer = MemoryStore::open(&root, false).unwrap();
    let mut reader = MemoryStore::open(&root, true).unwrap();
    let mut rng = Lcg(12);
    let (kc, vc) = tokens(&mut rng, 2);
    append_f32(&mut writer, "c", 1, &kc, &vc);
    assert_eq!(reader.length("a", 1).unwrap(), 17);
    assert_eq!(reader.length("b", 1).unwrap(), 17);
    assert_eq!(reader.length("c", 1).unwrap(), 2);
    assert_eq!(reader.length("c", 3).unwrap(), 0); // an open layer with nothing committed

    writer.delete_document("a").unwrap();
    assert_eq!(reader.length("a", 1).unwrap(), 0);
    let query = vec![1.0f32; KV_HEADS * HEAD_DIM];
    let found = reader
        .search(
            &["a", "b"],
            1,
            qs(&[query.clone(), query.clone()].concat(), 1, KV_HEADS),
            2,
            Backend::Exact,
        )
        .unwrap();
    assert!(found.ids[..2 * KV_HEADS].iter().all(|&i| i == -1));
    assert!(found.ids[2 * KV_HEADS..].iter().all(|&i| i >= 0));
    // Re-created under the same name: the reader sees the new tokens only.
    let (k, v) = tokens(&mut rng, 3);
    append_f32(&mut writer, "a", 1, &k, &v);
    assert_holds(&mut reader, "a", 1, &k, &v);

    // Deleted and re-created between two calls of the reader, including a layer it had open
    // empty.
    writer.delete_document("c").unwrap();
    let (k3, v3) = tokens(&mut rng, 9);
    append_f32(&mut writer, "c", 3, &k3, &v3);
    assert_holds(&mut reader, "c", 3, &k3, &v3);
    assert_eq!(reader.length("c", 1).unwrap(), 0);
    assert_eq!(reader.length("b", 1).unwrap(), 17);
}
