//! N relay replicas sharing one nats-server (`--nats-url`, token from a 0600 file) behind a
//! round-robin balancer: what the cluster tests and benchmark stand up.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::Nats;
use crate::relay::Relay;
use crate::rr_proxy::RoundRobinProxy;

pub struct RelayCluster {
    pub replicas: Vec<Relay>,
    pub proxy: RoundRobinProxy,
    _dir: tempfile::TempDir,
}

impl RelayCluster {
    /// `n` replicas with extra relay flags, and a balancer in front of them.
    pub async fn start(nats: &Nats, n: usize, extra: &[&str]) -> RelayCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("nats-token");
        std::fs::write(&token_file, nats.token.clone().unwrap_or_default()).expect("write token");
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let token_path = token_file.to_str().expect("utf-8 path").to_owned();
        let mut args = vec!["--nats-url", nats.url.as_str(), "--nats-token-file", token_path.as_str()];
        args.extend_from_slice(extra);
        let mut replicas = Vec::new();
        for _ in 0..n {
            replicas.push(Relay::start(&args).await);
        }
        for r in &replicas {
            wait_healthy(r).await;
        }
        let proxy = RoundRobinProxy::start(replicas.iter().map(|r| r.addr).collect()).await;
        RelayCluster { replicas, proxy, _dir: dir }
    }

    /// The replica a producer is attached to, once one is (panics after 30 s).
    pub async fn owner(&self) -> usize {
        for _ in 0..300 {
            for (i, r) in self.replicas.iter().enumerate() {
                if r.is_running() && r.metric("tether_relay_producers ").await > 0 {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no replica got a producer");
    }

    /// VmRSS of each running replica, in KiB.
    pub fn rss_kib(&self) -> Vec<u64> {
        let rss = |pid| crate::watch::status_field(pid, "VmRSS").unwrap_or(0);
        self.replicas.iter().filter_map(|r| r.pid()).map(rss).collect()
    }
}

async fn wait_healthy(r: &Relay) {
    for _ in 0..300 {
        if r.get("/healthz").await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("replica never became healthy:\n{}", r.log_text());
}
