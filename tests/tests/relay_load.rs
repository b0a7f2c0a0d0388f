//! The relay survives unauthenticated load: thousands of idle or half-sent connections are
//! closed by the header-read timeout or turned away by the connection caps, while a viewer
//! from another address still pairs with its producer and `/healthz` still answers, at the cap
//! included. Idle sockets come from other loopback addresses (127.0.0.2, ...), so the caps per
//! source address apply to them and not to the test's own viewer on 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tether_proto::token::ViewerMode;
use tether_tests::relay::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The test holds thousands of sockets: lift its open-file limit to the hard limit (the relay
/// it starts inherits it, and raises its own as well).
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(limit.rlim_cur >= 8192, "this test needs 8192 open files, the hard limit is {}", limit.rlim_cur);
}

async fn connect_from(source: Ipv4Addr, relay: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((source, 0))).expect("bind a loopback source address");
    socket.connect(relay).await.expect("connect")
}

/// `n` connections from `source` that never send a byte.
async fn idle_sockets(source: Ipv4Addr, relay: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        sockets.push(connect_from(source, relay).await);
    }
    sockets
}

/// Resolves when the relay closed `socket` (end of stream or reset).
async fn closed_by_relay(mut socket: TcpStream) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = socket.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// Watches every socket for its close; `wait_closed(n)` returns once `n` of them closed.
struct Watched(FuturesUnordered<tokio::task::JoinHandle<()>>);

impl Watched {
    fn new(sockets: Vec<TcpStream>) -> Self {
        Watched(sockets.into_iter().map(|s| tokio::spawn(closed_by_relay(s))).collect())
    }

    async fn wait_closed(&mut self, n: usize, within: Duration) {
        let waiting = async {
            for _ in 0..n {
                self.0.next().await.expect("a socket to watch").expect("watcher");
            }
        };
        tokio::time::timeout(within, waiting)
            .await
            .unwrap_or_else(|_| panic!("{n} sockets closed by the relay"));
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        for watcher in self.0.iter() {
            watcher.abort();
        }
    }
}

async fn healthz(relay: &Relay) -> (u16, String) {
    relay.get("/healthz").await
}

/// A producer and a viewer of `channel` pair through the relay and a frame goes through.
async fn pair(relay: &Relay, channel: &str) -> (Ws, Ws) {
    let (mut agent, _) = producer(relay, channel, 0).await;
    let (mut view, _) = viewer(relay, channel, &viewer_claims("v", ViewerMode::View), 0).await;
    send(&mut agent, data(channel, 0, "still here")).await;
    assert_eq!(recv_data(&mut view, 1).await[0].1, "still here");
    (agent, view)
}

#[tokio::test]
async fn idle_sockets_past_the_caps_are_closed_and_lock_out_neither_viewers_nor_health_checks() {
    raise_open_file_limit();
    let relay = Relay::start(&[
        "--max-connections",
        "1500",
        "--max-connections-per-address",
        "1000",
        "--header-read-timeout",
        "300s",
    ])
    .await;

    // One address opens 2500 connections: 1000 are held (idle, within the head timeout), the
    // 1500 over its cap are closed, a few after their second in the overflow lane.
    let flood = Ipv4Addr::new(127, 0, 0, 2);
    let mut flooding = Watched::new(idle_sockets(flood, relay.addr, 2500).await);
    flooding.wait_closed(1500, Duration::from_secs(60)).await;
    // This scrape is a connection too.
    assert_eq!(relay.metric("tether_relay_connections").await, 1001);
    let over_address = relay.metric("tether_relay_connections_over_cap_total{cap=\"address\"}").await;
    let over_lane = relay.metric("tether_relay_connections_over_cap_total{cap=\"overflow_lane\"}").await;
    // Which of the two depends on how fast the burst came (the overflow lane holds 64 for 1 s).
    assert_eq!(over_address + over_lane, 1500, "every connection over the address cap is counted");

    // Another address is not locked out: a producer and a viewer pair.
    let (mut agent, mut view) = pair(&relay, "loaded").await;

    // Others fill the global cap: 1000 + 2 websockets + 498 more are served, the rest closed.
    let mut more = Watched::new(idle_sockets(Ipv4Addr::new(127, 0, 0, 3), relay.addr, 600).await);
    // (at least 100: a scrape that was still closing may have taken one of those places)
    more.wait_closed(100, Duration::from_secs(60)).await;
    let (status, body) = healthz(&relay).await;
    assert_eq!((status, body.as_str()), (200, "ok"), "/healthz answers at the cap");
    assert_eq!(relay.metric("tether_relay_connections").await, 1500);
    assert!(relay.metric("tether_relay_connections_over_cap_total{cap=\"global\"}").await > 0);
    // A stream open over the cap is refused at once (503), not left hanging.
    match tokio_tungstenite::connect_async(relay.url(tether_proto::PTY_PORT, "late")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("an open over the cap must get 503, got {:?}", other.map(|_| "an upgrade")),
    }
    // The paired channel kept flowing through all of it.
    send(&mut agent, data("loaded", 1, "after the flood")).await;
    assert_eq!(recv_data(&mut view, 1).await[0].1, "after the flood");

    // The places come back when the idle sockets go.
    drop((flooding, more));
    let mut freed = false;
    for _ in 0..200 {
        if relay.metric("tether_relay_connections").await <= 3 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "the relay let go of the closed sockets");
    drop((agent, view));
}

#[tokio::test]
async fn connections_that_do_not_finish_their_request_head_are_closed_by_the_timeout() {
    raise_open_file_limit();
    let relay = Relay::start(&[
        "--max-connections",
        "3000",
        "--max-connections-per-address",
        "3000",
        "--header-read-timeout",
        "1s",
    ])
    .await;
    let source = Ipv4Addr::new(127, 0, 0, 4);
    let mut sockets = idle_sockets(source, relay.addr, 2000).await;
    // Half-sent upgrade requests: the head never ends.
    let mut half_sent = Vec::new();
    for _ in 0..200 {
        let mut s = connect_from(source, relay.addr).await;
        let head = format!(
            "GET /stream?ws={WS}&agent={AGENT}&port=7681&channel=c HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n"
        );
        s.write_all(head.as_bytes()).await.expect("send half a head");
        half_sent.push(s);
    }
    sockets.extend(half_sent);
    let mut watched = Watched::new(sockets);
    let (status, _) = healthz(&relay).await;
    assert_eq!(status, 200, "/healthz answers while they wait");
    // Well past the 1 s timeout, but not the 30 s hyper would otherwise default to.
    watched.wait_closed(2200, Duration::from_secs(20)).await;
    assert_eq!(relay.metric("tether_relay_header_read_timeouts_total").await, 2200);
    // The gauge drops as each connection's task ends (the /healthz one above too): wait for it.
    let mut left = 0;
    for _ in 0..100 {
        left = relay.metric("tether_relay_connections").await;
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 1, "only the scrape is left");
    // The relay still serves streams after it.
    let _paired = pair(&relay, "after").await;
}

#[tokio::test]
async fn one_address_cannot_take_every_place_among_the_pending_opens() {
    let relay = Relay::start(&["--max-pending-opens-per-address", "2", "--handshake-timeout", "60s"]).await;
    let url = relay.url(tether_proto::PTY_PORT, "ch");
    // Two upgraded connections from 127.0.0.5 that never send their StreamOpen.
    let mut silent = Vec::new();
    for _ in 0..2 {
        let tcp = connect_from(Ipv4Addr::new(127, 0, 0, 5), relay.addr).await;
        let (ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp).await.expect("upgrade");
        silent.push(ws);
    }
    let tcp = connect_from(Ipv4Addr::new(127, 0, 0, 5), relay.addr).await;
    match tokio_tungstenite::client_async(url.as_str(), tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => {
            panic!("a third pending open from the address must get 503, got {:?}", other.map(|_| "upgrade"))
        }
    }
    assert_eq!(
        relay.metric("tether_relay_opens_rejected_total{reason=\"too_many_pending_from_address\"}").await,
        1
    );
    assert_eq!(relay.metric("tether_relay_pending_opens").await, 2, "the two silent ones");
    // Others still open.
    let (_agent, _) = producer(&relay, "ch", 0).await;
    drop(silent);
}
