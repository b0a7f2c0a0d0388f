//! The resend buffer of one channel's agent-to-viewer direction. The relay keeps no state across
//! a restart, so after reconnecting the agent resends every frame it still holds from the seq
//! the relay asks for; a viewer resuming from its cursor then loses nothing. Bounded by bytes:
//! while connected the oldest frames (already handed to the relay) make room; while
//! disconnected the pump stops taking output once the buffer is full, so the producing process
//! is slowed instead of frames being dropped.

use std::collections::VecDeque;

use bytes::Bytes;

/// One held frame: its seq, bytes, and whether it is a delta (`StreamFrame.delta`).
#[derive(Debug, Clone)]
pub struct Held {
    pub seq: u64,
    pub data: Bytes,
    pub delta: bool,
}

/// Sequenced output frames, oldest first.
#[derive(Debug)]
pub struct Outbox {
    frames: VecDeque<Held>,
    next_seq: u64,
    held: usize,
    cap: usize,
}

impl Outbox {
    pub fn new(cap_bytes: usize) -> Self {
        Outbox { frames: VecDeque::new(), next_seq: 0, held: 0, cap: cap_bytes.max(1) }
    }

    /// Appends `data` as the next frame and returns its seq. Evicts the oldest frames while over
    /// the cap (always keeping the newest).
    #[cfg(test)]
    pub fn push(&mut self, data: Bytes) -> u64 {
        self.push_frame(data, false)
    }

    /// [`Outbox::push`] for a frame that may be a delta.
    pub fn push_frame(&mut self, data: Bytes, delta: bool) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.held += data.len();
        self.frames.push_back(Held { seq, data, delta });
        while self.held > self.cap && self.frames.len() > 1 {
            if let Some(old) = self.frames.pop_front() {
                self.held -= old.data.len();
            }
        }
        seq
    }

    /// False once the held bytes reach the cap: a disconnected pump stops taking output here.
    pub fn has_room(&self) -> bool {
        self.held < self.cap
    }

    /// The held frames with seq >= `seq`, oldest first.
    pub fn since(&self, seq: u64) -> impl Iterator<Item = &Held> {
        let start = self.frames.partition_point(|h| h.seq < seq);
        self.frames.range(start..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(o: &Outbox, from: u64) -> Vec<u64> {
        o.since(from).map(|h| h.seq).collect()
    }

    #[test]
    fn numbers_frames_and_resends_from_any_held_seq() {
        let mut o = Outbox::new(1 << 20);
        for i in 0..5u8 {
            assert_eq!(o.push(Bytes::from(vec![i; 3])), u64::from(i));
        }
        assert_eq!(seqs(&o, 0), [0, 1, 2, 3, 4]);
        assert_eq!(seqs(&o, 3), [3, 4]);
        assert!(seqs(&o, 9).is_empty());
        assert_eq!(o.since(4).next().unwrap().data.as_ref(), &[4, 4, 4]);
    }

    #[test]
    fn is_bounded_by_bytes_and_reports_when_full() {
        let mut o = Outbox::new(10);
        o.push(Bytes::from_static(b"aaaa"));
        assert!(o.has_room());
        o.push(Bytes::from_static(b"bbbb"));
        o.push(Bytes::from_static(b"cc"));
        assert!(!o.has_room(), "10 of 10 bytes held");
        assert_eq!(seqs(&o, 0), [0, 1, 2]);
        o.push(Bytes::from_static(b"d"));
        assert_eq!(seqs(&o, 0), [1, 2, 3], "the oldest frame made room");
        o.push(Bytes::from(vec![0; 50]));
        assert_eq!(seqs(&o, 0), [4], "an oversized frame is kept alone");
    }
}
