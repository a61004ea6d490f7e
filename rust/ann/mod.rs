//! Approximate inner-product search: an HNSW graph per sealed span of a document-layer and kv
//! head, built off the append path, saved beside the chunks and memory-mapped when opened. Keys
//! are never copied into the index: searches read them from the chunks.

mod beam;
mod build;
mod dot;
mod file;
mod graph;
pub mod hnswlib;
mod query;

pub use beam::Scratch;
pub use build::{build, build_until, BuildParams, BuildSet, Graph, Linking};
pub use file::{write, SpanIndex};
pub use graph::GraphRef;
pub use query::{search, SpanRows};

/// Pulls `len` bytes at `ptr` toward the cache (a hint; no effect where unsupported).
#[inline(always)]
fn prefetch(ptr: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut line = 0;
        while line < len {
            // SAFETY: prefetching never faults, whatever the address.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    ptr.wrapping_add(line).cast(),
                )
            };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, len);
}
