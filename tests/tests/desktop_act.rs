//! The act-then-look op under a real Xvfb: a click that changes the screen returns a
//! screenshot that already shows the change, with the settle outcome; a failing action stops
//! the list and names its index; a drag presses, moves and releases.

use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_proto::pb::desktop_action::Action;
use tether_tests::xvfb::Xvfb;
use tether_tests::{Agent, AgentOpts, Nats, error_code, pb};

async fn agent(nats: &Nats, xvfb: &Xvfb) -> Agent {
    let opts = AgentOpts {
        env: vec![("DISPLAY".into(), xvfb.display.clone())],
        args: vec!["--consent-screen-control".into()],
        ..Default::default()
    };
    Agent::start_with(nats, opts).await
}

fn click(x: i32, y: i32) -> pb::DesktopAction {
    let event = pb::PointerEvent { x, y, action: pb::PointerAction::Click as i32, ..Default::default() };
    pb::DesktopAction { action: Some(Action::Pointer(event)) }
}

fn pixel(png: &[u8], x: u32, y: u32) -> [u8; 3] {
    let mut reader = png::Decoder::new(std::io::Cursor::new(png)).read_info().expect("PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("frame");
    let at = ((y * info.width + x) * 3) as usize;
    [buf[at], buf[at + 1], buf[at + 2]]
}

#[tokio::test]
async fn act_then_look_returns_a_screenshot_that_shows_the_click() {
    let xvfb = Xvfb::start(1024, 768);
    let nats = Nats::start().await;
    let agent = agent(&nats, &xvfb).await;
    let mut window = xvfb.recorder(100, 100, 300, 200);
    // The recorder's window is grey until a left click paints it green.
    let request = pb::DesktopActRequest {
        actions: vec![click(200, 200)],
        screenshot: Some(pb::DesktopScreenshotRequest::default()),
        ..Default::default()
    };
    let reply = match agent.call(Op::DesktopAct(request)).await {
        Ok(Reply::DesktopAct(reply)) => reply,
        other => panic!("act failed: {other:?}\n{}", agent.log()),
    };
    window.expect("the click", |l| l == "button 1 200 200");
    assert_eq!(reply.actions_done, 1);
    assert_eq!(reply.settle, pb::SettleOutcome::Changed as i32, "{reply:?}");
    let shot = reply.screenshot.expect("a screenshot");
    assert_eq!((shot.width, shot.height), (1024, 768));
    assert_eq!(pixel(&shot.png, 250, 250), [0, 255, 0], "the window is already green in the reply");
    assert_ne!(pixel(&shot.png, 50, 50), [0, 255, 0], "outside the window is not");
}

#[tokio::test]
async fn a_failing_action_stops_the_list_and_names_its_index() {
    let xvfb = Xvfb::start(800, 600);
    let nats = Nats::start().await;
    let agent = agent(&nats, &xvfb).await;
    let mut window = xvfb.recorder(0, 0, 400, 300);
    let request = pb::DesktopActRequest {
        actions: vec![
            click(10, 10),
            pb::DesktopAction { action: Some(Action::WaitMs(20)) },
            click(9000, 10),
            click(20, 20),
        ],
        screenshot: Some(Default::default()),
        ..Default::default()
    };
    let err = agent.call(Op::DesktopAct(request)).await.expect_err("index 2 is off screen");
    assert_eq!(error_code(&err), pb::ErrorCode::Protocol, "{err:?}");
    assert_eq!(err.detail["action_index"], "2", "{err:?}");
    assert_eq!(err.detail["actions_done"], "2", "{err:?}");
    let lines = window.drain(std::time::Duration::from_millis(300)).to_vec();
    assert!(lines.contains(&"button 1 10 10".to_owned()), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.starts_with("button 1 20 20")),
        "nothing after the failure ran: {lines:?}"
    );
}

#[tokio::test]
async fn a_drag_presses_moves_and_releases() {
    let xvfb = Xvfb::start(800, 600);
    let nats = Nats::start().await;
    let agent = agent(&nats, &xvfb).await;
    let mut window = xvfb.recorder(0, 0, 800, 600);
    let drag = pb::DragAction { from_x: 50, from_y: 60, to_x: 300, to_y: 260, ..Default::default() };
    let request = pb::DesktopActRequest {
        actions: vec![pb::DesktopAction { action: Some(Action::Drag(drag)) }],
        ..Default::default()
    };
    let reply = match agent.call(Op::DesktopAct(request)).await {
        Ok(Reply::DesktopAct(reply)) => reply,
        other => panic!("act failed: {other:?}"),
    };
    assert!(reply.screenshot.is_none() && reply.settle == pb::SettleOutcome::Unspecified as i32);
    window.expect("the press at the start", |l| l == "button 1 50 60");
    window.expect("the release at the end", |l| l == "release 1 300 260");
    assert_eq!(xvfb.pointer(), (300, 260));
}
