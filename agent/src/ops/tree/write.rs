//! batch_write: many small files, symlinks and directories (and removals) in one request.
//!
//! The whole request is checked before anything is touched, and the op holds its fence scope
//! (shared) until it has committed, like every short mutation: a batch under an older epoch is
//! refused whole, and an epoch advance waits for a running batch. Every step that makes a
//! change visible goes through the [`Gate`], so past the mutation deadline nothing more of the
//! batch lands; what has landed by then is whole files only.
//!
//! Each file is written to a hidden temp file beside its target and renamed over it, so a
//! reader (or a crash) sees the old file or the new one. Durability is bought per batch, not
//! per file: one `syncfs` after all temp files are written (their data is on disk before any
//! rename), then the renames, then one `fsync` of each directory renamed into. A crash after
//! the reply loses nothing; a crash during the batch leaves each file old or new. A batch of
//! at most [`FSYNC_EACH_UP_TO`] files fsyncs each instead: `syncfs` also waits for whatever else
//! is dirty on the filesystem (a build's output), which a re-sync of one file should not.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;
use tether_proto::pb::{self, FsEntryKind};

use super::{Trees, open_dir_at, rel_parts, stat_key};
use crate::error::{OpError, OpResult};
use crate::ops::fs::{Gate, kind_of, nearest_dir, sync_dir, under_deadline};
use crate::paths::{Paths, Resolved, via_fd};

/// Mode of a new file / directory whose entry leaves it 0.
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Batches with at most this many files fsync each file rather than the whole filesystem.
pub const FSYNC_EACH_UP_TO: usize = 16;

/// How a batch's temp files are named (`.tether-batch-<pid>-<seq>.tmp`); manifests skip them.
pub const TEMP_PREFIX: &str = ".tether-batch-";

/// One entry, checked.
struct Item<'a> {
    parts: Vec<&'a OsStr>,
    entry: &'a pb::BatchEntry,
    kind: FsEntryKind,
}

pub async fn write(
    paths: Arc<Paths>,
    trees: Arc<Trees>,
    req: pb::BatchWriteRequest,
    deadline: Duration,
) -> OpResult<pb::BatchWriteResponse> {
    check(&req)?;
    under_deadline(deadline, move |gate| {
        let root = open_or_create_root(&paths, &req.root, gate)?;
        let r = paths.resolve(&req.root)?;
        let mut batch = Batch { r: &r, root: root.as_fd(), gate, reply: pb::BatchWriteResponse::default() };
        for rel in &req.remove {
            batch.remove(rel)?;
        }
        let items = items(&req)?;
        for item in items.iter().filter(|i| i.kind == FsEntryKind::Directory) {
            batch.mkdir(item)?;
        }
        let stage = batch.stage(&items)?;
        let written = batch.land(stage, &trees)?;
        for item in items.iter().filter(|i| i.entry.mode_only) {
            batch.chmod(item)?;
        }
        batch.reply.written += written;
        Ok(batch.reply)
    })
    .await
}

/// Refuses a malformed request before anything is touched.
fn check(req: &pb::BatchWriteRequest) -> OpResult<()> {
    for rel in &req.remove {
        rel_parts("batch_write.remove", rel)?;
    }
    items(req).map(drop)
}

fn items(req: &pb::BatchWriteRequest) -> OpResult<Vec<Item<'_>>> {
    req.entries
        .iter()
        .map(|entry| {
            let parts = rel_parts("batch_write.entries.path", &entry.path)?;
            let kind = FsEntryKind::try_from(entry.kind).unwrap_or(FsEntryKind::Unspecified);
            let bad = |why: &str| {
                OpError::protocol(format!("batch_write entry {:?}: {why}", entry.path))
                    .with("path", &entry.path)
            };
            match kind {
                FsEntryKind::File | FsEntryKind::Directory => {}
                FsEntryKind::Symlink
                    if !entry.symlink_target.is_empty() && !entry.symlink_target.contains('\0') => {}
                FsEntryKind::Symlink => return Err(bad("a symlink needs a target without NUL bytes")),
                _ => return Err(bad("kind must be FILE, DIRECTORY or SYMLINK")),
            }
            if entry.mode & !0o777 != 0 {
                return Err(bad("mode may carry permission bits (0o777) only").with("field", "mode"));
            }
            if entry.mode_only && kind != FsEntryKind::File {
                return Err(bad("mode_only is for files"));
            }
            Ok(Item { parts, entry, kind })
        })
        .collect()
}

/// The tree root as a directory, created (with its parents) when missing.
fn open_or_create_root(paths: &Paths, root: &str, gate: &Gate) -> OpResult<OwnedFd> {
    if let (_, Some(fd)) = super::open_root(paths, root)? {
        return Ok(fd);
    }
    let r = paths.resolve(root)?;
    let nearest = nearest_dir(paths, &r)?;
    gate.commit_in(nearest.as_fd(), || paths.create_dirs(&r, Mode::from_bits_truncate(DIR_MODE)))??;
    match super::open_root(paths, root)? {
        (_, Some(fd)) => Ok(fd),
        (r, None) => Err(OpError::not_found("tree root", &r.abs)),
    }
}

struct Batch<'a> {
    r: &'a Resolved,
    root: BorrowedFd<'a>,
    gate: &'a Gate,
    reply: pb::BatchWriteResponse,
}

impl Batch<'_> {
    fn os(&self, e: Errno, action: &str, rel: &str) -> OpError {
        OpError::from_io(&std::io::Error::from(e), action, &super::shown(self.r, rel))
    }

    /// The directory holding `parts`' last component, created as needed; never through a
    /// symlink (one in the way is an error: the client removes it first).
    fn parent(&self, parts: &[&OsStr], rel: &str) -> OpResult<OwnedFd> {
        let mut at = nix::fcntl::openat(
            self.root,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.os(e, "open", ""))?;
        for part in &parts[..parts.len().saturating_sub(1)] {
            at = match open_dir_at(at.as_fd(), part) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    let mode = Mode::from_bits_truncate(DIR_MODE);
                    match self
                        .gate
                        .commit_in(at.as_fd(), || nix::sys::stat::mkdirat(at.as_fd(), *part, mode))?
                    {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(self.os(e, "create directory", rel)),
                    }
                    open_dir_at(at.as_fd(), part).map_err(|e| self.os(e, "open directory", rel))?
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return Err(OpError::os(format!(
                        "{}: a component of its path is not a directory (a symlink is never followed)",
                        super::shown(self.r, rel).display()
                    ))
                    .with("path", rel)
                    .with("errno", Errno::ENOTDIR as i32));
                }
                Err(e) => return Err(self.os(e, "open directory", rel)),
            };
        }
        Ok(at)
    }

    /// Removes `rel` (a directory with everything in it); nothing there is fine.
    fn remove(&mut self, rel: &str) -> OpResult<()> {
        let parts = rel_parts("batch_write.remove", rel)?;
        let Some(dir) = super::open_dirs(self.root, &parts[..parts.len() - 1]).unwrap_or(None) else {
            return Ok(());
        };
        let name = parts[parts.len() - 1];
        let st = match nix::sys::stat::fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(self.os(e, "stat", rel)),
        };
        let removed = self.gate.commit_in(dir.as_fd(), || match kind_of(&st) {
            // std's remove_dir_all walks with O_NOFOLLOW and unlinkat: links are removed, never
            // followed.
            FsEntryKind::Directory => std::fs::remove_dir_all(via_fd(dir.as_fd(), name)),
            _ => nix::unistd::unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir).map_err(Into::into),
        })?;
        match removed {
            Ok(()) => {
                self.reply.removed += 1;
                sync_dir(dir.as_fd());
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(OpError::from_io(&e, "remove", &super::shown(self.r, rel))),
        }
    }

    /// Makes directory `item` (its mode set when given); one already there keeps its content.
    fn mkdir(&mut self, item: &Item<'_>) -> OpResult<()> {
        let rel = &item.entry.path;
        let dir = self.parent(&item.parts, rel)?;
        let name = item.parts[item.parts.len() - 1];
        let mode = Mode::from_bits_truncate(if item.entry.mode == 0 { DIR_MODE } else { item.entry.mode });
        match self.gate.commit_in(dir.as_fd(), || nix::sys::stat::mkdirat(dir.as_fd(), name, mode))? {
            Ok(()) => {
                // mkdir takes the umask off; the entry's mode is what was asked.
                let made = open_dir_at(dir.as_fd(), name).map_err(|e| self.os(e, "open directory", rel))?;
                nix::sys::stat::fchmod(made.as_fd(), mode).map_err(|e| self.os(e, "chmod", rel))?;
                self.reply.written += 1;
                Ok(())
            }
            Err(Errno::EEXIST) => {
                let existing = open_dir_at(dir.as_fd(), name).map_err(|e| match e {
                    Errno::ENOTDIR | Errno::ELOOP => OpError::os(format!(
                        "{} exists and is not a directory; remove it first",
                        super::shown(self.r, rel).display()
                    ))
                    .with("path", rel)
                    .with("errno", Errno::EEXIST as i32),
                    e => self.os(e, "open directory", rel),
                })?;
                let st = nix::sys::stat::fstat(existing.as_fd()).map_err(|e| self.os(e, "stat", rel))?;
                if item.entry.mode != 0 && st.st_mode & 0o777 != item.entry.mode {
                    let set = self
                        .gate
                        .commit_in(dir.as_fd(), || nix::sys::stat::fchmod(existing.as_fd(), mode))?;
                    set.map_err(|e| self.os(e, "chmod", rel))?;
                    self.reply.written += 1;
                }
                Ok(())
            }
            Err(e) => Err(self.os(e, "create directory", rel)),
        }
    }

    /// Writes every file and link of the batch to a temp name beside its target (nothing
    /// visible changes yet), then syncs the filesystem once. On failure the temp files made so
    /// far are removed.
    fn stage(&mut self, items: &[Item<'_>]) -> OpResult<Stage> {
        let files = items.iter().filter(|i| i.kind == FsEntryKind::File && !i.entry.mode_only).count();
        let mut stage = Stage { fsync_each: files <= FSYNC_EACH_UP_TO, ..Stage::default() };
        for item in items.iter().filter(|i| i.kind != FsEntryKind::Directory && !i.entry.mode_only) {
            if let Err(e) = self.stage_one(item, &mut stage) {
                stage.discard();
                return Err(e);
            }
        }
        // Every temp file's data reaches the disk before any of them is renamed into place.
        if !stage.files.is_empty()
            && !stage.fsync_each
            && let Err(e) = nix::unistd::syncfs(self.root)
        {
            stage.discard();
            return Err(self.os(e, "sync", ""));
        }
        Ok(stage)
    }

    fn stage_one(&mut self, item: &Item<'_>, stage: &mut Stage) -> OpResult<()> {
        let rel = &item.entry.path;
        let parent = rel.rsplit_once('/').map_or("", |(p, _)| p).to_owned();
        if !stage.parents.contains_key(&parent) {
            let fd = self.parent(&item.parts, rel)?;
            stage.parents.insert(parent.clone(), fd);
        }
        let Some(dir) = stage.parents.get(&parent) else { return Ok(()) };
        let temp = OsString::from(format!(
            "{TEMP_PREFIX}{}-{}.tmp",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let digest = match item.kind {
            FsEntryKind::Symlink => {
                nix::unistd::symlinkat(item.entry.symlink_target.as_str(), dir.as_fd(), temp.as_os_str())
                    .map_err(|e| self.os(e, "create symlink", rel))?;
                None
            }
            _ => {
                let written = temp_file(dir.as_fd(), &temp, item, stage.fsync_each);
                if written.is_err() {
                    let _ = nix::unistd::unlinkat(dir.as_fd(), temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
                }
                written.map_err(|e| OpError::from_io(&e, "write", &super::shown(self.r, rel)))?;
                self.reply.bytes += item.entry.content.len() as u64;
                Some(*blake3::hash(&item.entry.content).as_bytes())
            }
        };
        let name = item.parts[item.parts.len() - 1].to_owned();
        stage.files.push(Staged { parent, temp, name, rel: rel.clone(), digest });
        Ok(())
    }

    /// Renames every staged file over its target, one gate step per directory, then syncs each
    /// directory renamed into. Returns how many landed; what did not is removed.
    fn land(&mut self, mut stage: Stage, trees: &Trees) -> OpResult<u32> {
        let mut landed = 0;
        let mut cache = trees.cache();
        let files = std::mem::take(&mut stage.files);
        let mut rest = files.as_slice();
        while let Some(first) = rest.first() {
            let n = rest.iter().take_while(|f| f.parent == first.parent).count();
            let (group, after) = rest.split_at(n);
            rest = after;
            let Some(dir) = stage.parents.get(&first.parent) else { continue };
            let renamed = self.gate.commit_in(dir.as_fd(), || {
                for (i, f) in group.iter().enumerate() {
                    let flags = RenameFlags::empty();
                    if let Err(e) = nix::fcntl::renameat2(
                        dir.as_fd(),
                        f.temp.as_os_str(),
                        dir.as_fd(),
                        f.name.as_os_str(),
                        flags,
                    ) {
                        return Err((i, e));
                    }
                }
                Ok(())
            });
            let done = match &renamed {
                Ok(Ok(())) => group.len(),
                Ok(Err((i, _))) => *i,
                Err(_) => 0,
            };
            for f in &group[..done] {
                landed += 1;
                if let (Some(digest), Ok(st)) = (
                    f.digest,
                    nix::sys::stat::fstatat(dir.as_fd(), f.name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW),
                ) {
                    cache.remember_written(stat_key(&st), digest);
                }
            }
            let failed = match renamed {
                Ok(Ok(())) => None,
                Ok(Err((i, e))) => Some(match e {
                    Errno::EISDIR | Errno::ENOTEMPTY | Errno::EEXIST => OpError::os(format!(
                        "{} is a directory; remove it first",
                        super::shown(self.r, &group[i].rel).display()
                    ))
                    .with("path", &group[i].rel)
                    .with("errno", e as i32),
                    e => self.os(e, "rename into place", &group[i].rel),
                }),
                Err(shut) => Some(shut),
            };
            if let Some(e) = failed {
                stage.files = group[done..].iter().chain(rest).cloned().collect();
                stage.discard();
                Trees::save(&mut cache);
                return Err(e.with("landed", landed));
            }
            sync_dir(dir.as_fd());
        }
        Trees::save(&mut cache);
        Ok(landed)
    }

    /// Sets the mode of an existing regular file (its content already matches).
    fn chmod(&mut self, item: &Item<'_>) -> OpResult<()> {
        let rel = &item.entry.path;
        let dir = self.parent(&item.parts, rel)?;
        let name = item.parts[item.parts.len() - 1];
        let flags =
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        let file = nix::fcntl::openat(dir.as_fd(), name, flags, Mode::empty())
            .map_err(|e| self.os(e, "open", rel))?;
        let st = nix::sys::stat::fstat(file.as_fd()).map_err(|e| self.os(e, "stat", rel))?;
        if kind_of(&st) != FsEntryKind::File {
            return Err(OpError::os(format!(
                "{} is not a regular file",
                super::shown(self.r, rel).display()
            ))
            .with("path", rel));
        }
        let mode = Mode::from_bits_truncate(if item.entry.mode == 0 { FILE_MODE } else { item.entry.mode });
        let set = self.gate.commit_in(dir.as_fd(), || nix::sys::stat::fchmod(file.as_fd(), mode))?;
        set.map_err(|e| self.os(e, "chmod", rel))?;
        self.reply.written += 1;
        Ok(())
    }
}

/// Temp files written and not yet renamed, and the directories they are in.
#[derive(Default)]
struct Stage {
    files: Vec<Staged>,
    parents: BTreeMap<String, OwnedFd>,
    /// Each temp file is synced as it is written (a small batch), not the filesystem after.
    fsync_each: bool,
}

#[derive(Clone)]
struct Staged {
    parent: String,
    temp: OsString,
    name: OsString,
    rel: String,
    /// BLAKE3 of a file's content (None for a link).
    digest: Option<[u8; 32]>,
}

impl Stage {
    /// Removes every temp file still staged.
    fn discard(&mut self) {
        for f in self.files.drain(..) {
            if let Some(dir) = self.parents.get(&f.parent) {
                let _ = nix::unistd::unlinkat(dir.as_fd(), f.temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            }
        }
    }
}

/// Creates temp file `temp` in `dir` with the entry's content and mode, synced when `sync`
/// (else the batch syncs once for all).
fn temp_file(dir: BorrowedFd<'_>, temp: &OsStr, item: &Item<'_>, sync: bool) -> std::io::Result<()> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(dir, temp, flags, Mode::from_bits_truncate(0o600))?;
    let mut file = File::from(fd);
    file.write_all(&item.entry.content)?;
    let mode = if item.entry.mode == 0 { FILE_MODE } else { item.entry.mode };
    nix::sys::stat::fchmod(file.as_fd(), Mode::from_bits_truncate(mode))?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}
