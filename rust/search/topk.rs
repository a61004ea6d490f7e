//! Bounded selection of the k best (score, id) pairs. "Better" is a higher score, then a lower id,
//! so results are deterministic whatever order candidates arrive in.

/// A min-heap of at most k entries whose root is the worst kept entry.
#[derive(Clone, Debug)]
pub struct TopK {
    k: usize,
    heap: Vec<(f32, i64)>,
}

#[inline]
fn worse(a: (f32, i64), b: (f32, i64)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 > b.1)
}

impl TopK {
    /// An empty selection of capacity `k`.
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            heap: Vec::with_capacity(k),
        }
    }

    /// Offers one candidate.
    #[inline]
    pub fn push(&mut self, score: f32, id: i64) {
        let e = (score, id);
        if self.heap.len() < self.k {
            self.heap.push(e);
            self.sift_up(self.heap.len() - 1);
        } else if worse(self.heap[0], e) {
            self.heap[0] = e;
            self.sift_down(0);
        }
    }

    /// Offers `scores[i]` with id `first_id + i`, for ids ascending past every id seen so far.
    /// Because ids ascend, a tie with the worst kept entry never wins, so one float comparison
    /// rejects almost every candidate.
    #[inline]
    pub fn push_run(&mut self, scores: &[f32], first_id: i64) {
        let mut i = 0;
        while self.heap.len() < self.k && i < scores.len() {
            self.push(scores[i], first_id + i as i64);
            i += 1;
        }
        if i == scores.len() {
            return;
        }
        let mut threshold = self.heap[0].0;
        for (j, &s) in scores.iter().enumerate().skip(i) {
            if s > threshold {
                self.heap[0] = (s, first_id + j as i64);
                self.sift_down(0);
                threshold = self.heap[0].0;
            }
        }
    }

    /// The score a candidate must beat to enter: the worst kept score once full, else -inf.
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.heap[0].0
        }
    }

    /// Number of kept entries.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// True once k entries are kept.
    pub fn is_full(&self) -> bool {
        self.heap.len() == self.k
    }

    /// The kept entries, in no particular order.
    pub fn entries(&self) -> &[(f32, i64)] {
        &self.heap
    }

    /// Takes every entry of `other`.
    pub fn merge(&mut self, other: TopK) {
        for (s, id) in other.heap {
            self.push(s, id);
        }
    }

    /// The kept entries, best first.
    pub fn into_sorted(mut self) -> Vec<(f32, i64)> {
        // The same order as `worse` (so -0.0 and +0.0 tie, and ties go to the lower id).
        self.heap.sort_unstable_by(|&a, &b| {
            if worse(b, a) {
                std::cmp::Ordering::Less
            } else if worse(a, b) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
        self.heap
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let p = (i - 1) / 2;
            if worse(self.heap[i], self.heap[p]) {
                self.heap.swap(i, p);
                i = p;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut m = i;
            if l < n && worse(self.heap[l], self.heap[m]) {
                m = l;
            }
            if r < n && worse(self.heap[r], self.heap[m]) {
                m = r;
            }
            if m == i {
                break;
            }
            self.heap.swap(i, m);
            i = m;
        }
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
