//! Faults a worker injects on purpose, so that tests can watch how a
//! coordinator copes: chosen by the environment variable [`ENV_FAULT`].
//!
//! The variable is read only by a worker that has opted in at run time with
//! [`obey_fault_injection_env`] before serving (the project's own `worker`
//! binary does, for its tests and demos). Without that call the variable is
//! ignored, whatever cargo features are on, so a user's worker never obeys
//! it. The serve loop calls the few hooks below at fixed points and knows
//! nothing else of faults.

use std::sync::atomic::{AtomicBool, Ordering};

/// Environment variable that makes a worker misbehave on purpose. Values:
/// `exit-before-hello`, `hang-before-hello`, `hang-after-connect`,
/// `garbage-hello`, `wrong-version`, `wrong-token`, `crash-after:K` (abort
/// after K records), `garbage-after:K` (send garbage after K records),
/// `no-arena` (take batches over the socket only, as a worker that cannot
/// map its coordinator's shared memory).
pub const ENV_FAULT: &str = "PROCPOOL_WORKER_FAULT";

static OBEY_ENV: AtomicBool = AtomicBool::new(false);

/// Make this worker obey [`ENV_FAULT`]: call it before [`serve`](crate::serve)
/// (or [`main_with`](crate::main_with)). Meant for a worker binary that tests
/// a coordinator's failure handling; a worker that never calls it ignores the
/// variable.
pub fn obey_fault_injection_env() {
    OBEY_ENV.store(true, Ordering::Relaxed);
}

/// Bytes that decode as no message at all.
const GARBAGE: [u8; 37] = [0xFF; 37];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InjectedFault {
    None,
    ExitBeforeHello,
    HangBeforeHello,
    HangAfterConnect,
    GarbageHello,
    WrongVersion,
    WrongToken,
    CrashAfter(u64),
    GarbageAfter(u64),
    NoArena,
}

impl InjectedFault {
    /// The fault this worker is to inject: none unless the worker opted in
    /// with [`obey_fault_injection_env`] and [`ENV_FAULT`] names one.
    pub(crate) fn from_env() -> Self {
        if !OBEY_ENV.load(Ordering::Relaxed) {
            return InjectedFault::None;
        }
        match std::env::var(ENV_FAULT) {
            Ok(v) => Self::parse(&v).unwrap_or_else(|| {
                log::warn!("ignoring unknown {ENV_FAULT}={v}");
                InjectedFault::None
            }),
            Err(_) => InjectedFault::None,
        }
    }

    fn parse(v: &str) -> Option<Self> {
        let after = |prefix: &str| v.strip_prefix(prefix).and_then(|k| k.parse().ok());
        Some(match v {
            "exit-before-hello" => InjectedFault::ExitBeforeHello,
            "hang-before-hello" => InjectedFault::HangBeforeHello,
            "hang-after-connect" => InjectedFault::HangAfterConnect,
            "garbage-hello" => InjectedFault::GarbageHello,
            "wrong-version" => InjectedFault::WrongVersion,
            "wrong-token" => InjectedFault::WrongToken,
            "no-arena" => InjectedFault::NoArena,
            _ => {
                if let Some(k) = after("crash-after:") {
                    InjectedFault::CrashAfter(k)
                } else if let Some(k) = after("garbage-after:") {
                    InjectedFault::GarbageAfter(k)
                } else {
                    return None;
                }
            }
        })
    }

    /// Before connecting to the coordinator: exit or hang.
    pub(crate) fn before_connect(self) {
        match self {
            InjectedFault::ExitBeforeHello => std::process::exit(4),
            InjectedFault::HangBeforeHello => hang(),
            _ => {}
        }
    }

    /// Connected, before `Hello`: hang, or send garbage (with `send`) and hang.
    pub(crate) fn before_hello(self, send: impl FnOnce(&[u8])) {
        match self {
            InjectedFault::HangAfterConnect => hang(),
            InjectedFault::GarbageHello => {
                send(&GARBAGE);
                hang();
            }
            _ => {}
        }
    }

    /// The protocol version to announce in place of `real`.
    pub(crate) fn version(self, real: u32) -> u32 {
        if self == InjectedFault::WrongVersion {
            real + 98
        } else {
            real
        }
    }

    /// The token to present in place of `real`.
    pub(crate) fn token(self, real: String) -> String {
        if self == InjectedFault::WrongToken {
            "forged".into()
        } else {
            real
        }
    }

    /// Before running a record, `done` records into this worker's life.
    pub(crate) fn before_record(self, done: u64, send: impl FnOnce(&[u8])) {
        match self {
            InjectedFault::CrashAfter(k) if done >= k => std::process::abort(),
            InjectedFault::GarbageAfter(k) if done >= k => {
                send(&GARBAGE);
                hang();
            }
            _ => {}
        }
    }
}

fn hang() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse() {
        assert_eq!(
            InjectedFault::parse("crash-after:3"),
            Some(InjectedFault::CrashAfter(3))
        );
        assert_eq!(
            InjectedFault::parse("garbage-hello"),
            Some(InjectedFault::GarbageHello)
        );
        assert_eq!(InjectedFault::parse("crash-after:x"), None);
        assert_eq!(InjectedFault::parse("explode"), None);
    }

    /// The variable is ignored until the worker opts in, then obeyed.
    #[test]
    fn the_variable_is_obeyed_only_after_opting_in() {
        // No other test of this crate reads or writes the environment,
        // calls `obey_fault_injection_env` or serves.
        std::env::set_var(ENV_FAULT, "crash-after:2");
        let before = InjectedFault::from_env();
        obey_fault_injection_env();
        let after = InjectedFault::from_env();
        std::env::remove_var(ENV_FAULT);
        let unset = InjectedFault::from_env();
        assert_eq!(before, InjectedFault::None);
        assert_eq!(after, InjectedFault::CrashAfter(2));
        assert_eq!(unset, InjectedFault::None);
    }
}
