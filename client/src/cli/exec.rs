//! `tetherctl exec`: run a command on the agent as if it ran here. Its stdout and stderr become
//! ours, its exit status ours; what a local shell would show differently (a timeout, a signal,
//! output the agent had to cut) is reported on stderr.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use serde_json::json;
use tether_client::{Client, pb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Exit status after the agent's timeout killed the command (as timeout(1) does).
pub const TIMED_OUT_STATUS: u8 = 124;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Run the words joined by spaces through the user's shell (`sh -c`).
    #[arg(long)]
    pub shell: bool,
    /// Working directory on the agent.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Extra environment variable for the command (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env_pair)]
    pub env: Vec<(String, String)>,
    /// Kill the command after this many milliseconds (0 = no deadline).
    #[arg(long, default_value_t = 0)]
    pub timeout_ms: u32,
    /// Feed this file to the command's stdin (`-` = our stdin).
    #[arg(long)]
    pub stdin_file: Option<PathBuf>,
    /// The command and its arguments (put them after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Parses `K=V` (the value may contain `=`).
pub fn parse_env_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

pub async fn run(client: &Client, args: ExecArgs, json: bool) -> anyhow::Result<ExitCode> {
    let stdin = match &args.stdin_file {
        Some(path) => read_stdin_source(path).await?,
        None => Bytes::new(),
    };
    let request = pb::ExecRequest {
        command: args.command,
        shell: args.shell,
        cwd: args.cwd.unwrap_or_default(),
        env: args.env.into_iter().collect::<HashMap<_, _>>(),
        stdin,
        timeout_ms: args.timeout_ms,
    };
    let reply = client.exec(request).await.context("exec")?;
    if json {
        println!("{}", exec_json(&reply));
    } else {
        let mut stdout = tokio::io::stdout();
        stdout.write_all(&reply.stdout).await?;
        stdout.flush().await?;
        let mut stderr = tokio::io::stderr();
        stderr.write_all(&reply.stderr).await?;
        stderr.flush().await?;
    }
    for note in notes(&reply) {
        eprintln!("tetherctl: {note}");
    }
    Ok(ExitCode::from(exit_status(&reply)))
}

async fn read_stdin_source(path: &PathBuf) -> anyhow::Result<Bytes> {
    let mut buf = Vec::new();
    if path.as_os_str() == "-" {
        tokio::io::stdin().read_to_end(&mut buf).await.context("reading stdin")?;
    } else {
        buf = tokio::fs::read(path).await.with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(Bytes::from(buf))
}

/// Our exit status for the command's outcome: its own code, 124 after a timeout, 128+N when
/// killed by signal N (as a shell reports it), 1 for anything else out of range.
pub fn exit_status(reply: &pb::ExecResponse) -> u8 {
    if reply.timed_out {
        return TIMED_OUT_STATUS;
    }
    if reply.signal > 0 {
        return u8::try_from(128 + reply.signal).unwrap_or(1);
    }
    u8::try_from(reply.exit_code).unwrap_or(1)
}

/// What the user should know beyond the output itself.
pub fn notes(reply: &pb::ExecResponse) -> Vec<String> {
    let mut notes = Vec::new();
    if reply.timed_out {
        notes.push(format!("command timed out after {} ms and was killed", reply.duration_ms));
    } else if reply.signal > 0 {
        notes.push(format!("command killed by signal {}", reply.signal));
    }
    let streams = [
        ("stdout", reply.stdout_truncated, reply.stdout.len(), reply.stdout_total_bytes),
        ("stderr", reply.stderr_truncated, reply.stderr.len(), reply.stderr_total_bytes),
    ];
    for (name, truncated, shown, total) in streams {
        if truncated {
            notes.push(format!(
                "{name} truncated by the agent: kept {shown} of {total} bytes (head and tail)"
            ));
        }
    }
    notes
}

pub fn exec_json(r: &pb::ExecResponse) -> serde_json::Value {
    json!({
        "exit_code": r.exit_code,
        "stdout": String::from_utf8_lossy(&r.stdout),
        "stderr": String::from_utf8_lossy(&r.stderr),
        "timed_out": r.timed_out,
        "duration_ms": r.duration_ms,
        "stdout_truncated": r.stdout_truncated,
        "stderr_truncated": r.stderr_truncated,
        "stdout_total_bytes": r.stdout_total_bytes,
        "stderr_total_bytes": r.stderr_total_bytes,
        "signal": r.signal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn command_words_after_dashes_keep_their_hyphens() {
        let cli = Cli::try_parse_from([
            "tetherctl",
            "exec",
            "--shell",
            "--env",
            "A=b=c",
            "--timeout-ms",
            "500",
            "--",
            "ls",
            "-la",
            "--color",
        ])
        .unwrap();
        let Command::Exec(args) = cli.command else { panic!("not exec") };
        assert!(args.shell);
        assert_eq!(args.env, [("A".to_owned(), "b=c".to_owned())]);
        assert_eq!(args.timeout_ms, 500);
        assert_eq!(args.command, ["ls", "-la", "--color"]);
    }

    #[test]
    fn env_pairs_need_a_key() {
        assert!(parse_env_pair("=x").is_err());
        assert!(parse_env_pair("novalue").is_err());
        assert_eq!(parse_env_pair("K="), Ok(("K".into(), String::new())));
    }

    #[test]
    fn exit_status_follows_shell_conventions() {
        let reply = |exit_code, timed_out, signal| pb::ExecResponse {
            exit_code,
            timed_out,
            signal,
            ..Default::default()
        };
        assert_eq!(exit_status(&reply(0, false, 0)), 0);
        assert_eq!(exit_status(&reply(3, false, 0)), 3);
        assert_eq!(exit_status(&reply(-1, true, 0)), TIMED_OUT_STATUS);
        assert_eq!(exit_status(&reply(-1, false, 9)), 137);
        assert_eq!(exit_status(&reply(-1, false, 0)), 1);
        assert_eq!(exit_status(&reply(300, false, 0)), 1);
    }

    #[test]
    fn truncation_and_timeout_are_reported() {
        let reply = pb::ExecResponse {
            timed_out: true,
            duration_ms: 1500,
            stdout: Bytes::from_static(b"abc"),
            stdout_truncated: true,
            stdout_total_bytes: 10_000,
            ..Default::default()
        };
        let notes = notes(&reply);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("timed out after 1500 ms"));
        assert!(notes[1].contains("kept 3 of 10000 bytes"));
    }
}
