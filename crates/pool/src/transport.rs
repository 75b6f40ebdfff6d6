//! The transport seam: how the supervisor starts and reaches workers, and
//! what reaches the supervisor.
//!
//! A [`Launcher`] starts (or attaches to) the worker of a slot and returns a
//! [`Link`] to it; the worker's threads then report [`Event`]s on the
//! supervisor's channel: `Accepted` with a writer once it is reachable, each
//! decoded message, and `Closed` when its channel ends. The local backend
//! (`process.rs`: child processes over ipc-channel), the MPI backend
//! (`mpi.rs`) and the in-process fake (`fake.rs`) implement it; the
//! supervisor knows only this module.

use std::sync::mpsc::Sender;
use std::time::Duration;

use std::sync::Arc;

use procpool_protocol::{
    decode, decode_prefix, decode_results_ref, BatchResults, OutcomeView, TaskFailure,
    WorkerMessage, PROTOCOL_VERSION,
};

use crate::error::{PoolError, WorkerExit};
use crate::outcome::Payload;
use crate::supervisor::Command;

/// Everything the supervisor reacts to: what the transport reports about
/// each worker (tagged with its slot and generation), and the pool's commands.
pub(crate) enum Event {
    /// A worker connected to its rendezvous (or the connect was forced).
    Accepted {
        slot: usize,
        generation: u64,
        result: Result<Sender<Vec<u8>>, String>,
    },
    /// A decoded message from a worker.
    Message {
        slot: usize,
        generation: u64,
        message: WorkerMessage,
    },
    /// A worker's `Results`, decoded with its outputs left in the message.
    Results {
        slot: usize,
        generation: u64,
        results: Results,
    },
    /// A worker's result channel closed; `reason` if it broke the protocol.
    Closed {
        slot: usize,
        generation: u64,
        reason: Option<String>,
    },
    /// A request from the pool's users.
    Command(Command),
}

/// `WorkerMessage::Results` as the supervisor handles it: each output a
/// [`Payload`], sharing the message it arrived in when decoded by [`decode_results`].
#[derive(Debug)]
pub(crate) struct Results {
    pub batch: u64,
    pub thread: u32,
    pub busy_nanos: u64,
    pub outcomes: Vec<ResultOutcome>,
}

/// One record's outcome in [`Results`].
#[derive(Debug)]
pub(crate) struct ResultOutcome {
    pub seq: u64,
    pub started_us: u64,
    pub nanos: u64,
    pub outcome: Result<Payload, TaskFailure>,
}

impl From<BatchResults> for Results {
    fn from(r: BatchResults) -> Self {
        Results {
            batch: r.batch,
            thread: r.thread,
            busy_nanos: r.busy_nanos,
            outcomes: r
                .outcomes
                .into_iter()
                .map(|o| ResultOutcome {
                    seq: o.seq,
                    started_us: o.started_us,
                    nanos: o.nanos,
                    outcome: match o.outcome {
                        procpool_protocol::Outcome::Ok(bytes) => Ok(Payload::owned(bytes)),
                        procpool_protocol::Outcome::Failed(f) => Err(f),
                    },
                })
                .collect(),
        }
    }
}

/// Decode `bytes` as `WorkerMessage::Results` with every output left where
/// it is (one allocation for the whole message, not one per record);
/// `Ok(None)` when it is another message. An error says why the worker is
/// to be dropped.
pub(crate) fn decode_results(bytes: Vec<u8>) -> Result<Result<Results, Vec<u8>>, String> {
    let buf = Arc::new(bytes);
    let view = match decode_results_ref(&buf) {
        Ok(Some(view)) => view,
        Ok(None) => {
            // Not shared yet: the bytes come back as they were.
            return Ok(Err(Arc::try_unwrap(buf).unwrap_or_else(|b| b.to_vec())));
        }
        Err(e) => return Err(format!("sent a malformed message ({e})")),
    };
    let base = buf.as_ptr() as usize;
    let mut outcomes = Vec::with_capacity(view.outcomes.len());
    for o in view.outcomes {
        let outcome = match o.outcome {
            OutcomeView::Ok(out) => {
                // `out` borrows from `buf`: its offset in the message.
                let start = (out.as_ptr() as usize).wrapping_sub(base);
                let payload = Payload::shared(&buf, start..start.wrapping_add(out.len()));
                Ok(payload.ok_or("sent an output outside its message")?)
            }
            OutcomeView::Failed(f) => Err(f),
        };
        outcomes.push(ResultOutcome {
            seq: o.seq,
            started_us: o.started_us,
            nanos: o.nanos,
            outcome,
        });
    }
    Ok(Ok(Results {
        batch: view.batch,
        thread: view.thread,
        busy_nanos: view.busy_nanos,
        outcomes,
    }))
}

/// Decode a message from a worker; `first` marks its first message, whose
/// protocol version is checked before anything else. An error says why the
/// worker is to be dropped.
pub(crate) fn decode_from_worker(first: &mut bool, bytes: &[u8]) -> Result<WorkerMessage, String> {
    if std::mem::take(first) {
        if let Ok((0, version)) = decode_prefix(bytes) {
            if version != PROTOCOL_VERSION {
                return Err(format!(
                    "speaks protocol version {version}, this coordinator speaks version {PROTOCOL_VERSION}"
                ));
            }
        }
    }
    decode::<WorkerMessage>(bytes).map_err(|e| format!("sent a malformed message ({e})"))
}

/// How workers are started and reached: the transport seam. The local
/// implementation spawns processes and connects them over ipc-channel;
/// another backend (e.g. MPI ranks started by `mpirun`) provides its own.
pub(crate) trait Launcher: Send {
    /// Start (or attach to) the worker for `slot`. It reports
    /// `Event::Accepted` with a writer once reachable, then its messages.
    fn launch(
        &mut self,
        slot: usize,
        generation: u64,
        events: &Sender<Event>,
    ) -> Result<Box<dyn Link>, PoolError>;

    /// Start the workers of several slots; by default one after the other.
    fn launch_all(
        &mut self,
        slots: &[(usize, u64)],
        events: &Sender<Event>,
    ) -> Vec<Result<Box<dyn Link>, PoolError>> {
        slots
            .iter()
            .map(|&(slot, generation)| self.launch(slot, generation, events))
            .collect()
    }

    /// Whether a worker that is gone can be replaced.
    fn respawns(&self) -> bool {
        true
    }
}

/// The supervisor's handle on one worker.
pub(crate) trait Link: Send {
    /// The process id, if known before its `Hello` (0 otherwise).
    fn pid(&self) -> u32;
    /// How to name the worker in logs before its `Hello`.
    fn label(&self) -> String {
        format!("pid={}", self.pid())
    }
    /// The worker has connected (its writer went to the supervisor).
    fn connected(&mut self) {}
    /// Kill the worker now.
    fn kill(&mut self);
    /// Has it exited (without blocking)?
    fn exited(&mut self) -> Option<WorkerExit>;
    /// Wait for it to exit, killing it after `patience`.
    fn reap(&mut self, patience: Duration) -> WorkerExit;
    /// Give up on it: kill, release whatever waits for it, reap.
    fn abandon(&mut self);
}

/// How often workers send a heartbeat, on every backend: 500 ms, or often
/// enough for a short liveness timeout (four beats within it).
pub(crate) fn heartbeat_period(liveness_timeout: Duration) -> Duration {
    Duration::from_millis(procpool_protocol::DEFAULT_HEARTBEAT_MS)
        .min(liveness_timeout / 4)
        .max(Duration::from_millis(1))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn heartbeats_come_often_enough_for_the_liveness_timeout() {
        use super::heartbeat_period;
        assert_eq!(
            heartbeat_period(Duration::from_secs(10)),
            Duration::from_millis(500)
        );
        assert_eq!(
            heartbeat_period(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(
            heartbeat_period(Duration::from_nanos(1)),
            Duration::from_millis(1)
        );
    }

    use procpool_protocol::{encode, FailureKind, Outcome, RecordOutcome};

    use super::*;

    #[test]
    fn results_decode_in_place_like_owned_ones() {
        let failure = TaskFailure {
            kind: FailureKind::Panic,
            message: "boom".into(),
        };
        let owned = BatchResults {
            batch: 4,
            thread: 1,
            busy_nanos: 777,
            outcomes: (0..30u64)
                .map(|i| RecordOutcome {
                    seq: 100 + i,
                    started_us: 1_700_000_000_000_000 + i,
                    nanos: i * 3,
                    outcome: if i == 7 {
                        Outcome::Failed(failure.clone())
                    } else {
                        Outcome::Ok(vec![i as u8; i as usize])
                    },
                })
                .collect(),
        };
        let bytes = encode(&WorkerMessage::Results(owned.clone())).unwrap();
        let shared = decode_results(bytes).unwrap().unwrap();
        let expected = Results::from(owned);
        assert_eq!(
            (shared.batch, shared.thread, shared.busy_nanos),
            (expected.batch, expected.thread, expected.busy_nanos)
        );
        assert_eq!(shared.outcomes.len(), expected.outcomes.len());
        for (a, b) in shared.outcomes.iter().zip(&expected.outcomes) {
            assert_eq!(
                (a.seq, a.started_us, a.nanos),
                (b.seq, b.started_us, b.nanos)
            );
            match (&a.outcome, &b.outcome) {
                (Ok(x), Ok(y)) => assert_eq!(&x[..], &y[..]),
                (Err(x), Err(y)) => assert_eq!(x, y),
                _ => panic!("outcomes differ at {}", a.seq),
            }
        }
        // A shared output becomes a vector of its own.
        let third = shared.outcomes.into_iter().nth(3).unwrap();
        assert_eq!(third.outcome.unwrap().into_vec(), vec![3u8; 3]);
    }

    #[test]
    fn other_messages_come_back_whole_and_garbage_is_an_error() {
        let ready = encode(&WorkerMessage::Ready).unwrap();
        assert_eq!(decode_results(ready.clone()).unwrap().unwrap_err(), ready);
        let mut bytes = encode(&WorkerMessage::Results(BatchResults {
            batch: 1,
            thread: 0,
            busy_nanos: 0,
            outcomes: vec![RecordOutcome {
                seq: 0,
                started_us: 0,
                nanos: 0,
                outcome: Outcome::Ok(vec![1, 2, 3]),
            }],
        }))
        .unwrap();
        bytes.pop();
        assert!(decode_results(bytes).unwrap_err().contains("malformed"));
        assert!(decode_results(vec![0xff; 3]).is_err());
    }
}
