//! Limits (issue 20, item 9), end to end through NATS against the real agent: a write at
//! max_payload and a read whose reply would exceed it, 100 000 entries in one directory listed
//! in pages, a 4 GiB sparse file read in ranges, a command printing forever under a timeout and
//! a fork bomb under the process cap, all while a pinger measures the agent. Every request gets
//! a typed reply, the agent keeps answering (ping p99 printed) and its memory stays bounded
//! (peak RSS printed; a generous bound asserted — not a speed target).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_tests::watch::{ProcStats, percentile};
use tether_tests::{Agent, AgentOpts, KillAllIn, Nats, error_code, exec_reply, op, pb};

const ENTRIES: usize = 100_000;
/// The agent's RSS may not pass this during the test (it idles near 10 MiB).
const RSS_BOUND_MIB: u64 = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_stays_responsive_and_bounded_at_its_limits() {
    let nats = Nats::start().await;
    let opts = AgentOpts { args: vec!["--max-processes=64".into()], ..Default::default() };
    let agent = Arc::new(Agent::start_with(&nats, opts).await);
    let _cleanup = KillAllIn(agent.root.clone());
    let pid = agent.proc.pid();
    let idle = ProcStats::of(pid).expect("agent stats");

    // The pinger and the memory sampler run through everything below.
    let stop = Arc::new(AtomicBool::new(false));
    let pinger = {
        let (agent, stop) = (agent.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut rtts, mut peak_kib) = (Vec::new(), 0u64);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let pong = agent.call(op::ping(n)).await;
                assert!(matches!(pong, Ok(Reply::Ping(_))), "ping {n}: {pong:?}");
                rtts.push(sent.elapsed());
                peak_kib = peak_kib.max(ProcStats::of(pid).map_or(0, |s| s.rss_kib));
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (rtts, peak_kib)
        })
    };

    // A write whose request is exactly max_payload bytes is taken; a read whose reply would
    // not fit is refused with PAYLOAD_TOO_LARGE, not cut short.
    let max = nats.client().await.server_info().max_payload;
    let mut content = vec![7u8; max];
    loop {
        let req = pb::ControlRequest {
            request_id: "at-max".into(),
            op: Some(op::write("at-max", &content)),
            ..Default::default()
        };
        let len = req.encoded_len();
        if len == max {
            let resp = agent.request_raw(req.encode_to_vec()).await;
            assert!(resp.error.is_none(), "a request of exactly max_payload: {:?}", resp.error);
            break;
        }
        content.truncate(content.len() - (len - max).max(1).min(content.len()));
    }
    std::fs::write(agent.root.join("big"), vec![1u8; 2 * max]).expect("big");
    let err = agent.call(op::read("big")).await.expect_err("a reply over max_payload");
    assert_eq!(error_code(&err), pb::ErrorCode::PayloadTooLarge, "{err:?}");

    // 100 000 entries in one directory, listed in pages.
    let dir = agent.root.join("many");
    std::fs::create_dir(&dir).expect("many");
    for i in 0..ENTRIES {
        std::fs::File::create(dir.join(format!("e{i:06}"))).expect("entry");
    }
    let (mut seen, mut pages, mut after) = (0usize, 0, String::new());
    loop {
        let req = pb::TreeManifestRequest { root: "many".into(), after: after.clone(), ..Default::default() };
        let page = match agent.call(Op::TreeManifest(req)).await {
            Ok(Reply::TreeManifest(m)) => m,
            other => panic!("manifest page {pages}: {other:?}"),
        };
        seen += page.entries.len();
        pages += 1;
        assert!(pages < 10_000, "paging does not advance");
        if page.next_after.is_empty() {
            break;
        }
        after = page.next_after;
    }
    assert_eq!(seen, ENTRIES, "every entry once over {pages} pages");
    let list =
        agent.call(Op::FsList(pb::FsListRequest { path: "many".into(), recursive: false, max_entries: 0 }));
    match list.await {
        Ok(Reply::FsList(l)) => assert!(l.truncated && !l.entries.is_empty() && l.entries.len() < ENTRIES),
        other => panic!("fs_list of 100 000 entries: {other:?}"),
    }
    std::fs::remove_dir_all(&dir).expect("remove many");

    // A 4 GiB sparse file read in ranges.
    let sparse = std::fs::File::create(agent.root.join("sparse")).expect("sparse");
    sparse.set_len(4 << 30).expect("4 GiB sparse");
    for offset in [0u64, 1 << 30, (2 << 30) + 12345, (4 << 30) - (128 << 10)] {
        let req = pb::FsReadRequest { path: "sparse".into(), offset, length: 128 << 10 };
        match agent.call(Op::FsRead(req)).await {
            Ok(Reply::FsRead(r)) => {
                assert_eq!(r.total_size, 4 << 30);
                assert_eq!(r.content.len(), 128 << 10, "at {offset}");
                assert!(r.content.iter().all(|&b| b == 0));
            }
            other => panic!("range at {offset}: {other:?}"),
        }
    }

    // Output forever under a timeout, and a fork bomb under the process cap, at once.
    let forever = agent.call(Op::Exec(pb::ExecRequest { timeout_ms: 2000, ..op::exec(&["yes", "forever"]) }));
    let bomb =
        agent.call(Op::Exec(pb::ExecRequest { timeout_ms: 2000, ..op::sh("b(){ b|b& }; b; exec sleep 60") }));
    let (forever, bomb) = tokio::join!(forever, bomb);
    let forever = exec_reply("yes under a timeout", &agent, forever);
    assert!(forever.timed_out && forever.stdout_truncated, "{forever:?}");
    assert!(forever.stdout.len() < max, "the output was cut to fit");
    assert!(exec_reply("the bomb", &agent, bomb).timed_out);

    stop.store(true, Ordering::Relaxed);
    let (mut rtts, peak_kib) = pinger.await.expect("pinger");
    let end = ProcStats::of(pid).expect("agent stats");
    let (p50, p99) = (percentile(&mut rtts, 50), percentile(&mut rtts, 99));
    println!(
        "limits: {} pings, p50 {p50:?}, p99 {p99:?}, max {:?}; agent idle {idle}; peak RSS {:.1} MiB; end {end}",
        rtts.len(),
        rtts.last().copied().unwrap_or_default(),
        peak_kib as f64 / 1024.0
    );
    assert!(peak_kib < RSS_BOUND_MIB << 10, "the agent's RSS reached {peak_kib} KiB");
}
