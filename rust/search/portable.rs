//! The portable exact kernel (any CPU): every key is widened to f32 and scored with a blocked
//! matrix product (queries x key tile, `matrixmultiply`), and the scores stream through a per-query
//! top-k with a running threshold, so the full score matrix is never materialised. Work is split
//! into tasks over (batch slot, kv head, block of query rows, share of the key chunks); tasks run on
//! rayon's pool and shares are merged at the end. Also the oracle the fast kernel falls back to.

use rayon::prelude::*;

use super::topk::TopK;
use super::{KeyBlock, KeySource, SearchResult, SearchShape};
use crate::dtype::Elements;

/// Query rows (query x head-in-group pairs) scored together against one key tile.
const ROW_BLOCK: usize = 256;
/// Keys scored per matrix product; the tile of scores (`ROW_BLOCK x KEY_TILE` f32) stays in L2.
const KEY_TILE: usize = 512;

/// Brute-force inner-product search in f32.
#[derive(Clone, Copy, Debug, Default)]
pub struct PortableSearch;

#[derive(Clone, Copy, Debug)]
struct Task {
    slot: usize,
    kv_head: usize,
    rows: (usize, usize),
    part: usize,
}

impl PortableSearch {
    /// Searches; inputs are already validated by [`super::Backend::search`].
    pub fn search(
        &self,
        sources: &[Option<&dyn KeySource>],
        queries: &[f32],
        shape: SearchShape,
    ) -> SearchResult {
        let group = shape.group();
        let rows = shape.q * group;
        let mut tasks = Vec::new();
        for slot in 0..shape.batch {
            for kv_head in 0..shape.kv_heads {
                for r0 in (0..rows).step_by(ROW_BLOCK) {
                    tasks.push(Task {
                        slot,
                        kv_head,
                        rows: (r0, (r0 + ROW_BLOCK).min(rows)),
                        part: 0,
                    });
                }
            }
        }
        // Few tasks (small query batches) would leave threads idle: split the chunks among parts.
        let wanted = rayon::current_num_threads() * 4;
        let parts = wanted.div_ceil(tasks.len().max(1)).max(1);
        let tasks: Vec<Task> = tasks
            .into_iter()
            .flat_map(|t| (0..parts).map(move |part| Task { part, ..t }))
            .collect();

        let partial: Vec<Vec<TopK>> = tasks
            .par_iter()
            .map(|t| match sources[t.slot] {
                Some(src) => run_task(src, queries, shape, *t, parts),
                None => vec![TopK::new(shape.k); t.rows.1 - t.rows.0],
            })
            .collect();

        let mut out = SearchResult::padding(&shape);
        let mut partial = partial.into_iter();
        for chunk in tasks.chunks(parts) {
            let t = chunk[0];
            let mut merged: Vec<TopK> = partial.next().expect("one result per task");
            for _ in 1..parts {
                for (m, o) in merged
                    .iter_mut()
                    .zip(partial.next().expect("one result per task"))
                {
                    m.merge(o);
                }
            }
            for (i, top) in merged.into_iter().enumerate() {
                out.set_row(&shape, t.slot, t.kv_head, t.rows.0 + i, top.into_sorted());
            }
        }
        out
    }
}

fn run_task(
    src: &dyn KeySource,
    queries: &[f32],
    shape: SearchShape,
    t: Task,
    parts: usize,
) -> Vec<TopK> {
    let dim = shape.dim;
    let qbuf = shape.gather_rows(queries, t.slot, t.kv_head, t.rows.0..t.rows.1);
    let blocks = src.blocks(t.kv_head);
    let mine: Vec<_> = blocks.into_iter().skip(t.part).step_by(parts).collect();
    scan(&mine, &qbuf, dim, shape.k)
}

/// The exact top-k of each row of `rows` (`[m, dim]`, f32) over the keys of `blocks`.
fn scan(blocks: &[KeyBlock], rows: &[f32], dim: usize, k: usize) -> Vec<TopK> {
    let m = rows.len() / dim;
    let mut tops = vec![TopK::new(k); m];
    let mut widened = Vec::new();
    let mut sbuf = vec![0f32; m * KEY_TILE];
    for block in blocks {
        let n_rows = block.keys.len() / dim;
        for t0 in (0..n_rows).step_by(KEY_TILE) {
            let n = KEY_TILE.min(n_rows - t0);
            let tile = block.keys.slice(t0 * dim..(t0 + n) * dim);
            let keys: &[f32] = match tile {
                Elements::F32(s) => s,
                other => {
                    widened.resize(n * dim, 0.0);
                    other.to_f32(&mut widened);
                    &widened
                }
            };
            scores_into(rows, m, keys, n, dim, &mut sbuf[..m * n]);
            let first = (block.first_id as usize + t0) as i64;
            for (i, top) in tops.iter_mut().enumerate() {
                top.push_run(&sbuf[i * n..(i + 1) * n], first);
            }
        }
    }
    tops
}

/// The exact top-k of each row of `rows` (`[m, dim]`, f32) against every key of `kv_head`, in
/// parallel over shares of the keys.
pub fn exact_rows(
    src: &dyn KeySource,
    kv_head: usize,
    rows: &[f32],
    dim: usize,
    k: usize,
) -> Vec<TopK> {
    let blocks = src.blocks(kv_head);
    let parts = (rayon::current_num_threads() * 2).min(blocks.len()).max(1);
    let shares: Vec<Vec<TopK>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let mine: Vec<_> = blocks.iter().skip(p).step_by(parts).copied().collect();
            scan(&mine, rows, dim, k)
        })
        .collect();
    let mut shares = shares.into_iter();
    let mut out = shares
        .next()
        .unwrap_or_else(|| vec![TopK::new(k); rows.len() / dim]);
    for share in shares {
        for (o, t) in out.iter_mut().zip(share) {
            o.merge(t);
        }
    }
    out
}

/// `out[i, j] = q[i, :] . keys[j, :]` for `q [m, dim]`, `keys [n, dim]`, `out [m, n]`.
fn scores_into(q: &[f32], m: usize, keys: &[f32], n: usize, dim: usize, out: &mut [f32]) {
    assert!(q.len() >= m * dim && keys.len() >= n * dim && out.len() >= m * n);
    // SAFETY: the assert above bounds every access sgemm makes with these strides.
    unsafe {
        matrixmultiply::sgemm(
            m,
            dim,
            n,
            1.0,
            q.as_ptr(),
            dim as isize,
            1,
            keys.as_ptr(),
            1,
            dim as isize,
            0.0,
            out.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{Backend, KeyBlock};

    struct InMemory {
        keys: Vec<Vec<f32>>, // per kv head, [n, dim]
        dim: usize,
        block: usize,
    }

    impl KeySource for InMemory {
        fn len(&self) -> u64 {
            (self.keys[0].len() / self.dim) as u64
        }
        fn row(&self, kv_head: usize, id: u64) -> Elements<'_> {
            let at = id as usize * self.dim;
            Elements::F32(&self.keys[kv_head][at..at + self.dim])
        }
        fn blocks(&self, kv_head: usize) -> Vec<KeyBlock<'_>> {
            self.keys[kv_head]
                .chunks(self.block * self.dim)
                .enumerate()
                .map(|(i, c)| KeyBlock {
                    first_id: (i * self.block) as u64,
                    keys: Elements::F32(c),
                })
                .collect()
        }
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn matches_naive_scan_with_grouped_heads() {
        let (kvh, heads, dim, n, q, k) = (2, 4, 8, 1100, 3, 7);
        let mut seed = 7;
        let keys: Vec<Vec<f32>> = (0..kvh)
            .map(|_| (0..n * dim).map(|_| lcg(&mut seed)).collect())
            .collect();
        let queries: Vec<f32> = (0..q * heads * dim).map(|_| lcg(&mut seed)).collect();
        let src = InMemory {
            keys,
            dim,
            block: 300,
        };
        let shape = SearchShape {
            batch: 1,
            q,
            heads,
            kv_heads: kvh,
            dim,
            k,
        };
        let got = Backend::Exact
            .search(&[Some(&src)], &queries, shape)
            .unwrap();
        for qi in 0..q {
            for h in 0..heads {
                let g = h / (heads / kvh);
                let qv = &queries[(qi * heads + h) * dim..][..dim];
                let mut all: Vec<(f32, i64)> = (0..n)
                    .map(|j| {
                        let kv = &src.keys[g][j * dim..][..dim];
                        (qv.iter().zip(kv).map(|(a, b)| a * b).sum(), j as i64)
                    })
                    .collect();
                all.sort_by(|a, b| b.0.total_cmp(&a.0));
                let base = (qi * heads + h) * k;
                for (j, want) in all.iter().take(k).enumerate() {
                    assert_eq!(got.ids[base + j], want.1, "q {qi} head {h} rank {j}");
                    assert!((got.scores[base + j] - want.0).abs() < 1e-4);
                }
            }
        }
    }

    #[test]
    fn pads_when_fewer_than_k_and_for_empty_sources() {
        let src = InMemory {
            keys: vec![vec![1.0, 0.0, 0.0, 1.0]],
            dim: 2,
            block: 8,
        };
        let shape = SearchShape {
            batch: 2,
            q: 1,
            heads: 1,
            kv_heads: 1,
            dim: 2,
            k: 3,
        };
        let got = Backend::Exact
            .search(&[Some(&src), None], &[1.0, 0.5, 1.0, 1.0], shape)
            .unwrap();
        assert_eq!(got.ids, vec![0, 1, -1, -1, -1, -1]);
        assert_eq!(got.scores[..2], [1.0, 0.5]);
        assert!(got.scores[2..].iter().all(|s| *s == f32::NEG_INFINITY));
    }
}
