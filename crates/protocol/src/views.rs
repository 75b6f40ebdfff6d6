//! Borrowed views of the two messages on the hot path, with the same wire
//! format as the owned ones: a worker decodes a batch without copying each
//! payload out, and encodes its results straight from one buffer of outputs.

use serde::Deserialize;

use crate::codec::{check_message, encode_into, put_bytes, put_u64, CodecError, CONFIG};
use crate::TaskFailure;

/// `Request::Batch` decoded in place: payloads borrow the message's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRef<'a> {
    /// Batch id.
    pub id: u64,
    /// `(seq, payload)` of every record, in order.
    pub records: Vec<(u64, &'a [u8])>,
}

/// The variant index of `Request::Batch`.
const BATCH_VARIANT: u32 = 1;

/// Whether `bytes` hold a `Request::Batch` (by its variant index alone).
pub fn is_batch(bytes: &[u8]) -> bool {
    Reader::new(bytes)
        .uint()
        .is_ok_and(|variant| variant == u64::from(BATCH_VARIANT))
}

/// Decode `bytes` as a `Request::Batch` without copying its payloads;
/// `Ok(None)` when it is another request (decode it with [`crate::decode`]).
/// Read field by field, as [`crate::encode_batch`] writes it.
pub fn decode_batch_ref(bytes: &[u8]) -> Result<Option<BatchRef<'_>>, CodecError> {
    let mut r = Reader::new(bytes);
    if r.uint()? != u64::from(BATCH_VARIANT) {
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

/// `WorkerMessage::Results` decoded in place: outputs borrow the message's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ResultsRef<'a> {
    /// The batch these outcomes belong to.
    pub batch: u64,
    /// The worker thread that ran them.
    pub thread: u32,
    /// Time the worker spent running these records, in nanoseconds.
    pub busy_nanos: u64,
    /// Outcomes, in the batch's order.
    #[serde(borrow)]
    pub outcomes: Vec<RecordOutcomeView<'a>>,
}

/// One record's outcome as decoded by [`decode_results_ref`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RecordOutcomeView<'a> {
    /// The record's sequence number.
    pub seq: u64,
    /// Start, in microseconds since the Unix epoch.
    pub started_us: u64,
    /// Duration in nanoseconds.
    pub nanos: u64,
    /// The output's bytes, or the failure.
    #[serde(borrow)]
    pub outcome: OutcomeView<'a>,
}

/// How one record ended, as decoded by [`decode_results_ref`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub enum OutcomeView<'a> {
    /// The output's bytes, borrowed from the message.
    Ok(&'a [u8]),
    /// The failure.
    Failed(TaskFailure),
}

/// The variant index of `WorkerMessage::Results`.
const RESULTS_VARIANT: u32 = 3;

/// Decode `bytes` as a `WorkerMessage::Results` without copying its outputs;
/// `Ok(None)` when it is another message (decode it with [`crate::decode`]).
pub fn decode_results_ref(bytes: &[u8]) -> Result<Option<ResultsRef<'_>>, CodecError> {
    let (variant, _) = bincode::serde::borrow_decode_from_slice::<u32, _>(bytes, CONFIG)?;
    if variant != RESULTS_VARIANT {
        return Ok(None);
    }
    let ((_, results), used): ((u32, ResultsRef<'_>), usize) =
        bincode::serde::borrow_decode_from_slice(bytes, CONFIG)?;
    if used != bytes.len() {
        return Err(CodecError::Trailing {
            extra: bytes.len() - used,
        });
    }
    Ok(Some(results))
}

/// How one record ended, borrowing its output.
#[derive(Debug, Clone, Copy)]
pub enum OutcomeRef<'a> {
    /// The output's bytes.
    Ok(&'a [u8]),
    /// The failure.
    Failed(&'a TaskFailure),
}

/// One record's outcome, borrowing its output.
#[derive(Debug, Clone, Copy)]
pub struct RecordOutcomeRef<'a> {
    /// The record's sequence number.
    pub seq: u64,
    /// Start, in microseconds since the Unix epoch.
    pub started_us: u64,
    /// Duration in nanoseconds.
    pub nanos: u64,
    /// What happened.
    pub outcome: OutcomeRef<'a>,
}

/// Encode `WorkerMessage::Results` from borrowed outcomes, appending to
/// `buf`. Decodes as `WorkerMessage::Results(BatchResults { .. })`. Written
/// field by field as [`crate::encode_batch`] is; a failure's
/// [`TaskFailure`] goes through bincode.
pub fn encode_results<'a, I>(
    batch: u64,
    thread: u32,
    busy_nanos: u64,
    outcomes: I,
    buf: &mut Vec<u8>,
) -> Result<(), CodecError>
where
    I: ExactSizeIterator<Item = RecordOutcomeRef<'a>>,
{
    let start = buf.len();
    // `WorkerMessage::Results(BatchResults { batch, thread, busy_nanos, outcomes })`: variant 3.
    put_u64(buf, 3);
    put_u64(buf, batch);
    put_u64(buf, u64::from(thread));
    put_u64(buf, busy_nanos);
    put_u64(buf, outcomes.len() as u64);
    for o in outcomes {
        put_u64(buf, o.seq);
        put_u64(buf, o.started_us);
        put_u64(buf, o.nanos);
        match o.outcome {
            // `Outcome::Ok(bytes)`: variant 0.
            OutcomeRef::Ok(bytes) => {
                put_u64(buf, 0);
                put_bytes(buf, bytes);
            }
            // `Outcome::Failed(failure)`: variant 1.
            OutcomeRef::Failed(f) => {
                put_u64(buf, 1);
                if let Err(e) = encode_into(f, buf) {
                    buf.truncate(start);
                    return Err(e);
                }
            }
        }
    }
    check_message(buf, start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

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

    #[test]
    fn borrowed_results_encode_as_worker_results() {
        let failure = TaskFailure {
            kind: FailureKind::BadInput,
            message: "no".into(),
        };
        let outputs: Vec<Vec<u8>> = (0..20).map(|i| vec![b'x'; i]).collect();
        let expected = WorkerMessage::Results(BatchResults {
            batch: 77,
            thread: 2,
            busy_nanos: 1234,
            outcomes: outputs
                .iter()
                .enumerate()
                .map(|(i, o)| RecordOutcome {
                    seq: i as u64,
                    started_us: 1_700_000_000_000_000 + i as u64,
                    nanos: 99,
                    outcome: if i == 5 {
                        Outcome::Failed(failure.clone())
                    } else {
                        Outcome::Ok(o.clone())
                    },
                })
                .collect(),
        });
        let mut buf = Vec::new();
        encode_results(
            77,
            2,
            1234,
            outputs.iter().enumerate().map(|(i, o)| RecordOutcomeRef {
                seq: i as u64,
                started_us: 1_700_000_000_000_000 + i as u64,
                nanos: 99,
                outcome: if i == 5 {
                    OutcomeRef::Failed(&failure)
                } else {
                    OutcomeRef::Ok(o)
                },
            }),
            &mut buf,
        )
        .unwrap();
        assert_eq!(buf, encode(&expected).unwrap());
        assert_eq!(decode::<WorkerMessage>(&buf).unwrap(), expected);
        let view = decode_results_ref(&buf).unwrap().unwrap();
        let WorkerMessage::Results(owned) = &expected else {
            unreachable!()
        };
        assert_eq!(
            (view.batch, view.thread, view.busy_nanos),
            (owned.batch, owned.thread, owned.busy_nanos)
        );
        assert_eq!(view.outcomes.len(), owned.outcomes.len());
        for (v, o) in view.outcomes.iter().zip(&owned.outcomes) {
            assert_eq!(
                (v.seq, v.started_us, v.nanos),
                (o.seq, o.started_us, o.nanos)
            );
            match (&v.outcome, &o.outcome) {
                (OutcomeView::Ok(a), Outcome::Ok(b)) => assert_eq!(a, &b.as_slice()),
                (OutcomeView::Failed(a), Outcome::Failed(b)) => assert_eq!(a, b),
                _ => panic!("outcomes differ"),
            }
        }
        assert!(
            decode_results_ref(&encode(&WorkerMessage::Heartbeat).unwrap())
                .unwrap()
                .is_none()
        );
        assert!(decode_results_ref(&buf[..buf.len() - 1]).is_err());
    }
}
