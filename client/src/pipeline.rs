//! The per-byte work of a transfer, each on a thread of its own beside the requests in flight:
//! reading an upload's local file ([`FileChunks`]) and hashing the content ([`HashThread`]).
//!
//! On the async workers these would take turns with the NATS connection that carries the
//! chunks: BLAKE3 of a 1 MiB chunk and a 1 MiB file read each take about as long as moving the
//! chunk over loopback. Off them, the three overlap. A few chunks queue between the stages, no
//! more, so memory stays bounded whatever the file's size.

use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::ClientError;
use crate::transfer::ChunkSource;

/// Chunks queued between two stages.
const DEPTH: usize = 4;

/// BLAKE3 of a stream of chunks, computed by a blocking thread as they are fed.
pub(crate) struct HashThread {
    tx: Option<mpsc::Sender<Bytes>>,
    thread: Option<JoinHandle<blake3::Hasher>>,
}

impl HashThread {
    /// Continues `hasher` (which may hold a prefix already).
    pub(crate) fn start(mut hasher: blake3::Hasher) -> HashThread {
        let (tx, mut rx) = mpsc::channel::<Bytes>(DEPTH);
        let thread = tokio::task::spawn_blocking(move || {
            while let Some(data) = rx.blocking_recv() {
                hasher.update(&data);
            }
            hasher
        });
        HashThread { tx: Some(tx), thread: Some(thread) }
    }

    /// Hashes `data` next (waits while the thread is [`DEPTH`] chunks behind).
    pub(crate) async fn feed(&mut self, data: Bytes) -> Result<(), ClientError> {
        let sent = match &self.tx {
            Some(tx) => tx.send(data).await.is_ok(),
            None => false,
        };
        if sent { Ok(()) } else { Err(ClientError::Protocol("the hashing thread stopped".into())) }
    }

    /// The digest of everything fed.
    pub(crate) async fn finish(&mut self) -> Result<blake3::Hash, ClientError> {
        self.tx = None;
        let thread =
            self.thread.take().ok_or_else(|| ClientError::Protocol("the digest was already taken".into()))?;
        let hasher = thread.await.map_err(|e| ClientError::Protocol(format!("hashing failed: {e}")))?;
        Ok(hasher.finalize())
    }
}

/// A local file read in chunks by a blocking thread, straight into the buffers that are sent.
pub(crate) struct FileChunks {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    path: PathBuf,
    /// Read but not yet handed out.
    rest: Bytes,
    done: bool,
}

impl FileChunks {
    /// Starts reading `file` (from its current position) in `chunk`-byte pieces: asked for
    /// `chunk` bytes at a time, it hands out the buffers as they were read.
    pub(crate) fn start(file: std::fs::File, path: &Path, chunk: usize) -> FileChunks {
        let (tx, rx) = mpsc::channel(DEPTH);
        tokio::task::spawn_blocking(move || read_chunks(file, chunk.max(1), &tx));
        FileChunks { rx, path: path.to_owned(), rest: Bytes::new(), done: false }
    }
}

/// Reads `file` to its end in `chunk`-byte pieces (the last may be shorter) into `tx`; stops at
/// the first error (sent on) or when the receiver is gone.
fn read_chunks(mut file: std::fs::File, chunk: usize, tx: &mpsc::Sender<std::io::Result<Bytes>>) {
    loop {
        // read_to_end fills the spare capacity without zeroing it first.
        let mut buf = Vec::with_capacity(chunk);
        if let Err(e) = (&mut file).take(chunk as u64).read_to_end(&mut buf) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let filled = buf.len();
        if filled == 0 || tx.blocking_send(Ok(Bytes::from(buf))).is_err() || filled < chunk {
            return;
        }
    }
}

impl ChunkSource for FileChunks {
    async fn next_chunk(&mut self, max: usize) -> Result<Bytes, ClientError> {
        while self.rest.len() < max && !self.done {
            match self.rx.recv().await {
                Some(Ok(data)) if self.rest.is_empty() => self.rest = data,
                Some(Ok(data)) => {
                    // Only when asked for more than was read at a time: joined, a copy.
                    let mut joined = BytesMut::with_capacity(self.rest.len() + data.len());
                    joined.extend_from_slice(&self.rest);
                    joined.extend_from_slice(&data);
                    self.rest = joined.freeze();
                }
                Some(Err(e)) => return Err(ClientError::io(format!("reading {}", self.path.display()), e)),
                None => self.done = true,
            }
        }
        let n = max.min(self.rest.len());
        Ok(self.rest.split_to(n))
    }
}
