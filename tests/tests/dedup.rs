//! Request deduplication (README "Retries and request deduplication"), end to end through NATS
//! against the real agent: a retried request (same fence scope, same request id, same bytes)
//! gets the reply remembered from its first run and is not run again; a retry of one still
//! running answers "in progress"; an id reused for a different request is refused; the cache
//! is bounded; read-only requests are not remembered; a stale retry is FENCED whatever its
//! first run answered; and `tether-client` (and `tetherctl`) retry a timed-out call with the
//! same id.

use std::path::Path;
use std::time::Duration;

use prost::Message;
use tether_client::{Client, ClientConfig};
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::{Agent, AgentOpts, KillAllIn, Nats, error_code, eventually, op, pb, text};

/// The envelope of `op` with a chosen id, scope and epoch.
fn request(id: &str, scope: &str, epoch: u32, op: Op) -> Vec<u8> {
    pb::ControlRequest {
        request_id: id.to_owned(),
        epoch,
        fence_scope: scope.to_owned(),
        op: Some(op),
        ..Default::default()
    }
    .encode_to_vec()
}

/// An exec that appends one line to `file` (a counter of its runs) and prints `tag`.
fn append(file: &str, tag: &str) -> Op {
    Op::Exec(op::sh(&format!("echo {tag} >> {file}; echo {tag}")))
}

fn runs(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|s| s.lines().count()).unwrap_or(0)
}

fn refusal(resp: &pb::ControlResponse) -> &pb::AgentError {
    resp.error.as_ref().unwrap_or_else(|| panic!("expected a refusal, got {resp:?}"))
}

fn reason(err: &pb::AgentError) -> &str {
    err.detail.get("reason").map(String::as_str).unwrap_or("")
}

fn exec_stdout(resp: &pb::ControlResponse) -> String {
    match &resp.result {
        Some(Reply::Exec(r)) => text(&r.stdout),
        other => panic!("expected an ExecResponse, got {other:?} / {:?}", resp.error),
    }
}

#[tokio::test]
async fn a_retried_fs_write_gets_the_remembered_reply_and_does_not_write_again() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let caps = agent.caps().request_dedup.expect("Hello announces request_dedup");
    assert_eq!((caps.max_entries, caps.ttl_ms), (4096, 600_000));

    let write = request("w-1", "s", 0, op::write("notes.txt", b"first"));
    let first = agent.request_raw(write.clone()).await;
    assert!(first.error.is_none(), "{first:?}");
    let file = agent.root.join("notes.txt");
    assert_eq!(std::fs::read(&file).unwrap(), b"first");

    // Someone changes the file; the control plane, which never saw the reply, retries.
    std::fs::write(&file, b"changed since").unwrap();
    let retry = agent.request_raw(write).await;
    assert_eq!(retry, first, "the retry gets the very reply of the first run");
    assert_eq!(std::fs::read(&file).unwrap(), b"changed since", "the retry did not write again");

    // The same id in another fence scope is another request: it runs.
    let other_scope = agent.request_raw(request("w-1", "other", 0, op::write("notes.txt", b"first"))).await;
    assert!(other_scope.error.is_none(), "{other_scope:?}");
    assert_eq!(std::fs::read(&file).unwrap(), b"first");
}

#[tokio::test]
async fn a_retried_exec_runs_its_command_once() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let exec = request("e-1", "s", 0, append("count", "once"));
    let first = agent.request_raw(exec.clone()).await;
    assert_eq!(exec_stdout(&first), "once\n");
    for _ in 0..3 {
        assert_eq!(agent.request_raw(exec.clone()).await, first);
    }
    assert_eq!(runs(&agent.root.join("count")), 1, "retries must not run the command again");
    // A new id is a new request.
    agent.request_raw(request("e-2", "s", 0, append("count", "again"))).await;
    assert_eq!(runs(&agent.root.join("count")), 2);
}

#[tokio::test]
async fn a_retry_while_the_first_still_runs_answers_in_progress_and_starts_no_twin() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let _cleanup = KillAllIn(agent.root.clone());
    // The command signals that it runs, then waits for the test's go-ahead (bounded by its
    // own timeout), then counts its run.
    let script = "touch started; i=0; while [ ! -e go ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; \
                  echo ran >> count; echo done";
    let exec = request("slow-1", "s", 0, Op::Exec(op::sh(script)));
    let first = tokio::spawn({
        let (nc, subject, exec) = (agent.nc.clone(), agent.rpc_subject(), exec.clone());
        async move { nc.request(subject, exec.into()).await }
    });
    let started = agent.root.join("started");
    eventually("the first run to start", || started.exists()).await;

    let retry = agent.request_raw(exec.clone()).await;
    let err = refusal(&retry);
    assert_eq!(error_code(err), pb::ErrorCode::Timeout, "{err:?}");
    assert!(err.retryable, "in progress is retryable: {err:?}");
    assert_eq!(reason(err), "in_progress", "{err:?}");
    assert_eq!(retry.request_id, "slow-1");

    std::fs::write(agent.root.join("go"), b"").unwrap();
    let first = first.await.unwrap().expect("the first request is answered");
    let first = pb::ControlResponse::decode(first.payload).unwrap();
    assert_eq!(exec_stdout(&first), "done\n");
    assert_eq!(agent.request_raw(exec).await, first, "once finished, the retry gets its reply");
    assert_eq!(runs(&agent.root.join("count")), 1, "no twin was started");
}

#[tokio::test]
async fn an_id_reused_for_a_different_request_is_a_protocol_error_and_runs_nothing() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let file = agent.root.join("f.txt");
    agent.request_raw(request("same", "s", 0, op::write("f.txt", b"one"))).await;
    let other = agent.request_raw(request("same", "s", 0, op::write("f.txt", b"two"))).await;
    let err = refusal(&other);
    assert_eq!(error_code(err), pb::ErrorCode::Protocol, "{err:?}");
    assert_eq!(reason(err), "request_id_reused");
    assert!(!err.retryable);
    assert_eq!(std::fs::read(&file).unwrap(), b"one");

    let exec = agent.request_raw(request("same", "s", 0, append("count", "x"))).await;
    assert_eq!(error_code(refusal(&exec)), pb::ErrorCode::Protocol, "another op under the same id");
    assert_eq!(runs(&agent.root.join("count")), 0);
}

#[tokio::test]
async fn read_only_requests_are_not_remembered() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    std::fs::write(agent.root.join("r.txt"), b"before").unwrap();
    let read = request("read-1", "s", 0, op::read("r.txt"));
    let content = |resp: pb::ControlResponse| match resp.result {
        Some(Reply::FsRead(r)) => r.content.to_vec(),
        other => panic!("expected a read, got {other:?}"),
    };
    assert_eq!(content(agent.request_raw(read.clone()).await), b"before");
    std::fs::write(agent.root.join("r.txt"), b"after").unwrap();
    assert_eq!(content(agent.request_raw(read).await), b"after", "the read ran again");
    // Reads leave nothing behind: a write may take the same id afterwards.
    let write = agent.request_raw(request("read-1", "s", 0, op::write("w.txt", b"w"))).await;
    assert!(write.error.is_none(), "{write:?}");
}

#[tokio::test]
async fn the_cache_is_bounded_in_entries_and_in_bytes() {
    let nats = Nats::start().await;
    let opts = AgentOpts {
        args: ["--dedup-max-entries", "8", "--dedup-max-bytes", "1M"].map(String::from).to_vec(),
        ..Default::default()
    };
    let agent = Agent::start_with(&nats, opts).await;
    let caps = agent.caps().request_dedup.expect("request_dedup");
    assert_eq!((caps.max_entries, caps.max_bytes), (8, 1 << 20));

    // Entries: 20 distinct requests; the 8 newest are remembered, the oldest was forgotten.
    let count = agent.root.join("count");
    for i in 0..20 {
        agent.request_raw(request(&format!("n-{i}"), "s", 0, append("count", &i.to_string()))).await;
    }
    assert_eq!(runs(&count), 20);
    agent.request_raw(request("n-19", "s", 0, append("count", "19"))).await;
    assert_eq!(runs(&count), 20, "the newest is still remembered");
    let stats = agent.request_raw(request("n-19", "s", 0, append("count", "other"))).await;
    let remembered: usize = refusal(&stats).detail["remembered_entries"].parse().unwrap();
    assert!(remembered <= 8, "{remembered} entries remembered, cap 8");
    agent.request_raw(request("n-0", "s", 0, append("count", "0"))).await;
    assert_eq!(runs(&count), 21, "the oldest fell out of the cache and ran again");

    // Bytes: replies of ~300 KiB each under a 1 MiB cap. The oldest replies are dropped, but
    // their requests are still known: a retry is refused, not run again.
    let big = agent.root.join("big");
    for i in 0..6 {
        let script = format!("echo {i} >> big; head -c 300000 /dev/zero");
        let resp = agent.request_raw(request(&format!("b-{i}"), "s", 0, Op::Exec(op::sh(&script)))).await;
        assert!(resp.error.is_none(), "{:?}", resp.error);
    }
    let retry = agent
        .request_raw(request("b-0", "s", 0, Op::Exec(op::sh("echo 0 >> big; head -c 300000 /dev/zero"))))
        .await;
    let err = refusal(&retry);
    assert_eq!((error_code(err), reason(err)), (pb::ErrorCode::PayloadTooLarge, "reply_not_kept"), "{err:?}");
    assert_eq!(runs(&big), 6, "a request whose reply was dropped is not run again");
    let bytes: usize = err.detail["remembered_bytes"].parse().unwrap();
    assert!(bytes <= 1 << 20, "{bytes} bytes remembered, cap 1 MiB");
    let newest = agent
        .request_raw(request("b-5", "s", 0, Op::Exec(op::sh("echo 5 >> big; head -c 300000 /dev/zero"))))
        .await;
    assert_eq!(newest.result.map(|_| ()), Some(()), "the newest reply is kept");
    assert_eq!(runs(&big), 6);
}

#[tokio::test]
async fn a_stale_retry_is_fenced_even_though_its_first_run_succeeded() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let exec = request("f-1", "lease", 2, append("count", "x"));
    assert_eq!(exec_stdout(&agent.request_raw(exec.clone()).await), "x\n");
    assert_eq!(agent.request_raw(exec.clone()).await.error, None, "a retry at the held epoch replays");

    // The scope moves on (a new lease); the old holder retries.
    agent.call_fenced(op::ping(1), "lease", 3).await.expect("advance to 3");
    let stale = agent.request_raw(exec).await;
    let err = refusal(&stale);
    assert_eq!(error_code(err), pb::ErrorCode::Fenced, "{err:?}");
    assert_eq!(err.detail["held_epoch"], "3");
    // The new holder reusing the id (epoch 3 is part of the request) is a different request.
    let reused = agent.request_raw(request("f-1", "lease", 3, append("count", "x"))).await;
    assert_eq!(error_code(refusal(&reused)), pb::ErrorCode::Protocol);
    assert_eq!(runs(&agent.root.join("count")), 1);
}

#[tokio::test]
async fn the_client_retries_a_timed_out_call_with_the_same_request_id() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let _cleanup = KillAllIn(agent.root.clone());
    let config = ClientConfig::new(&agent.ws, &agent.id)
        .unwrap()
        .with_fence_scope("retrying")
        .unwrap()
        .with_request_timeout(Duration::from_millis(300))
        .with_retries(40);
    let client = Client::from_nats(nats.client().await, &config);
    // Outlasts several request timeouts: each retry must find the first run, not start another.
    let reply = client
        .exec_with_timeout(op::sh("echo ran >> count; sleep 1.5; echo finished"), Duration::from_millis(300))
        .await
        .expect("the retries end with the command's reply");
    assert_eq!(text(&reply.stdout), "finished\n");
    assert_eq!(runs(&agent.root.join("count")), 1, "the command ran once");

    let none = ClientConfig::new(&agent.ws, &agent.id)
        .unwrap()
        .with_request_timeout(Duration::from_millis(300))
        .with_retries(0);
    let client = Client::from_nats(nats.client().await, &none);
    let err = client.exec(op::sh("sleep 1")).await.expect_err("no retry: the timeout is the answer");
    assert_eq!(err.code(), Some(pb::ErrorCode::Timeout));
}

#[tokio::test]
async fn tetherctl_retries_with_the_same_id_and_the_command_runs_once() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let _cleanup = KillAllIn(agent.root.clone());
    let out = agent
        .tetherctl(&nats)
        .args(["--timeout", "400ms", "--retries", "30", "exec", "--shell", "--"])
        .arg("echo ran >> runs; sleep 1.5; echo done")
        .output()
        .expect("tetherctl runs");
    assert!(out.status.success(), "{out:?}\nagent log:\n{}", agent.log());
    assert_eq!(text(&out.stdout), "done\n");
    assert_eq!(runs(&agent.root.join("runs")), 1, "the retries were answered, not run");
}
