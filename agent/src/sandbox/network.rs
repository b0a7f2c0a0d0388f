//! Confined commands cannot connect to the agent's own servers. The agent's NATS connection and
//! its relay link are the control plane: a command connected to that NATS server (one that
//! lets any local client in, or with credentials it came across) could read other sessions'
//! requests, answer in the agent's place or forge requests; on the relay it could hold the
//! agent's channels. Where Landlock confines TCP (ABI 4), a second ruleset, stacked on the
//! file-system one, handles connecting over TCP and grants it on every port except those of
//! the NATS servers and the relay the agent is configured with. This module decides which
//! ports those are (pure: from the configured URLs); `ruleset` builds the layer.
//!
//! Landlock grants TCP per port, not per address: those ports are closed towards every host.
//! A NATS server the agent learns about from the cluster (not configured) keeps its port open.

use std::collections::BTreeSet;
use std::str::FromStr;

use tokio_tungstenite::tungstenite::http::Uri;

/// The first Landlock ABI that confines TCP connect and bind.
pub const NETWORK_ABI: u32 = 4;

/// Why the ports of the agent's servers could not be told.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The message names which URL, never the URL itself (it may hold a password).
    #[error("cannot tell the port of the {0}")]
    Unparsable(String),
}

/// The TCP ports of the agent's servers: every NATS URL's (4222 when it names none; 80 and 443
/// for `ws` and `wss`) and the relay URL's (80 for `ws` and `http`, 443 for `wss` and `https`).
pub fn agent_server_ports(nats_urls: &[String], relay_url: Option<&str>) -> Result<BTreeSet<u16>, PortError> {
    let mut ports = BTreeSet::new();
    for (i, url) in nats_urls.iter().enumerate() {
        let addr = async_nats::ServerAddr::from_str(url)
            .map_err(|_| PortError::Unparsable(format!("NATS URL number {}", i + 1)))?;
        ports.insert(addr.port());
    }
    if let Some(url) = relay_url {
        ports.insert(relay_port(url).ok_or_else(|| PortError::Unparsable("relay URL".to_owned()))?);
    }
    Ok(ports)
}

fn relay_port(url: &str) -> Option<u16> {
    let uri: Uri = url.parse().ok()?;
    let default = match uri.scheme_str()? {
        "ws" | "http" => 80,
        "wss" | "https" => 443,
        _ => return None,
    };
    Some(uri.port_u16().unwrap_or(default))
}

/// Every port except `closed`: what the network layer grants.
pub fn open_ports(closed: &BTreeSet<u16>) -> impl Iterator<Item = u16> + '_ {
    (0..=u16::MAX).filter(|port| !closed.contains(port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(nats: &[&str], relay: Option<&str>) -> Vec<u16> {
        let nats: Vec<String> = nats.iter().map(|s| s.to_string()).collect();
        agent_server_ports(&nats, relay).expect("ports").into_iter().collect()
    }

    #[test]
    fn every_nats_url_and_the_relay_close_their_port_with_the_scheme_defaults() {
        assert_eq!(ports(&["nats://127.0.0.1:4333"], None), [4333]);
        assert_eq!(
            ports(&["nats://10.0.0.1", "tls://a.example:7422", "b.example:5222"], None),
            [4222, 5222, 7422]
        );
        assert_eq!(
            ports(&["nats://user:pw@[::1]:4999", "ws://n.example", "wss://n.example"], None),
            [80, 443, 4999]
        );
        assert_eq!(ports(&["nats://h"], Some("ws://127.0.0.1:8443/stream")), [4222, 8443]);
        assert_eq!(ports(&["nats://h"], Some("wss://relay.example/stream")), [443, 4222]);
        assert_eq!(ports(&["nats://h"], Some("ws://relay.example/stream")), [80, 4222]);
        assert_eq!(ports(&["nats://h"], Some("https://relay.example")), [443, 4222]);
    }

    #[test]
    fn an_unparsable_url_is_an_error_that_does_not_repeat_it() {
        let err =
            agent_server_ports(&["nats://ok".into(), "nats://u:secret@bad host".into()], None).unwrap_err();
        assert_eq!(err.to_string(), "cannot tell the port of the NATS URL number 2");
        assert!(agent_server_ports(&[], Some("relay.example:80")).is_err());
        assert!(agent_server_ports(&[], Some("ftp://relay.example")).is_err());
    }

    #[test]
    fn open_ports_are_all_but_the_closed_ones() {
        let closed = BTreeSet::from([0, 4222, u16::MAX]);
        let open: Vec<u16> = open_ports(&closed).collect();
        assert_eq!(open.len(), 65536 - 3);
        assert!(open.iter().all(|p| !closed.contains(p)));
        assert_eq!((open[0], open[open.len() - 1]), (1, u16::MAX - 1));
    }
}
