//! Certifying a screen's candidates: rescore them in f32, and accept the result only if no key left
//! out can beat the k-th rescored score. Every key left out had an upper bound (screen score plus
//! the error bound below) at most the row's threshold T, and k candidates have lower bounds of at
//! least T (see `candidates`), so the test passes whatever the ties among them; only a row whose
//! bound is infinite (scores that may overflow) or whose screen scores were not finite fails.

use super::candidates::{f32_at_least, Candidates};
use super::kernel::RowBound;
use super::pack::TileNorms;
use super::query::QueryRows;
use crate::dtype::Elements;
use crate::search::topk::TopK;
use crate::search::KeySource;

/// The f32 score of `key` for query `q` (`buf`: `dim` scratch), as every rescoring computes it (so
/// copies of one key get equal scores).
pub fn dot(q: &[f32], key: Elements, buf: &mut [f32]) -> f32 {
    key.to_f32(buf);
    dot_widened(q, buf)
}

/// [`dot`] of a key already widened to f32.
pub fn dot_widened(q: &[f32], buf: &[f32]) -> f32 {
    // Eight partial sums (so the compiler can vectorise), added from +0.0 (`sum()` starts at
    // -0.0) as the other kernels do.
    let mut acc = [0f32; 8];
    for (qc, kc) in q.chunks(8).zip(buf.chunks(8)) {
        for i in 0..qc.len() {
            acc[i] += qc[i] * kc[i];
        }
    }
    acc.iter().fold(0.0, |a, b| a + b)
}

/// The bound on |f32 score - bf16 score| for one (slot, kv head), from its measured norms. All
/// in f64: the terms can be far below f32's range.
#[derive(Clone, Copy, Debug)]
pub struct ErrorBound {
    kmax: f64,
    key_err: f64,
    sum_err: f64,
    /// Per unit of |bf16(q)|: subnormal key elements, which VDPBF16PS reads as zero.
    flushed_keys: f64,
    /// Subnormal products and partial sums, which VDPBF16PS flushes to zero.
    flushed_sums: f64,
}

impl ErrorBound {
    pub fn new(norms: TileNorms, dim: usize) -> Self {
        let root_d = (dim as f64).sqrt();
        let tiny = f32::MIN_POSITIVE as f64;
        let amax = norms.max_abs as f64;
        // Below ~1e-18 the f32 squares behind the norms may have underflowed: fall back to
        // |k| <= sqrt(d) max|k_i| and |k - k^| <= 2 sqrt(d) max|k_i| (bf16 rounding keeps
        // |k^_i| <= |k_i|, the int8 screen |k^_i| <= max|k_i|).
        let (kmax, key_err) = if amax < 1e-18 {
            (root_d * amax, 2.0 * root_d * amax)
        } else {
            (
                (norms.max_sq as f64).sqrt(),
                (norms.max_err_sq as f64).sqrt(),
            )
        };
        ErrorBound {
            // Slack for the f32 arithmetic of the norms themselves.
            kmax: kmax * 1.001,
            key_err: key_err * 1.001,
            // f32 accumulation of d products, in the bf16 score and in the rescored one.
            sum_err: 2.0 * (dim as f64 + 2.0) * f32::EPSILON as f64,
            flushed_keys: root_d * tiny,
            flushed_sums: 2.0 * (dim as f64 + 2.0) * tiny,
        }
    }

    /// Row `r`'s bound for the keys of one tile of the bf16 kernel, per key of norm `K` (as
    /// `pack::key_norm` gives it): `a K + c`, with `ratio` the tile's largest ratio of a key's
    /// rounding error to its norm. The terms of [`ErrorBound::for_row`] with the key's own norm in
    /// place of the largest, and `a` widened by 4 ulps of `|bf16(q)| K` for the f32 arithmetic of
    /// the kernel's `s +- a K`.
    pub fn row(&self, q: &QueryRows, r: usize, ratio: f32) -> RowBound {
        let (delta, norm) = (q.delta[r], q.norm[r]);
        let eps = f32::EPSILON as f64;
        let a = 1.001 * (delta + norm * (1.001 * ratio as f64 + self.sum_err)) + 4.0 * eps * norm;
        let c = norm * self.flushed_keys + self.flushed_sums;
        RowBound {
            a: if a.is_nan() {
                f32::INFINITY
            } else {
                f32_at_least(a)
            },
            c,
        }
    }

    /// |q.k - bf16(q).bf16(k)| <= |q - bf16(q)| |k| + |bf16(q)| |k - bf16(k)| + rounding;
    /// infinite when any term is (the row then falls back).
    pub fn for_row(&self, q: &QueryRows, r: usize) -> f64 {
        let (delta, norm) = (q.delta[r], q.norm[r]);
        let b = delta * self.kmax
            + norm * (self.key_err + self.flushed_keys + self.sum_err * self.kmax)
            + self.flushed_sums;
        // Scores that may overflow f32 (in either kernel) are not bounded by the terms above.
        if b.is_nan() || norm * self.kmax > 1e37 {
            f64::INFINITY
        } else {
            b
        }
    }
}

/// Rescores row `r`'s candidates in f32; `None` when the result cannot be certified exact (up to
/// ties at the k-th score). `bound` is the row's largest error bound ([`ErrorBound::for_row`]):
/// where it is infinite the per-key bounds may be too.
pub fn certified_row(
    src: &dyn KeySource,
    kv_head: usize,
    q: &QueryRows,
    r: usize,
    candidates: Candidates,
    k: usize,
    bound: f64,
) -> Option<Vec<(f32, i64)>> {
    let dim = q.rows.len() / q.delta.len();
    let query = &q.rows[r * dim..(r + 1) * dim];
    let mut buf = vec![0f32; dim];
    let mut exact = TopK::new(k);
    let (list, threshold) = candidates.finish();
    for e in &list {
        let s = if e.rescored() {
            e.lower
        } else {
            dot(query, src.row(kv_head, e.id as u64), &mut buf)
        };
        exact.push(s, e.id);
    }
    let best = exact.into_sorted();
    // Every key was a candidate (a key whose screen score is NaN or -inf never becomes one), or
    // every key left out scores at most the k-th (keys whose bounds overlap the k-th's are all
    // candidates, unless a crowd of them was rescored, when ties at the k-th may have gone).
    let certain = list.len() as u64 == src.len()
        || (bound.is_finite() && best.len() == k && best[k - 1].0 >= threshold);
    certain.then_some(best)
}
