use super::*;

fn print(n: u8) -> Fingerprint {
    Fingerprint([n; 32])
}

fn limits(max_entries: usize, max_bytes: usize) -> DedupLimits {
    DedupLimits { max_entries, ttl: Duration::from_secs(600), max_bytes }
}

fn reply(len: usize) -> Bytes {
    Bytes::from(vec![7u8; len])
}

/// Registers and answers `id` with a reply of `len` bytes at `now`.
fn answer(cache: &Arc<Replies>, id: &str, len: usize, now: Instant) {
    let Begin::Run(ticket) = cache.begin_at("s", id, print(1), now) else { panic!("{id} must run") };
    ticket.finish_at(&reply(len), true, now);
}

fn code(begin: Begin) -> (ErrorCode, Option<String>) {
    match begin {
        Begin::Refuse(e) => (e.code, e.detail.get("reason").cloned()),
        Begin::Run(_) => panic!("expected a refusal, got Run"),
        Begin::Replay(_) => panic!("expected a refusal, got Replay"),
    }
}

#[test]
fn a_finished_request_is_replayed_and_a_running_one_is_in_progress() {
    let cache = Replies::new(DedupLimits::default());
    let Begin::Run(ticket) = cache.begin("s", "r1", print(1)) else { panic!() };
    let (c, reason) = code(cache.begin("s", "r1", print(1)));
    assert_eq!((c, reason.as_deref()), (ErrorCode::Timeout, Some("in_progress")));
    let Begin::Run(_other_scope) = cache.begin("s2", "r1", print(1)) else { panic!("scopes are apart") };
    ticket.finish(&reply(10), true);
    let Begin::Replay(bytes) = cache.begin("s", "r1", print(1)) else { panic!("must replay") };
    assert_eq!(bytes, reply(10));
    let (c, reason) = code(cache.begin("s", "r1", print(2)));
    assert_eq!((c, reason.as_deref()), (ErrorCode::Protocol, Some("request_id_reused")));
}

#[test]
fn forgotten_and_dropped_tickets_let_a_retry_run() {
    let cache = Replies::new(DedupLimits::default());
    let Begin::Run(ticket) = cache.begin("s", "r1", print(1)) else { panic!() };
    ticket.finish(&reply(10), false);
    let Begin::Run(ticket) = cache.begin("s", "r1", print(1)) else {
        panic!("a retryable failure is forgotten")
    };
    drop(ticket);
    let Begin::Run(_ticket) = cache.begin("s", "r1", print(1)) else {
        panic!("a dropped ticket is forgotten")
    };
    assert_eq!(cache.stats(), Stats { entries: 0, bodies: 0, bytes: 0, running: 1 });
}

#[test]
fn the_entry_cap_and_the_age_drop_the_oldest() {
    let cache = Replies::new(limits(3, usize::MAX));
    let t0 = Instant::now();
    for id in ["a", "b", "c", "d"] {
        answer(&cache, id, 10, t0);
    }
    assert_eq!(cache.stats().entries, 3);
    assert!(matches!(cache.begin_at("s", "a", print(1), t0), Begin::Run(_)), "a was evicted");
    assert!(matches!(cache.begin_at("s", "d", print(1), t0), Begin::Replay(_)));
    let later = t0 + Duration::from_secs(601);
    assert!(matches!(cache.begin_at("s", "d", print(1), later), Begin::Run(_)), "d expired");
    assert_eq!(cache.stats().entries, 0);
    assert_eq!(cache.stats().bytes, 0, "nothing left accounted");
}

#[test]
fn over_the_byte_cap_the_oldest_bodies_become_tombstones() {
    let per = ENTRY_OVERHEAD + 2; // key ("s", one-letter id)
    let cache = Replies::new(limits(100, 3 * per + 2000));
    let t0 = Instant::now();
    for id in ["a", "b", "c"] {
        answer(&cache, id, 1000, t0);
    }
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.bodies), (3, 2), "{stats:?}");
    assert!(stats.bytes <= 3 * per + 2000);
    let (c, reason) = code(cache.begin_at("s", "a", print(1), t0));
    assert_eq!((c, reason.as_deref()), (ErrorCode::PayloadTooLarge, Some("reply_not_kept")), "not run again");
    assert!(matches!(cache.begin_at("s", "c", print(1), t0), Begin::Replay(_)));

    // A reply larger than the whole budget is a tombstone at once; keys alone over budget
    // evict whole entries.
    answer(&cache, "d", 10_000, t0);
    assert!(matches!(code(cache.begin_at("s", "d", print(1), t0)).0, ErrorCode::PayloadTooLarge));
    let tiny = Replies::new(limits(100, 2 * per));
    for id in ["a", "b", "c", "d"] {
        answer(&tiny, id, 0, t0);
    }
    assert_eq!(tiny.stats().entries, 2);
    assert!(tiny.stats().bytes <= 2 * per);
}

#[test]
fn the_body_queue_stays_bounded_under_count_eviction() {
    let cache = Replies::new(limits(8, usize::MAX));
    let t0 = Instant::now();
    for i in 0..1000 {
        answer(&cache, &format!("r{i}"), 5, t0);
    }
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.bodies), (8, 8));
    assert_eq!(cache.lock().entries.len(), 8);
}

#[test]
fn limits_are_announced_unless_off() {
    assert_eq!(DedupLimits::default().capability().unwrap().max_entries, 4096);
    assert!(DedupLimits { max_entries: 0, ..DedupLimits::default() }.capability().is_none());
}
