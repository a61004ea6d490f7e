//! The keys of a span prepared for building: bf16 rows, the extra coordinate of the MIPS
//! reduction, norms, and int8 traversal codes.

use super::super::dot::{code_dot, code_dots, pair_dot, CodeDot, CodeDots, PairDot};
use super::super::params::Linking;
use crate::dtype::Elements;
use rayon::prelude::*;

/// Keys prepared for building: bf16 rows and each key's extra coordinate.
#[derive(Debug)]
pub struct BuildSet {
    pub n: usize,
    pub dim: usize,
    rows: Vec<u16>,
    pub(super) extra: Vec<f32>,
    /// Norm of each row (the centred key; 1 when normalised), for cosines between keys.
    pub(super) norm: Vec<f32>,
    dot: PairDot,
    /// Insertions walk the graph on the codes (every linking but angular, whose similarity
    /// compares normalised keys, which the codes are not).
    pub(super) walk_codes: bool,
    pub(super) code_dot: CodeDot,
    pub(super) code_dots: CodeDots,
    /// Int8 traversal codes of the centred keys (`stride` bytes a row, from `code_at`, a 64-byte
    /// boundary, so a 64-dimension row is one cache line) and the scale of each dimension.
    code_buf: Vec<u8>,
    code_at: usize,
    code_len: usize,
    pub(super) scales: Vec<f32>,
}

/// Bytes per code row: `dim` rounded up to whole words (the file stores words).
pub fn code_stride(dim: usize) -> usize {
    dim.div_ceil(4) * 4
}

/// Per-dimension scales `max_i |x_ij| / 127` of `keys` (`[n, dim]`) and the codes
/// `round(x_ij / scale_j)` in -127..=127 (as bytes), `stride` bytes a row.
fn quantise(keys: &[f32], dim: usize, stride: usize) -> (Vec<f32>, Vec<u8>) {
    // A maximum does not depend on the order it is taken in: per chunk of rows, then merged.
    let top = keys
        .par_chunks(dim * ROWS_PER_TASK)
        .map(|rows| {
            let mut top = vec![0f32; dim];
            for row in rows.chunks_exact(dim) {
                for (t, &x) in top.iter_mut().zip(row) {
                    if x.is_finite() {
                        *t = t.max(x.abs());
                    }
                }
            }
            top
        })
        .reduce(
            || vec![0f32; dim],
            |a, b| a.iter().zip(&b).map(|(x, y)| x.max(*y)).collect(),
        );
    let inv: Vec<f32> = top
        .iter()
        .map(|&t| if t > 0.0 { 127.0 / t } else { 0.0 })
        .collect();
    let mut codes = vec![0u8; keys.len() / dim * stride];
    codes
        .par_chunks_mut(stride)
        .zip(keys.par_chunks(dim))
        .for_each(|(code, row)| {
            for ((c, &x), &i) in code.iter_mut().zip(row).zip(&inv) {
                *c = ((x * i).round().clamp(-127.0, 127.0) as i8) as u8;
            }
        });
    (top.iter().map(|&t| t / 127.0).collect(), codes)
}

/// Rows per parallel task of the preparation (every step is per row, or a maximum, so the
/// result does not depend on how rows are split).
const ROWS_PER_TASK: usize = 4096;

impl BuildSet {
    /// From consecutive runs of `[rows, dim]` keys (the chunks of a span, in token order).
    pub fn new<'a>(
        runs: impl IntoIterator<Item = Elements<'a>>,
        dim: usize,
        linking: Linking,
    ) -> Self {
        let runs: Vec<Elements> = runs.into_iter().collect();
        let mut keys = vec![0f32; runs.iter().map(|r| r.len()).sum()];
        let mut at = 0;
        for run in &runs {
            run.to_f32(&mut keys[at..at + run.len()]);
            at += run.len();
        }
        let n = keys.len() / dim.max(1);
        // Centre the keys: q.(k - mu) ranks keys exactly as q.k (the offset q.mu is the same for
        // every key), and attention keys share a large common component that otherwise drowns
        // the directions the graph should link by.
        if n > 0 {
            let mut mu = vec![0f64; dim];
            for row in keys.chunks_exact(dim) {
                for (m, &x) in mu.iter_mut().zip(row) {
                    *m += x as f64;
                }
            }
            let mu: Vec<f32> = mu.iter().map(|&m| (m / n as f64) as f32).collect();
            keys.par_chunks_mut(dim).for_each(|row| {
                for (x, &m) in row.iter_mut().zip(&mu) {
                    *x -= m;
                }
            });
        }
        let (scales, codes) = if dim == 0 {
            (Vec::new(), Vec::new())
        } else {
            quantise(&keys, dim, code_stride(dim))
        };
        // Over-allocate, then start the rows at the first 64-byte boundary.
        let mut code_buf = vec![0u8; codes.len() + 63];
        let code_at = code_buf.as_ptr().align_offset(64).min(63);
        code_buf[code_at..code_at + codes.len()].copy_from_slice(&codes);
        let sq: Vec<f64> = keys
            .par_chunks_exact(dim.max(1))
            .map(|row| row.iter().map(|&x| x as f64 * x as f64).sum::<f64>())
            .collect();
        let mut rows = vec![0u16; n * dim];
        rows.par_chunks_exact_mut(dim.max(1))
            .zip(keys.par_chunks_exact(dim.max(1)))
            .zip(&sq)
            .for_each(|((out, row), &s)| {
                let scale = if linking == Linking::Angular && s > 0.0 {
                    1.0 / s.sqrt() as f32
                } else {
                    1.0
                };
                for (o, &x) in out.iter_mut().zip(row) {
                    *o = half::bf16::from_f32(x * scale).to_bits();
                }
            });
        let r2 = sq.iter().copied().fold(0f64, f64::max);
        let extra = sq
            .iter()
            .map(|&s| match linking {
                Linking::Reduction | Linking::Hybrid => (r2 - s).max(0.0).sqrt() as f32,
                _ => 0.0,
            })
            .collect();
        let norm = sq
            .iter()
            .map(|&s| {
                if linking == Linking::Angular {
                    1.0
                } else {
                    s.sqrt() as f32
                }
            })
            .collect();
        BuildSet {
            norm,
            n: sq.len(),
            dim,
            rows,
            extra,
            dot: pair_dot(),
            walk_codes: linking != Linking::Angular && !scales.is_empty(),
            code_dot: code_dot(),
            code_dots: code_dots(),
            code_at,
            code_len: codes.len(),
            code_buf,
            scales,
        }
    }

    /// The code rows, `code_stride(dim)` bytes each.
    #[inline]
    pub(super) fn codes(&self) -> &[u8] {
        &self.code_buf[self.code_at..self.code_at + self.code_len]
    }

    #[inline]
    pub(super) fn code(&self, i: u32) -> *const u8 {
        self.codes()[i as usize * code_stride(self.dim)..].as_ptr()
    }

    #[inline]
    pub(super) fn row(&self, i: u32) -> &[u16] {
        let d = self.dim;
        &self.rows[i as usize * d..(i as usize + 1) * d]
    }

    /// Similarity of keys `a` and `b` on the sphere.
    #[inline]
    pub(super) fn sim(&self, a: u32, b: u32) -> f32 {
        // SAFETY: `dot` was chosen for this CPU; both rows have `dim` elements.
        unsafe {
            (self.dot)(self.row(a), self.row(b)) + self.extra[a as usize] * self.extra[b as usize]
        }
    }

    /// Cosine of the centred keys `a` and `b` (the extra coordinate left out): duplicates and
    /// pivots are about directions, which the reduction's pole would hide for small keys.
    #[inline]
    pub(super) fn cos(&self, a: u32, b: u32) -> f32 {
        self.cos_of(a, b, self.sim(a, b))
    }

    /// [`BuildSet::cos`] given `sim = self.sim(a, b)`.
    #[inline]
    pub(super) fn cos_of(&self, a: u32, b: u32, sim: f32) -> f32 {
        let ip = sim - self.extra[a as usize] * self.extra[b as usize];
        ip / (self.norm[a as usize] * self.norm[b as usize]).max(f32::MIN_POSITIVE)
    }

    #[inline]
    pub(super) fn prefetch(&self, i: u32) {
        crate::simd::prefetch(self.row(i).as_ptr().cast(), self.dim * 2);
    }

    /// Sets each entry's score to `sim(x, id)`, every row asked for before the first is scored
    /// (the rows are read at random; one at a time their misses were a tenth of a build).
    pub(super) fn sim_all(&self, x: u32, entries: &mut [(f32, u32)]) {
        for e in entries.iter() {
            self.prefetch(e.1);
        }
        for e in entries.iter_mut() {
            e.0 = self.sim(x, e.1);
        }
    }
}
