//! hnswlib's index files, which the Python `hnswlib` backend caches beside the chunks
//! (`hnswlib-<span>-h<head>.bin`). hnswlib trusts every byte it loads: a wrong entry point, link
//! count or link id makes its search read out of bounds and kill the process. So no file reaches
//! hnswlib unless [`check`] accepts its structure and its seal (a sidecar holding the file's size,
//! checksum and parameters, written after the file) matches it.

mod format;
mod seal;

pub use format::{check, Params};
pub use seal::{check_sealed, seal_path, write_seal, Seal};
