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
//!
//! After its goodbye (`MPI_TAG_BYE`, once `Stop` came and every result is
//! out) a worker waits for the coordinator's before it enters `MPI_Finalize`
//! (`await_release`): a job that is aborted instead then has no rank
//! waiting in finalisation's collective, which Open MPI 4.1.4's `mpirun`
//! (with PMIx 4.2) does not always survive tearing down.
//!
//! Only rank 0 ever calls `MPI_Abort`. A worker that must end (its
//! coordinator silent, its serve loop failed) exits with a non-zero code
//! instead, which makes the launcher end the job (`mpirun`, and `srun
//! --kill-on-bad-exit`) and needs no network, which may be cut. A rank that
//! was itself stopped (SIGSTOP; Open MPI's kill sequence wakes it with
//! SIGCONT) does not mistake its own silence for the coordinator's.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use mpi::point_to_point::Destination;
use mpi::raw::AsRaw;
use mpi::request::{Request, StaticScope};
use mpi::topology::{MergeOrder, SimpleCommunicator};
use mpi::traits::*;
use mpi::{Tag, Threading};
use procpool_protocol::{mpi_probe_wait, MPI_TAG_BYE, MPI_TAG_DATA, MPI_TAG_HEARTBEAT};

use crate::{serve_over, Registry, ServeError, WorkerTransport};

/// How long to wait for the coordinator's first heartbeat.
const FIRST_CONTACT: Duration = Duration::from_secs(10);

/// How long a rank without a heartbeat thread waits, after its goodbye, for
/// the coordinator's.
const RELEASE_WITHOUT_HEARTBEATS: Duration = Duration::from_secs(60);

/// A turn of the heartbeat thread (a 20 ms wait) that took longer than this
/// (or half the liveness timeout) means the rank itself was not running.
const SUSPENDED: Duration = Duration::from_millis(500);

use crate::node::HOW_TO_LAUNCH;

/// Whether an MPI launcher (mpirun, srun, Hydra) started this process.
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// Turn Nagle's algorithm off on every TCP socket of this process; returns
/// how many. Call it right after `MPI_Init`: the sockets are then the MPI
/// library's own, above all its connection to the launcher's PMIx server,
/// which Open MPI 4.1 (PMIx 4.2) leaves with Nagle on. `MPI_Finalize` writes
/// two small messages on it in a row, and the second waited for the
/// server's delayed acknowledgement, 40 ms on Linux: measured here,
/// `MPI_Finalize` took 50 ms in every rank, 5-10 ms with this. Only the
/// timing of the sockets' writes changes, never what they carry.
pub fn tcp_no_delay() -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut done = 0;
    for fd in fds.flatten() {
        let Some(fd) = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let mut kind: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: sockaddr_storage is plain data, valid as all zeros.
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut addr_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let one: libc::c_int = 1;
        // SAFETY: getsockopt, getsockname and setsockopt are given buffers
        // of the sizes passed with them; on a descriptor that is not a
        // socket (or has been closed since the listing) they fail with an
        // error and write nothing. TCP_NODELAY changes no data, only when
        // it is sent.
        let set = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&mut kind as *mut libc::c_int).cast(),
                &mut len,
            ) == 0
                && kind == libc::SOCK_STREAM
                && libc::getsockname(
                    fd,
                    (&mut addr as *mut libc::sockaddr_storage).cast(),
                    &mut addr_len,
                ) == 0
                && matches!(
                    libc::c_int::from(addr.ss_family),
                    libc::AF_INET | libc::AF_INET6
                )
                && libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                ) == 0
        };
        done += usize::from(set);
    }
    done
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
    /// Results on their way (`MPI_Isend`): the next batch runs while the
    /// coordinator takes them, instead of waiting in a blocking send for it
    /// to come round (a message over the eager limit is sent only once the
    /// receiver has matched it).
    sending: Vec<OwnedSend>,
    /// Buffers of completed sends, for the next ones: a fresh allocation of
    /// this size per message would cost page faults every time.
    spare: Vec<Vec<u8>>,
    /// Messages received; how many of them were waited for, and how long.
    received: u64,
    waits: u64,
    waited: Duration,
}

/// Sends in flight beyond which `send` waits for the oldest.
const MAX_SENDING: usize = 4;

impl MpiTransport {
    /// Complete whatever sends have completed.
    fn progress(&mut self) {
        let spare = &mut self.spare;
        self.sending.retain_mut(|s| match s.test() {
            Some(buffer) => {
                spare.push(buffer);
                false
            }
            None => true,
        });
    }

    /// Wait until at most `n` sends are in flight, without spinning.
    fn drain_to(&mut self, n: usize) {
        let mut idle = Backoff::new();
        loop {
            self.progress();
            if self.sending.len() <= n {
                return;
            }
            idle.pause();
        }
    }
}

impl WorkerTransport for MpiTransport {
    fn recv(&mut self) -> Result<Option<Vec<u8>>, ServeError> {
        // Open MPI's blocking receive spins at full speed while it waits,
        // taking a core from the ranks that compute: probe, then sleep
        // longer and longer between probes (and complete finished sends).
        let root = self.comm.0.process_at_rank(0);
        let mut idle = Backoff::new();
        let started = Instant::now();
        let mut waited = false;
        loop {
            if let Some((message, status)) = root.immediate_matched_probe_with_tag(MPI_TAG_DATA) {
                let (bytes, _) = (message, status).matched_receive_vec::<u8>();
                self.received += 1;
                if waited {
                    self.waits += 1;
                    self.waited += started.elapsed();
                }
                return Ok(Some(bytes));
            }
            waited = true;
            self.progress();
            idle.pause();
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), ServeError> {
        self.drain_to(MAX_SENDING - 1);
        let mut buffer = self.spare.pop().unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(bytes);
        let root = self.comm.0.process_at_rank(0);
        self.sending
            .push(OwnedSend::start(&root, buffer, MPI_TAG_DATA));
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ServeError> {
        // Whether the coordinator kept this rank fed (for tuning).
        log::debug!(
            "waited for {} of {} messages from the coordinator, {:.1} ms in all",
            self.waits,
            self.received,
            self.waited.as_secs_f64() * 1e3
        );
        // Every result first (the goodbye is on a tag of its own, which
        // could overtake them).
        self.drain_to(0);
        self.comm
            .0
            .process_at_rank(0)
            .send_with_tag(&[] as &[u8], MPI_TAG_BYE);
        Ok(())
    }
}

/// A non-blocking send (`MPI_Isend`) that owns its buffer until MPI reports
/// completion. An unfinished one dropped (the serve loop failed, and the
/// job is about to be aborted) leaks its buffer rather than wait for a
/// coordinator that may be gone.
struct OwnedSend {
    request: Option<Request<'static, [u8], StaticScope>>,
    /// The buffer's parts (`Vec::into_raw_parts`), owned here while MPI reads it.
    buffer: (*mut u8, usize, usize),
}

impl OwnedSend {
    fn start<D: Destination>(dest: &D, data: Vec<u8>, tag: Tag) -> Self {
        let mut data = std::mem::ManuallyDrop::new(data);
        let buffer = (data.as_mut_ptr(), data.len(), data.capacity());
        // SAFETY: the vector's memory stays allocated and unwritten until
        // the request has completed (it is rebuilt only then, in `test`).
        let shared: &'static [u8] = unsafe { std::slice::from_raw_parts(buffer.0, buffer.1) };
        let request = dest.immediate_send_with_tag(StaticScope, shared, tag);
        OwnedSend {
            request: Some(request),
            buffer,
        }
    }

    /// `MPI_Test`: the buffer, once the send has completed.
    fn test(&mut self) -> Option<Vec<u8>> {
        let r = self.request.take()?;
        match r.test() {
            Ok(_) => {
                let (ptr, len, cap) = self.buffer;
                // SAFETY: the request completed, so MPI no longer reads the
                // buffer; these are the parts of the vector given to `start`,
                // rebuilt once (the request is gone now).
                Some(unsafe { Vec::from_raw_parts(ptr, len, cap) })
            }
            Err(r) => {
                self.request = Some(r);
                None
            }
        }
    }
}

impl Drop for OwnedSend {
    fn drop(&mut self) {
        // Unfinished: MPI may still read the buffer, so leave it (and the
        // request) be.
        if let Some(r) = self.request.take() {
            std::mem::forget(r);
        }
    }
}

/// Waits between probes while nothing comes: the schedule of
/// [`mpi_probe_wait`] over the time waited so far, taking next to nothing
/// from the ranks that compute (Open MPI's blocking calls spin at full speed
/// instead). Sleeps are precise once [`precise_timers`] has run on the thread.
struct Backoff {
    since: Instant,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            since: Instant::now(),
        }
    }

    fn pause(&mut self) {
        thread::sleep(mpi_probe_wait(self.since.elapsed()));
    }
}

/// A timer slack of 1 µs for the calling thread, instead of Linux's default
/// 50 µs, so that short sleeps are as short as asked.
fn precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and only affects the
    // calling thread's timers.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
    }
}

/// Serve the coordinator at rank 0 until it says `Stop`, then finalise MPI.
pub fn serve_mpi(registry: Registry) -> Result<(), ServeError> {
    let Some((universe, provided)) = mpi::initialize_with_threading(Threading::Multiple) else {
        return Err(ServeError::Ipc("MPI is already initialised".into()));
    };
    let nodelay = tcp_no_delay();
    log::debug!("TCP_NODELAY set on {nodelay} sockets of the MPI library");
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
    precise_timers();
    // Dropping `stop` ends the heartbeat thread at once (not at its next
    // tick: MPI_Finalize waits for it, and every rank's finalize for the others).
    let (stop, stopped) = mpsc::channel::<()>();
    let heartbeat = if provided >= Threading::Multiple {
        thread::Builder::new()
            .name("procpool-heartbeat".into())
            .spawn(move || heartbeat(comm, &stopped))
            .map_err(|e| ServeError::Ipc(e.to_string()))
            .map(Some)?
    } else {
        log::warn!(
            "the MPI library gives no MPI_THREAD_MULTIPLE: no heartbeats, so the coordinator may take this rank for silent during a long task"
        );
        None
    };
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        serve_over(
            MpiTransport {
                comm,
                sending: Vec::new(),
                spare: Vec::new(),
                received: 0,
                waits: 0,
                waited: Duration::ZERO,
            },
            registry,
            String::new(),
        )
    }));
    if matches!(served, Ok(Ok(()))) {
        await_release(comm, heartbeat.is_some());
    }
    drop(stop);
    if let Some(h) = heartbeat {
        let _ = h.join();
    }
    match served {
        Ok(Ok(())) => {
            drop(universe); // MPI_Finalize
            Ok(())
        }
        // Finalising would wait for the other ranks forever: end this rank,
        // and the launcher ends the job.
        Ok(Err(e)) => {
            log::error!("{e}; this rank ends");
            exit_now(1)
        }
        Err(_) => {
            log::error!("worker panicked outside a task; this rank ends");
            exit_now(101)
        }
    }
}

/// After this rank's goodbye, wait for the coordinator's (`MPI_TAG_BYE`
/// from rank 0), which says that it finalises MPI too. Were this rank to
/// enter `MPI_Finalize` (a collective of all ranks) at once, and the job
/// then be aborted, `mpirun` would tear the job down with that collective
/// pending, which can leave Open MPI 4.1's `mpirun` deadlocked or crashed.
/// The wait is bounded by the heartbeat thread (a silent coordinator ends
/// this rank), or, without one, by [`RELEASE_WITHOUT_HEARTBEATS`].
fn await_release(comm: Comm, watched: bool) {
    let root = comm.0.process_at_rank(0);
    let started = Instant::now();
    let mut idle = Backoff::new();
    loop {
        if let Some((message, status)) = root.immediate_matched_probe_with_tag(MPI_TAG_BYE) {
            let _ = (message, status).matched_receive_vec::<u8>();
            return;
        }
        if !watched && started.elapsed() > RELEASE_WITHOUT_HEARTBEATS {
            log::error!(
                "the coordinator did not let this rank finalise within {:.0} s; this rank ends",
                RELEASE_WITHOUT_HEARTBEATS.as_secs_f64()
            );
            exit_now(1);
        }
        idle.pause();
    }
}

/// Beat to the coordinator and watch its beats until `stopped` disconnects;
/// end the process if the coordinator goes silent.
fn heartbeat(comm: Comm, stopped: &mpsc::Receiver<()>) {
    let root = comm.0.process_at_rank(0);
    let started = Instant::now();
    let mut last_heard: Option<Instant> = None;
    let mut liveness = FIRST_CONTACT;
    let mut next_beat = Instant::now();
    let mut last_turn = Instant::now();
    loop {
        while let Some((message, status)) = root.immediate_matched_probe_with_tag(MPI_TAG_HEARTBEAT)
        {
            let (bytes, _) = (message, status).matched_receive_vec::<u8>();
            if let Ok(ms) = <[u8; 8]>::try_from(bytes.as_slice()) {
                liveness = Duration::from_millis(u64::from_le_bytes(ms).max(1));
            }
            last_heard = Some(Instant::now());
        }
        let now = Instant::now();
        if now.duration_since(last_turn) > SUSPENDED.min(liveness / 2) {
            // This thread did not run for far longer than its 20 ms wait:
            // the rank was stopped (SIGSTOP, as Open MPI's kill sequence
            // ends with SIGCONT) or starved, so the silence was its own, not
            // the coordinator's. Give the coordinator a fresh period.
            log::warn!(
                "this rank did not run for {:.1} s (stopped or starved)",
                now.duration_since(last_turn).as_secs_f64()
            );
            if let Some(t) = last_heard.as_mut() {
                *t = now;
            }
        }
        last_turn = now;
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
            // Not MPI_Abort (only rank 0 aborts; see the module's doc): the
            // launcher ends the job on this exit code, and an exit needs no
            // network, which may be cut.
            exit_now(1);
        }
        if now >= next_beat {
            root.send_with_tag(&[] as &[u8], MPI_TAG_HEARTBEAT);
            next_beat = now + (liveness / 4).min(Duration::from_millis(500));
        }
        match stopped.recv_timeout(Duration::from_millis(20)) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// End this rank at once, without `MPI_Finalize` (which would wait for the
/// other ranks) or `MPI_Abort` (which only rank 0 calls): the launcher sees
/// a rank exit with `code` before finalising, and ends the job.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process at once; it touches no memory of ours.
    unsafe { libc::_exit(code) }
}

/// `MPI_Abort` on the communicator (this rank is its rank 0): the launcher
/// ends every rank.
fn abort_job(comm: Comm, code: i32) -> ! {
    // SAFETY: MPI is initialised and `comm` is a live communicator;
    // MPI_Abort takes it and an error code, and does not return.
    unsafe {
        mpi::ffi::MPI_Abort(comm.0.as_raw(), code);
    }
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::tcp_no_delay;

    #[test]
    fn tcp_no_delay_turns_nagle_off_on_every_tcp_socket() -> std::io::Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let client = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (server, _) = listener.accept()?;
        assert!(!client.nodelay()? && !server.nodelay()?);
        // The listener and both ends, at least (other tests may hold more).
        assert!(tcp_no_delay() >= 3);
        assert!(client.nodelay()? && server.nodelay()?);
        Ok(())
    }
}
