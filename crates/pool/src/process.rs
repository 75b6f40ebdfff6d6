//! One worker process seen from the coordinator: spawn, rendezvous,
//! reader and writer threads, reaping.
//!
//! Every blocking call on the worker lives on a thread of its own (the
//! accept thread, the reader, the writer) that reports to the supervisor's
//! event channel, so the supervisor itself never blocks on a worker and can
//! enforce every deadline.
//!
//! A worker runs in a process group of its own, which lives and dies with
//! it: killing a worker kills its group, and when a worker exits, what is
//! left of its group (helpers it started) is killed before it is reaped.
//!
//! The rendezvous socket is created private: the spawner threads have a
//! file-system context of their own (`unshare(CLONE_FS)`), so they can create
//! it under umask 077 without touching the rest of the process; stale
//! rendezvous directories of this user (left by a coordinator killed before
//! its workers connected) are removed when a launcher starts.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};
use ipc_channel::IpcError;
use procpool_protocol::{encode, Request, WorkerMessage, ENV_PARENT, ENV_SERVER, ENV_TOKEN};
use procpool_worker::arena::Arena;

use crate::error::{PoolError, WorkerExit};
use crate::guard::Guard;
use crate::transport::{
    decode_from_worker, decode_results, decode_results_in, Event, Launcher, Lease, Link, Outgoing,
};
use crate::worker_output::OutputHub;

type Rendezvous = (IpcBytesSender, IpcBytesReceiver);

/// Receives each line a worker writes to its stdout or stderr, with its pid.
pub type OutputHandler = std::sync::Arc<dyn Fn(u32, &str) + Send + Sync>;

/// Check the worker binary before spawning anything, for a clear error.
pub(crate) fn check_binary(path: &Path) -> Result<(), PoolError> {
    let meta = std::fs::metadata(path).map_err(|_| PoolError::WorkerBinMissing {
        path: path.to_owned(),
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(PoolError::WorkerBinNotExecutable {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Restrict the rendezvous to this user: its directory to 0700, the socket
/// to 0600. On a spawner thread they are created so already (see
/// [`private_umask`]); this makes sure of it wherever the socket was
/// created. The worker must also present the run's token, so a process that
/// still reached the socket could not pose as a worker.
pub(crate) fn make_private(socket: &str) -> io::Result<()> {
    let socket = Path::new(socket);
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    if let Some(dir) = socket.parent() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Give the calling thread a file-system context of its own (cwd, root,
/// umask), so that it may change its umask alone. Returns whether it did.
fn private_umask() -> bool {
    // SAFETY: unshare(CLONE_FS) takes a flag and touches no memory of ours;
    // it only copies this thread's cwd, root and umask.
    unsafe { libc::unshare(libc::CLONE_FS) == 0 }
}

/// A rendezvous created under umask 077 when this thread may change its
/// umask alone: its directory is private before the socket is bound in it.
fn create_rendezvous(own_umask: bool) -> Result<(IpcOneShotServer<Rendezvous>, String), PoolError> {
    // SAFETY: umask only swaps a mask; with `own_umask` this thread's own.
    let old = own_umask.then(|| unsafe { libc::umask(0o077) });
    let created = std::panic::catch_unwind(IpcOneShotServer::<Rendezvous>::new);
    if let Some(old) = old {
        // SAFETY: as above; the workers this thread spawns get the old mask.
        unsafe { libc::umask(old) };
    }
    created
        .map_err(|_| {
            PoolError::Ipc(io::Error::other(
                "ipc-channel panicked creating a rendezvous",
            ))
        })?
        .map_err(PoolError::Ipc)
}

/// [`create_rendezvous`], made private whatever the thread could do.
pub(crate) fn new_rendezvous(
    own_umask: bool,
) -> Result<(IpcOneShotServer<Rendezvous>, String), PoolError> {
    let (server, name) = create_rendezvous(own_umask)?;
    make_private(&name).map_err(PoolError::Ipc)?;
    Ok((server, name))
}

/// Remove the rendezvous directories of this user in `tmp` that no process
/// listens on any more (a coordinator killed before its workers connected
/// leaves one behind): a directory of ipc-channel's (`.tmp*`) holding only a
/// socket named `socket` that is not bound (see `/proc/net/unix`), untouched
/// for `min_age`. Returns how many were removed.
pub(crate) fn clean_stale_rendezvous(tmp: &Path, min_age: Duration) -> usize {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return 0;
    };
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let candidates: Vec<std::path::PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .map(|e| e.path())
        .filter(|dir| {
            let Ok(meta) = std::fs::symlink_metadata(dir) else {
                return false;
            };
            let old = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age >= min_age);
            let only_socket = std::fs::read_dir(dir).is_ok_and(|mut d| {
                d.next()
                    .and_then(Result::ok)
                    .is_some_and(|e| e.file_name() == "socket")
                    && d.next().is_none()
            });
            meta.is_dir()
                && meta.uid() == uid
                && old
                && only_socket
                && std::fs::symlink_metadata(dir.join("socket"))
                    .is_ok_and(|m| m.file_type().is_socket())
        })
        .collect();
    if candidates.is_empty() {
        return 0;
    }
    // Read after listing: a socket bound since is listed here.
    let Ok(bound) = std::fs::read_to_string("/proc/net/unix") else {
        return 0;
    };
    let bound: std::collections::HashSet<&str> = bound
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(7))
        .collect();
    let mut removed = 0;
    for dir in candidates {
        let socket = dir.join("socket");
        if bound.contains(socket.to_string_lossy().as_ref()) {
            continue;
        }
        if std::fs::remove_file(&socket).is_ok() && std::fs::remove_dir(&dir).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether this user's stale rendezvous in `tmp` were not looked for in the
/// last `every`, by the time of a stamp file of this user's there; if so,
/// the stamp says now. Never follows a link: another user's file or link
/// in a shared `/tmp` only makes the scan happen.
fn scan_due(tmp: &Path, every: Duration) -> bool {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let stamp = tmp.join(format!(".procpool-scanned-{uid}"));
    let recent = std::fs::symlink_metadata(&stamp).is_ok_and(|m| {
        m.is_file()
            && m.uid() == uid
            && m.modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age < every)
    });
    if recent {
        return false;
    }
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&stamp)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    true
}

/// Kill a worker's process group (the worker and whatever it started).
fn kill_group(pid: u32) {
    if let Ok(pgid) = i32::try_from(pid) {
        // SAFETY: kill takes plain integers. The group id is the worker's
        // pid, still ours: the worker is not reaped yet.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Has the child exited? Without reaping it, so that its pid, and so its
/// group id, stays ours until the group is killed.
fn has_exited(pid: u32) -> bool {
    // SAFETY: all-zero is a valid siginfo_t, which waitid fills in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable siginfo_t.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid filled in `info`; si_pid is 0 when nothing has exited.
    r == 0 && unsafe { info.si_pid() } != 0
}

/// Slots of a worker's shared memory for batches: the batches it holds at
/// once with the default window (two in flight, one being answered), and
/// one more; a batch sent while all are taken goes over the socket.
const SLOTS: usize = 4;
/// Slots for its results, held until written out in order; results sent
/// while all are held go over the socket. Few, and the lowest free one
/// first: the pages touched count in the coordinator's memory.
const RESULT_SLOTS: usize = 4;
/// Bytes per slot: a batch message (384 KiB of records, a record over, the
/// head) or a batch's results message, nearly always.
const SLOT_BYTES: usize = 512 << 10;
/// A batch this large makes the writer offer the worker shared memory:
/// smaller ones are not worth a memfd (starting a worker makes none).
const ARENA_FROM_BYTES: usize = 16 << 10;

pub(crate) use procpool_worker::node::stopped;

/// A started worker process whose rendezvous is not yet accepted.
struct Spawned {
    child: Child,
    pid: u32,
    /// Lists the worker while it is ours to wait for.
    guard: Arc<Guard>,
    server_name: String,
    /// Set once the worker's output lines have all gone out, if they go
    /// to a handler.
    output: Option<Arc<AtomicBool>>,
    /// It sends no heartbeats: the kernel says whether it runs.
    kernel_says: bool,
}

impl Spawned {
    /// Nobody wants this worker any more (its launch was given up): kill it,
    /// release its accept thread, reap it.
    fn discard(mut self) {
        kill_group(self.pid);
        self.unblock_accept();
        self.wait();
    }

    /// Reap it (it has exited, or is killed): its pid is then free for
    /// reuse, so the guard forgets it.
    fn wait(&mut self) -> WorkerExit {
        let exit = self
            .child
            .wait()
            .map_or(WorkerExit::Unknown, WorkerExit::from);
        self.guard.forget(self.pid);
        exit
    }

    fn unblock_accept(&self) {
        unblock_accept(&self.server_name);
    }
}

/// Unblock the accept thread of rendezvous `server` when its worker will
/// never connect: connect to it ourselves. The supervisor drops what arrives.
pub(crate) fn unblock_accept(server: &str) {
    if let Ok(tx) = IpcSender::<Rendezvous>::connect(server.to_owned()) {
        if let (Ok(a), Ok(b)) = (ipc::bytes_channel(), ipc::bytes_channel()) {
            let _ = tx.send((a.0, b.1));
        }
    }
}

/// Whether `/proc` tells this system's stopped processes from running ones
/// (then workers need send no heartbeats: see [`Link::runs`]).
pub(crate) fn kernel_says() -> bool {
    stopped(std::process::id()) == Some(false)
}

/// Remove leftovers of coordinators killed before their workers connected
/// (ipc-channel's rendezvous, and one-machine MPI jobs' directories other
/// than `own`), on a thread of its own: beside the start-up, not before it
/// (listing a busy $TMPDIR took milliseconds of every `build()`), once per
/// process (a program that builds many pools lists it once), and at most
/// once a minute per user (a script that runs the command line again and
/// again). The thread, if one was started.
pub(crate) fn clean_stale_in_background(own: PathBuf) -> Option<thread::JoinHandle<()>> {
    static CLEANED: AtomicBool = AtomicBool::new(false);
    if CLEANED.swap(true, Ordering::Relaxed)
        || !scan_due(&std::env::temp_dir(), Duration::from_secs(60))
    {
        return None;
    }
    thread::Builder::new()
        .name("procpool-clean".into())
        .spawn(move || {
            let tmp = std::env::temp_dir();
            // Where the sockets are, and $TMPDIR too if they are in memory
            // (left there by a run that did not put them in memory).
            let sockets = crate::preflight::rendezvous_dir();
            let mut removed = clean_stale_rendezvous(&sockets, Duration::from_secs(10))
                + procpool_worker::node::remove_stale_dirs(&tmp, Duration::from_secs(10), &own);
            if sockets != tmp {
                removed += clean_stale_rendezvous(&tmp, Duration::from_secs(10));
            }
            if removed > 0 {
                log::info!("removed {removed} stale rendezvous directories of this user");
            }
        })
        .map_err(|e| log::debug!("no thread to remove stale rendezvous directories: {e}"))
        .ok()
}

/// Start a worker process and a thread that waits for it to connect.
///
/// Called on a spawner thread, which lives as long as the pool: a runtime
/// worker's `PR_SET_PDEATHSIG` fires when the *thread* that spawned it
/// exits. std starts it with `posix_spawn` (no `pre_exec` step, which would
/// make it `fork` the coordinator); the guard lists it at once, so that it
/// dies with a coordinator killed by SIGKILL whatever binary it is.
/// `own_umask`: the thread has its own umask (see [`private_umask`]).
fn spawn(
    spec: &SpawnSpec,
    guard: &Arc<Guard>,
    hub: Option<&OutputHub>,
    own_umask: bool,
    slot: usize,
    generation: u64,
    events: &Sender<Event>,
) -> Result<Spawned, PoolError> {
    let (bin, token, output) = (
        spec.bin.as_path(),
        spec.token.as_str(),
        spec.output.as_ref(),
    );
    // ipc-channel panics when it cannot bind (e.g. $TMPDIR was removed
    // mid-run): check first, and keep a panic a start failure.
    crate::preflight::ensure_rendezvous_dir()?;
    let (server, server_name) = new_rendezvous(own_umask)?;
    // Workers write task output and logs to our stderr, or to a handler that
    // gets them line by line; never to our stdout, which is the results'.
    let (stdout, stderr, pipe) = match output {
        Some(_) => {
            let (reader, writer) = io::pipe().map_err(PoolError::Ipc)?;
            let writer2 = writer.try_clone().map_err(PoolError::Ipc)?;
            (Stdio::from(writer), Stdio::from(writer2), Some(reader))
        }
        None => {
            let stdout = io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null());
            (stdout, Stdio::inherit(), None)
        }
    };
    let mut command = Command::new(bin);
    command.stderr(stderr);
    let child = command
        .env(ENV_SERVER, &server_name)
        .env(ENV_TOKEN, token)
        .env(ENV_PARENT, std::process::id().to_string())
        .env(
            procpool_protocol::ENV_HEARTBEAT_MS,
            // 0: none; the liveness check asks the kernel instead.
            spec.heartbeat
                .map_or(0, |h| h.as_millis().max(1))
                .to_string(),
        )
        .stdin(Stdio::null())
        .stdout(stdout)
        // Own process group: a terminal's Ctrl-C reaches the coordinator
        // only, which then shuts the workers down in order.
        .process_group(0)
        .spawn()
        .map_err(|source| {
            if source.kind() == io::ErrorKind::PermissionDenied {
                PoolError::WorkerBinNotExecutable {
                    path: bin.to_owned(),
                }
            } else {
                PoolError::Spawn {
                    path: bin.to_owned(),
                    source,
                }
            }
        })?;
    let pid = child.id();
    guard.watch(pid);
    let output = match (pipe, hub) {
        (Some(reader), Some(hub)) => Some(hub.add(pid, reader)),
        _ => None,
    };
    let mut spawned = Spawned {
        child,
        pid,
        guard: guard.clone(),
        server_name,
        output,
        kernel_says: spec.heartbeat.is_none(),
    };
    let accepting = accept_in_background(server, pid.to_string(), slot, generation, events, None);
    if let Err(e) = accepting {
        kill_group(pid);
        spawned.wait();
        return Err(PoolError::Ipc(e));
    }
    Ok(spawned)
}

/// Called when a worker's channel closes, before the supervisor hears of it.
pub(crate) type CloseHook = Box<dyn FnOnce() + Send>;

/// A thread (named after `who`) that waits for the worker to connect to
/// `server`, then reads what it sends: the supervisor hears `Accepted`, the
/// worker's messages and results, and `Closed`.
pub(crate) fn accept_in_background(
    server: IpcOneShotServer<Rendezvous>,
    who: String,
    slot: usize,
    generation: u64,
    events: &Sender<Event>,
    on_close: Option<CloseHook>,
) -> io::Result<()> {
    let events = events.clone();
    thread::Builder::new()
        .name(format!("procpool-accept-{who}"))
        .spawn(move || {
            // ipc-channel panics on a message that arrives without its
            // descriptors (the preflight keeps them available): a start failure.
            let pair = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.accept()))
                .map_err(|_| {
                    "the rendezvous message arrived without its channels (out of file descriptors?)"
                        .to_string()
                })
                .and_then(|r| {
                    r.map(|(_, pair)| pair)
                        .map_err(|e| format!("rendezvous failed: {e:?}"))
                });
            // `Accepted` goes out before the reader starts, so that the
            // supervisor holds the writer before the worker's `Hello` arrives.
            // The worker's shared memory, made once its batches are large.
            let shared = Arc::new(Shared::default());
            match pair
                .and_then(|pair| Connection::start(pair, shared.clone()).map_err(|e| e.to_string()))
            {
                Ok((writer, reader)) => {
                    let ok = events
                        .send(Event::Accepted {
                            slot,
                            generation,
                            result: Ok(writer),
                        })
                        .is_ok();
                    if ok {
                        read_loop(reader, slot, generation, events, &shared, on_close);
                    }
                }
                Err(e) => {
                    let _ = events.send(Event::Accepted {
                        slot,
                        generation,
                        result: Err(e),
                    });
                }
            }
        })
        .map(drop)
}

/// The coordinator's ends of a connected worker: a writer thread fed by a
/// channel (returned), and the receiving end for [`read_loop`].
struct Connection;

/// A worker's shared memory (see `procpool_worker::arena`): made by its
/// writer thread when the first large batch goes to it, the one for batches
/// used once the worker says it mapped it, the one for results read by its
/// reader thread.
#[derive(Default)]
struct Shared {
    batches: OnceLock<Arena>,
    results: OnceLock<Arc<Arena>>,
    /// The worker mapped `batches` (`ArenasMapped`).
    mapped: AtomicBool,
}

impl Shared {
    /// Make both arenas and the request that names them to the worker;
    /// `None` if they cannot be made (everything then goes over the socket).
    fn offer(&self) -> Option<Vec<u8>> {
        let make = |slots| {
            Arena::create(slots, SLOT_BYTES)
                .map_err(|e| log::debug!("messages over the socket: no shared memory: {e}"))
                .ok()
        };
        let (batches, results) = (make(SLOTS)?, make(RESULT_SLOTS)?);
        let request = encode(&Request::Arenas {
            batches: batches.env_value()?,
            results: results.env_value()?,
        })
        .ok()?;
        self.batches.set(batches).ok()?;
        self.results.set(Arc::new(results)).ok()?;
        Some(request)
    }
}

impl Connection {
    /// `shared`: the worker's shared memory, made here when batches get large.
    fn start(
        (to_worker, from_worker): Rendezvous,
        shared: Arc<Shared>,
    ) -> io::Result<(Sender<Outgoing>, IpcBytesReceiver)> {
        let (tx, rx) = mpsc::channel::<Outgoing>();
        thread::Builder::new()
            .name("procpool-writer".into())
            .spawn(move || {
                let mut offered = false;
                // Ends when the supervisor drops its sender (the worker then
                // sees its request channel close) or the worker is gone.
                for message in rx {
                    let bytes = message.bytes();
                    // Only batches are shared buffers. The first large one
                    // goes over the socket after the arenas are offered; later
                    // ones that fit a free slot go there, and a few bytes name it.
                    let batch = matches!(message, Outgoing::Shared(..));
                    if batch && !offered && bytes.len() >= ARENA_FROM_BYTES {
                        offered = true;
                        if let Some(request) = shared.offer() {
                            if to_worker.send(&request).is_err() {
                                break;
                            }
                        }
                    }
                    let slot = match shared.batches.get() {
                        Some(arena) if batch && shared.mapped.load(Ordering::Acquire) => {
                            arena.put(bytes)
                        }
                        _ => None,
                    };
                    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                    let named = slot.map(|slot| (slot, encode(&Request::BatchIn { slot, len })));
                    let sent = match &named {
                        Some((_, Ok(named))) => to_worker.send(named),
                        Some((slot, Err(_))) => {
                            if let Some(arena) = shared.batches.get() {
                                // SAFETY: our own claim, never named to the worker.
                                unsafe { arena.release(*slot) };
                            }
                            to_worker.send(bytes)
                        }
                        None => to_worker.send(bytes),
                    };
                    if sent.is_err() {
                        break;
                    }
                }
            })?;
        Ok((tx, from_worker))
    }
}

/// `shared`: the worker's shared memory, if offered: where it may put its
/// results, and where the worker's answer to the offer goes.
fn read_loop(
    rx: IpcBytesReceiver,
    slot: usize,
    generation: u64,
    events: Sender<Event>,
    shared: &Shared,
    on_close: Option<CloseHook>,
) {
    let mut first = true;
    let deliver = |results| {
        events
            .send(Event::Results {
                slot,
                generation,
                results,
            })
            .is_ok()
    };
    let reason = loop {
        let bytes = match rx.recv() {
            Ok(bytes) => bytes,
            Err(IpcError::Disconnected) => break None,
            Err(e) => break Some(format!("channel error: {e:?}")),
        };
        // Results (all but the first message, whose version is checked
        // first) are decoded in place; anything else as a message.
        let bytes = if first {
            bytes
        } else {
            match decode_results(bytes) {
                Ok(Ok(results)) => {
                    if !deliver(results) {
                        return;
                    }
                    continue;
                }
                Ok(Err(bytes)) => bytes,
                Err(reason) => break Some(reason),
            }
        };
        match decode_from_worker(&mut first, &bytes) {
            // Results in the shared memory, decoded where they lie and held
            // there until their outputs are written.
            Ok(WorkerMessage::ResultsIn { slot: at, len }) => {
                let results = shared
                    .results
                    .get()
                    .and_then(|arena| Lease::take(arena, at, len))
                    .ok_or_else(|| {
                        format!("named results in shared-memory slot {at}, which holds none")
                    })
                    .and_then(decode_results_in);
                match results {
                    Ok(results) => {
                        if !deliver(results) {
                            return;
                        }
                    }
                    Err(reason) => break Some(reason),
                }
            }
            // The answer to the offer, for the writer thread alone. Mapped
            // (or not), the worker needs the memfds' names no more.
            Ok(WorkerMessage::ArenasMapped { batches, .. }) => {
                shared.mapped.store(batches, Ordering::Release);
                for arena in [shared.batches.get(), shared.results.get().map(|a| &**a)]
                    .into_iter()
                    .flatten()
                {
                    arena.forget_name();
                }
            }
            Ok(message) => {
                if events
                    .send(Event::Message {
                        slot,
                        generation,
                        message,
                    })
                    .is_err()
                {
                    return;
                }
            }
            Err(reason) => break Some(reason),
        }
    };
    if let Some(hook) = on_close {
        hook();
    }
    let _ = events.send(Event::Closed {
        slot,
        generation,
        reason,
    });
}

/// Spawns worker processes of a binary and connects them over ipc-channel.
///
/// Spawning happens on a few long-lived spawner threads: `PR_SET_PDEATHSIG`
/// in a worker fires when the *thread* that spawned it exits, so they live as
/// long as the pool; and with several of them, starting many workers
/// overlaps (each spawn waits for its child's `exec`).
pub(crate) struct LocalLauncher {
    spawners: Vec<Sender<SpawnJob>>,
    threads: Vec<thread::JoinHandle<()>>,
}

struct SpawnSpec {
    bin: std::path::PathBuf,
    token: String,
    output: Option<OutputHandler>,
    /// `None`: workers send no heartbeats, and a silent worker's liveness
    /// is the kernel's word on it (a thread fewer in every worker).
    heartbeat: Option<Duration>,
}

struct SpawnJob {
    slot: usize,
    generation: u64,
    events: Sender<Event>,
    reply: Sender<Result<Spawned, PoolError>>,
}

impl LocalLauncher {
    const SPAWNERS: usize = 4;
    /// How long one launch (fork, exec, rendezvous set up) may take.
    const SPAWN_DEADLINE: Duration = Duration::from_secs(10);

    pub fn new(
        bin: std::path::PathBuf,
        token: String,
        output: Option<OutputHandler>,
        workers: usize,
        heartbeat: Duration,
    ) -> Result<Self, PoolError> {
        // Where /proc says how a process is, it tells a stopped worker from
        // a busy one, with no heartbeat thread in every worker.
        let kernel_says = kernel_says();
        let spec = Arc::new(SpawnSpec {
            bin,
            token,
            output,
            heartbeat: (!kernel_says).then_some(heartbeat),
        });
        let context = |what: &str| {
            let what = what.to_owned();
            move |e: io::Error| PoolError::Ipc(io::Error::new(e.kind(), format!("{what}: {e}")))
        };
        let guard = Guard::for_pools()?;
        let hub = match &spec.output {
            Some(handler) => Some(Arc::new(
                OutputHub::start(handler.clone())
                    .map_err(context("cannot start the thread for worker output"))?,
            )),
            None => None,
        };
        let mut spawners = Vec::new();
        let mut threads = Vec::new();
        // Joined with the spawners when the pool goes.
        threads.extend(clean_stale_in_background(PathBuf::new()));
        for i in 0..workers.clamp(1, Self::SPAWNERS) {
            let (tx, rx) = mpsc::channel::<SpawnJob>();
            let spec = spec.clone();
            let guard = guard.clone();
            let hub = hub.clone();
            let handle = thread::Builder::new()
                .name(format!("procpool-spawn-{i}"))
                .spawn(move || {
                    let own_umask = private_umask();
                    for job in rx {
                        let result = spawn(
                            &spec,
                            &guard,
                            hub.as_deref(),
                            own_umask,
                            job.slot,
                            job.generation,
                            &job.events,
                        );
                        if let Err(mpsc::SendError(Ok(spawned))) = job.reply.send(result) {
                            // Its launch timed out: the supervisor moved on.
                            spawned.discard();
                        }
                    }
                })
                .map_err(PoolError::Ipc)?;
            spawners.push(tx);
            threads.push(handle);
        }
        Ok(LocalLauncher { spawners, threads })
    }

    fn request(
        &self,
        index: usize,
        slot: usize,
        generation: u64,
        events: &Sender<Event>,
    ) -> Receiver<Result<Spawned, PoolError>> {
        let (reply, rx) = mpsc::channel();
        let job = SpawnJob {
            slot,
            generation,
            events: events.clone(),
            reply,
        };
        if let Some(spawner) = self.spawners.get(index % self.spawners.len().max(1)) {
            let _ = spawner.send(job);
        }
        rx
    }

    /// The spawner's answer, awaited until `deadline`: a stuck `fork` or
    /// `exec` must not block the supervisor.
    fn link(
        reply: &Receiver<Result<Spawned, PoolError>>,
        deadline: Instant,
    ) -> Result<Box<dyn Link>, PoolError> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let spawned = reply.recv_timeout(wait).map_err(|e| {
            PoolError::Ipc(io::Error::other(match e {
                mpsc::RecvTimeoutError::Timeout => format!(
                    "starting a worker took more than {} s",
                    Self::SPAWN_DEADLINE.as_secs()
                ),
                mpsc::RecvTimeoutError::Disconnected => "the spawner thread is gone".to_owned(),
            }))
        })??;
        Ok(Box::new(LocalLink {
            spawned,
            connected: false,
            reaped: None,
        }))
    }
}

impl Drop for LocalLauncher {
    fn drop(&mut self) {
        self.spawners.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Launcher for LocalLauncher {
    /// Large batches go through shared memory (smaller ones, and all of a
    /// worker that cannot map it, over the socket, which splits them).
    fn max_batch_bytes(&self) -> usize {
        crate::batch::MAX_SHARED_BATCH_BYTES
    }

    fn launch(
        &mut self,
        slot: usize,
        generation: u64,
        events: &Sender<Event>,
    ) -> Result<Box<dyn Link>, PoolError> {
        let reply = self.request(slot, slot, generation, events);
        Self::link(&reply, Instant::now() + Self::SPAWN_DEADLINE)
    }

    fn launch_all(
        &mut self,
        slots: &[(usize, u64)],
        events: &Sender<Event>,
    ) -> Vec<Result<Box<dyn Link>, PoolError>> {
        let pending: Vec<_> = slots
            .iter()
            .enumerate()
            .map(|(i, &(slot, generation))| self.request(i, slot, generation, events))
            .collect();
        let deadline = Instant::now() + Self::SPAWN_DEADLINE;
        pending
            .iter()
            .map(|reply| Self::link(reply, deadline))
            .collect()
    }
}

/// How long reaping a worker waits for its last output lines.
const OUTPUT_DRAIN: Duration = Duration::from_millis(200);

struct LocalLink {
    spawned: Spawned,
    connected: bool,
    reaped: Option<WorkerExit>,
}

impl Link for LocalLink {
    fn pid(&self) -> u32 {
        self.spawned.pid
    }

    fn connected(&mut self) {
        self.connected = true;
    }

    fn kill(&mut self) {
        if self.reaped.is_none() {
            kill_group(self.spawned.pid);
        }
    }

    fn runs(&self, _pid: u32) -> Option<bool> {
        if !self.spawned.kernel_says {
            return None;
        }
        stopped(self.spawned.pid).map(|stopped| !stopped)
    }

    fn exited(&mut self) -> Option<WorkerExit> {
        if self.reaped.is_none() && has_exited(self.spawned.pid) {
            // What it started goes with it, while its group id is still ours.
            kill_group(self.spawned.pid);
            self.reaped = Some(self.spawned.wait());
        }
        self.reaped
    }

    fn reap(&mut self, patience: Duration) -> WorkerExit {
        if let Some(exit) = self.reaped {
            return exit;
        }
        let exit = reap(&mut self.spawned, patience);
        self.reaped = Some(exit);
        // Its last lines (e.g. "stopping after N records") are still in the
        // pipe: let them through before the pool reports the worker gone.
        // Bounded: a child of the worker may hold the pipe open.
        if let Some(output) = self.spawned.output.take() {
            let deadline = Instant::now() + OUTPUT_DRAIN;
            while !output.load(Ordering::Acquire) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
        }
        exit
    }

    fn abandon(&mut self) {
        self.kill();
        if !self.connected {
            self.spawned.unblock_accept();
        }
        self.reap(Duration::from_millis(500));
    }
}

/// Reap a worker whose channel closed (it is exiting, or we killed it): wait
/// briefly, then kill its group. Never blocks longer than `patience` plus a
/// kill. What is left of its group is killed before the worker is reaped.
fn reap(spawned: &mut Spawned, patience: Duration) -> WorkerExit {
    let pid = spawned.pid;
    let deadline = Instant::now() + patience;
    while !has_exited(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    kill_group(pid);
    spawned.wait()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The scan for stale rendezvous is due once per `every`, by a stamp of
    /// this user's; a link in its place is not followed, and means a scan.
    #[test]
    fn the_stale_rendezvous_scan_is_due_once_a_minute() {
        let path = std::env::temp_dir().join(format!("procpool-scan-test-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        let dir = path.as_path();
        let every = Duration::from_secs(60);
        assert!(scan_due(dir, every));
        assert!(!scan_due(dir, every));
        // SAFETY: geteuid has no preconditions.
        let stamp = dir.join(format!(".procpool-scanned-{}", unsafe { libc::geteuid() }));
        let old = std::time::SystemTime::now() - Duration::from_secs(120);
        std::fs::File::options()
            .write(true)
            .open(&stamp)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(scan_due(dir, every));
        assert!(!scan_due(dir, every));
        // A link: followed neither to judge nor to stamp.
        let target = dir.join("target");
        std::fs::write(&target, "x").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&target)
            .unwrap()
            .set_modified(old)
            .unwrap();
        std::fs::remove_file(&stamp).unwrap();
        std::os::unix::fs::symlink(&target, &stamp).unwrap();
        assert!(scan_due(dir, every));
        assert!(scan_due(dir, every));
        let touched = std::fs::metadata(&target).unwrap().modified().unwrap();
        assert_eq!(touched, old, "the link's target was touched");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A stopped process is told from a running or sleeping one, whatever
    /// its name (here one that looks like the end of a name and a state).
    #[test]
    fn a_stopped_process_is_told_from_a_busy_one() {
        assert_eq!(stopped(std::process::id()), Some(false));
        let mut child = Command::new("/bin/sh")
            .args([
                "-c",
                "printf 'x) T (' > /proc/self/comm; while :; do :; done",
            ])
            .spawn()
            .unwrap();
        let pid = child.id();
        let named = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("x) T"))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !named(pid) {
            assert!(Instant::now() < deadline, "the child did not rename itself");
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(stopped(pid), Some(false));
        // SAFETY: kill on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while stopped(pid) != Some(true) {
            assert!(
                Instant::now() < deadline,
                "the child never showed as stopped"
            );
            thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while stopped(pid) != Some(false) {
            assert!(Instant::now() < deadline, "the child never ran again");
            thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The rendezvous a worker connects to lives in a fresh directory that
    /// only this user can enter, and is gone once the worker has connected.
    #[test]
    fn rendezvous_is_private_and_removed_after_accept() {
        let (server, name) = IpcOneShotServer::<Rendezvous>::new().unwrap();
        make_private(&name).unwrap();
        let socket_mode = std::fs::metadata(&name).unwrap().permissions().mode() & 0o777;
        assert_eq!(socket_mode, 0o600);
        let dir = Path::new(&name).parent().unwrap().to_owned();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
        let connect = thread::spawn(move || {
            let tx = IpcSender::<Rendezvous>::connect(name).unwrap();
            let (a, _) = ipc::bytes_channel().unwrap();
            let (_, b) = ipc::bytes_channel().unwrap();
            tx.send((a, b)).unwrap();
        });
        let _ = server.accept().unwrap();
        connect.join().unwrap();
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    fn umask_of(status: &str) -> String {
        std::fs::read_to_string(status)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Umask:").map(|m| m.trim().to_owned()))
            .unwrap()
    }

    /// On a spawner thread the rendezvous is created private, before the
    /// socket is bound (no window at the umask's defaults), and the rest of
    /// the process keeps its umask.
    #[test]
    fn a_spawner_thread_creates_the_rendezvous_private() {
        let before = umask_of("/proc/self/status");
        let (dir_mode, socket_mode, inside) = thread::spawn(|| {
            assert!(private_umask());
            // SAFETY: this thread's own umask, after private_umask.
            let old = unsafe { libc::umask(0o022) };
            let inside = umask_of("/proc/thread-self/status");
            let (_server, name) = create_rendezvous(true).unwrap();
            // SAFETY: as above.
            unsafe { libc::umask(old) };
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            let socket = Path::new(&name);
            (mode(socket.parent().unwrap()), mode(socket), inside)
        })
        .join()
        .unwrap();
        assert_eq!(dir_mode, 0o700);
        assert_eq!(socket_mode & 0o077, 0, "{socket_mode:o}");
        assert_eq!(inside, "0022");
        assert_eq!(umask_of("/proc/self/status"), before);
    }

    /// A directory left by a coordinator killed before its worker connected
    /// (a socket nobody listens on) is removed; a live one, or anything
    /// else, is left alone.
    #[test]
    fn stale_rendezvous_directories_are_removed() {
        use std::os::unix::net::UnixListener;
        let tmp = std::env::temp_dir().join(format!("procpool-stale-test-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let stale = tmp.join(".tmpSTALE1");
        std::fs::create_dir(&stale).unwrap();
        drop(UnixListener::bind(stale.join("socket")).unwrap());
        let live = tmp.join(".tmpLIVE01");
        std::fs::create_dir(&live).unwrap();
        let _listening = UnixListener::bind(live.join("socket")).unwrap();
        let other = tmp.join(".tmpOTHER1");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("socket"), b"not a socket").unwrap();

        assert_eq!(clean_stale_rendezvous(&tmp, Duration::from_secs(3600)), 0);
        assert!(stale.exists(), "too recent to be judged stale");
        assert_eq!(clean_stale_rendezvous(&tmp, Duration::ZERO), 1);
        assert!(!stale.exists());
        assert!(live.join("socket").exists());
        assert!(other.join("socket").exists());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
