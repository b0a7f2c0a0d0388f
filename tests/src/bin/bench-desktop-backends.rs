//! The two desktop backends side by side on one Xvfb at 1280x800, in one run, in process
//! (through the same `Screen` trait the agent drives): capture with xcap against x11rb's MIT-SHM
//! (and GetImage), a click with enigo against XTEST, and typing 50 characters (shifted,
//! Latin-1 and beyond) with each, counting what the x-recorder window (an independent X
//! client) actually received.
//!
//! ```sh
//! cargo build --release -p tether-tests --features portable-desktop \
//!     --bin bench-desktop-backends --bin x-recorder
//! target/release/bench-desktop-backends [ROUNDS]
//! ```
//! (Needs Xvfb and xsetroot, and the portable backend's system libraries: scripts/setup.sh.)

use std::time::{Duration, Instant};

use tether_agent::ops::desktop::portable::PortableScreen;
use tether_agent::ops::desktop::screen::{Button, Screen};
use tether_agent::ops::desktop::x11::X11Screen;
use tether_tests::bench::{self, Row};
use tether_tests::xvfb::{Recorder, Xvfb};

/// 50 characters: 16 need Shift on a US keymap, 5 are not on it at all.
const TEXT_50: &str = "Hello, World! Typing é ß → 中文 {QUIZ} ~#42 $5 ok?:)";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Prints one row (p50, p99 and the ratio of this p50 to the baseline's); returns the p50.
fn row(what: &str, mut samples: Vec<Duration>, baseline: Option<Duration>, note: &str) -> Duration {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    let ratio = match baseline {
        Some(b) => format!("{:.1}x", p50.as_secs_f64() / b.as_secs_f64()),
        None => "1x (baseline)".to_owned(),
    };
    println!("| {what} | {} | {} | {ratio} | {note} |", ms(p50), ms(p99));
    p50
}

fn time(rounds: usize, mut f: impl FnMut()) -> Vec<Duration> {
    (0..rounds)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect()
}

fn click(screen: &mut dyn Screen, x: i32, y: i32) {
    screen.pointer_move(x, y).expect("move");
    screen.button(Button::Left, true).expect("press");
    screen.button(Button::Left, false).expect("release");
    screen.sync().expect("sync");
}

/// Clicks `rounds` times at one point; returns the times and how many presses the window saw.
fn clicks(
    screen: &mut dyn Screen,
    window: &mut Recorder,
    rounds: usize,
    at: (i32, i32),
) -> (Vec<Duration>, usize) {
    let before = presses(window, at);
    let samples = time(rounds, || click(screen, at.0, at.1));
    (samples, presses(window, at) - before)
}

fn presses(window: &mut Recorder, (x, y): (i32, i32)) -> usize {
    let want = format!("button 1 {x} {y}");
    window.drain(Duration::from_millis(300)).iter().filter(|l| **l == want).count()
}

/// Types [`TEXT_50`] `rounds` times; returns the times and how many rounds arrived intact, and
/// the characters the window got against those sent.
fn typing(screen: &mut dyn Screen, window: &mut Recorder, rounds: usize) -> (Vec<Duration>, usize, usize) {
    let mut samples = Vec::with_capacity(rounds);
    let (mut intact, mut received) = (0, 0);
    for _ in 0..rounds {
        window.drain(Duration::from_millis(50));
        let before = window.typed().chars().count();
        let started = Instant::now();
        screen.text(TEXT_50).expect("type");
        screen.sync().expect("sync");
        samples.push(started.elapsed());
        window.drain(Duration::from_millis(300));
        let got: String = window.typed().chars().skip(before).collect();
        received += got.chars().count();
        intact += usize::from(got == TEXT_50);
    }
    (samples, intact, received)
}

fn main() {
    assert_eq!(TEXT_50.chars().count(), 50);
    let rounds: usize = std::env::args().nth(1).map(|a| a.parse().expect("a number")).unwrap_or(100);
    let xvfb = Xvfb::start(1280, 800);
    xvfb.paint_root("#3a6ea5");
    // SAFETY: no other thread of this process exists yet (Xvfb is a child process), so nothing
    // reads the environment while it changes. xcap reads $DISPLAY on every call.
    unsafe { std::env::set_var("DISPLAY", &xvfb.display) };

    let mut shm = X11Screen::open(Some(&xvfb.display)).expect("x11rb");
    let mut getimage = X11Screen::open(Some(&xvfb.display)).expect("x11rb");
    getimage.disable_shm();
    let mut portable = PortableScreen::open(Some(&xvfb.display)).expect("xcap + enigo");
    assert_eq!(shm.capture(false).expect("capture"), {
        let mut f = portable.capture(false).expect("xcap capture");
        f.bgra.chunks_exact_mut(4).for_each(|p| p[3] = 0);
        f
    });

    println!("Xvfb 1280x800, {rounds} rounds (typing: {} rounds)\n", rounds.min(30));
    println!("| step | p50 ms | p99 ms | against the x11rb p50 | notes |");
    println!("|---|---:|---:|---:|---|");
    let base = row("capture, x11rb MIT-SHM", time(rounds, || drop(shm.capture(false))), None, "");
    row("capture, x11rb GetImage", time(rounds, || drop(getimage.capture(false))), Some(base), "");
    let xcap = row(
        "capture, xcap",
        time(rounds, || drop(portable.capture(false))),
        Some(base),
        "same pixels as MIT-SHM",
    );
    drop(getimage);

    let mut window = xvfb.recorder(100, 100, 800, 500);
    let n = rounds.min(100);
    let (samples, seen) = clicks(&mut shm, &mut window, n, (300, 300));
    let xtest_click =
        row("click (move, press, release, sync), XTEST", samples, None, &format!("{seen}/{n} arrived"));
    let (samples, seen) = clicks(&mut portable, &mut window, n, (310, 300));
    let enigo_click =
        row("click, enigo (default 12 ms delay)", samples, Some(xtest_click), &format!("{seen}/{n} arrived"));

    let n = rounds.min(30);
    click(&mut shm, 200, 200);
    let (samples, intact, received) = typing(&mut shm, &mut window, n);
    let note = format!("{intact}/{n} rounds intact, {received}/{} characters", n * 50);
    let xtest_typing = row("type 50 characters, XTEST", samples, None, &note);
    let xtest_received = received;
    // The x11rb backend gives its borrowed keycodes back; enigo starts from the same keymap.
    drop(shm);
    let mut portable_typing = PortableScreen::open(Some(&xvfb.display)).expect("enigo");
    let (samples, intact, received) = typing(&mut portable_typing, &mut window, n);
    let note = format!("{intact}/{n} rounds intact, {received}/{} characters", n * 50);
    let enigo_typing = row("type 50 characters, enigo", samples, Some(xtest_typing), &note);
    let last: String = window.typed().chars().rev().take(50).collect::<Vec<_>>().into_iter().rev().collect();
    println!("\nenigo's last round as the window got it: {last:?}");

    let area = "desktop backends on X11";
    let faster = |ours: Duration, theirs: Duration| {
        format!("{:.0}× faster", theirs.as_secs_f64() / ours.as_secs_f64())
    };
    let (capture, capture_base) = (base, xcap);
    bench::emit(&[
        Row::new(
            area,
            "capture 1280x800, x11rb MIT-SHM (the X11 backend), p50",
            format!("{} ms", ms(capture)),
        )
        .beside(
            format!("xcap (the portable backend) {} ms", ms(capture_base)),
            faster(capture, capture_base),
        ),
        Row::new(area, "click, XTEST, p50", format!("{} ms", ms(xtest_click)))
            .beside(format!("enigo {} ms", ms(enigo_click)), faster(xtest_click, enigo_click)),
        Row::new(
            area,
            format!("type 50 characters, XTEST, p50 ({xtest_received}/{} delivered)", n * 50),
            format!("{} ms", ms(xtest_typing)),
        )
        .beside(
            format!("enigo {} ms ({received}/{} delivered)", ms(enigo_typing), n * 50),
            faster(xtest_typing, enigo_typing),
        ),
    ]);
}
