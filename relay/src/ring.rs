//! The replay ring of one direction of one channel: encoded relay messages in arrival order,
//! bounded by bytes. Readers (viewers, the producer) are cursors into it, so one frame is stored
//! once however many viewers read it, a viewer's backlog is measured in bytes, and a resuming
//! peer is served from the same store as a live one.
//!
//! Every entry has a *position* (its arrival index, never reused) and a *seq* (the protocol
//! sequence number). Sequenced entries carry frames; unsequenced ones are live-only control
//! messages (resize, desktop input) whose `seq` is the seq the next frame will get, so seqs stay
//! non-decreasing along the ring and can be binary searched.

use std::collections::VecDeque;

use bytes::Bytes;

/// One stored relay message.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Protocol seq (for unsequenced entries: the seq the next frame gets).
    pub seq: u64,
    /// False for live-only control messages that are never replayed.
    pub sequenced: bool,
    /// A desktop delta frame (`StreamFrame.delta`): useless without the frames before it.
    pub delta: bool,
    /// The whole relay message (tag byte + protobuf body), as sent to the reader.
    pub msg: Bytes,
    /// Total bytes appended to the ring up to and including this entry.
    end_offset: u64,
}

/// A byte-bounded FIFO of relay messages addressed by position.
#[derive(Debug)]
pub struct Ring {
    entries: VecDeque<Entry>,
    /// Position of `entries[0]`.
    first_pos: u64,
    /// Bytes currently held.
    held: usize,
    cap: usize,
    /// Bytes ever appended.
    appended: u64,
}

impl Ring {
    pub fn new(cap_bytes: usize) -> Self {
        Ring { entries: VecDeque::new(), first_pos: 0, held: 0, cap: cap_bytes, appended: 0 }
    }

    /// Position the next appended entry gets.
    pub fn head_pos(&self) -> u64 {
        self.first_pos + self.entries.len() as u64
    }

    /// Position of the oldest held entry (== `head_pos` when empty).
    pub fn first_pos(&self) -> u64 {
        self.first_pos
    }

    /// Bytes ever appended: the offset of the head.
    pub fn head_offset(&self) -> u64 {
        self.appended
    }

    pub fn held_bytes(&self) -> usize {
        self.held
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends a message and evicts the oldest entries while over the byte cap, always keeping
    /// the newest one. Returns how many sequenced entries were evicted.
    pub fn push(&mut self, seq: u64, sequenced: bool, msg: Bytes) -> u64 {
        self.push_entry(seq, sequenced, false, msg)
    }

    /// [`Ring::push`] of a frame that may be a delta.
    pub fn push_entry(&mut self, seq: u64, sequenced: bool, delta: bool, msg: Bytes) -> u64 {
        self.appended += msg.len() as u64;
        self.held += msg.len();
        self.entries.push_back(Entry { seq, sequenced, delta, msg, end_offset: self.appended });
        let mut evicted = 0;
        while self.held > self.cap && self.entries.len() > 1 {
            if let Some(old) = self.entries.pop_front() {
                self.held -= old.msg.len();
                self.first_pos += 1;
                evicted += u64::from(old.sequenced);
            }
        }
        evicted
    }

    /// Evicts every entry but the newest (on a desktop channel, once a whole image arrived no
    /// older frame is needed). Returns how many sequenced entries were evicted.
    pub fn keep_newest(&mut self) -> u64 {
        let mut evicted = 0;
        while self.entries.len() > 1 {
            if let Some(old) = self.entries.pop_front() {
                self.held -= old.msg.len();
                self.first_pos += 1;
                evicted += u64::from(old.sequenced);
            }
        }
        evicted
    }

    /// The entry at `pos`, if still held.
    pub fn get(&self, pos: u64) -> Option<&Entry> {
        let idx = pos.checked_sub(self.first_pos)?;
        self.entries.get(usize::try_from(idx).ok()?)
    }

    /// Position of the first held entry whose seq is >= `seq` (`head_pos` if none).
    pub fn pos_of_seq(&self, seq: u64) -> u64 {
        self.first_pos + self.entries.partition_point(|e| e.seq < seq) as u64
    }

    /// Bytes between the start of the entry at `pos` and the head; `None` when `pos` was evicted.
    pub fn bytes_from(&self, pos: u64) -> Option<u64> {
        if pos < self.first_pos {
            return None;
        }
        match self.get(pos) {
            Some(e) => Some(self.appended - (e.end_offset - e.msg.len() as u64)),
            None => Some(0),
        }
    }

    /// Offset (bytes ever appended before it) at which the entry at `pos` starts.
    pub fn offset_of(&self, pos: u64) -> Option<u64> {
        let lag = self.bytes_from(pos)?;
        Some(self.appended - lag)
    }

    /// Rewrites every held entry, in order (used to renumber a direction once its base is known).
    pub fn rewrite(&mut self, mut f: impl FnMut(&mut u64, bool, &mut Bytes)) {
        let mut offset = self.appended - self.held as u64;
        for e in &mut self.entries {
            f(&mut e.seq, e.sequenced, &mut e.msg);
            offset += e.msg.len() as u64;
            e.end_offset = offset;
        }
        self.held = self.entries.iter().map(|e| e.msg.len()).sum();
        self.appended = offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[test]
    fn evicts_oldest_over_the_byte_cap_but_keeps_the_newest() {
        let mut r = Ring::new(100);
        for seq in 0..5 {
            assert_eq!(r.push(seq, true, msg(30)), u64::from(seq >= 3));
        }
        // 5 x 30 = 150 > 100: the two oldest went, 90 bytes remain.
        assert_eq!(r.held_bytes(), 90);
        assert_eq!(r.first_pos(), 2);
        assert!(r.get(1).is_none());
        assert_eq!(r.get(2).unwrap().seq, 2);
        // A message bigger than the cap is still held, alone.
        assert_eq!(r.push(5, true, msg(500)), 3);
        assert_eq!(r.first_pos(), 5);
        assert_eq!(r.held_bytes(), 500);
        assert_eq!(r.head_pos(), 6);
    }

    #[test]
    fn positions_and_seqs_can_differ() {
        let mut r = Ring::new(1 << 20);
        r.push(10, true, msg(1));
        r.push(11, false, msg(1)); // control message before frame 11
        r.push(11, true, msg(1));
        r.push(20, true, msg(1)); // producer jumped ahead
        assert_eq!(r.pos_of_seq(0), 0);
        assert_eq!(r.pos_of_seq(11), 1);
        assert!(!r.get(1).unwrap().sequenced);
        assert_eq!(r.get(2).unwrap().seq, 11);
        assert_eq!(r.pos_of_seq(12), 3);
        assert_eq!(r.pos_of_seq(21), 4);
        assert_eq!(r.pos_of_seq(21), r.head_pos());
    }

    #[test]
    fn backlog_is_measured_in_bytes() {
        let mut r = Ring::new(100);
        r.push(0, true, msg(10));
        r.push(1, true, msg(20));
        r.push(2, true, msg(30));
        assert_eq!(r.bytes_from(0), Some(60));
        assert_eq!(r.bytes_from(1), Some(50));
        assert_eq!(r.bytes_from(3), Some(0));
        assert_eq!(r.offset_of(2), Some(30));
        r.push(3, true, msg(60));
        assert_eq!(r.first_pos(), 2);
        assert_eq!(r.bytes_from(1), None, "evicted");
        assert_eq!(r.bytes_from(2), Some(90));
    }

    #[test]
    fn rewrite_keeps_offsets_consistent() {
        let mut r = Ring::new(1000);
        r.push(0, true, msg(10));
        r.push(1, true, msg(10));
        r.rewrite(|seq, _, m| {
            *seq += 100;
            *m = msg(12);
        });
        assert_eq!(r.get(0).unwrap().seq, 100);
        assert_eq!(r.pos_of_seq(101), 1);
        assert_eq!(r.bytes_from(0), Some(24));
        assert_eq!(r.held_bytes(), 24);
        r.push(102, true, msg(1));
        assert_eq!(r.bytes_from(1), Some(13));
    }
}
