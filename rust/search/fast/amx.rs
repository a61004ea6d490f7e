//! The bf16 screen on AMX tiles (TDPBF16PS: a 16 x 16 block of scores from 16 x 16 bf16 pairs
//! per instruction, 16 times VDPBF16PS's work). Keys are the bf16 kernel's packed tile unchanged:
//! a panel of 16 keys, pair p of all 16 side by side, is a tile's row p (the VNNI layout), read
//! with the group's stride. Query rows are packed bf16 pairs padded to whole blocks of 32 rows.
//!
//! One pass scores 32 query rows against 2 panels (32 keys) into four accumulator tiles and
//! stores them to one of two L1 buffers. The epilogue of a pass runs after the next pass's tile
//! products are issued, so the vector units work through one pass's scores while the tiles
//! compute the next. At dims of 64 or 128 a pass is only 2 or 4 products per tile, so the
//! epilogue is what bounds the kernel: it first compares each row's 16 scores with one per-row
//! pre-threshold `t - a Kmax` (`Kmax` the tile's largest norm among the kept keys), which any key
//! that may enter the candidates exceeds; only rows with such a key take the bf16 kernel's exact
//! test (`kernel::offer16`: the key's own bound `a K`). The key panels stay in L1 while the query
//! blocks stream past. Everything else (bounds, candidates, certification) is the bf16 screen's.

use std::arch::x86_64::*;

use super::candidates::{f32_at_most, Candidates};
use super::kernel::{offer16, RowBound};
use super::pack::{GROUP_KEYS, PANELS};
use crate::simd::amx::{Tiles, TILE_ROWS};

/// Query rows one pass scores (two tiles of 16).
pub const BLOCK_ROWS: usize = 2 * TILE_ROWS;
/// bf16 pairs one tile row holds.
const TILE_PAIRS: usize = 16;

/// True when rows of `dim` elements fill whole tile rows (AMX then scores them; other dims take
/// the AVX-512 kernel).
pub fn fits(dim: usize) -> bool {
    dim > 0 && dim.is_multiple_of(2 * TILE_PAIRS)
}

/// Copies packed query rows (`[m][d2]`) into `out`, zero-padded to whole blocks of `BLOCK_ROWS`.
pub fn pad_rows(qpairs: &[u32], d2: usize, out: &mut Vec<u32>) {
    let m = qpairs.len() / d2.max(1);
    out.clear();
    out.extend_from_slice(qpairs);
    out.resize(m.div_ceil(BLOCK_ROWS) * BLOCK_ROWS * d2, 0);
}

/// 64-byte aligned scores of one pass: accumulator `i` at `[256 i..]`, row-major 16 x 16.
#[repr(C, align(64))]
pub(super) struct Scores(pub(super) [f32; 4 * 256]);

/// The two score buffers of a pipelined scorer: each pass's four accumulators go to one, while
/// the epilogue of the pass before reads the other. Holds the pass whose scores wait.
pub(super) struct Pipeline<P> {
    scores: [Scores; 2],
    /// The buffer of the waiting pass (of the last pass stored).
    buf: usize,
    pending: Option<P>,
}

impl<P> Pipeline<P> {
    pub(super) fn new() -> Self {
        Pipeline {
            scores: [Scores([0.0; 4 * 256]), Scores([0.0; 4 * 256])],
            buf: 1,
            pending: None,
        }
    }

    /// The waiting pass and its scores, for its epilogue (run it before [`Pipeline::store`], so
    /// it overlaps the products just issued).
    #[inline(always)]
    pub(super) fn previous(&mut self) -> Option<(P, &Scores)> {
        let buf = self.buf;
        self.pending.take().map(|p| (p, &self.scores[buf]))
    }

    /// Stores the four accumulators (the products of `pass`) to the other buffer; `pass` waits.
    ///
    /// # Safety
    /// As for [`Tiles::store_acc`].
    #[inline(always)]
    pub(super) unsafe fn store<T: Tiles>(&mut self, tiles: &mut T, pass: P) {
        let out = self.next_buffer();
        for i in 0..4 {
            tiles.store_acc(i, out.add(256 * i).cast(), 64);
        }
        self.filled(pass);
    }

    /// The buffer the next pass's scores go to (the waiting pass's scores stay in the other).
    #[inline(always)]
    pub(super) fn next_buffer(&mut self) -> *mut f32 {
        self.scores[1 - self.buf].0.as_mut_ptr()
    }

    /// Marks [`Pipeline::next_buffer`] as holding `pass`'s scores; `pass` waits.
    #[inline(always)]
    pub(super) fn filled(&mut self, pass: P) {
        self.buf = 1 - self.buf;
        self.pending = Some(pass);
    }
}

/// A lower bound on `t - a kmax`: a key of norm at most `kmax` whose bf16 score is `s` can pass
/// the exact test `s + a K > t` only if `s > pre_threshold(t, a, kmax)` (`a`, `kmax` >= 0; the
/// exact test's `s + a K` is rounded, but rounding is monotone and `t` is an f32, so it passes
/// only when the real `s + a K` exceeds `t`). `-inf` where the difference is undefined.
#[inline]
pub(super) fn pre_threshold(t: f32, a: f32, kmax: f32) -> f32 {
    // The product of two f32 is exact in f64; the margin covers the rounded difference.
    let u = t as f64 - a as f64 * kmax as f64;
    if u.is_nan() {
        f32::NEG_INFINITY
    } else if u.is_infinite() {
        u as f32
    } else {
        f32_at_most(u - u.abs() * 1e-12)
    }
}

/// The largest norm among the kept keys of a tile (`keep`: a word per panel). NaN norms are left
/// out: such a key never passes the exact test, and a NaN lane must not hide the others' largest.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn kept_max_norm(knorm: &[f32], keep: &[u16], n_keys: usize) -> f32 {
    let mut m = _mm512_setzero_ps();
    for (p, &kept) in keep.iter().enumerate().take(n_keys.div_ceil(16)) {
        let x = _mm512_loadu_ps(knorm.as_ptr().add(16 * p));
        let mask = crate::simd::lane_mask(n_keys - 16 * p) & kept;
        let mask = _mm512_mask_cmp_ps_mask::<_CMP_ORD_Q>(mask, x, x);
        m = _mm512_mask_max_ps(m, mask, m, x);
    }
    _mm512_reduce_max_ps(m)
}

/// [`super::kernel::score_tile`] on tiles: scores the padded query rows `qpad` (`[rows padded to
/// BLOCK_ROWS][d2]`) against a packed tile of `n_keys` keys, offering every key that `keep` marks
/// and whose upper bound exceeds a row's threshold to its candidates.
///
/// # Safety
/// The CPU must support AVX-512 F and BW, and `tiles` must work (AMX granted, or emulated);
/// `tile` must be a packed tile of `n_keys` keys of `d2` pairs, `d2` a multiple of 16.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn score_tile<T: Tiles>(
    tiles: &mut T,
    qpad: &[u32],
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
    let groups = n_keys.div_ceil(GROUP_KEYS);
    // The tile loads below trust these bounds.
    assert!(d2 > 0 && d2.is_multiple_of(TILE_PAIRS));
    assert!(qpad.len() >= rows.div_ceil(BLOCK_ROWS) * BLOCK_ROWS * d2);
    assert!(thresholds.len() == rows && bounds.len() == rows);
    assert!(tile.len() >= groups * d2 * GROUP_KEYS && knorm.len() >= groups * GROUP_KEYS);
    assert!(keep.len() >= groups * PANELS);
    let panels = n_keys.div_ceil(16);
    let panel_at = |p: usize| {
        tile.as_ptr()
            .add((p / PANELS) * d2 * GROUP_KEYS + (p % PANELS) * 16)
    };
    let kmax = kept_max_norm(knorm, keep, n_keys);
    let pre = bounds
        .iter()
        .zip(thresholds.iter())
        .map(|(b, &t)| pre_threshold(t, b.a, kmax))
        .collect();
    let mut rows_at = Rows {
        bounds,
        tops,
        thresholds,
        pre,
        kmax,
    };
    let mut pipe = Pipeline::new();
    tiles.begin();
    for p0 in (0..panels).step_by(2) {
        // The second panel of an odd count: past the keys (its mask is zero), and past the packed
        // tile too when the last group is full, then it aliases the first panel.
        let p1 = if p0 + 1 < groups * PANELS { p0 + 1 } else { p0 };
        let mut masks = [0u16; 2];
        for (c, p) in [p0, p0 + 1].into_iter().enumerate() {
            if p < panels {
                masks[c] = crate::simd::lane_mask(n_keys - 16 * p) & keep[p];
            }
        }
        if masks == [0, 0] {
            continue;
        }
        let keys = [panel_at(p0), panel_at(p1)];
        let norms = [
            _mm512_loadu_ps(knorm.as_ptr().add(16 * p0)),
            _mm512_loadu_ps(knorm.as_ptr().add(16 * p1)),
        ];
        let ids = [first_id + 16 * p0 as i64, first_id + 16 * (p0 + 1) as i64];
        for r0 in (0..rows).step_by(BLOCK_ROWS) {
            tiles.zero_acc();
            for j in 0..d2 / TILE_PAIRS {
                let q = qpad.as_ptr().add(r0 * d2 + TILE_PAIRS * j);
                tiles.load_a(0, q.cast(), 4 * d2);
                tiles.load_a(1, q.add(TILE_ROWS * d2).cast(), 4 * d2);
                for (c, k) in keys.iter().enumerate() {
                    tiles.load_b(c, k.add(TILE_PAIRS * j * GROUP_KEYS).cast(), 4 * GROUP_KEYS);
                }
                tiles.dot4();
            }
            // The previous pass's epilogue, while the products above run.
            if let Some((p, scores)) = pipe.previous() {
                rows_at.offer(&p, scores);
            }
            let rows = (rows - r0).min(BLOCK_ROWS);
            pipe.store(
                tiles,
                Pass {
                    r0,
                    rows,
                    masks,
                    norms,
                    ids,
                },
            );
        }
    }
    if let Some((p, scores)) = pipe.previous() {
        rows_at.offer(&p, scores);
    }
    tiles.end();
}

/// One pass: its rows, and what the epilogue needs of its two panels.
struct Pass {
    r0: usize,
    rows: usize,
    masks: [u16; 2],
    norms: [__m512; 2],
    ids: [i64; 2],
}

/// The rows of one tile call, with each row's pre-threshold.
struct Rows<'a> {
    bounds: &'a [RowBound],
    tops: &'a mut [Candidates],
    thresholds: &'a mut [f32],
    pre: Vec<f32>,
    kmax: f32,
}

impl Rows<'_> {
    /// The bf16 kernel's epilogue for one pass: one masked compare per panel and row with the
    /// row's pre-threshold, and the exact test only for rows with a key above it.
    #[inline(always)]
    unsafe fn offer(&mut self, pass: &Pass, scores: &Scores) {
        for i in 0..pass.rows {
            let (block, row) = (i / TILE_ROWS, i % TILE_ROWS);
            let r = pass.r0 + i;
            let at = |c: usize| scores.0.as_ptr().add(256 * (2 * block + c) + 16 * row);
            let (s0, s1) = (_mm512_load_ps(at(0)), _mm512_load_ps(at(1)));
            let pre = _mm512_set1_ps(self.pre[r]);
            let m0 = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(pass.masks[0], s0, pre);
            let m1 = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(pass.masks[1], s1, pre);
            if (m0 | m1) == 0 {
                continue;
            }
            let mut t = self.thresholds[r];
            for (c, (s, m)) in [(s0, m0), (s1, m1)].into_iter().enumerate() {
                if m == 0 {
                    // No key of this panel above the pre-threshold: none passes the exact test.
                    continue;
                }
                let (norms, id) = (pass.norms[c], pass.ids[c]);
                offer16(
                    s,
                    norms,
                    pass.masks[c],
                    self.bounds[r],
                    &mut t,
                    id,
                    &mut self.tops[r],
                );
            }
            self.thresholds[r] = t;
            self.pre[r] = pre_threshold(t, self.bounds[r].a, self.kmax);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pre_threshold;

    #[test]
    fn the_pre_threshold_never_rejects_a_key_the_exact_test_takes() {
        // Scores at and around the point where `s + a K` crosses `t`, keys below the largest
        // norm, and thresholds at the edges (infinite, zero, tiny, huge).
        let mut seed = 0x9e37_79b9u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let edges = [f32::NEG_INFINITY, f32::INFINITY, 0.0, 1e-30, -1e30, 3.5];
        let mut checked = 0;
        for i in 0..200_000 {
            let t = if i % 50 == 0 {
                edges[i / 50 % edges.len()]
            } else {
                next() * 10f32.powi((i % 7) as i32 - 3)
            };
            let a = (next().abs() * 1e-2).max(0.0);
            let kmax = next().abs() * 8.0 + 1e-3;
            let k = kmax * next().abs();
            // s right at the crossing, then nudged by a few ulps either way.
            let mut s = if t.is_finite() { t - a * k } else { next() };
            s = match i % 3 {
                0 => s.next_up(),
                1 => s.next_down(),
                _ => s,
            };
            if a.mul_add(k, s) > t {
                checked += 1;
                assert!(
                    s > pre_threshold(t, a, kmax),
                    "t {t} a {a} K {k} <= {kmax} s {s}"
                );
            }
        }
        assert!(
            checked > 10_000,
            "only {checked} keys passed the exact test"
        );
        assert_eq!(
            pre_threshold(f32::INFINITY, f32::INFINITY, 1.0),
            f32::NEG_INFINITY
        );
        assert_eq!(pre_threshold(f32::INFINITY, 0.1, 1.0), f32::INFINITY);
    }
}
