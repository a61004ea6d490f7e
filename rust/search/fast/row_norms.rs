//! Norms of bf16 keys read in place, for the AMX screen that scores a bf16 store's rows without
//! packing them (`amx_rows`). A key's squared norm comes from VDPBF16PS on the key with itself
//! (a product of two bf16 is exact in f32), 16 keys reduced together in one tree of shuffles, and
//! the tile's largest |element| from the bits (bf16 magnitudes order as their low 15 bits). Keys
//! stored as bf16 have no rounding error, so the ratio the bound widens by is zero.

use std::arch::x86_64::*;

use half::bf16;

use super::pack::TileNorms;

/// Below this squared norm a key's VDPBF16PS sum may have lost flushed subnormal products (each
/// less than 2^-126, 2 d of them at most, under 2e-4 of it here even at d 128, which the bound's
/// slack of 1e-3 covers): such a key's norm is taken as `sqrt(d)` times the tile's largest
/// element instead.
const TINY_SQ: f32 = 1e-32;

/// Each key's norm into `knorm` (resized to whole 32-key passes, padded with zeros) and the
/// tile's norms, for `keys`: rows of `dim` bf16, `dim` a multiple of 32.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn bf16_row_norms(keys: &[bf16], dim: usize, knorm: &mut Vec<f32>) -> TileNorms {
    // The loads below trust whole rows of whole 32-element chunks.
    assert!(dim > 0 && dim.is_multiple_of(32) && keys.len().is_multiple_of(dim));
    let n = keys.len() / dim;
    knorm.clear();
    knorm.resize(n.div_ceil(32) * 32, 0.0);
    let ptr = keys.as_ptr().cast::<i16>();
    let magnitude = _mm512_set1_epi16(0x7fff);
    let mut bits = _mm512_setzero_si512();
    for panel in 0..n.div_ceil(16) {
        let here = (n - 16 * panel).min(16);
        let mut acc = [_mm512_setzero_ps(); 16];
        for (i, a) in acc.iter_mut().enumerate().take(here) {
            let row = ptr.add((16 * panel + i) * dim);
            for c in (0..dim).step_by(32) {
                let v = _mm512_loadu_si512(row.add(c).cast());
                bits = _mm512_max_epu16(bits, _mm512_and_si512(v, magnitude));
                let v: __m512bh = std::mem::transmute(v);
                *a = _mm512_dpbf16_ps(*a, v, v);
            }
        }
        _mm512_storeu_ps(knorm.as_mut_ptr().add(16 * panel), sum16(acc));
    }
    // The bits' largest magnitude; NaN payloads lie above infinity's bits and count as it.
    let mut lanes = [0u16; 32];
    _mm512_storeu_si512(lanes.as_mut_ptr().cast(), bits);
    let top = lanes.iter().copied().max().unwrap_or(0).min(0x7f80);
    let max_abs = f32::from_bits((top as u32) << 16);
    let floor = _mm512_set1_ps((dim as f32).sqrt() * max_abs);
    let mut largest = _mm512_setzero_ps();
    for (c, chunk) in knorm.chunks_exact_mut(16).enumerate() {
        let sq = _mm512_loadu_ps(chunk.as_ptr());
        // sqrt(sq) for keys well above underflow, and NaN for NaN keys (no bound); else the floor.
        let plain = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(sq, _mm512_set1_ps(TINY_SQ))
            | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(sq, sq);
        let zero = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(sq, _mm512_setzero_ps());
        // A key of all zeros (and the padding) keeps norm 0 only if the tile has no element at
        // all; a key whose squares all flushed to zero takes the floor like any tiny key.
        let norm = _mm512_mask_blend_ps(plain, floor, _mm512_sqrt_ps(sq));
        let norm = _mm512_mask_blend_ps(zero & !plain, norm, floor);
        _mm512_storeu_ps(chunk.as_mut_ptr(), norm);
        // The largest norm as stored (floors included: a tiny key's flushed square must not make
        // the largest too small); NaN norms are left out, as `TileNorms::merge` leaves them out.
        let valid = crate::simd::lane_mask(n.saturating_sub(16 * c));
        let ordered = _mm512_mask_cmp_ps_mask::<_CMP_ORD_Q>(valid, norm, norm);
        largest = _mm512_mask_max_ps(largest, ordered, largest, norm);
    }
    for x in &mut knorm[n..] {
        *x = 0.0;
    }
    let largest = _mm512_reduce_max_ps(largest);
    TileNorms {
        max_sq: largest * largest,
        max_err_sq: 0.0,
        max_abs,
        max_ratio: 0.0,
    }
}

/// The 16 horizontal sums of `v` in one vector (lane i: the sum of `v[i]`'s lanes), by a tree of
/// 128-bit, then 32- and 64-bit shuffles: 31 instructions for 16 sums.
#[inline(always)]
pub(super) unsafe fn sum16(v: [__m512; 16]) -> __m512 {
    // The tree leaves lane 4b + p with the sum of its input 4p + b: feed it transposed.
    let v: [__m512; 16] = std::array::from_fn(|j| v[(j % 4) * 4 + j / 4]);
    // Pairs of inputs x, y: [x0 + x2, x1 + x3, y0 + y2, y1 + y3] (128-bit blocks).
    let w: [__m512; 8] = std::array::from_fn(|j| {
        let (x, y) = (v[2 * j], v[2 * j + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(x, y),
            _mm512_shuffle_f32x4::<0xEE>(x, y),
        )
    });
    // Four inputs, one 128-bit block each (four partial sums apiece).
    let z: [__m512; 4] = std::array::from_fn(|j| {
        let (x, y) = (w[2 * j], w[2 * j + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(x, y),
            _mm512_shuffle_f32x4::<0xDD>(x, y),
        )
    });
    let u0 = _mm512_add_ps(
        _mm512_unpacklo_ps(z[0], z[1]),
        _mm512_unpackhi_ps(z[0], z[1]),
    );
    let u1 = _mm512_add_ps(
        _mm512_unpacklo_ps(z[2], z[3]),
        _mm512_unpackhi_ps(z[2], z[3]),
    );
    let (u0, u1) = (_mm512_castps_pd(u0), _mm512_castps_pd(u1));
    _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(u0, u1)),
        _mm512_castpd_ps(_mm512_unpackhi_pd(u0, u1)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_sums_land_in_their_lanes() {
        if !crate::simd::has_avx512_bf16() {
            return;
        }
        let rows: Vec<[f32; 16]> = (0..16)
            .map(|i| std::array::from_fn(|l| (i * 100 + l) as f32 * 0.5))
            .collect();
        let got = unsafe {
            let v = std::array::from_fn(|i| _mm512_loadu_ps(rows[i].as_ptr()));
            let mut out = [0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), sum16(v));
            out
        };
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(got[i], row.iter().sum::<f32>(), "lane {i}");
        }
    }

    #[test]
    fn norms_bound_every_key_and_match_the_scalar_ones() {
        if !crate::simd::has_avx512_bf16() {
            return;
        }
        let mut seed = 3u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for (dim, n) in [(32, 1), (64, 45), (128, 33), (64, 16)] {
            let mut keys: Vec<bf16> = (0..n * dim).map(|_| bf16::from_f32(next())).collect();
            if n > 3 {
                // A tiny key (its squares underflow) and a zero key.
                for x in &mut keys[dim..2 * dim] {
                    *x = bf16::from_f32(x.to_f32() * 1e-30);
                }
                keys[2 * dim..3 * dim].fill(bf16::ZERO);
            }
            let mut knorm = vec![7.0; 3];
            let norms = unsafe { bf16_row_norms(&keys, dim, &mut knorm) };
            assert_eq!(knorm.len(), n.div_ceil(32) * 32);
            assert!(knorm[n..].iter().all(|&x| x == 0.0));
            let amax = keys.iter().map(|x| x.to_f32().abs()).fold(0f32, f32::max);
            assert_eq!(norms.max_abs, amax);
            assert_eq!((norms.max_err_sq, norms.max_ratio), (0.0, 0.0));
            let mut max_sq = 0f64;
            for (i, row) in keys.chunks_exact(dim).enumerate() {
                let sq: f64 = row.iter().map(|x| (x.to_f32() as f64).powi(2)).sum();
                max_sq = max_sq.max(sq);
                let exact = sq.sqrt();
                let got = knorm[i] as f64;
                assert!(
                    got >= exact * (1.0 - 1e-5),
                    "dim {dim} key {i}: {got} < {exact}"
                );
                if sq >= 1e-30 {
                    assert!(
                        got <= exact * (1.0 + 1e-5),
                        "dim {dim} key {i}: {got} > {exact}"
                    );
                }
            }
            // The largest stored norm, squared (a floored tiny key may set it): never below the
            // exact largest square.
            let top = knorm[..n].iter().copied().fold(0f32, f32::max);
            assert_eq!(norms.max_sq, top * top);
            assert!(norms.max_sq as f64 >= max_sq * (1.0 - 1e-5));
        }
        // NaN keys keep a NaN norm, and stay out of the largest square.
        let mut keys = vec![bf16::from_f32(0.5); 2 * 32];
        keys[40] = bf16::NAN;
        let mut knorm = Vec::new();
        let norms = unsafe { bf16_row_norms(&keys, 32, &mut knorm) };
        assert!(knorm[1].is_nan() && (knorm[0] - 32f32.sqrt() * 0.5).abs() < 1e-5);
        assert!((norms.max_sq - 8.0).abs() < 1e-5);
        assert_eq!(norms.max_abs, f32::INFINITY);
    }
}
