//! Soak (issue 20, item 10): a mixed load — pings, writes, reads, listings, stats, moves,
//! removes, execs and terminals streamed through the relay — against the real agent and relay
//! for a bounded time: `TETHER_SOAK_SECS` (default 60, CI's budget; set it higher for a longer
//! soak). RSS, open descriptors and threads of the agent and the relay are printed after a
//! warm-up and at the end; growth past the bounds below fails (a leak per request would pass
//! them within seconds at this rate).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::relay::Relay;
use tether_tests::watch::{ProcStats, percentile};
use tether_tests::{Agent, AgentOpts, KillAllIn, Nats, op, pb};

const RSS_GROWTH_MIB: u64 = 32;
const FD_GROWTH: usize = 16;
const THREAD_GROWTH: u64 = 8;

fn soak_secs() -> u64 {
    std::env::var("TETHER_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60)
}

/// One worker's mix: every request must get a reply that is not an untyped failure.
async fn worker(agent: Arc<Agent>, k: usize, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> Vec<Duration> {
    let mut pings = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let name = format!("w{k}/f{}", i % 8);
        let ops = [
            op::write(&name, format!("{k} {i}").as_bytes()),
            op::read(&name),
            op::stat(&name),
            Op::FsList(pb::FsListRequest { path: format!("w{k}"), recursive: true, max_entries: 0 }),
            Op::FsMove(pb::FsMoveRequest {
                from: name.clone(),
                to: format!("{name}.moved"),
                overwrite: true,
            }),
            Op::FsRemove(pb::FsRemoveRequest { path: format!("{name}.moved"), recursive: false }),
            Op::Exec(op::sh("echo soak; ls >/dev/null")),
        ];
        if k == 0 && i == 0 {
            std::fs::create_dir_all(agent.root.join("w0")).expect("w0");
        }
        for o in ops {
            let r = agent.call(o).await;
            if let Err(e) = &r {
                assert!(e.code != pb::ErrorCode::Unspecified as i32, "worker {k}: {e:?}");
            }
            done.fetch_add(1, Ordering::Relaxed);
        }
        let sent = Instant::now();
        let pong = agent.call(op::ping(i)).await;
        assert!(matches!(pong, Ok(Reply::Ping(_))), "{pong:?}");
        pings.push(sent.elapsed());
        i += 1;
    }
    pings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_load_leaves_agent_and_relay_without_growth() {
    let secs = soak_secs();
    let relay = Relay::start(&[]).await;
    let nats = Nats::start().await;
    let opts = AgentOpts { relay_url: Some(relay.stream_url()), ..Default::default() };
    let agent = Arc::new(Agent::start_with(&nats, opts).await);
    let _cleanup = KillAllIn(agent.root.clone());
    for k in 0..4 {
        std::fs::create_dir_all(agent.root.join(format!("w{k}"))).expect("worker dir");
    }
    let (agent_pid, relay_pid) = (agent.proc.pid(), relay.pid().expect("the relay runs") as i32);
    let stats =
        || (ProcStats::of(agent_pid).expect("agent stats"), ProcStats::of(relay_pid).expect("relay stats"));

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> =
        (0..4).map(|k| tokio::spawn(worker(agent.clone(), k, stop.clone(), done.clone()))).collect();
    // Terminals: one opened (its output streamed through the relay) every 200 ms, each ending
    // by itself.
    let terminals = {
        let (agent, stop) = (agent.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let req = pb::PtyOpenRequest {
                    command: ["sh", "-c", "echo soak; sleep 0.1"].map(String::from).to_vec(),
                    scope_id: format!("soak-{}", n % 4),
                    ..Default::default()
                };
                let r = agent.call(Op::PtyOpen(req)).await;
                assert!(matches!(r, Ok(Reply::PtyOpen(_))), "terminal {n}: {r:?}");
                n += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            n
        })
    };

    // Warm-up (allocator arenas, caches, NATS buffers), then the measured span.
    let warm = Duration::from_secs((secs / 6).clamp(3, 30));
    tokio::time::sleep(warm).await;
    let (agent_start, relay_start) = stats();
    tokio::time::sleep(Duration::from_secs(secs).saturating_sub(warm)).await;
    stop.store(true, Ordering::Relaxed);
    let mut pings = Vec::new();
    for w in workers {
        pings.extend(w.await.expect("worker"));
    }
    let opened = terminals.await.expect("terminals");
    // The last terminals end; idle blocking threads (tokio keeps them 10 s) may retire. A
    // leak does not settle: the end figures are taken once both are within bounds, or after
    // 15 s.
    let settled = Instant::now();
    let within = |s: &ProcStats, e: &ProcStats| {
        e.rss_kib <= s.rss_kib + (RSS_GROWTH_MIB << 10)
            && e.fds <= s.fds + FD_GROWTH
            && e.threads <= s.threads + THREAD_GROWTH
    };
    let (agent_end, relay_end) = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (a, r) = stats();
        if (within(&agent_start, &a) && within(&relay_start, &r))
            || settled.elapsed() > Duration::from_secs(15)
        {
            break (a, r);
        }
    };
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{agent_pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| l.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    println!("settled after {:?}; agent descriptors at the end: {fds:?}", settled.elapsed());
    let requests = done.load(Ordering::Relaxed) + pings.len() as u64;
    println!(
        "soak {secs} s: {requests} requests, {opened} terminals; ping p50 {:?} p99 {:?}",
        percentile(&mut pings, 50),
        percentile(&mut pings, 99)
    );
    println!("agent: after warm-up {agent_start}; end {agent_end}");
    println!("relay: after warm-up {relay_start}; end {relay_end}");
    for (who, start, end) in [("agent", agent_start, agent_end), ("relay", relay_start, relay_end)] {
        assert!(
            end.rss_kib <= start.rss_kib + (RSS_GROWTH_MIB << 10),
            "{who} RSS grew from {start} to {end}"
        );
        assert!(end.fds <= start.fds + FD_GROWTH, "{who} descriptors grew: {start} to {end}");
        assert!(end.threads <= start.threads + THREAD_GROWTH, "{who} threads grew: {start} to {end}");
    }
    assert!(requests > secs * 50, "the load hardly ran: {requests} requests");
}

/// The leak the soak found, alone: a terminal whose process exited lingers (pty_close still
/// answers with its exit code) but holds no PTY descriptor and no thread of the agent's.
#[tokio::test]
async fn an_ended_terminal_lingering_for_pty_close_holds_no_pty() {
    let relay = Relay::start(&[]).await;
    let nats = Nats::start().await;
    let opts = AgentOpts { relay_url: Some(relay.stream_url()), ..Default::default() };
    let agent = Agent::start_with(&nats, opts).await;
    let _cleanup = KillAllIn(agent.root.clone());
    let pid = agent.proc.pid();
    let ptys = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.flatten()
                    .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.ends_with("ptmx")))
                    .count()
            })
            .unwrap_or_default()
    };
    let before = ProcStats::of(pid).expect("agent stats");
    let mut ids = Vec::new();
    for n in 0..10 {
        let req = pb::PtyOpenRequest {
            command: ["sh", "-c", "exit 3"].map(String::from).to_vec(),
            scope_id: format!("ends-{n}"),
            ..Default::default()
        };
        match agent.call(Op::PtyOpen(req)).await {
            Ok(Reply::PtyOpen(r)) => ids.push(r.pty_id),
            other => panic!("pty_open {n}: {other:?}"),
        }
    }
    // Every process has exited once the terminal reports its code; wait for each, then look.
    tether_tests::eventually("the terminals to end", || processes_in_none(&agent)).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // the drain wait after an exit
    let (held, after) = (ptys(), ProcStats::of(pid).expect("agent stats"));
    for id in &ids {
        let r = agent.call(Op::PtyClose(pb::PtyCloseRequest { pty_id: id.clone() })).await;
        assert!(matches!(r, Ok(Reply::PtyClose(ref c)) if c.exit_code == 3), "the code lingers: {r:?}");
    }
    println!("10 ended terminals: {held} PTY descriptors held; agent {before} then {after}");
    assert_eq!(held, 0, "ended terminals still hold PTY masters");
    assert!(after.threads <= before.threads + 2, "ended terminals hold threads: {before} then {after}");
}

fn processes_in_none(agent: &Agent) -> bool {
    tether_tests::processes_in(&agent.root).is_empty()
}
