//! Request deduplication: the reply cache in front of every mutating op (README "Retries and
//! request deduplication").
//!
//! Why: a control plane that times out (or loses its NATS connection) cannot know whether its
//! request ran; it retries, and a retry that runs again appends twice, runs a build twice or
//! answers NOT_FOUND for a removal that succeeded. So the agent remembers, per fence scope and
//! `request_id`, the encoded reply of each mutating request it answered, and a retry gets that
//! reply byte for byte without running anything. A retry that arrives while the first is still
//! running is answered "in progress" (retryable) instead of starting a twin.
//!
//! Rules, in the order the dispatcher applies them:
//! - The fence comes first. A retry passes the fence like any request, so a retry whose epoch
//!   the scope has since left is FENCED even when its original succeeded: a remembered reply
//!   never hides from a stale control plane that it is stale. The epoch is part of the request's
//!   fingerprint, so a reply is only ever replayed to a request of the epoch it was obtained
//!   under, which the fence has just found current (or unenforced).
//! - Same id, different request (any field, the epoch included): PROTOCOL, nothing runs.
//! - Only answers worth repeating are remembered: a retryable error (FENCED, DRAINING at
//!   shutdown, TIMEOUT of a mutation that never began to commit) is forgotten, so the retry it
//!   invites runs afresh instead of being told the same thing for ten minutes.
//! - Bounded three ways: entries, age, bytes. Past the byte cap the oldest reply *bodies* go
//!   first and their entries stay as small tombstones, so a retry of such a request is still
//!   not run again: it answers PAYLOAD_TOO_LARGE with `reason=reply_not_kept`. Past the entry
//!   cap or the age, the oldest entries go entirely.
//! - In memory only: an agent restart forgets every reply (its commands died with it).
//!
//! What is remembered and how a request is hashed is `request.rs`; this file is the cache.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tether_proto::pb::{self, ErrorCode};

use crate::error::OpError;

mod request;

pub use request::{Fingerprint, fingerprint, remembered};

/// Default number of replies remembered.
pub const DEFAULT_MAX_ENTRIES: usize = 4096;
/// Default time a reply is remembered.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// Default memory the remembered replies may take.
pub const DEFAULT_MAX_BYTES: usize = 64 << 20;
/// What one entry costs besides its key and reply (map slot, queue slots, fingerprint).
const ENTRY_OVERHEAD: usize = 160;

/// The cache's bounds (flags `--dedup-max-entries`, `--dedup-ttl`, `--dedup-max-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupLimits {
    /// Replies remembered at most; 0 turns deduplication off.
    pub max_entries: usize,
    pub ttl: Duration,
    pub max_bytes: usize,
}

impl Default for DedupLimits {
    fn default() -> Self {
        DedupLimits { max_entries: DEFAULT_MAX_ENTRIES, ttl: DEFAULT_TTL, max_bytes: DEFAULT_MAX_BYTES }
    }
}

impl DedupLimits {
    /// What Hello announces (absent when deduplication is off).
    pub fn capability(&self) -> Option<pb::RequestDedup> {
        (self.max_entries > 0).then(|| pb::RequestDedup {
            max_entries: u32::try_from(self.max_entries).unwrap_or(u32::MAX),
            ttl_ms: self.ttl.as_millis() as u64,
            max_bytes: self.max_bytes as u64,
        })
    }
}

/// What the cache holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Remembered replies (tombstones included).
    pub entries: usize,
    /// Of those, how many still hold their reply.
    pub bodies: usize,
    /// Bytes accounted to them.
    pub bytes: usize,
    /// Requests running under a ticket.
    pub running: usize,
}

/// Whether a request runs, gets its remembered reply, or is refused.
pub enum Begin {
    /// Nothing known: run it, then hand the reply to the ticket.
    Run(Ticket),
    /// The reply already sent for this very request.
    Replay(Bytes),
    /// In progress, a reused id, or a reply no longer kept.
    Refuse(OpError),
}

type Key = Arc<(String, String)>;

struct Entry {
    fingerprint: Fingerprint,
    /// Tells this entry from an older one of the same key in the queues.
    seq: u64,
    state: State,
}

enum State {
    Running { since: Instant },
    Done { at: Instant, reply: Option<Bytes>, reply_len: usize },
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Finished entries, oldest first (exactly the `Done` entries of the map).
    done: VecDeque<(Key, u64)>,
    /// Finished entries still holding their reply, oldest first.
    bodies: VecDeque<(Key, u64)>,
    bytes: usize,
    running: usize,
    next_seq: u64,
}

/// The reply cache, shared by every request.
pub struct Replies {
    limits: DedupLimits,
    inner: Mutex<Inner>,
}

impl Replies {
    pub fn new(limits: DedupLimits) -> Arc<Replies> {
        Arc::new(Replies { limits, inner: Mutex::new(Inner::default()) })
    }

    pub fn limits(&self) -> DedupLimits {
        self.limits
    }

    /// False when deduplication is off (`max_entries` 0).
    pub fn enabled(&self) -> bool {
        self.limits.max_entries > 0
    }

    pub fn stats(&self) -> Stats {
        let inner = self.lock();
        Stats {
            entries: inner.done.len(),
            bodies: inner.bodies.len(),
            bytes: inner.bytes,
            running: inner.running,
        }
    }

    /// Looks up request `request_id` of `scope`, or registers it as running.
    pub fn begin(self: &Arc<Self>, scope: &str, request_id: &str, fingerprint: Fingerprint) -> Begin {
        self.begin_at(scope, request_id, fingerprint, Instant::now())
    }

    fn begin_at(
        self: &Arc<Self>,
        scope: &str,
        request_id: &str,
        fingerprint: Fingerprint,
        now: Instant,
    ) -> Begin {
        let mut inner = self.lock();
        inner.purge(&self.limits, now);
        let key: Key = Arc::new((scope.to_owned(), request_id.to_owned()));
        let refuse = |inner: &Inner, e: OpError| {
            Begin::Refuse(
                e.with("remembered_entries", inner.done.len()).with("remembered_bytes", inner.bytes),
            )
        };
        match inner.entries.get(&key) {
            Some(entry) if entry.fingerprint != fingerprint => refuse(&inner, reused_id(request_id)),
            Some(Entry { state: State::Running { since }, .. }) => {
                let running_ms = now.saturating_duration_since(*since).as_millis();
                refuse(&inner, in_progress(request_id, running_ms))
            }
            Some(Entry { state: State::Done { reply: Some(reply), .. }, .. }) => Begin::Replay(reply.clone()),
            Some(Entry { state: State::Done { reply: None, reply_len, .. }, .. }) => {
                let e = reply_not_kept(request_id, *reply_len, self.limits.max_bytes);
                refuse(&inner, e)
            }
            None => {
                let seq = inner.next_seq;
                inner.next_seq += 1;
                inner.running += 1;
                let state = State::Running { since: now };
                inner.entries.insert(key.clone(), Entry { fingerprint, seq, state });
                Begin::Run(Ticket { replies: self.clone(), key, seq, finished: false })
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A request registered as running. [`Ticket::finish`] remembers its reply; dropping it
/// unfinished (the request's task was cancelled or panicked) forgets the request, so a retry
/// runs it instead of being told "in progress" for ever.
pub struct Ticket {
    replies: Arc<Replies>,
    key: Key,
    seq: u64,
    finished: bool,
}

impl Ticket {
    /// Records the reply sent; `remember` false (a retryable failure) forgets the request.
    pub fn finish(self, reply: &Bytes, remember: bool) {
        self.finish_at(reply, remember, Instant::now());
    }

    fn finish_at(mut self, reply: &Bytes, remember: bool, now: Instant) {
        self.finished = true;
        let limits = self.replies.limits;
        let mut inner = self.replies.lock();
        if !remember {
            inner.forget_running(&self.key, self.seq);
            return;
        }
        inner.complete(&limits, &self.key, self.seq, reply.clone(), now);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.finished {
            self.replies.lock().forget_running(&self.key, self.seq);
        }
    }
}

impl Inner {
    fn forget_running(&mut self, key: &Key, seq: u64) {
        if let Some(entry) = self.entries.get(key)
            && entry.seq == seq
            && matches!(entry.state, State::Running { .. })
        {
            self.entries.remove(key);
            self.running -= 1;
        }
    }

    fn complete(&mut self, limits: &DedupLimits, key: &Key, seq: u64, reply: Bytes, now: Instant) {
        let Some(entry) = self.entries.get_mut(key).filter(|e| e.seq == seq) else { return };
        if !matches!(entry.state, State::Running { .. }) {
            return;
        }
        let reply_len = reply.len();
        let base = entry_cost(key);
        // A reply that alone would overflow the budget is kept as a tombstone from the start.
        let kept = (base + reply_len <= limits.max_bytes).then_some(reply);
        self.bytes += base + kept.as_ref().map_or(0, Bytes::len);
        if kept.is_some() {
            self.bodies.push_back((key.clone(), seq));
        }
        entry.state = State::Done { at: now, reply: kept, reply_len };
        self.running -= 1;
        self.done.push_back((key.clone(), seq));
        self.purge(limits, now);
    }

    /// Drops what is past the age or entry cap, then reply bodies (and, only if keys alone are
    /// over budget, whole entries) until the bytes fit.
    fn purge(&mut self, limits: &DedupLimits, now: Instant) {
        while let Some((key, _)) = self.done.front() {
            let expired = match self.entries.get(key).map(|e| &e.state) {
                Some(State::Done { at, .. }) => now.saturating_duration_since(*at) >= limits.ttl,
                _ => true,
            };
            if !expired && self.done.len() <= limits.max_entries {
                break;
            }
            self.evict_oldest();
        }
        while self.bytes > limits.max_bytes {
            if !self.drop_oldest_body() && !self.evict_oldest() {
                break;
            }
        }
    }

    /// Removes the oldest finished entry; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        let Some((key, seq)) = self.done.pop_front() else { return false };
        // `bodies` follows the same order, so the oldest entry is at its front if it is there.
        if self.bodies.front().is_some_and(|(k, s)| Arc::ptr_eq(k, &key) && *s == seq) {
            self.bodies.pop_front();
        }
        if let Some(entry) = self.entries.get(&key).filter(|e| e.seq == seq) {
            if let State::Done { reply, .. } = &entry.state {
                self.bytes -= entry_cost(&key) + reply.as_ref().map_or(0, Bytes::len);
            }
            self.entries.remove(&key);
        }
        true
    }

    /// Turns the oldest entry still holding a reply into a tombstone; false when none holds one.
    fn drop_oldest_body(&mut self) -> bool {
        while let Some((key, seq)) = self.bodies.pop_front() {
            let Some(entry) = self.entries.get_mut(&key).filter(|e| e.seq == seq) else { continue };
            if let State::Done { reply, .. } = &mut entry.state
                && let Some(body) = reply.take()
            {
                self.bytes -= body.len();
                return true;
            }
        }
        false
    }
}

fn entry_cost(key: &Key) -> usize {
    ENTRY_OVERHEAD + key.0.len() + key.1.len()
}

/// The first request with this id has not been answered yet: retry later for its reply.
/// TIMEOUT (retryable) rather than DRAINING: the caller is in the state its own timeout left it
/// in (no reply yet), and DRAINING would tell a control plane the agent is going away.
fn in_progress(request_id: &str, running_ms: u128) -> OpError {
    OpError::new(
        ErrorCode::Timeout,
        format!("request {request_id:?} is still running; retry later for its reply (it is not run twice)"),
    )
    .retryable()
    .with("reason", "in_progress")
    .with("running_ms", running_ms)
}

fn reused_id(request_id: &str) -> OpError {
    OpError::protocol(format!(
        "request_id {request_id:?} was already used for a different request in this fence scope; \
         a retry must repeat the request exactly, a new request needs a new id"
    ))
    .with("reason", "request_id_reused")
}

fn reply_not_kept(request_id: &str, reply_len: usize, max_bytes: usize) -> OpError {
    OpError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "request {request_id:?} already ran; its {reply_len}-byte reply no longer fits the agent's \
             reply cache ({max_bytes} bytes) and the request is not run again"
        ),
    )
    .with("reason", "reply_not_kept")
    .with("encoded_bytes", reply_len)
}

#[cfg(test)]
mod tests;
