//! Answering a query from one span's graph: greedy descent through the upper levels, best-first
//! search of level 0 with `ef`, the best `k` of the pool out. Keys are read straight from the
//! store's mapped chunks in their stored dtype and scored in f32 (queries keep a 0 in the extra
//! coordinate, so these are the plain inner products the exact backend computes).

use super::beam::{descend, search_level, Scratch};
use super::dot::{code_dot, code_dots, query_dot, CodeQuery, QueryDot};
use super::graph::GraphRef;
use crate::dtype::{Dtype, Elements};

/// One kv head's keys over a span, as the chunks hold them: runs of `run_rows` rows (the last
/// run may be shorter).
pub struct SpanRows<'a> {
    runs: Vec<&'a [u8]>,
    run_rows: usize,
    row_bytes: usize,
    n: usize,
    dot: QueryDot,
}

impl<'a> SpanRows<'a> {
    /// From consecutive runs of keys; every run but the last has `run_rows` rows.
    pub fn new(runs: &[Elements<'a>], dim: usize, run_rows: usize) -> Self {
        let dtype = runs.first().map_or(Dtype::Float32, |r| r.dtype());
        let row_bytes = dim * dtype.size();
        let bytes: Vec<&[u8]> = runs.iter().map(|r| r.as_bytes()).collect();
        let n = bytes.iter().map(|b| b.len() / row_bytes.max(1)).sum();
        debug_assert!(bytes
            .iter()
            .rev()
            .skip(1)
            .all(|b| b.len() == run_rows * row_bytes));
        SpanRows {
            runs: bytes,
            run_rows: run_rows.max(1),
            row_bytes,
            n,
            dot: query_dot(dtype),
        }
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    #[inline]
    fn ptr(&self, i: u32) -> *const u8 {
        // Chunks are usually a power of two tokens: a shift instead of a division.
        let (r, o) = if self.run_rows.is_power_of_two() {
            let s = self.run_rows.trailing_zeros();
            (i as usize >> s, i as usize & (self.run_rows - 1))
        } else {
            (i as usize / self.run_rows, i as usize % self.run_rows)
        };
        // In bounds: callers pass i < n, and every run before the last is full.
        self.runs[r][o * self.row_bytes..(o + 1) * self.row_bytes].as_ptr()
    }
}

/// Pivots a query starts from, besides the greedy descent.
const SEEDS: usize = 4;

/// Candidates rescored from the stored keys after a walk on the int8 codes: this many times `k`
/// (at most `ef`), so the code's rounding cannot push a true top-`k` key out of the answer.
const RESCORE: usize = 3;

/// The `k` best (score, node) of `query` in graph `g` over `rows`, best first. `g.n` must equal
/// `rows.len()`.
pub fn search(
    g: &GraphRef,
    rows: &SpanRows,
    query: &[f32],
    k: usize,
    ef: usize,
    scr: &mut Scratch,
) -> Vec<(f32, u32)> {
    if g.n == 0 || g.n as usize != rows.len() {
        return Vec::new();
    }
    let n = g.n as usize;
    if let Some(c) = g.codes.filter(|c| {
        c.stride >= query.len() && c.scales.len() == query.len() && c.bytes.len() >= n * c.stride
    }) {
        // Rank by (query * scale) . code: the inner product with the centred key, rounded.
        let mut q = std::mem::take(&mut scr.query);
        q.clear();
        q.extend(query.iter().zip(c.scales).map(|(a, b)| a * b));
        let (one, many) = (code_dot(), code_dots());
        // SAFETY: the dots were chosen for this CPU; ids are < n (the walk checks) and every code
        // row holds `query.len()` bytes.
        let mut score = |id: u32| unsafe { one(&q, c.row(id)) };
        let cq = CodeQuery::new(&q);
        let mut score_many =
            |ids: &[u32], out: &mut [f32]| unsafe { many(&cq, c.bytes, c.stride, ids, out) };
        let pre = |id: u32| crate::simd::prefetch(c.row(id), query.len());
        let mut pool = walk(g, k, ef, scr, &mut score, &mut score_many, &pre);
        scr.query = q;
        pool.truncate(ef.min(RESCORE * k).max(k));
        for e in &pool {
            crate::simd::prefetch(rows.ptr(e.1), rows.row_bytes);
        }
        for e in pool.iter_mut() {
            // SAFETY: as below.
            e.0 = unsafe { (rows.dot)(query, rows.ptr(e.1)) };
        }
        pool.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        pool.truncate(k);
        return pool;
    }
    // SAFETY: `dot` was chosen for this CPU and every row holds `query.len()` elements.
    let mut score = |id: u32| unsafe { (rows.dot)(query, rows.ptr(id)) };
    let pre = |id: u32| crate::simd::prefetch(rows.ptr(id), rows.row_bytes);
    let mut score_many = |ids: &[u32], out: &mut [f32]| {
        for (o, &id) in out.iter_mut().zip(ids) {
            // SAFETY: as above.
            *o = unsafe { (rows.dot)(query, rows.ptr(id)) };
        }
    };
    let mut best = walk(g, k, ef, scr, &mut score, &mut score_many, &pre);
    best.truncate(k);
    best
}

/// Descent, pivots and the level-0 search under `score`: the pool, best first.
fn walk(
    g: &GraphRef,
    k: usize,
    ef: usize,
    scr: &mut Scratch,
    score: &mut impl FnMut(u32) -> f32,
    score_many: &mut impl FnMut(&[u32], &mut [f32]),
    pre: &impl Fn(u32),
) -> Vec<(f32, u32)> {
    let entry = g.entry.min(g.n - 1);
    let (cur, best) = descend(g, 1, entry, score, pre);
    // Start level 0 from the descent's end and from the best pivots.
    for &p in g.pivots {
        if p < g.n {
            pre(p);
        }
    }
    let ids: Vec<u32> = g
        .pivots
        .iter()
        .copied()
        .filter(|&p| p < g.n && p != cur)
        .collect();
    let mut scores = vec![0f32; ids.len()];
    score_many(&ids, &mut scores);
    let mut entries: Vec<(f32, u32)> = scores.into_iter().zip(ids).collect();
    let seeds = SEEDS.min(entries.len());
    if seeds > 0 {
        entries.select_nth_unstable_by(seeds - 1, |a, b| b.0.total_cmp(&a.0));
        entries.truncate(seeds);
    }
    entries.push((best, cur));
    scr.begin(g.n as usize);
    search_level(g, 0, &entries, ef.max(k), 0, scr, score_many, pre);
    scr.pool.results()
}
