//! Allocations sized by a caller's numbers (a search's output, gathered or read rows) are
//! weighed before they are made: a request beyond the memory this machine has available is
//! `Error::Memory`, naming the sizes, instead of an allocation failure that aborts the process.

use crate::error::{Error, Result};

/// Bytes this machine can still hand out (`MemAvailable` of /proc/meminfo); None where unknown.
pub fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Requests up to this size are granted without looking at the machine.
const SMALL: u64 = 64 << 20;

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Refuses `bytes` (None: the size overflowed u64) when more than is available, or more than
/// one allocation can be. `what` says what the memory would hold.
pub fn check(bytes: Option<u64>, what: impl FnOnce() -> String) -> Result<()> {
    // Small requests (every search of a decoding step) skip reading /proc/meminfo.
    if bytes.is_some_and(|b| b <= SMALL) {
        return Ok(());
    }
    let limit = available().unwrap_or(u64::MAX).min(isize::MAX as u64);
    match bytes {
        Some(b) if b <= limit => Ok(()),
        Some(b) => Err(Error::Memory(format!(
            "{} needs {}, more than the {} this machine has available",
            what(),
            gib(b),
            gib(limit)
        ))),
        None => Err(Error::Memory(format!(
            "{} needs more than 2^64 bytes",
            what()
        ))),
    }
}

/// The product of `factors`, or None on overflow.
pub fn product(factors: &[usize]) -> Option<u64> {
    factors
        .iter()
        .try_fold(1u64, |acc, &f| acc.checked_mul(f as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_requests_are_errors_not_aborts() {
        assert!(check(Some(1024), || "a little".into()).is_ok());
        let e = check(product(&[4096, 32, 65536, 12, 1 << 20]), || {
            "a search".into()
        });
        assert!(matches!(e, Err(Error::Memory(m)) if m.starts_with("a search needs")));
        let e = check(product(&[usize::MAX, 3]), || "a gather".into());
        assert!(matches!(e, Err(Error::Memory(m)) if m.contains("2^64")));
    }
}
