//! The AVX-512 VNNI screen: keys quantised to int8 with one scale per tile of keys (`k ~ s_t * k8`,
//! `|k8| <= 127`), queries to int8 with one scale per row, scored with VPDPBUSD (64 multiply-adds per
//! instruction, against 32 for VDPBF16PS: on AMD Zen 4 it also issues faster, about 3x the bf16
//! rate). VPDPBUSD multiplies unsigned by signed bytes, so queries enter offset by 128 and each
//! accumulator starts at `-128 * sum(k8)`, which leaves the exact integer `q8 . k8`, compared with
//! the row's threshold divided by `s_q * s_t` (an integer: one compare per 16 scores). The
//! approximate score `s_q * s_t * (q8 . k8)` differs from `q . k` by at most
//! `|q - q^| |k| + |q^| |k - k^|` (plus f32 rounding), with the norms measured while packing (the
//! same `TileNorms` as the bf16 screen), so the candidates are certified exactly as the bf16 ones.
//!
//! Layout as the bf16 screen's, with quads of int8 in place of pairs of bf16:
//! `[n_groups][d4][PANELS][16]` u32, plus per key its offset correction. One scale per tile (not per
//! key) costs nothing in the certificate, whose bound takes the largest error over all keys
//! anyway, and lets the kernel compare integers.

use std::arch::x86_64::*;

use super::candidates::{f32_at_least, f32_at_most, Candidates};
use super::pack::{transpose16, TileNorms, GROUP_KEYS, PANELS};
use crate::dtype::Elements;

/// The widest dim the int8 screen takes: the i32 accumulators, offset included, stay below 2^31.
pub const MAX_DIM: usize = 4096;

/// A packed tile of int8 keys.
#[derive(Default)]
pub struct Tile {
    pub data: Vec<u32>,
    /// Per key (padded to whole groups): `-128 * sum(k8)`.
    pub corr: Vec<i32>,
    /// The tile's scale `s_t`.
    pub scale: f32,
}

/// Packs `keys` (`n` rows of `dim`) into `out` and measures the tile's norms: `max_sq` the
/// largest `|k|^2`, `max_err_sq` the largest `|k - s_t k8|^2`, `max_abs` the largest element.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn pack_tile(keys: Elements, dim: usize, out: &mut Tile) -> TileNorms {
    assert!(dim > 0 && dim <= MAX_DIM && keys.len().is_multiple_of(dim));
    if let Elements::Bf16(k) = keys {
        return pack_bf16(k, dim, out);
    }
    let n = keys.len() / dim;
    let d4 = dim.div_ceil(4);
    let blocks = d4.div_ceil(16);
    let groups = n.div_ceil(GROUP_KEYS);
    out.data.clear();
    out.data.resize(groups * d4 * GROUP_KEYS, 0);
    out.corr.clear();
    out.corr.resize(groups * GROUP_KEYS, 0);
    let (ptr, t) = match keys {
        Elements::F32(s) => (s.as_ptr().cast::<u8>(), 0u8),
        Elements::F16(s) => (s.as_ptr().cast::<u8>(), 1),
        Elements::Bf16(s) => (s.as_ptr().cast::<u8>(), 2),
    };
    let chunks = dim.div_ceil(16);
    let mask_of = |j: usize| crate::simd::lane_mask(dim - 16 * j);
    // The tile's largest element sets its scale.
    let mut amax = _mm512_setzero_ps();
    for key in 0..n {
        for j in 0..chunks {
            let at = key * dim + 16 * j;
            let x = match t {
                0 => crate::simd::load_widened::<0>(ptr, at, mask_of(j)),
                1 => crate::simd::load_widened::<1>(ptr, at, mask_of(j)),
                _ => crate::simd::load_widened::<2>(ptr, at, mask_of(j)),
            };
            amax = _mm512_max_ps(amax, _mm512_abs_ps(x));
        }
    }
    let top = _mm512_reduce_max_ps(amax);
    let scale = top / 127.0;
    let inv = if top > 0.0 { 127.0 / top } else { 0.0 };
    out.scale = scale;
    let (vs, vi) = (_mm512_set1_ps(scale), _mm512_set1_ps(inv));
    let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
    let mut wide = vec![_mm512_setzero_ps(); blocks * 4];
    let mut stage = vec![_mm512_setzero_si512(); 16 * blocks];
    let mut norms = TileNorms::default();
    for panel in 0..n.div_ceil(16) {
        let (group, c) = (panel / PANELS, panel % PANELS);
        let base = group * d4 * GROUP_KEYS + c * 16;
        let keys_here = (n - panel * 16).min(16);
        for i in 0..16 {
            let row = &mut stage[i * blocks..(i + 1) * blocks];
            if i >= keys_here {
                row.fill(_mm512_setzero_si512());
                continue;
            }
            let key = panel * 16 + i;
            // Widen the key (zero-padded to whole blocks of 64).
            let mut sq = _mm512_setzero_ps();
            for (j, w) in wide.iter_mut().enumerate() {
                *w = if j < chunks {
                    let at = key * dim + 16 * j;
                    match t {
                        0 => crate::simd::load_widened::<0>(ptr, at, mask_of(j)),
                        1 => crate::simd::load_widened::<1>(ptr, at, mask_of(j)),
                        _ => crate::simd::load_widened::<2>(ptr, at, mask_of(j)),
                    }
                } else {
                    _mm512_setzero_ps()
                };
                sq = _mm512_fmadd_ps(*w, *w, sq);
            }
            let mut err = _mm512_setzero_ps();
            let mut sum = _mm512_setzero_si512();
            for (b, slot) in row.iter_mut().enumerate() {
                let mut bytes = [_mm_setzero_si128(); 4];
                for (j, by) in bytes.iter_mut().enumerate() {
                    let x = wide[4 * b + j];
                    // Nearest integer (MXCSR's default rounding), clamped: inv * x can round
                    // past 127, and an infinite inv (tiny keys) gives garbage that the error
                    // measured below accounts for.
                    let r = _mm512_cvtps_epi32(_mm512_mul_ps(x, vi));
                    let r = _mm512_min_epi32(_mm512_max_epi32(r, lo), hi);
                    let d = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(r), vs, x);
                    err = _mm512_fmadd_ps(d, d, err);
                    sum = _mm512_add_epi32(sum, r);
                    *by = _mm512_cvtepi32_epi8(r);
                }
                let lo2 = _mm256_set_m128i(bytes[1], bytes[0]);
                let hi2 = _mm256_set_m128i(bytes[3], bytes[2]);
                *slot = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo2), hi2);
            }
            norms.merge(TileNorms {
                max_sq: _mm512_reduce_add_ps(sq),
                max_err_sq: _mm512_reduce_add_ps(err),
                max_abs: top,
                ..TileNorms::default()
            });
            out.corr[key] = -128 * _mm512_reduce_add_epi32(sum);
        }
        for b in 0..blocks {
            let rows: [__m512i; 16] = std::array::from_fn(|i| stage[i * blocks + b]);
            let cols = transpose16(rows);
            for (j, col) in cols.iter().enumerate() {
                let p = 16 * b + j;
                if p < d4 {
                    _mm512_storeu_si512(
                        out.data.as_mut_ptr().add(base + p * GROUP_KEYS).cast(),
                        *col,
                    );
                }
            }
        }
    }
    norms
}

/// [`pack_tile`] for bf16 keys, 16 keys at a time in the packed (transposed) layout, so every
/// statistic is a lane of its own (no horizontal sums per key): about twice as fast.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn pack_bf16(keys: &[half::bf16], dim: usize, out: &mut Tile) -> TileNorms {
    let n = keys.len() / dim;
    let (d2, d4) = (dim.div_ceil(2), dim.div_ceil(4));
    let blocks = d2.div_ceil(16);
    let groups = n.div_ceil(GROUP_KEYS);
    out.data.clear();
    out.data.resize(groups * d4 * GROUP_KEYS, 0);
    out.corr.clear();
    out.corr.resize(groups * GROUP_KEYS, 0);
    let ptr = keys.as_ptr().cast::<i16>();
    // The largest |element|: bf16 magnitudes order as their bits without the sign.
    let mut top = _mm512_setzero_si512();
    let total = keys.len();
    let mut at = 0;
    while at < total {
        let m = crate::simd::lane_mask32(total - at);
        let v = _mm512_maskz_loadu_epi16(m, ptr.add(at));
        top = _mm512_max_epu16(top, _mm512_and_si512(v, _mm512_set1_epi16(0x7fff)));
        at += 32;
    }
    let top = _mm512_max_epu32(
        _mm512_and_si512(top, _mm512_set1_epi32(0xffff)),
        _mm512_srli_epi32::<16>(top),
    );
    let amax = f32::from_bits((_mm512_reduce_max_epu32(top) as u32) << 16);
    let scale = amax / 127.0;
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    out.scale = scale;
    let (vs, vi) = (_mm512_set1_ps(scale), _mm512_set1_ps(inv));
    let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
    let high = _mm512_set1_epi32(-65536);
    let mut norms = TileNorms {
        max_abs: amax,
        ..TileNorms::default()
    };
    let mut stage = vec![_mm512_setzero_si512(); 16 * blocks];
    let mut cols = vec![_mm512_setzero_si512(); 16 * blocks + 1];
    for panel in 0..n.div_ceil(16) {
        let (group, c) = (panel / PANELS, panel % PANELS);
        let base = group * d4 * GROUP_KEYS + c * 16;
        let keys_here = (n - panel * 16).min(16);
        for i in 0..16 {
            for b in 0..blocks {
                stage[i * blocks + b] = if i < keys_here {
                    let first = 32 * b;
                    let m = crate::simd::lane_mask32(dim - first);
                    _mm512_maskz_loadu_epi16(m, ptr.add((panel * 16 + i) * dim + first))
                } else {
                    _mm512_setzero_si512()
                };
            }
        }
        // cols[p]: pair p of the 16 keys (zero past d2).
        for b in 0..blocks {
            let rows: [__m512i; 16] = std::array::from_fn(|i| stage[i * blocks + b]);
            let t = transpose16(rows);
            cols[16 * b..16 * b + 16].copy_from_slice(&t);
        }
        cols[16 * blocks] = _mm512_setzero_si512();
        let (mut sq, mut err, mut sum) = (
            _mm512_setzero_ps(),
            _mm512_setzero_ps(),
            _mm512_setzero_si512(),
        );
        for q in 0..d4 {
            let (a, b) = (cols[2 * q], cols[2 * q + 1]);
            let xs = [
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(a)),
                _mm512_castsi512_ps(_mm512_and_si512(a, high)),
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(b)),
                _mm512_castsi512_ps(_mm512_and_si512(b, high)),
            ];
            let mut quad = _mm512_setzero_si512();
            for (e, &x) in xs.iter().enumerate() {
                let r = _mm512_cvtps_epi32(_mm512_mul_ps(x, vi));
                let r = _mm512_min_epi32(_mm512_max_epi32(r, lo), hi);
                let d = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(r), vs, x);
                err = _mm512_fmadd_ps(d, d, err);
                sq = _mm512_fmadd_ps(x, x, sq);
                sum = _mm512_add_epi32(sum, r);
                let byte = _mm512_and_si512(r, _mm512_set1_epi32(0xff));
                quad = _mm512_or_si512(
                    quad,
                    _mm512_sllv_epi32(byte, _mm512_set1_epi32(8 * e as i32)),
                );
            }
            _mm512_storeu_si512(
                out.data.as_mut_ptr().add(base + q * GROUP_KEYS).cast(),
                quad,
            );
        }
        norms.max_sq = norms.max_sq.max(_mm512_reduce_max_ps(sq));
        norms.max_err_sq = norms.max_err_sq.max(_mm512_reduce_max_ps(err));
        _mm512_storeu_si512(
            out.corr.as_mut_ptr().add(panel * 16).cast(),
            _mm512_mullo_epi32(sum, _mm512_set1_epi32(-128)),
        );
    }
    norms
}

/// Query rows quantised: quads of `q8 + 128` (u8), the scale per row, and per row `|q - q^|` and
/// `|q^|` (f64) for the error bound.
pub struct Quantised {
    pub quads: Vec<u32>,
    pub scale: Vec<f32>,
    pub delta: Vec<f64>,
    pub norm: Vec<f64>,
}

/// Quantises query rows (`[m][dim]` f32).
pub fn quantise_queries(rows: &[f32], dim: usize) -> Quantised {
    let d4 = dim.div_ceil(4);
    let m = rows.len() / dim;
    let mut out = Quantised {
        quads: vec![0; m * d4],
        scale: vec![1.0; m],
        delta: vec![0.0; m],
        norm: vec![0.0; m],
    };
    for (r, row) in rows.chunks_exact(dim).enumerate() {
        let top = row.iter().fold(0f32, |a, &x| a.max(x.abs()));
        // A zero row scores 0 against every key whatever its scale.
        let scale = if top > 0.0 { top / 127.0 } else { 1.0 };
        let (mut dd, mut nn) = (0f64, 0f64);
        for (i, &x) in row.iter().enumerate() {
            let q8 = ((x as f64) / scale as f64).round().clamp(-127.0, 127.0);
            let back = q8 * scale as f64;
            dd += (x as f64 - back).powi(2);
            nn += back * back;
            out.quads[r * d4 + i / 4] |= (((q8 as i32) + 128) as u32) << (8 * (i % 4));
        }
        // Padding elements of the last quad are q8 = 0, that is 128 offset.
        for i in dim..4 * d4 {
            out.quads[r * d4 + i / 4] |= 128u32 << (8 * (i % 4));
        }
        out.scale[r] = scale;
        out.delta[r] = dd.sqrt();
        out.norm[r] = nn.sqrt();
    }
    out
}

/// The kernel's threshold for a row whose candidates reject upper bounds at or below `threshold`,
/// with error bound `err`: `q8 . k8` is rejected when at most this, which means
/// `s_q s_t (q8 . k8) + err <= threshold` (in exact arithmetic; `threshold` is -inf at first).
#[inline]
fn int_threshold(threshold: f32, err: f64, scale: f64) -> i32 {
    let x = ((threshold as f64 - err) / scale).floor();
    if x >= i32::MAX as f64 {
        i32::MAX
    } else if x <= i32::MIN as f64 {
        i32::MIN
    } else {
        x as i32
    }
}

/// Scores query rows `quads` (`[rows][d4]`) with scales `qscale` and error bounds `errs` against a
/// packed tile of `n_keys` keys, offering every key whose upper bound (score plus the row's error
/// bound) exceeds a row's threshold to its candidates. `thresholds[r]` is set to the row's candidate
/// threshold; the integer ones are derived here per tile.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI; `tile` must be a packed tile of `n_keys` keys.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn score_tile(
    quads: &[u32],
    d4: usize,
    qscale: &[f32],
    errs: &[f64],
    tile: &Tile,
    keep: &[u16],
    n_keys: usize,
    first_id: i64,
    tops: &mut [Candidates],
    thresholds: &mut [f32],
) {
    let rows = tops.len();
    assert!(quads.len() >= rows * d4 && thresholds.len() == rows && qscale.len() == rows);
    assert!(errs.len() == rows);
    let groups = n_keys.div_ceil(GROUP_KEYS);
    assert!(tile.data.len() >= groups * d4 * GROUP_KEYS);
    assert!(tile.corr.len() >= groups * GROUP_KEYS);
    assert!(keep.len() >= groups * PANELS);
    let scales: Vec<f64> = qscale
        .iter()
        .map(|&s| s as f64 * tile.scale as f64)
        .collect();
    let mut ithr: Vec<i32> = (0..rows)
        .map(|r| int_threshold(tops[r].threshold(), errs[r], scales[r]))
        .collect();
    for g in 0..groups {
        let keys = tile.data.as_ptr().add(g * d4 * GROUP_KEYS);
        let valid = (n_keys - g * GROUP_KEYS).min(GROUP_KEYS);
        let mut masks = [0u16; PANELS];
        for (c, m) in masks.iter_mut().enumerate() {
            *m = crate::simd::lane_mask(valid.saturating_sub(16 * c)) & keep[g * PANELS + c];
        }
        let at = g * GROUP_KEYS;
        let panel = Panel {
            keys,
            d4,
            masks,
            corr: tile.corr.as_ptr().add(at),
            id0: first_id + at as i64,
        };
        let mut r0 = 0;
        while r0 < rows {
            let q = quads.as_ptr().add(r0 * d4);
            let (t, th) = (&mut tops[r0..], &mut ithr[r0..]);
            let s = (&scales[r0..], &errs[r0..]);
            r0 += match rows - r0 {
                1 => block::<1>(q, &panel, s, t, th),
                2 => block::<2>(q, &panel, s, t, th),
                3 => block::<3>(q, &panel, s, t, th),
                4 => block::<4>(q, &panel, s, t, th),
                5 => block::<5>(q, &panel, s, t, th),
                6 => block::<6>(q, &panel, s, t, th),
                7 => block::<7>(q, &panel, s, t, th),
                _ => block::<8>(q, &panel, s, t, th),
            };
        }
    }
    for (t, top) in thresholds.iter_mut().zip(tops.iter()) {
        *t = top.threshold();
    }
}

/// One group of `PANELS` x 16 keys.
struct Panel {
    keys: *const u32,
    d4: usize,
    masks: [u16; PANELS],
    /// The group's `GROUP_KEYS` corrections.
    corr: *const i32,
    id0: i64,
}

#[inline(always)]
unsafe fn block<const R: usize>(
    q: *const u32,
    p: &Panel,
    (scales, errs): (&[f64], &[f64]),
    tops: &mut [Candidates],
    thresholds: &mut [i32],
) -> usize {
    let mut acc = [[_mm512_setzero_si512(); PANELS]; R];
    for row in acc.iter_mut() {
        for (c, a) in row.iter_mut().enumerate() {
            *a = _mm512_loadu_si512(p.corr.add(16 * c).cast());
        }
    }
    for i in 0..p.d4 {
        let kp = p.keys.add(i * GROUP_KEYS);
        let mut k = [_mm512_setzero_si512(); PANELS];
        for (c, kc) in k.iter_mut().enumerate() {
            *kc = _mm512_loadu_si512(kp.add(16 * c).cast());
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let qb = _mm512_set1_epi32(*q.add(r * p.d4 + i) as i32);
            for c in 0..PANELS {
                row[c] = _mm512_dpbusd_epi32(row[c], qb, k[c]);
            }
        }
    }
    let mut buf = [0i32; 16];
    for (r, row) in acc.iter().enumerate() {
        let mut t = thresholds[r];
        for (c, &dots) in row.iter().enumerate() {
            let mut m = _mm512_mask_cmp_epi32_mask::<_MM_CMPINT_NLE>(
                p.masks[c],
                dots,
                _mm512_set1_epi32(t),
            );
            if m != 0 {
                _mm512_storeu_si512(buf.as_mut_ptr().cast(), dots);
                while m != 0 {
                    let lane = m.trailing_zeros() as usize;
                    m &= m - 1;
                    let score = buf[lane] as f64 * scales[r];
                    tops[r].push(
                        f32_at_least(score + errs[r]),
                        f32_at_most(score - errs[r]),
                        p.id0 + (16 * c + lane) as i64,
                    );
                }
                t = int_threshold(tops[r].threshold(), errs[r], scales[r]);
            }
        }
        thresholds[r] = t;
    }
    R
}
