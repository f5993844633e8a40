//! A pipelined page-file writer: the caller reads target memory into pooled
//! buffers, worker threads drop zero pages, checksum and compress, and one
//! thread appends to the file. Reading, compressing and writing overlap, so
//! a dump runs at the speed of its slowest stage rather than their sum.
//!
//! None of these threads touch ptrace: only the caller's thread does.

use crate::error::Result;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tern_wire as wire;
use wire::chunks::ChunkStats;

/// Bytes per read buffer (and the largest chunk).
pub const BATCH_BYTES: usize = wire::chunks::MAX_CHUNK_RAW as usize;

/// Which pages of a batch go into the file.
#[derive(Debug, Clone)]
pub enum PageFilter {
    All,
    /// Leave out all-zero pages (anonymous memory reads back as zero anyway).
    SkipZero,
    /// Exactly the pages marked true.
    Only(Vec<bool>),
}

struct Batch {
    addr: u64,
    len: usize,
    filter: PageFilter,
    buf: Vec<u8>,
    /// Scattered pages: the address of each page of `buf` (else they are
    /// contiguous from `addr`).
    addrs: Option<Vec<u64>>,
}

type EncodedPool = Arc<Mutex<Vec<wire::EncodedChunks>>>;

#[derive(Debug)]
pub struct PageWriter {
    free_rx: Receiver<Vec<u8>>,
    work_tx: Option<SyncSender<Batch>>,
    workers: Vec<JoinHandle<Result<()>>>,
    writer: Option<JoinHandle<Result<ChunkStats>>>,
    page: usize,
}

pub fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(16).fold(0u128, |acc, c| {
        let mut b = [0u8; 16];
        b.copy_from_slice(c);
        acc | u128::from_ne_bytes(b)
    }) == 0
}

/// Encode the runs of kept pages of one batch.
fn encode_batch(
    enc: &mut wire::ChunkEncoder,
    b: &Batch,
    page: usize,
    out: &mut wire::EncodedChunks,
) -> Result<()> {
    let data = &b.buf[..b.len];
    let keep = |k: usize, p: &[u8]| match &b.filter {
        PageFilter::All => true,
        PageFilter::SkipZero => !is_zero(p),
        PageFilter::Only(v) => v.get(k).copied().unwrap_or(false),
    };
    let addr_of = |k: usize| match &b.addrs {
        Some(a) => a[k],
        None => b.addr + (k * page) as u64,
    };
    // Runs of kept pages that are also contiguous in memory: one chunk each.
    let mut run_start: Option<usize> = None;
    for (k, p) in data.chunks(page).enumerate() {
        let off = k * page;
        let kept = keep(k, p);
        if let Some(s) = run_start {
            if !kept || addr_of(k) != addr_of(k - 1) + page as u64 {
                enc.encode(addr_of(s / page), data, s..off, out)?;
                run_start = None;
            }
        }
        if kept && run_start.is_none() {
            run_start = Some(off);
        }
    }
    if let Some(s) = run_start {
        enc.encode(addr_of(s / page), data, s..data.len(), out)?;
    }
    Ok(())
}

impl PageWriter {
    pub fn create(path: &Path, codec: wire::Codec, page: usize) -> Result<PageWriter> {
        let mut file = wire::ChunkWriter::create(path, codec)?;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8);
        let buffers = threads * 2 + 2;
        let (free_tx, free_rx) = mpsc::sync_channel::<Vec<u8>>(buffers);
        for _ in 0..buffers {
            // Cannot fail: the channel has room for every buffer. They grow
            // on first use (`buffer(len)`): a small final delta must not
            // pay for zeroing the whole pool.
            let _ = free_tx.send(Vec::new());
        }
        let (work_tx, work_rx) = mpsc::sync_channel::<Batch>(buffers);
        let work_rx = Arc::new(Mutex::new(work_rx));
        // Encoded chunks travel with the buffer they may point into; the
        // writer gives the buffer back once written.
        let (out_tx, out_rx) = mpsc::sync_channel::<(wire::EncodedChunks, Vec<u8>)>(buffers);
        let pool: EncodedPool = Arc::new(Mutex::new(Vec::new()));

        let mut workers = Vec::with_capacity(threads);
        for _ in 0..threads {
            let work_rx = Arc::clone(&work_rx);
            let out_tx = out_tx.clone();
            let pool = Arc::clone(&pool);
            let mut enc = wire::ChunkEncoder::new(codec)?;
            workers.push(std::thread::spawn(move || -> Result<()> {
                loop {
                    let next = match work_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return Ok(()), // another worker panicked
                    };
                    let Ok(batch) = next else { return Ok(()) };
                    let mut out = pool
                        .lock()
                        .ok()
                        .and_then(|mut p| p.pop())
                        .unwrap_or_default();
                    out.clear();
                    encode_batch(&mut enc, &batch, page, &mut out)?;
                    // A closed channel means the pipeline is shutting down
                    // after an error elsewhere; that error is reported.
                    if out_tx.send((out, batch.buf)).is_err() {
                        return Ok(());
                    }
                }
            }));
        }
        drop(out_tx);
        let writer = std::thread::spawn(move || -> Result<ChunkStats> {
            for (enc, buf) in out_rx {
                file.write_encoded(&enc, &buf)?;
                if let Ok(mut p) = pool.lock() {
                    p.push(enc);
                }
                // The reader may have finished: a closed pool is fine.
                let _ = free_tx.send(buf);
            }
            Ok(file.finish()?)
        });
        Ok(PageWriter {
            free_rx,
            work_tx: Some(work_tx),
            workers,
            writer: Some(writer),
            page,
        })
    }

    /// A buffer of at least `len` (at most [`BATCH_BYTES`]) bytes to read
    /// pages into; `None` if the pipeline stopped (call
    /// [`finish`](Self::finish) for the error).
    pub fn buffer(&mut self, len: usize) -> Option<Vec<u8>> {
        let mut buf = self.free_rx.recv().ok()?;
        if buf.len() < len {
            buf.resize(len.min(BATCH_BYTES), 0);
        }
        Some(buf)
    }

    /// Queue the pages of `buf[..len]` (starting at `addr`) that `filter`
    /// keeps. Returns false if the pipeline stopped.
    pub fn submit(&mut self, addr: u64, buf: Vec<u8>, len: usize, filter: PageFilter) -> bool {
        debug_assert!(len.is_multiple_of(self.page) && len <= buf.len());
        match &self.work_tx {
            Some(tx) => tx
                .send(Batch {
                    addr,
                    len,
                    filter,
                    buf,
                    addrs: None,
                })
                .is_ok(),
            None => false,
        }
    }

    /// Queue pages at scattered addresses: page k of `buf` belongs at
    /// `addrs[k]` (ascending); `filter` as for [`submit`](Self::submit).
    pub fn submit_scattered(&mut self, addrs: Vec<u64>, buf: Vec<u8>, filter: PageFilter) -> bool {
        let len = addrs.len() * self.page;
        debug_assert!(len <= buf.len());
        match &self.work_tx {
            Some(tx) => tx
                .send(Batch {
                    addr: addrs.first().copied().unwrap_or(0),
                    len,
                    filter,
                    buf,
                    addrs: Some(addrs),
                })
                .is_ok(),
            None => false,
        }
    }

    /// Drain the pipeline, write the trailer, fsync. Reports the first error
    /// of any stage (the writer's first: a full disk is the root cause).
    pub fn finish(mut self) -> Result<ChunkStats> {
        self.work_tx = None;
        let mut worker_err = None;
        for w in self.workers.drain(..) {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    worker_err.get_or_insert(e);
                }
                Err(_) => {
                    worker_err.get_or_insert(crate::EngineError::Internal(
                        "a page compression thread panicked".into(),
                    ));
                }
            }
        }
        let stats = match self.writer.take().map(|w| w.join()) {
            Some(Ok(r)) => r?,
            _ => {
                return Err(crate::EngineError::Internal(
                    "the page writer thread panicked".into(),
                ))
            }
        };
        match worker_err {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }
}
