//! `verify` of the hnswlib backend's cached index files: each must have a seal that matches it
//! (and, deep, its checksum and hnswlib's structure), and fit its layer. A damaged file is an
//! error although hnswlib searches rebuild it: loaded unchecked by an older fot_mem or by hand,
//! it crashes the process.

use std::path::Path;

use super::Verifier;
use crate::ann::hnswlib::{check_sealed, seal_path};
use crate::store::StoreConfig;

/// `hnswlib-<span:06>-h<head>.bin` -> (span, head).
fn parse_name(name: &str) -> Option<(u64, u32)> {
    let (span, head) = name
        .strip_prefix("hnswlib-")?
        .strip_suffix(".bin")?
        .split_once("-h")?;
    let n: u32 = head.parse().ok()?;
    (n.to_string() == head).then_some((super::names::parse_index(span)?, n))
}

impl Verifier<'_> {
    pub(super) fn hnswlib(
        &mut self,
        path: &Path,
        config: Option<&StoreConfig>,
        count: Option<u64>,
    ) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some((span, head)) = name.as_deref().and_then(parse_name) else {
            return self.warn(path, "unknown hnswlib file in a layer directory".into());
        };
        let seal = seal_path(path);
        if !seal.exists() {
            return self.warn(
                path,
                "hnswlib index without its seal (written by an older fot_mem, or by a writer \
                 that died): hnswlib searches rebuild it"
                    .into(),
            );
        }
        let s = match check_sealed(path, &seal, self.deep) {
            Ok(s) => s,
            Err(e) => {
                return self.error(
                    path,
                    format!("damaged hnswlib index: {e} (hnswlib searches rebuild it)"),
                )
            }
        };
        let p = s.params;
        let mut wrong = Vec::new();
        if p.start != span * p.count {
            wrong.push(format!(
                "first token {} (span {span} of {})",
                p.start, p.count
            ));
        }
        if let Some(c) = config {
            if head >= c.kv_heads {
                wrong.push(format!("kv head {head} (the store has {})", c.kv_heads));
            }
            if p.dim != c.head_dim {
                wrong.push(format!("dim {} (head_dim {})", p.dim, c.head_dim));
            }
        }
        if let Some(n) = count.filter(|&n| p.start.saturating_add(p.count) > n) {
            wrong.push(format!(
                "tokens up to {} (the layer has {n})",
                p.start + p.count
            ));
        }
        if !wrong.is_empty() {
            self.error(
                path,
                format!(
                    "hnswlib index does not match its layer: {}",
                    wrong.join(", ")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_name;

    #[test]
    fn names() {
        assert_eq!(parse_name("hnswlib-000003-h1.bin"), Some((3, 1)));
        assert_eq!(parse_name("hnswlib-1234567-h12.bin"), Some((1234567, 12)));
        for bad in [
            "hnswlib-3-h1.bin",
            "hnswlib-000003-h01.bin",
            "hnswlib-000003-h.bin",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }
}
