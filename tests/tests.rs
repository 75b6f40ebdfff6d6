//! End-to-end tests: the real coordinator and worker binaries.
//!
//! Run with `cargo test --workspace` (which also builds the `worker` binary
//! these tests need next to the coordinator). Every coordinator run has a
//! deadline (see `util`): a hang fails the test instead of blocking the suite.
#![allow(clippy::unwrap_used)]

mod util;

mod demo;
mod faults;
mod files;
mod heartbeat;
mod input;
mod library;
mod limits;
#[cfg(feature = "mpi")]
mod mpi;
mod operate;
mod orphans;
mod own_worker;
mod preflight;
mod resume;
mod shared_memory;
mod signals;
mod streams;
mod supervise;
