//! Durable file updates, below `store` and `ann` (both write files that must survive a crash
//! whole or not at all).

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Makes a rename or a new file in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Replaces `path` with `bytes` atomically and durably: written to `tmp`, fsynced, renamed over
/// `path`, then the directory fsynced. `tmp` is removed on failure.
pub fn replace(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<()> {
    let result = (|| {
        let mut f = File::create(tmp).at(tmp)?;
        f.write_all(bytes).at(tmp)?;
        f.sync_all().at(tmp)?;
        std::fs::rename(tmp, path).at(path)?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}
