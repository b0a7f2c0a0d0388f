//! Epoch fencing with teeth (PROTOCOL.md §3), end to end through NATS.

use std::time::Duration;

use tether_proto::pb::control_request::Op;
use tether_tests::{Agent, AgentOpts, Nats, eventually, op, pb};

fn fenced(err: &pb::AgentError) -> bool {
    err.code == pb::ErrorCode::Fenced as i32 && err.retryable
}

#[tokio::test]
async fn an_older_epoch_is_fenced_before_its_write_happens() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    agent.call_fenced(op::write("a.txt", b"five"), "s1", 5).await.expect("epoch 5 accepted");

    let err = agent.call_fenced(op::write("b.txt", b"three"), "s1", 3).await.expect_err("epoch 3 is stale");
    assert!(fenced(&err), "{err:?}");
    assert_eq!(err.detail["op_epoch"], "3");
    assert_eq!(err.detail["held_epoch"], "5");
    assert_eq!(err.detail["fence_scope"], "s1");
    assert!(!agent.root.join("b.txt").exists(), "a fenced write must not happen");

    agent.call_fenced(op::ping(1), "s1", 0).await.expect("epoch 0 is unfenced without --strict-fencing");
    agent.call_fenced(op::ping(1), "s2", 1).await.expect("another scope keeps its own sequence");
    let err = agent.call_fenced(op::ping(1), "s1", 4).await.expect_err("ping is fenced too");
    assert!(fenced(&err));
}

#[tokio::test]
async fn strict_fencing_rejects_epoch_zero() {
    let nats = Nats::start().await;
    let opts = AgentOpts { args: vec!["--strict-fencing".into()], ..Default::default() };
    let agent = Agent::start_with(&nats, opts).await;
    let err = agent.call_fenced(op::ping(1), "s1", 0).await.expect_err("strict");
    assert_eq!(err.code, pb::ErrorCode::Fenced as i32);
    agent.call_fenced(op::ping(1), "s1", 1).await.expect("epoch 1 accepted");
}

#[tokio::test]
async fn unscoped_epochs_are_enforced_only_with_fence_unscoped() {
    let nats = Nats::start().await;
    let lax = Agent::start(&nats).await;
    lax.call_fenced(op::ping(1), "", 5).await.unwrap();
    lax.call_fenced(op::ping(1), "", 3).await.expect("not enforced by default");

    let opts = AgentOpts { args: vec!["--fence-unscoped".into()], ..Default::default() };
    let strict = Agent::start_with(&nats, opts).await;
    strict.call_fenced(op::ping(1), "", 5).await.unwrap();
    let err = strict.call_fenced(op::ping(1), "", 3).await.expect_err("enforced");
    assert!(fenced(&err));
}

#[tokio::test]
async fn the_held_epoch_survives_a_restart() {
    let nats = Nats::start().await;
    let state = tempfile::tempdir().unwrap();
    let opts = AgentOpts { state_dir: Some(state.path().to_owned()), ..Default::default() };
    let mut first = Agent::start_with(&nats, opts.clone()).await;
    first.call_fenced(op::ping(1), "s1", 9).await.unwrap();
    first.proc.signal(nix::sys::signal::Signal::SIGTERM);
    first.proc.wait_exit(tether_tests::WAIT).unwrap();

    let opts = AgentOpts { agent_id: Some(first.id.clone()), ..opts };
    let second = Agent::start_with(&nats, opts).await;
    let err = second.call_fenced(op::ping(1), "s1", 8).await.expect_err("still fenced after restart");
    assert!(fenced(&err));
    assert_eq!(err.detail["held_epoch"], "9");
}

#[tokio::test]
async fn an_epoch_advance_kills_the_older_exec() {
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let marker = agent.root.join("started");
    let script = "echo $$ > started; exec sleep 60";
    let running = agent.call_fenced(Op::Exec(op::sh(script)), "s1", 5);
    let advance = async {
        eventually("the exec to start", || std::fs::read_to_string(&marker).is_ok_and(|s| s.ends_with('\n')))
            .await;
        agent.call_fenced(op::ping(1), "s1", 6).await
    };
    let (exec_reply, advanced) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(running, advance) })
            .await
            .unwrap();
    advanced.expect("epoch 6 accepted");
    let err = exec_reply.expect_err("the epoch-5 exec is cancelled");
    assert!(fenced(&err), "{err:?}");
    let pid: i32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
    eventually("the fenced process to be gone", || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
    })
    .await;
}
