//! One record's outcome: where and when it ran, and its result. The same
//! type carries it from the supervisor (output bytes), through the raw API
//! (bytes), to a typed pool's iterators and handles (the task's output).

use std::ops::{Deref, Range};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use procpool_protocol::{decode_value, FailureKind};

use crate::error::RecordError;
use crate::transport::{Buf, Results};

/// One finished record, with where and when it ran.
#[derive(Debug)]
pub struct Outcome<O> {
    /// Position in the input (from 0).
    pub seq: u64,
    /// The worker that answered it (`None` when no worker did, e.g. cancelled).
    pub pid: Option<u32>,
    /// The thread of that worker that ran it (0 in single-threaded workers).
    pub thread: u32,
    /// When it started, in microseconds since the Unix epoch, if known
    /// (not when the pool does not time records).
    pub started_us: Option<u64>,
    /// How long it ran (zero if the pool does not time records:
    /// [`PoolBuilder::record_times`](crate::PoolBuilder::record_times)).
    pub duration: Duration,
    /// The output, or how the record failed.
    pub result: Result<O, RecordError>,
}

/// A record's output bytes as they travel inside the pool: a range of the
/// message they arrived in, shared by the records of that message, so that a
/// batch of results costs one allocation rather than one per record.
#[derive(Clone)]
pub(crate) struct Payload {
    buf: Arc<Buf>,
    range: Range<usize>,
}

impl Payload {
    /// Leave out a final newline.
    pub(crate) fn strip_newline(&mut self) {
        if self.range.end > self.range.start && self.buf.get(self.range.end - 1) == Some(&b'\n') {
            self.range.end -= 1;
        }
    }

    /// The same bytes, copied into a buffer of their own if they are in a
    /// slot of a worker's shared memory (which they would hold until
    /// dropped); as they are otherwise.
    pub(crate) fn detached(self) -> Payload {
        if matches!(*self.buf, Buf::Lease(_)) {
            Payload {
                buf: Arc::new(Buf::Heap(self.to_vec())),
                range: 0..self.range.len(),
            }
        } else {
            self
        }
    }

    /// The bytes as a vector of their own (without a copy when they are
    /// the whole of an unshared buffer).
    pub(crate) fn into_vec(self) -> Vec<u8> {
        if self.range == (0..self.buf.len()) {
            match Arc::try_unwrap(self.buf) {
                Ok(Buf::Heap(v)) => v,
                Ok(other) => other.to_vec(),
                Err(b) => b.to_vec(),
            }
        } else {
            self.to_vec()
        }
    }
}

impl Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // In range: checked when made.
        &self.buf[self.range.clone()]
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} bytes)", self.len())
    }
}

/// Records that ended together, in the order they were sent: records of one
/// batch answered by one message (their outputs one after the other in it),
/// or records that ended without a worker's answer (cancelled, timed out,
/// given up). The supervisor delivers blocks, not records, so that a batch
/// of results costs a few allocations, not a few per record.
#[derive(Debug)]
pub(crate) struct Block {
    /// The records' sequence numbers, in the order they were sent (rising).
    pub(crate) seqs: Vec<u64>,
    pub(crate) pid: Option<u32>,
    pub(crate) thread: u32,
    /// The message the outputs arrived in (empty when none did).
    buf: Arc<Buf>,
    /// Record `i`'s output is `buf[ends[i - 1]..ends[i]]` (record 0's starts
    /// at `start`); a failed record's is empty. Empty when no output arrived.
    start: usize,
    ends: Vec<usize>,
    /// The failed records, by index, in order.
    failures: Vec<(usize, RecordError)>,
    /// When the first record started, in microseconds since the Unix epoch;
    /// each later one started when the one before it ended.
    started_us: Option<u64>,
    /// Each record's duration in nanoseconds; empty when none is known.
    nanos: Vec<u64>,
}

impl Block {
    /// The records `seqs` answered by a worker in `results`. `None` if the
    /// answer does not fit them or its message (one length and one duration
    /// per record, outputs within the message, failures in order and each
    /// within the records).
    pub(crate) fn answered(seqs: Vec<u64>, pid: Option<u32>, results: Results) -> Option<Block> {
        let Results { head, buf, start } = results;
        let timed = !head.nanos.is_empty();
        if head.lengths.len() != seqs.len() || (timed && head.nanos.len() != seqs.len()) {
            return None;
        }
        let mut after = None;
        for &(i, _) in &head.failures {
            if i as usize >= seqs.len() || after.is_some_and(|a| i <= a) {
                return None;
            }
            after = Some(i);
        }
        let mut end = start;
        let mut ends = Vec::with_capacity(seqs.len());
        for &len in &head.lengths {
            end += len as usize;
            ends.push(end);
        }
        if end > buf.len() {
            return None;
        }
        // The wire's failures become the records' errors.
        let failures = head
            .failures
            .into_iter()
            .map(|(i, f)| {
                let error = match f.kind {
                    FailureKind::Error => RecordError::Task(f.message),
                    FailureKind::Panic => RecordError::Panicked(f.message),
                    FailureKind::BadInput => RecordError::BadInput(f.message),
                };
                (i as usize, error)
            })
            .collect();
        Some(Block {
            seqs,
            pid,
            thread: head.thread,
            buf,
            start,
            ends,
            failures,
            started_us: Some(head.started_us).filter(|&t| t != 0),
            nanos: head.nanos,
        })
    }

    /// Records that all ended with `error`, without running; `pid` 0 when
    /// no worker was involved.
    pub(crate) fn failed_all(seqs: Vec<u64>, pid: u32, error: RecordError) -> Block {
        let failures = (0..seqs.len()).map(|i| (i, error.clone())).collect();
        Block {
            seqs,
            pid: Some(pid).filter(|&p| p != 0),
            thread: 0,
            buf: Arc::default(),
            start: 0,
            ends: Vec::new(),
            failures,
            started_us: None,
            nanos: Vec::new(),
        }
    }

    /// One record that failed without running (or with no time to report).
    pub(crate) fn failed(seq: u64, pid: u32, error: RecordError) -> Block {
        Block {
            failures: vec![(0, error)],
            ..Block::failed_all(vec![seq], pid, RecordError::Cancelled)
        }
    }

    /// One record that failed while running since `started` (timed out, or
    /// its worker died).
    pub(crate) fn failed_running(
        seq: u64,
        pid: u32,
        error: RecordError,
        started: Instant,
    ) -> Block {
        let ran = Instant::now().saturating_duration_since(started);
        let started_us = SystemTime::now()
            .checked_sub(ran)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_micros() as u64);
        Block {
            started_us,
            nanos: vec![ran.as_nanos() as u64],
            ..Block::failed(seq, pid, error)
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Record `i`'s failure, if it failed.
    pub(crate) fn failure(&self, i: usize) -> Option<&RecordError> {
        if self.failures.is_empty() {
            return None;
        }
        self.failures
            .binary_search_by_key(&i, |f| f.0)
            .ok()
            .map(|at| &self.failures[at].1)
    }

    /// Where record `i`'s output is in the message.
    fn range(&self, i: usize) -> Range<usize> {
        let start = if i == 0 { self.start } else { self.ends[i - 1] };
        start..self.ends[i]
    }

    /// The outputs of records `range` (none of them failed), one after the other.
    pub(crate) fn outputs(&self, range: Range<usize>) -> &[u8] {
        if range.is_empty() || self.ends.is_empty() {
            return &[];
        }
        &self.buf[self.range(range.start).start..self.ends[range.end - 1]]
    }

    /// Record `i`'s output (empty for a failed record).
    pub(crate) fn output(&self, i: usize) -> &[u8] {
        if self.ends.is_empty() {
            return &[];
        }
        &self.buf[self.range(i)]
    }

    /// Record `i`'s duration.
    pub(crate) fn duration(&self, i: usize) -> Duration {
        Duration::from_nanos(self.nanos.get(i).copied().unwrap_or(0))
    }

    /// The longest duration of records `range` (zero when none is known).
    pub(crate) fn longest(&self, range: Range<usize>) -> Duration {
        let nanos = self.nanos.get(range).unwrap_or_default();
        Duration::from_nanos(nanos.iter().copied().max().unwrap_or(0))
    }

    /// Nanoseconds from the first record's start to record `i`'s, given
    /// those to record `from`'s (so that reading records in order costs one
    /// addition each).
    pub(crate) fn offset(&self, from: (usize, u64), i: usize) -> u64 {
        let (at, ns) = from;
        ns + self.nanos.get(at..i).map_or(0, |d| d.iter().sum::<u64>())
    }

    /// Record `i` as an outcome, `offset_ns` after the first record's start,
    /// with its output as `make` turns it into a result.
    pub(crate) fn outcome<O>(
        &self,
        i: usize,
        offset_ns: u64,
        make: impl FnOnce(usize) -> Result<O, RecordError>,
    ) -> Outcome<O> {
        let result = match self.failure(i) {
            Some(e) => Err(e.clone()),
            None => make(i),
        };
        Outcome {
            seq: self.seqs[i],
            pid: self.pid,
            thread: self.thread,
            started_us: self.started_us.map(|t| t + offset_ns / 1000),
            duration: self.duration(i),
            result,
        }
    }

    /// Record `i`'s output as a [`Payload`] sharing the message.
    pub(crate) fn payload(&self, i: usize) -> Payload {
        Payload {
            buf: Arc::clone(&self.buf),
            range: if self.ends.is_empty() {
                0..0
            } else {
                self.range(i)
            },
        }
    }

    /// Record `i`'s output decoded as `O`.
    pub(crate) fn decode<O: serde::de::DeserializeOwned>(
        &self,
        i: usize,
    ) -> Result<O, RecordError> {
        decode_value::<O>(self.output(i)).map_err(|e| RecordError::BadOutput(e.to_string()))
    }

    /// Records `range` in order as outcomes, the first `offset_ns` after the
    /// block's first record started, each output made into a result by `make`.
    pub(crate) fn outcomes<'b, O>(
        &'b self,
        range: Range<usize>,
        offset_ns: u64,
        mut make: impl FnMut(usize) -> Result<O, RecordError> + 'b,
    ) -> impl ExactSizeIterator<Item = Outcome<O>> + 'b {
        let mut ns = offset_ns;
        range.map(move |i| {
            let o = self.outcome(i, ns, &mut make);
            ns += self.nanos.get(i).copied().unwrap_or(0);
            o
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use procpool_protocol::{BatchResults, TaskFailure};

    /// Records 10, 11, 12 answered in one message whose outputs start at
    /// byte 3: "ab", (failed), "cde"; 100, 200 and 300 ns.
    fn answer(failures: Vec<(u32, TaskFailure)>, lengths: &[u32]) -> Option<Block> {
        answer_timed(failures, lengths, vec![100, 200, 300])
    }

    fn answer_timed(
        failures: Vec<(u32, TaskFailure)>,
        lengths: &[u32],
        nanos: Vec<u64>,
    ) -> Option<Block> {
        let head = BatchResults {
            batch: 0,
            thread: 1,
            busy_nanos: 600,
            started_us: 1_000,
            nanos,
            lengths: lengths.to_vec(),
            outputs: Vec::new(),
            failures,
        };
        let buf = Arc::new(Buf::Heap(b"xyzabcdeTAIL".to_vec()));
        Block::answered(
            vec![10, 11, 12],
            Some(7),
            Results {
                head,
                buf,
                start: 3,
            },
        )
    }

    fn error(message: &str) -> TaskFailure {
        TaskFailure {
            kind: FailureKind::Error,
            message: message.into(),
        }
    }

    #[test]
    fn an_answer_reads_as_its_records() {
        let failed = vec![(1, error("no"))];
        let block = answer(failed, &[2, 0, 3]).unwrap();
        assert_eq!(block.len(), 3);
        assert_eq!(block.output(0), b"ab");
        assert_eq!(block.output(1), b"");
        assert_eq!(block.output(2), b"cde");
        assert_eq!(block.outputs(0..3), b"abcde");
        assert_eq!(block.outputs(2..3), b"cde");
        assert!(block.failure(0).is_none() && block.failure(1).is_some());
        assert_eq!(block.offset((0, 0), 2), 300);
        assert_eq!(block.offset((1, 100), 3), 600);
        let all: Vec<_> = block
            .outcomes(0..3, 0, |i| Ok(block.output(i).to_vec()))
            .collect();
        let seqs: Vec<u64> = all.iter().map(|o| o.seq).collect();
        assert_eq!(seqs, [10, 11, 12]);
        assert_eq!(all[0].result.as_deref().unwrap(), b"ab");
        assert!(matches!(&all[1].result, Err(RecordError::Task(m)) if m == "no"));
        // Each record starts when the one before it ended (in whole microseconds).
        let starts: Vec<Option<u64>> = all.iter().map(|o| o.started_us).collect();
        assert_eq!(starts, [Some(1_000), Some(1_000), Some(1_000)]);
        assert_eq!(all[2].duration, Duration::from_nanos(300));
        assert!(all.iter().all(|o| o.pid == Some(7) && o.thread == 1));
    }

    #[test]
    fn untimed_answers_have_no_durations_and_partly_timed_ones_are_refused() {
        let block = answer_timed(vec![], &[2, 0, 3], Vec::new()).unwrap();
        assert_eq!(block.len(), 3);
        assert_eq!(block.outputs(0..3), b"abcde");
        assert_eq!(block.offset((0, 0), 3), 0);
        assert_eq!(block.longest(0..3), Duration::ZERO);
        let all: Vec<_> = block.outcomes(0..3, 0, |_| Ok(())).collect();
        assert!(all.iter().all(|o| o.duration == Duration::ZERO));
        assert!(answer_timed(vec![], &[2, 0, 3], vec![1, 2]).is_none());
        assert!(answer_timed(vec![], &[2, 0, 3], vec![1, 2, 3, 4]).is_none());
    }

    #[test]
    fn answers_that_do_not_fit_are_refused() {
        assert!(answer(vec![], &[2, 0]).is_none(), "a length missing");
        assert!(answer(vec![], &[2, 0, 30]).is_none(), "past the message");
        let e = || error("x");
        assert!(
            answer(vec![(3, e())], &[2, 0, 3]).is_none(),
            "no such record"
        );
        assert!(
            answer(vec![(2, e()), (1, e())], &[2, 0, 0]).is_none(),
            "out of order"
        );
        assert!(answer(vec![(1, e()), (2, e())], &[2, 0, 0]).is_some());
    }

    #[test]
    fn records_that_ended_without_an_answer() {
        let block = Block::failed_all(vec![4, 5], 9, RecordError::Cancelled);
        assert_eq!(block.output(1), b"");
        let all: Vec<_> = block.outcomes(0..2, 0, |_| Ok(())).collect();
        assert!(all
            .iter()
            .all(|o| matches!(o.result, Err(RecordError::Cancelled)) && o.pid == Some(9)));
        let started = Instant::now() - Duration::from_millis(50);
        let one = Block::failed_running(8, 0, RecordError::Cancelled, started);
        assert!(one.duration(0) >= Duration::from_millis(50));
        let o = one.outcome(0, 0, |_| Ok(()));
        assert_eq!((o.seq, o.pid), (8, None));
        assert!(o.started_us.is_some());
    }
}
