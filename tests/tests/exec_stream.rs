//! Long-running commands, output side (README "Long-running commands"): output streams while
//! the command runs, a start repeated with one id runs once, replay after the end, every line
//! exactly once across a NATS server restart, flow control against a slow reader, and the
//! announced gap past the spill cap.

use std::time::Duration;

use tether_client::{AttachFrom, Client};
use tether_tests::execs::{collect, collect_with, start_sh};
use tether_tests::tree::client;
use tether_tests::watch::status_field;
use tether_tests::{Agent, AgentOpts, Nats, pb};

const LONG: Duration = Duration::from_secs(180);

async fn agent_and_client(nats: &Nats, args: &[&str]) -> (Agent, Client) {
    let opts = AgentOpts { args: args.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    let agent = Agent::start_with(nats, opts).await;
    let c = client(nats, &agent, "stream-tests", 0).await;
    (agent, c)
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes).lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn output_arrives_line_by_line_while_the_command_runs() {
    let nats = Nats::start().await;
    let (agent, c) = agent_and_client(&nats, &[]).await;
    assert!(agent.caps().exec_stream, "Hello offers long-running commands");
    let started = c
        .exec_start(start_sh("lines", "for i in $(seq 1 5); do echo $i; sleep 0.3; done"))
        .await
        .expect("exec_start");
    assert!(started.created);
    let stream = c.attach("lines", AttachFrom::default()).await.expect("attach");
    let got = collect_with(stream, LONG, |_| {}).await;
    assert_eq!(lines(&got.stdout()), ["1", "2", "3", "4", "5"]);
    let (ended, state) = got.end.as_ref().expect("end");
    assert_eq!((state.status, state.exit_code), (pb::ExecStatus::Exited as i32, 0), "{state:?}");
    // Each echo is followed by 0.3 s of sleep: the lines came one by one while it ran, not all
    // together at the end.
    let arrivals: Vec<_> = got.data.iter().map(|(t, _, _)| *t).collect();
    assert!(arrivals.len() >= 4, "one chunk per line (or nearly): {} chunks", arrivals.len());
    assert!(
        *ended >= arrivals[0] + Duration::from_millis(900),
        "the first line must arrive well before the end: {:?} before",
        ended.duration_since(arrivals[0])
    );
    let spread = arrivals[arrivals.len() - 1].duration_since(arrivals[0]);
    assert!(spread >= Duration::from_millis(600), "lines arrived over {spread:?}, not as they were written");
    assert_eq!(state.stdout_bytes, 10);
}

#[tokio::test]
async fn a_start_repeated_with_the_same_id_runs_the_command_once() {
    let nats = Nats::start().await;
    let (agent, c) = agent_and_client(&nats, &[]).await;
    let req = start_sh("once", "echo ran >> runs.txt; sleep 1");
    let attempts = futures::future::join_all((0..4).map(|_| c.exec_start(req.clone()))).await;
    let created = attempts.iter().filter(|r| r.as_ref().expect("exec_start").created).count();
    assert_eq!(created, 1, "exactly one start runs it");
    let state = c.exec_wait("once").await.expect("wait");
    assert_eq!(state.exit_code, 0);
    let again = c.exec_start(req).await.expect("start after the end");
    assert!(!again.created, "an ended execution's id is not run again");
    assert_eq!(again.state.expect("state").status, pb::ExecStatus::Exited as i32);
    assert_eq!(std::fs::read_to_string(agent.root.join("runs.txt")).unwrap(), "ran\n");
    let other_scope = client(&nats, &agent, "another-scope", 0).await;
    let err = other_scope.exec_wait_once("once", Duration::ZERO).await.expect_err("scoped");
    assert_eq!(err.code(), Some(pb::ErrorCode::NotFound), "ids are per fence scope");
}

#[tokio::test]
async fn attach_from_zero_after_the_end_returns_everything() {
    let nats = Nats::start().await;
    let (_agent, c) = agent_and_client(&nats, &[]).await;
    c.exec_start(start_sh("done", "seq 1 200000; echo bye >&2; exit 3")).await.expect("exec_start");
    assert_eq!(c.exec_wait("done").await.expect("wait").exit_code, 3);
    let expected: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    let got = collect(&c, "done", LONG).await;
    assert_eq!(got.stdout(), expected.as_bytes());
    assert_eq!(got.bytes(pb::ExecStream::Stderr), b"bye\n");
    assert_eq!(got.state().exit_code, 3);
    assert!(got.gaps.is_empty());
    // From a later seq: exactly the chunks from there on.
    let first = got.data.len() as u64 / 2;
    let tail: Vec<u8> = got.data[first as usize..].iter().flat_map(|(_, _, d)| d.iter().copied()).collect();
    let from_middle = c.attach("done", AttachFrom { seq: first, offset: 0 }).await.expect("attach");
    let later = collect_with(from_middle, LONG, |_| {}).await;
    let later_bytes: Vec<u8> = later.data.iter().flat_map(|(_, _, d)| d.iter().copied()).collect();
    assert_eq!(later_bytes, tail);
}

#[tokio::test]
async fn every_line_arrives_once_and_in_order_across_a_nats_server_restart() {
    let mut nats = Nats::start().await;
    let (agent, c) = agent_and_client(&nats, &[]).await;
    c.exec_start(start_sh("numbers", "for i in $(seq 1 300); do echo $i; sleep 0.02; done"))
        .await
        .expect("exec_start");
    let stream = c.attach("numbers", AttachFrom::default()).await.expect("attach");
    let (seen_tx, mut seen_rx) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(collect_with(stream, LONG, move |got| {
        seen_tx.send_replace(got.data.len());
    }));
    seen_rx.wait_for(|n| *n >= 20).await.expect("output before the restart");
    nats.restart().await;
    let got = reader.await.expect("reader");
    let expected: Vec<String> = (1..=300).map(|i| i.to_string()).collect();
    assert_eq!(lines(&got.stdout()), expected, "agent log:\n{}", agent.log());
    assert!(got.gaps.is_empty());
    assert_eq!(got.state().exit_code, 0);
}

#[tokio::test]
async fn a_slow_reader_of_200_mib_loses_nothing_and_the_agent_memory_stays_bounded() {
    let nats = Nats::start().await;
    let (agent, c) = agent_and_client(&nats, &["--exec-spill", "16M"]).await;
    const TOTAL: usize = 200 << 20;
    let pattern = b"0123456789abcde\n";
    // `yes` writes the 16-byte line as fast as the pipe takes it.
    let script = format!("yes 0123456789abcde | head -c {TOTAL}");
    c.exec_start(start_sh("flood", &script)).await.expect("exec_start");
    let mut stream = c.attach("flood", AttachFrom::default()).await.expect("attach");
    let (mut total, mut mismatch, mut chunks) = (0usize, None, 0u64);
    use futures::StreamExt;
    loop {
        let event = tokio::time::timeout(LONG, stream.next()).await.expect("progress").expect("event");
        match event.expect("ok") {
            tether_client::OutputEvent::Data { data, .. } => {
                for (i, b) in data.iter().enumerate() {
                    if *b != pattern[(total + i) % 16] && mismatch.is_none() {
                        mismatch = Some(total + i);
                    }
                }
                total += data.len();
                chunks += 1;
                if chunks.is_multiple_of(8) {
                    // The slow reader.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            tether_client::OutputEvent::Gap { bytes } => panic!("a live reader lost {bytes} bytes"),
            tether_client::OutputEvent::End(state) => {
                assert_eq!(state.exit_code, 0, "{state:?}");
                assert_eq!(state.stdout_bytes, TOTAL as u64);
                break;
            }
        }
    }
    assert_eq!(total, TOTAL);
    assert_eq!(mismatch, None, "every byte in order");
    let peak = status_field(agent.proc.pid(), "VmHWM").unwrap_or(0);
    assert!(peak > 0 && peak < 160 * 1024, "agent peak RSS {peak} KiB for 200 MiB streamed");
}

#[tokio::test]
async fn output_past_the_spill_cap_is_dropped_and_announced_with_its_byte_count() {
    let nats = Nats::start().await;
    let (agent, c) = agent_and_client(&nats, &["--exec-spill", "4M"]).await;
    const TOTAL: u64 = 40 << 20;
    // Nobody is attached while it runs: past 8 MiB in memory and 4 MiB on disk it must drop.
    c.exec_start(start_sh("outrun", &format!("head -c {TOTAL} /dev/zero"))).await.expect("exec_start");
    let state = c.exec_wait("outrun").await.expect("wait");
    assert_eq!((state.exit_code, state.stdout_bytes), (0, TOTAL), "{state:?}");
    assert!(state.dropped_bytes > 0, "{state:?}");
    let got = collect(&c, "outrun", LONG).await;
    assert_eq!(got.gaps.len(), 1, "one gap, announced before the kept output");
    let kept = got.stdout().len() as u64;
    assert_eq!(got.gaps[0], state.dropped_bytes);
    assert_eq!(got.gaps[0] + kept, TOTAL, "the gap's byte count is exact");
    assert!(kept >= 8 << 20, "at least the memory share is kept: {kept}");
    let spill = agent.state_dir.join("exec/spill");
    let on_disk: u64 = walk_size(&spill);
    assert!(on_disk <= 4 << 20, "the spill files stay within their cap: {on_disk}");
}

fn walk_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => walk_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
