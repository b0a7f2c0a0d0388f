//! The byte ranges an upload holds so far. Chunks arrive out of order (several are in flight)
//! and an interrupted upload resumes by asking which ranges the agent already has, so the set is
//! kept sorted and merged: its length stays the number of holes plus one, not the chunk count.

/// Sorted, non-overlapping, non-adjacent `[start, end)` ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    /// Adds `[start, end)`, merging it with every range it overlaps or touches.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let first = self.ranges.partition_point(|&(_, e)| e < start);
        let last = self.ranges.partition_point(|&(s, _)| s <= end);
        let (mut lo, mut hi) = (start, end);
        if first < last {
            lo = lo.min(self.ranges[first].0);
            hi = hi.max(self.ranges[last - 1].1);
        }
        self.ranges.splice(first..last, [(lo, hi)]);
    }

    /// The end of the range that covers `at` (or starts there), or `at` when none does.
    pub fn covered_from(&self, at: u64) -> u64 {
        let i = self.ranges.partition_point(|&(_, e)| e <= at);
        match self.ranges.get(i) {
            Some(&(s, e)) if s <= at => e,
            _ => at,
        }
    }

    /// True when `[0, size)` is held and nothing beyond it.
    pub fn is_exactly(&self, size: u64) -> bool {
        match self.ranges.as_slice() {
            [] => size == 0,
            [(0, end)] => *end == size,
            _ => false,
        }
    }

    /// The end of the last range (0 when empty).
    pub fn end(&self) -> u64 {
        self.ranges.last().map_or(0, |&(_, e)| e)
    }

    /// The ranges as `(offset, length)`.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|&(s, e)| (s, e - s))
    }

    /// The holes below `size` (at most `max` of them), as `(offset, length)`.
    pub fn missing(&self, size: u64, max: usize) -> Vec<(u64, u64)> {
        let mut holes = Vec::new();
        let mut at = 0;
        for &(s, e) in &self.ranges {
            if s >= size {
                break;
            }
            if s > at {
                holes.push((at, s - at));
            }
            at = e;
        }
        if at < size {
            holes.push((at, size - at));
        }
        holes.truncate(max);
        holes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(parts: &[(u64, u64)]) -> RangeSet {
        let mut s = RangeSet::default();
        for &(a, b) in parts {
            s.insert(a, b);
        }
        s
    }

    #[test]
    fn out_of_order_chunks_merge_into_one_range() {
        let s = set(&[(20, 30), (0, 10), (10, 20)]);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(0, 30)]);
        assert!(s.is_exactly(30));
        assert!(!s.is_exactly(31));
        assert!(set(&[]).is_exactly(0));
    }

    #[test]
    fn overlapping_and_separate_ranges() {
        let s = set(&[(0, 5), (10, 15), (3, 11), (20, 25), (30, 31)]);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(0, 15), (20, 5), (30, 1)]);
        assert_eq!(s.covered_from(0), 15);
        assert_eq!(s.end(), 31);
        assert_eq!(s.covered_from(15), 15);
        assert_eq!(s.covered_from(22), 25);
        assert_eq!(s.missing(40, 10), vec![(15, 5), (25, 5), (31, 9)]);
        assert_eq!(s.missing(22, 10), vec![(15, 5)]);
        assert_eq!(s.missing(40, 1), vec![(15, 5)]);
        assert!(!s.is_exactly(31));
    }

    #[test]
    fn empty_ranges_are_ignored() {
        let s = set(&[(5, 5), (7, 3)]);
        assert_eq!(s, RangeSet::default());
        assert_eq!(s.missing(4, 10), vec![(0, 4)]);
    }
}
