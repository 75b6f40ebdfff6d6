//! A process pool for Rust, in the spirit of Python's
//! `concurrent.futures.ProcessPoolExecutor`.
//!
//! A [`Pool`] starts N copies of a worker binary, streams bincode-encoded
//! records to them over `ipc-channel` in batches, and gives the results back
//! in input order ([`Pool::map`]), as they complete ([`Pool::map_unordered`]),
//! or one at a time ([`Pool::submit`]). Each worker is its own OS process,
//! so a task that takes a process-wide lock still runs in parallel.
//!
//! ```
//! use procpool::PoolBuilder;
//! use procpool_tasks::{Primes, PrimesIn};
//! # let bin = std::env::var("PROCPOOL_WORKER_BIN").unwrap_or_else(|_|
//! #     concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/debug/worker").into());
//!
//! let pool = PoolBuilder::new()
//!     .workers(2)
//!     .worker_bin(bin) // default: the `worker` binary next to this executable
//!     .build(Primes)?;
//! let counts: Vec<u64> = pool
//!     .map((1..=5).map(|k| PrimesIn { n: k * 10 }))
//!     .map(|r| r.map(|out| out.primes))
//!     .collect::<Result<_, _>>()?;
//! assert_eq!(counts, [4, 8, 10, 12, 15]);
//!
//! let one = pool.submit(PrimesIn { n: 100 });
//! assert_eq!(one.wait()?.primes, 25);
//! pool.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Your own tasks
//!
//! A task is a serde type implementing [`Task`]: a name, input and output
//! types, and `run`. The task value carries its parameters and is sent to
//! every worker once. The simplest worker binary is the program itself:
//! [`init`] first thing in `main` makes it serve when a pool starts it, and
//! pools built without [`PoolBuilder::worker_bin`] start copies of it.
//!
//! ```
//! use procpool::{worker::Registry, PoolBuilder, Task, TaskError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Scale { factor: f64 }
//!
//! impl Task for Scale {
//!     const NAME: &'static str = "scale";
//!     type Input = Vec<f64>;
//!     type Output = Vec<f64>;
//!     fn run(&self, v: Vec<f64>) -> Result<Vec<f64>, TaskError> {
//!         Ok(v.into_iter().map(|x| x * self.factor).collect())
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut registry = Registry::new();
//!     registry.register::<Scale>();
//!     procpool::init(registry); // a worker serves and exits here
//!
//!     let pool = PoolBuilder::new().workers(2).build(Scale { factor: 2.0 })?;
//!     let out: Vec<Vec<f64>> = pool.map(vec![vec![1.0], vec![2.0, 3.0]]).collect::<Result<_, _>>()?;
//!     assert_eq!(out, [vec![2.0], vec![4.0, 6.0]]);
//!     Ok(())
//! }
//! ```
//!
//! A separate worker binary registers its tasks and calls
//! [`worker::main_with`]; share the task types with the driver through a
//! library crate. Each worker reports the Rust types of its tasks, and
//! [`PoolBuilder::build`] refuses a task of the right name but other types
//! ([`PoolError::TaskTypesMismatch`]). Per-worker state that cannot be
//! serialised is set up in [`Task::init`].
//!
//! Asking for a task the worker binary does not offer fails in
//! [`PoolBuilder::build`] with [`PoolError::TaskNotOffered`], naming what it offers.
//!
//! # Failures
//!
//! Task errors and panics fail one record ([`RecordError`]); the worker lives
//! on. A worker that dies is replaced and its records are sent again (a
//! record that kills `retries + 1` fresh workers, running alone as their
//! first record, fails). A worker that holds records, sends nothing for
//! [`PoolBuilder::liveness_timeout`] and is stopped (or, for MPI ranks,
//! sends not even a heartbeat) is declared dead.
//! See the supervisor's README for the worker lifecycle.

mod batch;
mod error;

// The README's examples, compiled and run as doctests exactly as printed.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeExamples;
#[cfg(test)]
mod fake;
mod guard;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "mpi")]
mod node;
mod outcome;
mod pool;
mod preflight;
mod process;
pub mod raw;
mod reorder;
mod stats;
mod supervisor;
mod transport;
mod worker_output;

pub use error::{HandshakeFailure, PoolError, RecordError, WorkerEnd, WorkerExit};
pub use outcome::Outcome;
pub use pool::{default_worker_bin, Canceller, Map, MapIter, Pending, Pool, PoolBuilder};
pub use procpool_protocol::{
    Encoding, ParamsEncoding, Task, TaskError, TaskInfo, TaskSpec, TaskTypes,
};
pub use procpool_worker::init;
pub use stats::WorkerStats;

/// Start now what every local pool of this process shares: the guard, a
/// small process that kills the process groups of the workers still running
/// when this process dies, even by SIGKILL (the OOM killer, say). It is a
/// `fork` of this process, which costs more the larger the process, and
/// makes each page written after it cost a copy: a program that knows it
/// will start pools can call this early, while it is small. Optional: the
/// first pool starts the guard otherwise.
pub fn prepare() -> Result<(), PoolError> {
    guard::Guard::for_pools().map(drop)
}

/// Put the rendezvous sockets of this process's local pools in a directory
/// kept in memory, unless `$TMPDIR` is set or `/tmp` is in memory already:
/// `$XDG_RUNTIME_DIR` if it is, else `/dev/shm`. Each local worker's start
/// creates and removes a directory and a socket there; on a disk's file
/// system that costs journal writes, and a 16-worker pool starts about 10%
/// faster in memory. Returns the directory chosen, `None` if it leaves the
/// default.
///
/// It sets the default directory of the `tempfile` crate (which ipc-channel
/// creates its sockets with) for the whole program: call it first thing in
/// `main`, and only if nothing else of the program makes large temporary
/// files through `tempfile`'s defaults (they would take memory). The
/// coordinator does.
pub fn rendezvous_in_memory() -> Option<std::path::PathBuf> {
    preflight::rendezvous_in_memory()
}

/// The worker side: what a worker binary of its own needs ([`Registry`](worker::Registry),
/// [`main_with`](worker::main_with)). A program that is its own worker only needs [`init`].
pub use procpool_worker as worker;
