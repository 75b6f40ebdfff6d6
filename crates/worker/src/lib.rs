//! The project's `worker` binary: the built-in task catalogue
//! (`procpool-tasks`) registered with procpool's worker runtime.

use procpool_tasks::{Age, Fault, Locked, Primes};
use procpool_worker::Registry;

/// A registry holding every task of the catalogue.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .register::<Age>()
        .register::<Primes>()
        .register::<Locked>()
        .register::<Fault>();
    registry
}
