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

use procpool_protocol::{decode, decode_prefix, WorkerMessage, PROTOCOL_VERSION};

use crate::error::{PoolError, WorkerExit};
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
    /// A worker's result channel closed; `reason` if it broke the protocol.
    Closed {
        slot: usize,
        generation: u64,
        reason: Option<String>,
    },
    /// A request from the pool's users.
    Command(Command),
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
