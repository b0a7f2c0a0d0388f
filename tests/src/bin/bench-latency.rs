//! Request latency of the agent, each figure beside a baseline measured in the same run:
//!
//! - ping against a raw NATS echo responder on the same nats-server, in a process of its own as
//!   the agent is (what the agent adds over the transport itself), and, to show what the hop
//!   between processes costs, against one inside this process;
//! - `exec true` on a confined agent (the default: Landlock, the seccomp filter and, from
//!   Landlock ABI 4, the network layer of ~65 000 port rules), on a confined one whose commands
//!   may reach the agent's server ports (no network layer) and on a whole-machine one, against
//!   spawning `true` locally and against `ssh` to a private loopback sshd per command (how the
//!   sandbox backends Tether replaces reach a machine; skipped with a note without sshd);
//! - ping while LOAD execs run at once, against ping on the idle agent;
//! - the agent's resident memory idle (after start) and after that load.
//!
//! `cargo build --release --workspace --bins && target/release/bench-latency [ROUNDS] [LOAD]`

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use prost::Message;
use tether_tests::bench::{self, Row};
use tether_tests::ssh::Ssh;
use tether_tests::{Agent, AgentOpts, Nats, op, pb};

/// p50 and p99 of sorted samples.
type Spread = (Duration, Duration);

fn spread(mut samples: Vec<Duration>) -> Spread {
    samples.sort();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    (at(0.50), at(0.99))
}

async fn measure(rounds: usize, mut once: impl AsyncFnMut()) -> Spread {
    for _ in 0..rounds / 10 {
        once().await; // warm-up
    }
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        once().await;
        samples.push(start.elapsed());
    }
    spread(samples)
}

/// `N` measurements taken in turns (round `r` times `once(0)` .. `once(N - 1)`, starting at
/// `r % N`), so a change in the machine's load falls on all of them alike.
async fn measure_turns<const N: usize>(rounds: usize, mut once: impl AsyncFnMut(usize)) -> [Spread; N] {
    for i in 0..rounds / 10 * N {
        once(i % N).await; // warm-up
    }
    let mut samples: [Vec<Duration>; N] = std::array::from_fn(|_| Vec::with_capacity(rounds));
    for round in 0..rounds {
        for k in 0..N {
            let which = (round + k) % N;
            let start = Instant::now();
            once(which).await;
            samples[which].push(start.elapsed());
        }
    }
    samples.map(spread)
}

fn timed(rounds: usize, mut once: impl FnMut()) -> Spread {
    once(); // warm-up
    spread(
        (0..rounds)
            .map(|_| {
                let start = Instant::now();
                once();
                start.elapsed()
            })
            .collect(),
    )
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// Ping p50/p99 while `load` tasks each run `exec true` back to back; and how many execs ran.
async fn ping_under_load(agent: &Agent, load: usize, rounds: usize) -> (Spread, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for task in 0..load {
        let (nc, subject, stop) = (agent.nc.clone(), agent.rpc_subject(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ran, mut sent_count) = (0, 0);
            let request = pb::ControlRequest {
                op: Some(pb::control_request::Op::Exec(op::exec(&["true"]))),
                ..Default::default()
            };
            while !stop.load(Ordering::Relaxed) {
                let mut request = request.clone();
                request.request_id = format!("load-{task}-{sent_count}");
                sent_count += 1;
                let sent = nc.request(subject.clone(), request.encode_to_vec().into());
                if tokio::time::timeout(Duration::from_secs(30), sent).await.is_ok_and(|r| r.is_ok()) {
                    ran += 1;
                }
            }
            ran
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // let the load build up
    let pings = measure(rounds, async || {
        agent.call(op::ping(1)).await.expect("ping under load");
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut ran = 0;
    for task in tasks {
        ran += task.await.unwrap_or(0);
    }
    (pings, ran)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a number"));
    let rounds = args.next().unwrap_or(2000).max(10);
    let load = args.next().unwrap_or(256);
    let exec_rounds = (rounds / 4).max(10);
    let nats = Nats::start().await;
    // Room for every exec of the load at once (the default admits 64 and queues the rest).
    let confined =
        AgentOpts { args: vec!["--max-in-flight".into(), (load + 8).to_string()], ..Default::default() };
    let agent = Agent::start_with(&nats, confined).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_split = bench::rss_text(agent.proc.pid());
    let whole_machine =
        AgentOpts { args: vec!["--whole-machine".into()], agent_id: Some("wm".into()), ..Default::default() };
    let unconfined = Agent::start_with(&nats, whole_machine).await;
    let ports_open = AgentOpts {
        args: vec!["--allow-agent-server-ports".into()],
        agent_id: Some("ports-open".into()),
        ..Default::default()
    };
    let without_network_layer = Agent::start_with(&nats, ports_open).await;

    // The baselines: responders that answer every request with its own payload, one in a
    // process of its own (as the agent is: the ratio's baseline) and one in this process
    // (shows what the hop between processes costs). Measured round-robin with the ping, so
    // the three see the same machine.
    let echo_process = bench::Responder::start(&nats, "bench.echo.process", None);
    let echo_nc = nats.client().await;
    let mut echo_sub = echo_nc.subscribe("bench.echo.local").await.expect("subscribe");
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
    let [echo, echo_local, agent_ping] = measure_turns(rounds, async |which| match which {
        0 => drop(nc.request("bench.echo.process", ping.clone().into()).await.expect("echo")),
        1 => drop(nc.request("bench.echo.local", ping.clone().into()).await.expect("echo")),
        _ => drop(agent.call(op::ping(1)).await.expect("ping")),
    })
    .await;
    responder.abort();
    drop(echo_process);
    let exec_true = async |on: &Agent| {
        measure(exec_rounds, async || {
            on.call(pb::control_request::Op::Exec(op::exec(&["true"]))).await.expect("exec true");
        })
        .await
    };
    let exec_unconfined = exec_true(&unconfined).await;
    let exec_confined = exec_true(&agent).await;
    let exec_ports_open = exec_true(&without_network_layer).await;
    let local = timed(exec_rounds, || {
        assert!(Command::new("true").status().expect("spawn true").success());
    });
    let ssh = Ssh::start().map(|ssh| {
        timed(exec_rounds.min(50), || {
            assert!(ssh.command("true").status().expect("ssh true").success());
        })
    });
    // Few pings: under the load each may wait long, and the load runs as long as they do.
    let (loaded, ran) = ping_under_load(&agent, load, (rounds / 20).clamp(10, 100)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded_split = bench::rss_text(agent.proc.pid());

    println!("rounds: {rounds} (exec: {exec_rounds}), one client, sequential requests, loopback nats-server");
    println!("{:<34} {:>8} {:>8} {:>10} {:>10}", "request", "p50 µs", "p99 µs", "p50 ×echo", "p99 ×echo");
    let table = [
        ("raw NATS echo (own process)", echo),
        ("raw NATS echo (in this process)", echo_local),
        ("agent ping", agent_ping),
        ("exec true, whole-machine", exec_unconfined),
        ("exec true, confined", exec_confined),
        ("exec true, confined, no net", exec_ports_open),
        ("spawn true locally", local),
        (&format!("ping during {load} execs"), loaded),
    ];
    for (name, (p50, p99)) in table {
        println!(
            "{name:<34} {:>8.0} {:>8.0} {:>10.2} {:>10.2}",
            us(p50),
            us(p99),
            ratio(p50, echo.0),
            ratio(p99, echo.1)
        );
    }
    match &ssh {
        Ok((p50, p99)) => println!("{:<34} {:>8.0} {:>8.0}", "ssh 127.0.0.1 true", us(*p50), us(*p99)),
        Err(why) => println!("ssh baseline skipped: {why}"),
    }
    println!("{ran} execs ran during the ping-under-load window");
    println!("agent RSS: idle {idle_split}, after the load {loaded_split}");

    let area = "requests";
    let spawn = format!("spawn `true` locally {}", bench::ms(local.0));
    let mut rows = vec![
        Row::new(area, "ping p50", bench::us(agent_ping.0))
            .times(format!("raw NATS echo, own process {}", bench::us(echo.0)), ratio(agent_ping.0, echo.0))
            .goal("≤ 1.3×"),
        Row::new(area, "ping p99", bench::us(agent_ping.1))
            .times(format!("raw NATS echo, own process {}", bench::us(echo.1)), ratio(agent_ping.1, echo.1)),
        Row::new(area, "ping p50 (against an echo inside the client)", bench::us(agent_ping.0)).times(
            format!("raw NATS echo, in-process {}", bench::us(echo_local.0)),
            ratio(agent_ping.0, echo_local.0),
        ),
        Row::new(area, "`exec true` p50, confined (default)", bench::ms(exec_confined.0))
            .times(&spawn, ratio(exec_confined.0, local.0))
            .goal("≤ 1 ms"),
        Row::new(area, "`exec true` p50, confined, no network layer", bench::ms(exec_ports_open.0))
            .times(&spawn, ratio(exec_ports_open.0, local.0)),
        Row::new(area, "`exec true` p50, whole machine", bench::ms(exec_unconfined.0))
            .times(&spawn, ratio(exec_unconfined.0, local.0)),
    ];
    let vs_ssh = |row: Row, ours: Duration| match &ssh {
        Ok((p50, _)) => row.beside(
            format!("`ssh 127.0.0.1 true` {}", bench::ms(*p50)),
            format!("{:.0}× faster", ratio(*p50, ours)),
        ),
        Err(why) => row.beside(format!("ssh skipped: {why}"), ""),
    };
    rows.push(vs_ssh(
        Row::new(area, "`exec true` p50, confined, against ssh", bench::ms(exec_confined.0)),
        exec_confined.0,
    ));
    rows.last_mut().expect("a row").goal = "≥ 20× faster".into();
    rows.push(
        Row::new(area, format!("ping p99 while {load} execs run"), bench::ms(loaded.1))
            .times(format!("idle ping p99 {}", bench::ms(agent_ping.1)), ratio(loaded.1, agent_ping.1))
            .goal("≤ 5 ms"),
    );
    rows.push(Row::new(area, "agent RSS, idle", idle_split).goal("≤ 10 MiB"));
    rows.push(Row::new(area, format!("agent RSS after {ran} execs under load"), loaded_split));
    bench::emit(&rows);
}
