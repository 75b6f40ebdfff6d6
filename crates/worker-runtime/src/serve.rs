//! The serve loop: handshake, configure, run batches, stop.

use std::process::ExitCode;
use std::time::Instant;

use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcSender};
use ipc_channel::IpcError;
use log::{debug, error, info, warn};
use procpool_protocol::{
    decode, encode_into, BatchResults, CodecError, Hello, Outcome, RecordOutcome, Request,
    WorkerMessage, ENV_PARENT, ENV_SERVER, ENV_TOKEN, PROTOCOL_VERSION,
};

use crate::fault::InjectedFault;
use crate::heartbeat::{self, Heartbeat, SideSender};
use crate::registry::{panic_message, Registry, Runner};

/// Why a worker stopped serving before it was told to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Run by hand rather than by a coordinator.
    #[error(
        "this is a procpool worker: a coordinator starts it (environment variable {ENV_SERVER} is not set); run `coordinator` instead"
    )]
    NotUnderCoordinator,
    /// The coordinator's rendezvous could not be reached.
    #[error("cannot connect to the coordinator")]
    Connect(#[source] std::io::Error),
    /// A channel failed in a way other than the coordinator going away.
    #[error("IPC channel failed: {0}")]
    Ipc(String),
    /// The coordinator sent bytes that are not a valid request.
    #[error("malformed request from the coordinator")]
    Protocol(#[source] CodecError),
    /// The coordinator sent a batch before choosing a task.
    #[error("the coordinator sent records before configuring a task")]
    NotConfigured,
}

/// Per-record log lines are for watching slow work: beyond a burst of
/// `BURST` lines they are limited to `PER_SECOND`, and the rest are counted.
struct LineBudget {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl LineBudget {
    const BURST: f64 = 20.0;
    const PER_SECOND: f64 = 10.0;

    fn new() -> Self {
        LineBudget {
            tokens: Self::BURST,
            last: Instant::now(),
            suppressed: 0,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.last).as_secs_f64() * Self::PER_SECOND;
        self.last = now;
        self.tokens = (self.tokens + refill).min(Self::BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// Serve a coordinator: connect, say hello, run what it sends until it says
/// `Stop` or goes away. Returns `Ok` on an orderly end.
pub fn serve(registry: Registry) -> Result<(), ServeError> {
    die_with_parent();
    let server = std::env::var(ENV_SERVER).map_err(|_| ServeError::NotUnderCoordinator)?;
    let token = std::env::var(ENV_TOKEN).unwrap_or_default();
    // Panics inside tasks are reported as failed records, with the message; the
    // default hook's extra stderr lines would only repeat them.
    std::panic::set_hook(Box::new(|_| {}));
    let fault = InjectedFault::from_env();
    fault.before_connect();

    let (to_coordinator, from_worker) = ipc::bytes_channel().map_err(ServeError::Connect)?;
    let (to_worker, requests) = ipc::bytes_channel().map_err(ServeError::Connect)?;
    let rendezvous: IpcSender<(IpcBytesSender, IpcBytesReceiver)> =
        IpcSender::connect(server).map_err(ServeError::Connect)?;
    rendezvous
        .send((to_worker, from_worker))
        .map_err(|e| ServeError::Ipc(e.to_string()))?;
    drop(rendezvous);
    let transport = IpcTransport {
        tx: to_coordinator,
        rx: requests,
    };
    serve_on(transport, registry, token, fault)
}

/// How a worker reaches its coordinator: ipc-channel locally, or another
/// backend (e.g. MPI) behind the same protocol.
pub trait WorkerTransport {
    /// The next request; `Ok(None)` once the coordinator is gone.
    fn recv(&mut self) -> Result<Option<Vec<u8>>, ServeError>;
    /// Send one encoded message.
    fn send(&mut self, bytes: &[u8]) -> Result<(), ServeError>;
    /// Called once after `Stop`, before returning.
    fn finish(&mut self) -> Result<(), ServeError> {
        Ok(())
    }
    /// A second sender, usable from another thread while the serve loop sends
    /// results, for heartbeats. `None` (the default) when the transport
    /// cannot send from two threads: the worker then sends no heartbeats.
    fn side_sender(&self) -> Option<SideSender> {
        None
    }
}

struct IpcTransport {
    tx: IpcBytesSender,
    rx: IpcBytesReceiver,
}

impl WorkerTransport for IpcTransport {
    fn recv(&mut self) -> Result<Option<Vec<u8>>, ServeError> {
        match self.rx.recv() {
            Ok(bytes) => Ok(Some(bytes)),
            Err(IpcError::Disconnected) => Ok(None),
            Err(e) => Err(ServeError::Ipc(e.to_string())),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), ServeError> {
        self.tx.send(bytes).map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                ServeError::Ipc("the coordinator closed the result channel".into())
            } else {
                ServeError::Ipc(e.to_string())
            }
        })
    }

    fn side_sender(&self) -> Option<SideSender> {
        // A clone of the sender: ipc-channel sends each message as one
        // datagram on the channel's socket (larger ones continue on a socket
        // of their own), so two threads' messages never interleave.
        let tx = self.tx.clone();
        Some(Box::new(move |bytes| tx.send(bytes).is_ok()))
    }
}

/// The protocol loop over any transport: `Hello`, then requests until `Stop`
/// or the coordinator goes away.
pub fn serve_over<T: WorkerTransport>(
    transport: T,
    registry: Registry,
    token: String,
) -> Result<(), ServeError> {
    std::panic::set_hook(Box::new(|_| {}));
    serve_on(transport, registry, token, InjectedFault::from_env())
}

fn serve_on<T: WorkerTransport>(
    transport: T,
    registry: Registry,
    token: String,
    fault: InjectedFault,
) -> Result<(), ServeError> {
    let pid = std::process::id();
    let mut out = Outbox {
        transport,
        buf: Vec::with_capacity(64 << 10),
    };
    fault.before_hello(|bytes| {
        let _ = out.transport.send(bytes);
    });
    out.send(&WorkerMessage::Hello(Hello {
        protocol_version: fault.version(PROTOCOL_VERSION),
        pid,
        host: host_name(),
        token: fault.token(token),
        tasks: registry.infos(),
    }))?;
    // After the Hello, which must come first; stopped when this returns.
    let _heartbeat = heartbeat::period_from_env()
        .and_then(|period| Some((period, out.transport.side_sender()?)))
        .and_then(|(period, send)| Heartbeat::start(period, send));

    let mut runner: Option<Box<dyn Runner>> = None;
    let mut flush_each = false;
    let mut budget = LineBudget::new();
    let mut done = 0u64;
    let mut failed = 0u64;
    loop {
        let Some(bytes) = out.transport.recv()? else {
            info!("coordinator went away; exiting after {done} records");
            return Ok(());
        };
        match decode::<Request>(&bytes).map_err(ServeError::Protocol)? {
            Request::Configure {
                task,
                config,
                flush_each: each,
            } => match registry.runner(&task, &config) {
                Ok(r) => {
                    debug!("configured task `{task}`");
                    runner = Some(r);
                    flush_each = each;
                    out.send(&WorkerMessage::Ready)?;
                }
                Err(reason) => {
                    warn!("{reason}");
                    out.send(&WorkerMessage::Rejected { reason })?;
                }
            },
            Request::Batch(batch) => {
                let runner = runner.as_deref().ok_or(ServeError::NotConfigured)?;
                let mut outcomes = Vec::with_capacity(batch.records.len());
                let mut started = Instant::now();
                // One wall-clock read per batch; records are timed with the
                // monotonic clock from there (one read per record).
                let batch_wall_us = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64);
                let batch_t0 = started;
                let mut t0 = started;
                for record in batch.records {
                    fault.before_record(done, |bytes| {
                        let _ = out.transport.send(bytes);
                    });
                    if log::log_enabled!(log::Level::Info) && budget.allow(t0) {
                        let label = runner
                            .label(&record.payload)
                            .unwrap_or_else(|| format!("#{}", record.seq));
                        info!("Process {pid} working record {label}");
                    }
                    let started_us = batch_wall_us + t0.duration_since(batch_t0).as_micros() as u64;
                    let outcome = runner.run_encoded(&record.payload);
                    let t1 = Instant::now();
                    let nanos = t1.duration_since(t0).as_nanos() as u64;
                    t0 = t1;
                    done += 1;
                    if let Outcome::Failed(f) = &outcome {
                        failed += 1;
                        debug!(
                            "record #{} failed ({:?}): {}",
                            record.seq, f.kind, f.message
                        );
                    }
                    outcomes.push(RecordOutcome {
                        seq: record.seq,
                        started_us,
                        nanos,
                        outcome,
                    });
                    if flush_each {
                        out.send_results(batch.id, &mut started, &mut outcomes)?;
                    }
                }
                if !outcomes.is_empty() {
                    out.send_results(batch.id, &mut started, &mut outcomes)?;
                }
            }
            Request::Stop => {
                let quiet = if budget.suppressed > 0 {
                    format!(" ({} per-record log lines suppressed)", budget.suppressed)
                } else {
                    String::new()
                };
                info!("stopping after {done} records, {failed} failed{quiet}");
                return out.transport.finish();
            }
        }
    }
}

/// The worker's sending side, with one reused encode buffer.
struct Outbox<T> {
    transport: T,
    buf: Vec<u8>,
}

impl<T: WorkerTransport> Outbox<T> {
    fn send(&mut self, message: &WorkerMessage) -> Result<(), ServeError> {
        self.buf.clear();
        encode_into(message, &mut self.buf).map_err(ServeError::Protocol)?;
        self.transport.send(&self.buf)
    }

    fn send_results(
        &mut self,
        batch: u64,
        started: &mut Instant,
        outcomes: &mut Vec<RecordOutcome>,
    ) -> Result<(), ServeError> {
        let now = Instant::now();
        let busy_nanos = now.duration_since(*started).as_nanos() as u64;
        *started = now;
        self.send(&WorkerMessage::Results(BatchResults {
            batch,
            busy_nanos,
            outcomes: std::mem::take(outcomes),
        }))
    }
}

/// This machine's host name, as the kernel reports it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Ask the kernel to kill this worker when its coordinator dies, and exit now
/// if that already happened before we could ask.
fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    if let Some(parent) = std::env::var(ENV_PARENT)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    {
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            std::process::exit(0);
        }
    }
}

/// `main` for a worker binary: log setup, [`serve`], and an exit code
/// (0 on an orderly end, 2 when run by hand, 1 on any other failure).
pub fn main_with(registry: Registry) -> ExitCode {
    ExitCode::from(worker_main(registry))
}

/// [`main_with`]'s work, with the exit code as a number (for `process::exit`).
pub(crate) fn worker_main(registry: Registry) -> u8 {
    // A local worker of a coordinator that itself runs under mpirun inherits
    // the launcher's variables: the coordinator's own variable decides.
    #[cfg(feature = "mpi")]
    if crate::mpi::launched_by_mpi() && std::env::var_os(ENV_SERVER).is_none() {
        // Ranks may run on several hosts: say which in every line.
        let role: &'static str = Box::leak(format!("worker@{}", host_name()).into_boxed_str());
        crate::init_logging(role);
        return exit_code(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            || crate::mpi::serve_mpi(registry),
        )));
    }
    crate::init_logging("worker");
    exit_code(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
        || serve(registry),
    )))
}

fn exit_code(outcome: std::thread::Result<Result<(), ServeError>>) -> u8 {
    match outcome {
        Ok(Ok(())) => 0,
        Ok(Err(ServeError::NotUnderCoordinator)) => {
            eprintln!("worker: {}", ServeError::NotUnderCoordinator);
            2
        }
        Ok(Err(e)) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            error!("{msg}");
            1
        }
        Err(panic) => {
            error!(
                "worker panicked outside a task: {}",
                panic_message(panic.as_ref())
            );
            1
        }
    }
}
