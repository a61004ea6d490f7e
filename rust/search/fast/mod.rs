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
mod small;

use std::sync::atomic::Ordering;

use rayon::prelude::*;

use super::portable::exact_rows;
use super::stats::{FALLBACK_ROWS, ROWS};
use super::topk::TopK;
use super::{KeySource, SearchResult, SearchShape};
use candidates::Candidates;
use certify::{certified_row, ErrorBound};

/// Keys packed and scored per tile (a multiple of the kernel's 48-key groups; ~120 KiB at d 128).
const TILE_KEYS: usize = 480;
/// The fewest keys worth a task of their own.
const SEGMENT_MIN: usize = 8192;
/// The most query rows for which tasks split keys before rows.
const ROWS_MAX: usize = 512;
/// The fewest query rows worth a task of their own (fewer would repack keys for little work).
const ROWS_MIN: usize = 128;

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

/// How keys are screened before the f32 rescoring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    /// bf16 pairs, VDPBF16PS.
    Bf16,
    /// int8 quads with a scale per key and per query row, VPDPBUSD (AVX-512 VNNI).
    Int8,
}

/// The query rows searched against one (slot, kv head): f32 rows, their rounded forms, and the
/// norms that bound the rounding error.
struct QueryRows {
    rows: Vec<f32>,
    pairs: Vec<u32>,
    /// The int8 form (int8 screen only).
    quant: Option<int8::Quantised>,
    /// `|q - q^|` per row (q^ the rounded query as the screen reads it).
    delta: Vec<f64>,
    /// `|q^|` per row.
    norm: Vec<f64>,
}

fn query_rows(
    queries: &[f32],
    shape: &SearchShape,
    slot: usize,
    kv_head: usize,
    screen: Screen,
) -> QueryRows {
    let (dim, group) = (shape.dim, shape.group());
    let m = shape.q * group;
    let rows = shape.gather_rows(queries, slot, kv_head, 0..m);
    if screen == Screen::Int8 {
        let quant = int8::quantise_queries(&rows, dim);
        return QueryRows {
            rows,
            pairs: Vec::new(),
            delta: quant.delta.clone(),
            norm: quant.norm.clone(),
            quant: Some(quant),
        };
    }
    let mut pairs = Vec::new();
    pack::pack_queries(&rows, dim, &mut pairs);
    let d2 = dim.div_ceil(2);
    let (mut delta, mut norm) = (vec![0f64; m], vec![0f64; m]);
    for r in 0..m {
        let (mut dd, mut nn) = (0f64, 0f64);
        for i in 0..dim {
            let rounded = pack::pair_element(pairs[r * d2 + i / 2], i % 2) as f64;
            dd += (rows[r * dim + i] as f64 - rounded).powi(2);
            nn += rounded * rounded;
        }
        delta[r] = dd.sqrt();
        norm[r] = nn.sqrt();
    }
    QueryRows {
        rows,
        pairs,
        quant: None,
        delta,
        norm,
    }
}

/// One task: a share of the keys of (slot, kv head) against a block of its query rows.
#[derive(Clone, Copy, Debug)]
struct Item {
    slot: usize,
    kv_head: usize,
    keys: (u64, u64),
    rows: (usize, usize),
}

struct ItemResult {
    tops: Vec<Candidates>,
    norms: pack::TileNorms,
}

fn plan(sources: &[Option<&dyn KeySource>], shape: &SearchShape) -> Vec<Item> {
    let want = rayon::current_num_threads() * 4;
    let base = (shape.batch * shape.kv_heads).max(1);
    let m = shape.q * shape.group();
    let mut items = Vec::new();
    for (slot, src) in sources.iter().enumerate() {
        let n = src.map_or(0, |s| s.len());
        // Up to ROWS_MAX rows, split keys: every key is then packed once (packing costs as much
        // as scoring a few dozen rows), and a task's rows are read from L1/L2 while one group of
        // keys stays in L1. Beyond, split rows first (each row's candidates then see every key
        // once, so their threshold rises early, and the rows of a task stay in L2).
        let (segments, row_blocks) = if m <= ROWS_MAX {
            let segments = want
                .div_ceil(base)
                .clamp(1, (n as usize / SEGMENT_MIN).max(1));
            let rows = want
                .div_ceil(base * segments)
                .clamp(1, m.div_ceil(ROWS_MIN).max(1));
            (segments, rows)
        } else {
            let rows = want.div_ceil(base).clamp(1, m.div_ceil(ROWS_MIN).max(1));
            let segments = if base * rows < want {
                want.div_ceil(base * rows)
                    .clamp(1, (n as usize / SEGMENT_MIN).max(1))
            } else {
                1
            };
            (segments, rows)
        };
        for kv_head in 0..shape.kv_heads {
            for s in 0..segments as u64 {
                let keys = (n * s / segments as u64, n * (s + 1) / segments as u64);
                for b in 0..row_blocks {
                    let rows = (m * b / row_blocks, m * (b + 1) / row_blocks);
                    items.push(Item {
                        slot,
                        kv_head,
                        keys,
                        rows,
                    });
                }
            }
        }
    }
    items
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

/// The exact f32 top-k of `rows` (`[m, dim]`) over every key of `kv_head`: the small path's
/// streaming scan (in parallel over blocks, `SMALL_ROWS` rows at a time) for a few rows, the
/// portable kernel's blocked products for many.
fn rescan(src: &dyn KeySource, kv_head: usize, rows: &[f32], dim: usize, k: usize) -> Vec<TopK> {
    let m = rows.len() / dim;
    if m > 4 * small::SMALL_ROWS {
        return exact_rows(src, kv_head, rows, dim, k);
    }
    let blocks = src.blocks(kv_head);
    let shares: Vec<Vec<TopK>> = blocks
        .par_iter()
        .map(|block| {
            let mut tops = vec![TopK::new(k); m];
            let mut thresholds = vec![f32::NEG_INFINITY; m];
            for r0 in (0..m).step_by(small::SMALL_ROWS) {
                let r1 = (r0 + small::SMALL_ROWS).min(m);
                // SAFETY: this module runs only on CPUs with AVX-512 F/BW/VL.
                unsafe {
                    small::score_block(
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
fn search_small(
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
                        small::score_block(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Elements;
    use crate::search::fast::pack::{GROUP_KEYS, PANELS};
    use half::{bf16, f16};

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    struct Rows {
        keys: Vec<f32>,
        dim: usize,
    }

    impl KeySource for Rows {
        fn len(&self) -> u64 {
            (self.keys.len() / self.dim) as u64
        }
        fn blocks(&self, _: usize) -> Vec<crate::search::KeyBlock<'_>> {
            self.keys
                .chunks(1000 * self.dim)
                .enumerate()
                .map(|(i, c)| crate::search::KeyBlock {
                    first_id: (i * 1000) as u64,
                    keys: Elements::F32(c),
                })
                .collect()
        }
        fn row(&self, _: usize, id: u64) -> Elements<'_> {
            Elements::F32(&self.keys[id as usize * self.dim..][..self.dim])
        }
    }

    fn both(src: &Rows, queries: &[f32], k: usize) -> (SearchResult, SearchResult) {
        let shape = SearchShape {
            batch: 1,
            q: queries.len() / src.dim,
            heads: 1,
            kv_heads: 1,
            dim: src.dim,
            k,
        };
        let s: [Option<&dyn KeySource>; 1] = [Some(src)];
        (
            search(&s, queries, shape, Screen::Bf16),
            crate::search::portable::PortableSearch.search(&s, queries, shape),
        )
    }

    #[test]
    fn near_ties_below_bf16_resolution_fall_back_and_stay_exact() {
        if !crate::simd::has_avx512_bf16() {
            return;
        }
        // 3000 keys equal to one vector up to 1e-5 relative noise: bf16 cannot tell them apart,
        // more than the candidate cap crowd the window, so no row can be certified and every row
        // must be rescanned in f32 (its own summation order: scores agree to f32 rounding, and
        // keys closer than that may swap).
        let (dim, n) = (24, 3000);
        let mut seed = 11;
        let base: Vec<f32> = (0..dim).map(|_| lcg(&mut seed)).collect();
        let keys = (0..n)
            .flat_map(|_| {
                base.iter()
                    .map(|&b| b * (1.0 + 1e-5 * lcg(&mut seed)))
                    .collect::<Vec<_>>()
            })
            .collect();
        let src = Rows { keys, dim };
        // More rows than the small path takes, so the bf16 kernel runs.
        let rows = small::SMALL_ROWS + 3;
        let queries: Vec<f32> = (0..rows * dim).map(|_| lcg(&mut seed)).collect();
        let before = crate::search::stats().fallback_rows;
        let (fast, portable) = both(&src, &queries, 5);
        let after = crate::search::stats().fallback_rows;
        assert!(
            after >= before + rows as u64,
            "{before} -> {after}, {:?} vs {:?}",
            fast.ids,
            portable.ids
        );
        for (a, b) in fast.scores.iter().zip(&portable.scores) {
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1e-3), "{a} vs {b}");
        }
    }

    #[test]
    fn well_separated_scores_are_certified_without_fallback() {
        if !crate::simd::has_avx512_bf16() {
            return;
        }
        let (dim, n) = (64, 5000);
        let mut seed = 5;
        let keys: Vec<f32> = (0..n * dim).map(|_| lcg(&mut seed)).collect();
        let src = Rows { keys, dim };
        // Both paths: the small one (few rows) and the packed bf16 one.
        for rows in [1, 3, small::SMALL_ROWS, small::SMALL_ROWS + 1, 9, 40] {
            let queries: Vec<f32> = (0..rows * dim).map(|_| lcg(&mut seed)).collect();
            let (fast, portable) = both(&src, &queries, 8);
            assert_eq!(fast.ids, portable.ids, "{rows} rows");
            for (a, b) in fast.scores.iter().zip(&portable.scores) {
                assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn int8_packing_rounds_each_key_to_the_nearest_code() {
        if !crate::simd::has_avx512_vnni() {
            return;
        }
        let mut seed = 13;
        for (n, dim) in [
            (1, 1),
            (5, 3),
            (16, 32),
            (47, 33),
            (50, 64),
            (97, 130),
            (49, 7),
        ] {
            let f: Vec<f32> = (0..n * dim).map(|_| lcg(&mut seed) * 8.0).collect();
            let h: Vec<f16> = f.iter().map(|&x| f16::from_f32(x)).collect();
            let b: Vec<bf16> = f.iter().map(|&x| bf16::from_f32(x)).collect();
            for keys in [Elements::F32(&f), Elements::F16(&h), Elements::Bf16(&b)] {
                let mut tile = int8::Tile::default();
                // SAFETY: checked the CPU above.
                let norms = unsafe { int8::pack_tile(keys, dim, &mut tile) };
                let d4 = dim.div_ceil(4);
                let amax = (0..n * dim).map(|i| keys.get(i).abs()).fold(0f32, f32::max);
                assert_eq!(norms.max_abs, amax, "n {n} dim {dim}");
                assert_eq!(tile.scale, amax / 127.0);
                let (mut max_sq, mut max_err) = (0f32, 0f32);
                for key in 0..n {
                    let (panel, lane) = (key / 16, key % 16);
                    let base = (panel / PANELS) * d4 * GROUP_KEYS + (panel % PANELS) * 16 + lane;
                    let (mut sum, mut sq, mut err) = (0i32, 0f32, 0f32);
                    for i in 0..4 * d4 {
                        let code = (tile.data[base + (i / 4) * GROUP_KEYS] >> (8 * (i % 4))) as i8;
                        let x = if i < dim {
                            keys.get(key * dim + i)
                        } else {
                            0.0
                        };
                        let back = code as f32 * tile.scale;
                        assert!(
                            (x - back).abs() <= 0.5001 * tile.scale,
                            "n {n} dim {dim} key {key} element {i}: {x} as {code}"
                        );
                        assert!(i < dim || code == 0);
                        sum += code as i32;
                        sq += x * x;
                        err += (x - back) * (x - back);
                    }
                    assert_eq!(tile.corr[key], -128 * sum, "n {n} dim {dim} key {key}");
                    max_sq = max_sq.max(sq);
                    max_err = max_err.max(err);
                }
                assert!((norms.max_sq - max_sq).abs() <= 1e-4 * max_sq.max(1.0));
                assert!((norms.max_err_sq - max_err).abs() <= 1e-3 * max_err.max(1e-6));
            }
        }
    }

    #[test]
    fn packing_matches_the_scalar_reference() {
        if !crate::simd::has_avx512_bf16() {
            return;
        }
        let mut seed = 3;
        for (n, dim) in [(1, 1), (5, 3), (16, 32), (47, 33), (50, 64), (97, 130)] {
            let f: Vec<f32> = (0..n * dim).map(|_| lcg(&mut seed) * 8.0).collect();
            let h: Vec<f16> = f.iter().map(|&x| f16::from_f32(x)).collect();
            let b: Vec<bf16> = f.iter().map(|&x| bf16::from_f32(x)).collect();
            for keys in [Elements::F32(&f), Elements::F16(&h), Elements::Bf16(&b)] {
                let mut out = Vec::new();
                // SAFETY: checked the CPU above.
                let norms = unsafe { pack::pack_tile(keys, dim, &mut out) };
                let max_sq = norms.max_sq;
                let max_abs = (0..n * dim).map(|i| keys.get(i).abs()).fold(0f32, f32::max);
                assert_eq!(norms.max_abs, max_abs);
                assert_eq!(
                    out,
                    pack::pack_tile_reference(keys, dim),
                    "n {n} dim {dim} {keys:?}"
                );
                let want = (0..n)
                    .map(|i| (0..dim).map(|j| keys.get(i * dim + j).powi(2)).sum::<f32>())
                    .fold(0f32, f32::max);
                assert!(
                    (max_sq - want).abs() <= 1e-4 * want.max(1.0),
                    "{max_sq} vs {want}"
                );
            }
        }
    }
}
