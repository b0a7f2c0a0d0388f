//! Epoch fencing (`PROTOCOL.md` §3). One held epoch per fence scope, persisted in the state
//! directory before it is acted on, and only ever increasing.
//!
//! Teeth: each scope has a tokio `RwLock`. Admission takes it shared; an advance takes it
//! exclusive, so it waits for every short mutation admitted under an older epoch to commit
//! (they keep their shared guard until then), and new old-epoch requests queue behind it and
//! then see the new epoch. Long work (exec) drops the guard after admission and instead holds
//! the scope's cancellation token, which an advance cancels.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use tokio::sync::{OwnedRwLockReadGuard, RwLock};
use tokio_util::sync::CancellationToken;

use crate::error::{OpError, OpResult};

/// The scope of requests that carry no `fence_scope`.
pub const DEFAULT_SCOPE: &str = "";

const STATE_FILE: &str = "fence.json";

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
}

/// The agent's fence: held epochs per scope, and the tokens that cancel their work.
pub struct Fence {
    policy: FencePolicy,
    state_file: PathBuf,
    shutdown: CancellationToken,
    scopes: Mutex<HashMap<String, Arc<RwLock<ScopeState>>>>,
    /// What is on disk; written whole, under this lock, so the last write is a superset.
    persisted: Arc<Mutex<BTreeMap<String, u32>>>,
}

/// Permission to run one request. Holding it (with its shared guard) keeps the scope from
/// advancing; `cancel` fires on an advance past this epoch or on shutdown.
pub struct Admission {
    pub cancel: CancellationToken,
    guard: Option<OwnedRwLockReadGuard<ScopeState>>,
}

impl Admission {
    /// Lets the scope advance while this request goes on; it is then cancelled instead.
    pub fn release_hold(&mut self) {
        self.guard = None;
    }
}

impl Fence {
    /// Loads the held epochs from `state_dir`. A corrupt state file is an error: starting over
    /// from zero would let a stale control plane in.
    pub fn open(state_dir: &Path, policy: FencePolicy, shutdown: CancellationToken) -> anyhow::Result<Fence> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating state directory {}", state_dir.display()))?;
        let state_file = state_dir.join(STATE_FILE);
        let persisted: BTreeMap<String, u32> = match std::fs::read(&state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!("fence state {} is corrupt; refusing to forget held epochs", state_file.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", state_file.display())),
        };
        let scopes = persisted
            .iter()
            .map(|(scope, &held)| {
                let state = ScopeState { held, cancel: shutdown.child_token() };
                (scope.clone(), Arc::new(RwLock::new(state)))
            })
            .collect();
        Ok(Fence {
            policy,
            state_file,
            shutdown,
            scopes: Mutex::new(scopes),
            persisted: Arc::new(Mutex::new(persisted)),
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
        let lock = self.scope(scope);
        let guard = lock.clone().read_owned().await;
        if epoch == guard.held {
            return Ok(Admission { cancel: guard.cancel.clone(), guard: Some(guard) });
        }
        if epoch < guard.held {
            return Err(OpError::fenced(scope, epoch, guard.held));
        }
        drop(guard);
        let mut state = lock.clone().write_owned().await;
        if epoch < state.held {
            return Err(OpError::fenced(scope, epoch, state.held));
        }
        if epoch > state.held {
            self.persist(scope, epoch).await?;
            tracing::info!(fence_scope = scope, from = state.held, to = epoch, "epoch advanced");
            state.held = epoch;
            state.cancel.cancel();
            state.cancel = self.shutdown.child_token();
        }
        let guard = state.downgrade();
        Ok(Admission { cancel: guard.cancel.clone(), guard: Some(guard) })
    }

    /// True when `scope` has moved past `epoch`: work of that epoch was fenced, not shut down.
    pub async fn is_stale(&self, scope: &str, epoch: u32) -> bool {
        self.enforced(scope) && epoch != 0 && self.held(scope).await > epoch
    }

    /// The held epoch of `scope` (0 if it never saw one).
    pub async fn held(&self, scope: &str) -> u32 {
        let lock = self.scopes.lock().unwrap_or_else(PoisonError::into_inner).get(scope).cloned();
        match lock {
            Some(lock) => lock.read().await.held,
            None => 0,
        }
    }

    fn unfenced(&self) -> Admission {
        Admission { cancel: self.shutdown.child_token(), guard: None }
    }

    fn scope(&self, scope: &str) -> Arc<RwLock<ScopeState>> {
        let mut scopes = self.scopes.lock().unwrap_or_else(PoisonError::into_inner);
        scopes
            .entry(scope.to_owned())
            .or_insert_with(|| {
                Arc::new(RwLock::new(ScopeState { held: 0, cancel: self.shutdown.child_token() }))
            })
            .clone()
    }

    async fn persist(&self, scope: &str, epoch: u32) -> OpResult<()> {
        let persisted = self.persisted.clone();
        let path = self.state_file.clone();
        let scope = scope.to_owned();
        let written = tokio::task::spawn_blocking(move || {
            let mut map = persisted.lock().unwrap_or_else(PoisonError::into_inner);
            let previous = map.insert(scope.clone(), epoch);
            let result = write_atomically(&path, &map);
            if result.is_err() {
                // Keep memory equal to disk so a retry writes again.
                match previous {
                    Some(p) => map.insert(scope, p),
                    None => map.remove(&scope),
                };
            }
            result
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                Err(OpError::from_io(&e, "persisting the held epoch to", &self.state_file).retryable())
            }
            Err(join) => Err(OpError::os(format!("persisting the held epoch failed: {join}")).retryable()),
        }
    }
}

/// Writes `map` as JSON to a temp file beside `path`, fsyncs it, renames it over `path`, and
/// fsyncs the directory, so a crash leaves either the old or the new state.
fn write_atomically(path: &Path, map: &BTreeMap<String, u32>) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(map).map_err(std::io::Error::other)?;
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
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
        std::fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        assert!(Fence::open(dir.path(), FencePolicy::default(), CancellationToken::new()).is_err());
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
