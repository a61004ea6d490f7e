//! The HNSW graphs of `fot_mem::ann` on their own: builds that depend only on the keys and the
//! parameters (not on the thread count), the index file (written, mapped back, searched the same;
//! damage detected, rejected or survived without a panic), recall of each linking against brute
//! force on clustered keys, and the degenerate sets of zero and one key.

mod build;
mod damage;
mod file;

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
