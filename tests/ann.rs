//! The HNSW graphs of `fot_mem::ann` on their own: builds that depend only on the keys and the
//! parameters (not on the thread count), the index file (written, mapped back, searched the same;
//! damage detected, rejected or survived without a panic), recall of each linking against brute
//! force on clustered keys, and the degenerate sets of zero and one key.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use fot_mem::ann::{
    build, build_until, search, write, BuildParams, BuildSet, Graph, GraphRef, Linking, Scratch,
    SpanIndex, SpanRows,
};
use fot_mem::{Elements, Error};
use half::{bf16, f16};

// -- data ------------------------------------------------------------------------------------

/// SplitMix64, with gaussian draws by Box-Muller: reproducible data without a dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn gauss(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

/// `n` keys and `q` queries of `dim` (flat, row-major) around 64 gaussian centres of scale 2,
/// with noise 0.5: the clustered data the python tests use.
fn clustered(seed: u64, n: usize, q: usize, dim: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng(seed);
    let centres: Vec<f32> = (0..64 * dim).map(|_| 2.0 * rng.gauss()).collect();
    let mut draw = |count: usize| -> Vec<f32> {
        let mut out = Vec::with_capacity(count * dim);
        for _ in 0..count {
            let c = rng.below(64);
            out.extend((0..dim).map(|j| centres[c * dim + j] + 0.5 * rng.gauss()));
        }
        out
    };
    let keys = draw(n);
    let queries = draw(q);
    (keys, queries)
}

fn gaussian(seed: u64, count: usize) -> Vec<f32> {
    let mut rng = Rng(seed);
    (0..count).map(|_| rng.gauss()).collect()
}

fn params(linking: Linking) -> BuildParams {
    BuildParams {
        m: 16,
        ef_construction: 100,
        linking,
        seed: 0x0f07_6e3d,
    }
}

/// The keys as one run.
fn set(keys: &[f32], dim: usize, linking: Linking) -> BuildSet {
    BuildSet::new([Elements::F32(keys)], dim, linking)
}

fn rows(keys: &[f32], dim: usize) -> SpanRows<'_> {
    SpanRows::new(&[Elements::F32(keys)], dim, keys.len() / dim.max(1))
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The exact top-k ids of `query` (f64 scores, ties to the lower id).
fn brute_force(keys: &[f32], dim: usize, query: &[f32], k: usize) -> Vec<u32> {
    let mut all: Vec<(f64, u32)> = keys
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, key)| {
            let s = key
                .iter()
                .zip(query)
                .map(|(&x, &y)| x as f64 * y as f64)
                .sum::<f64>();
            (s, i as u32)
        })
        .collect();
    all.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    all.truncate(k);
    all.into_iter().map(|e| e.1).collect()
}

/// Mean fraction of the true top-k found, over the queries.
fn recall(g: &GraphRef, keys: &[f32], queries: &[f32], dim: usize, k: usize, ef: usize) -> f64 {
    let r = rows(keys, dim);
    let mut scr = Scratch::default();
    let mut hits = 0usize;
    let mut total = 0usize;
    for query in queries.chunks_exact(dim) {
        let found: Vec<u32> = search(g, &r, query, k, ef, &mut scr)
            .into_iter()
            .map(|e| e.1)
            .collect();
        let truth = brute_force(keys, dim, query, k);
        hits += truth.iter().filter(|t| found.contains(t)).count();
        total += truth.len();
    }
    hits as f64 / total as f64
}

/// Results are best first, distinct, in range, and scored by the true inner product.
fn check_results(found: &[(f32, u32)], keys: &[f32], dim: usize, query: &[f32], k: usize) {
    check_results_of("", found, keys, dim, query, k);
}

/// [`check_results`], naming `what` was searched when one fails.
fn check_results_of(
    what: &str,
    found: &[(f32, u32)],
    keys: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
) {
    let n = keys.len() / dim;
    assert!(found.len() <= k.min(n), "{what}: too many results");
    for w in found.windows(2) {
        assert!(w[0].0 >= w[1].0, "{what}: not best first: {w:?}");
    }
    let mut ids: Vec<u32> = found.iter().map(|e| e.1).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        found.len(),
        "{what}: an id came back twice: {found:?}"
    );
    for &(s, id) in found {
        assert!((id as usize) < n, "{what}: id {id} out of range (n = {n})");
        let want = dot(query, &keys[id as usize * dim..(id as usize + 1) * dim]);
        assert!(
            (s - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{what}: id {id}: score {s}, inner product {want}"
        );
    }
}

/// Every level-0 row and upper-level row is well formed: counts within capacity, neighbour ids
/// in range and not the node itself; upper-level node lists sorted.
fn check_structure(g: &Graph) {
    let (n, m, m0) = (g.n as usize, g.m as usize, g.m0 as usize);
    assert_eq!(g.level0.len(), n * (m0 + 1));
    for (i, row) in g.level0.chunks_exact(m0 + 1).enumerate() {
        let c = row[0] as usize;
        assert!(c <= m0);
        assert!(n <= 1 || c > 0, "node {i} has no neighbour");
        for &id in &row[1..1 + c] {
            assert!((id as usize) < n && id as usize != i);
        }
    }
    for (nodes, adj) in &g.upper {
        assert!(nodes.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(adj.len(), nodes.len() * (m + 1));
        for (row, &node) in adj.chunks_exact(m + 1).zip(nodes) {
            assert!(row[0] as usize <= m);
            for &id in &row[1..1 + row[0] as usize] {
                assert!(nodes.binary_search(&id).is_ok() && id != node);
            }
        }
    }
    if n > 0 {
        assert!((g.entry as usize) < n);
        if let Some((top, _)) = g.upper.last() {
            assert!(top.contains(&g.entry));
        }
    }
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
        .install(f)
}

// -- building --------------------------------------------------------------------------------

#[test]
fn builds_do_not_depend_on_the_thread_count() {
    let dim = 24;
    let (keys, _) = clustered(1, 6000, 0, dim);
    for linking in [Linking::Angular, Linking::InnerProduct, Linking::Reduction] {
        let p = params(linking);
        let one = in_pool(1, || build(&set(&keys, dim, linking), &p));
        let two = in_pool(2, || build(&set(&keys, dim, linking), &p));
        let four = in_pool(4, || build(&set(&keys, dim, linking), &p));
        check_structure(&one);
        assert!(!one.upper.is_empty(), "6000 nodes with m 16 reach level 1");
        assert!(
            one == two,
            "{linking:?}: 1 and 2 threads built different graphs"
        );
        assert!(
            one == four,
            "{linking:?}: 1 and 4 threads built different graphs"
        );
    }
}

#[test]
fn keys_in_several_runs_or_dtypes_build_the_same_graph_as_one_run() {
    let dim = 16;
    let keys = gaussian(2, 3000 * dim);
    let p = params(Linking::Angular);
    let whole = build(&set(&keys, dim, Linking::Angular), &p);
    let runs: Vec<Elements> = keys.chunks(1024 * dim).map(Elements::F32).collect();
    let pieces = build(&BuildSet::new(runs.clone(), dim, Linking::Angular), &p);
    assert!(whole == pieces);
    // Building reads keys as bf16: keys stored as bf16 build exactly the f32 graph.
    let b16: Vec<bf16> = keys.iter().map(|&x| bf16::from_f32(x)).collect();
    let from_bf16 = build(
        &BuildSet::new([Elements::Bf16(&b16)], dim, Linking::Angular),
        &p,
    );
    let rounded: Vec<f32> = b16.iter().map(|x| x.to_f32()).collect();
    assert!(from_bf16 == build(&set(&rounded, dim, Linking::Angular), &p));
    // A different seed gives a different (still valid) graph.
    let other = build(
        &set(&keys, dim, Linking::Angular),
        &BuildParams { seed: 7, ..p },
    );
    check_structure(&other);
    assert!(other != whole);
    // Searching the pieces, as the store lays a span out (runs of 1024 rows), finds the same.
    let (r_whole, r_runs) = (rows(&keys, dim), SpanRows::new(&runs, dim, 1024));
    assert_eq!(r_runs.len(), 3000);
    let mut scr = Scratch::default();
    for query in gaussian(3, 20 * dim).chunks_exact(dim) {
        let a = search(&whole.as_ref(), &r_whole, query, 10, 64, &mut scr);
        let b = search(&whole.as_ref(), &r_runs, query, 10, 64, &mut scr);
        assert_eq!(a, b);
        check_results(&a, &keys, dim, query, 10);
    }
}

#[test]
fn a_stopped_build_gives_up() {
    let dim = 8;
    let keys = gaussian(4, 2000 * dim);
    let stop = AtomicBool::new(true);
    let s = set(&keys, dim, Linking::Angular);
    assert!(build_until(&s, &params(Linking::Angular), &stop).is_none());
    let go = AtomicBool::new(false);
    assert!(
        build_until(&s, &params(Linking::Angular), &go)
            == Some(build(&s, &params(Linking::Angular)))
    );
}

#[test]
fn empty_and_single_key_sets() {
    let dim = 8;
    let mut scr = Scratch::default();
    let query = gaussian(5, dim);
    let dir = tempfile::tempdir().unwrap();
    for n in [0usize, 1, 2, 3] {
        let keys = gaussian(6 + n as u64, n * dim);
        for linking in [Linking::Angular, Linking::InnerProduct, Linking::Reduction] {
            let g = build(&set(&keys, dim, linking), &params(linking));
            assert_eq!(g.n as usize, n);
            check_structure(&g);
            let found = search(&g.as_ref(), &rows(&keys, dim), &query, 5, 16, &mut scr);
            assert_eq!(found.len(), n, "n = {n}: every key is found");
            check_results(&found, &keys, dim, &query, 5);
            let path = dir.path().join(format!("n{n}-{}.idx", linking.name()));
            write(
                &path,
                0,
                dim as u32,
                &params(linking),
                &[g.clone(), g.clone()],
            )
            .unwrap();
            let ix = SpanIndex::open(&path).unwrap();
            ix.verify(&path).unwrap();
            assert_eq!((ix.n as usize, ix.heads()), (n, 2));
            let again = search(&ix.graph(1), &rows(&keys, dim), &query, 5, 16, &mut scr);
            assert_eq!(again, found);
        }
    }
    // A graph over other rows than its own is not searched.
    let keys = gaussian(9, 10 * dim);
    let g = build(
        &set(&keys, dim, Linking::Angular),
        &params(Linking::Angular),
    );
    let fewer = rows(&keys[..9 * dim], dim);
    assert!(search(&g.as_ref(), &fewer, &query, 5, 16, &mut scr).is_empty());
}

// -- recall ----------------------------------------------------------------------------------

#[test]
fn recall_of_each_linking_against_brute_force() {
    let dim = 32;
    let (keys, queries) = clustered(10, 20_000, 200, dim);
    let far: Vec<f32> = gaussian(11, 200 * dim).iter().map(|x| 2.0 * x).collect();
    // (linking, floor for clustered queries, floor for queries away from the clusters), both
    // recall@10 at ef 128. Measured: clustered 0.999 angular, 0.994 ip, 0.9995 reduction; away
    // (plain gaussian queries, a hard MIPS case at n = 20000) 0.78-0.90 angular, 0.61-0.65 ip,
    // 0.70-0.95 reduction (the ranges span the graph variants being tried).
    let floors = [
        (Linking::Angular, 0.97, 0.70),
        (Linking::InnerProduct, 0.97, 0.50),
        (Linking::Reduction, 0.97, 0.60),
    ];
    for (linking, near_floor, far_floor) in floors {
        let g = build(&set(&keys, dim, linking), &params(linking));
        let mut g = g.as_ref();
        assert!(g.codes.is_some());
        // The same graph walked on the stored keys (a version 1 file) finds as much.
        let codes = g.codes.take();
        let plain = recall(&g, &keys, &queries, dim, 10, 128);
        g.codes = codes;
        let near = recall(&g, &keys, &queries, dim, 10, 128);
        assert!(
            plain >= near_floor,
            "{linking:?}: recall on the stored keys {plain} < {near_floor}"
        );
        let away = recall(&g, &keys, &far, dim, 10, 128);
        let small = recall(&g, &keys, &far, dim, 10, 10);
        eprintln!("{linking:?}: recall@10 ef 128 {near:.4} (far {away:.4}), far ef 10 {small:.4}");
        assert!(
            near >= near_floor,
            "{linking:?}: recall {near} < {near_floor}"
        );
        assert!(
            away >= far_floor,
            "{linking:?}: far recall {away} < {far_floor}"
        );
        assert!(small <= away, "{linking:?}: a larger ef found less");
    }
}

// -- the index file --------------------------------------------------------------------------

struct Built {
    dim: usize,
    keys: Vec<Vec<f32>>,
    graphs: Vec<Graph>,
    params: BuildParams,
}

/// Two kv heads of 3000 clustered keys of dim 16, written to `path` as the span at token 6000.
fn write_two_heads(path: &Path) -> Built {
    let dim = 16;
    let p = params(Linking::Angular);
    let keys: Vec<Vec<f32>> = (0..2).map(|h| clustered(20 + h, 3000, 0, dim).0).collect();
    let graphs: Vec<Graph> = keys
        .iter()
        .map(|k| build(&set(k, dim, Linking::Angular), &p))
        .collect();
    write(path, 6000, dim as u32, &p, &graphs).unwrap();
    Built {
        dim,
        keys,
        graphs,
        params: p,
    }
}

fn read_words(path: &Path) -> Vec<u32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn write_words(path: &Path, words: &[u32]) {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

/// Recomputes the header checksum (word 15: crc32 of words 0..15 and the directory).
fn fix_header_crc(words: &mut [u32]) {
    let heads = (words[3] as usize).min((words.len() - 16) / 8);
    let mut h = crc32fast::Hasher::new();
    let bytes = |w: &[u32]| w.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    h.update(&bytes(&words[..15]));
    h.update(&bytes(&words[16..16 + 8 * heads]));
    words[15] = h.finalize();
}

/// `open` refuses the file with `Error::Corrupt`, without panicking.
fn assert_rejected(path: &Path, what: &str) {
    match std::panic::catch_unwind(|| SpanIndex::open(path)) {
        Ok(Err(Error::Corrupt(msg))) => assert!(msg.contains(&path.display().to_string())),
        Ok(Err(e)) => panic!("{what}: expected Error::Corrupt, got {e:?}"),
        Ok(Ok(_)) => panic!("{what}: a damaged index opened"),
        Err(_) => panic!("{what}: open panicked"),
    }
}

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
    let second = words[16 + 8] as usize; // the second head's section
    for (at, head) in [(16 + 16, 0usize), (second + 5, 1), (words.len() - 1, 1)] {
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
