//! Host metrics for heartbeats and the metrics op (PROTOCOL.md §5 MetricsSample). CPU usage is a
//! difference between two readings, so one long-lived [`MetricsSampler`] keeps the previous
//! reading and is shared (behind a mutex) by the heartbeat task and the op. Sampling reads
//! /proc and calls statvfs: it blocks, so callers run it in `spawn_blocking`.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sysinfo::{MINIMUM_CPU_UPDATE_INTERVAL, System};
use tether_proto::pb;

/// Keeps the state CPU usage is computed against.
pub struct MetricsSampler {
    /// None where sysinfo does not support the platform: CPU and memory then read 0.
    system: Option<System>,
    /// When CPU counters were last read.
    cpu_read_at: Instant,
    /// CPU usage between the last two readings; None until there are two.
    cpu_percent: Option<f64>,
}

impl MetricsSampler {
    /// Takes the first CPU reading, so a sample taken later measures the time in between.
    pub fn new() -> Self {
        let system = match System::new() {
            Ok(mut system) => {
                system.refresh_cpu_usage();
                Some(system)
            }
            Err(e) => {
                tracing::warn!(error = %e, "host metrics unavailable; reporting zeros");
                None
            }
        };
        Self { system, cpu_read_at: Instant::now(), cpu_percent: None }
    }

    /// One sample; `disk_path` names the filesystem whose usage is reported (the workspace
    /// root). The first call may sleep up to sysinfo's minimum CPU interval (200 ms) after
    /// `new`; later calls closer together than that reuse the last CPU figure.
    pub fn sample(&mut self, disk_path: &Path) -> pb::MetricsSample {
        let cpu_percent = self.cpu_percent();
        let load = System::load_average().unwrap_or_else(|e| {
            tracing::debug!(error = %e, "load average unavailable");
            sysinfo::LoadAvg::default()
        });
        let (mem_used_bytes, mem_total_bytes) = match self.system.as_mut() {
            Some(system) => {
                system.refresh_memory();
                (system.used_memory(), system.total_memory())
            }
            None => (0, 0),
        };
        let (disk_used_bytes, disk_total_bytes) = disk_usage(disk_path);
        pb::MetricsSample {
            sampled_at_ms: unix_ms(),
            cpu_percent,
            load1: load.one,
            load5: load.five,
            load15: load.fifteen,
            mem_used_bytes,
            mem_total_bytes,
            disk_used_bytes,
            disk_total_bytes,
            run_queue: run_queue().unwrap_or(load.one),
            gpus: Vec::new(),
        }
    }

    fn cpu_percent(&mut self) -> f64 {
        let Some(system) = self.system.as_mut() else { return 0.0 };
        let since = self.cpu_read_at.elapsed();
        if since < MINIMUM_CPU_UPDATE_INTERVAL {
            match self.cpu_percent {
                Some(last) => return last,
                None => std::thread::sleep(MINIMUM_CPU_UPDATE_INTERVAL.saturating_sub(since)),
            }
        }
        system.refresh_cpu_usage();
        self.cpu_read_at = Instant::now();
        let percent = f64::from(system.global_cpu_usage()).clamp(0.0, 100.0);
        self.cpu_percent = Some(percent);
        percent
    }
}

impl Default for MetricsSampler {
    fn default() -> Self {
        Self::new()
    }
}

/// Used and total bytes of the filesystem holding `path`, as `df` counts them (used = total
/// minus free blocks). Zeros if it cannot be read.
// The `u64::from`s are no-ops on 64-bit Linux but not where the statvfs fields are 32-bit.
#[allow(clippy::useless_conversion)]
fn disk_usage(path: &Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(path) {
        Ok(st) => {
            let block = u64::from(st.fragment_size());
            let total = u64::from(st.blocks()).saturating_mul(block);
            let free = u64::from(st.blocks_free()).saturating_mul(block);
            (total.saturating_sub(free), total)
        }
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "statvfs failed");
            (0, 0)
        }
    }
}

/// Runnable tasks right now: `procs_running` of /proc/stat (Linux only).
fn run_queue() -> Option<f64> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_procs_running(&stat)
}

fn parse_procs_running(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("procs_running "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .map(f64::from)
}

fn unix_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_sane() {
        let mut sampler = MetricsSampler::new();
        let s = sampler.sample(Path::new("/"));
        let now = unix_ms();
        assert!((now - 5_000..=now).contains(&s.sampled_at_ms), "{}", s.sampled_at_ms);
        assert!((0.0..=100.0).contains(&s.cpu_percent), "{}", s.cpu_percent);
        assert!(s.mem_total_bytes > s.mem_used_bytes && s.mem_used_bytes > 0, "{s:?}");
        assert!(s.disk_total_bytes > s.disk_used_bytes && s.disk_used_bytes > 0, "{s:?}");
        assert!(s.load1 >= 0.0 && s.load5 >= 0.0 && s.load15 >= 0.0, "{s:?}");
        assert!(s.run_queue >= 1.0, "the sampling thread itself is running: {}", s.run_queue);
        assert!(s.gpus.is_empty());
    }

    #[test]
    fn cpu_usage_sees_a_busy_thread() {
        let mut sampler = MetricsSampler::new();
        let busy = std::thread::spawn(|| {
            let end = Instant::now() + Duration::from_millis(600);
            let mut x = 0u64;
            while Instant::now() < end {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        let s = sampler.sample(Path::new("/"));
        busy.join().unwrap();
        // One of the cores was fully busy over the interval (out of at most a few dozen).
        assert!(s.cpu_percent > 1.0, "{}", s.cpu_percent);
        // A second sample right away reuses the reading instead of a meaningless tiny interval.
        assert_eq!(sampler.sample(Path::new("/")).cpu_percent, s.cpu_percent);
    }

    #[test]
    fn missing_disk_path_gives_zeros_not_a_panic() {
        assert_eq!(disk_usage(Path::new("/no/such/path")), (0, 0));
    }

    #[test]
    fn parses_procs_running() {
        let stat = "cpu  1 2 3\nctxt 5\nprocs_running 3\nprocs_blocked 0\n";
        assert_eq!(parse_procs_running(stat), Some(3.0));
        assert_eq!(parse_procs_running("cpu 1\n"), None);
    }
}
