//! Approximate inner-product search: an HNSW graph per sealed span of a document-layer and kv
//! head, built off the append path, saved beside the chunks and memory-mapped when opened. Keys
//! are never copied into the index: searches read them from the chunks.

mod beam;
mod build;
mod dot;
mod file;
mod graph;
pub mod hnswlib;
mod params;
mod query;

pub use beam::Scratch;
pub use build::{build, build_until, BuildSet};
pub use file::{write, SpanIndex};
pub use graph::{Graph, GraphRef};
pub use params::{BuildParams, Linking};
pub use query::{search, SpanRows};
