//! Regression problems for bugs these checks found in the bf16 kernel, one smallest problem each.

use super::data::*;
use super::problem::*;
use super::*;

// Bugs these checks found in the bf16 kernel, one smallest problem each. Four are holes in its
// certification at extreme magnitudes: VDPBF16PS and VCVTNE2PS2BF16 treat subnormal inputs as zero
// and flush subnormal results to zero whatever MXCSR says, while the error bound assumes gradual
// underflow, measures key norms as f32 sums of squares (which underflow), and trusts "fewer
// candidates than k'" to mean every key was seen. The fifth is the order of tied signed zeros.
// The kernel is fixed; they stay as regression tests and run with the rest.

#[test]
fn subnormal_query_elements_stay_exact() {
    // Scores ~1e-21 (~1e-34 in f16): normal floats, but all of them come from the one subnormal
    // query element, so every bf16 score is 0 and the first k' keys are certified.
    let _guard = serial();
    let mut rng = Rng(61);
    let (dim, n, q, k) = (4, 300, 6, 5);
    for dtype in DTYPES {
        let big = if dtype == Dtype::Float16 { 3e4 } else { 1e18 };
        let keys = (0..n * dim)
            .map(|i| match i % dim {
                0 => (1.0 + rng.unit() as f32) * big,
                _ => 0.0,
            })
            .collect();
        let queries = (0..q * dim)
            .map(|i| match i % dim {
                0 => 3e-39 + 1e-40 * (i / dim) as f32,
                _ => 0.0,
            })
            .collect();
        let doc = Doc::new(dtype, dim, vec![keys], Blocks::Uniform(100));
        one_head(doc, queries, q, k).check(&format!("{dtype:?}"));
    }
}

#[test]
fn scores_in_the_subnormal_range_stay_exact() {
    // Products ~1e-40: exact enough in f32 (gradual underflow), all zero in bf16.
    let _guard = serial();
    let mut rng = Rng(67);
    let (dim, n, q, k) = (16, 500, 6, 8);
    for dtype in DTYPES {
        // f16 keys cannot be that small: make the queries smaller instead.
        let (ks, qs) = if dtype == Dtype::Float16 {
            (1e-3, 1e-37)
        } else {
            (1e-20, 1e-20)
        };
        let keys = rng.normals(n * dim).into_iter().map(|x| x * ks).collect();
        let queries = rng.normals(q * dim).into_iter().map(|x| x * qs).collect();
        let doc = Doc::new(dtype, dim, vec![keys], Blocks::Uniform(100));
        one_head(doc, queries, q, k).check(&format!("{dtype:?}"));
    }
}

#[test]
fn tiny_key_norms_stay_exact() {
    // Keys ~1e-24 and queries ~1e24: every product and score is an ordinary float (~10), but
    // sum(k_i^2) is 0 in f32. Near-ties 1e-3 apart are then certified from bf16 scores whose
    // error is ~4e-3.
    let _guard = serial();
    let mut rng = Rng(71);
    let (dim, n, q, k) = (64, 3000, 9, 32);
    for dtype in [Dtype::Float32, Dtype::Bfloat16] {
        let base = rng.normals(dim);
        let keys = (0..n * dim)
            .map(|i| base[i % dim] * (1.0 + 1e-3 * (2.0 * rng.unit() as f32 - 1.0)) * 1e-24)
            .collect();
        let queries = rng.normals(q * dim).into_iter().map(|x| x * 1e24).collect();
        let doc = Doc::new(dtype, dim, vec![keys], Blocks::Uniform(1000));
        one_head(doc, queries, q, k).check(&format!("{dtype:?}"));
    }
}

#[test]
fn keys_overflowing_bf16_stay_exact() {
    // 3.4e38 is a finite f32 but rounds to infinity in bf16. The query's element against it is 0
    // (bf16 score NaN) or negative (-inf); in f32 the scores are finite.
    let _guard = serial();
    let (dim, n, q, k) = (4, 10, 6, 10);
    let mut keys = vec![0.5f32; n * dim];
    keys[3 * dim] = 3.4e38;
    let queries = (0..q * dim)
        .map(|i| match (i % dim, (i / dim) % 2) {
            (0, 0) => 0.0,
            (0, _) => -1e-30,
            _ => 0.25,
        })
        .collect();
    let doc = Doc::new(Dtype::Float32, dim, vec![keys], Blocks::Uniform(7));
    one_head(doc, queries, q, k).check("Float32");
}

#[test]
fn signed_zero_ties_keep_the_lower_id_first() {
    // Query (-1, 0): key 0 = (0, -1) scores (-1)(0) + (0)(-1) = -0 + -0, key 1 = (0, 1) scores
    // -0 + 0 = +0. Equal scores, so key 0 comes first; 5 rows take the packed bf16 path.
    let _guard = serial();
    for dtype in DTYPES {
        let keys = vec![0.0, -1.0, 0.0, 1.0];
        let queries = [-1.0, 0.0].repeat(5);
        let doc = Doc::new(dtype, 2, vec![keys], Blocks::Uniform(7));
        let problem = Problem {
            exact_ties: true,
            ..one_head(doc, queries, 5, 2)
        };
        problem.check(&format!("{dtype:?}"));
    }
}
