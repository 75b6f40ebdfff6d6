//! The MPI backend (cargo feature `mpi`): workers are MPI ranks 1..N that
//! `mpirun` or Slurm started beside this coordinator (rank 0), reached
//! through the same transport seam as local worker processes.
//!
//! All MPI calls of the coordinator happen on one thread (`procpool-mpi`,
//! which initialises MPI with `Threading::Funneled`): it sends with
//! non-blocking `MPI_Isend` (so it never blocks on a worker busy computing),
//! probes for messages from any rank, and turns them into the supervisor's
//! events. A worker answers `Stop` with an empty `TAG_BYE` message, which
//! stands for the closed channel of the local backend.
//!
//! What MPI cannot do: replace a worker (a rank that dies aborts the whole
//! job; `--resume` continues it), kill one worker (so no record timeout),
//! or recycle workers.

use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread;
use std::time::Duration;

use mpi::point_to_point::Destination;
use mpi::request::{Request, StaticScope};
use mpi::traits::*;
use mpi::{Rank, Tag, Threading};

use crate::error::{PoolError, WorkerExit};
use crate::transport::{decode_from_worker, Event, Launcher, Link};

use procpool_protocol::{MPI_TAG_BYE as TAG_BYE, MPI_TAG_DATA as TAG_DATA};

/// Whether this process was started by an MPI launcher.
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

enum Cmd {
    Attach {
        rank: Rank,
        slot: usize,
        gen: u64,
        requests: Receiver<Vec<u8>>,
    },
}

/// Starts (attaches to) worker ranks and runs the MPI thread.
pub(crate) struct MpiLauncher {
    cmds: Option<Sender<Cmd>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl MpiLauncher {
    /// Initialise MPI on its own thread; returns the launcher and the number
    /// of worker ranks (world size - 1).
    pub fn start(events: Sender<Event>) -> Result<(MpiLauncher, usize), PoolError> {
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("procpool-mpi".into())
            .spawn(move || mpi_thread(cmd_rx, events, ready_tx))
            .map_err(PoolError::Ipc)?;
        let size = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| PoolError::Config("MPI did not initialise within 30 s".into()))??;
        if size < 2 {
            return Err(PoolError::Config(format!(
                "the MPI job has {size} rank(s): it needs the coordinator (rank 0) and at least one worker rank, e.g. `mpirun -n 1 coordinator --backend mpi : -n 3 worker`"
            )));
        }
        Ok((
            MpiLauncher {
                cmds: Some(cmd_tx),
                thread: Some(thread),
            },
            size - 1,
        ))
    }
}

impl Drop for MpiLauncher {
    fn drop(&mut self) {
        // Closing the command channel ends the MPI thread, which finalises MPI.
        self.cmds = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Launcher for MpiLauncher {
    fn launch(
        &mut self,
        slot: usize,
        gen: u64,
        events: &Sender<Event>,
    ) -> Result<Box<dyn Link>, PoolError> {
        let (tx, rx) = mpsc::channel();
        let rank = Rank::try_from(slot + 1)
            .map_err(|_| PoolError::Config(format!("no MPI rank for worker {slot}")))?;
        self.cmds
            .as_ref()
            .and_then(|c| {
                c.send(Cmd::Attach {
                    rank,
                    slot,
                    gen,
                    requests: rx,
                })
                .ok()
            })
            .ok_or_else(|| PoolError::Config("the MPI thread is gone".into()))?;
        let _ = events.send(Event::Accepted {
            slot,
            gen,
            result: Ok(tx),
        });
        Ok(Box::new(MpiLink { rank }))
    }

    fn respawns(&self) -> bool {
        false
    }
}

struct MpiLink {
    rank: Rank,
}

impl Link for MpiLink {
    fn pid(&self) -> u32 {
        0 // learnt from the rank's Hello
    }
    fn label(&self) -> String {
        format!("rank {}", self.rank)
    }
    fn kill(&mut self) {
        // A rank cannot be killed alone; it stops when told to (the
        // supervisor drops its writer).
    }
    fn exited(&mut self) -> Option<WorkerExit> {
        None
    }
    fn reap(&mut self, _patience: Duration) -> WorkerExit {
        WorkerExit::Code(0)
    }
    fn abandon(&mut self) {}
}

struct Peer {
    rank: Rank,
    slot: usize,
    gen: u64,
    requests: Receiver<Vec<u8>>,
    first: bool,
    closed: bool,
}

fn mpi_thread(cmds: Receiver<Cmd>, events: Sender<Event>, ready: Sender<Result<usize, PoolError>>) {
    let Some((universe, _provided)) = mpi::initialize_with_threading(Threading::Funneled) else {
        let _ = ready.send(Err(PoolError::Config(
            "MPI is already initialised in this process".into(),
        )));
        return;
    };
    let world = universe.world();
    let size = world.size() as usize;
    let _ = ready.send(Ok(size));
    let mut peers: Vec<Peer> = Vec::new();
    // Messages of ranks not attached yet (their Hello can beat the attach).
    let mut early: Vec<(Rank, Tag, Vec<u8>)> = Vec::new();
    let mut sends: Vec<OwnedSend> = Vec::new();
    let mut idle = 0u32;
    'run: loop {
        let mut busy = false;
        loop {
            match cmds.try_recv() {
                Ok(Cmd::Attach {
                    rank,
                    slot,
                    gen,
                    requests,
                }) => {
                    peers.push(Peer {
                        rank,
                        slot,
                        gen,
                        requests,
                        first: true,
                        closed: false,
                    });
                    let (now, later): (Vec<_>, Vec<_>) =
                        early.drain(..).partition(|(r, _, _)| *r == rank);
                    early = later;
                    for (rank, tag, data) in now {
                        route(&mut peers, &events, rank, tag, &data);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => break 'run,
            }
        }
        for peer in &peers {
            while let Ok(message) = peer.requests.try_recv() {
                busy = true;
                sends.push(OwnedSend::start(
                    &world.process_at_rank(peer.rank),
                    message,
                    TAG_DATA,
                ));
            }
        }
        while let Some((msg, status)) = world.any_process().immediate_matched_probe() {
            busy = true;
            let (data, _) = (msg, status).matched_receive_vec::<u8>();
            let (rank, tag) = (status.source_rank(), status.tag());
            if peers.iter().any(|p| p.rank == rank) {
                route(&mut peers, &events, rank, tag, &data);
            } else {
                early.push((rank, tag, data));
            }
        }
        sends.retain_mut(|s| !s.test());
        // Spin briefly when idle, then sleep: latency stays low under load
        // without burning a core while workers compute.
        if busy {
            idle = 0;
        } else {
            idle = idle.saturating_add(1);
            if idle > 200 {
                thread::sleep(Duration::from_micros(50));
            } else {
                std::hint::spin_loop();
            }
        }
    }
    if peers.iter().all(|p| p.closed) {
        drop(sends); // waits for unfinished sends
        drop(universe); // MPI_Finalize, on the thread that initialised MPI
    } else {
        // A rank that did not say goodbye (stuck in a task past the grace
        // period) would make MPI_Finalize wait forever: end the job instead.
        log::error!("a worker rank did not stop; aborting the MPI job");
        // SAFETY: MPI is initialised on this thread; MPI_Abort takes the
        // predefined world communicator and does not return.
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 1);
        }
    }
}

/// Hand a message from `rank` to the supervisor as its worker's event.
fn route(peers: &mut [Peer], events: &Sender<Event>, rank: Rank, tag: Tag, data: &[u8]) {
    let Some(peer) = peers.iter_mut().find(|p| p.rank == rank && !p.closed) else {
        return;
    };
    let (slot, gen) = (peer.slot, peer.gen);
    if tag == TAG_BYE {
        peer.closed = true;
        let _ = events.send(Event::Closed {
            slot,
            gen,
            reason: None,
        });
        return;
    }
    match decode_from_worker(&mut peer.first, data) {
        Ok(message) => {
            let _ = events.send(Event::Message { slot, gen, message });
        }
        Err(reason) => {
            peer.closed = true;
            let _ = events.send(Event::Closed {
                slot,
                gen,
                reason: Some(reason),
            });
        }
    }
}

/// A non-blocking send (`MPI_Isend`) that owns its buffer until MPI reports
/// completion. Dropping an unfinished one waits for it.
struct OwnedSend {
    request: Option<Request<'static, [u8], StaticScope>>,
    buffer: *mut [u8],
}

// SAFETY: the buffer is owned by this value alone (MPI only reads it until
// the request completes), and the request is only used from the MPI thread.
unsafe impl Send for OwnedSend {}

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
