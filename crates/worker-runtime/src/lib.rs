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

mod fault;
mod heartbeat;
mod logging;
#[cfg(feature = "mpi")]
pub mod mpi;
mod registry;
mod serve;

pub use fault::ENV_FAULT;
pub use heartbeat::SideSender;
pub use logging::{build_logger, init_logging};
pub use registry::{Registry, Runner};
pub use serve::{main_with, serve, serve_over, ServeError, WorkerTransport};
