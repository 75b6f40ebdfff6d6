//! One worker process seen from the coordinator: spawn, rendezvous,
//! reader and writer threads, reaping.
//!
//! Every blocking call on the worker lives on a thread of its own (the
//! accept thread, the reader, the writer) that reports to the supervisor's
//! event channel, so the supervisor itself never blocks on a worker and can
//! enforce every deadline.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcSender};
use ipc_channel::IpcError;
use procpool_protocol::{ENV_PARENT, ENV_SERVER, ENV_TOKEN};

use crate::error::{PoolError, WorkerExit};
use crate::transport::{decode_from_worker, Event, Launcher, Link};

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
/// to 0600 (ipc-channel creates them with the umask's defaults). The worker
/// must also present the run's token, so a process that still reached the
/// socket could not pose as a worker.
pub(crate) fn make_private(socket: &str) -> io::Result<()> {
    let socket = Path::new(socket);
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    if let Some(dir) = socket.parent() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// A started worker process whose rendezvous is not yet accepted.
struct Spawned {
    child: Child,
    pid: u32,
    server_name: String,
}

impl Spawned {
    /// Unblock the accept thread when the worker will never connect: connect
    /// to the rendezvous ourselves. The supervisor drops what arrives.
    fn unblock_accept(&self) {
        if let Ok(tx) = IpcSender::<Rendezvous>::connect(self.server_name.clone()) {
            if let (Ok(a), Ok(b)) = (ipc::bytes_channel(), ipc::bytes_channel()) {
                let _ = tx.send((a.0, b.1));
            }
        }
    }
}

/// Start a worker process and a thread that waits for it to connect.
///
/// Must be called on the supervisor thread: `PR_SET_PDEATHSIG` in the worker
/// fires when the *thread* that forked it exits.
fn spawn(
    spec: &SpawnSpec,
    slot: usize,
    gen: u64,
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
    let (server, server_name) = std::panic::catch_unwind(IpcOneShotServer::<Rendezvous>::new)
        .map_err(|_| {
            PoolError::Ipc(io::Error::other(
                "ipc-channel panicked creating a rendezvous",
            ))
        })?
        .map_err(PoolError::Ipc)?;
    make_private(&server_name).map_err(PoolError::Ipc)?;
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
            spec.heartbeat.as_millis().max(1).to_string(),
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
    if let (Some(reader), Some(handler)) = (pipe, output) {
        let handler = handler.clone();
        let _ = thread::Builder::new()
            .name(format!("procpool-output-{pid}"))
            .spawn(move || {
                use std::io::BufRead;
                for line in io::BufReader::new(reader).lines() {
                    match line {
                        Ok(line) => handler(pid, &line),
                        Err(_) => break,
                    }
                }
            });
    }
    let events = events.clone();
    let spawned = thread::Builder::new()
        .name(format!("procpool-accept-{pid}"))
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
            match pair.and_then(|pair| Connection::start(pair).map_err(|e| e.to_string())) {
                Ok((writer, reader)) => {
                    let ok = events
                        .send(Event::Accepted {
                            slot,
                            gen,
                            result: Ok(writer),
                        })
                        .is_ok();
                    if ok {
                        read_loop(reader, slot, gen, events);
                    }
                }
                Err(e) => {
                    let _ = events.send(Event::Accepted {
                        slot,
                        gen,
                        result: Err(e),
                    });
                }
            }
        });
    if let Err(e) = spawned {
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        return Err(PoolError::Ipc(e));
    }
    Ok(Spawned {
        child,
        pid,
        server_name,
    })
}

/// The coordinator's ends of a connected worker: a writer thread fed by a
/// channel (returned), and the receiving end for [`read_loop`].
struct Connection;

impl Connection {
    fn start(
        (to_worker, from_worker): Rendezvous,
    ) -> io::Result<(Sender<Vec<u8>>, IpcBytesReceiver)> {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        thread::Builder::new()
            .name("procpool-writer".into())
            .spawn(move || {
                // Ends when the supervisor drops its sender (the worker then
                // sees its request channel close) or the worker is gone.
                for message in rx {
                    if to_worker.send(&message).is_err() {
                        break;
                    }
                }
            })?;
        Ok((tx, from_worker))
    }
}

fn read_loop(rx: IpcBytesReceiver, slot: usize, gen: u64, events: Sender<Event>) {
    let mut first = true;
    let reason = loop {
        let bytes = match rx.recv() {
            Ok(bytes) => bytes,
            Err(IpcError::Disconnected) => break None,
            Err(e) => break Some(format!("channel error: {e:?}")),
        };
        match decode_from_worker(&mut first, &bytes) {
            Ok(message) => {
                if events.send(Event::Message { slot, gen, message }).is_err() {
                    return;
                }
            }
            Err(reason) => break Some(reason),
        }
    };
    let _ = events.send(Event::Closed { slot, gen, reason });
}

/// Spawns worker processes of a binary and connects them over ipc-channel.
///
/// Spawning happens on a few long-lived spawner threads: `PR_SET_PDEATHSIG`
/// in a worker fires when the *thread* that forked it exits, so they live as
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
    heartbeat: Duration,
}

/// How often workers send a heartbeat: 500 ms, or often enough for a short
/// liveness timeout (four beats within it).
pub(crate) fn heartbeat_period(liveness_timeout: Duration) -> Duration {
    Duration::from_millis(procpool_protocol::DEFAULT_HEARTBEAT_MS)
        .min(liveness_timeout / 4)
        .max(Duration::from_millis(1))
}

struct SpawnJob {
    slot: usize,
    gen: u64,
    events: Sender<Event>,
    reply: Sender<Result<Spawned, PoolError>>,
}

impl LocalLauncher {
    const SPAWNERS: usize = 4;

    pub fn new(
        bin: std::path::PathBuf,
        token: String,
        output: Option<OutputHandler>,
        workers: usize,
        heartbeat: Duration,
    ) -> Result<Self, PoolError> {
        let spec = Arc::new(SpawnSpec {
            bin,
            token,
            output,
            heartbeat,
        });
        let mut spawners = Vec::new();
        let mut threads = Vec::new();
        for i in 0..workers.clamp(1, Self::SPAWNERS) {
            let (tx, rx) = mpsc::channel::<SpawnJob>();
            let spec = spec.clone();
            let handle = thread::Builder::new()
                .name(format!("procpool-spawn-{i}"))
                .spawn(move || {
                    for job in rx {
                        let result = spawn(&spec, job.slot, job.gen, &job.events);
                        let _ = job.reply.send(result);
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
        gen: u64,
        events: &Sender<Event>,
    ) -> Receiver<Result<Spawned, PoolError>> {
        let (reply, rx) = mpsc::channel();
        let job = SpawnJob {
            slot,
            gen,
            events: events.clone(),
            reply,
        };
        if let Some(spawner) = self.spawners.get(index % self.spawners.len().max(1)) {
            let _ = spawner.send(job);
        }
        rx
    }

    fn link(
        result: Result<Result<Spawned, PoolError>, mpsc::RecvError>,
    ) -> Result<Box<dyn Link>, PoolError> {
        let spawned = result
            .map_err(|_| PoolError::Ipc(io::Error::other("the spawner thread is gone")))??;
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
    fn launch(
        &mut self,
        slot: usize,
        gen: u64,
        events: &Sender<Event>,
    ) -> Result<Box<dyn Link>, PoolError> {
        Self::link(self.request(slot, slot, gen, events).recv())
    }

    fn launch_all(
        &mut self,
        slots: &[(usize, u64)],
        events: &Sender<Event>,
    ) -> Vec<Result<Box<dyn Link>, PoolError>> {
        let pending: Vec<_> = slots
            .iter()
            .enumerate()
            .map(|(i, &(slot, gen))| self.request(i, slot, gen, events))
            .collect();
        pending
            .into_iter()
            .map(|rx| Self::link(rx.recv()))
            .collect()
    }
}

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
            let _ = self.spawned.child.kill();
        }
    }

    fn exited(&mut self) -> Option<WorkerExit> {
        if self.reaped.is_none() {
            self.reaped = self
                .spawned
                .child
                .try_wait()
                .ok()
                .flatten()
                .map(WorkerExit::from);
        }
        self.reaped
    }

    fn reap(&mut self, patience: Duration) -> WorkerExit {
        if let Some(exit) = self.reaped {
            return exit;
        }
        let exit = reap(&mut self.spawned.child, patience);
        self.reaped = Some(exit);
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
/// briefly, then kill. Never blocks longer than `patience` plus a kill.
fn reap(child: &mut Child, patience: Duration) -> WorkerExit {
    let deadline = Instant::now() + patience;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.into(),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(1)),
            Ok(None) => {
                let _ = child.kill();
                return child.wait().map_or(WorkerExit::Unknown, WorkerExit::from);
            }
            Err(_) => return WorkerExit::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The rendezvous a worker connects to lives in a fresh directory that
    /// only this user can enter, and is gone once the worker has connected.
    #[test]
    fn heartbeats_come_often_enough_for_the_liveness_timeout() {
        assert_eq!(
            heartbeat_period(Duration::from_secs(10)),
            Duration::from_millis(500)
        );
        assert_eq!(
            heartbeat_period(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(
            heartbeat_period(Duration::from_nanos(1)),
            Duration::from_millis(1)
        );
    }

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
}
