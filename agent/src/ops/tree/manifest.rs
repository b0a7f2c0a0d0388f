//! tree_manifest: every entry below a root with its kind, size, mode, mtime, symlink target and
//! the BLAKE3 digest of a regular file's content, in component-wise path order, one reply-sized
//! page at a time.
//!
//! Digests come from the [`DigestCache`](tether_proto::digests::DigestCache) when the file's
//! stat is unchanged, so a manifest of an unchanged tree is a walk of `fstatat` calls; the reply
//! counts the files it did read (`files_hashed`), which is how a client (or a test) sees that.
//! Paging re-walks from the root but skips whole subtrees that lie before the cursor, and only
//! the entries of the page are hashed. Symlinks are reported with their target and never
//! followed; directories are opened with `O_NOFOLLOW` from their parent's descriptor.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::SystemTime;

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};
use prost::Message;
use tether_proto::digests::DigestCache;
use tether_proto::pb::{self, FsEntryKind};

use super::{Trees, open_dir_at, open_root, stat_key};
use crate::error::{OpError, OpResult};
use crate::ops::fs::kind_of;
use crate::paths::Paths;

/// Reply bytes kept for the counters and the envelope around the entries.
const PAGE_OVERHEAD: usize = 96;
/// Encoded bytes a digest adds to an entry (tag, length, 32 bytes).
const DIGEST_COST: usize = 34;
/// Most exclude patterns one request may carry.
pub const MAX_EXCLUDES: usize = 1024;

pub async fn manifest(
    paths: Arc<Paths>,
    trees: Arc<Trees>,
    req: pb::TreeManifestRequest,
    budget: usize,
) -> OpResult<pb::TreeManifestResponse> {
    let excludes = excludes("tree_manifest.excludes", &req.excludes)?;
    let after: Vec<Vec<u8>> = match req.after.as_str() {
        "" => Vec::new(),
        after => {
            super::rel_parts("tree_manifest.after", after)?.iter().map(|p| p.as_bytes().to_vec()).collect()
        }
    };
    tokio::task::spawn_blocking(move || {
        let (_, root) = open_root(&paths, &req.root)?;
        let Some(root) = root else {
            return Ok(pb::TreeManifestResponse { root_missing: true, ..Default::default() });
        };
        let mut cache = trees.cache();
        let mut page = Page {
            reply: pb::TreeManifestResponse::default(),
            left: budget.saturating_sub(PAGE_OVERHEAD),
            max: if req.max_entries == 0 { usize::MAX } else { req.max_entries as usize },
            excludes,
            cache: &mut cache,
        };
        let cursor: Vec<&[u8]> = after.iter().map(Vec::as_slice).collect();
        let complete = page.walk(root, "", Some(&cursor))?;
        let mut reply = page.reply;
        if !complete {
            reply.next_after = reply.entries.last().map(|e| e.path.clone()).unwrap_or_default();
            if reply.next_after.is_empty() {
                return Err(OpError::payload_too_large(
                    "not even one manifest entry fits a reply",
                    PAGE_OVERHEAD,
                    budget,
                ));
            }
        }
        Trees::save(&mut cache);
        Ok(reply)
    })
    .await
    .map_err(|e| OpError::os(format!("manifest task failed: {e}")))?
}

/// The gitignore-style matcher of `patterns`, or PROTOCOL naming the bad one.
pub fn excludes(field: &str, patterns: &[String]) -> OpResult<Gitignore> {
    if patterns.len() > MAX_EXCLUDES {
        return Err(
            OpError::protocol(format!("{field}: at most {MAX_EXCLUDES} patterns")).with("field", field)
        );
    }
    let mut builder = GitignoreBuilder::new("");
    for pattern in patterns {
        builder.add_line(None, pattern).map_err(|e| {
            OpError::protocol(format!("{field}: {pattern:?} is not a gitignore pattern: {e}"))
                .with("field", field)
                .with("pattern", pattern)
        })?;
    }
    builder.build().map_err(|e| OpError::protocol(format!("{field}: {e}")).with("field", field))
}

struct Page<'a> {
    reply: pb::TreeManifestResponse,
    /// Encoded bytes still free in the reply.
    left: usize,
    max: usize,
    excludes: Gitignore,
    cache: &'a mut DigestCache,
}

impl Page<'_> {
    /// Adds the entries below `dir` (whose relative path is `prefix`) in name order; false
    /// once the page is full. `cursor`: the components of the page cursor still to pass, while
    /// this directory lies on the way to it.
    fn walk(&mut self, dir: OwnedFd, prefix: &str, cursor: Option<&[&[u8]]>) -> OpResult<bool> {
        let mut handle =
            nix::dir::Dir::from_fd(dir).map_err(|e| OpError::os(format!("listing {prefix:?}: {e}")))?;
        let mut names: Vec<Vec<u8>> = handle
            .iter()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_bytes().to_vec())
            .filter(|n| n != b"." && n != b"..")
            .collect();
        names.sort();
        for name in names {
            // Where this name stands against the cursor: before it (skip, subtree and all), on
            // its way (skip the entry, walk on with the rest), or after it (everything).
            let (emit, below) = match cursor.and_then(|c| c.split_first()) {
                Some((&first, rest)) => match name.as_slice().cmp(first) {
                    std::cmp::Ordering::Less => continue,
                    std::cmp::Ordering::Equal => (false, if rest.is_empty() { None } else { Some(rest) }),
                    std::cmp::Ordering::Greater => (true, None),
                },
                None => (true, None),
            };
            let Ok(text) = std::str::from_utf8(&name) else {
                tracing::debug!(dir = prefix, "a name that is not UTF-8 is left out of the manifest");
                continue;
            };
            if is_temp_name(text) {
                continue;
            }
            let rel = if prefix.is_empty() { text.to_owned() } else { format!("{prefix}/{text}") };
            let name = OsStr::from_bytes(&name);
            let Ok(st) = nix::sys::stat::fstatat(handle.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            let kind = kind_of(&st);
            let is_dir = kind == FsEntryKind::Directory;
            if self.excludes.matched(&rel, is_dir).is_ignore() {
                continue;
            }
            if emit && !self.push(handle.as_fd(), name, &rel, &st)? {
                return Ok(false);
            }
            if is_dir {
                let Ok(sub) = open_dir_at(handle.as_fd(), name) else { continue };
                if !self.walk(sub, &rel, below)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Adds one entry (hashing a regular file's content unless the cache knows it); false
    /// when it does not fit the page.
    fn push(&mut self, dir: BorrowedFd<'_>, name: &OsStr, rel: &str, st: &FileStat) -> OpResult<bool> {
        let kind = kind_of(st);
        let symlink_target = match kind {
            FsEntryKind::Symlink => nix::fcntl::readlinkat(dir, name)
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default(),
            _ => String::new(),
        };
        let mut entry = pb::TreeEntry {
            path: rel.to_owned(),
            kind: kind as i32,
            size: if kind == FsEntryKind::File { st.st_size as u64 } else { 0 },
            mode: st.st_mode & 0o777,
            modified_ms: st.st_mtime * 1000 + st.st_mtime_nsec / 1_000_000,
            symlink_target,
            digest: Default::default(),
        };
        let len = entry.encoded_len() + if kind == FsEntryKind::File { DIGEST_COST } else { 0 };
        let cost = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        // Room for the entry, and for its path again as the next page's cursor.
        if self.reply.entries.len() >= self.max || cost + rel.len() + 8 > self.left {
            return Ok(false);
        }
        if kind == FsEntryKind::File {
            entry.digest = self.digest(dir, name, st).map(|d| d.to_vec().into()).unwrap_or_default();
        }
        self.left -= cost;
        self.reply.entries.push(entry);
        Ok(true)
    }

    /// The content digest of regular file `name`, from the cache or by reading it (None: it
    /// could not be read, or is no longer a regular file).
    fn digest(&mut self, dir: BorrowedFd<'_>, name: &OsStr, st: &FileStat) -> Option<[u8; 32]> {
        let key = stat_key(st);
        if let Some(digest) = self.cache.get(&key) {
            self.reply.digests_cached += 1;
            return Some(digest);
        }
        let hashed_at = SystemTime::now();
        let flags =
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let file = File::from(nix::fcntl::openat(dir, name, flags, Mode::empty()).ok()?);
        let before = nix::sys::stat::fstat(file.as_fd()).ok()?;
        if kind_of(&before) != FsEntryKind::File {
            return None;
        }
        let (digest, read) = hash(&file).ok()?;
        self.reply.files_hashed += 1;
        self.reply.bytes_hashed += read;
        let after = nix::sys::stat::fstat(file.as_fd()).ok()?;
        if stat_key(&after) == stat_key(&before) && stat_key(&before) == key {
            self.cache.remember(key, digest, hashed_at);
        }
        Some(digest)
    }
}

/// A batch write's temp file (see `write`): in flight, or left by a crash; never part of a tree.
fn is_temp_name(name: &str) -> bool {
    name.starts_with(super::write::TEMP_PREFIX) && name.ends_with(".tmp")
}

/// BLAKE3 of everything `file` holds from its start, and how many bytes that was.
pub fn hash(mut file: &File) -> std::io::Result<([u8; 32], u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((*hasher.finalize().as_bytes(), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn page(paths: &Arc<Paths>, trees: &Arc<Trees>, after: &str, max: u32) -> pb::TreeManifestResponse {
        let req = pb::TreeManifestRequest {
            root: "t".into(),
            after: after.into(),
            max_entries: max,
            ..Default::default()
        };
        manifest(paths.clone(), trees.clone(), req, 1 << 20).await.unwrap()
    }

    #[tokio::test]
    async fn pages_of_one_entry_walk_the_whole_tree_once_in_component_order() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        for file in ["a/b/c", "a/b.x", "a.b", "a-c/x", "b", "a/z"] {
            std::fs::create_dir_all(t.join(file).parent().unwrap()).unwrap();
            std::fs::write(t.join(file), file).unwrap();
        }
        std::fs::create_dir(t.join("empty")).unwrap();
        std::os::unix::fs::symlink("/etc", t.join("a/link")).unwrap();
        std::fs::write(t.join(".tether-batch-1-2.tmp"), "in flight").unwrap();
        let paths = Arc::new(Paths::new(dir.path(), "/workspace", None, true).unwrap());
        let trees = Arc::new(Trees::in_memory());
        let whole = page(&paths, &trees, "", 0).await;
        assert!(whole.next_after.is_empty());
        let all: Vec<String> = whole.entries.iter().map(|e| e.path.clone()).collect();
        let expected = ["a", "a/b", "a/b/c", "a/b.x", "a/link", "a/z", "a-c", "a-c/x", "a.b", "b", "empty"];
        assert_eq!(all, expected);
        let mut paged = Vec::new();
        let mut after = String::new();
        for _ in 0..50 {
            let p = page(&paths, &trees, &after, 1).await;
            paged.extend(p.entries.iter().map(|e| e.path.clone()));
            if p.next_after.is_empty() {
                break;
            }
            after = p.next_after;
        }
        assert_eq!(paged, all);
        let link = whole.entries.iter().find(|e| e.path == "a/link").unwrap();
        assert_eq!((link.kind(), link.symlink_target.as_str()), (FsEntryKind::Symlink, "/etc"));
        let file = whole.entries.iter().find(|e| e.path == "b").unwrap();
        assert_eq!(file.digest.as_ref(), blake3::hash(b"b").as_bytes());
    }
}
