//! The AVX-512 BF16 exact kernel. Queries and keys are rounded to bfloat16 and scored with
//! VDPBF16PS (twice the f32 FMA rate, half the bytes of f32 keys), fused with a per-row top-k'
//! of candidates: every key whose bf16 score is within a window `WINDOW * E` of the row's k-th best
//! bf16 score, where E bounds the bf16 rounding error of a score (`certify::ErrorBound`, from the
//! query's rounding and the key norms measured while packing). The candidates are rescored in f32;
//! every key left out scored at most t (the rejection threshold) in bf16, so at most t + E in f32,
//! and since t <= (k-th bf16) - WINDOW * E, the k-th rescored score beats that whenever the window
//! held no more than the cap of candidates. Exact ties and near-ties (repeated keys) stay candidates
//! and are resolved in f32. Rows that cannot be certified (a crowd of more than the cap within the
//! window) are rescanned in f32, so the results are always those of an exact f32 search (f32
//! summation order aside). The int8 screen (`int8`, AVX-512 VNNI, opt-in) replaces the bf16 scores
//! with int8 ones and its own error bound; everything after the screen is shared.

mod candidates;
mod certify;
mod int8;
mod kernel;
mod pack;
mod plan;
mod query;
mod small;
#[cfg(test)]
mod tests;

use std::sync::atomic::Ordering;

use rayon::prelude::*;

use super::stats::{FALLBACK_ROWS, ROWS};
use super::{KeySource, SearchResult, SearchShape};
use candidates::Candidates;
use certify::{certified_row, ErrorBound};
use plan::{plan, Item};
pub use query::Screen;
use query::{query_rows, QueryRows};
use small::{rescan, search_small};

/// Keys packed and scored per tile (a multiple of the kernel's 48-key groups; ~120 KiB at d 128).
const TILE_KEYS: usize = 480;
/// The candidate window, in units of the error bound E (more than 2 certifies every row whose
/// window holds at most the cap).
const WINDOW: f64 = 2.25;

/// The most candidates a row keeps for a top-k (repeated keys crowd the window: hundreds or
/// thousands of copies of one key all score alike): `16 k + 2048`, more for long documents
/// (rescoring even 1/256 of the keys beats rescanning them all), as far as 256 MiB of crowded
/// candidate buffers over all `rows` allow, and never fewer than `2 k + 64` (whose buffers are
/// about the size of the output the search's budget check admitted).
fn cap(k: usize, keys: u64, rows: usize) -> usize {
    let budget = (1usize << 23) / rows.max(1);
    let long = (keys / 256).min(budget as u64) as usize;
    (16 * k + 2048).max(long).min(budget).max(2 * k + 64)
}

struct ItemResult {
    tops: Vec<Candidates>,
    norms: pack::TileNorms,
}

fn run_item(
    src: &dyn KeySource,
    q: &QueryRows,
    it: Item,
    dim: usize,
    (k, cap): (usize, usize),
) -> ItemResult {
    let d2 = dim.div_ceil(2);
    let d4 = dim.div_ceil(4);
    let m = it.rows.1 - it.rows.0;
    let mut tops = vec![Candidates::new(k, cap); m];
    let mut thresholds = vec![f32::NEG_INFINITY; m];
    let qpairs = &q.pairs[(it.rows.0 * d2).min(q.pairs.len())..(it.rows.1 * d2).min(q.pairs.len())];
    let mut packed = Vec::new();
    let mut tile8 = int8::Tile::default();
    let mut norms = pack::TileNorms::default();
    for block in src.blocks(it.kv_head) {
        let rows = (block.keys.len() / dim) as u64;
        let lo = it.keys.0.max(block.first_id);
        let hi = it.keys.1.min(block.first_id + rows);
        let mut start = lo;
        while start < hi {
            let end = hi.min(start + TILE_KEYS as u64);
            let (a, b) = (
                (start - block.first_id) as usize,
                (end - block.first_id) as usize,
            );
            let tile = block.keys.slice(a * dim..b * dim);
            // SAFETY: this module is only used when the CPU has AVX-512 F/BW/VL/BF16
            // (`simd::has_avx512_bf16`), the int8 screen only where it also has VNNI
            // (`simd::has_avx512_vnni`); `packed` / `tile8` is the packed tile of `b - a` keys.
            unsafe {
                let before = norms;
                match &q.quant {
                    None => norms.merge(pack::pack_tile(tile, dim, &mut packed)),
                    Some(_) => norms.merge(int8::pack_tile(tile, dim, &mut tile8)),
                }
                if norms != before {
                    // Larger keys, a wider error bound: widen every row's window.
                    let bound = ErrorBound::new(norms, dim);
                    for (i, top) in tops.iter_mut().enumerate() {
                        top.widen(WINDOW * bound.for_row(q, it.rows.0 + i));
                    }
                }
                match &q.quant {
                    None => kernel::score_tile(
                        qpairs,
                        d2,
                        &packed,
                        b - a,
                        start as i64,
                        &mut tops,
                        &mut thresholds,
                    ),
                    Some(qq) => int8::score_tile(
                        &qq.quads[it.rows.0 * d4..it.rows.1 * d4],
                        d4,
                        &qq.scale[it.rows.0..it.rows.1],
                        &tile8,
                        b - a,
                        start as i64,
                        &mut tops,
                        &mut thresholds,
                    ),
                }
            }
            start = end;
        }
    }
    ItemResult { tops, norms }
}

/// Searches; inputs are validated by [`super::super::Backend::search`].
pub fn search(
    sources: &[Option<&dyn KeySource>],
    queries: &[f32],
    shape: SearchShape,
    screen: Screen,
) -> SearchResult {
    let (dim, group, k) = (shape.dim, shape.group(), shape.k);
    let screen = if dim > int8::MAX_DIM {
        Screen::Bf16
    } else {
        screen
    };
    let m = shape.q * group;
    if shape.out_len() == 0 {
        return SearchResult {
            scores: Vec::new(),
            ids: Vec::new(),
        };
    }
    let pairs: Vec<(usize, usize)> = (0..shape.batch)
        .flat_map(|s| (0..shape.kv_heads).map(move |g| (s, g)))
        .collect();
    let qrows: Vec<QueryRows> = pairs
        .par_iter()
        .map(|&(s, g)| query_rows(queries, &shape, s, g, screen))
        .collect();
    let items = plan(sources, &shape);
    if m <= small::SMALL_ROWS {
        return search_small(sources, &qrows, &items, shape);
    }
    let results: Vec<ItemResult> = items
        .par_iter()
        .map(|it| match sources[it.slot] {
            Some(src) => run_item(
                src,
                &qrows[it.slot * shape.kv_heads + it.kv_head],
                *it,
                dim,
                (k, cap(k, src.len(), m * shape.batch * shape.kv_heads)),
            ),
            None => ItemResult {
                tops: vec![Candidates::new(k, k); it.rows.1 - it.rows.0],
                norms: pack::TileNorms::default(),
            },
        })
        .collect();

    // Merge the shares of each (slot, kv head, row), and the largest key norm of each (slot, kv head).
    let mut merged: Vec<Vec<Option<Candidates>>> = pairs.iter().map(|_| vec![None; m]).collect();
    let mut norms = vec![pack::TileNorms::default(); pairs.len()];
    for (it, res) in items.iter().zip(results) {
        let sg = it.slot * shape.kv_heads + it.kv_head;
        norms[sg].merge(res.norms);
        for (i, top) in res.tops.into_iter().enumerate() {
            match &mut merged[sg][it.rows.0 + i] {
                Some(c) => c.merge(top),
                slot => *slot = Some(top),
            }
        }
    }

    // Rescore in f32 and certify; rows that fail are rescanned in f32, together per (slot, head).
    let finals: Vec<Vec<Vec<(f32, i64)>>> = merged
        .into_par_iter()
        .enumerate()
        .map(|(sg, tops)| {
            let (slot, g) = pairs[sg];
            let Some(src) = sources[slot] else {
                return vec![Vec::new(); m];
            };
            let q = &qrows[sg];
            let bound = ErrorBound::new(norms[sg], dim);
            let mut rows: Vec<Option<Vec<(f32, i64)>>> = tops
                .into_iter()
                .enumerate()
                .map(|(r, top)| {
                    let top = top.unwrap_or_else(|| Candidates::new(k, k));
                    certified_row(src, g, q, r, top, k, bound.for_row(q, r))
                })
                .collect();
            let failed: Vec<usize> = (0..m).filter(|&r| rows[r].is_none()).collect();
            if !failed.is_empty() {
                FALLBACK_ROWS.fetch_add(failed.len() as u64, Ordering::Relaxed);
                let mut qf = Vec::with_capacity(failed.len() * dim);
                for &r in &failed {
                    qf.extend_from_slice(&q.rows[r * dim..(r + 1) * dim]);
                }
                for (r, top) in failed.iter().zip(rescan(src, g, &qf, dim, k)) {
                    rows[*r] = Some(top.into_sorted());
                }
            }
            rows.into_iter()
                .map(|r| r.expect("every row filled"))
                .collect()
        })
        .collect();
    ROWS.fetch_add((shape.batch * shape.kv_heads * m) as u64, Ordering::Relaxed);

    let mut out = SearchResult::padding(&shape);
    for (sg, rows) in finals.into_iter().enumerate() {
        let (slot, g) = pairs[sg];
        for (r, best) in rows.into_iter().enumerate() {
            out.set_row(&shape, slot, g, r, best);
        }
    }
    out
}
