//! What `Pool` and its iterators ask of the supervisor, and what each record
//! gets back.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use super::{Admission, PoolPhase, Supervisor};
use crate::batch::{Batch, JobId};
use crate::error::RecordError;
use crate::outcome::Block;
use crate::stats::WorkerStats;
use crate::transport::Event;

/// Requests from `Pool` and its iterators. New jobs and their batches go on
/// a queue of their own ([`batch_queue`]).
pub(crate) enum Command {
    /// Batches are queued and the supervisor had asked for some.
    BatchesQueued,
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

/// The two ends of the queue of batches from the pool's users to the
/// supervisor. Queuing a batch does not wake the supervisor, which takes
/// what is queued whenever it wakes anyway (for a worker's results, a
/// command, a deadline), unless it asked for batches: it does when it has
/// none left to send ([`Supervisor::feed`]). While the users keep ahead of
/// the workers, as a window of a few batches per worker does, a batch then
/// costs no wake-up of the supervisor's own: one thread switch fewer per
/// batch, on cores the workers need.
pub(crate) fn batch_queue(events: Sender<Event>) -> (BatchSender, BatchQueue) {
    let (tx, rx) = mpsc::channel();
    let hungry = Arc::new(AtomicBool::new(true));
    (
        BatchSender {
            tx,
            hungry: hungry.clone(),
            events,
        },
        BatchQueue { rx, hungry },
    )
}

/// What goes on the batch queue: a job, then its batches. A job goes on
/// the same queue as its batches so that the supervisor knows it before it
/// may have to answer one of them.
pub(crate) enum Queued {
    NewJob {
        id: JobId,
        results: crate::pool::JobSink,
    },
    Batch(Batch),
}

/// Where the pool's users queue jobs and batches.
pub(crate) struct BatchSender {
    tx: Sender<Queued>,
    hungry: Arc<AtomicBool>,
    events: Sender<Event>,
}

impl BatchSender {
    /// Queue a new job (without waking the supervisor: its batches do).
    pub fn new_job(&self, id: JobId, results: crate::pool::JobSink) -> bool {
        self.tx.send(Queued::NewJob { id, results }).is_ok()
    }

    /// Queue `batch`; `false` once the supervisor is gone.
    pub fn send(&self, batch: Batch) -> bool {
        if self.tx.send(Queued::Batch(batch)).is_err() {
            return false;
        }
        // Against the supervisor's fence in `feed`: either it sees this
        // batch, or this sees that it asked.
        fence(Ordering::SeqCst);
        if self.hungry.swap(false, Ordering::SeqCst) {
            return self
                .events
                .send(Event::Command(Command::BatchesQueued))
                .is_ok();
        }
        true
    }
}

/// The supervisor's end of the batch queue.
pub(crate) struct BatchQueue {
    rx: Receiver<Queued>,
    hungry: Arc<AtomicBool>,
}

impl Supervisor {
    /// Take every queued job and batch; whether there was a batch.
    pub(super) fn take_batches(&mut self) -> bool {
        let mut any = false;
        while let Ok(queued) = self.batches.rx.try_recv() {
            let batch = match queued {
                Queued::NewJob { id, results } => {
                    self.jobs.insert(id, results);
                    continue;
                }
                Queued::Batch(batch) => batch,
            };
            any = true;
            if let Some(reason) = self.refusal() {
                self.fail_batch(batch, reason, 0);
            } else {
                self.pending.push_back(batch);
            }
        }
        any
    }

    /// Dispatch what is pending; with nothing left (or when new batches
    /// are refused), ask for batches: the next one queued wakes the supervisor.
    pub(super) fn feed(&mut self) {
        loop {
            self.dispatch();
            // Batches that cannot run are refused as soon as they come.
            if !self.pending.is_empty() && self.admission == Admission::Open {
                self.batches.hungry.store(false, Ordering::Relaxed);
                return;
            }
            self.batches.hungry.store(true, Ordering::SeqCst);
            // Against the sender's fence: a batch queued before it asked is
            // seen here.
            fence(Ordering::SeqCst);
            if !self.take_batches() {
                return;
            }
        }
    }

    pub(super) fn command(&mut self, command: Command) {
        // A command sees every batch queued before it (an `EndJob`, the
        // batches of its job; a `Shutdown`, all of them).
        self.take_batches();
        match command {
            Command::BatchesQueued => {}
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
