//! The messages exchanged by coordinator and workers.

use serde::{Deserialize, Serialize};

/// Version of this protocol. A worker whose `Hello` carries another version is
/// refused at the handshake with a message naming both versions.
///
/// The first two fields of every worker's first message are, in order, the
/// variant index of [`WorkerMessage::Hello`] and this version, so that any
/// future version can still be recognised (see [`crate::decode_prefix`]).
pub const PROTOCOL_VERSION: u32 = 6;

/// What a worker binary says it can run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// The name records are dispatched by.
    pub name: String,
    /// One line for `coordinator tasks`.
    pub description: String,
    /// Field names of the input record.
    pub input_fields: Vec<String>,
    /// Field names of the output record.
    pub output_fields: Vec<String>,
    /// The Rust types behind the task, filled in by the worker's registry:
    /// a pool refuses a worker whose types differ from its own.
    pub types: TaskTypes,
}

/// The Rust types of a task, its input and its output, by their full names
/// ([`std::any::type_name`]): the typed handshake's fingerprint.
///
/// A driver and a worker that name the same task agree on it only if they
/// were built from the same type definitions (one crate both depend on, or
/// one program that is its own worker).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskTypes {
    /// The task value's type (its parameters).
    pub task: String,
    /// The type of one input record.
    pub input: String,
    /// The type of one output record.
    pub output: String,
}

impl TaskTypes {
    /// The types of task `T`.
    pub fn of<T: crate::Task>() -> Self {
        TaskTypes {
            task: std::any::type_name::<T>().to_owned(),
            input: std::any::type_name::<T::Input>().to_owned(),
            output: std::any::type_name::<T::Output>().to_owned(),
        }
    }

    /// Whether nothing is known (a worker of a version without types).
    pub fn is_unknown(&self) -> bool {
        self.task.is_empty() && self.input.is_empty() && self.output.is_empty()
    }
}

impl std::fmt::Display for TaskTypes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "task {}, input {}, output {}",
            self.task, self.input, self.output
        )
    }
}

/// The handshake: the first message a worker sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal [`PROTOCOL_VERSION`]; kept first so it decodes across versions.
    pub protocol_version: u32,
    /// The worker's process id.
    pub pid: u32,
    /// The host it runs on (workers may run on other machines, e.g. as MPI ranks).
    pub host: String,
    /// The per-run secret the coordinator handed the worker in its environment.
    pub token: String,
    /// The tasks compiled into this worker binary.
    pub tasks: Vec<TaskInfo>,
}

/// One input record: a sequence number and its bincode-encoded payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Position of the record in the input; results are reordered by it.
    pub seq: u64,
    /// The task input, encoded as the run's [`Encoding`] says.
    #[serde(with = "crate::bytes")]
    pub payload: Vec<u8>,
}

/// A batch of records sent to one worker in one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Batch id, unique within a run.
    pub id: u64,
    /// The records, processed in this order.
    pub records: Vec<Record>,
}

/// A batch of consecutive records that are lines of text, e.g. of a JSON
/// lines file, sent as the input's own bytes: record `first_seq + i` is the
/// `i`-th of the `count` lines of `lines`, which are separated by `\n` (the
/// last has none). No line holds a `\n` or ends with `\r`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinesBatch {
    /// Batch id, unique within a run.
    pub id: u64,
    /// The first record's sequence number.
    pub first_seq: u64,
    /// How many records (lines).
    pub count: u64,
    /// The lines.
    #[serde(with = "crate::bytes")]
    pub lines: Vec<u8>,
}

/// How record payloads travel, chosen once per run in [`Request::Configure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// Inputs and outputs are bincode-encoded values (the library path).
    Bincode,
    /// Each input is the text of one JSON value (a line of JSON-lines input,
    /// without its terminator); each output is JSON text.
    Json,
    /// Each input is one CSV record (its line or lines, without the final
    /// terminator) of a file whose header line is `header`; each output is JSON text.
    Csv {
        /// The header line's bytes, without its terminator.
        #[serde(with = "crate::bytes")]
        header: Vec<u8>,
    },
}

/// How a task value (its parameters) is encoded in [`TaskSpec::params`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParamsEncoding {
    /// bincode, from a Rust value.
    Bincode,
    /// A JSON object, e.g. from the command line (`{}` also stands for a unit task).
    Json,
}

/// What a worker is asked to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Task name, as in [`TaskInfo::name`].
    pub name: String,
    /// The task value (its parameters).
    #[serde(with = "crate::bytes")]
    pub params: Vec<u8>,
    /// How `params` is encoded.
    pub params_encoding: ParamsEncoding,
    /// How record payloads are encoded.
    pub records: Encoding,
    /// Threads the worker runs batches on (1 for a process pool; N for the
    /// thread executor: one process, N threads).
    pub threads: u32,
}

/// Coordinator to worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Select the task to run, its parameters and how records are encoded.
    Configure {
        /// The task and its encodings.
        spec: TaskSpec,
        /// Send one `Results` per record instead of one per batch, so that the
        /// coordinator can time each record (used when a timeout is set).
        flush_each: bool,
        /// Time each record (its duration, and the start of the first of each
        /// `Results`). Otherwise durations are 0 and starts 0 (unknown), and
        /// the worker reads the clock once per batch, not once per record.
        record_times: bool,
    },
    /// Records to process.
    Batch(Batch),
    /// Finish what was sent and exit.
    Stop,
    /// A batch, encoded as [`Request::Batch`], in slot `slot` of the shared
    /// memory for batches ([`Request::Arenas`]): its first `len` bytes. The
    /// worker hands the slot back (its flag to 0) once done with the records.
    BatchIn {
        /// The slot's index.
        slot: u32,
        /// Bytes of the message in it.
        len: u32,
    },
    /// Shared memory to map, each named `PATH:SLOTS:SLOT_BYTES` (a memfd of
    /// the coordinator's, under `/proc/PID/fd/`) and laid out as
    /// [`crate::ARENA_HEAD_BYTES`] of one `u32` flag per slot (1: filled by
    /// the sender and not yet handed back, 0: free), then the slots. Sent to
    /// a local worker once batches are large; it answers
    /// [`WorkerMessage::ArenasMapped`].
    Arenas {
        /// Where batches will come ([`Request::BatchIn`]).
        batches: String,
        /// Where results may go ([`WorkerMessage::ResultsIn`]).
        results: String,
    },
    /// Records to process, as lines: what [`Request::Batch`] holds, with
    /// no length per record. It may also come in a slot ([`Request::BatchIn`]).
    Lines(LinesBatch),
}

/// Why a record failed inside a worker that survived it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The task returned an error.
    Error,
    /// The task panicked; the panic was caught and the worker lives on.
    Panic,
    /// The payload did not decode as the task's input type.
    BadInput,
}

/// A per-record failure reported by a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// The error or panic message.
    pub message: String,
}

/// The results of consecutive records of a batch, in the batch's order. A
/// batch is answered by one message, or by several (records one by one with
/// `flush_each`, or when its outputs are large): the first starts at the
/// batch's first record, each later one where the one before it ended.
///
/// Outputs travel one after the other in one buffer, so that a batch of
/// results is one allocation and one copy, not one per record, and so that a
/// run of JSON lines can be written out as it arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResults {
    /// The batch these records belong to.
    pub batch: u64,
    /// The worker thread that ran them (0 in a single-threaded worker).
    pub thread: u32,
    /// Time the worker spent running these records, in nanoseconds.
    pub busy_nanos: u64,
    /// When the first of these records started, in microseconds since the
    /// Unix epoch; each later one started when the one before it ended.
    pub started_us: u64,
    /// How long each record took, in nanoseconds: one entry per record, or
    /// none when the records were not timed (the coordinator asks for times
    /// only when it uses them).
    pub nanos: Vec<u64>,
    /// The length of each record's output in `outputs` (0 for a failed
    /// record): one entry per record.
    pub lengths: Vec<u32>,
    /// The outputs of the records that succeeded, one after the other,
    /// encoded as the run's [`Encoding`] says. In a run of JSON outputs
    /// ([`Encoding::Json`] and [`Encoding::Csv`]) each one ends with a
    /// newline, counted in its length.
    #[serde(with = "crate::bytes")]
    pub outputs: Vec<u8>,
    /// The records that failed, by their index among these records, in order.
    pub failures: Vec<(u32, TaskFailure)>,
}

impl BatchResults {
    /// How many records these results cover.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// Whether they cover none.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }
}

/// Worker to coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerMessage {
    /// The handshake. Must stay variant 0 with the version as its first field.
    Hello(Hello),
    /// The configured task is ready.
    Ready,
    /// The worker cannot run the requested task.
    Rejected {
        /// Why, e.g. the task is not compiled into this binary.
        reason: String,
    },
    /// Results of records.
    Results(BatchResults),
    /// A `Results` message, encoded, in slot `slot` of the shared memory
    /// for results ([`Request::Arenas`]): its first `len` bytes. The
    /// coordinator hands the slot back once done with the outputs.
    ResultsIn {
        /// The slot's index.
        slot: u32,
        /// Bytes of the message in it.
        len: u32,
    },
    /// The answer to [`Request::Arenas`]: which of the two it mapped.
    ArenasMapped {
        /// Batches may come as [`Request::BatchIn`].
        batches: bool,
        /// Its results may come as [`WorkerMessage::ResultsIn`].
        results: bool,
    },
    /// Proof of life, sent from a thread of the worker's own every few
    /// hundred milliseconds (see [`crate::ENV_HEARTBEAT_MS`]), so that a worker
    /// busy with a long record can be told from one that is stopped or stuck.
    /// Carries nothing; any message counts as proof of life. Must stay last.
    Heartbeat,
}
