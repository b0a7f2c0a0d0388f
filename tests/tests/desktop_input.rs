//! desktop_input under a real Xvfb, checked by independent X clients (the test's own
//! QueryPointer, and the x-recorder window printing the events it receives): pointer moves
//! land, clicks reach a window, ASCII and non-ASCII text and key chords arrive; screenshot
//! coordinates map back to native pixels; without consent nothing is touched; off-screen
//! points are errors.

use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_proto::pb::desktop_input_request::Event;
use tether_tests::xvfb::Xvfb;
use tether_tests::{Agent, AgentOpts, Nats, error_code, pb};

async fn agent(nats: &Nats, xvfb: &Xvfb, consent: bool) -> Agent {
    let mut opts = AgentOpts { env: vec![("DISPLAY".into(), xvfb.display.clone())], ..Default::default() };
    if consent {
        opts.args.push("--consent-screen-control".into());
    }
    let agent = Agent::start_with(nats, opts).await;
    assert!(agent.caps().desktop, "{}", agent.log());
    assert_eq!(agent.caps().consented_screen_control, consent);
    agent
}

async fn input(agent: &Agent, event: Event) -> Result<(), pb::AgentError> {
    match agent.call(Op::DesktopInput(pb::DesktopInputRequest { event: Some(event) })).await {
        Ok(Reply::DesktopInput(_)) => Ok(()),
        Ok(other) => panic!("unexpected reply {other:?}"),
        Err(e) => Err(e),
    }
}

fn pointer(x: i32, y: i32, action: pb::PointerAction) -> Event {
    Event::Pointer(pb::PointerEvent { x, y, action: action as i32, ..Default::default() })
}

fn key(chord: &str) -> Event {
    Event::Key(pb::KeyEvent { key: chord.into(), is_text: false, action: pb::KeyAction::Press as i32 })
}

fn text(text: &str) -> Event {
    Event::Key(pb::KeyEvent { key: text.into(), is_text: true, action: pb::KeyAction::Press as i32 })
}

#[tokio::test]
async fn pointer_moves_and_clicks_land_where_asked() {
    let xvfb = Xvfb::start(1280, 800);
    let nats = Nats::start().await;
    let agent = agent(&nats, &xvfb, true).await;
    input(&agent, pointer(321, 123, pb::PointerAction::Move)).await.expect("move");
    assert_eq!(xvfb.pointer(), (321, 123));

    let mut window = xvfb.recorder(100, 100, 400, 300);
    input(&agent, pointer(250, 200, pb::PointerAction::Click)).await.expect("click");
    window.expect("a left click at (250, 200)", |l| l == "button 1 250 200");
    let right = Event::Pointer(pb::PointerEvent {
        x: 260,
        y: 210,
        action: pb::PointerAction::Click as i32,
        button: pb::PointerButton::Right as i32,
        ..Default::default()
    });
    input(&agent, right).await.expect("right click");
    window.expect("a right click", |l| l == "button 3 260 210");
    input(&agent, pointer(300, 250, pb::PointerAction::DoubleClick)).await.expect("double click");
    let clicks = window
        .drain(std::time::Duration::from_millis(300))
        .iter()
        .filter(|l| *l == "button 1 300 250")
        .count();
    assert_eq!(clicks, 2, "a double click is two presses");
    let wheel = Event::Scroll(pb::ScrollEvent { x: 200, y: 150, delta_y: 3, ..Default::default() });
    input(&agent, wheel).await.expect("scroll");
    window.expect("wheel down", |l| l == "button 5 200 150");
}

#[tokio::test]
async fn a_click_in_screenshot_space_lands_on_the_native_point() {
    let xvfb = Xvfb::start(1280, 800);
    let nats = Nats::start().await;
    let agent = agent(&nats, &xvfb, true).await;
    let shot = match agent
        .call(Op::DesktopScreenshot(pb::DesktopScreenshotRequest { max_width: 640, ..Default::default() }))
        .await
    {
        Ok(Reply::DesktopScreenshot(shot)) => shot,
        other => panic!("{other:?}"),
    };
    assert_eq!((shot.width, shot.height), (640, 400));
    let mut window = xvfb.recorder(0, 0, 1280, 800);
    let click = Event::Pointer(pb::PointerEvent {
        x: 100,
        y: 50,
        action: pb::PointerAction::Click as i32,
        space_width: shot.width,
        space_height: shot.height,
        ..Default::default()
    });
    input(&agent, click).await.expect("click");
    // Screenshot pixel (100, 50) covers native pixels 200..=201 x 100..=101; its centre maps
    // to (201, 101).
    window.expect("the click at the native point", |l| l == "button 1 201 101");
    assert_eq!(xvfb.pointer(), (201, 101));
}

#[tokio::test]
async fn typed_text_and_chords_reach_the_focused_window() {
    let xvfb = Xvfb::start(1024, 768);
    let nats = Nats::start().await;
    let agent = agent(&nats, &xvfb, true).await;
    let mut window = xvfb.recorder(0, 0, 600, 400);
    input(&agent, pointer(100, 100, pb::PointerAction::Click)).await.expect("focus click");

    input(&agent, text("Hello, World! ~{x}")).await.expect("ascii");
    window.expect_typed("Hello, World! ~{x}");
    input(&agent, text("é ß → 中文")).await.expect("non-ascii");
    window.expect_typed("Hello, World! ~{x}é ß → 中文");

    input(&agent, key("ctrl+alt+t")).await.expect("chord");
    // KeyPress of 't' with Control (4) and Mod1/Alt (8) held.
    let line = window.expect("ctrl+alt+t", |l| l.starts_with("key 0x74 "));
    let state: u16 = line.rsplit(' ').next().expect("test step").parse().expect("test step");
    assert_eq!(state & 0xc, 0xc, "Control and Alt held: {line}");
    input(&agent, key("shift+Tab")).await.expect("shift+Tab");
    window.expect("shift+Tab", |l| l.starts_with("key 0xfe20 ") || l.starts_with("key 0xff09 1"));
    for (chord, keysym) in
        [("F5", "0xffc2"), ("PageDown", "0xff56"), ("Escape", "0xff1b"), ("Left", "0xff51")]
    {
        input(&agent, key(chord)).await.expect(chord);
        window.expect(chord, |l| l.starts_with(&format!("key {keysym} ")));
    }
}

#[tokio::test]
async fn more_unmapped_characters_than_spare_keys_all_arrive_in_order() {
    let xvfb = Xvfb::start(800, 600);
    let nats = Nats::start().await;
    let agent = agent(&nats, &xvfb, true).await;
    let mut window = xvfb.recorder(0, 0, 400, 300);
    input(&agent, pointer(50, 50, pb::PointerAction::Click)).await.expect("focus click");
    // 300 distinct CJK characters: more than a keymap has spare keycodes, so borrowed keys
    // are remapped while the client may still be reading what was typed on them.
    let cjk: String = (0x4e00u32..0x4e00 + 300).filter_map(char::from_u32).collect();
    input(&agent, text(&cjk)).await.expect("type");
    window.expect_typed(&cjk);
}

#[tokio::test]
async fn without_consent_input_is_refused_and_nothing_moves() {
    let xvfb = Xvfb::start(800, 600);
    let nats = Nats::start().await;
    let agent = agent(&nats, &xvfb, false).await;
    xvfb.warp(10, 20);
    let mut window = xvfb.recorder(0, 0, 400, 300);
    for event in [pointer(300, 200, pb::PointerAction::Click), text("nope"), key("ctrl+c")] {
        let err = input(&agent, event).await.expect_err("no consent");
        assert_eq!(error_code(&err), pb::ErrorCode::ConsentRequired, "{err:?}");
    }
    let act = pb::DesktopActRequest {
        actions: vec![pb::DesktopAction {
            action: Some(pb::desktop_action::Action::Pointer(pb::PointerEvent {
                x: 300,
                y: 200,
                action: pb::PointerAction::Click as i32,
                ..Default::default()
            })),
        }],
        ..Default::default()
    };
    let err = agent.call(Op::DesktopAct(act)).await.expect_err("no consent");
    assert_eq!(error_code(&err), pb::ErrorCode::ConsentRequired, "{err:?}");
    assert_eq!(xvfb.pointer(), (10, 20), "the pointer never moved");
    assert!(window.drain(std::time::Duration::from_millis(300)).is_empty(), "the window got no input");
    // Screenshots stay allowed: they only look.
    assert!(agent.call(Op::DesktopScreenshot(Default::default())).await.is_ok());
}

#[tokio::test]
async fn off_screen_coordinates_are_an_error_not_a_clamp() {
    let xvfb = Xvfb::start(800, 600);
    let nats = Nats::start().await;
    let agent = agent(&nats, &xvfb, true).await;
    xvfb.warp(5, 5);
    for (x, y) in [(800, 10), (10, 600), (-1, 0), (5000, 5000)] {
        let err = input(&agent, pointer(x, y, pb::PointerAction::Move)).await.expect_err("off screen");
        assert_eq!(error_code(&err), pb::ErrorCode::Protocol, "{err:?}");
        assert_eq!(err.detail["width"], "800", "{err:?}");
    }
    let scaled = Event::Pointer(pb::PointerEvent {
        x: 400,
        y: 10,
        action: pb::PointerAction::Move as i32,
        space_width: 400,
        space_height: 300,
        ..Default::default()
    });
    assert!(input(&agent, scaled).await.is_err(), "outside the stated screenshot space");
    assert_eq!(xvfb.pointer(), (5, 5), "nothing moved");
}
