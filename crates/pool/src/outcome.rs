//! One record's outcome: where and when it ran, and its result. The same
//! type carries it from the supervisor (output bytes), through the raw API
//! (bytes), to a typed pool's iterators and handles (the task's output).

use std::ops::{Deref, Range};
use std::sync::Arc;
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

/// A record's output bytes as they travel inside the pool: a range of the
/// message they arrived in, shared by the records of that message, so that a
/// batch of results costs one allocation rather than one per record.
#[derive(Clone)]
pub(crate) struct Payload {
    buf: Arc<Vec<u8>>,
    range: Range<usize>,
}

impl Payload {
    /// Bytes of their own.
    pub(crate) fn owned(bytes: Vec<u8>) -> Self {
        let range = 0..bytes.len();
        Payload {
            buf: Arc::new(bytes),
            range,
        }
    }

    /// `range` of a shared message; `None` if it is not within it.
    pub(crate) fn shared(buf: &Arc<Vec<u8>>, range: Range<usize>) -> Option<Self> {
        buf.get(range.clone())?;
        Some(Payload {
            buf: Arc::clone(buf),
            range,
        })
    }

    /// The bytes as a vector of their own (without a copy when they are
    /// the whole of an unshared buffer).
    pub(crate) fn into_vec(self) -> Vec<u8> {
        if self.range == (0..self.buf.len()) {
            Arc::try_unwrap(self.buf).unwrap_or_else(|b| b.to_vec())
        } else {
            self.to_vec()
        }
    }
}

impl Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // In range: checked when made.
        &self.buf[self.range.clone()]
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} bytes)", self.len())
    }
}

impl<T> Outcome<T> {
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
}

impl Outcome<Payload> {
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
