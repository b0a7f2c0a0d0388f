//! The local side of a sync: walk a directory into a [`Manifest`] (excludes applied, symlinks
//! reported and never followed, digests from the [`DigestCache`] when a file's stat is
//! unchanged), and write files into it atomically.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use tether_proto::digests::{DigestCache, RACY_WINDOW, StatKey};

use super::SyncError;
use super::manifest::{Entry, Kind, Manifest, hex};

/// A local tree and what reading it cost.
#[derive(Debug, Default)]
pub struct LocalScan {
    pub manifest: Manifest,
    /// Files whose content was read for a digest (the others came from the cache).
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    /// Names left out because they are not UTF-8 (the wire carries UTF-8 paths).
    pub skipped: Vec<PathBuf>,
    /// What `stat` said of each regular file when it was scanned: a file still the same when
    /// it is sent has the scanned content (see [`unchanged_since`]).
    pub stats: HashMap<String, StatKey>,
}

/// The gitignore-style matcher of `patterns` (relative to the tree root).
pub fn excludes(patterns: &[String]) -> Result<Gitignore, SyncError> {
    let mut builder = GitignoreBuilder::new("");
    for pattern in patterns {
        builder
            .add_line(None, pattern)
            .map_err(|e| SyncError::Invalid(format!("{pattern:?} is not a gitignore pattern: {e}")))?;
    }
    builder.build().map_err(|e| SyncError::Invalid(format!("exclude patterns: {e}")))
}

/// Walks `root` (which must be a directory; missing is an empty tree).
pub fn scan(root: &Path, excludes: &Gitignore, cache: &mut DigestCache) -> Result<LocalScan, SyncError> {
    let mut scan = LocalScan::default();
    match std::fs::symlink_metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(scan),
        Err(e) => return Err(SyncError::io(format!("reading {}", root.display()), e)),
        Ok(m) if !m.is_dir() => {
            return Err(SyncError::Invalid(format!("{} is not a directory", root.display())));
        }
        Ok(_) => {}
    }
    walk(root, "", excludes, cache, &mut scan)?;
    if let Err(e) = cache.save() {
        tracing::warn!(error = %e, "the local digest cache could not be saved");
    }
    Ok(scan)
}

fn walk(
    dir: &Path,
    prefix: &str,
    excludes: &Gitignore,
    cache: &mut DigestCache,
    scan: &mut LocalScan,
) -> Result<(), SyncError> {
    let read = std::fs::read_dir(dir).map_err(|e| SyncError::io(format!("listing {}", dir.display()), e))?;
    let mut names: Vec<_> = read.filter_map(Result::ok).map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let Some(text) = name.to_str() else {
            scan.skipped.push(path);
            continue;
        };
        let rel = if prefix.is_empty() { text.to_owned() } else { format!("{prefix}/{text}") };
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let ft = meta.file_type();
        if excludes.matched(&rel, ft.is_dir()).is_ignore() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o777;
        let entry = if ft.is_dir() {
            Entry { kind: Kind::Dir, size: 0, mode, digest: None, target: None }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).ok().and_then(|t| t.to_str().map(str::to_owned));
            Entry { kind: Kind::Symlink, size: 0, mode, digest: None, target }
        } else if ft.is_file() {
            let digest = digest(&path, &meta, cache, scan).map(|d| hex(&d));
            scan.stats.insert(rel.clone(), stat_key(&meta));
            Entry { kind: Kind::File, size: meta.len(), mode, digest, target: None }
        } else {
            Entry { kind: Kind::Other, size: 0, mode, digest: None, target: None }
        };
        let is_dir = entry.kind == Kind::Dir;
        scan.manifest.entries.insert(rel.clone(), entry);
        if is_dir {
            walk(&path, &rel, excludes, cache, scan)?;
        }
    }
    Ok(())
}

/// The cache key of a file as `meta` describes it.
pub fn stat_key(meta: &std::fs::Metadata) -> StatKey {
    StatKey {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
    }
}

fn digest(
    path: &Path,
    meta: &std::fs::Metadata,
    cache: &mut DigestCache,
    scan: &mut LocalScan,
) -> Option<[u8; 32]> {
    let key = stat_key(meta);
    if let Some(d) = cache.get(&key) {
        return Some(d);
    }
    let hashed_at = SystemTime::now();
    let file =
        OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).ok()?;
    let before = file.metadata().ok()?;
    if !before.is_file() {
        return None;
    }
    let (d, n) = hash_reader(&file).ok()?;
    scan.files_hashed += 1;
    scan.bytes_hashed += n;
    let after = file.metadata().ok()?;
    if stat_key(&after) == key && stat_key(&before) == key {
        cache.remember(key, d, hashed_at);
    }
    Some(d)
}

/// Whether a file that `stat` now describes as `now` still has the content it had when it was
/// `then`: the same stat, with a ctime old enough that a change since would have moved it.
pub fn unchanged_since(then: &StatKey, now: &StatKey) -> bool {
    let now_ns =
        SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as i64;
    then == now && now.ctime_ns < now_ns - RACY_WINDOW.as_nanos() as i64
}

/// BLAKE3 of everything `reader` yields, and how many bytes that was.
pub fn hash_reader(mut reader: impl Read) -> std::io::Result<([u8; 32], u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok((*hasher.finalize().as_bytes(), total)),
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A temp file beside `target` (hidden, unique to this process).
pub fn temp_beside(target: &Path, seq: u64) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let keep: String = name.chars().take(100).collect();
    target.with_file_name(format!(".{keep}.tether-sync-{}-{seq}", std::process::id()))
}

/// Writes `content` with `mode` to a temp file beside `target` (not yet renamed; synced only
/// with `sync`, else the caller syncs the filesystem once for a whole batch).
pub fn write_temp(
    target: &Path,
    seq: u64,
    content: &[u8],
    mode: u32,
    sync: bool,
) -> Result<PathBuf, SyncError> {
    let temp = temp_beside(target, seq);
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
        file.write_all(content)?;
        file.set_permissions(std::fs::Permissions::from_mode(if mode == 0 { 0o644 } else { mode }))?;
        if sync { file.sync_data() } else { Ok(()) }
    })();
    match written {
        Ok(()) => Ok(temp),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(SyncError::io(format!("writing {}", target.display()), e))
        }
    }
}

/// Flushes everything written on the filesystem holding `dir` (one call for a whole batch
/// instead of one fsync per file).
pub fn sync_filesystem(dir: &Path) -> Result<(), SyncError> {
    let file = File::open(dir).map_err(|e| SyncError::io(format!("opening {}", dir.display()), e))?;
    nix::unistd::syncfs(&file).map_err(|e| SyncError::io(format!("syncing {}", dir.display()), e.into()))
}
