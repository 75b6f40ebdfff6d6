//! One log format for every procpool process: `<time> <LEVEL> <role> pid=<pid>: <message>`.

use std::io::Write;

/// Install an `env_logger` logger on stderr (`RUST_LOG` honoured, `info` by
/// default) whose lines carry the role and process id. Does nothing if a
/// logger is already installed.
pub fn init_logging(role: &'static str) {
    let pid = std::process::id();
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, record| {
            let ts = buf.timestamp_millis();
            writeln!(
                buf,
                "{ts} {:<5} {role} pid={pid}: {}",
                record.level(),
                record.args()
            )
        })
        .try_init();
}
