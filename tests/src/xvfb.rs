//! A real Xvfb for desktop tests, on a display number no other test (or process) holds,
//! killed on drop; and the independent checkers: pointer position through the test's own X
//! connection, root-window colour through `xsetroot`, and the `x-recorder` client that
//! prints the input events its window receives. None of them goes through the agent.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use x11rb::connection::Connection;
use x11rb::protocol::xproto::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use crate::{Proc, WAIT, bin};

/// A display number that no X server holds now (no lock file, nothing answering), spread by
/// the test process id so parallel test binaries rarely race for one.
pub fn free_display() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = 300 + (std::process::id() % 200) * 20;
    loop {
        let n = base + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4000;
        let taken = std::path::Path::new(&format!("/tmp/.X{n}-lock")).exists()
            || std::path::Path::new(&format!("/tmp/.X11-unix/X{n}")).exists();
        if !taken {
            return n;
        }
    }
}

/// Whether an X server answers on display `n`.
pub fn answers(n: u32) -> bool {
    RustConnection::connect(Some(&format!(":{n}"))).is_ok()
}

/// A running Xvfb.
pub struct Xvfb {
    pub number: u32,
    pub display: String,
    pub width: u32,
    pub height: u32,
    _proc: Proc,
}

impl Xvfb {
    /// Starts Xvfb at `width x height` and waits until it answers.
    pub fn start(width: u32, height: u32) -> Xvfb {
        for _ in 0..5 {
            let number = free_display();
            let display = format!(":{number}");
            let mut proc = Proc::spawn(
                "Xvfb",
                Command::new("Xvfb")
                    .arg(&display)
                    .args(["-screen", "0", &format!("{width}x{height}x24"), "-nolisten", "tcp", "-noreset"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
            .expect("Xvfb is missing: apt-get install xvfb (scripts/setup.sh)");
            let deadline = Instant::now() + WAIT;
            while proc.try_status().is_none() && Instant::now() < deadline {
                if answers(number) {
                    return Xvfb { number, display, width, height, _proc: proc };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("Xvfb did not start on any free display");
    }

    pub fn connect(&self) -> RustConnection {
        RustConnection::connect(Some(&self.display)).expect("connect to the test Xvfb").0
    }

    /// Where the pointer is, as this test's own X connection sees it.
    pub fn pointer(&self) -> (i32, i32) {
        let conn = self.connect();
        let root = conn.setup().roots[0].root;
        let reply = conn.query_pointer(root).expect("QueryPointer").reply().expect("QueryPointer reply");
        (reply.root_x.into(), reply.root_y.into())
    }

    /// Moves the pointer through the test's own connection (WarpPointer).
    pub fn warp(&self, x: i16, y: i16) {
        let conn = self.connect();
        let root = conn.setup().roots[0].root;
        conn.warp_pointer(x11rb::NONE, root, 0, 0, 0, 0, x, y).expect("WarpPointer");
        conn.sync().expect("sync");
    }

    /// Paints the root window one colour with `xsetroot`.
    pub fn paint_root(&self, colour: &str) {
        let status = Command::new("xsetroot")
            .args(["-display", &self.display, "-solid", colour])
            .status()
            .expect("xsetroot is missing: apt-get install x11-xserver-utils (scripts/setup.sh)");
        assert!(status.success(), "xsetroot failed");
    }

    /// Starts the `x-recorder` test client with a window at `(x, y)` of `w x h`.
    pub fn recorder(&self, x: i32, y: i32, w: u32, h: u32) -> Recorder {
        let mut cmd = Command::new(bin("x-recorder"));
        cmd.env("DISPLAY", &self.display)
            .args([x.to_string(), y.to_string(), w.to_string(), h.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc::spawn("x-recorder", &mut cmd).expect("start x-recorder");
        let stdout = proc.take_stdout().expect("recorder stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let recorder = Recorder { lines, seen: Vec::new(), _proc: proc };
        recorder.wait_for_line(|l| l.starts_with("ready")).expect("x-recorder did not map its window");
        recorder
    }
}

/// SIGTERM, so Xvfb removes its lock file and socket (a SIGKILL would leave them in /tmp).
impl Drop for Xvfb {
    fn drop(&mut self) {
        self._proc.stop(Duration::from_secs(5));
    }
}

/// The event log of an `x-recorder` window.
pub struct Recorder {
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    _proc: Proc,
}

impl Recorder {
    fn wait_for_line(&self, want: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if want(&line) => return Some(line),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    /// Every line printed so far (after `ready`), waiting briefly for stragglers.
    pub fn drain(&mut self, quiet: Duration) -> &[String] {
        while let Ok(line) = self.lines.recv_timeout(quiet) {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Waits until a line satisfying `want` arrives; fails the test after [`WAIT`].
    pub fn expect(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.seen.iter().find(|l| want(l)) {
            return line.clone();
        }
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("x-recorder never printed {what}; it printed {:?}", self.seen);
    }

    /// The text typed into the window so far (its `char` lines).
    pub fn typed(&self) -> String {
        self.seen.iter().filter_map(|l| l.strip_prefix("char ")).collect()
    }

    /// Waits until the typed text is `want` (or fails showing what arrived).
    pub fn expect_typed(&mut self, want: &str) {
        let deadline = Instant::now() + WAIT;
        while self.typed() != want {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
            match self.lines.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(_) => break,
            }
        }
        assert_eq!(self.typed(), want, "typed text; recorder lines {:?}", self.seen);
    }
}

/// Decodes an RGB PNG (as the agent's screenshots are) to (width, height, RGB bytes).
pub fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("PNG pixels");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}
