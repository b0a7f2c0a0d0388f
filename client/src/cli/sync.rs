//! `tetherctl sync up|down|snapshot`: a thin layer over [`tether_client::sync`] that turns
//! flags into options and reports into text (or JSON).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use tether_client::Client;
use tether_client::sync::{self, DownOptions, DownReport, Prefer, SyncError, UpOptions, UpReport};

/// Exit status of a `sync down` that left conflicts for the user.
pub const CONFLICTS: u8 = 3;

#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Make remote directory REMOTE equal local directory LOCAL, sending only what differs.
    Up {
        local: PathBuf,
        remote: String,
        #[command(flatten)]
        common: Common,
        /// Write LOCAL's manifest here once REMOTE equals it: the baseline for `sync down`.
        #[arg(long, value_name = "FILE")]
        baseline_out: Option<PathBuf>,
    },
    /// Bring REMOTE's changes into LOCAL: three-way with --baseline, else a mirror.
    Down {
        remote: String,
        local: PathBuf,
        #[command(flatten)]
        common: Common,
        /// Baseline manifest (from `sync snapshot` or `sync up --baseline-out`): local edits
        /// made since survive, conflicting ones keep the local file and save the remote beside.
        #[arg(long, value_name = "FILE")]
        baseline: Option<PathBuf>,
        /// Settle conflicts for one side instead of reporting them (exit status 3).
        #[arg(long, value_enum)]
        prefer: Option<Side>,
        /// Suffix of the remote version saved beside a conflicting local file.
        #[arg(long, default_value = ".remote")]
        conflict_suffix: String,
    },
    /// Write LOCAL's manifest to FILE (a baseline for `sync down`).
    Snapshot {
        local: PathBuf,
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// Leave out paths matching this gitignore-style pattern (repeatable).
        #[arg(long = "exclude", value_name = "PATTERN")]
        excludes: Vec<String>,
        /// Read exclude patterns from FILE, one per line (gitignore syntax).
        #[arg(long, value_name = "FILE")]
        exclude_from: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Side {
    Local,
    Remote,
}

#[derive(Debug, Args)]
pub struct Common {
    /// Leave out paths matching this gitignore-style pattern, on both sides (repeatable).
    #[arg(long = "exclude", value_name = "PATTERN")]
    excludes: Vec<String>,
    /// Read exclude patterns from FILE, one per line (gitignore syntax).
    #[arg(long, value_name = "FILE")]
    exclude_from: Vec<PathBuf>,
    /// Remove entries the source side does not have.
    #[arg(long)]
    delete: bool,
    /// Never remove entries matching this gitignore-style pattern (repeatable).
    #[arg(long = "preserve", value_name = "NAME")]
    preserve: Vec<String>,
    /// List what would change; change nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Do not use the local digest cache (every local file is read).
    #[arg(long)]
    no_cache: bool,
}

impl Common {
    fn excludes(&self) -> anyhow::Result<Vec<String>> {
        read_excludes(&self.excludes, &self.exclude_from)
    }

    fn digest_cache(&self) -> Option<PathBuf> {
        if self.no_cache { None } else { sync::default_digest_cache() }
    }
}

fn read_excludes(given: &[String], files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut out = given.to_vec();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        out.extend(
            text.lines()
                .map(str::trim_end)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    Ok(out)
}

/// A sync failure as the CLI reports it: the agent's error keeps its code.
fn lift(err: SyncError) -> anyhow::Error {
    match err {
        SyncError::Client(e) => anyhow::Error::new(e),
        other => anyhow::Error::new(other),
    }
}

pub async fn run(client: &Client, command: SyncCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        SyncCommand::Up { local, remote, common, baseline_out } => {
            let opts = UpOptions {
                excludes: common.excludes()?,
                delete: common.delete,
                preserve: common.preserve.clone(),
                dry_run: common.dry_run,
                baseline_out,
                digest_cache: common.digest_cache(),
            };
            let report = sync::sync_up(client, &local, &remote, &opts).await.map_err(lift)?;
            print_up(&report, json);
            Ok(ExitCode::SUCCESS)
        }
        SyncCommand::Down { remote, local, common, baseline, prefer, conflict_suffix } => {
            let opts = DownOptions {
                excludes: common.excludes()?,
                delete: common.delete,
                preserve: common.preserve.clone(),
                dry_run: common.dry_run,
                baseline,
                prefer: match prefer {
                    None => Prefer::Neither,
                    Some(Side::Local) => Prefer::Local,
                    Some(Side::Remote) => Prefer::Remote,
                },
                conflict_suffix,
                digest_cache: common.digest_cache(),
            };
            let report = sync::sync_down(client, &remote, &local, &opts).await.map_err(lift)?;
            print_down(&report, &opts.conflict_suffix, json);
            Ok(if report.unresolved() > 0 { ExitCode::from(CONFLICTS) } else { ExitCode::SUCCESS })
        }
        SyncCommand::Snapshot { .. } => unreachable!("snapshot needs no agent"),
    }
}

/// `sync snapshot`, which needs no connection.
pub fn snapshot(command: SyncCommand, json: bool) -> anyhow::Result<ExitCode> {
    let SyncCommand::Snapshot { local, output, excludes, exclude_from } = command else {
        anyhow::bail!("not a snapshot command");
    };
    let excludes = read_excludes(&excludes, &exclude_from)?;
    let manifest =
        sync::snapshot(&local, &excludes, sync::default_digest_cache().as_deref()).map_err(lift)?;
    manifest.save(&output).map_err(lift)?;
    let (files, bytes) = manifest.totals();
    if json {
        println!(
            "{}",
            json!({ "local": local, "output": output, "entries": manifest.entries.len(), "files": files, "bytes": bytes })
        );
    } else {
        println!(
            "{} -> {} ({} entries, {files} files, {bytes} bytes)",
            local.display(),
            output.display(),
            manifest.entries.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `sub` needs an agent (snapshot does not).
pub fn needs_agent(sub: &SyncCommand) -> bool {
    !matches!(sub, SyncCommand::Snapshot { .. })
}

fn print_up(r: &UpReport, json: bool) {
    let p = &r.plan;
    if json {
        let value = json!({
            "dry_run": r.dry_run,
            "plan": p,
            "files_sent": r.files_sent,
            "bytes_sent": r.bytes_sent,
            "large_files": r.large_files,
            "removed": r.removed,
            "batches": r.batches,
            "local_files_hashed": r.local_files_hashed,
            "remote_files_hashed": r.remote.files_hashed,
            "remote_manifest_pages": r.remote.pages,
            "elapsed_ms": r.elapsed.as_millis() as u64,
        });
        println!("{value}");
        return;
    }
    if r.dry_run {
        list("-", &p.remove);
        list("d", &p.dirs);
        list("+", &p.files);
        list("l", &p.links);
        list("m", &p.modes);
    }
    list("kept (preserved)", &p.preserved);
    list("skipped (special file)", &p.skipped);
    let verb = if r.dry_run { "would send" } else { "sent" };
    let bytes: u64 = if r.dry_run { 0 } else { r.bytes_sent };
    println!(
        "{verb} {} files ({bytes} bytes), {} links, {} dirs, {} mode changes; {} removed; {:.3}s",
        if r.dry_run { p.files.len() as u64 } else { r.files_sent },
        p.links.len(),
        p.dirs.len(),
        p.modes.len(),
        if r.dry_run { p.remove.len() as u64 } else { r.removed },
        r.elapsed.as_secs_f64()
    );
}

fn print_down(r: &DownReport, suffix: &str, json: bool) {
    let p = &r.plan;
    if json {
        let value = json!({
            "dry_run": r.dry_run,
            "take": p.take,
            "delete": p.delete,
            "extras": p.extras,
            "conflicts": r.conflicts,
            "files_received": r.files_received,
            "bytes_received": r.bytes_received,
            "removed": r.removed,
            "local_files_hashed": r.local_files_hashed,
            "remote_files_hashed": r.remote.files_hashed,
            "elapsed_ms": r.elapsed.as_millis() as u64,
        });
        println!("{value}");
        return;
    }
    if r.dry_run {
        list("+", &p.take);
        list("-", &p.delete);
    }
    if !r.dry_run && !p.extras.is_empty() {
        println!("{} local-only entries kept (--delete removes them)", p.extras.len());
    }
    for c in &r.conflicts {
        let kind =
            serde_json::to_value(c.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        if c.resolved {
            println!("conflict (settled): {} ({kind})", c.path);
        } else {
            println!("CONFLICT: {} ({kind}); local kept, remote saved as {}{suffix}", c.path, c.path);
        }
    }
    let verb = if r.dry_run { "would take" } else { "received" };
    println!(
        "{verb} {} files ({} bytes); {} removed; {} conflicts ({} unsettled); {:.3}s",
        if r.dry_run { p.take.len() as u64 } else { r.files_received },
        r.bytes_received,
        if r.dry_run { p.delete.len() as u64 } else { r.removed },
        r.conflicts.len(),
        r.unresolved(),
        r.elapsed.as_secs_f64()
    );
}

fn list(tag: &str, paths: &[String]) {
    for path in paths {
        println!("{tag} {path}");
    }
}
