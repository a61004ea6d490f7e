//! Building a graph: HNSW insertion (greedy descent, best-first search with `ef_construction`,
//! the neighbour-selection heuristic, reverse links pruned by the same heuristic), done in
//! batches so both threads work without locks: each batch searches the graph as it stood
//! (read-only, in parallel), then links (forward rows by their owner, reverse rows grouped by
//! target). Batches double from 1 up to a small fraction of the span, so early nodes see each
//! other. The result depends only on the keys and the parameters, never on the thread count.
//!
//! Searches rank by inner product, which is not a metric: a graph linked by inner product leaves
//! keys of small norm unreachable and recall plateaus (hnswlib's "ip" space: 0.13-0.49 on real
//! attention keys). Keys are centred per span, linked on a sphere (the MIPS reduction) plus a few
//! inner-product links, near-duplicates stay linked, and farthest-point pivots give queries
//! extra entry points; see [`Linking`] for the measured choice.

mod set;

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::beam::{descend, search_level, Scratch};
use super::dot::CodeQuery;
use super::graph::{level_of, mix, Graph, GraphRef};
use super::params::{BuildParams, Linking};
pub use set::{code_stride, BuildSet};

/// An insertion's walk stops after this many expansions in a row that add nothing to its pool
/// (or at HNSW's own end, if sooner): by then the pool's best have settled, and the walk's tail
/// mostly confirms them. On real SmolLM2 keys (131K x 64, ef_construction 100, Zen 5, against
/// hnswlib in the same runs) 3 built 1.1-1.4x faster and kept queries/s at recall 0.95 within 6%;
/// 1 built faster still but cost 20-40% of queries/s on two of three heads (`docs/benchmarks.md`).
const PATIENCE: usize = 3;

/// Cosine above which two linked vectors count as duplicates.
const DUPLICATE_COS: f32 = 0.99;

/// Selects up to `max` neighbours from `cands` (best first, scored by `set.sim(x, _)`): a candidate is kept only if it is
/// nearer the new node than every neighbour kept so far (HNSW's heuristic), which spreads links
/// over directions instead of spending them all in one cluster.
fn select(set: &BuildSet, x: u32, cands: &[(f32, u32)], max: usize) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::with_capacity(max);
    for &(s, c) in cands {
        if out.len() == max {
            break;
        }
        // Near-duplicates of x (attention sinks: the first token of every window has nearly the
        // same key, and real keys hold clusters of hundreds of near-identical small keys that are
        // the top hits of most queries) would all be pruned by the heuristic, leaving a long chain
        // that no beam walks; they are always kept. Capping them at half the links (as before)
        // split such clusters into cliques: on SmolLM2 layer 15 kv head 2, recall@32 stalled at
        // 0.93 whatever the ef; uncapped it reaches 0.97 at ef 128, other heads unchanged.
        // `s` is `sim(x, c)` (every caller scores candidates so): the cosine from it, without
        // a second dot product.
        if set.cos_of(x, c, s) >= DUPLICATE_COS || out.iter().all(|&r| set.sim(c, r) < s) {
            out.push(c);
        }
    }
    out
}

/// Up to `max` more links, not in `have` (`cands` scored by `set.sim(x, _)`), by raw inner product with `x` (the extra coordinate
/// left out), with the heuristic in that space: links toward the keys of largest norm in x's
/// direction, which inner-product queries climb to.
fn select_ip(set: &BuildSet, x: u32, cands: &[(f32, u32)], max: usize, have: &[u32]) -> Vec<u32> {
    let ip = |a: u32, b: u32| set.sim(a, b) - set.extra[a as usize] * set.extra[b as usize];
    let mut c: Vec<(f32, u32)> = cands
        .iter()
        .filter(|e| !have.contains(&e.1))
        // `e.0` is `sim(x, e.1)`: the inner product from it, without a second dot product.
        .map(|e| (e.0 - set.extra[x as usize] * set.extra[e.1 as usize], e.1))
        .collect();
    c.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut out: Vec<u32> = Vec::with_capacity(max);
    for (s, cand) in c {
        if out.len() == max {
            break;
        }
        if out.iter().all(|&r| ip(cand, r) < s) {
            out.push(cand);
        }
    }
    out
}

/// Raw access to the adjacency rows, so threads can write disjoint rows at once.
struct Rows<'a> {
    level0: (*mut u32, usize),
    /// Per upper level: its sorted nodes and its adjacency (pointer, length).
    upper: Vec<(&'a [u32], *mut u32, usize)>,
}

// SAFETY: `row_mut`'s callers write disjoint rows, and nobody reads adjacency meanwhile.
unsafe impl Sync for Rows<'_> {}

impl<'a> Rows<'a> {
    fn new(g: &'a mut Graph) -> Self {
        Rows {
            level0: (g.level0.as_mut_ptr(), g.level0.len()),
            upper: g
                .upper
                .iter_mut()
                .map(|(n, a)| (n.as_slice(), a.as_mut_ptr(), a.len()))
                .collect(),
        }
    }

    /// The row (count + `cap` slots) of `node` at `level`.
    ///
    /// # Safety
    /// No other live reference may cover the same row.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row_mut(&self, level: usize, node: u32, cap: usize) -> &mut [u32] {
        let ((ptr, len), slot) = if level == 0 {
            (self.level0, node as usize)
        } else {
            let (nodes, ptr, len) = self.upper[level - 1];
            let slot = nodes
                .binary_search(&node)
                .expect("node lives on this level");
            ((ptr, len), slot)
        };
        assert!((slot + 1) * (cap + 1) <= len);
        std::slice::from_raw_parts_mut(ptr.add(slot * (cap + 1)), cap + 1)
    }
}

/// Builds the graph of `set` (node ids are row positions).
pub fn build(set: &BuildSet, p: &BuildParams) -> Graph {
    build_until(set, p, &AtomicBool::new(false)).expect("never stopped")
}

/// [`build`], giving up (`None`) at the next batch once `stop` is set.
pub fn build_until(set: &BuildSet, p: &BuildParams, stop: &AtomicBool) -> Option<Graph> {
    let n = set.n;
    let (m, m0) = (p.m.max(2), 2 * p.m.max(2));
    let levels: Vec<u8> = (0..n as u32)
        .map(|i| level_of(i, m, p.seed) as u8)
        .collect();
    let max_level = levels.iter().copied().max().unwrap_or(0) as usize;
    let mut g = Graph {
        n: n as u32,
        m: m as u32,
        m0: m0 as u32,
        entry: 0,
        level0: vec![0; n * (m0 + 1)],
        upper: (1..=max_level)
            .map(|l| {
                let nodes: Vec<u32> = (0..n as u32)
                    .filter(|&i| levels[i as usize] as usize >= l)
                    .collect();
                let adj = vec![0; nodes.len() * (m + 1)];
                (nodes, adj)
            })
            .collect(),
        pivots: Vec::new(),
        codes: set.codes().to_vec(),
        scales: set.scales.clone(),
    };
    if n == 0 {
        return Some(g);
    }
    g.pivots = pivots(set, PIVOTS.min(n));
    // A random insertion order: tokens arrive clustered in time, and HNSW degrades when inserted
    // in such an order.
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_unstable_by_key(|&i| mix(p.seed ^ 0x5eed ^ ((i as u64) << 20)));
    let mut entry = order[0];
    let mut top = levels[entry as usize] as usize;
    let max_batch = (n / 64).max(64);
    let (mut pos, mut batch) = (1usize, 1usize);
    while pos < n {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let nodes = &order[pos..(pos + batch).min(n)];
        let found: Vec<Vec<Vec<u32>>> = {
            let mut view = g.as_ref();
            view.upper.truncate(top);
            view.entry = entry;
            nodes
                .par_iter()
                .map_init(Scratch::default, |scr, &x| {
                    neighbours(set, &view, x, levels[x as usize] as usize, p, scr)
                })
                .collect()
        };
        link(set, &mut g, nodes, &found, m, m0);
        for &x in nodes {
            if levels[x as usize] as usize > top {
                top = levels[x as usize] as usize;
                entry = x;
            }
        }
        pos += nodes.len();
        batch = (batch * 2).min(max_batch);
    }
    g.entry = entry;
    g.upper.truncate(top);
    Some(g)
}

/// Pivots per graph.
const PIVOTS: usize = 256;

/// Nodes per parallel chunk of a pivot pass.
const PIVOT_CHUNK: usize = 4096;

/// The least of `near` (`total_cmp`, the lowest id among ties) and its id, the chunk's first
/// node being `first`.
fn least(near: &[f32], first: u32) -> (f32, u32) {
    near.iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(&b.0)))
        .map_or((f32::INFINITY, u32::MAX), |(i, &s)| (s, first + i as u32))
}

/// The lesser of two (score, id) by `total_cmp`, then the lower id: what one scan would pick.
fn lesser(a: (f32, u32), b: (f32, u32)) -> (f32, u32) {
    if b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).is_lt() {
        b
    } else {
        a
    }
}

/// A farthest-point sample of `count` nodes: each next pivot is the node least similar to all
/// pivots so far. Clusters the graph barely links to (attention sinks: the first token of every
/// window) get a pivot of their own.
fn pivots(set: &BuildSet, count: usize) -> Vec<u32> {
    let mut near = vec![f32::NEG_INFINITY; set.n];
    let mut out = vec![0u32];
    let stride = code_stride(set.dim);
    while out.len() < count {
        let last = *out.last().expect("one pivot at least");
        // On the codes where the walk uses them: a pass reads a quarter of the bytes of the f32
        // keys.
        let q: Vec<f32> = if set.walk_codes {
            set.row(last)
                .iter()
                .zip(&set.scales)
                .map(|(&b, &s)| half::bf16::from_bits(b).to_f32() * s)
                .collect()
        } else {
            Vec::new()
        };
        let (q, nl) = (CodeQuery::new(&q), set.norm[last as usize]);
        // Each chunk's least-similar node comes back with its pass (a scan of all nodes after
        // each pass ran on one thread: half the pivots' time).
        let far = near
            .par_chunks_mut(PIVOT_CHUNK)
            .enumerate()
            .map(|(c, near)| {
                let first = (c * PIVOT_CHUNK) as u32;
                if set.walk_codes {
                    let ids: Vec<u32> = (first..first + near.len() as u32).collect();
                    let mut ip = vec![0f32; ids.len()];
                    // SAFETY: chosen for this CPU; ids are < n, code rows hold `dim` bytes.
                    unsafe { (set.code_dots)(&q, set.codes(), stride, &ids, &mut ip) };
                    for ((s, &p), &id) in near.iter_mut().zip(&ip).zip(&ids) {
                        let cos = p / (nl * set.norm[id as usize]).max(f32::MIN_POSITIVE);
                        *s = s.max(cos);
                    }
                } else {
                    for (i, s) in near.iter_mut().enumerate() {
                        *s = s.max(set.cos(last, first + i as u32));
                    }
                }
                least(near, first)
            })
            .reduce(|| (f32::INFINITY, u32::MAX), lesser)
            .1;
        // Every node tied at +inf (or none at all): the first, as a scan would pick.
        let far = if far == u32::MAX { 0 } else { far };
        out.push(far);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Searches the graph for `x`'s neighbours at each of its levels (lowest last).
fn neighbours(
    set: &BuildSet,
    g: &GraphRef,
    x: u32,
    lx: usize,
    p: &BuildParams,
    scr: &mut Scratch,
) -> Vec<Vec<u32>> {
    if set.walk_codes {
        // Walk on the int8 codes (one cache line a key at 64 dimensions), with x as the query:
        // its centred key times the scale of each dimension, plus the extra coordinate.
        let mut q = std::mem::take(&mut scr.query);
        q.clear();
        q.extend(
            set.row(x)
                .iter()
                .zip(&set.scales)
                .map(|(&b, &s)| half::bf16::from_bits(b).to_f32() * s),
        );
        let ex = set.extra[x as usize];
        let stride = code_stride(set.dim);
        let (one, many) = (set.code_dot, set.code_dots);
        // SAFETY: the dots were chosen for this CPU; ids are < n and code rows hold `dim` bytes.
        let mut score = |id: u32| {
            let c = set.code(id);
            (unsafe { one(&q, c) }) + ex * set.extra[id as usize]
        };
        let cq = CodeQuery::new(&q);
        let mut score_many = |ids: &[u32], out: &mut [f32]| {
            unsafe { many(&cq, set.codes(), stride, ids, out) };
            for (o, &id) in out.iter_mut().zip(ids) {
                *o += ex * set.extra[id as usize];
            }
        };
        // The extra coordinate lives apart from the code row: fetch both (a miss on `extra`
        // was a tenth of the build).
        let pre = |id: u32| {
            crate::simd::prefetch(set.code(id), set.dim);
            if let Some(e) = set.extra.get(id as usize) {
                crate::simd::prefetch((e as *const f32).cast(), 4);
            }
        };
        let out = neighbours_with(set, g, x, lx, p, scr, &mut score, &mut score_many, &pre);
        scr.query = q;
        return out;
    }
    let mut score = |id: u32| set.sim(x, id);
    let mut many = |ids: &[u32], out: &mut [f32]| {
        for (o, &id) in out.iter_mut().zip(ids) {
            *o = set.sim(x, id);
        }
    };
    let pre = |id: u32| set.prefetch(id);
    neighbours_with(set, g, x, lx, p, scr, &mut score, &mut many, &pre)
}

/// [`neighbours`] under the given scores; the candidates found are rescored with [`BuildSet::sim`]
/// before links are chosen, so the heuristic compares like with like.
#[allow(clippy::too_many_arguments)]
fn neighbours_with(
    set: &BuildSet,
    g: &GraphRef,
    x: u32,
    lx: usize,
    p: &BuildParams,
    scr: &mut Scratch,
    score: &mut impl FnMut(u32) -> f32,
    many: &mut impl FnMut(&[u32], &mut [f32]),
    pre: &impl Fn(u32),
) -> Vec<Vec<u32>> {
    let (cur, best) = descend(g, lx + 1, g.entry, score, pre);
    let upto = lx.min(g.top());
    let mut out = vec![Vec::new(); upto + 1];
    let mut entries = vec![(best, cur)];
    for l in (0..=upto).rev() {
        scr.begin(g.n as usize);
        let ef = p.ef_construction.max(1);
        search_level(g, l, &entries, ef, PATIENCE, scr, many, pre);
        entries = scr.pool.results();
        if set.walk_codes {
            // The heuristic compares these scores with `sim`'s: rescore the candidates with it.
            set.sim_all(x, &mut entries);
            entries.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        }
        out[l] = select(set, x, &entries, p.m.max(2));
        if p.linking == Linking::Hybrid && l == 0 {
            // Level 0 rows hold 2m links: room for both kinds.
            let extra = select_ip(set, x, &entries, p.m.max(2) / 2, &out[l]);
            out[l].extend(extra);
        }
    }
    out
}

/// Writes the new nodes' rows, then adds the reverse links, pruning rows that overflow.
fn link(
    set: &BuildSet,
    g: &mut Graph,
    nodes: &[u32],
    found: &[Vec<Vec<u32>>],
    m: usize,
    m0: usize,
) {
    let rows = Rows::new(g);
    let mut reverse: Vec<(u8, u32, u32)> = Vec::new();
    for (&x, lists) in nodes.iter().zip(found) {
        for (l, list) in lists.iter().enumerate() {
            // SAFETY: one row at a time, on this thread only.
            let r = unsafe { rows.row_mut(l, x, if l == 0 { m0 } else { m }) };
            r[0] = list.len() as u32;
            r[1..1 + list.len()].copy_from_slice(list);
            reverse.extend(list.iter().map(|&y| (l as u8, y, x)));
        }
    }
    // In parallel: on one thread this sort was a quarter of the link phase.
    reverse.par_sort_unstable();
    let mut groups = Vec::new();
    let mut start = 0;
    for i in 1..=reverse.len() {
        if i == reverse.len()
            || reverse[i].0 != reverse[start].0
            || reverse[i].1 != reverse[start].1
        {
            groups.push(start..i);
            start = i;
        }
    }
    groups.par_iter().for_each(|range| {
        let (l, y, _) = reverse[range.start];
        let cap = if l == 0 { m0 } else { m };
        // SAFETY: each group owns the row of its (level, target), distinct from every other
        // group's; nothing reads adjacency during this phase.
        let r = unsafe { rows.row_mut(l as usize, y, cap) };
        let have = (r[0] as usize).min(cap);
        let new = reverse[range.clone()].iter().map(|e| e.2);
        if have + range.len() <= cap {
            for (j, x) in new.enumerate() {
                r[1 + have + j] = x;
            }
            r[0] = (have + range.len()) as u32;
        } else {
            let mut cands: Vec<(f32, u32)> = r[1..1 + have]
                .iter()
                .copied()
                .chain(new)
                .map(|c| (0.0, c))
                .collect();
            set.sim_all(y, &mut cands);
            cands.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let kept = select(set, y, &cands, cap);
            r[0] = kept.len() as u32;
            r[1..1 + kept.len()].copy_from_slice(&kept);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_least_picks_what_one_scan_picks() {
        // Ties (the lowest id wins), -0.0 below 0.0, NaN above everything: `total_cmp`'s order,
        // whatever the chunks and the order they are merged in.
        let near = [
            3.0,
            -1.0,
            f32::NAN,
            -1.0,
            0.0,
            -0.0,
            f32::INFINITY,
            -1.0,
            2.0,
        ];
        let scan = near
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(&b.0)))
            .map(|(i, _)| i as u32);
        for chunk in 1..=near.len() {
            let parts: Vec<(f32, u32)> = near
                .chunks(chunk)
                .enumerate()
                .map(|(c, part)| least(part, (c * chunk) as u32))
                .collect();
            let id = |p: (f32, u32)| p.1;
            let forward = parts
                .iter()
                .copied()
                .fold((f32::INFINITY, u32::MAX), lesser);
            let backward = parts
                .iter()
                .rev()
                .copied()
                .fold((f32::INFINITY, u32::MAX), lesser);
            assert_eq!(Some(id(forward)), scan, "chunks of {chunk}");
            assert_eq!(
                Some(id(backward)),
                scan,
                "chunks of {chunk}, merged backwards"
            );
        }
        assert_eq!(scan, Some(1));
        // Nothing but NaN: the identity wins the merge, which `pivots` reads as node 0, as a
        // scan would pick.
        assert_eq!(
            lesser((f32::INFINITY, u32::MAX), least(&[f32::NAN; 3], 0)).1,
            u32::MAX
        );
    }
}
