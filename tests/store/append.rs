//! Appends that straddle chunks or are rejected, reopening, and readers following a writer.

use super::*;

#[test]
fn appends_straddling_chunks_read_back_exactly() {
    // Sizes chosen against chunk_tokens 7: inside one chunk, exactly to a boundary, across one
    // boundary, across several, and single tokens landing on and after a boundary.
    let sizes = [1usize, 6, 7, 13, 2, 20, 1, 15, 14, 3];
    for dtype in DTYPES {
        let (_tmp, root) = store_dir();
        let mut store = MemoryStore::create(&root, config(dtype, CHUNK)).unwrap();
        let mut rng = Lcg(dtype as u64 + 11);
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let (mut keys3, mut values3) = (Vec::new(), Vec::new());
        let mut total = 0u64;
        for (i, &n) in sizes.iter().enumerate() {
            let (k, v) = tokens(&mut rng, n);
            total += n as u64;
            // Alternate the input element type: the store converts whatever it is given.
            let len = match i % 3 {
                0 => append_f32(&mut store, "doc", 1, &k, &v),
                1 => {
                    let k16: Vec<f16> = k.iter().map(|&x| f16::from_f32(x)).collect();
                    let v16: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
                    let len = store
                        .append("doc", 1, Elements::F16(&k16), Elements::F16(&v16))
                        .unwrap();
                    keys.extend(k16.iter().map(|x| stored(dtype, x.to_f32())));
                    values.extend(v16.iter().map(|x| stored(dtype, x.to_f32())));
                    len
                }
                _ => {
                    let kb: Vec<bf16> = k.iter().map(|&x| bf16::from_f32(x)).collect();
                    let vb: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
                    let len = store
                        .append("doc", 1, Elements::Bf16(&kb), Elements::Bf16(&vb))
                        .unwrap();
                    keys.extend(kb.iter().map(|x| stored(dtype, x.to_f32())));
                    values.extend(vb.iter().map(|x| stored(dtype, x.to_f32())));
                    len
                }
            };
            if i % 3 == 0 {
                keys.extend(stored_vec(dtype, &k));
                values.extend(stored_vec(dtype, &v));
            }
            assert_eq!(len, total, "{dtype:?}: length after append {i}");
            // The other layer, with a different rhythm (always f32 input, half the tokens).
            let (k, v) = tokens(&mut rng, n.div_ceil(2));
            append_f32(&mut store, "doc", 3, &k, &v);
            keys3.extend(stored_vec(dtype, &k));
            values3.extend(stored_vec(dtype, &v));
            assert_holds(&mut store, "doc", 1, &keys, &values);
        }
        assert_holds(&mut store, "doc", 1, &keys, &values);
        assert_holds(&mut store, "doc", 3, &keys3, &values3);

        // An empty append changes nothing; reading past the end is an index error.
        assert_eq!(
            store
                .append("doc", 1, Elements::F32(&[]), Elements::F32(&[]))
                .unwrap(),
            total
        );
        assert!(matches!(
            store.read("doc", 1, 0, total + 1),
            Err(Error::Index(_))
        ));
        assert!(matches!(store.read("doc", 1, 5, 4), Err(Error::Index(_))));
        // A document that was never written reads as empty.
        assert_eq!(store.length("nobody", 1).unwrap(), 0);
        assert_eq!(store.read("nobody", 1, 0, 0).unwrap(), (vec![], vec![]));
    }
}

#[test]
fn rejected_appends_commit_nothing() {
    let (_tmp, root) = store_dir();
    let mut store = MemoryStore::create(&root, config(Dtype::Float16, CHUNK)).unwrap();
    let mut rng = Lcg(5);
    let (k, v) = tokens(&mut rng, 9);
    append_f32(&mut store, "doc", 1, &k, &v);
    // A value that overflows f16 in the middle of a batch that crosses a chunk boundary.
    let (mut k2, v2) = tokens(&mut rng, 10);
    k2[6 * KV_HEADS * HEAD_DIM + 3] = 1e6;
    let err = store
        .append("doc", 1, Elements::F32(&k2), Elements::F32(&v2))
        .unwrap_err();
    assert!(matches!(err, Error::Value(_)), "{err}");
    let (k3, mut v3) = tokens(&mut rng, 3);
    v3[1] = f32::NAN;
    let err = store
        .append("doc", 1, Elements::F32(&k3), Elements::F32(&v3))
        .unwrap_err();
    assert!(matches!(err, Error::Value(_)), "{err}");
    let err = store
        .append("doc", 1, Elements::F32(&k3[1..]), Elements::F32(&v3))
        .unwrap_err();
    assert!(matches!(err, Error::Shape(_)), "{err}");
    // A rejected first append does not create the document.
    let err = store
        .append("new", 1, Elements::F32(&k2), Elements::F32(&v2))
        .unwrap_err();
    assert!(matches!(err, Error::Value(_)), "{err}");
    assert_eq!(store.documents().unwrap(), vec!["doc".to_string()]);
    assert_holds(
        &mut store,
        "doc",
        1,
        &stored_vec(Dtype::Float16, &k),
        &stored_vec(Dtype::Float16, &v),
    );
    // The next good append lands right after the committed tokens, overwriting the debris.
    let (k4, v4) = tokens(&mut rng, 8);
    append_f32(&mut store, "doc", 1, &k4, &v4);
    drop(store);
    let mut store = MemoryStore::open(&root, true).unwrap();
    let keys: Vec<f32> = k.iter().chain(&k4).copied().collect();
    let values: Vec<f32> = v.iter().chain(&v4).copied().collect();
    assert_holds(
        &mut store,
        "doc",
        1,
        &stored_vec(Dtype::Float16, &keys),
        &stored_vec(Dtype::Float16, &values),
    );
}

#[test]
fn reopen_preserves_lengths_and_values() {
    for dtype in DTYPES {
        let (_tmp, root) = store_dir();
        let mut rng = Lcg(100 + dtype as u64);
        let (ka, va) = tokens(&mut rng, 23);
        let (kb, vb) = tokens(&mut rng, 7);
        {
            let mut store = MemoryStore::create(&root, config(dtype, CHUNK)).unwrap();
            append_f32(
                &mut store,
                "a",
                1,
                &ka[..10 * KV_HEADS * HEAD_DIM],
                &va[..10 * KV_HEADS * VALUE_DIM],
            );
            append_f32(
                &mut store,
                "a",
                1,
                &ka[10 * KV_HEADS * HEAD_DIM..],
                &va[10 * KV_HEADS * VALUE_DIM..],
            );
            append_f32(&mut store, "b", 3, &kb, &vb);
        }
        // Read-write reopen: everything is there, and appending continues where it stopped.
        let (kc, vc) = tokens(&mut rng, 12);
        {
            let mut store = MemoryStore::open(&root, false).unwrap();
            assert!(!store.is_readonly());
            assert_eq!(store.config(), &config(dtype, CHUNK));
            assert_eq!(
                store.documents().unwrap(),
                vec!["a".to_string(), "b".to_string()]
            );
            assert_holds(
                &mut store,
                "a",
                1,
                &stored_vec(dtype, &ka),
                &stored_vec(dtype, &va),
            );
            assert_holds(
                &mut store,
                "b",
                3,
                &stored_vec(dtype, &kb),
                &stored_vec(dtype, &vb),
            );
            assert_eq!(store.length("a", 3).unwrap(), 0);
            assert_eq!(store.length("b", 1).unwrap(), 0);
            assert_eq!(append_f32(&mut store, "a", 1, &kc, &vc), 35);
            store.flush().unwrap();
        }
        // Read-only reopen sees every committed token.
        let mut store = MemoryStore::open(&root, true).unwrap();
        assert!(store.is_readonly());
        let keys: Vec<f32> = ka.iter().chain(&kc).copied().collect();
        let values: Vec<f32> = va.iter().chain(&vc).copied().collect();
        assert_holds(
            &mut store,
            "a",
            1,
            &stored_vec(dtype, &keys),
            &stored_vec(dtype, &values),
        );
        assert_holds(
            &mut store,
            "b",
            3,
            &stored_vec(dtype, &kb),
            &stored_vec(dtype, &vb),
        );
        let bytes = (35 + 7) * config(dtype, CHUNK).token_bytes();
        assert_eq!(store.nbytes(None).unwrap(), bytes);
    }
}

#[test]
fn reader_sees_tokens_the_writer_commits_later() {
    let dtype = Dtype::Bfloat16;
    let (_tmp, root) = store_dir();
    let mut rng = Lcg(9);
    let mut writer = MemoryStore::create(&root, config(dtype, CHUNK)).unwrap();
    let (k, v) = tokens(&mut rng, 5);
    append_f32(&mut writer, "a", 1, &k, &v);
    let (mut keys, mut values) = (stored_vec(dtype, &k), stored_vec(dtype, &v));

    let mut reader = MemoryStore::open(&root, true).unwrap();
    assert_holds(&mut reader, "a", 1, &keys, &values);
    let query = vec![1.0f32; KV_HEADS * HEAD_DIM];
    let found = reader
        .search(&["a"], 1, qs(&query, 1, KV_HEADS), 64, Backend::Exact)
        .unwrap();
    assert_eq!(found.ids.iter().filter(|&&i| i >= 0).count(), KV_HEADS * 5);

    // The writer grows the document across several chunks and starts a new one.
    for n in [2usize, 9, 16] {
        let (k, v) = tokens(&mut rng, n);
        append_f32(&mut writer, "a", 1, &k, &v);
        keys.extend(stored_vec(dtype, &k));
        values.extend(stored_vec(dtype, &v));
        // The reader's very next call sees the new tokens.
        assert_holds(&mut reader, "a", 1, &keys, &values);
        let found = reader
            .search(&["a"], 1, qs(&query, 1, KV_HEADS), 64, Backend::Exact)
            .unwrap();
        let expect = KV_HEADS * (keys.len() / (KV_HEADS * HEAD_DIM));
        assert_eq!(found.ids.iter().filter(|&&i| i >= 0).count(), expect);
    }
    assert_eq!(reader.length("b", 3).unwrap(), 0);
    let (kb, vb) = tokens(&mut rng, 8);
    append_f32(&mut writer, "b", 3, &kb, &vb);
    assert_eq!(reader.length("b", 3).unwrap(), 8);
    assert_eq!(
        reader.documents().unwrap(),
        vec!["a".to_string(), "b".to_string()]
    );
    assert_holds(
        &mut reader,
        "b",
        3,
        &stored_vec(dtype, &kb),
        &stored_vec(dtype, &vb),
    );
}
