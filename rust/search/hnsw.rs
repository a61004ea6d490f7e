//! The hnsw backend: each batch slot's sealed spans that have graphs are searched through them,
//! everything else (the open tail, spans still being indexed) is scanned by the exact kernel, and
//! the two are merged per query row: best first, ties to the lower id.

use rayon::prelude::*;

use super::{exact, IndexedSpan, KeyBlock, KeySource, SearchResult, SearchShape};
use crate::ann::{search as graph_search, Scratch};
use crate::dtype::Elements;

/// A source with its indexed spans hidden, so the exact kernel scans only the rest.
struct Unindexed<'a> {
    inner: &'a dyn KeySource,
    covered: Vec<(u64, u64)>,
}

impl KeySource for Unindexed<'_> {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn row(&self, kv_head: usize, id: u64) -> Elements<'_> {
        self.inner.row(kv_head, id)
    }

    fn blocks(&self, kv_head: usize) -> Vec<KeyBlock<'_>> {
        let mut b = self.inner.blocks(kv_head);
        b.retain(|b| {
            !self
                .covered
                .iter()
                .any(|&(lo, hi)| (lo..hi).contains(&b.first_id))
        });
        b
    }
}

pub fn search(
    sources: &[Option<&dyn KeySource>],
    queries: &[f32],
    shape: SearchShape,
    ef: usize,
) -> SearchResult {
    // spans[slot][kv_head]
    let spans: Vec<Vec<Vec<IndexedSpan>>> = sources
        .iter()
        .map(|s| {
            s.map_or_else(Vec::new, |s| {
                (0..shape.kv_heads).map(|h| s.indexed(h)).collect()
            })
        })
        .collect();
    let rest: Vec<Option<Unindexed>> = sources
        .iter()
        .zip(&spans)
        .map(|(s, sp)| {
            s.map(|inner| Unindexed {
                inner,
                covered: sp.first().map_or_else(Vec::new, |h| {
                    h.iter()
                        .map(|x| (x.first_id, x.first_id + x.rows.len() as u64))
                        .collect()
                }),
            })
        })
        .collect();
    let unindexed = rest
        .iter()
        .flatten()
        .any(|u| u.len() > u.covered.iter().map(|c| c.1 - c.0).sum::<u64>());
    let mut out = if unindexed {
        let rest_sources: Vec<Option<&dyn KeySource>> = rest
            .iter()
            .map(|u| u.as_ref().map(|u| u as &dyn KeySource))
            .collect();
        exact::search(&rest_sources, queries, shape)
    } else {
        SearchResult::padding(&shape)
    };
    if spans.iter().all(|s| s.iter().all(|h| h.is_empty())) {
        return out;
    }
    let m = shape.q * shape.group();
    let tasks: Vec<(usize, usize, usize)> = (0..shape.batch)
        .flat_map(|b| (0..shape.kv_heads).flat_map(move |g| (0..m).map(move |r| (b, g, r))))
        .filter(|&(b, g, _)| !spans[b].is_empty() && !spans[b][g].is_empty())
        .collect();
    let k = shape.k;
    let merged: Vec<Vec<(f32, i64)>> = tasks
        .par_iter()
        .map_init(Scratch::default, |scr, &(b, g, r)| {
            let qi = shape.row_index(b, g, r);
            let query = &queries[qi * shape.dim..(qi + 1) * shape.dim];
            let mut all: Vec<(f32, i64)> = (0..k)
                .map(|j| (out.scores[qi * k + j], out.ids[qi * k + j]))
                .filter(|e| e.1 >= 0)
                .collect();
            for sp in &spans[b][g] {
                let found = graph_search(&sp.graph, &sp.rows, query, k, ef, scr);
                all.extend(
                    found
                        .into_iter()
                        .map(|(s, id)| (s, sp.first_id as i64 + id as i64)),
                );
            }
            all.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            all.truncate(k);
            all
        })
        .collect();
    for (&(b, g, r), best) in tasks.iter().zip(merged) {
        out.set_row(&shape, b, g, r, best);
    }
    out
}
