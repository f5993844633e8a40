//! Page hash tables: `(address, xxh3 of the page)` for every page an image
//! saw, stored as a chunk file of 16-byte little-endian pairs. The next
//! increment of a chain compares against it.

use crate::chunks::{ChunkReader, ChunkWriter, Codec};
use crate::{Result, WireError};
use std::path::Path;

/// Write `pairs` (sorted by address) to `path`.
pub fn write_page_hashes(path: &Path, pairs: &[(u64, u64)]) -> Result<()> {
    let mut w = ChunkWriter::create(path, Codec::Raw)?;
    // Whole pairs per chunk: MAX_CHUNK_RAW is a multiple of 16.
    let mut bytes = Vec::with_capacity(pairs.len().min(1 << 18) * 16);
    for (i, (addr, hash)) in pairs.iter().enumerate() {
        bytes.extend_from_slice(&addr.to_le_bytes());
        bytes.extend_from_slice(&hash.to_le_bytes());
        if bytes.len() == crate::chunks::MAX_CHUNK_RAW as usize || i + 1 == pairs.len() {
            w.write(0, &bytes)?;
            bytes.clear();
        }
    }
    w.finish()?;
    Ok(())
}

/// Read a table written by [`write_page_hashes`]; refuses unsorted or
/// ragged data.
pub fn read_page_hashes(path: &Path) -> Result<Vec<(u64, u64)>> {
    let mut r = ChunkReader::open(path)?;
    let mut buf = Vec::new();
    let mut out: Vec<(u64, u64)> = Vec::new();
    while r.next_into(&mut buf)?.is_some() {
        if buf.len() % 16 != 0 {
            return Err(WireError::Corrupt {
                path: path.to_path_buf(),
                offset: 0,
                what: format!("hash chunk of {} bytes is not whole pairs", buf.len()),
            });
        }
        for pair in buf.chunks_exact(16) {
            let mut a = [0u8; 8];
            let mut h = [0u8; 8];
            a.copy_from_slice(&pair[..8]);
            h.copy_from_slice(&pair[8..]);
            let addr = u64::from_le_bytes(a);
            if out.last().is_some_and(|(prev, _)| *prev >= addr) {
                return Err(WireError::Corrupt {
                    path: path.to_path_buf(),
                    offset: 0,
                    what: format!("page hash table is not sorted at address {addr:#x}"),
                });
            }
            out.push((addr, u64::from_le_bytes(h)));
        }
    }
    Ok(out)
}
