//! CPU primitives below `search`, `ann` and `store`: feature probes, shared AVX-512 lane loads and
//! prefetch. Nothing here knows about keys, graphs or files.

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
mod cpu;
#[cfg(target_arch = "x86_64")]
mod lanes;

pub use cpu::{cpu_model, has_avx512, has_avx512_bf16, has_avx512_vnni};
#[cfg(target_arch = "x86_64")]
pub(crate) use lanes::{lane_mask, lane_mask32, lane_mask64, load_widened};

/// Pulls `len` bytes at `ptr` toward the cache (a hint; no effect where unsupported).
#[inline(always)]
pub(crate) fn prefetch(ptr: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        // Every cache line the bytes touch: a row that starts mid-line spans one line more
        // than `len / 64`.
        let first = (ptr as usize) & !63;
        let end = (ptr as usize).wrapping_add(len.max(1));
        let mut line = first;
        while line < end {
            // SAFETY: prefetching never faults, whatever the address.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    ptr.wrapping_add(line.wrapping_sub(ptr as usize)).cast(),
                )
            };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, len);
}
