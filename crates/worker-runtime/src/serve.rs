//! The serve loop: handshake, configure, run batches, stop.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcSender};
use ipc_channel::IpcError;
use log::{debug, error, info, warn};
use procpool_protocol::{
    decode, decode_batch_ref, encode, encode_into, encode_results, is_batch, is_results,
    BatchResults, CodecError, Hello, Request, TaskFailure, WorkerMessage, ENV_PARENT, ENV_SERVER,
    ENV_TOKEN, MAX_RECORD_BYTES, PROTOCOL_VERSION,
};

use crate::arena::Arena;
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
    /// Launched wrongly (e.g. an MPI job with a worker at rank 0).
    #[error("{0}")]
    Launch(String),
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

    /// When the next token comes, if no one takes one before.
    fn next_token(&self) -> Instant {
        let wait = ((1.0 - self.tokens) / Self::PER_SECOND).max(0.0);
        self.last + Duration::from_secs_f64(wait)
    }
}

/// One batch's view of the shared [`LineBudget`]: once it says no, the
/// records until its next token are refused (and counted) without the lock.
/// Other threads only ever take tokens, so this refuses no line the shared
/// budget would have allowed.
struct LocalBudget<'a> {
    shared: &'a Mutex<LineBudget>,
    quiet_until: Option<Instant>,
    suppressed: u64,
}

impl<'a> LocalBudget<'a> {
    fn new(shared: &'a Mutex<LineBudget>) -> Self {
        LocalBudget {
            shared,
            quiet_until: None,
            suppressed: 0,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        if self.quiet_until.is_some_and(|until| now < until) {
            self.suppressed += 1;
            return false;
        }
        let Ok(mut b) = self.shared.lock() else {
            return false;
        };
        b.suppressed += std::mem::take(&mut self.suppressed);
        let allowed = b.allow(now);
        self.quiet_until = (!allowed).then(|| b.next_token());
        allowed
    }
}

impl Drop for LocalBudget<'_> {
    fn drop(&mut self) {
        if self.suppressed > 0 {
            if let Ok(mut b) = self.shared.lock() {
                b.suppressed += self.suppressed;
            }
        }
    }
}

/// Serve a coordinator: connect, say hello, run what it sends until it says
/// `Stop` or goes away. Returns `Ok` on an orderly end.
pub fn serve(registry: Registry) -> Result<(), ServeError> {
    let server = std::env::var(ENV_SERVER).map_err(|_| ServeError::NotUnderCoordinator)?;
    let token = std::env::var(ENV_TOKEN).unwrap_or_default();
    serve_at(server, token, heartbeat::period_from_env(), registry)
}

/// [`serve`] the coordinator whose rendezvous is `server`, with the run's
/// `token`, sending a heartbeat every `heartbeat` (if any).
fn serve_at(
    server: String,
    token: String,
    heartbeat: Option<Duration>,
    registry: Registry,
) -> Result<(), ServeError> {
    die_with_parent();
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
    serve_on(transport, registry, token, fault, heartbeat, true)
}

/// A worker rank of an MPI launch whose ranks all run on this machine (see
/// [`crate::node`]): no MPI; the coordinator's invitation names the channel.
fn serve_node(job: &crate::node::NodeJob, registry: Registry) -> Result<(), ServeError> {
    use crate::node::{FIRST_CONTACT, HOW_TO_LAUNCH};
    if job.rank == 0 {
        return Err(ServeError::Launch(format!(
            "this worker is rank 0 of an MPI job of {} (every rank on this machine), but rank 0 must be the coordinator; {HOW_TO_LAUNCH}",
            job.size
        )));
    }
    let invitation = job.await_invitation(FIRST_CONTACT).map_err(|e| {
        ServeError::Launch(format!("{e} (every rank on this machine); {HOW_TO_LAUNCH}"))
    })?;
    debug!(
        "rank {} of {}, every rank on this machine: the coordinator (pid {}) over local channels",
        job.rank, job.size, invitation.coordinator
    );
    let heartbeat =
        (invitation.heartbeat_ms > 0).then(|| Duration::from_millis(invitation.heartbeat_ms));
    crate::node::watch_coordinator(
        invitation.coordinator,
        Duration::from_millis(invitation.liveness_ms.max(1)),
    )
    .map_err(|e| {
        ServeError::Ipc(format!(
            "cannot start the thread that watches the coordinator: {e}"
        ))
    })?;
    serve_at(invitation.server, invitation.token, heartbeat, registry)
}

/// The arena `value` names (`Request::Arenas`), mapped; `None` if it cannot
/// be (messages then go over the socket).
fn open_arena(what: &str, value: &str) -> Option<Arena> {
    Arena::open(value)
        .map_err(|e| debug!("{what} over the socket: cannot map {value}: {e}"))
        .ok()
}

/// Results messages that went through the shared memory.
static RESULTS_IN_ARENA: AtomicU64 = AtomicU64::new(0);

/// Send `bytes` (an encoded message) through `send`; results through a slot
/// of `arena` when one is free, and a few bytes naming it.
fn send_via<E>(
    arena: Option<&Arena>,
    bytes: &[u8],
    send: impl FnOnce(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    if let Some(arena) = arena.filter(|_| is_results(bytes)) {
        if let (Ok(len), Some(slot)) = (u32::try_from(bytes.len()), arena.put(bytes)) {
            if let Ok(named) = encode(&WorkerMessage::ResultsIn { slot, len }) {
                RESULTS_IN_ARENA.fetch_add(1, Ordering::Relaxed);
                return send(&named);
            }
            // SAFETY: our own claim, never named to the coordinator.
            unsafe { arena.release(slot) };
        }
    }
    send(bytes)
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
    serve_on(
        transport,
        registry,
        token,
        InjectedFault::from_env(),
        heartbeat::period_from_env(),
        false,
    )
}

fn serve_on<T: WorkerTransport>(
    transport: T,
    registry: Registry,
    token: String,
    fault: InjectedFault,
    heartbeat: Option<Duration>,
    local: bool,
) -> Result<(), ServeError> {
    let pid = std::process::id();
    // The shared memory for batches and for results, once the coordinator
    // names it (`Request::Arenas`); local workers only.
    let mut arena: Option<Arena> = None;
    let mut out = Outbox {
        transport,
        buf: Vec::with_capacity(64 << 10),
        results: Arc::default(),
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
    let _heartbeat = heartbeat
        .and_then(|period| Some((period, out.transport.side_sender()?)))
        .and_then(|(period, send)| Heartbeat::start(period, send));

    let mut state: Option<Configured> = None;
    // Batches that came through the shared memory.
    let mut from_arena = 0u64;
    let ctx = Arc::new(RunContext {
        pid,
        fault,
        budget: Mutex::new(LineBudget::new()),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        record_times: AtomicBool::new(true),
    });
    loop {
        let Some(bytes) = out.transport.recv()? else {
            let done = ctx.done.load(Ordering::Relaxed);
            info!("coordinator went away; exiting after {done} records");
            abandoned();
            return Ok(());
        };
        // Batches first, decoded in place (the hot path).
        if is_batch(&bytes) {
            match state.as_mut().ok_or(ServeError::NotConfigured)? {
                Configured::Inline {
                    runner,
                    flush_each,
                    collected,
                } => run_inline(&**runner, &ctx, &bytes, *flush_each, collected, &mut out)?,
                // The task thread decodes it.
                Configured::Threads(threads) => threads.submit(bytes)?,
            }
            continue;
        }
        match decode::<Request>(&bytes).map_err(ServeError::Protocol)? {
            Request::Configure {
                spec,
                flush_each,
                record_times,
            } => {
                ctx.record_times.store(record_times, Ordering::Relaxed);
                let configured = registry.runner(&spec).and_then(|runner| {
                    let runner: Arc<dyn Runner> = Arc::from(runner);
                    let threads = spec.threads.max(1);
                    if threads == 1 {
                        return Ok(Configured::Inline {
                            runner,
                            flush_each,
                            collected: Collected::default(),
                        });
                    }
                    let send = out.transport.side_sender().ok_or_else(|| {
                        "this transport cannot run batches on several threads".to_owned()
                    })?;
                    // Task threads' results go through the shared memory too.
                    let results = out.results.clone();
                    let mut send = send;
                    let send: SideSender = Box::new(move |bytes: &[u8]| {
                        send_via(
                            results.get(),
                            bytes,
                            |b| if send(b) { Ok(()) } else { Err(()) },
                        )
                        .is_ok()
                    });
                    ThreadedBatches::start(threads, runner, ctx.clone(), send)
                        .map(Configured::Threads)
                        .map_err(|e| format!("cannot start {threads} task threads: {e}"))
                });
                match configured {
                    Ok(c) => {
                        debug!("configured task `{}` ({} threads)", spec.name, spec.threads);
                        state = Some(c);
                        out.send(&WorkerMessage::Ready)?;
                    }
                    Err(reason) => {
                        warn!("{reason}");
                        out.send(&WorkerMessage::Rejected { reason })?;
                    }
                }
            }
            // Shared memory to map, named by the coordinator of a local worker.
            Request::Arenas { batches, results } => {
                let map = local && fault != InjectedFault::NoArena;
                if map && arena.is_none() {
                    arena = open_arena("batches", &batches);
                }
                if map && out.results.get().is_none() {
                    if let Some(a) = open_arena("results", &results) {
                        let _ = out.results.set(a);
                    }
                }
                out.send(&WorkerMessage::ArenasMapped {
                    batches: arena.is_some(),
                    results: out.results.get().is_some(),
                })?;
            }
            // A batch in the shared memory, decoded where it lies.
            Request::BatchIn { slot, len } => {
                // SAFETY: `bytes` is used only until the slot is released
                // below, each path releasing it after its last use.
                let bytes = arena
                    .as_ref()
                    .and_then(|a| unsafe { a.slot(slot, len) })
                    .ok_or_else(|| {
                        ServeError::Ipc(format!(
                            "a batch in shared-memory slot {slot} ({len} bytes), which this worker does not have"
                        ))
                    })?;
                match state.as_mut().ok_or(ServeError::NotConfigured)? {
                    Configured::Inline {
                        runner,
                        flush_each,
                        collected,
                    } => run_inline(&**runner, &ctx, bytes, *flush_each, collected, &mut out)?,
                    // The task thread decodes a copy of its own.
                    Configured::Threads(threads) => {
                        let copy = bytes.to_vec();
                        if let Some(a) = arena.as_ref() {
                            // SAFETY: `bytes` is not used after this copy.
                            unsafe { a.release(slot) };
                        }
                        threads.submit(copy)?;
                        from_arena += 1;
                        continue;
                    }
                }
                // Every record is answered: nothing reads the slot any more.
                if let Some(a) = arena.as_ref() {
                    // SAFETY: the batch borrowing `bytes` is gone.
                    unsafe { a.release(slot) };
                }
                from_arena += 1;
            }
            // `is_batch` above takes every batch; a decoder that disagrees is a bug
            // in this process, reported rather than panicked on.
            Request::Batch(_) | Request::Lines(_) => {
                return Err(ServeError::Ipc(
                    "a batch was not recognised for decoding in place".into(),
                ))
            }
            Request::Stop => {
                if let Some(Configured::Threads(threads)) = state.take() {
                    threads.finish();
                }
                let suppressed = ctx.budget.lock().map_or(0, |b| b.suppressed);
                let quiet = if suppressed > 0 {
                    format!(" ({suppressed} per-record log lines suppressed)")
                } else {
                    String::new()
                };
                let done = ctx.done.load(Ordering::Relaxed);
                let failed = ctx.failed.load(Ordering::Relaxed);
                info!("stopping after {done} records, {failed} failed{quiet}");
                debug!(
                    "{from_arena} batches came through shared memory, {} results went back through it",
                    RESULTS_IN_ARENA.load(Ordering::Relaxed)
                );
                return out.transport.finish();
            }
        }
    }
}

/// Outcome bytes beyond which a batch's results are sent in several
/// messages; with [`MAX_RECORD_BYTES`] per output, a message stays under
/// the wire limit.
const RESULTS_FLUSH_BYTES: usize = 1 << 20;

/// An output too large for a results message fails its record (the
/// coordinator could not decode it), rather than the whole message; a
/// failure's message is cut to fit.
fn bounded(result: Result<(), TaskFailure>, output_len: usize) -> Result<(), TaskFailure> {
    match result {
        Ok(()) if output_len > MAX_RECORD_BYTES => Err(TaskFailure {
            kind: procpool_protocol::FailureKind::Error,
            message: format!(
                "the output is {output_len} bytes, over the {MAX_RECORD_BYTES}-byte limit of one record"
            ),
        }),
        Err(mut f) if f.message.len() > MAX_RECORD_BYTES => {
            // Cut at a character boundary (truncate panics elsewhere).
            let mut cut = MAX_RECORD_BYTES / 2;
            while !f.message.is_char_boundary(cut) {
                cut -= 1;
            }
            f.message.truncate(cut);
            Err(f)
        }
        other => other,
    }
}

/// The results of (part of) a batch, as they go on the wire: outputs in
/// one buffer, so that no record needs an allocation of its own.
#[derive(Default)]
struct Collected(BatchResults);

impl Collected {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn clear(&mut self) {
        self.0.started_us = 0;
        self.0.nanos.clear();
        self.0.lengths.clear();
        self.0.outputs.clear();
        self.0.failures.clear();
    }

    /// Encode as `WorkerMessage::Results`, appending to `buf`.
    fn encode(
        &mut self,
        batch: u64,
        thread: u32,
        busy_nanos: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), ServeError> {
        self.0.batch = batch;
        self.0.thread = thread;
        self.0.busy_nanos = busy_nanos;
        encode_results(&self.0, buf).map_err(ServeError::Protocol)
    }
}

/// Where [`run_batch`] puts its outcomes.
trait BatchSink {
    /// Send (or keep) these outcomes; `collected` is left empty.
    fn flush(&mut self, collected: &mut Collected) -> Result<(), ServeError>;
    /// Send raw bytes (fault injection only).
    fn raw(&mut self, bytes: &[u8]);
}

/// Outcomes sent from the serve loop.
/// Decode a batch message where it lies and run it on this thread, its
/// results sent through `out` as they are due.
fn run_inline<T: WorkerTransport>(
    runner: &dyn Runner,
    ctx: &RunContext,
    bytes: &[u8],
    flush_each: bool,
    collected: &mut Collected,
    out: &mut Outbox<T>,
) -> Result<(), ServeError> {
    let batch = decode_batch_ref(bytes)
        .map_err(ServeError::Protocol)?
        .ok_or(ServeError::NotConfigured)?;
    let mut sink = InlineSink {
        out,
        batch: batch.id,
        started: Instant::now(),
    };
    run_batch(
        runner,
        ctx,
        &batch.records,
        flush_each,
        collected,
        &mut sink,
    )
}

struct InlineSink<'a, T> {
    out: &'a mut Outbox<T>,
    batch: u64,
    started: Instant,
}

impl<T: WorkerTransport> BatchSink for InlineSink<'_, T> {
    fn flush(&mut self, collected: &mut Collected) -> Result<(), ServeError> {
        let now = Instant::now();
        let busy = now.duration_since(self.started).as_nanos() as u64;
        self.started = now;
        self.out.buf.clear();
        collected.encode(self.batch, 0, busy, &mut self.out.buf)?;
        collected.clear();
        let out = &mut *self.out;
        send_via(out.results.get(), &out.buf, |b| out.transport.send(b))
    }

    fn raw(&mut self, bytes: &[u8]) {
        let _ = self.out.transport.send(bytes);
    }
}

/// What the worker runs, once configured.
enum Configured {
    /// Batches run on the serve loop's thread, one at a time.
    Inline {
        runner: Arc<dyn Runner>,
        flush_each: bool,
        /// Kept from batch to batch: its buffers are not allocated again
        /// (and their pages not faulted in again) for every batch.
        collected: Collected,
    },
    /// Batches run on N threads of this process (the thread executor).
    Threads(ThreadedBatches),
}

/// What every task thread shares: counters, faults, the log line budget.
struct RunContext {
    pid: u32,
    fault: InjectedFault,
    budget: Mutex<LineBudget>,
    done: AtomicU64,
    failed: AtomicU64,
    /// Time each record (set by `Configure`).
    record_times: AtomicBool,
}

/// Run one batch: `sink` gets the outcomes (after each record with
/// `flush_each`, else once at the end). `collected` is empty, and left so;
/// its buffers are reused.
fn run_batch(
    runner: &dyn Runner,
    ctx: &RunContext,
    records: &[(u64, &[u8])],
    flush_each: bool,
    collected: &mut Collected,
    sink: &mut dyn BatchSink,
) -> Result<(), ServeError> {
    collected.clear();
    collected
        .0
        .outputs
        .reserve(records.iter().map(|r| r.1.len()).sum::<usize>());
    collected.0.lengths.reserve(records.len());
    // One wall-clock read per batch; records are timed with the monotonic
    // clock from there (one read per record), if asked to. Untimed records
    // have no durations at all, rather than one 0 each.
    let times = ctx.record_times.load(Ordering::Relaxed);
    if times {
        collected.0.nanos.reserve(records.len());
    }
    let batch_wall_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let batch_t0 = Instant::now();
    let mut t0 = batch_t0;
    // `t0 - batch_t0` in nanoseconds.
    let mut t0_ns = 0u64;
    let log_records = log::log_enabled!(log::Level::Info);
    let mut budget = LocalBudget::new(&ctx.budget);
    // Bytes of failure messages not yet flushed (outputs are counted in `collected`).
    let mut pending_messages = 0usize;
    // Counted here and added to the shared count once per batch.
    let done_before = ctx.done.load(Ordering::Relaxed);
    let mut done = 0u64;
    for &(seq, payload) in records {
        ctx.fault
            .before_record(done_before + done, |bytes| sink.raw(bytes));
        let pid = ctx.pid;
        let mut log_start = |label: Option<String>| {
            let label = label.unwrap_or_else(|| format!("#{seq}"));
            info!("Process {pid} working record {label}");
        };
        // The budget is asked first, so that a record's label is built only
        // for a line that is written.
        let log_this = log_records && budget.allow(t0);
        if collected.is_empty() {
            // Each record starts when the one before it ended (0: unknown).
            collected.0.started_us = if times {
                batch_wall_us + t0_ns / 1000
            } else {
                0
            };
        }
        let r = &mut collected.0;
        let before = r.outputs.len();
        let result = runner.run_record(
            payload,
            &mut r.outputs,
            if log_this { Some(&mut log_start) } else { None },
        );
        let result = bounded(result, r.outputs.len() - before);
        done += 1;
        if times {
            let t1 = Instant::now();
            let t1_ns = t1.duration_since(batch_t0).as_nanos() as u64;
            r.nanos.push(t1_ns - t0_ns);
            (t0, t0_ns) = (t1, t1_ns);
        } else if log_records && done.is_multiple_of(64) {
            // The log line budget still needs the time now and then.
            t0 = Instant::now();
        }
        match result {
            // Within `MAX_RECORD_BYTES`: checked by `bounded`.
            Ok(()) => r.lengths.push((r.outputs.len() - before) as u32),
            Err(f) => {
                r.outputs.truncate(before);
                ctx.failed.fetch_add(1, Ordering::Relaxed);
                pending_messages += f.message.len();
                debug!("record #{seq} failed ({:?}): {}", f.kind, f.message);
                let index = r.lengths.len() as u32;
                r.lengths.push(0);
                r.failures.push((index, f));
            }
        }
        // Large outputs go in several messages, each well under what the
        // coordinator decodes.
        if flush_each || r.outputs.len() + pending_messages >= RESULTS_FLUSH_BYTES {
            pending_messages = 0;
            sink.flush(collected)?;
        }
    }
    ctx.done.fetch_add(done, Ordering::Relaxed);
    if !collected.is_empty() {
        sink.flush(collected)?;
    }
    // One huge output is not held on to for the rest of the run.
    collected.0.outputs.shrink_to(2 * RESULTS_FLUSH_BYTES);
    Ok(())
}

/// Batches run on N threads. The supervisor expects a worker's results in
/// the order it sent the batches, so finished batches wait in a small
/// reorder map until the ones before them are sent.
struct ThreadedBatches {
    work: Option<mpsc::Sender<(u64, Vec<u8>)>>,
    handles: Vec<std::thread::JoinHandle<()>>,
    next: u64,
    error: Arc<Mutex<Option<String>>>,
}

struct Emitter {
    send: SideSender,
    next: u64,
    /// Encoded messages of finished batches, by submission index.
    waiting: BTreeMap<u64, Vec<Vec<u8>>>,
}

/// Outcomes of one batch on a task thread, sent whole when it is done.
struct ThreadSink<'a> {
    batch: u64,
    thread: u32,
    started: Instant,
    /// Encoded `Results` messages of this batch (several when its outputs are large).
    messages: Vec<Vec<u8>>,
    emitter: &'a Mutex<Emitter>,
}

impl BatchSink for ThreadSink<'_> {
    fn flush(&mut self, collected: &mut Collected) -> Result<(), ServeError> {
        let now = Instant::now();
        let busy = now.duration_since(self.started).as_nanos() as u64;
        self.started = now;
        let mut bytes = Vec::new();
        collected.encode(self.batch, self.thread, busy, &mut bytes)?;
        collected.clear();
        self.messages.push(bytes);
        Ok(())
    }

    fn raw(&mut self, bytes: &[u8]) {
        if let Ok(mut e) = self.emitter.lock() {
            let _ = (e.send)(bytes);
        }
    }
}

impl ThreadedBatches {
    fn start(
        threads: u32,
        runner: Arc<dyn Runner>,
        ctx: Arc<RunContext>,
        send: SideSender,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(u64, Vec<u8>)>();
        let rx = Arc::new(Mutex::new(rx));
        let emitter = Arc::new(Mutex::new(Emitter {
            send,
            next: 0,
            waiting: BTreeMap::new(),
        }));
        let error = Arc::new(Mutex::new(None));
        let mut handles = Vec::new();
        for thread in 0..threads {
            let (rx, runner, ctx, emitter, error) = (
                rx.clone(),
                runner.clone(),
                ctx.clone(),
                emitter.clone(),
                error.clone(),
            );
            let handle = std::thread::Builder::new()
                .name(format!("task-{thread}"))
                .spawn(move || {
                    // Kept from batch to batch, as on the inline path.
                    let mut collected = Collected::default();
                    loop {
                        let next = rx.lock().ok().and_then(|rx| rx.recv().ok());
                        let Some((index, message)) = next else { return };
                        let started = Instant::now();
                        let mut sink = ThreadSink {
                            batch: 0,
                            thread,
                            started,
                            messages: Vec::new(),
                            emitter: &emitter,
                        };
                        let sent = decode_batch_ref(&message)
                            .map_err(ServeError::Protocol)
                            .and_then(|batch| batch.ok_or(ServeError::NotConfigured))
                            .and_then(|batch| {
                                sink.batch = batch.id;
                                run_batch(
                                    &*runner,
                                    &ctx,
                                    &batch.records,
                                    false,
                                    &mut collected,
                                    &mut sink,
                                )?;
                                if sink.messages.is_empty() {
                                    sink.flush(&mut collected)?;
                                }
                                Ok(std::mem::take(&mut sink.messages))
                            })
                            .and_then(|messages| {
                                let mut e = emitter.lock().map_err(|_| {
                                    ServeError::Ipc("result sender poisoned".into())
                                })?;
                                e.waiting.insert(index, messages);
                                while let Some(messages) = {
                                    let next = e.next;
                                    e.waiting.remove(&next)
                                } {
                                    for bytes in messages {
                                        if !(e.send)(&bytes) {
                                            return Err(ServeError::Ipc(
                                                "the coordinator closed the result channel".into(),
                                            ));
                                        }
                                    }
                                    e.next += 1;
                                }
                                Ok(())
                            });
                        if let Err(err) = sent {
                            if let Ok(mut slot) = error.lock() {
                                slot.get_or_insert(err.to_string());
                            }
                            return;
                        }
                    }
                })?;
            handles.push(handle);
        }
        Ok(ThreadedBatches {
            work: Some(tx),
            handles,
            next: 0,
            error,
        })
    }

    fn submit(&mut self, batch: Vec<u8>) -> Result<(), ServeError> {
        if let Some(err) = self.error.lock().ok().and_then(|e| e.clone()) {
            return Err(ServeError::Ipc(err));
        }
        let index = self.next;
        self.next += 1;
        match &self.work {
            Some(work) if work.send((index, batch)).is_ok() => Ok(()),
            _ => Err(ServeError::Ipc("the task threads are gone".into())),
        }
    }

    /// Let the threads finish what was submitted, and wait for them.
    fn finish(mut self) {
        self.work = None;
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// The worker's sending side, with one reused encode buffer.
struct Outbox<T> {
    transport: T,
    buf: Vec<u8>,
    /// Where results go, once the coordinator's shared memory is mapped
    /// (shared with the task threads' senders).
    results: Arc<OnceLock<Arena>>,
}

impl<T: WorkerTransport> Outbox<T> {
    fn send(&mut self, message: &WorkerMessage) -> Result<(), ServeError> {
        self.buf.clear();
        encode_into(message, &mut self.buf).map_err(ServeError::Protocol)?;
        self.transport.send(&self.buf)
    }
}

/// This machine's host name, as the kernel reports it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Take this worker down with its coordinator: the kernel sends SIGTERM when
/// the parent dies (`PR_SET_PDEATHSIG`), and our handler turns it into
/// SIGKILL for the worker's whole process group, so that processes its tasks
/// started go too. Exits now if the coordinator died before we could ask.
///
/// A plain signal handler, not a signal-handling thread: a thread more in
/// every worker is a measurable part of starting many of them.
fn die_with_parent() {
    // The handler first, so the signal is never left to its default action;
    // without it, SIGKILL for the worker alone.
    // SAFETY: `on_parent_death` makes only async-signal-safe calls; the
    // sigaction struct is fully initialised before use.
    let caught = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_parent_death as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut()) == 0
    };
    let signal = if caught { libc::SIGTERM } else { libc::SIGKILL };
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, signal);
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

/// SIGTERM: the coordinator died (or someone asked this worker to go).
extern "C" fn on_parent_death(_: libc::c_int) {
    kill_own_group()
}

/// SIGKILL for this process and, when it leads its own process group (as
/// local workers do), the whole group: whatever its tasks started. A process
/// in someone else's group (an MPI rank in `mpirun`'s) kills itself only.
fn kill_own_group() -> ! {
    // SAFETY: getpgrp, getpid, killpg and kill take and return plain integers.
    unsafe {
        let group = libc::getpgrp();
        if group == libc::getpid() {
            libc::killpg(group, libc::SIGKILL);
        }
        libc::kill(libc::getpid(), libc::SIGKILL);
        // Not reached; `_exit`, unlike `exit`, is safe in a signal handler.
        libc::_exit(1)
    }
}

/// The coordinator went away without a word: a local worker of a coordinator
/// that leads its own process group kills the group, itself included, so
/// that nothing its tasks started is left behind. Otherwise nothing is done.
fn abandoned() {
    // SAFETY: getpgrp and getpid have no preconditions.
    let leader = unsafe { libc::getpgrp() == libc::getpid() };
    if leader && std::env::var_os(ENV_PARENT).is_some() {
        kill_own_group();
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
    if std::env::var_os(ENV_SERVER).is_none() {
        match crate::node::one_node_job() {
            Ok(Some(job)) => {
                crate::init_logging("worker");
                return exit_code(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                    || serve_node(&job, registry),
                )));
            }
            Ok(None) => {}
            Err(e) => {
                crate::init_logging("worker");
                error!("{e}");
                return 2;
            }
        }
    }
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
        Ok(Err(ServeError::Launch(msg))) => {
            error!("{msg}");
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_budget_refuses_what_the_shared_one_would_and_counts_it() {
        let shared = Mutex::new(LineBudget::new());
        let t = shared.lock().unwrap().last;
        let mut local = LocalBudget::new(&shared);
        let allowed = (0..30).filter(|_| local.allow(t)).count();
        assert_eq!(allowed, LineBudget::BURST as usize);
        // Refused without the lock until the next token, then one more line.
        let soon = t + Duration::from_millis(50);
        assert!(!local.allow(soon));
        let later = t + Duration::from_millis(101);
        assert!(local.allow(later));
        assert!(!local.allow(later));
        drop(local);
        // Every refusal is counted in the shared budget.
        assert_eq!(shared.lock().unwrap().suppressed, 12);
    }
}
