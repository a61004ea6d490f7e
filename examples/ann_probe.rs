//! Probe: build and search one HNSW graph over clustered keys, printing build keys/s, and
//! recall@k / queries/s for a few ef. `cargo run --release --example ann_probe -- N DIM M EFC`.
#[path = "../benches/common/mod.rs"]
mod common;

use std::time::Instant;

use fot_mem::ann::{build, search, BuildParams, BuildSet, Linking, Scratch, SpanRows};
use fot_mem::Elements;
use rayon::prelude::*;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (n, dim, m, efc) = (a[0], a[1], a[2], a[3]);
    let mix = common::Mixture::new(dim);
    let keys = mix.rows(1, 0, n);
    let nq = 2048;
    let queries = mix.rows(2, 0, 4096);
    let k = 32;
    let t = Instant::now();
    let linking = Linking::parse(&std::env::var("LINK").unwrap_or("angular".into())).unwrap();
    let set = BuildSet::new([Elements::F32(&keys)], dim, linking);
    let g = build(
        &set,
        &BuildParams {
            m,
            ef_construction: efc,
            linking,
            seed: 7,
        },
    );
    let secs = t.elapsed().as_secs_f64();
    println!(
        "build n={n} dim={dim} m={m} efc={efc}: {secs:.2}s = {:.0} keys/s, levels {}",
        n as f64 / secs,
        g.upper.len()
    );
    // Exact truth.
    let truth: Vec<Vec<u32>> = (0..nq)
        .into_par_iter()
        .map(|i| {
            let q = &queries[i * dim..(i + 1) * dim];
            let mut s: Vec<(f32, u32)> = (0..n)
                .map(|j| {
                    (
                        q.iter()
                            .zip(&keys[j * dim..(j + 1) * dim])
                            .map(|(a, b)| a * b)
                            .sum(),
                        j as u32,
                    )
                })
                .collect();
            s.select_nth_unstable_by(k, |a, b| b.0.total_cmp(&a.0));
            s[..k].iter().map(|e| e.1).collect()
        })
        .collect();
    let rows = SpanRows::new(&[Elements::F32(&keys)], dim, n);
    let gr = g.as_ref();
    for ef in [32, 64, 128, 256, 512] {
        let t = Instant::now();
        let found: Vec<Vec<(f32, u32)>> = (0..nq)
            .into_par_iter()
            .map_init(Scratch::default, |scr, i| {
                search(&gr, &rows, &queries[i * dim..(i + 1) * dim], k, ef, scr)
            })
            .collect();
        let secs = t.elapsed().as_secs_f64();
        let hits: usize = found
            .iter()
            .zip(&truth)
            .map(|(f, t)| f.iter().filter(|e| t.contains(&e.1)).count())
            .sum();
        println!(
            "ef {ef}: recall@{k} {:.4}  {:.0} q/s",
            hits as f64 / (nq * k) as f64,
            nq as f64 / secs
        );
    }
}
