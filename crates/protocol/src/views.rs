//! Borrowed views of the two messages on the hot path, with the same wire
//! format as the owned ones: a worker decodes a batch without copying each
//! payload out, and encodes its results straight from one buffer of outputs.

use serde::{Deserialize, Serialize};

use crate::bytes::AsBytes;
use crate::codec::{encode_into, CodecError, CONFIG};
use crate::TaskFailure;

/// `Request::Batch` decoded in place: payloads borrow the message's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BatchRef<'a> {
    /// Batch id.
    pub id: u64,
    /// `(seq, payload)` of every record, in order.
    #[serde(borrow)]
    pub records: Vec<(u64, &'a [u8])>,
}

/// The variant index of `Request::Batch`.
const BATCH_VARIANT: u32 = 1;

/// Whether `bytes` hold a `Request::Batch` (by its variant index alone).
pub fn is_batch(bytes: &[u8]) -> bool {
    bincode::serde::borrow_decode_from_slice::<u32, _>(bytes, CONFIG)
        .is_ok_and(|(variant, _)| variant == BATCH_VARIANT)
}

/// Decode `bytes` as a `Request::Batch` without copying its payloads;
/// `Ok(None)` when it is another request (decode it with [`crate::decode`]).
pub fn decode_batch_ref(bytes: &[u8]) -> Result<Option<BatchRef<'_>>, CodecError> {
    let (variant, _) = bincode::serde::borrow_decode_from_slice::<u32, _>(bytes, CONFIG)?;
    if variant != BATCH_VARIANT {
        return Ok(None);
    }
    let ((_, batch), used): ((u32, BatchRef<'_>), usize) =
        bincode::serde::borrow_decode_from_slice(bytes, CONFIG)?;
    if used != bytes.len() {
        return Err(CodecError::Trailing {
            extra: bytes.len() - used,
        });
    }
    Ok(Some(batch))
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
/// `buf`. Decodes as `WorkerMessage::Results(BatchResults { .. })`.
pub fn encode_results<'a, I>(
    batch: u64,
    thread: u32,
    busy_nanos: u64,
    outcomes: I,
    buf: &mut Vec<u8>,
) -> Result<(), CodecError>
where
    I: ExactSizeIterator<Item = RecordOutcomeRef<'a>> + Clone,
{
    struct Outcomes<I>(I);
    impl<'a, I: ExactSizeIterator<Item = RecordOutcomeRef<'a>> + Clone> Serialize for Outcomes<I> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            #[derive(Serialize)]
            enum OutcomeView<'a> {
                Ok(AsBytes<'a>),
                Failed(&'a TaskFailure),
            }
            let mut seq = s.serialize_seq(Some(self.0.len()))?;
            for o in self.0.clone() {
                let outcome = match o.outcome {
                    OutcomeRef::Ok(bytes) => OutcomeView::Ok(AsBytes(bytes)),
                    OutcomeRef::Failed(f) => OutcomeView::Failed(f),
                };
                seq.serialize_element(&(o.seq, o.started_us, o.nanos, outcome))?;
            }
            seq.end()
        }
    }
    #[derive(Serialize)]
    struct ResultsView<R> {
        batch: u64,
        thread: u32,
        busy_nanos: u64,
        outcomes: R,
    }
    // Same shape as `WorkerMessage::Results(BatchResults { .. })`: variant 3.
    #[derive(Serialize)]
    #[allow(dead_code)]
    enum View<R> {
        Hello,
        Ready,
        Rejected,
        Results(ResultsView<R>),
    }
    encode_into(
        &View::Results(ResultsView {
            batch,
            thread,
            busy_nanos,
            outcomes: Outcomes(outcomes),
        }),
        buf,
    )
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
