//! Delivery without silent loss through the real relay: a relay restart mid-stream, a viewer
//! too slow to keep up, and a resume from further back than the ring holds.

use std::time::Duration;

use bytes::Bytes;
use tether_proto::frame::Frame;
use tether_proto::pb;
use tether_proto::token::ViewerMode;
use tether_tests::relay::*;

fn seqs(frames: &[(u64, Bytes)]) -> Vec<u64> {
    frames.iter().map(|(s, _)| *s).collect()
}

#[tokio::test]
async fn relay_restart_mid_stream_loses_and_repeats_nothing() {
    let mut relay = Relay::start(&[]).await;
    let ch = "pty-restart";
    let claims = viewer_claims("v", ViewerMode::View);
    // The fake agent keeps everything it produced, like the real one keeps a resend buffer.
    let produced: Vec<Frame> = (0..51u64).map(|s| data(ch, s, format!("line {s}\r\n"))).collect();

    let (mut agent, ack) = producer(&relay, ch, 0).await;
    assert_eq!(ack, 0);
    let (mut view, _) = viewer(&relay, ch, &claims, 0).await;
    for f in &produced[..40] {
        send(&mut agent, f.clone()).await;
    }
    // The viewer has processed 0..=29 when the relay dies.
    let mut got = recv_data(&mut view, 30).await;
    send(&mut view, data(ch, 0, Bytes::from_static(b"a"))).await;
    send(&mut view, data(ch, 1, Bytes::from_static(b"b"))).await;
    for want in [0, 1] {
        match recv(&mut agent).await {
            Some(Frame::Data(f)) => assert_eq!(f.seq, want),
            other => panic!("agent expected input {want}, got {other:?}"),
        }
    }

    relay.kill_and_restart().await;
    drop((agent, view));

    // The viewer comes back first, from its cursor, and types while the agent is still away.
    let (mut view, ack) = viewer(&relay, ch, &claims, 30).await;
    assert_eq!(ack, 30, "nothing is buffered yet, so the stream resumes where the viewer asked");
    send(&mut view, data(ch, 2, Bytes::from_static(b"c"))).await;

    // The agent re-registers with its input cursor (it has seq 0 and 1); the fresh relay expects
    // its output from 0, so it resends what its own buffer still holds (10..40) and goes on.
    let (mut agent, ack) = producer(&relay, ch, 2).await;
    assert_eq!(ack, 0, "a restarted relay knows no frames");
    for f in &produced[10..] {
        send(&mut agent, f.clone()).await;
    }
    got.extend(recv_data(&mut view, 21).await);
    assert_eq!(seqs(&got), (0..51).collect::<Vec<_>>(), "every frame exactly once, in order");
    for (seq, body) in &got {
        assert_eq!(body, &Bytes::from(format!("line {seq}\r\n")));
    }
    match recv(&mut agent).await {
        Some(Frame::Data(f)) => {
            assert_eq!((f.seq, f.data.as_ref()), (2, &b"c"[..]), "input continues the agent's seq")
        }
        other => panic!("agent expected the input typed while it was away, got {other:?}"),
    }
    // Nothing more is pending for the viewer: the next frame it sees is the next one produced.
    send(&mut agent, data(ch, 51, Bytes::from_static(b"end"))).await;
    assert_eq!(seqs(&recv_data(&mut view, 1).await), [51]);
}

/// Reads data frames until the one whose body is `END`; returns their seqs in arrival order.
async fn read_until_end(ws: &mut Ws) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        match recv(ws).await {
            Some(Frame::Data(f)) => {
                seqs.push(f.seq);
                if f.data.as_ref() == END {
                    return seqs;
                }
            }
            other => panic!("expected data, got {other:?}"),
        }
    }
}

const END: &[u8] = b"END";
/// The slow-viewer test's producing phase takes a few stall graces (2 s) when the relay works.
const PRODUCE_WITHIN: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_slow_viewer_is_disconnected_while_a_fast_one_keeps_everything() {
    let relay = Relay::start(&[
        "--viewer-queue-bytes",
        "256KiB",
        "--ring-bytes",
        "192MiB",
        "--stall-grace",
        "2s",
        "--shutdown-grace",
        "30s",
    ])
    .await;
    let ch = "pty-slow";
    let body = Bytes::from(vec![b'x'; 32 << 10]);
    let (mut agent, _) = producer(&relay, ch, 0).await;
    let (mut fast, _) = viewer(&relay, ch, &viewer_claims("fast", ViewerMode::View), 0).await;
    let (mut slow, _) = viewer(&relay, ch, &viewer_claims("slow", ViewerMode::View), 0).await;
    let reader = tokio::spawn(async move { read_until_end(&mut fast).await });

    // Produce until the relay gives up on the viewer that does not read: once its socket
    // buffers and queue are full it holds the producer back for the stall grace, then goes.
    // If the relay never gave up on it, a send would block for good on the held-back producer
    // socket: the whole phase has a deadline, so that regression fails instead of hanging.
    let slow_metric = "tether_relay_slow_viewer_disconnects_total";
    let produce = async {
        let mut seq = 0;
        while seq < 4096 {
            send(&mut agent, data(ch, seq, body.clone())).await;
            seq += 1;
            if seq % 64 == 0 && relay.metric(slow_metric).await > 0 {
                break;
            }
        }
        for _ in 0..64 {
            send(&mut agent, data(ch, seq, body.clone())).await;
            seq += 1;
        }
        send(&mut agent, data(ch, seq, Bytes::from_static(END))).await;
        seq
    };
    let seq = tokio::time::timeout(PRODUCE_WITHIN, produce).await.unwrap_or_else(|_| {
        panic!("the producer was held back for {PRODUCE_WITHIN:?}: the slow viewer was never disconnected")
    });
    let n = seq + 1;
    assert_eq!(reader.await.unwrap(), (0..n).collect::<Vec<_>>(), "the fast viewer got everything");
    assert_eq!(relay.metric(slow_metric).await, 1);

    // The slow viewer finally reads: a clean prefix, then TRANSPORT_ERROR; never a hole.
    let mut next = 0;
    let close = loop {
        match recv(&mut slow).await {
            Some(Frame::Data(f)) => {
                assert_eq!(f.seq, next, "no hole before the close");
                next += 1;
            }
            Some(Frame::Close(c)) => break c,
            other => panic!("expected data or StreamClose, got {other:?}"),
        }
    };
    assert_eq!(close.reason, pb::StreamCloseReason::TransportError as i32, "{}", close.message);
    eprintln!("slow viewer cut off after {next} of {n} frames");
    assert!(next < n, "the slow viewer was cut off before the end");

    // It resumes from its cursor and gets the rest, exactly once.
    let (mut slow, ack) = viewer(&relay, ch, &viewer_claims("slow", ViewerMode::View), next).await;
    assert_eq!(ack, next, "the ring still holds the cursor: no gap");
    assert_eq!(read_until_end(&mut slow).await, (next..n).collect::<Vec<_>>());
}

#[tokio::test]
async fn resume_after_ring_overflow_announces_the_gap() {
    let relay = Relay::start(&["--ring-bytes", "64KiB"]).await;
    let ch = "pty-overflow";
    let (mut agent, _) = producer(&relay, ch, 0).await;
    for seq in 0..100u64 {
        send(&mut agent, data(ch, seq, Bytes::from(vec![b'y'; 4096]))).await;
    }
    let received = "tether_relay_frames_received_total{direction=\"agent_to_viewer\"}";
    for _ in 0..200 {
        if relay.metric(received).await == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(relay.metric(received).await, 100);

    let (mut view, ack) = viewer(&relay, ch, &viewer_claims("late", ViewerMode::View), 0).await;
    assert!(ack > 0 && ack < 100, "the ack says the stream resumes at {ack}, not at 0");
    let got = recv_data(&mut view, (100 - ack) as usize).await;
    assert_eq!(seqs(&got), (ack..100).collect::<Vec<_>>());
    assert_eq!(relay.metric("tether_relay_resume_gaps_total").await, 1);
    send(&mut agent, data(ch, 100, Bytes::from_static(b"live"))).await;
    assert_eq!(seqs(&recv_data(&mut view, 1).await), [100]);
}

#[tokio::test]
async fn a_producer_over_the_rate_limit_is_slowed_not_dropped() {
    let relay = Relay::start(&["--producer-rate", "32KiB"]).await;
    let ch = "pty-fast";
    let (mut agent, _) = producer(&relay, ch, 0).await;
    let (mut view, _) = viewer(&relay, ch, &viewer_claims("v", ViewerMode::View), 0).await;
    let frames = 24u64;
    let body = Bytes::from(vec![b'x'; 4096]);
    let sender = tokio::spawn(async move {
        for seq in 0..frames {
            send(&mut agent, data(ch, seq, body.clone())).await;
        }
        agent
    });
    let got = recv_data(&mut view, frames as usize).await;
    assert_eq!(seqs(&got), (0..frames).collect::<Vec<_>>(), "every frame arrives, in order");
    let _agent = sender.await.unwrap();
    assert!(relay.metric("tether_relay_producer_throttled_total").await > 0, "the producer was held back");
}
