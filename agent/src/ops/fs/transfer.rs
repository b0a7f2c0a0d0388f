//! Verified, resumable uploads (README "Transfers"; ops transfer_open/commit/abort and fs_write
//! with `transfer_id`).
//!
//! An upload lives in a hidden temp file beside its target, named after the client's transfer
//! id, so a client that died half-way finds it again and asks which ranges are already held.
//! Chunks arrive out of order, several in flight, and are written without an fsync each; the
//! commit fsyncs once. The BLAKE3 of the content is computed as the bytes are written (in order,
//! catching up on chunks that came early from the page cache), so the commit has little left to
//! hash; a digest that differs from the client's discards the upload and leaves the target as it
//! was. The commit is the one step that changes the target: the fenced rename, under the gate.
//!
//! The registry is in memory: an upload survives its client, not an agent restart (a temp file
//! found without a record is started over). Uploads idle longer than the idle time are discarded
//! with their temp files by a sweeper.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, RenameFlags};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;
use tether_proto::pb::{self, ErrorCode, FsEntryKind};

use super::commit::{Gate, under_deadline};
use super::digest::{Digests, check_precondition, hash_range};
use super::kind::{kind_of, not_regular};
use super::mode::{self, carried_over};
use super::ranges::RangeSet;
use super::write::{MAX_WRITE_END, final_target};
use super::{lstat_at, nearest_dir, sync_dir};
use crate::error::{OpError, OpResult};
use crate::paths::Paths;

/// Uploads open at once; more are refused (DRAINING) until some commit or go idle.
const MAX_OPEN: usize = 1024;
/// Chunk writes of one upload the agent takes in flight (Capabilities.transfer_window).
pub const WINDOW: u32 = 16;
/// An upload idle this long is discarded with its temp file (Capabilities.transfer_idle_ms).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(3600);
/// Bytes a chunk write may read back from the temp file to keep the digest current; a longer
/// stretch (after a rewrite of hashed bytes) is left for the commit.
const CATCH_UP: u64 = 64 << 20;

/// Every open upload, by transfer id. The id alone names an upload, whichever fence scope
/// opened it: a client re-run after a crash comes back with a new scope, and every op on the
/// upload passes the fence of its own request anyway.
pub struct Transfers {
    uploads: Mutex<HashMap<String, Arc<Upload>>>,
    idle: Duration,
    max_payload: AtomicUsize,
    sweeper: OnceLock<()>,
    digests: Arc<Digests>,
}

struct Upload {
    /// The target as the client named it (chunks and the commit must name the same).
    path: String,
    abs: std::path::PathBuf,
    dir: OwnedFd,
    name: OsString,
    tmp_name: OsString,
    file: File,
    mode: Option<Mode>,
    precondition: Option<pb::TransferPrecondition>,
    progress: Mutex<Progress>,
    /// Held while a chunk is written: concurrent writes to one file would only contend for its
    /// inode lock in the kernel, which waiters spin on, taking a core from the rest of the
    /// transfer; here they sleep. (The hashing after a write runs beside the next write.)
    writing: Mutex<()>,
    /// Chunk writes hold it shared; the commit and the sweeper exclusively, and set it once the
    /// temp file is gone or committed, so no write lands in a file being hashed or renamed.
    closed: RwLock<bool>,
}

struct Progress {
    held: RangeSet,
    hasher: blake3::Hasher,
    /// Bytes `[0, hashed)` are in `hasher`.
    hashed: u64,
    received: u64,
    last_active: Instant,
}

impl Default for Transfers {
    fn default() -> Self {
        Transfers::new(DEFAULT_IDLE)
    }
}

impl Transfers {
    pub fn new(idle: Duration) -> Self {
        Transfers {
            uploads: Mutex::default(),
            idle,
            max_payload: AtomicUsize::new(0),
            sweeper: OnceLock::new(),
            digests: Arc::default(),
        }
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// The digests fs_digest and the commits share.
    pub fn digests(&self) -> Arc<Digests> {
        self.digests.clone()
    }

    /// The server's negotiated max_payload, reported to clients that open an upload.
    pub fn note_max_payload(&self, max_payload: usize) {
        self.max_payload.store(max_payload, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Upload>>> {
        self.uploads.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn find(&self, id: &str, path: &str) -> OpResult<Arc<Upload>> {
        let found = self.lock().get(id).cloned();
        let upload = found.ok_or_else(|| {
            OpError::new(
                ErrorCode::NotFound,
                format!(
                    "no upload is open under transfer id {id:?} (an idle one is discarded): open it again"
                ),
            )
            .with("transfer_id", id)
        })?;
        if upload.path != path {
            return Err(OpError::protocol(format!(
                "transfer id {id:?} belongs to an upload to {:?}, not {path:?}",
                upload.path
            ))
            .with("transfer_id", id));
        }
        Ok(upload)
    }

    fn forget(&self, id: &str) -> Option<Arc<Upload>> {
        self.lock().remove(id)
    }

    /// transfer_open: creates the upload's temp file, or finds the upload again by its id.
    pub async fn open(
        self: &Arc<Self>,
        paths: Arc<Paths>,
        req: pb::TransferOpenRequest,
        deadline: Duration,
    ) -> OpResult<pb::TransferOpenResponse> {
        check_id(&req.transfer_id)?;
        let mode = mode::requested("transfer_open.mode", req.mode)?;
        self.start_sweeper();
        let this = self.clone();
        let key = req.transfer_id.clone();
        under_deadline(deadline, move |gate| {
            let existing = this.lock().get(&key).cloned();
            let (upload, resumed) = match existing {
                Some(upload) if upload.is_closed() => (Arc::new(create(&paths, &req, mode, gate)?), false),
                Some(upload) if upload.path == req.path => (upload, true),
                Some(upload) => {
                    return Err(OpError::protocol(format!(
                        "transfer id {:?} is already used for {:?}",
                        req.transfer_id, upload.path
                    )));
                }
                None if this.lock().len() >= MAX_OPEN => {
                    return Err(OpError::draining(format!(
                        "{MAX_OPEN} uploads are open: commit or abort one, or wait for idle ones to go"
                    )));
                }
                None => (Arc::new(create(&paths, &req, mode, gate)?), false),
            };
            if let Some(want) = &upload.precondition {
                let checked = check_precondition(&paths, upload.dir.as_fd(), &upload.name, &upload.abs, want);
                if let Err(e) = checked {
                    upload.discard();
                    this.lock().remove(&key);
                    return Err(e);
                }
            }
            let mut progress = upload.progress();
            progress.last_active = Instant::now();
            let held =
                progress.held.iter().map(|(offset, length)| pb::ByteRange { offset, length }).collect();
            drop(progress);
            this.lock().insert(key, upload);
            Ok(pb::TransferOpenResponse {
                held,
                resumed,
                max_payload: this.max_payload.load(Ordering::Relaxed) as u64,
                window: WINDOW,
                idle_timeout_ms: this.idle.as_millis() as u64,
            })
        })
        .await
    }

    /// fs_write with a transfer id: the content goes to the upload's temp file.
    pub async fn write_chunk(
        &self,
        req: pb::FsWriteRequest,
        deadline: Duration,
    ) -> OpResult<pb::FsWriteResponse> {
        if req.append || !req.use_offset {
            return Err(OpError::protocol(
                "fs_write with a transfer_id writes at offset: set use_offset, not append",
            ));
        }
        let end = req.offset.saturating_add(req.content.len() as u64);
        if end > MAX_WRITE_END {
            return Err(OpError::protocol(format!("an upload may end at {MAX_WRITE_END} bytes at most"))
                .with("max_end", MAX_WRITE_END));
        }
        let upload = self.find(&req.transfer_id, &req.path)?;
        under_deadline(deadline, move |_gate| {
            let closed = upload.closed.read().unwrap_or_else(PoisonError::into_inner);
            if *closed {
                return Err(OpError::new(
                    ErrorCode::NotFound,
                    "the upload was committed or discarded meanwhile",
                ));
            }
            let io = |e: std::io::Error| OpError::from_io(&e, "write upload chunk of", &upload.abs);
            {
                let _writing = upload.writing.lock().unwrap_or_else(PoisonError::into_inner);
                upload.file.write_all_at(&req.content, req.offset).map_err(io)?;
                start_writeback(&upload.file, req.offset, req.content.len());
            }
            upload.progress().record(&upload.file, req.offset, &req.content).map_err(io)?;
            Ok(pb::FsWriteResponse { bytes_written: req.content.len() as u64 })
        })
        .await
    }

    /// transfer_commit: checks the digest, then fsyncs and renames the temp file over the target.
    pub async fn commit(
        &self,
        paths: Arc<Paths>,
        req: pb::TransferCommitRequest,
        deadline: Duration,
    ) -> OpResult<pb::TransferCommitResponse> {
        if req.blake3.len() != blake3::OUT_LEN {
            return Err(OpError::protocol(
                "transfer_commit.blake3 must be the 32-byte BLAKE3 of the content",
            ));
        }
        let upload = self.find(&req.transfer_id, &req.path)?;
        let id = req.transfer_id.clone();
        let committed = under_deadline(deadline, {
            let (upload, digests) = (upload.clone(), self.digests.clone());
            move |gate| upload.commit(&paths, &req, gate, &digests)
        })
        .await;
        match &committed {
            // Missing bytes can still be sent; anything else ends the upload.
            Err(e) if e.detail.get("reason").map(String::as_str) == Some("incomplete") => {}
            _ => {
                let mut uploads = self.lock();
                if uploads.get(&id).is_some_and(|u| Arc::ptr_eq(u, &upload)) {
                    uploads.remove(&id);
                }
            }
        }
        committed
    }

    /// transfer_abort: discards an upload and its temp file.
    pub async fn abort(&self, req: pb::TransferAbortRequest) -> OpResult<pb::TransferAbortResponse> {
        let Some(upload) = self.forget(&req.transfer_id) else {
            return Ok(pb::TransferAbortResponse { found: false });
        };
        super::blocking(move || {
            upload.discard();
            Ok(pb::TransferAbortResponse { found: true })
        })
        .await
    }

    /// Starts (once) the task that discards uploads idle longer than the idle time.
    fn start_sweeper(self: &Arc<Self>) {
        self.sweeper.get_or_init(|| {
            let weak = Arc::downgrade(self);
            let every = (self.idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(this) = weak.upgrade() else { return };
                    let _ = tokio::task::spawn_blocking(move || this.sweep()).await;
                }
            });
        });
    }

    fn sweep(&self) {
        let idle: Vec<(String, Arc<Upload>)> = self
            .lock()
            .iter()
            .filter(|(_, u)| u.progress().last_active.elapsed() > self.idle)
            .map(|(k, u)| (k.clone(), u.clone()))
            .collect();
        for (key, upload) in idle {
            tracing::info!(transfer_id = %key, path = %upload.abs.display(), "discarding an idle upload");
            self.lock().remove(&key);
            upload.discard();
        }
    }
}

/// A transfer id names a file: 8..64 of `[A-Za-z0-9_-]`.
fn check_id(id: &str) -> OpResult<()> {
    let ok = (8..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        return Ok(());
    }
    Err(OpError::protocol("transfer_id must be 8 to 64 of [A-Za-z0-9_-]").with("field", "transfer_id"))
}

/// Creates the upload's temp file beside the target (its parents first, when asked).
fn create(paths: &Paths, req: &pb::TransferOpenRequest, mode: Option<Mode>, gate: &Gate) -> OpResult<Upload> {
    let r = paths.resolve(&req.path)?;
    if let (true, Some(parent)) = (req.create_parents, r.abs.parent()) {
        let parent = paths.resolve_abs(parent.to_owned())?;
        let nearest = nearest_dir(paths, &parent)?;
        gate.commit_in(nearest.as_fd(), || paths.create_dirs(&parent, Mode::from_bits_truncate(0o755)))??;
    }
    let target = final_target(paths, &r)?;
    let (dir, name) = paths.open_parent(&target)?;
    let existing = lstat_at(paths, dir.as_fd(), &name, &target.abs)?;
    match existing.as_ref().map(kind_of) {
        None | Some(FsEntryKind::File) => {}
        Some(kind) => return Err(not_regular(&target.abs, kind, "upload to")),
    }
    if let Some(want) = &req.precondition {
        check_precondition(paths, dir.as_fd(), &name, &target.abs, want)?;
    }
    let tmp_name = temp_name(&name, &req.transfer_id);
    // Private until committed when the result's mode is not the default of a new file.
    let initial = if mode.is_some() || existing.is_some() { 0o600 } else { 0o666 };
    let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = gate
        .commit_in(dir.as_fd(), || {
            nix::fcntl::openat(dir.as_fd(), tmp_name.as_os_str(), flags, Mode::from_bits_truncate(initial))
        })?
        .map_err(|e| paths.errno(e, "create upload file beside", &target.abs))?;
    let file = File::from(fd);
    let st = nix::sys::stat::fstat(file.as_fd()).map_err(|e| paths.errno(e, "stat", &target.abs))?;
    if kind_of(&st) != FsEntryKind::File {
        return Err(not_regular(&target.abs, kind_of(&st), "upload to"));
    }
    // A temp file without a record (the agent restarted): its ranges are unknown, start over.
    file.set_len(0).map_err(|e| OpError::from_io(&e, "truncate upload file of", &target.abs))?;
    Ok(Upload {
        path: req.path.clone(),
        abs: target.abs,
        dir,
        name,
        tmp_name,
        file,
        mode,
        precondition: req.precondition.clone(),
        progress: Mutex::new(Progress {
            held: RangeSet::default(),
            hasher: blake3::Hasher::new(),
            hashed: 0,
            received: 0,
            last_active: Instant::now(),
        }),
        writing: Mutex::new(()),
        closed: RwLock::new(false),
    })
}

/// `.<name>.tether-xfer-<id>`, the name kept short enough for 255-byte file names.
fn temp_name(name: &OsStr, id: &str) -> OsString {
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(name);
    let keep = &bytes[..bytes.len().min(255 - 1 - ".tether-xfer-".len() - id.len())];
    let mut tmp = OsString::from(".");
    tmp.push(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(keep));
    tmp.push(format!(".tether-xfer-{id}"));
    tmp
}

impl Upload {
    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_closed(&self) -> bool {
        *self.closed.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes the temp file; later chunk writes find the upload closed.
    fn discard(&self) {
        let mut closed = self.closed.write().unwrap_or_else(PoisonError::into_inner);
        if !*closed {
            let _ = nix::unistd::unlinkat(
                self.dir.as_fd(),
                self.tmp_name.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            );
            *closed = true;
        }
    }

    fn commit(
        &self,
        paths: &Paths,
        req: &pb::TransferCommitRequest,
        gate: &Gate,
        digests: &Digests,
    ) -> OpResult<pb::TransferCommitResponse> {
        let mut closed = self.closed.write().unwrap_or_else(PoisonError::into_inner);
        if *closed {
            return Err(OpError::new(ErrorCode::NotFound, "the upload was committed or discarded meanwhile"));
        }
        let mut progress = self.progress();
        let beyond = progress.held.end() > req.size;
        if !beyond && !progress.held.is_exactly(req.size) {
            let missing: Vec<String> =
                progress.held.missing(req.size, 8).iter().map(|(o, l)| format!("{o}+{l}")).collect();
            return Err(OpError::protocol(format!(
                "the upload does not hold all {} bytes yet; missing {}",
                req.size,
                missing.join(", ")
            ))
            .with("reason", "incomplete")
            .with("missing", missing.join(",")));
        }
        // From here the upload ends, committed or not.
        *closed = true;
        let result = if beyond {
            // Bytes past the end (an earlier run of a longer content): sending more cannot help.
            Err(OpError::protocol(format!(
                "the upload holds bytes past the {} the commit names (an earlier, longer content?); \
                 it is discarded: upload again",
                req.size
            ))
            .with("reason", "oversized"))
        } else {
            self.verify_and_place(paths, req, &mut progress, gate, digests)
        };
        if result.is_err() {
            let _ = nix::unistd::unlinkat(
                self.dir.as_fd(),
                self.tmp_name.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
        result
    }

    fn verify_and_place(
        &self,
        paths: &Paths,
        req: &pb::TransferCommitRequest,
        progress: &mut Progress,
        gate: &Gate,
        digests: &Digests,
    ) -> OpResult<pb::TransferCommitResponse> {
        let abs = &self.abs;
        let io = |e: std::io::Error| OpError::from_io(&e, "commit upload of", abs);
        let mut hasher = progress.hasher.clone();
        hash_range(&self.file, &mut hasher, progress.hashed, req.size).map_err(io)?;
        let digest = hasher.finalize();
        if digest.as_bytes().as_slice() != req.blake3.as_ref() {
            return Err(OpError::new(
                ErrorCode::Os,
                format!(
                    "{}: the uploaded content's BLAKE3 differs from the client's; the target is untouched",
                    abs.display()
                ),
            )
            .retryable()
            .with("reason", "digest_mismatch")
            .with("path", abs.display())
            .with("agent_blake3", digest.to_hex())
            .with("client_blake3", hex(&req.blake3)));
        }
        if let Some(want) = &self.precondition {
            check_precondition(paths, self.dir.as_fd(), &self.name, abs, want)?;
        }
        let keep = match lstat_at(paths, self.dir.as_fd(), &self.name, abs)? {
            Some(st) if kind_of(&st) == FsEntryKind::File => Some(carried_over(st.st_mode)),
            Some(st) => return Err(not_regular(abs, kind_of(&st), "upload to")),
            None => None,
        };
        if let Some(mode) = self.mode.or(keep) {
            nix::sys::stat::fchmod(self.file.as_fd(), mode).map_err(|e| paths.errno(e, "chmod", abs))?;
        }
        let replaced = keep.and_then(|_| hold(self.dir.as_fd(), &self.name));
        self.file.sync_all().map_err(io)?;
        gate.commit_in(self.dir.as_fd(), || {
            nix::fcntl::renameat2(
                self.dir.as_fd(),
                self.tmp_name.as_os_str(),
                self.dir.as_fd(),
                self.name.as_os_str(),
                RenameFlags::empty(),
            )
        })?
        .map_err(|e| paths.errno(e, "rename into place", abs))?;
        sync_dir(self.dir.as_fd());
        release_later(replaced);
        if let Ok(st) = nix::sys::stat::fstat(self.file.as_fd()) {
            digests.remember(&st, digest);
        }
        Ok(pb::TransferCommitResponse {
            size: req.size,
            blake3: digest.as_bytes().to_vec().into(),
            bytes_received: progress.received,
        })
    }
}

impl Progress {
    /// Notes `content` written at `offset` and extends the running digest as far as it can.
    fn record(&mut self, file: &File, offset: u64, content: &[u8]) -> std::io::Result<()> {
        let end = offset + content.len() as u64;
        self.received += content.len() as u64;
        self.last_active = Instant::now();
        if offset < self.hashed {
            // Bytes already hashed were written again: hash from the file once more.
            self.hasher = blake3::Hasher::new();
            self.hashed = 0;
        }
        self.held.insert(offset, end);
        if offset == self.hashed {
            self.hasher.update(content);
            self.hashed = end;
        }
        let covered = self.held.covered_from(self.hashed);
        if covered > self.hashed && covered - self.hashed <= CATCH_UP {
            hash_range(file, &mut self.hasher, self.hashed, covered)?;
            self.hashed = covered;
        }
        Ok(())
    }
}

/// The file about to be replaced, held open (O_PATH) so that the rename only unlinks it: its
/// blocks are freed when the hold is let go, which [`release_later`] does beside the reply.
/// Freeing a large file's blocks takes a while (on tmpfs: every page of it, one by one).
fn hold(dir: BorrowedFd<'_>, name: &OsStr) -> Option<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    nix::fcntl::openat(dir, name, flags, Mode::empty()).ok()
}

/// Lets go of a replaced file on the blocking pool (inline outside a runtime).
fn release_later(replaced: Option<OwnedFd>) {
    if let (Some(fd), Ok(runtime)) = (replaced, tokio::runtime::Handle::try_current()) {
        runtime.spawn_blocking(move || drop(fd));
    }
}

/// Starts writing `[offset, offset+len)` of `file` to disk without waiting for it, so the
/// commit's fsync finds little left to flush and the disk works while the network does. Best
/// effort: where the filesystem ignores it, the fsync does all the work as before.
fn start_writeback(file: &File, offset: u64, len: usize) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open for the
    // duration of the call (borrowed from `file`).
    let _ = unsafe {
        libc::sync_file_range(std::os::fd::AsRawFd::as_raw_fd(file), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_files_safely() {
        for ok in ["abcdefgh", "0123456789abcdef0123456789abcdef", "a-b_c-d_e"] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in ["short", "../../etc/x", "abc/defgh", &"a".repeat(65), "abcdefg."] {
            assert_eq!(check_id(bad).unwrap_err().code, ErrorCode::Protocol, "{bad}");
        }
        let long = OsString::from("x".repeat(255));
        let id = "i".repeat(64);
        assert!(temp_name(&long, &id).len() <= 255);
        assert_eq!(temp_name(OsStr::new("a.bin"), "abcdefgh"), ".a.bin.tether-xfer-abcdefgh");
    }

    #[test]
    fn the_running_digest_is_the_content_whatever_the_order_of_chunks() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 253) as u8).collect();
        let file = tempfile::tempfile().unwrap();
        let mut p = Progress {
            held: RangeSet::default(),
            hasher: blake3::Hasher::new(),
            hashed: 0,
            received: 0,
            last_active: Instant::now(),
        };
        for (a, b) in [(3000, 6000), (0, 1000), (6000, 10_000), (1000, 3000), (500, 1500)] {
            file.write_all_at(&data[a..b], a as u64).unwrap();
            p.record(&file, a as u64, &data[a..b]).unwrap();
        }
        let mut h = p.hasher.clone();
        hash_range(&file, &mut h, p.hashed, data.len() as u64).unwrap();
        assert_eq!(h.finalize(), blake3::hash(&data));
        assert!(p.held.is_exactly(10_000));
        assert_eq!(p.received, 11_000);
    }
}
