//! Batches of encoded records, and the adaptive choice of their size.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use procpool_protocol::{
    append_record, encode_batch_head, encode_batch_of, encode_lines_head, CodecError,
    BATCH_HEAD_BYTES, LINES_HEAD_BYTES, MAX_MESSAGE_BYTES,
};

use crate::transport::Outgoing;

/// Identifies one `map`, `map_unordered` or `submit` call.
pub(crate) type JobId = u64;

/// Most records in one batch.
pub const MAX_BATCH_RECORDS: usize = 4096;
/// Most payload bytes in one batch sent over a socket or MPI: below
/// ipc-channel's fragment threshold (~208 KiB with Linux's default socket
/// buffer), above which every message costs an extra socket, with room for
/// the header and a record of up to 16 KiB that goes over. As large as that
/// allows: each batch costs a few thread wake-ups on both sides, whatever
/// its size (the 76 MB of 1M small records are about 580 batches at
/// 128 KiB, 390 at 192 KiB).
pub const MAX_BATCH_BYTES: usize = 192 << 10;
/// Most payload bytes in one batch to a local worker, whose batches go
/// through shared memory: twice as large, for half the batches and their
/// wake-ups (1M small records: about 250 batches, against 415).
pub const MAX_SHARED_BATCH_BYTES: usize = 384 << 10;
/// A batch is sized to keep a worker busy for about this long: long enough
/// to amortise a round trip, short enough that work spreads evenly at the end.
const TARGET_BATCH_NANOS: f64 = 4_000_000.0;

/// Encoded records of one job, kept contiguous in one buffer as they go on
/// the wire ([`append_record`]), after room for the message's head: the
/// message is the buffer itself, shared with the thread that sends it, with
/// no copy and no work per record. The supervisor keeps a batch until every
/// record in it has an outcome, so that the records of a worker that died
/// can be sent again.
///
/// Records that are lines of text with consecutive sequence numbers
/// ([`Batch::push_lines`]) travel as `Request::Lines`: the lines one after
/// the other, `\n` between them, with no sequence number or length each,
/// so that a run of lines is added with one copy and no work per record.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub job: JobId,
    pub seqs: Vec<u64>,
    /// [`BATCH_HEAD_BYTES`] of room (once a record is in), then the records,
    /// each its sequence number then its payload; or, for lines,
    /// [`LINES_HEAD_BYTES`] of room, then the lines.
    data: Arc<Vec<u8>>,
    /// Where each record's payload is in `data` (not kept for lines).
    payloads: Vec<Range<usize>>,
    /// The records are lines (`Request::Lines`).
    lines: bool,
    /// How many fresh workers died running this batch's one record (the
    /// deaths charged to it).
    pub deaths: u32,
    /// A worker died while this batch may have been running: it goes to a
    /// fresh worker, on which a death is proof against it.
    pub suspect: bool,
}

impl Batch {
    pub fn new(job: JobId) -> Self {
        Batch {
            job,
            ..Batch::default()
        }
    }

    /// An empty batch with room for `records` records of `bytes` in all.
    pub fn with_capacity(job: JobId, records: usize, bytes: usize) -> Self {
        Batch {
            job,
            seqs: Vec::with_capacity(records),
            data: Arc::new(Vec::with_capacity(BATCH_HEAD_BYTES + bytes)),
            payloads: Vec::with_capacity(records),
            ..Batch::default()
        }
    }

    /// Append one record: `encode` appends its payload to the buffer. Not
    /// to a batch of lines ([`Batch::takes_records`]).
    pub fn push_with<E>(
        &mut self,
        seq: u64,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        debug_assert!(self.takes_records(), "a record pushed onto lines");
        let data = Arc::make_mut(&mut self.data);
        if data.is_empty() {
            data.resize(BATCH_HEAD_BYTES, 0);
        }
        let at = append_record(data, seq, encode)?;
        self.seqs.push(seq);
        self.payloads.push(at);
        Ok(())
    }

    /// Append one record whose payload is `bytes` as they are.
    pub fn push_bytes(&mut self, seq: u64, bytes: &[u8]) {
        let _ = self.push_with(seq, |buf| {
            buf.extend_from_slice(bytes);
            Ok::<(), std::convert::Infallible>(())
        });
    }

    /// Whether records can join ([`Batch::push_with`]): a batch is records
    /// or lines, never both.
    pub fn takes_records(&self) -> bool {
        !self.lines
    }

    /// Whether lines numbered from `first_seq` can join ([`Batch::push_lines`]):
    /// the batch is empty, or lines they follow.
    pub fn takes_lines(&self, first_seq: u64) -> bool {
        self.is_empty()
            || (self.lines && self.seqs.last().is_some_and(|&last| last + 1 == first_seq))
    }

    /// Append `count` records, the lines of `lines` (separated by `\n`, none
    /// ending with `\r`), numbered from `first_seq`, if the batch
    /// [`takes_lines`](Batch::takes_lines) them; returns whether it did.
    #[must_use]
    pub fn push_lines(&mut self, first_seq: u64, count: usize, lines: &[u8]) -> bool {
        if !self.takes_lines(first_seq) {
            return false;
        }
        if count == 0 {
            return true;
        }
        let data = Arc::make_mut(&mut self.data);
        if data.is_empty() {
            data.resize(LINES_HEAD_BYTES, 0);
            self.lines = true;
        } else {
            data.push(b'\n');
        }
        data.extend_from_slice(lines);
        self.seqs.extend(first_seq..first_seq + count as u64);
        true
    }

    /// Bytes of room before the records.
    fn room(&self) -> usize {
        if self.lines {
            LINES_HEAD_BYTES
        } else {
            BATCH_HEAD_BYTES
        }
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Bytes on the wire, nearly all of them payload.
    pub fn bytes(&self) -> usize {
        self.data.len().saturating_sub(self.room())
    }

    #[cfg(test)]
    pub fn payload(&self, i: usize) -> &[u8] {
        if self.lines {
            let lines = &self.data[LINES_HEAD_BYTES..];
            return lines.split(|&b| b == b'\n').nth(i).unwrap_or_default();
        }
        &self.data[self.payloads[i].clone()]
    }

    /// The records (or lines) as they go on the wire, after the head.
    pub fn wire(&self) -> &[u8] {
        self.data.get(self.room()..).unwrap_or_default()
    }

    /// The batch as message `id`: its head written in the room before the
    /// records, and the buffer shared. Copied only if a send of it is still
    /// in progress (sent again at once, after a death).
    pub fn message(&mut self, id: u64) -> Result<Outgoing, CodecError> {
        let room = self.room();
        let mut head = Vec::with_capacity(room);
        match self.seqs.first() {
            Some(&first) if self.lines => {
                encode_lines_head(id, first, self.len(), self.bytes(), &mut head);
            }
            _ => encode_batch_head(id, self.len(), &mut head),
        }
        let len = head.len() + self.bytes();
        if len > MAX_MESSAGE_BYTES {
            return Err(CodecError::TooLarge {
                what: "message",
                len,
                limit: MAX_MESSAGE_BYTES,
            });
        }
        if self.data.len() < room {
            return Ok(Outgoing::Bytes(head)); // no records
        }
        let start = room - head.len();
        match Arc::get_mut(&mut self.data) {
            Some(data) => {
                data[start..room].copy_from_slice(&head);
                Ok(Outgoing::Shared(self.data.clone(), start))
            }
            None if self.lines => {
                head.extend_from_slice(self.wire());
                Ok(Outgoing::Bytes(head))
            }
            None => {
                let mut buf = Vec::new();
                encode_batch_of(id, self.len(), self.wire(), &mut buf)?;
                Ok(Outgoing::Bytes(buf))
            }
        }
    }

    /// Keep records `..at`, return records `at..` as a new batch.
    pub fn split_off(&mut self, at: usize) -> Batch {
        if self.lines {
            return self.split_lines_off(at);
        }
        // Record `at` begins where the payload before it ends.
        let byte_at = if at == 0 {
            BATCH_HEAD_BYTES.min(self.data.len())
        } else {
            self.payloads[at - 1].end
        };
        let data = Arc::make_mut(&mut self.data);
        let mut tail = Vec::with_capacity(BATCH_HEAD_BYTES + data.len() - byte_at);
        tail.resize(BATCH_HEAD_BYTES, 0);
        tail.extend_from_slice(&data[byte_at..]);
        data.truncate(byte_at);
        Batch {
            job: self.job,
            seqs: self.seqs.split_off(at),
            data: Arc::new(tail),
            payloads: self
                .payloads
                .split_off(at)
                .into_iter()
                .map(|r| r.start - byte_at + BATCH_HEAD_BYTES..r.end - byte_at + BATCH_HEAD_BYTES)
                .collect(),
            deaths: self.deaths,
            suspect: self.suspect,
            lines: false,
        }
    }

    /// [`Batch::split_off`] of a batch of lines: both parts stay lines (as
    /// records they would take more bytes, each with its number and length).
    fn split_lines_off(&mut self, at: usize) -> Batch {
        let at = at.min(self.len());
        let lines = self.data.get(LINES_HEAD_BYTES..).unwrap_or_default();
        // Line `at` starts after the `at`-th `\n`; the one before it is dropped.
        let cut = match at {
            0 => Some(0),
            _ => memchr::memchr_iter(b'\n', lines).nth(at - 1).map(|i| i + 1),
        };
        let mut tail = Batch {
            job: self.job,
            deaths: self.deaths,
            suspect: self.suspect,
            ..Batch::default()
        };
        let Some(cut) = cut else {
            return tail; // `at` is the end: nothing after it
        };
        let tail_seqs = self.seqs.split_off(at);
        if !tail_seqs.is_empty() {
            let mut data = Vec::with_capacity(LINES_HEAD_BYTES + lines.len() - cut);
            data.resize(LINES_HEAD_BYTES, 0);
            data.extend_from_slice(&lines[cut..]);
            tail.data = Arc::new(data);
            tail.seqs = tail_seqs;
            tail.lines = true;
        }
        let data = Arc::make_mut(&mut self.data);
        if at == 0 {
            data.clear();
            self.lines = false;
        } else {
            data.truncate(LINES_HEAD_BYTES + cut - 1);
        }
        tail
    }

    /// One batch per record, each keeping this batch's death count and suspicion.
    pub fn into_singletons(mut self) -> Vec<Batch> {
        let mut out = Vec::with_capacity(self.len());
        while self.len() > 1 {
            let tail = self.split_off(self.len() - 1);
            if tail.is_empty() {
                break; // lines fewer than their numbers: nothing more to split
            }
            out.push(tail);
        }
        out.push(self);
        out.reverse();
        out
    }
}

/// Picks the batch size from the measured cost per record, unless the user fixed it.
#[derive(Debug)]
pub(crate) struct Sizer {
    fixed: Option<usize>,
    max_bytes: usize,
    suggested: AtomicUsize,
    /// Smoothed cost per record in nanoseconds, as f64 bits (0 = not measured yet).
    cost_bits: AtomicU64,
}

impl Sizer {
    /// `max_bytes`: most payload bytes in a batch, whatever the record count.
    pub fn new(fixed: Option<usize>, max_bytes: usize) -> Self {
        Sizer {
            fixed,
            max_bytes,
            suggested: AtomicUsize::new(fixed.unwrap_or(1)),
            cost_bits: AtomicU64::new(0),
        }
    }

    /// Most payload bytes in a batch.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Records per batch to use now.
    pub fn batch_size(&self) -> usize {
        self.suggested.load(Ordering::Relaxed)
    }

    /// Fold in a measurement: `records` took `busy_nanos` in a worker.
    ///
    /// The size shrinks at once but at most doubles per measurement: a few
    /// records that cost next to nothing (bad input, say) do not get the
    /// rest of the input handed out in one or two batches before the cost
    /// of the real ones is known.
    pub fn observe(&self, records: usize, busy_nanos: u64) {
        if records == 0 {
            return;
        }
        let sample = (busy_nanos as f64 / records as f64).max(1.0);
        let old = f64::from_bits(self.cost_bits.load(Ordering::Relaxed));
        let cost = if old == 0.0 {
            sample
        } else {
            0.7 * old + 0.3 * sample
        };
        self.cost_bits.store(cost.to_bits(), Ordering::Relaxed);
        if self.fixed.is_none() {
            let ramp = self.suggested.load(Ordering::Relaxed).saturating_mul(2);
            self.suggested
                .store(size_for_cost(cost).min(ramp), Ordering::Relaxed);
        }
    }
}

/// Records per batch for a given cost per record.
pub(crate) fn size_for_cost(cost_nanos: f64) -> usize {
    ((TARGET_BATCH_NANOS / cost_nanos) as usize).clamp(1, MAX_BATCH_RECORDS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn batch(n: u64) -> Batch {
        let mut c = Batch::new(7);
        for seq in 0..n {
            c.push_with(seq, |buf| {
                buf.extend(std::iter::repeat_n(seq as u8, seq as usize));
                Ok::<(), ()>(())
            })
            .unwrap();
        }
        c
    }

    /// `(seq, payload)` of every record of `b`'s message, as a worker decodes it.
    fn decoded(b: &mut Batch) -> Vec<(u64, Vec<u8>)> {
        let m = b.message(9).unwrap();
        let view = procpool_protocol::decode_batch_ref(m.bytes())
            .unwrap()
            .unwrap();
        assert_eq!(view.id, 9);
        view.records.iter().map(|(s, p)| (*s, p.to_vec())).collect()
    }

    fn rows(rows: &[(u64, &str)]) -> Vec<(u64, Vec<u8>)> {
        rows.iter()
            .map(|(s, p)| (*s, p.as_bytes().to_vec()))
            .collect()
    }

    /// Whether `b`'s message is `Request::Lines` (variant 5).
    fn is_lines(b: &mut Batch) -> bool {
        b.message(9).unwrap().bytes()[0] == 5
    }

    #[test]
    fn lines_travel_as_one_run_and_stay_lines_when_split() {
        // Runs that follow each other make one run of lines, sent in place.
        let mut b = Batch::new(1);
        assert!(b.push_lines(10, 2, b"a\nbb"));
        assert!(b.push_lines(12, 1, b"ccc"));
        assert_eq!((b.len(), b.bytes()), (3, 8));
        assert!(matches!(b.message(9).unwrap(), Outgoing::Shared(..)));
        assert!(is_lines(&mut b));
        assert_eq!(decoded(&mut b), rows(&[(10, "a"), (11, "bb"), (12, "ccc")]));
        assert_eq!(b.payload(1), b"bb");
        // Still the same message while a copy of it is being sent.
        let held = b.message(9).unwrap();
        assert!(matches!(b.message(9).unwrap(), Outgoing::Bytes(..)));
        assert_eq!(b.message(9).unwrap().bytes(), held.bytes());
        drop(held);
        // Neither lines after a gap nor records join lines, nor lines records.
        assert!(!b.takes_lines(20) && !b.takes_records());
        assert!(!b.push_lines(20, 2, b"x\ny"));
        assert_eq!(b.len(), 3);
        let mut r = batch(2);
        assert!(r.takes_records() && !r.takes_lines(2));
        assert!(!r.push_lines(2, 2, b"p\nq"));
        assert_eq!(r.len(), 2);
        // Split (after a worker died, or at a quota), both parts stay lines:
        // as records they would take more bytes than the batch had.
        let mut l = Batch::new(1);
        assert!(l.push_lines(5, 4, b"e\nf\ng\nh"));
        l.deaths = 1;
        let mut tail = l.split_off(1);
        assert!(is_lines(&mut l) && is_lines(&mut tail));
        assert_eq!(decoded(&mut l), rows(&[(5, "e")]));
        assert_eq!(decoded(&mut tail), rows(&[(6, "f"), (7, "g"), (8, "h")]));
        assert_eq!((tail.deaths, tail.bytes()), (1, 5));
        let none = tail.split_off(3);
        assert!(none.is_empty() && tail.len() == 3);
        let mut all = tail.split_off(0);
        assert!(tail.is_empty() && tail.takes_records() && tail.bytes() == 0);
        assert_eq!(decoded(&mut all), rows(&[(6, "f"), (7, "g"), (8, "h")]));
        let singles: Vec<_> = all
            .into_singletons()
            .into_iter()
            .map(|mut s| (is_lines(&mut s), decoded(&mut s)))
            .collect();
        let one = |seq, text: &str| (true, rows(&[(seq, text)]));
        assert_eq!(singles, vec![one(6, "f"), one(7, "g"), one(8, "h")]);
    }

    #[test]
    fn payloads_split_and_singletons_keep_their_bytes() {
        let mut c = batch(5);
        c.deaths = 2;
        assert_eq!(c.payload(3), &[3, 3, 3]);
        let tail = c.split_off(3);
        assert_eq!(c.seqs, vec![0, 1, 2]);
        assert_eq!(tail.seqs, vec![3, 4]);
        assert_eq!(tail.payload(1), &[4, 4, 4, 4]);
        assert_eq!(tail.deaths, 2);
        let singles = batch(4).into_singletons();
        assert_eq!(singles.len(), 4);
        for (i, s) in singles.iter().enumerate() {
            assert_eq!(s.seqs, vec![i as u64]);
            assert_eq!(s.payload(0).len(), i);
        }
    }

    #[test]
    fn a_batch_and_its_parts_are_on_the_wire_as_encode_batch_writes_them() {
        let wire = |b: &Batch| {
            let mut buf = vec![];
            procpool_protocol::encode_batch_of(3, b.len(), b.wire(), &mut buf).unwrap();
            buf
        };
        let expected = |b: &Batch| {
            let mut buf = vec![];
            let records = (0..b.len()).map(|i| (b.seqs[i], b.payload(i)));
            procpool_protocol::encode_batch(3, records, &mut buf).unwrap();
            buf
        };
        // The message made in place, without a copy, is the same.
        let message = |b: &mut Batch| {
            let m = b.message(3).unwrap();
            assert!(matches!(m, Outgoing::Shared(..)), "copied: {m:?}");
            m.bytes().to_vec()
        };
        let mut c = batch(300);
        assert_eq!(wire(&c), expected(&c));
        assert_eq!(message(&mut c), expected(&c));
        let mut tail = c.split_off(260);
        assert_eq!(tail.payload(0), vec![4u8; 260].as_slice()); // 260 as u8 == 4
        assert_eq!(wire(&c), expected(&c));
        assert_eq!(message(&mut c), expected(&c));
        assert_eq!(wire(&tail), expected(&tail));
        assert_eq!(message(&mut tail), expected(&tail));
        for mut s in tail.into_singletons() {
            assert_eq!(wire(&s), expected(&s));
            assert_eq!(message(&mut s), expected(&s));
        }
    }

    /// A batch sent again while its last message is still held (its
    /// writer not done with it) goes as a copy, with the new id; the held
    /// message keeps its own.
    #[test]
    fn a_batch_sent_again_while_its_message_is_held_is_copied() {
        let mut c = batch(20);
        let first = c.message(300).unwrap();
        let held = first.bytes().to_vec();
        let again = c.message(301).unwrap();
        assert!(matches!(again, Outgoing::Bytes(_)), "{again:?}");
        let mut expected = vec![];
        procpool_protocol::encode_batch_of(301, c.len(), c.wire(), &mut expected).unwrap();
        assert_eq!(again.bytes(), expected.as_slice());
        assert_eq!(first.bytes(), held.as_slice());
        drop(first);
        assert!(matches!(c.message(302).unwrap(), Outgoing::Shared(..)));
        // No records: the head alone.
        let mut empty = Batch::new(1);
        let mut head = vec![];
        procpool_protocol::encode_batch_of(5, 0, &[], &mut head).unwrap();
        assert_eq!(empty.message(5).unwrap().bytes(), head.as_slice());
    }

    #[test]
    fn failed_encode_leaves_no_trace() {
        let mut c = batch(2);
        let before = c.bytes();
        let r = c.push_with(9, |buf| {
            buf.extend_from_slice(b"partial");
            Err("too big")
        });
        assert_eq!(r, Err("too big"));
        assert_eq!((c.len(), c.bytes()), (2, before));
    }

    /// Two records that cost nothing (bad input) then 10 ms ones: the size
    /// stays small, rather than jumping to thousands on the first measurement.
    #[test]
    fn cheap_records_first_do_not_make_huge_batches() {
        let s = Sizer::new(None, MAX_BATCH_BYTES);
        s.observe(1, 1_000);
        s.observe(1, 1_000);
        assert_eq!(s.batch_size(), 4);
        s.observe(1, 10_000_000);
        assert_eq!(s.batch_size(), 1);
        for _ in 0..20 {
            s.observe(1, 10_000_000);
            assert_eq!(s.batch_size(), 1);
        }
        // And when records get cheaper the size ramps up again.
        for _ in 0..40 {
            s.observe(4, 396_000); // 99 us: 40 records
        }
        assert_eq!(s.batch_size(), 40);
    }

    #[test]
    fn batch_size_follows_cost() {
        assert_eq!(size_for_cost(1e9), 1); // one-second records: one at a time
        assert_eq!(size_for_cost(1e5), 40); // 100 us records
        assert_eq!(size_for_cost(100.0), MAX_BATCH_RECORDS); // tiny records
        let s = Sizer::new(None, MAX_BATCH_BYTES);
        assert_eq!(s.batch_size(), 1);
        // 1 us per record: 4 ms is 4000 records, reached by doubling.
        let sizes: Vec<usize> = (0..13)
            .map(|_| {
                s.observe(10, 10_000);
                s.batch_size()
            })
            .collect();
        assert_eq!(
            sizes,
            [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4000, 4000]
        );
        s.observe(10, 10); // far cheaper: capped
        assert_eq!(s.batch_size(), MAX_BATCH_RECORDS);
        let fixed = Sizer::new(Some(3), MAX_BATCH_BYTES);
        fixed.observe(10, 10_000);
        assert_eq!(fixed.batch_size(), 3);
    }
}
