//! Windowed, verified, resumable downloads (README "Transfers").
//!
//! Ranged fs_reads, a window of them in flight, are written in order to the sink and hashed as
//! they are written; meanwhile the agent hashes the file (fs_digest), and the two BLAKE3 digests
//! must agree, else the file changed under the transfer. [`Client::get_file`] writes to a hidden
//! partial file beside the local target and renames it into place once verified; a partial file
//! left by an interrupted run is continued from its end (and started over if the digest then
//! disagrees: the remote file changed meanwhile).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use crate::client::Client;
use crate::error::ClientError;
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

/// An `AsyncWrite` that hashes what it passes on.
struct Hashing<'a, W> {
    inner: &'a mut W,
    hasher: &'a mut blake3::Hasher,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Hashing<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            this.hasher.update(&buf[..*n]);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// What [`Client::fetch`] did.
struct Fetched {
    total: u64,
    verified: bool,
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
        let mut hasher = blake3::Hasher::new();
        let fetched = self.fetch(path, 0, &mut hasher, out, &GetOptions::default()).await?;
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
            let io = |e| ClientError::io(format!("writing {}", partial.display()), e);
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(false)
                .open(&partial)
                .await
                .map_err(io)?;
            if restart {
                file.set_len(0).await.map_err(io)?;
            }
            let start = file.metadata().await.map_err(io)?.len();
            let mut hasher = hash_prefix(&partial, start).await?;
            file.seek(std::io::SeekFrom::Start(start)).await.map_err(io)?;
            match self.fetch(path, start, &mut hasher, &mut file, options).await {
                Ok(fetched) => {
                    file.sync_all().await.map_err(io)?;
                    drop(file);
                    tokio::fs::rename(&partial, local)
                        .await
                        .map_err(|e| ClientError::io(format!("renaming onto {}", local.display()), e))?;
                    return Ok(TransferReport {
                        size: fetched.total,
                        sent: fetched.total - start,
                        skipped: start,
                        blake3: hasher.finalize().to_hex().to_string(),
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
    async fn fetch<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        start: u64,
        hasher: &mut blake3::Hasher,
        out: &mut W,
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
        let mut sink = Hashing { inner: out, hasher };
        let reads = self.read_rest(path, start, total, first.content, &mut sink, window, options);
        let (read, digest) = tokio::join!(reads, self.digest(path, digest_timeout));
        read?;
        sink.flush().await.map_err(|e| ClientError::io("writing download", e))?;
        let ours = sink.hasher.clone().finalize();
        match digest {
            Ok(theirs) if theirs.size == total && theirs.blake3.as_ref() == ours.as_bytes() => {
                Ok(Fetched { total, verified: true })
            }
            Ok(theirs) => Err(changed(
                path,
                format!(
                    "it changed while being read: the agent now has {} bytes with another BLAKE3",
                    theirs.size
                ),
            )),
            Err(e) if unknown_op(&e) => Ok(Fetched { total, verified: false }),
            Err(e) => Err(e),
        }
    }

    /// Writes the first reply's content, then the rest of `[start, total)` read with `window`
    /// ranged reads in flight, in order.
    #[allow(clippy::too_many_arguments)]
    async fn read_rest<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        start: u64,
        total: u64,
        first: Bytes,
        out: &mut W,
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
    async fn fill_range<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        mut content: Bytes,
        out: &mut W,
    ) -> Result<(), ClientError> {
        let end = offset + len;
        let mut pos = offset;
        loop {
            let take = content.len().min(usize::try_from(end - pos).unwrap_or(usize::MAX));
            out.write_all(&content[..take]).await.map_err(|e| ClientError::io("writing download", e))?;
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

fn advance(options: &GetOptions, bytes: u64) {
    if let Some(p) = &options.progress {
        p.advance(bytes);
    }
}

fn changed(path: &str, message: String) -> ClientError {
    ClientError::FileChanged { path: path.to_owned(), message }
}

/// The hasher over the first `len` bytes of the partial file (read off the async workers).
async fn hash_prefix(partial: &Path, len: u64) -> Result<blake3::Hasher, ClientError> {
    let mut hasher = blake3::Hasher::new();
    if len == 0 {
        return Ok(hasher);
    }
    let path = partial.to_owned();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        std::io::copy(&mut std::io::Read::take(file, len), &mut hasher)?;
        Ok(hasher)
    })
    .await
    .map_err(|e| ClientError::Protocol(format!("hashing the partial download failed: {e}")))?
    .map_err(|e| ClientError::io(format!("reading {}", partial.display()), e))
}
