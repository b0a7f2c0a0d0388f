//! The two background loops of an execution: one publisher per attachment, which sends the
//! journal from the attachment's cursor as `ExecOutput` messages (within its window past the
//! last acknowledgement, announcing dropped output as a gap, and a last message with the end),
//! and the spiller, which moves the oldest chunks to disk while memory is over its cap. A
//! publish that is lost (NATS restarting) is not retried here: the client sees the seq jump or
//! the silence and attaches again from what it has, which resets the cursor.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use prost::Message;
use tether_proto::pb;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::journal::{Chunk, Lookup, OnDisk};
use super::run::Execution;

/// Publishes a message on a subject (the agent's NATS connection; ops know nothing of NATS).
pub type Publish = Arc<dyn Fn(String, Bytes) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// An ended execution nobody has read for this long keeps its output on disk only.
const RETIRE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
/// Most spilled bytes read back per step.
const DISK_BATCH: usize = 1 << 20;

/// What a publisher does next.
enum Step {
    Send { generation: u64, chunks: Vec<Chunk>, gap: u64 },
    Read { generation: u64, at: Vec<OnDisk>, gap: u64 },
    End(pb::ExecState, u64, u64),
    Wait(Instant),
    Done,
}

/// Publishes the output of `exec` to `subject` until the attachment ends, expires or the end
/// is sent.
pub async fn publish_loop(
    exec: Arc<Execution>,
    subject: String,
    publish: Publish,
    closing: CancellationToken,
) {
    let mut changed = exec.watch();
    loop {
        changed.borrow_and_update();
        match next_step(&exec, &subject) {
            Step::Done => return,
            Step::Wait(until) => {
                tokio::select! {
                    _ = changed.changed() => {}
                    () = tokio::time::sleep_until(until) => {}
                    () = closing.cancelled() => return,
                }
            }
            Step::End(state, seq, offset) => {
                let msg = pb::ExecOutput {
                    exec_id: exec.id.clone(),
                    seq,
                    offset,
                    end: Some(state),
                    ..Default::default()
                };
                send(&publish, &subject, &msg).await;
                let mut inner = exec.lock();
                if inner.attachments.get(&subject).is_some_and(|a| a.cursor.0 == seq) {
                    inner.attachments.remove(&subject);
                }
                return;
            }
            Step::Send { generation, chunks, gap } => {
                deliver(&exec, &subject, &publish, generation, chunks, gap).await
            }
            Step::Read { generation, at, gap } => {
                let Some(spill) = exec.spill.clone() else { return };
                let wanted = at.clone();
                let read = tokio::task::spawn_blocking(move || spill.read(&wanted)).await;
                let chunks = match read {
                    Ok(Ok(data)) => exec.lock().journal.read_back(&at, data),
                    _ => None,
                };
                match chunks {
                    Some(chunks) => deliver(&exec, &subject, &publish, generation, chunks, gap).await,
                    // The segment was dropped meanwhile: the next step sees the gap.
                    None => tokio::task::yield_now().await,
                }
            }
        }
    }
}

/// Decides the next step under the lock.
fn next_step(exec: &Execution, subject: &str) -> Step {
    let now = Instant::now();
    let mut guard = exec.lock();
    let inner = &mut *guard;
    let Some(a) = inner.attachments.get_mut(subject) else { return Step::Done };
    if a.lease <= now {
        inner.attachments.remove(subject);
        exec.bump();
        return Step::Done;
    }
    loop {
        let (seq, pos) = a.cursor;
        if pos >= a.acked.saturating_add(a.window) {
            return Step::Wait(a.lease);
        }
        let room = usize::try_from(a.acked.saturating_add(a.window) - pos).unwrap_or(usize::MAX);
        match inner.journal.lookup(seq) {
            Lookup::Dropped { seq, pos: first } => {
                // What was dropped counts as delivered (as a gap), for the window too.
                a.gap += first.saturating_sub(pos);
                a.cursor = (seq, first.max(pos));
                a.acked = a.acked.max(a.cursor.1);
            }
            Lookup::Memory(chunk) => {
                let mut chunks = vec![chunk];
                let mut size = chunks[0].data.len();
                // A few more that are already there, within the window.
                while size < room.min(DISK_BATCH) {
                    match inner.journal.lookup(seq + chunks.len() as u64) {
                        Lookup::Memory(c) if c.seq < inner.journal.next_seq() => {
                            size += c.data.len();
                            chunks.push(c);
                        }
                        _ => break,
                    }
                }
                return Step::Send { generation: a.generation, chunks, gap: a.gap };
            }
            Lookup::Disk(first) => {
                let mut at = vec![first];
                let mut size = first.len;
                while size < room.min(DISK_BATCH) {
                    match inner.journal.lookup(seq + at.len() as u64) {
                        Lookup::Disk(d) => {
                            size += d.len;
                            at.push(d);
                        }
                        _ => break,
                    }
                }
                return Step::Read { generation: a.generation, at, gap: a.gap };
            }
            Lookup::Pending => {
                return match &inner.end {
                    Some(_) => Step::End(exec.state_of(inner), seq, pos),
                    None => Step::Wait(a.lease),
                };
            }
        }
    }
}

/// Publishes `chunks` and moves the cursor past them, unless a re-attach moved it meanwhile.
async fn deliver(
    exec: &Execution,
    subject: &str,
    publish: &Publish,
    generation: u64,
    chunks: Vec<Chunk>,
    mut gap: u64,
) {
    let mut sent = None;
    for chunk in chunks {
        let len = chunk.data.len() as u64;
        let msg = pb::ExecOutput {
            exec_id: exec.id.clone(),
            seq: chunk.seq,
            stream: chunk.stream as i32,
            data: chunk.data,
            offset: chunk.pos,
            gap_bytes: gap,
            end: None,
        };
        gap = 0;
        send(publish, subject, &msg).await;
        sent = Some((chunk.seq + 1, chunk.pos + len));
    }
    let mut inner = exec.lock();
    if let (Some(a), Some(cursor)) = (inner.attachments.get_mut(subject), sent)
        && a.generation == generation
    {
        a.cursor = cursor;
        a.gap = 0;
    }
}

async fn send(publish: &Publish, subject: &str, msg: &pb::ExecOutput) {
    if let Err(e) = publish(subject.to_owned(), msg.encode_to_vec().into()).await {
        tracing::debug!(error = %e, "publishing execution output");
    }
}

/// Moves the oldest chunks to disk while memory is over its cap. Ends with the execution once
/// nothing is left to spill.
pub async fn spill_loop(exec: Arc<Execution>, closing: CancellationToken) {
    let Some(spill) = exec.spill.clone() else { return };
    let mut changed = exec.watch();
    let mut retired = false;
    loop {
        changed.borrow_and_update();
        let (plan, ended) = {
            let mut inner = exec.lock();
            (inner.journal.plan_spill(), inner.end.is_some())
        };
        let Some(plan) = plan else {
            if !ended {
                if changed.changed().await.is_err() {
                    return;
                }
                continue;
            }
            // Ended: once nobody has read it for a while, its memory share goes to disk.
            if retired {
                return;
            }
            tokio::select! {
                () = closing.cancelled() => return,
                changed = changed.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(RETIRE_AFTER) => {
                    let mut inner = exec.lock();
                    if inner.attachments.is_empty() {
                        inner.journal.retire();
                        retired = true;
                    }
                }
            }
            continue;
        };
        let dir = spill.clone();
        let Ok((written, plan)) = tokio::task::spawn_blocking(move || (dir.write(&plan), plan)).await else {
            let mut inner = exec.lock();
            inner.journal.disable_spill();
            let _ = inner.journal.plan_spill();
            drop(inner);
            exec.bump();
            return;
        };
        let mut inner = exec.lock();
        match written {
            Ok(()) => inner.journal.spilled(&plan),
            Err(e) => {
                tracing::warn!(error = %e, "spilling execution output failed; dropping the oldest instead");
                inner.journal.disable_spill();
                let _ = inner.journal.plan_spill();
            }
        }
        drop(inner);
        exec.bump();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use nix::unistd::Pid;

    use super::*;
    use crate::ops::execution::journal::Journal;
    use crate::ops::execution::run::{Attachment, End};
    use crate::ops::execution::spill::SpillFile;

    /// Publishes into a vector.
    fn recorder() -> (Publish, Arc<Mutex<Vec<pb::ExecOutput>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let publish: Publish = Arc::new(move |_subject, payload: Bytes| {
            sink.lock().unwrap().push(pb::ExecOutput::decode(payload).unwrap());
            Box::pin(async { Ok(()) })
        });
        (publish, seen)
    }

    #[tokio::test]
    async fn a_late_reader_gets_the_gap_then_the_spilled_and_kept_output_then_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::new(128 << 10, 8 << 20, 4 << 20);
        let spill = SpillFile::new(dir.path().join("x"));
        let exec = Arc::new(Execution::new(
            ("s".into(), "e".into()),
            vec![],
            Pid::from_raw(i32::MAX - 5),
            journal,
            Some(spill),
            None,
        ));
        let closing = CancellationToken::new();
        let spiller = tokio::spawn(spill_loop(exec.clone(), closing.clone()));
        let block = Bytes::from(vec![1u8; 64 << 10]);
        for _ in 0..640 {
            loop {
                let over = exec.lock().journal.over_memory();
                if !over {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            exec.lock().journal.push(pb::ExecStream::Stdout, block.clone());
            exec.bump();
        }
        exec.finish(End {
            status: pb::ExecStatus::Exited,
            reason: "exited".into(),
            exit_code: 0,
            signal: 0,
            timed_out: false,
            duration: Duration::ZERO,
            at: Instant::now(),
        });
        while exec.lock().journal.over_memory() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        closing.cancel();
        tokio::time::timeout(Duration::from_secs(20), spiller).await.unwrap().unwrap();
        let lease = Instant::now() + Duration::from_secs(30);
        let a = Attachment { cursor: (0, 0), generation: 0, acked: 0, window: 4 << 20, lease, gap: 0 };
        exec.lock().attachments.insert("sub".into(), a);
        let (publish, seen) = recorder();
        let exec2 = exec.clone();
        let acker = tokio::spawn(async move {
            // Acknowledge everything as it is published.
            loop {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let mut inner = exec2.lock();
                let Some(a) = inner.attachments.get_mut("sub") else { return };
                a.acked = a.cursor.1;
                drop(inner);
                exec2.bump();
            }
        });
        tokio::time::timeout(
            Duration::from_secs(20),
            publish_loop(exec.clone(), "sub".into(), publish, CancellationToken::new()),
        )
        .await
        .expect("the publisher finishes");
        acker.abort();
        let seen = seen.lock().unwrap();
        let gap: u64 = seen.iter().map(|m| m.gap_bytes).sum();
        let data: u64 = seen.iter().map(|m| m.data.len() as u64).sum();
        assert!(gap > 0);
        assert_eq!(gap + data, 640 * (64 << 10));
        assert!(seen.last().unwrap().end.is_some());
    }
}
