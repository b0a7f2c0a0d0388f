//! `sync up`: scan the local tree while the agent builds its manifest, plan the difference,
//! then send it: removals first, then directories, files, links and mode changes packed into
//! `batch_write` requests that fit `max_payload` (a few in flight), and large files through the
//! chunked transfer.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tether_proto::digests::StatKey;
use tether_proto::pb;

use super::local::{self, LocalScan};
use super::manifest::{Entry, Kind, Manifest};
use super::plan::{UpPlan, plan_up};
use super::rpc::RemoteScan;
use super::{IN_FLIGHT, SyncError, open_cache, remote_path};
use crate::client::Client;
use crate::transfer::{ENVELOPE_ALLOWANCE, WriteOptions};
use crate::upload::{PutOptions, derive_transfer_id};

/// Bytes an entry costs in a batch besides its path and content (tags, lengths, mode, kind).
const ENTRY_OVERHEAD: usize = 24;

/// Options of [`sync_up`].
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// Gitignore-style patterns left out on both sides (never sent, never removed).
    pub excludes: Vec<String>,
    /// Remove remote entries the local tree does not have.
    pub delete: bool,
    /// Gitignore-style patterns of remote entries never removed.
    pub preserve: Vec<String>,
    /// Plan only; change nothing.
    pub dry_run: bool,
    /// Write the local manifest here once the remote tree equals it (a baseline for `sync down`).
    pub baseline_out: Option<PathBuf>,
    /// The local digest cache (None: in memory, every file is read).
    pub digest_cache: Option<PathBuf>,
}

/// What [`sync_up`] did (or, dry, would do).
#[derive(Debug, Clone, Default)]
pub struct UpReport {
    pub plan: UpPlan,
    pub dry_run: bool,
    /// Files whose content was sent, and their bytes.
    pub files_sent: u64,
    pub bytes_sent: u64,
    /// Of those, the large ones sent through the chunked transfer.
    pub large_files: u64,
    /// Remote entries removed.
    pub removed: u64,
    /// batch_write requests sent.
    pub batches: u64,
    /// Files the local scan read (the others came from the digest cache), and their bytes.
    pub local_files_hashed: u64,
    pub local_bytes_hashed: u64,
    pub remote: RemoteScan,
    pub elapsed: Duration,
}

/// Makes remote directory `remote` equal local directory `local`.
pub async fn sync_up(
    client: &Client,
    local: &Path,
    remote: &str,
    opts: &UpOptions,
) -> Result<UpReport, SyncError> {
    let started = Instant::now();
    if !local.is_dir() {
        return Err(SyncError::Invalid(format!("{} is not a directory", local.display())));
    }
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
    let plan = plan_up(&scan.manifest, &remote_manifest, opts.delete, &preserve);
    let mut report = UpReport {
        plan,
        dry_run: opts.dry_run,
        local_files_hashed: scan.files_hashed,
        local_bytes_hashed: scan.bytes_hashed,
        remote: remote_scan,
        ..Default::default()
    };
    if !opts.dry_run {
        Sender { client, local, remote, scan: &scan, manifest: &scan.manifest, report: &mut report }
            .send()
            .await?;
        if let Some(out) = &opts.baseline_out {
            scan.manifest.save(out)?;
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

struct Sender<'a> {
    client: &'a Client,
    local: &'a Path,
    remote: &'a str,
    scan: &'a LocalScan,
    manifest: &'a Manifest,
    report: &'a mut UpReport,
}

/// One entry to write, before its content is read.
struct Pending {
    path: String,
    entry: Entry,
    mode_only: bool,
    /// The file's stat when it was scanned.
    stat: Option<StatKey>,
}

impl Sender<'_> {
    /// The content bytes one batch may carry.
    fn budget(&self) -> usize {
        self.client.max_payload().saturating_sub(ENVELOPE_ALLOWANCE + self.remote.len())
    }

    async fn send(mut self) -> Result<(), SyncError> {
        let plan = self.report.plan.clone();
        self.remove(&plan.remove).await?;
        let budget = self.budget();
        let large = |e: &Entry| e.kind == Kind::File && e.size as usize > budget / 2;
        let mut pending = Vec::new();
        let mut big = Vec::new();
        let lists = [(&plan.dirs, false), (&plan.files, false), (&plan.links, false), (&plan.modes, true)];
        for (list, mode_only) in lists {
            for path in list {
                let Some(entry) = self.manifest.entries.get(path) else { continue };
                if !mode_only && large(entry) {
                    big.push(path.clone());
                } else {
                    let stat = self.scan.stats.get(path).copied();
                    pending.push(Pending { path: path.clone(), entry: entry.clone(), mode_only, stat });
                }
            }
        }
        self.batches(pending, budget).await?;
        for path in big {
            self.send_large(&path).await?;
        }
        Ok(())
    }

    /// Removals, packed by path bytes, one request after the other (before any write).
    async fn remove(&mut self, paths: &[String]) -> Result<(), SyncError> {
        let budget = self.budget();
        let mut rest = paths;
        while !rest.is_empty() {
            let mut used = 0;
            let n = rest.iter().take_while(|p| {
                used += p.len() + 4;
                used <= budget
            });
            let n = n.count().max(1);
            let request = pb::BatchWriteRequest {
                root: self.remote.to_owned(),
                entries: Vec::new(),
                remove: rest[..n].to_vec(),
            };
            let reply = self.client.batch_write(request).await?;
            self.report.removed += u64::from(reply.removed);
            self.report.batches += 1;
            rest = &rest[n..];
        }
        Ok(())
    }

    /// Packs `pending` into batches of at most `budget` bytes and sends them, a few in flight.
    async fn batches(&mut self, pending: Vec<Pending>, budget: usize) -> Result<(), SyncError> {
        let mut groups: Vec<Vec<Pending>> = Vec::new();
        let mut used = usize::MAX;
        for p in pending {
            let cost = p.path.len() + ENTRY_OVERHEAD + if p.mode_only { 0 } else { p.entry.size as usize };
            if used.saturating_add(cost) > budget {
                groups.push(Vec::new());
                used = 0;
            }
            used += cost;
            if let Some(last) = groups.last_mut() {
                last.push(p);
            }
        }
        let (client, local, remote) = (self.client, self.local.to_owned(), self.remote.to_owned());
        let mut sends = futures::stream::iter(groups)
            .map(|group| {
                let local = local.clone();
                let remote = remote.clone();
                async move {
                    let (entries, files, bytes) =
                        tokio::task::spawn_blocking(move || build_entries(&local, group))
                            .await
                            .map_err(|e| SyncError::Invalid(format!("reading files failed: {e}")))??;
                    let request = pb::BatchWriteRequest { root: remote, entries, remove: Vec::new() };
                    client.batch_write(request).await?;
                    Ok::<_, SyncError>((files, bytes))
                }
            })
            .buffered(IN_FLIGHT);
        while let Some(sent) = sends.next().await {
            let (files, bytes) = sent?;
            self.report.files_sent += files;
            self.report.bytes_sent += bytes;
            self.report.batches += 1;
        }
        Ok(())
    }

    /// One large file through the verified transfer (BLAKE3 checked by the agent before its
    /// atomic rename, mode kept). The transfer id is derived from the target and the content's
    /// digest, so a sync killed half-way through this file sends only the rest when re-run.
    async fn send_large(&mut self, rel: &str) -> Result<(), SyncError> {
        let Some(entry) = self.manifest.entries.get(rel) else { return Ok(()) };
        let path = self.local.join(rel);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| SyncError::io(format!("opening {}", path.display()), e))?;
        let remote = remote_path(self.remote, rel);
        // Without a digest (none is known for the content) the upload gets a random id.
        let transfer_id =
            entry.digest.as_ref().map(|d| derive_transfer_id(&[b"sync up", remote.as_bytes(), d.as_bytes()]));
        let options = PutOptions {
            write: WriteOptions { mode: entry.mode, create_parents: true },
            transfer_id,
            ..Default::default()
        };
        let report = self.client.put_from(&remote, file, Some(entry.size), &options).await?;
        self.report.files_sent += 1;
        self.report.large_files += 1;
        self.report.bytes_sent += report.sent;
        Ok(())
    }
}

/// The batch entries of `group`, with file contents read from `local` (and checked against
/// the digests the plan was made from). Returns the entries, files and content bytes.
fn build_entries(local: &Path, group: Vec<Pending>) -> Result<(Vec<pb::BatchEntry>, u64, u64), SyncError> {
    let (mut files, mut bytes) = (0, 0);
    let mut entries = Vec::with_capacity(group.len());
    for p in group {
        let mut entry = pb::BatchEntry { path: p.path.clone(), mode: p.entry.mode, ..Default::default() };
        match p.entry.kind {
            Kind::Dir => entry.kind = pb::FsEntryKind::Directory as i32,
            Kind::Symlink => {
                entry.kind = pb::FsEntryKind::Symlink as i32;
                entry.symlink_target = p.entry.target.clone().unwrap_or_default();
            }
            Kind::File if p.mode_only => {
                entry.kind = pb::FsEntryKind::File as i32;
                entry.mode_only = true;
            }
            Kind::File => {
                let path = local.join(&p.path);
                let (content, now) = read_nofollow(&path)?;
                // The content must be what the plan was made from: the same stat says so
                // (as for the digest cache), else the digest is checked.
                if !p.stat.is_some_and(|then| local::unchanged_since(&then, &now)) {
                    let digest = super::manifest::hex(blake3::hash(&content).as_bytes());
                    if p.entry.digest.as_deref() != Some(digest.as_str()) {
                        return Err(SyncError::Changed { path: path.display().to_string() });
                    }
                }
                files += 1;
                bytes += content.len() as u64;
                entry.kind = pb::FsEntryKind::File as i32;
                entry.content = content.into();
            }
            Kind::Other => continue,
        }
        entries.push(entry);
    }
    Ok((entries, files, bytes))
}

/// A regular file's content, never through a symlink, and its stat after the read.
fn read_nofollow(path: &Path) -> Result<(Vec<u8>, StatKey), SyncError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut content = Vec::new();
    let read = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .and_then(|mut f| f.read_to_end(&mut content).and_then(|_| f.metadata()));
    let meta = read.map_err(|e| SyncError::io(format!("reading {}", path.display()), e))?;
    Ok((content, local::stat_key(&meta)))
}
