//! The filesystem subcommands: cat, get, put, ls, stat, mkdir, mv, rm.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::json;
use tether_client::{
    Client, GetOptions, Precondition, PutOptions, TransferReport, WriteOptions, derive_transfer_id, pb,
};
use tokio::io::AsyncWriteExt;

use super::report::FAILURE;
use super::{format, progress};

/// Parses an octal permission mode (`644`, `0644`, `0o644`).
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!("{text:?} is not an octal permission mode (e.g. 644)")),
    }
}

pub async fn cat(client: &Client, path: &str) -> anyhow::Result<ExitCode> {
    let mut stdout = tokio::io::stdout();
    client.download(path, &mut stdout).await.with_context(|| format!("reading {path}"))?;
    Ok(ExitCode::SUCCESS)
}

/// The last component of a remote path (what `get` names the local copy after).
pub fn remote_basename(remote: &str) -> Option<&str> {
    let name = remote.trim_end_matches('/').rsplit('/').next()?;
    (!name.is_empty() && name != "." && name != ".." && name != "~").then_some(name)
}

/// Where `get` writes: LOCAL, `LOCAL/<basename>` if LOCAL is a directory, or `./<basename>`.
fn local_target(remote: &str, local: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let basename = || {
        remote_basename(remote)
            .map(PathBuf::from)
            .with_context(|| format!("cannot name a local file after {remote:?}; give LOCAL"))
    };
    match local {
        Some(dir) if dir.is_dir() => Ok(dir.join(basename()?)),
        Some(path) => Ok(path),
        None => basename(),
    }
}

/// Flags of `get` and `put` about the transfer itself.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TransferFlags {
    /// No progress bar (there is none anyway when stderr is not a terminal).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Flags of `get`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GetFlags {
    /// Start over instead of continuing the partial file an interrupted run left.
    #[arg(long)]
    pub restart: bool,
    #[command(flatten)]
    pub transfer: TransferFlags,
}

/// Flags of `put` beyond mode and parents.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PutFlags {
    /// Names the upload on the agent, so a re-run resumes it (default: derived from the local
    /// file, its size and time, and REMOTE; stdin uploads do not resume).
    #[arg(long)]
    pub transfer_id: Option<String>,
    /// Fail, writing nothing, unless the remote file's BLAKE3 is this (hex; `get --json` prints it).
    #[arg(long, value_name = "BLAKE3", conflicts_with = "if_absent")]
    pub if_match: Option<String>,
    /// Fail, writing nothing, if the remote file exists.
    #[arg(long)]
    pub if_absent: bool,
    #[command(flatten)]
    pub transfer: TransferFlags,
}

pub async fn get(
    client: &Client,
    remote: &str,
    local: Option<PathBuf>,
    flags: &GetFlags,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if local.as_deref() == Some(Path::new("-")) {
        return cat(client, remote).await;
    }
    let target = local_target(remote, local)?;
    let options = GetOptions {
        progress: progress::bar(remote, flags.transfer.quiet),
        restart: flags.restart,
        ..Default::default()
    };
    let report =
        client.get_file(remote, &target, &options).await.with_context(|| format!("reading {remote}"))?;
    if json {
        let transfer = report_json(&report);
        println!(
            "{}",
            json!({ "remote": remote, "local": target, "bytes": report.size, "transfer": transfer })
        );
    } else {
        println!("{remote} -> {} ({} bytes){}", target.display(), report.size, resumed_note(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn report_json(report: &TransferReport) -> serde_json::Value {
    json!({
        "sent": report.sent,
        "skipped": report.skipped,
        "blake3": report.blake3,
        "resumed": report.resumed,
        "verified": report.verified,
        "agent_received": report.agent_received,
    })
}

fn resumed_note(report: &TransferReport) -> String {
    match report.resumed {
        true => format!(", resumed: {} bytes were already there, {} sent", report.skipped, report.sent),
        false => String::new(),
    }
}

/// The precondition `put` asks for.
fn precondition(flags: &PutFlags) -> anyhow::Result<Option<Precondition>> {
    if flags.if_absent {
        return Ok(Some(Precondition::Absent));
    }
    let Some(hex) = &flags.if_match else { return Ok(None) };
    let digest = blake3::Hash::from_hex(hex.trim())
        .with_context(|| format!("{hex:?} is not a BLAKE3 digest in hex"))?;
    Ok(Some(Precondition::Digest(*digest.as_bytes())))
}

/// The transfer id of a file upload: the same for a re-run of the same command on the same,
/// unchanged file.
fn derived_transfer_id(local: &Path, meta: &std::fs::Metadata, remote: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    let abs = std::fs::canonicalize(local).unwrap_or_else(|_| local.to_owned());
    derive_transfer_id(&[
        b"tetherctl put",
        abs.as_os_str().as_encoded_bytes(),
        &meta.len().to_le_bytes(),
        &meta.mtime().to_le_bytes(),
        &meta.mtime_nsec().to_le_bytes(),
        remote.as_bytes(),
    ])
}

/// The remote path `put` writes: REMOTE, or `REMOTE<local name>` when REMOTE ends with `/`.
fn remote_target(local: &Path, remote: &str) -> anyhow::Result<String> {
    if !remote.ends_with('/') {
        return Ok(remote.to_owned());
    }
    let Some(name) = local.file_name().filter(|_| local != Path::new("-")) else {
        bail!("{remote:?} is a directory; name the remote file");
    };
    Ok(format!("{remote}{}", name.to_string_lossy()))
}

pub async fn put(
    client: &Client,
    local: &Path,
    remote: &str,
    write: WriteOptions,
    flags: &PutFlags,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let remote = remote_target(local, remote)?;
    let mut options = PutOptions {
        write,
        transfer_id: flags.transfer_id.clone(),
        precondition: precondition(flags)?,
        progress: progress::bar(&remote, flags.transfer.quiet),
        ..Default::default()
    };
    let report = if local == Path::new("-") {
        client.put_from(&remote, tokio::io::stdin(), None, &options).await
    } else {
        let meta = std::fs::metadata(local).with_context(|| format!("opening {}", local.display()))?;
        if options.transfer_id.is_none() {
            options.transfer_id = Some(derived_transfer_id(local, &meta, &remote));
        }
        client.put_file(local, &remote, &options).await
    }
    .with_context(|| format!("writing {remote}"))?;
    if json {
        let transfer = report_json(&report);
        println!(
            "{}",
            json!({ "local": local, "remote": remote, "bytes": report.size, "transfer": transfer })
        );
    } else {
        println!("{} -> {remote} ({} bytes){}", local.display(), report.size, resumed_note(&report));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn ls(
    client: &Client,
    path: &str,
    recursive: bool,
    max_entries: u32,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let listing =
        client.list(path, recursive, max_entries).await.with_context(|| format!("listing {path:?}"))?;
    if json {
        let entries: Vec<_> = listing.entries.iter().map(format::entry_json).collect();
        println!("{}", json!({ "entries": entries, "truncated": listing.truncated }));
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    for entry in &listing.entries {
        out.push_str(&format::entry_line(entry));
        out.push('\n');
    }
    let mut stdout = tokio::io::stdout();
    stdout.write_all(out.as_bytes()).await?;
    stdout.flush().await?;
    if listing.truncated {
        eprintln!("tetherctl: listing truncated after {} entries", listing.entries.len());
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn stat(client: &Client, path: &str, json: bool) -> anyhow::Result<ExitCode> {
    let stat = client.stat(path).await.with_context(|| format!("stat {path}"))?;
    let entry = stat.entry.filter(|_| stat.exists);
    if json {
        let value = match &entry {
            Some(e) => json!({ "exists": true, "entry": format::entry_json(e) }),
            None => json!({ "exists": false, "path": path }),
        };
        println!("{value}");
    }
    let Some(entry) = entry else {
        if !json {
            eprintln!("tetherctl: {}: {path}: does not exist", pb::ErrorCode::NotFound.as_str_name());
        }
        return Ok(ExitCode::from(FAILURE));
    };
    if !json {
        println!("path      {}", entry.path);
        println!("kind      {}", format::kind_name(entry.kind()));
        println!("size      {}", entry.size);
        println!("mode      {:04o} ({})", entry.mode & 0o7777, format::mode_string(entry.mode));
        println!("modified  {}", format::format_time_ms(entry.modified_ms));
        if !entry.symlink_target.is_empty() {
            println!("target    {}", entry.symlink_target);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn mkdir(
    client: &Client,
    path: &str,
    parents: bool,
    mode: u32,
    json: bool,
) -> anyhow::Result<ExitCode> {
    client.mkdir(path, parents, mode).await.with_context(|| format!("mkdir {path}"))?;
    done(json)
}

pub async fn mv(client: &Client, from: &str, to: &str, force: bool, json: bool) -> anyhow::Result<ExitCode> {
    client.rename(from, to, force).await.with_context(|| format!("moving {from} to {to}"))?;
    done(json)
}

pub async fn rm(client: &Client, path: &str, recursive: bool, json: bool) -> anyhow::Result<ExitCode> {
    client.remove(path, recursive).await.with_context(|| format!("removing {path}"))?;
    done(json)
}

/// Mutations are silent on success, like their Unix namesakes; JSON says `{"ok": true}`.
fn done(json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", json!({ "ok": true }));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("644"), Ok(0o644));
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert_eq!(parse_mode("0o4755"), Ok(0o4755));
        assert!(parse_mode("888").is_err());
        assert!(parse_mode("17777").is_err());
    }

    #[test]
    fn basenames_of_remote_paths() {
        assert_eq!(remote_basename("/w/a/b.txt"), Some("b.txt"));
        assert_eq!(remote_basename("/w/dir/"), Some("dir"));
        assert_eq!(remote_basename("b.txt"), Some("b.txt"));
        assert_eq!(remote_basename("/"), None);
        assert_eq!(remote_basename(".."), None);
    }

    #[test]
    fn local_target_defaults_to_basename_and_joins_directories() {
        assert_eq!(local_target("/w/x.bin", None).unwrap(), PathBuf::from("x.bin"));
        assert_eq!(local_target("/w/x.bin", Some("out.bin".into())).unwrap(), PathBuf::from("out.bin"));
        let dir = std::env::temp_dir();
        assert_eq!(local_target("/w/x.bin", Some(dir.clone())).unwrap(), dir.join("x.bin"));
        assert!(local_target("/", None).is_err());
    }

    #[test]
    fn remote_target_keeps_the_local_name_for_directories() {
        assert_eq!(remote_target(Path::new("/tmp/a.txt"), "/w/").unwrap(), "/w/a.txt");
        assert_eq!(remote_target(Path::new("/tmp/a.txt"), "/w/b.txt").unwrap(), "/w/b.txt");
        assert!(remote_target(Path::new("-"), "/w/").is_err());
    }
}
