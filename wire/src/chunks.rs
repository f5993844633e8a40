//! Chunk files: bulk data (page contents, saved file contents) as a sequence
//! of self-checking chunks.
//!
//! ```text
//! file header (24 B): magic[8] | version u32 | reserved u32 | xxh3(first 16) u64
//! chunk header (48 B): tag u32 | codec u8 | pad[3] | key u64 | raw_len u32 |
//!                      stored_len u32 | xxh3(stored data) u64 | count u64 |
//!                      xxh3(first 40 header bytes) u64
//! data chunk:  header (tag = DATA) + stored_len bytes
//! trailer:     header (tag = END, count = number of data chunks,
//!              key = total raw bytes), then end of file
//! ```
//! `key` is what the data belongs to: a virtual address for pages, a file
//! offset for file contents.

use crate::{Result, WireError, FORMAT_VERSION};
use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_64;

pub const CHUNK_FILE_MAGIC: [u8; 8] = *b"TERNCHK\0";
pub const FILE_HEADER_LEN: usize = 24;
pub const CHUNK_HEADER_LEN: usize = 48;
/// Largest uncompressed chunk a reader accepts (and a writer produces).
pub const MAX_CHUNK_RAW: u32 = 4 << 20;
/// Stored data may exceed raw data only by this much (zstd framing of
/// incompressible input); anything larger is refused before allocating.
const MAX_STORED_OVERHEAD: u32 = 64 << 10;

const TAG_DATA: u32 = 0x4154_4144; // "DATA"
const TAG_END: u32 = 0x2020_444e; // "ND  "

/// How a chunk's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Raw,
    /// zstd at the given level.
    Zstd(i32),
}

impl Codec {
    fn id(self) -> u8 {
        match self {
            Codec::Raw => 0,
            Codec::Zstd(_) => 1,
        }
    }
}

/// Totals of a finished chunk file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkStats {
    pub chunks: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

fn chunk_header(
    tag: u32,
    codec: u8,
    key: u64,
    raw_len: u32,
    stored: &[u8],
    count: u64,
) -> [u8; CHUNK_HEADER_LEN] {
    let mut h = [0u8; CHUNK_HEADER_LEN];
    h[0..4].copy_from_slice(&tag.to_le_bytes());
    h[4] = codec;
    h[8..16].copy_from_slice(&key.to_le_bytes());
    h[16..20].copy_from_slice(&raw_len.to_le_bytes());
    h[20..24].copy_from_slice(&chunk_len(stored.len()).to_le_bytes());
    h[24..32].copy_from_slice(&xxh3_64(stored).to_le_bytes());
    h[32..40].copy_from_slice(&count.to_le_bytes());
    let sum = xxh3_64(&h[..40]);
    h[40..48].copy_from_slice(&sum.to_le_bytes());
    h
}

/// A chunk's length as its header stores it. Callers split data into
/// pieces of at most [`MAX_CHUNK_RAW`] bytes and keep a compressed form only
/// when it is smaller, so every length fits in 32 bits.
#[allow(clippy::cast_possible_truncation)]
fn chunk_len(n: usize) -> u32 {
    debug_assert!(n <= MAX_CHUNK_RAW as usize);
    n as u32
}

/// Turns raw data into encoded chunks (header + stored bytes). Separate from
/// [`ChunkWriter`] so that several threads can compress while one writes.
pub struct ChunkEncoder {
    codec: Codec,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for ChunkEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkEncoder")
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

/// Encoded chunks ready to append to a chunk file, with their totals.
/// Data stored raw is not copied: a [`Part::Source`] names its range in the
/// buffer that was encoded, and the writer takes it from there.
#[derive(Debug, Default)]
pub struct EncodedChunks {
    /// Chunk headers and compressed data.
    pub bytes: Vec<u8>,
    pub parts: Vec<Part>,
    pub chunks: u64,
    pub raw_bytes: u64,
}

/// One piece of an [`EncodedChunks`], in file order.
#[derive(Debug, Clone)]
pub enum Part {
    /// A range of [`EncodedChunks::bytes`].
    Inline(std::ops::Range<usize>),
    /// A range of the source buffer given to [`ChunkEncoder::encode`].
    Source(std::ops::Range<usize>),
}

impl EncodedChunks {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.parts.clear();
        self.chunks = 0;
        self.raw_bytes = 0;
    }

    fn push_inline(&mut self, data: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(data);
        match self.parts.last_mut() {
            Some(Part::Inline(r)) if r.end == start => r.end = self.bytes.len(),
            _ => self.parts.push(Part::Inline(start..self.bytes.len())),
        }
    }

    /// Bytes this adds to the file.
    pub fn stored_len(&self) -> u64 {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Inline(r) | Part::Source(r) => r.len() as u64,
            })
            .sum()
    }
}

impl ChunkEncoder {
    pub fn new(codec: Codec) -> Result<Self> {
        let compressor = match codec {
            Codec::Raw => None,
            Codec::Zstd(level) => {
                Some(
                    zstd::bulk::Compressor::new(level).map_err(|e| WireError::Encode {
                        what: "zstd compressor",
                        reason: e.to_string(),
                    })?,
                )
            }
        };
        Ok(ChunkEncoder {
            codec,
            compressor,
            scratch: Vec::new(),
        })
    }

    /// Append `source[range]` under `key` to `out`, split into chunks of at
    /// most [`MAX_CHUNK_RAW`] bytes, each piece keyed by `key + offset`.
    /// Raw pieces refer to `source`: write `out` with the same `source`.
    pub fn encode(
        &mut self,
        key: u64,
        source: &[u8],
        range: std::ops::Range<usize>,
        out: &mut EncodedChunks,
    ) -> Result<()> {
        let mut at = range.start;
        while at < range.end {
            let end = (at + MAX_CHUNK_RAW as usize).min(range.end);
            self.encode_one(key + (at - range.start) as u64, source, at..end, out)?;
            at = end;
        }
        Ok(())
    }

    fn encode_one(
        &mut self,
        key: u64,
        source: &[u8],
        range: std::ops::Range<usize>,
        out: &mut EncodedChunks,
    ) -> Result<()> {
        let data = &source[range.clone()];
        let mut codec = Codec::Raw;
        if let Some(c) = self.compressor.as_mut() {
            self.scratch.clear();
            self.scratch
                .reserve(zstd::zstd_safe::compress_bound(data.len()));
            match c.compress_to_buffer(data, &mut self.scratch) {
                // Keep the compressed form only when it saves something.
                Ok(n) if n < data.len() => codec = self.codec,
                Ok(_) => {}
                Err(e) => {
                    return Err(WireError::Encode {
                        what: "zstd chunk",
                        reason: e.to_string(),
                    })
                }
            }
        }
        if codec == Codec::Raw {
            let h = chunk_header(TAG_DATA, codec.id(), key, chunk_len(data.len()), data, 0);
            out.push_inline(&h);
            out.parts.push(Part::Source(range));
        } else {
            let h = chunk_header(
                TAG_DATA,
                codec.id(),
                key,
                chunk_len(data.len()),
                &self.scratch,
                0,
            );
            out.push_inline(&h);
            let stored = std::mem::take(&mut self.scratch);
            out.push_inline(&stored);
            self.scratch = stored;
        }
        out.chunks += 1;
        out.raw_bytes += data.len() as u64;
        Ok(())
    }
}

#[derive(Debug)]
pub struct ChunkWriter {
    path: PathBuf,
    out: BufWriter<File>,
    encoder: ChunkEncoder,
    pending: EncodedChunks,
    stats: ChunkStats,
}

impl ChunkWriter {
    pub fn create(path: &Path, codec: Codec) -> Result<Self> {
        let file = crate::create_image_file(path).map_err(|e| WireError::io(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut header = [0u8; FILE_HEADER_LEN];
        header[0..8].copy_from_slice(&CHUNK_FILE_MAGIC);
        header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let sum = xxh3_64(&header[..16]);
        header[16..24].copy_from_slice(&sum.to_le_bytes());
        out.write_all(&header).map_err(|e| WireError::io(path, e))?;
        Ok(ChunkWriter {
            path: path.to_path_buf(),
            out,
            encoder: ChunkEncoder::new(codec)?,
            pending: EncodedChunks::default(),
            stats: ChunkStats::default(),
        })
    }

    /// Append `data` under `key`; data longer than [`MAX_CHUNK_RAW`] is split,
    /// each piece keyed by `key + offset`.
    pub fn write(&mut self, key: u64, data: &[u8]) -> Result<()> {
        let mut pending = std::mem::take(&mut self.pending);
        pending.clear();
        let result = self
            .encoder
            .encode(key, data, 0..data.len(), &mut pending)
            .and_then(|_| self.write_encoded(&pending, data));
        self.pending = pending;
        result
    }

    /// Append chunks encoded by a [`ChunkEncoder`] from `source`.
    pub fn write_encoded(&mut self, enc: &EncodedChunks, source: &[u8]) -> Result<()> {
        for part in &enc.parts {
            let piece = match part {
                Part::Inline(r) => enc.bytes.get(r.clone()),
                Part::Source(r) => source.get(r.clone()),
            };
            let Some(piece) = piece else {
                return Err(WireError::Encode {
                    what: "chunk",
                    reason: "encoded part outside its buffer".into(),
                });
            };
            self.out
                .write_all(piece)
                .map_err(|e| WireError::io(&self.path, e))?;
        }
        self.stats.chunks += enc.chunks;
        self.stats.raw_bytes += enc.raw_bytes;
        self.stats.stored_bytes += enc.stored_len();
        Ok(())
    }

    /// Write the trailer and fsync. A file without its trailer is refused
    /// by readers.
    pub fn finish(mut self) -> Result<ChunkStats> {
        let h = chunk_header(TAG_END, 0, self.stats.raw_bytes, 0, &[], self.stats.chunks);
        let path = self.path.clone();
        self.out
            .write_all(&h)
            .map_err(|e| WireError::io(&path, e))?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| WireError::io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| WireError::io(&path, e))?;
        Ok(self.stats)
    }
}

/// Reads chunk files written by [`ChunkWriter`], verifying everything.
pub struct ChunkReader<R: Read> {
    path: PathBuf,
    input: R,
    offset: u64,
    chunks_seen: u64,
    raw_seen: u64,
    finished: bool,
    stored: Vec<u8>,
    decompressor: zstd::bulk::Decompressor<'static>,
}

impl<R: Read> std::fmt::Debug for ChunkReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkReader")
            .field("path", &self.path)
            .field("offset", &self.offset)
            .field("chunks_seen", &self.chunks_seen)
            .finish_non_exhaustive()
    }
}

impl ChunkReader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| WireError::io(path, e))?;
        ChunkReader::new(path, BufReader::with_capacity(1 << 20, file))
    }
}

impl<R: Read> ChunkReader<R> {
    /// `path` names the source in errors.
    pub fn new(path: &Path, mut input: R) -> Result<Self> {
        let mut header = [0u8; FILE_HEADER_LEN];
        let got = read_full(&mut input, &mut header).map_err(|e| WireError::io(path, e))?;
        if got >= 8 && header[..8] != CHUNK_FILE_MAGIC {
            return Err(WireError::BadMagic {
                path: path.to_path_buf(),
                offset: 0,
            });
        }
        if got < FILE_HEADER_LEN {
            return Err(WireError::Truncated {
                path: path.to_path_buf(),
                offset: got as u64,
                what: "chunk file header".into(),
            });
        }
        if xxh3_64(&header[..16]).to_le_bytes() != header[16..24] {
            return Err(WireError::Checksum {
                path: path.to_path_buf(),
                offset: 0,
                what: "chunk file header",
            });
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if version != FORMAT_VERSION {
            return Err(WireError::BadVersion {
                path: path.to_path_buf(),
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        let decompressor = zstd::bulk::Decompressor::new().map_err(|e| WireError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            what: format!("cannot create a zstd decompressor: {e}"),
        })?;
        Ok(ChunkReader {
            path: path.to_path_buf(),
            input,
            offset: FILE_HEADER_LEN as u64,
            chunks_seen: 0,
            raw_seen: 0,
            finished: false,
            stored: Vec::new(),
            decompressor,
        })
    }

    fn truncated(&self, at: u64, what: &str) -> WireError {
        WireError::Truncated {
            path: self.path.clone(),
            offset: at,
            what: what.to_string(),
        }
    }

    fn corrupt(&self, at: u64, what: String) -> WireError {
        WireError::Corrupt {
            path: self.path.clone(),
            offset: at,
            what,
        }
    }

    /// The next chunk's key, with its data decoded into `out` (replacing its
    /// contents). `None` after the verified trailer.
    pub fn next_into(&mut self, out: &mut Vec<u8>) -> Result<Option<u64>> {
        if self.finished {
            return Ok(None);
        }
        let at = self.offset;
        let mut h = [0u8; CHUNK_HEADER_LEN];
        let got = read_full(&mut self.input, &mut h).map_err(|e| WireError::io(&self.path, e))?;
        if got < CHUNK_HEADER_LEN {
            return Err(self.truncated(at + got as u64, "chunk header (trailer missing)"));
        }
        if xxh3_64(&h[..40]).to_le_bytes() != h[40..48] {
            return Err(WireError::Checksum {
                path: self.path.clone(),
                offset: at,
                what: "chunk header",
            });
        }
        let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let (tag, codec, key, raw_len, stored_len, data_sum, count) = (
            u32_at(0),
            h[4],
            u64_at(8),
            u32_at(16),
            u32_at(20),
            u64_at(24),
            u64_at(32),
        );
        self.offset += CHUNK_HEADER_LEN as u64;
        match tag {
            TAG_END => {
                if count != self.chunks_seen || key != self.raw_seen {
                    return Err(self.corrupt(
                        at,
                        format!(
                            "trailer counts {count} chunks / {key} bytes, file has {} / {}",
                            self.chunks_seen, self.raw_seen
                        ),
                    ));
                }
                let mut extra = [0u8; 1];
                let n = read_full(&mut self.input, &mut extra)
                    .map_err(|e| WireError::io(&self.path, e))?;
                if n != 0 {
                    return Err(self.corrupt(self.offset, "data after the trailer".into()));
                }
                self.finished = true;
                return Ok(None);
            }
            TAG_DATA => {}
            other => return Err(self.corrupt(at, format!("unknown chunk tag {other:#x}"))),
        }
        if raw_len > MAX_CHUNK_RAW || stored_len > raw_len.saturating_add(MAX_STORED_OVERHEAD) {
            return Err(self.corrupt(
                at,
                format!("chunk sizes raw {raw_len} / stored {stored_len} are out of bounds"),
            ));
        }
        // Raw data is read straight into `out`; compressed data into a buffer.
        let target = if codec == 0 {
            &mut *out
        } else {
            &mut self.stored
        };
        target.resize(stored_len as usize, 0);
        let got = read_full(&mut self.input, target).map_err(|e| WireError::io(&self.path, e))?;
        if got < stored_len as usize {
            return Err(self.truncated(self.offset + got as u64, "chunk data"));
        }
        if xxh3_64(target) != data_sum {
            return Err(WireError::Checksum {
                path: self.path.clone(),
                offset: self.offset,
                what: "chunk data",
            });
        }
        match codec {
            0 => {
                if stored_len != raw_len {
                    return Err(self.corrupt(at, "raw chunk with stored != raw length".into()));
                }
            }
            1 => {
                out.clear();
                out.reserve(raw_len as usize);
                match self.decompressor.decompress_to_buffer(&self.stored, out) {
                    Ok(n) if n == raw_len as usize => {}
                    Ok(n) => {
                        return Err(self.corrupt(
                            self.offset,
                            format!("chunk decompresses to {n} bytes, header says {raw_len}"),
                        ))
                    }
                    Err(e) => {
                        return Err(self.corrupt(self.offset, format!("zstd: {e}")));
                    }
                }
            }
            other => return Err(self.corrupt(at, format!("unknown codec {other}"))),
        }
        self.offset += stored_len as u64;
        self.chunks_seen += 1;
        self.raw_seen += raw_len as u64;
        Ok(Some(key))
    }
}

/// Read until `buf` is full or end of input; returns bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
