//! The relay's accept loop: what a TCP connection may hold before anyone knows who it is.
//! `axum::serve` accepts every connection and waits for its request head for ever, so idle or
//! half-sent sockets could pile up until the process runs out of file descriptors. Here:
//!
//! - every connection has `header_read_timeout` to send its request head (and each later head
//!   of a kept-alive connection), or it is closed;
//! - at most `max_connections` connections are served in full, at most
//!   `max_connections_per_address` of them from one source address (an IPv6 /64 counts as one);
//! - a connection over either cap lands in a small overflow lane that answers one `/healthz` or
//!   `/metrics` request (anything else gets 503) within a short head timeout and closes, so a
//!   health check still gets through at the cap; past the overflow lane a connection is closed
//!   at once.
//!
//! A connection's places are held by its socket ([`Held`]), so an upgraded websocket keeps its
//! place until the socket is dropped, whichever way it ends.

use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service;
use tracing::{debug, warn};

use crate::Shared;
use crate::config::RelayConfig;
use crate::metrics::OverCap;
use crate::tally::{Slot, Tally};

/// Connections the overflow lane serves at once.
pub const OVERFLOW_CONNECTIONS: usize = 64;
/// The longest an overflow connection may take to send its request head.
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed accept (out of descriptors, ...) so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// The source of a request, as the accept loop saw it (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddress(pub IpAddr);

/// The key an address is counted under: IPv4 (and IPv4-mapped) addresses as they are, IPv6
/// ones by their /64, which one host is commonly given whole.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Which lane a connection was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Full,
    Overflow,
}

/// What one connection holds while its socket lives.
#[derive(Debug)]
struct Ticket {
    _place: OwnedSemaphorePermit,
    _from_address: Option<Slot<IpAddr>>,
}

/// The connection caps; `open()` and `overflowing()` feed `/metrics`.
#[derive(Debug)]
pub struct Gate {
    full: Arc<Semaphore>,
    max_full: usize,
    overflow: Arc<Semaphore>,
    per_address: Tally<IpAddr>,
}

impl Gate {
    pub fn new(config: &RelayConfig) -> Self {
        Gate {
            full: Arc::new(Semaphore::new(config.max_connections)),
            max_full: config.max_connections,
            overflow: Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS)),
            per_address: Tally::new(config.max_connections_per_address),
        }
    }

    /// Connections served in full right now.
    pub fn open(&self) -> usize {
        self.max_full - self.full.available_permits()
    }

    /// Connections in the overflow lane right now.
    pub fn overflowing(&self) -> usize {
        OVERFLOW_CONNECTIONS - self.overflow.available_permits()
    }

    /// Places a connection from `ip`, or says why it gets no full place (`Err(None)`: none at
    /// all, close it).
    fn admit(&self, ip: IpAddr) -> Result<(Lane, Ticket), (OverCap, Option<Ticket>)> {
        let over = match self.per_address.try_acquire(address_key(ip)) {
            Some(slot) => match self.full.clone().try_acquire_owned() {
                Ok(place) => return Ok((Lane::Full, Ticket { _place: place, _from_address: Some(slot) })),
                Err(_) => OverCap::Global,
            },
            None => OverCap::Address,
        };
        match self.overflow.clone().try_acquire_owned() {
            Ok(place) => Err((over, Some(Ticket { _place: place, _from_address: None }))),
            Err(_) => Err((OverCap::Overflow, None)),
        }
    }
}

/// Accepts connections on `listener` until the relay shuts down, serving `app` on full places
/// and `limited` on overflow places.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, app: Router, limited: Router) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
            () = shared.shutdown.cancelled() => return,
        };
        let (lane, ticket) = match shared.gate.admit(peer.ip()) {
            Ok(placed) => placed,
            Err((over, ticket)) => {
                shared.metrics.over_cap(over);
                match ticket {
                    Some(ticket) => (Lane::Overflow, ticket),
                    None => continue, // dropping `tcp` closes it
                }
            }
        };
        let router = match lane {
            Lane::Full => app.clone(),
            Lane::Overflow => limited.clone(),
        };
        let held = Held { io: tcp, _ticket: ticket };
        tokio::spawn(serve(held, ClientAddress(peer.ip()), lane, router, shared.clone()));
    }
}

/// Serves one connection's HTTP/1 requests (and hands an upgrade over to its handler).
async fn serve(held: Held, from: ClientAddress, lane: Lane, router: Router, shared: Arc<Shared>) {
    let _ = held.io.set_nodelay(true);
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new());
    match lane {
        Lane::Full => builder.header_read_timeout(shared.config.header_read_timeout),
        Lane::Overflow => builder
            .header_read_timeout(shared.config.header_read_timeout.min(OVERFLOW_HEADER_TIMEOUT))
            .keep_alive(false),
    };
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(from);
        router.clone().call(request)
    });
    let connection = builder.serve_connection(TokioIo::new(held), service).with_upgrades();
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = shared.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    match served {
        Err(e) if e.is_timeout() => shared.metrics.header_read_timeout(),
        Err(e) => debug!(error = %e, "connection ended with an error"),
        Ok(()) => {}
    }
}

/// An accepted socket holding its connection's places for as long as it lives.
#[derive(Debug)]
struct Held {
    io: TcpStream,
    _ticket: Ticket,
}

impl AsyncRead for Held {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Held {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn ipv6_addresses_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn connections_over_a_cap_overflow_then_are_closed() {
        let mut config = RelayConfig::with_secrets(Secret::new("p"), Secret::new("v"));
        config.max_connections = 3;
        config.max_connections_per_address = 2;
        let gate = Gate::new(&config);
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let (one, two, other) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        let mut held = vec![gate.admit(one).unwrap(), gate.admit(one).unwrap()];
        let Err((OverCap::Address, Some(over_address))) = gate.admit(one) else { panic!("address cap") };
        held.push(gate.admit(two).unwrap());
        let Err((OverCap::Global, Some(over_global))) = gate.admit(other) else { panic!("global cap") };
        assert_eq!((gate.open(), gate.overflowing()), (3, 2));
        let rest: Vec<_> = (2..OVERFLOW_CONNECTIONS).map(|_| gate.admit(other).unwrap_err()).collect();
        assert!(rest.iter().all(|(_, ticket)| ticket.is_some()), "the overflow lane has room for these");
        assert!(matches!(gate.admit(other), Err((OverCap::Overflow, None))), "past the overflow lane");
        drop((over_address, over_global, rest));
        assert_eq!(gate.overflowing(), 0);
        held.truncate(1);
        assert!(gate.admit(other).is_ok(), "a place freed by a closed connection is reused");
    }
}
