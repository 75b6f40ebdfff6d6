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
    decode, decode_prefix, decode_results_ref, BatchResults, WorkerMessage, PROTOCOL_VERSION,
};

use procpool_worker::arena::Arena;

use crate::error::{PoolError, WorkerExit};
use crate::supervisor::Command;

/// A request on its way to a worker: bytes of its own, or a batch's buffer
/// from an offset, shared with the supervisor, which keeps the batch until
/// its records are done.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Bytes(Vec<u8>),
    Shared(Arc<Vec<u8>>, usize),
}

impl Outgoing {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Outgoing::Bytes(b) => b,
            Outgoing::Shared(b, start) => b.get(*start..).unwrap_or_default(),
        }
    }

    /// The bytes as a buffer of their own (copied if shared).
    #[cfg(any(test, feature = "mpi"))]
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Outgoing::Bytes(b) => b,
            Outgoing::Shared(..) => self.bytes().to_vec(),
        }
    }
}

impl From<Vec<u8>> for Outgoing {
    fn from(bytes: Vec<u8>) -> Self {
        Outgoing::Bytes(bytes)
    }
}

/// Everything the supervisor reacts to: what the transport reports about
/// each worker (tagged with its slot and generation), and the pool's commands.
pub(crate) enum Event {
    /// A worker connected to its rendezvous (or the connect was forced).
    Accepted {
        slot: usize,
        generation: u64,
        result: Result<Sender<Outgoing>, String>,
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

/// The bytes a message of results arrived in: a buffer of its own, or the
/// slot of the worker's shared memory it was put in, handed back to the
/// worker when the last output in it is dropped.
#[derive(Debug, Default)]
pub(crate) enum Buf {
    #[default]
    Empty,
    Heap(Vec<u8>),
    Lease(Lease),
}

impl std::ops::Deref for Buf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Buf::Empty => &[],
            Buf::Heap(v) => v,
            Buf::Lease(l) => l.bytes(),
        }
    }
}

/// A filled slot of a worker's results arena, held until dropped.
pub(crate) struct Lease {
    arena: Arc<Arena>,
    slot: u32,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the slot's bytes do not change while the lease holds it (the
// worker fills a slot again only once handed back, on drop); `Arena` is
// Send + Sync.
unsafe impl Send for Lease {}
// SAFETY: as above; only read.
unsafe impl Sync for Lease {}

impl Lease {
    /// Hold slot `slot` (`len` bytes filled) of `arena`; `None` if it holds
    /// nothing.
    pub fn take(arena: &Arc<Arena>, slot: u32, len: u32) -> Option<Lease> {
        // SAFETY: the slice is used only through the lease, which releases
        // the slot when dropped, after its last use.
        let bytes = unsafe { arena.slot(slot, len) }?;
        Some(Lease {
            arena: arena.clone(),
            slot,
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the slot's bytes, checked when taken and unchanged until
        // the release in drop.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // SAFETY: nothing reads the slot after its lease is gone (`bytes`
        // borrows the lease).
        unsafe { self.arena.release(self.slot) };
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("slot", &self.slot)
            .field("len", &self.len)
            .finish()
    }
}

/// `WorkerMessage::Results` as the supervisor handles it: the outputs left
/// in the message they arrived in when decoded by [`decode_results`].
#[derive(Debug)]
pub(crate) struct Results {
    /// Everything but the outputs: its `outputs` is left empty.
    pub head: BatchResults,
    /// The message (or the outputs alone); the outputs begin at `start`.
    pub buf: Arc<Buf>,
    pub start: usize,
}

impl From<BatchResults> for Results {
    fn from(mut head: BatchResults) -> Self {
        let outputs = std::mem::take(&mut head.outputs);
        Results {
            head,
            buf: Arc::new(Buf::Heap(outputs)),
            start: 0,
        }
    }
}

/// Decode `bytes` as `WorkerMessage::Results` with the outputs left where
/// they are (one allocation for the whole message, not one per record);
/// `Ok(None)` when it is another message. An error says why the worker is
/// to be dropped.
pub(crate) fn decode_results(bytes: Vec<u8>) -> Result<Result<Results, Vec<u8>>, String> {
    match results_in(&bytes)? {
        Some((head, start)) => Ok(Ok(Results {
            head,
            buf: Arc::new(Buf::Heap(bytes)),
            start,
        })),
        None => Ok(Err(bytes)),
    }
}

/// As [`decode_results`], for a message in a slot of the worker's results
/// arena (`WorkerMessage::ResultsIn`): held until its outputs are dropped.
pub(crate) fn decode_results_in(lease: Lease) -> Result<Results, String> {
    match results_in(lease.bytes())? {
        Some((head, start)) => Ok(Results {
            head,
            buf: Arc::new(Buf::Lease(lease)),
            start,
        }),
        None => Err("put something other than results in shared memory".into()),
    }
}

/// The head of a `Results` message and where its outputs start in it.
fn results_in(bytes: &[u8]) -> Result<Option<(BatchResults, usize)>, String> {
    match decode_results_ref(bytes) {
        Ok(Some(view)) => {
            // `outputs` borrows from `bytes`: its offset in the message.
            let start = (view.outputs.as_ptr() as usize).wrapping_sub(bytes.as_ptr() as usize);
            if start.checked_add(view.outputs.len()) > Some(bytes.len()) {
                return Err("sent outputs outside their message".into());
            }
            Ok(Some((view.results, start)))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(format!("sent a malformed message ({e})")),
    }
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

    /// Most payload bytes in one batch to its workers.
    fn max_batch_bytes(&self) -> usize {
        crate::batch::MAX_BATCH_BYTES
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
    /// The pool is about to ask the worker to stop (its channel closing
    /// from then on is its orderly end).
    fn stopping(&mut self) {}
    /// Kill the worker now.
    fn kill(&mut self);
    /// Has it exited (without blocking)?
    fn exited(&mut self) -> Option<WorkerExit>;
    /// It holds records and has sent nothing for the liveness timeout: does
    /// the system say that it still runs (a long record, say)? `Some(true)`:
    /// it runs or sleeps, and gets another timeout; `Some(false)`: it is
    /// stopped; `None` (the default): the transport cannot tell, and only
    /// its messages (heartbeats among them) count.
    fn runs(&self, _pid: u32) -> Option<bool> {
        None
    }
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

    use procpool_protocol::{encode, FailureKind, TaskFailure};

    use super::*;

    fn sample() -> BatchResults {
        let mut r = BatchResults {
            batch: 4,
            thread: 1,
            busy_nanos: 777,
            started_us: 1_700_000_000_000_000,
            nanos: (0..30u64).map(|i| i * 3).collect(),
            lengths: Vec::new(),
            outputs: Vec::new(),
            failures: vec![(
                7,
                TaskFailure {
                    kind: FailureKind::Panic,
                    message: "boom".into(),
                },
            )],
        };
        for i in 0..30u32 {
            let len = if i == 7 { 0 } else { i };
            r.lengths.push(len);
            r.outputs.extend(std::iter::repeat_n(i as u8, len as usize));
        }
        r
    }

    #[test]
    fn results_decode_in_place_like_owned_ones() {
        let owned = sample();
        let bytes = encode(&WorkerMessage::Results(owned.clone())).unwrap();
        let shared = decode_results(bytes).unwrap().unwrap();
        let expected = Results::from(owned);
        assert_eq!(shared.head, expected.head);
        assert_eq!(shared.head.len(), 30);
        assert!(shared.head.outputs.is_empty());
        let total = expected.buf.len();
        assert_eq!(
            shared.buf[shared.start..shared.start + total],
            expected.buf[..]
        );
    }

    /// Results a worker put in its arena decode where they lie, as from a
    /// message of their own; the slot is the worker's again once the last
    /// output is dropped, not before.
    #[test]
    fn results_in_shared_memory_decode_in_place_and_hand_the_slot_back_when_dropped() {
        let owned = sample();
        let bytes = encode(&WorkerMessage::Results(owned.clone())).unwrap();
        let coordinator = Arc::new(Arena::create(1, 64 << 10).unwrap());
        let worker = Arena::open(&coordinator.env_value().unwrap()).unwrap();
        let slot = worker.put(&bytes).unwrap();
        let len = bytes.len() as u32;
        let lease = Lease::take(&coordinator, slot, len).unwrap();
        let shared = decode_results_in(lease).unwrap();
        let expected = Results::from(owned);
        assert_eq!(shared.head, expected.head);
        let total = expected.buf.len();
        assert_eq!(
            shared.buf[shared.start..shared.start + total],
            expected.buf[..]
        );
        let kept = shared.buf.clone();
        drop(shared);
        assert_eq!(
            worker.put(b"x"),
            None,
            "handed back while an output is held"
        );
        drop(kept);
        assert_eq!(worker.put(b"x"), Some(slot));
        // A slot that holds nothing (the lease just taken and dropped hands
        // it back), or something else than results.
        assert!(Lease::take(&coordinator, 0, 1).is_some());
        assert!(Lease::take(&coordinator, 0, 1).is_none());
        let ready = encode(&WorkerMessage::Ready).unwrap();
        let slot = worker.put(&ready).unwrap();
        let lease = Lease::take(&coordinator, slot, ready.len() as u32).unwrap();
        assert!(decode_results_in(lease).is_err());
    }

    /// An output handed to a caller to keep (`raw::Bytes`) is copied out of
    /// the worker's shared memory: the slot goes back once the pool is done
    /// with it, however long the caller keeps the output.
    #[test]
    fn a_detached_output_does_not_hold_its_slot() {
        let owned = sample();
        let bytes = encode(&WorkerMessage::Results(owned)).unwrap();
        let coordinator = Arc::new(Arena::create(1, 64 << 10).unwrap());
        let worker = Arena::open(&coordinator.env_value().unwrap()).unwrap();
        let slot = worker.put(&bytes).unwrap();
        let lease = Lease::take(&coordinator, slot, bytes.len() as u32).unwrap();
        let results = decode_results_in(lease).unwrap();
        let seqs: Vec<u64> = (0..30).collect();
        let block = crate::outcome::Block::answered(seqs, Some(1), results).unwrap();
        let in_place = block.payload(3);
        let kept = block.payload(3).detached();
        assert_eq!(&*kept, &*in_place);
        assert_eq!(&*kept, &[3, 3, 3][..]);
        drop((block, in_place));
        assert_eq!(worker.put(b"x"), Some(slot), "the slot is still held");
        assert_eq!(&*kept, &[3, 3, 3][..]);
    }

    #[test]
    fn other_messages_come_back_whole_and_garbage_is_an_error() {
        let ready = encode(&WorkerMessage::Ready).unwrap();
        assert_eq!(decode_results(ready.clone()).unwrap().unwrap_err(), ready);
        let mut bytes = encode(&WorkerMessage::Results(sample())).unwrap();
        bytes.pop();
        assert!(decode_results(bytes).unwrap_err().contains("malformed"));
        assert!(decode_results(vec![0xff; 3]).is_err());
    }
}
