//! The candidates of one query row of the bf16 kernel: every key whose bf16 score lies within a
//! window `w` of the k-th best bf16 score seen, up to a cap.
//!
//! Why a window and not a fixed count: with `E` the bound on |f32 score - bf16 score|, the k keys
//! of best bf16 score T all score at least `T - E` in f32, and a key left out at bf16 score `s`
//! scores at most `s + E`. Keys are left out only at or below the rejection threshold, which is
//! always at most `T - w`; with `w > 2E` every key left out scores below the k-th rescored score,
//! so the certificate holds whatever the ties. Exact ties (repeated keys) and near-ties (scores
//! apart by less than the bf16 error) simply stay candidates and are resolved by the f32 rescoring,
//! lowest id first. Only a crowd of more than `cap` keys inside the window can defeat it; the
//! threshold is then raised to the cap-th best score, and the certificate says whether the rows
//! still hold (else the caller rescans the row in f32).

use std::cmp::Ordering;

/// Best first: higher score, then lower id.
fn better_first(a: &(f32, i64), b: &(f32, i64)) -> Ordering {
    b.0.partial_cmp(&a.0)
        .unwrap_or(Ordering::Equal)
        .then(a.1.cmp(&b.1))
}

/// The largest f32 that is at most `x` (f64), for thresholds that must not round up.
pub fn f32_at_most(x: f64) -> f32 {
    let y = x as f32;
    if (y as f64) > x {
        y.next_down()
    } else {
        y
    }
}

/// The candidates of one row.
#[derive(Clone, Debug)]
pub struct Candidates {
    k: usize,
    cap: usize,
    window: f64,
    buf: Vec<(f32, i64)>,
    /// The buffer length that triggers the next compaction.
    limit: usize,
    /// Scores at or below this are rejected (every key left out so far scored at most this).
    threshold: f32,
}

impl Candidates {
    /// No candidates yet; `k >= 1`, `cap >= k`.
    pub fn new(k: usize, cap: usize) -> Self {
        let (k, cap) = (k.max(1), cap.max(k).max(1));
        Candidates {
            k,
            cap,
            window: 0.0,
            buf: Vec::new(),
            limit: (2 * k + 32).min(2 * cap),
            threshold: f32::NEG_INFINITY,
        }
    }

    /// Widens the window to at least `w` (it never narrows: the threshold only rises).
    pub fn widen(&mut self, w: f64) {
        if w > self.window || w.is_nan() {
            self.window = if w.is_nan() { f64::INFINITY } else { w };
        }
    }

    /// The rejection threshold: every key left out scored at most this (NaN scores aside, which
    /// an infinite error bound covers).
    #[inline]
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Offers a candidate (the kernel has already compared it with the threshold).
    #[inline]
    pub fn push(&mut self, score: f32, id: i64) {
        if score > self.threshold {
            if self.buf.capacity() == 0 {
                self.buf.reserve(2 * self.k + 32);
            }
            self.buf.push((score, id));
            if self.buf.len() >= self.limit {
                self.compact();
                // Room for as many again as were kept (compactions stay linear overall).
                self.limit = (2 * self.buf.len()).max(2 * self.k + 32).min(2 * self.cap);
            }
        }
    }

    /// Keeps the keys within the window of the k-th best (at most `cap` of them) and raises the
    /// threshold accordingly.
    pub fn compact(&mut self) {
        if self.buf.len() <= self.k {
            return;
        }
        let k = self.k;
        self.buf.select_nth_unstable_by(k - 1, better_first);
        let kth = self.buf[k - 1].0;
        let mut cut = f32_at_most(kth as f64 - self.window);
        if cut < kth {
            self.raise(cut);
        }
        if self.buf.len() > self.cap {
            // A crowd inside the window: keep the cap best, ties at the cut all go.
            self.buf.select_nth_unstable_by(self.cap - 1, better_first);
            cut = self.buf[self.cap - 1].0;
            self.raise(cut);
        }
    }

    fn raise(&mut self, cut: f32) {
        if cut > self.threshold {
            self.threshold = cut;
            self.buf.retain(|e| e.0 > cut);
        }
    }

    /// Takes every candidate of `other` (another share of the keys) and its threshold: keys it
    /// left out scored at most that.
    pub fn merge(&mut self, other: Candidates) {
        self.widen(other.window);
        if other.threshold > self.threshold {
            self.raise(other.threshold);
        }
        for (s, id) in other.buf {
            self.push(s, id);
        }
    }

    /// Compacts once more and returns the candidates (no order) and the threshold below which
    /// every other key scored.
    pub fn finish(mut self) -> (Vec<(f32, i64)>, f32) {
        self.compact();
        (self.buf, self.threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_every_key_within_the_window_of_the_kth() {
        let mut c = Candidates::new(2, 8);
        c.widen(1.0);
        for (i, s) in [5.0f32, 1.0, 4.5, 4.0, 3.9, 3.0, 4.2, 0.5, 3.6]
            .iter()
            .enumerate()
        {
            c.push(*s, i as i64);
        }
        let (mut got, thr) = c.finish();
        got.sort_by(better_first);
        // The 2nd best is 4.5: everything above 3.5 stays.
        assert_eq!(thr, 3.5);
        let ids: Vec<i64> = got.iter().map(|e| e.1).collect();
        assert_eq!(ids, vec![0, 2, 6, 3, 4, 8]);
    }

    #[test]
    fn ties_stay_until_the_cap() {
        let mut c = Candidates::new(3, 10);
        c.widen(0.0);
        for i in 0..15 {
            c.push(1.0, i);
        }
        // 15 equal scores: the window (0 wide) keeps them all, but they exceed the cap.
        let (got, thr) = c.finish();
        assert!(got.is_empty() || got.len() <= 10);
        assert_eq!(thr, 1.0);
        let mut c = Candidates::new(3, 20);
        for i in 0..15 {
            c.push(1.0, i);
        }
        let (got, thr) = c.finish();
        assert_eq!((got.len(), thr), (15, f32::NEG_INFINITY));
    }

    #[test]
    fn merge_keeps_the_higher_threshold() {
        let mut a = Candidates::new(1, 2);
        a.widen(0.5);
        for (i, s) in [1.0f32, 2.0, 3.0, 4.0].iter().enumerate() {
            a.push(*s, i as i64);
        }
        let mut b = Candidates::new(1, 2);
        b.widen(0.5);
        b.push(3.8, 10);
        b.merge(a);
        let (mut got, thr) = b.finish();
        got.sort_by(better_first);
        assert_eq!(got, vec![(4.0, 3), (3.8, 10)]);
        assert_eq!(thr, 3.5);
    }

    #[test]
    fn thresholds_never_round_up() {
        for x in [1.0f64 / 3.0, -1e-40, 1e39, 16777217.0] {
            assert!(f32_at_most(x) as f64 <= x);
        }
        assert_eq!(f32_at_most(f64::NEG_INFINITY), f32::NEG_INFINITY);
    }
}
