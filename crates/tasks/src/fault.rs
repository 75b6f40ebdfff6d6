//! Fault injection, for tests and demonstrations: each record says how to misbehave.

use std::time::Duration;

use procpool_protocol::{Task, TaskError, TaskInfo};
use serde::{Deserialize, Serialize};

/// Input of [`Fault`]: a number passed through, and what to do to the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultIn {
    /// Echoed back on success.
    pub n: u64,
    /// `""` or `"none"` (succeed), `"error"` (task error), `"panic"`,
    /// `"abort"` (SIGABRT), `"kill"` (SIGKILL itself), `"exit"` (exit code 3),
    /// `"hang"` (sleep for an hour), `"sleep:MS"`, `"orphan:SECS"` (start
    /// `sleep SECS` and leave it running).
    #[serde(default)]
    pub fault: String,
}

/// Output of [`Fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultOut {
    /// The input's `n`.
    pub n: u64,
}

/// A task that misbehaves as each record asks: the poison records, panics,
/// crashes and hangs that the pool must survive, and a helper process left
/// behind. Only these fixed behaviours exist; nothing in the data is executed.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Fault;

impl Task for Fault {
    const NAME: &'static str = "fault";
    type Input = FaultIn;
    type Output = FaultOut;

    fn run(&self, input: FaultIn) -> Result<FaultOut, TaskError> {
        match input.fault.as_str() {
            "" | "none" => {}
            "error" => return Err(format!("record {} asked for an error", input.n).into()),
            "panic" => panic!("record {} asked for a panic", input.n),
            "abort" => std::process::abort(),
            "kill" => {
                // SAFETY: raising a signal on ourselves has no memory effects.
                unsafe {
                    libc::raise(libc::SIGKILL);
                }
            }
            "exit" => std::process::exit(3),
            "hang" => std::thread::sleep(Duration::from_secs(3600)),
            other => {
                if let Some(Ok(ms)) = other.strip_prefix("sleep:").map(str::parse::<u64>) {
                    std::thread::sleep(Duration::from_millis(ms));
                } else if let Some(Ok(secs)) = other.strip_prefix("orphan:").map(str::parse::<u64>)
                {
                    // Started and not waited for: it outlives this record.
                    std::process::Command::new("sleep")
                        .arg(secs.to_string())
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .spawn()
                        .map_err(|e| format!("record {}: cannot start sleep: {e}", input.n))?;
                } else {
                    return Err(format!("unknown fault `{other}`").into());
                }
            }
        }
        Ok(FaultOut { n: input.n })
    }

    fn label(input: &FaultIn) -> Option<String> {
        Some(format!("n={} fault={}", input.n, input.fault))
    }

    fn info() -> TaskInfo {
        TaskInfo {
            name: Self::NAME.into(),
            description: "fault injection: echo n, or error/panic/abort/kill/exit/hang/sleep:MS/orphan:SECS as `fault` says".into(),
            input_fields: vec!["n".into(), "fault".into()],
            output_fields: vec!["n".into()],
            ..TaskInfo::default()
        }
    }
}
