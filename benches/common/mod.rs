//! Shared by the benches: the `clustered` key set of docs/benchmarks.md, store fixtures, the
//! criterion configuration and the quick mode (`FOT_MEM_BENCH_QUICK=1`).

// Each bench binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::Criterion;
use fot_mem::{Dtype, Elements, MemoryStore, StoreConfig};
use half::{bf16, f16};
use rayon::prelude::*;

/// Tokens per chunk file of the bench stores (the default is 4096; the benches use large chunks
/// unless they measure the chunk overhead).
pub const CHUNK_TOKENS: u32 = 65_536;
/// The small chunks that show the per-chunk overhead.
pub const SMALL_CHUNK_TOKENS: u32 = 4096;

/// The storage dtypes with their names in bench ids.
pub const DTYPES: [(Dtype, &str); 3] = [
    (Dtype::Float32, "f32"),
    (Dtype::Float16, "f16"),
    (Dtype::Bfloat16, "bf16"),
];

/// The name of a dtype in bench ids.
pub fn dtype_name(dtype: Dtype) -> &'static str {
    DTYPES.iter().find(|d| d.0 == dtype).expect("every dtype").1
}

/// True when `FOT_MEM_BENCH_QUICK` is set (to anything but `0` or empty): a handful of
/// representative cases with short timings, for CI smoke checks.
pub fn quick() -> bool {
    std::env::var("FOT_MEM_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The criterion configuration of both benches: 10 samples (criterion's least) after a short
/// warm-up. A case slower than `measurement / 10` takes 10 iterations (criterion warns that it
/// cannot finish in time, which is expected). The HTML plots are off: drawing them with plotters
/// (gnuplot is rarely installed) takes 2-4 s per case on 2 cores, a third of the run; the
/// estimates under `target/criterion` are still written. Command-line flags override all of it
/// (`-- --plotting-backend plotters` draws the plots again).
pub fn criterion() -> Criterion {
    let (warm_up, measurement) = if quick() {
        (Duration::from_millis(100), Duration::from_millis(300))
    } else {
        (Duration::from_millis(500), Duration::from_secs(2))
    };
    Criterion::default()
        .sample_size(10)
        .warm_up_time(warm_up)
        .measurement_time(measurement)
        .without_plots()
}

/// `65536` -> `64k`, `1048576` -> `1M`.
pub fn count_label(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{}M", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{}k", n >> 10)
    } else {
        n.to_string()
    }
}

/// SplitMix64: a small, fast, well-mixed deterministic generator.
pub struct Rng {
    state: u64,
    spare: Option<f64>,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng {
            state: seed,
            spare: None,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal, by Box-Muller (two draws per pair of uniforms).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let r = (-2.0 * self.uniform().ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * self.uniform()).sin_cos();
        self.spare = Some(r * s);
        r * c
    }
}

/// Components of the mixture.
const COMPONENTS: usize = 64;
/// Rows drawn from one generator seed; any row range is generated block by block (in parallel),
/// so row `i` is the same whatever range it is drawn in.
const BLOCK_ROWS: usize = 4096;
/// The seed of the mixture itself (centres, scales, weights) for each dim.
const MIXTURE_SEED: u64 = 0xF07_0001;
/// The seeds of the key rows and of the query rows.
pub const KEY_SEED: u64 = 0xF07_1000;
pub const QUERY_SEED: u64 = 0xF07_2000;

/// The `clustered` key set of docs/benchmarks.md: a 64-component Gaussian mixture with centres
/// c_j ~ N(0, I), scales s_j ~ U(0.5, 1.5), weights ~ Dirichlet(1), and rows
/// s_j * (c_j + 0.5 * N(0, I)). Keys and queries are draws from the same mixture with different
/// seeds; everything is fixed by the seeds.
pub struct Mixture {
    dim: usize,
    centres: Vec<f64>,
    scales: Vec<f64>,
    /// Cumulative weights, the last one 1.
    cumulative: Vec<f64>,
}

impl Mixture {
    pub fn new(dim: usize) -> Self {
        let mut rng = Rng::new(MIXTURE_SEED ^ ((dim as u64) << 32));
        let centres = (0..COMPONENTS * dim).map(|_| rng.normal()).collect();
        let scales = (0..COMPONENTS).map(|_| 0.5 + rng.uniform()).collect();
        // Dirichlet(1, ..., 1): normalised Exp(1) draws.
        let exp: Vec<f64> = (0..COMPONENTS).map(|_| -rng.uniform().ln()).collect();
        let total: f64 = exp.iter().sum();
        let cumulative = exp
            .iter()
            .scan(0.0, |acc, e| {
                *acc += e / total;
                Some(*acc)
            })
            .collect();
        Mixture {
            dim,
            centres,
            scales,
            cumulative,
        }
    }

    fn fill_block(&self, seed: u64, block: usize, out: &mut [f32]) {
        let d = self.dim;
        let mut rng =
            Rng::new(seed.wrapping_add((block as u64).wrapping_mul(0xA076_1D64_78BD_642F)));
        for row in out.chunks_exact_mut(d) {
            let u = rng.uniform();
            let j = self
                .cumulative
                .partition_point(|&c| c < u)
                .min(COMPONENTS - 1);
            let (s, c) = (self.scales[j], &self.centres[j * d..(j + 1) * d]);
            for (o, &ci) in row.iter_mut().zip(c) {
                *o = (s * (ci + 0.5 * rng.normal())) as f32;
            }
        }
    }

    /// Rows `first..first + n` of the set `seed`, flat `[n, dim]`; `first` must be a multiple of
    /// 4096.
    pub fn rows(&self, seed: u64, first: usize, n: usize) -> Vec<f32> {
        assert!(first.is_multiple_of(BLOCK_ROWS));
        let mut out = vec![0f32; n * self.dim];
        out.par_chunks_mut(BLOCK_ROWS * self.dim)
            .enumerate()
            .for_each(|(i, block)| self.fill_block(seed, first / BLOCK_ROWS + i, block));
        out
    }
}

/// Owned elements of one dtype.
pub enum Data {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl Data {
    /// `values` rounded to `dtype`.
    pub fn new(dtype: Dtype, values: Vec<f32>) -> Self {
        match dtype {
            Dtype::Float32 => Data::F32(values),
            Dtype::Float16 => Data::F16(values.into_iter().map(f16::from_f32).collect()),
            Dtype::Bfloat16 => Data::Bf16(values.into_iter().map(bf16::from_f32).collect()),
        }
    }

    pub fn elements(&self) -> Elements<'_> {
        match self {
            Data::F32(v) => Elements::F32(v),
            Data::F16(v) => Elements::F16(v),
            Data::Bf16(v) => Elements::Bf16(v),
        }
    }
}

/// The document all search fixtures store their keys in.
pub const DOC: &str = "doc";

/// Creates at `root` a store of one layer (0) and one kv head whose document [`DOC`] holds
/// `keys` clustered keys of `dim` (values = keys), appended 65,536 tokens at a time (each piece
/// generated just before its append, so memory stays small), and closes it. The keys are the same
/// for every dtype and chunk size.
pub fn build_search_store(root: &Path, dtype: Dtype, keys: usize, dim: usize, chunk: u32) {
    build_search_store_with_ties(root, dtype, keys, dim, chunk, false);
}

/// [`build_search_store`]; with `ties`, one key in five (chosen by a hash of its position) is an
/// exact copy of one of 300 fixed keys: repeated keys, exact ties by the hundred.
pub fn build_search_store_with_ties(
    root: &Path,
    dtype: Dtype,
    keys: usize,
    dim: usize,
    chunk: u32,
    ties: bool,
) {
    const PIECE: usize = 65_536;
    let start = Instant::now();
    let mut config = StoreConfig::new(vec![0], 1, dim as u32, dtype);
    config.chunk_tokens = chunk;
    let mut store = MemoryStore::create(root, config).unwrap();
    let mixture = Mixture::new(dim);
    let originals = mixture.rows(KEY_SEED ^ 0x7135, 0, 300);
    let mut first = 0;
    while first < keys {
        let n = PIECE.min(keys - first);
        let mut rows = mixture.rows(KEY_SEED, first, n);
        if ties {
            for i in 0..n {
                let h = ((first + i) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
                if h.is_multiple_of(5) {
                    let j = (h / 5 % 300) as usize;
                    rows[i * dim..(i + 1) * dim]
                        .copy_from_slice(&originals[j * dim..(j + 1) * dim]);
                }
            }
        }
        let len = store
            .append(DOC, 0, Elements::F32(&rows), Elements::F32(&rows))
            .unwrap();
        first += n;
        assert_eq!(len, first as u64);
    }
    drop(store);
    eprintln!(
        "  [setup] {} clustered keys{}, dim {dim}, {}, chunk {chunk}: generated and appended \
         in {:.1} s",
        count_label(keys),
        if ties { " (20% copies)" } else { "" },
        dtype_name(dtype),
        start.elapsed().as_secs_f64()
    );
}
