//! Outlier keys of the screens. One key of many times the usual norm (an attention sink: real
//! keys have one at every window start) would set its tile's int8 scale, so every other key of the
//! tile would be coded in steps that many times coarser, and the error bound, the largest over the
//! keys, would widen for all of them until rows fell back to the f32 rescan. In the bf16 screen
//! its own bound is wide, so once the sink holds the top scores every copy of it stays a
//! candidate, and a crowd of thousands is rescored one key at a time. Such keys are masked out of
//! the screen's comparisons (and, for the int8 screen, coded as zeros so they set no scale) and
//! scored exactly in f32, with the same dot product as the final rescoring, so they enter the
//! candidates already rescored: exact scores, which the threshold then cuts at the k-th. The bf16
//! screen finds them from the norms its packing measures ([`Outliers::mark`]), the int8 screen
//! before packing ([`Outliers::split`]).

use half::{bf16, f16};

use super::candidates::Candidates;
use super::certify::dot_widened;
use crate::dtype::Elements;

/// A key counts as an outlier past this many times its tile's root-mean-square norm (iid keys of
/// 64 dimensions come nowhere near: their largest norm in a tile is about 1.4x the RMS).
const RATIO: f32 = 4.0;

/// Keys of this squared norm or more stay in the tile: their f32 scores may overflow, which the
/// screen's error bound already turns into a rescan of the row.
const HUGE_SQ: f32 = 1e30;

/// The tile-local indices of a tile's outliers, and scratch.
#[derive(Default)]
pub struct Outliers {
    pub ids: Vec<u32>,
    sq: Vec<f32>,
    key: Vec<f32>,
    zeroed: Zeroed,
}

#[derive(Default)]
struct Zeroed {
    f32s: Vec<f32>,
    f16s: Vec<f16>,
    bf16s: Vec<bf16>,
}

impl Outliers {
    /// Finds the outliers of `keys` (rows of `dim`) and returns the keys to pack: `keys` itself,
    /// or a copy with the outliers' rows zeroed (the int8 screen, whose scale they would set).
    pub fn split<'a>(&'a mut self, keys: Elements<'a>, dim: usize) -> Elements<'a> {
        self.ids.clear();
        if keys.len() < dim.max(1) {
            return keys;
        }
        squared_norms(keys, dim, &mut self.sq, &mut self.key);
        pick(&self.sq, &mut self.ids);
        if self.ids.is_empty() {
            return keys;
        }
        let z = &mut self.zeroed;
        match keys {
            Elements::F32(s) => Elements::F32(zero_rows(s, dim, &self.ids, &mut z.f32s)),
            Elements::F16(s) => Elements::F16(zero_rows(s, dim, &self.ids, &mut z.f16s)),
            Elements::Bf16(s) => Elements::Bf16(zero_rows(s, dim, &self.ids, &mut z.bf16s)),
        }
    }

    /// Finds the outliers of a tile the bf16 screen packed, from the norms packing measured
    /// (`knorm`, the first `n` of them): nothing to zero there, as each key's bound is its own.
    pub fn mark(&mut self, knorm: &[f32], n: usize) {
        self.sq.clear();
        self.sq.extend(knorm[..n].iter().map(|&k| k * k));
        pick(&self.sq, &mut self.ids);
    }

    /// Per panel of 16 keys of a tile of `n` keys (padded to whole groups of `panels` panels):
    /// which keys a screen compares (every key but the outliers).
    pub fn keep_mask(&self, n: usize, panels: usize, out: &mut Vec<u16>) {
        out.clear();
        out.resize(n.div_ceil(16 * panels) * panels, u16::MAX);
        for &i in &self.ids {
            out[i as usize / 16] &= !(1u16 << (i % 16));
        }
    }

    /// Scores every outlier of `keys` (the tile [`Outliers::split`] saw) against each query row
    /// (`rows`, `[m][dim]` f32) exactly and offers it to the row's candidates as rescored; a row
    /// whose exact score is not finite is abandoned to the f32 rescan. Key `i` of the tile has id
    /// `first_id + i`.
    pub fn offer(
        &mut self,
        keys: Elements,
        rows: &[f32],
        dim: usize,
        first_id: i64,
        tops: &mut [Candidates],
    ) {
        self.key.resize(dim, 0.0);
        for &i in &self.ids {
            keys.slice(i as usize * dim..(i as usize + 1) * dim)
                .to_f32(&mut self.key);
            for (query, top) in rows.chunks_exact(dim).zip(tops.iter_mut()) {
                let s = dot_widened(query, &self.key);
                if s.is_finite() {
                    top.push(s, s, first_id + i as i64);
                } else {
                    top.abandon();
                }
            }
        }
    }
}

/// The outliers among keys of squared norms `sq`: past `RATIO^2` times the mean square of the
/// keys that can be outliers (at most 1/16 of the keys lie past 16 times it, so the f32 work
/// apart stays small whatever the keys).
fn pick(sq: &[f32], ids: &mut Vec<u32>) {
    ids.clear();
    let (sum, count) = sq
        .iter()
        .filter(|&&x| x < HUGE_SQ)
        .fold((0f64, 0usize), |(s, c), &x| (s + x as f64, c + 1));
    let limit = (RATIO * RATIO) as f64 * sum / count.max(1) as f64;
    ids.extend((0..sq.len() as u32).filter(|&i| {
        let x = sq[i as usize];
        (x as f64) > limit && x < HUGE_SQ
    }));
}

/// `out[i] = |key i|^2` in f32 (`buf`: scratch).
fn squared_norms(keys: Elements, dim: usize, out: &mut Vec<f32>, buf: &mut Vec<f32>) {
    let n = keys.len() / dim;
    out.clear();
    #[cfg(target_arch = "x86_64")]
    if let Elements::Bf16(k) = keys {
        if crate::simd::has_avx512_bf16() {
            out.resize(n, 0.0);
            // SAFETY: checked the CPU; `k` holds `n` rows of `dim`.
            unsafe { bf16_squares(k, dim, out) };
            return;
        }
    }
    buf.resize(dim, 0.0);
    for i in 0..n {
        keys.slice(i * dim..(i + 1) * dim).to_f32(buf);
        // Sixteen partial sums, so the compiler can vectorise (a plain `sum` may not reorder).
        let mut acc = [0f32; 16];
        for c in buf.chunks(16) {
            for (a, x) in acc.iter_mut().zip(c) {
                *a += x * x;
            }
        }
        out.push(acc.iter().sum());
    }
}

/// Squared norms of bf16 keys with VDPBF16PS (a bf16 square is exact in f32).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and BF16; `keys` holds `out.len()` rows of `dim`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn bf16_squares(keys: &[bf16], dim: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(keys.len() >= out.len() * dim);
    let ptr = keys.as_ptr().cast::<i16>();
    for (i, o) in out.iter_mut().enumerate() {
        let mut acc = _mm512_setzero_ps();
        let mut at = 0;
        while at < dim {
            let m = crate::simd::lane_mask32(dim - at);
            let v = _mm512_maskz_loadu_epi16(m, ptr.add(i * dim + at));
            let v: __m512bh = std::mem::transmute(v);
            acc = _mm512_dpbf16_ps(acc, v, v);
            at += 32;
        }
        *o = _mm512_reduce_add_ps(acc);
    }
}

fn zero_rows<'a, T: Copy + Default>(
    keys: &[T],
    dim: usize,
    ids: &[u32],
    out: &'a mut Vec<T>,
) -> &'a [T] {
    out.clear();
    out.extend_from_slice(keys);
    for &i in ids {
        out[i as usize * dim..(i as usize + 1) * dim].fill(T::default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_are_split_out_and_zeroed_and_plain_keys_are_not() {
        let dim = 8;
        let mut keys: Vec<f32> = (0..64 * dim)
            .map(|i| ((i * 37 % 11) as f32) - 5.0)
            .collect();
        let mut o = Outliers::default();
        let same = o.split(Elements::F32(&keys), dim);
        assert!(matches!(same, Elements::F32(s) if s.as_ptr() == keys.as_ptr()));
        assert!(o.ids.is_empty());
        for &sink in &[3usize, 40] {
            for x in &mut keys[sink * dim..(sink + 1) * dim] {
                *x *= 50.0;
            }
        }
        // An overflowing key stays in the tile (its row falls back); so does a NaN one.
        keys[10 * dim] = f32::MAX;
        keys[11 * dim] = f32::NAN;
        let b: Vec<bf16> = keys.iter().map(|&x| bf16::from_f32(x)).collect();
        let split = o.split(Elements::Bf16(&b), dim);
        let Elements::Bf16(z) = split else {
            panic!("dtype changed")
        };
        for i in 0..64 {
            let row = &z[i * dim..(i + 1) * dim];
            let zero = row.iter().all(|x| x.to_f32() == 0.0);
            assert_eq!(zero, i == 3 || i == 40, "key {i}");
        }
        assert_eq!(o.ids, vec![3, 40]);
        // From the norms packing measures (the bf16 screen): the same keys.
        let norms: Vec<f32> = (0..64)
            .map(|i| {
                let row = &b[i * dim..(i + 1) * dim];
                row.iter().map(|x| x.to_f32().powi(2)).sum::<f32>().sqrt()
            })
            .collect();
        let mut m = Outliers::default();
        m.mark(&norms, 64);
        assert_eq!(m.ids, vec![3, 40]);
        let mut tops = vec![Candidates::new(1, 4); 2];
        let q: Vec<f32> = (0..2 * dim).map(|i| i as f32 * 0.25 - 1.0).collect();
        o.offer(Elements::Bf16(&b), &q, dim, 1000, &mut tops);
        for (r, top) in tops.into_iter().enumerate() {
            let (list, _) = top.finish();
            let sink: Vec<f32> = b[3 * dim..4 * dim].iter().map(|x| x.to_f32()).collect();
            let want = dot_widened(&q[r * dim..(r + 1) * dim], &sink);
            let got: Vec<_> = list.iter().filter(|e| e.id == 1003).collect();
            assert!(got.len() <= 1);
            if let Some(e) = got.first() {
                assert!(e.rescored() && e.lower == want);
            }
            assert!(list.iter().all(|e| e.id == 1003 || e.id == 1040));
        }
    }
}
