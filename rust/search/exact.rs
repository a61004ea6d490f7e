//! Exact search: picks the fastest kernel this CPU runs (once, at first use) and counts how often
//! the fast kernel had to fall back to a full f32 scan to stay exact.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::portable::PortableSearch;
use super::{KeySource, SearchResult, SearchShape};

/// The exact kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExactKernel {
    /// f32 blocked matrix products on any CPU.
    Portable,
    /// AVX-512 BF16 dot products fused with top-k, certified exact by an f32 rescoring pass.
    Avx512Bf16,
}

/// Counters of the fast kernel (process-wide, monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExactStats {
    /// Query rows searched by the fast kernel.
    pub rows: u64,
    /// Rows whose bf16 candidates could not be certified and were rescanned in f32.
    pub fallback_rows: u64,
}

pub(crate) static ROWS: AtomicU64 = AtomicU64::new(0);
pub(crate) static FALLBACK_ROWS: AtomicU64 = AtomicU64::new(0);

/// The counters so far.
pub fn stats() -> ExactStats {
    ExactStats {
        rows: ROWS.load(Ordering::Relaxed),
        fallback_rows: FALLBACK_ROWS.load(Ordering::Relaxed),
    }
}

/// True when this CPU runs the AVX-512 BF16 kernel.
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn detect() -> ExactKernel {
    let forced = std::env::var("FOT_MEM_EXACT_KERNEL").unwrap_or_default();
    if has_avx512_bf16() && forced != "portable" {
        ExactKernel::Avx512Bf16
    } else {
        ExactKernel::Portable
    }
}

/// The kernel exact searches use in this process (`FOT_MEM_EXACT_KERNEL=portable` forces the
/// portable one).
pub fn kernel() -> ExactKernel {
    static KERNEL: OnceLock<ExactKernel> = OnceLock::new();
    *KERNEL.get_or_init(detect)
}

/// The kernel's name, for reports.
pub fn kernel_name() -> &'static str {
    match kernel() {
        ExactKernel::Portable => "portable-f32",
        ExactKernel::Avx512Bf16 => "avx512-bf16",
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
            super::fast::search(sources, queries, shape)
        }
        _ => PortableSearch.search(sources, queries, shape),
    }
}
