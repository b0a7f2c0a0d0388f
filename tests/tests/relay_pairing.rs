//! A fake agent and fake viewers pair through the real relay: data flows both ways, every
//! viewer sees the same bytes, input rules hold, and SIGTERM closes every stream politely.

use bytes::Bytes;
use tether_proto::frame::Frame;
use tether_proto::pb;
use tether_proto::token::{ViewerClaims, ViewerMode};
use tether_tests::relay::*;

#[tokio::test]
async fn producer_and_viewer_pair_and_data_flows_both_ways() {
    let relay = Relay::start(&[]).await;
    assert_eq!(relay.get("/healthz").await, (200, "ok".to_owned()));

    let (mut agent, agent_ack) = producer(&relay, "pty-1", 0).await;
    assert_eq!(agent_ack, 0, "a new channel expects the agent's seq 0");
    let (mut view, view_ack) = viewer(&relay, "pty-1", &viewer_claims("v1", ViewerMode::View), 0).await;
    assert_eq!(view_ack, 0);

    for (seq, text) in ["$ ", "hello\r\n", "$ "].iter().enumerate() {
        send(&mut agent, data("pty-1", seq as u64, Bytes::from_static(text.as_bytes()))).await;
    }
    let got = recv_data(&mut view, 3).await;
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(got[1].1, Bytes::from_static(b"hello\r\n"));

    send(&mut view, data("pty-1", 0, Bytes::from_static(b"ls\n"))).await;
    send(&mut view, Frame::PtyResize(pb::PtyResize { cols: 120, rows: 40 })).await;
    match recv(&mut agent).await {
        Some(Frame::Data(f)) => {
            assert_eq!((f.seq, f.data.as_ref(), f.channel_id.as_str()), (0, &b"ls\n"[..], "pty-1"))
        }
        other => panic!("agent expected input, got {other:?}"),
    }
    assert_eq!(recv(&mut agent).await, Some(Frame::PtyResize(pb::PtyResize { cols: 120, rows: 40 })));

    assert_eq!(relay.metric("tether_relay_opens_accepted_total{role=\"agent\"}").await, 1);
    assert_eq!(relay.metric("tether_relay_opens_accepted_total{role=\"viewer\"}").await, 1);
    assert_eq!(relay.metric("tether_relay_frames_received_total{direction=\"agent_to_viewer\"}").await, 3);
    assert_eq!(relay.metric("tether_relay_channels").await, 1);
    assert_eq!(relay.metric("tether_relay_viewers").await, 1);
}

#[tokio::test]
async fn two_viewers_get_byte_identical_output() {
    let relay = Relay::start(&[]).await;
    let (mut agent, _) = producer(&relay, "pty-2", 0).await;
    let (mut a, _) = viewer(&relay, "pty-2", &viewer_claims("a", ViewerMode::View), 0).await;
    let (mut b, _) = viewer(&relay, "pty-2", &viewer_claims("b", ViewerMode::Control), 0).await;
    let mut sent = Vec::new();
    for seq in 0..300u64 {
        let body: Vec<u8> = (0..(seq % 97 + 1)).map(|i| (seq * 31 + i) as u8).collect();
        sent.extend_from_slice(&body);
        send(&mut agent, data("pty-2", seq, body)).await;
    }
    let collect = |frames: Vec<(u64, Bytes)>| -> Vec<u8> {
        assert!(frames.iter().enumerate().all(|(i, (s, _))| *s == i as u64), "in order, no holes");
        frames.into_iter().flat_map(|(_, d)| d.to_vec()).collect()
    };
    let got_a = collect(recv_data(&mut a, 300).await);
    let got_b = collect(recv_data(&mut b, 300).await);
    assert_eq!(got_a, sent);
    assert_eq!(got_b, sent);
}

#[tokio::test]
async fn a_view_token_types_on_a_terminal_but_a_spectator_cannot() {
    let relay = Relay::start(&[]).await;
    let (mut agent, _) = producer(&relay, "pty-3", 0).await;
    let spectator = ViewerClaims { read_only: true, ..viewer_claims("spec", ViewerMode::Control) };
    let (mut spec, _) = viewer(&relay, "pty-3", &spectator, 0).await;
    let (mut typist, _) = viewer(&relay, "pty-3", &viewer_claims("typist", ViewerMode::View), 0).await;

    send(&mut spec, data("pty-3", 0, Bytes::from_static(b"rm -rf ~\n"))).await;
    send(&mut spec, Frame::PtyResize(pb::PtyResize { cols: 1, rows: 1 })).await;
    // Wait until the relay has dropped both, so the order below proves nothing slipped through.
    for _ in 0..100 {
        if relay.metric("tether_relay_input_dropped_total{reason=\"spectator\"}").await == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(relay.metric("tether_relay_input_dropped_total{reason=\"spectator\"}").await, 2);
    send(&mut typist, data("pty-3", 0, Bytes::from_static(b"echo hi\n"))).await;
    match recv(&mut agent).await {
        Some(Frame::Data(f)) => assert_eq!((f.seq, f.data.as_ref()), (0, &b"echo hi\n"[..])),
        other => panic!("the agent should get the view token's typing first, got {other:?}"),
    }
    // Both still watch.
    send(&mut agent, data("pty-3", 0, Bytes::from_static(b"hi\r\n"))).await;
    assert_eq!(recv_data(&mut spec, 1).await[0].1, Bytes::from_static(b"hi\r\n"));
    assert_eq!(recv_data(&mut typist, 1).await[0].1, Bytes::from_static(b"hi\r\n"));
}

#[tokio::test]
async fn sigterm_closes_every_peer_with_stream_close() {
    let relay = Relay::start(&[]).await;
    let (mut agent, _) = producer(&relay, "pty-4", 0).await;
    let (mut view, _) = viewer(&relay, "pty-4", &viewer_claims("v", ViewerMode::View), 0).await;
    let log_before = relay.log.clone();
    let status = relay.terminate().await;
    assert!(status.success(), "clean exit, got {status}");
    for ws in [&mut agent, &mut view] {
        match recv(ws).await {
            Some(Frame::Close(c)) => {
                assert_eq!(c.reason, pb::StreamCloseReason::TransportError as i32);
                assert_eq!(c.channel_id, "pty-4");
            }
            other => panic!("expected StreamClose before the socket closed, got {other:?}"),
        }
    }
    let log = log_before.lock().unwrap().join("\n");
    assert!(log.contains("listening on"));
    for secret in [PRODUCER_SECRET, VIEWER_SECRET] {
        assert!(!log.contains(secret), "secret leaked into the log");
    }
    assert!(!log.contains(&producer_token()[4..30]), "token leaked into the log");
}

#[tokio::test]
async fn producer_close_reaches_viewers_late_viewers_get_the_buffer_and_idle_channels_are_reaped() {
    let relay = Relay::start(&["--reap-after", "300ms"]).await;
    let (mut agent, _) = producer(&relay, "pty-5", 0).await;
    let (mut early, _) = viewer(&relay, "pty-5", &viewer_claims("early", ViewerMode::View), 0).await;
    for seq in 0..3 {
        send(&mut agent, data("pty-5", seq, Bytes::from(format!("out {seq}")))).await;
    }
    let exit = pb::StreamClose {
        channel_id: "pty-5".into(),
        reason: pb::StreamCloseReason::ProcessExit as i32,
        message: "exit status 0".into(),
    };
    send(&mut agent, Frame::Close(exit.clone())).await;
    assert!(recv(&mut agent).await.is_none(), "the relay closes the producer's socket");

    assert_eq!(recv_data(&mut early, 3).await.len(), 3);
    assert_eq!(recv(&mut early).await, Some(Frame::Close(exit.clone())));
    // The producer is gone but the channel is not reaped while a viewer is attached.
    let (mut late, _) = viewer(&relay, "pty-5", &viewer_claims("late", ViewerMode::View), 0).await;
    let got = recv_data(&mut late, 3).await;
    assert_eq!(got[2].1, Bytes::from_static(b"out 2"));
    assert_eq!(recv(&mut late).await, Some(Frame::Close(exit)));
    drop((early, late));

    for _ in 0..100 {
        if relay.metric("tether_relay_channels_reaped_total").await == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(relay.metric("tether_relay_channels_reaped_total").await, 1);
    assert_eq!(relay.metric("tether_relay_channels").await, 0);
}

/// The next ViewerPresence count the producer gets, skipping anything else it is sent.
async fn next_presence(agent: &mut Ws) -> u32 {
    loop {
        match recv_any(agent).await {
            Some(Frame::ViewerPresence(p)) => return p.viewers,
            Some(_) => continue,
            None => panic!("the producer's socket closed while waiting for a ViewerPresence"),
        }
    }
}

#[tokio::test]
async fn the_producer_is_told_how_many_viewers_watch_as_they_come_and_go() {
    let relay = Relay::start(&[]).await;
    let (mut early, _) = viewer(&relay, "pty-who", &viewer_claims("early", ViewerMode::View), 0).await;
    let (mut agent, _) = producer(&relay, "pty-who", 0).await;
    match recv_any(&mut agent).await {
        Some(Frame::ViewerPresence(p)) => assert_eq!(p.viewers, 1),
        other => panic!("the viewer count is the first thing after the OpenAck, got {other:?}"),
    }
    let (second, _) = viewer(&relay, "pty-who", &viewer_claims("second", ViewerMode::View), 0).await;
    assert_eq!(next_presence(&mut agent).await, 2);
    drop(second);
    assert_eq!(next_presence(&mut agent).await, 1, "a viewer that goes away is counted out");
    // A viewer with a newer lease epoch fences the older one: the relay kicks it.
    let newer = ViewerClaims { lease_epoch: 2, ..viewer_claims("newer", ViewerMode::View) };
    let (newer, _) = viewer(&relay, "pty-who", &newer, 0).await;
    // recv_any: a viewer is never sent the count (only producers are).
    match recv_any(&mut early).await {
        Some(Frame::Close(c)) => assert_eq!(c.reason, pb::StreamCloseReason::Fenced as i32),
        other => panic!("the older viewer expected a FENCED close and nothing else, got {other:?}"),
    }
    drop(newer);
    // The fenced viewer was counted out as the newer one came in: at most one at any time.
    let mut counts = vec![next_presence(&mut agent).await];
    while counts.last() != Some(&0) {
        counts.push(next_presence(&mut agent).await);
    }
    assert!(counts.iter().all(|&n| n <= 1), "one viewer at a time after the fence: {counts:?}");
}
