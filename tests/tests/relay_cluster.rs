//! Relay replicas paired through NATS: three real replicas sharing one real nats-server behind
//! a round-robin balancer with no affinity, a real agent streaming terminals through the
//! balancer, and viewers (the client library's reconnecting viewer) on other replicas than the
//! producer. Replicas are killed mid-stream to prove nothing is lost or repeated.

use std::time::Duration;

use tether_proto::pb;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_proto::token::ViewerMode;
use tether_tests::relay::*;
use tether_tests::relay_cluster::RelayCluster;
use tether_tests::*;

const WITHIN: Duration = Duration::from_secs(30);

async fn stack(extra: &[&str]) -> (RelayCluster, Nats, Agent) {
    let nats = Nats::start().await;
    let cluster = RelayCluster::start(&nats, 3, extra).await;
    let opts = AgentOpts { relay_url: Some(cluster.proxy.stream_url()), ..AgentOpts::default() };
    let agent = Agent::start_with(&nats, opts).await;
    (cluster, nats, agent)
}

async fn open_pty(agent: &Agent, command: &[&str]) -> pb::StreamChannel {
    let req =
        pb::PtyOpenRequest { command: command.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    match agent.call(Op::PtyOpen(req)).await {
        Ok(Reply::PtyOpen(r)) => r.channel.expect("channel"),
        other => panic!("pty_open failed: {other:?}\nagent log:\n{}", agent.log()),
    }
}

fn lines(seen: &Seen) -> Vec<String> {
    seen.text().split(['\r', '\n']).filter(|l| l.starts_with('L')).map(str::to_owned).collect()
}

fn numbered(n: u32) -> Vec<String> {
    (1..=n).map(|i| format!("L{i}")).collect()
}

const PRINT_3000: &str = "sleep 1; i=1; while [ $i -le 3000 ]; do echo L$i; i=$((i+1)); sleep 0.001; done";

#[tokio::test]
async fn viewers_on_other_replicas_see_identical_bytes_and_their_keys_reach_the_pty() {
    let (cluster, _nats, agent) = stack(&[]).await;
    let channel = open_pty(&agent, &["sh"]).await;
    let owner = cluster.owner().await;
    let others: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    let url = |i: usize| cluster.replicas[i].stream_url();
    let mut typist =
        watch_url(&url(others[0]), &channel, &claims_for(&channel, "typist", ViewerMode::View)).await;
    let mut second =
        watch_url(&url(others[1]), &channel, &claims_for(&channel, "second", ViewerMode::View)).await;

    typist
        .send("echo typed-$((40+2)); i=1; while [ $i -le 300 ]; do echo L$i; i=$((i+1)); done; exit\n")
        .await;
    let (mut a, mut b) = (Seen::default(), Seen::default());
    collect_until(&mut typist, &mut a, WITHIN, |_| false).await;
    collect_until(&mut second, &mut b, WITHIN, |_| false).await;
    assert!(shows_line(&a.text(), "typed-42"), "the remote viewer's keys reached the PTY:\n{}", a.text());
    assert_eq!(a.closed.as_ref().map(|c| c.0), Some(pb::StreamCloseReason::ProcessExit), "{:?}", a.closed);
    assert_eq!(lines(&a), numbered(300));
    assert!(a.bytes == b.bytes, "both remote viewers saw byte-identical output");
    let remote =
        cluster.replicas[others[0]].metric("tether_relay_cluster_forwarded_bytes_total{dir=\"in\"}").await;
    assert!(remote > 0, "the output crossed NATS");
    let served =
        cluster.replicas[owner].metric("tether_relay_cluster_forwarded_bytes_total{dir=\"out\"}").await;
    assert!(served >= remote, "the owner forwarded it");
}

#[tokio::test]
async fn killing_the_producers_replica_loses_and_repeats_nothing() {
    let (mut cluster, _nats, agent) = stack(&[]).await;
    let channel = open_pty(&agent, &["sh", "-c", PRINT_3000]).await;
    let owner = cluster.owner().await;
    let others: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    let mut viewers = Vec::new();
    for (n, i) in others.iter().enumerate() {
        let claims = claims_for(&channel, &format!("v{n}"), ViewerMode::View);
        viewers
            .push((watch_url(&cluster.replicas[*i].stream_url(), &channel, &claims).await, Seen::default()));
    }
    for (viewer, seen) in &mut viewers {
        collect_until(viewer, seen, WITHIN, |s| shows_line(&s.text(), "L300")).await;
        assert!(!shows_line(&seen.text(), "L3000"), "the loop must still be running when the replica dies");
    }
    cluster.replicas[owner].kill().await;

    for (viewer, seen) in &mut viewers {
        collect_until(viewer, seen, Duration::from_secs(90), |_| false).await;
        let (reason, message) = seen.closed.clone().expect("closed");
        assert_eq!(reason, pb::StreamCloseReason::ProcessExit, "{message}");
        assert_eq!(lines(seen), numbered(3000), "every line exactly once, in order");
    }
    assert!(agent.log().contains("reconnecting"), "the agent's pump reconnected:\n{}", agent.log());
}

#[tokio::test]
async fn killing_a_viewers_replica_makes_it_resume_elsewhere_from_its_cursor() {
    let (mut cluster, _nats, agent) = stack(&[]).await;
    let channel = open_pty(&agent, &["sh", "-c", PRINT_3000]).await;
    let owner = cluster.owner().await;
    // Through the balancer, as a viewer out there would connect.
    let claims = claims_for(&channel, "v", ViewerMode::View);
    let mut viewer = watch_url(&cluster.proxy.stream_url(), &channel, &claims).await;
    let mut seen = Seen::default();
    collect_until(&mut viewer, &mut seen, WITHIN, |s| shows_line(&s.text(), "L300")).await;
    // The replica the viewer landed on: the one serving a remote viewer, or the owner itself.
    let mut on = owner;
    for i in (0..3).filter(|i| *i != owner) {
        if cluster.replicas[i].metric("tether_relay_cluster_remote_viewers ").await > 0 {
            on = i;
        }
    }
    assert_ne!(on, owner, "round robin put the viewer on another replica than the producer");
    cluster.replicas[on].kill().await;

    collect_until(&mut viewer, &mut seen, Duration::from_secs(90), |_| false).await;
    let (reason, message) = seen.closed.clone().expect("closed");
    assert_eq!(reason, pb::StreamCloseReason::ProcessExit, "{message}");
    assert_eq!(lines(&seen), numbered(3000), "every line exactly once, in order");
}

#[tokio::test]
async fn a_slow_remote_viewer_does_not_hold_up_the_others_and_memory_stays_bounded() {
    let (cluster, _nats, agent) = stack(&["--stall-grace", "1s", "--viewer-queue-bytes", "256KiB"]).await;
    // About 20 MiB: more than loopback socket buffers hold for a viewer that never reads.
    let script = "sleep 1; seq 1 2500000; echo L-done";
    let channel = open_pty(&agent, &["sh", "-c", script]).await;
    let owner = cluster.owner().await;
    let others: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    // A viewer that opens and then never reads, on one replica...
    let url = |i: usize| {
        let addr = cluster.replicas[i].addr;
        format!(
            "ws://{addr}/stream?ws={}&agent={}&port={}&channel={}",
            channel.workspace_id, channel.agent_id, channel.port, channel.channel_id
        )
    };
    let stalled_claims = claims_for(&channel, "stalled", ViewerMode::View);
    let open = tether_proto::frame::Frame::Open(pb::StreamOpen {
        channel: Some(channel.clone()),
        role: pb::StreamRole::Client as i32,
        token: viewer_token(&stalled_claims),
        resume_from_seq: 0,
    });
    let (mut stalled, ack) = tether_tests::relay::open(&url(others[0]), open).await;
    assert!(ack.accepted);
    // ...and one that reads, on another.
    let claims = claims_for(&channel, "fast", ViewerMode::View);
    let mut fast = watch_url(&cluster.replicas[others[1]].stream_url(), &channel, &claims).await;
    let mut seen = Seen::default();
    collect_until(&mut fast, &mut seen, Duration::from_secs(120), |s| shows_line(&s.tail(64), "L-done"))
        .await;
    assert!(shows_line(&seen.text(), "2500000"), "the fast viewer got everything");
    for (i, kib) in cluster.rss_kib().iter().enumerate() {
        assert!(*kib < 100 << 10, "replica {i} holds {kib} KiB");
    }
    // The stalled viewer, reading at last: a clean prefix of the output, then its end (a close
    // to resume from, or the socket closed): it was let go, not waited for.
    let mut next = 0;
    let mut got = 0usize;
    loop {
        match recv(&mut stalled).await {
            Some(tether_proto::frame::Frame::Data(f)) => {
                assert_eq!(f.seq, next, "no hole before the end");
                next += 1;
                got += f.data.len();
            }
            Some(tether_proto::frame::Frame::Close(c)) => {
                assert_eq!(c.reason, pb::StreamCloseReason::TransportError as i32, "{c:?}");
                break;
            }
            None => break,
            other => panic!("expected data or a close, got {other:?}"),
        }
    }
    assert!(got < seen.bytes.len(), "the stalled viewer was let go before the end ({got} bytes)");
}

#[tokio::test]
async fn healthz_says_unhealthy_while_nats_is_unreachable() {
    let mut nats = Nats::start().await;
    let cluster = RelayCluster::start(&nats, 1, &[]).await;
    let replica = &cluster.replicas[0];
    assert_eq!(replica.get("/healthz").await.0, 200);
    assert_eq!(replica.metric("tether_relay_cluster_nats_connected ").await, 1);
    nats.stop();
    let mut unhealthy = false;
    for _ in 0..100 {
        if replica.get("/healthz").await.0 == 503 {
            unhealthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unhealthy, "no 503 while NATS was down");
    nats.restart().await;
    let mut healthy = false;
    for _ in 0..300 {
        if replica.get("/healthz").await.0 == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "healthy again once NATS is back");
}

/// With fake peers: the producer's viewer count includes viewers on other replicas, and a
/// spectator token's input is dropped across the hop as on one relay.
#[tokio::test]
async fn presence_counts_remote_viewers_and_a_remote_spectator_cannot_type() {
    let nats = Nats::start().await;
    let cluster = RelayCluster::start(&nats, 3, &[]).await;
    let ch = "remote-presence";
    let (mut producer_ws, _) = producer(&cluster.replicas[0], ch, 0).await;
    let spectator =
        tether_proto::token::ViewerClaims { read_only: true, ..viewer_claims("spectator", ViewerMode::View) };
    let (mut watcher, _) = viewer(&cluster.replicas[1], ch, &spectator, 0).await;
    let (mut typist, _) =
        viewer(&cluster.replicas[2], ch, &viewer_claims("typist", ViewerMode::View), 0).await;
    let mut viewers = 0;
    while viewers < 2 {
        match recv_any(&mut producer_ws).await {
            Some(tether_proto::frame::Frame::ViewerPresence(p)) => viewers = p.viewers,
            other => panic!("expected presence, got {other:?}"),
        }
    }
    send(&mut watcher, data(ch, 0, bytes::Bytes::from_static(b"spectator"))).await;
    send(&mut typist, data(ch, 0, bytes::Bytes::from_static(b"typist"))).await;
    match recv(&mut producer_ws).await {
        Some(tether_proto::frame::Frame::Data(f)) => {
            assert_eq!(&f.data[..], b"typist", "only the typist's input")
        }
        other => panic!("expected input, got {other:?}"),
    }
    send(&mut producer_ws, data(ch, 0, bytes::Bytes::from_static(b"out"))).await;
    for v in [&mut watcher, &mut typist] {
        assert_eq!(recv_data(v, 1).await[0].1, bytes::Bytes::from_static(b"out"));
    }
    // The spectator's input crossed on its own link: wait (bounded) for the owner to drop it.
    let mut dropped = 0;
    for _ in 0..100 {
        dropped = cluster.replicas[0].metric("tether_relay_input_dropped_total{reason=\"spectator\"}").await;
        if dropped > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dropped, 1, "the owner dropped the spectator's input");
    drop(typist);
    while viewers != 1 {
        if let Some(tether_proto::frame::Frame::ViewerPresence(p)) = recv_any(&mut producer_ws).await {
            viewers = p.viewers;
        }
    }
}
