//! The sending half of one viewer connection, as a task of its own. A send waits while the
//! relay does not read (it holds a viewer's input back while the agent's terminal does not take
//! it); the follower must go on reading output meanwhile, or the relay, seeing a viewer that does
//! not read either, would hold the producer back for it and finally drop it. So the follower
//! hands messages to this task through a small queue, and gets back, in order, whatever was not
//! written when the connection is given up.

use futures::SinkExt;
use futures::stream::SplitSink;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::Socket;

/// Messages handed over but not yet written.
const QUEUE: usize = 16;

/// A running writer: see the module doc.
pub(super) struct Writer {
    pub queue: mpsc::Sender<Message>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Vec<Message>>,
}

impl Writer {
    pub fn spawn(sink: SplitSink<Socket, Message>) -> Writer {
        let (queue, rx) = mpsc::channel(QUEUE);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(write_all(sink, rx, stopped));
        Writer { queue, stop, task }
    }

    /// Gives the connection up: what was not written comes back, oldest first.
    pub async fn abandon(self) -> Vec<Message> {
        let Writer { queue, stop, task } = self;
        drop(queue);
        let _ = stop.send(true);
        task.await.unwrap_or_default()
    }

    /// Writes what is queued, then closes the connection (waiting at most `within`).
    pub async fn finish(self, within: std::time::Duration) {
        let Writer { queue, stop, task } = self;
        drop(queue);
        if tokio::time::timeout(within, task).await.is_err() {
            let _ = stop.send(true);
        }
    }
}

async fn write_all(
    mut sink: SplitSink<Socket, Message>,
    mut rx: mpsc::Receiver<Message>,
    mut stopped: watch::Receiver<bool>,
) -> Vec<Message> {
    loop {
        let msg = tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => msg,
                None => {
                    let _ = sink.close().await;
                    return Vec::new();
                }
            },
            () = stop_requested(&mut stopped) => return unsent(None, rx),
        };
        let written = tokio::select! {
            written = sink.send(msg.clone()) => written.is_ok(),
            () = stop_requested(&mut stopped) => false,
        };
        if !written {
            // Not known to have arrived, nor anything queued behind it.
            return unsent(Some(msg), rx);
        }
    }
}

/// Resolves once the follower asked the writer to stop (at once if it already did).
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    // An error means the follower is gone: stop too.
    let _ = stopped.wait_for(|stop| *stop).await;
}

fn unsent(first: Option<Message>, mut rx: mpsc::Receiver<Message>) -> Vec<Message> {
    rx.close();
    let mut unsent: Vec<Message> = first.into_iter().collect();
    while let Ok(msg) = rx.try_recv() {
        unsent.push(msg);
    }
    unsent
}
