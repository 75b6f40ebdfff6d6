//! Per-worker statistics.

use std::time::{Duration, Instant};

use crate::error::WorkerEnd;

/// What one worker process did in its life.
#[derive(Debug, Clone)]
pub struct WorkerStats {
    /// Its process id.
    pub pid: u32,
    /// Records it answered (ok or failed).
    pub records: u64,
    /// Of those, how many failed.
    pub failed: u64,
    /// Of the failed ones, how many did not decode as the task's input
    /// ([`RecordError::BadInput`](crate::RecordError::BadInput)).
    pub bad_input: u64,
    /// Time it spent running records.
    pub busy: Duration,
    /// How long it lived (so far, if still running).
    pub lifetime: Duration,
    /// How it ended; `None` while it runs.
    pub end: Option<WorkerEnd>,
    started: Instant,
}

impl WorkerStats {
    pub(crate) fn new(pid: u32) -> Self {
        WorkerStats {
            pid,
            records: 0,
            failed: 0,
            bad_input: 0,
            busy: Duration::ZERO,
            lifetime: Duration::ZERO,
            end: None,
            started: Instant::now(),
        }
    }

    pub(crate) fn end(&mut self, end: WorkerEnd) {
        if self.end.is_none() {
            self.lifetime = self.started.elapsed();
            self.end = Some(end);
        }
    }

    /// When it became ready.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Share of its life spent running records, 0.0 to 1.0.
    pub fn utilisation(&self) -> f64 {
        let life = if self.end.is_some() {
            self.lifetime
        } else {
            self.started.elapsed()
        };
        if life.is_zero() {
            0.0
        } else {
            (self.busy.as_secs_f64() / life.as_secs_f64()).min(1.0)
        }
    }
}
