//! `tetherctl` drives the desktop end to end: screenshot to a file (PNG and JPEG, scaled),
//! click, move, drag, scroll, key, type, and act with a JSON file, against a real agent on a
//! real Xvfb, checked by the x-recorder window and the test's own X connection.

use std::process::Output;

use tether_tests::xvfb::Xvfb;
use tether_tests::{Agent, AgentOpts, Nats};

fn run(agent: &Agent, nats: &Nats, args: &[&str]) -> Output {
    let output = agent.tetherctl(nats).args(args).output().expect("run tetherctl");
    assert!(
        output.status.success(),
        "tetherctl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        agent.log()
    );
    output
}

#[tokio::test]
async fn tetherctl_takes_screenshots_and_drives_the_pointer_and_keyboard() {
    let xvfb = Xvfb::start(1280, 800);
    let nats = Nats::start().await;
    let opts = AgentOpts {
        env: vec![("DISPLAY".into(), xvfb.display.clone())],
        args: vec!["--consent-screen-control".into()],
        ..Default::default()
    };
    let agent = Agent::start_with(&nats, opts).await;
    let dir = tempfile::tempdir().expect("tempdir");

    let png = dir.path().join("shot.png");
    let out = run(
        &agent,
        &nats,
        &["--json", "screenshot", "-o", png.to_str().expect("test step"), "--max-width", "640"],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((report["width"].as_u64(), report["height"].as_u64()), (Some(640), Some(400)));
    assert_eq!(report["native_width"].as_u64(), Some(1280));
    assert!(std::fs::read(&png).expect("test step").starts_with(b"\x89PNG"));
    let jpeg = dir.path().join("shot.jpeg");
    run(&agent, &nats, &["screenshot", "-o", jpeg.to_str().expect("test step"), "--jpeg", "70"]);
    assert!(std::fs::read(&jpeg).expect("test step").starts_with(&[0xff, 0xd8]));

    let mut window = xvfb.recorder(0, 0, 1280, 800);
    run(&agent, &nats, &["move", "40", "50"]);
    assert_eq!(xvfb.pointer(), (40, 50));
    run(&agent, &nats, &["click", "100", "60", "--button", "right"]);
    window.expect("right click", |l| l == "button 3 100 60");
    run(&agent, &nats, &["click", "50", "30", "--space", "640x400"]);
    window.expect("click mapped from screenshot space", |l| l == "button 1 101 61");
    run(&agent, &nats, &["drag", "10", "10", "200", "150"]);
    window.expect("drag release", |l| l == "release 1 200 150");
    run(&agent, &nats, &["scroll", "0", "-2", "--at", "300", "300"]);
    window.expect("wheel up", |l| l == "button 4 300 300");
    run(&agent, &nats, &["type", "hi ✓"]);
    window.expect_typed("hi ✓");
    run(&agent, &nats, &["key", "ctrl+c"]);
    window.expect("ctrl+c", |l| l.starts_with("key 0x63 "));

    let act = dir.path().join("act.json");
    std::fs::write(
        &act,
        r#"{"actions": [{"type": "ok"}, {"key": "Return"}], "screenshot": {"max_width": 320}}"#,
    )
    .expect("test step");
    let after = dir.path().join("after.png");
    let out = run(
        &agent,
        &nats,
        &["--json", "act", act.to_str().expect("test step"), "-o", after.to_str().expect("test step")],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["actions_done"].as_u64(), Some(2), "{report}");
    assert_eq!(report["screenshot"]["width"].as_u64(), Some(320));
    assert!(std::fs::read(&after).expect("test step").starts_with(b"\x89PNG"));
    window.expect_typed("hi ✓ok");
    window.expect("Return", |l| l.starts_with("key 0xff0d "));
}
