//! The index file: written and mapped back to the same graphs and results, checksums, files
//! rejected, and stored dtypes searched with their exact scores.

use super::*;

#[test]
fn written_indexes_map_back_to_the_same_graphs_and_results() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hnsw-000001.idx");
    let b = write_two_heads(&path);
    // Written whole under a temporary name then renamed: only the final name remains.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["hnsw-000001.idx"]);
    let ix = SpanIndex::open(&path).unwrap();
    ix.verify(&path).unwrap();
    assert_eq!((ix.first, ix.n, ix.dim, ix.heads()), (6000, 3000, 16, 2));
    let mut scr = Scratch::default();
    let queries = clustered(20, 0, 50, b.dim).1;
    for (h, g) in b.graphs.iter().enumerate() {
        let mapped = ix.graph(h);
        let mem = g.as_ref();
        assert_eq!((mapped.n, mapped.m, mapped.m0), (mem.n, mem.m, mem.m0));
        assert_eq!(mapped.entry, mem.entry);
        assert_eq!(mapped.level0, mem.level0);
        assert_eq!(mapped.top(), mem.top());
        for (a, e) in mapped.upper.iter().zip(&mem.upper) {
            assert_eq!((a.nodes, a.adj), (e.nodes, e.adj));
        }
        let (a, e) = (mapped.codes.unwrap(), mem.codes.unwrap());
        assert_eq!((a.stride, a.bytes, a.scales), (e.stride, e.bytes, e.scales));
        assert_eq!((a.stride, a.scales.len()), (b.dim, b.dim));
        let r = rows(&b.keys[h], b.dim);
        for query in queries.chunks_exact(b.dim) {
            for (k, ef) in [(1, 1), (10, 128), (50, 16)] {
                let want = search(&mem, &r, query, k, ef, &mut scr);
                let got = search(&mapped, &r, query, k, ef, &mut scr);
                assert_eq!(got, want);
                check_results(&got, &b.keys[h], b.dim, query, k);
            }
        }
    }
    // Rewriting the same graphs gives the same bytes.
    let again = dir.path().join("again.idx");
    write(&again, 6000, b.dim as u32, &b.params, &b.graphs).unwrap();
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&path).unwrap()
    );
}

#[test]
fn verify_catches_a_flipped_byte_in_a_section() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.idx");
    write_two_heads(&path);
    let clean = std::fs::read(&path).unwrap();
    let words = read_words(&path);
    // Sections start where the directory says (zero padding before each puts its codes on a
    // cache line).
    let first = words[16] as usize; // the first head's section
    let second = words[16 + 8] as usize; // the second head's section
    for (at, head) in [(first, 0usize), (second + 5, 1), (words.len() - 1, 1)] {
        let mut bytes = clean.clone();
        bytes[at * 4 + 1] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let ix = SpanIndex::open(&path).expect("the header is intact");
        match ix.verify(&path) {
            Err(Error::Corrupt(msg)) => assert!(msg.contains(&format!("kv head {head}")), "{msg}"),
            other => panic!("word {at}: verify gave {other:?}"),
        }
    }
}

#[test]
fn open_rejects_truncated_and_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.idx");
    write_two_heads(&path);
    let clean = std::fs::read(&path).unwrap();
    let len = clean.len();
    for cut in [
        0,
        1,
        3,
        4,
        60,
        64,
        64 + 32,
        64 + 64 - 4,
        64 + 64,
        len / 2,
        len - 4,
        len - 1,
    ] {
        std::fs::write(&path, &clean[..cut]).unwrap();
        assert_rejected(&path, &format!("truncated to {cut} bytes"));
    }
    // Bad magic, another version, any flipped header or directory byte (the checksum).
    for byte in [
        0, 5, 8, 12, 20, 24, 28, 36, 44, 60, 64, 68, 72, 80, 84, 88, 96, 120, 127,
    ] {
        let mut bytes = clean.clone();
        bytes[byte] ^= 0x04;
        std::fs::write(&path, &bytes).unwrap();
        assert_rejected(&path, &format!("byte {byte} flipped"));
    }
    // Not an index at all.
    std::fs::write(&path, b"{\"version\": 1}\n").unwrap();
    assert_rejected(&path, "json");
    assert!(matches!(
        SpanIndex::open(&dir.path().join("missing.idx")),
        Err(Error::Io { .. }) | Err(Error::NotFound { .. })
    ));
}

#[test]
fn open_rejects_inconsistent_headers_even_with_a_valid_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.idx");
    write_two_heads(&path);
    let clean = read_words(&path);
    let n = clean[5];
    type Change = Box<dyn Fn(&mut [u32])>;
    let cases: Vec<(&str, Change)> = vec![
        ("no heads", Box::new(|w| w[3] = 0)),
        ("more heads than the directory", Box::new(|w| w[3] = 3)),
        ("a huge head count", Box::new(|w| w[3] = u32::MAX)),
        ("more keys", Box::new(move |w| w[5] = n + 1)),
        ("fewer keys", Box::new(move |w| w[5] = n - 1)),
        ("a huge key count", Box::new(|w| w[5] = u32::MAX)),
        ("a huge m0", Box::new(|w| w[7] = u32::MAX)),
        ("a huge m", Box::new(|w| w[6] = u32::MAX)),
        ("section past the end", Box::new(|w| w[16] = w.len() as u32)),
        ("section offset high word", Box::new(|w| w[17] = 1)),
        (
            "section length u64::MAX",
            Box::new(|w| (w[18], w[19]) = (u32::MAX, u32::MAX)),
        ),
        ("section shorter", Box::new(|w| w[18] -= 1)),
        ("section longer", Box::new(|w| w[18] += 1)),
        ("sections overlapping the header", Box::new(|w| w[16] = 0)),
        ("entry out of range", Box::new(move |w| w[20] = n)),
        ("many more levels", Box::new(|w| w[21] = u32::MAX)),
        ("one more level", Box::new(|w| w[21] += 1)),
        ("one level fewer", Box::new(|w| w[21] -= 1)),
    ];
    for (what, change) in cases {
        let mut words = clean.clone();
        change(&mut words);
        fix_header_crc(&mut words);
        write_words(&path, &words);
        match std::panic::catch_unwind(|| SpanIndex::open(&path)) {
            Ok(Err(Error::Corrupt(_))) => {}
            Ok(Ok(ix)) => panic!("{what}: opened ({} heads, n {})", ix.heads(), ix.n),
            Ok(Err(e)) => panic!("{what}: {e:?}"),
            Err(_) => panic!("{what}: open panicked"),
        }
    }
}

#[test]
fn stored_dtypes_are_searched_with_their_exact_scores() {
    let dim = 32;
    let (keys, queries) = clustered(30, 4000, 40, dim);
    let p = params(Linking::Angular);
    let f16s: Vec<f16> = keys.iter().map(|&x| f16::from_f32(x)).collect();
    let b16s: Vec<bf16> = keys.iter().map(|&x| bf16::from_f32(x)).collect();
    let widened = [
        f16s.iter().map(|x| x.to_f32()).collect::<Vec<f32>>(),
        b16s.iter().map(|x| x.to_f32()).collect::<Vec<f32>>(),
    ];
    let stored = [Elements::F16(&f16s), Elements::Bf16(&b16s)];
    let mut scr = Scratch::default();
    for (elements, wide) in stored.iter().zip(&widened) {
        let g = build(&BuildSet::new([*elements], dim, Linking::Angular), &p);
        let r = SpanRows::new(&[*elements], dim, 4000);
        let r_wide = rows(wide, dim);
        let mut hits = 0;
        for query in queries.chunks_exact(dim) {
            let found = search(&g.as_ref(), &r, query, 10, 128, &mut scr);
            check_results(&found, wide, dim, query, 10);
            // The same graph over the widened f32 keys scores the same keys identically.
            assert_eq!(
                found,
                search(&g.as_ref(), &r_wide, query, 10, 128, &mut scr)
            );
            let truth = brute_force(wide, dim, query, 10);
            hits += found.iter().filter(|e| truth.contains(&e.1)).count();
        }
        assert!(
            hits as f64 / (10.0 * 40.0) >= 0.97,
            "recall {}",
            hits as f64 / 400.0
        );
    }
}
