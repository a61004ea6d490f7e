//! What this CPU can run, probed at run time (CPUID): the kernels of `search` and `ann` pick
//! their AVX-512 paths from these.

/// True when this CPU has AVX-512 F and BW (the f32 and int8 dot kernels of graph search).
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// True when this CPU runs the AVX-512 BF16 kernels (F, BW and BF16).
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

/// True when this CPU runs the AVX-512 VNNI (int8) exact kernel (which shares the bf16 kernel's
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
