//! The layer's side of chunk checksums (see `seal.rs`): writing those its commits owe, and
//! checking sealed chunks against theirs.

use super::LayerMemory;
use crate::error::{Error, Result};
use crate::store::commit::Commit;
use crate::store::seal;

impl LayerMemory {
    /// Chunks whose rows are all committed.
    pub(super) fn sealed_chunks(&self) -> usize {
        (self.count / self.chunk_tokens()) as usize
    }

    /// The first chunk sealed by the last commit, given the commit before it (`None`: unknown).
    pub(super) fn first_last_sealed(&self, prev: Option<Commit>) -> usize {
        let sealed = self.sealed_chunks();
        prev.map_or(sealed, |p| {
            ((p.count / self.chunk_tokens()) as usize).min(sealed)
        })
    }

    /// Writes the checksum files still pending (writers), in chunk order.
    pub(super) fn write_pending(&mut self) -> Result<()> {
        let cfg = &self.config;
        let (kb, vb) = (
            cfg.chunk_bytes(cfg.head_dim) as usize,
            cfg.chunk_bytes(cfg.value_dim) as usize,
        );
        while let Some(&c) = self.pending.first() {
            let chunk = &self.chunks[c];
            let crc = seal::checksum(chunk.keys.range(0, kb), chunk.values.range(0, vb));
            seal::write(&self.dir, c, crc)?;
            self.pending.remove(0);
        }
        Ok(())
    }

    /// Checks every sealed chunk not checked yet against its checksum (`verify_reads`): each chunk
    /// is read whole once per handle. A chunk without a checksum file is damage in a strict layer
    /// and unchecked in a format-1 one, except for the chunks the last commit sealed: their
    /// checksum may not be written yet (a writer at work, or one that died after the commit; the
    /// next writer writes it), so a missing or torn one is no error: those chunks are left
    /// unchecked for now and looked at again on the next call.
    pub fn verify_sealed(&mut self) -> Result<()> {
        let cfg = &self.config;
        let sealed = self.sealed_chunks();
        let (kb, vb) = (
            cfg.chunk_bytes(cfg.head_dim) as usize,
            cfg.chunk_bytes(cfg.value_dim) as usize,
        );
        while self.verified < sealed {
            let c = self.verified;
            let recent = self.strict && c >= self.last_sealed_from;
            match seal::read(&self.dir, c) {
                Ok(None) | Err(Error::Corrupt(_)) if recent => break,
                Err(e) => return Err(e),
                Ok(Some(want)) => {
                    let chunk = &self.chunks[c];
                    seal::check(
                        &self.dir,
                        c,
                        chunk.keys.range(0, kb),
                        chunk.values.range(0, vb),
                        want,
                    )?;
                }
                Ok(None) if self.strict => {
                    return Err(Error::Corrupt(format!(
                        "{} is missing: sealed chunk {c} cannot be checked",
                        seal::path(&self.dir, c).display()
                    )))
                }
                Ok(None) => {}
            }
            self.verified += 1;
        }
        Ok(())
    }
}
