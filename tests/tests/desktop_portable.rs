//! The xcap/enigo desktop backend on X11: the agent built with the `portable-desktop` feature
//! (`tether-agent-portable`, which scripts/test.sh builds beside the default binary) and
//! started with `TETHER_DESKTOP_BACKEND=portable`, under a real Xvfb. A screenshot is the
//! display's size and shows the colour xsetroot painted; a pointer move lands where asked
//! (seen by the test's own X connection); a click reaches the x-recorder window. Without the
//! variable the same binary still uses x11rb, and the default build reports that it lacks the
//! backend instead of falling back silently.

use std::path::PathBuf;

use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_proto::pb::desktop_input_request::Event;
use tether_tests::xvfb::{Xvfb, decode_png};
use tether_tests::{Agent, AgentOpts, Nats, pb};

const BACKEND: &str = "TETHER_DESKTOP_BACKEND";

/// `tether-agent-portable` beside the other binaries of this profile.
fn portable_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    let path = dir.join("tether-agent-portable");
    assert!(
        path.exists(),
        "{} is missing: scripts/test.sh builds it (cargo build -p tether-agent --features \
         portable-desktop, copied to tether-agent-portable, before cargo build --workspace --bins)",
        path.display()
    );
    path
}

fn opts(xvfb: &Xvfb, program: Option<PathBuf>, backend: Option<&str>) -> AgentOpts {
    let mut env = vec![("DISPLAY".to_owned(), xvfb.display.clone())];
    if let Some(backend) = backend {
        env.push((BACKEND.to_owned(), backend.to_owned()));
    }
    AgentOpts { env, program, args: vec!["--consent-screen-control".into()], ..Default::default() }
}

/// The portable build with the portable backend selected; checks Hello says so.
async fn portable_agent(nats: &Nats, xvfb: &Xvfb) -> Agent {
    let agent = Agent::start_with(nats, opts(xvfb, Some(portable_binary()), Some("portable"))).await;
    let caps = agent.caps();
    assert!(caps.desktop, "the portable backend captures the display: {caps:?}\n{}", agent.log());
    assert_eq!(caps.desktop_backend, "xcap", "{}", agent.log());
    assert!(caps.desktop_input, "enigo can inject: {}", agent.log());
    agent
}

async fn input(agent: &Agent, event: Event) {
    match agent.call(Op::DesktopInput(pb::DesktopInputRequest { event: Some(event) })).await {
        Ok(Reply::DesktopInput(_)) => {}
        other => panic!("input failed: {other:?}\n{}", agent.log()),
    }
}

fn pointer(x: i32, y: i32, action: pb::PointerAction) -> Event {
    Event::Pointer(pb::PointerEvent { x, y, action: action as i32, ..Default::default() })
}

#[tokio::test]
async fn a_portable_screenshot_is_the_display_and_shows_its_colour() {
    let xvfb = Xvfb::start(1024, 768);
    xvfb.paint_root("#c81e5a");
    let nats = Nats::start().await;
    let agent = portable_agent(&nats, &xvfb).await;
    let display = agent.caps().display.as_ref().expect("display in Hello");
    assert_eq!((display.width, display.height), (1024, 768));

    let shot = match agent.call(Op::DesktopScreenshot(pb::DesktopScreenshotRequest::default())).await {
        Ok(Reply::DesktopScreenshot(shot)) => shot,
        other => panic!("screenshot failed: {other:?}\n{}", agent.log()),
    };
    assert_eq!((shot.width, shot.height, shot.native_width, shot.native_height), (1024, 768, 1024, 768));
    let (w, h, rgb) = decode_png(&shot.png);
    assert_eq!((w, h), (1024, 768));
    for (x, y) in [(0, 0), (512, 384), (1023, 767)] {
        let at = ((y * w + x) * 3) as usize;
        assert_eq!(rgb[at..at + 3], [0xc8, 0x1e, 0x5a], "the painted colour at ({x}, {y})");
    }
}

#[tokio::test]
async fn portable_input_moves_the_pointer_and_clicks_a_window() {
    let xvfb = Xvfb::start(1280, 800);
    let nats = Nats::start().await;
    let agent = portable_agent(&nats, &xvfb).await;
    input(&agent, pointer(321, 123, pb::PointerAction::Move)).await;
    assert_eq!(xvfb.pointer(), (321, 123), "the test's own X connection sees the move");

    let mut window = xvfb.recorder(100, 100, 400, 300);
    input(&agent, pointer(250, 200, pb::PointerAction::Click)).await;
    window.expect("a left click at (250, 200)", |l| l == "button 1 250 200");
    window.expect("its release", |l| l == "release 1 250 200");
    let right = Event::Pointer(pb::PointerEvent {
        x: 260,
        y: 210,
        action: pb::PointerAction::Click as i32,
        button: pb::PointerButton::Right as i32,
        ..Default::default()
    });
    input(&agent, right).await;
    window.expect("a right click", |l| l == "button 3 260 210");
}

#[tokio::test]
async fn without_the_variable_the_portable_build_still_uses_x11rb() {
    let xvfb = Xvfb::start(800, 600);
    let nats = Nats::start().await;
    let agent = Agent::start_with(&nats, opts(&xvfb, Some(portable_binary()), None)).await;
    assert!(agent.caps().desktop, "{}", agent.log());
    assert_eq!(agent.caps().desktop_backend, "x11-shm");
}

#[tokio::test]
async fn the_default_build_says_it_lacks_the_portable_backend() {
    let xvfb = Xvfb::start(800, 600);
    let nats = Nats::start().await;
    let agent = Agent::start_with(&nats, opts(&xvfb, None, Some("portable"))).await;
    let caps = agent.caps();
    assert!(!caps.desktop, "no silent fallback to x11rb: {caps:?}");
    assert!(caps.desktop_unavailable_reason.contains("portable-desktop"), "{caps:?}");
}
