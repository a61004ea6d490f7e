//! Packing a tile of keys for the bf16 microkernel. Keys arrive row-major (`[n][dim]`, f32, f16 or
//! bf16); the kernel wants, per panel of 16 keys, the bf16 pairs `(k[2p], k[2p+1])` of all 16 keys
//! side by side, one 512-bit vector per pair index p. Panels are grouped by `PANELS` so the kernel
//! reads one contiguous stream: layout `[n_groups][d2][PANELS][16]` of u32. Padding (keys past n,
//! the odd element of an odd dim) is zero. Packing also measures, per tile, the largest squared key
//! norm and the largest squared rounding error `|k - bf16(k)|^2`, which bound the error of the bf16
//! scores.

use std::arch::x86_64::*;

use half::bf16;

use crate::dtype::Elements;

/// Panels of 16 keys scored together by one microkernel call.
pub const PANELS: usize = 3;
/// Keys per panel group.
pub const GROUP_KEYS: usize = PANELS * 16;

/// u32 elements a packed tile of `n` keys of `d2` pairs needs.
pub fn packed_len(n: usize, d2: usize) -> usize {
    n.div_ceil(GROUP_KEYS) * d2 * GROUP_KEYS
}

/// The largest squared key norm and squared key rounding error of a packed tile.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TileNorms {
    pub max_sq: f32,
    pub max_err_sq: f32,
    /// The largest |element|: squares of tiny keys underflow, and this says when they may have.
    pub max_abs: f32,
    /// The largest `|k - bf16(k)| / |k|` over keys (with the norms of [`pack_tile`]'s `knorm`).
    pub max_ratio: f32,
}

impl TileNorms {
    /// Takes the maxima of `other` too.
    pub fn merge(&mut self, other: TileNorms) {
        self.max_sq = self.max_sq.max(other.max_sq);
        self.max_err_sq = self.max_err_sq.max(other.max_err_sq);
        self.max_abs = self.max_abs.max(other.max_abs);
        self.max_ratio = self.max_ratio.max(other.max_ratio);
    }
}

/// Below this largest |element| a key's f32 squares may underflow: its norm is then bounded by
/// `sqrt(d) max|k_i|` and its rounding error by twice that (bf16 rounding keeps `|k^_i| <= |k_i|`).
pub const TINY_KEY: f32 = 1e-18;

/// A key's norm as the error bound uses it (from its f32 sums of squares `sq` and squared rounding
/// errors `err`, and its largest |element|), and its ratio of rounding error to that norm.
#[inline]
pub fn key_norm(sq: f32, err: f32, amax: f32, dim: usize) -> (f32, f32) {
    if amax < TINY_KEY {
        let n = (dim as f32).sqrt() * amax;
        (n, if n > 0.0 { 2.0 } else { 0.0 })
    } else {
        let n = sq.sqrt();
        (n, (err.sqrt() / n) * 1.001)
    }
}

/// Packs `keys` (`n` rows of `dim`) into `out` (resized), writes each key's norm to `knorm` (resized
/// to whole groups, zero-padded) and measures the tile's norms (in f32, from the keys as given).
///
/// # Safety
/// The CPU must support AVX-512 F, BW and BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx512vl")]
pub unsafe fn pack_tile(
    keys: Elements,
    dim: usize,
    out: &mut Vec<u32>,
    knorm: &mut Vec<f32>,
) -> TileNorms {
    // The masked loads below trust whole rows.
    assert!(dim > 0 && keys.len().is_multiple_of(dim));
    let n = keys.len() / dim;
    let d2 = dim.div_ceil(2);
    out.clear();
    out.resize(packed_len(n, d2), 0);
    knorm.clear();
    knorm.resize(n.div_ceil(GROUP_KEYS) * GROUP_KEYS, 0.0);
    let mut norms = TileNorms::default();
    let blocks = d2.div_ceil(16);
    // One panel's keys, converted row by row (sequential reads of the mapped keys), then
    // transposed from this L1-resident stage: [16 keys][blocks][16 pairs].
    let mut stage = vec![_mm512_setzero_si512(); 16 * blocks];
    for panel in 0..n.div_ceil(16) {
        let (group, c) = (panel / PANELS, panel % PANELS);
        let base = group * d2 * GROUP_KEYS + c * 16;
        let keys_here = (n - panel * 16).min(16);
        for i in 0..16 {
            let row = &mut stage[i * blocks..(i + 1) * blocks];
            if i >= keys_here {
                row.fill(_mm512_setzero_si512());
                continue;
            }
            let (mut sq, mut err, mut amax) = (
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
                _mm512_setzero_ps(),
            );
            let key = panel * 16 + i;
            prefetch_row(keys, (key + 16).min(n - 1) * dim, dim);
            for (b, slot) in row.iter_mut().enumerate() {
                let first = 32 * b;
                let count = (dim - first).min(32);
                *slot = load_pairs(keys, key * dim + first, count, &mut sq, &mut err, &mut amax);
            }
            let (sq, err, amax) = (
                _mm512_reduce_add_ps(sq),
                _mm512_reduce_add_ps(err),
                _mm512_reduce_max_ps(amax),
            );
            let (norm, ratio) = key_norm(sq, err, amax, dim);
            knorm[key] = norm;
            norms.merge(TileNorms {
                max_sq: sq,
                max_err_sq: err,
                max_abs: amax,
                max_ratio: ratio,
            });
        }
        for b in 0..blocks {
            let rows: [__m512i; 16] = std::array::from_fn(|i| stage[i * blocks + b]);
            let cols = transpose16(rows);
            for (j, col) in cols.iter().enumerate() {
                let p = 16 * b + j;
                if p < d2 {
                    _mm512_storeu_si512(out.as_mut_ptr().add(base + p * GROUP_KEYS).cast(), *col);
                }
            }
        }
    }
    norms
}

/// Loads `count` (<= 32) elements at `at` as 16 bf16 pairs, zero-padded, adding their squares (as
/// given, in f32) to `sq`, the squares of their rounding errors to `err`, and their largest
/// magnitude to `amax`.
#[inline(always)]
unsafe fn load_pairs(
    keys: Elements,
    at: usize,
    count: usize,
    sq: &mut __m512,
    err: &mut __m512,
    amax: &mut __m512,
) -> __m512i {
    let m32 = crate::simd::lane_mask32(count);
    let (m_lo, m_hi) = (m32 as u16, (m32 >> 16) as u16);
    match keys {
        Elements::F32(s) => {
            let p = s.as_ptr().add(at);
            let lo = _mm512_maskz_loadu_ps(m_lo, p);
            let hi = _mm512_maskz_loadu_ps(m_hi, p.add(16));
            *amax = _mm512_max_ps(*amax, _mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
            rounded(lo, hi, sq, err)
        }
        Elements::F16(s) => {
            let p = s.as_ptr().add(at).cast::<i16>();
            let lo = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m_lo, p));
            let hi = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m_hi, p.add(16)));
            *amax = _mm512_max_ps(*amax, _mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
            rounded(lo, hi, sq, err)
        }
        Elements::Bf16(s) => {
            let v = _mm512_maskz_loadu_epi16(m32, s.as_ptr().add(at).cast::<i16>());
            let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
            let odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(-65536)));
            *sq = _mm512_fmadd_ps(even, even, _mm512_fmadd_ps(odd, odd, *sq));
            *amax = _mm512_max_ps(
                *amax,
                _mm512_max_ps(_mm512_abs_ps(even), _mm512_abs_ps(odd)),
            );
            v
        }
    }
}

/// Asks for a key row ahead of its use: packing streams keys from memory.
#[inline(always)]
unsafe fn prefetch_row(keys: Elements, at: usize, dim: usize) {
    let (ptr, bytes) = match keys {
        Elements::F32(s) => (s.as_ptr().add(at).cast::<i8>(), dim * 4),
        Elements::F16(s) => (s.as_ptr().add(at).cast::<i8>(), dim * 2),
        Elements::Bf16(s) => (s.as_ptr().add(at).cast::<i8>(), dim * 2),
    };
    for line in (0..bytes).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(ptr.add(line));
    }
}

/// Rounds 32 f32 (`lo`, `hi`) to bf16 pairs, accumulating their squares and rounding errors.
#[inline(always)]
unsafe fn rounded(lo: __m512, hi: __m512, sq: &mut __m512, err: &mut __m512) -> __m512i {
    let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
    let widen = |h: __m256i| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
    let d_lo = _mm512_sub_ps(lo, widen(_mm512_castsi512_si256(v)));
    let d_hi = _mm512_sub_ps(hi, widen(_mm512_extracti64x4_epi64::<1>(v)));
    *sq = _mm512_fmadd_ps(lo, lo, _mm512_fmadd_ps(hi, hi, *sq));
    *err = _mm512_fmadd_ps(d_lo, d_lo, _mm512_fmadd_ps(d_hi, d_hi, *err));
    v
}

/// Transposes a 16 x 16 matrix of u32 held as 16 rows.
#[inline(always)]
pub(super) unsafe fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    let mut a = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // b[4j + c], 128-bit lane L: rows 4j..4j+3 of column 4L + c.
    let mut b = [_mm512_setzero_si512(); 16];
    for j in 0..4 {
        let (a0, a1, a2, a3) = (a[4 * j], a[4 * j + 1], a[4 * j + 2], a[4 * j + 3]);
        b[4 * j] = _mm512_unpacklo_epi64(a0, a2);
        b[4 * j + 1] = _mm512_unpackhi_epi64(a0, a2);
        b[4 * j + 2] = _mm512_unpacklo_epi64(a1, a3);
        b[4 * j + 3] = _mm512_unpackhi_epi64(a1, a3);
    }
    let mut o = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let c0 = _mm512_shuffle_i32x4::<0x44>(b[c], b[4 + c]);
        let c1 = _mm512_shuffle_i32x4::<0xEE>(b[c], b[4 + c]);
        let c2 = _mm512_shuffle_i32x4::<0x44>(b[8 + c], b[12 + c]);
        let c3 = _mm512_shuffle_i32x4::<0xEE>(b[8 + c], b[12 + c]);
        o[c] = _mm512_shuffle_i32x4::<0x88>(c0, c2);
        o[4 + c] = _mm512_shuffle_i32x4::<0xDD>(c0, c2);
        o[8 + c] = _mm512_shuffle_i32x4::<0x88>(c1, c3);
        o[12 + c] = _mm512_shuffle_i32x4::<0xDD>(c1, c3);
    }
    o
}

/// `x` rounded to bf16 (nearest even) as VDPBF16PS will read it: subnormals count as zero.
fn to_bf16_bits(x: f32) -> u32 {
    let b = bf16::from_f32(x).to_bits();
    if b & 0x7f80 == 0 {
        (b & 0x8000) as u32
    } else {
        b as u32
    }
}

/// Packs query rows (`[m][dim]` f32) as bf16 pairs `[m][d2]`, rounding to nearest even.
pub fn pack_queries(rows: &[f32], dim: usize, out: &mut Vec<u32>) {
    let d2 = dim.div_ceil(2);
    let m = rows.len() / dim;
    out.clear();
    out.resize(m * d2, 0);
    for (r, row) in rows.chunks_exact(dim).enumerate() {
        for p in 0..d2 {
            let lo = to_bf16_bits(row[2 * p]);
            let hi = row.get(2 * p + 1).map_or(0, |&x| to_bf16_bits(x));
            out[r * d2 + p] = lo | (hi << 16);
        }
    }
}

/// The element `e` of packed pair `v` as f32 (tests and error bounds).
pub fn pair_element(v: u32, e: usize) -> f32 {
    bf16::from_bits((v >> (16 * e)) as u16).to_f32()
}

/// Scalar reference of [`pack_tile`] (tests): the same layout, built one element at a time.
#[cfg(test)]
pub fn pack_tile_reference(keys: Elements, dim: usize) -> Vec<u32> {
    let n = keys.len() / dim;
    let d2 = dim.div_ceil(2);
    let mut out = vec![0u32; packed_len(n, d2)];
    let to_bf16 = |i: usize| -> u32 {
        let bits = match keys {
            Elements::Bf16(s) => s[i].to_bits(),
            Elements::F16(s) => bf16::from_f32(s[i].to_f32()).to_bits(),
            Elements::F32(s) => bf16::from_f32(s[i]).to_bits(),
        };
        bits as u32
    };
    for key in 0..n {
        let (panel, lane) = (key / 16, key % 16);
        let base = (panel / PANELS) * d2 * GROUP_KEYS + (panel % PANELS) * 16 + lane;
        for p in 0..d2 {
            let lo = to_bf16(key * dim + 2 * p);
            let hi = if 2 * p + 1 < dim {
                to_bf16(key * dim + 2 * p + 1)
            } else {
                0
            };
            out[base + p * GROUP_KEYS] = lo | (hi << 16);
        }
    }
    out
}
