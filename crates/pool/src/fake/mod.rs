//! An in-process backend behind the transport seam: fake workers on threads
//! that speak the real protocol and fail on cue (failed spawns, exits and
//! hangs before the handshake, deaths and silences at the k-th record, slow
//! records with or without heartbeats, ignoring `Stop`), with a real kill
//! and a real exit status. The supervisor's logic is tested here in
//! milliseconds; `tests/` keeps the proof with real processes.

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use procpool_protocol::{
    decode, decode_value, encode_value, BatchResults, Hello, Request, Task, TaskError, TaskInfo,
    WorkerMessage, PROTOCOL_VERSION,
};
use serde::{Deserialize, Serialize};

use crate::error::{PoolError, WorkerExit};
use crate::pool::{Pool, PoolBuilder};
use crate::transport::{Event, Launcher, Link, Outgoing};

/// Echoes its input.
#[derive(Serialize, Deserialize)]
pub(crate) struct Echo;

impl Task for Echo {
    const NAME: &'static str = "echo";
    type Input = u64;
    type Output = u64;
    fn run(&self, x: u64) -> Result<u64, TaskError> {
        Ok(x)
    }
}

/// How a fake worker begins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Start {
    #[default]
    Normal,
    /// `launch` itself fails (as a failed `fork`/`exec`).
    SpawnFails,
    /// Exits with this code before connecting.
    ExitBeforeHello(i32),
    /// Never connects (until killed).
    HangBeforeHello,
    /// Connects and presents a token that is not the run's.
    WrongToken,
    /// Offers no task the pool asks for.
    Rejects,
}

/// What one fake worker does, chosen per launch.
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    pub start: Start,
    /// Aborts (SIGABRT) before running its (k+1)-th record, whatever it is.
    pub die_after: Option<u64>,
    /// Goes silent before its (k+1)-th record: no results, no heartbeats,
    /// as a stopped process (until killed).
    pub silent_after: Option<u64>,
    /// Sends a heartbeat this often, from its own clock, busy or idle.
    pub heartbeat: Option<Duration>,
    /// Keeps running after `Stop`, until killed.
    pub ignores_stop: bool,
    /// Reaping it panics: a stand-in for a bug that ends the supervisor
    /// thread, to test what the pool's users see then.
    pub reap_panics: bool,
}

/// The script of a fake pool: the plan of each launch (by launch number,
/// from 0), and what records do to any worker.
#[derive(Clone, Default)]
pub(crate) struct Script {
    plans: Arc<Mutex<HashMap<u32, Plan>>>,
    /// The plan of launches not listed.
    default: Plan,
    /// A worker dies (SIGSEGV) when it meets one of these values.
    pub poison: HashSet<u64>,
    /// Values that take this long to run.
    pub slow: HashMap<u64, Duration>,
    /// Launches so far.
    pub launched: Arc<AtomicU32>,
}

impl Script {
    pub fn new() -> Self {
        Script::default()
    }

    /// Every launch not given its own plan follows `plan`.
    pub fn all(mut self, plan: Plan) -> Self {
        self.default = plan;
        self
    }

    /// Launch number `n` (from 0) follows `plan`.
    pub fn launch(self, n: u32, plan: Plan) -> Self {
        if let Ok(mut plans) = self.plans.lock() {
            plans.insert(n, plan);
        }
        self
    }

    pub fn poison(mut self, values: impl IntoIterator<Item = u64>) -> Self {
        self.poison.extend(values);
        self
    }

    pub fn slow(mut self, value: u64, takes: Duration) -> Self {
        self.slow.insert(value, takes);
        self
    }

    fn plan(&self, n: u32) -> Plan {
        self.plans
            .lock()
            .ok()
            .and_then(|p| p.get(&n).cloned())
            .unwrap_or_else(|| self.default.clone())
    }

    pub fn launches(&self) -> u32 {
        self.launched.load(Ordering::SeqCst)
    }
}

pub(crate) const TOKEN: &str = "fake-token";

/// A fake worker's process state, shared by its thread and its link.
#[derive(Default)]
struct Life {
    killed: AtomicBool,
    exit: Mutex<Option<WorkerExit>>,
    exited: Condvar,
}

impl Life {
    fn exit(&self, exit: WorkerExit) {
        if let Ok(mut e) = self.exit.lock() {
            e.get_or_insert(exit);
        }
        self.exited.notify_all();
    }

    fn status(&self) -> Option<WorkerExit> {
        self.exit.lock().ok().and_then(|e| *e)
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

struct FakeLauncher(Script);

struct FakeLink {
    pid: u32,
    life: Arc<Life>,
    reap_panics: bool,
}

impl Link for FakeLink {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn kill(&mut self) {
        self.life.killed.store(true, Ordering::SeqCst);
    }

    fn exited(&mut self) -> Option<WorkerExit> {
        self.life.status()
    }

    fn reap(&mut self, patience: Duration) -> WorkerExit {
        assert!(!self.reap_panics, "scripted panic of the supervisor");
        let deadline = Instant::now() + patience;
        loop {
            if let Some(exit) = self.life.status() {
                return exit;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if let Ok(guard) = self.life.exit.lock() {
                let _ = self.life.exited.wait_timeout(guard, deadline - now);
            }
        }
        self.kill();
        let guard = self.life.exit.lock();
        if let Ok(guard) = guard {
            let _ = self
                .life
                .exited
                .wait_timeout_while(guard, Duration::from_secs(1), |e| e.is_none());
        }
        self.life.status().unwrap_or(WorkerExit::Unknown)
    }

    fn abandon(&mut self) {
        self.kill();
        self.reap(Duration::from_millis(500));
    }
}

impl Launcher for FakeLauncher {
    fn launch(
        &mut self,
        slot: usize,
        generation: u64,
        events: &Sender<Event>,
    ) -> Result<Box<dyn Link>, PoolError> {
        let n = self.0.launched.fetch_add(1, Ordering::SeqCst);
        let plan = self.0.plan(n);
        if plan.start == Start::SpawnFails {
            return Err(PoolError::Spawn {
                path: "fake-worker".into(),
                source: io::Error::other("scripted spawn failure"),
            });
        }
        let pid = 10_000 + n;
        let reap_panics = plan.reap_panics;
        let life = Arc::new(Life::default());
        let worker = FakeWorker {
            slot,
            generation,
            pid,
            plan,
            script: self.0.clone(),
            events: events.clone(),
            life: life.clone(),
        };
        thread::Builder::new()
            .name(format!("fake-worker-{pid}"))
            .spawn(move || worker.run())
            .map_err(PoolError::Ipc)?;
        Ok(Box::new(FakeLink {
            pid,
            life,
            reap_panics,
        }))
    }
}

struct FakeWorker {
    slot: usize,
    generation: u64,
    pid: u32,
    plan: Plan,
    script: Script,
    events: Sender<Event>,
    life: Arc<Life>,
}

/// How often a fake worker looks at whether it was killed.
const TICK: Duration = Duration::from_millis(1);

impl FakeWorker {
    fn run(self) {
        let connected = !matches!(
            self.plan.start,
            Start::ExitBeforeHello(_) | Start::HangBeforeHello
        );
        let exit = self.serve();
        self.life.exit(exit);
        if connected {
            // As the reader of a real worker's channel sees it close.
            let _ = self.events.send(Event::Closed {
                slot: self.slot,
                generation: self.generation,
                reason: None,
            });
        }
    }

    fn say(&self, message: WorkerMessage) {
        let _ = self.events.send(Event::Message {
            slot: self.slot,
            generation: self.generation,
            message,
        });
    }

    /// Wait for `d` (forever if `None`), heart-beating if the plan says so;
    /// `Err` once killed.
    fn pause(&self, d: Option<Duration>, beats: bool) -> Result<(), WorkerExit> {
        let until = d.map(|d| Instant::now() + d);
        let mut next_beat = Instant::now();
        loop {
            if self.life.killed() {
                return Err(WorkerExit::Signal(libc::SIGKILL));
            }
            let now = Instant::now();
            if until.is_some_and(|u| now >= u) {
                return Ok(());
            }
            if let (true, Some(period)) = (beats, self.plan.heartbeat) {
                if now >= next_beat {
                    self.say(WorkerMessage::Heartbeat);
                    next_beat = now + period;
                }
            }
            thread::sleep(TICK);
        }
    }

    fn serve(&self) -> WorkerExit {
        match self.plan.start {
            Start::ExitBeforeHello(code) => return WorkerExit::Code(code),
            Start::HangBeforeHello => {
                return self.pause(None, false).err().unwrap_or(WorkerExit::Unknown);
            }
            _ => {}
        }
        let (tx, rx) = mpsc::channel::<Outgoing>();
        let _ = self.events.send(Event::Accepted {
            slot: self.slot,
            generation: self.generation,
            result: Ok(tx),
        });
        self.say(WorkerMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            pid: self.pid,
            host: "fake".into(),
            token: if self.plan.start == Start::WrongToken {
                "forged".into()
            } else {
                TOKEN.into()
            },
            tasks: vec![TaskInfo {
                name: if self.plan.start == Start::Rejects {
                    "other".into()
                } else {
                    "echo".into()
                },
                description: String::new(),
                input_fields: vec![],
                output_fields: vec![],
                ..TaskInfo::default()
            }],
        }));
        match self.requests(&rx) {
            Ok(()) => WorkerExit::Code(0),
            Err(exit) => exit,
        }
    }

    /// The serve loop: until the writer is dropped, `Stop`, a death or a kill.
    fn requests(&self, rx: &Receiver<Outgoing>) -> Result<(), WorkerExit> {
        let mut done = 0u64;
        let mut flush_each = false;
        let mut stopped = false;
        let mut next_beat = Instant::now();
        loop {
            if self.life.killed() {
                return Err(WorkerExit::Signal(libc::SIGKILL));
            }
            if let Some(period) = self.plan.heartbeat {
                if Instant::now() >= next_beat {
                    self.say(WorkerMessage::Heartbeat);
                    next_beat = Instant::now() + period;
                }
            }
            let bytes = match rx.recv_timeout(TICK) {
                Ok(message) => message.into_vec(),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) if stopped && self.plan.ignores_stop => {
                    self.pause(None, true)?;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            match decode::<Request>(&bytes) {
                Ok(Request::Configure { flush_each: f, .. }) => {
                    flush_each = f;
                    self.say(WorkerMessage::Ready);
                }
                Ok(Request::Batch(batch)) => {
                    let mut outcomes = BatchResults::default();
                    for r in batch.records {
                        if self.plan.die_after.is_some_and(|k| done >= k) {
                            return Err(WorkerExit::Signal(libc::SIGABRT));
                        }
                        if self.plan.silent_after.is_some_and(|k| done >= k) {
                            self.pause(None, false)?;
                        }
                        let x: u64 = decode_value(&r.payload).unwrap_or(u64::MAX);
                        if self.script.poison.contains(&x) {
                            return Err(WorkerExit::Signal(libc::SIGSEGV));
                        }
                        if let Some(&d) = self.script.slow.get(&x) {
                            self.pause(Some(d), true)?;
                        }
                        done += 1;
                        let before = outcomes.outputs.len();
                        outcomes
                            .outputs
                            .extend(encode_value(&x).unwrap_or_default());
                        outcomes
                            .lengths
                            .push((outcomes.outputs.len() - before) as u32);
                        outcomes.nanos.push(1_000);
                        if flush_each {
                            self.results(batch.id, &mut outcomes);
                        }
                    }
                    if !outcomes.is_empty() {
                        self.results(batch.id, &mut outcomes);
                    }
                }
                Ok(Request::Stop) if self.plan.ignores_stop => stopped = true,
                Ok(
                    Request::Stop
                    | Request::BatchIn { .. }
                    | Request::Arenas { .. }
                    | Request::Lines(_),
                )
                | Err(_) => return Ok(()),
            }
        }
    }

    fn results(&self, batch: u64, outcomes: &mut BatchResults) {
        let results = std::mem::take(outcomes);
        self.say(WorkerMessage::Results(BatchResults {
            batch,
            busy_nanos: 1_000 * results.len() as u64,
            ..results
        }));
    }
}

/// A pool of fake workers following `script`.
pub(crate) fn pool(builder: PoolBuilder, script: &Script) -> Result<Pool<Echo>, PoolError> {
    let config = encode_value(&Echo).map_err(|e| PoolError::Encode(e.to_string()))?;
    let core = builder.start_with(
        Some(procpool_protocol::TaskSpec {
            name: "echo".into(),
            params: config,
            params_encoding: procpool_protocol::ParamsEncoding::Bincode,
            records: procpool_protocol::Encoding::Bincode,
            threads: 1,
        }),
        "fake-worker".into(),
        TOKEN.into(),
        Box::new(FakeLauncher(script.clone())),
    )?;
    Ok(Pool::from_core(core))
}
