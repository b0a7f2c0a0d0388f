//! Cluster mode (`--nats-url`): relay replicas behind any load balancer, paired through NATS.
//!
//! **Ownership.** The replica a channel's producer is attached to *owns* the channel: it keeps
//! the channel's one state (rings, cursors, floors, presence) in its registry exactly as a lone
//! relay does. Nothing about a channel is copied between replicas; a viewer that lands on
//! another replica is served *from the owner* over NATS. This keeps every rule of a single
//! relay (ordering, seq numbers, resume, fencing, read-only, presence, slow-viewer kicks) in one
//! place, the registry, with one code path.
//!
//! **Remote viewers.** A viewer whose replica does not serve its channel ([`remote`]) asks the
//! owner to open a *link*: a request on `<prefix>.open.<key>`, a subject only the owner
//! subscribes to (while a producer is attached). The owner attaches a viewer to its registry
//! on the remote viewer's behalf ([`owner`]) with the grant the viewer's replica verified
//! (tokens are checked where the viewer connected; secrets are the same on every replica) and
//! pumps what the registry hands that viewer to a subject the viewer's replica listens on. So a
//! remote viewer *is* a viewer of the channel: counted in presence, held to its queue bound,
//! kicked when too slow, its input renumbered and checked like any other.
//!
//! **Flow control.** The link is credit based: the viewer's replica grants bytes as its
//! websocket takes them, and the owner never takes more from the registry than it was granted.
//! A remote viewer that does not drain therefore lags in the owner's ring like a local one and
//! is disconnected the same way; the viewer's replica holds at most the credit window per link
//! (the viewer queue size) and the owner nothing beyond its ring.
//!
//! **Discovery and failure.** No owner answering (NATS "no responders") means no producer is
//! attached anywhere: the viewer's replica waits, bounded by `--reap-after` as a lone relay
//! bounds such waits, listening on `<prefix>.announce.<key>`, where an owner announces each
//! producer that attaches. Both link ends send heartbeats; a silent owner (its replica died)
//! makes the viewer's replica keep its viewer connected and open a new link with the viewer's
//! cursor once the agent's pump has reconnected (through the load balancer, to any replica) and
//! resumed from its own buffer: seqs are the producer's, so the new owner's ring continues
//! them, and frames below the cursor are dropped, so nothing is lost or repeated. A replica
//! that hears another announce a channel it holds viewers of without a producer tells those
//! viewers to reconnect (the producer moved).
//!
//! **Subjects** (under `--nats-prefix`, default `relay`). A channel key is four tokens, each
//! part hex-encoded behind an `x` (so any id is a valid token and two keys never collide):
//! `<ws>.<agent>.<port>.<channel>`.
//! - `<prefix>.open.<key>`: link open (request/reply, [`wire::OpenRequest`]/[`wire::OpenReply`]).
//! - `<prefix>.announce.<key>`: an owner's producer attached (payload: the owner's replica id).
//! - `<prefix>.link.<replica>.<n>.down`: owner to viewer's replica ([`wire::Down`]).
//! - `<prefix>.link.<replica>.<n>.ctl`: credit, heartbeat, bye ([`wire::Ctl`]).
//! - `<prefix>.link.<replica>.<n>.in`: viewer input, one relay message per request, answered
//!   once the owner's registry took it (keeps order and input backpressure).

mod owner;
mod remote;
mod stats;
pub mod wire;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::config::Secret;
use crate::registry::{ChannelKey, Registry};

pub use remote::serve_viewer;
pub use stats::Stats;

/// How often each end of a link says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A link end silent this long is gone.
const LINK_TIMEOUT: Duration = Duration::from_secs(4);

/// How to reach NATS and where the relay's subjects live.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub urls: Vec<String>,
    pub prefix: String,
    pub creds: Option<PathBuf>,
    pub nkey: Option<PathBuf>,
    pub token: Option<Secret>,
    pub tls_ca: Option<PathBuf>,
}

impl ClusterConfig {
    /// Checks the flags and reads the token file (refused when others may read it).
    pub fn new(
        urls: &str,
        prefix: &str,
        creds: Option<PathBuf>,
        nkey: Option<PathBuf>,
        token_file: Option<&Path>,
        tls_ca: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let urls: Vec<String> =
            urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect();
        if urls.is_empty() {
            bail!("--nats-url names no server");
        }
        let valid_token =
            |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !prefix.split('.').all(valid_token) {
            bail!("--nats-prefix {prefix:?}: use dot-separated tokens of letters, digits, '-' and '_'");
        }
        let auth = [creds.is_some(), nkey.is_some(), token_file.is_some()];
        if auth.iter().filter(|a| **a).count() > 1 {
            bail!("give at most one of --nats-creds, --nats-nkey and --nats-token-file");
        }
        if let Some(path) = &nkey {
            private_file(path, "--nats-nkey")?;
        }
        let token = match token_file {
            None => None,
            Some(path) => {
                private_file(path, "--nats-token-file")?;
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the NATS token file {}", path.display()))?;
                let text = text.trim();
                if text.is_empty() {
                    bail!("the NATS token file {} is empty", path.display());
                }
                Some(Secret::new(text))
            }
        };
        Ok(ClusterConfig { urls, prefix: prefix.to_owned(), creds, nkey, token, tls_ca })
    }

    async fn connect_options(&self) -> anyhow::Result<async_nats::ConnectOptions> {
        let mut options = async_nats::ConnectOptions::new()
            .name("tether-relay")
            // Start even while NATS is down, and never give up reconnecting: /healthz says
            // unhealthy meanwhile.
            .retry_on_initial_connect()
            .max_reconnects(None::<usize>);
        if let Some(path) = &self.creds {
            options = options
                .credentials_file(path)
                .await
                .with_context(|| format!("cannot use NATS creds file {}", path.display()))?;
        }
        if let Some(path) = &self.nkey {
            let seed = std::fs::read_to_string(path)
                .with_context(|| format!("reading the NKey seed file {}", path.display()))?;
            options = options.nkey(seed.trim().to_owned());
        }
        if let Some(token) = &self.token {
            options = options.token(String::from_utf8_lossy(token.bytes()).into_owned());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        Ok(options)
    }
}

/// A secret file others may read is refused (like the agent's NKey seed).
fn private_file(path: &Path, flag: &str) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{flag} {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!("{flag} {}: group or others may read it; chmod 600 it", path.display());
    }
    Ok(())
}

/// This replica's membership in the cluster.
#[derive(Debug)]
pub struct Cluster {
    nats: async_nats::Client,
    prefix: String,
    /// Unique per process: names this replica's link subjects.
    replica: String,
    registry: Arc<Registry>,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
    next_link: AtomicU64,
    pub stats: Stats,
}

impl Cluster {
    /// Connects to NATS (in the background if it is down) and starts listening for announces.
    pub async fn start(shared: &Shared, config: &ClusterConfig) -> anyhow::Result<Arc<Cluster>> {
        let options = config.connect_options().await?;
        let nats = options.connect(config.urls.clone()).await.context("connecting to NATS")?;
        let inbox = nats.new_inbox();
        let replica = inbox.rsplit('.').next().unwrap_or("replica").to_owned();
        tracing::info!(replica = %replica, prefix = %config.prefix, "joining the relay cluster through NATS");
        let cluster = Arc::new(Cluster {
            nats,
            prefix: config.prefix.clone(),
            replica,
            registry: shared.registry.clone(),
            metrics: shared.metrics.clone(),
            shutdown: shared.shutdown.clone(),
            next_link: AtomicU64::new(1),
            stats: Stats::default(),
        });
        let announces = cluster
            .nats
            .subscribe(format!("{}.announce.>", cluster.prefix))
            .await
            .context("subscribing to channel announces")?;
        tokio::spawn(cluster.clone().hear_announces(announces));
        Ok(cluster)
    }

    /// Connected to NATS right now.
    pub fn healthy(&self) -> bool {
        self.nats.connection_state() == async_nats::connection::State::Connected
    }

    /// The cluster's Prometheus lines.
    pub fn render(&self) -> String {
        self.stats.render(self.healthy())
    }

    /// Makes this replica answer link opens for `key` while the returned guard lives (the
    /// producer's connection holds it).
    pub fn own(self: &Arc<Self>, key: &ChannelKey) -> OwnerGuard {
        let stop = CancellationToken::new();
        tokio::spawn(owner::serve_opens(self.clone(), key.clone(), stop.clone()));
        OwnerGuard(stop.drop_guard())
    }

    fn key_subject(&self, what: &str, key: &ChannelKey) -> String {
        format!("{}.{what}.{}", self.prefix, key_tokens(key))
    }

    fn link_subjects(&self) -> (String, String, String) {
        let n = self.next_link.fetch_add(1, Ordering::Relaxed);
        let base = format!("{}.link.{}.{n}", self.prefix, self.replica);
        (format!("{base}.down"), format!("{base}.ctl"), format!("{base}.in"))
    }

    async fn hear_announces(self: Arc<Self>, mut announces: async_nats::Subscriber) {
        let skip = self.prefix.split('.').count() + 1;
        loop {
            let msg = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                msg = announces.next() => match msg { Some(m) => m, None => return },
            };
            if msg.payload.as_ref() == self.replica.as_bytes() {
                continue;
            }
            let tokens: Vec<&str> = msg.subject.split('.').skip(skip).collect();
            let Some(key) = key_from_tokens(&tokens) else { continue };
            let n = self.registry.release_moved(&key);
            if n > 0 {
                tracing::info!(viewers = n, channel = %key.channel_id, "producer moved to another replica");
            }
        }
    }
}

/// Stops answering link opens for a channel when dropped.
#[derive(Debug)]
pub struct OwnerGuard(#[allow(dead_code)] tokio_util::sync::DropGuard);

fn hex(s: &str) -> String {
    let mut out = String::with_capacity(1 + s.len() * 2);
    out.push('x');
    for b in s.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn unhex(token: &str) -> Option<String> {
    let digits = token.strip_prefix('x')?.as_bytes();
    if digits.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = digits
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).ok().and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The four subject tokens of a channel key.
fn key_tokens(key: &ChannelKey) -> String {
    format!("{}.{}.{}.{}", hex(&key.workspace_id), hex(&key.agent_id), key.port, hex(&key.channel_id))
}

fn key_from_tokens(tokens: &[&str]) -> Option<ChannelKey> {
    let [ws, agent, port, channel] = tokens else { return None };
    Some(ChannelKey {
        workspace_id: unhex(ws)?,
        agent_id: unhex(agent)?,
        port: port.parse().ok()?,
        channel_id: unhex(channel)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_key_becomes_valid_subject_tokens_and_back() {
        let key = ChannelKey {
            workspace_id: "w.s *".into(),
            agent_id: "a>b".into(),
            port: 7681,
            channel_id: "".into(),
        };
        let tokens = key_tokens(&key);
        assert!(tokens.split('.').all(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric())));
        let parts: Vec<&str> = tokens.split('.').collect();
        assert_eq!(key_from_tokens(&parts), Some(key));
        assert_eq!(key_from_tokens(&["xzz", "x", "1", "x"]), None);
    }

    #[test]
    fn prefixes_and_auth_are_checked() {
        assert!(ClusterConfig::new("nats://a:1", "relay.prod", None, None, None, None).is_ok());
        assert!(ClusterConfig::new("nats://a:1", "relay.>", None, None, None, None).is_err());
        assert!(ClusterConfig::new("nats://a:1", "", None, None, None, None).is_err());
        assert!(ClusterConfig::new(" , ", "relay", None, None, None, None).is_err());
        let two = ClusterConfig::new("n", "relay", Some("c".into()), Some("k".into()), None, None);
        assert!(two.is_err());
    }
}
