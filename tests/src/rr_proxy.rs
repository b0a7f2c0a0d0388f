//! A round-robin TCP load balancer on loopback, as an operator would put in front of relay
//! replicas (no affinity): each new connection goes to the next backend in turn; a backend
//! that refuses the connection (a killed replica) is skipped for the next one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};

pub struct RoundRobinProxy {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RoundRobinProxy {
    pub async fn start(backends: Vec<SocketAddr>) -> RoundRobinProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            // Owned here, so dropping the proxy cuts the forwarded connections too.
            let mut forwarding = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (backends, next) = (backends.clone(), next.clone());
                forwarding.spawn(async move {
                    for _ in 0..backends.len() {
                        let target = backends[next.fetch_add(1, Ordering::SeqCst) % backends.len()];
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
                while forwarding.try_join_next().is_some() {}
            }
        });
        RoundRobinProxy { addr, task }
    }

    /// The `/stream` URL through the balancer.
    pub fn stream_url(&self) -> String {
        format!("ws://{}/stream", self.addr)
    }
}

impl Drop for RoundRobinProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
