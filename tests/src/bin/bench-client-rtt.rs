//! Round trips of the Rust client (`tether_client::Client`) against an agent that is already
//! running: ping and `exec true`, p50 and p99. The Python client's benchmark
//! (`python/bench/bench_rtt.py`) starts the agent, measures itself, then runs this program on
//! the same agent so the two clients are compared in one run. Prints one JSON object.
//!
//! `TETHER_NATS_URL=... TETHER_NATS_TOKEN=... TETHER_WORKSPACE_ID=... TETHER_AGENT_ID=...
//!  bench-client-rtt [PING_ROUNDS] [EXEC_ROUNDS]`

use std::time::{Duration, Instant};

use tether_client::{Client, ClientConfig, NatsAuth, pb};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Runs `once` a tenth of `rounds` to warm up, then `rounds` times; returns p50 and p99 in µs.
async fn measure(rounds: usize, mut once: impl AsyncFnMut()) -> serde_json::Value {
    for _ in 0..rounds / 10 {
        once().await;
    }
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        once().await;
        samples.push(start.elapsed());
    }
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    serde_json::json!({
        "rounds": rounds,
        "p50_us": us(percentile(&samples, 0.50)),
        "p99_us": us(percentile(&samples, 0.99)),
    })
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set"))
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("rounds are numbers"));
    let ping_rounds = args.next().unwrap_or(2000);
    let exec_rounds = args.next().unwrap_or(ping_rounds / 4);
    let config = ClientConfig::new(&env("TETHER_WORKSPACE_ID"), &env("TETHER_AGENT_ID"))
        .expect("valid ids")
        .with_nats_urls([env("TETHER_NATS_URL")])
        .with_auth(NatsAuth::Token(env("TETHER_NATS_TOKEN")));
    let client = Client::connect(config).await.expect("connect to NATS");
    let ping = measure(ping_rounds, async || {
        client.ping(7).await.expect("ping");
    })
    .await;
    let exec = measure(exec_rounds, async || {
        let request = pb::ExecRequest { command: vec!["true".into()], ..Default::default() };
        let out = client.exec(request).await.expect("exec true");
        assert_eq!(out.exit_code, 0);
    })
    .await;
    println!("{}", serde_json::json!({ "ping": ping, "exec_true": exec }));
}
