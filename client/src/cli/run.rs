//! `tetherctl run / attach / ps / kill / wait`: long-running commands. `run` streams the
//! command's output live and exits with its code; Ctrl-C sends it SIGINT, a second Ctrl-C
//! detaches (it keeps running; `attach` follows it again, from any seq). Our stdin is forwarded
//! when it is not a terminal. These commands share one fence scope unless `--fence-scope`
//! names another, so a later `tetherctl` finds what an earlier one started.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures::StreamExt;
use serde_json::json;
use tether_client::{AttachFrom, Client, ClientError, OutputEvent, pb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::exec::{TIMED_OUT_STATUS, parse_env_pair};

/// The fence scope of these commands when none is given.
pub const RUN_FENCE_SCOPE: &str = "tetherctl-run";
/// Our exit status after a detach (as after an interrupt).
const DETACHED_STATUS: u8 = 130;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name the execution (one word; default: a random id). Starting an id that exists
    /// attaches to it instead of running the command again.
    #[arg(long)]
    pub id: Option<String>,
    /// Start it, print its id and return; `tetherctl attach ID` follows it.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Merge stderr into stdout (one stream, in the order written).
    #[arg(long)]
    pub merge: bool,
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
    /// The command and its arguments (put them after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SignalArg {
    #[value(name = "TERM", alias = "term")]
    Term,
    #[value(name = "INT", alias = "int")]
    Int,
    #[value(name = "KILL", alias = "kill")]
    Kill,
    #[value(name = "HUP", alias = "hup")]
    Hup,
}

impl SignalArg {
    fn proto(self) -> pb::ExecSignal {
        match self {
            SignalArg::Term => pb::ExecSignal::Term,
            SignalArg::Int => pb::ExecSignal::Int,
            SignalArg::Kill => pb::ExecSignal::Kill,
            SignalArg::Hup => pb::ExecSignal::Hup,
        }
    }
}

pub async fn run(client: &Client, args: RunArgs, json: bool) -> anyhow::Result<ExitCode> {
    let id = args.id.clone().unwrap_or_else(random_id);
    let forward_stdin = !args.detach && !std::io::stdin().is_terminal();
    let request = pb::ExecStartRequest {
        exec_id: id.clone(),
        exec: Some(pb::ExecRequest {
            command: args.command,
            shell: args.shell,
            cwd: args.cwd.unwrap_or_default(),
            env: args.env.into_iter().collect::<HashMap<_, _>>(),
            stdin: Bytes::new(),
            timeout_ms: args.timeout_ms,
        }),
        merge_output: args.merge,
        stdin_open: forward_stdin,
    };
    let started = client.exec_start(request).await.context("exec_start")?;
    if !started.created {
        eprintln!("tetherctl: execution {id} already exists; following it");
    }
    if args.detach {
        match json {
            true => println!("{}", json!({ "exec_id": id, "created": started.created })),
            false => println!("{id}"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let stdin_task =
        (forward_stdin && started.created).then(|| tokio::spawn(forward(client.clone(), id.clone())));
    let code = follow(client, &id, AttachFrom::default(), true).await;
    if let Some(task) = stdin_task {
        task.abort();
    }
    code
}

/// `attach ID [--from SEQ]`: follows the output (Ctrl-C detaches).
pub async fn attach(client: &Client, id: &str, from: u64) -> anyhow::Result<ExitCode> {
    follow(client, id, AttachFrom { seq: from, offset: 0 }, false).await
}

/// Prints the output as it comes and returns the command's exit status. With `interrupt`,
/// the first Ctrl-C goes to the command as SIGINT and the second detaches.
async fn follow(client: &Client, id: &str, from: AttachFrom, interrupt: bool) -> anyhow::Result<ExitCode> {
    let mut output = client.attach(id, from).await.context("exec_attach")?;
    let (mut stdout, mut stderr) = (tokio::io::stdout(), tokio::io::stderr());
    let mut interrupts = 0;
    loop {
        let event = tokio::select! {
            event = output.next() => event,
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                if interrupt && interrupts == 1 {
                    client.exec_signal(id, pb::ExecSignal::Int).await.context("exec_signal")?;
                    eprintln!("\r\ntetherctl: sent SIGINT to {id}; Ctrl-C again to detach");
                    continue;
                }
                eprintln!("\r\ntetherctl: detached; it keeps running. Follow it again with: tetherctl attach {id}");
                return Ok(ExitCode::from(DETACHED_STATUS));
            }
        };
        match event {
            None => anyhow::bail!("the output of {id} ended without its exit"),
            Some(Err(e)) => return Err(e).context("following the output"),
            Some(Ok(OutputEvent::Data { stream, data, .. })) => {
                if stream == pb::ExecStream::Stderr {
                    stderr.write_all(&data).await?;
                } else {
                    stdout.write_all(&data).await?;
                    stdout.flush().await?;
                }
            }
            Some(Ok(OutputEvent::Gap { bytes })) => {
                eprintln!(
                    "tetherctl: {bytes} bytes of output were dropped by the agent (past its spill cap)"
                );
            }
            Some(Ok(OutputEvent::End(state))) => {
                stdout.flush().await?;
                if let Some(note) = note(&state) {
                    eprintln!("tetherctl: {note}");
                }
                return Ok(ExitCode::from(exit_status(&state)));
            }
        }
    }
}

/// Copies our stdin to the command's, then closes it.
async fn forward(client: Client, id: String) {
    let mut writer = client.stdin_writer(&id);
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0; 256 << 10];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Err(e) = writer.write(Bytes::copy_from_slice(&buf[..n])).await {
                    if !ended(&e) {
                        eprintln!("tetherctl: forwarding stdin: {e}");
                    }
                    return;
                }
            }
        }
    }
    if let Err(e) = writer.close().await
        && !ended(&e)
    {
        eprintln!("tetherctl: closing the command's stdin: {e}");
    }
}

/// The command ended (or closed its stdin) before taking all of ours: not worth a word.
fn ended(e: &ClientError) -> bool {
    matches!(e, ClientError::Agent { detail, .. } if detail.contains_key("status") || detail.contains_key("written"))
}

/// `ps`: the executions of the fence scope.
pub async fn ps(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let list = client.exec_list().await.context("exec_list")?;
    if json {
        println!("{}", serde_json::Value::Array(list.iter().map(state_json).collect()));
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<24} {:<10} {:>8} {:>10}  COMMAND", "ID", "STATUS", "PID", "SECONDS");
    for s in &list {
        let status = match pb::ExecStatus::try_from(s.status) {
            Ok(pb::ExecStatus::Running) => "running".to_owned(),
            Ok(pb::ExecStatus::Exited) if s.timed_out => "timed-out".to_owned(),
            Ok(pb::ExecStatus::Exited) if s.signal > 0 => format!("signal {}", s.signal),
            Ok(pb::ExecStatus::Exited) => format!("exit {}", s.exit_code),
            Ok(pb::ExecStatus::Killed) => "killed".to_owned(),
            _ => "lost".to_owned(),
        };
        let seconds = s.duration_ms as f64 / 1000.0;
        println!("{:<24} {:<10} {:>8} {:>10.1}  {}", s.exec_id, status, s.pid, seconds, s.command.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

/// `kill ID [-s SIG]`.
pub async fn kill(client: &Client, id: &str, signal: SignalArg) -> anyhow::Result<ExitCode> {
    client.exec_signal(id, signal.proto()).await.context("exec_signal")?;
    Ok(ExitCode::SUCCESS)
}

/// `wait ID`: waits for the end and exits with the command's status.
pub async fn wait(client: &Client, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let state = client.exec_wait(id).await.context("exec_wait")?;
    if json {
        println!("{}", state_json(&state));
    } else if let Some(note) = note(&state) {
        eprintln!("tetherctl: {note}");
    }
    Ok(ExitCode::from(exit_status(&state)))
}

/// Our exit status for an ended execution, as for `exec` (124 timeout, 128+N signal).
pub fn exit_status(s: &pb::ExecState) -> u8 {
    if s.timed_out {
        return TIMED_OUT_STATUS;
    }
    if s.signal > 0 {
        return u8::try_from(128 + s.signal).unwrap_or(1);
    }
    u8::try_from(s.exit_code).unwrap_or(1)
}

/// What the user should know about how it ended, beyond a plain exit.
fn note(s: &pb::ExecState) -> Option<String> {
    let plain = s.status == pb::ExecStatus::Exited as i32 && !s.timed_out && s.signal == 0;
    (!plain).then(|| format!("{}: {}", s.exec_id, s.end_reason))
}

fn state_json(s: &pb::ExecState) -> serde_json::Value {
    let status = pb::ExecStatus::try_from(s.status).map_or("unknown", |v| v.as_str_name());
    json!({
        "exec_id": s.exec_id,
        "command": s.command,
        "status": status,
        "end_reason": s.end_reason,
        "exit_code": s.exit_code,
        "signal": s.signal,
        "timed_out": s.timed_out,
        "started_at_ms": s.started_at_ms,
        "duration_ms": s.duration_ms,
        "stdout_bytes": s.stdout_bytes,
        "stderr_bytes": s.stderr_bytes,
        "dropped_bytes": s.dropped_bytes,
        "previous_instance": s.previous_instance,
        "pid": s.pid,
    })
}

fn random_id() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("run-{:x}-{:x}", nanos & 0xffff_ffff_ffff, std::process::id())
}
