//! Best-first search on one level of a graph, shared by insertion (build) and queries (HNSW's
//! search-layer): a max-heap of candidates to expand and a min-heap of the `ef` best seen; the
//! search stops when the best candidate left is worse than the worst of the `ef`. Visited marks
//! are epoch stamps, so clearing them is O(1).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use super::graph::GraphRef;

/// (score, id), ordered by score, then lower id first (so results are deterministic).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Scored(f32, u32);

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(other.1.cmp(&self.1))
    }
}

/// The `ef` best (score, id) seen, and the candidates still to expand.
#[derive(Debug, Default)]
pub struct Pool {
    todo: BinaryHeap<Scored>,
    best: BinaryHeap<Reverse<Scored>>,
    cap: usize,
}

impl Pool {
    pub fn reset(&mut self, cap: usize) {
        self.todo.clear();
        self.best.clear();
        self.cap = cap.max(1);
    }

    /// The worst score a newcomer must beat once the pool is full.
    #[inline]
    pub fn bar(&self) -> f32 {
        match self.best.peek() {
            Some(w) if self.best.len() >= self.cap => w.0 .0,
            _ => f32::NEG_INFINITY,
        }
    }

    #[inline]
    pub fn insert(&mut self, score: f32, id: u32) {
        let e = Scored(score, id);
        if self.best.len() >= self.cap {
            match self.best.peek() {
                Some(w) if e > w.0 => {
                    self.best.pop();
                }
                _ => return,
            }
        }
        self.best.push(Reverse(e));
        self.todo.push(e);
    }

    /// The best candidate left, unless it cannot improve the `ef` best.
    #[inline]
    fn next(&mut self) -> Option<u32> {
        let c = self.todo.pop()?;
        if self.best.len() >= self.cap && self.best.peek().is_some_and(|w| c < w.0) {
            self.todo.clear();
            return None;
        }
        Some(c.1)
    }

    /// (score, id) of the `ef` best, best first.
    pub fn results(&self) -> Vec<(f32, u32)> {
        let mut v: Vec<Scored> = self.best.iter().map(|r| r.0).collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.into_iter().map(|e| (e.0, e.1)).collect()
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
        // Entries may repeat (pivots read from a damaged file): each id once.
        if id < g.n && scratch.visit(id) {
            scratch.pool.insert(s, id);
        }
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
