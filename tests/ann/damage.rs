//! Damaged index files (garbage ids and codes, version 1 files) open and search without a panic,
//! or are refused.

use super::*;

/// `path` opened and searched with `queries`, with whatever damage it holds: neither may panic;
/// a file that opens must give well-formed results (in range, distinct, truly scored).
fn open_and_search_safely(path: &Path, b: &Built, queries: &[f32], what: &str) -> bool {
    let opened = std::panic::catch_unwind(|| SpanIndex::open(path))
        .unwrap_or_else(|_| panic!("{what}: open panicked"));
    let Ok(ix) = opened else {
        return false;
    };
    let mut scr = Scratch::default();
    for h in 0..ix.heads().min(2) {
        let g = ix.graph(h);
        let r = rows(&b.keys[h], b.dim);
        for query in queries.chunks_exact(b.dim) {
            for (k, ef) in [(1, 1), (10, 64), (100, 300)] {
                let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    search(&g, &r, query, k, ef, &mut scr)
                }))
                .unwrap_or_else(|_| panic!("{what}: search panicked"));
                check_results_of(what, &found, &b.keys[h], b.dim, query, k);
            }
        }
    }
    true
}

#[test]
fn garbage_neighbour_ids_open_and_search_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.idx");
    let b = write_two_heads(&path);
    let clean = read_words(&path);
    let (n, m0) = (clean[5] as usize, clean[7] as usize);
    let level0: Vec<usize> = (0..2)
        .flat_map(|h| {
            let start = clean[16 + 8 * h] as usize;
            start..start + n * (m0 + 1)
        })
        .collect();
    let queries = clustered(20, 0, 20, b.dim).1;
    // Level 0 of both graphs (neighbour counts and ids): every `every`-th word 0xFFFFFFFF; no
    // checksum fixed. The file still opens (only verify() reads the sections) and searches safely.
    for (trial, every) in [1usize, 2, 3, 7, 64].into_iter().enumerate() {
        let mut words = clean.clone();
        for &at in level0.iter().skip(trial).step_by(every) {
            words[at] = u32::MAX;
        }
        write_words(&path, &words);
        let what = format!("every {every}th level-0 word");
        assert!(
            open_and_search_safely(&path, &b, &queries, &what),
            "{what}: not opened"
        );
        assert!(SpanIndex::open(&path).unwrap().verify(&path).is_err());
    }
    // Every word of the sections.
    let mut words = clean.clone();
    words[16 + 8 * 2..].fill(u32::MAX);
    write_words(&path, &words);
    open_and_search_safely(&path, &b, &queries, "all sections 0xFFFFFFFF");
}

/// Words past level 0 of each section (upper levels and whatever follows them): the last 400 of
/// each section, and every 37th before.
fn upper_spots(words: &[u32]) -> Vec<usize> {
    let (n, m0) = (words[5] as usize, words[7] as usize);
    let mut spots = Vec::new();
    for h in 0..2 {
        let start = words[16 + 8 * h] as usize;
        // Up to the codes (damaged codes: `garbage_codes_...`).
        let upper = start + n * (m0 + 1)..code_stride_word(words, h);
        spots.extend(upper.clone().rev().take(400));
        spots.extend(upper.step_by(37));
    }
    spots
}

/// Where the code stride word of head `h`'s section lies (after level 0, the upper levels and the
/// pivots; the scales and codes follow it to the section's end).
fn code_stride_word(words: &[u32], h: usize) -> usize {
    let (n, m, m0, dim) = (
        words[5] as usize,
        words[6] as usize,
        words[7] as usize,
        words[4] as usize,
    );
    let (start, len, top) = (
        words[16 + 8 * h] as usize,
        words[18 + 8 * h] as usize,
        words[21 + 8 * h] as usize,
    );
    let mut at = start + n * (m0 + 1);
    for _ in 0..top {
        let count = words[at] as usize;
        at += 1 + count + count * (1 + m);
    }
    at += 1 + words[at] as usize;
    let stride = words[at] as usize;
    assert_eq!(
        at + 1 + dim + n * stride / 4,
        start + len,
        "codes end the section"
    );
    at
}

/// `words` (a version 2 file) rewritten as version 1: the sections without their codes.
fn as_version_1(words: &[u32]) -> Vec<u32> {
    let heads = words[3] as usize;
    let mut out = words[..16 + 8 * heads].to_vec();
    out[2] = 1;
    for h in 0..heads {
        let start = words[16 + 8 * h] as usize;
        let section = &words[start..code_stride_word(words, h)];
        let at = out.len();
        out.extend_from_slice(section);
        let crc = crc32fast::hash(
            &section
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        let d = 16 + 8 * h;
        out[d] = at as u32;
        out[d + 2] = section.len() as u32;
        out[d + 6] = crc;
    }
    fix_header_crc(&mut out);
    out
}

#[test]
fn version_1_files_are_still_read_and_searched_on_the_stored_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.idx");
    let b = write_two_heads(&path);
    let old = dir.path().join("old.idx");
    write_words(&old, &as_version_1(&read_words(&path)));
    let ix = SpanIndex::open(&old).unwrap();
    ix.verify(&old).unwrap();
    let queries = clustered(20, 0, 30, b.dim).1;
    let mut scr = Scratch::default();
    for (h, g) in b.graphs.iter().enumerate() {
        let mapped = ix.graph(h);
        assert!(mapped.codes.is_none());
        let mut mem = g.as_ref();
        assert_eq!(mapped.level0, mem.level0);
        mem.codes = None;
        let r = rows(&b.keys[h], b.dim);
        for query in queries.chunks_exact(b.dim) {
            let want = search(&mem, &r, query, 10, 64, &mut scr);
            assert_eq!(search(&mapped, &r, query, 10, 64, &mut scr), want);
            check_results(&want, &b.keys[h], b.dim, query, 10);
        }
    }
    // A version this build does not know is refused with a clear error, not misread.
    let mut words = read_words(&path);
    words[2] = 3;
    fix_header_crc(&mut words);
    write_words(&old, &words);
    match SpanIndex::open(&old) {
        Err(Error::Corrupt(msg)) => assert!(msg.contains("version 3"), "{msg}"),
        other => panic!("expected a version error, got {other:?}"),
    }
}

#[test]
fn garbage_codes_open_and_search_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.idx");
    let b = write_two_heads(&path);
    let clean = read_words(&path);
    let queries = clustered(21, 0, 5, b.dim).1;
    let nan = f32::NAN.to_bits();
    for (value, what) in [
        (0u32, "zero"),
        (u32::MAX, "all ones"),
        (0x7f7f_7f7f, "large"),
        (nan, "nan"),
    ] {
        let mut words = clean.clone();
        for h in 0..2 {
            let at = code_stride_word(&words, h);
            let end = words[16 + 8 * h] as usize + words[18 + 8 * h] as usize;
            // Scales and codes, every other word (checksums are not checked at open).
            for w in (at + 1..end).step_by(2) {
                words[w] = value;
            }
        }
        write_words(&path, &words);
        assert!(open_and_search_safely(&path, &b, &queries, what));
    }
    // A stride that does not fit the file or the dimension is refused.
    for stride in [1u32, 2, b.dim as u32 - 4, u32::MAX - 3] {
        let mut words = clean.clone();
        let at = code_stride_word(&words, 0);
        words[at] = stride;
        write_words(&path, &words);
        assert_rejected(&path, &format!("code stride {stride}"));
    }
}

/// Each of `spots` set to `value` in turn: open may refuse the file (a level's size is a bounds
/// error), never panic, and a file it accepts searches safely. Returns how many were refused.
fn damage_each(path: &Path, b: &Built, clean: &[u32], spots: &[usize], value: u32) -> usize {
    let queries = clustered(20, 0, 4, b.dim).1;
    let mut refused = 0;
    for &at in spots {
        let mut words = clean.to_vec();
        words[at] = value;
        write_words(path, &words);
        let what = format!("word {at} = {value:#x}");
        refused += !open_and_search_safely(path, b, &queries, &what) as usize;
    }
    refused
}

#[test]
fn invalid_ids_past_level_0_are_refused_or_searched_safely() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.idx");
    let b = write_two_heads(&path);
    let clean = read_words(&path);
    let refused = damage_each(&path, &b, &clean, &upper_spots(&clean), u32::MAX);
    assert!(refused > 0, "no damaged level size was refused");
}

#[test]
fn valid_ids_past_level_0_are_refused_or_searched_safely() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.idx");
    let b = write_two_heads(&path);
    let clean = read_words(&path);
    for value in [0, 1] {
        damage_each(&path, &b, &clean, &upper_spots(&clean), value);
    }
}
