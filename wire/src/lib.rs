//! tern's image format: pure data, no kernel access, so it can be fuzzed and
//! property-tested alone.
//!
//! An image is a directory. Each metadata file holds one [`record`]: a fixed
//! header (magic, format version, kind, payload length, xxh3 of the payload)
//! followed by a postcard-encoded payload. Page contents and saved file
//! contents live in [`chunks`] files: a header, then self-checking chunks
//! (each with its own header checksum and data checksum, optionally zstd
//! compressed), then a trailer that counts them, so a truncated file is
//! always detected.

#![deny(unsafe_code)]
// Lengths read from files and the network must never wrap silently.
#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

pub mod chunks;
pub mod hashes;
pub mod image;
pub mod net;
pub mod record;
pub mod session;

pub use chunks::{ChunkEncoder, ChunkReader, ChunkWriter, Codec, EncodedChunks};
pub use image::*;
pub use record::{read_record, write_record, RecordKind};

use std::path::PathBuf;

/// Version of the on-disk format. Readers refuse any other version.
pub const FORMAT_VERSION: u32 = 7;

/// Every way reading or writing an image can fail. Each variant names the
/// file and, where it applies, the byte offset of the problem.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a tern image file (bad magic at offset {offset})")]
    BadMagic { path: PathBuf, offset: u64 },
    #[error(
        "{path}: format version {found} is not supported (this tern reads version {expected})"
    )]
    BadVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{path}: expected a {expected} record, found kind {found}")]
    WrongKind {
        path: PathBuf,
        expected: &'static str,
        found: u32,
    },
    #[error("{path}: truncated at offset {offset}: {what}")]
    Truncated {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error("{path}: checksum mismatch at offset {offset} ({what})")]
    Checksum {
        path: PathBuf,
        offset: u64,
        what: &'static str,
    },
    #[error("{path}: corrupt data at offset {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error("{path}: {what} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("encoding {what}: {reason}")]
    Encode { what: &'static str, reason: String },
}

impl WireError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WireError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, WireError>;

/// Create (or truncate) an image file readable and writable by its owner
/// only: an image holds the program's memory, and whoever can change it
/// decides what a restore runs.
pub fn create_image_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Create an image directory (and missing parents), mode 0700 for those
/// it creates.
pub fn create_image_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}
