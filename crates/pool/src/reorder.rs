//! Putting results back in input order: blocks of records arrive in any
//! order and leave as runs of consecutive records.

use std::collections::BTreeMap;
use std::ops::Range;

use crate::outcome::Block;

/// A block and how far it has been read.
#[derive(Debug)]
struct Cursor {
    block: Block,
    /// The next record to release.
    at: usize,
    /// Nanoseconds from the block's first record's start to record `at`'s.
    offset_ns: u64,
}

impl Cursor {
    fn next_seq(&self) -> Option<u64> {
        self.block.seqs.get(self.at).copied()
    }
}

/// Consecutive records of one block, released together: their sequence
/// numbers follow each other from the first.
#[derive(Debug)]
pub(crate) struct Run<'a> {
    pub block: &'a Block,
    /// Which records of the block.
    pub range: Range<usize>,
    /// Nanoseconds from the block's first record's start to `range.start`'s.
    pub offset_ns: u64,
}

/// Holds blocks that arrived ahead of their turn. A block's records rise
/// but need not be consecutive (the records between may come in other
/// blocks): a block is released up to its first gap, and the rest waits
/// for its turn again. Memory is bounded by the caller's in-flight window.
#[derive(Debug, Default)]
pub(crate) struct InOrder {
    next: u64,
    /// The block being released.
    current: Option<Cursor>,
    /// The others, by their next record.
    waiting: BTreeMap<u64, Cursor>,
}

impl InOrder {
    /// Store a block. Records already released, or already held, are
    /// duplicates: a block that begins with one is dropped. Returns whether
    /// it was kept.
    pub fn insert(&mut self, block: Block) -> bool {
        let Some(&first) = block.seqs.first() else {
            return false;
        };
        let held = self.current.as_ref().and_then(Cursor::next_seq) == Some(first);
        if first < self.next || held || self.waiting.contains_key(&first) {
            return false;
        }
        let cursor = Cursor {
            block,
            at: 0,
            offset_ns: 0,
        };
        self.waiting.insert(first, cursor);
        true
    }

    /// Release the next run of at most `max` records (at least one), if its
    /// first record has arrived. A run's records all failed or all did not.
    pub fn pop_run(&mut self, max: usize) -> Option<Run<'_>> {
        if self.current.as_ref().and_then(Cursor::next_seq) != Some(self.next) {
            if let Some(c) = self.current.take() {
                if let Some(seq) = c.next_seq() {
                    self.waiting.insert(seq, c);
                }
            }
            self.current = Some(self.waiting.remove(&self.next)?);
        }
        let c = self.current.as_mut()?;
        let seqs = &c.block.seqs;
        let start = c.at;
        let failed = c.block.failure(start).is_some();
        let mut end = start + 1;
        while end < seqs.len()
            && end - start < max.max(1)
            && seqs[end] == seqs[end - 1] + 1
            && c.block.failure(end).is_some() == failed
        {
            end += 1;
        }
        let offset_ns = c.offset_ns;
        c.offset_ns = c.block.offset((start, offset_ns), end);
        c.at = end;
        self.next = seqs[end - 1] + 1;
        Some(Run {
            block: &c.block,
            range: start..end,
            offset_ns,
        })
    }

    /// Whether [`InOrder::pop_run`] has a run to release.
    pub fn ready(&self) -> bool {
        self.current.as_ref().and_then(Cursor::next_seq) == Some(self.next)
            || self.waiting.contains_key(&self.next)
    }

    /// The sequence number released next.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// How many blocks wait for an earlier record.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::RecordError;

    fn block(seqs: &[u64]) -> Block {
        Block::failed_all(seqs.to_vec(), 0, RecordError::Cancelled)
    }

    /// Every record released, in order, from `blocks` inserted in this order.
    fn release(blocks: &[&[u64]], max: usize) -> Vec<u64> {
        let mut order = InOrder::default();
        let mut out = vec![];
        for seqs in blocks {
            assert!(order.insert(block(seqs)));
            while let Some(run) = order.pop_run(max) {
                assert!(run.range.len() <= max.max(1));
                out.extend(&run.block.seqs[run.range]);
            }
        }
        out
    }

    #[test]
    fn releases_in_order_whatever_the_arrival_order() {
        let blocks: [&[u64]; 5] = [&[3, 4], &[0], &[7, 8, 9], &[1, 2], &[5, 6]];
        for max in [1, 2, 100] {
            assert_eq!(release(&blocks, max), (0..10).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_block_with_gaps_waits_for_what_goes_between() {
        // 1 and 4 come alone (say, records refused before they were sent).
        let blocks: [&[u64]; 4] = [&[0, 2, 3, 5], &[4], &[6], &[1]];
        assert_eq!(release(&blocks, 100), (0..7).collect::<Vec<_>>());
        let mut order = InOrder::default();
        order.insert(block(&[0, 2, 3]));
        let run = order.pop_run(100).unwrap();
        assert_eq!(run.range, 0..1);
        assert!(order.pop_run(100).is_none());
        assert_eq!(order.next_seq(), 1);
        assert_eq!(order.held(), 1, "the rest of the first block waits again");
        assert!(!order.ready());
        order.insert(block(&[1]));
        assert!(order.ready());
        assert_eq!(order.pop_run(100).unwrap().block.seqs, [1]);
        assert!(order.ready());
        assert_eq!(order.pop_run(100).unwrap().range, 1..3);
        assert_eq!(order.next_seq(), 4);
    }

    #[test]
    fn duplicates_are_refused() {
        let mut order = InOrder::default();
        assert!(order.insert(block(&[1])));
        assert!(!order.insert(block(&[1, 2])));
        assert!(order.insert(block(&[0])));
        assert_eq!(order.pop_run(10).unwrap().block.seqs, [0]);
        assert_eq!(order.pop_run(10).unwrap().block.seqs, [1]);
        assert!(!order.insert(block(&[0])), "late duplicate");
        assert!(!order.insert(block(&[])));
        assert!(order.pop_run(10).is_none());
    }

    #[test]
    fn pseudo_random_blocks_and_orders() {
        let mut state = 12345u64;
        let mut rand = |n: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize % n
        };
        for n in [1usize, 2, 17, 500] {
            // Cut 0..n into blocks, move some records into blocks of their own.
            let mut blocks: Vec<Vec<u64>> = vec![];
            let mut singles = vec![];
            let mut seq = 0;
            while seq < n as u64 {
                let len = 1 + rand(8);
                let mut b = vec![];
                for s in seq..(seq + len as u64).min(n as u64) {
                    if rand(5) == 0 {
                        singles.push(vec![s]);
                    } else {
                        b.push(s);
                    }
                }
                seq += len as u64;
                if !b.is_empty() {
                    blocks.push(b);
                }
            }
            blocks.extend(singles);
            for i in (1..blocks.len()).rev() {
                blocks.swap(i, rand(i + 1));
            }
            let refs: Vec<&[u64]> = blocks.iter().map(|b| b.as_slice()).collect();
            assert_eq!(
                release(&refs, 1 + rand(4)),
                (0..n as u64).collect::<Vec<_>>()
            );
        }
    }
}
