//! The `procpool` library driven directly, with the real worker binary.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use procpool::{Pool, PoolBuilder, PoolError, RecordError, Task, TaskError};
use procpool_tasks::{Fault, FaultIn, Primes, PrimesIn};
use serde::{Deserialize, Serialize};

use crate::util::{alive, wait_until, within, worker_bin};

const DEADLINE: Duration = Duration::from_secs(60);

fn primes_pool(workers: usize) -> Pool<Primes> {
    procpool::PoolBuilder::new()
        .workers(workers)
        .worker_bin(worker_bin())
        .build(Primes)
        .unwrap_or_else(|e| panic!("build: {e}"))
}

fn inputs(count: u64) -> Vec<PrimesIn> {
    // Mixed sizes so that completion order differs from input order.
    (0..count)
        .map(|i| PrimesIn {
            n: if i % 5 == 0 { 100_000 + i } else { i * 13 },
        })
        .collect()
}

#[test]
fn map_unordered_submit_and_shutdown_stats() {
    within(DEADLINE, || {
        let pool = primes_pool(2);
        assert_eq!(pool.pids().len(), 2);
        for &pid in pool.pids() {
            assert!(alive(pid), "worker {pid} is not running");
        }
        let names: Vec<&str> = pool
            .offered_tasks()
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        for task in ["age", "primes", "locked", "fault"] {
            assert!(names.contains(&task), "{names:?}");
        }

        // map: in order, correct.
        let ins = inputs(300);
        let got: Vec<u64> = pool.map(ins.clone()).map(|r| r.unwrap().primes).collect();
        let expected: Vec<u64> = ins
            .iter()
            .map(|i| procpool_tasks::count_primes_below(i.n))
            .collect();
        assert_eq!(got, expected);

        // map_detailed: seqs in order, every pid a worker's.
        let pids = pool.pids().to_vec();
        let detailed: Vec<_> = pool.map_detailed(inputs(50)).collect();
        for (i, d) in detailed.iter().enumerate() {
            assert_eq!(d.seq, i as u64);
            let pid = d.pid.expect("answered by a worker");
            assert!(pids.contains(&pid), "{pid} is not one of {pids:?}");
            assert!(d.started_us.is_some_and(|t| t > 0));
            assert_eq!(
                d.result.as_ref().unwrap().primes,
                procpool_tasks::count_primes_below(inputs(50)[i].n)
            );
        }

        // map_unordered: the same multiset, each with its position.
        let mut by_seq = BTreeMap::new();
        for d in pool.map_unordered(ins.clone()) {
            let out = d.result.unwrap();
            assert_eq!(out.n, ins[d.seq as usize].n);
            assert!(
                by_seq.insert(d.seq, out.primes).is_none(),
                "seq {} twice",
                d.seq
            );
        }
        assert_eq!(by_seq.len(), ins.len());
        assert_eq!(by_seq.into_values().collect::<Vec<_>>(), expected);

        // submit: one at a time, and several outstanding.
        assert_eq!(pool.submit(PrimesIn { n: 100 }).wait().unwrap().primes, 25);
        let pending: Vec<_> = (1..=5u64)
            .map(|k| pool.submit(PrimesIn { n: k * 10 }))
            .collect();
        let counts: Vec<u64> = pending
            .into_iter()
            .map(|p| p.wait().unwrap().primes)
            .collect();
        assert_eq!(counts, [4, 8, 10, 12, 15]);

        // An empty input is fine.
        assert_eq!(pool.map(Vec::new()).count(), 0);
        // The iterators are fused: None for good once done.
        fn fused<I: std::iter::FusedIterator>(it: I) -> I {
            it
        }
        let mut it = fused(pool.map(inputs(3)));
        assert_eq!(it.by_ref().filter(Result::is_ok).count(), 3);
        assert!(it.next().is_none() && it.next().is_none());
        drop(it);
        let mut it = fused(pool.map_unordered(inputs(2)));
        assert_eq!(it.by_ref().count(), 2);
        assert!(it.next().is_none());
        drop(it);

        let live = pool.stats();
        assert_eq!(live.len(), 2);
        assert!(live.iter().all(|s| s.end.is_none()));

        let processed = (300 + 50 + 300 + 1 + 5 + 3 + 2) as u64;
        let stats = pool.shutdown();
        assert_eq!(stats.len(), 2, "{stats:?}");
        assert_eq!(stats.iter().map(|s| s.records).sum::<u64>(), processed);
        assert!(stats.iter().all(|s| s.failed == 0));
        for s in &stats {
            assert!(
                matches!(s.end, Some(procpool::WorkerEnd::Stopped(_))),
                "{s:?}"
            );
            assert!((0.0..=1.0).contains(&s.utilisation()));
        }
        // Shut down means reaped.
        for pid in pids {
            assert!(!alive(pid), "worker {pid} survived shutdown");
        }
    });
}

/// A task that the worker binary does not offer.
#[derive(Serialize, Deserialize)]
struct Nope;

impl Task for Nope {
    const NAME: &'static str = "nope";
    type Input = u64;
    type Output = u64;
    fn run(&self, x: u64) -> Result<u64, TaskError> {
        Ok(x)
    }
}

#[test]
fn a_task_the_worker_does_not_offer_is_rejected_in_build() {
    let (result, took) = within(Duration::from_secs(20), || {
        let start = Instant::now();
        let result = PoolBuilder::new()
            .workers(2)
            .worker_bin(worker_bin())
            .build(Nope)
            .err();
        (result, start.elapsed())
    });
    match result {
        Some(e @ PoolError::TaskNotOffered { .. }) => {
            let PoolError::TaskNotOffered { task, offered, .. } = &e else {
                unreachable!()
            };
            assert_eq!(task, "nope");
            assert!(offered.iter().any(|t| t == "primes"), "{offered:?}");
            let msg = e.to_string();
            assert!(
                msg.contains("`nope`") && msg.contains("primes"),
                "names what it offers: {msg}"
            );
        }
        Some(other) => panic!("expected TaskNotOffered, got {other:?}"),
        None => panic!("a pool for task `nope` was built"),
    }
    assert!(
        took < Duration::from_secs(10),
        "rejected only after {took:?}"
    );
}

/// Task `primes` as the worker binary has it, but with other input and
/// output types: same name, same wire layout for small values, wrong types.
#[derive(Serialize, Deserialize)]
struct FakePrimes;

#[derive(Serialize, Deserialize)]
struct FakePrimesIn {
    n: u64,
}

impl Task for FakePrimes {
    const NAME: &'static str = "primes";
    type Input = FakePrimesIn;
    type Output = u64;
    fn run(&self, x: FakePrimesIn) -> Result<u64, TaskError> {
        Ok(x.n)
    }
}

#[test]
fn a_task_with_the_right_name_but_other_types_is_refused_in_build() {
    let result = within(DEADLINE, || {
        PoolBuilder::new()
            .workers(2)
            .worker_bin(worker_bin())
            .build(FakePrimes)
            .err()
    });
    match result {
        Some(e @ PoolError::TaskTypesMismatch { .. }) => {
            let msg = e.to_string();
            let PoolError::TaskTypesMismatch {
                task, pool, worker, ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(task, "primes");
            assert_eq!(*pool, procpool::TaskTypes::of::<FakePrimes>());
            assert_eq!(*worker, procpool::TaskTypes::of::<Primes>());
            // The message names both sides.
            for name in [
                "FakePrimesIn",
                "procpool_tasks::primes::PrimesIn",
                "procpool_tasks::primes::PrimesOut",
            ] {
                assert!(msg.contains(name), "{name} missing from: {msg}");
            }
        }
        Some(other) => panic!("expected TaskTypesMismatch, got {other:?}"),
        None => panic!("a pool with mismatched types was built"),
    }
    // The same driver with the worker's own types is accepted.
    let pool = within(DEADLINE, || primes_pool(1));
    assert_eq!(pool.submit(PrimesIn { n: 10 }).wait().unwrap().primes, 4);
}

/// The smallest executor: poll on this thread, park until woken.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

#[test]
fn pending_can_be_polled_and_awaited() {
    within(DEADLINE, || {
        let pool = PoolBuilder::new()
            .workers(1)
            .worker_bin(worker_bin())
            .build(Fault)
            .unwrap_or_else(|e| panic!("build: {e}"));
        let slow = |n| FaultIn {
            n,
            fault: "sleep:150".into(),
        };
        // Not done at first; try_wait gives the handle back.
        let pending = pool.submit(slow(1));
        assert!(!pending.is_done());
        let pending = pending.try_wait().expect_err("done before it could run");
        assert!(
            wait_until(Duration::from_secs(20), || pending.is_done()),
            "never done"
        );
        let out = pending.try_wait().expect("done, so ready").unwrap();
        assert_eq!(out.n, 1);

        // Awaited: woken by the pool, with no runtime.
        let out = block_on(pool.submit(slow(2))).unwrap();
        assert_eq!(out.n, 2);
        // Several awaited together, completing in turn.
        let both = block_on(async {
            let a = pool.submit(slow(3));
            let b = pool.submit(FaultIn {
                n: 4,
                fault: "error".into(),
            });
            (a.await, b.await)
        });
        assert_eq!(both.0.unwrap().n, 3);
        assert!(matches!(both.1, Err(RecordError::Task(_))), "{:?}", both.1);
        pool.shutdown();
    });
}

#[test]
fn a_missing_or_unusable_binary_fails_in_build() {
    within(DEADLINE, || {
        let err = PoolBuilder::new()
            .workers(1)
            .worker_bin("/nonexistent/worker")
            .build(Primes)
            .err();
        assert!(
            matches!(&err, Some(PoolError::WorkerBinMissing { path }) if path.to_str() == Some("/nonexistent/worker")),
            "{err:?}"
        );
        // Readable, with a hint.
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("/nonexistent/worker") && msg.contains("procpool::init"),
            "{msg}"
        );
        let dir = crate::util::tempdir();
        let err = PoolBuilder::new()
            .workers(1)
            .worker_bin(dir.path())
            .build(Primes)
            .err();
        assert!(
            matches!(err, Some(PoolError::WorkerBinNotExecutable { .. })),
            "{err:?}"
        );
        let err = PoolBuilder::new()
            .workers(0)
            .worker_bin(worker_bin())
            .build(Primes)
            .err();
        assert!(matches!(err, Some(PoolError::Config(_))), "{err:?}");
    });
}

#[test]
fn probe_lists_the_tasks() {
    let tasks = within(DEADLINE, || {
        procpool::PoolBuilder::new()
            .worker_bin(worker_bin())
            .probe()
            .unwrap()
    });
    let primes = tasks.iter().find(|t| t.name == "primes").expect("primes");
    assert_eq!(primes.input_fields, ["n"]);
    assert_eq!(primes.output_fields, ["n", "primes"]);
}

#[test]
fn record_failures_through_the_library() {
    within(DEADLINE, || {
        let pool = PoolBuilder::new()
            .workers(2)
            .worker_bin(worker_bin())
            .record_timeout(Duration::from_millis(300))
            .build(Fault)
            .unwrap_or_else(|e| panic!("build: {e}"));
        let faults = ["", "error", "panic", "abort", "hang", "", "sleep:10", ""];
        let ins: Vec<FaultIn> = faults
            .iter()
            .enumerate()
            .map(|(n, f)| FaultIn {
                n: n as u64,
                fault: (*f).to_owned(),
            })
            .collect();
        let results: Vec<_> = pool.map(ins).collect();
        assert_eq!(results.len(), faults.len());
        for (n, (r, fault)) in results.iter().zip(faults).enumerate() {
            match (fault, r) {
                ("" | "sleep:10", Ok(out)) => assert_eq!(out.n, n as u64),
                ("error", Err(RecordError::Task(m))) => assert!(m.contains("asked for an error")),
                ("panic", Err(RecordError::Panicked(m))) => {
                    assert!(m.contains("asked for a panic"))
                }
                ("abort", Err(RecordError::WorkerDied { attempts, .. })) => {
                    assert_eq!(*attempts, 3)
                }
                ("hang", Err(RecordError::TimedOut { after, .. })) => {
                    assert_eq!(*after, Duration::from_millis(300))
                }
                _ => panic!("record {n} ({fault:?}): unexpected {r:?}"),
            }
        }
        let stats = pool.shutdown();
        // The abort took 3 fresh workers with it (retries + 1), plus at most
        // one that had run other records first (not charged); the hang 1.
        let ends = |want: procpool::WorkerEnd| {
            stats
                .iter()
                .filter(|s| s.end.as_ref() == Some(&want))
                .count()
        };
        let abort = procpool::WorkerExit::Signal(libc::SIGABRT);
        let crashed = ends(procpool::WorkerEnd::Crashed(abort));
        assert!((3..=4).contains(&crashed), "{stats:?}");
        assert_eq!(ends(procpool::WorkerEnd::TimedOut), 1, "{stats:?}");
        // Every record is counted by the worker that answered it, timed out
        // on it, or died running it for the last time.
        assert_eq!(stats.iter().map(|s| s.records).sum::<u64>(), 8, "{stats:?}");
    });
}

#[test]
fn cancel_ends_queued_records_as_cancelled() {
    within(DEADLINE, || {
        let pool = PoolBuilder::new()
            .workers(1)
            .worker_bin(worker_bin())
            .shutdown_grace(Duration::from_millis(200))
            .build(Fault)
            .unwrap_or_else(|e| panic!("build: {e}"));
        let canceller = pool.canceller();
        let ins = (0..50u64).map(|n| FaultIn {
            n,
            fault: "sleep:20".into(),
        });
        let mut ok = 0;
        let mut cancelled = 0;
        for (i, r) in pool.map(ins).enumerate() {
            if i == 2 {
                canceller.cancel();
            }
            match r {
                Ok(_) => ok += 1,
                Err(RecordError::Cancelled) => cancelled += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!((3..50).contains(&ok), "{ok} ok");
        assert_eq!(ok + cancelled, 50);
        pool.shutdown();
    });
}

/// Worker lines of the pools built in this test process, as the `log`
/// facade delivered them: (target, level, message).
static CAPTURED: std::sync::Mutex<Vec<(String, log::Level, String)>> =
    std::sync::Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        if let Ok(mut lines) = CAPTURED.lock() {
            lines.push((
                record.target().to_owned(),
                record.level(),
                record.args().to_string(),
            ));
        }
    }
    fn flush(&self) {}
}

#[test]
fn worker_lines_reach_the_host_through_the_log_facade() {
    static LOGGER: Capture = Capture;
    // The first test to get here installs it; nothing else in this binary does.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Trace);
    let pid = within(DEADLINE, || {
        let pool = primes_pool(1);
        let pid = pool.pids()[0];
        assert_eq!(pool.map(inputs(5)).filter(Result::is_ok).count(), 5);
        pool.shutdown();
        pid
    });
    let prefix = format!("worker pid={pid}: ");
    // The output thread may pass the last line on just after shutdown.
    assert!(
        wait_until(Duration::from_secs(10), || {
            CAPTURED.lock().unwrap().iter().any(|(target, level, msg)| {
                target == "procpool::worker"
                    && *level == log::Level::Info
                    && msg.starts_with(&prefix)
                    && msg.contains("stopping after 5 records")
            })
        }),
        "no `stopping` line of worker {pid} through `log`: {:?}",
        CAPTURED.lock().unwrap()
    );
    let lines = CAPTURED.lock().unwrap();
    let working = lines
        .iter()
        .filter(|(_, _, m)| m.starts_with(&prefix) && m.contains("working record"))
        .count();
    assert_eq!(working, 5, "{lines:?}");
}

/// Records are timed by default; `record_times(false)` leaves durations at
/// zero and starts unknown, and changes nothing else.
#[test]
fn records_are_timed_unless_told_not_to() {
    within(DEADLINE, || {
        // Records of about 10 ms (primes below 2 million), so that a timed
        // one cannot show zero.
        let slow = || (0..6).map(|i| PrimesIn { n: 2_000_000 + i });
        let timed = primes_pool(2);
        let detailed: Vec<_> = timed.map_detailed(slow()).collect();
        for d in &detailed {
            assert!(d.duration > Duration::ZERO, "{d:?}");
            assert!(d.started_us.is_some_and(|t| t > 0), "{d:?}");
        }
        let untimed = PoolBuilder::new()
            .workers(2)
            .worker_bin(worker_bin())
            .record_times(false)
            .build(Primes)
            .unwrap_or_else(|e| panic!("build: {e}"));
        let plain: Vec<_> = untimed.map_detailed(slow()).collect();
        for (d, t) in plain.iter().zip(&detailed) {
            assert_eq!((d.duration, d.started_us), (Duration::ZERO, None), "{d:?}");
            assert!(d.pid.is_some());
            assert_eq!(d.result.as_ref().unwrap(), t.result.as_ref().unwrap());
        }
        let stats = untimed.shutdown();
        // The workers' busy time is measured either way.
        assert!(stats.iter().map(|s| s.busy).sum::<Duration>() > Duration::ZERO);
    });
}

/// A raw source may give one-line records a run at a time (`Feed::Lines`);
/// runs whose count is not their number of lines fail as bad input, alone,
/// rather than reach a worker (or a split after a death) inconsistent.
#[test]
fn raw_runs_of_lines_come_back_in_order_and_a_wrong_count_fails_alone() {
    use procpool::raw::{Feed, RawSource};
    use procpool::{Encoding, ParamsEncoding, TaskSpec};

    struct Runs(std::vec::IntoIter<(String, usize)>, String);
    impl RawSource for Runs {
        fn next(&mut self, wait: Option<Duration>) -> Feed<'_> {
            self.next_lines(wait, 1, usize::MAX)
        }
        fn next_lines(&mut self, _: Option<Duration>, _: usize, _: usize) -> Feed<'_> {
            match self.0.next() {
                Some((text, count)) => {
                    self.1 = text;
                    Feed::Lines {
                        bytes: self.1.as_bytes(),
                        count,
                    }
                }
                None => Feed::End,
            }
        }
    }
    within(DEADLINE, || {
        let pool = PoolBuilder::new()
            .workers(2)
            .worker_bin(worker_bin())
            .build_raw(TaskSpec {
                name: "primes".into(),
                params: b"{}".to_vec(),
                params_encoding: ParamsEncoding::Json,
                records: Encoding::Json,
                threads: 1,
            })
            .unwrap();
        let runs = vec![
            ("{\"n\":10}\n{\"n\":30}".to_string(), 2),
            // Three lines said to be two: both records fail.
            ("{\"n\":4}\n{\"n\":4}\n{\"n\":4}".to_string(), 2),
            ("{\"n\":100}".to_string(), 1),
        ];
        let got: Vec<(u64, Result<String, String>)> = pool
            .map(Runs(runs.into_iter(), String::new()))
            .map(|o| {
                let r = match o.result {
                    Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).trim_end().to_string()),
                    Err(e) => Err(e.to_string()),
                };
                (o.seq, r)
            })
            .collect();
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(got[0], (0, Ok("{\"n\":10,\"primes\":4}".into())));
        assert_eq!(got[1], (1, Ok("{\"n\":30,\"primes\":10}".into())));
        for (seq, r) in &got[2..4] {
            let e = r.as_ref().unwrap_err();
            assert!(
                e.contains("the source gave 2 lines in bytes that hold 3"),
                "{seq}: {e}"
            );
        }
        assert_eq!(got[4], (4, Ok("{\"n\":100,\"primes\":25}".into())));
        pool.shutdown();
    });
}
