//! What the desktop ops cost, end to end through NATS and the real agent on a real Xvfb at
//! 1280x800, with the baselines measured in the same run: a process per action (`xdotool`, as
//! tool-driven computer-use stacks do), GetImage instead of MIT-SHM, PNG at the encoder's
//! default settings instead of the fast ones, a Lanczos3 resize instead of bilinear.
//!
//! `cargo build --release --workspace --bins && target/release/bench-desktop [ROUNDS] [STREAM_SECS]`
//! (needs Xvfb, xsetroot and xdotool: scripts/setup.sh installs them.)
//! `target/release/bench-desktop stream` runs only the desktop stream part: the TILES encoding
//! against WHOLE frames (the baseline), twice each, interleaved.

use std::process::Command;
use std::time::{Duration, Instant};

use tether_agent::ops::desktop::screen::{Frame, Screen};
use tether_agent::ops::desktop::x11::X11Screen;
use tether_agent::ops::desktop::{encode, jpeg};
use tether_proto::pb::control_request::Op;
use tether_proto::pb::control_response::Result as Reply;
use tether_proto::pb::desktop_input_request::Event;
use tether_tests::bench::{self, Row};
use tether_tests::xvfb::Xvfb;
use tether_tests::{Agent, AgentOpts, Nats, pb};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ConnectionExt as _, Rectangle};
use x11rb::wrapper::ConnectionExt as _;

const TEXT_50: &str = "The quick brown fox jumps over the lazy dog 012345";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Prints one table row; returns the p50.
fn row(what: &str, mut samples: Vec<Duration>, baseline: Option<(&str, Duration)>) -> Duration {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    let versus = match baseline {
        Some((name, b)) => {
            format!("{name}: {} ms, {:.1}x faster", ms(b), b.as_secs_f64() / p50.as_secs_f64())
        }
        None => String::new(),
    };
    println!("| {what} | {} | {} | {versus} |", ms(p50), ms(p99));
    let goal = GOALS.iter().find(|(m, _)| what.starts_with(m)).map(|(_, g)| *g);
    if baseline.is_some() || goal.is_some() {
        let mut r =
            Row::new("desktop", format!("{what}, p50"), format!("{} ms", ms(p50))).goal(goal.unwrap_or(""));
        if let Some((name, b)) = baseline {
            r = r.beside(
                format!("{name} {} ms", ms(b)),
                format!("{:.1}× faster", b.as_secs_f64() / p50.as_secs_f64()),
            );
        }
        ROWS.lock().expect("rows").push(r);
    }
    p50
}

/// The goals, by the start of a row's name.
const GOALS: &[(&str, &str)] = &[
    ("screenshot 1280x800 PNG", "≤ 15 ms"),
    ("screenshot 1280x800 JPEG", "≤ 10 ms"),
    ("downscale 2560x1600 -> 1280x800, bilinear", "≤ 5 ms"),
    ("click (desktop_input)", "≤ 2 ms"),
    ("type 50 chars (desktop_input", "≤ 50 ms"),
    ("act-then-look", "≤ 150 ms"),
];

/// The rows for `tether-bench`, gathered as the tables print.
static ROWS: std::sync::Mutex<Vec<Row>> = std::sync::Mutex::new(Vec::new());

fn time<T>(rounds: usize, mut f: impl FnMut() -> T) -> Vec<Duration> {
    (0..rounds)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(f());
            started.elapsed()
        })
        .collect()
}

async fn time_async<F: std::future::Future>(rounds: usize, mut f: impl FnMut() -> F) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        std::hint::black_box(f().await);
        samples.push(started.elapsed());
    }
    samples
}

/// A desktop-like screen: a light background, a dark title bar, and 45 lines of "text" (small
/// dark glyph-sized rectangles), so PNG and JPEG costs are those of a screen with writing on
/// it, not of a flat colour.
fn paint_desktop(xvfb: &Xvfb) {
    xvfb.paint_root("#f4f4f2");
    let conn = xvfb.connect();
    let root = conn.setup().roots[0].root;
    let gc = conn.generate_id().expect("id");
    conn.create_gc(gc, root, &x11rb::protocol::xproto::CreateGCAux::new().foreground(0x202830)).expect("gc");
    conn.poly_fill_rectangle(root, gc, &[Rectangle { x: 0, y: 0, width: 1280, height: 36 }]).expect("bar");
    conn.change_gc(gc, &x11rb::protocol::xproto::ChangeGCAux::new().foreground(0x303030)).expect("gc");
    let mut seed = 0x1234_5678_u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for line in 0..45 {
        let y = 60 + line * 16;
        let mut x = 40i32;
        let mut glyphs = Vec::new();
        while x < 1200 {
            let w = 2 + (next() % 6) as u16;
            let h = 5 + (next() % 6) as u16;
            glyphs.push(Rectangle { x: x as i16, y: (y + 10 - h as i32) as i16, width: w, height: h });
            x += i32::from(w) + 2 + if next() % 7 == 0 { 6 } else { 0 };
        }
        conn.poly_fill_rectangle(root, gc, &glyphs).expect("glyphs");
    }
    conn.sync().expect("sync");
}

async fn call(agent: &Agent, op: Op) -> Reply {
    match agent.call(op).await {
        Ok(reply) => reply,
        Err(e) => panic!("{e:?}\n{}", agent.log()),
    }
}

fn xdotool(xvfb: &Xvfb, args: &[&str]) {
    let status = Command::new("xdotool").env("DISPLAY", &xvfb.display).args(args).status().expect("xdotool");
    assert!(status.success());
}

fn shot_request(format: pb::ImageFormat, quality: u32) -> Op {
    Op::DesktopScreenshot(pb::DesktopScreenshotRequest {
        format: format as i32,
        quality,
        ..Default::default()
    })
}

fn png_with(rgb: &[u8], frame: &Frame, c: png::Compression, f: png::Filter) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, frame.width, frame.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(c);
    encoder.set_filter(f);
    let mut writer = encoder.write_header().expect("header");
    writer.write_image_data(rgb).expect("data");
    writer.finish().expect("finish");
    out
}

fn default_png(frame: &Frame) -> Vec<u8> {
    let rgb: Vec<u8> = frame.bgra.chunks_exact(4).flat_map(|p| [p[2], p[1], p[0]]).collect();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, frame.width, frame.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("header");
    writer.write_image_data(&rgb).expect("data");
    writer.finish().expect("finish");
    out
}

fn lanczos(frame: &Frame, width: u32, height: u32) -> Vec<u8> {
    use fast_image_resize::{PixelType, ResizeOptions, Resizer, images::Image, images::ImageRef};
    let src = ImageRef::new(frame.width, frame.height, &frame.bgra, PixelType::U8x4).expect("src");
    let mut dst = Image::new(width, height, PixelType::U8x4);
    Resizer::new().resize(&src, &mut dst, &ResizeOptions::new().use_alpha(false)).expect("resize");
    dst.into_vec()
}

/// The captured screen tiled 2x2: a 2560x1600 frame with the same content.
fn doubled(frame: &Frame) -> Frame {
    let (w, h) = (frame.width as usize, frame.height as usize);
    let mut bgra = Vec::with_capacity(w * h * 16);
    for row in 0..2 * h {
        let line = &frame.bgra[(row % h) * w * 4..(row % h + 1) * w * 4];
        bgra.extend_from_slice(line);
        bgra.extend_from_slice(line);
    }
    Frame { width: frame.width * 2, height: frame.height * 2, bgra }
}

#[tokio::main]
async fn main() {
    let arg = std::env::args().nth(1);
    let secs: u64 = std::env::args().nth(2).map(|a| a.parse().expect("seconds")).unwrap_or(5);
    let stream_window = Duration::from_secs(secs.max(1));
    if arg.as_deref() == Some("stream") {
        let xvfb = Xvfb::start(1280, 800);
        let nats = Nats::start().await;
        stream(&xvfb, &nats, stream_window).await;
        return bench::emit(&ROWS.lock().expect("rows"));
    }
    let rounds: usize = arg.map(|a| a.parse().expect("a number")).unwrap_or(100);
    let xvfb = Xvfb::start(1280, 800);
    paint_desktop(&xvfb);
    let nats = Nats::start().await;
    let opts = AgentOpts {
        env: vec![("DISPLAY".into(), xvfb.display.clone())],
        args: vec!["--consent-screen-control".into()],
        ..Default::default()
    };
    let agent = Agent::start_with(&nats, opts).await;
    println!("bench-desktop: {rounds} rounds, Xvfb 1280x800, agent {:?}\n", agent.caps().desktop_backend);

    println!("In process (the agent's own functions):\n");
    println!("| step | p50 ms | p99 ms | baseline (same run) |\n|---|---|---|---|");
    let mut screen = X11Screen::open(Some(&xvfb.display)).expect("open display");
    let frame = screen.capture(false).expect("capture");
    let shm = time(rounds, || screen.capture(false).expect("capture"));
    screen.disable_shm();
    let get_image = time(rounds, || screen.capture(false).expect("capture"));
    let get_image_p50 = row("capture 1280x800, GetImage (fallback)", get_image, None);
    row("capture 1280x800, MIT-SHM", shm, Some(("GetImage", get_image_p50)));
    let slow_png = time(rounds / 5 + 1, || default_png(&frame));
    let slow_png_p50 = row("PNG encode, png crate defaults", slow_png, None);
    let fast_png = time(rounds, || encode::png(&frame).expect("png"));
    row("PNG encode, fast settings", fast_png, Some(("defaults", slow_png_p50)));
    println!(
        "| (PNG size: fast {} KB, defaults {} KB) | | | |",
        encode::png(&frame).expect("test step").len() / 1024,
        default_png(&frame).len() / 1024
    );
    let rgb: Vec<u8> = frame.bgra.chunks_exact(4).flat_map(|p| [p[2], p[1], p[0]]).collect();
    for (c, f) in
        [(png::Compression::Fastest, png::Filter::Up), (png::Compression::Balanced, png::Filter::Up)]
    {
        let size = png_with(&rgb, &frame, c, f).len() / 1024;
        row(
            &format!("PNG encode (RGB given), {c:?} + {f:?} filter: {size} KB"),
            time(rounds / 5 + 1, || png_with(&rgb, &frame, c, f)),
            None,
        );
    }
    let one_thread = time(rounds, || jpeg::encode_in_strips(&frame, 80, 1).expect("jpeg"));
    let one_thread_p50 = row("JPEG q80 encode, one thread", one_thread, None);
    row(
        "JPEG q80 encode, strips on every core (agent)",
        time(rounds, || jpeg::encode(&frame, 80).expect("jpeg")),
        Some(("one thread", one_thread_p50)),
    );
    let big = doubled(&frame);
    let lanczos_p50 =
        row("downscale 2560x1600 -> 1280x800, Lanczos3", time(rounds, || lanczos(&big, 1280, 800)), None);
    row(
        "downscale 2560x1600 -> 1280x800, bilinear (agent)",
        time(rounds, || encode::resize(&big, 1280, 800).expect("resize")),
        Some(("Lanczos3", lanczos_p50)),
    );
    drop(screen);

    println!("\nRound trips through NATS and the agent:\n");
    println!("| request | p50 ms | p99 ms | baseline (same run) |\n|---|---|---|---|");
    let png = time_async(rounds, || call(&agent, shot_request(pb::ImageFormat::Png, 0))).await;
    row("screenshot 1280x800 PNG", png, None);
    let jpeg = time_async(rounds, || call(&agent, shot_request(pb::ImageFormat::Jpeg, 80))).await;
    row("screenshot 1280x800 JPEG q80", jpeg, None);

    let mut window = xvfb.recorder(200, 200, 400, 300);
    let click = || {
        let event =
            pb::PointerEvent { x: 10, y: 10, action: pb::PointerAction::Click as i32, ..Default::default() };
        Op::DesktopInput(pb::DesktopInputRequest { event: Some(Event::Pointer(event)) })
    };
    let xdo_click = time(rounds.min(50), || xdotool(&xvfb, &["mousemove", "10", "10", "click", "1"]));
    let xdo_click_p50 = percentile(
        &{
            let mut s = xdo_click.clone();
            s.sort();
            s
        },
        0.5,
    );
    row("click: xdotool process per action", xdo_click, None);
    row(
        "click (desktop_input)",
        time_async(rounds, || call(&agent, click())).await,
        Some(("xdotool", xdo_click_p50)),
    );

    let typing = || {
        let event = pb::KeyEvent { key: TEXT_50.into(), is_text: true, action: pb::KeyAction::Press as i32 };
        Op::DesktopInput(pb::DesktopInputRequest { event: Some(Event::Key(event)) })
    };
    let xdo_type_default = time(3, || xdotool(&xvfb, &["type", TEXT_50]));
    let xdo_default_p50 = row("type 50 chars: xdotool type (default 12 ms delay)", xdo_type_default, None);
    let xdo_type = time(rounds.min(30), || xdotool(&xvfb, &["type", "--delay", "0", TEXT_50]));
    let xdo_fast_p50 = row("type 50 chars: xdotool type --delay 0", xdo_type, None);
    let ours = time_async(rounds.min(50), || call(&agent, typing())).await;
    let ours_p50 =
        row("type 50 chars (desktop_input text)", ours, Some(("xdotool default", xdo_default_p50)));
    println!("| (vs xdotool --delay 0: {:.1}x) | | | |", xdo_fast_p50.as_secs_f64() / ours_p50.as_secs_f64());
    window.drain(Duration::from_millis(200));

    // Each click toggles the recorder window's colour: the screen changes every time.
    let act = || {
        let event = pb::PointerEvent {
            x: 300,
            y: 300,
            action: pb::PointerAction::Click as i32,
            ..Default::default()
        };
        Op::DesktopAct(pb::DesktopActRequest {
            actions: vec![pb::DesktopAction { action: Some(pb::desktop_action::Action::Pointer(event)) }],
            screenshot: Some(pb::DesktopScreenshotRequest::default()),
            ..Default::default()
        })
    };
    let mut outcomes = std::collections::BTreeMap::<i32, usize>::new();
    let mut samples = Vec::new();
    for _ in 0..rounds.min(50) {
        let started = Instant::now();
        if let Reply::DesktopAct(reply) = call(&agent, act()).await {
            *outcomes.entry(reply.settle).or_default() += 1;
        }
        samples.push(started.elapsed());
    }
    let shot_p50 = {
        let mut s = time_async(10, || call(&agent, shot_request(pb::ImageFormat::Png, 0))).await;
        s.sort();
        percentile(&s, 0.5)
    };
    let fixed = xdo_click_p50 + Duration::from_secs(2) + shot_p50;
    row(
        "act-then-look: click + settled PNG screenshot",
        samples,
        Some(("xdotool click + sleep 2 s + screenshot", fixed)),
    );
    let names: Vec<String> = outcomes
        .iter()
        .map(|(k, n)| format!("{} {n}", pb::SettleOutcome::try_from(*k).unwrap_or_default().as_str_name()))
        .collect();
    println!("| (settle outcomes: {}) | | | |", names.join(", "));
    drop(window);
    drop(agent);
    stream(&xvfb, &nats, stream_window).await;
    bench::emit(&ROWS.lock().expect("rows"));
}

/// The agent's CPU time so far (user + system), from /proc.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("agent stat");
    let fields: Vec<&str> = stat.rsplit(')').next().expect("stat").split_whitespace().collect();
    // After the command name: state is field 3, utime 14 and stime 15 (1-based) -> 11, 12 here.
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// What one viewer saw over a window.
struct Watched {
    frames: usize,
    deltas: usize,
    bytes: usize,
    cpu: f64,
    secs: f64,
}

impl Watched {
    fn summary(&self) -> String {
        format!(
            "{:.1} fps, {:.2} MB/s, agent CPU {:.0} %",
            self.frames as f64 / self.secs,
            self.bytes as f64 / self.secs / 1e6,
            self.cpu
        )
    }
}

/// Frames (and how many were deltas), bytes and agent CPU a viewer sees over `window`.
async fn watch(ws: &mut tether_tests::relay::Ws, pid: i32, window: Duration) -> Watched {
    let cpu = cpu_time(pid);
    let deadline = Instant::now() + window;
    let mut seen = Watched { frames: 0, deltas: 0, bytes: 0, cpu: 0.0, secs: window.as_secs_f64() };
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, tether_tests::relay::recv(ws)).await {
            Ok(Some(tether_proto::frame::Frame::Data(f))) => {
                seen.frames += 1;
                seen.deltas += usize::from(f.delta);
                seen.bytes += f.data.len();
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the relay closed the viewer"),
            Err(_) => break,
        }
    }
    seen.cpu = (cpu_time(pid) - cpu).as_secs_f64() / window.as_secs_f64() * 100.0;
    seen
}

/// The desktop stream through a real relay, WHOLE frames (the baseline) and TILES, twice each,
/// interleaved: a static screen, then one where a 300x200 block moves every 10 ms (a dragged
/// window), at `--desktop-fps 30`.
async fn stream(xvfb: &Xvfb, nats: &Nats, window: Duration) {
    println!("\nDesktop stream (JPEG q70, --desktop-fps 30, 1280x800), one viewer through the relay:\n");
    println!(
        "| encoding | screen | frames/s | of which deltas | bytes/s | agent CPU % |\n|---|---|---:|---:|---:|---:|"
    );
    let mut last = Vec::new();
    for _ in 0..2 {
        last.clear();
        for encoding in [pb::DesktopFrameEncoding::Whole, pb::DesktopFrameEncoding::Tiles] {
            last.push(stream_one(xvfb, nats, encoding, window).await);
        }
    }
    let [(whole_static, whole_changing), (tiles_static, tiles_changing)] = [&last[0], &last[1]];
    let mut rows = ROWS.lock().expect("rows");
    rows.push(
        Row::new("desktop", "stream, changing screen, TILES", tiles_changing.summary())
            .beside(
                format!("WHOLE frames {}", whole_changing.summary()),
                format!("{:.2}× the bytes", tiles_changing.bytes as f64 / whole_changing.bytes.max(1) as f64),
            )
            .goal("≥ 24 fps under 3 MB/s"),
    );
    rows.push(
        Row::new("desktop", "stream, static screen, TILES", tiles_static.summary())
            .beside(format!("WHOLE frames {}", whole_static.summary()), "")
            .goal("no frame after the first, CPU near zero"),
    );
}

fn stream_row(encoding: pb::DesktopFrameEncoding, screen: &str, seen: &Watched, window: Duration) {
    let secs = window.as_secs_f64();
    println!(
        "| {} | {screen} | {:.1} | {:.1} | {:.0} | {:.1} |",
        encoding.as_str_name().trim_start_matches("DESKTOP_FRAME_ENCODING_"),
        seen.frames as f64 / secs,
        seen.deltas as f64 / secs,
        seen.bytes as f64 / secs,
        seen.cpu
    );
}

/// Static, then changing: what the viewer saw of each.
async fn stream_one(
    xvfb: &Xvfb,
    nats: &Nats,
    encoding: pb::DesktopFrameEncoding,
    window: Duration,
) -> (Watched, Watched) {
    use tether_proto::token::ViewerMode;
    use tether_tests::relay::{self, Relay};
    paint_desktop(xvfb);
    let relay = Relay::start(&[]).await;
    let opts = AgentOpts {
        env: vec![("DISPLAY".into(), xvfb.display.clone())],
        args: vec!["--desktop-fps".into(), "30".into()],
        relay_url: Some(relay.stream_url()),
        ..Default::default()
    };
    let agent = Agent::start_with(nats, opts).await;
    let request = pb::DesktopEnsureRequest { frame_encoding: encoding as i32, ..Default::default() };
    let Reply::DesktopEnsure(ensured) = call(&agent, Op::DesktopEnsure(request)).await else {
        panic!("desktop_ensure")
    };
    assert_eq!(ensured.frame_encoding(), encoding);
    let channel = ensured.channel.expect("channel");
    let token = relay::viewer_token(&relay::claims_for(&channel, "bench", ViewerMode::View));
    let open = tether_proto::frame::Frame::Open(pb::StreamOpen {
        channel: Some(channel.clone()),
        token,
        role: pb::StreamRole::Client as i32,
        resume_from_seq: 0,
    });
    let url = relay.url_for(&channel.workspace_id, &channel.agent_id, channel.port, &channel.channel_id);
    let (mut ws, ack) = relay::open(&url, open).await;
    assert!(ack.accepted);
    let pid = agent.proc.pid();
    watch(&mut ws, pid, Duration::from_secs(1)).await; // the first frames
    let still = watch(&mut ws, pid, window).await;
    stream_row(encoding, "static (after the first frame)", &still, window);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let painter = {
        let (stop, display) = (stop.clone(), xvfb.display.clone());
        std::thread::spawn(move || {
            let (conn, _) = x11rb::rust_connection::RustConnection::connect(Some(&display)).expect("x11");
            let root = conn.setup().roots[0].root;
            let gc = conn.generate_id().expect("id");
            conn.create_gc(gc, root, &x11rb::protocol::xproto::CreateGCAux::new()).expect("gc");
            let mut step = 0i32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let x = (step * 7) % 980;
                let colour = 0x3050a0 + (step as u32 % 64) * 0x10203;
                conn.change_gc(gc, &x11rb::protocol::xproto::ChangeGCAux::new().foreground(colour))
                    .expect("gc");
                conn.poly_fill_rectangle(
                    root,
                    gc,
                    &[Rectangle { x: x as i16, y: 300, width: 300, height: 200 }],
                )
                .expect("fill");
                conn.sync().expect("sync");
                step += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let seen = watch(&mut ws, pid, window).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    painter.join().expect("painter");
    stream_row(encoding, "changing (a 300x200 block moving every 10 ms)", &seen, window);
    (still, seen)
}
