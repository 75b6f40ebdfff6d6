//! Errors of the pool, of single records, and how a worker process ended.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use procpool_protocol::TaskTypes;

/// How a worker process exited: a code, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerExit {
    /// It called `exit` with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// It could not be reaped within the deadline (then it was killed).
    Unknown,
}

impl From<ExitStatus> for WorkerExit {
    fn from(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => WorkerExit::Code(code),
            (None, Some(signal)) => WorkerExit::Signal(signal),
            (None, None) => WorkerExit::Unknown,
        }
    }
}

/// The conventional name of a signal, for messages.
pub(crate) fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        _ => "signal",
    }
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerExit::Code(code) => write!(f, "exit code {code}"),
            WorkerExit::Signal(s) => write!(f, "signal {s} ({})", signal_name(*s)),
            WorkerExit::Unknown => write!(f, "unknown exit status"),
        }
    }
}

/// How a worker's life ended, as reported in statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerEnd {
    /// Stopped in an orderly way at shutdown.
    Stopped(WorkerExit),
    /// Replaced after `max_tasks_per_child` records.
    Recycled(WorkerExit),
    /// Died on its own while the pool needed it.
    Crashed(WorkerExit),
    /// Killed because a record ran past the timeout.
    TimedOut,
    /// Killed because it broke the protocol.
    ProtocolError(String),
    /// Killed at shutdown because it did not stop within the grace period.
    Killed,
    /// Killed because it held records and sent nothing, not even a
    /// heartbeat, for the liveness timeout (stopped, deadlocked, cut off).
    Unresponsive,
}

impl fmt::Display for WorkerEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerEnd::Stopped(_) => write!(f, "stopped"),
            WorkerEnd::Recycled(_) => write!(f, "recycled"),
            WorkerEnd::Crashed(exit) => write!(f, "crashed with {exit}"),
            WorkerEnd::TimedOut => write!(f, "timed out"),
            WorkerEnd::ProtocolError(e) => write!(f, "protocol error: {e}"),
            WorkerEnd::Killed => write!(f, "killed at shutdown"),
            WorkerEnd::Unresponsive => write!(f, "unresponsive (killed)"),
        }
    }
}

/// Why one record has no result. The rest of the run goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The task returned an error.
    #[error("task error: {0}")]
    Task(String),
    /// The task panicked (the worker survived).
    #[error("task panicked: {0}")]
    Panicked(String),
    /// The record could not be encoded, or the worker could not decode it.
    #[error("bad input: {0}")]
    BadInput(String),
    /// Every worker that ran this record died; it was given up after `attempts`.
    #[error(
        "worker died while running this record ({attempts} attempts; last: pid {pid}, {exit})"
    )]
    WorkerDied {
        /// The last worker's pid.
        pid: u32,
        /// How the last worker ended.
        exit: WorkerExit,
        /// How many workers died holding it.
        attempts: u32,
    },
    /// The record ran past the timeout; its worker was killed and replaced.
    #[error("timed out after {:.3} s (worker pid {pid} killed)", after.as_secs_f64())]
    TimedOut {
        /// The worker that was running it.
        pid: u32,
        /// The timeout.
        after: Duration,
    },
    /// The run was cancelled before this record finished.
    #[error("cancelled")]
    Cancelled,
    /// Workers could not be (re)started, so the record cannot run.
    #[error("pool broken: {0}")]
    PoolBroken(String),
    /// The worker's output did not decode as the task's output type.
    #[error("bad output: {0}")]
    BadOutput(String),
}

/// Why a worker did not complete its start-up handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// It never connected to its rendezvous.
    #[error("could not connect: {0}")]
    Rendezvous(String),
    /// It exited before its handshake was complete.
    #[error("exited with {0} before completing its handshake")]
    Exited(WorkerExit),
    /// It sent no `Hello` within the handshake timeout.
    #[error("did not complete its handshake within {:.1} s", .0.as_secs_f64())]
    NoHello(Duration),
    /// It did not confirm its task within the handshake timeout.
    #[error("did not confirm its task within {:.1} s", .0.as_secs_f64())]
    NoConfirmation(Duration),
    /// It presented another run's token: not a worker of this pool.
    #[error("presented a wrong token (not a worker of this run)")]
    WrongToken,
    /// Its `Hello` names another process than the one started.
    #[error("claims pid {claimed}, but the process started is pid {started}")]
    WrongPid {
        /// The pid in its `Hello`.
        claimed: u32,
        /// The pid of the process started.
        started: u32,
    },
    /// No worker could be started or replaced (e.g. too many failed in a row).
    #[error("no worker could be started: {0}")]
    Unavailable(String),
    /// It broke the protocol: another protocol version, garbage, or a
    /// message out of turn.
    #[error("broke the protocol: {0}")]
    Protocol(String),
}

/// Errors starting or talking to the pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// No worker binary at the given path.
    #[error(
        "worker binary not found at {}: build it (`cargo build --bins`), give its path to \
         `PoolBuilder::worker_bin`, or call `procpool::init(registry)` first thing in `main` \
         to make this program its own worker",
        path.display()
    )]
    WorkerBinMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The worker binary exists but cannot be executed.
    #[error("worker binary {} is not executable", path.display())]
    WorkerBinNotExecutable {
        /// The file.
        path: PathBuf,
    },
    /// `spawn` failed.
    #[error("cannot start worker binary {}", path.display())]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A worker failed its handshake (exited, hung, wrong version or token).
    #[error("worker {} failed to start: {failure}", pid_label(*pid))]
    Handshake {
        /// The worker's pid, when known.
        pid: Option<u32>,
        /// What went wrong.
        failure: HandshakeFailure,
    },
    /// The worker binary does not offer the requested task.
    #[error(
        "worker binary {} does not offer task `{task}` (it offers: {})",
        bin.display(),
        offered.join(", ")
    )]
    TaskNotOffered {
        /// The task asked for.
        task: String,
        /// The worker binary.
        bin: PathBuf,
        /// The names of the tasks it offers.
        offered: Vec<String>,
    },
    /// The worker offers a task of this name, but with other Rust types.
    #[error(
        "task `{task}` has other types in worker binary {} ({worker}) than in this program ({pool}): \
         build both from the same definitions",
        bin.display()
    )]
    TaskTypesMismatch {
        /// The task's name.
        task: String,
        /// The worker binary.
        bin: PathBuf,
        /// The types in this program.
        pool: Box<TaskTypes>,
        /// The types in the worker.
        worker: Box<TaskTypes>,
    },
    /// A worker could not set the task up: its parameters did not decode,
    /// or [`Task::init`](crate::Task::init) failed.
    #[error("worker {} cannot run the task: {reason}", pid_label(*pid))]
    TaskRejected {
        /// The worker's pid, when known.
        pid: Option<u32>,
        /// The worker's explanation.
        reason: String,
    },
    /// An IPC channel could not be created.
    #[error("cannot set up IPC")]
    Ipc(#[source] std::io::Error),
    /// The task's parameters could not be encoded.
    #[error("cannot encode the task's parameters: {0}")]
    Encode(String),
    /// A builder setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The supervisor thread ended unexpectedly.
    #[error("the pool's supervisor thread is gone")]
    SupervisorGone,
}

fn pid_label(pid: Option<u32>) -> String {
    pid.map_or_else(|| "(pid unknown)".to_owned(), |p| format!("pid {p}"))
}
