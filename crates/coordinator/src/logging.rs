//! The coordinator's log lines, in the format every procpool process uses
//! (the worker runtime's too), so that coordinator and worker lines read
//! alike on one stderr: `<time> <LEVEL> <role> pid=<pid>: <message>`.

use std::io::Write;

/// An `env_logger` logger on stderr (`RUST_LOG` honoured, `info` by
/// default), not yet installed: `main` wraps it to print above the progress
/// bars.
pub fn build_logger(role: &'static str) -> env_logger::Logger {
    let pid = std::process::id();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, record| {
            let ts = buf.timestamp_millis();
            // Worker lines forwarded by the pool already say `worker pid=<pid>:`.
            if record.target() == procpool::worker::WORKER_TARGET {
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
