//! The worker side of the MPI backend (cargo feature `mpi`): this process is
//! a rank > 0 of a communicator whose rank 0 is the coordinator: the world
//! of an MPMD launch, or the merge with the coordinator that spawned it.
//!
//! A thread of its own (`procpool-heartbeat`) sends a heartbeat to the
//! coordinator every `liveness / 4` (so a rank deep in a long task still
//! shows it is alive) and watches the coordinator's: a coordinator silent
//! for the liveness timeout it announced (stopped, or cut off by the
//! network) ends this rank, so nothing is left running. MPI is initialised
//! with `MPI_THREAD_MULTIPLE` for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mpi::raw::AsRaw;
use mpi::topology::{MergeOrder, SimpleCommunicator};
use mpi::traits::*;
use mpi::Threading;
use procpool_protocol::{MPI_TAG_BYE, MPI_TAG_DATA, MPI_TAG_HEARTBEAT};

use crate::{serve_over, Registry, ServeError, WorkerTransport};

/// How long to wait for the coordinator's first heartbeat.
const FIRST_CONTACT: Duration = Duration::from_secs(10);

const HOW_TO_LAUNCH: &str = "launch one coordinator as rank 0 with its workers beside it (`mpirun -n 1 coordinator --backend mpi ... : -n 4 worker`), or let a lone coordinator spawn them (`coordinator --backend mpi --workers 4`, alone or under `mpirun -n 1`)";

/// Whether an MPI launcher (mpirun, srun, Hydra) started this process.
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// The communicator, shared by the serving and the heartbeat threads.
#[derive(Clone, Copy)]
struct Comm(&'static SimpleCommunicator);

// SAFETY: MPI is initialised with MPI_THREAD_MULTIPLE (checked before a
// second thread uses it), which allows MPI calls on one communicator from
// several threads at once; the communicator is leaked, so it lives until
// the process ends, and the heartbeat thread is joined before MPI_Finalize.
unsafe impl Send for Comm {}
// SAFETY: as above.
unsafe impl Sync for Comm {}

struct MpiTransport {
    comm: Comm,
}

impl WorkerTransport for MpiTransport {
    fn recv(&mut self) -> Result<Option<Vec<u8>>, ServeError> {
        // Open MPI's blocking receive spins at full speed while it waits,
        // taking a core from the ranks that compute: probe, spin briefly,
        // then sleep longer and longer between probes.
        let root = self.comm.0.process_at_rank(0);
        let mut idle = Backoff::new();
        loop {
            if let Some((message, status)) = root.immediate_matched_probe_with_tag(MPI_TAG_DATA) {
                let (bytes, _) = (message, status).matched_receive_vec::<u8>();
                return Ok(Some(bytes));
            }
            idle.pause();
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), ServeError> {
        self.comm
            .0
            .process_at_rank(0)
            .send_with_tag(bytes, MPI_TAG_DATA);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ServeError> {
        self.comm
            .0
            .process_at_rank(0)
            .send_with_tag(&[] as &[u8], MPI_TAG_BYE);
        Ok(())
    }
}

/// Spin briefly while waiting (50 µs), then sleep longer and longer (up to
/// 500 µs): latency stays low under load without taking, while idle, the
/// cores other ranks need. Sleeps are precise (a timer slack of 1 µs instead
/// of Linux's default 50 µs, set for this thread by `new`).
struct Backoff {
    idle_since: Instant,
    sleep: Duration,
    spin: Duration,
    max: Duration,
}

impl Backoff {
    fn new() -> Self {
        // SAFETY: PR_SET_TIMERSLACK takes an integer and only affects the
        // calling thread's timers.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
        }
        Backoff {
            idle_since: Instant::now(),
            sleep: Duration::from_micros(10),
            spin: Duration::from_micros(50),
            max: Duration::from_micros(500),
        }
    }

    fn pause(&mut self) {
        if self.idle_since.elapsed() < self.spin {
            std::hint::spin_loop();
        } else {
            thread::sleep(self.sleep);
            self.sleep = (self.sleep * 2).min(self.max);
        }
    }
}

/// Serve the coordinator at rank 0 until it says `Stop`, then finalise MPI.
pub fn serve_mpi(registry: Registry) -> Result<(), ServeError> {
    let Some((universe, provided)) = mpi::initialize_with_threading(Threading::Multiple) else {
        return Err(ServeError::Ipc("MPI is already initialised".into()));
    };
    let world = universe.world();
    // Spawned by a coordinator: it is the low group of the merge, rank 0.
    let comm = match world.parent() {
        Some(parent) => parent.merge(MergeOrder::High),
        None => world,
    };
    let comm = Comm(Box::leak(Box::new(comm)));
    if comm.0.rank() == 0 {
        log::error!(
            "this worker is rank 0 of an MPI job of {}, but rank 0 must be the coordinator; {HOW_TO_LAUNCH}",
            comm.0.size()
        );
        abort_job(comm, 2);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat = if provided >= Threading::Multiple {
        let stop = stop.clone();
        thread::Builder::new()
            .name("procpool-heartbeat".into())
            .spawn(move || heartbeat(comm, &stop))
            .map_err(|e| ServeError::Ipc(e.to_string()))
            .map(Some)?
    } else {
        log::warn!(
            "the MPI library gives no MPI_THREAD_MULTIPLE: no heartbeats, so the coordinator may take this rank for silent during a long task"
        );
        None
    };
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        serve_over(MpiTransport { comm }, registry, String::new())
    }));
    stop.store(true, Ordering::SeqCst);
    if let Some(h) = heartbeat {
        let _ = h.join();
    }
    match served {
        Ok(Ok(())) => {
            drop(universe); // MPI_Finalize
            Ok(())
        }
        // Finalising would wait for the other ranks forever: end the job instead.
        Ok(Err(e)) => {
            log::error!("{e}; aborting the MPI job");
            abort_job(comm, 1)
        }
        Err(_) => {
            log::error!("worker panicked outside a task; aborting the MPI job");
            abort_job(comm, 101)
        }
    }
}

/// Beat to the coordinator and watch its beats until `stop`; end the
/// process if the coordinator goes silent.
fn heartbeat(comm: Comm, stop: &AtomicBool) {
    let root = comm.0.process_at_rank(0);
    let started = Instant::now();
    let mut last_heard: Option<Instant> = None;
    let mut liveness = FIRST_CONTACT;
    let mut next_beat = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        while let Some((message, status)) = root.immediate_matched_probe_with_tag(MPI_TAG_HEARTBEAT)
        {
            let (bytes, _) = (message, status).matched_receive_vec::<u8>();
            if let Ok(ms) = <[u8; 8]>::try_from(bytes.as_slice()) {
                liveness = Duration::from_millis(u64::from_le_bytes(ms).max(1));
            }
            last_heard = Some(Instant::now());
        }
        let now = Instant::now();
        let silent = match last_heard {
            Some(t) => now.duration_since(t) > liveness,
            None => now.duration_since(started) > FIRST_CONTACT,
        };
        if silent {
            let what = match last_heard {
                Some(_) => format!(
                    "the coordinator (rank 0) sent nothing for {:.1} s (stopped, or cut off by the network)",
                    liveness.as_secs_f64()
                ),
                None => format!(
                    "no coordinator answered at rank 0 within {:.0} s; {HOW_TO_LAUNCH}",
                    FIRST_CONTACT.as_secs_f64()
                ),
            };
            log::error!("{what}; this rank ends");
            // MPI_Abort may not come back if the network is cut: a bounded
            // fallback ends this process all the same.
            let _ = thread::Builder::new().spawn(|| {
                thread::sleep(Duration::from_secs(3));
                std::process::exit(1);
            });
            abort_job(comm, 1);
        }
        if now >= next_beat {
            root.send_with_tag(&[] as &[u8], MPI_TAG_HEARTBEAT);
            next_beat = now + (liveness / 4).min(Duration::from_millis(500));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `MPI_Abort` on the communicator: the launcher ends every rank.
fn abort_job(comm: Comm, code: i32) -> ! {
    // SAFETY: MPI is initialised and `comm` is a live communicator;
    // MPI_Abort takes it and an error code, and does not return.
    unsafe {
        mpi::ffi::MPI_Abort(comm.0.as_raw(), code);
    }
    std::process::exit(code)
}
