//! The public face: `PoolBuilder`, `Pool`, its iterators and handles.

use std::future::Future;
use std::iter::FusedIterator;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::Duration;

use procpool_protocol::{
    encode_record_into, encode_value, Encoding, ParamsEncoding, Task, TaskInfo, TaskSpec, TaskTypes,
};

use crate::batch::{Batch, JobId, Sizer};
use crate::error::{PoolError, RecordError};
use crate::outcome::{Block, Outcome};
use crate::process::{LocalLauncher, OutputHandler};
use crate::reorder::InOrder;
use crate::stats::WorkerStats;
use crate::supervisor::{batch_queue, BatchSender, Command, Settings, Started, Supervisor};
use crate::transport::Event;

/// Configures and starts a [`Pool`].
#[derive(Clone)]
pub struct PoolBuilder {
    workers: usize,
    worker_bin: Option<PathBuf>,
    chunk_size: Option<usize>,
    in_flight: usize,
    handshake_timeout: Duration,
    record_timeout: Option<Duration>,
    record_times: bool,
    liveness_timeout: Duration,
    retries: u32,
    max_tasks_per_child: Option<u64>,
    shutdown_grace: Duration,
    output: Option<OutputHandler>,
    /// Workers write straight to our stderr ([`PoolBuilder::inherit_worker_output`]).
    inherit_output: bool,
    threads: usize,
    /// The task's Rust types, for the typed handshake (set by `build`).
    types: Option<TaskTypes>,
    #[cfg(feature = "mpi")]
    mpi: bool,
    #[cfg(feature = "mpi")]
    mpi_spawn: Option<usize>,
}

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("workers", &self.workers)
            .field("worker_bin", &self.worker_bin)
            .field("chunk_size", &self.chunk_size)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            workers: thread::available_parallelism().map_or(1, |n| n.get()),
            worker_bin: None,
            chunk_size: None,
            in_flight: 2,
            handshake_timeout: Duration::from_secs(5),
            record_timeout: None,
            record_times: true,
            liveness_timeout: Duration::from_secs(10),
            retries: 2,
            max_tasks_per_child: None,
            shutdown_grace: Duration::from_secs(5),
            output: None,
            inherit_output: false,
            threads: 1,
            types: None,
            #[cfg(feature = "mpi")]
            mpi: false,
            #[cfg(feature = "mpi")]
            mpi_spawn: None,
        }
    }
}

impl PoolBuilder {
    /// Defaults: one worker per CPU, adaptive chunk size, 2 batches in flight
    /// per worker, 5 s handshake deadline, no record timeout, 2 retries.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of worker processes (at least 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Path of the worker binary. A relative path is resolved against the
    /// current directory when [`build`](Self::build) runs (never looked up
    /// in `PATH`), and that file serves every worker of the pool, replacements
    /// included. Default: see [`default_worker_bin`].
    pub fn worker_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.worker_bin = Some(path.into());
        self
    }

    /// Fix the number of records per batch. Default: adapted to the measured
    /// cost per record (about 4 ms of work per batch, at most 4096 records
    /// and 384 KiB; 192 KiB over MPI).
    pub fn chunk_size(mut self, records: usize) -> Self {
        self.chunk_size = Some(records);
        self
    }

    /// Batches outstanding per worker (at least 1; default 2).
    pub fn in_flight(mut self, batches: usize) -> Self {
        self.in_flight = batches;
        self
    }

    /// Deadline for a worker to start, say hello and accept its task.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Per-record deadline: a record running longer fails as timed out and
    /// its worker is killed and replaced. Timed-out records are not retried.
    pub fn record_timeout(mut self, timeout: Duration) -> Self {
        self.record_timeout = Some(timeout);
        self
    }

    /// Whether workers time each record (default: yes). Without, every
    /// [`Outcome`]'s `duration` is zero and its `started_us` `None`, and a
    /// worker reads the clock once per batch instead of once per record:
    /// a few percent of a worker's time when records are tiny. Statistics
    /// ([`WorkerStats::busy`](crate::WorkerStats::busy)) are measured either way.
    pub fn record_times(mut self, on: bool) -> Self {
        self.record_times = on;
        self
    }

    /// Liveness: a worker that holds records and sends nothing for this
    /// long, and that is stopped (SIGSTOP, a debugger), is declared dead:
    /// killed, replaced, and its records sent again as after a crash.
    /// Default 10 s. Long records are not affected: a local worker's state
    /// is the kernel's word on it (`/proc`); where that cannot be read, and
    /// for MPI ranks, workers send a heartbeat every 500 ms from a thread of
    /// their own (more often when this timeout is under 2 s), and a worker
    /// silent for the timeout is declared dead.
    pub fn liveness_timeout(mut self, timeout: Duration) -> Self {
        self.liveness_timeout = timeout;
        self
    }

    /// How many times a record whose worker died is sent again before it fails.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Replace each worker after it has been given this many records.
    pub fn max_tasks_per_child(mut self, records: u64) -> Self {
        self.max_tasks_per_child = Some(records);
        self
    }

    /// How long `shutdown` and `cancel` wait for workers before killing them.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Threads each worker runs batches on (default 1). With `workers(1)`
    /// this is Python's `ThreadPoolExecutor`: one process, one set of
    /// process-wide locks, N tasks at a time. Batches in flight per worker
    /// are multiplied by it, to keep every thread busy.
    pub fn threads_per_worker(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Hand every line that workers write to stdout or stderr to `handler`
    /// (with the worker's pid), e.g. to print it above a progress bar.
    ///
    /// Without a handler, worker lines go through the `log` facade under the
    /// target `procpool::worker` ([`worker::WORKER_TARGET`](crate::worker::WORKER_TARGET)),
    /// at the level the worker logged them (plain output at `info`), each
    /// starting with `worker pid=<pid>:`; with no logger installed they are
    /// dropped, so a library user's stderr stays quiet.
    pub fn worker_output(mut self, handler: impl Fn(u32, &str) + Send + Sync + 'static) -> Self {
        self.output = Some(Arc::new(handler));
        self.inherit_output = false;
        self
    }

    /// Let local workers write straight to this process's stderr (their
    /// stdout goes there too, never to ours): what a command-line program
    /// whose stderr is its user's wants. The cheapest way, with no pipe and
    /// no reading per worker; the lines are as the workers wrote them, and
    /// the `log` facade never sees them. Undone by a later
    /// [`worker_output`](Self::worker_output).
    pub fn inherit_worker_output(mut self) -> Self {
        self.inherit_output = true;
        self
    }

    fn resolved_bin(&self) -> Result<PathBuf, PoolError> {
        let path = match &self.worker_bin {
            Some(p) => p.clone(),
            None => default_worker_bin().ok_or_else(|| PoolError::WorkerBinMissing {
                path: PathBuf::from("worker"),
            })?,
        };
        Ok(std::path::absolute(&path).unwrap_or(path))
    }

    fn validate(&self) -> Result<(), PoolError> {
        if self.workers == 0 {
            return Err(PoolError::Config("workers must be at least 1".into()));
        }
        if self.in_flight == 0 {
            return Err(PoolError::Config("in_flight must be at least 1".into()));
        }
        if self.threads == 0 {
            return Err(PoolError::Config(
                "threads per worker must be at least 1".into(),
            ));
        }
        if self.chunk_size == Some(0) {
            return Err(PoolError::Config("chunk size must be at least 1".into()));
        }
        if self.max_tasks_per_child == Some(0) {
            return Err(PoolError::Config(
                "max_tasks_per_child must be at least 1".into(),
            ));
        }
        if self.liveness_timeout.is_zero() {
            return Err(PoolError::Config(
                "the liveness timeout must be above zero".into(),
            ));
        }
        if self.record_timeout.is_some_and(|t| t.is_zero()) {
            return Err(PoolError::Config(
                "the record timeout must be above zero".into(),
            ));
        }
        Ok(())
    }

    /// Start the workers and configure `task` on each. Returns once every
    /// worker is ready, or with the first start-up error (missing binary,
    /// handshake failure or timeout, a task the worker does not offer).
    ///
    /// Each worker reports the Rust types of the tasks it offers; a worker
    /// whose task `T::NAME` has other task, input or output types than `T`
    /// is refused with [`PoolError::TaskTypesMismatch`] before it is sent
    /// anything. A failing [`Task::init`] fails here too
    /// ([`PoolError::TaskRejected`], naming the worker).
    pub fn build<T: Task>(mut self, task: T) -> Result<Pool<T>, PoolError> {
        self.types = Some(TaskTypes::of::<T>());
        let params = encode_value(&task).map_err(|e| PoolError::Encode(e.to_string()))?;
        let core = self.start(Some(TaskSpec {
            name: T::NAME.to_owned(),
            params,
            params_encoding: ParamsEncoding::Bincode,
            records: Encoding::Bincode,
            threads: 1,
        }))?;
        Ok(Pool {
            core,
            _task: PhantomData,
        })
    }

    /// Start one worker, read its handshake and stop it: what tasks does this
    /// worker binary offer?
    pub fn probe(self) -> Result<Vec<TaskInfo>, PoolError> {
        let core = self.workers(1).start(None)?;
        let offered = core.offered.clone();
        core.shutdown_inner();
        Ok(offered)
    }

    pub(crate) fn start(self, task: Option<TaskSpec>) -> Result<Core, PoolError> {
        let threads = u32::try_from(self.threads).unwrap_or(u32::MAX);
        let task = task.map(|spec| TaskSpec { threads, ..spec });
        #[cfg(feature = "mpi")]
        if self.mpi {
            return self.start_mpi(task);
        }
        self.validate()?;
        let bin = self.resolved_bin()?;
        crate::process::check_binary(&bin)?;
        crate::preflight::check_local(self.workers)?;
        let token = new_token()?;
        let output: Option<OutputHandler> = if self.inherit_output {
            None
        } else {
            Some(
                self.output
                    .clone()
                    .unwrap_or_else(|| Arc::new(forward_worker_line)),
            )
        };
        let launcher = Box::new(LocalLauncher::new(
            bin.clone(),
            token.clone(),
            output,
            self.workers,
            crate::transport::heartbeat_period(self.liveness_timeout),
        )?);
        self.start_with(task, bin, token, launcher)
    }

    /// Workers are the other ranks of this MPI job (rank 0 is this process):
    /// run under `mpirun -n 1 <this program> : -n N worker`. The worker count
    /// is the world size minus one. Record timeouts and recycling need
    /// worker processes that can be killed and replaced, which MPI ranks
    /// cannot be: they are refused.
    #[cfg(feature = "mpi")]
    pub fn mpi(mut self) -> Self {
        self.mpi = true;
        self
    }

    /// Like [`mpi`](Self::mpi), and if this process is alone in its MPI job
    /// (started on its own, or by `mpirun -n 1`), spawn `workers` ranks of
    /// the worker binary with `MPI_Comm_spawn` (where the MPI launcher or the
    /// allocation places them). A rank silent for the liveness timeout
    /// ([`liveness_timeout`](Self::liveness_timeout), or
    /// `PROCPOOL_MPI_LIVENESS` seconds if set) ends the job.
    #[cfg(feature = "mpi")]
    pub fn mpi_spawn(mut self, workers: usize) -> Self {
        self.mpi = true;
        self.mpi_spawn = Some(workers);
        self
    }

    #[cfg(feature = "mpi")]
    fn start_mpi(mut self, task: Option<TaskSpec>) -> Result<Core, PoolError> {
        if self.record_timeout.is_some() || self.max_tasks_per_child.is_some() {
            return Err(PoolError::Config(
                "record timeouts and max_tasks_per_child need local worker processes; MPI ranks cannot be killed or replaced one by one".into(),
            ));
        }
        // Resolved (and checked) only if the job turns out to need spawning.
        let spawn = self.mpi_spawn.map(|n| {
            let bin = self
                .resolved_bin()
                .and_then(|bin| crate::process::check_binary(&bin).map(|()| bin));
            (bin, n)
        });
        let liveness = crate::mpi::liveness_from_env(self.liveness_timeout)?;
        if let Some(job) = procpool_worker::node::one_node_job().map_err(PoolError::Config)? {
            return self.start_node(task, job, liveness);
        }
        // The MPI layer notices a silent rank first and ends the job in
        // order (a resumable output); the supervisor's own check, which
        // could only break the pool, stays a backstop.
        self.liveness_timeout = liveness * 2;
        let start = crate::mpi::MpiStart { spawn, liveness };
        let (events_tx, events_rx) = mpsc::channel::<Event>();
        let (launcher, ranks) = crate::mpi::MpiLauncher::start(events_tx.clone(), start)?;
        self.workers = ranks;
        self.start_on(
            task,
            PathBuf::from("<MPI ranks>"),
            String::new(),
            Box::new(launcher),
            events_tx,
            events_rx,
        )
    }

    /// Every rank of this MPI launch runs on this machine: the worker ranks
    /// connect over the local channels, without MPI (see `node`).
    #[cfg(feature = "mpi")]
    fn start_node(
        mut self,
        task: Option<TaskSpec>,
        job: procpool_worker::node::NodeJob,
        liveness: Duration,
    ) -> Result<Core, PoolError> {
        let token = new_token()?;
        let (launcher, ranks) = crate::node::NodeLauncher::new(job, token.clone(), liveness)?;
        if let Some(n) = self.mpi_spawn.filter(|&n| n != ranks) {
            log::warn!(
                "--workers {n} ignored: the workers are the other {ranks} ranks of this MPI job"
            );
        }
        crate::preflight::check_local(ranks)?;
        self.workers = ranks;
        self.liveness_timeout = liveness;
        self.start_with(
            task,
            PathBuf::from("<MPI ranks>"),
            token,
            Box::new(launcher),
        )
    }

    /// Start a pool whose workers come from `launcher` (the transport seam).
    pub(crate) fn start_with(
        self,
        task: Option<TaskSpec>,
        bin: PathBuf,
        token: String,
        launcher: Box<dyn crate::transport::Launcher>,
    ) -> Result<Core, PoolError> {
        let (events_tx, events_rx) = mpsc::channel::<Event>();
        self.start_on(task, bin, token, launcher, events_tx, events_rx)
    }

    fn start_on(
        self,
        task: Option<TaskSpec>,
        bin: PathBuf,
        token: String,
        launcher: Box<dyn crate::transport::Launcher>,
        events_tx: Sender<Event>,
        events_rx: Receiver<Event>,
    ) -> Result<Core, PoolError> {
        self.validate()?;
        let sizer = Arc::new(Sizer::new(self.chunk_size, launcher.max_batch_bytes()));
        let in_flight = self.in_flight.saturating_mul(self.threads);
        let settings = Settings {
            bin,
            workers: self.workers,
            in_flight,
            handshake_timeout: self.handshake_timeout,
            record_timeout: self.record_timeout,
            record_times: self.record_times,
            liveness_timeout: self.liveness_timeout,
            retries: self.retries,
            max_tasks_per_child: self.max_tasks_per_child,
            task,
            types: self.types.clone(),
            token,
            sizer: sizer.clone(),
            launcher,
        };
        let (started_tx, started_rx) = mpsc::channel::<Result<Started, PoolError>>();
        let (batches, queue) = batch_queue(events_tx.clone());
        let supervisor = Supervisor::new(settings, events_tx.clone(), queue, started_tx);
        let thread = thread::Builder::new()
            .name("procpool-supervisor".into())
            .spawn(move || supervisor.run(events_rx))
            .map_err(PoolError::Ipc)?;
        // The supervisor enforces the handshake deadline (a worker that fails
        // to start is replaced, up to three in a row); this one only guards
        // against the supervisor itself going wrong.
        let started = started_rx
            .recv_timeout(self.handshake_timeout * 4 + Duration::from_secs(10))
            .map_err(|_| PoolError::SupervisorGone)??;
        Ok(Core {
            events: events_tx,
            batches,
            thread: Some(thread),
            sizer,
            pids: started.pids,
            offered: started.offered,
            workers: self.workers,
            in_flight,
            grace: self.shutdown_grace,
            next_job: AtomicU64::new(0),
        })
    }
}

/// A run's token, which its workers present in their `Hello`.
fn new_token() -> Result<String, PoolError> {
    let mut token = [0u8; 16];
    getrandom::fill(&mut token)
        .map_err(|e| PoolError::Ipc(std::io::Error::other(e.to_string())))?;
    Ok(token.iter().map(|b| format!("{b:02x}")).collect())
}

/// The worker binary a pool built without [`PoolBuilder::worker_bin`] starts:
/// the current executable when it called [`init`](crate::init) (it is its own
/// worker), otherwise the `worker` binary next to the current executable (or
/// one directory up, for test and example binaries in `target/*/deps` and
/// `target/*/examples`).
pub fn default_worker_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    if procpool_worker::is_self_hosted() {
        return Some(exe);
    }
    let dir = exe.parent()?;
    [dir.join("worker"), dir.parent()?.join("worker")]
        .into_iter()
        .find(|p| p.is_file())
        .or_else(|| Some(dir.join("worker")))
}

/// The default destination of a worker's output lines: the `log` facade.
/// A worker's own log line (`<time> <LEVEL> worker pid=<pid>: <message>`)
/// keeps its level and drops its time stamp; any other line is `info`.
fn forward_worker_line(pid: u32, line: &str) {
    let target = procpool_worker::WORKER_TARGET;
    let mut parts = line.splitn(3, ' ');
    let (stamp, level, rest) = (parts.next(), parts.next(), parts.next());
    let logged = stamp.is_some_and(|t| t.starts_with(|c: char| c.is_ascii_digit()));
    match (
        logged,
        level.and_then(|l| l.parse::<log::Level>().ok()),
        rest,
    ) {
        (true, Some(level), Some(rest)) => {
            log::log!(target: target, level, "{}", rest.trim_start())
        }
        _ => log::info!(target: target, "worker pid={pid}: {line}"),
    }
}

/// Whether a worker offering `offered` can run task `name`: it offers the
/// name, and with the same Rust types when both sides know them (`types` is
/// `None` for a pool that moves raw bytes).
pub(crate) fn check_offer(
    name: &str,
    types: Option<&TaskTypes>,
    offered: &[TaskInfo],
    bin: &Path,
) -> Result<(), PoolError> {
    let Some(info) = offered.iter().find(|t| t.name == name) else {
        return Err(PoolError::TaskNotOffered {
            task: name.to_owned(),
            bin: bin.to_owned(),
            offered: offered.iter().map(|t| t.name.clone()).collect(),
        });
    };
    match types {
        Some(ours) if !info.types.is_unknown() && *ours != info.types => {
            Err(PoolError::TaskTypesMismatch {
                task: name.to_owned(),
                bin: bin.to_owned(),
                pool: Box::new(ours.clone()),
                worker: Box::new(info.types.clone()),
            })
        }
        _ => Ok(()),
    }
}

pub(crate) struct Core {
    pub(crate) events: Sender<Event>,
    batches: BatchSender,
    thread: Option<thread::JoinHandle<()>>,
    pub(crate) sizer: Arc<Sizer>,
    pub(crate) pids: Vec<u32>,
    offered: Vec<TaskInfo>,
    pub(crate) workers: usize,
    pub(crate) in_flight: usize,
    pub(crate) grace: Duration,
    next_job: AtomicU64,
}

impl Core {
    pub(crate) fn send(&self, command: Command) -> bool {
        self.events.send(Event::Command(command)).is_ok()
    }

    /// Queue a batch for the supervisor; `false` once it is gone.
    pub(crate) fn send_batch(&self, batch: Batch) -> bool {
        self.batches.send(batch)
    }

    pub(crate) fn new_job(&self) -> (JobId, Receiver<Block>) {
        self.new_job_signalled(None)
    }

    fn new_job_signalled(&self, signal: Option<Arc<Signal>>) -> (JobId, Receiver<Block>) {
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        // On the batch queue, ahead of the job's batches.
        self.batches.new_job(id, JobSink { tx, signal });
        (id, rx)
    }

    pub(crate) fn offered(&self) -> &[TaskInfo] {
        &self.offered
    }

    pub(crate) fn canceller(&self) -> Canceller {
        Canceller {
            events: self.events.clone(),
            grace: self.grace,
        }
    }

    pub(crate) fn shutdown_inner(mut self) -> Vec<WorkerStats> {
        self.stop()
    }

    fn stop(&mut self) -> Vec<WorkerStats> {
        let Some(thread) = self.thread.take() else {
            return Vec::new();
        };
        let (tx, rx) = mpsc::channel();
        let mut stats = Vec::new();
        if self.send(Command::Shutdown {
            grace: self.grace,
            reply: tx,
        }) {
            // Bounded: the supervisor kills what does not stop within the grace period.
            if let Ok(s) = rx.recv() {
                stats = s;
            }
        }
        let _ = thread.join();
        stats
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

/// Where the supervisor delivers one job's completions. Sending (and
/// dropping, when the job ends or the supervisor goes) wakes a task awaiting
/// a [`Pending`].
pub(crate) struct JobSink {
    tx: Sender<Block>,
    signal: Option<Arc<Signal>>,
}

impl JobSink {
    /// Deliver `block`; whether the job still listens.
    pub(crate) fn send(&self, block: Block) -> bool {
        let sent = self.tx.send(block).is_ok();
        if let Some(signal) = &self.signal {
            signal.raise();
        }
        sent
    }
}

impl Drop for JobSink {
    fn drop(&mut self) {
        if let Some(signal) = &self.signal {
            signal.raise();
        }
    }
}

/// State shared by a [`Pending`] and its job's sink.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    done: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Signal {
    fn raise(&self) {
        self.done.store(true, Ordering::Release);
        let waker = self.waker.lock().ok().and_then(|mut w| w.take());
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn register(&self, waker: &Waker) {
        if let Ok(mut slot) = self.waker.lock() {
            match slot.as_ref() {
                Some(w) if w.will_wake(waker) => {}
                _ => *slot = Some(waker.clone()),
            }
        }
    }
}

/// A pool of worker processes running task `T`.
///
/// Dropping the pool shuts it down as [`Pool::shutdown`] does. A pool is
/// `Send + Sync`: share it by reference (or in an `Arc`) between threads.
pub struct Pool<T: Task> {
    core: Core,
    _task: PhantomData<fn(T)>,
}

impl<T: Task> std::fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("task", &T::NAME)
            .field("workers", &self.core.workers)
            .field("pids", &self.core.pids)
            .finish_non_exhaustive()
    }
}

#[allow(dead_code)]
fn pool_is_send_and_sync<T: Task>() {
    fn check<X: Send + Sync>() {}
    check::<Pool<T>>();
    check::<PoolBuilder>();
    check::<Canceller>();
}

impl<T: Task> Pool<T> {
    #[cfg(test)]
    pub(crate) fn from_core(core: Core) -> Self {
        Pool {
            core,
            _task: PhantomData,
        }
    }

    /// Results in input order, as an iterator. The input is consumed lazily:
    /// only a bounded window of records is in flight or waiting to be
    /// reordered, whatever the input's size.
    pub fn map<I>(&self, inputs: I) -> Map<'_, T, I::IntoIter>
    where
        I: IntoIterator<Item = T::Input>,
    {
        Map(self.map_detailed(inputs))
    }

    /// As [`Pool::map`], with each result's position, worker pid and timing.
    pub fn map_detailed<I>(&self, inputs: I) -> MapIter<'_, T, I::IntoIter>
    where
        I: IntoIterator<Item = T::Input>,
    {
        MapIter::new(self, inputs.into_iter(), true)
    }

    /// Results as they complete, each with its position in the input.
    pub fn map_unordered<I>(&self, inputs: I) -> MapIter<'_, T, I::IntoIter>
    where
        I: IntoIterator<Item = T::Input>,
    {
        MapIter::new(self, inputs.into_iter(), false)
    }

    /// Submit one record; wait on the returned handle for its result (or
    /// `.await` it). Dropping the handle withdraws the record.
    pub fn submit(&self, input: T::Input) -> Pending<T::Output> {
        let signal = Arc::new(Signal::default());
        let (job, rx) = self.core.new_job_signalled(Some(signal.clone()));
        let mut batch = Batch::new(job);
        let early = match batch.push_with(0, |buf| encode_record_into(&input, buf)) {
            Ok(()) => {
                if !self.core.send_batch(batch) {
                    Some(RecordError::PoolBroken("the pool is shut down".into()))
                } else {
                    None
                }
            }
            Err(e) => Some(RecordError::BadInput(e.to_string())),
        };
        Pending {
            rx,
            early,
            signal,
            events: self.core.events.clone(),
            job,
            _out: PhantomData,
        }
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.core.workers
    }

    /// Process ids of the workers started with the pool.
    pub fn pids(&self) -> &[u32] {
        &self.core.pids
    }

    /// The tasks the worker binary offers (from its handshake).
    pub fn offered_tasks(&self) -> &[TaskInfo] {
        &self.core.offered
    }

    /// Statistics of every worker that has run so far.
    pub fn stats(&self) -> Vec<WorkerStats> {
        let (tx, rx) = mpsc::channel();
        if self.core.send(Command::Stats(tx)) {
            rx.recv().unwrap_or_default()
        } else {
            Vec::new()
        }
    }

    /// A handle that can cancel the pool's work from another thread (e.g. a
    /// signal handler thread).
    pub fn canceller(&self) -> Canceller {
        Canceller {
            events: self.core.events.clone(),
            grace: self.core.grace,
        }
    }

    /// Let submitted work finish, stop every worker (killing those that do
    /// not exit within the grace period), reap them, and return statistics.
    pub fn shutdown(self) -> Vec<WorkerStats> {
        self.core.shutdown_inner()
    }
}

/// Cancels a pool's work from any thread.
#[derive(Debug, Clone)]
pub struct Canceller {
    events: Sender<Event>,
    grace: Duration,
}

impl Canceller {
    /// Stop dispatching: queued records end as cancelled, records in flight
    /// may finish within the grace period, then their workers are killed.
    /// A second call kills at once.
    pub fn cancel(&self) {
        let _ = self
            .events
            .send(Event::Command(Command::Cancel { grace: self.grace }));
    }
}

/// The result of one [`Pool::submit`]: wait on it, poll it, or `.await` it
/// (it is a [`Future`] that needs no particular async runtime: the pool's
/// supervisor wakes it). Dropping it withdraws the record.
#[must_use = "dropping a `Pending` withdraws its record: wait on it or await it"]
pub struct Pending<O> {
    rx: Receiver<Block>,
    early: Option<RecordError>,
    signal: Arc<Signal>,
    events: Sender<Event>,
    job: JobId,
    _out: PhantomData<fn() -> O>,
}

impl<O> std::fmt::Debug for Pending<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("job", &self.job)
            .field("done", &self.is_done())
            .finish_non_exhaustive()
    }
}

impl<O> Pending<O> {
    /// Whether the result is there (or the record ended otherwise): then
    /// [`wait`](Self::wait) returns at once.
    pub fn is_done(&self) -> bool {
        self.early.is_some() || self.signal.done.load(Ordering::Acquire)
    }
}

/// What a job's channel says, for one record.
fn single<O: serde::de::DeserializeOwned>(received: Result<Block, ()>) -> Result<O, RecordError> {
    match received {
        Ok(block) if block.len() == 1 => block.outcome(0, 0, |i| block.decode(i)).result,
        Ok(_) => Err(RecordError::Cancelled),
        Err(()) => Err(RecordError::PoolBroken("the pool is shut down".into())),
    }
}

impl<O: serde::de::DeserializeOwned> Pending<O> {
    /// The result if it is there, without waiting; otherwise the handle back.
    pub fn try_wait(mut self) -> Result<Result<O, RecordError>, Self> {
        if let Some(e) = self.early.take() {
            return Ok(Err(e));
        }
        match self.rx.try_recv() {
            Ok(list) => Ok(single(Ok(list))),
            Err(mpsc::TryRecvError::Empty) => Err(self),
            Err(mpsc::TryRecvError::Disconnected) => Ok(single(Err(()))),
        }
    }

    /// Wait for the result. Bounded by the pool: every record ends (with a
    /// record timeout, within it), and a pool shut down ends it too.
    pub fn wait(mut self) -> Result<O, RecordError> {
        if let Some(e) = self.early.take() {
            return Err(e);
        }
        single(self.rx.recv().map_err(|_| ()))
    }

    /// Wait at most `timeout`; on timeout the handle is given back.
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<Result<O, RecordError>, Self> {
        if let Some(e) = self.early.take() {
            return Ok(Err(e));
        }
        match self.rx.recv_timeout(timeout) {
            Ok(list) => Ok(single(Ok(list))),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(self),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(single(Err(()))),
        }
    }
}

impl<O: serde::de::DeserializeOwned> Future for Pending<O> {
    type Output = Result<O, RecordError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(e) = this.early.take() {
            return Poll::Ready(Err(e));
        }
        for attempt in 0..2 {
            match this.rx.try_recv() {
                Ok(list) => return Poll::Ready(single(Ok(list))),
                Err(mpsc::TryRecvError::Disconnected) => return Poll::Ready(single(Err(()))),
                // Register, then look again: a delivery between the first
                // look and the registration would otherwise wake nobody.
                Err(mpsc::TryRecvError::Empty) if attempt == 0 => this.signal.register(cx.waker()),
                Err(mpsc::TryRecvError::Empty) => {}
            }
        }
        Poll::Pending
    }
}

impl<O> Drop for Pending<O> {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Command(Command::EndJob(self.job)));
    }
}

/// The iterator of [`Pool::map`]: results in input order.
pub struct Map<'p, T: Task, I>(MapIter<'p, T, I>);

impl<T: Task, I: Iterator<Item = T::Input>> Iterator for Map<'_, T, I> {
    type Item = Result<T::Output, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|d| d.result)
    }
}

impl<T: Task, I: Iterator<Item = T::Input>> FusedIterator for Map<'_, T, I> {}

impl<T: Task, I> std::fmt::Debug for Map<'_, T, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Map").field(&self.0).finish()
    }
}

/// The iterator behind [`Pool::map_detailed`] and [`Pool::map_unordered`].
pub struct MapIter<'p, T: Task, I> {
    pool: &'p Pool<T>,
    input: Option<I>,
    job: JobId,
    rx: Receiver<Block>,
    ordered: bool,
    reorder: InOrder,
    /// Results ready to be yielded: in order, or as they arrived.
    arrived: std::collections::VecDeque<Outcome<T::Output>>,
    /// Unordered only: records sent and not yet arrived, so that they can be
    /// reported if the supervisor goes away.
    unanswered: std::collections::BTreeSet<u64>,
    next_seq: u64,
    yielded: u64,
}

impl<'p, T: Task, I: Iterator<Item = T::Input>> MapIter<'p, T, I> {
    fn new(pool: &'p Pool<T>, input: I, ordered: bool) -> Self {
        let (job, rx) = pool.core.new_job();
        MapIter {
            pool,
            input: Some(input),
            job,
            rx,
            ordered,
            reorder: InOrder::default(),
            arrived: Default::default(),
            unanswered: Default::default(),
            next_seq: 0,
            yielded: 0,
        }
    }

    /// Records read from the input but not yet yielded, at most.
    fn window(&self) -> u64 {
        let core = &self.pool.core;
        (core.sizer.batch_size() * core.workers * (core.in_flight + 1)) as u64
    }

    /// Read input and send whole batches while the window has room for one.
    fn top_up(&mut self) {
        loop {
            let size = self.pool.core.sizer.batch_size() as u64;
            let outstanding = self.next_seq - self.yielded;
            // Wait for room for a whole batch: topping up record by record as
            // results are yielded would send one-record batches.
            if self.input.is_none() || (outstanding > 0 && outstanding + size > self.window()) {
                break;
            }
            let mut batch = Batch::new(self.job);
            while (batch.len() as u64) < size && batch.bytes() < self.pool.core.sizer.max_bytes() {
                let Some(item) = self.input.as_mut().and_then(Iterator::next) else {
                    self.input = None;
                    break;
                };
                let seq = self.next_seq;
                self.next_seq += 1;
                if !self.ordered {
                    self.unanswered.insert(seq);
                }
                if let Err(e) = batch.push_with(seq, |buf| encode_record_into(&item, buf)) {
                    // Never sent: fails here, in its place.
                    self.accept(Block::failed(seq, 0, RecordError::BadInput(e.to_string())));
                }
            }
            if !batch.is_empty() && !self.pool.core.send_batch(batch) {
                // The supervisor is gone: nothing more will arrive.
                self.input = None;
            }
        }
    }

    fn accept(&mut self, block: Block) {
        if self.ordered {
            self.reorder.insert(block);
        } else {
            for seq in &block.seqs {
                self.unanswered.remove(seq);
            }
            let all = block.outcomes(0..block.len(), 0, |i| block.decode::<T::Output>(i));
            self.arrived.extend(all);
        }
    }

    fn take_ready(&mut self) -> Option<Outcome<T::Output>> {
        if self.arrived.is_empty() && self.ordered {
            // A whole run at once: one step of the reorder per message.
            let run = self.reorder.pop_run(usize::MAX)?;
            let block = run.block;
            let all = block.outcomes(run.range, run.offset_ns, |i| block.decode::<T::Output>(i));
            self.arrived.extend(all);
        }
        self.arrived.pop_front()
    }
}

impl<T: Task, I: Iterator<Item = T::Input>> Iterator for MapIter<'_, T, I> {
    type Item = Outcome<T::Output>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.top_up();
            if let Some(c) = self.take_ready() {
                self.yielded += 1;
                return Some(c);
            }
            if self.input.is_none() && self.yielded == self.next_seq {
                return None;
            }
            // Bounded by the supervisor, which ends every record it holds
            // (result, failure, timeout, cancel) and closes the channel if it dies.
            match self.rx.recv() {
                Ok(block) => self.accept(block),
                Err(_) => {
                    // Supervisor gone: what is missing ends as broken.
                    let missing = self.reorder.next_seq();
                    self.input = None;
                    let broken = |seq| {
                        Block::failed(seq, 0, RecordError::PoolBroken("the pool stopped".into()))
                    };
                    if self.ordered && missing < self.next_seq {
                        self.accept(broken(missing));
                    } else if !self.unanswered.is_empty() {
                        for seq in std::mem::take(&mut self.unanswered) {
                            self.accept(broken(seq));
                        }
                    } else {
                        return None;
                    }
                }
            }
        }
    }
}

impl<T: Task, I: Iterator<Item = T::Input>> FusedIterator for MapIter<'_, T, I> {}

impl<T: Task, I> std::fmt::Debug for MapIter<'_, T, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapIter")
            .field("task", &T::NAME)
            .field("ordered", &self.ordered)
            .field("sent", &self.next_seq)
            .field("yielded", &self.yielded)
            .finish_non_exhaustive()
    }
}

impl<T: Task, I> Drop for MapIter<'_, T, I> {
    fn drop(&mut self) {
        self.pool.core.send(Command::EndJob(self.job));
    }
}
