//! Unit tests of the channel state machine: seq per direction, replay, renumbering, slow
//! viewers, gaps, floors and input rules, without sockets.

use super::*;
use tether_proto::token::ViewerMode;

const P: ConnId = 1;
const V1: ConnId = 10;
const V2: ConnId = 11;

fn limits() -> Limits {
    Limits {
        ring_bytes: 1 << 20,
        viewer_queue_bytes: 1 << 20,
        unclaimed_input_bytes: 1 << 20,
        waits_per_token: 4,
        probe_timeout: std::time::Duration::from_secs(1),
    }
}

fn chan(port: u32) -> ChannelState {
    ChannelState::new("c", port, limits(), Instant::now())
}

fn grant(id: &str, mode: ViewerMode) -> ViewerGrant {
    ViewerGrant {
        identity: id.into(),
        holder: format!("w/{id}"),
        lease_epoch: 1,
        authority_epoch: None,
        mode,
        read_only: false,
    }
}

fn data(seq: u64, body: &[u8]) -> Bytes {
    Frame::Data(pb::StreamFrame {
        channel_id: "c".into(),
        seq,
        data: Bytes::copy_from_slice(body),
        produced_at_ms: 0,
        delta: false,
    })
    .encode()
}

fn input(seq: u64, body: &[u8]) -> Input {
    Input::Data(pb::StreamFrame {
        channel_id: "x".into(),
        seq,
        data: Bytes::copy_from_slice(body),
        produced_at_ms: 0,
        delta: false,
    })
}

fn resize(cols: u32) -> Input {
    Input::Resize(Frame::PtyResize(pb::PtyResize { cols, rows: 24 }).encode())
}

/// Data frames as (seq, data), tags of other messages, and the close that ended the stream.
type Drained = (Vec<(u64, Vec<u8>)>, Vec<u8>, Option<pb::StreamClose>);

/// Drains everything queued for `conn`: (seq, data) of frames, tags of other messages, and the
/// close that ended it if any.
fn drain(c: &mut ChannelState, conn: ConnId, m: &Metrics) -> Drained {
    let (mut frames, mut tags) = (Vec::new(), Vec::new());
    loop {
        let next = if conn == P || conn == P + 100 {
            c.next_for_producer(conn, 64, m)
        } else {
            c.next_for_viewer(conn, 64, m)
        };
        match next {
            Next::Idle => return (frames, tags, None),
            Next::Close(close) => return (frames, tags, Some(close)),
            Next::Ping => {}
            Next::Send(batch) => {
                for msg in batch {
                    match Frame::decode(msg).unwrap() {
                        Frame::Data(f) => frames.push((f.seq, f.data.to_vec())),
                        other => tags.push(other.tag()),
                    }
                }
            }
        }
    }
}

fn seqs(frames: &[(u64, Vec<u8>)]) -> Vec<u64> {
    frames.iter().map(|(s, _)| *s).collect()
}

#[test]
fn every_viewer_gets_every_frame_and_late_joiners_get_the_replay() {
    let m = Metrics::default();
    let mut c = chan(7681);
    assert_eq!(c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap(), 0);
    assert_eq!(c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 0, &m).unwrap(), 0);
    for seq in 0..3 {
        c.producer_frame(P, seq, false, data(seq, b"out"), &m);
    }
    assert_eq!(seqs(&drain(&mut c, V1, &m).0), [0, 1, 2]);
    // A second viewer joining later asks from 1 and gets 1, 2 replayed, then live frames.
    assert_eq!(
        c.join_viewer(V2, pb::StreamKind::Unspecified, grant("s/b", ViewerMode::View), 1, &m).unwrap(),
        1
    );
    c.producer_frame(P, 3, false, data(3, b"live"), &m);
    assert_eq!(seqs(&drain(&mut c, V2, &m).0), [1, 2, 3]);
    assert_eq!(seqs(&drain(&mut c, V1, &m).0), [3]);
    let text = m.render(Default::default());
    assert!(text.contains("tether_relay_replayed_frames_total{direction=\"agent_to_viewer\"} 2"), "{text}");
}

#[test]
fn producer_resend_after_reconnect_is_deduplicated() {
    let m = Metrics::default();
    let mut c = chan(7681);
    c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    c.producer_frame(P, 0, false, data(0, b"a"), &m);
    c.producer_frame(P, 1, false, data(1, b"b"), &m);
    c.leave(P, Instant::now());
    // The relay tells the returning producer it has everything below 2.
    assert_eq!(c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap(), 2);
    for seq in 1..4 {
        c.producer_frame(P, seq, false, data(seq, b"x"), &m);
    }
    assert_eq!(seqs(&drain(&mut c, V1, &m).0), [0, 1, 2, 3]);
    assert_eq!(c.down.head_pos(), 4, "the resent frame 1 was not stored twice");
    assert!(
        m.render(Default::default())
            .contains("tether_relay_duplicate_frames_total{direction=\"agent_to_viewer\"} 1")
    );
}

#[test]
fn viewer_input_is_merged_onto_one_sequence_and_repeats_are_dropped() {
    let m = Metrics::default();
    let mut c = chan(7681);
    c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    c.join_viewer(V2, pb::StreamKind::Pty, grant("s/b", ViewerMode::Control), 0, &m).unwrap();
    c.viewer_input(V1, input(0, b"a0"), &m);
    c.viewer_input(V2, input(0, b"b0"), &m);
    c.viewer_input(V1, input(1, b"a1"), &m);
    let (frames, _, _) = drain(&mut c, P, &m);
    assert_eq!(frames, [(0, b"a0".to_vec()), (1, b"b0".to_vec()), (2, b"a1".to_vec())]);
    // V1 resumes (resume_from_seq > 0) and resends its last frame: dropped as a repeat.
    c.leave(V1, Instant::now());
    c.join_viewer(V1 + 5, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 3, &m).unwrap();
    c.viewer_input(V1 + 5, input(1, b"a1"), &m);
    c.viewer_input(V1 + 5, input(2, b"a2"), &m);
    assert_eq!(drain(&mut c, P, &m).0, [(3, b"a2".to_vec())]);
    // A fresh instance of the same viewer (resume_from_seq 0) starts its own seq over.
    c.join_viewer(V1 + 6, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    c.viewer_input(V1 + 6, input(0, b"new"), &m);
    assert_eq!(drain(&mut c, P, &m).0, [(4, b"new".to_vec())]);
    assert!(m.render(Default::default()).contains("tether_relay_input_dropped_total{reason=\"repeat\"} 1"));
}

#[test]
fn returning_producer_gets_input_it_missed_exactly_once() {
    let m = Metrics::default();
    let mut c = chan(7681);
    c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    c.viewer_input(V1, input(0, b"0"), &m);
    c.viewer_input(V1, input(1, b"1"), &m);
    assert_eq!(seqs(&drain(&mut c, P, &m).0), [0, 1]);
    c.leave(P, Instant::now());
    c.viewer_input(V1, input(2, b"2"), &m); // buffered while the producer is away
    c.viewer_input(V1, resize(100), &m); // live-only, remembered
    // The producer had received only seq 0 before its socket died.
    c.join_producer(P + 100, pb::StreamKind::Pty, 1, &m).unwrap();
    let (frames, tags, _) = drain(&mut c, P + 100, &m);
    assert_eq!(seqs(&frames), [1, 2]);
    assert_eq!(tags, [Frame::TAG_VIEWER_PRESENCE, Frame::TAG_PTY_RESIZE], "last resize re-sent once");
}

#[test]
fn input_without_a_producer_is_held_only_up_to_its_cap() {
    let m = Metrics::default();
    let mut c =
        ChannelState::new("c", 7681, Limits { unclaimed_input_bytes: 100, ..limits() }, Instant::now());
    c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    let mut typed = 0;
    while c.viewer_may_send() {
        c.viewer_input(V1, input(typed, &[b'k'; 30]), &m);
        typed += 1;
        assert!(typed < 10, "the cap never stopped the viewer");
    }
    assert!(c.holds_unclaimed_input());
    assert!(c.unclaimed_input() >= 100 && c.unclaimed_input() < 100 + 60, "{}", c.unclaimed_input());
    // A producer takes it all; the viewer may type again.
    c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    assert_eq!(drain(&mut c, P, &m).0.len() as u64, typed);
    assert!(c.viewer_may_send() && c.unclaimed_input() == 0);
    // Gone again: what it took does not count, only what came after.
    c.leave(P, Instant::now());
    assert!(c.viewer_may_send());
    c.viewer_input(V1, input(typed, &[b'k'; 30]), &m);
    assert_eq!(
        c.unclaimed_input(),
        Frame::Data(pb::StreamFrame {
            channel_id: "c".into(),
            seq: typed,
            data: Bytes::from_static(&[b'k'; 30]),
            produced_at_ms: 0,
            delta: false,
        })
        .encode()
        .len() as u64
    );
}

#[test]
fn a_producer_is_probed_and_answers_with_any_message() {
    let m = Metrics::default();
    let mut c = chan(7681);
    assert_eq!(c.request_probe(), None, "no producer, nothing to probe");
    c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    let (conn, heard) = c.request_probe().unwrap();
    assert_eq!(conn, P);
    assert_eq!(c.next_for_producer(P, 64, &m), Next::Ping, "its writer pings first");
    assert!(!c.probe_settled(P, heard));
    assert!(c.heard_from_producer(P), "a waiting probe is told");
    assert!(c.producer_answered(P, heard) && c.probe_settled(P, heard));
    assert!(!c.heard_from_producer(P), "nobody waits any more");
    // A producer that left settles the probe without answering it.
    let (_, heard) = c.request_probe().unwrap();
    c.leave(P, Instant::now());
    assert!(c.probe_settled(P, heard) && !c.producer_answered(P, heard));
}

#[test]
fn input_buffered_before_the_first_producer_is_numbered_from_its_cursor() {
    // A restarted relay knows nothing; a viewer types before the agent re-registers.
    let m = Metrics::default();
    let mut c = chan(7681);
    c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    c.viewer_input(V1, input(0, b"x"), &m);
    c.viewer_input(V1, input(1, b"y"), &m);
    c.join_producer(P, pb::StreamKind::Pty, 50, &m).unwrap();
    c.viewer_input(V1, input(2, b"z"), &m);
    assert_eq!(seqs(&drain(&mut c, P, &m).0), [50, 51, 52]);
}

#[test]
fn a_viewer_that_stops_reading_holds_the_producer_only_until_the_grace_then_goes() {
    let m = Metrics::default();
    let mut c = ChannelState::new(
        "c",
        7681,
        Limits { ring_bytes: 1 << 20, viewer_queue_bytes: 1000, ..limits() },
        Instant::now(),
    );
    c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    c.join_viewer(V1, pb::StreamKind::Pty, grant("s/fast", ViewerMode::View), 0, &m).unwrap();
    c.join_viewer(V2, pb::StreamKind::Pty, grant("s/slow", ViewerMode::View), 0, &m).unwrap();
    let mut got = Vec::new();
    let mut seq = 0;
    while c.producer_may_read() {
        c.producer_frame(P, seq, false, data(seq, &[b'x'; 90]), &m);
        got.extend(seqs(&drain(&mut c, V1, &m).0));
        seq += 1;
    }
    assert!((8..15).contains(&seq), "held once the slow queue is full, after {seq} frames");
    // The stall grace ran out: only the viewer that still has a full queue goes.
    c.kick_stalled(&m);
    assert_eq!(c.counts(), (1, 1));
    assert!(c.producer_may_read());
    for s in seq..seq + 30 {
        c.producer_frame(P, s, false, data(s, &[b'x'; 90]), &m);
        got.extend(seqs(&drain(&mut c, V1, &m).0));
    }
    assert_eq!(got, (0..seq + 30).collect::<Vec<_>>(), "the fast viewer lost nothing");
    let (_, _, close) = drain(&mut c, V2, &m);
    assert_eq!(close.expect("slow viewer closed").reason, pb::StreamCloseReason::TransportError as i32);
    // It resumes from its cursor, still held by the ring: no gap.
    c.leave(V2, Instant::now());
    assert_eq!(c.join_viewer(V2, pb::StreamKind::Pty, grant("s/slow", ViewerMode::View), 0, &m).unwrap(), 0);
    assert_eq!(seqs(&drain(&mut c, V2, &m).0), (0..seq + 30).collect::<Vec<_>>());
    assert!(m.render(Default::default()).contains("tether_relay_slow_viewer_disconnects_total 1"));
}

#[test]
fn a_reading_viewer_paces_the_producer_and_is_never_dropped() {
    let m = Metrics::default();
    let mut c = ChannelState::new(
        "c",
        7681,
        Limits { ring_bytes: 1 << 20, viewer_queue_bytes: 1000, ..limits() },
        Instant::now(),
    );
    c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    let mut seq = 0;
    while c.producer_may_read() {
        c.producer_frame(P, seq, false, data(seq, &[b'x'; 90]), &m);
        seq += 1;
    }
    // Reading frees the producer again; the grace never ran out, so nobody was dropped.
    assert_eq!(drain(&mut c, V1, &m).0.len() as u64, seq);
    assert!(c.producer_may_read());
    assert_eq!(c.counts(), (1, 1));
    // A late joiner replaying old frames does not hold the producer back.
    c.join_viewer(V2, pb::StreamKind::Pty, grant("s/b", ViewerMode::View), 0, &m).unwrap();
    assert!(c.producer_may_read());
}

#[test]
fn resume_after_ring_overflow_announces_the_gap() {
    let m = Metrics::default();
    let mut c = ChannelState::new(
        "c",
        7681,
        Limits { ring_bytes: 500, viewer_queue_bytes: 100, ..limits() },
        Instant::now(),
    );
    c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    for seq in 0..20 {
        c.producer_frame(P, seq, false, data(seq, &[b'x'; 90]), &m);
    }
    let ack = c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 3, &m).unwrap();
    assert!(ack > 3, "ack {ack} must say where the stream really resumes");
    let got = seqs(&drain(&mut c, V1, &m).0);
    assert_eq!(got, (ack..20).collect::<Vec<_>>());
    assert!(m.render(Default::default()).contains("tether_relay_resume_gaps_total 1"));
}

#[test]
fn a_hole_is_never_fed_to_a_viewer() {
    let m = Metrics::default();
    let mut c = chan(7681);
    c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    c.producer_frame(P, 0, false, data(0, b"a"), &m);
    c.producer_frame(P, 5, false, data(5, b"f"), &m); // the agent lost 1..4
    let (frames, _, close) = drain(&mut c, V1, &m);
    assert_eq!(seqs(&frames), [0]);
    assert_eq!(close.unwrap().reason, pb::StreamCloseReason::TransportError as i32);
    c.leave(V1, Instant::now());
    assert_eq!(c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 1, &m).unwrap(), 5);
    assert_eq!(seqs(&drain(&mut c, V1, &m).0), [5]);
}

#[test]
fn a_viewer_ahead_of_a_restarted_relay_gets_only_what_it_lacks() {
    let m = Metrics::default();
    let mut c = chan(7681);
    assert_eq!(c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 5, &m).unwrap(), 5);
    assert_eq!(c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap(), 0);
    for seq in 3..8 {
        c.producer_frame(P, seq, false, data(seq, b"r"), &m);
    }
    assert_eq!(seqs(&drain(&mut c, V1, &m).0), [5, 6, 7]);
}

#[test]
fn epoch_floors_reject_older_viewers_and_fence_connected_ones() {
    let m = Metrics::default();
    let mut c = chan(7681);
    let g = |lease, auth| ViewerGrant {
        lease_epoch: lease,
        authority_epoch: auth,
        ..grant("s/a", ViewerMode::View)
    };
    c.join_viewer(V1, pb::StreamKind::Pty, g(2, Some(1)), 0, &m).unwrap();
    c.join_viewer(V2, pb::StreamKind::Pty, g(3, None), 0, &m).unwrap();
    let (_, _, close) = drain(&mut c, V1, &m);
    assert_eq!(close.unwrap().reason, pb::StreamCloseReason::Fenced as i32);
    assert_eq!(
        c.join_viewer(20, pb::StreamKind::Pty, g(2, None), 0, &m).unwrap_err().reason,
        RejectReason::StaleEpoch
    );
    c.join_viewer(21, pb::StreamKind::Pty, g(3, Some(7)), 0, &m).unwrap();
    assert_eq!(
        c.join_viewer(22, pb::StreamKind::Pty, g(4, Some(6)), 0, &m).unwrap_err().reason,
        RejectReason::StaleEpoch
    );
    // No authorityEpoch claim: checked against the lease floor only.
    c.join_viewer(23, pb::StreamKind::Pty, g(3, None), 0, &m).unwrap();
}

#[test]
fn input_rules_follow_mode_read_only_and_channel_kind() {
    let m = Metrics::default();
    let mut pty = chan(7681);
    pty.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    let spectator = ViewerGrant { read_only: true, ..grant("s/spec", ViewerMode::Control) };
    pty.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    pty.join_viewer(V2, pb::StreamKind::Pty, spectator, 0, &m).unwrap();
    pty.viewer_input(V1, input(0, b"ls\n"), &m);
    pty.viewer_input(V1, resize(90), &m);
    pty.viewer_input(V1, Input::Desktop(Bytes::from_static(b"\x05")), &m);
    pty.viewer_input(V2, input(0, b"rm -rf /\n"), &m);
    pty.viewer_input(V2, resize(10), &m);
    let (frames, tags, _) = drain(&mut pty, P, &m);
    assert_eq!(frames, [(0, b"ls\n".to_vec())], "a view token types on a terminal");
    assert_eq!(tags, [Frame::TAG_VIEWER_PRESENCE, Frame::TAG_PTY_RESIZE]);

    let mut desk = chan(6080);
    desk.join_producer(P, pb::StreamKind::Desktop, 0, &m).unwrap();
    desk.join_viewer(V1, pb::StreamKind::Desktop, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    desk.join_viewer(V2, pb::StreamKind::Desktop, grant("s/b", ViewerMode::Control), 0, &m).unwrap();
    let click = Bytes::from_static(b"\x05\x0a\x01c");
    desk.viewer_input(V1, Input::Desktop(click.clone()), &m);
    desk.viewer_input(V1, input(0, b"text"), &m);
    desk.viewer_input(V2, Input::Desktop(click.clone()), &m);
    desk.viewer_input(V2, input(0, b"text"), &m);
    let (frames, _, _) = drain(&mut desk, P, &m);
    assert_eq!(seqs(&frames), [0], "only the control viewer's frame");
    let text = m.render(Default::default());
    assert!(text.contains("tether_relay_input_dropped_total{reason=\"spectator\"} 2"), "{text}");
    assert!(text.contains("tether_relay_input_dropped_total{reason=\"view_mode\"} 3"), "{text}");
}

#[test]
fn producer_close_reaches_every_viewer_after_the_buffer() {
    let m = Metrics::default();
    let mut c = chan(7681);
    c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    c.producer_frame(P, 0, false, data(0, b"bye"), &m);
    let close = pb::StreamClose {
        channel_id: String::new(),
        reason: pb::StreamCloseReason::ProcessExit as i32,
        message: "exit 0".into(),
    };
    c.producer_close(P, close);
    let (frames, _, close) = drain(&mut c, V1, &m);
    assert_eq!(seqs(&frames), [0]);
    let close = close.unwrap();
    assert_eq!((close.reason, close.channel_id.as_str()), (pb::StreamCloseReason::ProcessExit as i32, "c"));
    // A late viewer still gets the buffered output and the close.
    c.join_viewer(V2, pb::StreamKind::Pty, grant("s/b", ViewerMode::View), 0, &m).unwrap();
    let (frames, _, close) = drain(&mut c, V2, &m);
    assert_eq!((seqs(&frames), close.is_some()), (vec![0], true));
    assert_eq!(
        c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap_err().reason,
        RejectReason::ChannelEnded
    );
}

#[test]
fn a_new_producer_connection_replaces_the_old_one() {
    let m = Metrics::default();
    let mut c = chan(7681);
    c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    c.join_producer(P + 100, pb::StreamKind::Pty, 0, &m).unwrap();
    assert_eq!(drain(&mut c, P, &m).2.unwrap().reason, pb::StreamCloseReason::TransportError as i32);
    // Frames of the replaced connection are ignored.
    c.producer_frame(P, 0, false, data(0, b"stale"), &m);
    assert!(c.down.is_empty());
    assert_eq!(
        c.join_producer(7, pb::StreamKind::Desktop, 0, &m).unwrap_err().reason,
        RejectReason::KindMismatch
    );
}

#[test]
fn idle_since_tracks_the_last_peer() {
    let m = Metrics::default();
    let mut c = chan(7681);
    assert!(c.idle_since().is_some());
    c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    c.leave(P, Instant::now());
    assert!(c.idle_since().is_none());
    c.leave(V1, Instant::now());
    assert!(c.idle_since().is_some());
}

#[test]
fn viewers_waiting_on_a_channel_without_producer_are_released_after_the_timeout() {
    let m = Metrics::default();
    let t0 = Instant::now();
    let after = std::time::Duration::from_secs(60);
    let mut c = ChannelState::new("c", 7681, limits(), t0);
    c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    assert_eq!(c.release_orphans(t0 + after / 2, after, &m), 0, "not yet");
    c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    assert_eq!(c.release_orphans(t0 + after * 2, after, &m), 0, "a producer is attached");
    c.leave(P, t0 + after * 2);
    assert_eq!(c.release_orphans(t0 + after * 2 + after / 2, after, &m), 0, "the producer only just left");
    assert_eq!(c.release_orphans(t0 + after * 3, after, &m), 1);
    let (_, _, close) = drain(&mut c, V1, &m);
    assert_eq!(close.map(|c| c.reason), Some(pb::StreamCloseReason::Normal as i32));
    assert!(m.render(Default::default()).contains("tether_relay_orphaned_viewers_total 1"));
}

/// The ViewerPresence counts queued for the producer `conn`, in order.
fn presence(c: &mut ChannelState, conn: ConnId, m: &Metrics) -> Vec<u32> {
    let mut counts = Vec::new();
    while let Next::Send(batch) = c.next_for_producer(conn, 64, m) {
        for msg in batch {
            if let Ok(Frame::ViewerPresence(p)) = Frame::decode(msg) {
                assert_eq!(p.channel_id, "c");
                counts.push(p.viewers);
            }
        }
    }
    counts
}

#[test]
fn the_producer_hears_the_viewer_count_after_its_ack_and_on_every_change() {
    let m = Metrics::default();
    let mut c = chan(7681);
    c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    assert_eq!(presence(&mut c, P, &m), [1], "told first, with the viewer already there");
    assert!(presence(&mut c, P, &m).is_empty(), "nothing changed: nothing more");
    c.join_viewer(V2, pb::StreamKind::Pty, grant("s/b", ViewerMode::View), 0, &m).unwrap();
    assert_eq!(presence(&mut c, P, &m), [2]);
    c.leave(V1, Instant::now());
    assert_eq!(presence(&mut c, P, &m), [1]);
    // A viewer with a newer epoch fences V2 (kicked) and joins: still one, nothing to tell.
    let newer = ViewerGrant { lease_epoch: 2, ..grant("s/c", ViewerMode::View) };
    c.join_viewer(V2 + 1, pb::StreamKind::Pty, newer, 0, &m).unwrap();
    assert!(presence(&mut c, P, &m).is_empty());
    c.leave(V2 + 1, Instant::now());
    assert_eq!(presence(&mut c, P, &m), [0], "the last viewer left");
    // A returning producer connection is told afresh.
    c.leave(P, Instant::now());
    c.join_producer(P + 100, pb::StreamKind::Pty, 0, &m).unwrap();
    assert_eq!(presence(&mut c, P + 100, &m), [0]);
}

#[test]
fn a_stalled_viewer_kicked_for_slowness_no_longer_counts() {
    let m = Metrics::default();
    let mut c = ChannelState::new(
        "c",
        7681,
        Limits { ring_bytes: 1 << 20, viewer_queue_bytes: 8, ..limits() },
        Instant::now(),
    );
    c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    assert_eq!(presence(&mut c, P, &m), [1]);
    c.producer_frame(P, 0, false, data(0, b"more than eight bytes"), &m);
    c.kick_stalled(&m);
    assert_eq!(presence(&mut c, P, &m), [0]);
}

#[test]
fn a_seq_of_u64_max_is_a_protocol_error_of_the_peer_that_sent_it() {
    let m = Metrics::default();
    let mut c = chan(7681);
    c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    c.join_viewer(V2, pb::StreamKind::Pty, grant("s/b", ViewerMode::View), 0, &m).unwrap();
    // A viewer's own seq: the viewer goes, its frame is not forwarded, the channel goes on.
    c.viewer_input(V1, input(u64::MAX, b"boom"), &m);
    assert!(c.is_kicked(V1));
    c.viewer_input(V2, input(0, b"ok"), &m);
    assert_eq!(drain(&mut c, P, &m).0, [(0, b"ok".to_vec())]);
    // The producer's seq: the producer goes, nothing is stored.
    c.producer_frame(P, u64::MAX, false, data(u64::MAX, b"boom"), &m);
    assert!(c.is_kicked(P));
    assert!(c.down.is_empty());
    let close = drain(&mut c, P, &m).2.expect("the producer is closed");
    assert_eq!(close.reason, pb::StreamCloseReason::TransportError as i32);
    assert!(close.message.contains("protocol error"), "{}", close.message);
    // A producer announcing the last viewer-to-agent seq there is cannot take input.
    c.join_producer(P + 100, pb::StreamKind::Pty, u64::MAX, &m).unwrap();
    c.viewer_input(V2, input(1, b"x"), &m);
    assert!(c.is_kicked(P + 100));
    let text = m.render(Default::default());
    assert!(text.contains("tether_relay_protocol_violations_total 3"), "{text}");
}

#[test]
fn a_desktop_channel_holds_only_the_newest_frame_and_a_late_or_slow_viewer_skips_to_it() {
    let m = Metrics::default();
    let mut c = chan(6080);
    c.join_producer(P, pb::StreamKind::Desktop, 0, &m).unwrap();
    for seq in 0..5 {
        c.producer_frame(P, seq, false, data(seq, &[seq as u8; 40]), &m);
    }
    // A viewer joining (from 0) or resuming (from 2) gets the newest whole image, not the stale.
    assert_eq!(c.join_viewer(V1, pb::StreamKind::Desktop, grant("s/a", ViewerMode::View), 0, &m).unwrap(), 4);
    assert_eq!(c.join_viewer(V2, pb::StreamKind::Desktop, grant("s/b", ViewerMode::View), 2, &m).unwrap(), 4);
    assert_eq!(drain(&mut c, V1, &m).0, [(4, vec![4u8; 40])]);
    // V2 reads nothing while five more frames arrive: it is neither kicked nor holding up the
    // producer, and then takes only the newest.
    for seq in 5..10 {
        assert!(c.producer_may_read(), "a lagging desktop viewer must not stall the producer");
        c.producer_frame(P, seq, false, data(seq, b"frame"), &m);
    }
    c.kick_stalled(&m);
    let (frames, _, close) = drain(&mut c, V2, &m);
    assert_eq!((seqs(&frames), close), (vec![9], None));
    assert_eq!(seqs(&drain(&mut c, V1, &m).0), [9]);
    assert!(c.down.held_bytes() < 2 * data(9, b"frame").len(), "one frame held, not the history");
}

#[test]
fn a_desktop_channel_keeps_the_newest_whole_frame_and_the_deltas_after_it() {
    let m = Metrics::default();
    let mut c = chan(6080);
    let view = |id: &str| grant(id, ViewerMode::View);
    c.join_producer(P, pb::StreamKind::Desktop, 0, &m).unwrap();
    // Key 0, deltas 1..=3: all held, a new viewer gets them all in order.
    for seq in 0..4 {
        c.producer_frame(P, seq, seq > 0, data(seq, &[seq as u8; 20]), &m);
    }
    assert_eq!(c.join_viewer(V1, pb::StreamKind::Desktop, view("s/a"), 0, &m).unwrap(), 0);
    assert_eq!(seqs(&drain(&mut c, V1, &m).0), [0, 1, 2, 3]);
    // A new key frame makes the older frames stale; deltas after it are held again.
    for seq in 4..7 {
        c.producer_frame(P, seq, seq > 4, data(seq, &[seq as u8; 20]), &m);
    }
    assert_eq!(c.down.first_pos(), 4, "frames before the newest key are gone");
    assert_eq!(c.join_viewer(V2, pb::StreamKind::Desktop, view("s/b"), 0, &m).unwrap(), 4);
    assert_eq!(seqs(&drain(&mut c, V2, &m).0), [4, 5, 6], "a new viewer: the key, then its deltas");
    // Resuming inside the held run continues from there; from before it, at the key.
    c.join_viewer(V2 + 1, pb::StreamKind::Desktop, view("s/c"), 6, &m).unwrap();
    assert_eq!(seqs(&drain(&mut c, V2 + 1, &m).0), [6]);
    assert_eq!(c.join_viewer(V2 + 2, pb::StreamKind::Desktop, view("s/d"), 2, &m).unwrap(), 4);
    assert_eq!(seqs(&drain(&mut c, V2 + 2, &m).0), [4, 5, 6]);
    // V1 stops reading at seq 3 while a key and deltas pass: it skips to the newest key, never
    // to a delta whose base it lacks.
    for seq in 7..10 {
        c.producer_frame(P, seq, seq != 8, data(seq, b"frame"), &m);
    }
    assert_eq!(seqs(&drain(&mut c, V1, &m).0), [8, 9]);
    c.producer_frame(P, 10, true, data(10, b"frame"), &m);
    assert_eq!(seqs(&drain(&mut c, V2, &m).0), [8, 9, 10]);
    c.producer_frame(P, 11, true, data(11, b"frame"), &m);
    assert_eq!(seqs(&drain(&mut c, V2, &m).0), [11], "a reader in step gets every delta");
}

#[test]
fn a_desktop_viewer_never_starts_on_a_delta_whose_key_the_byte_cap_evicted() {
    let m = Metrics::default();
    let mut c = ChannelState::new("c", 6080, Limits { ring_bytes: 300, ..limits() }, Instant::now());
    c.join_producer(P, pb::StreamKind::Desktop, 0, &m).unwrap();
    c.producer_frame(P, 0, false, data(0, &[0; 150]), &m);
    for seq in 1..6 {
        c.producer_frame(P, seq, true, data(seq, &[1; 40]), &m);
    }
    assert!(c.down.first_pos() > 0 && c.down.held_bytes() <= 300, "the cap still holds");
    c.join_viewer(V1, pb::StreamKind::Desktop, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    assert!(drain(&mut c, V1, &m).0.is_empty(), "deltas without their key are not sent");
    c.producer_frame(P, 6, true, data(6, &[1; 40]), &m);
    assert!(drain(&mut c, V1, &m).0.is_empty());
    c.producer_frame(P, 7, false, data(7, &[7; 100]), &m);
    c.producer_frame(P, 8, true, data(8, &[8; 10]), &m);
    assert_eq!(seqs(&drain(&mut c, V1, &m).0), [7, 8]);
}

#[test]
fn a_terminal_channel_still_replays_every_frame_and_kicks_a_viewer_it_evicted() {
    let m = Metrics::default();
    let mut c = ChannelState::new("c", 7681, Limits { ring_bytes: 200, ..limits() }, Instant::now());
    c.join_producer(P, pb::StreamKind::Pty, 0, &m).unwrap();
    c.join_viewer(V1, pb::StreamKind::Pty, grant("s/a", ViewerMode::View), 0, &m).unwrap();
    for seq in 0..20 {
        c.producer_frame(P, seq, false, data(seq, b"0123456789"), &m);
    }
    let (frames, _, close) = drain(&mut c, V1, &m);
    assert!(frames.is_empty() && close.is_some(), "a terminal viewer is never fed a stream with holes");
}
