//! Windowed, verified, resumable downloads (README "Transfers").
//!
//! Ranged fs_reads, a window of them in flight, are written in order to the sink and hashed as
//! they are written; meanwhile the agent hashes the file (fs_digest), and the two BLAKE3 digests
//! must agree, else the file changed under the transfer. [`Client::get_file`] writes to a hidden
//! partial file beside the local target and renames it into place once verified; a partial file
//! left by an interrupted run is continued from its end (and started over if the digest then
//! disagrees: the remote file changed meanwhile).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::client::Client;
use crate::error::ClientError;
use crate::pipeline::HashThread;
use crate::transfer::plan_chunks;
use crate::upload::{Progress, TransferReport, unknown_op, window_for};

/// The hashing speed a digest request's timeout allows for (bytes per second).
const SLOWEST_HASH: u64 = 50 << 20;

/// Options of [`Client::get_file`].
#[derive(Clone, Default)]
pub struct GetOptions {
    pub progress: Option<Arc<dyn Progress>>,
    /// Ranged reads in flight (default: sized from the chunk size, see [`window_for`]).
    pub window: Option<usize>,
    /// Start over even when a partial file of an earlier run is there.
    pub restart: bool,
}

/// Where downloaded bytes go, in order; it hashes them as well.
trait Sink {
    async fn accept(&mut self, data: Bytes) -> Result<(), ClientError>;
    /// Flushes (and syncs, for a file); the digest of all the content.
    async fn finish(&mut self) -> Result<blake3::Hash, ClientError>;
}

/// Any `AsyncWrite`, hashed on the way.
struct WriterSink<'a, W> {
    out: &'a mut W,
    hasher: blake3::Hasher,
}

impl<W: AsyncWrite + Unpin> Sink for WriterSink<'_, W> {
    async fn accept(&mut self, data: Bytes) -> Result<(), ClientError> {
        self.hasher.update(&data);
        self.out.write_all(&data).await.map_err(|e| ClientError::io("writing download", e))
    }

    async fn finish(&mut self) -> Result<blake3::Hash, ClientError> {
        self.out.flush().await.map_err(|e| ClientError::io("writing download", e))?;
        Ok(self.hasher.finalize())
    }
}

/// A local file written by a thread of its own and hashed by another ([`HashThread`]), so
/// neither the copy nor the hash holds up the requests in flight, nor each other; a few chunks
/// queue between them, no more.
struct FileSink {
    tx: Option<tokio::sync::mpsc::Sender<Bytes>>,
    thread: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    hash: HashThread,
    path: PathBuf,
}

impl FileSink {
    fn new(mut file: std::fs::File, hasher: blake3::Hasher, path: PathBuf, depth: usize) -> FileSink {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(depth.max(1));
        let thread = tokio::task::spawn_blocking(move || {
            let mut at = std::io::Seek::stream_position(&mut file)?;
            while let Some(data) = rx.blocking_recv() {
                std::io::Write::write_all(&mut file, &data)?;
                start_writeback(&file, at, data.len());
                at += data.len() as u64;
            }
            file.sync_all()
        });
        FileSink { tx: Some(tx), thread: Some(thread), hash: HashThread::start(hasher), path }
    }

    async fn join(&mut self) -> Result<(), ClientError> {
        self.tx = None;
        let thread = self
            .thread
            .take()
            .ok_or_else(|| ClientError::Protocol("download sink already finished".into()))?;
        let joined =
            thread.await.map_err(|e| ClientError::Protocol(format!("the download writer failed: {e}")))?;
        joined.map_err(|e| ClientError::io(format!("writing {}", self.path.display()), e))
    }
}

impl Sink for FileSink {
    async fn accept(&mut self, data: Bytes) -> Result<(), ClientError> {
        self.hash.feed(data.clone()).await?;
        let sent = match &self.tx {
            Some(tx) => tx.send(data).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The writer stopped: its error says why.
        self.join().await?;
        Err(ClientError::Protocol("the download writer stopped early".into()))
    }

    async fn finish(&mut self) -> Result<blake3::Hash, ClientError> {
        self.join().await?;
        self.hash.finish().await
    }
}

/// What [`Client::fetch`] did.
struct Fetched {
    total: u64,
    verified: bool,
    digest: blake3::Hash,
}

/// The hidden partial file `get_file` writes beside `local`.
pub fn partial_path(local: &Path) -> Result<PathBuf, ClientError> {
    let name = local
        .file_name()
        .ok_or_else(|| ClientError::InvalidArgument(format!("{} does not name a file", local.display())))?;
    Ok(local.with_file_name(format!(".{}.tether-part", name.to_string_lossy())))
}

impl Client {
    /// Streams a whole file into `out` with ranged reads (a window of them in flight) and checks
    /// its BLAKE3 against the agent's; returns the bytes written. The size is taken from the first
    /// reply; a file that changes meanwhile fails with [`ClientError::FileChanged`].
    pub async fn download<W: AsyncWrite + Unpin>(&self, path: &str, out: &mut W) -> Result<u64, ClientError> {
        let mut sink = WriterSink { out, hasher: blake3::Hasher::new() };
        let fetched = self.fetch(path, 0, &mut sink, &GetOptions::default()).await?;
        Ok(fetched.total)
    }

    /// Downloads `path` to the local file `local`, replaced atomically once the content's digest
    /// matches the agent's; an interrupted run's partial file is continued (see the module doc).
    pub async fn get_file(
        &self,
        path: &str,
        local: &Path,
        options: &GetOptions,
    ) -> Result<TransferReport, ClientError> {
        let partial = partial_path(local)?;
        let mut restart = options.restart;
        loop {
            let (file, start, hasher) = open_partial(&partial, restart).await?;
            let window = options.window.unwrap_or_else(|| window_for(self.chunk_size()));
            let mut sink = FileSink::new(file, hasher, partial.clone(), window);
            let fetched = self.fetch(path, start, &mut sink, options).await;
            if fetched.is_err() && sink.thread.is_some() {
                // Let the writer finish with the partial file before it is kept or reopened.
                let _ = sink.join().await;
            }
            match fetched {
                Ok(fetched) => {
                    tokio::fs::rename(&partial, local)
                        .await
                        .map_err(|e| ClientError::io(format!("renaming onto {}", local.display()), e))?;
                    return Ok(TransferReport {
                        size: fetched.total,
                        sent: fetched.total - start,
                        skipped: start,
                        blake3: fetched.digest.to_hex().to_string(),
                        resumed: start > 0,
                        agent_received: 0,
                        verified: fetched.verified,
                    });
                }
                Err(ClientError::FileChanged { .. }) if start > 0 && !restart => restart = true,
                Err(err @ ClientError::FileChanged { .. }) => {
                    let _ = tokio::fs::remove_file(&partial).await;
                    return Err(err);
                }
                // Anything else keeps the partial file for the next run.
                Err(err) => return Err(err),
            }
        }
    }

    /// Reads `path` from `start` to its end into `out`, feeding `hasher` (which holds
    /// `[0, start)` already), and checks the result against the agent's digest.
    async fn fetch(
        &self,
        path: &str,
        start: u64,
        sink: &mut impl Sink,
        options: &GetOptions,
    ) -> Result<Fetched, ClientError> {
        let chunk = self.chunk_size() as u64;
        let first = self.read(path, start, chunk).await?;
        let total = first.total_size;
        if total < start {
            return Err(changed(path, format!("it has {total} bytes, fewer than the {start} already here")));
        }
        if let Some(p) = &options.progress {
            p.start(Some(total));
            p.advance(start);
        }
        let digest_timeout = self.request_timeout() + Duration::from_secs(total / SLOWEST_HASH);
        let window = options.window.unwrap_or_else(|| window_for(chunk as usize)).max(1);
        let reads = self.read_rest(path, start, total, first.content, sink, window, options);
        let (read, digest) = tokio::join!(reads, self.digest(path, digest_timeout));
        read?;
        let ours = sink.finish().await?;
        match digest {
            Ok(theirs) if theirs.size == total && theirs.blake3.as_ref() == ours.as_bytes() => {
                Ok(Fetched { total, verified: true, digest: ours })
            }
            Ok(theirs) => Err(changed(
                path,
                format!(
                    "it changed while being read: the agent now has {} bytes with another BLAKE3",
                    theirs.size
                ),
            )),
            Err(e) if unknown_op(&e) => Ok(Fetched { total, verified: false, digest: ours }),
            Err(e) => Err(e),
        }
    }

    /// Writes the first reply's content, then the rest of `[start, total)` read with `window`
    /// ranged reads in flight, in order.
    #[allow(clippy::too_many_arguments)]
    async fn read_rest(
        &self,
        path: &str,
        start: u64,
        total: u64,
        first: Bytes,
        out: &mut impl Sink,
        window: usize,
        options: &GetOptions,
    ) -> Result<(), ClientError> {
        let chunk = self.chunk_size() as u64;
        let head = (total - start).min(chunk);
        self.fill_range(path, start, head, first, out).await?;
        advance(options, head);
        let from = start + head;
        let plan = plan_chunks(total - from, chunk as usize).into_iter().filter(|&(_, len)| len > 0);
        let mut reads =
            futures::stream::iter(plan)
                .map(|(offset, len)| async move {
                    (from + offset, len, self.read(path, from + offset, len).await)
                })
                .buffered(window);
        while let Some((offset, len, reply)) = reads.next().await {
            self.fill_range(path, offset, len, reply?.content, out).await?;
            advance(options, len);
        }
        Ok(())
    }

    /// Writes `content` (the reply for `offset..offset+len`) to `out`, then reads whatever the
    /// agent left out of that range (it may cap a reply) until the range is complete.
    async fn fill_range(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        mut content: Bytes,
        out: &mut impl Sink,
    ) -> Result<(), ClientError> {
        let end = offset + len;
        let mut pos = offset;
        loop {
            let take = content.len().min(usize::try_from(end - pos).unwrap_or(usize::MAX));
            out.accept(content.slice(..take)).await?;
            pos += take as u64;
            if pos >= end {
                return Ok(());
            }
            let more = self.read(path, pos, end - pos).await?;
            if more.content.is_empty() {
                return Err(changed(
                    path,
                    format!(
                        "file shrank to {} bytes while being read (expected more than {pos})",
                        more.total_size
                    ),
                ));
            }
            content = more.content;
        }
    }
}

/// Starts writing a range of `file` to disk without waiting, so the final fsync has little left
/// and the disk works while the network does (best effort: ignored where unsupported).
fn start_writeback(file: &std::fs::File, offset: u64, len: usize) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is borrowed from
    // `file`, open for the duration of the call.
    let _ = unsafe {
        libc::sync_file_range(std::os::fd::AsRawFd::as_raw_fd(file), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

fn advance(options: &GetOptions, bytes: u64) {
    if let Some(p) = &options.progress {
        p.advance(bytes);
    }
}

fn changed(path: &str, message: String) -> ClientError {
    ClientError::FileChanged { path: path.to_owned(), message }
}

/// Opens (creates) the partial file, emptied when `restart`; it is positioned at its end, with
/// its length and the hasher over what it holds (read off the async workers).
async fn open_partial(
    partial: &Path,
    restart: bool,
) -> Result<(std::fs::File, u64, blake3::Hasher), ClientError> {
    let path = partial.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut file =
            std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path)?;
        if restart {
            file.set_len(0)?;
        }
        let len = file.metadata()?.len();
        let mut hasher = blake3::Hasher::new();
        std::io::copy(&mut std::io::Read::take(&mut file, len), &mut hasher)?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(len))?;
        Ok((file, len, hasher))
    })
    .await
    .map_err(|e| ClientError::Protocol(format!("hashing the partial download failed: {e}")))?
    .map_err(|e| ClientError::io(format!("reading {}", partial.display()), e))
}
