//! Counters of the fast exact kernel, apart from the kernel choice (`exact`) so that the kernel
//! (`fast`) counts without depending on what dispatches to it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the fast kernel (process-wide, monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExactStats {
    /// Query rows searched by the fast kernel.
    pub rows: u64,
    /// Rows whose bf16 candidates could not be certified and were rescanned in f32.
    pub fallback_rows: u64,
}

pub(crate) static ROWS: AtomicU64 = AtomicU64::new(0);
pub(crate) static FALLBACK_ROWS: AtomicU64 = AtomicU64::new(0);

/// The counters so far.
pub fn stats() -> ExactStats {
    ExactStats {
        rows: ROWS.load(Ordering::Relaxed),
        fallback_rows: FALLBACK_ROWS.load(Ordering::Relaxed),
    }
}
