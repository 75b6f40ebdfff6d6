//! The wire protocol between a procpool coordinator and its worker processes.
//!
//! This crate has no processes and no I/O: it defines the messages, the
//! [`Task`] contract shared by both sides, and the bincode codec that turns
//! them into bytes. Every decode is bounded ([`codec::MAX_MESSAGE_BYTES`]) and
//! returns an error, never panics, on garbage.
//!
//! A conversation, seen from the coordinator:
//!
//! ```text
//! worker -> Hello { protocol_version, pid, token, tasks }
//! coord  -> Configure { spec: { name, params, records encoding, threads }, flush_each }
//! worker -> Ready | Rejected { reason }
//! coord  -> Batch { id, records }    (several in flight)
//! worker -> Results { batch, thread, busy_nanos, started_us, nanos, lengths, outputs, failures }
//! coord  -> Arenas { batches, results }   (a local worker, once batches are large)
//! worker -> ArenasMapped { batches, results }
//! coord  -> BatchIn { slot, len }    (a Batch in shared memory, from then on)
//! worker -> ResultsIn { slot, len }  (a Results in shared memory)
//! worker -> Heartbeat                (from its own thread, every 500 ms; MPI ranks)
//! coord  -> Stop                     (or the channel closes)
//! ```

mod borrowing;
mod bytes;
mod codec;
mod messages;
mod newlines;
mod task;
mod views;

pub use codec::{
    append_record, decode, decode_prefix, decode_value, encode, encode_batch, encode_batch_head,
    encode_batch_of, encode_into, encode_lines_head, encode_record_into, encode_value, CodecError,
    BATCH_HEAD_BYTES, LINES_HEAD_BYTES, MAX_MESSAGE_BYTES, MAX_RECORD_BYTES,
};
pub use messages::{
    Batch, BatchResults, Encoding, FailureKind, Hello, LinesBatch, ParamsEncoding, Record, Request,
    TaskFailure, TaskInfo, TaskSpec, TaskTypes, WorkerMessage, PROTOCOL_VERSION,
};
pub use newlines::{newlines, Newlines};
pub use task::{Task, TaskError};
pub use views::{
    decode_batch_ref, decode_results_ref, encode_results, is_batch, is_results, BatchRef,
    ResultsRef,
};

/// MPI backend: the tag of protocol messages, both ways.
pub const MPI_TAG_DATA: i32 = 1;
/// MPI backend: the tag of a worker's empty goodbye after `Stop` (its channel
/// closes), and of the coordinator's empty answer once every worker has said
/// it (all may then finalise MPI).
pub const MPI_TAG_BYE: i32 = 2;
/// MPI backend: the tag of heartbeats, both ways. The coordinator's carry its
/// liveness timeout in milliseconds (`u64`, little endian); a worker's are empty.
pub const MPI_TAG_HEARTBEAT: i32 = 3;

/// MPI backend: how long the coordinator's MPI thread and a waiting rank
/// sleep between probes after `idle` without a message: a sixteenth of it,
/// from 5 µs up to 1 ms. A message that arrives after a quiet spell of T is
/// seen within T/16, and an idle thread wakes at most a thousand times a
/// second (MPI has no blocking wait that does not spin).
pub fn mpi_probe_wait(idle: std::time::Duration) -> std::time::Duration {
    use std::time::Duration;
    (idle / 16).clamp(Duration::from_micros(5), Duration::from_millis(1))
}

/// Environment variable carrying the one-shot server name a worker connects to.
pub const ENV_SERVER: &str = "PROCPOOL_SERVER";
/// Environment variable carrying the per-run secret a worker must echo in its `Hello`.
pub const ENV_TOKEN: &str = "PROCPOOL_TOKEN";
/// Environment variable carrying the coordinator's pid, so that a worker whose
/// coordinator died before it started can tell and exit.
pub const ENV_PARENT: &str = "PROCPOOL_PARENT";
/// Environment variable setting a worker's heartbeat period in milliseconds
/// ([`WorkerMessage::Heartbeat`]); unset means [`DEFAULT_HEARTBEAT_MS`], `0`
/// turns heartbeats off.
pub const ENV_HEARTBEAT_MS: &str = "PROCPOOL_HEARTBEAT_MS";
/// A worker's heartbeat period when [`ENV_HEARTBEAT_MS`] is not set.
pub const DEFAULT_HEARTBEAT_MS: u64 = 500;
/// Bytes before the first slot of the shared memory of [`Request::Arenas`].
pub const ARENA_HEAD_BYTES: usize = 4096;

#[cfg(test)]
mod tests {
    #[test]
    fn mpi_probes_wait_a_sixteenth_of_the_idle_time_between_5_us_and_1_ms() {
        use super::mpi_probe_wait;
        use std::time::Duration;
        let us = Duration::from_micros;
        assert_eq!(mpi_probe_wait(Duration::ZERO), us(5));
        assert_eq!(mpi_probe_wait(us(80)), us(5));
        assert_eq!(mpi_probe_wait(us(800)), us(50));
        assert_eq!(mpi_probe_wait(us(16_000)), us(1_000));
        assert_eq!(mpi_probe_wait(Duration::from_secs(60)), us(1_000));
    }
}
