//! One log format for every procpool process: `<time> <LEVEL> <role> pid=<pid>: <message>`.
//!
//! A pool forwards its workers' lines through the `log` facade under the
//! target [`WORKER_TARGET`], their message already starting with
//! `worker pid=<pid>:`; this format prints those without a second prefix.

use std::io::Write;

/// The `log` target under which a pool forwards its workers' lines.
pub const WORKER_TARGET: &str = "procpool::worker";

/// An `env_logger` logger on stderr (`RUST_LOG` honoured, `info` by default)
/// whose lines carry the role and process id, not yet installed: for
/// wrapping (e.g. to print above a progress bar).
pub fn build_logger(role: &'static str) -> env_logger::Logger {
    let pid = std::process::id();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, record| {
            let ts = buf.timestamp_millis();
            if record.target() == WORKER_TARGET {
                return writeln!(buf, "{ts} {:<5} {}", record.level(), record.args());
            }
            writeln!(
                buf,
                "{ts} {:<5} {role} pid={pid}: {}",
                record.level(),
                record.args()
            )
        })
        .build()
}

/// Install [`build_logger`]'s logger. Does nothing if a logger is already installed.
pub fn init_logging(role: &'static str) {
    let logger = build_logger(role);
    let level = logger.filter();
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}
