//! A program that is its own worker binary (`procpool::init`), with
//! per-worker state set up by `Task::init`. It needs its own `main`, so it is
//! a test without the libtest harness: it exits non-zero on the first failure.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use procpool::worker::Registry;
use procpool::{PoolBuilder, PoolError, Task, TaskError};
use serde::{Deserialize, Serialize};

/// How many times `init` ran in this process.
static INITS: AtomicU32 = AtomicU32::new(0);

/// Reports which process ran a record and how often that process was initialised.
#[derive(Serialize, Deserialize)]
struct WhoAmI {
    greeting: String,
    /// Per-worker state, never sent: set up by `init`.
    #[serde(skip)]
    state: Mutex<Option<(u32, String)>>,
}

impl Task for WhoAmI {
    const NAME: &'static str = "whoami";
    type Input = u64;
    type Output = (u64, u32, u32, String);

    fn init(&mut self) -> Result<(), TaskError> {
        INITS.fetch_add(1, Ordering::SeqCst);
        let state = (
            std::process::id(),
            format!("{} from a worker", self.greeting),
        );
        self.state = Mutex::new(Some(state));
        Ok(())
    }

    fn run(&self, n: u64) -> Result<Self::Output, TaskError> {
        let state = self.state.lock().map_err(|_| "poisoned")?;
        let (pid, text) = state.clone().ok_or("init did not run")?;
        Ok((n, pid, INITS.load(Ordering::SeqCst), text))
    }
}

/// A task whose per-worker set-up fails.
#[derive(Serialize, Deserialize)]
struct NoDatabase;

impl Task for NoDatabase {
    const NAME: &'static str = "no-database";
    type Input = u64;
    type Output = u64;

    fn init(&mut self) -> Result<(), TaskError> {
        Err("cannot reach the database".into())
    }

    fn run(&self, n: u64) -> Result<u64, TaskError> {
        Ok(n)
    }
}

fn check() -> Result<(), String> {
    let me = std::process::id();
    let pool = PoolBuilder::new()
        .workers(2)
        .build(WhoAmI {
            greeting: "hello".into(),
            state: Mutex::new(None),
        })
        .map_err(|e| format!("build: {e}"))?;
    let pids = pool.pids().to_vec();
    let results: Vec<_> = pool.map(0..200u64).collect();
    for (i, r) in results.into_iter().enumerate() {
        let (n, pid, inits, text) = r.map_err(|e| format!("record {i}: {e}"))?;
        if n != i as u64 || pid == me || !pids.contains(&pid) {
            return Err(format!(
                "record {i}: ran as ({n}, pid {pid}); workers {pids:?}"
            ));
        }
        if inits != 1 || text != "hello from a worker" {
            return Err(format!(
                "record {i}: init ran {inits} times, state {text:?}"
            ));
        }
    }
    pool.shutdown();
    if INITS.load(Ordering::SeqCst) != 0 {
        return Err("init ran in the driver".into());
    }

    match PoolBuilder::new().workers(1).build(NoDatabase) {
        Err(PoolError::TaskRejected {
            pid: Some(pid),
            reason,
        }) if pid != me && reason.contains("cannot reach the database") => {
            let msg = PoolError::TaskRejected {
                pid: Some(pid),
                reason,
            }
            .to_string();
            if !msg.contains(&format!("pid {pid}")) {
                return Err(format!("the message does not name the worker: {msg}"));
            }
        }
        Err(other) => {
            return Err(format!(
                "expected TaskRejected naming a worker, got {other:?}"
            ))
        }
        Ok(_) => return Err("a pool whose task cannot initialise was built".into()),
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut registry = Registry::new();
    registry.register::<WhoAmI>().register::<NoDatabase>();
    procpool::init(registry);

    // A hang fails the test instead of blocking the suite.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(60));
        eprintln!("self_hosting: hung for 60 s");
        std::process::exit(1);
    });
    match check() {
        Ok(()) => {
            println!("self_hosting: ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("self_hosting: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
