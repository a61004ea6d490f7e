//! Unit tests of the fast kernel: certification, fallback, and packing against scalar references.

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

/// Keys as f32, or as bf16 (`half` not empty; `keys` then holds their f32 values).
struct Rows {
    keys: Vec<f32>,
    dim: usize,
    half: Vec<bf16>,
}

impl Rows {
    fn f32(keys: Vec<f32>, dim: usize) -> Self {
        Rows {
            keys,
            dim,
            half: Vec::new(),
        }
    }

    /// The keys rounded to bf16: a bf16 store's, which the AMX screen reads in place.
    fn bf16(keys: &[f32], dim: usize) -> Self {
        let half: Vec<bf16> = keys.iter().map(|&x| bf16::from_f32(x)).collect();
        Rows {
            keys: half.iter().map(|x| x.to_f32()).collect(),
            dim,
            half,
        }
    }

    fn elements(&self, range: std::ops::Range<usize>) -> Elements<'_> {
        if self.half.is_empty() {
            Elements::F32(&self.keys[range])
        } else {
            Elements::Bf16(&self.half[range])
        }
    }
}

impl KeySource for Rows {
    fn len(&self) -> u64 {
        (self.keys.len() / self.dim) as u64
    }
    fn blocks(&self, _: usize) -> Vec<crate::search::KeyBlock<'_>> {
        let (n, block) = (self.keys.len(), 1000 * self.dim);
        (0..n.div_ceil(block))
            .map(|i| crate::search::KeyBlock {
                first_id: (i * 1000) as u64,
                keys: self.elements(i * block..n.min((i + 1) * block)),
            })
            .collect()
    }
    fn row(&self, _: usize, id: u64) -> Elements<'_> {
        let at = id as usize * self.dim;
        self.elements(at..at + self.dim)
    }
}

fn both(src: &Rows, queries: &[f32], k: usize) -> (SearchResult, SearchResult) {
    both_with(src, queries, k, Screen::Bf16)
}

fn both_with(
    src: &Rows,
    queries: &[f32],
    k: usize,
    screen: Screen,
) -> (SearchResult, SearchResult) {
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
        search(&s, queries, shape, screen),
        crate::search::portable::PortableSearch.search(&s, queries, shape),
    )
}

#[test]
fn near_ties_below_bf16_resolution_are_rescored_not_rescanned() {
    if !crate::simd::has_avx512_bf16() {
        return;
    }
    // 3000 keys equal to one vector up to 1e-5 relative noise: bf16 cannot tell them apart, and
    // more than the candidate cap crowd every row's candidates. The crowd is rescored in f32 on
    // the spot instead of the row being rescanned: no row falls back, and the scores are the f32
    // ones (keys closer than f32 rounding may swap).
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
    let src = Rows::f32(keys, dim);
    // More rows than the small path takes, so the bf16 kernel runs.
    let rows = small::SMALL_ROWS + 3;
    let queries: Vec<f32> = (0..rows * dim).map(|_| lcg(&mut seed)).collect();
    let before = crate::search::stats().fallback_rows;
    let (fast, portable) = both(&src, &queries, 5);
    let after = crate::search::stats().fallback_rows;
    // Other tests may fall back meanwhile (the counter is process-wide), but not by all rows.
    assert!(after < before + rows as u64, "{before} -> {after}");
    for (a, b) in fast.scores.iter().zip(&portable.scores) {
        assert!((a - b).abs() <= 1e-6 * a.abs().max(1e-3), "{a} vs {b}");
    }
}

#[test]
fn exact_copies_and_sinks_are_found_up_to_ties_without_fallback() {
    if !crate::simd::has_avx512_bf16() {
        return;
    }
    // Half the keys are copies of 3 vectors, and every 64th key is one attention sink of 100x
    // the usual norm (its bound is 100x wider, which must not widen the other keys'). Thousands
    // of exact ties at the k-th score: the result is a top-k of the f32 scores up to ties.
    let (dim, n, k) = (64, 20_000, 16);
    let mut seed = 21;
    let originals: Vec<Vec<f32>> = (0..3)
        .map(|_| (0..dim).map(|_| 2.0 * lcg(&mut seed)).collect())
        .collect();
    let sink: Vec<f32> = (0..dim).map(|_| 100.0 * lcg(&mut seed)).collect();
    let mut keys = Vec::with_capacity(n * dim);
    for i in 0..n {
        if i % 64 == 0 {
            keys.extend_from_slice(&sink);
        } else if lcg(&mut seed) < 0.0 {
            keys.extend_from_slice(&originals[i % 3]);
        } else {
            keys.extend((0..dim).map(|_| lcg(&mut seed)));
        }
    }
    let src = Rows::f32(keys, dim);
    let rows = 40;
    let queries: Vec<f32> = (0..rows * dim).map(|_| lcg(&mut seed)).collect();
    // Every screen: the int8 one scores the sinks apart (`outliers`); the AMX tiles, emulated
    // here and on the CPU's own tiles where it has them (else `Amx` is the bf16 screen).
    let mut screens = vec![Screen::Bf16, Screen::AmxEmulated, Screen::Amx];
    if crate::simd::has_avx512_vnni() {
        screens.push(Screen::Int8);
    }
    for screen in screens {
        check_copies_and_sinks(&src, &queries, k, screen);
    }
    // bf16 keys, which the AMX screen reads in place (`amx_rows`), with the crowds' rescoring and
    // the sinks' exact scores moving thresholds between its tiles.
    let src = Rows::bf16(&src.keys, dim);
    for screen in [Screen::Bf16, Screen::AmxEmulated, Screen::Amx] {
        check_copies_and_sinks(&src, &queries, k, screen);
    }
}

fn check_copies_and_sinks(src: &Rows, queries: &[f32], k: usize, screen: Screen) {
    let (dim, rows) = (src.dim, queries.len() / src.dim);
    let before = crate::search::stats().fallback_rows;
    let (fast, portable) = both_with(src, queries, k, screen);
    let after = crate::search::stats().fallback_rows;
    assert!(
        after < before + rows as u64 / 2,
        "{screen:?}: {before} -> {after}"
    );
    for r in 0..rows {
        let q = &queries[r * dim..(r + 1) * dim];
        let exact = |id: i64| -> f32 {
            let key = &src.keys[id as usize * dim..(id as usize + 1) * dim];
            q.iter().zip(key).map(|(a, b)| a * b).sum()
        };
        let kth = portable.scores[r * k + k - 1];
        let tol = 1e-5 * kth.abs().max(1.0);
        let ids = &fast.ids[r * k..(r + 1) * k];
        let mut seen = ids.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), k, "row {r}: duplicate ids {ids:?}");
        for (j, &id) in ids.iter().enumerate() {
            let s = fast.scores[r * k + j];
            assert!(
                (s - exact(id)).abs() <= tol,
                "row {r}: {s} is not key {id}'s score"
            );
            assert!(
                s >= kth - tol,
                "row {r}: key {id} scores {s} below the k-th {kth}"
            );
            assert!(
                (s - portable.scores[r * k + j]).abs() <= tol,
                "row {r}: the {j}-th score differs"
            );
        }
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
    let src = Rows::f32(keys, dim);
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
fn amx_tiles_find_the_exact_top_k_for_any_rows_keys_and_dims() {
    if !crate::simd::has_avx512_bf16() {
        return;
    }
    // Rows around the 16- and 32-row blocks, key counts that leave partial panels, groups and an
    // odd panel (blocks of 1000 keys), and dims that fill tiles (32, 64, 128) or not (48: the
    // AVX-512 microkernel). Emulated tiles everywhere, the CPU's own where it has AMX.
    let mut seed = 17;
    for (dim, n, half) in [
        (32, 1000, false),
        (64, 2345, false),
        (128, 1777, false),
        (48, 999, false),
        (32, 1000, true),
        (64, 2345, true),
        (128, 1777, true),
        (64, 31, true),
        (64, 5000, true),
    ] {
        let keys: Vec<f32> = (0..n * dim).map(|_| lcg(&mut seed)).collect();
        // bf16 keys: the in-place AMX path (`amx_rows`), 1000-key blocks cutting its passes.
        let src = if half {
            Rows::bf16(&keys, dim)
        } else {
            Rows::f32(keys, dim)
        };
        for rows in [5, 16, 31, 32, 33, 70] {
            let queries: Vec<f32> = (0..rows * dim).map(|_| lcg(&mut seed)).collect();
            for screen in [Screen::AmxEmulated, Screen::Amx] {
                let before = crate::search::stats().fallback_rows;
                let (fast, portable) = both_with(&src, &queries, 10, screen);
                let after = crate::search::stats().fallback_rows;
                let what = format!("{screen:?} dim {dim}, {n} keys (bf16 {half}), {rows} rows");
                assert!(after < before + rows as u64, "{what}: fell back");
                assert_eq!(fast.ids, portable.ids, "{what}");
                for (a, b) in fast.scores.iter().zip(&portable.scores) {
                    assert!(
                        (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                        "{what}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn amx_tiles_score_a_pass_as_the_microkernel_does() {
    if !crate::simd::has_avx512_bf16() {
        return;
    }
    // One tile of keys straight through both scorers with every threshold at -inf: each row is
    // offered every key, with bounds from scores that differ at most by the f32 summation order.
    let (dim, n, rows) = (64, 100, 37);
    let d2 = dim / 2;
    let mut seed = 29;
    let keys: Vec<f32> = (0..n * dim).map(|_| lcg(&mut seed)).collect();
    let queries: Vec<f32> = (0..rows * dim).map(|_| lcg(&mut seed)).collect();
    let (mut packed, mut knorm, mut qpairs, mut qpad) = (vec![], vec![], vec![], vec![]);
    unsafe { pack::pack_tile(Elements::F32(&keys), dim, &mut packed, &mut knorm) };
    pack::pack_queries(&queries, dim, &mut qpairs);
    amx::pad_rows(&qpairs, d2, &mut qpad);
    let keep = vec![u16::MAX; n.div_ceil(GROUP_KEYS) * PANELS];
    let bounds = vec![RowBound { a: 1e-3, c: 0.0 }; rows];
    let run = |tiled: bool| {
        let mut tops = vec![Candidates::new(n, 4 * n); rows];
        let mut th = vec![f32::NEG_INFINITY; rows];
        unsafe {
            if tiled {
                let mut t = crate::simd::amx::Emulated::new();
                amx::score_tile(
                    &mut t, &qpad, d2, &packed, &knorm, &keep, n, 7, &bounds, &mut tops, &mut th,
                );
            } else {
                kernel::score_tile(
                    &qpairs, d2, &packed, &knorm, &keep, n, 7, &bounds, &mut tops, &mut th,
                );
            }
        }
        tops.into_iter()
            .map(|t| {
                let mut e = t.finish().0;
                e.sort_by_key(|e| e.id);
                e
            })
            .collect::<Vec<_>>()
    };
    let (tiled, plain) = (run(true), run(false));
    for (r, (a, b)) in tiled.iter().zip(&plain).enumerate() {
        assert_eq!(a.len(), n, "row {r}");
        assert_eq!(a.len(), b.len(), "row {r}");
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.id, y.id);
            assert!((x.upper - y.upper).abs() <= 1e-5 && (x.lower - y.lower).abs() <= 1e-5);
        }
    }
    assert_eq!(tiled[0][0].id, 7);
    assert_eq!(tiled[0][n - 1].id, 7 + n as i64 - 1);
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
            let (mut out, mut knorm) = (Vec::new(), Vec::new());
            // SAFETY: checked the CPU above.
            let norms = unsafe { pack::pack_tile(keys, dim, &mut out, &mut knorm) };
            // Each key's own norm, zero past the last key.
            assert_eq!(knorm.len(), n.div_ceil(GROUP_KEYS) * GROUP_KEYS);
            for (i, &got) in knorm.iter().enumerate() {
                let want = if i < n {
                    (0..dim)
                        .map(|j| (keys.get(i * dim + j) as f64).powi(2))
                        .sum::<f64>()
                        .sqrt()
                } else {
                    0.0
                };
                assert!((got as f64 - want).abs() <= 1e-5 * want, "{got} vs {want}");
            }
            let bf16_keys = matches!(keys, Elements::Bf16(_));
            assert!(norms.max_ratio <= if bf16_keys { 0.0 } else { 0.0040 });
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
