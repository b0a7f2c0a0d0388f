//! Turning protobuf values into text: human lines and JSON objects. The pb types do not derive
//! `Serialize`, so each JSON shape is spelled out here, once, with protocol field names.

use serde_json::{Value, json};
use tether_client::pb;

/// Short name of an entry kind.
pub fn kind_name(kind: pb::FsEntryKind) -> &'static str {
    match kind {
        pb::FsEntryKind::File => "file",
        pb::FsEntryKind::Directory => "dir",
        pb::FsEntryKind::Symlink => "link",
        pb::FsEntryKind::Fifo => "fifo",
        pb::FsEntryKind::Socket => "socket",
        pb::FsEntryKind::BlockDevice => "blockdev",
        pb::FsEntryKind::CharDevice => "chardev",
        pb::FsEntryKind::Unspecified => "?",
    }
}

/// `rwxr-xr-x` from st_mode permission bits (with setuid/setgid/sticky as `s`/`t`).
pub fn mode_string(mode: u32) -> String {
    let special = [(0o4000, 's'), (0o2000, 's'), (0o1000, 't')];
    let mut out = String::with_capacity(9);
    for (i, (special_bit, special_char)) in special.into_iter().enumerate() {
        let bits = (mode >> (6 - 3 * i)) & 0o7;
        out.push(if bits & 0o4 != 0 { 'r' } else { '-' });
        out.push(if bits & 0o2 != 0 { 'w' } else { '-' });
        let exec = bits & 0o1 != 0;
        out.push(match (mode & special_bit != 0, exec) {
            (true, true) => special_char,
            (true, false) => special_char.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    out
}

/// `2024-05-01T12:00:03Z` (UTC) from milliseconds since the Unix epoch.
pub fn format_time_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (day_secs / 3600, day_secs % 3600 / 60, day_secs % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (era-based day arithmetic: 400-year
/// eras of 146097 days, years starting in March so the leap day is last).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `1.5 GiB`-style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// One `ls` line: kind, permissions, size, mtime, path (and `-> target` for symlinks).
pub fn entry_line(entry: &pb::FsEntry) -> String {
    let mut line = format!(
        "{:<4} {} {:>12} {} {}",
        kind_name(entry.kind()),
        mode_string(entry.mode),
        entry.size,
        format_time_ms(entry.modified_ms),
        entry.path
    );
    if !entry.symlink_target.is_empty() {
        line.push_str(" -> ");
        line.push_str(&entry.symlink_target);
    }
    line
}

pub fn entry_json(entry: &pb::FsEntry) -> Value {
    json!({
        "name": entry.name,
        "path": entry.path,
        "kind": kind_name(entry.kind()),
        "size": entry.size,
        "modified_ms": entry.modified_ms,
        "mode": entry.mode,
        "symlink_target": entry.symlink_target,
    })
}

pub fn metrics_json(m: &pb::MetricsSample) -> Value {
    let gpus: Vec<Value> = m
        .gpus
        .iter()
        .map(|g| {
            json!({
                "name": g.name,
                "util_percent": g.util_percent,
                "mem_used_bytes": g.mem_used_bytes,
                "mem_total_bytes": g.mem_total_bytes,
            })
        })
        .collect();
    json!({
        "sampled_at_ms": m.sampled_at_ms,
        "cpu_percent": m.cpu_percent,
        "load1": m.load1,
        "load5": m.load5,
        "load15": m.load15,
        "mem_used_bytes": m.mem_used_bytes,
        "mem_total_bytes": m.mem_total_bytes,
        "disk_used_bytes": m.disk_used_bytes,
        "disk_total_bytes": m.disk_total_bytes,
        "run_queue": m.run_queue,
        "gpus": gpus,
    })
}

/// Human metrics, one fact per line.
pub fn metrics_lines(m: &pb::MetricsSample) -> Vec<String> {
    let mut lines = vec![
        format!("sampled_at  {}", format_time_ms(m.sampled_at_ms)),
        format!("cpu         {:.1}%", m.cpu_percent),
        format!("load        {:.2} {:.2} {:.2}", m.load1, m.load5, m.load15),
        format!("run_queue   {:.1}", m.run_queue),
        format!("memory      {}", used_of(m.mem_used_bytes, m.mem_total_bytes)),
        format!("disk        {}", used_of(m.disk_used_bytes, m.disk_total_bytes)),
    ];
    for gpu in &m.gpus {
        lines.push(format!(
            "gpu         {}: {:.0}% util, memory {}",
            gpu.name,
            gpu.util_percent,
            used_of(gpu.mem_used_bytes, gpu.mem_total_bytes)
        ));
    }
    lines
}

fn used_of(used: u64, total: u64) -> String {
    let percent = if total == 0 { 0.0 } else { used as f64 * 100.0 / total as f64 };
    format!("{} / {} ({percent:.0}%)", human_bytes(used), human_bytes(total))
}

fn capability_names(c: &pb::Capabilities) -> Vec<&'static str> {
    let flags = [
        (c.exec, "exec"),
        (c.filesystem, "filesystem"),
        (c.git, "git"),
        (c.pty, "pty"),
        (c.desktop, "desktop"),
        (c.consented_whole_machine, "whole_machine"),
        (c.consented_screen_control, "screen_control"),
        (c.fence_scoped, "fence_scoped"),
    ];
    flags.into_iter().filter_map(|(on, name)| on.then_some(name)).collect()
}

pub fn hello_line(h: &pb::Hello) -> String {
    let caps = h.capabilities.as_ref().map(capability_names).unwrap_or_default();
    format!(
        "hello agent={} version={} os={} arch={} machine={} root={} caps={}",
        h.agent_id,
        h.agent_version,
        h.os().as_str_name().trim_start_matches("OS_").to_lowercase(),
        h.arch().as_str_name().trim_start_matches("ARCH_").to_lowercase(),
        h.machine_name,
        h.workspace_root,
        caps.join(",")
    )
}

pub fn hello_json(h: &pb::Hello) -> Value {
    let caps = h.capabilities.clone().unwrap_or_default();
    json!({
        "type": "hello",
        "agent_id": h.agent_id,
        "workspace_id": h.workspace_id,
        "agent_version": h.agent_version,
        "os": h.os().as_str_name(),
        "arch": h.arch().as_str_name(),
        "machine_name": h.machine_name,
        "workspace_root": h.workspace_root,
        "binary_sha256": h.binary_sha256,
        "capabilities": {
            "exec": caps.exec,
            "filesystem": caps.filesystem,
            "git": caps.git,
            "pty": caps.pty,
            "desktop": caps.desktop,
            "consented_whole_machine": caps.consented_whole_machine,
            "consented_screen_control": caps.consented_screen_control,
            "desktop_unavailable_reason": caps.desktop_unavailable_reason,
            "virtual_root": caps.virtual_root,
            "fence_scoped": caps.fence_scoped,
            "max_payload": caps.max_payload,
        },
    })
}

pub fn event_line(e: &pb::AgentEvent) -> String {
    use pb::agent_event::Event;
    match &e.event {
        Some(Event::Heartbeat(hb)) => {
            let mut line = format!(
                "heartbeat agent={} seq={} uptime_ms={} sessions={} draining={}",
                e.agent_id, hb.seq, hb.uptime_ms, hb.active_sessions, hb.draining
            );
            if let Some(m) = &hb.metrics {
                line.push_str(&format!(" cpu={:.1}% load1={:.2}", m.cpu_percent, m.load1));
            }
            line
        }
        Some(Event::GoingOffline(g)) => format!(
            "going_offline agent={} reason={} message={:?}",
            e.agent_id,
            g.reason().as_str_name().trim_start_matches("GOING_OFFLINE_REASON_"),
            g.message
        ),
        None => format!("event agent={} (unknown kind)", e.agent_id),
    }
}

pub fn event_json(e: &pb::AgentEvent) -> Value {
    use pb::agent_event::Event;
    match &e.event {
        Some(Event::Heartbeat(hb)) => json!({
            "type": "heartbeat",
            "agent_id": e.agent_id,
            "seq": hb.seq,
            "uptime_ms": hb.uptime_ms,
            "active_sessions": hb.active_sessions,
            "draining": hb.draining,
            "metrics": hb.metrics.as_ref().map(metrics_json),
        }),
        Some(Event::GoingOffline(g)) => json!({
            "type": "going_offline",
            "agent_id": e.agent_id,
            "reason": g.reason().as_str_name(),
            "message": g.message,
        }),
        None => json!({ "type": "unknown", "agent_id": e.agent_id }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_strings() {
        assert_eq!(mode_string(0o100644), "rw-r--r--");
        assert_eq!(mode_string(0o40755), "rwxr-xr-x");
        assert_eq!(mode_string(0o4755), "rwsr-xr-x");
        assert_eq!(mode_string(0o1777), "rwxrwxrwt");
        assert_eq!(mode_string(0o2640), "rw-r-S---");
    }

    #[test]
    fn utc_timestamps() {
        assert_eq!(format_time_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time_ms(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_time_ms(1_714_564_803_999), "2024-05-01T12:00:03Z");
        assert_eq!(format_time_ms(-1000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(8 << 30), "8.0 GiB");
    }

    #[test]
    fn ls_line_has_kind_mode_size_time_path_and_link_target() {
        let entry = pb::FsEntry {
            name: "l".into(),
            path: "/w/l".into(),
            kind: pb::FsEntryKind::Symlink as i32,
            size: 4,
            modified_ms: 0,
            mode: 0o120777,
            symlink_target: "/etc".into(),
        };
        assert_eq!(entry_line(&entry), "link rwxrwxrwx            4 1970-01-01T00:00:00Z /w/l -> /etc");
        assert_eq!(entry_json(&entry)["kind"], "link");
    }

    #[test]
    fn event_lines_name_the_kind() {
        let e = pb::AgentEvent {
            agent_id: "a".into(),
            event: Some(pb::agent_event::Event::GoingOffline(pb::GoingOffline {
                reason: pb::GoingOfflineReason::UserStop as i32,
                message: "bye".into(),
            })),
        };
        assert_eq!(event_line(&e), "going_offline agent=a reason=USER_STOP message=\"bye\"");
        assert_eq!(event_json(&e)["reason"], "GOING_OFFLINE_REASON_USER_STOP");
    }
}
