//! The writer lock: an advisory exclusive lock on `root/LOCK`, held for the life of a read-write
//! handle. Readers never take it, so they never block a writer and a writer never blocks them.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// The lock file's name inside a store directory.
pub const LOCK_FILE: &str = "LOCK";

/// Held while a read-write handle is open; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
}

impl WriterLock {
    /// Takes the lock or fails at once with `Error::Locked`.
    pub fn acquire(root: &Path) -> Result<Self> {
        let path = root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(WriterLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(Error::Locked(format!(
                "the store at {} is already open for writing (lock {} is held); \
                 close the other writer or open with readonly=True",
                root.display(),
                path.display()
            ))),
            Err(TryLockError::Error(e)) => Err(Error::io(path, e)),
        }
    }

    /// Takes the lock of an existing lock file without creating one; `None` if there is no lock
    /// file or it is held (or cannot be opened).
    pub fn try_existing(root: &Path) -> Option<Self> {
        let file = OpenOptions::new()
            .write(true)
            .open(root.join(LOCK_FILE))
            .ok()?;
        file.try_lock().ok()?;
        Some(WriterLock { _file: file })
    }
}
