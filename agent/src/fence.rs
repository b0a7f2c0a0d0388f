//! Epoch fencing (`PROTOCOL.md` §3). One held epoch per fence scope, persisted in the state
//! directory before it is acted on, and only ever increasing.
//!
//! Teeth: each scope has a tokio `RwLock`. Admission takes it shared; an advance takes it
//! exclusive, so it waits for every short mutation admitted under an older epoch to commit
//! (they keep their shared guard until then), and new old-epoch requests queue behind it and
//! then see the new epoch. Long work (exec) drops the guard after admission and instead holds
//! the scope's cancellation token, which an advance cancels, and a token of the epoch's
//! running work: the advance is acknowledged only once the cancelled work of older epochs has
//! ended (its processes killed), bounded by [`DRAIN_WAIT`], so nothing of an older epoch runs
//! or writes after a control plane was told the scope is its.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

use crate::error::{OpError, OpResult};

mod store;

pub use store::Store;

/// The scope of requests that carry no `fence_scope`.
pub const DEFAULT_SCOPE: &str = "";

/// Longest fence scope accepted, in bytes; a longer one is a PROTOCOL error.
pub const MAX_SCOPE_BYTES: usize = 256;

/// Furthest one request may move a scope's epoch (from 0 too): a forged or buggy request
/// cannot push a scope to `u32::MAX` and so lock its own control plane out for ever.
pub const MAX_EPOCH_JUMP: u32 = 1 << 16;

/// Most scopes the agent keeps. At the cap a new scope expires the least recently used one
/// idle for at least [`SCOPE_MIN_IDLE`], or is refused (retryable) when none is.
pub const MAX_SCOPES: usize = 65_536;

/// How long a scope must have seen no request before it may expire.
pub const SCOPE_MIN_IDLE: Duration = Duration::from_secs(3600);

/// Longest an advance waits for the cancelled work of older epochs to end before it is
/// acknowledged anyway (with a warning): a command the kernel cannot kill at once must not
/// wedge its scope.
pub const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// Fencing policy switches from the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct FencePolicy {
    /// Epoch 0 is rejected in enforced scopes.
    pub strict: bool,
    /// The default (unscoped) scope is enforced.
    pub enforce_unscoped: bool,
}

struct ScopeState {
    held: u32,
    /// Cancelled when this scope advances past `held`.
    cancel: CancellationToken,
    /// The long work admitted at `held` (each holds a token until it has ended).
    running: TaskTracker,
}

/// One scope in memory: its lock, and when a request last named it.
struct Slot {
    lock: Arc<RwLock<ScopeState>>,
    used: Instant,
}

/// The agent's fence: held epochs per scope, and the tokens that cancel their work.
pub struct Fence {
    policy: FencePolicy,
    store: Store,
    shutdown: CancellationToken,
    scopes: Mutex<HashMap<String, Slot>>,
    /// [`MAX_SCOPES`] and [`SCOPE_MIN_IDLE`], smaller in tests.
    expiry: (usize, Duration),
}

/// Permission to run one request. Holding it (with its shared guard) keeps the scope from
/// advancing; `cancel` fires on an advance past this epoch or on shutdown.
pub struct Admission {
    pub cancel: CancellationToken,
    guard: Option<OwnedRwLockReadGuard<ScopeState>>,
    /// Held by the work as long as it runs (see [`Admission::running`]).
    running: Option<TaskTrackerToken>,
}

impl Admission {
    /// A token the admitted work holds until it has ended (its processes killed): an advance
    /// of its scope waits for it before it is acknowledged. None for unfenced work.
    pub fn running(&self) -> Option<TaskTrackerToken> {
        self.running.clone()
    }

    /// Lets the scope advance while this request goes on; it is then cancelled instead.
    pub fn release_hold(&mut self) {
        self.guard = None;
    }
}

impl Fence {
    /// Loads the held epochs from `state_dir`. A corrupt record is an error: starting over
    /// from zero would let a stale control plane in.
    pub fn open(state_dir: &Path, policy: FencePolicy, shutdown: CancellationToken) -> anyhow::Result<Fence> {
        let (store, loaded) = Store::open(state_dir)?;
        let now = (Instant::now(), SystemTime::now());
        let scopes = loaded
            .into_iter()
            .map(|(scope, held)| {
                let idle = now.1.duration_since(held.advanced_at).unwrap_or_default();
                let state = ScopeState {
                    held: held.held,
                    cancel: shutdown.child_token(),
                    running: TaskTracker::new(),
                };
                let used = now.0.checked_sub(idle).unwrap_or(now.0);
                (scope, Slot { lock: Arc::new(RwLock::new(state)), used })
            })
            .collect();
        Ok(Fence {
            policy,
            store,
            shutdown,
            scopes: Mutex::new(scopes),
            expiry: (MAX_SCOPES, SCOPE_MIN_IDLE),
        })
    }

    /// Whether requests of `scope` are fenced at all.
    fn enforced(&self, scope: &str) -> bool {
        scope != DEFAULT_SCOPE || self.policy.enforce_unscoped
    }

    /// Admits a request of (`scope`, `epoch`) or rejects it with FENCED before any side
    /// effect. An epoch above the held one is made durable first, then older work of the
    /// scope is cancelled.
    pub async fn admit(&self, scope: &str, epoch: u32) -> OpResult<Admission> {
        if scope.len() > MAX_SCOPE_BYTES {
            return Err(OpError::protocol(format!(
                "fence_scope is {} bytes; at most {MAX_SCOPE_BYTES} are accepted",
                scope.len()
            )));
        }
        if !self.enforced(scope) {
            return Ok(self.unfenced());
        }
        if epoch == 0 {
            if self.policy.strict {
                return Err(OpError::fenced(scope, 0, self.held(scope).await)
                    .with("reason", "strict fencing rejects epoch 0"));
            }
            return Ok(self.unfenced());
        }
        let lock = self.scope(scope)?;
        let guard = lock.clone().read_owned().await;
        if epoch == guard.held {
            return Ok(Self::admitted(guard));
        }
        if epoch < guard.held {
            return Err(OpError::fenced(scope, epoch, guard.held));
        }
        drop(guard);
        let mut state = lock.clone().write_owned().await;
        if epoch < state.held {
            return Err(OpError::fenced(scope, epoch, state.held));
        }
        if epoch - state.held > MAX_EPOCH_JUMP {
            return Err(OpError::protocol(format!(
                "epoch {epoch} is more than {MAX_EPOCH_JUMP} past the held epoch {}",
                state.held
            ))
            .with("held_epoch", state.held)
            .with("op_epoch", epoch)
            .with("max_epoch_jump", MAX_EPOCH_JUMP));
        }
        if epoch == state.held {
            return Ok(Self::admitted(state.downgrade()));
        }
        self.persist(scope, epoch).await?;
        tracing::info!(fence_scope = %scope_label(scope), from = state.held, to = epoch, "epoch advanced");
        state.held = epoch;
        state.cancel.cancel();
        state.cancel = self.shutdown.child_token();
        let older = std::mem::replace(&mut state.running, TaskTracker::new());
        drop(state);
        // Without the lock: the cancelled work may look at the fence while it ends.
        older.close();
        if tokio::time::timeout(DRAIN_WAIT, older.wait()).await.is_err() {
            tracing::warn!(fence_scope = %scope_label(scope), left = older.len(), "older epochs' work still ending; advance acknowledged anyway");
        }
        let guard = lock.read_owned().await;
        if epoch < guard.held {
            return Err(OpError::fenced(scope, epoch, guard.held));
        }
        Ok(Self::admitted(guard))
    }

    fn admitted(guard: OwnedRwLockReadGuard<ScopeState>) -> Admission {
        let running = Some(guard.running.token());
        Admission { cancel: guard.cancel.clone(), guard: Some(guard), running }
    }

    /// True when `scope` has moved past `epoch`: work of that epoch was fenced, not shut down.
    pub async fn is_stale(&self, scope: &str, epoch: u32) -> bool {
        self.enforced(scope) && epoch != 0 && self.held(scope).await > epoch
    }

    /// The held epoch of `scope` (0 if it never saw one).
    pub async fn held(&self, scope: &str) -> u32 {
        let lock = self.lock_scopes().get(scope).map(|slot| slot.lock.clone());
        match lock {
            Some(lock) => lock.read().await.held,
            None => 0,
        }
    }

    /// Every scope's held epoch, by its log label (for the status file).
    pub async fn held_epochs(&self) -> Vec<(String, u32)> {
        let locks: Vec<(String, Arc<RwLock<ScopeState>>)> =
            self.lock_scopes().iter().map(|(scope, slot)| (scope.clone(), slot.lock.clone())).collect();
        let mut held = Vec::with_capacity(locks.len());
        for (scope, lock) in locks {
            held.push((scope_label(&scope), lock.read().await.held));
        }
        held.sort();
        held
    }

    /// How many scopes the agent holds.
    pub fn scope_count(&self) -> usize {
        self.lock_scopes().len()
    }

    fn unfenced(&self) -> Admission {
        Admission { cancel: self.shutdown.child_token(), guard: None, running: None }
    }

    fn lock_scopes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.scopes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lock of `scope`, made (expiring an idle scope at the cap) when it is new.
    fn scope(&self, scope: &str) -> OpResult<Arc<RwLock<ScopeState>>> {
        let mut scopes = self.lock_scopes();
        let now = Instant::now();
        if let Some(slot) = scopes.get_mut(scope) {
            slot.used = now;
            return Ok(slot.lock.clone());
        }
        if scopes.len() >= self.expiry.0 {
            self.expire_one(&mut scopes, now)?;
        }
        let state = ScopeState { held: 0, cancel: self.shutdown.child_token(), running: TaskTracker::new() };
        let lock = Arc::new(RwLock::new(state));
        scopes.insert(scope.to_owned(), Slot { lock: lock.clone(), used: now });
        Ok(lock)
    }

    /// Forgets the least recently used scope that nobody holds and that has been idle for
    /// [`SCOPE_MIN_IDLE`]. Runs under the scopes lock, so nobody can pick the scope up meanwhile
    /// and its file is gone before a scope of the same name can be written again.
    fn expire_one(&self, scopes: &mut HashMap<String, Slot>, now: Instant) -> OpResult<()> {
        let victim = scopes
            .iter()
            .filter(|(_, slot)| Arc::strong_count(&slot.lock) == 1)
            .filter(|(_, slot)| now.duration_since(slot.used) >= self.expiry.1)
            .min_by_key(|(_, slot)| slot.used)
            .map(|(scope, _)| scope.clone());
        let Some(victim) = victim else {
            return Err(OpError::draining(format!(
                "the agent holds {} fence scopes, none idle for {:?}",
                self.expiry.0, self.expiry.1
            )));
        };
        scopes.remove(&victim);
        if let Err(e) = self.store.remove(&victim) {
            tracing::warn!(fence_scope = %scope_label(&victim), error = %e, "removing an expired scope's record");
        }
        tracing::info!(fence_scope = %scope_label(&victim), "expired an idle fence scope");
        Ok(())
    }

    async fn persist(&self, scope: &str, epoch: u32) -> OpResult<()> {
        let store = self.store.clone();
        let scope = scope.to_owned();
        match tokio::task::spawn_blocking(move || store.write(&scope, epoch)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(OpError::os(format!("persisting the held epoch failed: {e}")).retryable()),
            Err(join) => Err(OpError::os(format!("persisting the held epoch failed: {join}")).retryable()),
        }
    }
}

/// Forgets `scope`'s held epoch so its control plane can start again from any epoch: the
/// operator's way out when a scope was pushed too far. Refused while an agent runs on
/// `state_dir`. Returns the epoch that was held, if any.
pub fn reset(state_dir: &Path, scope: &str) -> anyhow::Result<Option<u32>> {
    let _lock = crate::state_lock::StateLock::acquire(state_dir)?;
    let (store, scopes) = Store::open(state_dir)?;
    let held = scopes.get(scope).map(|h| h.held);
    store.remove(scope)?;
    Ok(held)
}

/// Every scope's held epoch in `state_dir`, sorted by scope (read while no agent runs there,
/// so it is the whole truth).
pub fn list(state_dir: &Path) -> anyhow::Result<Vec<(String, u32)>> {
    let _lock = crate::state_lock::StateLock::acquire(state_dir)?;
    let mut scopes: Vec<_> = Store::open(state_dir)?.1.into_iter().map(|(s, h)| (s, h.held)).collect();
    scopes.sort();
    Ok(scopes)
}

/// How a scope appears in logs: never in full (it may name a session), but recognisably.
pub fn scope_label(scope: &str) -> String {
    if scope.is_empty() {
        return "(default)".to_owned();
    }
    let prefix: String = scope.chars().take(8).collect();
    let digest = Sha256::digest(scope.as_bytes());
    let short: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}…#{short}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tether_proto::pb::ErrorCode;

    use super::*;

    fn fence(dir: &Path, policy: FencePolicy) -> Fence {
        Fence::open(dir, policy, CancellationToken::new()).unwrap()
    }

    #[tokio::test]
    async fn older_epochs_are_fenced_and_newer_ones_advance() {
        let dir = tempfile::tempdir().unwrap();
        let f = fence(dir.path(), FencePolicy::default());
        f.admit("s1", 5).await.unwrap();
        let err = f.admit("s1", 3).await.err().unwrap();
        assert_eq!(err.code, ErrorCode::Fenced);
        assert!(err.retryable);
        assert_eq!(err.detail["held_epoch"], "5");
        f.admit("s1", 5).await.unwrap();
        f.admit("s1", 6).await.unwrap();
        assert_eq!(f.held("s1").await, 6);
        assert!(f.is_stale("s1", 5).await);
    }

    #[tokio::test]
    async fn scopes_keep_their_own_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let f = fence(dir.path(), FencePolicy::default());
        f.admit("s1", 9).await.unwrap();
        f.admit("s2", 2).await.unwrap();
        assert_eq!(f.held("s1").await, 9);
        assert_eq!(f.held("s2").await, 2);
    }

    #[tokio::test]
    async fn epoch_zero_passes_unless_strict() {
        let dir = tempfile::tempdir().unwrap();
        let f = fence(dir.path(), FencePolicy::default());
        f.admit("s1", 4).await.unwrap();
        f.admit("s1", 0).await.unwrap();
        let strict = fence(dir.path(), FencePolicy { strict: true, ..FencePolicy::default() });
        assert_eq!(strict.admit("s1", 0).await.err().unwrap().code, ErrorCode::Fenced);
    }

    #[tokio::test]
    async fn unscoped_epochs_are_enforced_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let lax = fence(dir.path(), FencePolicy::default());
        lax.admit(DEFAULT_SCOPE, 5).await.unwrap();
        lax.admit(DEFAULT_SCOPE, 3).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let enforcing = fence(dir.path(), FencePolicy { enforce_unscoped: true, ..FencePolicy::default() });
        enforcing.admit(DEFAULT_SCOPE, 5).await.unwrap();
        assert_eq!(enforcing.admit(DEFAULT_SCOPE, 3).await.err().unwrap().code, ErrorCode::Fenced);
    }

    #[tokio::test]
    async fn held_epochs_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        fence(dir.path(), FencePolicy::default()).admit("s1", 7).await.unwrap();
        let reopened = fence(dir.path(), FencePolicy::default());
        assert_eq!(reopened.held("s1").await, 7);
        assert!(reopened.admit("s1", 6).await.is_err());
    }

    #[tokio::test]
    async fn corrupt_state_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fence.json"), b"{not json").unwrap();
        assert!(Fence::open(dir.path(), FencePolicy::default(), CancellationToken::new()).is_err());
    }

    #[tokio::test]
    async fn overlong_scopes_and_absurd_jumps_are_protocol_errors_that_move_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let f = fence(dir.path(), FencePolicy::default());
        let long = "s".repeat(MAX_SCOPE_BYTES + 1);
        assert_eq!(f.admit(&long, 1).await.err().unwrap().code, ErrorCode::Protocol);
        f.admit(&"s".repeat(MAX_SCOPE_BYTES), 1).await.unwrap();

        assert_eq!(f.admit("s1", MAX_EPOCH_JUMP + 1).await.err().unwrap().code, ErrorCode::Protocol);
        assert_eq!(f.held("s1").await, 0);
        f.admit("s1", MAX_EPOCH_JUMP).await.unwrap();
        let err = f.admit("s1", u32::MAX).await.err().unwrap();
        assert_eq!(err.code, ErrorCode::Protocol);
        assert_eq!(err.detail["held_epoch"], MAX_EPOCH_JUMP.to_string());
        assert_eq!(f.held("s1").await, MAX_EPOCH_JUMP);
        f.admit("s1", 2 * MAX_EPOCH_JUMP).await.unwrap();
        assert_eq!(fence(dir.path(), FencePolicy::default()).held("s1").await, 2 * MAX_EPOCH_JUMP);
    }

    #[tokio::test]
    async fn at_the_cap_the_least_recently_used_idle_scope_expires_and_busy_ones_never_do() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = fence(dir.path(), FencePolicy::default());
        f.expiry = (3, Duration::from_millis(200));
        f.admit("old", 4).await.unwrap();
        let _held = f.admit("busy", 2).await.unwrap();
        f.admit("recent", 1).await.unwrap();
        let err = f.admit("new", 1).await.err().unwrap();
        assert_eq!(err.code, ErrorCode::Draining, "nothing has been idle long enough");
        assert!(err.retryable);
        tokio::time::sleep(Duration::from_millis(250)).await;
        f.admit("recent", 1).await.unwrap();
        f.admit("new", 1).await.unwrap();
        assert_eq!(f.scope_count(), 3);
        assert_eq!(f.held("old").await, 0, "the least recently used idle scope expired");
        assert_eq!(f.held("busy").await, 2, "a scope with work admitted is kept");
        let reopened = fence(dir.path(), FencePolicy::default());
        assert_eq!((reopened.held("old").await, reopened.held("new").await), (0, 1), "expiry is durable");
    }

    #[tokio::test]
    async fn a_reset_forgets_one_scope_and_is_refused_while_an_agent_holds_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let f = fence(dir.path(), FencePolicy::default());
        f.admit("stuck", MAX_EPOCH_JUMP).await.unwrap();
        f.admit("other", 3).await.unwrap();
        drop(f);
        let running = crate::state_lock::StateLock::acquire(dir.path()).unwrap();
        assert!(reset(dir.path(), "stuck").is_err(), "an agent holds the directory");
        drop(running);
        assert_eq!(
            list(dir.path()).unwrap(),
            [("other".to_owned(), 3), ("stuck".to_owned(), MAX_EPOCH_JUMP)]
        );
        assert_eq!(reset(dir.path(), "stuck").unwrap(), Some(MAX_EPOCH_JUMP));
        assert_eq!(reset(dir.path(), "stuck").unwrap(), None);
        let reopened = fence(dir.path(), FencePolicy::default());
        assert_eq!((reopened.held("stuck").await, reopened.held("other").await), (0, 3));
        reopened.admit("stuck", 1).await.unwrap();
    }

    #[test]
    fn scope_labels_never_hold_the_whole_name() {
        let label = scope_label("session-4f9a2c7e-very-secret");
        assert!(label.starts_with("session-") && !label.contains("secret"), "{label}");
        assert_ne!(label, scope_label("session-4f9a2c7e-other"));
        assert_eq!(scope_label(""), "(default)");
    }

    #[tokio::test]
    async fn an_advance_cancels_older_work_and_waits_for_held_mutations() {
        let dir = tempfile::tempdir().unwrap();
        let f = Arc::new(fence(dir.path(), FencePolicy::default()));
        let mut exec = f.admit("s1", 5).await.unwrap();
        exec.release_hold();
        let write = f.admit("s1", 5).await.unwrap();
        let other = f.admit("s2", 1).await.unwrap();

        let advancing = tokio::spawn({
            let f = f.clone();
            async move { f.admit("s1", 6).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!advancing.is_finished(), "the advance must wait for the held write to commit");
        assert!(!exec.cancel.is_cancelled());
        drop(write);
        advancing.await.unwrap().unwrap();
        assert!(exec.cancel.is_cancelled(), "older exec of the scope is cancelled");
        assert!(!other.cancel.is_cancelled(), "other scopes are untouched");
    }
}
