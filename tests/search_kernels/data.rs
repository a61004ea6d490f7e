//! The inputs: a deterministic generator, documents held in memory, and keys and queries of
//! each kind of data.

use super::*;

/// splitmix64: a deterministic generator.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub(crate) fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    /// Standard normal (Box-Muller).
    pub(crate) fn normal(&mut self) -> f32 {
        let (u, v) = (1.0 - self.unit(), self.unit());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }

    pub(crate) fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }
}

/// One kv head's keys in their storage dtype.
pub(crate) enum Stored {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

/// How a document's keys are cut into blocks (chunk files, in the store).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Blocks {
    /// Every block `b` rows, the last one partly filled.
    Uniform(usize),
    /// Random sizes from 1 to `2 * mean` rows.
    Irregular { mean: usize, seed: u64 },
}

/// A document-layer held in memory: keys `[kv_heads][n][dim]` rounded to the storage dtype.
pub(crate) struct Doc {
    pub(crate) dim: usize,
    pub(crate) n: usize,
    pub(crate) stored: Vec<Stored>,
    /// The stored keys widened to f32 (exactly).
    pub(crate) wide: Vec<Vec<f32>>,
    /// Block boundaries, `0 = b_0 < b_1 < ... = n`.
    pub(crate) bounds: Vec<usize>,
}

impl Doc {
    /// `keys[kv_head]` is `[n, dim]` f32, rounded here to `dtype`.
    pub(crate) fn new(dtype: Dtype, dim: usize, keys: Vec<Vec<f32>>, blocks: Blocks) -> Doc {
        let n = keys[0].len() / dim;
        let stored: Vec<Stored> = keys
            .iter()
            .map(|k| match dtype {
                Dtype::Float32 => Stored::F32(k.clone()),
                Dtype::Float16 => Stored::F16(k.iter().map(|&x| f16::from_f32(x)).collect()),
                Dtype::Bfloat16 => Stored::Bf16(k.iter().map(|&x| bf16::from_f32(x)).collect()),
            })
            .collect();
        let wide = stored
            .iter()
            .map(|s| match s {
                Stored::F32(v) => v.clone(),
                Stored::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
                Stored::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
            })
            .collect::<Vec<Vec<f32>>>();
        for w in &wide {
            assert!(w.iter().all(|x| x.is_finite()), "keys overflow {dtype:?}");
        }
        let mut bounds = vec![0];
        match blocks {
            Blocks::Uniform(b) => bounds.extend((1..=n.div_ceil(b)).map(|i| (i * b).min(n))),
            Blocks::Irregular { mean, seed } => {
                let mut rng = Rng(seed);
                let mut at = 0;
                while at < n {
                    at = (at + 1 + rng.below(2 * mean)).min(n);
                    bounds.push(at);
                }
            }
        }
        Doc {
            dim,
            n,
            stored,
            wide,
            bounds,
        }
    }

    pub(crate) fn elements(&self, kv_head: usize, a: usize, b: usize) -> Elements<'_> {
        let r = a * self.dim..b * self.dim;
        match &self.stored[kv_head] {
            Stored::F32(v) => Elements::F32(&v[r]),
            Stored::F16(v) => Elements::F16(&v[r]),
            Stored::Bf16(v) => Elements::Bf16(&v[r]),
        }
    }
}

impl KeySource for Doc {
    fn len(&self) -> u64 {
        self.n as u64
    }

    fn blocks(&self, kv_head: usize) -> Vec<KeyBlock<'_>> {
        self.bounds
            .windows(2)
            .map(|w| KeyBlock {
                first_id: w[0] as u64,
                keys: self.elements(kv_head, w[0], w[1]),
            })
            .collect()
    }

    fn row(&self, kv_head: usize, id: u64) -> Elements<'_> {
        assert!(id < self.n as u64, "row {id} of {}", self.n);
        self.elements(kv_head, id as usize, id as usize + 1)
    }
}

/// The kinds of key data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Data {
    /// Standard normal keys.
    Gaussian,
    /// One shared direction plus a little noise: scores crowd together.
    SharedMean,
    /// One shared vector with 2e-3 relative noise: scores apart by about bf16's own error, where
    /// the certification has to get the bound right. The queries are bf16 values (as from a bf16
    /// model), so all the bf16 error is the keys'.
    Crowded,
    /// Norms log-uniform over 1e-3..1e3, random directions.
    NormSpread,
    /// Small nonzero integers: every score is exact in f32, full of exact ties. (No zeros: a
    /// product -0 can make a score -0; see `signed_zero_ties_keep_the_lower_id_first`.)
    Integers,
}

pub(crate) fn make_keys(
    rng: &mut Rng,
    data: Data,
    kv_heads: usize,
    n: usize,
    dim: usize,
) -> Vec<Vec<f32>> {
    (0..kv_heads)
        .map(|_| match data {
            Data::Gaussian => rng.normals(n * dim),
            Data::SharedMean => {
                let mean = rng.normals(dim);
                (0..n * dim)
                    .map(|i| 3.0 * mean[i % dim] + 0.05 * rng.normal())
                    .collect()
            }
            Data::Crowded => {
                let mean = rng.normals(dim);
                (0..n * dim)
                    .map(|i| mean[i % dim] * (1.0 + 2e-3 * rng.normal()))
                    .collect()
            }
            Data::NormSpread => (0..n)
                .flat_map(|_| {
                    let v = rng.normals(dim);
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                    let want = 10f32.powf(rng.unit() as f32 * 6.0 - 3.0);
                    v.into_iter().map(move |x| x / norm * want)
                })
                .collect(),
            Data::Integers => (0..n * dim).map(|_| small_int(rng)).collect(),
        })
        .collect()
}

/// One of -3, -2, -1, 1, 2, 3.
pub(crate) fn small_int(rng: &mut Rng) -> f32 {
    let x = rng.below(6) as f32 - 3.0;
    if x >= 0.0 {
        x + 1.0
    } else {
        x
    }
}

pub(crate) fn make_queries(rng: &mut Rng, data: Data, len: usize) -> Vec<f32> {
    match data {
        Data::Integers => (0..len).map(|_| small_int(rng)).collect(),
        Data::Crowded => rng
            .normals(len)
            .into_iter()
            .map(|x| bf16::from_f32(x).to_f32())
            .collect(),
        _ => rng.normals(len),
    }
}
