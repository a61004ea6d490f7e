//! Exact search: picks the fastest kernel this CPU runs (once, at first use). How often the fast
//! kernel had to fall back to a full f32 scan to stay exact is counted in `stats`.

use std::sync::OnceLock;

use super::portable::PortableSearch;
use super::{KeySource, SearchResult, SearchShape};
use crate::simd::{has_avx512_bf16, has_avx512_vnni};

#[cfg(target_arch = "x86_64")]
fn has_amx_bf16() -> bool {
    has_avx512_bf16() && crate::simd::amx::has_amx_bf16()
}

#[cfg(not(target_arch = "x86_64"))]
fn has_amx_bf16() -> bool {
    false
}

/// The exact kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExactKernel {
    /// f32 blocked matrix products on any CPU.
    Portable,
    /// AVX-512 BF16 dot products fused with top-k, certified exact by an f32 rescoring pass.
    Avx512Bf16,
    /// The same screen with its scores from AMX tiles (TDPBF16PS) where the dim is a multiple of
    /// 32 (other dims take `Avx512Bf16`'s microkernel), on CPUs with AMX-BF16 whose OS grants
    /// the tile state.
    AmxBf16,
    /// The same with an int8 screen (AVX-512 VNNI, one scale per tile of keys and per query):
    /// 64 multiply-adds an instruction against 32, certified exactly as the bf16 one. Opt-in
    /// (`FOT_MEM_EXACT_KERNEL=avx512-vnni-int8`).
    Avx512Vnni,
}

fn detect() -> ExactKernel {
    let forced = std::env::var("FOT_MEM_EXACT_KERNEL").unwrap_or_default();
    match forced.as_str() {
        "portable" => ExactKernel::Portable,
        "avx512-vnni-int8" if has_avx512_vnni() => ExactKernel::Avx512Vnni,
        "avx512-bf16" if has_avx512_bf16() => ExactKernel::Avx512Bf16,
        _ if has_amx_bf16() => ExactKernel::AmxBf16,
        _ if has_avx512_bf16() => ExactKernel::Avx512Bf16,
        _ => ExactKernel::Portable,
    }
}

/// The kernel exact searches use in this process: AMX tiles where the CPU has AMX-BF16 (and the
/// OS grants it), else the AVX-512 BF16 one where the CPU has it, else the portable one.
/// `FOT_MEM_EXACT_KERNEL=portable` forces the portable kernel, `=avx512-bf16` the AVX-512 BF16
/// one, `=avx512-vnni-int8` the int8 screen. Measured on AMD Zen 4 (256 queries x 8M x 64): 3.3x the
/// bf16 screen's speed on keys with 30% exact copies and 50x sinks (the sinks are scored apart,
/// the copies are cheap to certify), level with it on plain keys, but 3.4x slower on real SmolLM2
/// keys (131K x 64, 2048 queries), whose few large dimensions set the one int8 scale of a tile
/// and widen every key's error bound; per-dimension scales folded into the queries would fix
/// that, so it stays opt-in.
pub fn kernel() -> ExactKernel {
    static KERNEL: OnceLock<ExactKernel> = OnceLock::new();
    *KERNEL.get_or_init(detect)
}

/// The kernel's name, for reports.
pub fn kernel_name() -> &'static str {
    match kernel() {
        ExactKernel::Portable => "portable-f32",
        ExactKernel::Avx512Bf16 => "avx512-bf16",
        ExactKernel::AmxBf16 => "amx-bf16",
        ExactKernel::Avx512Vnni => "avx512-vnni-int8",
    }
}

/// The CPU features the selected kernel uses (empty for the portable one), for reports.
pub fn kernel_features() -> &'static [&'static str] {
    match kernel() {
        ExactKernel::Portable => &[],
        ExactKernel::Avx512Bf16 => &["avx512f", "avx512bw", "avx512vl", "avx512bf16"],
        ExactKernel::AmxBf16 => &[
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512bf16",
            "amx-tile",
            "amx-bf16",
        ],
        ExactKernel::Avx512Vnni => &[
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16",
        ],
    }
}

/// Searches with the selected kernel; inputs are validated by [`super::Backend::search`].
pub fn search(
    sources: &[Option<&dyn KeySource>],
    queries: &[f32],
    shape: SearchShape,
) -> SearchResult {
    search_with(kernel(), sources, queries, shape)
}

/// Searches with a given kernel (tests compare them); a kernel this CPU lacks falls back to the
/// portable one.
pub fn search_with(
    kernel: ExactKernel,
    sources: &[Option<&dyn KeySource>],
    queries: &[f32],
    shape: SearchShape,
) -> SearchResult {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        ExactKernel::Avx512Bf16 if has_avx512_bf16() => {
            super::fast::search(sources, queries, shape, super::fast::Screen::Bf16)
        }
        #[cfg(target_arch = "x86_64")]
        ExactKernel::AmxBf16 if has_avx512_bf16() => {
            super::fast::search(sources, queries, shape, super::fast::Screen::Amx)
        }
        #[cfg(target_arch = "x86_64")]
        ExactKernel::Avx512Vnni if has_avx512_vnni() => {
            super::fast::search(sources, queries, shape, super::fast::Screen::Int8)
        }
        _ => PortableSearch.search(sources, queries, shape),
    }
}
