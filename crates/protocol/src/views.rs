//! Borrowed views of the two messages on the hot path, with the same wire
//! format as the owned ones: a worker decodes a batch without copying each
//! payload out, and encodes its results straight from one buffer of outputs.

use crate::codec::{check_message, encode_into, put_bytes, put_u64, CodecError};
use crate::{BatchResults, FailureKind, TaskFailure};

/// `Request::Batch` decoded in place: payloads borrow the message's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRef<'a> {
    /// Batch id.
    pub id: u64,
    /// `(seq, payload)` of every record, in order.
    pub records: Vec<(u64, &'a [u8])>,
}

/// The variant index of `Request::Batch`.
const BATCH_VARIANT: u64 = 1;
/// The variant index of `Request::Lines`.
const LINES_VARIANT: u64 = 5;

/// Whether `bytes` hold a `Request::Batch` or a `Request::Lines` (by its
/// variant index alone).
pub fn is_batch(bytes: &[u8]) -> bool {
    Reader::new(bytes)
        .uint()
        .is_ok_and(|variant| variant == BATCH_VARIANT || variant == LINES_VARIANT)
}

/// Whether `bytes` hold a `WorkerMessage::Results` (by its variant index alone).
pub fn is_results(bytes: &[u8]) -> bool {
    Reader::new(bytes)
        .uint()
        .is_ok_and(|variant| variant == RESULTS_VARIANT)
}

/// Decode `bytes` as a `Request::Batch` or a `Request::Lines` without
/// copying its payloads (a line is a record's payload); `Ok(None)` when it
/// is another request (decode it with [`crate::decode`]). Read field by
/// field, as [`crate::encode_batch`] and [`crate::encode_lines_head`] write them.
pub fn decode_batch_ref(bytes: &[u8]) -> Result<Option<BatchRef<'_>>, CodecError> {
    let mut r = Reader::new(bytes);
    let variant = r.uint()?;
    if variant == LINES_VARIANT {
        return decode_lines(r).map(Some);
    }
    if variant != BATCH_VARIANT {
        return Ok(None);
    }
    let id = r.uint()?;
    let len = r.uint()?;
    // Every record takes at least two bytes: no allocation beyond the message.
    let mut records = Vec::with_capacity(len.min(r.left() as u64 / 2) as usize);
    for _ in 0..len {
        let seq = r.uint()?;
        records.push((seq, r.bytes()?));
    }
    if r.left() > 0 {
        return Err(CodecError::Trailing { extra: r.left() });
    }
    Ok(Some(BatchRef { id, records }))
}

/// The rest of a `Request::Lines` after its variant index.
fn decode_lines(mut r: Reader<'_>) -> Result<BatchRef<'_>, CodecError> {
    let id = r.uint()?;
    let first = r.uint()?;
    let count = r.uint()?;
    let lines = r.bytes()?;
    if r.left() > 0 {
        return Err(CodecError::Trailing { extra: r.left() });
    }
    let bad = |what| Err(bincode::error::DecodeError::Other(what).into());
    // Every line but the last takes at least its `\n`.
    if count == 0 || count - 1 > lines.len() as u64 || first.checked_add(count).is_none() {
        return bad("a lines batch whose count does not fit its bytes");
    }
    let mut records = Vec::with_capacity(count as usize);
    let mut start = 0;
    for at in crate::newlines(lines) {
        records.push((first + records.len() as u64, &lines[start..at]));
        start = at + 1;
    }
    records.push((first + records.len() as u64, &lines[start..]));
    if records.len() as u64 != count {
        return bad("a lines batch whose count is not its number of lines");
    }
    Ok(BatchRef { id, records })
}

/// Reads what [`crate::codec`]'s `put_u64` and `put_bytes` write.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn left(&self) -> usize {
        self.bytes.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.bytes.len() {
            return Err(bincode::error::DecodeError::UnexpectedEnd {
                additional: n - self.bytes.len(),
            }
            .into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// An unsigned integer in bincode's varint encoding.
    fn uint(&mut self) -> Result<u64, CodecError> {
        let first = self.take(1)?[0];
        Ok(match first {
            0..=250 => u64::from(first),
            251 => u64::from(u16::from_le_bytes(self.array()?)),
            252 => u64::from(u32::from_le_bytes(self.array()?)),
            253 => u64::from_le_bytes(self.array()?),
            _ => {
                return Err(
                    bincode::error::DecodeError::Other("integer too large or invalid").into(),
                )
            }
        })
    }

    /// A `u32` in bincode's varint encoding.
    fn u32(&mut self) -> Result<u32, CodecError> {
        u32::try_from(self.uint()?)
            .map_err(|_| bincode::error::DecodeError::Other("integer too large for a u32").into())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let len = self.uint()?;
        self.take(usize::try_from(len).unwrap_or(usize::MAX))
    }
}

/// `WorkerMessage::Results` decoded in place: the outputs borrow the
/// message's bytes. Checked as it is decoded: one length and one duration
/// per record, lengths that add up to the outputs, failures in order, each
/// within the records and without output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultsRef<'a> {
    /// Everything but the outputs: its `outputs` is left empty.
    pub results: BatchResults,
    /// The outputs, one after the other, borrowed from the message.
    pub outputs: &'a [u8],
}

/// The variant index of `WorkerMessage::Results`.
const RESULTS_VARIANT: u64 = 3;

/// Decode `bytes` as a `WorkerMessage::Results` without copying its outputs;
/// `Ok(None)` when it is another message (decode it with [`crate::decode`]).
/// Read field by field, as [`encode_results`] writes it.
pub fn decode_results_ref(bytes: &[u8]) -> Result<Option<ResultsRef<'_>>, CodecError> {
    let mut r = Reader::new(bytes);
    if r.uint()? != RESULTS_VARIANT {
        return Ok(None);
    }
    let batch = r.uint()?;
    let thread = r.u32()?;
    let busy_nanos = r.uint()?;
    let started_us = r.uint()?;
    // Every entry takes at least one byte: no allocation beyond the message.
    let timed = r.uint()?;
    let mut nanos = Vec::with_capacity(timed.min(r.left() as u64) as usize);
    for _ in 0..timed {
        nanos.push(r.uint()?);
    }
    let n = r.uint()?;
    if timed != 0 && timed != n {
        return Err(malformed("one duration per record, or none"));
    }
    let mut lengths = Vec::with_capacity(n.min(r.left() as u64) as usize);
    let mut total = 0u64;
    for _ in 0..n {
        let len = r.u32()?;
        total += u64::from(len);
        lengths.push(len);
    }
    let outputs = r.bytes()?;
    if total != outputs.len() as u64 {
        return Err(malformed("output lengths that add up to the outputs"));
    }
    let count = r.uint()?;
    let mut failures = Vec::with_capacity(count.min(r.left() as u64 / 3) as usize);
    let mut after = None;
    for _ in 0..count {
        let index = r.u32()?;
        if u64::from(index) >= n || after.is_some_and(|a| index <= a) {
            return Err(malformed("failures in order, within the records"));
        }
        if lengths[index as usize] != 0 {
            return Err(malformed("no output for a failed record"));
        }
        after = Some(index);
        let kind = match r.uint()? {
            0 => FailureKind::Error,
            1 => FailureKind::Panic,
            2 => FailureKind::BadInput,
            _ => return Err(malformed("a known kind of failure")),
        };
        let message = std::str::from_utf8(r.bytes()?)
            .map_err(|_| malformed("UTF-8 failure messages"))?
            .to_owned();
        failures.push((index, TaskFailure { kind, message }));
    }
    if r.left() > 0 {
        return Err(CodecError::Trailing { extra: r.left() });
    }
    Ok(Some(ResultsRef {
        results: BatchResults {
            batch,
            thread,
            busy_nanos,
            started_us,
            nanos,
            lengths,
            outputs: Vec::new(),
            failures,
        },
        outputs,
    }))
}

fn malformed(expected: &'static str) -> CodecError {
    CodecError::Decode(bincode::error::DecodeError::OtherString(format!(
        "results without {expected}"
    )))
}

/// Encode `WorkerMessage::Results(results.clone())` into `buf` (appended)
/// without the clone: field by field, as bincode encodes it (checked in the
/// tests), since through serde every integer would be a `Write` call of its own.
pub fn encode_results(results: &BatchResults, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = buf.len();
    buf.reserve(results.outputs.len() + 8 * results.nanos.len() + 32);
    put_u64(buf, RESULTS_VARIANT);
    put_u64(buf, results.batch);
    put_u64(buf, u64::from(results.thread));
    put_u64(buf, results.busy_nanos);
    put_u64(buf, results.started_us);
    put_u64(buf, results.nanos.len() as u64);
    for &n in &results.nanos {
        put_u64(buf, n);
    }
    put_u64(buf, results.lengths.len() as u64);
    for &l in &results.lengths {
        put_u64(buf, u64::from(l));
    }
    put_bytes(buf, &results.outputs);
    put_u64(buf, results.failures.len() as u64);
    for (index, failure) in &results.failures {
        put_u64(buf, u64::from(*index));
        if let Err(e) = encode_into(failure, buf) {
            buf.truncate(start);
            return Err(e);
        }
    }
    check_message(buf, start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    #[test]
    fn lines_batches_are_records_one_per_line() {
        let lines = LinesBatch {
            id: 7,
            first_seq: 300,
            count: 3,
            lines: b"{\"a\":1}\n\n{\"a\":3}".to_vec(),
        };
        let bytes = encode(&Request::Lines(lines.clone())).unwrap();
        // The head written in front of lines in place is the same message.
        let mut head = Vec::new();
        encode_lines_head(7, 300, 3, lines.lines.len(), &mut head);
        assert!(head.len() <= LINES_HEAD_BYTES);
        head.extend_from_slice(&lines.lines);
        assert_eq!(head, bytes);
        assert!(is_batch(&bytes));
        let view = decode_batch_ref(&bytes).unwrap().unwrap();
        assert_eq!(view.id, 7);
        let want: Vec<(u64, &[u8])> = vec![(300, b"{\"a\":1}"), (301, b""), (302, b"{\"a\":3}")];
        assert_eq!(view.records, want);
        // A count that is not the number of lines, and damaged messages, are errors.
        for count in [0, 2, 4, u64::MAX] {
            let wrong = encode(&Request::Lines(LinesBatch {
                count,
                ..lines.clone()
            }))
            .unwrap();
            assert!(decode_batch_ref(&wrong).is_err(), "count {count}");
        }
        let overflow = encode(&Request::Lines(LinesBatch {
            first_seq: u64::MAX - 1,
            ..lines.clone()
        }))
        .unwrap();
        assert!(decode_batch_ref(&overflow).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_batch_ref(&longer).is_err());
        for cut in 1..bytes.len() {
            assert!(decode_batch_ref(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn borrowed_batches_decode_like_owned_ones() {
        let batch = Batch {
            id: 9,
            records: (0..50)
                .map(|i| Record {
                    seq: i * 1000,
                    payload: vec![i as u8; i as usize * 7],
                })
                .collect(),
        };
        let bytes = encode(&Request::Batch(batch.clone())).unwrap();
        let view = decode_batch_ref(&bytes).unwrap().unwrap();
        assert_eq!(view.id, 9);
        let records: Vec<Record> = view
            .records
            .iter()
            .map(|(seq, p)| Record {
                seq: *seq,
                payload: p.to_vec(),
            })
            .collect();
        assert_eq!(records, batch.records);
        assert!(is_batch(&bytes));
        let stop = encode(&Request::Stop).unwrap();
        assert!(!is_batch(&stop) && decode_batch_ref(&stop).unwrap().is_none());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_batch_ref(&longer).is_err());
        assert!(decode_batch_ref(&bytes[..bytes.len() - 3]).is_err());
    }

    #[test]
    fn damaged_batches_decode_as_bincode_decodes_them() {
        let batch = Batch {
            id: 300,
            records: [0u64, 250, 251, 70_000, 1 << 40]
                .iter()
                .map(|&seq| Record {
                    seq,
                    payload: vec![seq as u8; (seq % 300) as usize],
                })
                .collect(),
        };
        let bytes = encode(&Request::Batch(batch)).unwrap();
        let mut cases: Vec<Vec<u8>> = (0..bytes.len()).map(|n| bytes[..n].to_vec()).collect();
        for at in 0..bytes.len() {
            for b in [0u8, 1, 250, 251, 252, 253, 254, 255] {
                let mut damaged = bytes.clone();
                damaged[at] = b;
                cases.push(damaged);
            }
        }
        for case in cases {
            let owned = decode::<Request>(&case);
            let view = decode_batch_ref(&case);
            match (owned, view) {
                (Ok(Request::Batch(b)), Ok(Some(v))) => {
                    assert_eq!(b.id, v.id);
                    let records: Vec<(u64, &[u8])> = b
                        .records
                        .iter()
                        .map(|r| (r.seq, r.payload.as_slice()))
                        .collect();
                    assert_eq!(records, v.records);
                }
                (Ok(Request::Batch(_)), other) => panic!("{case:?}: {other:?}"),
                (Ok(_), Ok(None)) | (Err(_), Err(_)) => {}
                // Another request that is itself damaged.
                (Err(_), Ok(None)) => {}
                (owned, view) => panic!("{case:?}: {owned:?} but {view:?}"),
            }
        }
    }

    fn sample_results() -> BatchResults {
        let mut r = BatchResults {
            batch: 77,
            thread: 2,
            busy_nanos: 1234,
            started_us: 1_700_000_000_000_000,
            nanos: Vec::new(),
            lengths: Vec::new(),
            outputs: Vec::new(),
            failures: Vec::new(),
        };
        for i in 0..300u32 {
            r.nanos.push(u64::from(i) * 997);
            if i % 7 == 5 {
                r.lengths.push(0);
                r.failures.push((
                    i,
                    TaskFailure {
                        kind: [
                            FailureKind::Error,
                            FailureKind::Panic,
                            FailureKind::BadInput,
                        ][i as usize % 3],
                        message: format!("no {i}"),
                    },
                ));
            } else {
                let out = vec![b'x'; i as usize];
                r.lengths.push(out.len() as u32);
                r.outputs.extend_from_slice(&out);
            }
        }
        r
    }

    #[test]
    fn results_encode_as_bincode_encodes_them_and_decode_in_place() {
        let owned = sample_results();
        let expected = WorkerMessage::Results(owned.clone());
        let mut buf = vec![1, 2, 3];
        encode_results(&owned, &mut buf).unwrap();
        assert_eq!(&buf[..3], &[1, 2, 3], "appended");
        let buf = buf.split_off(3);
        assert_eq!(buf, encode(&expected).unwrap());
        assert_eq!(decode::<WorkerMessage>(&buf).unwrap(), expected);
        let view = decode_results_ref(&buf).unwrap().unwrap();
        assert_eq!(view.outputs, owned.outputs.as_slice());
        let mut head = owned.clone();
        head.outputs.clear();
        assert_eq!(view.results, head);
        assert_eq!((head.batch, head.thread, head.busy_nanos), (77, 2, 1234));
        assert_eq!(owned.len(), 300);
        let heartbeat = encode(&WorkerMessage::Heartbeat).unwrap();
        assert!(decode_results_ref(&heartbeat).unwrap().is_none());
    }

    #[test]
    fn untimed_results_carry_no_durations_and_other_counts_are_refused() {
        let mut owned = sample_results();
        owned.nanos.clear();
        let mut buf = Vec::new();
        encode_results(&owned, &mut buf).unwrap();
        assert_eq!(buf, encode(&WorkerMessage::Results(owned.clone())).unwrap());
        let view = decode_results_ref(&buf).unwrap().unwrap();
        assert_eq!(view.results.len(), 300);
        assert!(view.results.nanos.is_empty());
        assert_eq!(view.outputs, owned.outputs.as_slice());
        // Some durations but not one per record: malformed.
        for timed in [1, 299, 301] {
            owned.nanos = vec![5; timed];
            let mut buf = Vec::new();
            encode_results(&owned, &mut buf).unwrap();
            let e = decode_results_ref(&buf).expect_err("refused");
            assert!(e.to_string().contains("one duration per record"), "{e}");
        }
    }

    #[test]
    fn damaged_results_are_errors_never_panics_or_inconsistent_views() {
        let mut owned = sample_results();
        owned.nanos.truncate(12);
        owned.lengths.truncate(12);
        owned.failures.retain(|f| f.0 < 12);
        owned
            .outputs
            .truncate(owned.lengths.iter().sum::<u32>() as usize);
        let mut bytes = Vec::new();
        encode_results(&owned, &mut bytes).unwrap();
        let mut cases: Vec<Vec<u8>> = (0..bytes.len()).map(|n| bytes[..n].to_vec()).collect();
        for at in 0..bytes.len() {
            for b in [0u8, 1, 2, 3, 250, 251, 252, 253, 255] {
                let mut damaged = bytes.clone();
                damaged[at] = b;
                cases.push(damaged);
            }
        }
        for case in cases {
            let Ok(Some(ResultsRef {
                results: v,
                outputs,
            })) = decode_results_ref(&case)
            else {
                continue;
            };
            // What decodes is consistent, and is what bincode decodes.
            assert!(v.nanos.is_empty() || v.nanos.len() == v.lengths.len());
            assert_eq!(
                v.lengths.iter().map(|&l| l as usize).sum::<usize>(),
                outputs.len()
            );
            assert!(v.failures.windows(2).all(|w| w[0].0 < w[1].0));
            assert!(v.failures.iter().all(|f| v.lengths[f.0 as usize] == 0));
            let Ok(WorkerMessage::Results(mut o)) = decode::<WorkerMessage>(&case) else {
                panic!("{case:?} decodes in place but not as a message");
            };
            assert_eq!(o.outputs, outputs);
            o.outputs.clear();
            assert_eq!(o, v);
        }
    }
}
