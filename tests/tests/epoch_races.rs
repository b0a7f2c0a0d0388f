//! Epoch races (issue 20, item 5), end to end through NATS against the real agent: 100 file
//! writes and 20 execs under epoch E race an advance to E+1. Once the advance is
//! acknowledged, nothing of E's changes any more: no file written under E changes afterwards
//! (each write either committed before the acknowledgement, and its reply says so, or was
//! FENCED and left nothing), and no process of an exec of E is alive.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use prost::Message;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::{
    Agent, AgentOpts, KillAllIn, Nats, error_code, eventually, op, pb, pid_alive, processes_in, read_pid,
};

const WRITES: usize = 100;
const EXECS: usize = 20;
const SCOPE: &str = "race";

/// Sends `op` in SCOPE at `epoch` and decodes the reply.
fn send(agent: &Agent, id: String, epoch: u32, op: Op) -> tokio::task::JoinHandle<pb::ControlResponse> {
    let req = pb::ControlRequest {
        request_id: id,
        epoch,
        fence_scope: SCOPE.to_owned(),
        op: Some(op),
        ..Default::default()
    };
    let (nc, subject) = (agent.nc.clone(), agent.rpc_subject());
    tokio::spawn(async move {
        let msg =
            tokio::time::timeout(Duration::from_secs(60), nc.request(subject, req.encode_to_vec().into()))
                .await
                .expect("a reply within 60 s")
                .expect("request");
        pb::ControlResponse::decode(msg.payload).expect("ControlResponse")
    })
}

/// Every file in `dir` with its content.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read the root")
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default()))
        .collect()
}

fn fenced(resp: &pb::ControlResponse) -> bool {
    resp.error.as_ref().is_some_and(|e| error_code(e) == pb::ErrorCode::Fenced)
}

#[tokio::test]
async fn nothing_of_an_epoch_changes_or_runs_once_its_successor_is_acknowledged() {
    let nats = Nats::start().await;
    // Room for all 120 requests at once: none is turned away DRAINING.
    let opts = AgentOpts { args: vec!["--max-in-flight".into(), "256".into()], ..Default::default() };
    let agent = Agent::start_with(&nats, opts).await;
    let _cleanup = KillAllIn(agent.root.clone());
    let root = agent.root.clone();
    agent.call_fenced(op::ping(1), SCOPE, 1).await.expect("the scope takes epoch 1");

    // Execs of E that write for ever (and leave a sleeper in their group).
    let execs: Vec<_> = (0..EXECS)
        .map(|i| {
            let script = format!("echo $$ > e{i}.pid; while :; do echo x >> e{i}.log; sleep 0.01; done");
            send(&agent, format!("e{i}"), 1, Op::Exec(op::sh(&script)))
        })
        .collect();
    let pid_written =
        |i: usize| std::fs::read_to_string(root.join(format!("e{i}.pid"))).is_ok_and(|t| t.ends_with('\n'));
    eventually("the execs of E to run", || (0..EXECS).all(pid_written)).await;
    let leaders: Vec<i32> = (0..EXECS).map(|i| read_pid(&root.join(format!("e{i}.pid")))).collect();

    // 100 writes of E of 256 KiB each, racing the advance.
    let body = vec![b'w'; 256 << 10];
    let writes: Vec<_> = (0..WRITES)
        .map(|i| send(&agent, format!("w{i}"), 1, op::write(&format!("w{i}.txt"), &body)))
        .collect();
    // The advance arrives while the writes are being served: once some have landed.
    let landed = || (0..WRITES).filter(|i| root.join(format!("w{i}.txt")).exists()).count();
    eventually("some writes of E to land", || landed() >= 10).await;
    let advance = agent.call_fenced(op::ping(2), SCOPE, 2).await;
    let at_ack = snapshot(&root);
    let alive: Vec<i32> = leaders.iter().copied().filter(|&p| pid_alive(p)).collect();
    let running = processes_in(&root);
    advance.expect("the advance to epoch 2 is acknowledged");
    assert!(alive.is_empty(), "exec leaders of E alive after the advance was acknowledged: {alive:?}");
    assert!(running.is_empty(), "processes of E's execs alive after the acknowledgement: {running:?}");

    let (mut committed, mut refused) = (0, Vec::new());
    for (i, write) in writes.into_iter().enumerate() {
        let resp = write.await.expect("write task");
        let name = format!("w{i}.txt");
        match &resp.result {
            Some(Reply::FsWrite(_)) => {
                committed += 1;
                assert_eq!(
                    at_ack.get(&name),
                    Some(&body),
                    "{name} was acknowledged but not whole at the advance"
                );
            }
            _ => {
                assert!(fenced(&resp), "{name}: {resp:?}");
                refused.push(name);
            }
        }
    }
    for (i, exec) in execs.into_iter().enumerate() {
        let resp = exec.await.expect("exec task");
        assert!(fenced(&resp), "exec e{i} of E must end FENCED: {resp:?}");
    }
    eprintln!("epoch race: {committed} writes of E committed before the advance, {} fenced", refused.len());

    // Give anything of E that escaped the time to show itself, then compare.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = snapshot(&root);
    let changed: Vec<&String> = later.keys().filter(|k| at_ack.get(*k) != later.get(*k)).collect();
    let gone: Vec<&String> = at_ack.keys().filter(|k| !later.contains_key(*k)).collect();
    assert!(
        changed.is_empty() && gone.is_empty(),
        "changed after the advance: {changed:?}, removed: {gone:?}"
    );
    let left: Vec<&String> = refused.iter().filter(|n| later.contains_key(*n)).collect();
    assert!(left.is_empty(), "fenced writes left files: {left:?}");
}
