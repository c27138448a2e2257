//! Per-block SHA-256 digests: a byte range read from anywhere in a file is verified by the
//! digests of the blocks it covers, without reading the whole file.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The block size files are digested in unless a caller picks another: 8 MiB (a 16 GiB shard
/// lists 2,048 digests; a read is rounded out to at most two extra blocks).
pub const DEFAULT_BLOCK_BYTES: u64 = 8 << 20;

/// SHA-256 of bytes, lower-case hex.
pub fn hex_sha256(bytes: &[u8]) -> String {
    hex_digest(&Sha256::digest(bytes))
}

/// A digest's bytes as lower-case hex.
pub fn hex_digest(digest: &[u8]) -> String {
    use std::fmt::Write;
    digest
        .iter()
        .fold(String::with_capacity(2 * digest.len()), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// The SHA-256 of every `block_bytes`-sized block of a file (the last block may be shorter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDigests {
    /// Bytes per block (the last block holds the rest).
    pub block_bytes: u64,
    /// Lower-case hex SHA-256 of each block, in order.
    pub sha256: Vec<String>,
}

impl BlockDigests {
    /// The digests of `bytes` in blocks of `block_bytes` (> 0).
    pub fn of(bytes: &[u8], block_bytes: u64) -> Self {
        assert!(block_bytes > 0, "blocks must hold at least one byte");
        Self {
            block_bytes,
            sha256: bytes.chunks(block_bytes as usize).map(hex_sha256).collect(),
        }
    }

    /// Whether the digests can describe a file of `file_bytes` bytes (block count and size).
    pub fn fits(&self, file_bytes: u64) -> bool {
        self.block_bytes > 0 && self.sha256.len() as u64 == file_bytes.div_ceil(self.block_bytes)
    }

    /// The whole blocks that cover `range` of a `file_bytes`-byte file, as a byte range.
    pub fn covering(&self, range: &Range<u64>, file_bytes: u64) -> Range<u64> {
        let start = range.start / self.block_bytes * self.block_bytes;
        let end = (range.end.div_ceil(self.block_bytes) * self.block_bytes).min(file_bytes);
        start..end
    }

    /// Checks `bytes`, read from block-aligned offset `offset`, against the digests; the error
    /// names the first block that differs.
    pub fn verify(&self, offset: u64, bytes: &[u8]) -> Result<(), String> {
        debug_assert_eq!(offset % self.block_bytes, 0, "block-aligned reads only");
        let first = (offset / self.block_bytes) as usize;
        for (i, block) in bytes.chunks(self.block_bytes as usize).enumerate() {
            let index = first + i;
            let expected = self.sha256.get(index).ok_or_else(|| {
                format!(
                    "block {index} is past the {} blocks the digests list",
                    self.sha256.len()
                )
            })?;
            let actual = hex_sha256(block);
            if &actual != expected {
                return Err(format!(
                    "block {index} (bytes {}..{}) has SHA-256 {actual}, the digests say {expected} (corrupted)",
                    index as u64 * self.block_bytes,
                    index as u64 * self.block_bytes + block.len() as u64
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_rounds_out_to_blocks_and_stops_at_the_end() {
        let digests = BlockDigests::of(&[7u8; 25], 10);
        assert_eq!(digests.sha256.len(), 3);
        assert!(digests.fits(25) && !digests.fits(31));
        assert_eq!(digests.covering(&(12..13), 25), 10..20);
        assert_eq!(digests.covering(&(9..21), 25), 0..25);
    }

    #[test]
    fn a_changed_byte_is_found_in_its_block() {
        let mut bytes: Vec<u8> = (0..=255).collect();
        let digests = BlockDigests::of(&bytes, 64);
        assert!(digests.verify(64, &bytes[64..192]).is_ok());
        bytes[130] ^= 1;
        let error = digests.verify(64, &bytes[64..192]).unwrap_err();
        assert!(error.contains("block 2 (bytes 128..192)"), "{error}");
    }
}
