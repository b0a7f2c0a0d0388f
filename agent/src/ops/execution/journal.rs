//! The output journal of one execution: every byte the command wrote, as numbered chunks (seq
//! from 0, each with its offset in the output), so any reader can replay from any seq it still
//! holds. The newest chunks live in memory; past the memory cap the oldest move to the spill
//! file (`spill`), in segments: fixed-size slots of that file, as many as the spill cap holds.
//! A new segment past them takes the oldest one's slot, which is dropped and counted first, so
//! a reader that needed it is told exactly how many bytes it lost (a gap), never silently, and
//! the file never outgrows the cap. A reader of spilled chunks checks after its read that their
//! segment is still [held](Journal::holds): a slot is written over only once it is dropped.
//!
//! Chunks coalesce while nobody reads them: output goes into an open tail that becomes a chunk
//! (gets its seq) when a reader asks for it, when the next write would take it past the chunk
//! cap, or when the stream changes. A reader that keeps up gets each write at once; one that
//! lags gets bigger chunks. The bytes are kept as they were read (slices of the pipe's read
//! buffer, shared with the publishers): only small writes coalescing into one tail are copied.
//!
//! Spilling runs behind the memory cap, not in lockstep with it: the spiller moves the oldest
//! chunks out in batches once memory is [`SPILL_BATCH`] over its cap, and the pipes wait only
//! when memory is [`SPILL_SLACK`] over it, so a command whose reader keeps up never waits for
//! the disk. Pure bookkeeping: the file I/O is the spiller's, off the lock.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use tether_proto::pb::ExecStream;

/// Memory over its cap before the spiller starts a batch (with a spill cap).
pub const SPILL_BATCH: usize = 1 << 20;
/// Memory over its cap at which the pipes stop being read until the spiller catches up.
pub const SPILL_SLACK: usize = 4 << 20;
/// Most bytes one spill batch moves.
const SPILL_MAX: usize = 4 << 20;

/// One chunk of output.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub seq: u64,
    /// Output bytes (both streams) before this chunk.
    pub pos: u64,
    pub stream: ExecStream,
    pub data: Bytes,
}

/// Where a spilled chunk lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnDisk {
    pub seq: u64,
    pub pos: u64,
    pub stream: ExecStream,
    pub segment: u64,
    /// In the spill file.
    pub offset: u64,
    pub len: usize,
}

/// A segment held in the spill file.
#[derive(Debug, Clone, Copy)]
struct Segment {
    id: u64,
    slot: u64,
    bytes: u64,
}

/// What a reader finds at a seq.
#[derive(Debug)]
pub enum Lookup {
    Memory(Chunk),
    Disk(OnDisk),
    /// The chunk was dropped; the oldest kept starts at (`seq`, `pos`).
    Dropped {
        seq: u64,
        pos: u64,
    },
    /// Nothing there yet.
    Pending,
}

/// A batch the spiller must write before [`Journal::spilled`] moves it out of memory.
#[derive(Debug)]
pub struct SpillPlan {
    pub writes: Vec<(OnDisk, Bytes)>,
}

/// The open tail: one piece as it was read, or small pieces copied together.
#[derive(Debug)]
enum Tail {
    One(Bytes),
    Many(BytesMut),
}

impl Tail {
    fn len(&self) -> usize {
        match self {
            Tail::One(b) => b.len(),
            Tail::Many(b) => b.len(),
        }
    }

    fn append(&mut self, data: &[u8]) {
        if let Tail::One(first) = self {
            let mut joined = BytesMut::with_capacity(first.len() + data.len());
            joined.extend_from_slice(first);
            *self = Tail::Many(joined);
        }
        if let Tail::Many(buf) = self {
            buf.extend_from_slice(data);
        }
    }

    fn freeze(self) -> Bytes {
        match self {
            Tail::One(b) => b,
            Tail::Many(b) => b.freeze(),
        }
    }
}

/// The journal; see the module doc.
#[derive(Debug)]
pub struct Journal {
    chunk_cap: usize,
    mem_cap: usize,
    /// 0: nothing is spilled, the oldest chunks are dropped from memory.
    spill_cap: u64,
    segment_bytes: u64,
    memory: VecDeque<Chunk>,
    mem_bytes: usize,
    open: Option<(ExecStream, Tail)>,
    disk: VecDeque<OnDisk>,
    /// Segments on disk, oldest first.
    segments: VecDeque<Segment>,
    next_segment: u64,
    /// Slots of the spill file written so far.
    slots: u64,
    next_seq: u64,
    /// Bytes in sealed chunks (excludes the open tail).
    sealed_end: u64,
    dropped: u64,
    totals: [u64; 2],
}

impl Journal {
    pub fn new(chunk_cap: usize, mem_cap: usize, spill_cap: u64) -> Self {
        Journal {
            chunk_cap: chunk_cap.max(1),
            mem_cap,
            spill_cap,
            segment_bytes: (spill_cap / 8).max(1 << 20).min(spill_cap).max(chunk_cap as u64),
            memory: VecDeque::new(),
            mem_bytes: 0,
            open: None,
            disk: VecDeque::new(),
            segments: VecDeque::new(),
            next_segment: 0,
            slots: 0,
            next_seq: 0,
            sealed_end: 0,
            dropped: 0,
            totals: [0; 2],
        }
    }

    /// Appends output of `stream`, kept as given (see the module doc).
    pub fn push(&mut self, stream: ExecStream, mut data: Bytes) {
        self.totals[stream as usize] += data.len() as u64;
        self.mem_bytes += data.len();
        while !data.is_empty() {
            if self
                .open
                .as_ref()
                .is_some_and(|(s, tail)| *s != stream || tail.len() + data.len() > self.chunk_cap)
            {
                self.seal();
            }
            match &mut self.open {
                Some((_, tail)) => {
                    tail.append(&data);
                    data.clear();
                }
                None => {
                    let piece = data.split_to(self.chunk_cap.min(data.len()));
                    self.open = Some((stream, Tail::One(piece)));
                }
            }
        }
    }

    /// Makes the open tail a chunk.
    pub fn seal(&mut self) {
        if let Some((stream, tail)) = self.open.take() {
            let data = tail.freeze();
            let chunk = Chunk { seq: self.next_seq, pos: self.sealed_end, stream, data };
            self.next_seq += 1;
            self.sealed_end += chunk.data.len() as u64;
            self.memory.push_back(chunk);
        }
    }

    /// The chunk at `seq`; a reader asking for the next seq seals the open tail for itself.
    pub fn lookup(&mut self, seq: u64) -> Lookup {
        if seq == self.next_seq && self.open.is_some() {
            self.seal();
        }
        if seq >= self.next_seq {
            return Lookup::Pending;
        }
        if let Some(first) = self.memory.front()
            && seq >= first.seq
        {
            return Lookup::Memory(self.memory[(seq - first.seq) as usize].clone());
        }
        if let Some(first) = self.disk.front()
            && seq >= first.seq
        {
            return Lookup::Disk(self.disk[(seq - first.seq) as usize]);
        }
        let (seq, pos) = self.first();
        Lookup::Dropped { seq, pos }
    }

    /// The offset at which chunk `seq` starts (the end of everything sealed for `next_seq`),
    /// or the oldest kept one's for a dropped seq.
    pub fn pos_of(&self, seq: u64) -> u64 {
        if seq >= self.next_seq {
            return self.sealed_end;
        }
        if let Some(first) = self.memory.front()
            && seq >= first.seq
        {
            return self.memory[(seq - first.seq) as usize].pos;
        }
        if let Some(first) = self.disk.front()
            && seq >= first.seq
        {
            return self.disk[(seq - first.seq) as usize].pos;
        }
        self.first().1
    }

    /// The oldest chunk kept: (seq, offset).
    pub fn first(&self) -> (u64, u64) {
        let oldest = self.disk.front().map(|d| (d.seq, d.pos));
        oldest
            .or_else(|| self.memory.front().map(|c| (c.seq, c.pos)))
            .unwrap_or((self.next_seq, self.sealed_end))
    }

    /// Largest chunk.
    pub fn chunk_cap(&self) -> usize {
        self.chunk_cap
    }

    /// Seq the next chunk gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Every byte taken so far, the open tail included.
    pub fn end_pos(&self) -> u64 {
        self.sealed_end + self.open.as_ref().map_or(0, |(_, b)| b.len() as u64)
    }

    /// Bytes written on each stream.
    pub fn totals(&self) -> (u64, u64) {
        (self.totals[0], self.totals[1])
    }

    /// Bytes dropped past the spill cap.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether past the memory cap output goes to disk (else it is dropped).
    pub fn spills(&self) -> bool {
        self.spill_cap > 0
    }

    /// From now on the oldest output is dropped instead of spilled (the disk failed).
    pub fn disable_spill(&mut self) {
        self.spill_cap = 0;
    }

    /// For an ended execution nobody reads: its memory share moves to disk too (the spill cap
    /// grows by as much, so nothing more is dropped). A no-op without spill files.
    pub fn retire(&mut self) {
        if self.spills() && self.mem_cap > 0 {
            self.seal();
            self.spill_cap += self.mem_cap as u64;
            self.mem_cap = 0;
        }
    }

    /// Whether memory holds so much more than its cap that the pipes wait for the spiller
    /// (without spill files: any more than the cap, which the journal drops at once).
    pub fn over_memory(&self) -> bool {
        let slack = if self.spills() { SPILL_SLACK } else { 0 };
        self.mem_bytes > self.mem_cap + slack
    }

    /// Whether the spiller still has output to move to disk (false without spill files).
    pub fn spill_pending(&self) -> bool {
        self.spills() && self.wants_spill()
    }

    /// Whether the spiller has a batch to move (or, without spill files, output to drop).
    fn wants_spill(&self) -> bool {
        let batch = if self.spills() { SPILL_BATCH.min(self.mem_cap) } else { 0 };
        self.mem_bytes > self.mem_cap + batch
    }

    /// What the spiller should do: the oldest chunks to write out, a batch of them, once memory
    /// is a batch over its cap. Without a spill cap they are dropped here and `None` is returned.
    pub fn plan_spill(&mut self) -> Option<SpillPlan> {
        if !self.wants_spill() {
            return None;
        }
        if self.memory.len() <= 1 {
            self.seal();
        }
        let mut excess = self.mem_bytes.saturating_sub(self.mem_cap);
        if self.spill_cap == 0 {
            while excess > 0 && self.memory.len() > 1 {
                let Some(old) = self.memory.pop_front() else { break };
                self.mem_bytes -= old.data.len();
                self.dropped += old.data.len() as u64;
                excess = excess.saturating_sub(old.data.len());
            }
            return None;
        }
        // What is over, at most a few MiB per round, into one segment; never the newest chunk.
        let first = self.memory.front().filter(|_| self.memory.len() > 1)?;
        let segment = match self.segments.back() {
            Some(s) if s.bytes + first.data.len() as u64 <= self.segment_bytes => *s,
            _ => self.open_segment(),
        };
        let mut writes = Vec::new();
        let (mut used, mut planned) = (segment.bytes, 0usize);
        for chunk in self.memory.iter().take(self.memory.len() - 1) {
            let len = chunk.data.len();
            if planned >= excess || planned >= SPILL_MAX || used + len as u64 > self.segment_bytes {
                break;
            }
            let offset = segment.slot * self.segment_bytes + used;
            let at = OnDisk {
                seq: chunk.seq,
                pos: chunk.pos,
                stream: chunk.stream,
                segment: segment.id,
                offset,
                len,
            };
            writes.push((at, chunk.data.clone()));
            used += len as u64;
            planned += len;
        }
        (!writes.is_empty()).then_some(SpillPlan { writes })
    }

    /// Starts a segment: in a new slot while the spill cap has room for one, else in the
    /// oldest segment's, which is dropped first.
    fn open_segment(&mut self) -> Segment {
        let room = (self.spill_cap / self.segment_bytes).max(1);
        let slot = match self.segments.front() {
            Some(oldest) if self.slots >= room => {
                let oldest = *oldest;
                self.segments.pop_front();
                while self.disk.front().is_some_and(|d| d.segment == oldest.id) {
                    self.disk.pop_front();
                }
                self.dropped += oldest.bytes;
                oldest.slot
            }
            _ => {
                self.slots += 1;
                self.slots - 1
            }
        };
        let segment = Segment { id: self.next_segment, slot, bytes: 0 };
        self.next_segment += 1;
        self.segments.push_back(segment);
        segment
    }

    /// Whether the segment `at` lies in is still held (its slot not taken over).
    pub fn holds(&self, at: &OnDisk) -> bool {
        self.segments.front().is_some_and(|oldest| oldest.id <= at.segment)
    }

    /// The chunks `data` was read for from the spill file at `at` (one segment, oldest
    /// first), or `None` when their segment was dropped before the check: a slot is written
    /// over only once its segment is dropped, so bytes read before a check that finds it held
    /// are the chunks' own.
    pub fn read_back(&self, at: &[OnDisk], data: Vec<Bytes>) -> Option<Vec<Chunk>> {
        if !at.first().is_some_and(|first| self.holds(first)) || data.len() != at.len() {
            return None;
        }
        let chunks =
            at.iter().zip(data).map(|(d, data)| Chunk { seq: d.seq, pos: d.pos, stream: d.stream, data });
        Some(chunks.collect())
    }

    /// The chunks of `plan` are on disk: they leave memory.
    pub fn spilled(&mut self, plan: &SpillPlan) {
        for (at, _) in &plan.writes {
            // Only the spiller removes from the front, so these are still the oldest in memory.
            if self.memory.front().is_some_and(|c| c.seq == at.seq)
                && let Some(chunk) = self.memory.pop_front()
            {
                self.mem_bytes -= chunk.data.len();
            }
            if let Some(s) = self.segments.back_mut().filter(|s| s.id == at.segment) {
                s.bytes += at.len as u64;
            }
            self.disk.push_back(*at);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Bytes in the segments held on disk.
    fn on_disk(j: &Journal) -> u64 {
        j.segments.iter().map(|s| s.bytes).sum()
    }

    fn memory(j: &mut Journal, seq: u64) -> Chunk {
        match j.lookup(seq) {
            Lookup::Memory(c) => c,
            other => panic!("seq {seq}: {other:?}"),
        }
    }

    #[test]
    fn output_coalesces_until_read_and_splits_at_the_cap_and_stream_changes() {
        let mut j = Journal::new(8, 1 << 20, 0);
        j.push(ExecStream::Stdout, Bytes::from_static(b"ab"));
        j.push(ExecStream::Stdout, Bytes::from_static(b"cd"));
        assert_eq!(j.next_seq(), 0, "still open");
        let c = memory(&mut j, 0);
        assert_eq!((c.seq, c.pos, &c.data[..]), (0, 0, &b"abcd"[..]));
        j.push(ExecStream::Stdout, Bytes::from_static(b"0123456789"));
        j.push(ExecStream::Stderr, Bytes::from_static(b"E"));
        assert!(matches!(j.lookup(1), Lookup::Memory(c) if &c.data[..] == b"01234567"));
        assert!(matches!(j.lookup(2), Lookup::Memory(c) if &c.data[..] == b"89" && c.pos == 12));
        let e = memory(&mut j, 3);
        assert_eq!((e.stream, e.pos, &e.data[..]), (ExecStream::Stderr, 14, &b"E"[..]));
        assert!(matches!(j.lookup(4), Lookup::Pending));
        assert_eq!(j.totals(), (14, 1));
        assert_eq!(j.end_pos(), 15);
    }

    #[test]
    fn without_a_spill_cap_the_oldest_are_dropped_and_counted() {
        let mut j = Journal::new(10, 30, 0);
        for _ in 0..10 {
            j.push(ExecStream::Stdout, Bytes::from_static(&[1; 10]));
        }
        assert!(j.over_memory());
        assert!(j.plan_spill().is_none());
        assert!(!j.over_memory());
        let (seq, pos) = j.first();
        assert_eq!(j.dropped(), pos);
        assert!(matches!(j.lookup(0), Lookup::Dropped { seq: s, pos: p } if s == seq && p == pos));
        assert_eq!(j.pos_of(seq), pos);
    }

    #[test]
    fn spilled_chunks_are_found_on_disk_and_segments_past_the_cap_give_their_slots_over() {
        // 1 MiB segments (the minimum), a 2 MiB spill cap (two slots), 1 MiB in memory.
        let mut j = Journal::new(64 << 10, 1 << 20, 2 << 20);
        let block = Bytes::from(vec![7u8; 64 << 10]);
        let mut written = 0u64;
        let mut plans = Vec::new();
        for _ in 0..100 {
            j.push(ExecStream::Stdout, block.clone());
            written += block.len() as u64;
            while let Some(plan) = j.plan_spill() {
                let segments: Vec<u64> = plan.writes.iter().map(|(at, _)| at.segment).collect();
                assert!(segments.iter().all(|&s| s == segments[0]), "one segment per plan");
                for (at, _) in &plan.writes {
                    assert!(at.offset + at.len as u64 <= 2 << 20, "within the file's two slots: {at:?}");
                    // A slot is given over only once the segment in it is dropped.
                    let same_slot = plans.iter().filter(|o: &&OnDisk| {
                        o.offset / (1 << 20) == at.offset / (1 << 20) && o.segment != at.segment
                    });
                    assert!(same_slot.clone().all(|o| !j.holds(o)), "{at:?}");
                }
                plans.extend(plan.writes.iter().map(|(at, _)| *at));
                j.spilled(&plan);
            }
        }
        assert!(!j.holds(&plans[0]), "the first segment was dropped");
        // A replay that read the first segment's slot before it was taken over gets nothing.
        assert!(j.read_back(&plans[..1], vec![block.clone()]).is_none());
        j.seal();
        assert!(!j.over_memory());
        let (first, pos) = j.first();
        assert_eq!(pos, j.dropped());
        let Lookup::Disk(d) = j.lookup(first) else { panic!("the oldest kept chunk is on disk") };
        assert_eq!(d.pos, pos);
        let back = j.read_back(&[d], vec![block.clone()]).expect("its segment is held");
        assert_eq!((back[0].seq, back[0].pos, back[0].data.len()), (first, pos, block.len()));
        assert!(matches!(j.lookup(first.saturating_sub(1)), Lookup::Dropped { .. }));
        let kept: u64 = (first..j.next_seq())
            .map(|s| match j.lookup(s) {
                Lookup::Memory(c) => c.data.len() as u64,
                Lookup::Disk(d) => d.len as u64,
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(kept + j.dropped(), written, "every byte is kept or counted as dropped");
        assert!(on_disk(&j) > 1 << 20, "more than one segment is kept: {}", on_disk(&j));
    }

    #[test]
    fn a_spill_cap_under_a_segment_is_one_slot_of_its_size() {
        let mut j = Journal::new(64 << 10, 1 << 20, 512 << 10);
        let block = Bytes::from(vec![5u8; 64 << 10]);
        let mut end = 0;
        for _ in 0..64 {
            j.push(ExecStream::Stdout, block.clone());
            while let Some(plan) = j.plan_spill() {
                end = plan.writes.iter().map(|(at, _)| at.offset + at.len as u64).fold(end, u64::max);
                j.spilled(&plan);
            }
        }
        assert!(j.dropped() > 0 && on_disk(&j) > 0, "it spilled and dropped");
        assert!(end <= 512 << 10, "the file stays within the cap: {end}");
    }

    #[test]
    fn a_whole_read_is_kept_as_read_and_small_writes_are_joined() {
        let mut j = Journal::new(8, 1 << 20, 0);
        let read = Bytes::from_static(b"01234567");
        j.push(ExecStream::Stdout, read.clone());
        let c = memory(&mut j, 0);
        assert_eq!(c.data.as_ptr(), read.as_ptr(), "the read's own bytes, not a copy");
        j.push(ExecStream::Stdout, Bytes::from_static(b"ab"));
        j.push(ExecStream::Stdout, Bytes::from_static(b"cd"));
        // A write that would take the open tail past the cap starts a chunk of its own.
        j.push(ExecStream::Stdout, Bytes::from_static(b"efghijk"));
        assert_eq!(&memory(&mut j, 1).data[..], b"abcd");
        assert_eq!(&memory(&mut j, 2).data[..], b"efghijk");
        assert_eq!(j.end_pos(), 19);
    }

    #[test]
    fn memory_spills_in_batches_behind_its_cap_and_the_pipes_wait_only_past_the_slack() {
        let cap = 8 << 20;
        let mut j = Journal::new(64 << 10, cap, 64 << 20);
        let block = Bytes::from(vec![3u8; 64 << 10]);
        // Up to a batch over the cap: nothing to spill yet, nothing waits.
        while j.mem_bytes + block.len() <= cap + SPILL_BATCH {
            j.push(ExecStream::Stdout, block.clone());
        }
        assert!(j.plan_spill().is_none());
        assert!(!j.over_memory());
        // The spiller lags: output keeps being taken up to the slack, then the pipes wait.
        while !j.over_memory() {
            j.push(ExecStream::Stdout, block.clone());
        }
        assert!(j.mem_bytes > cap + SPILL_SLACK);
        // It catches up in batches, down to the cap, never below: the memory share stays whole.
        let mut batches = 0;
        while let Some(plan) = j.plan_spill() {
            let moved: usize = plan.writes.iter().map(|(at, _)| at.len).sum();
            assert!(moved <= SPILL_MAX, "{moved}");
            j.spilled(&plan);
            batches += 1;
        }
        assert!(batches >= 1, "{batches}");
        assert!(!j.over_memory());
        assert!(j.mem_bytes >= cap && j.mem_bytes <= cap + SPILL_BATCH, "{}", j.mem_bytes);
        j.seal();
        let kept: u64 = (0..j.next_seq())
            .map(|s| match j.lookup(s) {
                Lookup::Memory(c) => c.data.len() as u64,
                Lookup::Disk(d) => d.len as u64,
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(kept, j.end_pos(), "every byte is in memory or on disk");
        assert_eq!(j.dropped(), 0, "within the spill cap");
    }
}
