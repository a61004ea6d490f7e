//! The bf16 screen on AMX tiles (TDPBF16PS: a 16 x 16 block of scores from 16 x 16 bf16 pairs
//! per instruction, 16 times VDPBF16PS's work). Keys are the bf16 kernel's packed tile unchanged:
//! a panel of 16 keys, pair p of all 16 side by side, is a tile's row p (the VNNI layout), read
//! with the group's stride. Query rows are packed bf16 pairs padded to whole blocks of 32 rows.
//!
//! One pass scores 32 query rows against 2 panels (32 keys) into four accumulator tiles, stores
//! them to an L1 buffer, and runs the bf16 kernel's epilogue on each row's 16 scores: add the
//! key's error bound `a K`, compare with the row's threshold in one mask, and offer only the keys
//! above it to the row's candidates. The key panels stay in L1 while the query blocks stream past.
//! Everything else (bounds, candidates, certification) is the bf16 screen's.

use std::arch::x86_64::*;

use super::candidates::Candidates;
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
struct Scores([f32; 4 * 256]);

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
    let mut scores = Scores([0.0; 4 * 256]);
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
            for i in 0..4 {
                tiles.store_acc(i, scores.0.as_mut_ptr().add(256 * i).cast(), 64);
            }
            let last = (rows - r0).min(BLOCK_ROWS);
            let pass = Pass {
                scores: &scores,
                masks,
                norms,
                ids,
            };
            offer(
                &pass,
                last,
                &bounds[r0..],
                &mut tops[r0..],
                &mut thresholds[r0..],
            );
        }
    }
    tiles.end();
}

/// One pass's scores with what the epilogue needs of its two panels.
struct Pass<'a> {
    scores: &'a Scores,
    masks: [u16; 2],
    norms: [__m512; 2],
    ids: [i64; 2],
}

/// The bf16 kernel's epilogue for the first `rows` rows of one pass.
#[inline(always)]
unsafe fn offer(
    pass: &Pass,
    rows: usize,
    bounds: &[RowBound],
    tops: &mut [Candidates],
    thresholds: &mut [f32],
) {
    for r in 0..rows {
        let (block, row) = (r / TILE_ROWS, r % TILE_ROWS);
        let mut t = thresholds[r];
        for c in 0..2 {
            if pass.masks[c] == 0 {
                continue;
            }
            let s = _mm512_load_ps(pass.scores.0.as_ptr().add(256 * (2 * block + c) + 16 * row));
            let (norms, id) = (pass.norms[c], pass.ids[c]);
            offer16(s, norms, pass.masks[c], bounds[r], &mut t, id, &mut tops[r]);
        }
        thresholds[r] = t;
    }
}
