//! Probe of one hnsw graph over keys/queries from .npy files (float32 [n, d], e.g. those of
//! benches/compare/extract_keys.py): build keys/s and, per ef, recall@32 against brute force and queries/s
//! (wall median and best of 7, and per CPU-second, which load from other processes on a shared
//! machine disturbs less). Not a benchmark of record (benches/compare/compare_ann.py is); for A/B work.
//!
//!     cargo run --release --example ann_probe -- KEYS.npy QUERIES.npy [efc] [efs,..]
//!
//! Env: PROBE_REUSE=1 (reuse the graph written beside the keys), PROBE_NOCODES=1 (walk on the
//! f32 keys, as for a format-1 file), PROBE_BUILD_ONLY=1 (stop after the build), PROBE_SEED=<hex>
//! (the level/order seed; the store's is 0f076e3d). Brute-force answers are cached beside the queries.
use std::time::Instant;

use fot_mem::ann::{
    build, search, write, BuildParams, BuildSet, Linking, Scratch, SpanIndex, SpanRows,
};
use fot_mem::Elements;
use rayon::prelude::*;

fn npy(path: &str) -> (Vec<f32>, usize, usize) {
    let b = std::fs::read(path).unwrap();
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    let h = std::str::from_utf8(&b[10..10 + hl]).unwrap();
    let s = h.find("'shape': (").unwrap() + 10;
    let e = s + h[s..].find(')').unwrap();
    let dims: Vec<usize> = h[s..e]
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();
    let data: Vec<f32> = b[10 + hl..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (data, dims[0], dims[1])
}

/// CPU seconds (user + system) of this process so far, from /proc/self/stat.
fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split(' ').collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (mut keys, mut n, d) = npy(&a[1]);
    let (queries, nq, _) = npy(&a[2]);
    let efc: usize = a.get(3).map_or(100, |s| s.parse().unwrap());
    let efs: Vec<usize> = a
        .get(4)
        .map_or("64,96,128,192,256,384".into(), |s| s.clone())
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    n = n / 4096 * 4096;
    keys.truncate(n * d);
    let k = 32;
    let cache = format!("{}.truth{n}", a[2]);
    let truth: Vec<Vec<u32>> = if let Ok(b) = std::fs::read(&cache) {
        b.chunks_exact(4 * k)
            .map(|c| {
                c.chunks_exact(4)
                    .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
                    .collect()
            })
            .collect()
    } else {
        let t: Vec<Vec<u32>> = (0..nq)
            .into_par_iter()
            .map(|qi| {
                let q = &queries[qi * d..(qi + 1) * d];
                let mut s: Vec<(f32, u32)> = (0..n)
                    .map(|i| {
                        (
                            keys[i * d..(i + 1) * d]
                                .iter()
                                .zip(q)
                                .map(|(a, b)| a * b)
                                .sum(),
                            i as u32,
                        )
                    })
                    .collect();
                s.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
                s[..k].iter().map(|e| e.1).collect()
            })
            .collect();
        let b: Vec<u8> = t.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(&cache, b).unwrap();
        t
    };
    let p = BuildParams {
        m: 16,
        ef_construction: efc,
        linking: Linking::Hybrid,
        seed: std::env::var("PROBE_SEED").map_or(7, |s| u64::from_str_radix(&s, 16).unwrap()),
    };
    if std::env::var("PROBE_SKIP_BUILD").is_ok() {
        return;
    }
    let gpath = std::path::PathBuf::from(format!("{}.efc{efc}.idx", a[1]));
    if std::env::var("PROBE_REUSE").is_err() || !gpath.exists() {
        let c0 = cpu();
        let t = Instant::now();
        let runs: Vec<Elements> = keys.chunks(4096 * d).map(Elements::F32).collect();
        let set = BuildSet::new(runs, d, p.linking);
        let g = build(&set, &p);
        let bt = t.elapsed().as_secs_f64();
        let bc = (cpu() - c0) / 2.0;
        println!(
            "n {n} d {d} efc {efc}: build {:.0} keys/s wall ({bt:.2} s), {:.0} keys/s per 2 cpu-s",
            n as f64 / bt,
            n as f64 / bc
        );
        write(&gpath, 0, d as u32, &p, &[g]).unwrap();
    }
    if std::env::var("PROBE_BUILD_ONLY").is_ok() {
        return;
    }
    let ix = SpanIndex::open(&gpath).unwrap();
    let rows = SpanRows::new(&[Elements::F32(&keys)], d, n);
    let mut gr = ix.graph(0);
    if std::env::var("PROBE_NOCODES").is_ok() {
        gr.codes = None;
    }
    for &ef in &efs {
        let mut times = Vec::new();
        let mut ctimes = Vec::new();
        let mut rec = 0.0;
        for _ in 0..7 {
            let c0 = cpu();
            let t = Instant::now();
            let found: Vec<Vec<(f32, u32)>> = (0..5 * nq)
                .into_par_iter()
                .map(|i| i % nq)
                .map_init(Scratch::default, |scr, i| {
                    search(&gr, &rows, &queries[i * d..(i + 1) * d], k, ef, scr)
                })
                .collect();
            times.push(t.elapsed().as_secs_f64());
            ctimes.push((cpu() - c0) / 2.0);
            let hits: usize = found
                .iter()
                .take(nq)
                .zip(&truth)
                .map(|(f, t)| f.iter().filter(|e| t.contains(&e.1)).count())
                .sum();
            rec = hits as f64 / (nq * k) as f64;
        }
        times.sort_by(f64::total_cmp);
        ctimes.sort_by(f64::total_cmp);
        println!(
            "  ef {ef:4}: recall {rec:.4}  {:.0} q/s wall median, {:.0} best; {:.0} q/s per 2 cpu-s (median)",
            5.0 * nq as f64 / times[3],
            5.0 * nq as f64 / times[0],
            5.0 * nq as f64 / ctimes[3]
        );
    }
}
