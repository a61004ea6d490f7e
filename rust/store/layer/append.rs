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
