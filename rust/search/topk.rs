//! Bounded selection of the k best (score, id) pairs. "Better" is a higher score, then a lower id,
//! so results are deterministic whatever order candidates arrive in.
//!
//! Candidates that beat the current threshold are appended to a buffer of 2k; when it fills, a
//! linear-time selection keeps the k best and raises the threshold to the worst of them. That is
//! amortised O(1) per accepted candidate, against O(log k) for a heap, which matters while the
//! threshold is still low. The threshold is always a lower bound of the k-th best score seen (it
//! may lag until the next compaction), so rejecting at or below it never loses a result.

use std::cmp::Ordering;

/// The k best candidates offered so far.
#[derive(Clone, Debug)]
pub struct TopK {
    k: usize,
    buf: Vec<(f32, i64)>,
    threshold: f32,
}

#[inline]
fn worse(a: (f32, i64), b: (f32, i64)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 > b.1)
}

/// Best first, the order `worse` defines (-0.0 and +0.0 tie; ties go to the lower id).
fn better_first(a: &(f32, i64), b: &(f32, i64)) -> Ordering {
    if worse(*b, *a) {
        Ordering::Less
    } else if worse(*a, *b) {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

impl TopK {
    /// An empty selection of capacity `k`.
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            buf: Vec::new(),
            threshold: f32::NEG_INFINITY,
        }
    }

    /// Offers one candidate (any id order).
    #[inline]
    pub fn push(&mut self, score: f32, id: i64) {
        // Equal to the threshold may still win on a lower id; compaction decides. (NaN never
        // enters; with a -inf threshold everything else does.)
        if score >= self.threshold {
            self.accept(score, id);
        }
    }

    #[inline]
    fn accept(&mut self, score: f32, id: i64) {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(2 * self.k.max(1));
        }
        self.buf.push((score, id));
        if self.buf.len() >= 2 * self.k.max(1) {
            self.compact();
        }
    }

    /// Keeps the k best and sets the threshold to the worst of them (-inf while fewer than k).
    fn compact(&mut self) {
        if self.buf.len() > self.k {
            if self.k == 0 {
                self.buf.clear();
            } else {
                self.buf.select_nth_unstable_by(self.k - 1, better_first);
                self.buf.truncate(self.k);
            }
        }
        self.threshold = if self.buf.len() == self.k && self.k > 0 {
            self.buf
                .iter()
                .copied()
                .reduce(|w, e| if worse(e, w) { e } else { w })
                .map_or(f32::NEG_INFINITY, |w| w.0)
        } else {
            f32::NEG_INFINITY
        };
    }

    /// Offers `scores[i]` with id `first_id + i`, for ids ascending past every id seen so far:
    /// then a tie with the threshold never wins, so one float comparison rejects almost every
    /// candidate.
    #[inline]
    pub fn push_run(&mut self, scores: &[f32], first_id: i64) {
        for (j, &s) in scores.iter().enumerate() {
            if s > self.threshold || (self.threshold == f32::NEG_INFINITY && !s.is_nan()) {
                self.accept(s, first_id + j as i64);
            }
        }
    }

    /// The score a candidate must beat to be kept: a lower bound of the k-th best score seen, or
    /// -inf while fewer than k were seen. Exact after [`TopK::settle`].
    #[inline]
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Drops all but the k best, so `len`, `entries` and `threshold` are exact.
    pub fn settle(&mut self) {
        self.compact();
    }

    /// Number of kept entries (call [`TopK::settle`] first for an exact count).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The kept entries, in no particular order (call [`TopK::settle`] first).
    pub fn entries(&self) -> &[(f32, i64)] {
        &self.buf
    }

    /// Takes every entry of `other`.
    pub fn merge(&mut self, other: TopK) {
        for (s, id) in other.buf {
            self.push(s, id);
        }
    }

    /// The k best entries, best first.
    pub fn into_sorted(mut self) -> Vec<(f32, i64)> {
        self.compact();
        self.buf.sort_unstable_by(better_first);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_k_best_with_ties_to_lower_ids() {
        let scores = [0.5f32, 2.0, 1.0, 2.0, -1.0, 3.0, 1.0];
        let mut t = TopK::new(4);
        t.push_run(&scores[..3], 0);
        t.push_run(&scores[3..], 3);
        assert_eq!(
            t.into_sorted(),
            vec![(3.0, 5), (2.0, 1), (2.0, 3), (1.0, 2)]
        );

        let mut a = TopK::new(2);
        a.push_run(&[1.0, 1.0], 10);
        let mut b = TopK::new(2);
        b.push_run(&[1.0, 0.0], 4);
        a.merge(b);
        assert_eq!(a.into_sorted(), vec![(1.0, 4), (1.0, 10)]);
    }

    #[test]
    fn fewer_candidates_than_k() {
        let mut t = TopK::new(5);
        t.push_run(&[1.0, 2.0], 0);
        assert_eq!(t.into_sorted(), vec![(2.0, 1), (1.0, 0)]);
    }
}
