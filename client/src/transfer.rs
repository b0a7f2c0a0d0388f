//! Whole-file transfer of any size over messages capped at `max_payload`.
//!
//! Downloads are a sequence of ranged fs_reads sized to fit a reply, driven by the `total_size`
//! of the first reply (windowed and checked against the agent's digest: `download.rs`). Uploads
//! that fit one message are a single truncating fs_write (atomic on the agent); larger ones go
//! through the verified upload of `upload.rs`, or, against an agent without it, are written in
//! positional chunks to a hidden sibling file that is then moved over the target, so a reader
//! sees the old file or the new one, never a half.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use tether_proto::pb;

use crate::client::Client;
use crate::error::ClientError;
use crate::unique;
use crate::upload::{PutOptions, unknown_op};

/// Room left in every message for the envelope and the other fields.
pub const ENVELOPE_ALLOWANCE: usize = 4 * 1024;
/// Ranged reads a download keeps in flight at least (see [`crate::window_for`]).
pub const READ_AHEAD: usize = 4;
/// Smallest chunk we ever use, whatever the server says.
pub const MIN_CHUNK: usize = 1024;
/// Bytes a temporary upload name adds to the target path (see [`temp_upload_path`]).
const TEMP_NAME_EXTRA: usize = 48;
/// Longest part of the target's file name kept in the temporary name (names are capped at 255
/// bytes on common filesystems).
const TEMP_NAME_KEEP: usize = 200;

/// Options of [`Client::write_file`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Permission bits of the result; 0 keeps an existing file's mode (or the platform default
    /// for a new file).
    pub mode: u32,
    /// Create missing parent directories.
    pub create_parents: bool,
}

/// Largest payload chunk (read or write) for a connection with this `max_payload`.
pub fn chunk_size(max_payload: usize) -> usize {
    max_payload.saturating_sub(ENVELOPE_ALLOWANCE).max(MIN_CHUNK)
}

/// Largest content of one fs_write to a path of `path_len` bytes.
pub fn write_chunk_size(max_payload: usize, path_len: usize) -> usize {
    chunk_size(max_payload).saturating_sub(path_len + TEMP_NAME_EXTRA).max(MIN_CHUNK)
}

/// Splits `total` bytes into consecutive `(offset, length)` chunks of at most `chunk` bytes.
/// Zero bytes give one empty chunk.
pub fn plan_chunks(total: u64, chunk: usize) -> Vec<(u64, u64)> {
    let chunk = chunk.max(1) as u64;
    if total == 0 {
        return vec![(0, 0)];
    }
    (0..total.div_ceil(chunk)).map(|i| (i * chunk, chunk.min(total - i * chunk))).collect()
}

/// The hidden sibling `<dir>/.<name>.tether-upload-<16 hex>` of `path` a chunked upload goes to.
/// Fails for paths that do not name a file (empty, ending in `/`, `.`, `..`, `~`).
pub fn temp_upload_path(path: &str, suffix: u64) -> Result<String, ClientError> {
    let (dir, name) = match path.rfind('/') {
        Some(i) => path.split_at(i + 1),
        None => ("", path),
    };
    if name.is_empty() || name == "." || name == ".." || (dir.is_empty() && name == "~") {
        return Err(ClientError::InvalidArgument(format!("{path:?} does not name a file")));
    }
    let mut keep = name.len().min(TEMP_NAME_KEEP);
    while !name.is_char_boundary(keep) {
        keep -= 1;
    }
    Ok(format!("{dir}.{}.tether-upload-{suffix:016x}", &name[..keep]))
}

/// Where upload bytes come from: a buffer already in memory, or a reader.
pub(crate) trait ChunkSource {
    /// The next `max` bytes (fewer only at the end; empty once exhausted).
    async fn next_chunk(&mut self, max: usize) -> Result<Bytes, ClientError>;
}

pub(crate) struct BytesSource(pub(crate) Bytes);

impl ChunkSource for BytesSource {
    async fn next_chunk(&mut self, max: usize) -> Result<Bytes, ClientError> {
        let n = max.min(self.0.len());
        Ok(self.0.split_to(n))
    }
}

pub(crate) struct ReaderSource<R>(pub(crate) R);

impl<R: AsyncRead + Unpin> ChunkSource for ReaderSource<R> {
    async fn next_chunk(&mut self, max: usize) -> Result<Bytes, ClientError> {
        let mut buf = BytesMut::with_capacity(max.min(8 * 1024 * 1024));
        let mut limited = (&mut self.0).take(max as u64);
        while limited.read_buf(&mut buf).await.map_err(|e| ClientError::io("reading upload source", e))? > 0 {
        }
        Ok(buf.freeze())
    }
}

/// Chunks already read, then the rest of a source.
struct Prefixed<S> {
    head: std::collections::VecDeque<Bytes>,
    rest: S,
}

impl<S: ChunkSource> ChunkSource for Prefixed<S> {
    async fn next_chunk(&mut self, max: usize) -> Result<Bytes, ClientError> {
        match self.head.front_mut() {
            Some(first) if first.len() > max => Ok(first.split_to(max)),
            Some(_) => Ok(self.head.pop_front().unwrap_or_default()),
            None => self.rest.next_chunk(max).await,
        }
    }
}

impl Client {
    /// Chunk size for reads and writes on this connection.
    pub fn chunk_size(&self) -> usize {
        chunk_size(self.max_payload())
    }

    /// Reads a whole file of any size into memory (see [`Client::download`]).
    pub async fn read_file(&self, path: &str) -> Result<Bytes, ClientError> {
        let mut out = Vec::new();
        self.download(path, &mut out).await?;
        Ok(Bytes::from(out))
    }

    /// Writes `data` to `path`, replacing it atomically; returns the bytes written.
    pub async fn write_file(
        &self,
        path: &str,
        data: Bytes,
        options: WriteOptions,
    ) -> Result<u64, ClientError> {
        self.upload(path, BytesSource(data), options).await
    }

    /// Like [`Client::write_file`], reading the content from `source` (a file, stdin...)
    /// without holding it all in memory.
    pub async fn write_file_from<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        source: R,
        options: WriteOptions,
    ) -> Result<u64, ClientError> {
        self.upload(path, ReaderSource(source), options).await
    }

    async fn upload(
        &self,
        path: &str,
        mut source: impl ChunkSource,
        options: WriteOptions,
    ) -> Result<u64, ClientError> {
        let chunk = write_chunk_size(self.max_payload(), path.len());
        let first = source.next_chunk(chunk).await?;
        let second = if first.len() == chunk { source.next_chunk(chunk).await? } else { Bytes::new() };
        if second.is_empty() {
            return self.write_whole(path, first, options).await;
        }
        let id = format!("{:016x}{:016x}", unique::random_u64(), unique::random_u64());
        let put = PutOptions { write: options, ..Default::default() };
        match self.open_upload(path, &id, &put).await {
            Ok(opened) => {
                let source = Prefixed { head: [first, second].into(), rest: source };
                let sent = self.send_upload(path, &id, opened, source, &put).await;
                if let Err(err) = &sent {
                    self.discard_upload(&id, err).await;
                }
                return sent.map(|report| report.size);
            }
            Err(e) if unknown_op(&e) => {}
            Err(e) => return Err(e),
        }
        let temp = temp_upload_path(path, unique::random_u64())?;
        let mode = self.mode_to_keep(path, options.mode).await?;
        let written = self.write_chunks(&temp, [first, second], &mut source, chunk, mode, options).await;
        let moved = match written {
            Ok(n) => self.rename(&temp, path, true).await.map(|()| n),
            Err(e) => Err(e),
        };
        if let Err(err) = &moved {
            self.discard_temp(&temp, err).await;
        }
        moved
    }

    /// One truncating (atomic) fs_write of the whole content.
    async fn write_whole(
        &self,
        path: &str,
        content: Bytes,
        options: WriteOptions,
    ) -> Result<u64, ClientError> {
        let request = pb::FsWriteRequest {
            path: path.to_owned(),
            content,
            create_parents: options.create_parents,
            mode: options.mode,
            ..Default::default()
        };
        Ok(self.write(request).await?.bytes_written)
    }

    /// The mode the replaced file should end up with: the requested one, else the existing
    /// file's permission bits (a fresh temp file would otherwise get the default mode).
    async fn mode_to_keep(&self, path: &str, requested: u32) -> Result<u32, ClientError> {
        if requested != 0 {
            return Ok(requested);
        }
        let stat = self.stat(path).await?;
        Ok(match stat.entry {
            Some(entry) if stat.exists && entry.kind() == pb::FsEntryKind::File => entry.mode & 0o7777,
            _ => 0,
        })
    }

    /// Writes the two chunks already read, then the rest of `source`, to `temp`: the first as a
    /// truncating write that creates the file, the others positionally.
    async fn write_chunks(
        &self,
        temp: &str,
        head: [Bytes; 2],
        source: &mut impl ChunkSource,
        chunk: usize,
        mode: u32,
        options: WriteOptions,
    ) -> Result<u64, ClientError> {
        let [first, second] = head;
        let first_len = first.len() as u64;
        let written = self.write_whole(temp, first, WriteOptions { mode, ..options }).await?;
        check_written(temp, 0, first_len, written)?;
        let mut offset = first_len;
        let mut next = second;
        while !next.is_empty() {
            let len = next.len() as u64;
            let request = pb::FsWriteRequest {
                path: temp.to_owned(),
                content: next,
                offset,
                use_offset: true,
                ..Default::default()
            };
            let written = self.write(request).await?.bytes_written;
            check_written(temp, offset, len, written)?;
            offset += len;
            next = source.next_chunk(chunk).await?;
        }
        Ok(offset)
    }

    /// Best-effort removal of a failed verified upload (skipped when the agent is gone).
    async fn discard_upload(&self, id: &str, cause: &ClientError) {
        if matches!(cause, ClientError::AgentOffline { .. } | ClientError::Timeout { .. }) {
            return;
        }
        if let Err(e) = self.transfer_abort(id).await {
            tracing::warn!(transfer_id = id, error = %e, "could not discard a failed upload");
        }
    }

    /// Best-effort removal of a failed upload's temp file (skipped when the agent is gone).
    async fn discard_temp(&self, temp: &str, cause: &ClientError) {
        if matches!(cause, ClientError::AgentOffline { .. }) {
            return;
        }
        if let Err(e) = self.remove(temp, false).await {
            tracing::warn!(temp, error = %e, "could not remove the temporary upload file");
        }
    }
}

/// A chunk write must report every byte written; anything else would leave a hole.
fn check_written(path: &str, offset: u64, sent: u64, written: u64) -> Result<(), ClientError> {
    if written == sent {
        return Ok(());
    }
    Err(ClientError::Protocol(format!("agent wrote {written} of {sent} bytes at offset {offset} of {path}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_leave_room_for_the_envelope() {
        assert_eq!(chunk_size(1024 * 1024), 1024 * 1024 - ENVELOPE_ALLOWANCE);
        assert_eq!(chunk_size(100), MIN_CHUNK);
        let w = write_chunk_size(1024 * 1024, 300);
        assert!(w + 300 + TEMP_NAME_EXTRA + ENVELOPE_ALLOWANCE <= 1024 * 1024);
    }

    #[test]
    fn plan_covers_every_byte_once() {
        assert_eq!(plan_chunks(0, 10), vec![(0, 0)]);
        assert_eq!(plan_chunks(10, 10), vec![(0, 10)]);
        assert_eq!(plan_chunks(25, 10), vec![(0, 10), (10, 10), (20, 5)]);
        let total = 20 * 1024 * 1024 + 7;
        let plan = plan_chunks(total, chunk_size(1 << 20));
        let mut next = 0;
        for (offset, len) in &plan {
            assert_eq!(*offset, next);
            assert!(*len > 0 && *len as usize <= chunk_size(1 << 20));
            next += len;
        }
        assert_eq!(next, total);
    }

    #[test]
    fn temp_name_is_a_hidden_sibling() {
        assert_eq!(
            temp_upload_path("/w/dir/a.txt", 0xab).unwrap(),
            "/w/dir/.a.txt.tether-upload-00000000000000ab"
        );
        assert_eq!(temp_upload_path("a.txt", 1).unwrap(), ".a.txt.tether-upload-0000000000000001");
        assert_eq!(temp_upload_path("~/x", 1).unwrap(), "~/.x.tether-upload-0000000000000001");
        for bad in ["", "/w/dir/", ".", "/w/..", "~"] {
            assert!(temp_upload_path(bad, 1).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn temp_name_of_a_long_name_stays_short_and_valid_utf8() {
        let name = "é".repeat(200);
        let temp = temp_upload_path(&format!("/d/{name}"), 7).unwrap();
        let leaf = temp.rsplit('/').next().unwrap();
        assert!(leaf.len() <= 255, "{}", leaf.len());
        assert!(temp.len() <= "/d/".len() + TEMP_NAME_KEEP + TEMP_NAME_EXTRA);
    }

    #[tokio::test]
    async fn sources_yield_full_chunks_then_the_rest_then_nothing() {
        let data: Vec<u8> = (0..25u8).collect();
        let mut from_bytes = BytesSource(Bytes::from(data.clone()));
        let mut from_reader = ReaderSource(std::io::Cursor::new(data.clone()));
        for source in [&mut from_bytes as &mut dyn DynSource, &mut from_reader] {
            let mut got = Vec::new();
            let mut sizes = Vec::new();
            loop {
                let c = source.next(10).await;
                if c.is_empty() {
                    break;
                }
                sizes.push(c.len());
                got.extend_from_slice(&c);
            }
            assert_eq!(sizes, [10, 10, 5]);
            assert_eq!(got, data);
        }
    }

    /// Object-safe test shim over the two sources.
    trait DynSource {
        fn next(&mut self, max: usize) -> std::pin::Pin<Box<dyn Future<Output = Bytes> + '_>>;
    }
    impl<S: ChunkSource> DynSource for S {
        fn next(&mut self, max: usize) -> std::pin::Pin<Box<dyn Future<Output = Bytes> + '_>> {
            Box::pin(async move { self.next_chunk(max).await.unwrap() })
        }
    }
}
