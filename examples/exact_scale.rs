//! Exact search over keys held in memory, at any scale: `cargo run --release --example
//! exact_scale -- [keys] [dim] [batch] [k] [dtype f32|bf16] [copies] [repeats]`, e.g.
//! `-- 16777216 64 256 32 bf16` (2 GiB of keys). Keys are iid N(0, 1) (a sum of uniforms), a share
//! `copies` of them exact copies of 300 vectors (repeated keys, exact ties); blocks of 65,536 rows
//! like the store's chunks. Prints the median seconds, GFLOP/s (2 N d per query), the kernel and the
//! fallback rows; threads: rayon's (RAYON_NUM_THREADS).

use std::time::Instant;

use fot_mem::search::{kernel_name, stats, KeyBlock, KeySource};
use fot_mem::{Backend, Elements};
use half::bf16;

struct Keys {
    dim: usize,
    f32s: Vec<f32>,
    bf16s: Vec<bf16>,
}

const BLOCK: usize = 65_536;

impl Keys {
    fn elements(&self, a: usize, b: usize) -> Elements<'_> {
        if self.bf16s.is_empty() {
            Elements::F32(&self.f32s[a * self.dim..b * self.dim])
        } else {
            Elements::Bf16(&self.bf16s[a * self.dim..b * self.dim])
        }
    }
    fn n(&self) -> usize {
        self.f32s.len().max(self.bf16s.len()) / self.dim
    }
}

impl KeySource for Keys {
    fn len(&self) -> u64 {
        self.n() as u64
    }
    fn blocks(&self, _: usize) -> Vec<KeyBlock<'_>> {
        (0..self.n())
            .step_by(BLOCK)
            .map(|a| KeyBlock {
                first_id: a as u64,
                keys: self.elements(a, (a + BLOCK).min(self.n())),
            })
            .collect()
    }
    fn row(&self, _: usize, id: u64) -> Elements<'_> {
        self.elements(id as usize, id as usize + 1)
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// About N(0, 1): four 16-bit uniforms, summed and scaled.
    fn normal(&mut self) -> f32 {
        let r = self.next();
        let s: u64 = (0..4).map(|i| (r >> (16 * i)) & 0xffff).sum();
        (s as f32 / 65536.0 - 2.0) * 3f32.sqrt()
    }
}

/// CPU seconds this process has used (user + system, from /proc/self/stat; 0 elsewhere): on a
/// shared machine, work per CPU second is steadier than wall time.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| a.get(i).cloned().unwrap_or_else(|| d.to_string());
    let n: usize = arg(0, "4194304").parse().unwrap();
    let dim: usize = arg(1, "64").parse().unwrap();
    let batch: usize = arg(2, "256").parse().unwrap();
    let k: usize = arg(3, "32").parse().unwrap();
    let dtype = arg(4, "bf16");
    let copies: f64 = arg(5, "0").parse().unwrap();
    let repeats: usize = arg(6, "3").parse().unwrap();
    let mut rng = Rng(2);
    let originals: Vec<f32> = (0..300 * dim).map(|_| rng.normal()).collect();
    let t = Instant::now();
    let mut row = vec![0f32; dim];
    let mut keys = Keys {
        dim,
        f32s: Vec::new(),
        bf16s: Vec::new(),
    };
    for _ in 0..n {
        if copies > 0.0 && (rng.next() >> 11) as f64 / (1u64 << 53) as f64 <= copies {
            let j = (rng.next() % 300) as usize;
            row.copy_from_slice(&originals[j * dim..(j + 1) * dim]);
        } else {
            row.iter_mut().for_each(|x| *x = rng.normal());
        }
        if dtype == "bf16" {
            keys.bf16s.extend(row.iter().map(|&x| bf16::from_f32(x)));
        } else {
            keys.f32s.extend_from_slice(&row);
        }
    }
    eprintln!(
        "generated {n} x {dim} {dtype} keys in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let queries: Vec<f32> = (0..batch * dim).map(|_| rng.normal()).collect();
    let shape = fot_mem::search::SearchShape {
        batch: 1,
        q: batch,
        heads: 1,
        kv_heads: 1,
        dim,
        k,
    };
    let src: [Option<&dyn KeySource>; 1] = [Some(&keys)];
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    let before = stats();
    for i in 0..=repeats {
        let (t, c) = (Instant::now(), cpu_seconds());
        let out = Backend::Exact.search(&src, &queries, shape).unwrap();
        let dt = t.elapsed().as_secs_f64();
        let dc = cpu_seconds() - c;
        std::hint::black_box(out);
        if i > 0 || repeats == 0 {
            times.push(dt);
            cpu.push(dc);
        }
    }
    let after = stats();
    times.sort_by(f64::total_cmp);
    cpu.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    let med_cpu = cpu[cpu.len() / 2];
    let flops = 2.0 * n as f64 * dim as f64 * batch as f64;
    println!(
        "{n} keys x {dim} {dtype}, copies {copies}, {batch} queries, k {k}: median {med:.3} s \
         ({:.1} GFLOP/s; {med_cpu:.2} CPU s, {:.1} GFLOP per CPU s), kernel {}, fallback rows \
         {} of {}",
        flops / med / 1e9,
        flops / med_cpu / 1e9,
        kernel_name(),
        after.fallback_rows - before.fallback_rows,
        after.rows - before.rows
    );
}
