//! How a search is cut into tasks: per (slot, kv head), shares of the keys times blocks of the
//! query rows, about four tasks a thread.

use std::sync::OnceLock;

use super::super::{KeySource, SearchShape};

/// The fewest keys worth a task of their own.
const SEGMENT_MIN: usize = 8192;
/// The most query rows for which tasks split keys before rows (AMX tiles too: on the Xeon host,
/// 2048 real queries against 131K real keys took 0.140 s with this split and 0.416 s with tasks
/// that kept all 2048 rows; packing is a few percent of a search either way, while tasks that
/// split keys each start their candidates cold).
const ROWS_MAX: usize = 512;

/// Tasks per thread: enough to balance the threads when tasks run unevenly.
const TASKS_PER_THREAD: usize = 4;

/// The benchmark knob `$name` if set to a number, else `default` (read once per process; at
/// least 1). `$FOT_MEM_EXACT_ROWS_MAX` moves [`ROWS_MAX`], `$FOT_MEM_EXACT_TASKS_PER_THREAD`
/// [`TASKS_PER_THREAD`] (fewer tasks that split rows pack each key fewer times).
fn knob(cell: &'static OnceLock<Option<usize>>, name: &str, default: usize) -> usize {
    cell.get_or_init(|| std::env::var(name).ok().and_then(|v| v.parse().ok()))
        .unwrap_or(default)
        .max(1)
}

/// The fewest query rows worth a task of their own (fewer would repack keys for little work).
const ROWS_MIN: usize = 128;

/// One task: a share of the keys of (slot, kv head) against a block of its query rows.
#[derive(Clone, Copy, Debug)]
pub(super) struct Item {
    pub(super) slot: usize,
    pub(super) kv_head: usize,
    pub(super) keys: (u64, u64),
    pub(super) rows: (usize, usize),
}

pub(super) fn plan(sources: &[Option<&dyn KeySource>], shape: &SearchShape) -> Vec<Item> {
    static ROWS: OnceLock<Option<usize>> = OnceLock::new();
    static TASKS: OnceLock<Option<usize>> = OnceLock::new();
    let rows_max = knob(&ROWS, "FOT_MEM_EXACT_ROWS_MAX", ROWS_MAX);
    let tasks = knob(&TASKS, "FOT_MEM_EXACT_TASKS_PER_THREAD", TASKS_PER_THREAD);
    let want = rayon::current_num_threads() * tasks;
    let base = (shape.batch * shape.kv_heads).max(1);
    let m = shape.q * shape.group();
    let mut items = Vec::new();
    for (slot, src) in sources.iter().enumerate() {
        let n = src.map_or(0, |s| s.len());
        // Up to `rows_max` rows, split keys: every key is then packed once (packing costs as much
        // as scoring a few dozen rows), and a task's rows are read from L1/L2 while one group of
        // keys stays in L1. Beyond, split rows first (each row's candidates then see every key
        // once, so their threshold rises early, and the rows of a task stay in L2).
        let (segments, row_blocks) = if m <= rows_max {
            let segments = want
                .div_ceil(base)
                .clamp(1, (n as usize / SEGMENT_MIN).max(1));
            let rows = want
                .div_ceil(base * segments)
                .clamp(1, m.div_ceil(ROWS_MIN).max(1));
            (segments, rows)
        } else {
            let rows = want.div_ceil(base).clamp(1, m.div_ceil(ROWS_MIN).max(1));
            let segments = if base * rows < want {
                want.div_ceil(base * rows)
                    .clamp(1, (n as usize / SEGMENT_MIN).max(1))
            } else {
                1
            };
            (segments, rows)
        };
        for kv_head in 0..shape.kv_heads {
            for s in 0..segments as u64 {
                let keys = (n * s / segments as u64, n * (s + 1) / segments as u64);
                for b in 0..row_blocks {
                    let rows = (m * b / row_blocks, m * (b + 1) / row_blocks);
                    items.push(Item {
                        slot,
                        kv_head,
                        keys,
                        rows,
                    });
                }
            }
        }
    }
    items
}
