//! The supervisor thread: worker lifecycle, dispatch, retries, timeouts,
//! liveness, shutdown. `README.md` in this folder is the map: the states,
//! the events, and which file handles what.
//!
//! - `mod.rs`: the pool's two states, the loop, routing of events;
//! - `worker.rs`: one worker slot, its phases and the transitions that end it;
//! - `commands.rs`: what `Pool` asks, and what it gets back per record;
//! - `startup.rs`: launching, the handshake, start-up failures, replacements;
//! - `records.rs`: dispatch, results, requeue after a death, timeouts, liveness;
//! - `stopping.rs`: cancel and shutdown.

mod commands;
mod records;
mod startup;
mod stopping;
mod worker;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use procpool_protocol::{TaskInfo, TaskSpec, WorkerMessage};

pub(crate) use commands::{batch_queue, BatchQueue, BatchSender, Command};

use crate::batch::{Batch, JobId, Sizer};
use crate::error::{HandshakeFailure, PoolError};
use crate::pool::JobSink;
use crate::stats::WorkerStats;
use crate::transport::{Event, Launcher};
use worker::{Phase, Worker};

/// What the supervisor is told at start.
pub(crate) struct Settings {
    pub bin: PathBuf,
    pub workers: usize,
    pub in_flight: usize,
    pub handshake_timeout: Duration,
    pub record_timeout: Option<Duration>,
    /// Workers time each record.
    pub record_times: bool,
    /// A worker holding records that says nothing for this long is dead.
    pub liveness_timeout: Duration,
    pub retries: u32,
    pub max_tasks_per_child: Option<u64>,
    /// The task to configure and how its records are encoded; `None` only probes.
    pub task: Option<TaskSpec>,
    /// The task's Rust types, checked against the worker's (typed pools).
    pub types: Option<procpool_protocol::TaskTypes>,
    pub token: String,
    pub sizer: Arc<Sizer>,
    /// Starts and reaches workers (the transport).
    pub launcher: Box<dyn Launcher>,
}

/// What `Pool::build` learns once every worker is ready.
pub(crate) struct Started {
    pub pids: Vec<u32>,
    pub offered: Vec<TaskInfo>,
}

/// What the pool admits: new records run, or fail at once.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Admission {
    Open,
    /// Cancelled: queued and new records end as cancelled; records in
    /// flight may finish until `kill_at`, then their workers are killed.
    Cancelled {
        kill_at: Option<Instant>,
    },
    /// No worker can be started: records end as `PoolBroken`.
    Broken(String),
}

/// Where the pool is in its life.
enum PoolPhase {
    /// Workers are starting; `build` waits on `reply` for all of them.
    Starting {
        reply: Sender<Result<Started, PoolError>>,
    },
    Running,
    /// Shutdown was asked: submitted work finishes first.
    Draining {
        grace: Duration,
        reply: Sender<Vec<WorkerStats>>,
    },
    /// `Stop` went out (or start-up failed): what is not gone by `deadline`
    /// is killed; when every worker is gone the supervisor ends.
    Stopping {
        deadline: Instant,
        reply: Option<Sender<Vec<WorkerStats>>>,
    },
}

pub(crate) struct Supervisor {
    settings: Settings,
    events: Sender<Event>,
    workers: Vec<Worker>,
    /// Batches queued by the pool's users, not yet taken.
    batches: BatchQueue,
    pending: VecDeque<Batch>,
    jobs: HashMap<JobId, JobSink>,
    /// Statistics of the workers that are gone.
    past: Vec<WorkerStats>,
    next_batch: u64,
    offered: Vec<TaskInfo>,
    /// Workers that failed to start since one last succeeded.
    start_failures: u32,
    admission: Admission,
    phase: PoolPhase,
}

impl Supervisor {
    pub fn new(
        settings: Settings,
        events: Sender<Event>,
        batches: BatchQueue,
        starting: Sender<Result<Started, PoolError>>,
    ) -> Self {
        let workers = (0..settings.workers).map(|_| Worker::empty()).collect();
        Supervisor {
            settings,
            events,
            workers,
            batches,
            pending: VecDeque::new(),
            jobs: HashMap::new(),
            past: Vec::new(),
            next_batch: 0,
            offered: Vec::new(),
            start_failures: 0,
            admission: Admission::Open,
            phase: PoolPhase::Starting { reply: starting },
        }
    }

    pub fn run(mut self, events: Receiver<Event>) {
        self.launch_all();
        loop {
            let wait = self.next_wakeup();
            // The supervisor holds a sender itself (for the launcher), so the
            // channel never disconnects: only a timeout ends this wait.
            if let Ok(event) = events.recv_timeout(wait) {
                self.handle(event);
            }
            // Drain what else is waiting before the housekeeping below.
            while let Ok(event) = events.try_recv() {
                self.handle(event);
            }
            self.take_batches();
            self.check_deadlines();
            self.check_started();
            self.feed();
            if self.advance_shutdown() {
                break;
            }
        }
    }

    /// Statistics of every worker that has run so far, in the order they
    /// became ready.
    fn stats(&self) -> Vec<WorkerStats> {
        let mut all = self.past.clone();
        all.extend(self.workers.iter().filter_map(|w| w.stats.clone()));
        all.sort_by_key(WorkerStats::started);
        all
    }

    fn next_wakeup(&self) -> Duration {
        let now = Instant::now();
        let mut wake = now + Duration::from_millis(500);
        for w in &self.workers {
            match w.phase {
                // Poll for a child that exits before it connects.
                Phase::Starting { .. } => wake = wake.min(now + Duration::from_millis(5)),
                Phase::Configuring { deadline } => wake = wake.min(deadline),
                Phase::Ready | Phase::Draining => {
                    if let (Some(t), Some(started)) =
                        (self.settings.record_timeout, w.current_started)
                    {
                        wake = wake.min(started + t);
                    }
                    if !w.in_flight.is_empty() {
                        wake = wake.min(w.last_heard + self.settings.liveness_timeout);
                    }
                }
                _ => {}
            }
        }
        if let Admission::Cancelled { kill_at: Some(d) } = self.admission {
            wake = wake.min(d);
        }
        if let PoolPhase::Stopping { deadline, .. } = self.phase {
            wake = wake.min(deadline);
        }
        wake.saturating_duration_since(now)
            .max(Duration::from_millis(1))
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Command(c) => self.command(c),
            Event::Accepted {
                slot,
                generation,
                result,
            } => {
                if self.workers[slot].generation != generation
                    || !matches!(self.workers[slot].phase, Phase::Starting { .. })
                {
                    return; // a forced connect for a worker already given up
                }
                match result {
                    Ok(writer) => self.workers[slot].connected(writer),
                    Err(reason) => self.start_failed(slot, HandshakeFailure::Rendezvous(reason)),
                }
            }
            Event::Message {
                slot,
                generation,
                message,
            } => {
                if self.workers[slot].generation == generation {
                    // Any message is proof of life.
                    self.workers[slot].last_heard = Instant::now();
                    self.message(slot, message);
                }
            }
            Event::Results {
                slot,
                generation,
                results,
            } => {
                if self.workers[slot].generation == generation {
                    self.workers[slot].last_heard = Instant::now();
                    match self.workers[slot].phase {
                        Phase::Ready | Phase::Draining | Phase::Exiting => {
                            self.results(slot, results)
                        }
                        phase => self.protocol_error(slot, format!("sent Results while {phase:?}")),
                    }
                }
            }
            Event::Closed {
                slot,
                generation,
                reason,
            } => {
                if self.workers[slot].generation == generation {
                    self.closed(slot, reason);
                }
            }
        }
    }

    fn message(&mut self, slot: usize, message: WorkerMessage) {
        let phase = self.workers[slot].phase;
        match (phase, message) {
            // Proof of life; it may arrive in any phase after the Hello.
            (_, WorkerMessage::Heartbeat) => {}
            (Phase::Starting { deadline }, WorkerMessage::Hello(hello)) => {
                self.hello(slot, deadline, hello)
            }
            (Phase::Configuring { .. }, WorkerMessage::Ready) => self.became_ready(slot),
            (Phase::Configuring { .. }, WorkerMessage::Rejected { reason }) => {
                let pid = Some(self.workers[slot].pid).filter(|&p| p != 0);
                self.reject(slot, PoolError::TaskRejected { pid, reason })
            }
            (Phase::Ready | Phase::Draining | Phase::Exiting, WorkerMessage::Results(results)) => {
                self.results(slot, results.into())
            }
            (phase, other) => {
                let what = match other {
                    WorkerMessage::Hello(_) => "Hello",
                    WorkerMessage::Ready => "Ready",
                    WorkerMessage::Rejected { .. } => "Rejected",
                    WorkerMessage::Results(_) => "Results",
                    WorkerMessage::ResultsIn { .. } => "ResultsIn",
                    WorkerMessage::ArenasMapped { .. } => "ArenasMapped",
                    WorkerMessage::Heartbeat => "Heartbeat",
                };
                self.protocol_error(slot, format!("sent {what} while {phase:?}"));
            }
        }
    }

    /// Every deadline that may have passed: handshakes, record timeouts,
    /// liveness, the cancel grace period.
    fn check_deadlines(&mut self) {
        let now = Instant::now();
        for slot in 0..self.workers.len() {
            match self.workers[slot].phase {
                Phase::Starting { deadline } => self.check_handshake(slot, deadline, now),
                Phase::Configuring { deadline } if now >= deadline => {
                    let t = self.settings.handshake_timeout;
                    self.start_failed(slot, HandshakeFailure::NoConfirmation(t));
                }
                Phase::Ready | Phase::Draining => {
                    self.check_record_timeout(slot, now);
                    self.check_liveness(slot, now);
                }
                _ => {}
            }
        }
        self.check_cancel_grace(now);
    }
}
