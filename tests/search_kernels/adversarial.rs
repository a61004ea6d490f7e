//! Data built to make the screens fall back, or to sit at their error bound: near-ties, key norms
//! over six decades, repeated keys, crowded and well-separated scores.

use super::data::*;
use super::problem::*;
use super::*;

/// Keys all equal to one vector up to `1e-5` relative noise: bf16 cannot separate them.
fn near_ties(rng: &mut Rng, dtype: Dtype, n: usize, dim: usize, blocks: usize) -> Doc {
    let base = rng.normals(dim);
    let keys = (0..n * dim)
        .map(|i| base[i % dim] * (1.0 + 1e-5 * (2.0 * rng.unit() as f32 - 1.0)))
        .collect();
    Doc::new(dtype, dim, vec![keys], Blocks::Uniform(blocks))
}

/// Keys like real attention keys: most norms spread over 1e-3..1, a few outliers (one in 499,
/// attention sinks) with norms 1e2..1e3. The outliers widen the bf16 error bound past the gaps
/// between the ordinary keys' scores.
fn norm_mixture(rng: &mut Rng, dtype: Dtype, n: usize, dim: usize, blocks: usize) -> Doc {
    let keys = (0..n)
        .flat_map(|i| {
            let v = rng.normals(dim);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
            let decades = if i % 499 == 3 {
                2.0 + rng.unit() as f32
            } else {
                rng.unit() as f32 * 3.0 - 3.0
            };
            let want = 10f32.powf(decades);
            v.into_iter().map(move |x| x / norm * want)
        })
        .collect();
    Doc::new(dtype, dim, vec![keys], Blocks::Uniform(blocks))
}

/// Checks the kernels on adversarial keys; with `tie_proof`, no row may fall back (bf16 cannot
/// separate the keys, the f32 rescoring does, of crowds past the candidate cap too).
fn adversarial(make: fn(&mut Rng, Dtype, usize, usize, usize) -> Doc, seed: u64, tie_proof: bool) {
    let _guard = serial();
    let mut rng = Rng(seed);
    for dtype in DTYPES {
        for (dim, n, blocks, q, k) in [
            (64, 3000, 100, 9, 32),
            (17, 1000, 7, 64, 1),
            (130, 4097, 4096, 64, 128),
            (40, 5000, 999, 9, 4),
        ] {
            let doc = make(&mut rng, dtype, n, dim, blocks);
            let queries = rng.normals(q * dim);
            let problem = Problem {
                docs: vec![Some(doc)],
                queries,
                shape: SearchShape {
                    batch: 1,
                    q,
                    heads: 1,
                    kv_heads: 1,
                    dim,
                    k,
                },
                exact_ties: false,
            };
            let before = stats().fallback_rows;
            let label = format!("{dtype:?} dim {dim} n {n} q {q} k {k}");
            problem.check(&label);
            let fell_back = stats().fallback_rows - before;
            if has_avx512_bf16() && tie_proof {
                // Near-ties past the candidate cap are rescored on the spot, not rescanned.
                assert_eq!(fell_back, 0, "{label}: rows fell back");
            }
        }
    }
}

#[test]
fn near_ties_stay_exact_without_fallback_up_to_the_cap() {
    adversarial(near_ties, 31, true);
}

#[test]
fn key_norms_over_six_decades_stay_exact() {
    adversarial(norm_mixture, 37, false);
}

/// Keys of which a share `copies` are exact copies of `distinct` vectors (repeated keys, as
/// attention sinks and window-first keys repeat), the rest Gaussian; every copy scores exactly as
/// its original in both kernels, so ties at the k-th score are common.
fn repeated_keys(rng: &mut Rng, n: usize, dim: usize, copies: f64, distinct: usize) -> Vec<f32> {
    let originals: Vec<Vec<f32>> = (0..distinct)
        .map(|_| {
            // Originals of larger norm than most keys, so their copies fill the top-k.
            let scale = 1.0 + rng.unit() as f32;
            rng.normals(dim).into_iter().map(|x| x * scale).collect()
        })
        .collect();
    (0..n)
        .flat_map(|_| {
            if rng.unit() < copies {
                originals[rng.below(distinct)].clone()
            } else {
                rng.normals(dim)
            }
        })
        .collect()
}

/// Checks `problem` and that every fast kernel took all `q` rows through its packed path and
/// certified them: none fell back to the f32 rescan.
fn check_certified(problem: &Problem, label: &str, q: usize) {
    let before = stats();
    problem.check(label);
    let after = stats();
    assert_eq!(
        after.rows - before.rows,
        q as u64 * fast_kernels(),
        "{label}"
    );
    assert_eq!(
        after.fallback_rows, before.fallback_rows,
        "{label}: rows fell back"
    );
}

#[test]
fn repeated_keys_are_certified_without_fallback() {
    // Exact ties by the hundred at the k-th score: each row's top-k is certified from its
    // candidates (every copy within the window of the k-th), never rescanned, and still equals
    // the f64 scan's (ties to the lower id in both kernels).
    let _guard = serial();
    let mut rng = Rng(47);
    for dtype in DTYPES {
        for (dim, n, q, k, copies, distinct) in [
            (64, 20_000, 40, 32, 0.3, 60),
            (64, 20_000, 9, 128, 0.1, 200),
            (17, 6000, 64, 1, 0.2, 5),
            (33, 9000, 7, 7, 0.25, 1),
            (128, 12_000, 300, 32, 0.15, 300),
        ] {
            let keys = repeated_keys(&mut rng, n, dim, copies, distinct);
            let doc = Doc::new(dtype, dim, vec![keys], Blocks::Uniform(4096));
            // Some queries equal to originals' directions: their copies make the top-k.
            let queries = rng.normals(q * dim);
            let problem = one_head(doc, queries, q, k);
            let label = format!("{dtype:?} dim {dim} n {n} q {q} k {k} copies {copies}");
            if has_avx512_bf16() && q > 4 {
                // Crowds of copies past the candidate cap included: rescored, not rescanned.
                check_certified(&problem, &label, q);
            } else {
                problem.check(&label);
            }
        }
    }
}

#[test]
fn a_crowd_of_ties_in_one_share_of_the_keys_is_certified_without_fallback() {
    // The first half of the keys random, the second 20,000 copies of one key that every query
    // points at: tasks split the keys, the copies' shares rescore their crowds to exactly the
    // tied score, the random shares keep k candidates far below it, and the merged row keeps k
    // candidates at the tied score: certified, not rescanned.
    if !has_avx512_bf16() {
        return;
    }
    let _guard = serial();
    let mut rng = Rng(53);
    let (dim, half, q, k) = (64, 20_000, 12, 8);
    let copy: Vec<f32> = rng.normals(dim).iter().map(|x| 3.0 * x).collect();
    let mut keys = rng.normals(half * dim);
    for _ in 0..half {
        keys.extend_from_slice(&copy);
    }
    let queries: Vec<f32> = (0..q * dim)
        .map(|i| copy[i % dim] + 0.1 * rng.normals(1)[0])
        .collect();
    for dtype in DTYPES {
        let doc = Doc::new(dtype, dim, vec![keys.clone()], Blocks::Uniform(4096));
        let problem = one_head(doc, queries.clone(), q, k);
        check_certified(&problem, &format!("{dtype:?} one crowded share"), q);
    }
}

#[test]
fn crowded_scores_stay_exact() {
    // Scores apart by about the bf16 rounding error: crowds of candidates, and a bound too tight for the keys' or the queries' rounding would certify wrong candidates.
    let _guard = serial();
    let mut rng = Rng(39);
    for dtype in DTYPES {
        for (dim, n, q, k) in [(64, 3000, 64, 32), (17, 1000, 9, 1), (130, 4097, 5, 128)] {
            let s = Spec {
                data: Data::Crowded,
                ..spec(dtype, dim, n, 100, q, k)
            };
            s.build(&mut rng).check(&s.label());
        }
    }
}

#[test]
fn well_separated_scores_are_certified() {
    // Gaussian keys: the bf16 candidates certify, so the tests above exercise the bf16 kernel's
    // own answers, not only its f32 fallback.
    if !has_avx512_bf16() {
        return;
    }
    let _guard = serial();
    let mut rng = Rng(43);
    for dtype in DTYPES {
        for (dim, q, k) in [(64, 9, 32), (33, 64, 1), (130, 5, 128)] {
            let s = spec(dtype, dim, 4097, 1000, q, k);
            check_certified(&s.build(&mut rng), &s.label(), q);
        }
    }
}
