//! The background index builder of a writer: sealed spans queue here and one thread builds their
//! graphs (each build spreads over the rayon pool) and writes the index files, so appends never
//! wait for a build. Until a span's file exists, searches scan that span exactly. A process that
//! dies mid-build leaves at most a temporary file, which the next writer removes before building
//! the span again.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use super::chunk::Chunk;
use super::config::StoreConfig;
use crate::ann::{build_until, write, BuildSet, Graph};
use crate::dtype::Elements;
use crate::error::{Error, Result};

/// One sealed span to index: its file, first token, and the chunks holding it.
pub struct SpanJob {
    pub path: PathBuf,
    pub first: u64,
    pub chunks: Vec<Arc<Chunk>>,
    pub config: Arc<StoreConfig>,
}

/// What the builder has done since the store was opened.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IndexStats {
    /// Spans waiting or being built.
    pub pending: usize,
    /// Span files written.
    pub built: u64,
    /// Keys indexed (tokens x kv heads).
    pub keys: u64,
    /// Seconds spent building and writing.
    pub seconds: f64,
    /// Failures, one line each.
    pub errors: Vec<String>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<SpanJob>,
    queued: HashSet<PathBuf>,
    /// The file of the job being built.
    running: Option<PathBuf>,
    stats: IndexStats,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Set for good when the indexer is dropped.
    stop: AtomicBool,
    /// Set to abandon the running build (its document is being deleted); reset per job.
    skip: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The builder; dropping it cancels what is queued and stops the running build at its next
/// batch (the span is then built by a later writer).
pub struct Indexer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Indexer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Indexer")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Default for Indexer {
    fn default() -> Self {
        Indexer {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
                stop: AtomicBool::new(false),
                skip: AtomicBool::new(false),
            }),
            thread: None,
        }
    }
}

impl Indexer {
    /// Queues a span unless it is queued already.
    pub fn submit(&mut self, job: SpanJob) {
        let mut st = self.shared.lock();
        if st.queued.insert(job.path.clone()) {
            st.queue.push_back(job);
            st.stats.pending += 1;
            self.shared.changed.notify_all();
        }
        drop(st);
        if self.thread.is_none() {
            let shared = Arc::clone(&self.shared);
            self.thread = Some(std::thread::spawn(move || worker(&shared)));
        }
    }

    /// Blocks until nothing is queued or running; fails with the first error since the last wait.
    pub fn wait(&self) -> Result<IndexStats> {
        let mut st = self.shared.lock();
        while !st.queue.is_empty() || st.running.is_some() {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        let stats = st.stats.clone();
        if let Some(first) = st.stats.errors.drain(..).next() {
            return Err(Error::Io {
                path: PathBuf::new(),
                source: std::io::Error::other(format!("building an hnsw index failed: {first}")),
            });
        }
        Ok(stats)
    }

    pub fn stats(&self) -> IndexStats {
        self.shared.lock().stats.clone()
    }

    /// Drops the queued jobs under `dir` and waits out a running one there, so the directory
    /// can be removed (a deleted document) without a build writing into it meanwhile.
    pub fn forget(&self, dir: &std::path::Path) {
        let mut st = self.shared.lock();
        let before = st.queue.len();
        st.queue.retain(|j| !j.path.starts_with(dir));
        let dropped = before - st.queue.len();
        st.stats.pending = st.stats.pending.saturating_sub(dropped);
        let State { queue, queued, .. } = &mut *st;
        queued.retain(|p| !p.starts_with(dir) || queue.iter().any(|j| &j.path == p));
        if st.running.as_ref().is_some_and(|p| p.starts_with(dir)) {
            self.shared.skip.store(true, Ordering::Relaxed);
        }
        while st.running.as_ref().is_some_and(|p| p.starts_with(dir)) {
            st = self
                .shared
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.skip.store(true, Ordering::Relaxed);
        let mut st = self.shared.lock();
        st.queue.clear();
        self.shared.changed.notify_all();
    }
}

fn worker(shared: &Shared) {
    loop {
        let job = {
            let mut st = shared.lock();
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    st.running = None;
                    shared.changed.notify_all();
                    return;
                }
                if let Some(job) = st.queue.pop_front() {
                    st.running = Some(job.path.clone());
                    shared.skip.store(false, Ordering::Relaxed);
                    break job;
                }
                st = shared.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        let t = Instant::now();
        // A panic must not kill the thread with the job marked running: waiters would hang.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&job, &shared.skip)))
                .unwrap_or_else(|_| {
                    Err(Error::Io {
                        path: job.path.clone(),
                        source: std::io::Error::other(
                            "the index build panicked (a bug in fot_mem)",
                        ),
                    })
                });
        let mut st = shared.lock();
        st.queued.remove(&job.path);
        st.stats.pending = st.stats.pending.saturating_sub(1);
        match outcome {
            Ok(Some(keys)) => {
                st.stats.built += 1;
                st.stats.keys += keys;
                st.stats.seconds += t.elapsed().as_secs_f64();
            }
            Ok(None) => {}
            Err(e) => st.stats.errors.push(format!("{}: {e}", job.path.display())),
        }
        st.running = None;
        shared.changed.notify_all();
    }
}

/// Builds and writes one span's file; `None` when stopped or when the document went away.
fn run(job: &SpanJob, stop: &AtomicBool) -> Result<Option<u64>> {
    let cfg = &job.config;
    let hnsw = cfg.hnsw.as_ref().expect("jobs exist only for hnsw stores");
    let params = hnsw.build_params();
    let (ct, hd) = (cfg.chunk_tokens as usize, cfg.head_dim as usize);
    let row = hd * cfg.dtype.size();
    let mut graphs: Vec<Graph> = Vec::with_capacity(cfg.kv_heads as usize);
    for h in 0..cfg.kv_heads as usize {
        let runs = job
            .chunks
            .iter()
            .map(|c| Elements::from_bytes(cfg.dtype, c.key_bytes(h * ct * row, ct * row)));
        let set = BuildSet::new(runs, hd, params.linking);
        match build_until(&set, &params, stop) {
            Some(g) => graphs.push(g),
            None => return Ok(None),
        }
    }
    if !job.path.parent().is_some_and(|d| d.exists()) {
        return Ok(None);
    }
    write(&job.path, job.first, cfg.head_dim, &params, &graphs)?;
    Ok(Some(cfg.kv_heads as u64 * (job.chunks.len() * ct) as u64))
}
