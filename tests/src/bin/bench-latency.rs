//! Request latency of the agent against a raw NATS echo responder measured in the same run,
//! on the same nats-server: the ratio is what the agent adds over the transport itself. `exec
//! true` runs on a confined agent (the default: Landlock, the seccomp filter and, from Landlock
//! ABI 4, the network layer of ~65 000 port rules), on a confined one whose commands may reach
//! the agent's server ports (no network layer), and on a whole-machine one, so the cost of
//! confinement and of the network layer show too.
//!
//! `cargo build --release --workspace --bins && target/release/bench-latency [ROUNDS]`

use std::time::{Duration, Instant};

use futures::StreamExt;
use prost::Message;
use tether_tests::{Agent, AgentOpts, Nats, op, pb};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn measure(rounds: usize, mut once: impl AsyncFnMut()) -> (Duration, Duration) {
    for _ in 0..rounds / 10 {
        once().await; // warm-up
    }
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        once().await;
        samples.push(start.elapsed());
    }
    samples.sort();
    (percentile(&samples, 0.50), percentile(&samples, 0.99))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let nats = Nats::start().await;
    let agent = Agent::start(&nats).await;
    let whole_machine =
        AgentOpts { args: vec!["--whole-machine".into()], agent_id: Some("wm".into()), ..Default::default() };
    let unconfined = Agent::start_with(&nats, whole_machine).await;
    let ports_open = AgentOpts {
        args: vec!["--allow-agent-server-ports".into()],
        agent_id: Some("ports-open".into()),
        ..Default::default()
    };
    let without_network_layer = Agent::start_with(&nats, ports_open).await;

    // The baseline: a responder that answers every request with its own payload.
    let echo_nc = nats.client().await;
    let mut echo_sub = echo_nc.subscribe("bench.echo").await.expect("subscribe");
    echo_nc.flush().await.expect("flush");
    let responder = tokio::spawn(async move {
        while let Some(msg) = echo_sub.next().await {
            if let Some(reply) = msg.reply {
                let _ = echo_nc.publish(reply, msg.payload).await;
            }
        }
    });

    let nc = nats.client().await;
    let ping = pb::ControlRequest { request_id: "b".into(), op: Some(op::ping(1)), ..Default::default() }
        .encode_to_vec();
    let echo = measure(rounds, async || {
        nc.request("bench.echo", ping.clone().into()).await.expect("echo");
    })
    .await;
    let agent_ping = measure(rounds, async || {
        agent.call(op::ping(1)).await.expect("ping");
    })
    .await;
    let exec_rounds = (rounds / 4).max(50);
    let exec_true = async |on: &Agent| {
        measure(exec_rounds, async || {
            on.call(pb::control_request::Op::Exec(op::exec(&["true"]))).await.expect("exec true");
        })
        .await
    };
    let exec_unconfined = exec_true(&unconfined).await;
    let exec_confined = exec_true(&agent).await;
    let exec_ports_open = exec_true(&without_network_layer).await;
    responder.abort();

    println!("rounds: {rounds} (exec: {exec_rounds}), one client, sequential requests, loopback nats-server");
    println!("{:<28} {:>8} {:>8} {:>10} {:>10}", "request", "p50 µs", "p99 µs", "p50 ×echo", "p99 ×echo");
    let rows = [
        ("raw NATS echo", echo),
        ("agent ping", agent_ping),
        ("exec true, whole-machine", exec_unconfined),
        ("exec true, confined", exec_confined),
        ("exec true, confined, no net", exec_ports_open),
    ];
    for (name, (p50, p99)) in rows {
        println!(
            "{name:<28} {:>8.0} {:>8.0} {:>10.2} {:>10.2}",
            us(p50),
            us(p99),
            us(p50) / us(echo.0),
            us(p99) / us(echo.1)
        );
    }
    println!(
        "confinement costs exec true {:.2}× at p50 ({:.0} µs)",
        us(exec_confined.0) / us(exec_unconfined.0),
        us(exec_confined.0) - us(exec_unconfined.0)
    );
    println!(
        "the network layer costs exec true {:.0} µs at p50",
        us(exec_confined.0) - us(exec_ports_open.0)
    );
}
