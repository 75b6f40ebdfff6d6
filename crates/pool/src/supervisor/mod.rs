//! The supervisor thread: worker lifecycle, dispatch, retries, timeouts,
//! shutdown. See `README.md` in this folder for the state machine.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use procpool_protocol::{
    encode, encode_batch, FailureKind, Outcome, Request, TaskInfo, WorkerMessage,
};

use crate::chunk::{Chunk, JobId, Sizer};
use crate::error::{HandshakeFailure, PoolError, RecordError, WorkerEnd, WorkerExit};
use crate::pool::{JobSink, TaskSpec};
use crate::stats::WorkerStats;
use crate::transport::{Event, Launcher, Link};

/// Requests from `Pool` and its iterators.
pub(crate) enum Command {
    NewJob {
        id: JobId,
        results: JobSink,
    },
    Chunk(Chunk),
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
    pub started_us: u64,
    pub nanos: u64,
    pub result: Result<Vec<u8>, RecordError>,
}

impl Completion {
    fn failed(seq: u64, pid: u32, error: RecordError) -> Self {
        Completion {
            seq,
            pid,
            started_us: 0,
            nanos: 0,
            result: Err(error),
        }
    }

    /// A record that failed while running since `started` (timed out, or its worker died).
    fn failed_running(seq: u64, pid: u32, error: RecordError, started: Instant) -> Self {
        let now = Instant::now();
        let ran = now.saturating_duration_since(started);
        let started_us = std::time::SystemTime::now()
            .checked_sub(ran)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_micros() as u64);
        Completion {
            seq,
            pid,
            started_us,
            nanos: ran.as_nanos() as u64,
            result: Err(error),
        }
    }
}

/// What the supervisor is told at start.
pub(crate) struct Settings {
    pub bin: PathBuf,
    pub workers: usize,
    pub in_flight: usize,
    pub handshake_timeout: Duration,
    pub record_timeout: Option<Duration>,
    pub retries: u32,
    pub max_tasks_per_child: Option<u64>,
    /// The task to configure; `None` only probes.
    pub task: Option<TaskSpec>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting { deadline: Instant },
    Configuring { deadline: Instant },
    Ready,
    Draining,
    Exiting,
    Gone,
}

/// Who is to blame for the records a dead worker was running.
struct Charge {
    pid: u32,
    exit: WorkerExit,
    /// When the record it was running started (about).
    since: Instant,
}

struct InFlight {
    batch: u64,
    /// When it was sent.
    sent: Instant,
    chunk: Chunk,
    /// Records of the chunk already answered.
    done: usize,
}

struct Worker {
    gen: u64,
    phase: Phase,
    pid: u32,
    link: Option<Box<dyn Link>>,
    /// Requests to the worker, once it has connected.
    writer: Option<Sender<Vec<u8>>>,
    in_flight: VecDeque<InFlight>,
    /// Records sent to this worker in its life (for recycling).
    assigned: u64,
    /// When the record now running started (kept only with a record timeout).
    current_started: Option<Instant>,
    /// When its last results arrived.
    last_answer: Option<Instant>,
    /// Why we ended it, when we did.
    end: Option<WorkerEnd>,
    /// The host it runs on, from its `Hello`.
    host: String,
    stats: Option<usize>,
}

impl Worker {
    fn empty() -> Self {
        Worker {
            gen: 0,
            phase: Phase::Gone,
            pid: 0,
            link: None,
            writer: None,
            in_flight: VecDeque::new(),
            assigned: 0,
            current_started: None,
            last_answer: None,
            end: None,
            host: String::new(),
            stats: None,
        }
    }

    /// Kill it; our request channel closes too.
    fn kill(&mut self) {
        if let Some(link) = self.link.as_mut() {
            link.kill();
        }
        self.writer = None;
    }

    /// Queue an encoded request (dropped if the worker is gone: its reader
    /// reports that).
    fn send(&self, message: Vec<u8>) {
        if let Some(w) = &self.writer {
            let _ = w.send(message);
        }
    }

    /// Wait for the worker to exit (killing it after `patience`).
    fn reap(&mut self) -> WorkerExit {
        self.link
            .as_mut()
            .map_or(WorkerExit::Unknown, |l| l.reap(REAP_PATIENCE))
    }

    /// Give up on a worker that is still starting (or must go now): kill it,
    /// release whatever waits for it, reap it, and ignore what its threads
    /// still report.
    fn abandon(&mut self) {
        if let Some(link) = self.link.as_mut() {
            link.abandon();
        }
        self.link = None;
        self.writer = None;
        self.phase = Phase::Gone;
        self.gen += 1;
    }
}

struct ShutdownState {
    grace: Duration,
    reply: Option<Sender<Vec<WorkerStats>>>,
    /// Set once `Stop` went out: workers must be gone by then.
    deadline: Option<Instant>,
}

pub(crate) struct Supervisor {
    settings: Settings,
    events: Sender<Event>,
    workers: Vec<Worker>,
    pending: VecDeque<Chunk>,
    jobs: HashMap<JobId, JobSink>,
    stats: Vec<WorkerStats>,
    next_batch: u64,
    starting: Option<Sender<Result<Started, PoolError>>>,
    offered: Vec<TaskInfo>,
    start_failures: u32,
    broken: Option<String>,
    cancel_deadline: Option<Instant>,
    cancelled: bool,
    shutdown: Option<ShutdownState>,
    /// Start-up failed: the supervisor ends.
    aborted: bool,
}

const REAP_PATIENCE: Duration = Duration::from_millis(500);
const MAX_START_FAILURES: u32 = 3;

impl Supervisor {
    pub fn new(
        settings: Settings,
        events: Sender<Event>,
        starting: Sender<Result<Started, PoolError>>,
    ) -> Self {
        let workers = (0..settings.workers).map(|_| Worker::empty()).collect();
        Supervisor {
            settings,
            events,
            workers,
            pending: VecDeque::new(),
            jobs: HashMap::new(),
            stats: Vec::new(),
            next_batch: 0,
            starting: Some(starting),
            offered: Vec::new(),
            start_failures: 0,
            broken: None,
            cancel_deadline: None,
            cancelled: false,
            shutdown: None,
            aborted: false,
        }
    }

    pub fn run(mut self, events: Receiver<Event>) {
        // All at once: the launcher may start them side by side.
        let slots: Vec<(usize, u64)> = (0..self.workers.len()).map(|s| (s, 1)).collect();
        let links = self.settings.launcher.launch_all(&slots, &self.events);
        let mut failure = None;
        for ((slot, gen), link) in slots.into_iter().zip(links) {
            match link {
                Ok(link) => self.attach(slot, gen, link),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            self.fail_start(e);
            return;
        }
        loop {
            let wait = self.next_wakeup();
            match events.recv_timeout(wait) {
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Drain what else is waiting before the housekeeping below.
            while let Ok(event) = events.try_recv() {
                self.handle(event);
            }
            if self.aborted {
                break;
            }
            self.check_deadlines();
            if self.aborted {
                break;
            }
            if self.starting.is_some() && self.all_ready() {
                let pids = self.workers.iter().map(|w| w.pid).collect();
                if let Some(tx) = self.starting.take() {
                    let _ = tx.send(Ok(Started {
                        pids,
                        offered: self.offered.clone(),
                    }));
                }
            }
            self.dispatch();
            if self.advance_shutdown() {
                break;
            }
        }
    }

    fn all_ready(&self) -> bool {
        self.workers.iter().all(|w| w.phase == Phase::Ready)
    }

    /// Report a start-up failure to `build` and take everything down.
    fn fail_start(&mut self, error: PoolError) {
        self.aborted = true;
        for w in &mut self.workers {
            w.abandon();
        }
        if let Some(tx) = self.starting.take() {
            let _ = tx.send(Err(error));
        }
    }

    fn start_worker(&mut self, slot: usize) -> Result<(), PoolError> {
        let gen = self.workers[slot].gen + 1;
        let link = self.settings.launcher.launch(slot, gen, &self.events)?;
        self.attach(slot, gen, link);
        Ok(())
    }

    fn attach(&mut self, slot: usize, gen: u64, link: Box<dyn Link>) {
        let pid = link.pid();
        info!("spawned worker {}", link.label());
        let w = &mut self.workers[slot];
        *w = Worker::empty();
        w.gen = gen;
        w.pid = pid;
        w.phase = Phase::Starting {
            deadline: Instant::now() + self.settings.handshake_timeout,
        };
        w.link = Some(link);
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
                }
                _ => {}
            }
        }
        for d in [
            self.cancel_deadline,
            self.shutdown.as_ref().and_then(|s| s.deadline),
        ]
        .into_iter()
        .flatten()
        {
            wake = wake.min(d);
        }
        wake.saturating_duration_since(now)
            .max(Duration::from_millis(1))
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Command(c) => self.command(c),
            Event::Accepted { slot, gen, result } => {
                if self.workers[slot].gen != gen
                    || !matches!(self.workers[slot].phase, Phase::Starting { .. })
                {
                    return; // a forced connect for a worker already given up
                }
                match result {
                    Ok(writer) => {
                        let w = &mut self.workers[slot];
                        w.writer = Some(writer);
                        if let Some(link) = w.link.as_mut() {
                            link.connected();
                        }
                    }
                    Err(reason) => self.start_failed(slot, HandshakeFailure::Rendezvous(reason)),
                }
            }
            Event::Message { slot, gen, message } => {
                if self.workers[slot].gen == gen {
                    self.message(slot, message);
                }
            }
            Event::Closed { slot, gen, reason } => {
                if self.workers[slot].gen == gen {
                    self.closed(slot, reason);
                }
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::NewJob { id, results } => {
                self.jobs.insert(id, results);
            }
            Command::Chunk(chunk) => {
                if let Some(reason) = self.refusal() {
                    let list = chunk
                        .seqs
                        .iter()
                        .map(|&s| Completion::failed(s, 0, reason.clone()))
                        .collect();
                    self.deliver(chunk.job, list);
                } else {
                    self.pending.push_back(chunk);
                }
            }
            Command::EndJob(id) => {
                self.jobs.remove(&id);
                self.pending.retain(|c| c.job != id);
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.stats.clone());
            }
            Command::Cancel { grace } => self.cancel(grace),
            Command::Shutdown { grace, reply } => {
                self.shutdown = Some(ShutdownState {
                    grace,
                    reply: Some(reply),
                    deadline: None,
                });
            }
        }
    }

    /// Why new records cannot run, if they cannot.
    fn refusal(&self) -> Option<RecordError> {
        if self.cancelled {
            Some(RecordError::Cancelled)
        } else {
            self.broken.clone().map(RecordError::PoolBroken)
        }
    }

    fn cancel(&mut self, grace: Duration) {
        if self.cancelled {
            // A second cancel: stop at once.
            self.cancel_deadline = Some(Instant::now());
            return;
        }
        self.cancelled = true;
        self.cancel_deadline = Some(Instant::now() + grace);
        let queued: Vec<Chunk> = self.pending.drain(..).collect();
        let held: usize = queued.iter().map(Chunk::len).sum();
        info!("cancelling: {held} queued records dropped, letting records in flight finish");
        for chunk in queued {
            self.fail_chunk(chunk, RecordError::Cancelled, 0);
        }
    }

    fn deliver(&self, job: JobId, list: Vec<Completion>) {
        if let Some(tx) = self.jobs.get(&job) {
            let _ = tx.send(list);
        }
    }

    fn fail_chunk(&self, chunk: Chunk, error: RecordError, pid: u32) {
        let list = chunk
            .seqs
            .iter()
            .map(|&s| Completion::failed(s, pid, error.clone()))
            .collect();
        self.deliver(chunk.job, list);
    }

    fn message(&mut self, slot: usize, message: WorkerMessage) {
        let phase = self.workers[slot].phase;
        match (phase, message) {
            (Phase::Starting { deadline }, WorkerMessage::Hello(hello)) => {
                let w = &self.workers[slot];
                let reason = if hello.token != self.settings.token {
                    Some(HandshakeFailure::WrongToken)
                } else if w.pid != 0 && hello.pid != w.pid {
                    Some(HandshakeFailure::WrongPid {
                        claimed: hello.pid,
                        started: w.pid,
                    })
                } else {
                    None
                };
                if let Some(reason) = reason {
                    self.start_failed(slot, reason);
                    return;
                }
                if self.workers[slot].pid == 0 {
                    // A backend that learns the pid from the handshake.
                    self.workers[slot].pid = hello.pid;
                }
                self.workers[slot].host = hello.host.clone();
                self.offered = hello.tasks.clone();
                match &self.settings.task {
                    Some(spec) => {
                        if let Err(e) = spec.check(&hello.tasks, &self.settings.bin) {
                            self.reject(slot, e);
                            return;
                        }
                        let request = Request::Configure {
                            task: spec.name.clone(),
                            config: spec.config.clone(),
                            flush_each: self.settings.record_timeout.is_some(),
                        };
                        match encode(&request) {
                            Ok(bytes) => {
                                let w = &mut self.workers[slot];
                                w.send(bytes);
                                w.phase = Phase::Configuring { deadline };
                            }
                            Err(e) => {
                                self.start_failed(slot, HandshakeFailure::Protocol(e.to_string()))
                            }
                        }
                    }
                    None => self.became_ready(slot),
                }
            }
            (Phase::Configuring { .. }, WorkerMessage::Ready) => self.became_ready(slot),
            (Phase::Configuring { .. }, WorkerMessage::Rejected { reason }) => {
                let pid = Some(self.workers[slot].pid).filter(|&p| p != 0);
                self.reject(slot, PoolError::TaskRejected { pid, reason })
            }
            (Phase::Ready | Phase::Draining | Phase::Exiting, WorkerMessage::Results(results)) => {
                self.results(slot, results)
            }
            (phase, other) => {
                let what = match other {
                    WorkerMessage::Hello(_) => "Hello",
                    WorkerMessage::Ready => "Ready",
                    WorkerMessage::Rejected { .. } => "Rejected",
                    WorkerMessage::Results(_) => "Results",
                };
                self.protocol_error(slot, format!("sent {what} while {phase:?}"));
            }
        }
    }

    fn became_ready(&mut self, slot: usize) {
        self.start_failures = 0;
        let index = self.stats.len();
        let w = &mut self.workers[slot];
        w.phase = Phase::Ready;
        w.stats = Some(index);
        self.stats.push(WorkerStats::new(w.pid));
        info!("worker pid={} on {} ready", w.pid, w.host);
    }

    /// The worker cannot run our task: a start-up error, never retried.
    fn reject(&mut self, slot: usize, error: PoolError) {
        let reason = error.to_string();
        let w = &mut self.workers[slot];
        w.kill();
        w.phase = Phase::Exiting;
        w.end = Some(WorkerEnd::ProtocolError(reason.clone()));
        if self.starting.is_some() {
            self.fail_start(error);
        } else {
            self.break_pool(reason);
        }
    }

    fn start_failed(&mut self, slot: usize, reason: HandshakeFailure) {
        let pid = self.workers[slot].pid;
        self.workers[slot].abandon();
        if self.starting.is_some() {
            self.fail_start(PoolError::Handshake {
                pid: Some(pid).filter(|&p| p != 0),
                failure: reason,
            });
            return;
        }
        self.start_failures += 1;
        error!("replacement worker pid={pid} failed to start: {reason}");
        if self.start_failures >= MAX_START_FAILURES {
            self.break_pool(format!(
                "{MAX_START_FAILURES} workers in a row failed to start; last: pid {pid} {reason}"
            ));
        } else {
            self.respawn(slot);
        }
    }

    /// No worker can be started: every queued and future record fails.
    fn break_pool(&mut self, reason: String) {
        error!("pool broken: {reason}");
        self.broken = Some(reason.clone());
        let queued: Vec<Chunk> = self.pending.drain(..).collect();
        for chunk in queued {
            self.fail_chunk(chunk, RecordError::PoolBroken(reason.clone()), 0);
        }
    }

    fn respawn(&mut self, slot: usize) {
        if self.broken.is_some() || self.cancelled {
            return;
        }
        if !self.settings.launcher.respawns() {
            self.break_pool("a worker is gone and this backend cannot replace it".into());
            return;
        }
        let needed = self.shutdown.as_ref().is_none_or(|s| s.deadline.is_none());
        if !needed {
            return;
        }
        if let Err(e) = self.start_worker(slot) {
            self.start_failures += 1;
            error!("cannot start a replacement worker: {e}");
            if self.start_failures >= MAX_START_FAILURES {
                self.break_pool(e.to_string());
            } else {
                self.respawn(slot);
            }
        }
    }

    fn protocol_error(&mut self, slot: usize, reason: String) {
        let w = &mut self.workers[slot];
        error!(
            "worker pid={} broke the protocol: {reason}; killing it",
            w.pid
        );
        if matches!(w.phase, Phase::Starting { .. } | Phase::Configuring { .. }) {
            self.start_failed(slot, HandshakeFailure::Protocol(reason));
            return;
        }
        w.end = Some(WorkerEnd::ProtocolError(reason));
        w.phase = Phase::Exiting;
        w.kill();
    }

    fn results(&mut self, slot: usize, results: procpool_protocol::BatchResults) {
        let w = &mut self.workers[slot];
        let pid = w.pid;
        let n = results.outcomes.len();
        let Some(front) = w.in_flight.front_mut() else {
            self.protocol_error(
                slot,
                format!("sent results for batch {} it does not hold", results.batch),
            );
            return;
        };
        if front.batch != results.batch || front.done + n > front.chunk.len() {
            let batch = results.batch;
            self.protocol_error(slot, format!("sent results for batch {batch} out of turn"));
            return;
        }
        let mut list = Vec::with_capacity(n);
        let mut failed = 0u64;
        for (i, o) in results.outcomes.into_iter().enumerate() {
            let expected = front.chunk.seqs[front.done + i];
            if o.seq != expected {
                let got = o.seq;
                self.protocol_error(
                    slot,
                    format!("answered record {got} in place of {expected}"),
                );
                return;
            }
            let result = match o.outcome {
                Outcome::Ok(bytes) => Ok(bytes),
                Outcome::Failed(f) => {
                    failed += 1;
                    Err(match f.kind {
                        FailureKind::Error => RecordError::Task(f.message),
                        FailureKind::Panic => RecordError::Panicked(f.message),
                        FailureKind::BadInput => RecordError::BadInput(f.message),
                    })
                }
            };
            list.push(Completion {
                seq: o.seq,
                pid,
                started_us: o.started_us,
                nanos: o.nanos,
                result,
            });
        }
        front.done += n;
        w.last_answer = Some(Instant::now());
        let job = front.chunk.job;
        if front.done == front.chunk.len() {
            w.in_flight.pop_front();
        }
        if self.settings.record_timeout.is_some() {
            w.current_started = (!w.in_flight.is_empty()).then(Instant::now);
        }
        if let Some(s) = w.stats.and_then(|i| self.stats.get_mut(i)) {
            s.records += n as u64;
            s.failed += failed;
            s.busy += Duration::from_nanos(results.busy_nanos);
        }
        self.settings.sizer.observe(n, results.busy_nanos);
        self.deliver(job, list);
        self.maybe_recycle(slot);
    }

    /// With `max_tasks_per_child`, a worker that has had its quota and
    /// answered everything is told to stop; its replacement comes when it exits.
    fn maybe_recycle(&mut self, slot: usize) {
        let Some(max) = self.settings.max_tasks_per_child else {
            return;
        };
        let w = &mut self.workers[slot];
        if w.phase == Phase::Ready && w.assigned >= max && w.in_flight.is_empty() {
            if let Ok(bytes) = encode(&Request::Stop) {
                w.send(bytes);
            }
            w.phase = Phase::Draining;
            w.end = Some(WorkerEnd::Recycled(WorkerExit::Unknown));
            info!("worker pid={} recycled after {} records", w.pid, w.assigned);
        }
    }

    fn closed(&mut self, slot: usize, reason: Option<String>) {
        let phase = self.workers[slot].phase;
        if let Phase::Starting { .. } | Phase::Configuring { .. } = phase {
            let w = &mut self.workers[slot];
            let exit = w.reap();
            let reason = reason.map_or(HandshakeFailure::Exited(exit), HandshakeFailure::Protocol);
            self.start_failed(slot, reason);
            return;
        }
        if phase == Phase::Gone {
            return;
        }
        if let Some(reason) = reason {
            // Garbage on the channel: the worker is not trusted any more.
            let w = &mut self.workers[slot];
            error!("worker pid={} {reason}; killing it", w.pid);
            w.end.get_or_insert(WorkerEnd::ProtocolError(reason));
            w.kill();
        }
        let w = &mut self.workers[slot];
        w.writer = None;
        let exit = w.reap();
        w.phase = Phase::Gone;
        let pid = w.pid;
        let held: usize = w.in_flight.iter().map(|f| f.chunk.len() - f.done).sum();
        let held_seqs: Vec<u64> = w
            .in_flight
            .iter()
            .flat_map(|f| f.chunk.seqs[f.done..].iter().copied())
            .collect();
        let held_desc = match held_seqs.as_slice() {
            [] => "no records".to_owned(),
            [one] => format!("record #{one}"),
            [first, .., last] => format!("{held} records (#{first} to #{last})"),
        };
        let end = match w.end.take() {
            Some(WorkerEnd::Recycled(_)) => WorkerEnd::Recycled(exit),
            Some(end) => end,
            None if phase == Phase::Draining => WorkerEnd::Stopped(exit),
            None => WorkerEnd::Crashed(exit),
        };
        if let Some(s) = w.stats.and_then(|i| self.stats.get_mut(i)) {
            s.end(end.clone());
        }
        let since = w.in_flight.front().map_or_else(Instant::now, |f| {
            w.last_answer.map_or(f.sent, |a| a.max(f.sent))
        });
        let stats_index = w.stats;
        let in_flight: Vec<InFlight> = w.in_flight.drain(..).collect();
        match &end {
            WorkerEnd::Stopped(_) | WorkerEnd::Recycled(_) => {
                info!("worker pid={pid} exited ({exit}): {end}")
            }
            _ => warn!("worker pid={pid} ended: {end}; it held {held_desc}"),
        }
        let charge = matches!(end, WorkerEnd::Crashed(_) | WorkerEnd::ProtocolError(_))
            .then_some(Charge { pid, exit, since });
        let given_up = self.requeue(in_flight, charge);
        if let Some(s) = stats_index.and_then(|i| self.stats.get_mut(i)) {
            // A record given up was run, and failed, by this worker.
            s.records += given_up;
            s.failed += given_up;
        }
        let shutting_down = self.shutdown.as_ref().is_some_and(|s| s.deadline.is_some());
        if !shutting_down {
            self.respawn(slot);
        }
    }

    /// Put the records a worker held back in front of the queue. `charge`
    /// names the dead worker when the record(s) it was running are to blame.
    /// Returns how many records were given up (failed as `WorkerDied`).
    fn requeue(&mut self, in_flight: Vec<InFlight>, charge: Option<Charge>) -> u64 {
        let mut given_up = 0;
        let mut chunks: Vec<Chunk> = in_flight
            .into_iter()
            .map(|mut f| f.chunk.split_off(f.done))
            .filter(|c| !c.is_empty())
            .collect();
        let mut back = Vec::new();
        if let (Some(Charge { pid, exit, since }), false) = (charge, chunks.is_empty()) {
            let mut running = chunks.remove(0);
            if self.settings.record_timeout.is_some() && running.len() > 1 {
                // Record-by-record answers: the first unanswered record was running.
                chunks.insert(0, running.split_off(1));
            }
            if running.len() == 1 {
                // The one record that was running when the worker died.
                running.deaths += 1;
                if running.deaths > self.settings.retries {
                    let seq = running.seqs[0];
                    warn!(
                        "record #{seq} given up: {} workers died running it",
                        running.deaths
                    );
                    let error = RecordError::WorkerDied {
                        pid,
                        exit,
                        attempts: running.deaths,
                    };
                    given_up += 1;
                    self.deliver(
                        running.job,
                        vec![Completion::failed_running(seq, pid, error, since)],
                    );
                } else {
                    back.push(running);
                }
            } else {
                // Which record of the batch was running is unknown: nobody is
                // charged, and each is sent again alone, so that a poison
                // record is found by the deaths it causes by itself.
                back.extend(running.into_singletons());
            }
        }
        back.extend(chunks);
        if let Some(reason) = self.refusal() {
            for chunk in back {
                self.fail_chunk(chunk, reason.clone(), 0);
            }
            return given_up;
        }
        for chunk in back.into_iter().rev() {
            self.pending.push_front(chunk);
        }
        given_up
    }

    fn check_deadlines(&mut self) {
        let now = Instant::now();
        for slot in 0..self.workers.len() {
            let phase = self.workers[slot].phase;
            match phase {
                Phase::Starting { deadline } => {
                    let w = &mut self.workers[slot];
                    let exited = w.link.as_mut().and_then(|l| l.exited());
                    if let Some(exit) = exited {
                        self.start_failed(slot, HandshakeFailure::Exited(exit));
                    } else if now >= deadline {
                        let t = self.settings.handshake_timeout;
                        self.start_failed(slot, HandshakeFailure::NoHello(t));
                    }
                }
                Phase::Configuring { deadline } if now >= deadline => {
                    let t = self.settings.handshake_timeout;
                    self.start_failed(slot, HandshakeFailure::NoConfirmation(t));
                }
                Phase::Ready | Phase::Draining => self.check_record_timeout(slot, now),
                _ => {}
            }
        }
        if let Some(deadline) = self.cancel_deadline {
            if now >= deadline {
                self.cancel_deadline = None;
                for w in &mut self.workers {
                    if !w.in_flight.is_empty() && matches!(w.phase, Phase::Ready | Phase::Draining)
                    {
                        warn!(
                            "worker pid={} still busy after the grace period; killing it",
                            w.pid
                        );
                        w.end = Some(WorkerEnd::Killed);
                        w.phase = Phase::Exiting;
                        w.kill();
                    }
                }
            }
        }
    }

    fn check_record_timeout(&mut self, slot: usize, now: Instant) {
        let Some(timeout) = self.settings.record_timeout else {
            return;
        };
        let w = &mut self.workers[slot];
        let Some(started) = w.current_started else {
            return;
        };
        if now.duration_since(started) < timeout {
            return;
        }
        let Some(front) = w.in_flight.front_mut() else {
            return;
        };
        let seq = front.chunk.seqs[front.done];
        let job = front.chunk.job;
        front.done += 1;
        if front.done == front.chunk.len() {
            w.in_flight.pop_front();
        }
        let pid = w.pid;
        warn!(
            "record #{seq} timed out after {:.3} s; killing worker pid={pid}",
            timeout.as_secs_f64()
        );
        w.current_started = None;
        w.end = Some(WorkerEnd::TimedOut);
        w.phase = Phase::Exiting;
        w.kill();
        if let Some(s) = w.stats.and_then(|i| self.stats.get_mut(i)) {
            s.records += 1;
            s.failed += 1;
            s.busy += timeout;
        }
        self.deliver(
            job,
            vec![Completion::failed_running(
                seq,
                pid,
                RecordError::TimedOut {
                    pid,
                    after: timeout,
                },
                started,
            )],
        );
    }

    fn dispatch(&mut self) {
        if self.cancelled {
            return;
        }
        // A record that a worker died running ("suspect") goes to a fresh
        // worker when one is on its way, so that only deaths it causes
        // itself count against it (not, say, a worker's leak that kills it
        // at its Nth record whatever the record).
        let fresh_coming = self
            .workers
            .iter()
            .any(|w| matches!(w.phase, Phase::Starting { .. } | Phase::Configuring { .. }));
        while !self.pending.is_empty() {
            let limit = self.settings.in_flight;
            let max = self.settings.max_tasks_per_child;
            let eligible = |w: &Worker, suspect: bool| {
                w.phase == Phase::Ready
                    && w.in_flight.len() < limit
                    && max.is_none_or(|m| w.assigned < m)
                    && (!suspect || !fresh_coming || w.assigned == 0)
            };
            // The first of the next few queued chunks that some worker may take.
            let pick = self.pending.iter().take(64).enumerate().find_map(|(i, c)| {
                self.workers
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| eligible(w, c.deaths > 0))
                    .min_by_key(|(_, w)| (w.in_flight.len(), w.assigned))
                    .map(|(slot, _)| (i, slot))
            });
            let Some((index, slot)) = pick else { break };
            let Some(mut chunk) = self.pending.remove(index) else {
                break;
            };
            let w = &mut self.workers[slot];
            if let Some(m) = max {
                let quota = (m - w.assigned) as usize;
                if chunk.len() > quota {
                    let tail = chunk.split_off(quota);
                    self.pending.push_front(tail);
                }
            }
            let batch = self.next_batch;
            self.next_batch += 1;
            let mut buf = Vec::with_capacity(chunk.bytes() + 12 * chunk.len() + 16);
            if let Err(e) = encode_batch(batch, chunk.records(), &mut buf) {
                self.fail_chunk(chunk, RecordError::BadInput(e.to_string()), 0);
                continue;
            }
            w.send(buf);
            if self.settings.record_timeout.is_some() && w.in_flight.is_empty() {
                w.current_started = Some(Instant::now());
            }
            w.assigned += chunk.len() as u64;
            w.in_flight.push_back(InFlight {
                batch,
                sent: Instant::now(),
                chunk,
                done: 0,
            });
        }
    }

    /// Move shutdown along; returns `true` when the supervisor is done.
    fn advance_shutdown(&mut self) -> bool {
        let Some(state) = self.shutdown.as_mut() else {
            return false;
        };
        let busy = !self.pending.is_empty() || self.workers.iter().any(|w| !w.in_flight.is_empty());
        let starting = self
            .workers
            .iter()
            .any(|w| matches!(w.phase, Phase::Starting { .. } | Phase::Configuring { .. }));
        if state.deadline.is_none() {
            if busy && self.broken.is_none() {
                return false; // let submitted work finish first
            }
            if starting && self.broken.is_none() && !self.cancelled {
                return false;
            }
            state.deadline = Some(Instant::now() + state.grace);
            for w in &mut self.workers {
                match w.phase {
                    Phase::Ready => {
                        if let Ok(bytes) = encode(&Request::Stop) {
                            w.send(bytes);
                        }
                        w.phase = Phase::Draining;
                    }
                    Phase::Starting { .. } | Phase::Configuring { .. } => w.abandon(),
                    _ => {}
                }
            }
        }
        let deadline = state.deadline.unwrap_or_else(Instant::now);
        if Instant::now() >= deadline {
            let mut unfinished = Vec::new();
            for w in &mut self.workers {
                if w.phase != Phase::Gone {
                    warn!(
                        "worker pid={} did not stop within the grace period; killing it",
                        w.pid
                    );
                    w.end = Some(WorkerEnd::Killed);
                    w.kill();
                    // Its reader reports the close; reap right here all the same.
                    let exit = w.reap();
                    debug!("worker pid={} reaped: {exit}", w.pid);
                    w.link = None;
                    if let Some(s) = w.stats.and_then(|i| self.stats.get_mut(i)) {
                        s.end(WorkerEnd::Killed);
                    }
                    let in_flight: Vec<InFlight> = w.in_flight.drain(..).collect();
                    w.phase = Phase::Gone;
                    w.gen += 1;
                    for mut f in in_flight {
                        unfinished.push(f.chunk.split_off(f.done));
                    }
                }
            }
            for chunk in unfinished {
                self.fail_chunk(chunk, RecordError::Cancelled, 0);
            }
        }
        if self.workers.iter().all(|w| w.phase == Phase::Gone) {
            if let Some(reply) = self.shutdown.as_mut().and_then(|s| s.reply.take()) {
                let _ = reply.send(self.stats.clone());
            }
            return true;
        }
        false
    }
}
