//! 16-lane AVX-512 loads shared by the exact kernels (`search::fast`) and the graph-search dot
//! products (`ann::dot`).

use std::arch::x86_64::*;

/// The mask of the first `count` lanes (all 16 from 16 on): a row's tail in 16-lane loads.
#[inline(always)]
pub(crate) fn lane_mask(count: usize) -> u16 {
    lane_mask64(count.min(16)) as u16
}

/// The mask of the first `count` of 32 lanes (16-bit elements in a 512-bit load).
#[inline(always)]
pub(crate) fn lane_mask32(count: usize) -> u32 {
    lane_mask64(count.min(32)) as u32
}

/// The mask of the first `count` of 64 lanes (bytes in a 512-bit load).
#[inline(always)]
pub(crate) fn lane_mask64(count: usize) -> u64 {
    if count >= 64 {
        u64::MAX
    } else {
        (1u64 << count) - 1
    }
}

/// 16 elements (masked) at element `at` of `T` (0 f32, 1 f16, 2 bf16), widened to f32.
///
/// # Safety
/// AVX-512 F and BW; the masked lanes at `ptr` + `at` elements are readable.
#[inline(always)]
pub(crate) unsafe fn load_widened<const T: u8>(ptr: *const u8, at: usize, mask: u16) -> __m512 {
    match T {
        0 => _mm512_maskz_loadu_ps(mask, ptr.cast::<f32>().add(at)),
        1 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, ptr.cast::<i16>().add(at))),
        _ => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
            _mm256_maskz_loadu_epi16(mask, ptr.cast::<i16>().add(at)),
        ))),
    }
}
