//! The TILES encoding end to end: a viewer that composites key and delta frames the way the
//! `/view` page does ends with exactly the screen (PNG stream, so exact); a delta for a small
//! change is a small fraction of a key frame; a viewer joining mid-stream starts on a key frame
//! and the deltas the relay held after it; a resuming viewer continues from its cursor, and one
//! whose cursor the relay no longer holds restarts at a key frame; a viewer on another relay
//! replica than the agent's gets the same key and deltas (the flag crosses the cluster hop).

use std::time::Duration;

use tether_proto::tiles::{RectFormat, TileFrame};
use tether_proto::token::ViewerMode;
use tether_tests::relay_cluster::RelayCluster;
use tether_tests::xvfb::{Xvfb, decode_png};
use tether_tests::{Agent, AgentOpts, Nats, pb};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ConnectionExt as _, CreateGCAux, ImageFormat, Rectangle};
use x11rb::wrapper::ConnectionExt as _;

use super::{ensure_with, setup_with, stream_frames_within, viewer, viewer_from};

const W: u32 = 640;
const H: u32 = 480;

/// What a viewer shows: RGB, built from frames in order.
#[derive(Default)]
struct Picture {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Picture {
    /// Applies one frame: a whole image replaces the picture, a delta draws its rectangles.
    fn apply(&mut self, frame: &pb::StreamFrame) {
        assert_eq!(frame.delta, tether_proto::tiles::is_tiles(&frame.data), "the flag and the magic agree");
        if !frame.delta {
            (self.width, self.height, self.rgb) = decode_png(&frame.data);
            return;
        }
        let tiles = TileFrame::decode(frame.data.clone()).expect("a tile frame");
        assert_eq!((u32::from(tiles.width), u32::from(tiles.height)), (self.width, self.height));
        for r in tiles.rects {
            assert_eq!(r.format, RectFormat::Png);
            let (w, h, rgb) = decode_png(&r.image);
            assert_eq!((w, h), (u32::from(r.width), u32::from(r.height)));
            for row in 0..h as usize {
                let to = ((usize::from(r.y) + row) * self.width as usize + usize::from(r.x)) * 3;
                self.rgb[to..to + w as usize * 3]
                    .copy_from_slice(&rgb[row * w as usize * 3..][..w as usize * 3]);
            }
        }
    }
}

/// The screen as RGB, read with the test's own X connection.
fn screen_rgb(xvfb: &Xvfb) -> Vec<u8> {
    let conn = xvfb.connect();
    let root = conn.setup().roots[0].root;
    let image = conn
        .get_image(ImageFormat::Z_PIXMAP, root, 0, 0, W as u16, H as u16, !0)
        .expect("GetImage")
        .reply()
        .expect("GetImage reply");
    image.data.chunks_exact(4).flat_map(|px| [px[2], px[1], px[0]]).collect()
}

/// Fills a rectangle of the root window with `rgb` (0xRRGGBB).
fn fill(xvfb: &Xvfb, (x, y, width, height): (i16, i16, u16, u16), rgb: u32) {
    let conn = xvfb.connect();
    let root = conn.setup().roots[0].root;
    let gc = conn.generate_id().expect("id");
    conn.create_gc(gc, root, &CreateGCAux::new().foreground(rgb)).expect("gc");
    conn.poly_fill_rectangle(root, gc, &[Rectangle { x, y, width, height }]).expect("fill");
    conn.sync().expect("sync");
}

/// Small rectangles of many colours in one corner, so a key frame weighs what a screen with
/// writing on it does and deltas for small changes stay well under it.
fn noise(xvfb: &Xvfb) {
    for i in 0..60u16 {
        let at = ((i * 7 % 320) as i16, (i * 13 % 200) as i16);
        fill(xvfb, (at.0, at.1, 5 + i % 9, 3 + i % 5), 0x10_2030 * u32::from(i + 1));
    }
}

/// Frames until none has come for `quiet` (bounded: at most 40 rounds).
async fn settle(ws: &mut tether_tests::relay::Ws, quiet: Duration) -> Vec<pb::StreamFrame> {
    let mut all = Vec::new();
    for _ in 0..40 {
        let got = stream_frames_within(ws, quiet).await;
        if got.is_empty() {
            break;
        }
        all.extend(got);
    }
    all
}

fn assert_contiguous(frames: &[pb::StreamFrame]) {
    let seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "frames in order, none missing: {seqs:?}");
}

#[tokio::test]
async fn tiles_viewers_rebuild_the_screen_exactly_from_a_key_and_small_deltas() {
    let xvfb = Xvfb::start(W, H);
    xvfb.paint_root("#204080");
    let (relay, _nats, agent) = setup_with(&xvfb, &["--desktop-stream-png"]).await;
    let reply = ensure_with(&agent, "cp", 1, pb::DesktopFrameEncoding::Tiles).await;
    assert_eq!(reply.frame_encoding(), pb::DesktopFrameEncoding::Tiles);
    let again = ensure_with(&agent, "cp", 1, pb::DesktopFrameEncoding::Whole).await;
    assert_eq!(again.frame_encoding(), pb::DesktopFrameEncoding::Tiles, "the live channel's encoding");
    let channel = reply.channel.expect("channel");

    noise(&xvfb);
    let mut first = viewer(&relay, &channel, "v1", ViewerMode::View).await;
    let frames = settle(&mut first, Duration::from_millis(600)).await;
    assert!(!frames.is_empty() && !frames[0].delta, "a new viewer starts on a key frame");
    let key_bytes = frames.iter().filter(|f| !f.delta).map(|f| f.data.len()).max().unwrap_or(0);
    let mut shown = Picture::default();
    frames.iter().for_each(|f| shown.apply(f));
    assert!(shown.rgb == screen_rgb(&xvfb), "the first viewer shows the screen");

    // A small change travels as a small delta, and the composite is the screen again.
    fill(&xvfb, (300, 200, 40, 30), 0xd02020);
    let frames = settle(&mut first, Duration::from_millis(600)).await;
    let deltas: Vec<&pb::StreamFrame> = frames.iter().filter(|f| f.delta).collect();
    assert!(!deltas.is_empty(), "a small change sends a delta frame: {frames:?}");
    let delta_bytes = deltas.iter().map(|f| f.data.len()).max().unwrap_or(0);
    assert!(delta_bytes * 10 < key_bytes, "delta {delta_bytes} B against key {key_bytes} B");
    frames.iter().for_each(|f| shown.apply(f));
    assert!(shown.rgb == screen_rgb(&xvfb), "the composite is the screen after the change");
    let last_seq = frames.last().map_or(0, |f| f.seq);

    // A viewer joining now gets the relay's key frame and the deltas held after it, in order.
    let mut late = viewer(&relay, &channel, "v2", ViewerMode::View).await;
    let frames = settle(&mut late, Duration::from_millis(600)).await;
    assert!(!frames[0].delta, "a late viewer's first frame is a key frame: {:?}", frames[0].seq);
    assert!(frames.iter().any(|f| f.delta && f.seq <= last_seq), "the held deltas follow the key");
    assert_contiguous(&frames);
    let mut late_shown = Picture::default();
    frames.iter().for_each(|f| late_shown.apply(f));
    assert!(late_shown.rgb == screen_rgb(&xvfb), "the late viewer shows the screen");

    fill(&xvfb, (10, 400, 64, 20), 0x20c020);
    for (ws, picture) in [(&mut first, &mut shown), (&mut late, &mut late_shown)] {
        settle(ws, Duration::from_millis(600)).await.iter().for_each(|f| picture.apply(f));
        assert!(picture.rgb == screen_rgb(&xvfb), "both viewers follow the next change");
    }
}

#[tokio::test]
async fn a_resuming_tiles_viewer_continues_or_restarts_at_a_key_frame() {
    let xvfb = Xvfb::start(W, H);
    xvfb.paint_root("#406020");
    noise(&xvfb);
    let (relay, _nats, agent) = setup_with(&xvfb, &["--desktop-stream-png"]).await;
    let channel =
        ensure_with(&agent, "cp", 1, pb::DesktopFrameEncoding::Tiles).await.channel.expect("channel");
    // An anchor viewer stays attached throughout, so the stream never pauses.
    let anchor = viewer(&relay, &channel, "anchor", ViewerMode::View).await;
    let mut shown = Picture::default();
    let mut ws = viewer(&relay, &channel, "v", ViewerMode::View).await;
    settle(&mut ws, Duration::from_millis(600)).await.iter().for_each(|f| shown.apply(f));
    fill(&xvfb, (100, 100, 30, 30), 0xe0e0e0);
    let frames = settle(&mut ws, Duration::from_millis(600)).await;
    frames.iter().for_each(|f| shown.apply(f));
    let next = frames.last().expect("frames for the change").seq + 1;
    drop(ws);

    // Changes while it is away: on resume it gets exactly what it lacks, deltas included.
    fill(&xvfb, (400, 300, 20, 60), 0x101010);
    tokio::time::sleep(Duration::from_millis(400)).await;
    fill(&xvfb, (200, 50, 50, 10), 0x8080ff);
    let (mut ws, from) = viewer_from(&relay, &channel, "v", ViewerMode::View, next).await;
    assert_eq!(from, next, "the relay still holds the viewer's next frame");
    let frames = settle(&mut ws, Duration::from_millis(600)).await;
    assert_eq!(frames.first().map(|f| f.seq), Some(next));
    assert!(frames.iter().any(|f| f.delta), "the missed deltas are replayed");
    assert_contiguous(&frames);
    frames.iter().for_each(|f| shown.apply(f));
    assert!(shown.rgb == screen_rgb(&xvfb), "the resumed viewer shows the screen");

    // A cursor from before the newest key frame restarts at a key frame.
    let (mut old, _) = viewer_from(&relay, &channel, "old", ViewerMode::View, 1).await;
    let frames = settle(&mut old, Duration::from_millis(600)).await;
    assert!(frames.first().is_some_and(|f| !f.delta && f.seq > 1), "a key frame first");
    let mut restarted = Picture::default();
    frames.iter().for_each(|f| restarted.apply(f));
    assert!(restarted.rgb == screen_rgb(&xvfb), "the restarted viewer shows the screen");
    drop(anchor);
}

#[tokio::test]
async fn a_viewer_on_another_replica_rebuilds_the_screen_from_the_same_frames() {
    let xvfb = Xvfb::start(W, H);
    xvfb.paint_root("#305070");
    noise(&xvfb);
    let nats = Nats::start().await;
    let cluster = RelayCluster::start(&nats, 2, &[]).await;
    let opts = AgentOpts {
        env: vec![("DISPLAY".into(), xvfb.display.clone())],
        args: ["--desktop-fps", "20", "--desktop-stream-png"].iter().map(|s| s.to_string()).collect(),
        relay_url: Some(cluster.replicas[0].stream_url()),
        ..Default::default()
    };
    let agent = Agent::start_with(&nats, opts).await;
    let channel =
        ensure_with(&agent, "cp", 1, pb::DesktopFrameEncoding::Tiles).await.channel.expect("channel");
    assert_eq!(cluster.owner().await, 0, "the agent's producer is on replica 0");
    let mut remote = viewer(&cluster.replicas[1], &channel, "remote", ViewerMode::View).await;
    let mut shown = Picture::default();
    let frames = settle(&mut remote, Duration::from_millis(600)).await;
    assert!(frames.first().is_some_and(|f| !f.delta), "a key frame first");
    frames.iter().for_each(|f| shown.apply(f));
    fill(&xvfb, (500, 20, 30, 30), 0xf0f000);
    let frames = settle(&mut remote, Duration::from_millis(600)).await;
    assert!(frames.iter().any(|f| f.delta), "deltas reach the remote viewer, flagged");
    assert_contiguous(&frames);
    frames.iter().for_each(|f| shown.apply(f));
    assert!(shown.rgb == screen_rgb(&xvfb), "the remote viewer shows the screen");
}
