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
//! and every key not in the buffer scores at most `T` in f32. Tasks that search shares of one
//! row's keys publish their thresholds ([`SharedThreshold`]) and take up the best one (`raise`):
//! then the buffers of all shares together hold k candidates of lower bound at least `T`, which
//! is what the merged row needs, and a share that starts late rejects from its first key what
//! the others already beat (instead of keeping k candidates and more of its own).

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU32, Ordering as MemOrder};

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

    /// Raises the threshold to `t`, the threshold of another share of this row's keys (see the
    /// module's invariants); candidates at or below it go at the next compaction.
    #[inline]
    pub fn raise(&mut self, t: f32) {
        if t > self.threshold {
            self.threshold = t;
        }
    }

    /// Takes every candidate of `other` (another share of the keys): keys it left out scored at
    /// most its threshold, and its k best lower bounds (at least that threshold) come along.
    pub fn merge(&mut self, other: Candidates) {
        if other.threshold == f32::INFINITY || self.threshold == f32::INFINITY {
            self.abandon();
            return;
        }
        // Every entry comes along, even those at or below this share's threshold: with shared
        // thresholds the k candidates behind it may be the other share's, rescored to exactly
        // that score (a crowd of ties), and the compaction keeps the k best whatever their upper
        // bounds. Keys either share left out score at most its own threshold.
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

/// The best threshold among the tasks that search shares of one row's keys: f32 bits mapped to
/// u32 so that integer order is float order, raised with `fetch_max`.
pub struct SharedThreshold(AtomicU32);

impl Default for SharedThreshold {
    fn default() -> Self {
        SharedThreshold(AtomicU32::new(order_key(f32::NEG_INFINITY)))
    }
}

impl SharedThreshold {
    /// Offers a share's threshold (non-finite ones are not shared: +inf marks a row given up).
    #[inline]
    pub fn publish(&self, t: f32) {
        if t.is_finite() {
            self.0.fetch_max(order_key(t), MemOrder::Relaxed);
        }
    }

    /// The best threshold offered so far.
    #[inline]
    pub fn get(&self) -> f32 {
        from_order_key(self.0.load(MemOrder::Relaxed))
    }
}

fn order_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 0 {
        b | 0x8000_0000
    } else {
        !b
    }
}

fn from_order_key(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & 0x7fff_ffff } else { !k })
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
    fn shared_thresholds_keep_float_order() {
        let xs = [f32::NEG_INFINITY, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, 7e20];
        for w in xs.windows(2) {
            assert!(order_key(w[0]) <= order_key(w[1]), "{w:?}");
        }
        for &x in &xs {
            assert_eq!(from_order_key(order_key(x)).to_bits(), x.to_bits());
        }
        let s = SharedThreshold::default();
        assert_eq!(s.get(), f32::NEG_INFINITY);
        for t in [-2.0, 3.0, 1.0, f32::INFINITY, f32::NAN] {
            s.publish(t);
        }
        // The best finite offer: +inf (a row given up) and NaN are not shared.
        assert_eq!(s.get(), 3.0);
    }

    #[test]
    fn a_share_raised_by_another_rejects_what_the_other_beat() {
        // Two shares of one row's keys, k = 2. Share a sees keys 0-3, share b keys 4-7; b takes
        // up a's threshold (4.0) before its first key and keeps only those that may beat it; the
        // merged row is the one a single share over all keys gives.
        let (mut a, mut b, mut one) = (
            Candidates::new(2, 8),
            Candidates::new(2, 8),
            Candidates::new(2, 8),
        );
        let scores = [5.0f32, 4.5, 1.0, 0.0, 4.6, 3.0, 2.0, 5.5];
        let shared = SharedThreshold::default();
        for (i, &s) in scores[..4].iter().enumerate() {
            push(&mut a, s, 0.25, i as i64);
        }
        a.compact();
        shared.publish(a.threshold());
        b.raise(shared.get());
        assert_eq!(b.threshold(), 4.25);
        for (i, &s) in scores[4..].iter().enumerate() {
            push(&mut b, s, 0.25, 4 + i as i64);
        }
        let (kept, _) = b.clone().finish();
        assert_eq!(ids(kept), vec![7, 4]);
        for (i, &s) in scores.iter().enumerate() {
            push(&mut one, s, 0.25, i as i64);
        }
        a.merge(b);
        let (got, thr) = a.finish();
        let (want, want_thr) = one.finish();
        assert_eq!((ids(got), thr), (ids(want), want_thr));
    }

    #[test]
    fn a_merge_keeps_the_other_shares_ties_at_a_shared_threshold() {
        // Share b holds k exact scores (rescored ties, or sinks scored apart) at 7.0 and shares
        // that threshold; share a takes it up, so its own copies at 7.0 were rejected as ties and
        // its k best are below. Merged, b's ties must stay (a push would reject them: not above
        // the threshold), else the row has fewer than k candidates at its threshold and is
        // rescanned.
        let k = 3;
        let mut b = Candidates::new(k, 8);
        for id in 10..14 {
            b.push(7.0, 7.0, id);
        }
        b.compact();
        assert_eq!(b.threshold(), 7.0);
        let mut a = Candidates::new(k, 8);
        for (id, s) in [(0, 5.0f32), (1, 4.0), (2, 3.0), (3, 2.0)] {
            push(&mut a, s, 0.5, id);
        }
        a.raise(b.threshold());
        a.push(7.0, 7.0, 4); // a copy of b's key, scored apart: a tie, rejected
        a.merge(b);
        let (got, thr) = a.finish();
        assert_eq!(thr, 7.0);
        let mut at_threshold: Vec<i64> = got
            .iter()
            .filter(|e| e.lower >= thr)
            .map(|e| e.id)
            .collect();
        at_threshold.sort();
        assert_eq!(at_threshold, vec![10, 11, 12]);
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
