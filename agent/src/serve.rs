//! The daemon's loop (`PROTOCOL.md` §1, §6): connect to NATS, make sure no other agent serves
//! our subject, subscribe, announce `Hello` (again after every reconnect), heartbeat, serve
//! requests concurrently with a bound, and on SIGTERM/SIGINT finish or cancel in-flight work,
//! say `going_offline` and leave. What a request does is `dispatch`'s business.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::{Client, ConnectOptions, Event, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use tether_proto::pb::{self, agent_event};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, NatsAuth, SECRET_ENV_VARS};
use crate::dispatch::{self, Dispatcher};
use crate::error::OpError;
use crate::fence::{Fence, FencePolicy};
use crate::hello::{self, Identity};
use crate::open_nats;
use crate::ops::execution::{Executions, Publish};
use crate::ops::pty::Terminals;
use crate::paths::Paths;
use crate::process::Launcher;
use crate::sandbox::{CommandCaps, Sandbox};
use crate::state_lock::StateLock;
use crate::status::{self, Status};

/// How long the duplicate-runner probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pings and metrics served at once, besides `max_in_flight` other requests.
const PROBE_SLOTS: usize = 16;
/// After cancelling leftovers at shutdown, how long their replies get to go out.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    crate::placement::check(&config)?;
    let _state_lock = StateLock::acquire(&config.state_dir)?;
    let shutdown = CancellationToken::new();
    let paths = Arc::new(
        Paths::new(&config.workspace_root, &config.virtual_root, home_dir(), !config.whole_machine)
            .with_context(|| format!("workspace root {}", config.workspace_root.display()))?,
    );
    let policy = FencePolicy { strict: config.strict_fencing, enforce_unscoped: config.fence_unscoped };
    let fence = Arc::new(Fence::open(&config.state_dir, policy, shutdown.clone())?);
    let identity = tokio::task::spawn_blocking(Identity::detect).await?;

    let nats_unauthenticated = open_nats::check(&config).await?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let client = connect(&config, events_tx).await?;
    let rpc = config.subjects.rpc();
    refuse_if_served(&client, &rpc).await?;
    // Only now: setting up the sandbox clears the private temp directory a running twin uses.
    let sandbox = {
        let (config, root) = (config.clone(), paths.workspace_root().to_owned());
        Arc::new(tokio::task::spawn_blocking(move || Sandbox::setup(&config, &root)).await??)
    };
    let display = {
        let (desktop, state_dir) = (config.desktop.clone(), config.state_dir.clone());
        tokio::task::spawn_blocking(move || crate::display::setup(&desktop, &state_dir)).await?
    };
    let secret_names: Vec<String> = SECRET_ENV_VARS.iter().map(|s| s.to_string()).collect();
    let mut launcher = Launcher::from_current_env(&secret_names);
    sandbox.install(&mut launcher);
    if paths.confined() {
        launcher.confine_cwd_to(paths.workspace_root());
    }
    let _display_bridge = command_display(&config, &display, &sandbox, &mut launcher).await;
    let launcher = Arc::new(launcher);
    let terminals = Arc::new(Terminals::new(
        config.relay.clone(),
        launcher.clone(),
        fence.clone(),
        (config.subjects.workspace_id(), config.subjects.agent_id()),
        config.pty_idle_timeout,
    ));
    #[cfg(feature = "desktop")]
    let desktop = display.desktop.with_stream(
        config.relay.clone(),
        (config.subjects.workspace_id(), config.subjects.agent_id()),
        config.desktop.stream,
        fence.clone(),
    );
    #[cfg(not(feature = "desktop"))]
    let desktop = display.desktop;
    let executions = {
        let (settings, launcher, fence) = (config.exec.clone(), launcher.clone(), fence.clone());
        let (state_dir, subjects) = (config.state_dir.clone(), config.subjects.clone());
        let publish = publisher(&client);
        tokio::task::spawn_blocking(move || {
            Executions::open(settings, launcher, fence, Some(&state_dir), Some((publish, subjects)))
        })
        .await?
    };
    let mut dispatcher = Dispatcher::new(paths.clone(), launcher, sandbox.clone(), fence, terminals);
    dispatcher.executions = Arc::new(executions);
    dispatcher.mutation_deadline = config.fs_mutation_deadline;
    dispatcher.transfers = Arc::new(crate::ops::fs::Transfers::new(config.transfer_idle_timeout));
    let desktop = Arc::new(desktop);
    dispatcher.desktop = desktop.clone();
    dispatcher.trees = Arc::new(crate::ops::tree::Trees::open(&config.state_dir));
    dispatcher.replies = crate::dedup::Replies::new(config.dedup);
    let dispatcher = Arc::new(dispatcher);
    let requests = client.subscribe(rpc.clone()).await.context("subscribing to the rpc subject")?;
    // The server must hold our subscription before Hello tells anyone to send requests.
    client.flush().await.context("flushing the rpc subscription")?;
    tracing::info!(subject = %rpc, root = %paths.workspace_root().display(), confined = paths.confined(), "serving");
    let commands = sandbox.capabilities();
    tracing::info!(
        confined = commands.confined,
        landlock_abi = commands.landlock_abi,
        unconfined_reason = %commands.unconfined_reason,
        cgroups = %sandbox.describe_cgroups(),
        max_processes = commands.max_processes,
        "commands"
    );

    let announce = Announcer {
        client: client.clone(),
        config: config.clone(),
        identity,
        paths: paths.clone(),
        commands,
        nats_unauthenticated,
        desktop,
        status: Arc::new(std::sync::Mutex::new(Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            workspace_id: config.subjects.workspace_id().to_owned(),
            agent_id: config.subjects.agent_id().to_owned(),
            nats_urls: config.nats_urls.iter().map(|u| status::redact_url(u)).collect(),
            nats_connected: true,
            nats_since: status::now_unix(),
            relay_url: config.relay.as_ref().map(|r| status::redact_url(&r.url)),
            consent_screen_control: config.desktop.consent_screen_control,
            whole_machine: config.whole_machine,
            commands_confined: sandbox.capabilities().confined,
            landlock_abi: sandbox.capabilities().landlock_abi,
            ..Default::default()
        })),
    };
    announce.hello().await;
    announce.update_status(|_| {}).await;
    let draining = Arc::new(AtomicBool::new(false));
    let in_flight = TaskTracker::new();
    let background = TaskTracker::new();
    background.spawn(announce.clone().rehello_on_reconnect(events_rx));
    background.spawn(heartbeat(announce.clone(), dispatcher.clone(), in_flight.clone(), draining.clone()));

    serve_requests(&client, requests, dispatcher.clone(), &in_flight, config.max_in_flight).await;

    draining.store(true, Ordering::Relaxed);
    in_flight.close();
    tracing::info!(in_flight = in_flight.len(), grace = ?config.shutdown_grace, "shutting down");
    if tokio::time::timeout(config.shutdown_grace, in_flight.wait()).await.is_err() {
        tracing::warn!(left = in_flight.len(), "grace over: cancelling in-flight requests");
        shutdown.cancel();
        let _ = tokio::time::timeout(CANCEL_GRACE, in_flight.wait()).await;
    }
    shutdown.cancel();
    dispatcher.terminals.wait_closed(CANCEL_GRACE).await;
    dispatcher.executions.wait_ended(CANCEL_GRACE).await;
    announce.going_offline().await;
    tokio::task::spawn_blocking(move || sandbox.shutdown()).await?;
    #[cfg(target_os = "linux")]
    if let Some(xvfb) = display.xvfb {
        tokio::task::spawn_blocking(move || drop(xvfb)).await?;
    }
    Ok(())
}

/// Serves until a stop signal: each request in its own task, at most `max_in_flight` at once;
/// beyond that a request is answered DRAINING (retryable) at once instead of queueing. Pings
/// and metrics have [`PROBE_SLOTS`] of their own, so a busy agent still answers them.
async fn serve_requests(
    client: &Client,
    mut requests: Subscriber,
    dispatcher: Arc<Dispatcher>,
    in_flight: &TaskTracker,
    max_in_flight: usize,
) {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let probe_permits = Arc::new(Semaphore::new(PROBE_SLOTS));
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        let msg = tokio::select! {
            _ = &mut stop => break,
            msg = requests.next() => match msg {
                Some(msg) => msg,
                None => {
                    tracing::error!("the rpc subscription ended");
                    break;
                }
            },
        };
        let Some(reply_to) = msg.reply.clone() else {
            tracing::warn!(subject = %msg.subject, "dropping a request without a reply subject");
            continue;
        };
        let max_payload = client.max_payload();
        let request = match dispatch::decode(msg.payload, max_payload) {
            Ok(request) => request,
            Err(reply) => {
                publish(client, reply_to, reply).await;
                continue;
            }
        };
        let (pool, limit) = match dispatch::is_probe(&request) {
            true => (&probe_permits, PROBE_SLOTS),
            false => (&permits, max_in_flight),
        };
        let Ok(permit) = pool.clone().try_acquire_owned() else {
            let err = OpError::draining(format!("the agent is at its limit of {limit} requests in flight"));
            publish(client, reply_to, dispatch::encode(request.request_id, Err(err), max_payload)).await;
            continue;
        };
        let (client, dispatcher) = (client.clone(), dispatcher.clone());
        in_flight.spawn(async move {
            let reply = dispatcher.handle_request(request, max_payload).await;
            publish(&client, reply_to, reply).await;
            drop(permit);
        });
    }
    // Stop taking requests: from here a control plane sees "no responders", i.e. offline.
    if let Err(e) = requests.unsubscribe().await {
        tracing::warn!(error = %e, "unsubscribing from the rpc subject");
    }
}

/// How long-running commands publish their output: on the agent's connection, which queues
/// while it reconnects.
fn publisher(client: &Client) -> Publish {
    let client = client.clone();
    Arc::new(move |subject, payload| {
        let client = client.clone();
        Box::pin(async move { client.publish(subject, payload).await.map_err(|e| e.to_string()) })
    })
}

async fn publish(client: &Client, subject: async_nats::Subject, payload: Bytes) {
    if let Err(e) = client.publish(subject, payload).await {
        tracing::warn!(error = %e, "publishing a reply failed");
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; the agent stops only when killed");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

/// Connects with the configured auth. Reconnects forever (`max_reconnects(None)`: the docs say
/// `None` or `0` mean no limit), and reports (re)connections on `events` so Hello follows.
async fn connect(config: &Config, events: mpsc::UnboundedSender<Event>) -> anyhow::Result<Client> {
    let mut options = match &config.nats_auth {
        NatsAuth::None => ConnectOptions::new(),
        NatsAuth::Token(token) => ConnectOptions::with_token(token.expose().to_owned()),
        NatsAuth::UserPassword { user, password } => {
            ConnectOptions::with_user_and_password(user.clone(), password.expose().to_owned())
        }
        NatsAuth::CredsFile(path) => ConnectOptions::with_credentials_file(path)
            .await
            .with_context(|| format!("reading NATS creds file {}", path.display()))?,
        NatsAuth::Nkey(seed) => ConnectOptions::with_nkey(seed.expose().to_owned()),
    };
    if let Some(ca) = &config.nats_tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &config.nats_tls_client {
        options = options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
    }
    let options = options
        .name(format!("tether-agent {}", config.subjects))
        // The agent's own requests (its duplicate-runner probe) take their replies under its
        // own subjects, so a least-privilege identity needs no right on the shared `_INBOX.>`.
        .custom_inbox_prefix(config.subjects.inbox_prefix())
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                let _ = events.send(event);
            }
        });
    let urls: Vec<async_nats::ServerAddr> = config
        .nats_urls
        .iter()
        .map(|u| u.parse().with_context(|| format!("bad NATS url {u:?}")))
        .collect::<anyhow::Result<_>>()?;
    options
        .connect(urls)
        .await
        .with_context(|| format!("connecting to NATS at {}", config.nats_urls.join(",")))
}

/// Longest pause between two reconnect attempts. async-nats backs off to 4 s by default: after
/// an outage of a few seconds the agent then came back up to 4 s after the server did; with
/// this cap it serves again within about a second of the server's return.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// The pause before reconnect attempt `attempts` (1 is the first): none, then doubling from
/// 50 ms up to [`MAX_RECONNECT_DELAY`], less a jitter of up to a quarter so that many agents
/// of one restarted server do not all knock at the same instant.
fn reconnect_delay(attempts: usize) -> Duration {
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| f64::from(d.subsec_nanos() % 1000) / 4000.0)
        .unwrap_or(0.0);
    backoff(attempts).mul_f64(1.0 - jitter)
}

fn backoff(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(16);
    Duration::from_millis(50).saturating_mul(1 << doublings).min(MAX_RECONNECT_DELAY)
}

/// Two agents must never serve one subject: ping it first; any answer (or a subscriber that
/// stays silent) means someone is there.
async fn refuse_if_served(client: &Client, rpc: &str) -> anyhow::Result<()> {
    let probe = pb::ControlRequest {
        request_id: "tether-agent-duplicate-probe".to_owned(),
        op: Some(pb::control_request::Op::Ping(pb::PingRequest { nonce: 0 })),
        ..Default::default()
    };
    let request = client.request(rpc.to_owned(), probe.encode_to_vec().into());
    match tokio::time::timeout(PROBE_TIMEOUT, request).await {
        Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => Ok(()),
        Ok(Ok(_)) => bail!("another agent is already serving {rpc}; refusing to start a second one"),
        Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::TimedOut => {
            bail!("something subscribes to {rpc} but does not answer; refusing to start a second server")
        }
        Ok(Err(e)) => Err(e).with_context(|| format!("probing {rpc} for another agent")),
        Err(_) => {
            bail!("something subscribes to {rpc} but does not answer; refusing to start a second server")
        }
    }
}

fn home_dir() -> Option<std::path::PathBuf> {
    directories::BaseDirs::new().map(|d| d.home_dir().to_owned())
}

/// Publishes what the agent says about itself on `.hello` and `.events`.
#[derive(Clone)]
struct Announcer {
    client: Client,
    config: Config,
    identity: Identity,
    paths: Arc<Paths>,
    commands: CommandCaps,
    /// The server admits clients without credentials (allowed by the operator).
    nats_unauthenticated: bool,
    desktop: Arc<crate::ops::desktop::Desktop>,
    /// What `tether-agent status` reads, kept current in the state directory.
    status: Arc<std::sync::Mutex<Status>>,
}

impl Announcer {
    /// Applies `change` to the status and writes it (off the async workers).
    async fn update_status(&self, change: impl FnOnce(&mut Status)) {
        let snapshot = {
            let mut status = self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            change(&mut status);
            status.updated = status::now_unix();
            status.clone()
        };
        let dir = self.config.state_dir.clone();
        let _ = tokio::task::spawn_blocking(move || status::write(&dir, &snapshot)).await;
    }

    async fn hello(&self) {
        let mut hello = hello::hello(
            &self.config,
            &self.identity,
            self.paths.workspace_root(),
            self.client.max_payload(),
            &self.commands,
        );
        if let Some(caps) = hello.capabilities.as_mut() {
            caps.nats_unauthenticated = self.nats_unauthenticated;
            self.desktop.fill(caps);
        }
        self.send(self.config.subjects.hello(), hello.encode_to_vec()).await;
        tracing::info!(subject = %self.config.subjects.hello(), "hello published");
    }

    async fn event(&self, event: agent_event::Event) {
        let event =
            pb::AgentEvent { agent_id: self.config.subjects.agent_id().to_owned(), event: Some(event) };
        self.send(self.config.subjects.events(), event.encode_to_vec()).await;
    }

    async fn going_offline(&self) {
        let offline = pb::GoingOffline {
            reason: pb::GoingOfflineReason::UserStop as i32,
            message: "tether-agent stopped by signal".to_owned(),
        };
        self.event(agent_event::Event::GoingOffline(offline)).await;
        if let Err(e) = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await {
            tracing::warn!(error = %e, "flushing going_offline");
        }
    }

    async fn send(&self, subject: String, payload: Vec<u8>) {
        if let Err(e) = self.client.publish(subject, payload.into()).await {
            tracing::warn!(error = %e, "publish failed");
        }
    }

    /// The first connect is announced by `run`; every later `Connected` is a reconnect, after
    /// which async-nats has already re-sent our subscriptions.
    async fn rehello_on_reconnect(self, mut events: mpsc::UnboundedReceiver<Event>) {
        let mut first = true;
        while let Some(event) = events.recv().await {
            match event {
                Event::Connected if first => first = false,
                Event::Connected => {
                    tracing::info!("reconnected to NATS");
                    self.update_status(|s| (s.nats_connected, s.nats_since) = (true, status::now_unix()))
                        .await;
                    if let Err(e) = self.client.flush().await {
                        tracing::warn!(error = %e, "flush after reconnect");
                    }
                    self.hello().await;
                }
                Event::Disconnected => {
                    tracing::warn!("disconnected from NATS; reconnecting");
                    self.update_status(|s| (s.nats_connected, s.nats_since) = (false, status::now_unix()))
                        .await;
                }
                other => tracing::info!(event = %other, "NATS event"),
            }
        }
    }
}

/// Heartbeat on `.events` every interval with a metrics sample taken off the async workers.
async fn heartbeat(
    announce: Announcer,
    dispatcher: Arc<Dispatcher>,
    in_flight: TaskTracker,
    draining: Arc<AtomicBool>,
) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(announce.config.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 0u64.. {
        ticker.tick().await;
        if draining.load(Ordering::Relaxed) && in_flight.is_empty() {
            return;
        }
        let metrics = match dispatcher.sample_metrics().await {
            Ok(sample) => Some(sample),
            Err(e) => {
                tracing::warn!(error = %e, "metrics sample for the heartbeat failed");
                None
            }
        };
        let beat = pb::Heartbeat {
            seq,
            uptime_ms: started.elapsed().as_millis() as u64,
            // Requests being served, live terminals and running long commands.
            active_sessions: (in_flight.len()
                + dispatcher.terminals.count()
                + dispatcher.executions.running()) as u32,
            metrics,
            draining: draining.load(Ordering::Relaxed),
        };
        announce.event(agent_event::Event::Heartbeat(beat)).await;
        let held = dispatcher.fence.held_epochs().await;
        announce.update_status(|s| s.held_epochs = held).await;
    }
}

/// Points the commands the agent runs (a browser, a GUI app) at the managed display: unconfined
/// ones at its socket, confined ones, only with screen-control consent, at the loopback bridge
/// to it (see README "Desktop"). The bridge lives as long as what this returns.
async fn command_display(
    config: &Config,
    display: &crate::display::DisplaySetup,
    sandbox: &Sandbox,
    launcher: &mut Launcher,
) -> Option<crate::display::bridge::DisplayBridge> {
    let name = display.display_env.as_ref()?;
    if !sandbox.capabilities().confined {
        launcher.set_base_env("DISPLAY", name.into());
        return None;
    }
    let spec = config.desktop.virtual_display.as_ref().filter(|_| config.desktop.consent_screen_control)?;
    match crate::display::bridge::DisplayBridge::start(spec.number).await {
        Ok(bridge) => {
            tracing::info!(display = %bridge.display, "confined commands reach the managed display through a loopback bridge");
            launcher.set_base_env("DISPLAY", bridge.display.clone().into());
            Some(bridge)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no display bridge: confined commands cannot open windows on the managed display");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_back_off_but_never_wait_more_than_a_second() {
        assert_eq!(backoff(1), Duration::ZERO, "the first attempt is at once");
        assert_eq!(backoff(2), Duration::from_millis(50));
        assert_eq!(backoff(3), Duration::from_millis(100));
        for attempts in [10, 100, usize::MAX] {
            assert_eq!(backoff(attempts), MAX_RECONNECT_DELAY);
        }
        for attempts in 0..64 {
            let delay = reconnect_delay(attempts);
            assert!(
                delay <= MAX_RECONNECT_DELAY && delay >= backoff(attempts) * 3 / 4,
                "{attempts}: {delay:?}"
            );
        }
    }
}
