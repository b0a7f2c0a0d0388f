//! Bounded capture of one output stream of a child. However much the child writes (a few bytes
//! or a gigabyte), a [`Capture`] holds at most about 1.5 × its limit: the first `limit` bytes
//! and a ring of the last `limit / 2` (rounded up), plus the true byte count. That is exactly
//! what reply shaping needs to return a head and a tail of up to `limit` bytes in total. Kept
//! apart from shaping so streaming exec can reuse it.

use std::collections::VecDeque;

/// Head, tail ring and true total of one stream.
#[derive(Debug, Clone)]
pub struct Capture {
    limit: usize,
    head: Vec<u8>,
    /// Bytes after the head; only the last `tail_cap()` of them are kept.
    tail: VecDeque<u8>,
    total: u64,
}

impl Capture {
    /// A capture from which up to `limit` bytes can later be taken (see [`Capture::head`] and
    /// [`Capture::tail`]). Memory grows with the output, never past ~1.5 × `limit`.
    pub fn new(limit: usize) -> Self {
        Self { limit, head: Vec::new(), tail: VecDeque::new(), total: 0 }
    }

    /// Appends bytes the child wrote.
    pub fn push(&mut self, mut data: &[u8]) {
        self.total = self.total.saturating_add(data.len() as u64);
        let head_room = self.limit - self.head.len();
        if head_room > 0 {
            let n = head_room.min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.is_empty() {
            return;
        }
        let cap = self.tail_cap();
        if data.len() >= cap {
            self.tail.clear();
            self.tail.extend(&data[data.len() - cap..]);
        } else {
            let overflow = (self.tail.len() + data.len()).saturating_sub(cap);
            self.tail.drain(..overflow);
            self.tail.extend(data);
        }
    }

    /// The true number of bytes the child wrote.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The most bytes that can be taken out of this capture.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The whole stream, when it was no longer than the limit.
    pub fn all(&self) -> Option<&[u8]> {
        (self.total == self.head.len() as u64).then_some(&self.head[..])
    }

    /// The first `n` bytes (fewer if the stream or the limit is shorter).
    pub fn head(&self, n: usize) -> &[u8] {
        &self.head[..n.min(self.head.len())]
    }

    /// The last `n` bytes of the stream, for any `n` up to `limit / 2` rounded up (fewer if the
    /// stream is shorter).
    pub fn tail(&self, n: usize) -> Vec<u8> {
        let n = n.min(self.head.len() + self.tail.len());
        let from_ring = n.min(self.tail.len());
        // Bytes from the head's end are wanted only while the ring is not full, i.e. nothing was
        // dropped between head and ring, so head ++ ring is the stream and the join is seamless.
        let from_head = n - from_ring;
        debug_assert!(from_head == 0 || self.total == (self.head.len() + self.tail.len()) as u64);
        let mut out = Vec::with_capacity(n);
        out.extend_from_slice(&self.head[self.head.len() - from_head..]);
        out.extend(self.tail.range(self.tail.len() - from_ring..));
        out
    }

    fn tail_cap(&self) -> usize {
        self.limit.div_ceil(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn fill(limit: usize, data: &[u8], chunk: usize) -> Capture {
        let mut c = Capture::new(limit);
        data.chunks(chunk.max(1)).for_each(|piece| c.push(piece));
        c
    }

    #[test]
    fn head_tail_and_total_match_the_stream_for_any_chunking() {
        for limit in [0, 1, 7, 64, 101] {
            for len in [0, 1, limit / 2, limit, limit + 1, limit + limit / 2, 3 * limit + 5, 1000] {
                let data = stream(len);
                for chunk in [1, 3, 50, 4096] {
                    let c = fill(limit, &data, chunk);
                    assert_eq!(c.total(), len as u64);
                    assert_eq!(c.all().is_some(), len <= limit);
                    let h = limit.min(len);
                    assert_eq!(c.head(limit), &data[..h]);
                    let t = limit.div_ceil(2).min(len);
                    assert_eq!(c.tail(t), &data[len - t..], "limit {limit} len {len} chunk {chunk}");
                }
            }
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let mut c = Capture::new(1000);
        let block = vec![b'x'; 64 * 1024];
        for _ in 0..200 {
            c.push(&block);
        }
        assert_eq!(c.total(), 200 * 64 * 1024);
        assert_eq!(c.head.len(), 1000);
        assert_eq!(c.tail.len(), 500);
    }
}
