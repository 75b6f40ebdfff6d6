//! What `Pool` and its iterators ask of the supervisor, and what each record
//! gets back.

use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::{Admission, PoolPhase, Supervisor};
use crate::batch::{Batch, JobId};
use crate::error::RecordError;
use crate::stats::WorkerStats;

/// Requests from `Pool` and its iterators.
pub(crate) enum Command {
    NewJob {
        id: JobId,
        results: crate::pool::JobSink,
    },
    Batch(Batch),
    EndJob(JobId),
    Stats(Sender<Vec<WorkerStats>>),
    Cancel {
        grace: Duration,
    },
    Shutdown {
        grace: Duration,
        reply: Sender<Vec<WorkerStats>>,
    },
}

/// The outcome of one record, as delivered to its job.
#[derive(Debug)]
pub(crate) struct Completion {
    pub seq: u64,
    pub pid: u32,
    /// The worker thread that ran it (0 in a single-threaded worker).
    pub thread: u32,
    pub started_us: u64,
    pub nanos: u64,
    pub result: Result<Vec<u8>, RecordError>,
}

impl Completion {
    pub(super) fn failed(seq: u64, pid: u32, error: RecordError) -> Self {
        Completion {
            seq,
            pid,
            thread: 0,
            started_us: 0,
            nanos: 0,
            result: Err(error),
        }
    }

    /// A record that failed while running since `started` (timed out, or its worker died).
    pub(super) fn failed_running(seq: u64, pid: u32, error: RecordError, started: Instant) -> Self {
        let ran = Instant::now().saturating_duration_since(started);
        let started_us = std::time::SystemTime::now()
            .checked_sub(ran)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_micros() as u64);
        Completion {
            seq,
            pid,
            thread: 0,
            started_us,
            nanos: ran.as_nanos() as u64,
            result: Err(error),
        }
    }
}

impl Supervisor {
    pub(super) fn command(&mut self, command: Command) {
        match command {
            Command::NewJob { id, results } => {
                self.jobs.insert(id, results);
            }
            Command::Batch(batch) => {
                if let Some(reason) = self.refusal() {
                    self.fail_batch(batch, reason, 0);
                } else {
                    self.pending.push_back(batch);
                }
            }
            Command::EndJob(id) => {
                self.jobs.remove(&id);
                self.pending.retain(|c| c.job != id);
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Command::Cancel { grace } => self.cancel(grace),
            Command::Shutdown { grace, reply } => {
                if let PoolPhase::Running = self.phase {
                    self.phase = PoolPhase::Draining { grace, reply };
                }
            }
        }
    }

    /// Why new records cannot run, if they cannot.
    pub(super) fn refusal(&self) -> Option<RecordError> {
        match &self.admission {
            Admission::Open => None,
            Admission::Cancelled { .. } => Some(RecordError::Cancelled),
            Admission::Broken(reason) => Some(RecordError::PoolBroken(reason.clone())),
        }
    }

    pub(super) fn deliver(&self, job: JobId, list: Vec<Completion>) {
        if let Some(tx) = self.jobs.get(&job) {
            let _ = tx.send(list);
        }
    }

    /// Every record of `batch` ends with `error`.
    pub(super) fn fail_batch(&self, batch: Batch, error: RecordError, pid: u32) {
        let list = batch
            .seqs
            .iter()
            .map(|&s| Completion::failed(s, pid, error.clone()))
            .collect();
        self.deliver(batch.job, list);
    }
}
