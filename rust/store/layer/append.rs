//! The data writes of a layer append: each (chunk, kv head, keys or values) run of the new rows is
//! one piece, encoded block by block into a small buffer and written through the chunk file
//! (`ChunkFile::write_at`), then every file the append touched is fdatasync'ed. Large appends
//! write their pieces on a few threads; nothing is committed here (the caller commits after).
//!
//! An error is the one the serial, token-major pass meets first: an encoding error (non-finite
//! or out-of-range data) whatever piece found it, else the I/O error of the first failing piece
//! in (chunk, head, keys then values) order, then of the first failing sync.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::super::chunk::{Chunk, ChunkFile};
use super::super::config::StoreConfig;
use crate::dtype::{Dtype, Elements};
use crate::error::{Error, Result};

/// Bytes encoded per `write_at`: small enough to stay in cache, large enough that the system
/// calls cost nothing next to the copy.
const BLOCK_BYTES: usize = 256 << 10;
/// Appends of fewer bytes are written on the calling thread alone (threads cost more than they
/// save there).
const PARALLEL_MIN_BYTES: usize = 4 << 20;
/// At most this many threads write one append.
const MAX_THREADS: usize = 8;
/// Overrides the thread count of large appends (1: serial), for measurements.
pub const THREADS_ENV: &str = "FOT_MEM_APPEND_THREADS";

/// The threads to write an append of `bytes` in `pieces` pieces: `forced` (tests) or
/// `$FOT_MEM_APPEND_THREADS` if set, else one below `PARALLEL_MIN_BYTES`, else
/// min(pieces, available parallelism, `MAX_THREADS`).
pub(super) fn threads_for(pieces: usize, bytes: usize, forced: Option<usize>) -> usize {
    let chosen = forced.or_else(|| {
        std::env::var(THREADS_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
    });
    let threads = match chosen {
        Some(n) => n,
        None if bytes < PARALLEL_MIN_BYTES => 1,
        None => std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS)),
    };
    threads.clamp(1, pieces.max(1))
}

/// One run to write: kv head `head`'s keys (or values) of the append's tokens in chunk `chunk`.
#[derive(Clone, Copy, Debug)]
struct Piece {
    chunk: usize,
    head: usize,
    values: bool,
}

/// Writes tokens `start..end` (`keys` / `values` flat, token-major, for exactly those tokens) into
/// `chunks` and syncs them, on up to `threads` threads (see `threads_for`). `dir` names the layer
/// in the error a panicking writer thread becomes.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_rows(
    dir: &Path,
    cfg: &StoreConfig,
    chunks: &[Arc<Chunk>],
    keys: Elements,
    values: Elements,
    start: usize,
    end: usize,
    forced_threads: Option<usize>,
) -> Result<()> {
    let (kvh, hd, vd) = (
        cfg.kv_heads as usize,
        cfg.head_dim as usize,
        cfg.value_dim as usize,
    );
    let (ct, dtype, es) = (cfg.chunk_tokens as usize, cfg.dtype, cfg.dtype.size());
    let touched = start / ct..end.div_ceil(ct);
    let pieces: Vec<Piece> = touched
        .clone()
        .flat_map(|chunk| {
            (0..kvh).flat_map(move |head| {
                [false, true].map(|values| Piece {
                    chunk,
                    head,
                    values,
                })
            })
        })
        .collect();
    let files: Vec<&ChunkFile> = touched
        .flat_map(|c| [&chunks[c].keys, &chunks[c].values])
        .collect();
    let bytes = (end - start) * kvh * (hd + vd) * es;
    let threads = threads_for(pieces.len(), bytes, forced_threads);

    let write = |p: &Piece, buf: &mut Vec<u8>| -> Result<()> {
        let (lo, hi) = (start.max(p.chunk * ct), end.min((p.chunk + 1) * ct));
        let chunk = &chunks[p.chunk];
        let (file, src, dim, what) = match p.values {
            false => (&chunk.keys, &keys, hd, "keys"),
            true => (&chunk.values, &values, vd, "values"),
        };
        let row_bytes = dim * es;
        let per_block = (BLOCK_BYTES / row_bytes).max(1);
        let mut tok = lo;
        while tok < hi {
            let n = per_block.min(hi - tok);
            buf.resize(n * row_bytes, 0);
            for (r, out) in buf.chunks_exact_mut(row_bytes).enumerate() {
                let s = ((tok + r - start) * kvh + p.head) * dim;
                src.slice(s..s + dim).encode_into(dtype, out, what, s)?;
            }
            let row = p.head * ct + tok - p.chunk * ct;
            file.write_at(row * row_bytes, buf)?;
            tok += n;
        }
        Ok(())
    };
    for_each(dir, pieces.len(), threads, |i, buf| write(&pieces[i], buf))
        .and_then(|()| {
            for_each(dir, files.len(), threads.min(files.len()), |i, _| {
                files[i].sync()
            })
        })
        .map_err(|e| first_error(&keys, &values, dtype, kvh, hd, vd).unwrap_or(e))
}

/// Runs `f(i, buffer)` for `i` in `0..n` on `threads` threads (the calling one included), each
/// with its own reusable buffer. Items are taken in order; after a failure no new one starts, so
/// the error returned (that of the lowest failing item) is the one a serial loop meets. A panic
/// in `f` becomes an error, never unwinds into the caller.
fn for_each<F>(dir: &Path, n: usize, threads: usize, f: F) -> Result<()>
where
    F: Fn(usize, &mut Vec<u8>) -> Result<()> + Sync,
{
    if threads <= 1 || n <= 1 {
        let mut buf = Vec::new();
        return (0..n).try_for_each(|i| f(i, &mut buf));
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first: Mutex<Option<(usize, Error)>> = Mutex::new(None);
    let work = || {
        let mut buf = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            if let Err(e) = f(i, &mut buf) {
                failed.store(true, Ordering::Relaxed);
                let mut first = first.lock().unwrap_or_else(PoisonError::into_inner);
                if first.as_ref().is_none_or(|&(j, _)| i < j) {
                    *first = Some((i, e));
                }
            }
        }
    };
    let panicked = std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads.min(n)).map(|_| s.spawn(work)).collect();
        let mine = catch_unwind(AssertUnwindSafe(work)).is_err();
        handles
            .into_iter()
            .fold(mine, |any, h| h.join().is_err() || any)
    });
    if panicked {
        return Err(Error::io(
            dir,
            std::io::Error::other("a thread writing an append panicked; nothing was committed"),
        ));
    }
    match first.into_inner().unwrap_or_else(PoisonError::into_inner) {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// The encoding error a token-major pass over `keys` then `values` meets first (None: none).
fn first_error(
    keys: &Elements,
    values: &Elements,
    dtype: Dtype,
    kvh: usize,
    hd: usize,
    vd: usize,
) -> Option<Error> {
    let tokens = keys.len() / (kvh * hd);
    let mut kbuf = vec![0u8; hd * dtype.size()];
    let mut vbuf = vec![0u8; vd * dtype.size()];
    for t in 0..tokens {
        for h in 0..kvh {
            let src = (t * kvh + h) * hd;
            if let Err(e) = keys
                .slice(src..src + hd)
                .encode_into(dtype, &mut kbuf, "keys", src)
            {
                return Some(e);
            }
            let src = (t * kvh + h) * vd;
            if let Err(e) = values
                .slice(src..src + vd)
                .encode_into(dtype, &mut vbuf, "values", src)
            {
                return Some(e);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use half::bf16;

    use super::super::super::chunk::OpenMode;
    use super::super::LayerMemory;
    use super::*;

    const KVH: usize = 3;
    const HD: usize = 8;
    /// Different from `HD` so that a mix-up of keys and values rows shows.
    const VD: usize = 5;
    const CT: u32 = 7;

    fn config(dtype: Dtype) -> Arc<StoreConfig> {
        Arc::new(StoreConfig {
            layers: vec![0],
            kv_heads: KVH as u32,
            head_dim: HD as u32,
            value_dim: VD as u32,
            dtype,
            chunk_tokens: CT,
            hnsw: None,
        })
    }

    /// Keys and values of `n` tokens, distinct for every (token, head, element), exact in bf16.
    fn tokens(first: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let f = |t: usize, h: usize, e: usize, v: usize| {
            ((t * 7 + h * 3 + e + v * 11) % 97) as f32 - 48.0
        };
        let mut k = Vec::new();
        let mut v = Vec::new();
        for t in first..first + n {
            for h in 0..KVH {
                k.extend((0..HD).map(|e| f(t, h, e, 0)));
                v.extend((0..VD).map(|e| f(t, h, e, 1)));
            }
        }
        (k, v)
    }

    fn layer(dir: &Path, dtype: Dtype, writable: bool) -> LayerMemory {
        LayerMemory::open(dir, config(dtype), writable, false).unwrap()
    }

    fn assert_holds(layer: &LayerMemory, n: usize) {
        assert_eq!(layer.len(), n as u64);
        let (k, v) = tokens(0, n);
        let (mut key, mut value) = ([0f32; HD], [0f32; VD]);
        for t in 0..n {
            for h in 0..KVH {
                layer.read_token(h, t as u64, &mut key, &mut value);
                let i = t * KVH + h;
                assert_eq!(
                    key[..],
                    k[i * HD..(i + 1) * HD],
                    "keys of token {t} head {h}"
                );
                assert_eq!(
                    value[..],
                    v[i * VD..(i + 1) * VD],
                    "values of token {t} head {h}"
                );
            }
        }
    }

    fn append(layer: &mut LayerMemory, n: usize, threads: usize) -> Result<u64> {
        let (k, v) = tokens(layer.len() as usize, n);
        layer.append_threads(Elements::F32(&k), Elements::F32(&v), Some(threads))
    }

    fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "keys" || e == "values"))
            .map(|p| {
                (
                    PathBuf::from(p.file_name().unwrap()),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn parallel_appends_of_several_heads_and_chunks_round_trip() {
        // Inside a chunk, to a boundary, across one and across several, each on 1 and 4 threads:
        // the same files byte for byte, and every token reads back.
        let sizes = [3usize, 4, 9, 20, 1, 15];
        for dtype in [Dtype::Float32, Dtype::Bfloat16, Dtype::Float16] {
            let (serial, parallel) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let mut a = layer(serial.path(), dtype, true);
            let mut b = layer(parallel.path(), dtype, true);
            let mut total = 0;
            for n in sizes {
                total += n as u64;
                assert_eq!(append(&mut a, n, 1).unwrap(), total);
                assert_eq!(append(&mut b, n, 4).unwrap(), total);
            }
            assert_holds(&b, total as usize);
            assert_eq!(files(serial.path()), files(parallel.path()), "{dtype:?}");
            drop(b);
            assert_holds(&layer(parallel.path(), dtype, false), total as usize);
        }
    }

    #[test]
    fn a_failing_piece_fails_the_append_and_keeps_the_committed_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = layer(dir.path(), Dtype::Bfloat16, true);
        append(&mut w, 10, 4).unwrap();
        // Chunk 1's values file turns read-only: of the next append's 24 pieces (chunks 1 to 3,
        // 3 heads, keys and values), those three fail; the first of them is reported.
        let cfg = config(Dtype::Bfloat16);
        let open = |name: &str, dim: u32, writable: bool| {
            let mode = OpenMode::Committed { writable };
            ChunkFile::open(&dir.path().join(name), cfg.chunk_bytes(dim), mode).unwrap()
        };
        w.chunks[1] = Arc::new(Chunk {
            keys: open("000001.keys", HD as u32, true),
            values: open("000001.values", VD as u32, false),
        });
        for threads in [4, 1] {
            match append(&mut w, 12, threads) {
                Err(Error::ReadOnly(msg)) => assert!(msg.contains("000001.values"), "{msg}"),
                other => panic!("expected a read-only error, got {other:?}"),
            }
            assert_holds(&w, 10);
        }
        drop(w);
        assert_holds(&layer(dir.path(), Dtype::Bfloat16, false), 10);
        // A new writer appends where the committed tokens end.
        let mut w = layer(dir.path(), Dtype::Bfloat16, true);
        append(&mut w, 12, 4).unwrap();
        assert_holds(&w, 22);
    }

    #[test]
    fn encoding_errors_are_the_serial_passs_first_whatever_the_threads() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = layer(dir.path(), Dtype::Bfloat16, true);
        append(&mut w, 4, 1).unwrap();
        let (mut k, mut v) = tokens(4, 30);
        // Token 9 of this append, head 2, values; token 20, head 0, keys (in a later chunk and
        // an earlier piece order), and a value out of bf16's range at token 25.
        v[(9 * KVH + 2) * VD + 1] = f32::NAN;
        k[(20 * KVH) * HD] = f32::INFINITY;
        v[(25 * KVH + 1) * VD] = f32::MAX;
        let serial = w
            .append_threads(Elements::F32(&k), Elements::F32(&v), Some(1))
            .unwrap_err()
            .to_string();
        for threads in [2, 4, 8] {
            let err = w
                .append_threads(Elements::F32(&k), Elements::F32(&v), Some(threads))
                .unwrap_err();
            assert!(matches!(err, Error::Value(_)), "{err:?}");
            assert_eq!(err.to_string(), serial);
            assert_holds(&w, 4);
        }
        let kb: Vec<bf16> = k.iter().map(|&x| bf16::from_f32(x)).collect();
        let vb: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
        let err = w
            .append_threads(Elements::Bf16(&kb), Elements::Bf16(&vb), Some(4))
            .unwrap_err();
        assert!(err.to_string().contains("values"), "{err}");
        assert_holds(&w, 4);
    }

    #[test]
    fn for_each_reports_the_lowest_failing_item_and_turns_panics_into_errors() {
        let dir = Path::new("/layer");
        for threads in [1, 2, 4, 8] {
            let err = for_each(dir, 40, threads, |i, _| match i {
                13 | 17 | 30 => Err(Error::Index(format!("item {i}"))),
                _ => Ok(()),
            })
            .unwrap_err();
            assert_eq!(err.to_string(), "item 13", "{threads} threads");
            let done = AtomicUsize::new(0);
            for_each(dir, 40, threads, |_, buf| {
                buf.resize(10, 1);
                done.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
            .unwrap();
            assert_eq!(done.into_inner(), 40);
        }
        let err = for_each(dir, 8, 4, |i, _| {
            assert!(i != 5, "piece {i} fails");
            Ok(())
        })
        .unwrap_err();
        assert!(
            matches!(&err, Error::Io { path, .. } if path == dir)
                && err.to_string().contains("panicked"),
            "{err:?}"
        );
    }

    #[test]
    fn threads_stay_within_pieces_and_small_appends_stay_serial() {
        assert_eq!(threads_for(4, 1 << 30, Some(16)), 4);
        assert_eq!(threads_for(4, 1 << 30, Some(0)), 1);
        assert_eq!(threads_for(4, 1 << 30, Some(3)), 3);
        if std::env::var_os(THREADS_ENV).is_none() {
            assert_eq!(threads_for(64, 1000, None), 1);
            let big = threads_for(64, 1 << 30, None);
            assert!((1..=MAX_THREADS).contains(&big), "{big}");
        }
    }
}
