//! A NATS outage under load (issue 20, item 1), end to end against the real agent, relay and
//! nats-server: while pings, execs, file appends and streamed execs run and a terminal is open,
//! the server is killed for a few seconds and started again on the same port. The agent serves
//! again soon after the server's return (the time is printed), says Hello again, keeps its
//! terminal (typed into through the relay and through NATS afterwards), a streamed exec that
//! spans the outage delivers every line once, and no mutating request runs twice: every
//! request is retried with its own id until it is answered, the way a control plane does, and
//! each leaves exactly one line in its log file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_proto::token::ViewerMode;
use tether_tests::execs::{collect, start_sh};
use tether_tests::relay::{Relay, Seen, claims_for, collect_until, shows_line, watch};
use tether_tests::tree::client;
use tether_tests::{Agent, AgentOpts, KillAllIn, Nats, eventually, op, pb};

/// How long the server stays down.
const OUTAGE: Duration = Duration::from_secs(3);
/// Longest any one request may take to be answered, retries included.
const ANSWERED_WITHIN: Duration = Duration::from_secs(60);
const SCOPE: &str = "load";

/// A control-plane connection that reconnects quickly (every 50 ms), so the test measures the
/// agent's return and not its own.
async fn control_plane(nats: &Nats) -> async_nats::Client {
    let token = nats.token.clone().expect("the harness server has a token");
    async_nats::ConnectOptions::with_token(token)
        .reconnect_delay_callback(|_| Duration::from_millis(50))
        .max_reconnects(None)
        .connect(&nats.url)
        .await
        .expect("connect")
}

/// Sends request `id` until it is answered (a timeout, no responders or "in progress" are
/// asked again with the very same bytes). Returns the reply and how many times it was sent.
async fn until_answered(
    nc: &async_nats::Client,
    subject: &str,
    id: &str,
    op: Op,
) -> (pb::ControlResponse, u32) {
    let req = pb::ControlRequest {
        request_id: id.to_owned(),
        fence_scope: SCOPE.into(),
        op: Some(op),
        ..Default::default()
    };
    let bytes: bytes::Bytes = req.encode_to_vec().into();
    let deadline = Instant::now() + ANSWERED_WITHIN;
    let mut sent = 0;
    loop {
        assert!(Instant::now() < deadline, "{id} was not answered within {ANSWERED_WITHIN:?}");
        sent += 1;
        let reply =
            tokio::time::timeout(Duration::from_millis(500), nc.request(subject.to_owned(), bytes.clone()))
                .await;
        if let Ok(Ok(msg)) = reply {
            let resp = pb::ControlResponse::decode(msg.payload).expect("ControlResponse");
            let in_progress = resp
                .error
                .as_ref()
                .is_some_and(|e| e.detail.get("reason").is_some_and(|r| r == "in_progress"));
            if !in_progress {
                return (resp, sent);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One kind of load: runs `make(i)` for i = 0, 1, ... until `stop`, each until answered.
struct Worker {
    done: Arc<AtomicUsize>,
    handle: tokio::task::JoinHandle<Vec<(String, pb::ControlResponse, u32)>>,
}

fn worker(
    nc: &async_nats::Client,
    subject: String,
    stop: Arc<AtomicBool>,
    make: impl Fn(usize) -> (String, Op) + Send + 'static,
) -> Worker {
    let (nc, done) = (nc.clone(), Arc::new(AtomicUsize::new(0)));
    let counter = done.clone();
    let handle = tokio::spawn(async move {
        let mut answered = Vec::new();
        for i in 0.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let (id, op) = make(i);
            let (resp, sent) = until_answered(&nc, &subject, &id, op).await;
            answered.push((id, resp, sent));
            counter.fetch_add(1, Ordering::Relaxed);
            // Steady load, not a busy loop on two cores.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        answered
    });
    Worker { done, handle }
}

/// How many times each line occurs in `file`.
fn line_counts(file: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
        *counts.entry(line.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Every answered request of `answered` succeeded, and its tag is in `file` exactly once;
/// nothing is there twice. Returns how many were sent more than once.
fn ran_once(what: &str, file: &Path, answered: &[(String, pb::ControlResponse, u32)]) -> usize {
    let counts = line_counts(file);
    let twice: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{what}: requests that ran more than once: {twice:?}");
    for (id, resp, _) in answered {
        assert!(resp.error.is_none(), "{what} {id}: {resp:?}");
        assert_eq!(counts.get(id), Some(&1), "{what} {id} was answered but did not run once");
    }
    answered.iter().filter(|(_, _, sent)| *sent > 1).count()
}

#[tokio::test]
async fn the_agent_survives_a_nats_outage_under_load_and_runs_nothing_twice() {
    let relay = Relay::start(&[]).await;
    let mut nats = Nats::start().await;
    let opts = AgentOpts { relay_url: Some(relay.stream_url()), ..Default::default() };
    let agent = Agent::start_with(&nats, opts).await;
    let _cleanup = KillAllIn(agent.root.clone());
    let subject = agent.rpc_subject();
    let nc = control_plane(&nats).await;

    // A terminal and a streamed exec that span the outage.
    let open = Op::PtyOpen(pb::PtyOpenRequest { command: vec!["sh".into()], ..Default::default() });
    let pty = match agent.call_fenced(open, SCOPE, 0).await {
        Ok(Reply::PtyOpen(r)) => r,
        other => panic!("pty_open: {other:?}\n{}", agent.log()),
    };
    let channel = pty.channel.clone().expect("channel");
    let mut viewer = watch(&relay, &channel, &claims_for(&channel, "v1", ViewerMode::View)).await;
    let c = client(&nats, &agent, SCOPE, 0).await;
    c.exec_start(start_sh("numbers", "for i in $(seq 1 150); do echo $i; sleep 0.04; done"))
        .await
        .expect("exec_start");

    let stop = Arc::new(AtomicBool::new(false));
    let pings = worker(&nc, subject.clone(), stop.clone(), |i| (format!("p{i}"), op::ping(i as u64)));
    let execs = worker(&nc, subject.clone(), stop.clone(), |i| {
        let id = format!("x{i}");
        (id.clone(), Op::Exec(op::sh(&format!("echo {id} >> exec.log; echo {id}"))))
    });
    let writes = worker(&nc, subject.clone(), stop.clone(), |i| {
        let id = format!("w{i}");
        let write = pb::FsWriteRequest {
            path: "writes.log".into(),
            content: format!("{id}\n").into_bytes().into(),
            append: true,
            ..Default::default()
        };
        (id, Op::FsWrite(write))
    });
    let streamed = worker(&nc, subject.clone(), stop.clone(), |i| {
        let id = format!("s{i}");
        (id.clone(), Op::ExecStart(start_sh(&id, &format!("echo {id} >> streamed.log"))))
    });
    let workers = [&pings, &execs, &writes, &streamed];
    let counts = || workers.map(|w| w.done.load(Ordering::Relaxed));
    eventually("load before the outage", || counts().iter().all(|&n| n >= 3)).await;

    let before = counts();
    nats.kill();
    tokio::time::sleep(OUTAGE).await;
    nats.start_again().await;
    let back = Instant::now();
    // A fresh connection, so its own reconnect plays no part: the first answered ping.
    let probe = control_plane(&nats).await;
    let served_after = loop {
        let ping =
            pb::ControlRequest { request_id: String::new(), op: Some(op::ping(0)), ..Default::default() };
        let reply = tokio::time::timeout(
            Duration::from_millis(200),
            probe.request(subject.clone(), ping.encode_to_vec().into()),
        )
        .await;
        if matches!(reply, Ok(Ok(_))) {
            break back.elapsed();
        }
        assert!(back.elapsed() < ANSWERED_WITHIN, "the agent did not serve again\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("NATS outage of {OUTAGE:?}: the agent served again {served_after:?} after the server's return");
    eventually("a second Hello after the reconnect", || {
        let log = agent.log();
        log.contains("reconnected to NATS") && log.matches("hello published").count() >= 2
    })
    .await;
    eventually("load after the outage", || counts().iter().zip(before).all(|(&n, b)| n >= b + 3)).await;
    stop.store(true, Ordering::Relaxed);
    let [pings, execs, writes, streamed] = [pings, execs, writes, streamed].map(|w| w.handle);
    let (pings, execs, writes, streamed) =
        (pings.await.unwrap(), execs.await.unwrap(), writes.await.unwrap(), streamed.await.unwrap());

    for (id, resp, _) in &pings {
        assert!(resp.error.is_none(), "ping {id}: {resp:?}");
    }
    let root = agent.root.clone();
    let retried = [
        ran_once("exec", &root.join("exec.log"), &execs),
        ran_once("write", &root.join("writes.log"), &writes),
    ];
    // Streamed execs run after their start is answered: wait for the last one's line.
    let last = streamed.last().map(|(id, _, _)| id.clone()).expect("streamed execs ran");
    eventually("the streamed execs to run", || line_counts(&root.join("streamed.log")).contains_key(&last))
        .await;
    let retried_streamed = ran_once("exec_start", &root.join("streamed.log"), &streamed);
    eprintln!(
        "NATS outage: {} pings, {} execs ({} sent more than once), {} appends ({}), {} streamed execs ({}), each ran once",
        pings.len(),
        execs.len(),
        retried[0],
        writes.len(),
        retried[1],
        streamed.len(),
        retried_streamed
    );

    // The streamed exec that spanned the outage: every line once, in order.
    let got = collect(&c, "numbers", Duration::from_secs(60)).await;
    let lines: Vec<String> = String::from_utf8_lossy(&got.stdout()).lines().map(str::to_owned).collect();
    assert_eq!(lines, (1..=150).map(|i| i.to_string()).collect::<Vec<_>>());

    // The terminal: typed into through the relay, and through NATS.
    viewer.send("echo relay-$((20+1))\n").await;
    let mut seen = Seen::default();
    collect_until(&mut viewer, &mut seen, Duration::from_secs(20), |s| shows_line(&s.text(), "relay-21"))
        .await;
    let write =
        pb::PtyWriteRequest { pty_id: pty.pty_id.clone(), data: b"echo nats-$((40+2))\n".to_vec().into() };
    let resp = until_answered(&nc, &subject, "pty-write", Op::PtyWrite(write)).await.0;
    assert!(resp.error.is_none(), "the terminal is still known: {resp:?}");
    collect_until(&mut viewer, &mut seen, Duration::from_secs(20), |s| shows_line(&s.text(), "nats-42"))
        .await;
    assert!(seen.closed.is_none(), "the terminal stayed open: {:?}", seen.closed);
}
