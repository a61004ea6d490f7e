//! Few query rows (generation time, 1 to `SMALL_ROWS` rows per kv head): every key is scored
//! straight from its mapped row in f32 (16-wide FMAs, the key widened on load), so there is no
//! packing and no bf16 rounding, and the scores are exact f32. This path is bound by memory
//! bandwidth, which bf16 storage halves.

use std::arch::x86_64::*;

use crate::dtype::Elements;
use crate::search::topk::TopK;
use crate::simd::{lane_mask, load_widened as load};

/// The most query rows per (slot, kv head) that take this path.
pub const SMALL_ROWS: usize = 4;
/// How many keys ahead the scan prefetches.
const PREFETCH_KEYS: usize = 8;
const ELEM_BYTES: [usize; 3] = [4, 2, 2];

/// Scores the keys of one block against `queries` (`[m][dim]`, m <= SMALL_ROWS), offering every
/// score above a row's threshold to its top-k.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn score_block(
    keys: Elements,
    dim: usize,
    first_id: i64,
    queries: &[f32],
    tops: &mut [TopK],
    thresholds: &mut [f32],
) {
    // The loads below trust these bounds.
    assert!(tops.len() <= SMALL_ROWS && thresholds.len() == tops.len());
    assert!(queries.len() >= tops.len() * dim && keys.len().is_multiple_of(dim.max(1)));
    match tops.len() {
        0 => {}
        1 => rows::<1>(keys, dim, first_id, queries, tops, thresholds),
        2 => rows::<2>(keys, dim, first_id, queries, tops, thresholds),
        3 => rows::<3>(keys, dim, first_id, queries, tops, thresholds),
        _ => rows::<SMALL_ROWS>(keys, dim, first_id, queries, tops, thresholds),
    }
}

#[inline(always)]
unsafe fn rows<const M: usize>(
    keys: Elements,
    dim: usize,
    first_id: i64,
    queries: &[f32],
    tops: &mut [TopK],
    thresholds: &mut [f32],
) {
    let n = keys.len() / dim;
    let (ptr, t) = match keys {
        Elements::F32(s) => (s.as_ptr().cast::<u8>(), 0),
        Elements::F16(s) => (s.as_ptr().cast::<u8>(), 1),
        Elements::Bf16(s) => (s.as_ptr().cast::<u8>(), 2),
    };
    let args = (ptr, n, dim, first_id, queries);
    match t {
        0 => scan::<M, 0>(args, tops, thresholds),
        1 => scan::<M, 1>(args, tops, thresholds),
        _ => scan::<M, 2>(args, tops, thresholds),
    }
}

/// One monomorphised scan per (rows, dtype): the keys (`ptr`, `n` rows of `dim`), the first id,
/// and the queries.
type ScanArgs<'a> = (*const u8, usize, usize, i64, &'a [f32]);

#[inline(always)]
unsafe fn scan<const M: usize, const T: u8>(
    (ptr, n, dim, first_id, queries): ScanArgs,
    tops: &mut [TopK],
    thresholds: &mut [f32],
) {
    let chunks = dim.div_ceil(16);
    let tail = dim - 16 * (chunks - 1);
    let last_mask = lane_mask(tail);
    for j in 0..n {
        // Pull the rows a few keys ahead into cache: the scan is bound by memory latency.
        let ahead = (j + PREFETCH_KEYS).min(n.saturating_sub(1)) * dim * ELEM_BYTES[T as usize];
        for line in (0..dim * ELEM_BYTES[T as usize]).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(ptr.add(ahead + line).cast());
        }
        // Two partial sums per row halve the FMA dependency chain.
        let mut acc = [[_mm512_setzero_ps(); 2]; M];
        for c in 0..chunks {
            let mask = if c + 1 == chunks { last_mask } else { u16::MAX };
            let k = load::<T>(ptr, j * dim + 16 * c, mask);
            for (r, a) in acc.iter_mut().enumerate() {
                let q = _mm512_maskz_loadu_ps(mask, queries.as_ptr().add(r * dim + 16 * c));
                a[c & 1] = _mm512_fmadd_ps(k, q, a[c & 1]);
            }
        }
        for r in 0..M {
            let s = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
            if s > thresholds[r] {
                tops[r].push(s, first_id + j as i64);
                thresholds[r] = tops[r].threshold();
            }
        }
    }
}
