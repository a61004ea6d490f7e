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
    /// The same with an int8 screen (AVX-512 VNNI, one scale per tile of keys and per query):
    /// 64 multiply-adds an instruction against 32, certified exactly as the bf16 one. Opt-in
    /// (`FOT_MEM_EXACT_KERNEL=avx512-vnni-int8`).
    Avx512Vnni,
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

/// True when this CPU runs the AVX-512 VNNI (int8) kernel (which shares the bf16 kernel's
/// packing helpers, so it needs AVX-512 BF16 and VL too).
pub fn has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx512_bf16()
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn detect() -> ExactKernel {
    let forced = std::env::var("FOT_MEM_EXACT_KERNEL").unwrap_or_default();
    match forced.as_str() {
        "portable" => ExactKernel::Portable,
        "avx512-vnni-int8" if has_avx512_vnni() => ExactKernel::Avx512Vnni,
        _ if has_avx512_bf16() => ExactKernel::Avx512Bf16,
        _ => ExactKernel::Portable,
    }
}

/// The kernel exact searches use in this process: the AVX-512 BF16 one where the CPU has it,
/// else the portable one. `FOT_MEM_EXACT_KERNEL=portable` forces the portable kernel,
/// `=avx512-vnni-int8` the int8 screen (faster on plain keys, about 1.2x on AMD Zen 4, but its
/// error bound widens with outlier keys, such as attention sinks, until rows fall back).
pub fn kernel() -> ExactKernel {
    static KERNEL: OnceLock<ExactKernel> = OnceLock::new();
    *KERNEL.get_or_init(detect)
}

/// The kernel's name, for reports.
pub fn kernel_name() -> &'static str {
    match kernel() {
        ExactKernel::Portable => "portable-f32",
        ExactKernel::Avx512Bf16 => "avx512-bf16",
        ExactKernel::Avx512Vnni => "avx512-vnni-int8",
    }
}

/// The CPU features the selected kernel uses (empty for the portable one), for reports.
pub fn kernel_features() -> &'static [&'static str] {
    match kernel() {
        ExactKernel::Portable => &[],
        ExactKernel::Avx512Bf16 => &["avx512f", "avx512bw", "avx512vl", "avx512bf16"],
        ExactKernel::Avx512Vnni => &[
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16",
        ],
    }
}

/// The CPU's brand string with its family and model numbers (CPUID), e.g. `AMD EPYC (family 25,
/// model 17)`: machines of one name differ (Zen 4 and Zen 5 EPYCs both say "AMD EPYC" in a VM).
pub fn cpu_model() -> String {
    // `__cpuid` is unsafe before Rust 1.94 (rust-version is 1.89) and safe since.
    #[cfg(target_arch = "x86_64")]
    #[allow(unused_unsafe)]
    {
        use std::arch::x86_64::__cpuid;
        // SAFETY: CPUID exists on every x86_64 CPU; leaves past the maximum are not read.
        let (max_ext, leaf1) = unsafe { (__cpuid(0x8000_0000).eax, __cpuid(1)) };
        let mut brand = Vec::new();
        if max_ext >= 0x8000_0004 {
            for leaf in 0x8000_0002u32..=0x8000_0004 {
                // SAFETY: as above, the leaf is at most the maximum.
                let r = unsafe { __cpuid(leaf) };
                for w in [r.eax, r.ebx, r.ecx, r.edx] {
                    brand.extend_from_slice(&w.to_le_bytes());
                }
            }
        }
        let brand = String::from_utf8_lossy(&brand)
            .trim_matches(char::from(0))
            .trim()
            .to_string();
        let eax = leaf1.eax;
        let (base_family, base_model) = ((eax >> 8) & 0xf, (eax >> 4) & 0xf);
        let family = if base_family == 0xf {
            base_family + ((eax >> 20) & 0xff)
        } else {
            base_family
        };
        let model = if base_family >= 0x6 {
            base_model | (((eax >> 16) & 0xf) << 4)
        } else {
            base_model
        };
        format!("{brand} (family {family}, model {model})")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
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
        ExactKernel::Avx512Vnni if has_avx512_vnni() => {
            super::fast::search(sources, queries, shape, super::fast::Screen::Int8)
        }
        _ => PortableSearch.search(sources, queries, shape),
    }
}
