//! The subcommands that observe the agent rather than change the machine: ping, metrics,
//! events.

use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::StreamExt;
use serde_json::json;
use tether_client::{AgentMessage, Client};

use super::format;

pub async fn ping(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let nonce = u64::from(std::process::id()) << 32 | u64::from(now_ms() as u32);
    let started = Instant::now();
    let pong = client.ping(nonce).await.context("ping")?;
    let rtt_ms = started.elapsed().as_secs_f64() * 1000.0;
    let subject = client.subjects().rpc();
    if json {
        println!(
            "{}",
            json!({
                "subject": subject,
                "rtt_ms": rtt_ms,
                "nonce": pong.nonce,
                "agent_monotonic_ms": pong.agent_monotonic_ms,
            })
        );
    } else {
        println!("pong from {subject}: time={rtt_ms:.2} ms");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn metrics(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let sample = client.metrics().await.context("metrics")?;
    if json {
        println!("{}", format::metrics_json(&sample));
    } else {
        for line in format::metrics_lines(&sample) {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints one line per announcement until Ctrl-C (exit 0) or the connection ends (exit 1).
pub async fn events(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let mut stream = client.events().await?;
    if !json {
        eprintln!("tetherctl: following {} (Ctrl-C to stop)", client.subjects());
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            next = stream.next() => match next {
                Some(Ok(message)) => print_message(&message, json),
                Some(Err(err)) => eprintln!("tetherctl: {err}"),
                None => anyhow::bail!("the NATS connection closed"),
            },
        }
    }
}

fn print_message(message: &AgentMessage, json: bool) {
    let received_ms = now_ms();
    if json {
        let mut value = match message {
            AgentMessage::Hello(h) => format::hello_json(h),
            AgentMessage::Event(e) => format::event_json(e),
        };
        value["received_ms"] = json!(received_ms);
        println!("{value}");
    } else {
        let text = match message {
            AgentMessage::Hello(h) => format::hello_line(h),
            AgentMessage::Event(e) => format::event_line(e),
        };
        println!("{} {text}", format::format_time_ms(received_ms));
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
