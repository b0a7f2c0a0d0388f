//! What one token can make the relay hold is bounded: a viewer token waits on a bounded number
//! of channels no producer has opened, input held for a channel without a producer is capped in
//! bytes (and none of it is lost), a producer token opens only its own agent's channels, and a
//! second producer cannot take over a live channel (and its viewers' input history) while the
//! first one answers, yet gets in promptly once the first has gone silent: the real agent,
//! whose link was cut where the relay could not see it, is back within seconds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tether_proto::frame::Frame;
use tether_proto::pb;
use tether_proto::token::ViewerMode;
use tether_tests::relay::*;
use tether_tests::{Agent, AgentOpts, Nats};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Opens and expects a refusal naming `reason`; returns whether it is retryable.
async fn refused(url: &str, open_frame: Frame, reason: &str) -> bool {
    let (mut ws, ack) = open(url, open_frame).await;
    assert!(!ack.accepted, "expected a {reason} refusal");
    let err = ack.error.expect("refusal carries an error");
    assert_eq!(err.detail.get("reason").map(String::as_str), Some(reason), "{}", err.message);
    assert!(recv(&mut ws).await.is_none(), "nothing but the refusal, then the close");
    err.retryable
}

fn rejected(reason: &str) -> String {
    format!("tether_relay_opens_rejected_total{{reason=\"{reason}\"}}")
}

/// Polls `/metrics` until `sample` reaches `at_least` (bounded: 200 scrapes).
async fn metric_reaches(relay: &Relay, sample: &str, at_least: u64) -> u64 {
    for _ in 0..200 {
        let value = relay.metric(sample).await;
        if value >= at_least {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{sample} never reached {at_least}");
}

#[tokio::test]
async fn a_viewer_token_waits_on_a_bounded_number_of_channels_no_producer_opened() {
    let relay = Relay::start(&["--max-waits-per-token", "2"]).await;
    let claims = viewer_claims("v", ViewerMode::View);
    let (_a, _) = viewer(&relay, "a", &claims, 0).await;
    let (_b, _) = viewer(&relay, "b", &claims, 0).await;
    let url = relay.url(tether_proto::PTY_PORT, "c");
    let third = open_msg("c", pb::StreamRole::Client, viewer_token(&claims), 0);
    assert!(refused(&url, third, "too_many_waits").await, "retryable: a wait may end");
    assert_eq!(relay.metric("tether_relay_channels").await, 2, "the refused viewer created nothing");
    // Another token is counted apart.
    let (_other, _) = viewer(&relay, "c", &viewer_claims("other", ViewerMode::View), 0).await;
    assert_eq!(relay.metric("tether_relay_waiting_viewers").await, 3);
    // A producer serving `a` ends that wait: the token may wait on `c` now.
    let (_agent, _) = producer(&relay, "a", 0).await;
    let (_c, _) = viewer(&relay, "c", &claims, 0).await;
    assert_eq!(relay.metric(&rejected("too_many_waits")).await, 1);
    assert_eq!(relay.metric("tether_relay_waiting_viewers").await, 3, "b, c and the other token's c");
}

#[tokio::test]
async fn input_for_a_channel_without_a_producer_is_held_up_to_its_cap_and_none_is_lost() {
    const CAP: u64 = 16 << 10;
    const FRAMES: u64 = 200;
    let relay = Relay::start(&["--unclaimed-input-bytes", "16KiB"]).await;
    let (mut view, _) = viewer(&relay, "ch", &viewer_claims("typist", ViewerMode::View), 0).await;
    // 200 KiB of typing before any producer: more than the relay may hold for nobody.
    let typing = tokio::spawn(async move {
        for seq in 0..FRAMES {
            send(&mut view, data("ch", seq, Bytes::from(vec![b'a' + (seq % 26) as u8; 1024]))).await;
        }
        view
    });
    metric_reaches(&relay, "tether_relay_input_held_total", 1).await;
    let held = relay.metric("tether_relay_unclaimed_input_bytes").await;
    assert!(held > 0 && held < CAP + 1100, "held {held} bytes for a channel with no producer");

    // The producer arrives and gets every keystroke, in order, nothing twice.
    let (mut agent, _) = producer(&relay, "ch", 0).await;
    for seq in 0..FRAMES {
        match recv(&mut agent).await {
            Some(Frame::Data(f)) => {
                assert_eq!(f.seq, seq);
                assert_eq!(f.data, Bytes::from(vec![b'a' + (seq % 26) as u8; 1024]));
            }
            other => panic!("input frame {seq} expected, got {other:?}"),
        }
    }
    let _view = typing.await.expect("typing finished once the producer took the input");
    let replayed = relay.metric("tether_relay_replayed_frames_total{direction=\"viewer_to_agent\"}").await;
    assert!(replayed <= CAP / 1024 + 1, "only what the cap held waited for the producer: {replayed} frames");
}

#[tokio::test]
async fn a_producer_token_opens_only_its_own_agents_channels() {
    let relay = Relay::start(&[]).await;
    let url = relay.url(tether_proto::PTY_PORT, "ch");
    let other_agent = open_msg("ch", pb::StreamRole::Agent, producer_token_for(WS, "another-agent"), 0);
    assert!(!refused(&url, other_agent, "agent_mismatch").await, "a token change is needed: final");
    let other_ws = open_msg("ch", pb::StreamRole::Agent, producer_token_for("another-ws", AGENT), 0);
    assert!(!refused(&url, other_ws, "workspace_mismatch").await);
    let (_own, _) = producer(&relay, "ch", 0).await;
}

/// Reads `ws` (so it answers the relay's pings) until `stop` fires; returns the socket and the
/// frames it received.
fn keep_reading(
    mut ws: Ws,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<(Ws, Vec<Frame>)> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return (ws, seen),
                msg = ws.next() => match msg {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(b))) => {
                        seen.push(Frame::decode(b).expect("a relay frame"));
                    }
                    Some(Ok(_)) => {}
                    _ => return (ws, seen),
                },
            }
        }
    })
}

#[tokio::test]
async fn a_second_producer_is_refused_while_the_first_answers_and_let_in_once_it_is_silent() {
    let relay = Relay::start(&["--producer-probe-timeout", "2s"]).await;
    let (mut first, _) = producer(&relay, "ch", 0).await;
    let (mut view, _) = viewer(&relay, "ch", &viewer_claims("v", ViewerMode::View), 0).await;
    send(&mut view, data("ch", 0, "my password\n")).await;
    match recv(&mut first).await {
        Some(Frame::Data(f)) => assert_eq!(f.data, "my password\n"),
        other => panic!("the producer expected the input, got {other:?}"),
    }

    // While the first producer answers, another connection with a valid token is refused.
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let reader = keep_reading(first, stopped);
    let url = relay.url(tether_proto::PTY_PORT, "ch");
    let second = open_msg("ch", pb::StreamRole::Agent, producer_token(), 0);
    assert!(refused(&url, second, "producer_live").await, "retryable: the first may be on its way out");
    let _ = stop.send(());
    let (first, seen) = reader.await.expect("reader");
    assert!(seen.iter().all(|f| !matches!(f, Frame::Close(_))), "the first keeps its channel: {seen:?}");
    assert_eq!(relay.metric(&rejected("producer_live")).await, 1);

    // The first goes silent, as after a network cut the relay has not noticed: a reconnecting
    // producer is let in once the first fails to answer its ping, and resumes the input.
    let (mut successor, _) = producer(&relay, "ch", 0).await;
    match recv(&mut successor).await {
        Some(Frame::Data(f)) => assert_eq!(f.data, "my password\n"),
        other => panic!("the successor expected the input history, got {other:?}"),
    }
    assert_eq!(relay.metric("tether_relay_producers_replaced_total").await, 1);
    send(&mut successor, data("ch", 0, "welcome back")).await;
    assert_eq!(recv_data(&mut view, 1).await[0].1, "welcome back");
    drop(first);
}

/// A TCP forwarder that can cut its connections the way a network does where only one end
/// notices: on `cut`, each connection made so far is closed towards the client while the
/// server side is kept open and silent, so the server sees nothing (no close, no answer to its
/// pings). Connections made after a cut flow normally.
struct HalfCutProxy {
    addr: std::net::SocketAddr,
    cut: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl HalfCutProxy {
    async fn start(target: std::net::SocketAddr) -> HalfCutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let cut = Arc::new(Notify::new());
        let cutting = cut.clone();
        let task = tokio::spawn(async move {
            // Owned here, so aborting the proxy ends every connection, held ones included.
            let mut forwarding = tokio::task::JoinSet::new();
            let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (cut, held) = (cutting.clone(), held.clone());
                forwarding.spawn(async move {
                    let cut_now = cut.notified();
                    tokio::pin!(cut_now);
                    cut_now.as_mut().enable();
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cut_now => {
                            drop(inbound);
                            held.lock().expect("held lock").push(outbound);
                        }
                    }
                });
            }
        });
        HalfCutProxy { addr, cut, task }
    }

    fn stream_url(&self) -> String {
        format!("ws://{}/stream", self.addr)
    }

    fn cut(&self) {
        self.cut.notify_waiters();
    }
}

impl Drop for HalfCutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn an_agent_whose_link_was_cut_unseen_by_the_relay_gets_its_terminal_back_promptly() {
    use tether_proto::pb::control_request::Op;
    use tether_proto::pb::control_response::Result as Reply;
    const WITHIN: Duration = Duration::from_secs(20);
    // The relay would notice the dead link by itself only after a minute of silence.
    let relay = Relay::start(&["--producer-probe-timeout", "1s"]).await;
    let proxy = HalfCutProxy::start(relay.addr).await;
    let nats = Nats::start().await;
    let opts = AgentOpts { relay_url: Some(proxy.stream_url()), ..AgentOpts::default() };
    let agent = Agent::start_with(&nats, opts).await;
    let pty = match agent.call(Op::PtyOpen(pb::PtyOpenRequest::default())).await {
        Ok(Reply::PtyOpen(r)) => r,
        other => panic!("pty_open failed: {other:?}\nagent log:\n{}", agent.log()),
    };
    let channel = pty.channel.expect("channel");
    let mut viewer = watch(&relay, &channel, &claims_for(&channel, "v", ViewerMode::View)).await;
    let mut seen = Seen::default();
    viewer.send("echo before-$((6*7))\n").await;
    collect_until(&mut viewer, &mut seen, WITHIN, |s| shows_line(&s.text(), "before-42")).await;

    // The agent's link dies; the relay still holds the old producer connection, open and silent.
    proxy.cut();
    viewer.send("echo after-$((6*7))\n").await;
    collect_until(&mut viewer, &mut seen, WITHIN, |s| shows_line(&s.text(), "after-42")).await;
    assert_eq!(relay.metric("tether_relay_producers_replaced_total").await, 1, "the relay had not noticed");
    assert!(agent.log().contains("reconnecting"), "the agent's pump reconnected:\n{}", agent.log());
}
