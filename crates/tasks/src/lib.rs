//! The built-in task catalogue, shared by the `worker` binary and the
//! coordinator's thread executor.
//!
//! | task | input | output |
//! |---|---|---|
//! | [`Age`] | `{name, field, born, nobel}` | `{name, age}` after `work_ms` of simulated work |
//! | [`Primes`] | `{n}` | `{n, primes}`: how many primes are below `n` (CPU-bound) |
//! | [`Locked`] | `{n}` | as `primes`, computed while holding one process-wide lock |
//! | [`Fault`] | `{n, fault}` | `{n}`, or the error, panic, crash or hang that `fault` names |

mod age;
mod fault;
mod primes;

pub use age::{Age, AgeOut, Scientist};
pub use fault::{Fault, FaultIn, FaultOut};
pub use primes::{count_primes_below, Locked, Primes, PrimesIn, PrimesOut, MAX_N};
