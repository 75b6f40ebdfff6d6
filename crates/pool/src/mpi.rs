//! The MPI backend (cargo feature `mpi`): workers are MPI ranks reached
//! through the same transport seam as local worker processes. They are
//! either the other ranks of this coordinator's job (`mpirun -n 1
//! coordinator : -n N worker`, or Slurm's `srun --multi-prog`), or, when the
//! coordinator is alone in its job (a singleton, or `mpirun -n 1`), N ranks
//! it spawns itself with `MPI_Comm_spawn`. Either way they are ranks 1..N of
//! one communicator whose rank 0 is this coordinator.
//!
//! All MPI calls of the coordinator happen on one thread (`procpool-mpi`,
//! which initialises MPI with `Threading::Funneled`): it sends with
//! non-blocking `MPI_Isend` (so it never blocks on a worker busy computing),
//! probes for messages from any rank, and turns them into the supervisor's
//! events (results decoded in place, as on the local backend). Between
//! rounds it waits on its command channel, which also carries every message
//! for a rank (a small thread per rank forwards its worker's sender), so a
//! batch goes out the moment the supervisor hands it over; only the probes
//! of the ranks are timed (`Backoff`), because MPI has no wait that does
//! not spin. A worker answers `Stop` with an empty `TAG_BYE` message, which
//! stands for the closed channel of the local backend, and waits; once every
//! worker has, the coordinator answers each with a `TAG_BYE` of its own,
//! and only then do they all enter `MPI_Finalize` (see
//! `MpiThread::release`).
//!
//! Liveness: both sides send a heartbeat every `liveness / 4` (at most every
//! 500 ms), from a thread of their own on the worker, so a rank busy in a
//! long task still beats. A rank that sends nothing for the liveness timeout
//! (stopped, hung, or cut off by the network) ends the job: the supervisor
//! is told to stop at once (so the output is an ordered prefix that
//! `--resume` completes), and the job is aborted with `MPI_Abort` (only
//! this coordinator, rank 0, ever aborts: see `abort`). Workers end
//! themselves, exiting with an error, when the coordinator goes silent.
//!
//! Right after `MPI_Init`, Nagle's algorithm is turned off on every TCP
//! socket of the process (`procpool_worker::mpi::tcp_no_delay`: the MPI
//! library's connection to its launcher, on which `MPI_Finalize` otherwise
//! waits 40 ms for a delayed acknowledgement).
//!
//! What MPI cannot do: replace a worker (a rank that dies aborts the whole
//! job; `--resume` continues it), kill one worker (so no record timeout),
//! or recycle workers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

use mpi::point_to_point::Destination;
use mpi::raw::{AsRaw, FromRaw};
use mpi::request::{Request, StaticScope};
use mpi::topology::{InterCommunicator, MergeOrder, SimpleCommunicator};
use mpi::traits::*;
use mpi::{Rank, Tag, Threading};
use procpool_protocol::WorkerMessage;

use crate::error::{PoolError, WorkerExit};
use crate::supervisor::Command;
use crate::transport::{
    decode_from_worker, decode_results, heartbeat_period, Event, Launcher, Link, Outgoing,
};

use procpool_protocol::{
    mpi_probe_wait, MPI_TAG_BYE as TAG_BYE, MPI_TAG_DATA as TAG_DATA,
    MPI_TAG_HEARTBEAT as TAG_HEARTBEAT,
};

/// Environment variable: seconds a rank may stay silent before the job is
/// ended (default: the pool's `liveness_timeout`, 10 s).
pub const ENV_LIVENESS: &str = "PROCPOOL_MPI_LIVENESS";
/// The exit code of an MPI job this coordinator aborted after a failure
/// (a rank dead, silent or stuck): the output holds every record finished
/// before it, in order, and the same command with `--resume` continues it.
/// (`EX_TEMPFAIL`: a relaunch loop can tell it from bad input or options.)
pub const EXIT_RELAUNCH: i32 = 75;

/// A turn of the MPI thread (a wait of at most a millisecond) that took
/// longer than this (or half the liveness timeout) means the process was
/// not running.
const SUSPENDED: Duration = Duration::from_millis(500);

use procpool_worker::node::HOW_TO_LAUNCH;

/// Whether this process was started by an MPI launcher.
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// Whether every rank of this MPI launch runs on this machine, so that its
/// ranks talk over the local channels without MPI (see
/// `procpool_worker::node`).
pub fn on_one_machine() -> bool {
    matches!(procpool_worker::node::one_node_job(), Ok(Some(_)))
}

/// Set when the launcher is ending the job (e.g. the coordinator got
/// SIGTERM from `mpirun` or Slurm because a rank failed).
static JOB_ENDING: AtomicBool = AtomicBool::new(false);

/// The MPI job is being torn down (SIGTERM from the launcher): stop at once
/// without waiting out the grace period on ranks that cannot be killed one
/// by one, keep the records finished so far, and abort the job.
pub fn end_job() {
    JOB_ENDING.store(true, Ordering::SeqCst);
    crate::node::end_job();
}

/// Whether [`end_job`] was called.
pub(crate) fn job_ending() -> bool {
    JOB_ENDING.load(Ordering::SeqCst)
}

/// The liveness timeout from [`ENV_LIVENESS`], or `default` (the pool's).
pub(crate) fn liveness_from_env(default: Duration) -> Result<Duration, PoolError> {
    match std::env::var(ENV_LIVENESS) {
        Err(_) => Ok(default),
        Ok(s) => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0 && *v < 1e6)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                PoolError::Config(format!(
                    "{ENV_LIVENESS}={s}: expected a number of seconds > 0"
                ))
            }),
    }
}

enum Cmd {
    Attach {
        rank: Rank,
        slot: usize,
        generation: u64,
    },
    /// A message for a rank from its worker's sender (forwarded, in order,
    /// by a thread per rank: so the MPI thread can wait on this one channel
    /// and send a batch the moment the supervisor hands it over).
    Send { rank: Rank, message: Vec<u8> },
    /// Give up on a rank (the supervisor "killed" it): report it closed.
    Abandon { rank: Rank },
    /// The pool is done with MPI: finalise (or abort) and end the thread.
    Finish,
}

/// What the coordinator asks of MPI at start-up.
pub(crate) struct MpiStart {
    /// Spawn this many ranks of this binary if the job has no worker ranks.
    pub spawn: Option<(Result<PathBuf, PoolError>, usize)>,
    /// How long a rank may stay silent.
    pub liveness: Duration,
}

/// Starts (attaches to) worker ranks and runs the MPI thread.
pub(crate) struct MpiLauncher {
    cmds: Option<Sender<Cmd>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl MpiLauncher {
    /// Initialise MPI on its own thread (spawning workers if asked and
    /// needed); returns the launcher and the number of worker ranks.
    pub fn start(
        events: Sender<Event>,
        start: MpiStart,
    ) -> Result<(MpiLauncher, usize), PoolError> {
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("procpool-mpi".into())
            .spawn(move || mpi_thread(cmd_rx, events, ready_tx, start))
            .map_err(PoolError::Ipc)?;
        let workers = ready_rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| {
                PoolError::Config(
                    "MPI did not initialise (or spawn its workers) within 60 s".into(),
                )
            })??;
        Ok((
            MpiLauncher {
                cmds: Some(cmd_tx),
                thread: Some(thread),
            },
            workers,
        ))
    }
}

impl Drop for MpiLauncher {
    fn drop(&mut self) {
        // The links hold senders too: say it rather than close the channel.
        if let Some(cmds) = self.cmds.take() {
            let _ = cmds.send(Cmd::Finish);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Launcher for MpiLauncher {
    fn launch(
        &mut self,
        slot: usize,
        generation: u64,
        events: &Sender<Event>,
    ) -> Result<Box<dyn Link>, PoolError> {
        let (tx, rx) = mpsc::channel::<Outgoing>();
        let rank = Rank::try_from(slot + 1)
            .map_err(|_| PoolError::Config(format!("no MPI rank for worker {slot}")))?;
        let cmds = self
            .cmds
            .clone()
            .ok_or_else(|| PoolError::Config("the MPI thread is gone".into()))?;
        // Ends when the supervisor drops the sender (or the MPI thread is gone).
        let forward = cmds.clone();
        thread::Builder::new()
            .name(format!("procpool-mpi-{rank}"))
            // It only moves messages: a small stack, for jobs of many ranks.
            .stack_size(64 << 10)
            .spawn(move || {
                for message in rx {
                    // MPI keeps the bytes until the send completes.
                    let message = message.into_vec();
                    if forward.send(Cmd::Send { rank, message }).is_err() {
                        break;
                    }
                }
            })
            .map_err(PoolError::Ipc)?;
        // Accepted before the attach: once attached, the rank's Hello (which
        // may be waiting already) goes to the supervisor, which must know the
        // worker by then. (A message for the rank may reach the MPI thread
        // before the attach: it is sent all the same.)
        let _ = events.send(Event::Accepted {
            slot,
            generation,
            result: Ok(tx),
        });
        cmds.send(Cmd::Attach {
            rank,
            slot,
            generation,
        })
        .map_err(|_| PoolError::Config("the MPI thread is gone".into()))?;
        Ok(Box::new(MpiLink { rank, cmds }))
    }

    fn respawns(&self) -> bool {
        false
    }
}

struct MpiLink {
    rank: Rank,
    cmds: Sender<Cmd>,
}

impl Link for MpiLink {
    fn pid(&self) -> u32 {
        0 // learnt from the rank's Hello
    }
    fn label(&self) -> String {
        format!("rank {}", self.rank)
    }
    fn kill(&mut self) {
        // A rank cannot be killed alone: give up on it now (it is reported
        // closed at once, so nothing waits for it), and the MPI thread
        // aborts the job at the end instead of finalising.
        let _ = self.cmds.send(Cmd::Abandon { rank: self.rank });
    }
    fn exited(&mut self) -> Option<WorkerExit> {
        None
    }
    fn reap(&mut self, _patience: Duration) -> WorkerExit {
        WorkerExit::Code(0)
    }
    fn abandon(&mut self) {
        self.kill();
    }
}

struct Peer {
    rank: Rank,
    slot: usize,
    generation: u64,
    first: bool,
    /// Reported closed to the supervisor.
    closed: bool,
    /// Said goodbye (so it will finalise with us).
    clean: bool,
}

/// What the MPI thread knows of every rank of the communicator.
struct RankState {
    last_heard: Instant,
    /// "pid P on host H", from its Hello.
    name: Option<String>,
    bye: bool,
}

/// Open the communicator whose ranks 1..N are the workers: the world, or
/// the merge with ranks spawned here. Returns the number of worker ranks.
fn open(
    universe: &mpi::environment::Universe,
    spawn: Option<(Result<PathBuf, PoolError>, usize)>,
) -> Result<(SimpleCommunicator, usize), PoolError> {
    let world = universe.world();
    let (rank, size) = (world.rank(), world.size() as usize);
    if rank != 0 {
        return Err(PoolError::Config(format!(
            "this coordinator is rank {rank} of an MPI job of {size}: there must be one coordinator, at rank 0; {HOW_TO_LAUNCH}"
        )));
    }
    if size > 1 {
        if let Some((_, n)) = spawn {
            if n != size - 1 {
                log::warn!(
                    "--workers {n} ignored: the workers are the other {} ranks of this MPI job",
                    size - 1
                );
            }
        }
        return Ok((world, size - 1));
    }
    let Some((bin, n)) = spawn else {
        return Err(PoolError::Config(format!(
            "this MPI job has only the coordinator and no worker ranks; {HOW_TO_LAUNCH}"
        )));
    };
    let bin = bin?;
    if n == 0 {
        return Err(PoolError::Config("cannot spawn 0 workers".into()));
    }
    let command = std::ffi::CString::new(bin.as_os_str().as_encoded_bytes())
        .map_err(|_| PoolError::Config(format!("worker path {} has a NUL byte", bin.display())))?;
    let maxprocs =
        i32::try_from(n).map_err(|_| PoolError::Config(format!("cannot spawn {n} MPI ranks")))?;
    let mut errcodes = vec![0i32; n];
    let mut intercomm = std::mem::MaybeUninit::<mpi::ffi::MPI_Comm>::uninit();
    // SAFETY: MPI is initialised on this thread; `command` is a valid C
    // string for the call's duration; argv is MPI_ARGV_NULL (a null
    // pointer); `errcodes` has room for `maxprocs` codes; `intercomm` is
    // written by the call (read only when it succeeded). Errors on
    // MPI_COMM_SELF are set to return rather than abort, so a failed spawn
    // is reported here.
    let code = unsafe {
        mpi::ffi::MPI_Comm_set_errhandler(mpi::ffi::RSMPI_COMM_SELF, mpi::ffi::RSMPI_ERRORS_RETURN);
        mpi::ffi::MPI_Comm_spawn(
            command.as_ptr(),
            std::ptr::null_mut(),
            maxprocs,
            mpi::ffi::RSMPI_INFO_NULL,
            0,
            mpi::ffi::RSMPI_COMM_SELF,
            intercomm.as_mut_ptr(),
            errcodes.as_mut_ptr(),
        )
    };
    if code != 0 || errcodes.iter().any(|&c| c != 0) {
        return Err(PoolError::Config(format!(
            "MPI_Comm_spawn of {n} ranks of {} failed (see the MPI library's message above; with more workers than cores, allow it with `mpirun --oversubscribe -n 1 ...` or OMPI_MCA_rmaps_base_oversubscribe=1)",
            bin.display()
        )));
    }
    // SAFETY: the spawn succeeded, so `intercomm` holds a live
    // inter-communicator that nothing else owns.
    let intercomm = unsafe { InterCommunicator::from_raw(intercomm.assume_init()) };
    // The spawned ranks merge with MergeOrder::High: they come after us.
    let comm = intercomm.merge(MergeOrder::Low);
    log::info!("spawned {n} worker ranks of {}", bin.display());
    Ok((comm, n))
}

fn mpi_thread(
    cmds: Receiver<Cmd>,
    events: Sender<Event>,
    ready: Sender<Result<usize, PoolError>>,
    start: MpiStart,
) {
    let Some((universe, _provided)) = mpi::initialize_with_threading(Threading::Funneled) else {
        let _ = ready.send(Err(PoolError::Config(
            "MPI is already initialised in this process".into(),
        )));
        return;
    };
    let nodelay = procpool_worker::mpi::tcp_no_delay();
    log::debug!("TCP_NODELAY set on {nodelay} sockets of the MPI library");
    let comm = match open(&universe, start.spawn) {
        Ok((comm, workers)) => {
            let _ = ready.send(Ok(workers));
            comm
        }
        Err(e) => {
            let world = universe.world();
            let _ = ready.send(Err(e));
            if world.size() > 1 {
                // The other ranks wait for a coordinator (and MPI_Finalize
                // for them): end the job. Rank 0 aborts it; any other rank
                // exits, and the launcher ends the job (only rank 0 aborts).
                thread::sleep(Duration::from_millis(200)); // let the error be logged
                if world.rank() == 0 {
                    abort(world.as_raw(), 2);
                }
                exit_now(2);
            }
            return;
        }
    };
    let mut thread = MpiThread {
        ranks: (0..comm.size())
            .map(|_| RankState {
                last_heard: Instant::now(),
                name: None,
                bye: false,
            })
            .collect(),
        comm,
        events,
        peers: Vec::new(),
        early: Vec::new(),
        sends: Vec::new(),
        liveness: start.liveness,
        failed_at: None,
        launcher_ending: false,
        all_abandoned: false,
    };
    let clean = thread.run(&cmds);
    let raw = thread.comm.as_raw();
    if clean {
        thread.release();
        drop(thread); // waits for unfinished sends
        drop(universe); // MPI_Finalize, on the thread that initialised MPI
    } else if thread.launcher_ending && launched_by_mpi() {
        // The launcher is ending the job already (its SIGTERM): it needs
        // no abort request mid-teardown (see `abort`). Exit; it ends the rest.
        log::error!("ending: the MPI launcher is ending the job");
        exit_now(EXIT_RELAUNCH);
    } else {
        // A rank that did not say goodbye (dead, silent, stuck in a task past
        // the grace period) would make MPI_Finalize wait forever: end the job.
        log::error!("aborting the MPI job: not every worker rank stopped in order");
        abort(raw, EXIT_RELAUNCH);
    }
}

/// `MPI_Abort` on `comm` (this coordinator is its rank 0): the launcher ends
/// every rank of the job.
///
/// Rank 0 is the only rank that ever aborts, once, and not after the
/// launcher began ending the job (a second abort request only adds to
/// `mpirun`'s teardown, which Open MPI 4.1.4 with PMIx 4.2 gets wrong
/// enough already: see [`MpiThread::release`]). Other ranks exit with a
/// non-zero code instead, which ends the job as well.
fn abort(comm: mpi::ffi::MPI_Comm, code: i32) -> ! {
    // SAFETY: MPI is initialised on this thread and `comm` is a live
    // communicator of it; MPI_Abort does not return (exit is the backstop).
    unsafe {
        mpi::ffi::MPI_Abort(comm, code);
    }
    std::process::exit(code)
}

/// End this process at once, without `MPI_Finalize` (which would wait for
/// ranks that will not finalise) or `MPI_Abort` (see `abort`): the
/// launcher sees a rank exit with `code` before finalising and ends the job.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process at once; it touches no memory of ours.
    unsafe { libc::_exit(code) }
}

struct MpiThread {
    comm: SimpleCommunicator,
    events: Sender<Event>,
    ranks: Vec<RankState>,
    peers: Vec<Peer>,
    /// Messages of ranks not attached yet (their Hello can beat the attach).
    early: Vec<(Rank, Tag, Vec<u8>)>,
    sends: Vec<OwnedSend>,
    liveness: Duration,
    /// When the job was declared failed (then it is aborted, not finalised).
    failed_at: Option<Instant>,
    /// The launcher is ending the job (so it needs no abort from here).
    launcher_ending: bool,
    /// Every worker has been reported closed after the failure.
    all_abandoned: bool,
}

impl MpiThread {
    /// Serve until the launcher is dropped; `true` if every rank stopped in
    /// order (so MPI can be finalised).
    fn run(&mut self, cmds: &Receiver<Cmd>) -> bool {
        let beat_every = heartbeat_period(self.liveness);
        let beat: Vec<u8> = u64::try_from(self.liveness.as_millis())
            .unwrap_or(u64::MAX)
            .to_le_bytes()
            .to_vec();
        let mut next_beat = Instant::now();
        let mut idle = Backoff::new();
        let mut waited = None;
        let mut last_turn = Instant::now();
        loop {
            let now = Instant::now();
            if now.duration_since(last_turn) > SUSPENDED.min(self.liveness / 2) {
                // A turn takes a millisecond at most: this process was not
                // running (stopped, as Open MPI's kill sequence ends with
                // SIGCONT, or starved), so the silence was its own, not the
                // ranks'. Give them a fresh period.
                log::warn!(
                    "the coordinator did not run for {:.1} s (stopped or starved)",
                    now.duration_since(last_turn).as_secs_f64()
                );
                for state in &mut self.ranks {
                    state.last_heard = now;
                }
            }
            last_turn = now;
            // What the supervisor asked for: the command that ended the
            // wait below, then any others.
            let mut busy = false;
            let mut next = waited.take().map(Ok);
            loop {
                let cmd = match next.take().unwrap_or_else(|| cmds.try_recv()) {
                    Ok(cmd) => cmd,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return self.finished(),
                };
                match cmd {
                    Cmd::Attach {
                        rank,
                        slot,
                        generation,
                    } => self.attach(rank, slot, generation),
                    Cmd::Send { rank, message } => {
                        busy = true;
                        self.sends.push(OwnedSend::start(
                            &self.comm.process_at_rank(rank),
                            message,
                            TAG_DATA,
                        ));
                    }
                    Cmd::Abandon { rank } => self.abandon(rank),
                    Cmd::Finish => return self.finished(),
                }
            }
            while let Some((msg, status)) = self.comm.any_process().immediate_matched_probe() {
                busy = true;
                let (data, _) = (msg, status).matched_receive_vec::<u8>();
                let (rank, tag) = (status.source_rank(), status.tag());
                self.heard(rank, tag, data);
            }
            self.sends.retain_mut(|s| !s.test());
            let now = Instant::now();
            if now >= next_beat {
                next_beat = now + beat_every;
                // To ranks that said goodbye too: they wait for the
                // release (`release`), watching this coordinator's beats.
                for rank in 1..self.comm.size() {
                    self.sends.push(OwnedSend::start(
                        &self.comm.process_at_rank(rank),
                        beat.clone(),
                        TAG_HEARTBEAT,
                    ));
                }
                self.check_liveness(now);
            }
            if JOB_ENDING.swap(false, Ordering::SeqCst) {
                self.launcher_ending = true;
                self.fail("the MPI launcher is ending the job".into());
            }
            if let Some(at) = self.failed_at {
                // The supervisor has stopped the busy workers by now (their
                // records end as cancelled); report the idle ones closed too,
                // so that nothing waits for a rank that will never answer.
                if !self.all_abandoned && at.elapsed() > Duration::from_millis(300) {
                    self.all_abandoned = true;
                    let ranks: Vec<Rank> = self.peers.iter().map(|p| p.rank).collect();
                    for rank in ranks {
                        self.abandon(rank);
                    }
                }
                // Bounded teardown: should the coordinator not let go of
                // the pool, end the job anyway.
                if at.elapsed() > Duration::from_secs(10) {
                    log::error!("the pool did not stop within 10 s of the failure");
                    if self.launcher_ending && launched_by_mpi() {
                        exit_now(EXIT_RELAUNCH);
                    }
                    abort(self.comm.as_raw(), EXIT_RELAUNCH);
                }
            }
            // Wait for the supervisor (which wakes this thread at once) or
            // until it is time to probe the ranks again.
            match cmds.recv_timeout(idle.next(busy)) {
                Ok(cmd) => waited = Some(cmd),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return self.finished(),
            }
        }
    }

    /// Every rank said goodbye and this coordinator is about to finalise:
    /// let them finalise too. A worker enters `MPI_Finalize` only then, so
    /// that a job that is aborted instead (or torn down by its launcher)
    /// has no rank waiting in finalisation's collective: Open MPI 4.1.4's
    /// `mpirun` (with PMIx 4.2) tearing down a job while one is pending can
    /// deadlock in `PMIx_server_finalize` or crash (measured here with a
    /// stopped rank under load: `mpirun` hung in 6 and crashed in 6 of 47
    /// runs, with two `MPI_Abort`s, one or none; none of either in 110 runs since).
    fn release(&mut self) {
        for rank in 1..self.comm.size() {
            self.sends.push(OwnedSend::start(
                &self.comm.process_at_rank(rank),
                Vec::new(),
                TAG_BYE,
            ));
        }
    }

    /// Whether every rank stopped in order (so MPI can be finalised).
    fn finished(&self) -> bool {
        self.failed_at.is_none() && self.peers.iter().all(|p| p.clean)
    }

    fn attach(&mut self, rank: Rank, slot: usize, generation: u64) {
        self.peers.push(Peer {
            rank,
            slot,
            generation,
            first: true,
            closed: false,
            clean: false,
        });
        let (now, later): (Vec<_>, Vec<_>) = self.early.drain(..).partition(|(r, _, _)| *r == rank);
        self.early = later;
        for (rank, tag, data) in now {
            self.route(rank, tag, data);
        }
        if self.all_abandoned {
            self.abandon(rank);
        }
    }

    /// A message from `rank`: proof of life, and maybe one for its worker.
    fn heard(&mut self, rank: Rank, tag: Tag, data: Vec<u8>) {
        let Some(state) = usize::try_from(rank)
            .ok()
            .and_then(|r| self.ranks.get_mut(r))
        else {
            return;
        };
        state.last_heard = Instant::now();
        if tag == TAG_HEARTBEAT {
            // The supervisor's own liveness check wants proof of life too
            // (a rank deep in a long record says nothing else).
            if let Some(peer) = self
                .peers
                .iter()
                .find(|p| p.rank == rank && !p.closed && !p.first)
            {
                let _ = self.events.send(Event::Message {
                    slot: peer.slot,
                    generation: peer.generation,
                    message: WorkerMessage::Heartbeat,
                });
            }
            return;
        }
        if tag == TAG_BYE {
            state.bye = true;
        }
        if self.peers.iter().any(|p| p.rank == rank) {
            self.route(rank, tag, data);
        } else {
            self.early.push((rank, tag, data));
        }
    }

    /// Hand a message from `rank` to the supervisor as its worker's event.
    fn route(&mut self, rank: Rank, tag: Tag, data: Vec<u8>) {
        let Some(peer) = self.peers.iter_mut().find(|p| p.rank == rank && !p.closed) else {
            return;
        };
        let (slot, generation) = (peer.slot, peer.generation);
        if tag == TAG_BYE {
            peer.closed = true;
            peer.clean = true;
            let _ = self.events.send(Event::Closed {
                slot,
                generation,
                reason: None,
            });
            return;
        }
        // Results (all but the first message, whose version is checked
        // first) are decoded in place, as on the local backend; anything
        // else as a message.
        let message = if peer.first {
            decode_from_worker(&mut peer.first, &data)
        } else {
            match decode_results(data) {
                Ok(Ok(results)) => {
                    let _ = self.events.send(Event::Results {
                        slot,
                        generation,
                        results,
                    });
                    return;
                }
                Ok(Err(data)) => decode_from_worker(&mut peer.first, &data),
                Err(reason) => Err(reason),
            }
        };
        match message {
            Ok(message) => {
                if let WorkerMessage::Hello(hello) = &message {
                    if let Some(state) = self.ranks.get_mut(rank as usize) {
                        state.name = Some(format!("pid {} on {}", hello.pid, hello.host));
                    }
                }
                let _ = self.events.send(Event::Message {
                    slot,
                    generation,
                    message,
                });
            }
            Err(reason) => {
                peer.closed = true;
                let _ = self.events.send(Event::Closed {
                    slot,
                    generation,
                    reason: Some(reason),
                });
            }
        }
    }

    fn abandon(&mut self, rank: Rank) {
        if let Some(peer) = self.peers.iter_mut().find(|p| p.rank == rank && !p.closed) {
            peer.closed = true;
            let _ = self.events.send(Event::Closed {
                slot: peer.slot,
                generation: peer.generation,
                reason: None,
            });
        }
    }

    fn check_liveness(&mut self, now: Instant) {
        if self.failed_at.is_some() {
            return;
        }
        let silent = self
            .ranks
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, s)| !s.bye && now.duration_since(s.last_heard) > self.liveness);
        if let Some((rank, state)) = silent {
            let who = state.name.as_ref().map_or_else(
                || format!("worker rank {rank}"),
                |n| format!("worker rank {rank} ({n})"),
            );
            let t = self.liveness.as_secs_f64();
            self.fail(format!(
                "{who} sent nothing for {t:.1} s (stopped, hung, or cut off by the network; {ENV_LIVENESS} sets the limit)"
            ));
        }
    }

    /// The job cannot go on: stop the pool at once (records finished so
    /// far are kept, the rest end as cancelled), soon report every worker
    /// closed, and abort the job once the pool lets go.
    fn fail(&mut self, reason: String) {
        if self.failed_at.is_some() {
            return;
        }
        log::error!("{reason}; stopping: the output keeps every finished record in order, and `--resume` continues the job");
        self.failed_at = Some(Instant::now());
        for _ in 0..2 {
            // A second cancel stops at once.
            let _ = self.events.send(Event::Command(Command::Cancel {
                grace: Duration::ZERO,
            }));
        }
    }
}

/// How long to wait between probes of the ranks: the schedule of
/// [`mpi_probe_wait`] over the time spent idle so far, taking next to
/// nothing from the cores that compute. Timers are precise: a slack of 1 µs
/// instead of Linux's default 50 µs, set for the calling thread by `new`.
pub(crate) struct Backoff {
    idle_since: Option<Instant>,
}

impl Backoff {
    const MIN: Duration = Duration::from_micros(5);

    pub fn new() -> Self {
        // SAFETY: PR_SET_TIMERSLACK takes an integer and only affects the
        // calling thread's timers.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
        }
        Backoff { idle_since: None }
    }

    /// The next wait: the shortest after work (`busy`), longer as idleness lasts.
    pub fn next(&mut self, busy: bool) -> Duration {
        if busy {
            self.idle_since = None;
            return Self::MIN;
        }
        mpi_probe_wait(self.idle_since.get_or_insert_with(Instant::now).elapsed())
    }
}

/// A non-blocking send (`MPI_Isend`) that owns its buffer until MPI reports
/// completion. Dropping an unfinished one waits for it.
struct OwnedSend {
    request: Option<Request<'static, [u8], StaticScope>>,
    buffer: *mut [u8],
}

impl OwnedSend {
    fn start<D: Destination>(dest: &D, data: Vec<u8>, tag: Tag) -> Self {
        let buffer: *mut [u8] = Box::into_raw(data.into_boxed_slice());
        // SAFETY: `buffer` stays allocated and unwritten until the request
        // has completed (`free` runs only then, or after waiting in `drop`).
        let shared: &'static [u8] = unsafe { &*buffer };
        let request = dest.immediate_send_with_tag(StaticScope, shared, tag);
        OwnedSend {
            request: Some(request),
            buffer,
        }
    }

    /// `MPI_Test`: `true` (and the buffer freed) once the send has completed.
    fn test(&mut self) -> bool {
        match self.request.take() {
            None => true,
            Some(r) => match r.test() {
                Ok(_) => {
                    self.free();
                    true
                }
                Err(r) => {
                    self.request = Some(r);
                    false
                }
            },
        }
    }

    fn free(&mut self) {
        if !self.buffer.is_null() {
            // SAFETY: the request completed, so MPI no longer reads the
            // buffer; it came from Box::into_raw and is freed once.
            drop(unsafe { Box::from_raw(self.buffer) });
            self.buffer = std::ptr::slice_from_raw_parts_mut(std::ptr::null_mut(), 0);
        }
    }
}

impl Drop for OwnedSend {
    fn drop(&mut self) {
        if let Some(r) = self.request.take() {
            r.wait();
        }
        self.free();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_wait_longer_as_idleness_lasts_and_shortest_after_work() {
        // The schedule itself: `procpool_protocol::mpi_probe_wait`'s test.
        let us = Duration::from_micros;
        assert_eq!(Backoff::MIN, mpi_probe_wait(Duration::ZERO));
        let mut b = Backoff::new();
        thread::sleep(us(2_000));
        assert_eq!(b.next(true), us(5), "work resets the wait");
        // The idle spell starts at the first call without work.
        assert!(b.next(false) < us(200));
        thread::sleep(us(16_000));
        assert_eq!(b.next(false), us(1_000));
        assert_eq!(b.next(true), us(5));
    }
}
