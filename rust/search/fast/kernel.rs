//! The bf16 microkernel fused with top-k selection. One call scores up to 8 query rows against a
//! group of `PANELS` x 16 packed keys with VDPBF16PS (the 8 x 3 accumulators stay in registers),
//! then adds to each score its error bound (the row's coefficient times the key's norm, one FMA per
//! 16 keys) and compares these upper bounds with the row's threshold in one mask per panel; only keys
//! above it leave the registers, to enter the row's candidates. The scores are never stored
//! otherwise.

use std::arch::x86_64::*;

use super::candidates::{f32_at_least, f32_at_most, Candidates};
use super::pack::{GROUP_KEYS, PANELS};

const ROWS: usize = 8;

/// A row's error bound for one tile: a key of norm `K` (as packed) scores within `a K + c` of its
/// f32 score in bf16 (`certify::ErrorBound::row`).
#[derive(Clone, Copy, Debug)]
pub struct RowBound {
    pub a: f32,
    pub c: f64,
}

/// The threshold the kernel compares `s + a K` with, for a row whose candidates reject upper
/// bounds at or below `threshold`: at most `threshold - c`.
#[inline]
pub fn kernel_threshold(threshold: f32, c: f64) -> f32 {
    f32_at_most(threshold as f64 - c)
}

/// Scores query rows `qpairs` (`[rows][d2]` packed bf16 pairs) against a packed tile of `n_keys`
/// keys whose first id is `first_id` and norms `knorm` (padded to whole groups), offering every key
/// that `keep` marks (a bit per key, a word per panel) and whose upper bound exceeds a row's
/// threshold to its candidates. `thresholds[r]` is
/// `kernel_threshold(tops[r].threshold(), bounds[r].c)` and is kept up to date.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and BF16; `tile` must be a packed tile of `n_keys` keys.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn score_tile(
    qpairs: &[u32],
    d2: usize,
    tile: &[u32],
    knorm: &[f32],
    keep: &[u16],
    n_keys: usize,
    first_id: i64,
    bounds: &[RowBound],
    tops: &mut [Candidates],
    thresholds: &mut [f32],
) {
    let rows = tops.len();
    assert!(keep.len() >= n_keys.div_ceil(GROUP_KEYS) * PANELS);
    // The loads below trust these bounds.
    assert!(qpairs.len() >= rows * d2 && thresholds.len() == rows && bounds.len() == rows);
    assert!(tile.len() >= n_keys.div_ceil(GROUP_KEYS) * d2 * GROUP_KEYS);
    assert!(knorm.len() >= n_keys.div_ceil(GROUP_KEYS) * GROUP_KEYS);
    for g in 0..n_keys.div_ceil(GROUP_KEYS) {
        let keys = tile.as_ptr().add(g * d2 * GROUP_KEYS);
        let norms = knorm.as_ptr().add(g * GROUP_KEYS);
        let valid = (n_keys - g * GROUP_KEYS).min(GROUP_KEYS);
        let mut masks = [0u16; PANELS];
        for (c, m) in masks.iter_mut().enumerate() {
            *m = crate::simd::lane_mask(valid.saturating_sub(16 * c)) & keep[g * PANELS + c];
        }
        let id0 = first_id + (g * GROUP_KEYS) as i64;
        let mut r0 = 0;
        while r0 < rows {
            let q = qpairs.as_ptr().add(r0 * d2);
            let p = Group {
                keys,
                norms,
                d2,
                masks,
                id0,
            };
            let (b, t, th) = (&bounds[r0..], &mut tops[r0..], &mut thresholds[r0..]);
            let done = match rows - r0 {
                1 => block::<1>(q, &p, b, t, th),
                2 => block::<2>(q, &p, b, t, th),
                3 => block::<3>(q, &p, b, t, th),
                4 => block::<4>(q, &p, b, t, th),
                5 => block::<5>(q, &p, b, t, th),
                6 => block::<6>(q, &p, b, t, th),
                7 => block::<7>(q, &p, b, t, th),
                _ => block::<ROWS>(q, &p, b, t, th),
            };
            r0 += done;
        }
    }
}

/// One group of `PANELS` x 16 packed keys and their norms.
struct Group {
    keys: *const u32,
    norms: *const f32,
    d2: usize,
    masks: [u16; PANELS],
    id0: i64,
}

#[inline(always)]
unsafe fn block<const R: usize>(
    q: *const u32,
    g: &Group,
    bounds: &[RowBound],
    tops: &mut [Candidates],
    thresholds: &mut [f32],
) -> usize {
    let (d2, keys, masks, id0) = (g.d2, g.keys, g.masks, g.id0);
    let mut acc = [[_mm512_setzero_ps(); PANELS]; R];
    for p in 0..d2 {
        let kp = keys.add(p * GROUP_KEYS);
        let mut k = [_mm512_setzero_si512(); PANELS];
        for (c, kc) in k.iter_mut().enumerate() {
            *kc = _mm512_loadu_si512(kp.add(16 * c).cast());
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let qb = _mm512_set1_epi32(*q.add(r * d2 + p) as i32);
            for c in 0..PANELS {
                row[c] = _mm512_dpbf16_ps(row[c], bh(qb), bh(k[c]));
            }
        }
    }
    let norms: [__m512; PANELS] = std::array::from_fn(|c| _mm512_loadu_ps(g.norms.add(16 * c)));
    for (r, row) in acc.iter().enumerate() {
        let mut t = thresholds[r];
        for (c, &scores) in row.iter().enumerate() {
            let id = id0 + 16 * c as i64;
            offer16(
                scores,
                norms[c],
                masks[c],
                bounds[r],
                &mut t,
                id,
                &mut tops[r],
            );
        }
        thresholds[r] = t;
    }
    R
}

/// The epilogue of both bf16 scorers for 16 scores of one row: offers to `top` the keys `mask`
/// marks (ids from `id0`) whose upper bound `s + a K` (less the row's constant term, which is in
/// the threshold) exceeds `t`, and then updates `t` from the row's new threshold.
#[inline(always)]
pub(super) unsafe fn offer16(
    scores: __m512,
    norms: __m512,
    mask: u16,
    bound: RowBound,
    t: &mut f32,
    id0: i64,
    top: &mut Candidates,
) {
    let RowBound { a, c: cr } = bound;
    let av = _mm512_set1_ps(a);
    let upper = _mm512_fmadd_ps(av, norms, scores);
    let mut m = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(mask, upper, _mm512_set1_ps(*t));
    if m != 0 {
        let (mut hi, mut lo) = ([0f32; 16], [0f32; 16]);
        _mm512_storeu_ps(hi.as_mut_ptr(), upper);
        _mm512_storeu_ps(lo.as_mut_ptr(), _mm512_fnmadd_ps(av, norms, scores));
        while m != 0 {
            let lane = m.trailing_zeros() as usize;
            m &= m - 1;
            top.push(
                f32_at_least(hi[lane] as f64 + cr),
                f32_at_most(lo[lane] as f64 - cr),
                id0 + lane as i64,
            );
        }
        *t = kernel_threshold(top.threshold(), cr);
    }
}

#[inline(always)]
fn bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 512-bit vectors; VDPBF16PS reads the bits as bf16 pairs.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}
