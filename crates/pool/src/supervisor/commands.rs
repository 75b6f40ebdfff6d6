//! What `Pool` and its iterators ask of the supervisor, and what each record
//! gets back.

use std::sync::mpsc::Sender;
use std::time::Duration;

use super::{Admission, PoolPhase, Supervisor};
use crate::batch::{Batch, JobId};
use crate::error::RecordError;
use crate::outcome::Block;
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

    pub(super) fn deliver(&self, job: JobId, block: Block) {
        if let Some(tx) = self.jobs.get(&job) {
            let _ = tx.send(block);
        }
    }

    /// Every record of `batch` ends with `error`.
    pub(super) fn fail_batch(&self, batch: Batch, error: RecordError, pid: u32) {
        let job = batch.job;
        self.deliver(job, Block::failed_all(batch.seqs, pid, error));
    }
}
