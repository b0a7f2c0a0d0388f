//! `sync down`: scan the local tree while the agent builds its manifest, merge three-way
//! against the baseline ([`merge`]) or mirror without one, then carry the plan out locally:
//! removals (deepest first; a directory only once empty), directories and links, then file
//! contents fetched many to a request (`batch_read`) or, when large, by the chunked download,
//! each checked against the remote digest and renamed into place after one filesystem sync.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tether_proto::digests::DigestCache;

use super::local::{self, LocalScan, stat_key, sync_filesystem, write_temp};
use super::manifest::{Entry, Kind, Manifest, hex};
use super::merge::{Conflict, MergePlan, Prefer, merge};
use super::plan::preserved;
use super::rpc::RemoteScan;
use super::{IN_FLIGHT, SyncError, open_cache, remote_path};
use crate::client::Client;
use crate::transfer::ENVELOPE_ALLOWANCE;

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Groups of at most this many files fsync each file rather than the whole filesystem
/// (`syncfs` also waits for everything else dirty on it).
const FSYNC_EACH_UP_TO: usize = 16;

/// Options of [`sync_down`].
#[derive(Debug, Clone)]
pub struct DownOptions {
    /// Gitignore-style patterns left out on both sides.
    pub excludes: Vec<String>,
    /// Without a baseline: remove local entries the remote tree does not have.
    pub delete: bool,
    /// Gitignore-style patterns of local entries never removed.
    pub preserve: Vec<String>,
    pub dry_run: bool,
    /// The baseline manifest (`sync snapshot`, `sync up --baseline-out`): merge three-way.
    pub baseline: Option<PathBuf>,
    pub prefer: Prefer,
    /// Appended to a conflicting file's name for the remote version saved beside it.
    pub conflict_suffix: String,
    pub digest_cache: Option<PathBuf>,
}

impl Default for DownOptions {
    fn default() -> Self {
        DownOptions {
            excludes: Vec::new(),
            delete: false,
            preserve: Vec::new(),
            dry_run: false,
            baseline: None,
            prefer: Prefer::Neither,
            conflict_suffix: ".remote".into(),
            digest_cache: None,
        }
    }
}

/// What [`sync_down`] did (or, dry, would do).
#[derive(Debug, Clone, Default)]
pub struct DownReport {
    pub plan: MergePlan,
    pub dry_run: bool,
    pub files_received: u64,
    pub bytes_received: u64,
    pub removed: u64,
    /// Conflicts (settled by `prefer` or not); the unsettled ones have the remote version
    /// saved beside the local one.
    pub conflicts: Vec<Conflict>,
    pub local_files_hashed: u64,
    pub remote: RemoteScan,
    pub elapsed: Duration,
}

impl DownReport {
    /// Conflicts no preference settled.
    pub fn unresolved(&self) -> usize {
        self.conflicts.iter().filter(|c| !c.resolved).count()
    }
}

/// Brings remote directory `remote` into local directory `local`.
pub async fn sync_down(
    client: &Client,
    remote: &str,
    local: &Path,
    opts: &DownOptions,
) -> Result<DownReport, SyncError> {
    let started = Instant::now();
    let baseline = opts.baseline.as_deref().map(Manifest::load).transpose()?;
    let preserve = local::excludes(&opts.preserve)?;
    let scanning = {
        let (root, excludes, cache) = (local.to_owned(), opts.excludes.clone(), opts.digest_cache.clone());
        tokio::task::spawn_blocking(move || -> Result<LocalScan, SyncError> {
            let matcher = local::excludes(&excludes)?;
            local::scan(&root, &matcher, &mut open_cache(cache.as_deref()))
        })
    };
    let remote_side = client.remote_manifest(remote, &opts.excludes).await;
    let scan = scanning.await.map_err(|e| SyncError::Invalid(format!("local scan failed: {e}")))??;
    let (remote_manifest, remote_scan) = remote_side?;
    if remote_scan.root_missing {
        return Err(SyncError::Invalid(format!("remote directory {remote:?} does not exist")));
    }
    let mut plan = merge(baseline.as_ref(), &scan.manifest, &remote_manifest, opts.prefer);
    if opts.delete {
        plan.delete.append(&mut plan.extras);
    }
    plan.delete.retain(|p| !scan.manifest.entries.get(p).is_some_and(|e| preserved(&preserve, p, e)));
    let mut report = DownReport {
        conflicts: plan.conflicts.clone(),
        plan,
        dry_run: opts.dry_run,
        local_files_hashed: scan.files_hashed,
        remote: remote_scan,
        ..Default::default()
    };
    if !opts.dry_run {
        std::fs::create_dir_all(local)
            .map_err(|e| SyncError::io(format!("creating {}", local.display()), e))?;
        let mut cache = open_cache(opts.digest_cache.as_deref());
        let mut apply =
            Apply { client, remote, local, theirs: &remote_manifest, report: &mut report, cache: &mut cache };
        apply.run(&opts.conflict_suffix).await?;
        if let Err(e) = cache.save() {
            tracing::warn!(error = %e, "the local digest cache could not be saved");
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

struct Apply<'a> {
    client: &'a Client,
    remote: &'a str,
    local: &'a Path,
    theirs: &'a Manifest,
    report: &'a mut DownReport,
    cache: &'a mut DigestCache,
}

/// A remote file to fetch into a local path.
struct Fetch {
    rel: String,
    target: PathBuf,
    entry: Entry,
}

impl Apply<'_> {
    async fn run(&mut self, suffix: &str) -> Result<(), SyncError> {
        let plan = self.report.plan.clone();
        for rel in plan.delete.iter().rev() {
            self.remove(rel)?;
        }
        let mut fetches = Vec::new();
        for rel in &plan.take {
            let Some(entry) = self.theirs.entries.get(rel) else { continue };
            let target = self.local.join(rel);
            match entry.kind {
                Kind::Dir => make_dir(&target, entry.mode)?,
                Kind::Symlink => place_link(&target, entry)?,
                Kind::File => fetches.push(Fetch { rel: rel.clone(), target, entry: entry.clone() }),
                Kind::Other => {}
            }
        }
        for conflict in plan.conflicts.iter().filter(|c| !c.resolved) {
            let Some(entry) = self.theirs.entries.get(&conflict.path) else { continue };
            let target = self.local.join(format!("{}{suffix}", conflict.path));
            match entry.kind {
                Kind::File => {
                    fetches.push(Fetch { rel: conflict.path.clone(), target, entry: entry.clone() })
                }
                Kind::Symlink => place_link(&target, entry)?,
                Kind::Dir | Kind::Other => {}
            }
        }
        self.fetch(fetches).await
    }

    /// Removes one local entry; a directory only when empty (what is left in it was kept).
    fn remove(&mut self, rel: &str) -> Result<(), SyncError> {
        let path = self.local.join(rel);
        let removed = match std::fs::symlink_metadata(&path) {
            Err(_) => return Ok(()),
            Ok(m) if m.is_dir() => std::fs::remove_dir(&path),
            Ok(_) => std::fs::remove_file(&path),
        };
        match removed {
            Ok(()) => self.report.removed += 1,
            Err(e) => tracing::info!(path = %path.display(), error = %e, "left in place"),
        }
        Ok(())
    }

    /// Fetches every file: small ones many to a `batch_read`, large ones by the chunked download.
    async fn fetch(&mut self, fetches: Vec<Fetch>) -> Result<(), SyncError> {
        let budget = self.client.max_payload().saturating_sub(ENVELOPE_ALLOWANCE + self.remote.len());
        let (small, large): (Vec<Fetch>, Vec<Fetch>) =
            fetches.into_iter().partition(|f| (f.entry.size as usize) < budget / 2);
        let mut groups: Vec<Vec<Fetch>> = Vec::new();
        let mut used = usize::MAX;
        for f in small {
            let cost = f.rel.len() + f.entry.size as usize + 24;
            if used.saturating_add(cost) > budget {
                groups.push(Vec::new());
                used = 0;
            }
            used += cost;
            if let Some(last) = groups.last_mut() {
                last.push(f);
            }
        }
        let (client, remote) = (self.client, self.remote);
        let mut reads = futures::stream::iter(groups)
            .map(|group| async move {
                let mut files = Vec::new();
                let mut rest: Vec<String> = group.iter().map(|f| f.rel.clone()).collect();
                while !rest.is_empty() {
                    let reply = client.batch_read(remote, rest.clone()).await?;
                    let got = reply.files.len();
                    files.extend(reply.files);
                    rest.drain(..got);
                }
                Ok::<_, SyncError>((group, files))
            })
            .buffered(IN_FLIGHT);
        while let Some(read) = reads.next().await {
            let (group, files) = read?;
            let fsync_each = group.len() <= FSYNC_EACH_UP_TO;
            let mut staged = Vec::with_capacity(group.len());
            for (f, got) in group.into_iter().zip(files) {
                if got.missing
                    || hex(blake3::hash(&got.content).as_bytes())
                        != f.entry.digest.clone().unwrap_or_default()
                {
                    discard(&staged);
                    return Err(SyncError::Changed { path: remote_path(remote, &f.rel) });
                }
                make_parent(&f.target)?;
                let temp = write_temp(
                    &f.target,
                    TEMP_SEQ.fetch_add(1, Ordering::Relaxed),
                    &got.content,
                    f.entry.mode,
                    fsync_each,
                )?;
                self.report.bytes_received += got.content.len() as u64;
                staged.push((temp, f));
            }
            self.land(staged, fsync_each)?;
        }
        for f in large {
            self.fetch_large(f).await?;
        }
        Ok(())
    }

    /// Syncs the filesystem once (unless each file was synced), then renames every staged file
    /// into place.
    fn land(&mut self, staged: Vec<(PathBuf, Fetch)>, synced: bool) -> Result<(), SyncError> {
        if staged.is_empty() {
            return Ok(());
        }
        if let Err(e) = if synced { Ok(()) } else { sync_filesystem(self.local) } {
            discard(&staged);
            return Err(e);
        }
        for (i, (temp, f)) in staged.iter().enumerate() {
            if let Err(e) = replace(temp, &f.target) {
                discard(&staged[i..]);
                return Err(e);
            }
            self.remember(f);
            self.report.files_received += 1;
        }
        Ok(())
    }

    fn remember(&mut self, f: &Fetch) {
        let digest = f.entry.digest.as_deref().and_then(unhex);
        if let (Some(digest), Ok(meta)) = (digest, std::fs::symlink_metadata(&f.target)) {
            self.cache.remember_written(stat_key(&meta), digest);
        }
    }

    /// One large file by the chunked download into a temp file beside its target.
    async fn fetch_large(&mut self, f: Fetch) -> Result<(), SyncError> {
        make_parent(&f.target)?;
        let temp = local::temp_beside(&f.target, TEMP_SEQ.fetch_add(1, Ordering::Relaxed));
        let fetched = async {
            let mut file = tokio::fs::File::create(&temp)
                .await
                .map_err(|e| SyncError::io(format!("creating {}", temp.display()), e))?;
            let n = self.client.download(&remote_path(self.remote, &f.rel), &mut file).await?;
            file.sync_all().await.map_err(|e| SyncError::io(format!("writing {}", temp.display()), e))?;
            drop(file);
            let check = std::fs::File::open(&temp).and_then(local::hash_reader);
            let (digest, _) = check.map_err(|e| SyncError::io(format!("reading {}", temp.display()), e))?;
            if Some(hex(&digest)) != f.entry.digest {
                return Err(SyncError::Changed { path: remote_path(self.remote, &f.rel) });
            }
            let mode = if f.entry.mode == 0 { 0o644 } else { f.entry.mode };
            std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))
                .map_err(|e| SyncError::io(format!("chmod {}", temp.display()), e))?;
            replace(&temp, &f.target)?;
            Ok(n)
        }
        .await;
        match fetched {
            Ok(n) => {
                self.report.files_received += 1;
                self.report.bytes_received += n;
                self.remember(&f);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                Err(e)
            }
        }
    }
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

fn discard(staged: &[(PathBuf, Fetch)]) {
    for (temp, _) in staged {
        let _ = std::fs::remove_file(temp);
    }
}

fn make_parent(target: &Path) -> Result<(), SyncError> {
    match target.parent() {
        Some(parent) => std::fs::create_dir_all(parent)
            .map_err(|e| SyncError::io(format!("creating {}", parent.display()), e)),
        None => Ok(()),
    }
}

/// Renames `temp` over `target`; an empty directory in the way is removed first.
fn replace(temp: &Path, target: &Path) -> Result<(), SyncError> {
    if std::fs::symlink_metadata(target).is_ok_and(|m| m.is_dir()) {
        std::fs::remove_dir(target)
            .map_err(|e| SyncError::io(format!("replacing directory {}", target.display()), e))?;
    }
    std::fs::rename(temp, target).map_err(|e| SyncError::io(format!("renaming onto {}", target.display()), e))
}

/// A directory with `mode`; a file or link in the way is replaced.
fn make_dir(target: &Path, mode: u32) -> Result<(), SyncError> {
    let io = |e| SyncError::io(format!("creating directory {}", target.display()), e);
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            std::fs::remove_file(target).map_err(io)?;
            std::fs::create_dir_all(target).map_err(io)?;
        }
        Err(_) => std::fs::create_dir_all(target).map_err(io)?,
    }
    let mode = if mode == 0 { 0o755 } else { mode };
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode)).map_err(io)
}

/// A symlink to `entry`'s target, placed atomically (temp link, rename).
fn place_link(target: &Path, entry: &Entry) -> Result<(), SyncError> {
    make_parent(target)?;
    let temp = local::temp_beside(target, TEMP_SEQ.fetch_add(1, Ordering::Relaxed));
    let link = entry.target.clone().unwrap_or_default();
    std::os::unix::fs::symlink(&link, &temp)
        .map_err(|e| SyncError::io(format!("linking {}", target.display()), e))?;
    replace(&temp, target).inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })
}
