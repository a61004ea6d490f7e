//! The candidates of one query row of a screen (bf16 or int8): every key whose f32 score may
//! still reach the row's final k-th best, each with an interval `[lower, upper]` that holds its f32
//! score.
//!
//! A screen scores a key approximately, at `s`, and bounds the error: the f32 score lies in
//! `[s - E, s + E]`, with `E` per key and per row (the bf16 kernel's bound grows with the key's own
//! norm, so one attention sink of a hundred times the usual norm widens the interval of the sink
//! alone, not of every key). The row keeps a threshold `T`, the k-th best lower bound among its
//! candidates: k of them score at least `T` in f32, so a key whose upper bound is at most `T`
//! cannot beat the k-th (it may tie with it at best), and is rejected.
//!
//! Exact ties and near-ties (repeated keys) have overlapping intervals and all stay candidates.
//! When a crowd of them fills the buffer past its cap, the buffered candidates are rescored in f32
//! (`rescore`): their intervals shrink to points, the threshold rises to the exact k-th score, and
//! every key at or below it goes, ties included (a tied key may then be left out, which is why the
//! results equal an f32 search up to ties at the k-th score). A crowd never makes a row fall back
//! to a full f32 rescan.
//!
//! Invariants: the buffer holds k candidates whose lower bound is at least `T` (or `T` is -inf),
//! and every key not in the buffer scores at most `T` in f32.

use std::cmp::Ordering;

/// The largest f32 that is at most `x` (f64), for thresholds and lower bounds that must not
/// round up.
pub fn f32_at_most(x: f64) -> f32 {
    let y = x as f32;
    if (y as f64) > x {
        y.next_down()
    } else {
        y
    }
}

/// The smallest f32 that is at least `x` (f64), for upper bounds that must not round down.
pub fn f32_at_least(x: f64) -> f32 {
    let y = x as f32;
    if (y as f64) < x {
        y.next_up()
    } else {
        y
    }
}

/// One candidate: bounds on its f32 score (equal once rescored) and its id.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry {
    pub upper: f32,
    pub lower: f32,
    pub id: i64,
}

impl Entry {
    /// Rescored: its f32 score is known (`upper == lower`; a screen's interval is never a point,
    /// its bound always has a positive term for flushed subnormal sums).
    #[inline]
    pub fn rescored(&self) -> bool {
        self.upper == self.lower
    }
}

/// Best lower bound first, then lower id (for rescored entries: the f32 order of the oracle).
fn by_lower(a: &Entry, b: &Entry) -> Ordering {
    b.lower
        .partial_cmp(&a.lower)
        .unwrap_or(Ordering::Equal)
        .then(a.id.cmp(&b.id))
}

/// The candidates of one row.
#[derive(Clone, Debug)]
pub struct Candidates {
    k: usize,
    cap: usize,
    buf: Vec<Entry>,
    /// The buffer length that triggers the next compaction.
    limit: usize,
    /// Keys whose upper bound is at or below this are rejected.
    threshold: f32,
    /// More than `cap` candidates survived a compaction: the caller should `rescore`.
    crowded: bool,
}

impl Candidates {
    /// No candidates yet; `k >= 1`, `cap >= k`.
    pub fn new(k: usize, cap: usize) -> Self {
        let (k, cap) = (k.max(1), cap.max(k).max(1));
        Candidates {
            k,
            cap,
            buf: Vec::new(),
            limit: (2 * k + 32).min(2 * cap),
            threshold: f32::NEG_INFINITY,
            crowded: false,
        }
    }

    /// The rejection threshold: every key left out scores at most this in f32.
    #[inline]
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// True when a crowd of candidates (more than the cap within the threshold) waits for
    /// [`Candidates::rescore`].
    #[inline]
    pub fn crowded(&self) -> bool {
        self.crowded
    }

    /// Gives the row up (its error bound is infinite, so a crowd would never thin out): no
    /// candidates, and every key rejected from now on. The row cannot be certified and is
    /// rescanned in f32.
    pub fn abandon(&mut self) {
        self.buf = Vec::new();
        self.threshold = f32::INFINITY;
        self.crowded = false;
    }

    /// Offers a candidate whose f32 score lies in `[lower, upper]` (the screen has already
    /// compared `upper` with the threshold, perhaps against an older one).
    #[inline]
    pub fn push(&mut self, upper: f32, lower: f32, id: i64) {
        if upper > self.threshold {
            if self.buf.capacity() == 0 {
                self.buf.reserve(2 * self.k + 32);
            }
            self.buf.push(Entry { upper, lower, id });
            if self.buf.len() >= self.limit {
                self.compact();
                // Room for as many again as were kept (compactions stay linear overall), up to
                // twice the cap; past the cap the row is crowded and waits for a rescoring.
                self.limit = (2 * self.buf.len()).max(2 * self.k + 32).min(2 * self.cap);
                if self.buf.len() >= self.limit {
                    self.limit = self.buf.len() + self.cap;
                }
            }
        }
    }

    /// Keeps the k candidates of best lower bound and every other one whose upper bound exceeds
    /// the k-th lower bound, which becomes the threshold.
    pub fn compact(&mut self) {
        if self.buf.len() <= self.k {
            return;
        }
        let k = self.k;
        self.buf.select_nth_unstable_by(k - 1, by_lower);
        let kth = self.buf[k - 1].lower;
        if kth > self.threshold {
            self.threshold = kth;
        }
        let t = self.threshold;
        let mut i = 0;
        self.buf.retain(|e| {
            i += 1;
            i <= k || e.upper > t
        });
        self.crowded = self.buf.len() > self.cap;
    }

    /// Rescores every candidate not yet rescored with `score` (its exact f32 score), then
    /// compacts: the threshold becomes at least the exact k-th score.
    pub fn rescore(&mut self, mut score: impl FnMut(i64) -> f32) {
        for e in self.buf.iter_mut().filter(|e| !e.rescored()) {
            let s = score(e.id);
            e.upper = s;
            e.lower = s;
        }
        self.compact();
        self.crowded = false;
        self.limit = (2 * self.buf.len()).max(2 * self.k + 32).min(2 * self.cap);
    }

    /// Takes every candidate of `other` (another share of the keys): keys it left out scored at
    /// most its threshold, and its k best lower bounds (at least that threshold) come along.
    pub fn merge(&mut self, other: Candidates) {
        if other.threshold == f32::INFINITY || self.threshold == f32::INFINITY {
            self.abandon();
            return;
        }
        // Every entry comes along, even those at or below this share's threshold (the other's
        // k best may be rescored ties at exactly it), and the compaction keeps the k best
        // whatever their upper bounds. Keys either share left out score at most its threshold.
        self.buf.extend(other.buf);
        self.threshold = self.threshold.max(other.threshold);
        self.compact();
    }

    /// Compacts once more and returns the candidates (no order) and the threshold at or below
    /// which every other key scored.
    pub fn finish(mut self) -> (Vec<Entry>, f32) {
        self.compact();
        (self.buf, self.threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A screen with a uniform error `e`: score `s` in `[s - e, s + e]`.
    fn push(c: &mut Candidates, s: f32, e: f32, id: i64) {
        c.push(s + e, s - e, id);
    }

    fn ids(mut got: Vec<Entry>) -> Vec<i64> {
        got.sort_by(by_lower);
        got.iter().map(|e| e.id).collect()
    }

    #[test]
    fn keeps_every_key_that_may_reach_the_kth() {
        let mut c = Candidates::new(2, 8);
        for (i, s) in [5.0f32, 1.0, 4.5, 4.0, 3.9, 3.0, 4.2, 0.5, 3.6]
            .iter()
            .enumerate()
        {
            push(&mut c, *s, 0.5, i as i64);
        }
        let (got, thr) = c.finish();
        // The 2nd best lower bound is 4.0: every key whose upper bound exceeds it stays.
        assert_eq!(thr, 4.0);
        assert_eq!(ids(got), vec![0, 2, 6, 3, 4, 8]);
    }

    #[test]
    fn per_key_bounds_keep_a_wide_key_without_widening_the_others() {
        let mut c = Candidates::new(1, 8);
        // A sink with a wide interval and ordinary keys with narrow ones.
        c.push(30.0, -10.0, 0);
        for (i, s) in [5.0f32, 4.9, 4.0, 3.0].iter().enumerate() {
            push(&mut c, *s, 0.01, 1 + i as i64);
        }
        let (got, thr) = c.finish();
        assert_eq!(thr, 4.99);
        assert_eq!(ids(got), vec![1, 0]);
    }

    #[test]
    fn a_crowd_of_ties_is_rescored_instead_of_dropped() {
        let mut c = Candidates::new(3, 5);
        for i in 0..15 {
            push(&mut c, 1.0, 0.1, i);
        }
        // 15 overlapping intervals: all stay candidates, beyond the cap.
        assert!(c.crowded());
        // Exact scores: all tie at 1.0 except id 7.
        c.rescore(|id| if id == 7 { 1.05 } else { 1.0 });
        assert!(!c.crowded());
        let (got, thr) = c.finish();
        assert_eq!(thr, 1.0);
        // The best, then the lowest ids among the ties.
        assert_eq!(ids(got), vec![7, 0, 1]);
    }

    #[test]
    fn copies_arriving_after_a_rescoring_are_rejected_or_rescored() {
        let mut c = Candidates::new(2, 4);
        for i in 0..10 {
            push(&mut c, 1.0, 0.1, i);
            if c.crowded() {
                c.rescore(|_| 1.0);
            }
        }
        let (got, thr) = c.finish();
        assert_eq!(thr, 1.0);
        assert!(got.len() <= 6, "{got:?}");
        let exact: Vec<&Entry> = got.iter().filter(|e| e.rescored()).collect();
        assert_eq!(exact.len(), 2);
        // A later copy at a lower bound below the exact k-th cannot be rejected by its interval.
        assert!(got.iter().all(|e| e.upper > thr || e.rescored()));
    }

    #[test]
    fn merge_keeps_the_higher_threshold() {
        let mut a = Candidates::new(1, 2);
        for (i, s) in [1.0f32, 2.0, 3.0, 4.0].iter().enumerate() {
            push(&mut a, *s, 0.25, i as i64);
        }
        let mut b = Candidates::new(1, 2);
        push(&mut b, 3.8, 0.25, 10);
        b.merge(a);
        let (got, thr) = b.finish();
        assert_eq!(ids(got), vec![3, 10]);
        assert_eq!(thr, 3.75);
    }

    #[test]
    fn bounds_never_round_the_wrong_way() {
        for x in [
            1.0f64 / 3.0,
            -1e-40,
            1e39,
            16777217.0,
            -2.0f64.powi(-30) / 3.0,
        ] {
            assert!(f32_at_most(x) as f64 <= x);
            assert!(f32_at_least(x) as f64 >= x);
        }
        assert_eq!(f32_at_most(f64::NEG_INFINITY), f32::NEG_INFINITY);
        assert_eq!(f32_at_least(f64::INFINITY), f32::INFINITY);
    }
}
