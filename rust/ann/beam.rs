//! Best-first search on one level of a graph, shared by insertion (build) and queries (HNSW's
//! search-layer): a max-heap of candidates to expand and a min-heap of the `ef` best seen; the
//! search stops when the best candidate left is worse than the worst of the `ef`. Visited marks
//! are one-byte epoch stamps, cleared once every 255 searches: a quarter of the cache footprint
//! of word stamps (128 KiB for a span of 131,072 keys, which stays in L2 beside the codes).

use super::graph::GraphRef;

/// The `ef` best (score, id) seen, best first (ties: lower id first), and which of them have been
/// expanded. One sorted array instead of HNSW's two heaps: an insertion is a branch-free binary
/// search over integer keys and a short move, and "the best candidate left" is the first
/// unexpanded entry. The search expands exactly what the two-heap version does: the best
/// unexpanded candidate, until every one of the `ef` best has been expanded.
#[derive(Debug, Default)]
pub struct Pool {
    /// [`key`]s, descending.
    best: Vec<u64>,
    /// Whether each entry of `best` has been expanded.
    done: Vec<bool>,
    /// No unexpanded entry lies before this index.
    cursor: usize,
    cap: usize,
}

/// An integer that orders (score, id) as the search does: higher score first, then lower id
/// (scores in `f32::total_cmp`'s order, so even a NaN from a damaged file has a place).
#[inline]
fn key(score: f32, id: u32) -> u64 {
    let b = score.to_bits();
    let ordered = if b >> 31 == 1 { !b } else { b | 1 << 31 };
    (ordered as u64) << 32 | (!id) as u64
}

#[inline]
fn unkey(k: u64) -> (f32, u32) {
    let o = (k >> 32) as u32;
    let b = if o >> 31 == 1 { o & !(1 << 31) } else { !o };
    (f32::from_bits(b), !(k as u32))
}

impl Pool {
    pub fn reset(&mut self, cap: usize) {
        self.best.clear();
        self.done.clear();
        self.cursor = 0;
        self.cap = cap.max(1);
    }

    /// The worst score a newcomer must beat once the pool is full.
    #[inline]
    pub fn bar(&self) -> f32 {
        if self.best.len() >= self.cap {
            self.best.last().map_or(f32::NEG_INFINITY, |&w| unkey(w).0)
        } else {
            f32::NEG_INFINITY
        }
    }

    #[inline]
    pub fn insert(&mut self, score: f32, id: u32) {
        let e = key(score, id);
        if self.best.len() >= self.cap {
            match self.best.last() {
                Some(&w) if e > w => {
                    self.best.pop();
                    self.done.pop();
                }
                _ => return,
            }
        }
        // Branch-free lower bound: the first position whose key is smaller than `e`.
        let (mut lo, mut len) = (0usize, self.best.len());
        while len > 0 {
            let half = len / 2;
            if self.best[lo + half] > e {
                lo += half + 1;
                len -= half + 1;
            } else {
                len = half;
            }
        }
        self.best.insert(lo, e);
        self.done.insert(lo, false);
        self.cursor = self.cursor.min(lo);
    }

    /// The best unexpanded candidate (marked expanded), if any.
    #[inline]
    fn next(&mut self) -> Option<u32> {
        while self.cursor < self.best.len() {
            let i = self.cursor;
            self.cursor += 1;
            if !self.done[i] {
                self.done[i] = true;
                return Some(unkey(self.best[i]).1);
            }
        }
        None
    }

    /// The candidate [`Pool::next`] would give now, left unexpanded.
    #[inline]
    fn peek(&self) -> Option<u32> {
        (self.cursor..self.best.len())
            .find(|&i| !self.done[i])
            .map(|i| unkey(self.best[i]).1)
    }

    /// (score, id) of the `ef` best, best first.
    pub fn results(&self) -> Vec<(f32, u32)> {
        self.best.iter().map(|&k| unkey(k)).collect()
    }
}

/// Per-thread scratch: visited stamps over the graph's nodes, a pool and a candidate buffer.
#[derive(Debug, Default)]
pub struct Scratch {
    stamps: Vec<u8>,
    epoch: u8,
    pub pool: Pool,
    fresh: Vec<u32>,
    scores: Vec<f32>,
    /// The query scaled per dimension (walks on int8 codes).
    pub query: Vec<f32>,
}

impl Scratch {
    /// Forgets every visit; sizes the stamps for `n` nodes and one spare (`visit_masked`).
    pub fn begin(&mut self, n: usize) {
        if self.stamps.len() <= n {
            self.stamps.resize(n + 1, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.stamps.fill(0);
            self.epoch = 1;
        }
    }

    /// Pulls the stamp of `id` toward the cache.
    #[inline]
    pub fn prefetch_stamp(&self, id: u32) {
        if let Some(s) = self.stamps.get(id as usize) {
            crate::simd::prefetch(s as *const u8, 1);
        }
    }

    /// [`Scratch::visit`] without a branch on the answer: false for ids at or past `n` (read from
    /// a damaged file), which mark the spare stamp past the nodes' instead (`begin(n)` first).
    #[inline]
    pub fn visit_masked(&mut self, id: u32, n: u32) -> bool {
        let inside = id < n;
        let at = if inside { id } else { n } as usize;
        let s = &mut self.stamps[at];
        let new = *s != self.epoch;
        *s = self.epoch;
        new & inside
    }

    /// Marks `id` visited; true if it was not.
    #[inline]
    pub fn visit(&mut self, id: u32) -> bool {
        let s = &mut self.stamps[id as usize];
        let new = *s != self.epoch;
        *s = self.epoch;
        new
    }
}

/// Greedy descent through the upper levels down to (not including) `floor`: from `entry`, move to
/// the best neighbour until none is better. Returns the node reached and its score.
pub fn descend(
    g: &GraphRef,
    floor: usize,
    mut cur: u32,
    score: &mut impl FnMut(u32) -> f32,
    prefetch: &impl Fn(u32),
) -> (u32, f32) {
    let mut best = score(cur);
    for level in (floor.max(1)..=g.top()).rev() {
        loop {
            let mut moved = false;
            let nbrs = g.neighbors(level, cur);
            for &id in nbrs {
                if id < g.n {
                    prefetch(id);
                }
            }
            for &id in nbrs {
                if id >= g.n {
                    continue;
                }
                let s = score(id);
                if s > best {
                    best = s;
                    cur = id;
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
    }
    (cur, best)
}

/// Best-first search of `level` from `entries` (already scored), leaving the `ef` best in
/// `scratch.pool`. `scratch.begin` must have been called for this search. `score` fills the
/// scores of a batch of nodes (the unvisited neighbours of the node being expanded). With
/// `patience` > 0 the search also stops after that many expansions in a row that added nothing
/// to the pool (graph building; queries pass 0 and run to HNSW's own end).
#[allow(clippy::too_many_arguments)]
pub fn search_level(
    g: &GraphRef,
    level: usize,
    entries: &[(f32, u32)],
    ef: usize,
    patience: usize,
    scratch: &mut Scratch,
    score: &mut impl FnMut(&[u32], &mut [f32]),
    prefetch: &impl Fn(u32),
) {
    scratch.pool.reset(ef);
    for &(s, id) in entries {
        // Entries may repeat (pivots read from a damaged file): each id once.
        if id < g.n && scratch.visit(id) {
            scratch.pool.insert(s, id);
        }
    }
    let mut fresh = std::mem::take(&mut scratch.fresh);
    let mut scores = std::mem::take(&mut scratch.scores);
    // Expansions in a row that added nothing to the pool.
    let mut idle = 0usize;
    while let Some(node) = scratch.pool.next() {
        if patience > 0 && idle >= patience {
            break;
        }
        // Software pipelining: the keys and stamps of the next candidate's neighbours start
        // coming in while this node's are scored (its row was fetched when it entered the pool).
        // They are not asked for again when that node is expanded: the repeated prefetches
        // cost 5-10% of a query (when the pool changed meanwhile, a few misses go unhidden).
        if let Some(after) = scratch.pool.peek() {
            for &id in g.neighbors(level, after) {
                if id < g.n {
                    prefetch(id);
                    scratch.prefetch_stamp(id);
                }
            }
        }
        let nbrs = g.neighbors(level, node);
        // Branch-free: whether a neighbour was visited is a coin toss to the branch predictor.
        fresh.resize(nbrs.len(), 0);
        let mut count = 0;
        for &id in nbrs {
            let new = scratch.visit_masked(id, g.n);
            fresh[count] = id;
            count += new as usize;
        }
        fresh.truncate(count);
        scores.resize(fresh.len(), 0.0);
        score(&fresh, &mut scores);
        // Those above the bar as it stood, gathered without a branch, then inserted (each
        // insertion raises the bar, and the pool turns away any that no longer beat it).
        let bar = scratch.pool.bar();
        let mut kept = 0;
        for i in 0..fresh.len() {
            let (id, s) = (fresh[i], scores[i]);
            fresh[kept] = id;
            scores[kept] = s;
            kept += (s > bar) as usize;
        }
        idle += 1;
        for (&id, &s) in fresh[..kept].iter().zip(&scores[..kept]) {
            if s > scratch.pool.bar() {
                idle = 0;
                scratch.pool.insert(s, id);
                if level == 0 {
                    g.prefetch_row(id);
                }
            }
        }
    }
    scratch.fresh = fresh;
    scratch.scores = scores;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_as_total_cmp_then_lower_id() {
        let scores = [
            f32::NEG_INFINITY,
            -3.5,
            -0.0,
            0.0,
            1e-30,
            2.0,
            f32::INFINITY,
            f32::NAN,
        ];
        for &a in &scores {
            for &b in &scores {
                for (i, j) in [(1u32, 2u32), (2, 1), (5, 5), (0, u32::MAX)] {
                    let want = a.total_cmp(&b).then(j.cmp(&i));
                    assert_eq!(key(a, i).cmp(&key(b, j)), want, "{a} {i} / {b} {j}");
                    let (s, id) = unkey(key(a, i));
                    assert_eq!((s.to_bits(), id), (a.to_bits(), i));
                }
            }
        }
    }

    #[test]
    fn patience_stops_the_walk_after_idle_expansions() {
        // 0 - 1 - 3 and 0 - 2 - 4: node 4 scores best but hides behind node 2, which enters the
        // pool last; expanding node 1 first adds nothing (node 3 is below the bar).
        let level0 = [2, 1, 2, 2, 0, 3, 2, 0, 4, 1, 1, 0, 1, 2, 0];
        let g = GraphRef {
            n: 5,
            m: 2,
            m0: 2,
            entry: 0,
            level0: &level0,
            upper: Vec::new(),
            pivots: &[],
            codes: None,
        };
        let table = [0.0f32, -1.0, -5.0, -6.0, 100.0];
        let walk = |patience: usize| {
            let mut scr = Scratch::default();
            scr.begin(5);
            let mut score = |ids: &[u32], out: &mut [f32]| {
                for (o, &id) in out.iter_mut().zip(ids) {
                    *o = table[id as usize];
                }
            };
            search_level(
                &g,
                0,
                &[(0.0, 0)],
                3,
                patience,
                &mut scr,
                &mut score,
                &|_| (),
            );
            let mut ids: Vec<u32> = scr.pool.results().iter().map(|e| e.1).collect();
            ids.sort();
            ids
        };
        assert_eq!(walk(0), vec![0, 1, 4]);
        assert_eq!(walk(1), vec![0, 1, 2]);
        assert_eq!(walk(2), vec![0, 1, 4]);
    }

    #[test]
    fn the_pool_keeps_the_best_and_expands_best_first() {
        let mut p = Pool::default();
        p.reset(3);
        for (s, id) in [(1.0, 1), (5.0, 2), (3.0, 3), (5.0, 0), (0.5, 9), (4.0, 4)] {
            if s > p.bar() || p.best.len() < 3 {
                p.insert(s, id);
            }
        }
        assert_eq!(p.results(), vec![(5.0, 0), (5.0, 2), (4.0, 4)]);
        assert_eq!(p.next(), Some(0));
        p.insert(6.0, 7);
        assert_eq!(p.next(), Some(7));
        assert_eq!(p.next(), Some(2));
        assert_eq!(p.next(), None);
    }
}
