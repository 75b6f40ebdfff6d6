//! One record's outcome: where and when it ran, and its result. The same
//! type carries it from the supervisor (output bytes), through the raw API
//! (bytes), to a typed pool's iterators and handles (the task's output).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use procpool_protocol::decode_value;

use crate::error::RecordError;

/// One finished record, with where and when it ran.
#[derive(Debug)]
pub struct Outcome<O> {
    /// Position in the input (from 0).
    pub seq: u64,
    /// The worker that answered it (`None` when no worker did, e.g. cancelled).
    pub pid: Option<u32>,
    /// The thread of that worker that ran it (0 in single-threaded workers).
    pub thread: u32,
    /// When it started, in microseconds since the Unix epoch, if known.
    pub started_us: Option<u64>,
    /// How long it ran.
    pub duration: Duration,
    /// The output, or how the record failed.
    pub result: Result<O, RecordError>,
}

impl Outcome<Vec<u8>> {
    /// A record that failed without running (or with no time to report);
    /// `pid` 0 when no worker was involved.
    pub(crate) fn failed(seq: u64, pid: u32, error: RecordError) -> Self {
        Outcome {
            seq,
            pid: Some(pid).filter(|&p| p != 0),
            thread: 0,
            started_us: None,
            duration: Duration::ZERO,
            result: Err(error),
        }
    }

    /// A record that failed while running since `started` (timed out, or its worker died).
    pub(crate) fn failed_running(seq: u64, pid: u32, error: RecordError, started: Instant) -> Self {
        let ran = Instant::now().saturating_duration_since(started);
        let started_us = SystemTime::now()
            .checked_sub(ran)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_micros() as u64);
        Outcome {
            started_us,
            duration: ran,
            ..Outcome::failed(seq, pid, error)
        }
    }

    /// The same outcome with its output decoded as `O`.
    pub(crate) fn decode<O: serde::de::DeserializeOwned>(self) -> Outcome<O> {
        let result = self.result.and_then(|bytes| {
            decode_value::<O>(&bytes).map_err(|e| RecordError::BadOutput(e.to_string()))
        });
        Outcome {
            seq: self.seq,
            pid: self.pid,
            thread: self.thread,
            started_us: self.started_us,
            duration: self.duration,
            result,
        }
    }
}
