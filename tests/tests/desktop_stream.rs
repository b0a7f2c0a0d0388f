//! The desktop stream (`desktop_ensure`) through a real relay, on a real Xvfb: two ensures
//! give one channel; a viewer first gets a whole current frame; an unchanged screen sends no
//! new frames while a changing one does; a control-mode viewer's DesktopInput moves the
//! pointer and a view-only one's does not; an epoch advance closes the channel FENCED. With the
//! TILES encoding (tiles.rs beside this file): viewers composite key and delta frames into
//! exactly the screen, deltas are small, late and resuming viewers start from a key frame.

#[path = "desktop_stream/tiles.rs"]
mod tiles;

use std::time::{Duration, Instant};

use tether_proto::frame::Frame;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_proto::token::ViewerMode;
use tether_tests::relay::{self, Relay, Ws};
use tether_tests::xvfb::Xvfb;
use tether_tests::{Agent, AgentOpts, Nats, eventually, pb};

async fn setup(xvfb: &Xvfb) -> (Relay, Nats, Agent) {
    setup_with(xvfb, &[]).await
}

async fn setup_with(xvfb: &Xvfb, extra: &[&str]) -> (Relay, Nats, Agent) {
    let relay = Relay::start(&[]).await;
    let nats = Nats::start().await;
    let mut args: Vec<String> =
        ["--consent-screen-control", "--desktop-fps", "20"].iter().map(|s| s.to_string()).collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let opts = AgentOpts {
        env: vec![("DISPLAY".into(), xvfb.display.clone())],
        args,
        relay_url: Some(relay.stream_url()),
        ..Default::default()
    };
    let agent = Agent::start_with(&nats, opts).await;
    (relay, nats, agent)
}

async fn ensure(agent: &Agent, scope: &str, epoch: u32) -> pb::DesktopEnsureResponse {
    ensure_with(agent, scope, epoch, pb::DesktopFrameEncoding::Whole).await
}

async fn ensure_with(
    agent: &Agent,
    scope: &str,
    epoch: u32,
    encoding: pb::DesktopFrameEncoding,
) -> pb::DesktopEnsureResponse {
    let request = pb::DesktopEnsureRequest { frame_encoding: encoding as i32, ..Default::default() };
    match agent.call_fenced(Op::DesktopEnsure(request), scope, epoch).await {
        Ok(Reply::DesktopEnsure(reply)) => reply,
        other => panic!("desktop_ensure failed: {other:?}\n{}", agent.log()),
    }
}

async fn viewer(relay: &Relay, channel: &pb::StreamChannel, id: &str, mode: ViewerMode) -> Ws {
    viewer_from(relay, channel, id, mode, 0).await.0
}

/// A viewer resuming from `resume_from_seq`; also returns the seq the relay resumes it from.
async fn viewer_from(
    relay: &Relay,
    channel: &pb::StreamChannel,
    id: &str,
    mode: ViewerMode,
    resume_from_seq: u64,
) -> (Ws, u64) {
    let token = relay::viewer_token(&relay::claims_for(channel, id, mode));
    let open = Frame::Open(pb::StreamOpen {
        channel: Some(channel.clone()),
        token,
        role: pb::StreamRole::Client as i32,
        resume_from_seq,
    });
    let url = relay.url_for(&channel.workspace_id, &channel.agent_id, channel.port, &channel.channel_id);
    let (ws, ack) = relay::open(&url, open).await;
    assert!(ack.accepted, "viewer refused: {:?}", ack.error);
    (ws, ack.resume_from_seq)
}

/// Data frames that arrive within `window`.
async fn frames_within(ws: &mut Ws, window: Duration) -> Vec<bytes::Bytes> {
    stream_frames_within(ws, window).await.into_iter().map(|f| f.data).collect()
}

/// Data frames (with their seq and delta flag) that arrive within `window`.
async fn stream_frames_within(ws: &mut Ws, window: Duration) -> Vec<pb::StreamFrame> {
    let deadline = Instant::now() + window;
    let mut frames = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, relay::recv(ws)).await {
            Ok(Some(Frame::Data(f))) => frames.push(f),
            Ok(Some(Frame::Close(c))) => panic!("the stream closed: {c:?}"),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the relay closed the viewer"),
            Err(_) => break,
        }
    }
    frames
}

fn decode(jpeg: &[u8]) -> (u16, u16, Vec<u8>) {
    let mut decoder = jpeg_decoder::Decoder::new(jpeg);
    let pixels = decoder.decode().expect("a JPEG frame");
    let info = decoder.info().expect("info");
    (info.width, info.height, pixels)
}

#[tokio::test]
async fn one_channel_whole_frames_and_frames_only_when_the_screen_changes() {
    let xvfb = Xvfb::start(640, 480);
    xvfb.paint_root("#204080");
    let (relay, _nats, agent) = setup(&xvfb).await;
    let first = ensure(&agent, "cp", 1).await;
    // A later ensure asking for tiles gets the open channel and learns it sends whole frames.
    let again = ensure_with(&agent, "cp", 1, pb::DesktopFrameEncoding::Tiles).await;
    assert_eq!(first.frame_encoding(), pb::DesktopFrameEncoding::Whole);
    assert_eq!(again.frame_encoding(), pb::DesktopFrameEncoding::Whole);
    let channel = first.channel.expect("a channel");
    assert_eq!(again.channel.as_ref(), Some(&channel), "two ensures, one channel");
    assert_eq!(channel.kind, pb::StreamKind::Desktop as i32);
    assert_eq!(channel.port, 6080);
    assert_eq!(first.display.map(|d| (d.width, d.height)), Some((640, 480)));
    // `tetherctl desktop` ensures the same channel and prints where a viewer dials.
    let out = agent
        .tetherctl(&_nats)
        .args(["--json", "desktop", "--relay-url", &relay.stream_url()])
        .output()
        .expect("tetherctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(printed["channel_id"].as_str(), Some(channel.channel_id.as_str()));
    assert!(printed["viewer_url"].as_str().is_some_and(|u| u.contains("port=6080")), "{printed}");

    let mut ws = viewer(&relay, &channel, "v1", ViewerMode::View).await;
    let initial = stream_frames_within(&mut ws, Duration::from_millis(800)).await;
    assert!(initial.iter().all(|f| !f.delta), "a WHOLE channel sends no delta frame");
    let initial: Vec<bytes::Bytes> = initial.into_iter().map(|f| f.data).collect();
    let frame = initial.last().expect("a new viewer gets the current frame");
    let (w, h, rgb) = decode(frame);
    assert_eq!((w, h), (640, 480));
    let centre = &rgb[(240 * 640 + 320) * 3..][..3];
    assert!(centre.iter().zip([0x20, 0x40, 0x80]).all(|(a, b)| a.abs_diff(b) < 16), "{centre:?}");

    let quiet = frames_within(&mut ws, Duration::from_secs(2)).await;
    assert!(quiet.is_empty(), "an unchanged screen sent {} frames", quiet.len());

    // Typing reads the same X connection's events as the stream: a paint and, at once, a key
    // press must leave the stream seeing later paints (were the paint's DAMAGE event dropped,
    // the stream would hear of no drawing again and fall back to a look a second).
    xvfb.paint_root("#101010");
    let shift = pb::KeyEvent { key: "shift".into(), is_text: false, action: pb::KeyAction::Press as i32 };
    let typed = pb::DesktopInputRequest { event: Some(pb::desktop_input_request::Event::Key(shift)) };
    assert!(matches!(agent.call(Op::DesktopInput(typed)).await, Ok(Reply::DesktopInput(_))), "a key press");
    // Each colour is on screen for 400 ms: every one must be sent (with DAMAGE the loop captures
    // on the tick after each paint; were the paints unreported it would look only once a second
    // and miss one).
    let colours = [[0x80, 0x20, 0x20], [0x20, 0x80, 0x20], [0xc0, 0xc0, 0x20]];
    for [r, g, b] in colours {
        xvfb.paint_root(&format!("#{r:02x}{g:02x}{b:02x}"));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let changed = frames_within(&mut ws, Duration::from_millis(800)).await;
    let centres: Vec<[u8; 3]> = changed
        .iter()
        .map(|f| {
            let (_, _, rgb) = decode(f);
            rgb[(240 * 640 + 320) * 3..][..3].try_into().expect("a pixel")
        })
        .collect();
    let near = |a: &[u8; 3], b: &[u8; 3]| a.iter().zip(b).all(|(x, y)| x.abs_diff(*y) < 16);
    let shown = colours.iter().filter(|c| centres.iter().any(|s| near(s, c))).count();
    assert_eq!(shown, 3, "each colour of a changing screen is sent: {centres:?}");
    assert!(near(centres.last().expect("frames"), &colours[2]), "the last frame shows the last colour");
}

fn move_to(channel: &pb::StreamChannel, x: i32, y: i32) -> Frame {
    let pointer = pb::PointerEvent { x, y, action: pb::PointerAction::Move as i32, ..Default::default() };
    Frame::DesktopInput(pb::DesktopInput {
        channel_id: channel.channel_id.clone(),
        event: Some(pb::desktop_input::Event::Pointer(pointer)),
    })
}

#[tokio::test]
async fn viewer_input_moves_the_pointer_only_for_control_tokens() {
    let xvfb = Xvfb::start(640, 480);
    let (relay, _nats, agent) = setup(&xvfb).await;
    let channel = ensure(&agent, "cp", 1).await.channel.expect("channel");
    xvfb.warp(5, 5);
    let mut control = viewer(&relay, &channel, "pilot", ViewerMode::Control).await;
    let mut view = viewer(&relay, &channel, "spectator", ViewerMode::View).await;

    relay::send(&mut control, move_to(&channel, 100, 110)).await;
    eventually("the control viewer's move", || xvfb.pointer() == (100, 110)).await;

    relay::send(&mut view, move_to(&channel, 200, 210)).await;
    // Then a control move: input keeps its order, so once this lands the view move would have.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(xvfb.pointer(), (100, 110), "a view-only viewer does not move the pointer");
    relay::send(&mut control, move_to(&channel, 300, 310)).await;
    eventually("the second control move", || xvfb.pointer() == (300, 310)).await;
}

#[tokio::test]
async fn an_epoch_advance_closes_the_stream_fenced() {
    let xvfb = Xvfb::start(320, 240);
    let (relay, _nats, agent) = setup(&xvfb).await;
    let channel = ensure(&agent, "lease", 1).await.channel.expect("channel");
    let mut ws = viewer(&relay, &channel, "v", ViewerMode::View).await;
    agent.call_fenced(tether_tests::op::ping(1), "lease", 2).await.expect("ping at the new epoch");
    let closed = loop {
        match relay::recv(&mut ws).await {
            Some(Frame::Close(close)) => break close,
            Some(_) => continue,
            None => panic!("the relay dropped the viewer without a StreamClose"),
        }
    };
    assert_eq!(closed.reason, pb::StreamCloseReason::Fenced as i32, "{closed:?}");
    // The next ensure opens a fresh channel.
    let fresh = ensure(&agent, "lease", 2).await.channel.expect("channel");
    assert_ne!(fresh.channel_id, channel.channel_id);
}
