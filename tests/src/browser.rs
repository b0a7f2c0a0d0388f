//! A real headless Chromium (Debian's `chromium` package) driven over the DevTools protocol, for
//! the tests of the relay's `/view` page. No browser is downloaded: the system one is used, and
//! a test skips when there is none, unless `TETHER_REQUIRE_BROWSER` is set (CI sets it, so a
//! missing browser fails there). Chromium runs with a fresh profile in a temporary directory, in
//! a process group of its own that is killed, whole, when the [`Browser`] drops.
//!
//! The driver is small on purpose: one websocket per page target, commands answered by id,
//! events ignored.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::relay::Ws;

/// How long the browser has to start, a command to answer, or a condition to hold.
const WAIT: Duration = Duration::from_secs(20);

/// The Chromium binary, if this machine has one.
pub fn chromium() -> Option<PathBuf> {
    // The real binary, not Debian's wrapper script (which does not always exec it).
    ["/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A running headless Chromium.
pub struct Browser {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium, or `None` (after saying why on stderr) when there is none and
    /// `TETHER_REQUIRE_BROWSER` is unset. Panics when it is required and missing.
    pub async fn start_or_skip(test: &str) -> Option<Browser> {
        let Some(exe) = chromium() else {
            assert!(
                std::env::var_os("TETHER_REQUIRE_BROWSER").is_none(),
                "TETHER_REQUIRE_BROWSER is set but no chromium is installed (scripts/setup.sh installs it)"
            );
            eprintln!(
                "SKIP {test}: no chromium installed (apt install chromium; set TETHER_REQUIRE_BROWSER=1 to fail instead)"
            );
            return None;
        };
        Some(Self::start(exe).await)
    }

    async fn start(exe: PathBuf) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(&exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1024,768",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
        let mut browser = Browser { child, port: 0, _profile: profile };
        let active = browser._profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + WAIT;
        loop {
            let text = std::fs::read_to_string(&active).unwrap_or_default();
            if let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
                browser.port = port;
                return browser;
            }
            if let Ok(Some(status)) = browser.child.try_wait() {
                panic!("chromium exited before it listened: {status}");
            }
            assert!(Instant::now() < deadline, "chromium wrote no DevToolsActivePort within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new tab showing `url`, loaded.
    pub async fn open(&self, url: &str) -> Page {
        let target = {
            let mut browser = self.browser_socket().await;
            let created = browser.call("Target.createTarget", json!({ "url": "about:blank" })).await;
            created["targetId"].as_str().expect("a target id").to_owned()
        };
        let mut page = Page { ws: self.socket(&format!("/devtools/page/{target}")).await, next: 0 };
        page.call("Page.enable", json!({})).await;
        page.call("Runtime.enable", json!({})).await;
        page.navigate(url).await;
        page
    }

    /// The browser-level DevTools socket (its path is DevToolsActivePort's second line).
    async fn browser_socket(&self) -> Page {
        let path = std::fs::read_to_string(self._profile.path().join("DevToolsActivePort"))
            .expect("DevToolsActivePort")
            .lines()
            .nth(1)
            .expect("the browser socket path")
            .to_owned();
        Page { ws: self.socket(&path).await, next: 0 }
    }

    async fn socket(&self, path: &str) -> Ws {
        let url = format!("ws://127.0.0.1:{}{path}", self.port);
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("DevTools socket {url}: {e}"));
        ws
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: the browser and its zygote, renderer and utility processes.
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// One tab, driven over its own DevTools socket.
pub struct Page {
    ws: Ws,
    next: u64,
}

impl Page {
    /// Sends a command and returns its result; panics on a protocol error.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(Message::text(msg)).await.expect("send a DevTools command");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method} got no answer within {WAIT:?}"));
            let text = match msg {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                other => panic!("the DevTools socket ended during {method}: {other:?}"),
            };
            let reply: Value = serde_json::from_str(&text).expect("DevTools sends JSON");
            if reply["id"].as_u64() != Some(id) {
                continue; // an event
            }
            if let Some(error) = reply.get("error") {
                panic!("{method} failed: {error}");
            }
            return reply["result"].clone();
        }
    }

    /// Loads `url` and waits for the document to be complete.
    pub async fn navigate(&mut self, url: &str) {
        let result = self.call("Page.navigate", json!({ "url": url })).await;
        assert!(result.get("errorText").is_none(), "navigating to {url}: {result}");
        self.wait_for("the page to load", "document.readyState === 'complete'").await;
    }

    /// The value of a JavaScript expression (awaited when it is a promise).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let params = json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        let result = self.call("Runtime.evaluate", params).await;
        if let Some(e) = result.get("exceptionDetails") {
            panic!("{expression} threw: {e}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page; fails the test after a while.
    pub async fn wait_for(&mut self, what: &str, expression: &str) {
        let deadline = Instant::now() + WAIT;
        while self.eval(expression).await != Value::Bool(true) {
            assert!(Instant::now() < deadline, "timed out waiting for {what} ({expression})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types text into the focused element, as an input method would.
    pub async fn insert_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// Presses and releases Enter.
    pub async fn press_enter(&mut self) {
        for kind in ["keyDown", "keyUp"] {
            let mut params = json!({
                "type": kind, "key": "Enter", "code": "Enter",
                "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13,
            });
            if kind == "keyDown" {
                params["text"] = json!("\r");
            }
            self.call("Input.dispatchKeyEvent", params).await;
        }
    }

    /// Presses and releases one key that types `text` (a single character: "a", "H").
    pub async fn type_key(&mut self, text: &str) {
        let code = format!("Key{}", text.to_uppercase());
        for kind in ["keyDown", "keyUp"] {
            let mut params = json!({ "type": kind, "key": text, "code": code });
            if kind == "keyDown" {
                params["text"] = json!(text);
            }
            self.call("Input.dispatchKeyEvent", params).await;
        }
    }

    /// Turns the mouse wheel at page coordinates by `delta_y` CSS pixels (positive = down).
    pub async fn wheel(&mut self, x: f64, y: f64, delta_y: f64) {
        let params = json!({ "type": "mouseWheel", "x": x, "y": y, "deltaX": 0, "deltaY": delta_y });
        self.call("Input.dispatchMouseEvent", params).await;
    }

    /// A left click at page coordinates (CSS pixels).
    pub async fn click(&mut self, x: f64, y: f64) {
        self.call("Input.dispatchMouseEvent", json!({ "type": "mouseMoved", "x": x, "y": y })).await;
        for kind in ["mousePressed", "mouseReleased"] {
            let params = json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 });
            self.call("Input.dispatchMouseEvent", params).await;
        }
    }

    /// Makes the viewport `width`×`height` CSS pixels (the page sees a window resize).
    pub async fn resize(&mut self, width: u32, height: u32) {
        let params = json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false });
        self.call("Emulation.setDeviceMetricsOverride", params).await;
    }

    /// A PNG screenshot of the viewport, decoded: (width, height, RGBA pixels).
    pub async fn screenshot(&mut self) -> (u32, u32, Vec<u8>) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" })).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 screenshot");
        let mut decoder = png::Decoder::new(std::io::Cursor::new(png));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::ALPHA);
        let mut reader = decoder.read_info().expect("a PNG screenshot");
        let mut pixels = vec![0; reader.output_buffer_size().expect("buffer size")];
        let info = reader.next_frame(&mut pixels).expect("decode the screenshot");
        pixels.truncate(info.buffer_size());
        assert_eq!(
            (info.color_type, info.bit_depth),
            (png::ColorType::Rgba, png::BitDepth::Eight),
            "screenshot pixel format"
        );
        (info.width, info.height, pixels)
    }
}
