//! The oracle and the problems: an f64 scan with error bounds, the row check, and specs of
//! search problems (random or chosen).

use super::data::*;
use super::*;

/// The f64 scores of one query row against one kv head, and each score's f32 error bound.
pub(crate) fn scan(query: &[f32], keys: &[f32], dim: usize) -> (Vec<f64>, Vec<f64>) {
    let eps = (dim as f64 + 2.0) * f32::EPSILON as f64;
    // Scores in the f32 subnormal range lose absolute precision: one subnormal step per add.
    let floor = (dim as f64 + 2.0) * f32::from_bits(1) as f64;
    keys.chunks_exact(dim)
        .map(|k| {
            let (mut s, mut a) = (0f64, 0f64);
            for (&x, &y) in query.iter().zip(k) {
                let p = x as f64 * y as f64;
                s += p;
                a += p.abs();
            }
            (s, eps * a + floor)
        })
        .unzip()
}

/// Where the f64 scores of two keys are far enough apart that every correct f32 search orders them
/// the same way: beyond both error bounds, and beyond 1e-5 relative.
pub(crate) fn separated(s: &[f64], e: &[f64], a: usize, b: usize) -> bool {
    let gap = (s[a] - s[b]).abs();
    gap > e[a] + e[b] && gap > 1e-5 * s[a].abs().max(s[b].abs())
}

/// Checks one row of a result (`scores`, `ids`: k entries) against the scan.
pub(crate) fn check_row(
    what: &str,
    scores: &[f32],
    ids: &[i64],
    s: &[f64],
    e: &[f64],
    exact_ties: bool,
) {
    let (n, k) = (s.len(), scores.len());
    let valid = k.min(n);
    for j in valid..k {
        assert_eq!(ids[j], -1, "{what}: rank {j} past the length must be id -1");
        assert_eq!(
            scores[j],
            f32::NEG_INFINITY,
            "{what}: rank {j} past the length must score -inf"
        );
    }
    let mut taken = vec![false; n];
    for j in 0..valid {
        let id = ids[j];
        assert!(
            (0..n as i64).contains(&id),
            "{what}: rank {j} id {id} not in 0..{n}"
        );
        let id = id as usize;
        assert!(!taken[id], "{what}: id {id} returned twice");
        taken[id] = true;
        let got = scores[j] as f64;
        assert!(
            (got - s[id]).abs() <= e[id],
            "{what}: rank {j} id {id} scored {got}, its f64 score is {} (bound {})",
            s[id],
            e[id]
        );
        if j > 0 {
            let (prev, pid) = (scores[j - 1], ids[j - 1]);
            assert!(
                scores[j] < prev || (scores[j] == prev && ids[j] > pid),
                "{what}: ranks {} and {j} out of order: ({prev}, {pid}) then ({}, {})",
                j - 1,
                scores[j],
                ids[j]
            );
            // The f64 scores agree with the order, up to the bounds.
            let p = pid as usize;
            assert!(
                s[id] - e[id] <= s[p] + e[p],
                "{what}: id {id} (f64 {}) ranked below id {p} (f64 {})",
                s[id],
                s[p]
            );
        }
    }
    // The oracle's order: f64 score descending, then id ascending.
    let mut order: Vec<usize> = (0..n).collect();
    let by = |a: &usize, b: &usize| s[*b].total_cmp(&s[*a]).then(a.cmp(b));
    if valid < n {
        order.select_nth_unstable_by(valid, by);
        order[..valid].sort_unstable_by(by);
    } else {
        order.sort_unstable_by(by);
    }
    if valid < n {
        // No key left out beats a key returned, beyond both bounds.
        let worst_in = (0..n)
            .filter(|&i| taken[i])
            .map(|i| s[i] + e[i])
            .fold(f64::INFINITY, f64::min);
        let (best_out, out_id) = (0..n)
            .filter(|&i| !taken[i])
            .map(|i| (s[i] - e[i], i))
            .fold((f64::NEG_INFINITY, 0), |a, b| if b.0 > a.0 { b } else { a });
        assert!(
            best_out <= worst_in,
            "{what}: id {out_id} (f64 {:.9e}) was left out of the top {k}, whose worst f64 score is \
             {worst_in:.9e} (bound included); ids {ids:?}",
            s[out_id]
        );
        // Where the k-th and (k+1)-th are apart, the set is determined.
        let (kth, next) = (order[valid - 1], order[valid]);
        if separated(s, e, kth, next) {
            for &i in &order[..valid] {
                assert!(
                    taken[i],
                    "{what}: id {i} belongs in the top {k}; ids {ids:?}"
                );
            }
        }
    }
    for j in 0..valid {
        let clear = (j == 0 || separated(s, e, order[j - 1], order[j]))
            && (j + 1 >= n || separated(s, e, order[j], order[j + 1]));
        if clear || exact_ties {
            assert_eq!(
                ids[j], order[j] as i64,
                "{what}: rank {j} (oracle f64 {} vs got {})",
                s[order[j]], scores[j]
            );
        }
        if exact_ties {
            assert_eq!(scores[j] as f64, s[order[j]], "{what}: rank {j} score");
        }
    }
}

/// One search problem: documents (`None` is a missing one), queries `[batch, q, heads, dim]`.
pub(crate) struct Problem {
    pub(crate) docs: Vec<Option<Doc>>,
    pub(crate) queries: Vec<f32>,
    pub(crate) shape: SearchShape,
    pub(crate) exact_ties: bool,
}

impl Problem {
    pub(crate) fn run(&self, kernel: ExactKernel) -> SearchResult {
        let sources: Vec<Option<&dyn KeySource>> = self
            .docs
            .iter()
            .map(|d| d.as_ref().map(|d| d as &dyn KeySource))
            .collect();
        let out = search_with(kernel, &sources, &self.queries, self.shape);
        assert_eq!(out.ids.len(), self.shape.out_len());
        assert_eq!(out.scores.len(), self.shape.out_len());
        out
    }

    /// Runs every kernel and checks each against the scan, and the fast ones against the portable.
    pub(crate) fn check(&self, label: &str) {
        let portable = self.run(ExactKernel::Portable);
        for (fast_name, kernel) in FAST {
            let fast = self.run(kernel);
            self.compare(&format!("{label} [{fast_name}]"), &fast, &portable);
        }
    }

    pub(crate) fn compare(&self, label: &str, fast: &SearchResult, portable: &SearchResult) {
        let sh = self.shape;
        let (group, dim, k) = (sh.group(), sh.dim, sh.k);
        for (slot, doc) in self.docs.iter().enumerate() {
            for qi in 0..sh.q {
                for h in 0..sh.heads {
                    let at = ((slot * sh.q + qi) * sh.heads + h) * k;
                    let query = &self.queries[at / k * dim..][..dim];
                    let (s, e) = match doc {
                        Some(d) => scan(query, &d.wide[h / group], dim),
                        None => (Vec::new(), Vec::new()),
                    };
                    for (name, r) in [("fast", fast), ("portable", portable)] {
                        let what = format!("{label} [{name}] slot {slot} query {qi} head {h}");
                        let (sc, id) = (&r.scores[at..at + k], &r.ids[at..at + k]);
                        check_row(&what, sc, id, &s, &e, self.exact_ties);
                    }
                    // The kernels agree wherever the answer is determined.
                    let (fs, fi) = (&fast.scores[at..at + k], &fast.ids[at..at + k]);
                    let (ps, pi) = (&portable.scores[at..at + k], &portable.ids[at..at + k]);
                    for j in 0..k.min(s.len()) {
                        let (a, b) = (fi[j] as usize, pi[j] as usize);
                        assert!(
                            a == b || !separated(&s, &e, a, b),
                            "{label} slot {slot} query {qi} head {h} rank {j}: kernels differ, \
                             id {a} ({}) vs id {b} ({})",
                            fs[j],
                            ps[j]
                        );
                        assert!(
                            (fs[j] as f64 - ps[j] as f64).abs()
                                <= (s[a] - s[b]).abs() + e[a] + e[b],
                            "{label} rank {j}: scores {} vs {}",
                            fs[j],
                            ps[j]
                        );
                    }
                }
            }
        }
    }
}

pub(crate) struct Spec {
    pub(crate) dtype: Dtype,
    pub(crate) data: Data,
    pub(crate) dim: usize,
    /// Lengths of the batch's documents; `None` is a missing one.
    pub(crate) lengths: Vec<Option<usize>>,
    pub(crate) blocks: Blocks,
    pub(crate) q: usize,
    pub(crate) kv_heads: usize,
    pub(crate) group: usize,
    pub(crate) k: usize,
}

impl Spec {
    pub(crate) fn build(&self, rng: &mut Rng) -> Problem {
        let docs = self
            .lengths
            .iter()
            .map(|n| {
                n.map(|n| {
                    let keys = make_keys(rng, self.data, self.kv_heads, n, self.dim);
                    Doc::new(self.dtype, self.dim, keys, self.blocks)
                })
            })
            .collect::<Vec<_>>();
        let shape = SearchShape {
            batch: self.lengths.len(),
            q: self.q,
            heads: self.kv_heads * self.group,
            kv_heads: self.kv_heads,
            dim: self.dim,
            k: self.k,
        };
        let queries = make_queries(
            rng,
            self.data,
            shape.batch * shape.q * shape.heads * self.dim,
        );
        Problem {
            docs,
            queries,
            shape,
            exact_ties: self.data == Data::Integers,
        }
    }

    pub(crate) fn label(&self) -> String {
        format!(
            "{:?} {:?} dim {} lengths {:?} {:?} q {} kv_heads {} group {} k {}",
            self.dtype,
            self.data,
            self.dim,
            self.lengths,
            self.blocks,
            self.q,
            self.kv_heads,
            self.group,
            self.k
        )
    }

    /// Multiply-adds of the f64 scan.
    pub(crate) fn cost(&self) -> usize {
        let n: usize = self.lengths.iter().flatten().sum();
        n * self.q * self.kv_heads * self.group * self.dim
    }
}

pub(crate) const DIMS: [usize; 7] = [1, 3, 17, 33, 63, 65, 130];
pub(crate) const LENGTHS: [usize; 8] = [1, 15, 47, 49, 481, 1000, 4097, 2];
/// Query rows per kv head (`q * group`): 1..4 take the small path, more the packed one.
pub(crate) const ROWS: [usize; 9] = [1, 2, 3, 4, 5, 9, 64, 300, 6];
pub(crate) const KS: [usize; 5] = [1, 32, 128, 7, 1000];

/// A random spec; dtype, dim, length and rows cycle with `i` so every value of each is covered.
pub(crate) fn random_spec(rng: &mut Rng, i: usize) -> Spec {
    let dtype = DTYPES[i % 3];
    let dim = DIMS[i % DIMS.len()];
    let n = LENGTHS[i % LENGTHS.len()];
    let rows = ROWS[i % ROWS.len()];
    let group = rng.pick(&[1, 2, 4]);
    // Rows per kv head are q * group: take the q that lands nearest the wanted count.
    let q = rows.div_ceil(group).max(1);
    let kv_heads = rng.pick(&[1, 1, 2, 3]);
    let batch = rng.pick(&[1, 1, 1, 2, 3]);
    let mut lengths = vec![Some(n)];
    for _ in 1..batch {
        lengths.push(match rng.below(5) {
            0 => None,
            1 => Some(0),
            _ => Some(rng.pick(&LENGTHS)),
        });
    }
    let blocks = match rng.below(6) {
        0 => Blocks::Irregular {
            mean: rng.pick(&[1, 5, 60, 700]),
            seed: rng.next_u64(),
        },
        _ => Blocks::Uniform(rng.pick(&[1, 7, 7, 100, 100, 512, 4096])),
    };
    let data = match rng.below(9) {
        0 => Data::SharedMean,
        1 => Data::NormSpread,
        2 => Data::Integers,
        3 => Data::Crowded,
        _ => Data::Gaussian,
    };
    let k = match rng.below(4) {
        0 => n + rng.below(3), // at or above the length
        _ => rng.pick(&KS),
    };
    Spec {
        dtype,
        data,
        dim,
        lengths,
        blocks,
        q,
        kv_heads,
        group,
        k: k.max(1),
    }
}

pub(crate) fn spec(dtype: Dtype, dim: usize, n: usize, blocks: usize, q: usize, k: usize) -> Spec {
    Spec {
        dtype,
        data: Data::Gaussian,
        dim,
        lengths: vec![Some(n)],
        blocks: Blocks::Uniform(blocks),
        q,
        kv_heads: 1,
        group: 1,
        k,
    }
}

pub(crate) fn one_head(doc: Doc, queries: Vec<f32>, q: usize, k: usize) -> Problem {
    let dim = doc.dim;
    Problem {
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
    }
}
