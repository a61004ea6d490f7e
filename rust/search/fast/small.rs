//! Few query rows (generation time, 1 to `SMALL_ROWS` rows per kv head): every key is scored
//! straight from its mapped row in f32 (16-wide FMAs, the key widened on load), so there is no
//! packing and no bf16 rounding, and the scores are exact f32. This path is bound by memory
//! bandwidth, which bf16 storage halves. The same scan rescans the rows the screens could not
//! certify (`rescan`).

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::plan::Item;
use super::query::QueryRows;
use crate::dtype::Elements;
use crate::search::portable::exact_rows;
use crate::search::topk::TopK;
use crate::search::{KeySource, SearchResult, SearchShape};
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

/// The exact f32 top-k of `rows` (`[m, dim]`) over every key of `kv_head`: the small path's
/// streaming scan (in parallel over blocks, `SMALL_ROWS` rows at a time) for a few rows, the
/// portable kernel's blocked products for many.
pub(super) fn rescan(
    src: &dyn KeySource,
    kv_head: usize,
    rows: &[f32],
    dim: usize,
    k: usize,
) -> Vec<TopK> {
    let m = rows.len() / dim;
    if m > 4 * SMALL_ROWS {
        return exact_rows(src, kv_head, rows, dim, k);
    }
    let blocks = src.blocks(kv_head);
    let shares: Vec<Vec<TopK>> = blocks
        .par_iter()
        .map(|block| {
            let mut tops = vec![TopK::new(k); m];
            let mut thresholds = vec![f32::NEG_INFINITY; m];
            for r0 in (0..m).step_by(SMALL_ROWS) {
                let r1 = (r0 + SMALL_ROWS).min(m);
                // SAFETY: this module runs only on CPUs with AVX-512 F/BW/VL.
                unsafe {
                    score_block(
                        block.keys,
                        dim,
                        block.first_id as i64,
                        &rows[r0 * dim..r1 * dim],
                        &mut tops[r0..r1],
                        &mut thresholds[r0..r1],
                    );
                }
            }
            tops
        })
        .collect();
    let mut out = vec![TopK::new(k); m];
    for share in shares {
        for (o, t) in out.iter_mut().zip(share) {
            o.merge(t);
        }
    }
    out
}

/// Few rows: exact f32 scores straight from the mapped keys, no packing, no rescoring.
pub(super) fn search_small(
    sources: &[Option<&dyn KeySource>],
    qrows: &[QueryRows],
    items: &[Item],
    shape: SearchShape,
) -> SearchResult {
    let (dim, group, k) = (shape.dim, shape.group(), shape.k);
    let m = shape.q * group;
    let shares: Vec<Vec<TopK>> = items
        .par_iter()
        .map(|it| {
            let mut tops = vec![TopK::new(k); m];
            let mut thresholds = vec![f32::NEG_INFINITY; m];
            let Some(src) = sources[it.slot] else {
                return tops;
            };
            let q = &qrows[it.slot * shape.kv_heads + it.kv_head].rows;
            for block in src.blocks(it.kv_head) {
                let rows = (block.keys.len() / dim) as u64;
                let lo = it.keys.0.max(block.first_id);
                let hi = it.keys.1.min(block.first_id + rows);
                if lo < hi {
                    let (a, b) = (
                        (lo - block.first_id) as usize,
                        (hi - block.first_id) as usize,
                    );
                    // SAFETY: this module runs only on CPUs with AVX-512 F/BW/VL.
                    unsafe {
                        score_block(
                            block.keys.slice(a * dim..b * dim),
                            dim,
                            lo as i64,
                            q,
                            &mut tops,
                            &mut thresholds,
                        );
                    }
                }
            }
            tops
        })
        .collect();
    let mut merged: Vec<Vec<TopK>> = (0..shape.batch * shape.kv_heads)
        .map(|_| vec![TopK::new(k); m])
        .collect();
    for (it, share) in items.iter().zip(shares) {
        for (r, top) in share.into_iter().enumerate() {
            merged[it.slot * shape.kv_heads + it.kv_head][r].merge(top);
        }
    }
    let mut out = SearchResult::padding(&shape);
    for (sg, tops) in merged.into_iter().enumerate() {
        let (slot, g) = (sg / shape.kv_heads, sg % shape.kv_heads);
        for (r, top) in tops.into_iter().enumerate() {
            out.set_row(&shape, slot, g, r, top.into_sorted());
        }
    }
    out
}
