//! Single-record files: `header | payload`.
//!
//! Header (40 bytes, little-endian):
//! `magic[8] | version u32 | kind u32 | payload_len u64 | payload_xxh3 u64 | header_xxh3 u64`
//! where `header_xxh3` covers the first 32 bytes. The payload is postcard.

use crate::{Result, WireError, FORMAT_VERSION};
use serde::{de::DeserializeOwned, Serialize};
use std::io::Write;
use std::path::Path;
use xxhash_rust::xxh3::xxh3_64;

pub const RECORD_MAGIC: [u8; 8] = *b"TERNREC\0";
pub const RECORD_HEADER_LEN: usize = 40;
/// No metadata record is allowed to be larger than this; a reader refuses
/// bigger ones before allocating.
pub const MAX_RECORD_PAYLOAD: u64 = 64 << 20;

/// What a record file holds; stored in the header so a file renamed by
/// mistake is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RecordKind {
    Inventory = 1,
    Core = 2,
    Mm = 3,
    Files = 4,
    Layout = 5,
    TableDelta = 6,
    Tree = 7,
    Deferred = 8,
}

impl RecordKind {
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Inventory => "inventory",
            RecordKind::Core => "core",
            RecordKind::Mm => "mm",
            RecordKind::Files => "files",
            RecordKind::Layout => "layout",
            RecordKind::TableDelta => "table delta",
            RecordKind::Tree => "process tree",
            RecordKind::Deferred => "deferred pages",
        }
    }
}

/// Encode `value` as a complete record file image (header + payload).
pub fn encode_record<T: Serialize>(kind: RecordKind, value: &T) -> Result<Vec<u8>> {
    let payload = postcard::to_stdvec(value).map_err(|e| WireError::Encode {
        what: kind.name(),
        reason: e.to_string(),
    })?;
    if payload.len() as u64 > MAX_RECORD_PAYLOAD {
        return Err(WireError::Encode {
            what: kind.name(),
            reason: format!(
                "payload of {} bytes exceeds the {MAX_RECORD_PAYLOAD}-byte limit",
                payload.len()
            ),
        });
    }
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(kind as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&xxh3_64(&payload).to_le_bytes());
    let header_sum = xxh3_64(&out[..32]);
    out.extend_from_slice(&header_sum.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decode a record file's bytes; `path` is only used in error messages.
pub fn decode_record<T: DeserializeOwned>(
    path: &Path,
    kind: RecordKind,
    bytes: &[u8],
) -> Result<T> {
    let p = || path.to_path_buf();
    if bytes.len() < RECORD_HEADER_LEN {
        if bytes.len() >= 8 && bytes[..8] != RECORD_MAGIC {
            return Err(WireError::BadMagic {
                path: p(),
                offset: 0,
            });
        }
        return Err(WireError::Truncated {
            path: p(),
            offset: bytes.len() as u64,
            what: format!(
                "record header needs {RECORD_HEADER_LEN} bytes, file has {}",
                bytes.len()
            ),
        });
    }
    if bytes[..8] != RECORD_MAGIC {
        return Err(WireError::BadMagic {
            path: p(),
            offset: 0,
        });
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[o..o + 8]);
        u64::from_le_bytes(b)
    };
    if xxh3_64(&bytes[..32]) != u64_at(32) {
        return Err(WireError::Checksum {
            path: p(),
            offset: 0,
            what: "record header",
        });
    }
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(WireError::BadVersion {
            path: p(),
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let found_kind = u32_at(12);
    if found_kind != kind as u32 {
        return Err(WireError::WrongKind {
            path: p(),
            expected: kind.name(),
            found: found_kind,
        });
    }
    let len = u64_at(16);
    if len > MAX_RECORD_PAYLOAD {
        return Err(WireError::TooLarge {
            path: p(),
            what: "record payload",
            size: len,
            limit: MAX_RECORD_PAYLOAD,
        });
    }
    let body = &bytes[RECORD_HEADER_LEN..];
    if (body.len() as u64) < len {
        return Err(WireError::Truncated {
            path: p(),
            offset: bytes.len() as u64,
            what: format!("payload needs {len} bytes, file has {}", body.len()),
        });
    }
    if (body.len() as u64) > len {
        return Err(WireError::Corrupt {
            path: p(),
            offset: RECORD_HEADER_LEN as u64 + len,
            what: format!(
                "{} trailing bytes after the payload",
                body.len() as u64 - len
            ),
        });
    }
    if xxh3_64(body) != u64_at(24) {
        return Err(WireError::Checksum {
            path: p(),
            offset: RECORD_HEADER_LEN as u64,
            what: "record payload",
        });
    }
    postcard::from_bytes(body).map_err(|e| WireError::Corrupt {
        path: p(),
        offset: RECORD_HEADER_LEN as u64,
        what: format!("{} payload does not decode: {e}", kind.name()),
    })
}

/// Write a record file durably (written to a temporary name, fsynced, renamed).
pub fn write_record<T: Serialize>(path: &Path, kind: RecordKind, value: &T) -> Result<()> {
    let bytes = encode_record(kind, value)?;
    let tmp = path.with_extension("tmp");
    let mut f = crate::create_image_file(&tmp).map_err(|e| WireError::io(&tmp, e))?;
    f.write_all(&bytes).map_err(|e| WireError::io(&tmp, e))?;
    f.sync_all().map_err(|e| WireError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| WireError::io(path, e))
}

/// Read and verify a record file. Never reads more than the size limit.
pub fn read_record<T: DeserializeOwned>(path: &Path, kind: RecordKind) -> Result<T> {
    let meta = std::fs::metadata(path).map_err(|e| WireError::io(path, e))?;
    let limit = MAX_RECORD_PAYLOAD + RECORD_HEADER_LEN as u64;
    if meta.len() > limit {
        return Err(WireError::TooLarge {
            path: path.to_path_buf(),
            what: "record file",
            size: meta.len(),
            limit,
        });
    }
    let bytes = std::fs::read(path).map_err(|e| WireError::io(path, e))?;
    decode_record(path, kind, &bytes)
}
