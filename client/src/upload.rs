//! Verified, resumable uploads (README "Transfers"): transfer_open, a window of positional chunk
//! writes, transfer_commit with the BLAKE3 of the whole content.
//!
//! The source is read once, in order, and hashed as it is read (a local file by a reader
//! thread, the hash by another: `pipeline.rs`); only the ranges the agent does not hold yet are
//! sent, so an upload re-run under the same transfer id after its client died sends only the
//! rest. At most `window` chunks are in flight and a few more queued between the threads, so
//! memory stays at about `window * chunk` whatever the file's size.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::AsyncRead;

use tether_proto::pb;

use crate::client::Client;
use crate::error::ClientError;
use crate::pipeline::{FileChunks, HashThread};
use crate::transfer::{ChunkSource, ReaderSource, WriteOptions, write_chunk_size};
use crate::unique;

/// Bytes a transfer keeps in flight by default; the window is this over the chunk size.
pub const TARGET_IN_FLIGHT: usize = 16 << 20;
/// Most chunks in flight whatever the chunk size.
pub const MAX_WINDOW: usize = 32;
/// The hashing speed the commit's timeout allows for (bytes per second), on top of the usual.
const SLOWEST_HASH: u64 = 50 << 20;

/// What a transfer reports as it goes (a progress bar, say).
pub trait Progress: Send + Sync {
    /// The transfer starts; `total` is its size when known.
    fn start(&self, total: Option<u64>);
    /// `bytes` more are done (sent, or found already there).
    fn advance(&self, bytes: u64);
}

/// "Fail if the target changed since I read it", checked by the agent at open and at commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// The target must not exist.
    Absent,
    /// The target must have this size and modification time (as [`Client::stat`] reports).
    Unchanged { size: u64, modified_ms: i64 },
    /// The target's content must have this BLAKE3 digest.
    Digest([u8; 32]),
}

impl Precondition {
    fn to_proto(&self) -> pb::TransferPrecondition {
        match self {
            Precondition::Absent => pb::TransferPrecondition::default(),
            Precondition::Unchanged { size, modified_ms } => pb::TransferPrecondition {
                exists: true,
                size: *size,
                modified_ms: *modified_ms,
                ..Default::default()
            },
            Precondition::Digest(d) => {
                pb::TransferPrecondition { exists: true, blake3: d.to_vec().into(), ..Default::default() }
            }
        }
    }
}

/// Options of [`Client::put_from`] and [`Client::put_file`].
#[derive(Clone, Default)]
pub struct PutOptions {
    pub write: WriteOptions,
    /// Names the upload on the agent: a run with the same id resumes it. None: a random id, and
    /// a failed upload is discarded.
    pub transfer_id: Option<String>,
    pub precondition: Option<Precondition>,
    pub progress: Option<Arc<dyn Progress>>,
    /// Chunks in flight (default: [`TARGET_IN_FLIGHT`] worth, within the agent's window).
    pub window: Option<usize>,
}

/// What a finished transfer did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransferReport {
    /// Size of the content.
    pub size: u64,
    /// Bytes this run moved over the wire.
    pub sent: u64,
    /// Bytes a resumed transfer found already in place and did not move again.
    pub skipped: u64,
    /// BLAKE3 of the content (hex), the same on both ends.
    pub blake3: String,
    /// The transfer continued an earlier, interrupted one.
    pub resumed: bool,
    /// Uploads: chunk bytes the agent received for this upload over all its runs. Downloads: 0.
    pub agent_received: u64,
    /// The digest was checked against the agent's (false only against an agent without it).
    pub verified: bool,
}

/// A transfer id for re-runs of "the same upload": derived from what names it, so a re-run of
/// the same command finds the upload again.
pub fn derive_transfer_id(parts: &[&[u8]]) -> String {
    let mut h = blake3::Hasher::new();
    for part in parts {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().to_hex()[..32].to_owned()
}

/// Chunks in flight for a chunk size: [`TARGET_IN_FLIGHT`] worth, at least 2.
pub fn window_for(chunk: usize) -> usize {
    (TARGET_IN_FLIGHT / chunk.max(1)).clamp(2, MAX_WINDOW)
}

/// The parts of `[start, end)` outside `held` (sorted, merged `(offset, length)` ranges).
pub fn gaps(held: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    for &(offset, length) in held {
        let (s, e) = (offset, offset + length);
        if e <= at {
            continue;
        }
        if s >= end {
            break;
        }
        if s > at {
            out.push((at, s - at));
        }
        at = at.max(e);
        if at >= end {
            break;
        }
    }
    if at < end {
        out.push((at, end - at));
    }
    out
}

impl Client {
    /// Uploads a local file to `path`: verified, windowed, resumable (see [`PutOptions`]).
    pub async fn put_file(
        &self,
        local: &Path,
        path: &str,
        options: &PutOptions,
    ) -> Result<TransferReport, ClientError> {
        let file = tokio::fs::File::open(local)
            .await
            .map_err(|e| ClientError::io(format!("opening {}", local.display()), e))?;
        let size = file.metadata().await.map_err(|e| ClientError::io("reading upload metadata", e))?.len();
        let (id, random) = self.upload_id(options);
        let opened = self.open_upload(path, &id, options).await?;
        if let Some(p) = &options.progress {
            p.start(Some(size));
        }
        let chunk = self.upload_chunk(path, &id, &opened);
        let source = FileChunks::start(file.into_std().await, local, chunk);
        let result = self.send_upload(path, &id, opened, source, options).await;
        if let Err(err) = &result {
            self.after_failed_upload(&id, random, err).await;
        }
        result
    }

    /// The transfer id of an upload, and whether it was made up (not chosen by the caller).
    fn upload_id(&self, options: &PutOptions) -> (String, bool) {
        match &options.transfer_id {
            Some(id) => (id.clone(), false),
            None => (format!("{:016x}{:016x}", unique::random_u64(), unique::random_u64()), true),
        }
    }

    /// The content bytes of one chunk write of an opened upload.
    fn upload_chunk(&self, path: &str, id: &str, opened: &pb::TransferOpenResponse) -> usize {
        let max_payload = match opened.max_payload as usize {
            0 => self.max_payload(),
            agent => agent.min(self.max_payload()),
        };
        write_chunk_size(max_payload, path.len() + id.len())
    }

    /// Uploads everything `source` yields to `path`, replacing it atomically once the agent has
    /// checked the BLAKE3 of what it received. `size` only feeds the progress report.
    pub async fn put_from<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        source: R,
        size: Option<u64>,
        options: &PutOptions,
    ) -> Result<TransferReport, ClientError> {
        let (id, random) = self.upload_id(options);
        let opened = self.open_upload(path, &id, options).await?;
        if let Some(p) = &options.progress {
            p.start(size);
        }
        let result = self.send_upload(path, &id, opened, ReaderSource(source), options).await;
        if let Err(err) = &result {
            self.after_failed_upload(&id, random, err).await;
        }
        result
    }

    pub(crate) async fn open_upload(
        &self,
        path: &str,
        id: &str,
        options: &PutOptions,
    ) -> Result<pb::TransferOpenResponse, ClientError> {
        self.transfer_open(pb::TransferOpenRequest {
            transfer_id: id.to_owned(),
            path: path.to_owned(),
            mode: options.write.mode,
            create_parents: options.write.create_parents,
            precondition: options.precondition.as_ref().map(Precondition::to_proto),
        })
        .await
    }

    /// Sends what the agent does not hold of `source`, then commits.
    pub(crate) async fn send_upload(
        &self,
        path: &str,
        id: &str,
        opened: pb::TransferOpenResponse,
        mut source: impl ChunkSource,
        options: &PutOptions,
    ) -> Result<TransferReport, ClientError> {
        let held: Vec<(u64, u64)> = opened.held.iter().map(|r| (r.offset, r.length)).collect();
        let chunk = self.upload_chunk(path, id, &opened);
        let window =
            options.window.unwrap_or_else(|| window_for(chunk)).min(opened.window.max(1) as usize).max(1);
        let progress = options.progress.clone();
        let mut hasher = HashThread::start(blake3::Hasher::new());
        let mut in_flight = FuturesUnordered::new();
        let (mut pos, mut sent) = (0u64, 0u64);
        loop {
            let data = source.next_chunk(chunk).await?;
            if data.is_empty() {
                break;
            }
            hasher.feed(data.clone()).await?;
            let (start, end) = (pos, pos + data.len() as u64);
            pos = end;
            let missing = gaps(&held, start, end);
            let skipped: u64 = (end - start) - missing.iter().map(|g| g.1).sum::<u64>();
            if let (Some(p), true) = (&progress, skipped > 0) {
                p.advance(skipped);
            }
            for (offset, length) in missing {
                while in_flight.len() >= window {
                    in_flight.next().await.transpose()?;
                }
                let lo = (offset - start) as usize;
                let piece = data.slice(lo..lo + length as usize);
                sent += length;
                in_flight.push(self.write_piece(path, id, offset, piece, progress.clone()));
            }
        }
        while in_flight.next().await.transpose()?.is_some() {}
        let digest = hasher.finish().await?;
        let timeout = self.request_timeout() + Duration::from_secs(pos / SLOWEST_HASH);
        let request = pb::TransferCommitRequest {
            transfer_id: id.to_owned(),
            path: path.to_owned(),
            size: pos,
            blake3: digest.as_bytes().to_vec().into(),
        };
        let done = self.transfer_commit(request, timeout).await?;
        if done.blake3.as_ref() != digest.as_bytes() {
            return Err(ClientError::Protocol("the agent committed a digest other than the one sent".into()));
        }
        Ok(TransferReport {
            size: pos,
            sent,
            skipped: pos - sent,
            blake3: digest.to_hex().to_string(),
            resumed: opened.resumed,
            agent_received: done.bytes_received,
            verified: true,
        })
    }

    async fn write_piece(
        &self,
        path: &str,
        id: &str,
        offset: u64,
        content: Bytes,
        progress: Option<Arc<dyn Progress>>,
    ) -> Result<(), ClientError> {
        let len = content.len() as u64;
        let request = pb::FsWriteRequest {
            path: path.to_owned(),
            content,
            offset,
            use_offset: true,
            transfer_id: id.to_owned(),
            ..Default::default()
        };
        let written = self.write(request).await?.bytes_written;
        if written != len {
            return Err(ClientError::Protocol(format!(
                "agent wrote {written} of {len} bytes at offset {offset}"
            )));
        }
        if let Some(p) = progress {
            p.advance(len);
        }
        Ok(())
    }

    /// A failed upload under a random id cannot be resumed: discard it (best effort). One under
    /// a chosen id stays for a re-run, until the agent's idle time.
    async fn after_failed_upload(&self, id: &str, random: bool, cause: &ClientError) {
        if !random || matches!(cause, ClientError::AgentOffline { .. } | ClientError::Timeout { .. }) {
            return;
        }
        if let Err(e) = self.transfer_abort(id).await {
            tracing::warn!(transfer_id = id, error = %e, "could not discard a failed upload");
        }
    }
}

/// True when an agent answered that it does not know the transfer ops (an older agent).
pub(crate) fn unknown_op(err: &ClientError) -> bool {
    matches!(err.code(), Some(pb::ErrorCode::Unsupported))
        || (err.code() == Some(pb::ErrorCode::Protocol) && err.to_string().contains("no known op"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_what_is_not_held() {
        let held = [(0, 10), (20, 10), (40, 5)];
        assert_eq!(gaps(&held, 0, 10), vec![]);
        assert_eq!(gaps(&held, 0, 50), vec![(10, 10), (30, 10), (45, 5)]);
        assert_eq!(gaps(&held, 5, 25), vec![(10, 10)]);
        assert_eq!(gaps(&held, 42, 60), vec![(45, 15)]);
        assert_eq!(gaps(&[], 3, 7), vec![(3, 4)]);
    }

    #[test]
    fn windows_and_ids() {
        assert_eq!(window_for(1 << 20), 16);
        assert_eq!(window_for(64 << 20), 2);
        assert_eq!(window_for(1024), MAX_WINDOW);
        let a = derive_transfer_id(&[b"a", b"bc"]);
        assert_eq!(a.len(), 32);
        assert_ne!(a, derive_transfer_id(&[b"ab", b"c"]));
    }
}
