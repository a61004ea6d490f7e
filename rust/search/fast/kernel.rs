//! The bf16 microkernel fused with top-k selection. One call scores up to 8 query rows against a
//! group of `PANELS` x 16 packed keys with VDPBF16PS (the 8 x 3 accumulators stay in registers),
//! then compares each row's 48 scores with that row's threshold in one mask per panel; only scores
//! above it leave the registers, to enter the row's top-k'. The scores are never stored otherwise.

use std::arch::x86_64::*;

use super::candidates::Candidates;
use super::pack::{GROUP_KEYS, PANELS};

const ROWS: usize = 8;

/// Scores query rows `qpairs` (`[rows][d2]` packed bf16 pairs) against a packed tile of `n_keys`
/// keys whose first id is `first_id`, offering every score above a row's threshold to its top-k.
/// `thresholds[r]` mirrors `tops[r].threshold()` and is kept up to date.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and BF16; `tile` must be a packed tile of `n_keys` keys.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn score_tile(
    qpairs: &[u32],
    d2: usize,
    tile: &[u32],
    n_keys: usize,
    first_id: i64,
    tops: &mut [Candidates],
    thresholds: &mut [f32],
) {
    let rows = tops.len();
    // The loads below trust these bounds.
    assert!(qpairs.len() >= rows * d2 && thresholds.len() == rows);
    assert!(tile.len() >= n_keys.div_ceil(GROUP_KEYS) * d2 * GROUP_KEYS);
    for g in 0..n_keys.div_ceil(GROUP_KEYS) {
        let keys = tile.as_ptr().add(g * d2 * GROUP_KEYS);
        let valid = (n_keys - g * GROUP_KEYS).min(GROUP_KEYS);
        let mut masks = [0u16; PANELS];
        for (c, m) in masks.iter_mut().enumerate() {
            *m = crate::simd::lane_mask(valid.saturating_sub(16 * c));
        }
        let id0 = first_id + (g * GROUP_KEYS) as i64;
        let mut r0 = 0;
        while r0 < rows {
            let q = qpairs.as_ptr().add(r0 * d2);
            let (t, th) = (&mut tops[r0..], &mut thresholds[r0..]);
            let done = match rows - r0 {
                1 => block::<1>(q, d2, keys, masks, id0, t, th),
                2 => block::<2>(q, d2, keys, masks, id0, t, th),
                3 => block::<3>(q, d2, keys, masks, id0, t, th),
                4 => block::<4>(q, d2, keys, masks, id0, t, th),
                5 => block::<5>(q, d2, keys, masks, id0, t, th),
                6 => block::<6>(q, d2, keys, masks, id0, t, th),
                7 => block::<7>(q, d2, keys, masks, id0, t, th),
                _ => block::<ROWS>(q, d2, keys, masks, id0, t, th),
            };
            r0 += done;
        }
    }
}

#[inline(always)]
unsafe fn block<const R: usize>(
    q: *const u32,
    d2: usize,
    keys: *const u32,
    masks: [u16; PANELS],
    id0: i64,
    tops: &mut [Candidates],
    thresholds: &mut [f32],
) -> usize {
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
    let mut buf = [0f32; 16];
    for (r, row) in acc.iter().enumerate() {
        let mut t = thresholds[r];
        for (c, &scores) in row.iter().enumerate() {
            let mut m = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(masks[c], scores, _mm512_set1_ps(t));
            if m != 0 {
                _mm512_storeu_ps(buf.as_mut_ptr(), scores);
                while m != 0 {
                    let lane = m.trailing_zeros() as usize;
                    m &= m - 1;
                    tops[r].push(buf[lane], id0 + (16 * c + lane) as i64);
                }
                t = tops[r].threshold();
            }
        }
        thresholds[r] = t;
    }
    R
}

#[inline(always)]
fn bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 512-bit vectors; VDPBF16PS reads the bits as bf16 pairs.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}
