//! Best-first search on one level of a graph, shared by insertion (build) and queries: a pool of
//! the `ef` best nodes seen, kept sorted (best first), expanded best-unexpanded-first until every
//! node in it is expanded. Visited marks are epoch stamps, so clearing them is O(1).

use super::graph::GraphRef;

/// The `ef` best (score, id) seen, best first, with a mark of which were expanded.
#[derive(Debug, Default)]
pub struct Pool {
    items: Vec<(f32, u32, bool)>,
    cap: usize,
    cursor: usize,
}

impl Pool {
    pub fn reset(&mut self, cap: usize) {
        self.items.clear();
        self.cap = cap.max(1);
        self.cursor = 0;
    }

    /// The worst score a newcomer must beat once the pool is full.
    #[inline]
    pub fn bar(&self) -> f32 {
        if self.items.len() < self.cap {
            f32::NEG_INFINITY
        } else {
            self.items[self.items.len() - 1].0
        }
    }

    #[inline]
    pub fn insert(&mut self, score: f32, id: u32) {
        if score <= self.bar() {
            return;
        }
        // After equal scores, so earlier finds win ties (deterministic).
        let at = self.items.partition_point(|e| e.0 >= score);
        if self.items.len() == self.cap {
            self.items.pop();
        }
        self.items.insert(at, (score, id, false));
        self.cursor = self.cursor.min(at);
    }

    /// The best node not yet expanded, marked expanded.
    #[inline]
    fn next(&mut self) -> Option<u32> {
        while self.cursor < self.items.len() {
            let c = self.cursor;
            self.cursor += 1;
            if !self.items[c].2 {
                self.items[c].2 = true;
                return Some(self.items[c].1);
            }
        }
        None
    }

    /// (score, id), best first.
    pub fn results(&self) -> impl Iterator<Item = (f32, u32)> + '_ {
        self.items.iter().map(|&(s, i, _)| (s, i))
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Per-thread scratch: visited stamps over the graph's nodes, a pool and a candidate buffer.
#[derive(Debug, Default)]
pub struct Scratch {
    stamps: Vec<u32>,
    epoch: u32,
    pub pool: Pool,
    fresh: Vec<u32>,
}

impl Scratch {
    /// Forgets every visit; sizes the stamps for `n` nodes.
    pub fn begin(&mut self, n: usize) {
        if self.stamps.len() < n {
            self.stamps.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.stamps.fill(0);
            self.epoch = 1;
        }
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
                prefetch(id);
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
/// `scratch.pool`. `scratch.begin` must have been called for this search.
pub fn search_level(
    g: &GraphRef,
    level: usize,
    entries: &[(f32, u32)],
    ef: usize,
    scratch: &mut Scratch,
    score: &mut impl FnMut(u32) -> f32,
    prefetch: &impl Fn(u32),
) {
    scratch.pool.reset(ef);
    for &(s, id) in entries {
        scratch.visit(id);
        scratch.pool.insert(s, id);
    }
    let mut fresh = std::mem::take(&mut scratch.fresh);
    while let Some(node) = scratch.pool.next() {
        fresh.clear();
        for &id in g.neighbors(level, node) {
            if id < g.n && scratch.visit(id) {
                prefetch(id);
                fresh.push(id);
            }
        }
        for &id in &fresh {
            let s = score(id);
            if s > scratch.pool.bar() {
                scratch.pool.insert(s, id);
            }
        }
    }
    scratch.fresh = fresh;
}
