//! The AVX-512 BF16 exact kernel. Queries and keys are rounded to bfloat16 and scored with
//! VDPBF16PS (twice the f32 FMA rate, half the bytes of f32 keys), fused with a per-row set of
//! candidates: every key whose f32 score may still reach the row's k-th best. Each bf16 score s
//! comes with a bound on its error, `a K + c` for a key of norm K (`certify::ErrorBound::row`, from
//! the query's rounding and the key's norm and rounding measured while packing), so the f32 score
//! lies in `[s - aK - c, s + aK + c]`; a key enters the candidates when its upper bound exceeds
//! the row's threshold, the k-th best lower bound so far (`candidates`). The bound is per key: an
//! attention sink of a hundred times the usual norm widens its own interval, not every key's.
//! Exact ties and near-ties (repeated keys) have overlapping intervals and stay candidates; a crowd
//! of them past the cap is rescored in f32 on the spot (`Candidates::rescore`), which raises the
//! threshold to the exact k-th score. The candidates are rescored in f32 at the end, so the results
//! are those of an exact f32 search (f32 summation order aside) up to ties at the k-th score; only
//! rows whose bound is infinite (scores that may overflow f32) are rescanned in f32. The int8
//! screen (`int8`, AVX-512 VNNI, opt-in) replaces the bf16 scores with int8 ones and one bound per
//! row (the largest over the keys so far); everything after the screen is shared. In both screens
//! keys far above their tile's norm (attention sinks) are scored apart in f32 (`outliers`). The
//! bf16 scores come from VDPBF16PS (`kernel`), or from AMX tiles (`amx`, TDPBF16PS) where the CPU
//! has them and the dim is a multiple of 32.

mod amx;
mod amx_rows;
mod candidates;
mod certify;
mod int8;
mod kernel;
mod outliers;
mod pack;
mod plan;
mod query;
mod row_norms;
mod small;
#[cfg(test)]
mod tests;

use std::sync::atomic::Ordering;

use rayon::prelude::*;

use super::stats::{FALLBACK_ROWS, ROWS};
use super::{KeySource, SearchResult, SearchShape};
use crate::dtype::Elements;
use candidates::Candidates;
use certify::{certified_row, dot, ErrorBound};
use kernel::{kernel_threshold, RowBound};
use plan::{plan, Item};
pub use query::Screen;
use query::{query_rows, QueryRows};
use small::{rescan, search_small};

/// Keys packed and scored per tile (a multiple of the kernel's 48-key groups; ~120 KiB at d 128).
const TILE_KEYS: usize = 480;

/// Keys per tile of bf16 keys read in place (`amx_rows`: nothing to pack, so only the per-tile
/// work on every row, outliers and crowds, sets it; a multiple of its 32-key passes).
const ROWS_TILE_KEYS: usize = 4096;

/// The most candidates a row keeps for a top-k before it rescores them in f32 (repeated keys crowd
/// the candidates: hundreds or thousands of copies of one key all score alike): `16 k + 2048`,
/// more for long documents, as far as 256 MiB of crowded candidate buffers over all `rows` allow,
/// and never fewer than `2 k + 64` (whose buffers are about the size of the output the search's
/// budget check admitted).
fn cap(k: usize, keys: u64, rows: usize) -> usize {
    let budget = (1usize << 23) / rows.max(1);
    let long = (keys / 256).min(budget as u64) as usize;
    (16 * k + 2048).max(long).min(budget).max(2 * k + 64)
}

/// The AMX tiles a task scores with, if its screen uses them.
enum Tiles {
    Amx(crate::simd::amx::Amx),
    #[cfg(test)]
    Emulated(crate::simd::amx::Emulated),
}

impl Tiles {
    fn new(screen: Screen) -> Option<Self> {
        match screen {
            Screen::Amx => crate::simd::amx::Amx::new().map(Tiles::Amx),
            #[cfg(test)]
            Screen::AmxEmulated => Some(Tiles::Emulated(crate::simd::amx::Emulated::new())),
            _ => None,
        }
    }
}

struct ItemResult {
    tops: Vec<Candidates>,
    norms: pack::TileNorms,
}

fn run_item(
    src: &dyn KeySource,
    q: &QueryRows,
    it: Item,
    (dim, screen, in_place): (usize, Screen, bool),
    (k, cap): (usize, usize),
) -> ItemResult {
    let mut tiles = Tiles::new(screen);
    let blocks = src.blocks(it.kv_head);
    if let (Some(t), None, true) = (&mut tiles, &q.quant, in_place) {
        // bf16 keys go to the tiles in place.
        let bf16: Option<Vec<(u64, &[half::bf16])>> = blocks
            .iter()
            .map(|b| match b.keys {
                Elements::Bf16(k) => Some((b.first_id, k)),
                _ => None,
            })
            .collect();
        if let Some(bf16) = bf16 {
            return match t {
                Tiles::Amx(t) => run_item_rows(src, q, it, &bf16, dim, t, (k, cap)),
                #[cfg(test)]
                Tiles::Emulated(t) => run_item_rows(src, q, it, &bf16, dim, t, (k, cap)),
            };
        }
    }
    let d2 = dim.div_ceil(2);
    let d4 = dim.div_ceil(4);
    let m = it.rows.1 - it.rows.0;
    let mut tops = vec![Candidates::new(k, cap); m];
    let mut thresholds = vec![f32::NEG_INFINITY; m];
    let qpairs = &q.pairs[(it.rows.0 * d2).min(q.pairs.len())..(it.rows.1 * d2).min(q.pairs.len())];
    let mut packed = Vec::new();
    let mut knorm = Vec::new();
    let mut tile8 = int8::Tile::default();
    let mut outliers = outliers::Outliers::default();
    let mut keep = Vec::new();
    let mut norms = pack::TileNorms::default();
    // The bf16 screen's bounds per row for the current tile, the int8 screen's per row so far.
    let mut bounds = vec![RowBound { a: 0.0, c: 0.0 }; m];
    let mut errs = vec![0f64; m];
    let mut keybuf = vec![0f32; dim];
    let mut qpad = Vec::new();
    if tiles.is_some() {
        amx::pad_rows(qpairs, d2, &mut qpad);
    }
    for block in blocks {
        let rows = block.keys.len() / dim;
        for (start, a, b) in tile_ranges(block.first_id, rows, it.keys, TILE_KEYS) {
            let tile = block.keys.slice(a * dim..b * dim);
            // SAFETY: this module is only used when the CPU has AVX-512 F/BW/VL/BF16
            // (`simd::has_avx512_bf16`), the int8 screen only where it also has VNNI
            // (`simd::has_avx512_vnni`); `packed` / `tile8` is the packed tile of `b - a` keys.
            unsafe {
                match &q.quant {
                    None => {
                        let here = pack::pack_tile(tile, dim, &mut packed, &mut knorm);
                        outliers.mark(&knorm, b - a);
                        outliers.keep_mask(b - a, pack::PANELS, &mut keep);
                        norms.merge(here);
                        let bound = ErrorBound::new(norms, dim);
                        for (i, (b, t)) in bounds.iter_mut().zip(&mut thresholds).enumerate() {
                            *b = bound.row(q, it.rows.0 + i, here.max_ratio);
                            *t = kernel_threshold(tops[i].threshold(), b.c);
                        }
                        let (tile, n, id) = (&packed[..], b - a, start as i64);
                        let (bd, tp, th) = (&bounds[..], &mut tops[..], &mut thresholds[..]);
                        match &mut tiles {
                            Some(Tiles::Amx(t)) => amx::score_tile(
                                t, &qpad, d2, tile, &knorm, &keep, n, id, bd, tp, th,
                            ),
                            #[cfg(test)]
                            Some(Tiles::Emulated(t)) => amx::score_tile(
                                t, &qpad, d2, tile, &knorm, &keep, n, id, bd, tp, th,
                            ),
                            None => kernel::score_tile(
                                qpairs, d2, tile, &knorm, &keep, n, id, bd, tp, th,
                            ),
                        }
                    }
                    Some(qq) => {
                        let before = norms;
                        let keys = outliers.split(tile, dim);
                        norms.merge(int8::pack_tile(keys, dim, &mut tile8));
                        outliers.keep_mask(b - a, pack::PANELS, &mut keep);
                        if norms != before {
                            // Larger keys, a wider error bound for the keys from here on.
                            let bound = ErrorBound::new(norms, dim);
                            for (i, e) in errs.iter_mut().enumerate() {
                                *e = bound.for_row(q, it.rows.0 + i);
                            }
                        }
                        int8::score_tile(
                            &qq.quads[it.rows.0 * d4..it.rows.1 * d4],
                            d4,
                            &qq.scale[it.rows.0..it.rows.1],
                            &errs,
                            &tile8,
                            &keep,
                            b - a,
                            start as i64,
                            &mut tops,
                            &mut thresholds,
                        );
                    }
                }
            }
            let at = (start as i64, norms);
            settle_tile(src, q, it, tile, at, &mut outliers, &mut tops, &mut keybuf);
        }
    }
    ItemResult { tops, norms }
}

/// The tiles of task keys `keys` within a block of `rows` keys from `first_id`, at most
/// `tile_keys` each: (first id, first and end row in the block).
fn tile_ranges(
    first_id: u64,
    rows: usize,
    keys: (u64, u64),
    tile_keys: usize,
) -> impl Iterator<Item = (u64, usize, usize)> {
    let lo = keys.0.max(first_id);
    let hi = keys.1.min(first_id + rows as u64);
    (lo..hi).step_by(tile_keys).map(move |start| {
        let end = hi.min(start + tile_keys as u64);
        (
            start,
            (start - first_id) as usize,
            (end - first_id) as usize,
        )
    })
}

/// After a tile's screen: scores its outliers exactly, and rescores in f32 the candidates of
/// every crowded row, unless the row's bound is infinite (then nothing thins the crowd out: the
/// row gives up and will be rescanned). `first_id` is the tile's first key, `norms` the task's so
/// far. True when a row's threshold may have moved.
#[allow(clippy::too_many_arguments)]
fn settle_tile(
    src: &dyn KeySource,
    q: &QueryRows,
    it: Item,
    tile: crate::dtype::Elements,
    (first_id, norms): (i64, pack::TileNorms),
    outliers: &mut outliers::Outliers,
    tops: &mut [Candidates],
    keybuf: &mut [f32],
) -> bool {
    let dim = keybuf.len();
    let rows = &q.rows[it.rows.0 * dim..it.rows.1 * dim];
    let mut moved = !outliers.ids.is_empty();
    outliers.offer(tile, rows, dim, first_id, tops);
    for (i, top) in tops.iter_mut().enumerate() {
        if top.crowded() {
            moved = true;
            let r = it.rows.0 + i;
            if ErrorBound::new(norms, dim).for_row(q, r).is_infinite() {
                top.abandon();
                continue;
            }
            let query = &q.rows[r * dim..(r + 1) * dim];
            top.rescore(|id| dot(query, src.row(it.kv_head, id as u64), keybuf));
        }
    }
    moved
}

/// [`run_item`] for bf16 keys on AMX tiles, read in place (`amx_rows`): no packing, norms from
/// `row_norms`, and tiles of [`ROWS_TILE_KEYS`].
fn run_item_rows<T: crate::simd::amx::Tiles>(
    src: &dyn KeySource,
    q: &QueryRows,
    it: Item,
    blocks: &[(u64, &[half::bf16])],
    dim: usize,
    tiles: &mut T,
    (k, cap): (usize, usize),
) -> ItemResult {
    let d2 = dim / 2;
    let m = it.rows.1 - it.rows.0;
    let mut tops = vec![Candidates::new(k, cap); m];
    let qt = amx_rows::QueryTiles::new(&q.pairs[it.rows.0 * d2..it.rows.1 * d2], d2);
    // The row bounds depend on the dim and the query alone (`ErrorBound::row` with no key
    // rounding error): one set for the whole task.
    let bound = ErrorBound::new(pack::TileNorms::default(), dim);
    let bounds: Vec<RowBound> = (0..m).map(|i| bound.row(q, it.rows.0 + i, 0.0)).collect();
    let mut state = amx_rows::RowState::new(&bounds, qt.padded_rows());
    let (mut knorm, mut keep) = (Vec::new(), Vec::new());
    let mut outliers = outliers::Outliers::default();
    let mut norms = pack::TileNorms::default();
    let mut keybuf = vec![0f32; dim];
    for &(first_id, keys) in blocks {
        for (start, a, b) in tile_ranges(first_id, keys.len() / dim, it.keys, ROWS_TILE_KEYS) {
            let tile = &keys[a * dim..b * dim];
            let n = b - a;
            // SAFETY: AMX tiles exist only where the CPU has AVX-512 F/BW/BF16 and AMX-BF16 (or
            // emulated ones, in tests on AVX-512 BF16 CPUs); `knorm` and `keep` cover the tile.
            unsafe {
                norms.merge(row_norms::bf16_row_norms(tile, dim, &mut knorm));
                outliers.mark(&knorm, n);
                outliers.keep_mask(n, 2, &mut keep);
                state.raise_kmax(amx::kept_max_norm(&knorm, &keep, n), m);
                let id = start as i64;
                amx_rows::score_tile(
                    tiles, &qt, tile, dim, &knorm, &keep, id, &mut state, &mut tops,
                );
            }
            let at = (start as i64, norms);
            let tile = Elements::Bf16(tile);
            if settle_tile(src, q, it, tile, at, &mut outliers, &mut tops, &mut keybuf) {
                state.refresh(&tops);
            }
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
    let screen = match screen {
        Screen::Int8 if dim > int8::MAX_DIM => Screen::Bf16,
        Screen::Amx if !(amx::fits(dim) && crate::simd::amx::has_amx_bf16()) => Screen::Bf16,
        #[cfg(test)]
        Screen::AmxEmulated if !amx::fits(dim) => Screen::Bf16,
        s => s,
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
    let in_place = amx_rows::in_place();
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
                (dim, screen, in_place),
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
