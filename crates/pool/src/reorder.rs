//! The reorder buffer: results arrive in any order and leave in input order.

use std::collections::VecDeque;

/// Holds results that arrived ahead of their turn. Memory is bounded by the
/// distance between the oldest missing sequence number and the newest
/// arrival, which the caller's in-flight window bounds.
#[derive(Debug)]
pub struct ReorderBuffer<T> {
    next: u64,
    slots: VecDeque<Option<T>>,
    held: usize,
}

impl<T> Default for ReorderBuffer<T> {
    fn default() -> Self {
        Self::new(0)
    }
}

impl<T> ReorderBuffer<T> {
    /// A buffer whose first expected sequence number is `first`.
    pub fn new(first: u64) -> Self {
        ReorderBuffer {
            next: first,
            slots: VecDeque::new(),
            held: 0,
        }
    }

    /// Store the result for `seq`. Returns `false` (and drops the value) if
    /// `seq` was already released or is already held: a duplicate.
    pub fn insert(&mut self, seq: u64, value: T) -> bool {
        if seq < self.next {
            return false;
        }
        let index = (seq - self.next) as usize;
        if index == self.slots.len() {
            // The common case, results arriving in order: no gap to fill.
            self.slots.push_back(Some(value));
            self.held += 1;
            return true;
        }
        if index > self.slots.len() {
            self.slots.resize_with(index + 1, || None);
        }
        if self.slots[index].is_some() {
            return false;
        }
        self.slots[index] = Some(value);
        self.held += 1;
        true
    }

    /// Release the next result in order, if it has arrived.
    pub fn pop(&mut self) -> Option<(u64, T)> {
        match self.slots.front() {
            Some(Some(_)) => {
                let value = self.slots.pop_front().flatten()?;
                let seq = self.next;
                self.next += 1;
                self.held -= 1;
                Some((seq, value))
            }
            _ => None,
        }
    }

    /// The sequence number released next.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// How many results are waiting for an earlier one.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_order_whatever_the_arrival_order() {
        let mut buf = ReorderBuffer::new(0);
        let arrival = [3u64, 0, 4, 1, 2, 7, 5, 6];
        let mut out = vec![];
        for seq in arrival {
            assert!(buf.insert(seq, seq * 10));
            while let Some((s, v)) = buf.pop() {
                assert_eq!(v, s * 10);
                out.push(s);
            }
        }
        assert_eq!(out, (0..8).collect::<Vec<_>>());
        assert_eq!(buf.held(), 0);
        assert_eq!(buf.next_seq(), 8);
    }

    #[test]
    fn holds_until_the_gap_fills() {
        let mut buf = ReorderBuffer::new(10);
        assert!(buf.insert(12, 'c'));
        assert!(buf.insert(11, 'b'));
        assert_eq!(buf.pop(), None);
        assert_eq!(buf.held(), 2);
        assert!(buf.insert(10, 'a'));
        assert_eq!(buf.pop(), Some((10, 'a')));
        assert_eq!(buf.pop(), Some((11, 'b')));
        assert_eq!(buf.pop(), Some((12, 'c')));
        assert_eq!(buf.pop(), None);
    }

    #[test]
    fn duplicates_are_refused() {
        let mut buf = ReorderBuffer::new(0);
        assert!(buf.insert(1, "first"));
        assert!(!buf.insert(1, "again"));
        assert!(buf.insert(0, "zero"));
        assert_eq!(buf.pop(), Some((0, "zero")));
        assert_eq!(buf.pop(), Some((1, "first")));
        assert!(!buf.insert(0, "late duplicate"));
        assert_eq!(buf.pop(), None);
    }

    #[test]
    fn pseudo_random_permutations() {
        let mut state = 12345u64;
        for n in [1usize, 2, 17, 500] {
            let mut order: Vec<u64> = (0..n as u64).collect();
            for i in (1..n).rev() {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                order.swap(i, (state >> 33) as usize % (i + 1));
            }
            let mut buf = ReorderBuffer::new(0);
            let mut out = vec![];
            for seq in order {
                buf.insert(seq, ());
                while let Some((s, ())) = buf.pop() {
                    out.push(s);
                }
            }
            assert_eq!(out, (0..n as u64).collect::<Vec<_>>());
        }
    }
}
