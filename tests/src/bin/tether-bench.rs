//! One benchmark program for the whole product: runs every benchmark program of this crate
//! (each starts its own nats-server, relay, agents, Xvfb on loopback and measures its baselines
//! in the same run) and prints one markdown table of their headline figures, each beside its
//! baseline, under a description of the machine. Each program's own detailed output goes to
//! stderr as it runs. `--smoke` runs each for a few seconds with tiny sizes (CI runs it: the
//! figures then mean nothing, but every program must still run end to end).
//!
//! `cargo build --release --workspace --bins && target/release/tether-bench [--smoke]
//!  [--only NAME,...] > table.md`

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use tether_tests::bench::{self, Row};

/// A benchmark program with its arguments for a full run and for a smoke run.
struct Program {
    name: &'static str,
    full: &'static [&'static str],
    smoke: &'static [&'static str],
    /// For a program only some builds have: the build that makes it (it is skipped, with this
    /// note, where it is missing).
    built_by: Option<&'static str>,
}

const fn program(
    name: &'static str,
    full: &'static [&'static str],
    smoke: &'static [&'static str],
) -> Program {
    Program { name, full, smoke, built_by: None }
}

const PROGRAMS: &[Program] = &[
    program("bench-latency", &["2000", "256"], &["20", "8"]),
    program("bench-transfer", &["1024", "/dev/shm", "3"], &["4", "/tmp", "1"]),
    program("bench-sync", &["10000", "100", "5"], &["300", "4", "1"]),
    program("bench-stream", &["1024", "300"], &["4", "20"]),
    program("bench-pty", &["1000", "64"], &["20", "1"]),
    program("bench-relay-cluster", &["2000", "256", "1000", "100"], &["20", "2", "30", "5"]),
    program("bench-desktop", &["200", "5"], &["5", "1"]),
    program("bench-fence", &["10000", "200"], &["100", "5"]),
    program("bench-dedup", &["200"], &["5"]),
    Program {
        name: "bench-desktop-backends",
        full: &["200"],
        smoke: &["5"],
        built_by: Some(
            "cargo build --release -p tether-tests --features portable-desktop --bin bench-desktop-backends",
        ),
    },
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').map(str::to_owned).collect());
    let dir =
        std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default();
    let rows_file = tempfile::NamedTempFile::new().expect("a temp file for the rows");
    let load_before = load_average();
    let started = Instant::now();
    let (mut failed, mut skipped) = (Vec::new(), Vec::new());
    for program in PROGRAMS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|n| n == program.name)) {
            continue;
        }
        let path = dir.join(program.name);
        if let (Some(build), false) = (program.built_by, path.exists()) {
            skipped.push(format!("{} (not built: `{build}`)", program.name));
            continue;
        }
        let args = if smoke { program.smoke } else { program.full };
        eprintln!("\n=== {} {}", program.name, args.join(" "));
        let t = Instant::now();
        let status = Command::new(path)
            .args(args)
            .env(bench::ROWS_ENV, rows_file.path())
            .stdin(Stdio::null())
            .stdout(std::io::stderr())
            .status();
        match status {
            Ok(s) if s.success() => {
                eprintln!("=== {} done in {:.0} s", program.name, t.elapsed().as_secs_f64())
            }
            other => {
                eprintln!("=== {} FAILED: {other:?}", program.name);
                failed.push(program.name);
            }
        }
    }
    let rows = bench::read(rows_file.path());
    print!("{}", machine(smoke, &load_before, started.elapsed().as_secs()));
    print!("{}", table(&rows));
    if !skipped.is_empty() {
        println!("\nSkipped: {}", skipped.join("; "));
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("\nFailed: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

/// The table: one line per row, the area named once where it changes.
fn table(rows: &[Row]) -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut out = String::from(
        "| area | measure | Tether | baseline (same run) | Tether vs baseline | goal |\n|---|---|---:|---|---:|---|\n",
    );
    let mut last_area = "";
    for row in rows {
        let area = if row.area == last_area { "" } else { &row.area };
        last_area = &row.area;
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            cell(area),
            cell(&row.measure),
            cell(&row.value),
            cell(&row.baseline),
            cell(&row.ratio),
            cell(&row.goal)
        ));
    }
    out
}

/// What the figures were measured on.
fn machine(smoke: bool, load_before: &str, seconds: u64) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / (1u64 << 20) as f64);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cgroup = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() { "v2" } else { "v1" };
    let nats = version("nats-server", "--version");
    let profile = if cfg!(debug_assertions) { "debug (figures not comparable)" } else { "release" };
    format!(
        "{kind} of `tether-bench`, {date}, {seconds} s\n\n\
         - machine: {cores} cores ({cpu}), {mem_gib:.1} GiB, Linux {kernel}, cgroup {cgroup}\n\
         - load average before: {load_before}; after: {load_after}\n\
         - {nats}; build: {profile}\n\n",
        kind = if smoke { "Smoke run (tiny sizes: the figures mean nothing)" } else { "Full run" },
        date = version("date", "-u"),
        cpu = cpu.unwrap_or("unknown CPU"),
        kernel = kernel.trim(),
        load_after = load_average(),
    )
}

fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// The first line a program prints, or that it is missing.
fn version(program: &str, arg: &str) -> String {
    match Command::new(program).arg(arg).output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_owned(),
        Err(_) => format!("{program}: not found"),
    }
}
