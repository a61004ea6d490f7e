//! What a file in a layer directory is, told by its name alone.

use crate::store::commit::COUNT_FILE;

/// What a file in a layer directory is, by its name.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LayerFile {
    Count,
    Keys(u64),
    Values(u64),
    Index(u64),
    Checksum(u64),
    Hnswlib,
    HnswlibSeal,
    Temp,
    Unknown,
}

/// `digits` as written by `{:06}`: at least six digits, no extra leading zeros.
pub(super) fn parse_index(digits: &str) -> Option<u64> {
    let n: u64 = digits.parse().ok()?;
    (digits.bytes().all(|b| b.is_ascii_digit()) && format!("{n:06}") == digits).then_some(n)
}

pub(super) fn classify(name: &str) -> LayerFile {
    if name == COUNT_FILE {
        return LayerFile::Count;
    }
    if let Some(n) = name.strip_suffix(".keys").and_then(parse_index) {
        return LayerFile::Keys(n);
    }
    if let Some(n) = name.strip_suffix(".values").and_then(parse_index) {
        return LayerFile::Values(n);
    }
    if let Some(n) = name.strip_suffix(".crc").and_then(parse_index) {
        return LayerFile::Checksum(n);
    }
    if name
        .strip_suffix(".crc.tmp")
        .and_then(parse_index)
        .is_some()
    {
        return LayerFile::Temp;
    }
    if name.starts_with("hnswlib-") && name.ends_with(".bin") {
        return LayerFile::Hnswlib;
    }
    if name.starts_with("hnswlib-") && name.ends_with(".seal") {
        return LayerFile::HnswlibSeal;
    }
    if let Some(rest) = name.strip_prefix("hnsw-") {
        return match rest.strip_suffix(".idx").and_then(parse_index) {
            Some(n) => LayerFile::Index(n),
            // `write` renames from `hnsw-<span>.tmp<pid>`; writers remove any other `hnsw-*`.
            None if rest.contains(".tmp") => LayerFile::Temp,
            None => LayerFile::Unknown,
        };
    }
    // The commit file's birth name, and hnswlib_backend's `.<name>.<pid>.<uuid>.tmp`.
    if name == format!("{COUNT_FILE}.tmp") || (name.starts_with('.') && name.ends_with(".tmp")) {
        return LayerFile::Temp;
    }
    LayerFile::Unknown
}
