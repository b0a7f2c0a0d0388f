//! `tether-bench --smoke`: every benchmark program runs end to end (its own nats-server,
//! relay, agents and Xvfb, tiny sizes) and lands its rows in the one table. No figure is
//! checked (they mean nothing at these sizes on a busy machine); that each program still runs
//! and reports is.

use std::process::Command;

/// The areas the table must have rows for: one per benchmark program.
const AREAS: &[&str] = &[
    "requests",
    "transfers",
    "workspace sync",
    "streamed output",
    "terminals",
    "relay replicas",
    "desktop",
    "fencing",
    "deduplication",
];

#[test]
fn every_benchmark_program_runs_and_reports_rows_beside_their_baselines() {
    let out =
        Command::new(tether_tests::bin("tether-bench")).arg("--smoke").output().expect("tether-bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String =
        stderr.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tether-bench --smoke failed:\n{table}\n--- stderr (end) ---\n{tail}");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| area") && !l.starts_with("|---"))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();
    let mut area = "";
    let mut seen = Vec::new();
    for row in &rows {
        assert_eq!(row.len(), 6, "a row has six cells: {row:?}");
        if !row[0].is_empty() {
            area = row[0];
            seen.push(area);
        }
        assert!(!row[2].is_empty(), "{area}: {} has no figure", row[1]);
    }
    for want in AREAS {
        assert!(seen.contains(want), "no rows for {want}:\n{table}");
    }
    let beside_a_baseline = rows.iter().filter(|r| !r[3].is_empty() && !r[4].is_empty()).count();
    assert!(beside_a_baseline * 2 > rows.len(), "most rows stand beside a baseline:\n{table}");
}
