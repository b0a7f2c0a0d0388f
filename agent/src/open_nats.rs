//! An agent behind a NATS server that admits anyone is an agent anyone can drive: a command it
//! runs (or any other local process) could connect, read every request, answer in the agent's
//! place and forge epochs. So before serving, the agent tries the server the way a stranger
//! would, with no credentials at all; if that works it refuses to start, unless the operator
//! said `--allow-unauthenticated-nats` (loopback development), and then it says so loudly.

use std::time::Duration;

use anyhow::bail;
use async_nats::ConnectOptions;

use crate::config::Config;

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the configured server lets a client in without credentials. Any refusal (bad
/// credentials, a TLS client certificate required, no answer) counts as "no".
pub async fn admits_strangers(config: &Config) -> bool {
    let mut options = ConnectOptions::new()
        .name("tether-agent credential probe")
        .connection_timeout(PROBE_TIMEOUT)
        .max_reconnects(Some(1));
    if let Some(ca) = &config.nats_tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let Ok(urls) =
        config.nats_urls.iter().map(|u| u.parse::<async_nats::ServerAddr>()).collect::<Result<Vec<_>, _>>()
    else {
        return false;
    };
    match tokio::time::timeout(PROBE_TIMEOUT, options.connect(urls)).await {
        Ok(Ok(client)) => {
            // A round trip proves the server really took us, not just the TCP handshake.
            let served = tokio::time::timeout(PROBE_TIMEOUT, client.flush()).await.is_ok_and(|r| r.is_ok());
            drop(client);
            served
        }
        _ => false,
    }
}

/// Refuses an open server unless allowed; returns whether the agent runs unprotected.
pub async fn check(config: &Config) -> anyhow::Result<bool> {
    if !admits_strangers(config).await {
        return Ok(false);
    }
    if !config.allow_unauthenticated_nats {
        bail!(
            "the NATS server at {} lets clients in without credentials, so anyone who reaches it \
             (the commands this agent runs included) could send requests and answer them in the \
             agent's place; configure authentication (a token, user and password, or an NKey/JWT \
             creds file), or pass --allow-unauthenticated-nats for loopback development",
            config.nats_urls.join(",")
        );
    }
    tracing::warn!(
        nats = %config.nats_urls.join(","),
        "UNPROTECTED: the NATS server admits clients without credentials; anyone who reaches it \
         can drive this agent (--allow-unauthenticated-nats)"
    );
    Ok(true)
}
