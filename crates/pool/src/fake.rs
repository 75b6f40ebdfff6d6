//! An in-process backend behind the transport seam: fake workers on threads
//! that speak the real protocol, so the supervisor's logic (dispatch,
//! retries, poison records, recycling, ordering) is tested without processes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use procpool_protocol::{
    decode, decode_value, encode_value, BatchResults, Hello, Outcome, RecordOutcome, Request, Task,
    TaskError, TaskInfo, WorkerMessage, PROTOCOL_VERSION,
};
use serde::{Deserialize, Serialize};

use crate::error::{PoolError, RecordError, WorkerExit};
use crate::pool::{Pool, PoolBuilder};
use crate::transport::{Event, Launcher, Link};

/// Echoes its input.
#[derive(Serialize, Deserialize)]
struct Echo;

impl Task for Echo {
    const NAME: &'static str = "echo";
    type Input = u64;
    type Output = u64;
    fn run(&self, x: u64) -> Result<u64, TaskError> {
        Ok(x)
    }
}

/// How fake workers misbehave.
#[derive(Clone, Default)]
struct Script {
    /// A worker dies when it meets one of these records.
    poison: HashSet<u64>,
    /// Every worker dies at its (k+1)-th record.
    die_after: Option<u64>,
    /// Workers started so far.
    started: Arc<AtomicU32>,
}

const TOKEN: &str = "fake-token";

struct FakeLauncher(Script);

struct FakeLink {
    pid: u32,
}

impl Link for FakeLink {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn kill(&mut self) {
        // The supervisor drops its writer: the fake worker's loop ends.
    }
    fn exited(&mut self) -> Option<WorkerExit> {
        None
    }
    fn reap(&mut self, _patience: Duration) -> WorkerExit {
        WorkerExit::Signal(libc::SIGKILL)
    }
    fn abandon(&mut self) {}
}

impl Launcher for FakeLauncher {
    fn launch(
        &mut self,
        slot: usize,
        gen: u64,
        events: &Sender<Event>,
    ) -> Result<Box<dyn Link>, PoolError> {
        let n = self.0.started.fetch_add(1, Ordering::SeqCst);
        let pid = 10_000 + n;
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let events = events.clone();
        let script = self.0.clone();
        let _ = events.send(Event::Accepted {
            slot,
            gen,
            result: Ok(tx),
        });
        thread::spawn(move || {
            let say = |message: WorkerMessage| {
                let _ = events.send(Event::Message { slot, gen, message });
            };
            say(WorkerMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                pid,
                host: "fake".into(),
                token: TOKEN.into(),
                tasks: vec![TaskInfo {
                    name: "echo".into(),
                    description: String::new(),
                    input_fields: vec![],
                    output_fields: vec![],
                    ..TaskInfo::default()
                }],
            }));
            let mut done = 0u64;
            // Ends when the supervisor drops the writer (stop or kill).
            'serve: for bytes in rx {
                match decode::<Request>(&bytes) {
                    Ok(Request::Configure { .. }) => say(WorkerMessage::Ready),
                    Ok(Request::Batch(batch)) => {
                        let mut outcomes = vec![];
                        for r in batch.records {
                            let x: u64 = decode_value(&r.payload).unwrap_or(u64::MAX);
                            if script.poison.contains(&x)
                                || script.die_after.is_some_and(|k| done >= k)
                            {
                                break 'serve;
                            }
                            done += 1;
                            outcomes.push(RecordOutcome {
                                seq: r.seq,
                                started_us: 0,
                                nanos: 1_000,
                                outcome: Outcome::Ok(encode_value(&x).unwrap_or_default()),
                            });
                        }
                        say(WorkerMessage::Results(BatchResults {
                            batch: batch.id,
                            busy_nanos: 1_000 * outcomes.len() as u64,
                            outcomes,
                        }));
                    }
                    Ok(Request::Stop) | Err(_) => break,
                }
            }
            let _ = events.send(Event::Closed {
                slot,
                gen,
                reason: None,
            });
        });
        Ok(Box::new(FakeLink { pid }))
    }
}

fn pool(builder: PoolBuilder, script: Script) -> Pool<Echo> {
    let config = encode_value(&Echo).unwrap();
    let core = builder
        .start_with(
            Some(crate::pool::TaskSpec {
                name: "echo".into(),
                config,
                types: None,
            }),
            "fake-worker".into(),
            TOKEN.into(),
            Box::new(FakeLauncher(script)),
        )
        .unwrap();
    Pool::from_core(core)
}

#[test]
fn ordered_results_through_the_supervisor() {
    let p = pool(PoolBuilder::new().workers(3), Script::default());
    let out: Vec<u64> = p.map(0..20_000u64).map(Result::unwrap).collect();
    assert_eq!(out, (0..20_000).collect::<Vec<_>>());
    let stats = p.shutdown();
    assert_eq!(stats.iter().map(|s| s.records).sum::<u64>(), 20_000);
}

#[test]
fn a_poison_record_fails_alone_and_its_neighbours_succeed() {
    let script = Script {
        poison: [77].into(),
        ..Script::default()
    };
    let started = script.started.clone();
    let p = pool(PoolBuilder::new().workers(2).retries(2), script);
    let out: Vec<Result<u64, RecordError>> = p.map(0..500u64).collect();
    for (i, r) in out.iter().enumerate() {
        if i == 77 {
            assert!(
                matches!(r, Err(RecordError::WorkerDied { attempts: 3, .. })),
                "{r:?}"
            );
        } else {
            assert_eq!(r.as_ref().ok(), Some(&(i as u64)));
        }
    }
    p.shutdown();
    // 2 at start, then one replacement per death: 3 alone, plus at most one
    // death inside a batch (which charges nobody).
    let n = started.load(Ordering::SeqCst);
    assert!((5..=6).contains(&n), "{n} workers started");
}

#[test]
fn workers_that_die_at_every_kth_record_lose_nothing() {
    let script = Script {
        die_after: Some(50),
        ..Script::default()
    };
    let p = pool(PoolBuilder::new().workers(2), script);
    let out: Vec<u64> = p.map(0..3_000u64).map(Result::unwrap).collect();
    assert_eq!(out, (0..3_000).collect::<Vec<_>>());
    p.shutdown();
}

#[test]
fn recycling_spreads_records_over_fresh_workers() {
    let script = Script::default();
    let started = script.started.clone();
    let p = pool(
        PoolBuilder::new().workers(2).max_tasks_per_child(10),
        script,
    );
    let out: Vec<u64> = p.map(0..100u64).map(Result::unwrap).collect();
    assert_eq!(out, (0..100).collect::<Vec<_>>());
    let stats = p.shutdown();
    assert!(stats.iter().all(|s| s.records <= 10), "{stats:?}");
    assert!(started.load(Ordering::SeqCst) >= 10);
}

#[test]
fn unordered_and_submit_through_the_supervisor() {
    let p = pool(PoolBuilder::new().workers(2), Script::default());
    let mut seen: Vec<u64> = p
        .map_unordered(0..1000u64)
        .map(|d| d.result.unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    assert_eq!(p.submit(42).wait(), Ok(42));
    p.shutdown();
}
