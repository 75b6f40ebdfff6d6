//! The worker side of procpool.
//!
//! A worker binary registers the tasks it offers in a [`Registry`] and hands
//! it to [`serve`] (or [`main_with`], which also maps errors to an exit code):
//!
//! ```no_run
//! use procpool_protocol::{Task, TaskError};
//! use procpool_worker::Registry;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Shout;
//!
//! impl Task for Shout {
//!     const NAME: &'static str = "shout";
//!     type Input = String;
//!     type Output = String;
//!     fn run(&self, s: String) -> Result<String, TaskError> {
//!         Ok(s.to_uppercase())
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let mut registry = Registry::new();
//!     registry.register::<Shout>();
//!     procpool_worker::main_with(registry)
//! }
//! ```
//!
//! `serve` connects to the coordinator named in the environment, sends its
//! `Hello` (pid, protocol version, the per-run token, the tasks it offers),
//! then runs batches until told to stop or until its coordinator goes away.
//! A panic inside a task becomes a failed record; the worker lives on.
//! A thread of its own sends a heartbeat every 500 ms (environment variable
//! `PROCPOOL_HEARTBEAT_MS`; `0` turns it off), so that a long record still
//! shows the worker alive.

pub mod arena;
pub mod fault;
mod heartbeat;
mod logging;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod node;
mod registry;
mod serve;

pub use fault::ENV_FAULT;
pub use heartbeat::SideSender;
pub use logging::{build_logger, init_logging, WORKER_TARGET};
pub use registry::{Registry, Runner};
pub use serve::{main_with, serve, serve_over, ServeError, WorkerTransport};

use std::sync::atomic::{AtomicBool, Ordering};

static SELF_HOSTED: AtomicBool = AtomicBool::new(false);

/// Make this program its own worker binary: call it first thing in `main`.
///
/// Started by a pool (the pool's rendezvous is in the environment), this
/// process serves `registry` and exits here, never returning to the rest of
/// `main`. Otherwise it returns at once and remembers that this program can
/// be its own worker, so that a pool built without `worker_bin` starts copies
/// of the current executable.
pub fn init(registry: Registry) {
    if std::env::var_os(procpool_protocol::ENV_SERVER).is_some() {
        std::process::exit(i32::from(serve::worker_main(registry)));
    }
    SELF_HOSTED.store(true, Ordering::Relaxed);
}

/// Whether [`init`] has run in this process (which is then its own worker).
pub fn is_self_hosted() -> bool {
    SELF_HOSTED.load(Ordering::Relaxed)
}
