//! Tile-loop shapes for the in-place AMX screen at d = 64, timed alone on one core: `cargo run
//! --release --example amx_probe -- [keys] [repeats]` (an AMX CPU only). Each pattern scores
//! every key of a bf16 buffer (rows of 64, streamed from memory with the kernel's prefetch)
//! against 256 queries in the VNNI B layout and stores the scores to L1 buffers; `+epi` adds the
//! kernel's per-key compares (one per 16 queries) against thresholds no score passes. Prints the
//! median ns a key and GFLOP/s (2 d 256 a key) per pattern, so the kernel's shape can follow the
//! tiles' real limits (what chains, what overlaps) rather than a guess. The `a32-*` patterns take
//! the kernel's plan (`astat32`) apart: what holds its chain, the zeroing or the stores.

#[cfg(target_arch = "x86_64")]
mod probe {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::time::Instant;

    const DIM: usize = 64;
    const QUERIES: usize = 256;
    const QBLOCKS: usize = QUERIES / 16;
    const STRIDE: usize = 2 * DIM;

    macro_rules! load {
        ($t:literal, $p:expr, $s:expr) => {
            asm!(concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"), p = in(reg) $p, s = in(reg) ($s as usize),
                 options(nostack, readonly, preserves_flags))
        };
    }
    macro_rules! store {
        ($t:literal, $p:expr, $s:expr) => {
            asm!(concat!("tilestored [{p} + {s}*1], tmm", $t), p = in(reg) $p, s = in(reg) ($s as usize),
                 options(nostack, preserves_flags))
        };
    }
    macro_rules! zero {
        ($t:literal) => {
            asm!(
                concat!("tilezero tmm", $t),
                options(nostack, nomem, preserves_flags)
            )
        };
    }
    macro_rules! dot {
        ($c:literal, $a:literal, $b:literal) => {
            asm!(
                concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b),
                options(nostack, nomem, preserves_flags)
            )
        };
    }

    #[repr(C, align(64))]
    struct Buf([f32; 16 * 16 * 16]);

    fn permission() -> bool {
        // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) writes nothing we own.
        unsafe { libc::syscall(libc::SYS_arch_prctl, 0x1023, 18) == 0 }
    }

    unsafe fn config() {
        #[repr(C, align(64))]
        struct Cfg([u8; 64]);
        let mut c = Cfg([0; 64]);
        c.0[0] = 1;
        for t in 0..8 {
            c.0[16 + 2 * t] = 64;
            c.0[48 + t] = 16;
        }
        asm!("ldtilecfg [{}]", in(reg) c.0.as_ptr(), options(nostack, readonly));
    }

    /// The kernel's epilogue compares on one stored 16 x 16 block (keys down): hits counted.
    #[inline(always)]
    unsafe fn epi(block: *const f32, pre: __m512, hits: &mut u32) {
        let mut m = 0u16;
        for r in 0..16 {
            m |= _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_load_ps(block.add(16 * r)), pre);
        }
        *hits += m.count_ones();
    }

    /// The kernel today: 32 keys x 32 queries a pass, A = two key halves, B = two query blocks,
    /// four accumulators, A and B reloaded for each step, all eight tiles in one chain.
    #[target_feature(enable = "avx512f")]
    unsafe fn cur(keys: &[u16], q: &[u16], out: &mut [Buf; 2], e: bool, st: bool) -> u32 {
        let (n, mut hits, pre) = (keys.len() / DIM, 0, _mm512_set1_ps(1e30));
        let mut pass = 0usize;
        for k0 in (0..n).step_by(32) {
            let base = keys.as_ptr().add(k0 * DIM);
            prefetch(base.add(2 * 32 * DIM).cast(), 32 * STRIDE);
            for qb in (0..QBLOCKS).step_by(2) {
                zero!(0);
                zero!(1);
                zero!(2);
                zero!(3);
                for j in 0..2 {
                    load!(4, base.add(32 * j), STRIDE);
                    load!(5, base.add(16 * DIM + 32 * j), STRIDE);
                    load!(6, qp(q, qb, j), 64);
                    load!(7, qp(q, qb + 1, j), 64);
                    dot!(0, 4, 6);
                    dot!(1, 4, 7);
                    dot!(2, 5, 6);
                    dot!(3, 5, 7);
                }
                let prev = out[1 - pass % 2].0.as_ptr();
                if e && pass > 0 {
                    for i in 0..4 {
                        epi(prev.add(256 * i), pre, &mut hits);
                    }
                }
                if st {
                    let o = out[pass % 2].0.as_mut_ptr();
                    store!(0, o, 64);
                    store!(1, o.add(256), 64);
                    store!(2, o.add(512), 64);
                    store!(3, o.add(768), 64);
                }
                pass += 1;
            }
        }
        hits
    }

    /// 16 keys stationary in two A tiles (both steps), two independent streams over the query
    /// blocks, each with its own two B tiles and one accumulator.
    #[target_feature(enable = "avx512f")]
    unsafe fn astat2(keys: &[u16], q: &[u16], out: &mut [Buf; 2], e: bool) -> u32 {
        let (n, mut hits, pre) = (keys.len() / DIM, 0, _mm512_set1_ps(1e30));
        let mut pass = 0usize;
        for k0 in (0..n).step_by(16) {
            let base = keys.as_ptr().add(k0 * DIM);
            prefetch(base.add(4 * 16 * DIM).cast(), 16 * STRIDE);
            load!(4, base, STRIDE);
            load!(5, base.add(32), STRIDE);
            for qb in (0..QBLOCKS).step_by(2) {
                load!(2, qp(q, qb, 0), 64);
                load!(3, qp(q, qb, 1), 64);
                load!(6, qp(q, qb + 1, 0), 64);
                load!(7, qp(q, qb + 1, 1), 64);
                zero!(0);
                zero!(1);
                dot!(0, 4, 2);
                dot!(1, 4, 6);
                dot!(0, 5, 3);
                dot!(1, 5, 7);
                let prev = out[1 - pass % 2].0.as_ptr();
                if e && pass > 0 {
                    epi(prev, pre, &mut hits);
                    epi(prev.add(256), pre, &mut hits);
                }
                let o = out[pass % 2].0.as_mut_ptr();
                store!(0, o, 64);
                store!(1, o.add(256), 64);
                pass += 1;
            }
        }
        hits
    }

    /// 16 keys stationary, one pair of B tiles shared by four accumulators in turn (so the B
    /// loads wait on the products before them, but a store never holds up the next products).
    #[target_feature(enable = "avx512f")]
    unsafe fn astat4(keys: &[u16], q: &[u16], out: &mut [Buf; 2], e: bool) -> u32 {
        let (n, mut hits, pre) = (keys.len() / DIM, 0, _mm512_set1_ps(1e30));
        let mut pass = 0usize;
        for k0 in (0..n).step_by(16) {
            let base = keys.as_ptr().add(k0 * DIM);
            prefetch(base.add(4 * 16 * DIM).cast(), 16 * STRIDE);
            load!(4, base, STRIDE);
            load!(5, base.add(32), STRIDE);
            for qb in (0..QBLOCKS).step_by(4) {
                let o = out[pass % 2].0.as_mut_ptr();
                load!(6, qp(q, qb, 0), 64);
                load!(7, qp(q, qb, 1), 64);
                zero!(0);
                dot!(0, 4, 6);
                dot!(0, 5, 7);
                load!(6, qp(q, qb + 1, 0), 64);
                load!(7, qp(q, qb + 1, 1), 64);
                zero!(1);
                dot!(1, 4, 6);
                dot!(1, 5, 7);
                load!(6, qp(q, qb + 2, 0), 64);
                load!(7, qp(q, qb + 2, 1), 64);
                zero!(2);
                dot!(2, 4, 6);
                dot!(2, 5, 7);
                load!(6, qp(q, qb + 3, 0), 64);
                load!(7, qp(q, qb + 3, 1), 64);
                zero!(3);
                dot!(3, 4, 6);
                dot!(3, 5, 7);
                let prev = out[1 - pass % 2].0.as_ptr();
                if e && pass > 0 {
                    for i in 0..4 {
                        epi(prev.add(256 * i), pre, &mut hits);
                    }
                }
                store!(0, o, 64);
                store!(1, o.add(256), 64);
                store!(2, o.add(512), 64);
                store!(3, o.add(768), 64);
                pass += 1;
            }
        }
        hits
    }

    /// 32 keys stationary in four A tiles (two halves x two steps); per query block two B tiles
    /// and two accumulators (one per key half): four products per two B loads (the kernel's
    /// plan). `mode` takes it apart to find what holds its chain: bit 1 finishes accumulator 0
    /// first and stores it before accumulator 1's products (its store then overlaps them), bit
    /// 2 leaves out the zeroing (the sums are garbage: timing only), bit 4 the stores, bit 8 the
    /// compares.
    #[target_feature(enable = "avx512f")]
    unsafe fn astat32(keys: &[u16], q: &[u16], out: &mut [Buf; 2], mode: u32) -> u32 {
        let (n, mut hits, pre) = (keys.len() / DIM, 0, _mm512_set1_ps(1e30));
        let (first, zero, stores) = (mode & 1 != 0, mode & 2 == 0, mode & 4 == 0);
        let compares = mode & 8 == 0;
        let mut pass = 0usize;
        for k0 in (0..n).step_by(32) {
            let base = keys.as_ptr().add(k0 * DIM);
            prefetch(base.add(2 * 32 * DIM).cast(), 32 * STRIDE);
            load!(2, base, STRIDE);
            load!(3, base.add(32), STRIDE);
            load!(4, base.add(16 * DIM), STRIDE);
            load!(5, base.add(16 * DIM + 32), STRIDE);
            for qb in 0..QBLOCKS {
                load!(6, qp(q, qb, 0), 64);
                load!(7, qp(q, qb, 1), 64);
                if zero {
                    zero!(0);
                    zero!(1);
                }
                let o = out[pass % 2].0.as_mut_ptr();
                if first {
                    dot!(0, 2, 6);
                    dot!(0, 3, 7);
                    if stores {
                        store!(0, o, 64);
                    }
                    dot!(1, 4, 6);
                    dot!(1, 5, 7);
                } else {
                    dot!(0, 2, 6);
                    dot!(1, 4, 6);
                    dot!(0, 3, 7);
                    dot!(1, 5, 7);
                }
                let prev = out[1 - pass % 2].0.as_ptr();
                if compares && pass > 0 {
                    epi(prev, pre, &mut hits);
                    epi(prev.add(256), pre, &mut hits);
                }
                if stores {
                    if !first {
                        store!(0, o, 64);
                    }
                    store!(1, o.add(256), 64);
                }
                pass += 1;
            }
        }
        hits
    }

    /// The epilogue alone on L1 scores (no tile work): its share of a key's time.
    #[target_feature(enable = "avx512f")]
    unsafe fn epi_only(keys: &[u16], out: &mut [Buf; 2]) -> u32 {
        let (n, mut hits, pre) = (keys.len() / DIM, 0, _mm512_set1_ps(1e30));
        for k0 in (0..n).step_by(32) {
            let base = keys.as_ptr().add(k0 * DIM);
            prefetch(base.add(2 * 32 * DIM).cast(), 32 * STRIDE);
            std::hint::black_box(base.read_volatile());
            for qb in (0..QBLOCKS).step_by(2) {
                let prev = out[qb / 2 % 2].0.as_ptr();
                for i in 0..4 {
                    epi(prev.add(256 * i), pre, &mut hits);
                }
            }
        }
        hits
    }

    /// Query block `b`'s B tile for step `j` (1 KiB each).
    #[inline(always)]
    unsafe fn qp(q: &[u16], b: usize, j: usize) -> *const u16 {
        q.as_ptr().add((b * 2 + j) * 512)
    }

    #[inline(always)]
    unsafe fn prefetch(p: *const u8, bytes: usize) {
        for off in (0..bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(p.add(off).cast());
        }
    }

    pub fn main() {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .map(|a| a.parse().unwrap())
            .collect();
        let n = args.first().copied().unwrap_or(1 << 22);
        let repeats = args.get(1).copied().unwrap_or(5);
        let amx = std::arch::is_x86_feature_detected!("avx512f") && permission();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.to_string())
            })
            .unwrap_or_default();
        println!("# {cpu}; amx granted: {amx}; {n} keys x {DIM}, {QUERIES} queries, one core");
        if !amx {
            return;
        }
        // Small bf16 values (exponent bits set, so no subnormals): 0x3c00 + low bits.
        let mut keys = vec![0u16; (n + 128) * DIM];
        for (i, k) in keys.iter_mut().enumerate() {
            *k = 0x3c00 | (i as u16 % 127);
        }
        let q: Vec<u16> = (0..QBLOCKS * 2 * 256 * 2)
            .map(|i| 0x3c00 | (i as u16 % 61))
            .collect();
        let mut out = [Buf([0.0; 4096]), Buf([0.0; 4096])];
        let keys_n = &keys[..n * DIM];
        type Run<'a> = (&'a str, Box<dyn Fn(&mut [Buf; 2]) -> u32 + 'a>);
        // SAFETY (each closure): AMX granted and configured below, AVX-512 F checked; every tile
        // load reads 16 rows inside `keys` (padded by 128 keys) or `q`, stores go to `out`.
        let runs: Vec<Run> = vec![
            (
                "cur",
                Box::new(|o| unsafe { cur(keys_n, &q, o, false, true) }),
            ),
            (
                "cur+epi",
                Box::new(|o| unsafe { cur(keys_n, &q, o, true, true) }),
            ),
            (
                "cur-nostore",
                Box::new(|o| unsafe { cur(keys_n, &q, o, false, false) }),
            ),
            (
                "astat2",
                Box::new(|o| unsafe { astat2(keys_n, &q, o, false) }),
            ),
            (
                "astat2+epi",
                Box::new(|o| unsafe { astat2(keys_n, &q, o, true) }),
            ),
            (
                "astat4",
                Box::new(|o| unsafe { astat4(keys_n, &q, o, false) }),
            ),
            (
                "astat4+epi",
                Box::new(|o| unsafe { astat4(keys_n, &q, o, true) }),
            ),
            (
                "astat32",
                Box::new(|o| unsafe { astat32(keys_n, &q, o, 8) }),
            ),
            (
                "astat32+epi",
                Box::new(|o| unsafe { astat32(keys_n, &q, o, 0) }),
            ),
            (
                "a32-c0first",
                Box::new(|o| unsafe { astat32(keys_n, &q, o, 1) }),
            ),
            (
                "a32-nozero",
                Box::new(|o| unsafe { astat32(keys_n, &q, o, 2) }),
            ),
            (
                "a32-nostore",
                Box::new(|o| unsafe { astat32(keys_n, &q, o, 4) }),
            ),
            (
                "a32-neither",
                Box::new(|o| unsafe { astat32(keys_n, &q, o, 6) }),
            ),
            ("epi-only", Box::new(|o| unsafe { epi_only(keys_n, o) })),
        ];
        // SAFETY: permission granted above.
        unsafe { config() };
        for (name, f) in &runs {
            let mut times = Vec::new();
            let mut hits = 0;
            for _ in 0..repeats {
                let t = Instant::now();
                hits += f(&mut out);
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let med = times[times.len() / 2];
            let ns = med * 1e9 / n as f64;
            let gf = 2.0 * (DIM * QUERIES) as f64 * n as f64 / med / 1e9;
            println!(
                "{name:12} {ns:7.2} ns/key  {gf:7.1} GFLOP/s  (min {:.4} s, hits {hits})",
                times[0]
            );
        }
        // SAFETY: tiles configured above.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    probe::main();
}
