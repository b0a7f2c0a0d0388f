//! A raw NATS responder in a process of its own, the baseline the agent is measured against:
//! it answers every request on SUBJECT with the request's own payload (`echo`) or with N bytes.
//! Same runtime as the agent (tokio's multi-threaded default) and a separate process like the
//! agent, so the difference is what the agent does with a request, not where it runs.
//!
//! Usage: nats-responder URL SUBJECT [echo | N], with the server's token (if any) in
//! `NATS_TOKEN`. Prints `ready` once subscribed; exits when stdin closes.

use std::io::Write;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(subject)) = (args.next(), args.next()) else {
        eprintln!("usage: nats-responder URL SUBJECT [echo | N]");
        std::process::exit(2);
    };
    let fixed = match args.next().as_deref() {
        None | Some("echo") => None,
        Some(n) => Some(Bytes::from(vec![0x5a; n.parse().expect("a reply size in bytes")])),
    };
    let options = match std::env::var("NATS_TOKEN") {
        Ok(token) => async_nats::ConnectOptions::with_token(token),
        Err(_) => async_nats::ConnectOptions::new(),
    };
    let nc = options.connect(&url).await.expect("connect to nats-server");
    let mut requests = nc.subscribe(subject).await.expect("subscribe");
    nc.flush().await.expect("flush");
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    let answer = async {
        while let Some(msg) = requests.next().await {
            if let Some(reply) = msg.reply {
                let _ = nc.publish(reply, fixed.clone().unwrap_or(msg.payload)).await;
            }
        }
    };
    let stdin_closed = async {
        let mut sink = [0u8; 64];
        while tokio::io::stdin().read(&mut sink).await.is_ok_and(|n| n > 0) {}
    };
    tokio::select! {
        () = answer => {}
        () = stdin_closed => {}
    }
}
