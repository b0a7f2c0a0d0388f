//! The way confined commands reach the managed display. Their Unix sockets are confined (seccomp
//! refuses them, or Landlock allows only sockets beneath the writable paths), so the display's
//! socket `/tmp/.X11-unix/XN` is out of their reach, while loopback TCP is not (only the agent's
//! NATS and relay ports are closed to them). With screen-control consent the agent listens on
//! `127.0.0.1:6000+N`, the port X clients dial for `DISPLAY=127.0.0.1:N`, and splices each
//! connection to the display's socket: a GUI program a command starts opens its windows on the
//! managed display, and on no other (no other display's socket becomes reachable). Without
//! consent there is no bridge.

use std::path::PathBuf;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;

/// X11's first TCP port: display N listens on `X_TCP_BASE + N`.
const X_TCP_BASE: u32 = 6000;
/// Most bridged connections at once (each GUI program holds one or two).
const MAX_CONNECTIONS: usize = 128;

/// A running bridge; dropping it stops the listener and closes every bridged connection.
pub struct DisplayBridge {
    /// `DISPLAY` for commands: `127.0.0.1:N`.
    pub display: String,
    _task: AbortOnDropHandle<()>,
}

impl DisplayBridge {
    /// Listens on the TCP port of display `number` on loopback. Fails when the port is taken
    /// (another X server listening on TCP, say) or the number has no X11 port.
    pub async fn start(number: u32) -> std::io::Result<DisplayBridge> {
        let port = u16::try_from(X_TCP_BASE + number).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("display :{number} has no X11 TCP port"),
            )
        })?;
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let socket = PathBuf::from(format!("/tmp/.X11-unix/X{number}"));
        let task = AbortOnDropHandle::new(tokio::spawn(serve(listener, socket)));
        Ok(DisplayBridge { display: format!("127.0.0.1:{number}"), _task: task })
    }
}

async fn serve(listener: TcpListener, socket: PathBuf) {
    // Owned by this task: aborting it (the bridge dropped) aborts every connection.
    let mut connections = JoinSet::new();
    let slots = std::sync::Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let mut tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::debug!(error = %e, "display bridge: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let socket = socket.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            match UnixStream::connect(&socket).await {
                Ok(mut x) => {
                    let _ = copy_bidirectional(&mut tcp, &mut x).await;
                }
                Err(e) => tracing::warn!(error = %e, "display bridge: the display's socket refused"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_cross_both_ways_and_dropping_the_bridge_closes_its_connections() {
        // A stand-in display socket that echoes, at a number whose port is free.
        let dir = std::path::Path::new("/tmp/.X11-unix");
        std::fs::create_dir_all(dir).unwrap();
        let mut found = None;
        for n in 4000u32..4100 {
            let path = dir.join(format!("X{n}"));
            let Ok(x) = std::os::unix::net::UnixListener::bind(&path) else { continue };
            match DisplayBridge::start(n).await {
                Ok(bridge) => {
                    found = Some((n, bridge, x));
                    break;
                }
                Err(_) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let (number, bridge, x) = found.expect("a free display number");
        let path = dir.join(format!("X{number}"));
        x.set_nonblocking(true).unwrap();
        let x = tokio::net::UnixListener::from_std(x).unwrap();
        assert_eq!(bridge.display, format!("127.0.0.1:{number}"));

        let mut client = tokio::net::TcpStream::connect(("127.0.0.1", (6000 + number) as u16)).await.unwrap();
        let (mut server, _) = x.accept().await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        server.write_all(b"world").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"world");

        drop(bridge);
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), server.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0, "the bridged connection is closed with the bridge");
        let _ = std::fs::remove_file(path);
    }
}
