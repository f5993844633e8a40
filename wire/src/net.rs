//! The migration protocol: messages, and the authenticated, encrypted
//! channel that carries them between `tern migrate` and `tern serve`.
//!
//! **Channel.** A Noise handshake, `Noise_NNpsk0_25519_AESGCM_SHA256`, with
//! the pre-shared key of the credential file both ends hold (`tern keygen`):
//! a peer without the key cannot complete it, so it is refused before any
//! message is parsed; fresh ephemeral keys on both sides give forward
//! secrecy, and make a recorded session useless to replay (the responder's
//! ephemeral differs each time, so a replayed first message leads nowhere).
//! The prologue binds the protocol version.
//!
//! **Framing.** Each [`Message`] is postcard-encoded, prefixed with its
//! length (u32 LE), and cut into Noise transport messages of at most
//! 65535 bytes, each sent as a big-endian u16 length and the ciphertext.
//! Every piece is authenticated (AES-GCM tag, nonces counted on both sides,
//! so a dropped, repeated or reordered piece fails); a message over
//! [`MAX_MESSAGE`] is refused before anything is allocated for it. File
//! contents carried inside are the image's own chunk files, which keep
//! their xxh3 checksums, and each shipped file is checked whole against
//! the size and xxh3 its sender announced.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version of the protocol; both ends must speak the same.
pub const PROTOCOL_VERSION: u32 = 4;
const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
const PROLOGUE: &[u8] = b"tern migration protocol 1";
/// Largest encoded message accepted.
pub const MAX_MESSAGE: usize = 16 << 20;
/// Size of the file pieces a sender puts in one message.
pub const FILE_PIECE: usize = 4 << 20;
const NOISE_MAX: usize = 65535;
const TAG: usize = 16;
const KEY_LEN: usize = 32;
const KEY_HEADER: &str = "tern-key-v1";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the peer failed authentication (different key, or not tern): {0}")]
    Auth(String),
    #[error("a message failed decryption or authentication (tampered or out of order)")]
    Decrypt,
    #[error("message of {size} bytes is over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("the peer closed the connection")]
    Closed,
    #[error("credential file {path}: {what}")]
    Key { path: PathBuf, what: String },
    #[error("protocol: {0}")]
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, NetError>;

/// One file of an image, as announced at the end of a round.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    pub name: String,
    pub size: u64,
    pub xxh3: u64,
}

/// Everything the two ends say to each other.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Message {
    // source -> destination
    /// First message: who is coming.
    Hello {
        protocol: u32,
        tern_version: String,
        pid: i32,
        comm: String,
        kernel_release: String,
        /// Random id of this migration: a source that loses the link
        /// after `Commit` asks about it by this id (`Ask`).
        session: u64,
    },
    /// A piece of an image file of round `round` (written at `offset`).
    FileData {
        round: u32,
        name: String,
        offset: u64,
        // As one byte string: serde's default encodes a Vec<u8> element by
        // element, which made 4 MiB pieces cost ~10 ms each way.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Round `round` is complete: these files, no others. `final_round`:
    /// the program is frozen and this is the full last image.
    /// `pages_follow` (final round only): the pages it owes come next as
    /// `Pages`, before `Ready` (a stop-and-copy that streams its memory);
    /// otherwise any it owes come after `Running` (post-copy).
    RoundDone {
        round: u32,
        final_round: bool,
        files: Vec<FileSummary>,
        pages_follow: bool,
    },
    /// The source's copy is frozen for good: resume yours.
    Commit,
    /// The source gives up (its copy keeps running): discard everything.
    Abort {
        reason: String,
    },
    /// First message of a connection instead of `Hello`: what became of
    /// migration `session`? (The source lost the link between `Commit`
    /// and `Running`.)
    Ask {
        protocol: u32,
        session: u64,
    },

    // destination -> source
    Welcome {
        protocol: u32,
        tern_version: String,
    },
    RoundApplied {
        round: u32,
        pages: u64,
        ms: f64,
    },
    /// The program is rebuilt and stopped, waiting for `Commit`.
    Ready {
        pid: i32,
        ms: f64,
    },
    /// The program runs here now.
    Running {
        pid: i32,
        ns_pid: i32,
        resume_ms: f64,
    },
    /// The destination refuses or failed; it has discarded everything.
    Refused {
        reason: String,
    },
    /// The answer to `Ask`.
    Outcome {
        session: u64,
        outcome: SessionOutcome,
    },

    // post-copy, after `Running` (protocol 3); or streamed before `Ready`
    // (protocol 4, `RoundDone::pages_follow`)
    /// source -> destination: pages still owed, `data` a whole number of
    /// pages from the source's address `start` on.
    Pages {
        start: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// source -> destination, streamed before `Ready`: the `Pages`,
    /// `ZstdPages` and `ZeroPages` that follow are process `pid`'s (its pid at the source;
    /// a tree's processes come one after another, in the tree's order).
    PagesOf {
        pid: i32,
    },
    /// source -> destination, streamed before `Ready` (`--compress N`):
    /// `pages` owed pages from `start` on, `data` their bytes compressed
    /// with zstd ([`compress_pages`]).
    ZstdPages {
        start: u64,
        pages: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// source -> destination, streamed before `Ready`: `pages` owed pages
    /// from `start` on hold only zeros. Nothing is sent or placed for them:
    /// private anonymous memory reads as zeros where no page was put.
    ZeroPages {
        start: u64,
        pages: u64,
    },
    /// destination -> source: the program touched these pages (source
    /// addresses): send them (and their neighbours) first.
    PageWant {
        addrs: Vec<u64>,
    },
    /// destination -> source: every page owed is in (or the program has
    /// ended): the source may end its copy.
    PostCopyDone {
        tally: PostCopyTally,
    },
}

/// What the destination's post-copy saw, for the source's report.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PostCopyTally {
    /// Owed pages placed (in the program and any child it forked).
    pub pages: u64,
    /// Touches of a page not yet there (the thread waited for it).
    pub faults_waited: u64,
    /// Touches of pages that never had data (given the zero page).
    pub zero_filled: u64,
    /// The program's forks, mremaps, madvise drops and munmaps meanwhile.
    pub forks: u32,
    pub remaps: u32,
    pub removes: u32,
    pub unmaps: u32,
}

/// What became of a migration on its destination, as far as it knows.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOutcome {
    /// The program was resumed there (host pid, pid it sees itself as).
    Running { pid: i32, ns_pid: i32 },
    /// It was never resumed there, and nothing of it is left: the source's
    /// copy is the only one.
    Discarded,
    /// Rebuilt and waiting for `Commit` (or for its timeout): ask again.
    Undecided,
    /// No migration with this id reached `Ready` there.
    Unknown,
}

impl Message {
    pub fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_stdvec(self).map_err(|e| NetError::Decode(e.to_string()))
    }

    pub fn decode(bytes: &[u8]) -> Result<Message> {
        if bytes.len() > MAX_MESSAGE {
            return Err(NetError::TooLarge {
                size: bytes.len(),
                limit: MAX_MESSAGE,
            });
        }
        let (msg, rest) =
            postcard::take_from_bytes(bytes).map_err(|e| NetError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(NetError::Decode(format!(
                "{} trailing bytes after the message",
                rest.len()
            )));
        }
        Ok(msg)
    }

    /// A short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::FileData { .. } => "FileData",
            Message::RoundDone { .. } => "RoundDone",
            Message::Commit => "Commit",
            Message::Abort { .. } => "Abort",
            Message::Ask { .. } => "Ask",
            Message::Welcome { .. } => "Welcome",
            Message::RoundApplied { .. } => "RoundApplied",
            Message::Ready { .. } => "Ready",
            Message::Running { .. } => "Running",
            Message::Refused { .. } => "Refused",
            Message::Outcome { .. } => "Outcome",
            Message::Pages { .. } => "Pages",
            Message::ZeroPages { .. } => "ZeroPages",
            Message::PagesOf { .. } => "PagesOf",
            Message::ZstdPages { .. } => "ZstdPages",
            Message::PageWant { .. } => "PageWant",
            Message::PostCopyDone { .. } => "PostCopyDone",
        }
    }
}

/// Whether `name` may be an image file name sent over the network: a plain
/// file name, no path.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with('.')
        && name.ends_with(".img")
}

/// A file of an image as a migration names it: a file of the image
/// directory, or one level down in a process tree's per-process directory
/// (`proc-PID/NAME`, see [`crate::tree_process_dir`]). Nothing else: no
/// other directory, no `..`.
pub fn valid_image_path(name: &str) -> bool {
    match name.split_once('/') {
        None => valid_file_name(name),
        Some((dir, file)) => {
            let pid = dir
                .strip_prefix("proc-")
                .and_then(|p| p.parse::<i32>().ok());
            pid.is_some_and(|p| p > 0 && crate::tree_process_dir(p) == dir) && valid_file_name(file)
        }
    }
}

/// The pre-shared key both ends of a migration hold.
#[derive(Clone)]
pub struct Key([u8; KEY_LEN]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<secret>)")
    }
}

/// A fresh random migration id (`Hello::session`).
pub fn new_session_id() -> Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| NetError::Io(io::Error::other(e.to_string())))?;
    Ok(u64::from_le_bytes(b))
}

impl Key {
    pub fn generate() -> Result<Key> {
        let mut k = [0u8; KEY_LEN];
        getrandom::fill(&mut k).map_err(|e| NetError::Io(io::Error::other(e.to_string())))?;
        Ok(Key(k))
    }

    /// Write a new credential file, readable by its owner only; refuses to
    /// overwrite an existing file.
    pub fn write_new(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |what: String| NetError::Key {
            path: path.to_path_buf(),
            what,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| err(format!("cannot create: {e}")))?;
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(f, "{KEY_HEADER} {hex}").map_err(|e| err(format!("cannot write: {e}")))?;
        f.sync_all()
            .map_err(|e| err(format!("cannot write: {e}")))?;
        Ok(())
    }

    /// Read a credential file; refuses one that others may read or write.
    pub fn load(path: &Path) -> Result<Key> {
        use std::os::unix::fs::MetadataExt;
        let err = |what: String| NetError::Key {
            path: path.to_path_buf(),
            what,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
        if meta.mode() & 0o077 != 0 {
            return Err(err(format!(
                "permissions {:o} let others read or change it; chmod 600 it",
                meta.mode() & 0o777
            )));
        }
        if meta.len() > 4096 {
            return Err(err("is not a tern credential (too large)".into()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let hex = text
            .trim()
            .strip_prefix(KEY_HEADER)
            .map(str::trim)
            .ok_or_else(|| err(format!("does not start with {KEY_HEADER}")))?;
        if hex.len() != KEY_LEN * 2 {
            return Err(err(format!(
                "key is {} hex digits, not {}",
                hex.len(),
                KEY_LEN * 2
            )));
        }
        let mut k = [0u8; KEY_LEN];
        for (i, byte) in k.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| err("key is not hexadecimal".into()))?;
        }
        Ok(Key(k))
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(io: &mut W, data: &[u8]) -> Result<()> {
    let len = u16::try_from(data.len()).map_err(|_| NetError::TooLarge {
        size: data.len(),
        limit: NOISE_MAX,
    })?;
    let mut out = Vec::with_capacity(2 + data.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    io.write_all(&out).await?;
    io.flush().await?;
    Ok(())
}

/// Both handshake messages of `NOISE_PARAMS` (an X25519 ephemeral key and
/// the tag of an empty payload) have this size.
const HANDSHAKE_FRAME: usize = 32 + TAG;

async fn read_frame<R: AsyncRead + Unpin>(io: &mut R, buf: &mut Vec<u8>) -> Result<()> {
    read_frame_sized(io, buf, None).await
}

/// Read one frame; `want`: the only size acceptable (a handshake frame of
/// another size is refused at once rather than waited for).
async fn read_frame_sized<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
    want: Option<usize>,
) -> Result<()> {
    let mut len = [0u8; 2];
    match io.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(NetError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u16::from_be_bytes(len) as usize;
    if want.is_some_and(|w| w != len) {
        return Err(NetError::Auth(format!(
            "a handshake frame of {len} bytes (tern's are {HANDSHAKE_FRAME}): not tern, or another protocol"
        )));
    }
    buf.resize(len, 0);
    io.read_exact(buf).await.map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            NetError::Closed
        } else {
            e.into()
        }
    })?;
    Ok(())
}

fn noise_builder(key: &Key) -> Result<snow::Builder<'_>> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|e: snow::Error| NetError::Auth(e.to_string()))?;
    snow::Builder::new(params)
        .prologue(PROLOGUE)
        .and_then(|b| b.psk(0, &key.0))
        .map_err(|e| NetError::Auth(e.to_string()))
}

/// Run the handshake on `io` as the connecting side (`initiator`) or the
/// accepting side, and split the connection into an encrypted sender and
/// receiver.
pub async fn handshake<S>(
    io: S,
    key: &Key,
    initiator: bool,
) -> Result<(
    Sender<tokio::io::WriteHalf<S>>,
    Receiver<tokio::io::ReadHalf<S>>,
)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut io = io;
    let builder = noise_builder(key)?;
    let auth = |e: snow::Error| NetError::Auth(e.to_string());
    let mut hs = if initiator {
        builder.build_initiator().map_err(auth)?
    } else {
        builder.build_responder().map_err(auth)?
    };
    let mut msg = vec![0u8; NOISE_MAX];
    let mut frame = Vec::new();
    let mut scratch = vec![0u8; NOISE_MAX];
    if initiator {
        let n = hs.write_message(&[], &mut msg).map_err(auth)?;
        write_frame(&mut io, &msg[..n]).await?;
        // A responder that cannot authenticate us just hangs up.
        read_frame_sized(&mut io, &mut frame, Some(HANDSHAKE_FRAME)).await.map_err(|e| match e {
            NetError::Closed => NetError::Auth(
                "the peer hung up during the handshake: it holds another key, or is not a tern serve".into(),
            ),
            other => other,
        })?;
        hs.read_message(&frame, &mut scratch).map_err(auth)?;
    } else {
        read_frame_sized(&mut io, &mut frame, Some(HANDSHAKE_FRAME)).await?;
        hs.read_message(&frame, &mut scratch).map_err(auth)?;
        let n = hs.write_message(&[], &mut msg).map_err(auth)?;
        write_frame(&mut io, &msg[..n]).await?;
    }
    let transport = Arc::new(hs.into_stateless_transport_mode().map_err(auth)?);
    let (r, w) = tokio::io::split(io);
    Ok((
        Sender {
            io: w,
            noise: transport.clone(),
            nonce: 0,
            plain: Vec::new(),
            out: Vec::new(),
            bytes: 0,
        },
        Receiver {
            io: r,
            noise: transport,
            nonce: 0,
            frame: Vec::with_capacity(NOISE_MAX),
            seg: vec![0u8; NOISE_MAX],
            bytes: 0,
        },
    ))
}

/// The sending half of an established channel.
#[derive(Debug)]
pub struct Sender<W> {
    io: W,
    noise: Arc<snow::StatelessTransportState>,
    nonce: u64,
    plain: Vec<u8>,
    out: Vec<u8>,
    /// Bytes put on the wire so far (ciphertext and framing).
    pub bytes: u64,
}

impl<W: AsyncWrite + Unpin> Sender<W> {
    pub async fn send(&mut self, msg: &Message) -> Result<()> {
        // Length prefix, then the message, encoded straight into a buffer
        // kept between calls (pieces of 4 MiB: no allocation per message).
        // Bulk data (file pieces, pages) is not copied there: only what
        // precedes it, and the pieces are encrypted from the data itself.
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        plain.extend_from_slice(&[0u8; 4]);
        let (mut plain, bulk) = bulk_head(msg, plain)?;
        let body_len = plain.len() - 4 + bulk.len();
        let len = match u32::try_from(body_len) {
            Ok(len) if body_len <= MAX_MESSAGE => len,
            _ => {
                self.plain = plain;
                return Err(NetError::TooLarge {
                    size: body_len,
                    limit: MAX_MESSAGE,
                });
            }
        };
        plain[..4].copy_from_slice(&len.to_le_bytes());
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let sealed = self.seal(&mut plain, bulk, &mut out);
        self.plain = plain;
        if let Err(e) = sealed {
            self.out = out;
            return Err(e);
        }
        let r = async {
            self.io.write_all(&out).await?;
            self.io.flush().await
        }
        .await;
        self.bytes += out.len() as u64;
        self.out = out;
        r?;
        Ok(())
    }

    /// Encrypt the message `head ++ bulk` into `out` as Noise messages of
    /// at most NOISE_MAX bytes, each after its u16 length. A piece wholly
    /// inside `head` or `bulk` is encrypted from there; the one across
    /// both is gathered in `head`'s spare room first.
    fn seal(&mut self, head: &mut Vec<u8>, bulk: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let piece = NOISE_MAX - TAG;
        let head_len = head.len();
        let total = head_len + bulk.len();
        let mut at = 0;
        while at < total {
            let end = (at + piece).min(total);
            let p: &[u8] = if at >= head_len {
                &bulk[at - head_len..end - head_len]
            } else if end <= head_len {
                &head[at..end]
            } else {
                // Gathered after the head (which stays as it is).
                head.truncate(head_len);
                let from_head = end.min(head_len);
                head.extend_from_within(at..from_head);
                head.extend_from_slice(&bulk[..end.saturating_sub(head_len)]);
                &head[head_len..]
            };
            let o = out.len();
            out.resize(o + 2 + p.len() + TAG, 0);
            let n = self
                .noise
                .write_message(self.nonce, p, &mut out[o + 2..])
                .map_err(|_| NetError::Decrypt)?;
            self.nonce += 1;
            // A Noise message is at most NOISE_MAX (65535) bytes.
            let n16 = u16::try_from(n).map_err(|_| NetError::Decrypt)?;
            out[o..o + 2].copy_from_slice(&n16.to_be_bytes());
            out.truncate(o + 2 + n);
            at = end;
        }
        head.truncate(head_len);
        Ok(())
    }

    /// Close the sending direction.
    pub async fn shutdown(&mut self) -> Result<()> {
        self.io.shutdown().await?;
        Ok(())
    }
}

/// `msg` postcard-encoded after what `buf` holds, except that the bytes
/// of a bulk message (file data, pages; the last field) are returned as
/// they are instead of copied: `buf ++ bulk` is the encoding.
fn bulk_head(msg: &Message, buf: Vec<u8>) -> Result<(Vec<u8>, &[u8])> {
    let encode = |m: &Message, buf: Vec<u8>| {
        postcard::to_extend(m, buf).map_err(|e| NetError::Decode(e.to_string()))
    };
    let (bare, bulk) = match msg {
        Message::FileData {
            round,
            name,
            offset,
            data,
        } if data.len() >= BULK_MIN => (
            Message::FileData {
                round: *round,
                name: name.clone(),
                offset: *offset,
                data: Vec::new(),
            },
            data.as_slice(),
        ),
        Message::Pages { start, data } if data.len() >= BULK_MIN => (
            Message::Pages {
                start: *start,
                data: Vec::new(),
            },
            data.as_slice(),
        ),
        _ => return Ok((encode(msg, buf)?, &[])),
    };
    // Its empty byte string, last, is the length 0 (one byte): replaced
    // by the real length, which postcard writes as it writes any length.
    let mut head = encode(&bare, buf)?;
    if head.pop() != Some(0) {
        return Err(NetError::Decode("tern bug: bulk message layout".into()));
    }
    let head =
        postcard::to_extend(&bulk.len(), head).map_err(|e| NetError::Decode(e.to_string()))?;
    Ok((head, bulk))
}

/// `data` (whole pages) compressed with zstd at `level`, for `ZstdPages`.
pub fn compress_pages(data: &[u8], level: i32) -> Result<Vec<u8>> {
    zstd::bulk::compress(data, level).map_err(|e| NetError::Protocol(format!("zstd: {e}")))
}

/// The `len` bytes of pages `data` decompresses to; anything that
/// decompresses to another size, or is not zstd, is refused (never more
/// than `len` bytes are made).
pub fn decompress_pages(data: &[u8], len: usize) -> Result<Vec<u8>> {
    match zstd::bulk::decompress(data, len) {
        Ok(v) if v.len() == len => Ok(v),
        Ok(v) => Err(NetError::Decode(format!(
            "compressed pages hold {} bytes, not the {len} announced",
            v.len()
        ))),
        Err(e) => Err(NetError::Decode(format!("compressed pages: {e}"))),
    }
}

/// Data from this size on is sent without copying it into the message
/// buffer first.
const BULK_MIN: usize = 64 << 10;

/// The receiving half of an established channel.
#[derive(Debug)]
pub struct Receiver<R> {
    io: R,
    noise: Arc<snow::StatelessTransportState>,
    nonce: u64,
    frame: Vec<u8>,
    seg: Vec<u8>,
    pub bytes: u64,
}

impl<R: AsyncRead + Unpin> Receiver<R> {
    /// The next message. Not cancel-safe: a call abandoned half-way (e.g. by
    /// `select!`) loses its place in the stream; read from a task of its
    /// own and forward the messages.
    pub async fn recv(&mut self) -> Result<Message> {
        let mut body: Vec<u8> = Vec::new();
        let mut want: Option<usize> = None;
        loop {
            read_frame(&mut self.io, &mut self.frame).await?;
            self.bytes += 2 + self.frame.len() as u64;
            if let Some(len) = want {
                // Decrypted straight into the message.
                let at = body.len();
                let plain = self.frame.len().checked_sub(TAG).ok_or(NetError::Decrypt)?;
                if at + plain > len {
                    return Err(NetError::Decode("pieces longer than the message".into()));
                }
                body.resize(at + plain, 0);
                let n = self
                    .noise
                    .read_message(self.nonce, &self.frame, &mut body[at..])
                    .map_err(|_| NetError::Decrypt)?;
                self.nonce += 1;
                body.truncate(at + n);
                if body.len() == len {
                    return Message::decode(&body);
                }
                continue;
            }
            let n = self
                .noise
                .read_message(self.nonce, &self.frame, &mut self.seg)
                .map_err(|_| NetError::Decrypt)?;
            self.nonce += 1;
            let mut p = &self.seg[..n];
            if want.is_none() {
                if p.len() < 4 {
                    return Err(NetError::Decode(
                        "first piece shorter than its length".into(),
                    ));
                }
                let len = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize;
                if len > MAX_MESSAGE {
                    return Err(NetError::TooLarge {
                        size: len,
                        limit: MAX_MESSAGE,
                    });
                }
                body.reserve_exact(len);
                want = Some(len);
                p = &p[4..];
            }
            let len = want.unwrap_or(0);
            if body.len() + p.len() > len {
                return Err(NetError::Decode("pieces longer than the message".into()));
            }
            body.extend_from_slice(p);
            if body.len() == len {
                return Message::decode(&body);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulky(len: usize) -> Vec<Message> {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + len).to_le_bytes()[0]).collect();
        vec![
            Message::FileData {
                round: 300,
                name: "pages.img".into(),
                offset: 1 << 40,
                data: data.clone(),
            },
            Message::Pages {
                start: 0x7fff_0000_0000,
                data,
            },
        ]
    }

    /// Sizes around the bulk threshold, the Noise piece (65519 bytes), a
    /// varint length's steps and a large message.
    const SIZES: [usize; 9] = [
        0,
        1,
        BULK_MIN - 1,
        BULK_MIN,
        65519,
        65519 * 2 + 3,
        1 << 14,
        1 << 21,
        (4 << 20) + 17,
    ];

    #[test]
    fn compressed_pages_come_back_only_at_their_announced_size() {
        let pages: Vec<u8> = (0..3 * 4096)
            .map(|i: usize| (i / 4096).to_le_bytes()[0])
            .collect();
        let packed = compress_pages(&pages, 3).expect("compress");
        assert!(packed.len() < pages.len() / 10);
        assert_eq!(decompress_pages(&packed, pages.len()).expect("back"), pages);
        // Announced smaller or larger than it is, or not zstd: refused.
        assert!(decompress_pages(&packed, 2 * 4096).is_err());
        assert!(decompress_pages(&packed, 4 * 4096).is_err());
        assert!(decompress_pages(&pages[..100], 4096).is_err());
    }

    #[test]
    fn bulk_messages_encode_exactly_as_postcard_does() {
        for len in SIZES {
            for m in bulky(len) {
                let (head, bulk) = bulk_head(&m, vec![9, 9]).expect("encode");
                let mut ours = head;
                ours.extend_from_slice(bulk);
                let mut theirs = vec![9, 9];
                theirs.extend(postcard::to_stdvec(&m).expect("postcard"));
                assert!(ours == theirs, "{} of {len} bytes", m.kind());
                assert_eq!(bulk.is_empty(), len < BULK_MIN);
            }
        }
    }

    #[test]
    fn messages_of_every_size_cross_the_channel_whole() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let key = Key::generate().expect("key");
            let (a, b) = tokio::io::duplex(1 << 16);
            let k2 = key.clone();
            let receiver = tokio::spawn(async move {
                let (_tx, mut rx) = handshake(b, &k2, false).await.expect("handshake");
                let mut got = Vec::new();
                while let Ok(m) = rx.recv().await {
                    got.push(m);
                }
                got
            });
            let (mut tx, _rx) = handshake(a, &key, true).await.expect("handshake");
            let mut sent = Vec::new();
            for len in SIZES {
                for m in bulky(len) {
                    tx.send(&m).await.expect("send");
                    sent.push(m);
                }
            }
            tx.shutdown().await.expect("shutdown");
            drop(tx);
            let got = receiver.await.expect("receiver");
            assert_eq!(got.len(), sent.len());
            for (g, s) in got.iter().zip(&sent) {
                assert!(g == s, "{} differs after the channel", s.kind());
            }
        });
    }

    #[test]
    fn image_paths_are_files_or_one_process_directory_down() {
        for ok in ["core.img", "proc-12/core.img", "proc-1/pages-3.img"] {
            assert!(valid_image_path(ok), "{ok}");
        }
        for bad in [
            "proc-12/x/core.img",
            "../core.img",
            "proc-0/core.img",
            "proc-012/core.img",
            "proc-12/../core.img",
            "other/core.img",
            "proc-12/",
            "/core.img",
        ] {
            assert!(!valid_image_path(bad), "{bad}");
        }
    }
}
