//! The one error type of the core. Every variant carries the numbers a user needs to fix the call;
//! the bindings map each variant to one Python exception class.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in the store or in search.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No store exists at the path.
    #[error("no fot_mem store at {path}: {reason}")]
    NotFound { path: PathBuf, reason: String },
    /// The path exists but does not hold a store (or is not empty when creating one).
    #[error("{0}")]
    NotAStore(String),
    /// A store already exists where one was to be created.
    #[error("{0}")]
    Exists(String),
    /// Files of the store are damaged: bad checksum, wrong size, unreadable metadata.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The store was written by a format version this build cannot read.
    #[error(
        "{path} has format version {found}; this build of fot_mem reads versions 1 to {supported}"
    )]
    Version {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// Another handle already holds the store's writer lock.
    #[error("{0}")]
    Locked(String),
    /// A write was attempted through a read-only handle.
    #[error("{0}")]
    ReadOnly(String),
    /// The handle was used after `close()`.
    #[error("the store at {0} is closed")]
    Closed(PathBuf),
    /// An array has the wrong number of dimensions or the wrong size along one of them.
    #[error("{0}")]
    Shape(String),
    /// An array has an element type the store cannot take.
    #[error("{0}")]
    Dtype(String),
    /// A value is out of range: NaN or infinite data, k <= 0, a bad configuration number.
    #[error("{0}")]
    Value(String),
    /// The layer is not one of the store's memory layers.
    #[error("layer {layer} is not a memory layer of this store (memory layers: {layers:?})")]
    UnknownLayer { layer: i64, layers: Vec<u32> },
    /// A token id is outside the committed part of a document-layer.
    #[error("{0}")]
    Index(String),
    /// A request whose memory (sized by the caller's numbers) this machine does not have.
    #[error("{0}")]
    Memory(String),
    /// An operating-system error, with the file it happened on.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Adds the path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
