//! The dot products of graph search: a f32 query against a stored row of any dtype (search
//! time; exact f32 products, so scores match the exact backend's), bf16 row against bf16 row
//! (build time; VDPBF16PS, whose bf16 x bf16 products are exact in f32), and a query against
//! int8 walk codes (batched with VPDPBUSD where the CPU has AVX-512 VNNI). Each has an AVX-512
//! version chosen at run time and a portable one.

use crate::dtype::Dtype;
use half::{bf16, f16};

/// `query . row`, the row `dim` elements of the store dtype at `row`.
pub type QueryDot = unsafe fn(query: &[f32], row: *const u8) -> f32;
/// `a . b` over `dim` bf16 elements (given as bits).
pub type PairDot = unsafe fn(a: &[u16], b: &[u16]) -> f32;
/// `query . code`: a f32 query against `query.len()` int8 traversal codes (unscaled).
pub type CodeDot = unsafe fn(query: &[f32], code: *const u8) -> f32;
/// `out[i] = query . code(ids[i])`, the code of node `id` at `codes[id * stride..]`: a batch, so
/// the loads of one row overlap the arithmetic of the last.
pub type CodeDots =
    unsafe fn(query: &CodeQuery, codes: &[u8], stride: usize, ids: &[u32], out: &mut [f32]);

/// The most dims a query is rounded to int8 for (wider ones are scored in f32).
const VNNI_MAX_DIM: usize = 512;

/// A walk's query as the batched code dots read it: its f32 elements and, where the CPU has
/// AVX-512 VNNI, its int8 rounding (`q ~ scale q8`, stored as `q8 + 128`, padded to whole
/// 64-byte blocks with 128), made once per walk rather than once per batch.
pub struct CodeQuery<'a> {
    pub f32s: &'a [f32],
    bytes: Vec<u8>,
    scale: f32,
}

impl<'a> CodeQuery<'a> {
    pub fn new(query: &'a [f32]) -> Self {
        let top = query.iter().fold(0f32, |a, &x| a.max(x.abs()));
        let vnni = cfg!(target_arch = "x86_64") && crate::simd::has_avx512_vnni();
        if !vnni || query.len() > VNNI_MAX_DIM || !(top > 0.0 && top.is_finite()) {
            return CodeQuery {
                f32s: query,
                bytes: Vec::new(),
                scale: 0.0,
            };
        }
        let inv = 127.0 / top;
        let mut bytes = vec![128u8; query.len().div_ceil(64) * 64];
        for (b, &x) in bytes.iter_mut().zip(query) {
            *b = ((x * inv).round_ties_even() as i32 + 128) as u8;
        }
        CodeQuery {
            f32s: query,
            bytes,
            scale: top / 127.0,
        }
    }
}

/// The query-row dot for rows of `dtype` on this CPU.
pub fn query_dot(dtype: Dtype) -> QueryDot {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512() {
        return match dtype {
            Dtype::Float32 => x86::query_dot::<0>,
            Dtype::Float16 => x86::query_dot::<1>,
            Dtype::Bfloat16 => x86::query_dot::<2>,
        };
    }
    match dtype {
        Dtype::Float32 => portable_query_dot::<0>,
        Dtype::Float16 => portable_query_dot::<1>,
        Dtype::Bfloat16 => portable_query_dot::<2>,
    }
}

/// The bf16 pair dot on this CPU.
pub fn pair_dot() -> PairDot {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512_bf16() {
        return x86::pair_dot;
    }
    portable_pair_dot
}

/// The query-code dot on this CPU.
pub fn code_dot() -> CodeDot {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512() {
        return x86::code_dot;
    }
    portable_code_dot
}

/// The batched query-code dot on this CPU.
pub fn code_dots() -> CodeDots {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512_vnni() {
        return x86::code_dots_vnni;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_avx512() {
        return x86::code_dots;
    }
    portable_code_dots
}

/// # Safety
/// Every `id * stride + query.len()` is at most `codes.len()`.
unsafe fn portable_code_dots(
    query: &CodeQuery,
    codes: &[u8],
    stride: usize,
    ids: &[u32],
    out: &mut [f32],
) {
    for (o, &id) in out.iter_mut().zip(ids) {
        *o = portable_code_dot(query.f32s, codes.as_ptr().add(id as usize * stride));
    }
}

/// # Safety
/// `code` must point at `query.len()` readable bytes.
unsafe fn portable_code_dot(query: &[f32], code: *const u8) -> f32 {
    let mut acc = [0f32; 8];
    for (i, &q) in query.iter().enumerate() {
        acc[i % 8] += q * code.add(i).cast::<i8>().read() as f32;
    }
    acc.iter().sum()
}

/// # Safety
/// `row` must point at `query.len()` readable elements of the dtype `T` names.
unsafe fn portable_query_dot<const T: u8>(query: &[f32], row: *const u8) -> f32 {
    let mut acc = [0f32; 8];
    for (i, &q) in query.iter().enumerate() {
        let k = match T {
            0 => row.cast::<f32>().add(i).read_unaligned(),
            1 => f16::from_bits(row.cast::<u16>().add(i).read_unaligned()).to_f32(),
            _ => bf16::from_bits(row.cast::<u16>().add(i).read_unaligned()).to_f32(),
        };
        acc[i % 8] += q * k;
    }
    acc.iter().sum()
}

unsafe fn portable_pair_dot(a: &[u16], b: &[u16]) -> f32 {
    let mut acc = [0f32; 8];
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        acc[i % 8] += bf16::from_bits(x).to_f32() * bf16::from_bits(y).to_f32();
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::CodeQuery;

    /// # Safety
    /// AVX-512 F/BW; `row` points at `query.len()` elements of dtype `T` (0 f32, 1 f16, 2 bf16).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn query_dot<const T: u8>(query: &[f32], row: *const u8) -> f32 {
        let d = query.len();
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut i = 0;
        while i < d {
            let mask = crate::simd::lane_mask(d - i);
            let k = crate::simd::load_widened::<T>(row, i, mask);
            let q = _mm512_maskz_loadu_ps(mask, query.as_ptr().add(i));
            let a = &mut acc[(i >> 4) & 1];
            *a = _mm512_fmadd_ps(k, q, *a);
            i += 16;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
    }

    /// # Safety
    /// AVX-512 F/BW/VL; every `id * stride + query.len()` is at most `codes.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn code_dots(
        query: &CodeQuery,
        codes: &[u8],
        stride: usize,
        ids: &[u32],
        out: &mut [f32],
    ) {
        for (o, &id) in out.iter_mut().zip(ids) {
            *o = code_dot(query.f32s, codes.as_ptr().add(id as usize * stride));
        }
    }

    /// [`code_dots`] with the query rounded to int8 too (`CodeQuery`) and each code scored by
    /// VPDPBUSD, 64 byte products an instruction, instead of widening the code to f32: the walk's
    /// dots were a fifth of a search. VPDPBUSD multiplies unsigned by signed bytes, so the query
    /// enters as `q8 + 128` and `128 sum(code)` (a second VPDPBUSD against ones) comes off. The
    /// walk only ranks by these scores; the answer is rescored in f32.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL/VNNI; every `id * stride + query.f32s.len()` is at most `codes.len()`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn code_dots_vnni(
        query: &CodeQuery,
        codes: &[u8],
        stride: usize,
        ids: &[u32],
        out: &mut [f32],
    ) {
        if query.bytes.is_empty() {
            return code_dots(query, codes, stride, ids, out);
        }
        let (d, bytes, scale) = (query.f32s.len(), &query.bytes, query.scale);
        let chunks = d.div_ceil(64);
        let ones = _mm512_set1_epi8(1);
        for (o, &id) in out.iter_mut().zip(ids) {
            let code = codes.as_ptr().add(id as usize * stride);
            let (mut acc, mut sum) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for c in 0..chunks {
                let m = crate::simd::lane_mask64(d - 64 * c);
                let k = _mm512_maskz_loadu_epi8(m, code.add(64 * c).cast());
                let q = _mm512_loadu_si512(bytes.as_ptr().add(64 * c).cast());
                acc = _mm512_dpbusd_epi32(acc, q, k);
                sum = _mm512_dpbusd_epi32(sum, ones, k);
            }
            let dot = _mm512_reduce_add_epi32(_mm512_sub_epi32(acc, _mm512_slli_epi32::<7>(sum)));
            *o = dot as f32 * scale;
        }
    }

    /// # Safety
    /// AVX-512 F/BW/VL; `code` points at `query.len()` readable bytes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn code_dot(query: &[f32], code: *const u8) -> f32 {
        let d = query.len();
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut i = 0;
        while i < d {
            let mask = crate::simd::lane_mask(d - i);
            let c = _mm_maskz_loadu_epi8(mask, code.add(i).cast());
            let k = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(c));
            let q = _mm512_maskz_loadu_ps(mask, query.as_ptr().add(i));
            let a = &mut acc[(i >> 4) & 1];
            *a = _mm512_fmadd_ps(k, q, *a);
            i += 16;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
    }

    /// # Safety
    /// AVX-512 F/BW/BF16; `a` and `b` have the same length.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pair_dot(a: &[u16], b: &[u16]) -> f32 {
        let d = a.len().min(b.len());
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut i = 0;
        while i < d {
            let mask = crate::simd::lane_mask32(d - i);
            let x = _mm512_maskz_loadu_epi16(mask, a.as_ptr().add(i).cast());
            let y = _mm512_maskz_loadu_epi16(mask, b.as_ptr().add(i).cast());
            let s = &mut acc[(i >> 5) & 1];
            *s = _mm512_dpbf16_ps(*s, bh(x), bh(y));
            i += 32;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
    }

    #[inline(always)]
    fn bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 512 bits of plain data.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_agree_with_scalar() {
        for d in [1usize, 7, 16, 33, 64, 100, 128] {
            let q: Vec<f32> = (0..d).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let k: Vec<f32> = (0..d).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
            let kb: Vec<u16> = k.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
            let kh: Vec<u16> = k.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
            let want = |k: &dyn Fn(usize) -> f32| -> f32 { (0..d).map(|i| q[i] * k(i)).sum() };
            let w32 = want(&|i| k[i]);
            let wb = want(&|i| bf16::from_bits(kb[i]).to_f32());
            let wh = want(&|i| f16::from_bits(kh[i]).to_f32());
            unsafe {
                for (f, row, w) in [
                    (query_dot(Dtype::Float32), k.as_ptr().cast::<u8>(), w32),
                    (query_dot(Dtype::Bfloat16), kb.as_ptr().cast::<u8>(), wb),
                    (query_dot(Dtype::Float16), kh.as_ptr().cast::<u8>(), wh),
                ] {
                    assert!((f(&q, row) - w).abs() <= 1e-4 * (1.0 + w.abs()), "d {d}");
                }
                let qb: Vec<u16> = q.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
                let wp: f32 = (0..d)
                    .map(|i| bf16::from_bits(qb[i]).to_f32() * bf16::from_bits(kb[i]).to_f32())
                    .sum();
                assert!((pair_dot()(&qb, &kb) - wp).abs() <= 1e-4 * (1.0 + wp.abs()));
                assert!((portable_pair_dot(&qb, &kb) - wp).abs() <= 1e-4 * (1.0 + wp.abs()));
                assert!((portable_query_dot::<0>(&q, k.as_ptr().cast()) - w32).abs() <= 1e-4);
                let codes: Vec<i8> = (0..d)
                    .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
                    .collect();
                let wc: f32 = (0..d).map(|i| q[i] * codes[i] as f32).sum();
                for f in [code_dot(), portable_code_dot as CodeDot] {
                    let got = f(&q, codes.as_ptr().cast());
                    assert!((got - wc).abs() <= 1e-3 * (1.0 + wc.abs()), "d {d}");
                }
                // Batches: rows at a stride, in any order, repeated.
                let stride = d.div_ceil(4) * 4;
                let mut table = vec![0u8; 3 * stride];
                for r in 0..3 {
                    for i in 0..d {
                        table[r * stride + i] = codes[(i + r) % d] as u8;
                    }
                }
                let ids = [2u32, 0, 1, 2];
                // The VNNI dots round the query to int8: off by at most half its step per
                // element, times the code's bytes.
                let step = q.iter().fold(0f32, |a, &x| a.max(x.abs())) / 127.0;
                let slack: f32 = 0.5 * step * codes.iter().map(|&c| (c as f32).abs()).sum::<f32>();
                for f in [code_dots(), portable_code_dots as CodeDots] {
                    let mut out = [0f32; 4];
                    f(&CodeQuery::new(&q), &table, stride, &ids, &mut out);
                    for (o, &id) in out.iter().zip(&ids) {
                        let w: f32 = (0..d)
                            .map(|i| q[i] * codes[(i + id as usize) % d] as f32)
                            .sum();
                        assert!((o - w).abs() <= slack + 1e-3 * (1.0 + w.abs()), "d {d}");
                    }
                }
                #[cfg(target_arch = "x86_64")]
                if crate::simd::has_avx512_vnni() {
                    // Exact where the query is already on the int8 grid.
                    let qi: Vec<f32> = (0..d)
                        .map(|i| ((i * 11 % 255) as f32 - 127.0) * 0.5)
                        .collect();
                    let mut out = [0f32; 4];
                    x86::code_dots_vnni(&CodeQuery::new(&qi), &table, stride, &ids, &mut out);
                    for (o, &id) in out.iter().zip(&ids) {
                        let w: f64 = (0..d)
                            .map(|i| qi[i] as f64 * codes[(i + id as usize) % d] as f64)
                            .sum();
                        assert!(
                            (*o as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()),
                            "d {d}: {o} {w}"
                        );
                    }
                }
            }
        }
    }
}
