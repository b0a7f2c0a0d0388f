//! Helpers for the long-running command tests and benchmark: start one through the library
//! client and collect what its output stream yields.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tether_client::{AttachFrom, Client, OutputEvent, OutputStream};
use tether_proto::pb;

/// A start request running `script` through the shell.
pub fn start_sh(exec_id: &str, script: &str) -> pb::ExecStartRequest {
    pb::ExecStartRequest {
        exec_id: exec_id.to_owned(),
        exec: Some(pb::ExecRequest { command: vec![script.to_owned()], shell: true, ..Default::default() }),
        ..Default::default()
    }
}

/// Everything one stream yielded until its end.
#[derive(Debug, Default)]
pub struct Collected {
    /// (arrival, stream, data) of each data event.
    pub data: Vec<(Instant, pb::ExecStream, Bytes)>,
    pub gaps: Vec<u64>,
    pub end: Option<(Instant, pb::ExecState)>,
}

impl Collected {
    /// All stdout bytes, in order.
    pub fn stdout(&self) -> Vec<u8> {
        self.bytes(pb::ExecStream::Stdout)
    }

    pub fn bytes(&self, which: pb::ExecStream) -> Vec<u8> {
        self.data.iter().filter(|(_, s, _)| *s == which).flat_map(|(_, _, d)| d.iter().copied()).collect()
    }

    pub fn state(&self) -> &pb::ExecState {
        &self.end.as_ref().expect("the stream ended").1
    }
}

/// Reads `stream` to its end (at most `within`), calling `each` after every data event.
pub async fn collect_with(
    mut stream: OutputStream,
    within: Duration,
    mut each: impl FnMut(&Collected),
) -> Collected {
    let mut got = Collected::default();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no end within {within:?}; got {} chunks", got.data.len()));
        match event {
            Some(Ok(OutputEvent::Data { stream, data, .. })) => {
                got.data.push((Instant::now(), stream, data));
                each(&got);
            }
            Some(Ok(OutputEvent::Gap { bytes })) => got.gaps.push(bytes),
            Some(Ok(OutputEvent::End(state))) => {
                got.end = Some((Instant::now(), state));
                return got;
            }
            Some(Err(e)) => panic!("output stream failed: {e}"),
            None => panic!("output stream closed without an end"),
        }
    }
}

/// Attaches from 0 and reads everything.
pub async fn collect(client: &Client, exec_id: &str, within: Duration) -> Collected {
    let stream = client.attach(exec_id, AttachFrom::default()).await.expect("attach");
    collect_with(stream, within, |_| {}).await
}
