//! The MPI backend on one machine: when every rank of an MPI (or Slurm)
//! launch runs here, the ranks start no MPI at all (see
//! `procpool_worker::node`). The coordinator, rank 0, invites each worker
//! rank through the job's rendezvous directory to connect to a channel of
//! its own, and from there on a rank is reached exactly as a local worker
//! is: ipc-channel, batches and results through shared memory.
//!
//! What stays as on MPI: the ranks are the launcher's, so one that is gone
//! cannot be replaced; the job then stops at once (the output an ordered
//! prefix) and the coordinator exits with [`EXIT_RELAUNCH`], which makes
//! the launcher end the other ranks, and `--resume` continues the job.
//! Liveness needs no heartbeats: a rank that holds records and says
//! nothing for the liveness timeout is asked after through `/proc`, and
//! ends the job only if it is stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::Duration;

use procpool_worker::node::{Invitation, NodeJob, HOW_TO_LAUNCH};

use crate::error::{PoolError, WorkerExit};
use crate::mpi::{exit_now, EXIT_RELAUNCH};

use crate::process::{
    accept_in_background, clean_stale_in_background, kernel_says, new_rendezvous, stopped,
    unblock_accept,
};
use crate::supervisor::Command;
use crate::transport::{heartbeat_period, Event, Launcher, Link};

/// The pools of this process on a one-machine MPI launch (one, in practice),
/// for [`end_job`].
static ACTIVE: Mutex<Vec<Weak<JobState>>> = Mutex::new(Vec::new());

/// The launcher is ending the job (its SIGTERM): stop at once.
pub(crate) fn end_job() {
    let active = ACTIVE.lock().map(|a| a.clone()).unwrap_or_default();
    for state in active.iter().filter_map(Weak::upgrade) {
        state.fail("the MPI launcher is ending the job");
    }
}

/// Whether the job can still end in order, and how to stop it if not.
struct JobState {
    failed: AtomicBool,
    events: Mutex<Option<std::sync::mpsc::Sender<Event>>>,
}

impl JobState {
    /// The job cannot end in order: stop the pool at once (records finished
    /// so far are kept, the rest end as cancelled); the coordinator exits
    /// with [`EXIT_RELAUNCH`] once the pool lets go, or after 10 s.
    fn fail(&self, reason: &str) {
        // Under the lock: a second caller (another rank's reader, about to
        // report its rank closed) returns only once the stop is queued, so
        // that the supervisor never takes a closed rank for a reason to
        // fail the queued records ("pool broken") instead of stopping.
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if self.failed.swap(true, Ordering::SeqCst) {
            return;
        }
        log::error!("{reason}; stopping: the output keeps every finished record in order, and `--resume` continues the job");
        // Before the first launch there is no pool to stop yet: it is
        // stopped as soon as there is (`listen`).
        if let Some(events) = events.as_ref() {
            stop_at_once(events);
        }
        drop(events);
        let _ = thread::Builder::new()
            .name("procpool-node-end".into())
            .spawn(|| {
                thread::sleep(Duration::from_secs(10));
                log::error!("the pool did not stop within 10 s of the failure");
                exit_now(EXIT_RELAUNCH);
            });
    }

    /// The pool's events, from its first launch on; a failure before that
    /// stops the pool now.
    fn listen(&self, events: &std::sync::mpsc::Sender<Event>) {
        let mut held = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none() {
            *held = Some(events.clone());
            if self.failed.load(Ordering::SeqCst) {
                stop_at_once(events);
            }
        }
    }
}

/// Two cancels: the second stops the pool at once.
fn stop_at_once(events: &std::sync::mpsc::Sender<Event>) {
    for _ in 0..2 {
        let _ = events.send(Event::Command(Command::Cancel {
            grace: Duration::ZERO,
        }));
    }
}

/// Invites the worker ranks of a one-machine launch and connects them.
pub(crate) struct NodeLauncher {
    job: NodeJob,
    token: String,
    heartbeat_ms: u64,
    liveness_ms: u64,
    kernel_says: bool,
    state: Arc<JobState>,
    /// The ranks invited (each once: a rank cannot be started again).
    invited: Vec<bool>,
}

impl NodeLauncher {
    /// For this coordinator, rank `job.rank` (which must be 0); the number
    /// of worker ranks goes with it.
    pub fn new(
        job: NodeJob,
        token: String,
        liveness: Duration,
    ) -> Result<(NodeLauncher, usize), PoolError> {
        if job.rank != 0 {
            return Err(PoolError::Config(format!(
                "this coordinator is rank {} of an MPI job of {} (every rank on this machine): there must be one coordinator, at rank 0; {HOW_TO_LAUNCH}",
                job.rank, job.size
            )));
        }
        job.create_dir().map_err(|e| {
            PoolError::Ipc(std::io::Error::new(
                e.kind(),
                format!(
                    "cannot make the job's rendezvous directory {}: {e}",
                    job.dir.display()
                ),
            ))
        })?;
        // Where /proc says how a process is, the ranks send no heartbeats.
        let kernel_says = kernel_says();
        let heartbeat_ms = if kernel_says {
            0
        } else {
            u64::try_from(heartbeat_period(liveness).as_millis()).unwrap_or(u64::MAX)
        };
        let state = Arc::new(JobState {
            failed: AtomicBool::new(false),
            events: Mutex::new(None),
        });
        // Its ranks wait for this coordinator while it runs.
        job.announce().map_err(PoolError::Ipc)?;
        // What coordinators killed before their end left (not waited for).
        drop(clean_stale_in_background(job.dir.clone()));
        if let Ok(mut active) = ACTIVE.lock() {
            active.retain(|w| w.strong_count() > 0);
            active.push(Arc::downgrade(&state));
        }
        if crate::mpi::job_ending() {
            state.fail("the MPI launcher is ending the job");
        }
        let workers = job.size - 1;
        log::info!(
            "every rank of this MPI job runs on this machine: {workers} worker ranks over local channels and shared memory, without MPI ({}=mpi for MPI)",
            procpool_worker::node::ENV_TRANSPORT
        );
        Ok((
            NodeLauncher {
                job,
                token,
                heartbeat_ms,
                liveness_ms: u64::try_from(liveness.as_millis()).unwrap_or(u64::MAX),
                kernel_says,
                state,
                invited: vec![false; workers],
            },
            workers,
        ))
    }
}

impl Drop for NodeLauncher {
    fn drop(&mut self) {
        self.job.remove_dir();
        if self.state.failed.load(Ordering::SeqCst) {
            // As an aborted MPI job: the launcher ends the other ranks.
            log::error!("ending the MPI job: not every worker rank stopped in order");
            exit_now(EXIT_RELAUNCH);
        }
    }
}

impl Launcher for NodeLauncher {
    fn launch(
        &mut self,
        slot: usize,
        generation: u64,
        events: &std::sync::mpsc::Sender<Event>,
    ) -> Result<Box<dyn Link>, PoolError> {
        let rank = slot + 1;
        if self
            .invited
            .get_mut(slot)
            .is_none_or(|invited| std::mem::replace(invited, true))
        {
            return Err(PoolError::Config(format!(
                "no MPI rank for worker {slot} (the job's ranks cannot be replaced)"
            )));
        }
        self.state.listen(events);
        crate::preflight::ensure_rendezvous_dir()?;
        let (server, name) = new_rendezvous(false)?;
        self.job
            .invite(
                rank,
                &Invitation {
                    server: name.clone(),
                    token: self.token.clone(),
                    heartbeat_ms: self.heartbeat_ms,
                    liveness_ms: self.liveness_ms,
                    coordinator: std::process::id(),
                },
            )
            .map_err(PoolError::Ipc)?;
        let state = self.state.clone();
        let stopping = Arc::new(AtomicBool::new(false));
        let asked = stopping.clone();
        let on_close = Box::new(move || {
            if !asked.load(Ordering::SeqCst) {
                state.fail(&format!(
                    "worker rank {rank} closed its channel before it was asked to stop (it died, or was killed)"
                ));
            }
        });
        accept_in_background(
            server,
            format!("rank-{rank}"),
            slot,
            generation,
            events,
            Some(on_close),
        )
        .map_err(PoolError::Ipc)?;
        Ok(Box::new(NodeLink {
            rank,
            slot,
            generation,
            server: name,
            connected: false,
            stopping,
            closed: false,
            kernel_says: self.kernel_says,
            events: events.clone(),
            state: self.state.clone(),
        }))
    }

    fn respawns(&self) -> bool {
        false
    }

    fn max_batch_bytes(&self) -> usize {
        crate::batch::MAX_SHARED_BATCH_BYTES
    }
}

struct NodeLink {
    rank: usize,
    slot: usize,
    generation: u64,
    /// The rendezvous it was invited to.
    server: String,
    connected: bool,
    /// The pool asked it to stop: its channel closing is its orderly end.
    stopping: Arc<AtomicBool>,
    /// Reported closed by this link (it was given up).
    closed: bool,
    kernel_says: bool,
    events: std::sync::mpsc::Sender<Event>,
    state: Arc<JobState>,
}

impl Link for NodeLink {
    fn pid(&self) -> u32 {
        0 // learnt from the rank's Hello
    }

    fn label(&self) -> String {
        format!("rank {}", self.rank)
    }

    fn connected(&mut self) {
        self.connected = true;
    }

    fn stopping(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn kill(&mut self) {
        // A rank cannot be killed alone (the launcher would end the job):
        // the job stops, and this rank is reported closed at once, so that
        // nothing waits for it.
        self.state
            .fail(&format!("worker rank {} had to be given up", self.rank));
        if !self.closed {
            self.closed = true;
            let _ = self.events.send(Event::Closed {
                slot: self.slot,
                generation: self.generation,
                reason: None,
            });
        }
    }

    fn exited(&mut self) -> Option<WorkerExit> {
        None
    }

    fn runs(&self, pid: u32) -> Option<bool> {
        if !self.kernel_says || pid == 0 {
            return None;
        }
        stopped(pid).map(|stopped| !stopped)
    }

    fn reap(&mut self, _patience: Duration) -> WorkerExit {
        // Its exit is the launcher's to see.
        WorkerExit::Unknown
    }

    fn abandon(&mut self) {
        self.kill();
        if !self.connected {
            unblock_accept(&self.server);
        }
    }
}
