//! The rows of `tether-bench`'s one table. Every benchmark program prints its own figures for a
//! person reading along; when `TETHER_BENCH_ROWS` names a file (`tether-bench` sets it), each
//! also appends its headline figures there, one JSON object a line, each beside the baseline it
//! measured in the same run, so the gathered table needs no parsing of prose.

use std::io::Write;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a benchmark program appends its rows, when set.
pub const ROWS_ENV: &str = "TETHER_BENCH_ROWS";

/// One measure of Tether beside its same-run baseline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// What part of the product: "requests", "transfers", "desktop", ...
    pub area: String,
    pub measure: String,
    /// Tether's figure with its unit.
    pub value: String,
    /// The baseline's name and figure, empty when the row has none.
    pub baseline: String,
    /// Tether against the baseline ("1.21×", "+145 µs"), empty when there is no baseline.
    pub ratio: String,
    pub goal: String,
}

impl Row {
    pub fn new(area: &str, measure: impl Into<String>, value: impl Into<String>) -> Row {
        Row { area: area.to_owned(), measure: measure.into(), value: value.into(), ..Row::default() }
    }

    /// Beside a baseline, with Tether's figure as a multiple of it.
    pub fn times(self, baseline: impl Into<String>, ratio: f64) -> Row {
        self.beside(baseline, format!("{ratio:.2}×"))
    }

    /// Beside a baseline, compared in words of the caller's choosing.
    pub fn beside(mut self, baseline: impl Into<String>, ratio: impl Into<String>) -> Row {
        self.baseline = baseline.into();
        self.ratio = ratio.into();
        self
    }

    pub fn goal(mut self, goal: impl Into<String>) -> Row {
        self.goal = goal.into();
        self
    }
}

/// Appends `rows` to the file `TETHER_BENCH_ROWS` names; does nothing when it is unset.
pub fn emit(rows: &[Row]) {
    let Some(path) = std::env::var_os(ROWS_ENV) else { return };
    let mut out = String::new();
    for row in rows {
        out.push_str(&serde_json::to_string(row).expect("a row serializes"));
        out.push('\n');
    }
    let mut file =
        std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("open the rows file");
    file.write_all(out.as_bytes()).expect("write the rows file");
}

/// The rows a file holds (lines that are not rows are skipped).
pub fn read(path: &std::path::Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// `d` in milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// `d` in microseconds, whole.
pub fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// `kib` as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// How a process's resident memory splits: (resident, anonymous: heap and stacks, file-backed:
/// mostly its own code and libraries' pages), in KiB, from /proc/<pid>/smaps_rollup.
pub fn rss_split(pid: i32) -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(name))?.split_whitespace().next()?.parse().ok()
    };
    let (rss, anon) = (field("Rss:")?, field("Anonymous:")?);
    Some((rss, anon, rss.saturating_sub(anon)))
}

/// "16.3 MiB (anonymous 6.1, file-backed 10.2)": a resident size with its split.
pub fn rss_text(pid: i32) -> String {
    match rss_split(pid) {
        Some((rss, anon, file)) => {
            format!(
                "{} (anonymous {:.1}, file-backed {:.1})",
                mib(rss),
                anon as f64 / 1024.0,
                file as f64 / 1024.0
            )
        }
        None => "unreadable".to_owned(),
    }
}

/// A `nats-responder` process (a raw NATS responder in a process of its own, as the agent is),
/// stopped when dropped, and when this process dies (its stdin closes).
pub struct Responder(std::process::Child);

impl Responder {
    /// Answers requests on `subject` with their own payload, or with `reply_bytes` bytes.
    pub fn start(nats: &crate::Nats, subject: &str, reply_bytes: Option<usize>) -> Responder {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut command = Command::new(crate::bin("nats-responder"));
        if let Some(token) = &nats.token {
            command.env("NATS_TOKEN", token);
        }
        let reply = reply_bytes.map_or("echo".to_owned(), |n| n.to_string());
        let mut child = command
            .args([nats.url.as_str(), subject, &reply])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start nats-responder");
        let stdout = child.stdout.take().expect("stdout");
        let responder = Responder(child);
        let mut ready = String::new();
        std::io::BufReader::new(stdout).read_line(&mut ready).expect("nats-responder output");
        assert_eq!(ready.trim(), "ready", "nats-responder did not start");
        responder
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
