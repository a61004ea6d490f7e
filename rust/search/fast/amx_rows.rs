//! The AMX screen on bf16 keys read in place. A row of 32 bf16 is a tile row of 16 pairs, so a
//! bf16 store's keys are the A tiles straight from the mapped rows (16 keys a tile, one key's
//! `dim * 2` bytes apart): nothing is packed, and the keys' norms come from `row_norms` at a few
//! instructions a key. The queries are the B tiles, in the VNNI layout once per task (row p of a
//! block: pair p of its 16 queries). The packed path (`amx`) moves every key through a transpose
//! before the tiles see it, which costs about as much as scoring it against a few hundred rows.
//!
//! A pass scores 32 keys against 32 queries (keys down, queries across), and its epilogue runs
//! after the next pass's products are issued, as in `amx`. Up to 64 dims the pass's keys stay in
//! four A tiles while every query block passes (the stationary plan of `simd::amx`: two B loads
//! per four products, and only two products chained per accumulator); wider keys are reloaded
//! for every 32 dims into four accumulators (the 2 x 2 plan). One compare tests
//! a key against 16 queries at once, each lane with its query's pre-threshold `t - a Kmax`
//! (`Kmax` the largest norm of the kept keys so far), which any key that may enter the candidates
//! exceeds; a key above a lane's takes the exact test `s + a K > t` there. The row bounds `a` and
//! `c` depend on the query alone here (the keys have no rounding error), so they are set once per
//! task, and the thresholds are re-read from the candidates only after a tile's outliers or a
//! crowd's rescoring may have moved them.

use half::bf16;
use std::arch::x86_64::*;

use super::amx::{pre_threshold, Pipeline, Scores};
use super::candidates::{f32_at_least, f32_at_most, Candidates};
use super::kernel::{kernel_threshold, RowBound};
use crate::simd::amx::{Tiles, TILE_ROWS};

/// Keys one pass scores (two A tiles).
pub const PASS_KEYS: usize = 2 * TILE_ROWS;
/// Queries one B tile holds.
const BLOCK: usize = 16;

/// False when `$FOT_MEM_EXACT_AMX_PACKED` is set to anything but `0`: a benchmark knob (bf16 keys
/// then take the packed AMX path too), read at every search so one process can time both.
pub fn in_place() -> bool {
    std::env::var("FOT_MEM_EXACT_AMX_PACKED").map_or(true, |v| v == "0")
}

/// The queries of one task as B tiles: `[blocks][steps][16 pairs][16 queries]` u32, `blocks` even
/// (whole passes), queries past the last zero.
pub struct QueryTiles {
    data: Vec<u32>,
    blocks: usize,
    steps: usize,
}

impl QueryTiles {
    /// From packed query rows `qpairs` (`[m][d2]`, `d2` a multiple of 16).
    pub fn new(qpairs: &[u32], d2: usize) -> Self {
        assert!(d2 > 0 && d2.is_multiple_of(BLOCK));
        let m = qpairs.len() / d2;
        let (blocks, steps) = (m.div_ceil(2 * BLOCK) * 2, d2 / BLOCK);
        let mut data = vec![0u32; blocks * steps * BLOCK * BLOCK];
        for (r, row) in qpairs.chunks_exact(d2).enumerate() {
            let (block, lane) = (r / BLOCK, r % BLOCK);
            for (p, &pair) in row.iter().enumerate() {
                let (step, k) = (p / BLOCK, p % BLOCK);
                data[((block * steps + step) * BLOCK + k) * BLOCK + lane] = pair;
            }
        }
        QueryTiles {
            data,
            blocks,
            steps,
        }
    }

    /// Query rows with padding (whole passes).
    pub fn padded_rows(&self) -> usize {
        self.blocks * BLOCK
    }

    #[inline(always)]
    fn tile(&self, block: usize, step: usize) -> *const u8 {
        self.data[(block * self.steps + step) * BLOCK * BLOCK..]
            .as_ptr()
            .cast()
    }
}

/// Each query row's bound, threshold and pre-threshold, padded to whole passes (padding rows have
/// thresholds of +inf, so no key ever passes them).
pub struct RowState {
    a: Vec<f32>,
    c: Vec<f64>,
    t: Vec<f32>,
    pre: Vec<f32>,
    kmax: f32,
}

impl RowState {
    /// Rows with these bounds, no candidates yet.
    pub fn new(bounds: &[RowBound], padded: usize) -> Self {
        let m = bounds.len();
        assert!(padded >= m && padded.is_multiple_of(BLOCK));
        let mut s = RowState {
            a: vec![0.0; padded],
            c: vec![0.0; padded],
            t: vec![f32::INFINITY; padded],
            pre: vec![f32::INFINITY; padded],
            kmax: 0.0,
        };
        for (r, b) in bounds.iter().enumerate() {
            (s.a[r], s.c[r]) = (b.a, b.c);
            s.set(r, kernel_threshold(f32::NEG_INFINITY, b.c));
        }
        s
    }

    /// Takes a tile's largest kept norm: past the largest so far, every pre-threshold widens.
    pub fn raise_kmax(&mut self, kmax: f32, rows: usize) {
        if kmax > self.kmax {
            self.kmax = kmax;
            for r in 0..rows {
                self.set(r, self.t[r]);
            }
        }
    }

    /// Re-reads the first `tops.len()` rows' thresholds from their candidates.
    pub fn refresh(&mut self, tops: &[Candidates]) {
        for (r, top) in tops.iter().enumerate() {
            self.set(r, kernel_threshold(top.threshold(), self.c[r]));
        }
    }

    #[inline]
    fn set(&mut self, r: usize, t: f32) {
        self.t[r] = t;
        self.pre[r] = pre_threshold(t, self.a[r], self.kmax);
    }

    /// The exact test for the lanes `mask` of query block `q0..q0 + 16` against one key of norm
    /// `norm` and scores `s`: offers the key to every row whose upper bound `s + a K` exceeds its
    /// threshold (as `kernel::offer16` does per row).
    #[inline(never)]
    unsafe fn exact(
        &mut self,
        q0: usize,
        s: __m512,
        mask: u16,
        norm: f32,
        id: i64,
        tops: &mut [Candidates],
    ) {
        let (av, kv) = (
            _mm512_loadu_ps(self.a.as_ptr().add(q0)),
            _mm512_set1_ps(norm),
        );
        let upper = _mm512_fmadd_ps(av, kv, s);
        let t = _mm512_loadu_ps(self.t.as_ptr().add(q0));
        let mut m = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(mask, upper, t);
        if m == 0 {
            return;
        }
        let (mut hi, mut lo) = ([0f32; 16], [0f32; 16]);
        _mm512_storeu_ps(hi.as_mut_ptr(), upper);
        _mm512_storeu_ps(lo.as_mut_ptr(), _mm512_fnmadd_ps(av, kv, s));
        while m != 0 {
            let lane = m.trailing_zeros() as usize;
            m &= m - 1;
            let r = q0 + lane;
            let Some(top) = tops.get_mut(r) else { break };
            let cr = self.c[r];
            top.push(
                f32_at_least(hi[lane] as f64 + cr),
                f32_at_most(lo[lane] as f64 - cr),
                id,
            );
            let t = kernel_threshold(top.threshold(), cr);
            self.set(r, t);
        }
    }
}

/// Scores the queries `qt` against a tile of bf16 keys (`keys`: rows of `dim`, a multiple of 32),
/// offering every key that `keep` marks (a word per 16 keys) and whose upper bound exceeds a row's
/// threshold to that row's candidates (`tops`, one per query row; key `i` has id `first_id + i`).
///
/// # Safety
/// The CPU must support AVX-512 F and BW, and `tiles` must work (AMX granted, or emulated).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn score_tile<T: Tiles>(
    tiles: &mut T,
    qt: &QueryTiles,
    keys: &[bf16],
    dim: usize,
    knorm: &[f32],
    keep: &[u16],
    first_id: i64,
    st: &mut RowState,
    tops: &mut [Candidates],
) {
    // The tile loads below trust these bounds.
    assert!(dim > 0 && dim.is_multiple_of(2 * BLOCK) && dim / (2 * BLOCK) == qt.steps);
    assert!(keys.len().is_multiple_of(dim) && tops.len() <= qt.padded_rows());
    let n = keys.len() / dim;
    assert!(knorm.len() >= n.div_ceil(PASS_KEYS) * PASS_KEYS);
    assert!(keep.len() >= n.div_ceil(PASS_KEYS) * 2 && st.t.len() == qt.padded_rows());
    // The keys of a last, partial pass, zero-padded (a tile load reads whole tiles).
    let whole = n / PASS_KEYS * PASS_KEYS;
    let mut tail = Vec::new();
    if whole < n {
        tail.resize(PASS_KEYS * dim, bf16::ZERO);
        tail[..(n - whole) * dim].copy_from_slice(&keys[whole * dim..]);
    }
    let stride = 2 * dim;
    // Rows of at most 64 dims stay in four A tiles while every query block passes.
    let stationary = qt.steps <= 2;
    let mut pipe = Pipeline::new();
    let mut epi = Epilogue {
        st,
        knorm,
        first_id,
        tops,
    };
    tiles.begin();
    for k0 in (0..n).step_by(PASS_KEYS) {
        let p = k0 / TILE_ROWS;
        let kept = keep[p] as u32 | (keep[p + 1] as u32) << 16;
        let kmask = crate::simd::lane_mask32(n - k0) & kept;
        if kmask == 0 {
            continue;
        }
        let base = if k0 < whole {
            keys.as_ptr().add(k0 * dim)
        } else {
            tail.as_ptr()
        };
        // The pass after next streams in while this one's keys are scored.
        if k0 + 3 * PASS_KEYS <= n {
            crate::simd::prefetch(base.add(2 * PASS_KEYS * dim).cast(), PASS_KEYS * stride);
        }
        let keys = KeyPass {
            base,
            dim,
            k0,
            kmask,
        };
        if stationary {
            passes_stationary(tiles, qt, &keys, &mut pipe, &mut epi);
        } else {
            passes_reloaded(tiles, qt, &keys, &mut pipe, &mut epi);
        }
    }
    epi.drain(&mut pipe);
    tiles.end();
}

/// The 32 keys of one pass: rows of `dim` bf16 from `base`, the first `k0`, the kept `kmask`.
struct KeyPass {
    base: *const bf16,
    dim: usize,
    k0: usize,
    kmask: u32,
}

impl KeyPass {
    /// The pass of these keys against query blocks `qb` and `qb + 1`.
    fn with_queries(&self, qb: usize) -> Pass {
        Pass {
            k0: self.k0,
            q0: qb * BLOCK,
            kmask: self.kmask,
        }
    }
}

/// What a pass's epilogue writes to: the rows' state and candidates.
struct Epilogue<'a> {
    st: &'a mut RowState,
    knorm: &'a [f32],
    first_id: i64,
    tops: &'a mut [Candidates],
}

impl Epilogue<'_> {
    /// The waiting pass's epilogue, if one waits (call it while the tiles compute).
    #[inline(always)]
    unsafe fn drain(&mut self, pipe: &mut Pipeline<Pass>) {
        if let Some((pass, scores)) = pipe.previous() {
            offer(self.st, &pass, scores, self.knorm, self.first_id, self.tops);
        }
    }
}

/// The 2 x 2 plan: per pair of query blocks, both key halves and both query blocks reloaded for
/// every 32 dims into four accumulators.
#[inline(always)]
unsafe fn passes_reloaded<T: Tiles>(
    tiles: &mut T,
    qt: &QueryTiles,
    keys: &KeyPass,
    pipe: &mut Pipeline<Pass>,
    epi: &mut Epilogue,
) {
    let (base, dim, stride) = (keys.base, keys.dim, 2 * keys.dim);
    for qb in (0..qt.blocks).step_by(2) {
        tiles.zero_acc();
        for j in 0..qt.steps {
            tiles.load_a(0, base.add(2 * BLOCK * j).cast(), stride);
            tiles.load_a(1, base.add(TILE_ROWS * dim + 2 * BLOCK * j).cast(), stride);
            tiles.load_b(0, qt.tile(qb, j), 64);
            tiles.load_b(1, qt.tile(qb + 1, j), 64);
            tiles.dot4();
        }
        // The previous pass's epilogue, while the products above run.
        epi.drain(pipe);
        pipe.store(tiles, keys.with_queries(qb));
    }
}

/// The stationary plan (at most 64 dims): the 32 keys stay in four A tiles; each block of 16
/// queries takes two B loads and four products into two accumulators, stored to its place in the
/// pass's scores (`offer`'s layout: accumulator 2 h + c for key half h, query block c).
#[inline(always)]
unsafe fn passes_stationary<T: Tiles>(
    tiles: &mut T,
    qt: &QueryTiles,
    keys: &KeyPass,
    pipe: &mut Pipeline<Pass>,
    epi: &mut Epilogue,
) {
    let (base, dim, stride) = (keys.base, keys.dim, 2 * keys.dim);
    for h in 0..2 {
        for j in 0..qt.steps {
            let at = base.add(h * TILE_ROWS * dim + 2 * BLOCK * j);
            tiles.load_stationary(2 * h + j, at.cast(), stride);
        }
    }
    for qb in (0..qt.blocks).step_by(2) {
        for c in 0..2 {
            tiles.zero_pair();
            for j in 0..qt.steps {
                tiles.load_b(j, qt.tile(qb + c, j), 64);
            }
            tiles.dot_pair(qt.steps);
            if c == 1 {
                // The previous pass's epilogue, while the products above run.
                epi.drain(pipe);
            }
            // Taken after the epilogue's borrow of `pipe`, which reads the other buffer.
            let out = pipe.next_buffer();
            tiles.store_acc(0, out.add(256 * c).cast(), 64);
            tiles.store_acc(1, out.add(256 * (2 + c)).cast(), 64);
        }
        pipe.filled(keys.with_queries(qb));
    }
}

/// One pass: its first key and query, and its kept keys.
struct Pass {
    k0: usize,
    q0: usize,
    kmask: u32,
}

/// The epilogue of one pass: per kept key, one compare per block of 16 queries with their
/// pre-thresholds, and the exact test only where a lane is above its own.
#[inline(always)]
unsafe fn offer(
    st: &mut RowState,
    pass: &Pass,
    scores: &Scores,
    knorm: &[f32],
    first_id: i64,
    tops: &mut [Candidates],
) {
    let q0 = pass.q0;
    let load_pre = |st: &RowState| {
        [
            _mm512_loadu_ps(st.pre.as_ptr().add(q0)),
            _mm512_loadu_ps(st.pre.as_ptr().add(q0 + BLOCK)),
        ]
    };
    let mut pre = load_pre(st);
    let mut km = pass.kmask;
    while km != 0 {
        let i = km.trailing_zeros() as usize;
        km &= km - 1;
        // Accumulator 2 h + c: key half h (A tile), query block c (B tile).
        let (h, row) = (i / TILE_ROWS, i % TILE_ROWS);
        let at = |c: usize| scores.0.as_ptr().add(256 * (2 * h + c) + BLOCK * row);
        let s = [_mm512_load_ps(at(0)), _mm512_load_ps(at(1))];
        let m = [
            _mm512_cmp_ps_mask::<_CMP_GT_OQ>(s[0], pre[0]),
            _mm512_cmp_ps_mask::<_CMP_GT_OQ>(s[1], pre[1]),
        ];
        if (m[0] | m[1]) == 0 {
            continue;
        }
        let key = pass.k0 + i;
        for c in 0..2 {
            if m[c] != 0 {
                let id = first_id + key as i64;
                st.exact(q0 + BLOCK * c, s[c], m[c], knorm[key], id, tops);
            }
        }
        pre = load_pre(st);
    }
}
