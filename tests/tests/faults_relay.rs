//! Relay faults (issue 20, item 4) against the real relay, with its memory read from /proc
//! and printed: 10 000 websocket connections that never send StreamOpen are cut by the
//! handshake timeout or refused at the pending cap, while a live channel keeps flowing; a
//! producer that floods past a viewer that stopped reading is held to its rate and the viewer
//! is disconnected (to resume) while another viewer gets everything; frames with absurd
//! lengths, seqs, tags or types close only their sender. The relay's memory stays bounded
//! throughout. (The behaviours alone are also in relay_load, relay_rejections and
//! relay_resume; these add the scale, the floods and the memory bound.)

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tether_proto::frame::Frame;
use tether_proto::pb;
use tether_proto::token::ViewerMode;
use tether_tests::relay::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{self, Message};

/// The test holds thousands of sockets: lift its open-file limit to the hard limit (the relay
/// it starts inherits it, and raises its own as well).
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(limit.rlim_cur >= 8192, "this test needs 8192 open files, the hard limit is {}", limit.rlim_cur);
}

async fn connect_from(source: Ipv4Addr, relay: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(relay).await
}

/// How a connection that never sent StreamOpen ended.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
enum Ending {
    /// Upgraded, then told `handshake_timeout` and closed.
    TimedOut,
    /// Refused before the upgrade with this HTTP status.
    Refused(u16),
    /// Anything else (a close without the ack, an error): what happened.
    Other(String),
}

/// Connects from `source`, upgrades to a websocket, never sends a frame, and waits (bounded)
/// for the relay to end it.
async fn silent_peer(source: Ipv4Addr, relay: SocketAddr, url: String) -> Ending {
    let stream = match connect_from(source, relay).await {
        Ok(stream) => stream,
        Err(e) => return Ending::Other(format!("connect: {e}")),
    };
    let mut ws = match tokio_tungstenite::client_async(url, stream).await {
        Ok((ws, _)) => ws,
        Err(tungstenite::Error::Http(response)) => return Ending::Refused(response.status().as_u16()),
        Err(e) => return Ending::Other(format!("upgrade: {e}")),
    };
    let mut timed_out = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Err(_) => return Ending::Other("still open after 30 s".into()),
            Ok(Some(Ok(Message::Binary(b)))) => match Frame::decode(b) {
                Ok(Frame::OpenAck(ack)) if !ack.accepted => {
                    let reason = ack.error.and_then(|e| e.detail.get("reason").cloned()).unwrap_or_default();
                    timed_out = reason == "handshake_timeout";
                }
                other => return Ending::Other(format!("unexpected {other:?}")),
            },
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                return if timed_out {
                    Ending::TimedOut
                } else {
                    Ending::Other("closed without an ack".into())
                };
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// A producer and a viewer of `channel`, paired, with one frame through.
async fn pair(relay: &Relay, channel: &str) -> (Ws, Ws) {
    let (mut agent, _) = producer(relay, channel, 0).await;
    let (mut view, _) = viewer(relay, channel, &viewer_claims("v", ViewerMode::View), 0).await;
    send(&mut agent, data(channel, 0, "hello")).await;
    assert_eq!(recv_data(&mut view, 1).await[0].1, "hello");
    (agent, view)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::test]
async fn ten_thousand_connections_that_never_open_are_cut_and_the_memory_stays_bounded() {
    const WAVES: usize = 5;
    const SOURCES: u8 = 80;
    const PER_SOURCE: usize = 25;
    raise_open_file_limit();
    let relay = Relay::start(&["--handshake-timeout", "1s"]).await;
    let (mut agent, mut view) = pair(&relay, "live").await;
    let (rss_before, _) = relay.memory_kib();
    let url = relay.url(tether_proto::PTY_PORT, "silent");
    let started = Instant::now();
    let mut endings = std::collections::BTreeMap::<Ending, usize>::new();
    for wave in 0..WAVES {
        // 2 000 at once from 80 addresses: under the per-address caps, over the global pending cap.
        let peers: Vec<_> = (0..SOURCES)
            .flat_map(|s| (0..PER_SOURCE).map(move |_| s))
            .map(|s| tokio::spawn(silent_peer(Ipv4Addr::new(127, 0, 1, 2 + s), relay.addr, url.clone())))
            .collect();
        // The live channel keeps flowing meanwhile.
        let seq = wave as u64 + 1;
        send(&mut agent, data("live", seq, format!("wave {wave}"))).await;
        assert_eq!(recv_data(&mut view, 1).await[0], (seq, Bytes::from(format!("wave {wave}"))));
        for peer in peers {
            *endings.entry(peer.await.expect("peer task")).or_insert(0) += 1;
        }
    }
    let took = started.elapsed();
    let (rss_after, peak) = relay.memory_kib();
    let total = WAVES * SOURCES as usize * PER_SOURCE;
    eprintln!(
        "relay, {total} connections that never open in {took:?}: {endings:?}; RSS {:.1} MiB before, \
         {:.1} MiB after, peak {:.1} MiB",
        mib(rss_before),
        mib(rss_after),
        mib(peak)
    );
    let others: Vec<_> = endings.keys().filter(|e| matches!(e, Ending::Other(_))).collect();
    assert!(others.is_empty(), "every silent connection is cut or refused: {others:?}");
    let timed_out = endings.get(&Ending::TimedOut).copied().unwrap_or(0);
    let refused = endings.get(&Ending::Refused(503)).copied().unwrap_or(0);
    assert_eq!(timed_out + refused, total, "{endings:?}");
    assert_eq!(relay.metric("tether_relay_handshake_timeouts_total").await, timed_out as u64);
    let pending_refused =
        relay.metric("tether_relay_opens_rejected_total{reason=\"too_many_pending\"}").await;
    assert_eq!(pending_refused, refused as u64, "the global pending cap (1024) held");
    assert!(peak - rss_before < 64 << 10, "the relay grew by {:.1} MiB", mib(peak - rss_before));
    // And it still pairs newcomers.
    pair(&relay, "after").await;
}

#[tokio::test]
async fn a_flooding_producer_past_a_stalled_viewer_is_held_to_its_rate_and_the_memory_stays_bounded() {
    const FRAME: usize = 64 << 10;
    const FRAMES: u64 = 2048; // 128 MiB
    let relay = Relay::start(&[
        "--ring-bytes",
        "4MiB",
        "--viewer-queue-bytes",
        "1MiB",
        "--stall-grace",
        "1s",
        "--producer-rate",
        "64MiB",
    ])
    .await;
    let ch = "flood";
    let (mut agent, _) = producer(&relay, ch, 0).await;
    let (mut fast, _) = viewer(&relay, ch, &viewer_claims("fast", ViewerMode::View), 0).await;
    let (stalled, _) = viewer(&relay, ch, &viewer_claims("stalled", ViewerMode::View), 0).await;
    let (rss_before, _) = relay.memory_kib();
    let reader = tokio::spawn(async move {
        let mut next = 0u64;
        while next < FRAMES {
            match recv(&mut fast).await {
                Some(Frame::Data(f)) => {
                    assert_eq!(f.seq, next, "the reading viewer gets every frame in order");
                    next += 1;
                }
                other => panic!("expected data, got {other:?}"),
            }
        }
        next
    });
    let body = Bytes::from(vec![b'f'; FRAME]);
    let started = Instant::now();
    let flood = async {
        for seq in 0..FRAMES {
            send(&mut agent, data(ch, seq, body.clone())).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), flood)
        .await
        .expect("the producer was never held for good");
    let sent_in = started.elapsed();
    assert_eq!(reader.await.expect("reader"), FRAMES);
    let (_, peak) = relay.memory_kib();
    let throttled = relay.metric("tether_relay_producer_throttled_total").await;
    let slow = relay.metric("tether_relay_slow_viewer_disconnects_total").await;
    eprintln!(
        "relay flood: {} MiB in {sent_in:?} ({:.0} MiB/s, rate limit 64 MiB/s), throttled {throttled} times, \
         {slow} stalled viewer cut; RSS {:.1} MiB before, peak {:.1} MiB",
        (FRAME as u64 * FRAMES) >> 20,
        (FRAME as u64 * FRAMES) as f64 / (1 << 20) as f64 / sent_in.as_secs_f64(),
        mib(rss_before),
        mib(peak)
    );
    assert!(throttled > 0, "the producer was held to its rate");
    assert_eq!(slow, 1, "the viewer that stopped reading was disconnected");
    assert!(
        peak - rss_before < 64 << 10,
        "128 MiB through a 4 MiB ring grew the relay by {:.1} MiB",
        mib(peak - rss_before)
    );
    drop(stalled);
}

/// Sends raw websocket bytes (a client frame, masked with a zero key) after the upgrade.
async fn raw_upgraded(relay: &Relay, channel: &str) -> TcpStream {
    let mut s = TcpStream::connect(relay.addr).await.expect("connect");
    let req = format!(
        "GET /stream?ws={WS}&agent={AGENT}&port={}&channel={channel} HTTP/1.1\r\nHost: relay\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        tether_proto::PTY_PORT
    );
    s.write_all(req.as_bytes()).await.expect("upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.expect("read the upgrade response"),
            1,
            "closed during the upgrade"
        );
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// Whether the relay closes `s` (bounded): reads until end of stream.
async fn closes(mut s: TcpStream) -> bool {
    let mut buf = vec![0u8; 4096];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.is_ok()
}

#[tokio::test]
async fn absurd_frames_close_only_their_sender() {
    let relay = Relay::start(&["--max-message-bytes", "1MiB"]).await;
    let (mut agent, mut view) = pair(&relay, "bystander").await;
    let (rss_before, _) = relay.memory_kib();

    // A websocket frame header announcing 2^63 - 1 bytes, and one announcing 2 MiB (over the
    // cap) followed by nothing: closed without waiting for (or allocating) the body.
    for len in [u64::MAX >> 1, 2 << 20] {
        let mut s = raw_upgraded(&relay, "absurd").await;
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 0]);
        s.write_all(&frame).await.expect("send the header");
        assert!(closes(s).await, "a frame of {len} bytes announced: the relay must close");
    }

    // A message over the cap, sent whole.
    let url = relay.url(tether_proto::PTY_PORT, "big");
    let mut ws = connect(&url).await;
    let _ = ws.send(Message::Binary(Bytes::from(vec![3u8; (1 << 20) + 1]))).await;
    let mut closed = false;
    for _ in 0..4 {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {
                closed = true;
                break;
            }
            Ok(Some(Ok(other))) => eprintln!("oversized message answered with {other:?}"),
            Err(_) => break,
        }
    }
    assert!(closed, "an oversized message closes its sender");

    // Garbage where a StreamOpen belongs: unknown tags, empty, text, truncated protobuf.
    for garbage in
        [vec![], vec![0xee, 1, 2, 3], vec![Frame::TAG_OPEN, 0xff, 0xff, 0xff], vec![Frame::TAG_DATA]]
    {
        let mut ws = connect(&url).await;
        ws.send(Message::Binary(Bytes::from(garbage.clone()))).await.expect("send");
        ws.send(Message::Text("not a frame".into())).await.expect("send");
        match recv_any(&mut ws).await {
            Some(Frame::OpenAck(ack)) => assert!(!ack.accepted, "{garbage:?} opened a stream"),
            None => {}
            other => panic!("{garbage:?}: {other:?}"),
        }
    }

    // A producer with absurd seqs: backwards and repeated ones are dropped as duplicates, a
    // jump sends the viewer to resume (and learn the gap), and u64::MAX (no seq after it)
    // closes the producer.
    let (mut p, _) = producer(&relay, "seqs", 0).await;
    let (mut v, _) = viewer(&relay, "seqs", &viewer_claims("v", ViewerMode::View), 0).await;
    for (seq, body) in [(0, "a"), (1, "b"), (0, "again"), (1, "again"), (1_000_000, "jump"), (5, "back")] {
        send(&mut p, data("seqs", seq, body)).await;
    }
    let got: Vec<(u64, Bytes)> = recv_data(&mut v, 2).await;
    assert_eq!(got, [(0, "a".into()), (1, "b".into())], "repeats and a step back are dropped");
    match recv(&mut v).await {
        Some(Frame::Close(c)) => assert_eq!(c.reason, pb::StreamCloseReason::TransportError as i32, "{c:?}"),
        other => panic!("a viewer behind a jump is sent to resume, got {other:?}"),
    }
    let (mut v, ack) = viewer(&relay, "seqs", &viewer_claims("v", ViewerMode::View), 2).await;
    assert_eq!(ack, 1_000_000, "the resume says where the stream goes on");
    assert_eq!(recv_data(&mut v, 1).await, [(1_000_000, Bytes::from("jump"))]);
    send(&mut p, data("seqs", u64::MAX, "the end of numbers")).await;
    let mut closed = false;
    for _ in 0..10 {
        match recv(&mut p).await {
            None | Some(Frame::Close(_)) => {
                closed = true;
                break;
            }
            Some(_) => {}
        }
    }
    assert!(closed, "a producer sending seq u64::MAX is closed");

    // The bystanders never noticed.
    send(&mut agent, data("bystander", 1, "still here")).await;
    assert_eq!(recv_data(&mut view, 1).await[0], (1, Bytes::from("still here")));
    let (_, peak) = relay.memory_kib();
    eprintln!("relay absurd frames: RSS {:.1} MiB before, peak {:.1} MiB", mib(rss_before), mib(peak));
    assert!(
        peak - rss_before < 32 << 10,
        "absurd frames grew the relay by {:.1} MiB",
        mib(peak - rss_before)
    );
}
