//! batch_read: many small regular files in one reply, in request order, stopping before the
//! first that would not fit (the client asks again from there). Each file is reached from the
//! tree root with `O_NOFOLLOW` at every component; a path that is missing, or no longer a
//! regular file, is answered `missing` rather than failing the batch (the tree may change
//! between the manifest and the read; the client compares digests).

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::sync::Arc;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use prost::Message;
use tether_proto::pb::{self, FsEntryKind};

use super::{open_dirs, open_root, rel_parts};
use crate::error::{OpError, OpResult};
use crate::ops::fs::kind_of;
use crate::paths::Paths;

/// Reply bytes kept for the envelope around the files.
const READ_OVERHEAD: usize = 64;
/// Most paths one request may name.
pub const MAX_PATHS: usize = 100_000;

pub async fn read(
    paths: Arc<Paths>,
    req: pb::BatchReadRequest,
    budget: usize,
) -> OpResult<pb::BatchReadResponse> {
    if req.paths.len() > MAX_PATHS {
        return Err(
            OpError::protocol(format!("batch_read: at most {MAX_PATHS} paths")).with("field", "paths")
        );
    }
    for rel in &req.paths {
        rel_parts("batch_read.paths", rel)?;
    }
    tokio::task::spawn_blocking(move || {
        let (r, root) = open_root(&paths, &req.root)?;
        let root = root.ok_or_else(|| OpError::not_found("tree root", &r.abs))?;
        let mut left = budget.saturating_sub(READ_OVERHEAD);
        let mut reply = pb::BatchReadResponse::default();
        for rel in &req.paths {
            let file = match read_one(root.as_fd(), rel, left) {
                Ok(Some(file)) => file,
                Ok(None) => break,
                Err(e) => return Err(OpError::from_io(&e, "read", &super::shown(&r, rel))),
            };
            let len = file.encoded_len();
            let cost = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
            if cost > left {
                break;
            }
            left -= cost;
            reply.files.push(file);
        }
        if reply.files.is_empty() && !req.paths.is_empty() {
            return Err(OpError::payload_too_large(
                format!("{} does not fit one reply; read it with fs_read in ranges", req.paths[0]),
                budget + 1,
                budget,
            ));
        }
        Ok(reply)
    })
    .await
    .map_err(|e| OpError::os(format!("batch read task failed: {e}")))?
}

/// One file, or None when its content could not fit `left` bytes.
fn read_one(
    root: std::os::fd::BorrowedFd<'_>,
    rel: &str,
    left: usize,
) -> std::io::Result<Option<pb::BatchFile>> {
    let missing = || Ok(Some(pb::BatchFile { path: rel.to_owned(), missing: true, ..Default::default() }));
    let Ok(parts) = rel_parts("batch_read.paths", rel) else { return missing() };
    let dir = match open_dirs(root, &parts[..parts.len() - 1]) {
        Ok(Some(dir)) => dir,
        Ok(None) | Err(_) => return missing(),
    };
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let Ok(fd) = nix::fcntl::openat(dir.as_fd(), parts[parts.len() - 1], flags, Mode::empty()) else {
        return missing();
    };
    let st = nix::sys::stat::fstat(fd.as_fd())?;
    if kind_of(&st) != FsEntryKind::File {
        return missing();
    }
    if st.st_size as usize + rel.len() + 32 > left {
        return Ok(None);
    }
    let mut content = Vec::with_capacity(st.st_size as usize);
    File::from(fd).take(left as u64).read_to_end(&mut content)?;
    Ok(Some(pb::BatchFile {
        path: rel.to_owned(),
        content: content.into(),
        mode: st.st_mode & 0o777,
        missing: false,
    }))
}
