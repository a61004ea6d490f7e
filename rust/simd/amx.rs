//! AMX tiles (Intel Sapphire Rapids and later): the probe, the permission request, and the few
//! tile operations the exact kernel uses, behind the [`Tiles`] trait so the kernel's loops can run
//! on an emulation where the CPU lacks AMX (tests).
//!
//! Inline assembly rather than a library: the tile intrinsics are unstable in Rust (1.95), and
//! the kernel needs six instructions (`ldtilecfg`, `tilezero`, `tileloadd`, `tdpbf16ps`,
//! `tilestored`, `tilerelease`) on fixed tile registers, which `asm!` states directly.
//!
//! Two register plans, both fixed. The 2 x 2 plan: tmm0-3 accumulate a 2 x 2 block of 16 x 16
//! f32 scores, tmm4-5 hold two A tiles (16 rows x 16 bf16 pairs), tmm6-7 two B tiles in the VNNI
//! layout (row p: pair p of 16 columns), all reloaded for every 32 dims. The stationary plan, for
//! rows of at most 64 dims: tmm2-5 hold 32 rows x 64 dims as four A tiles for as long as the
//! caller likes, tmm6-7 the B tiles of one block of 16 columns, and tmm0-1 accumulate its two
//! 16 x 16 blocks. It reloads two tiles per four products where the 2 x 2 plan reloads four, and
//! its accumulators wait on one chain of two products instead of the whole pass (at d 64, a
//! measured 1.5x faster per key on a Xeon with AMX: `examples/amx_probe.rs`).

use std::sync::OnceLock;

/// Bytes of one tile row, and rows of one tile (the palette-1 maxima).
pub const ROW_BYTES: usize = 64;
pub const TILE_ROWS: usize = 16;

/// True when the CPU has AMX-TILE and AMX-BF16, the OS saves tile state (XCR0 bits 17 and 18),
/// and the kernel granted this process the tile data state (asked once, on first call).
pub fn has_amx_bf16() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| cpu_has_amx_bf16() && request_permission())
}

/// The CPU and OS side of [`has_amx_bf16`], without asking for permission.
fn cpu_has_amx_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // `__cpuid` is unsafe before Rust 1.94 (rust-version is 1.89) and safe since.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID exists on every x86_64 CPU; leaf 7 is read only where the maximum leaf
        // reaches it.
        let (max, leaf1) = unsafe { (__cpuid(0).eax, __cpuid(1)) };
        if max < 7 {
            return false;
        }
        #[allow(unused_unsafe)]
        // SAFETY: as above.
        let leaf7 = unsafe { __cpuid_count(7, 0) };
        let (tile, bf16) = (leaf7.edx & (1 << 24) != 0, leaf7.edx & (1 << 22) != 0);
        let osxsave = leaf1.ecx & (1 << 27) != 0;
        if !(tile && bf16 && osxsave) {
            return false;
        }
        // SAFETY: XGETBV is available: CPUID says the OS enabled XSAVE (OSXSAVE).
        let xcr0 = unsafe { xgetbv0() };
        xcr0 & (0b11 << 17) == 0b11 << 17
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    std::arch::x86_64::_xgetbv(0)
}

/// Linux allocates the (8 KiB) tile data state per process on request: without it the first tile
/// instruction faults. Granted for the whole process, threads started later included.
fn request_permission() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these codes reads or writes only the given integers.
        unsafe {
            if libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) != 0
            {
                return false;
            }
            let mut mask: u64 = 0;
            let got = libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_GET_XCOMP_PERM,
                &mut mask as *mut u64,
            );
            got == 0 && mask & (1 << XFEATURE_XTILEDATA) != 0
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// The palette-1 tile configuration with all eight tiles at 16 rows x 64 bytes.
#[repr(C, align(64))]
pub struct TileConfig([u8; 64]);

impl TileConfig {
    pub fn full() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1; // palette
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&(ROW_BYTES as u16).to_le_bytes());
            c[48 + t] = TILE_ROWS as u8;
        }
        TileConfig(c)
    }
}

/// The kernel's tile operations. Pointers address 16 rows of 64 bytes, `stride` bytes apart.
///
/// # Safety
/// Every method needs the tile configuration loaded (`begin`) and `ptr` valid for the 16 rows.
pub trait Tiles {
    /// Loads the configuration (and with it zeroes every tile).
    unsafe fn begin(&mut self);
    /// Zeroes the four accumulators (tmm0-3).
    unsafe fn zero_acc(&mut self);
    /// 2 x 2 plan: loads A tile `i` (0, 1) into tmm4 + i.
    unsafe fn load_a(&mut self, i: usize, ptr: *const u8, stride: usize);
    /// Loads B tile `i` (0, 1) into tmm6 + i (both plans).
    unsafe fn load_b(&mut self, i: usize, ptr: *const u8, stride: usize);
    /// tmm(2r + c) += tmm(4 + r) x tmm(6 + c) for r, c in 0, 1 (TDPBF16PS).
    unsafe fn dot4(&mut self);
    /// Stationary plan: loads A tile `i` (0..4: rows half `i / 2`, step `i % 2`) into tmm2 + i.
    unsafe fn load_stationary(&mut self, i: usize, ptr: *const u8, stride: usize);
    /// Stationary plan: zeroes the two accumulators (tmm0-1).
    unsafe fn zero_pair(&mut self);
    /// Stationary plan: tmm(h) += tmm(2 + 2h + j) x tmm(6 + j) for h in 0, 1 and the first
    /// `steps` (1 or 2) steps j.
    unsafe fn dot_pair(&mut self, steps: usize);
    /// Stores accumulator `i` (0..4) as 16 rows of 16 f32.
    unsafe fn store_acc(&mut self, i: usize, ptr: *mut u8, stride: usize);
    /// Returns the tiles to their initial state (cheaper context switches).
    unsafe fn end(&mut self);
}

/// The CPU's tiles.
#[cfg(target_arch = "x86_64")]
pub struct Amx {
    config: TileConfig,
}

#[cfg(target_arch = "x86_64")]
impl Amx {
    /// The tiles, where [`has_amx_bf16`] says they work.
    pub fn new() -> Option<Self> {
        has_amx_bf16().then(|| Amx {
            config: TileConfig::full(),
        })
    }
}

#[cfg(target_arch = "x86_64")]
macro_rules! tile_load {
    ($t:literal, $ptr:expr, $stride:expr) => {
        std::arch::asm!(
            concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"),
            p = in(reg) $ptr,
            s = in(reg) $stride,
            options(nostack, readonly, preserves_flags)
        )
    };
}

#[cfg(target_arch = "x86_64")]
macro_rules! tile_store {
    ($t:literal, $ptr:expr, $stride:expr) => {
        std::arch::asm!(
            concat!("tilestored [{p} + {s}*1], tmm", $t),
            p = in(reg) $ptr,
            s = in(reg) $stride,
            options(nostack, preserves_flags)
        )
    };
}

#[cfg(target_arch = "x86_64")]
impl Tiles for Amx {
    #[inline(always)]
    unsafe fn begin(&mut self) {
        std::arch::asm!(
            "ldtilecfg [{}]",
            in(reg) self.config.0.as_ptr(),
            options(nostack, readonly, preserves_flags)
        );
    }
    #[inline(always)]
    unsafe fn zero_acc(&mut self) {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem, preserves_flags)
        );
    }
    #[inline(always)]
    unsafe fn load_a(&mut self, i: usize, ptr: *const u8, stride: usize) {
        match i {
            0 => tile_load!("4", ptr, stride),
            _ => tile_load!("5", ptr, stride),
        }
    }
    #[inline(always)]
    unsafe fn load_b(&mut self, i: usize, ptr: *const u8, stride: usize) {
        match i {
            0 => tile_load!("6", ptr, stride),
            _ => tile_load!("7", ptr, stride),
        }
    }
    #[inline(always)]
    unsafe fn dot4(&mut self) {
        std::arch::asm!(
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            options(nostack, nomem, preserves_flags)
        );
    }
    #[inline(always)]
    unsafe fn load_stationary(&mut self, i: usize, ptr: *const u8, stride: usize) {
        match i {
            0 => tile_load!("2", ptr, stride),
            1 => tile_load!("3", ptr, stride),
            2 => tile_load!("4", ptr, stride),
            _ => tile_load!("5", ptr, stride),
        }
    }
    #[inline(always)]
    unsafe fn zero_pair(&mut self) {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            options(nostack, nomem, preserves_flags)
        );
    }
    #[inline(always)]
    unsafe fn dot_pair(&mut self, steps: usize) {
        std::arch::asm!(
            "tdpbf16ps tmm0, tmm2, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm6",
            options(nostack, nomem, preserves_flags)
        );
        if steps > 1 {
            std::arch::asm!(
                "tdpbf16ps tmm0, tmm3, tmm7",
                "tdpbf16ps tmm1, tmm5, tmm7",
                options(nostack, nomem, preserves_flags)
            );
        }
    }
    #[inline(always)]
    unsafe fn store_acc(&mut self, i: usize, ptr: *mut u8, stride: usize) {
        match i {
            0 => tile_store!("0", ptr, stride),
            1 => tile_store!("1", ptr, stride),
            2 => tile_store!("2", ptr, stride),
            _ => tile_store!("3", ptr, stride),
        }
    }
    #[inline(always)]
    unsafe fn end(&mut self) {
        std::arch::asm!("tilerelease", options(nostack, nomem, preserves_flags));
    }
}

/// The same operations in software, as the ISA reference states them (bf16 inputs with
/// subnormals read as zero, f32 products and sums with subnormal results flushed to zero), so the
/// kernel's loops, addressing and epilogue are tested on CPUs without AMX.
#[cfg(test)]
pub struct Emulated {
    tiles: Vec<[u8; TILE_ROWS * ROW_BYTES]>,
}

#[cfg(test)]
impl Emulated {
    pub fn new() -> Self {
        Emulated {
            tiles: vec![[0u8; TILE_ROWS * ROW_BYTES]; 8],
        }
    }

    /// TILELOADD into tile `t`.
    unsafe fn load(&mut self, t: usize, ptr: *const u8, stride: usize) {
        for r in 0..TILE_ROWS {
            std::ptr::copy_nonoverlapping(
                ptr.add(r * stride),
                self.tiles[t][r * ROW_BYTES..].as_mut_ptr(),
                ROW_BYTES,
            );
        }
    }

    /// TDPBF16PS tmm`c`, tmm`a`, tmm`b`.
    fn dot(&mut self, c: usize, a: usize, b: usize) {
        for m in 0..TILE_ROWS {
            for n in 0..16 {
                let mut acc = f32::from_bits(self.word(c, m, n));
                for k in 0..16 {
                    let (aw, bw) = (self.word(a, m, k), self.word(b, k, n));
                    for e in 0..2 {
                        let x = bf16_daz((aw >> (16 * e)) as u16);
                        let y = bf16_daz((bw >> (16 * e)) as u16);
                        acc = ftz(acc + ftz(x * y));
                    }
                }
                self.tiles[c][m * ROW_BYTES + 4 * n..][..4]
                    .copy_from_slice(&acc.to_bits().to_le_bytes());
            }
        }
    }

    fn word(&self, t: usize, row: usize, col: usize) -> u32 {
        let b = &self.tiles[t][row * ROW_BYTES + 4 * col..][..4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

/// A bf16 as TDPBF16PS reads it: subnormals are zero.
#[cfg(test)]
fn bf16_daz(bits: u16) -> f32 {
    if bits & 0x7f80 == 0 {
        0.0
    } else {
        f32::from_bits((bits as u32) << 16)
    }
}

#[cfg(test)]
fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0
    } else {
        x
    }
}

#[cfg(test)]
impl Tiles for Emulated {
    unsafe fn begin(&mut self) {
        for t in &mut self.tiles {
            t.fill(0);
        }
    }
    unsafe fn zero_acc(&mut self) {
        for t in &mut self.tiles[..4] {
            t.fill(0);
        }
    }
    unsafe fn load_a(&mut self, i: usize, ptr: *const u8, stride: usize) {
        self.load(4 + i, ptr, stride);
    }
    unsafe fn load_b(&mut self, i: usize, ptr: *const u8, stride: usize) {
        self.load(6 + i, ptr, stride);
    }
    unsafe fn dot4(&mut self) {
        for (c, a, b) in [(0, 4, 6), (1, 4, 7), (2, 5, 6), (3, 5, 7)] {
            self.dot(c, a, b);
        }
    }
    unsafe fn load_stationary(&mut self, i: usize, ptr: *const u8, stride: usize) {
        self.load(2 + i, ptr, stride);
    }
    unsafe fn zero_pair(&mut self) {
        for t in &mut self.tiles[..2] {
            t.fill(0);
        }
    }
    unsafe fn dot_pair(&mut self, steps: usize) {
        for j in 0..steps {
            for h in 0..2 {
                self.dot(h, 2 + 2 * h + j, 6 + j);
            }
        }
    }
    unsafe fn store_acc(&mut self, i: usize, ptr: *mut u8, stride: usize) {
        for r in 0..TILE_ROWS {
            std::ptr::copy_nonoverlapping(
                self.tiles[i][r * ROW_BYTES..].as_ptr(),
                ptr.add(r * stride),
                ROW_BYTES,
            );
        }
    }
    unsafe fn end(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(x: f32) -> u16 {
        half::bf16::from_f32(x).to_bits()
    }

    /// One 16 x 32 by 32 x 16 product through the given tiles, against f64 on the same bf16 values.
    fn product<T: Tiles>(t: &mut T) -> Vec<f32> {
        let a: Vec<u16> = (0..16 * 32).map(|i| bits((i % 7) as f32 - 3.0)).collect();
        // VNNI layout: row p holds the pair p of 16 columns.
        let b: Vec<u16> = (0..16 * 16 * 2)
            .map(|i| bits(((i * 5) % 11) as f32 * 0.25 - 1.0))
            .collect();
        let mut out = vec![0f32; 4 * 256];
        unsafe {
            t.begin();
            t.zero_acc();
            for i in 0..2 {
                t.load_a(i, a.as_ptr().cast(), 64);
                t.load_b(i, b.as_ptr().cast(), 64);
            }
            t.dot4();
            for i in 0..4 {
                t.store_acc(i, out[i * 256..].as_mut_ptr().cast(), 64);
            }
            t.end();
        }
        let f = |x: u16| f32::from_bits((x as u32) << 16) as f64;
        for m in 0..16 {
            for n in 0..16 {
                let want: f64 = (0..32)
                    .map(|k| f(a[m * 32 + k]) * f(b[(k / 2) * 32 + 2 * n + k % 2]))
                    .sum();
                for i in 0..4 {
                    assert_eq!(
                        out[i * 256 + m * 16 + n] as f64,
                        want,
                        "tile {i} ({m}, {n})"
                    );
                }
            }
        }
        out
    }

    /// The stationary plan: four distinct A tiles (two halves x two steps) and two B tiles, each
    /// accumulator against f64 on the same bf16 values (small integers and quarters: exact).
    fn stationary_product<T: Tiles>(t: &mut T) -> Vec<f32> {
        let a: Vec<Vec<u16>> = (0..4)
            .map(|i| {
                (0..16 * 32)
                    .map(|x| bits(((x * (i + 2)) % 9) as f32 - 4.0))
                    .collect()
            })
            .collect();
        let b: Vec<Vec<u16>> = (0..2)
            .map(|j| {
                (0..16 * 32)
                    .map(|x| bits(((x * 3 + j) % 13) as f32 * 0.25 - 1.5))
                    .collect()
            })
            .collect();
        let mut out = vec![0f32; 2 * 256];
        unsafe {
            t.begin();
            // Stale sums in the accumulators must not survive the zeroing.
            t.zero_acc();
            t.load_a(0, a[0].as_ptr().cast(), 64);
            t.load_b(0, b[0].as_ptr().cast(), 64);
            t.dot4();
            for (i, tile) in a.iter().enumerate() {
                t.load_stationary(i, tile.as_ptr().cast(), 64);
            }
            for (j, tile) in b.iter().enumerate() {
                t.load_b(j, tile.as_ptr().cast(), 64);
            }
            t.zero_pair();
            t.dot_pair(2);
            for h in 0..2 {
                t.store_acc(h, out[h * 256..].as_mut_ptr().cast(), 64);
            }
            t.end();
        }
        let f = |x: u16| f32::from_bits((x as u32) << 16) as f64;
        for h in 0..2 {
            for m in 0..16 {
                for n in 0..16 {
                    let want: f64 = (0..2)
                        .flat_map(|j| (0..32).map(move |k| (j, k)))
                        .map(|(j, k)| {
                            f(a[2 * h + j][m * 32 + k]) * f(b[j][(k / 2) * 32 + 2 * n + k % 2])
                        })
                        .sum();
                    assert_eq!(
                        out[h * 256 + m * 16 + n] as f64,
                        want,
                        "half {h} ({m}, {n})"
                    );
                }
            }
        }
        out
    }

    #[test]
    fn emulated_tiles_multiply_as_the_isa_states() {
        product(&mut Emulated::new());
        stationary_product(&mut Emulated::new());
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn hardware_tiles_match_the_emulation() {
        let Some(mut amx) = Amx::new() else {
            eprintln!("no AMX-BF16 here (or not granted): skipped");
            return;
        };
        assert_eq!(product(&mut amx), product(&mut Emulated::new()));
        assert_eq!(
            stationary_product(&mut amx),
            stationary_product(&mut Emulated::new())
        );
    }

    #[test]
    fn the_configuration_is_palette_1_with_full_tiles() {
        let c = TileConfig::full();
        assert_eq!(c.0[0], 1);
        assert_eq!(&c.0[16..18], &[64, 0]);
        assert_eq!(c.0[48..56], [16; 8]);
        assert!(c.0[56..].iter().all(|&b| b == 0));
    }
}
