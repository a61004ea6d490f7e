//! fot_mem: a persistent key/value memory for Focused Transformer (FoT) memory layers.
//!
//! A [`MemoryStore`] is a directory of documents; each document keeps, per memory layer, an
//! append-only sequence of tokens whose keys `[kv_heads, head_dim]` and values
//! `[kv_heads, value_dim]` live in memory-mapped chunk files. [`search`] finds the top-k keys by
//! inner product. The core never touches Python: the bindings live in `bindings` behind the
//! `python` feature.

pub mod ann;
pub mod budget;
pub mod dtype;
mod durable;
pub mod error;
pub mod search;
mod simd;
pub mod store;

#[cfg(feature = "python")]
mod bindings;

pub use dtype::{Dtype, Elements};
pub use error::{Error, Result};
pub use search::{Backend, Queries, SearchResult};
pub use store::{MemoryStore, StoreConfig};
