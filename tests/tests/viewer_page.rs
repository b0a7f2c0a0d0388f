//! The relay's `/view` page in a real headless Chromium (tests/src/browser.rs), against the
//! real relay, agent and (for the desktop) Xvfb, opened at the URLs `tetherctl shell
//! --print-url` and `tetherctl desktop --print-url` print: the page shows a terminal's output, what is
//! typed or pasted into it reaches the PTY (checked by files the remote shell writes), a resized page
//! resizes the PTY (`stty size`), a relay restart resumes without a repeated line, a desktop
//! channel is drawn (a screenshot of the page shows the colour painted on the root window), a
//! view-only page's clicks do not move the pointer while a control page's do, and a control
//! page's click, wheel and keys reach a window on the desktop, and on a TILES channel the page
//! composites delta frames: a small change shows where it happened while the rest stays.
//!
//! Skipped when no chromium is installed, unless TETHER_REQUIRE_BROWSER is set (CI sets it).

use std::time::Duration;

use serde_json::Value;
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_proto::token::ViewerMode;
use tether_tests::browser::{Browser, Page};
use tether_tests::relay::{Relay, claims_for, viewer_token};
use tether_tests::xvfb::Xvfb;
use tether_tests::{Agent, AgentOpts, Nats, eventually, pb};

/// The page's URL for `channel` with a fresh token of `mode`: everything after `#`.
fn view_url(relay: &Relay, channel: &pb::StreamChannel, viewer: &str, mode: ViewerMode) -> String {
    let token = viewer_token(&claims_for(channel, viewer, mode));
    format!(
        "http://{}/view#token={token}&ws={}&agent={}&port={}&channel={}",
        relay.addr, channel.workspace_id, channel.agent_id, channel.port, channel.channel_id
    )
}

/// `tetherctl ARGS` printing a page URL for this agent through `relay` (the viewer token is
/// minted from the relay's viewer secret in the environment).
fn print_url(agent: &Agent, nats: &Nats, relay: &Relay, args: &[&str]) -> String {
    let out = agent
        .tetherctl(nats)
        .env("TETHER_RELAY_URL", relay.stream_url())
        .env("TETHER_RELAY_VIEWER_SECRET", tether_tests::relay::VIEWER_SECRET)
        .args(args)
        .output()
        .expect("tetherctl runs");
    assert!(out.status.success(), "tetherctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let url = String::from_utf8(out.stdout).expect("utf-8").trim().to_owned();
    let prefix = format!("http://{}/view#token=ogs_", relay.addr);
    assert!(url.starts_with(&prefix), "{url}");
    url
}

async fn stack(opts: AgentOpts) -> (Relay, Nats, Agent) {
    let relay = Relay::start(&[]).await;
    let nats = Nats::start().await;
    let agent = Agent::start_with(&nats, AgentOpts { relay_url: Some(relay.stream_url()), ..opts }).await;
    (relay, nats, agent)
}

async fn open_pty(agent: &Agent, command: &[&str]) -> pb::StreamChannel {
    let req =
        pb::PtyOpenRequest { command: command.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    match agent.call(Op::PtyOpen(req)).await {
        Ok(Reply::PtyOpen(r)) => r.channel.expect("a channel"),
        other => panic!("pty_open failed: {other:?}\n{}", agent.log()),
    }
}

/// What the page's view reports (`window.tetherView.inspect()`).
async fn inspect(page: &mut Page) -> Value {
    page.eval("window.tetherView.inspect()").await
}

async fn live(page: &mut Page) {
    page.wait_for("the page to be live", "window.tetherView.state === 'live'").await;
}

/// Types a command line into the page's terminal.
async fn type_line(page: &mut Page, line: &str) {
    page.insert_text(line).await;
    page.press_enter().await;
}

fn file(agent: &Agent, name: &str) -> String {
    std::fs::read_to_string(agent.root.join(name)).unwrap_or_default()
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy() {
    let relay = Relay::start(&[]).await;
    let (status, body) = relay.get("/view").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#"<script src="view/app.js">"#), "{body}");
    assert!(!body.contains("<script>"), "no inline script: {body}");
    for path in ["/view/app.js", "/view/app.css"] {
        assert_eq!(relay.get(path).await.0, 200, "{path}");
    }
    let head = raw_head(&relay, "/view").await;
    for want in [
        "content-type: text/html; charset=utf-8",
        "script-src 'self';",
        "connect-src 'self';",
        "frame-ancestors 'none'",
        "cache-control: no-cache",
        "x-content-type-options: nosniff",
    ] {
        assert!(head.contains(want), "{want:?} missing from\n{head}");
    }
    assert!(raw_head(&relay, "/view/app.js").await.contains("content-type: text/javascript"));
}

/// The response head of GET `path`, lower-cased.
async fn raw_head(relay: &Relay, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(relay.addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).to_lowercase();
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_terminal_page_shows_output_sends_keys_and_resizes_the_pty() {
    let Some(browser) = Browser::start_or_skip("a_terminal_page_shows_output").await else { return };
    let (relay, nats, agent) = stack(AgentOpts::default()).await;
    // `tetherctl shell --print-url` opens the terminal and prints the page that shows it.
    let url = print_url(&agent, &nats, &relay, &["shell", "--print-url", "--", "sh"]);
    let mut page = browser.open(&url).await;
    live(&mut page).await;

    type_line(&mut page, "echo typed-$((6*7)) > typed.txt; echo shown-$((6*7))").await;
    eventually("the typed command ran on the agent", || file(&agent, "typed.txt") == "typed-42\n").await;
    // Rendered: the output line (the echo of the command shows `$((6*7))`, not 42).
    page.wait_for(
        "the output on screen",
        "document.querySelector('.xterm-rows').textContent.includes('shown-42')",
    )
    .await;

    // A paste (the clipboard event xterm.js handles; its newline ends the line).
    let paste = "(() => { const dt = new DataTransfer(); dt.setData('text/plain', 'echo pasted-$((6*7)) > pasted.txt\\n'); \
                 document.querySelector('.xterm-helper-textarea').dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true })); return true; })()";
    assert_eq!(page.eval(paste).await, true);
    eventually("the pasted command ran", || file(&agent, "pasted.txt") == "pasted-42\n").await;

    let before = inspect(&mut page).await;
    page.resize(640, 360).await;
    page.wait_for(
        "the terminal to refit",
        &format!("window.tetherView.inspect().cols !== {}", before["cols"]),
    )
    .await;
    // Let the fit settle (a ResizeObserver may fire twice), then read the size the page chose.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = inspect(&mut page).await;
    let want = format!("{} {}\n", after["rows"], after["cols"]);
    assert_ne!((&before["cols"], &before["rows"]), (&after["cols"], &after["rows"]));
    type_line(&mut page, "stty size > size.txt").await;
    eventually("stty size ran", || !file(&agent, "size.txt").is_empty()).await;
    assert_eq!(file(&agent, "size.txt"), want, "the PTY has the page's size");
}

#[tokio::test]
async fn a_relay_restart_resumes_the_terminal_page_without_repeated_lines() {
    let Some(browser) = Browser::start_or_skip("a_relay_restart_resumes").await else { return };
    let (mut relay, _nats, agent) = stack(AgentOpts::default()).await;
    const LINES: usize = 80;
    let script =
        format!("i=0; while [ $i -lt {LINES} ]; do i=$((i+1)); echo line-$i; sleep 0.05; done; sleep 600");
    let channel = open_pty(&agent, &["sh", "-c", &script]).await;
    let mut page = browser.open(&view_url(&relay, &channel, "page", ViewerMode::View)).await;
    page.wait_for("some lines", "window.tetherView.inspect().text.includes('line-10\\n')").await;

    relay.kill_and_restart().await;
    page.wait_for("the last line", &format!("window.tetherView.inspect().text.includes('line-{LINES}\\n') || window.tetherView.inspect().text.endsWith('line-{LINES}')")).await;
    let text = inspect(&mut page).await["text"].as_str().expect("text").to_owned();
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| l.starts_with("line-")).collect();
    let want: Vec<String> = (1..=LINES).map(|i| format!("line-{i}")).collect();
    assert_eq!(lines, want, "every line once, in order");
    let state = page.eval("[window.tetherView.reconnects, window.tetherView.state]").await;
    assert!(state[0].as_u64() >= Some(1), "the page saw the relay go away: {state}");
    assert_eq!(state[1], "live", "{state}");

    // An expired token: the page stops and says so (it cannot mint a new one).
    let mut expired = claims_for(&channel, "late", ViewerMode::View);
    expired.exp = tether_tests::relay::now_unix() - 10;
    let url = format!(
        "http://{}/view#token={}&ws={}&agent={}&port={}&channel={}",
        relay.addr,
        viewer_token(&expired),
        channel.workspace_id,
        channel.agent_id,
        channel.port,
        channel.channel_id
    );
    let mut late = browser.open(&url).await;
    late.wait_for("the page to give up", "window.tetherView.state === 'closed'").await;
    let detail = late.eval("window.tetherView.detail").await;
    assert!(detail.as_str().is_some_and(|d| d.contains("expired")), "{detail}");
}

/// The canvas's box in the page: (left, top, width, height) in CSS pixels.
async fn canvas_box(page: &mut Page) -> (f64, f64, f64, f64) {
    let r = page.eval("(() => { const r = document.querySelector('canvas').getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; })()").await;
    let n = |i: usize| r[i].as_f64().expect("a number");
    (n(0), n(1), n(2), n(3))
}

/// Whether the screenshot pixel at the canvas's centre is `rgb` (JPEG is close, not exact).
async fn centre_is(page: &mut Page, rgb: [u8; 3]) -> bool {
    pixel_is(page, (0.5, 0.5), rgb).await
}

/// Whether the screenshot pixel at `at` (fractions of the canvas's width and height) is `rgb`.
async fn pixel_is(page: &mut Page, at: (f64, f64), rgb: [u8; 3]) -> bool {
    let (x, y, w, h) = canvas_box(page).await;
    let (width, _, pixels) = page.screenshot().await;
    let (cx, cy) = ((x + w * at.0) as usize, (y + h * at.1) as usize);
    let at = (cy * width as usize + cx) * 4;
    pixels[at..at + 3].iter().zip(rgb).all(|(a, b)| a.abs_diff(b) < 24)
}

/// Polls (bounded) until the page shows `rgb` at `at`.
async fn shows(page: &mut Page, at: (f64, f64), rgb: [u8; 3]) -> bool {
    for _ in 0..100 {
        if pixel_is(page, at, rgb).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_desktop_page_draws_frames_and_only_a_control_page_moves_the_pointer() {
    let Some(browser) = Browser::start_or_skip("a_desktop_page_draws_frames").await else { return };
    let xvfb = Xvfb::start(640, 480);
    xvfb.paint_root("#c03020");
    let opts = AgentOpts {
        env: vec![("DISPLAY".into(), xvfb.display.clone())],
        args: vec!["--consent-screen-control".into(), "--desktop-fps".into(), "20".into()],
        ..Default::default()
    };
    let (relay, nats, agent) = stack(opts).await;

    // `tetherctl desktop --print-url` ensures the desktop stream and prints its page.
    let url = print_url(&agent, &nats, &relay, &["desktop", "--print-url", "--view-only"]);
    let mut watcher = browser.open(&url).await;
    watcher.wait_for("a frame", "window.tetherView.inspect().frames > 0").await;
    assert_eq!(inspect(&mut watcher).await["width"], 640);
    assert_eq!(
        watcher.eval("[window.tetherView.viewOnly, !document.getElementById('badge').hidden]").await,
        serde_json::json!([true, true]),
        "a view token's page says it is view only"
    );
    let mut drawn = false;
    for _ in 0..100 {
        if centre_is(&mut watcher, [0xc0, 0x30, 0x20]).await {
            drawn = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(drawn, "the page shows the root window's colour");
    xvfb.paint_root("#2050d0");
    let mut redrawn = false;
    for _ in 0..100 {
        if centre_is(&mut watcher, [0x20, 0x50, 0xd0]).await {
            redrawn = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(redrawn, "the page draws the new frame after the screen changed");

    // View only: clicks on the canvas do not reach the desktop.
    xvfb.warp(5, 5);
    let (x, y, _, _) = canvas_box(&mut watcher).await;
    watcher.click(x + 200.0, y + 150.0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(xvfb.pointer(), (5, 5), "a view-only page does not move the pointer");
    // The relay would drop a view token's input anyway; the page does not even send it.
    let dropped = relay.metric("tether_relay_input_dropped_total{reason=\"view_mode\"}").await;
    assert_eq!(dropped, 0, "a view-only page sends no input");

    // Control: the same click lands where the page shows it.
    let url = print_url(&agent, &nats, &relay, &["desktop", "--print-url"]);
    let mut pilot = browser.open(&url).await;
    pilot.wait_for("a frame", "window.tetherView.inspect().frames > 0").await;
    assert_eq!(pilot.eval("window.tetherView.viewOnly").await, false);
    let (x, y, w, _) = canvas_box(&mut pilot).await;
    let scale = w / 640.0;
    pilot.click(x + 200.0 * scale, y + 150.0 * scale).await;
    eventually("the control page's click moved the pointer", || {
        let (px, py) = xvfb.pointer();
        (px - 200).abs() <= 1 && (py - 150).abs() <= 1
    })
    .await;
}

#[tokio::test]
async fn a_control_desktop_page_clicks_scrolls_and_types_into_a_window() {
    let Some(browser) = Browser::start_or_skip("a_control_desktop_page_clicks").await else { return };
    let xvfb = Xvfb::start(640, 480);
    let opts = AgentOpts {
        env: vec![("DISPLAY".into(), xvfb.display.clone())],
        args: vec!["--consent-screen-control".into(), "--desktop-fps".into(), "20".into()],
        ..Default::default()
    };
    let (relay, nats, agent) = stack(opts).await;
    let mut window = xvfb.recorder(0, 0, 640, 480);
    let url = print_url(&agent, &nats, &relay, &["desktop", "--print-url"]);
    let mut page = browser.open(&url).await;
    page.wait_for("a frame", "window.tetherView.inspect().frames > 0").await;
    let (x, y, w, _) = canvas_box(&mut page).await;
    let scale = w / 640.0;
    let (px, py) = (x + 200.0 * scale, y + 150.0 * scale);

    page.click(px, py).await;
    window.expect("a left click at (200, 150)", |l| l == "button 1 200 150");
    // Three notches down (100 CSS pixels each), where the pointer is.
    page.wheel(px, py, 300.0).await;
    window.expect("wheel down", |l| l == "button 5 200 150");
    // The click focused the canvas: keys go to the desktop as text.
    for key in ["H", "i"] {
        page.type_key(key).await;
    }
    window.expect_typed("Hi");
}

#[tokio::test]
async fn a_tiles_desktop_page_draws_a_small_change_over_the_picture() {
    use x11rb::connection::Connection;
    use x11rb::protocol::xproto::{ConnectionExt as _, CreateGCAux, Rectangle};
    use x11rb::wrapper::ConnectionExt as _;
    let Some(browser) = Browser::start_or_skip("a_tiles_desktop_page").await else { return };
    let xvfb = Xvfb::start(640, 480);
    xvfb.paint_root("#c03020");
    let opts = AgentOpts {
        env: vec![("DISPLAY".into(), xvfb.display.clone())],
        args: vec!["--desktop-fps".into(), "20".into()],
        ..Default::default()
    };
    let (relay, nats, agent) = stack(opts).await;
    let url = print_url(&agent, &nats, &relay, &["desktop", "--print-url", "--view-only", "--tiles"]);
    let mut page = browser.open(&url).await;
    page.wait_for("a frame", "window.tetherView.inspect().frames > 0").await;
    assert!(shows(&mut page, (0.5, 0.5), [0xc0, 0x30, 0x20]).await, "the key frame is drawn");

    // A 100x100 square at the centre: only its tiles travel, and the page draws them in place.
    let conn = xvfb.connect();
    let root = conn.setup().roots[0].root;
    let gc = conn.generate_id().expect("id");
    conn.create_gc(gc, root, &CreateGCAux::new().foreground(0x2050d0)).expect("gc");
    let square = Rectangle { x: 270, y: 190, width: 100, height: 100 };
    conn.poly_fill_rectangle(root, gc, &[square]).expect("fill");
    conn.sync().expect("sync");
    assert!(shows(&mut page, (0.5, 0.5), [0x20, 0x50, 0xd0]).await, "the change is drawn where it is");
    let view = inspect(&mut page).await;
    assert!(view["tileFrames"].as_u64().is_some_and(|n| n > 0), "drawn from tile frames: {view}");
    assert!(pixel_is(&mut page, (0.1, 0.1), [0xc0, 0x30, 0x20]).await, "the rest of the picture stays");
}
