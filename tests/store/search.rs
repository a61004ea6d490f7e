//! Exact search against a naive scan: across chunks, padded past the length, and gathering the
//! tokens found.

use super::*;

/// Checks `search` of `docs` (holding `keys[b]`, rounded, `[n_b, KV_HEADS, HEAD_DIM]`) against a
/// naive scan in f64. Ranks whose naive scores are within `tol` of a neighbour may swap.
#[allow(clippy::too_many_arguments)]
fn check_search(
    store: &mut MemoryStore,
    docs: &[&str],
    keys: &[Vec<f32>],
    queries: &[f32],
    q: usize,
    heads: usize,
    k: usize,
    tol: f32,
) {
    let found = store
        .search(docs, 1, qs(queries, q, heads), k, Backend::Exact)
        .unwrap();
    assert_eq!(found.ids.len(), docs.len() * q * heads * k);
    assert_eq!(found.scores.len(), found.ids.len());
    let group = heads / KV_HEADS;
    for (b, doc_keys) in keys.iter().enumerate() {
        let n = doc_keys.len() / (KV_HEADS * HEAD_DIM);
        for qi in 0..q {
            for h in 0..heads {
                let g = h / group;
                let qv = &queries[((b * q + qi) * heads + h) * HEAD_DIM..][..HEAD_DIM];
                let score = |t: usize| -> f32 {
                    let kv = &doc_keys[(t * KV_HEADS + g) * HEAD_DIM..][..HEAD_DIM];
                    qv.iter()
                        .zip(kv)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>() as f32
                };
                let mut naive: Vec<(f32, i64)> = (0..n).map(|t| (score(t), t as i64)).collect();
                naive.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                let base = ((b * q + qi) * heads + h) * k;
                let ids = &found.ids[base..base + k];
                let scores = &found.scores[base..base + k];
                let what = format!("doc {} query {qi} head {h}", docs[b]);
                let mut seen = std::collections::HashSet::new();
                for j in 0..k {
                    if j >= n {
                        assert_eq!(ids[j], -1, "{what} rank {j}: padding id");
                        assert_eq!(
                            scores[j],
                            f32::NEG_INFINITY,
                            "{what} rank {j}: padding score"
                        );
                        continue;
                    }
                    let (want_score, want_id) = naive[j];
                    assert!(
                        (scores[j] - want_score).abs() <= tol,
                        "{what} rank {j}: score {} vs naive {want_score}",
                        scores[j]
                    );
                    assert!(
                        (0..n as i64).contains(&ids[j]),
                        "{what} rank {j}: id {}",
                        ids[j]
                    );
                    assert!(seen.insert(ids[j]), "{what}: id {} twice", ids[j]);
                    // The id returned must really have that score.
                    assert!(
                        (score(ids[j] as usize) - scores[j]).abs() <= tol,
                        "{what} rank {j}"
                    );
                    let clear = (j == 0 || naive[j - 1].0 - want_score > 2.0 * tol)
                        && (j + 1 >= n || want_score - naive[j + 1].0 > 2.0 * tol);
                    if clear {
                        assert_eq!(ids[j], want_id, "{what} rank {j}");
                    }
                    if j > 0 {
                        assert!(scores[j] <= scores[j - 1], "{what}: not sorted at rank {j}");
                    }
                }
            }
        }
    }
}

#[test]
fn search_matches_naive_scan_across_chunks() {
    let heads = 2 * KV_HEADS;
    for dtype in DTYPES {
        for chunk in [CHUNK, 16] {
            let (_tmp, root) = store_dir();
            let mut store = MemoryStore::create(&root, config(dtype, chunk)).unwrap();
            let mut rng = Lcg(1000 + dtype as u64 * 7 + chunk as u64);
            // Two documents of different lengths, each spread over several chunks and appended
            // in batches that straddle chunk boundaries.
            let mut keys = vec![Vec::new(), Vec::new()];
            for (b, (doc, batches)) in [
                ("long", &[30usize, 1, 45, 19][..]),
                ("short", &[11, 12][..]),
            ]
            .into_iter()
            .enumerate()
            {
                for &n in batches {
                    let (k, v) = tokens(&mut rng, n);
                    append_f32(&mut store, doc, 1, &k, &v);
                    keys[b].extend(stored_vec(dtype, &k));
                }
            }
            // Noise in the other layer must not leak into layer 1's results.
            let (k, v) = tokens(&mut rng, 40);
            append_f32(&mut store, "long", 3, &k, &v);
            let q = 3;
            let queries = rng.vec(2 * q * heads * HEAD_DIM, 2.0);
            for k in [1, 5, 23] {
                check_search(
                    &mut store,
                    &["long", "short"],
                    &keys,
                    &queries,
                    q,
                    heads,
                    k,
                    1e-4,
                );
            }
            // Queries with one head per kv head, one document at a time.
            let q1 = rng.vec(q * KV_HEADS * HEAD_DIM, 2.0);
            check_search(
                &mut store,
                &["short"],
                &keys[1..],
                &q1,
                q,
                KV_HEADS,
                8,
                1e-4,
            );
            // Results survive a reopen read-only.
            drop(store);
            let mut store = MemoryStore::open(&root, true).unwrap();
            check_search(
                &mut store,
                &["long", "short"],
                &keys,
                &queries,
                q,
                heads,
                10,
                1e-4,
            );
        }
    }
}

#[test]
fn search_pads_when_k_exceeds_length() {
    let dtype = Dtype::Float32;
    let (_tmp, root) = store_dir();
    let mut store = MemoryStore::create(&root, config(dtype, CHUNK)).unwrap();
    let mut rng = Lcg(77);
    let (k5, v5) = tokens(&mut rng, 5);
    append_f32(&mut store, "five", 1, &k5, &v5);
    let (k9, v9) = tokens(&mut rng, 9);
    append_f32(&mut store, "nine", 1, &k9, &v9);
    let heads = 2 * KV_HEADS;
    let q = 2;
    let queries = rng.vec(3 * q * heads * HEAD_DIM, 2.0);
    // k 12 > 9 > 5; the third slot is a document that does not exist.
    let k = 12;
    let found = store
        .search(
            &["five", "nine", "absent"],
            1,
            qs(&queries, q, heads),
            k,
            Backend::Exact,
        )
        .unwrap();
    for (b, n) in [(0usize, 5usize), (1, 9), (2, 0)] {
        for row in 0..q * heads {
            let base = (b * q * heads + row) * k;
            let ids = &found.ids[base..base + k];
            let scores = &found.scores[base..base + k];
            let mut real: Vec<i64> = ids[..n].to_vec();
            real.sort_unstable();
            assert_eq!(
                real,
                (0..n as i64).collect::<Vec<_>>(),
                "slot {b} row {row}"
            );
            assert!(scores[..n].iter().all(|s| s.is_finite()));
            assert!(
                ids[n..].iter().all(|&i| i == -1),
                "slot {b} row {row}: {ids:?}"
            );
            assert!(scores[n..].iter().all(|&s| s == f32::NEG_INFINITY));
        }
    }
    check_search(
        &mut store,
        &["five", "nine"],
        &[k5, k9],
        &queries[..2 * q * heads * HEAD_DIM],
        q,
        heads,
        k,
        1e-4,
    );

    // Bad shapes and k are refused.
    let one = &queries[..heads * HEAD_DIM];
    assert!(matches!(
        store.search(&["five"], 1, qs(one, 1, heads), 0, Backend::Exact),
        Err(Error::Value(_))
    ));
    assert!(matches!(
        store.search(&["five"], 1, qs(one, 1, KV_HEADS + 1), 3, Backend::Exact),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        store.search(&["five"], 1, qs(&one[1..], 1, heads), 3, Backend::Exact),
        Err(Error::Shape(_))
    ));
    let mut nan = one.to_vec();
    nan[3] = f32::NAN;
    assert!(matches!(
        store.search(&["five"], 1, qs(&nan, 1, heads), 3, Backend::Exact),
        Err(Error::Value(_))
    ));
}

#[test]
fn gather_returns_the_searched_tokens() {
    for dtype in DTYPES {
        let (_tmp, root) = store_dir();
        let mut store = MemoryStore::create(&root, config(dtype, CHUNK)).unwrap();
        let mut rng = Lcg(55 + dtype as u64);
        let (k, v) = tokens(&mut rng, 40);
        append_f32(&mut store, "doc", 1, &k, &v);
        let (keys, values) = (stored_vec(dtype, &k), stored_vec(dtype, &v));
        let heads = 2 * KV_HEADS;
        let (q, topk) = (3, 6);
        let queries = rng.vec(q * heads * HEAD_DIM, 2.0);
        let found = store
            .search(&["doc"], 1, qs(&queries, q, heads), topk, Backend::Exact)
            .unwrap();
        let mut ids = found.ids.clone();
        ids[1] = -1;
        let (gk, gv) = store.gather("doc", 1, &ids, heads, topk).unwrap();
        assert_eq!(gk.len(), ids.len() * HEAD_DIM);
        assert_eq!(gv.len(), ids.len() * VALUE_DIM);
        for (flat, &id) in ids.iter().enumerate() {
            let h = (flat / topk) % heads;
            let g = h / (heads / KV_HEADS);
            let got_k = &gk[flat * HEAD_DIM..][..HEAD_DIM];
            let got_v = &gv[flat * VALUE_DIM..][..VALUE_DIM];
            if id < 0 {
                assert!(got_k.iter().chain(got_v).all(|&x| x == 0.0));
                continue;
            }
            let t = id as usize;
            assert_eq!(got_k, &keys[(t * KV_HEADS + g) * HEAD_DIM..][..HEAD_DIM]);
            assert_eq!(
                got_v,
                &values[(t * KV_HEADS + g) * VALUE_DIM..][..VALUE_DIM]
            );
        }
        assert!(matches!(
            store.gather("doc", 1, &[0, 40], KV_HEADS, 1),
            Err(Error::Index(_))
        ));
        assert!(matches!(
            store.gather("doc", 1, &[-2, 0], KV_HEADS, 1),
            Err(Error::Index(_))
        ));
        // ids must be whole [heads, k] blocks, and heads a multiple of kv_heads.
        for (ids, h, k) in [
            (&[0i64, 1, 2][..], KV_HEADS, 1),
            (&[0, 1, 2, 3][..], KV_HEADS, 3),
            (&[0, 1][..], KV_HEADS, 0),
            (&[0, 1, 2][..], 3, 1),
        ] {
            assert!(
                matches!(store.gather("doc", 1, ids, h, k), Err(Error::Shape(_))),
                "{ids:?} heads {h} k {k}"
            );
        }
        // No ids, no output; a document that does not exist gives zeros for padding.
        assert_eq!(
            store.gather("doc", 1, &[], heads, topk).unwrap(),
            (vec![], vec![])
        );
        let (gk, gv) = store.gather("absent", 1, &[-1, -1], KV_HEADS, 1).unwrap();
        assert!(gk.iter().chain(&gv).all(|&x| x == 0.0));
    }
}
