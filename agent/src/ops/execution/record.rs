//! What outlives the agent of its executions: one small JSON record per execution in
//! `<state>/exec/records/`, written when it starts and again when it ends. A new agent reads
//! them to (1) kill the process groups a crashed predecessor left running (checked against the
//! recorded process start time, so a reused pid is never hit) and (2) answer questions about
//! those executions with a clear "ended: the agent restarted" instead of NOT_FOUND. Blocking
//! file I/O: callers run it on the blocking pool.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tether_proto::pb;

use crate::process::kill_group;

/// One execution as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub scope: String,
    pub exec_id: String,
    pub command: Vec<String>,
    pub started_at_ms: u64,
    pub pid: i32,
    /// Start time of the process in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub proc_start: Option<u64>,
    pub end: Option<EndRecord>,
}

/// How it ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndRecord {
    pub status: i32,
    pub reason: String,
    pub exit_code: i32,
    pub signal: i32,
    pub timed_out: bool,
    pub duration_ms: u64,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub ended_at_ms: u64,
}

impl Record {
    /// The state a client of a later agent instance is told.
    pub fn previous_state(&self) -> pb::ExecState {
        let mut state = pb::ExecState {
            exec_id: self.exec_id.clone(),
            command: self.command.clone(),
            started_at_ms: self.started_at_ms,
            previous_instance: true,
            exit_code: -1,
            ..Default::default()
        };
        match &self.end {
            Some(end) if end.status == pb::ExecStatus::Exited as i32 => {
                state.status = end.status;
                state.end_reason = end.reason.clone();
                state.exit_code = end.exit_code;
                state.signal = end.signal;
                state.timed_out = end.timed_out;
                state.duration_ms = end.duration_ms;
                state.stdout_bytes = end.stdout_bytes;
                state.stderr_bytes = end.stderr_bytes;
            }
            _ => {
                state.status = pb::ExecStatus::Lost as i32;
                state.end_reason = "ended: the agent restarted while it ran".to_owned();
            }
        }
        state
    }

    /// When it ended (or started, if it never recorded an end), unix ms.
    pub fn last_ms(&self) -> u64 {
        self.end.as_ref().map_or(self.started_at_ms, |e| e.ended_at_ms)
    }
}

/// The records directory (none: nothing is recorded, e.g. in unit tests).
#[derive(Debug, Clone)]
pub struct Records(Option<PathBuf>);

impl Records {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Records(dir)
    }

    fn path(&self, scope: &str, exec_id: &str) -> Option<PathBuf> {
        let mut h = Sha256::new();
        h.update(scope.as_bytes());
        h.update([0]);
        h.update(exec_id.as_bytes());
        let name: String = h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.0.as_ref().map(|d| d.join(format!("{name}.json")))
    }

    /// Writes (replaces) the record, atomically.
    pub fn write(&self, record: &Record) {
        let Some(path) = self.path(&record.scope, &record.exec_id) else { return };
        let result = (|| -> std::io::Result<()> {
            let dir = path.parent().unwrap_or(&path);
            fs::create_dir_all(dir)?;
            let tmp = path.with_extension("tmp");
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&serde_json::to_vec(record)?)?;
            drop(file);
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = result {
            tracing::warn!(error = %e, "recording an execution in the state directory");
        }
    }

    pub fn remove(&self, scope: &str, exec_id: &str) {
        if let Some(path) = self.path(scope, exec_id) {
            let _ = fs::remove_file(path);
        }
    }

    /// Reads the records a previous instance left, killing the groups of those it did not see
    /// end. Unreadable records are deleted.
    pub fn take_over(&self) -> Vec<Record> {
        let Some(dir) = &self.0 else { return Vec::new() };
        let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let parsed = fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Record>(&b).ok());
            let Some(record) = parsed else {
                let _ = fs::remove_file(&path);
                continue;
            };
            if record.end.is_none()
                && record.pid > 1
                && proc_start(record.pid).is_some_and(|s| Some(s) == record.proc_start)
            {
                tracing::warn!(pid = record.pid, "killing a command a previous agent left running");
                let _ = kill_group(Pid::from_raw(record.pid), Signal::SIGKILL);
            }
            records.push(record);
        }
        records
    }
}

/// The start time of process `pid` in clock ticks since boot, if it exists.
pub fn proc_start(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_running_one_is_lost_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(Some(dir.path().join("records")));
        let mut r = Record {
            scope: "s".into(),
            exec_id: "a".into(),
            command: vec!["sleep".into(), "1".into()],
            started_at_ms: 5,
            pid: i32::MAX - 3,
            proc_start: Some(1),
            end: None,
        };
        records.write(&r);
        r.exec_id = "b".into();
        r.end = Some(EndRecord {
            status: pb::ExecStatus::Exited as i32,
            reason: "exited".into(),
            exit_code: 3,
            signal: 0,
            timed_out: false,
            duration_ms: 9,
            stdout_bytes: 1,
            stderr_bytes: 2,
            ended_at_ms: 14,
        });
        records.write(&r);
        let mut back = records.take_over();
        back.sort_by(|a, b| a.exec_id.cmp(&b.exec_id));
        assert_eq!(back.len(), 2);
        let lost = back[0].previous_state();
        assert_eq!(lost.status, pb::ExecStatus::Lost as i32);
        assert!(lost.end_reason.contains("agent restarted"), "{lost:?}");
        let exited = back[1].previous_state();
        assert_eq!((exited.status, exited.exit_code), (pb::ExecStatus::Exited as i32, 3));
        assert!(exited.previous_instance);
    }

    #[test]
    fn our_own_start_time_is_readable() {
        assert!(proc_start(std::process::id() as i32).is_some());
    }
}
