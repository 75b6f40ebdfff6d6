//! The supervisor over fake workers: ordering, retries, poison records,
//! recycling, and every failure path (start-up, timeouts, liveness, cancel,
//! shutdown), each in milliseconds.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use super::{pool, Plan, Script, Start};
use crate::error::{HandshakeFailure, PoolError, RecordError, WorkerEnd, WorkerExit};
use crate::pool::PoolBuilder;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Quick deadlines, so that failures show in milliseconds.
fn quick() -> PoolBuilder {
    PoolBuilder::new()
        .handshake_timeout(ms(200))
        .shutdown_grace(ms(200))
}

#[test]
fn ordered_results_through_the_supervisor() {
    let p = pool(PoolBuilder::new().workers(3), &Script::new()).unwrap();
    let out: Vec<u64> = p.map(0..20_000u64).map(Result::unwrap).collect();
    assert_eq!(out, (0..20_000).collect::<Vec<_>>());
    let stats = p.shutdown();
    assert_eq!(stats.iter().map(|s| s.records).sum::<u64>(), 20_000);
    assert!(
        stats
            .iter()
            .all(|s| s.end == Some(WorkerEnd::Stopped(WorkerExit::Code(0)))),
        "{stats:?}"
    );
}

#[test]
fn unordered_and_submit_through_the_supervisor() {
    let p = pool(PoolBuilder::new().workers(2), &Script::new()).unwrap();
    let mut seen: Vec<u64> = p
        .map_unordered(0..1000u64)
        .map(|d| d.result.unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    assert_eq!(p.submit(42).wait(), Ok(42));
    p.shutdown();
}

#[test]
fn a_poison_record_fails_alone_and_its_neighbours_succeed() {
    let script = Script::new().poison([77]);
    let p = pool(PoolBuilder::new().workers(2).retries(2), &script).unwrap();
    let out: Vec<Result<u64, RecordError>> = p.map(0..500u64).collect();
    for (i, r) in out.iter().enumerate() {
        if i == 77 {
            assert!(
                matches!(
                    r,
                    Err(RecordError::WorkerDied {
                        attempts: 3,
                        exit: WorkerExit::Signal(libc::SIGSEGV),
                        ..
                    })
                ),
                "{r:?}"
            );
        } else {
            assert_eq!(r.as_ref().ok(), Some(&(i as u64)));
        }
    }
    p.shutdown();
    // 2 at start, then one replacement per death: 3 charged (alone on a
    // fresh worker), plus at most two that charge nobody (inside a batch,
    // then alone on a worker that had run others).
    let n = script.launches();
    assert!((5..=7).contains(&n), "{n} workers started");
}

#[test]
fn workers_that_die_at_every_kth_record_lose_nothing() {
    let script = Script::new().all(Plan {
        die_after: Some(50),
        ..Plan::default()
    });
    let p = pool(PoolBuilder::new().workers(2), &script).unwrap();
    let out: Vec<u64> = p.map(0..3_000u64).map(Result::unwrap).collect();
    assert_eq!(out, (0..3_000).collect::<Vec<_>>());
    p.shutdown();
}

/// Workers that die at their second record whatever it is: a death is
/// charged to a record only on a fresh worker, so no innocent record fails.
#[test]
fn workers_that_die_at_their_second_record_fail_no_record() {
    let script = Script::new().all(Plan {
        die_after: Some(1),
        ..Plan::default()
    });
    let p = pool(PoolBuilder::new().workers(4).chunk_size(1), &script).unwrap();
    let out: Vec<Result<u64, RecordError>> = p.map(0..2_000u64).collect();
    let failed: Vec<_> = out.iter().enumerate().filter(|(_, r)| r.is_err()).collect();
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    p.shutdown();
}

#[test]
fn recycling_spreads_records_over_fresh_workers() {
    let script = Script::new();
    let p = pool(
        PoolBuilder::new().workers(2).max_tasks_per_child(10),
        &script,
    )
    .unwrap();
    let out: Vec<u64> = p.map(0..100u64).map(Result::unwrap).collect();
    assert_eq!(out, (0..100).collect::<Vec<_>>());
    let stats = p.shutdown();
    assert!(stats.iter().all(|s| s.records <= 10), "{stats:?}");
    assert!(script.launches() >= 10);
    assert!(
        stats
            .iter()
            .any(|s| matches!(s.end, Some(WorkerEnd::Recycled(WorkerExit::Code(0))))),
        "{stats:?}"
    );
}

#[test]
fn a_handshake_that_never_comes_fails_build_after_three_attempts() {
    let script = Script::new().all(Plan {
        start: Start::HangBeforeHello,
        ..Plan::default()
    });
    let t = Instant::now();
    let err = pool(quick().workers(2), &script).err().unwrap();
    assert!(
        matches!(
            &err,
            PoolError::Handshake {
                failure: HandshakeFailure::NoHello(_),
                ..
            }
        ),
        "{err}"
    );
    // Two at start, one replacement after the first failure; the third ends it.
    assert!(
        (3..=4).contains(&script.launches()),
        "{}",
        script.launches()
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn a_worker_that_exits_before_its_hello_is_noticed_at_once() {
    let script = Script::new().all(Plan {
        start: Start::ExitBeforeHello(4),
        ..Plan::default()
    });
    let err = pool(
        quick()
            .workers(1)
            .handshake_timeout(Duration::from_secs(30)),
        &script,
    )
    .err()
    .unwrap();
    assert!(
        matches!(
            &err,
            PoolError::Handshake {
                failure: HandshakeFailure::Exited(WorkerExit::Code(4)),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(script.launches(), 3);
}

#[test]
fn a_wrong_token_is_a_failed_start() {
    let script = Script::new().all(Plan {
        start: Start::WrongToken,
        ..Plan::default()
    });
    let err = pool(quick().workers(1), &script).err().unwrap();
    assert!(
        matches!(
            &err,
            PoolError::Handshake {
                failure: HandshakeFailure::WrongToken,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_task_the_worker_does_not_offer_fails_build_at_once() {
    let script = Script::new().all(Plan {
        start: Start::Rejects,
        ..Plan::default()
    });
    let err = pool(quick().workers(2), &script).err().unwrap();
    assert!(matches!(err, PoolError::TaskNotOffered { .. }), "{err}");
}

#[test]
fn a_failed_spawn_at_start_fails_build() {
    let script = Script::new().launch(
        1,
        Plan {
            start: Start::SpawnFails,
            ..Plan::default()
        },
    );
    let err = pool(quick().workers(3), &script).err().unwrap();
    assert!(matches!(err, PoolError::Spawn { .. }), "{err}");
}

/// One worker of sixteen dies during start-up: it is replaced, as it would
/// be a moment later, and the run goes on.
#[test]
fn one_worker_dying_during_start_up_is_replaced() {
    let script = Script::new()
        .launch(
            5,
            Plan {
                start: Start::ExitBeforeHello(1),
                ..Plan::default()
            },
        )
        .launch(
            9,
            Plan {
                start: Start::HangBeforeHello,
                ..Plan::default()
            },
        );
    let p = pool(quick().workers(16), &script).unwrap();
    assert_eq!(p.pids().len(), 16);
    let out: Vec<u64> = p.map(0..1_000u64).map(Result::unwrap).collect();
    assert_eq!(out, (0..1_000).collect::<Vec<_>>());
    p.shutdown();
    assert_eq!(script.launches(), 18);
}

/// Replacements that cannot start break the pool after three in a row:
/// queued and later records fail as `PoolBroken`, none is lost.
#[test]
fn the_pool_breaks_after_three_replacements_fail_in_a_row() {
    let fail = Plan {
        start: Start::ExitBeforeHello(3),
        ..Plan::default()
    };
    let script = Script::new()
        .launch(
            0,
            Plan {
                die_after: Some(10),
                ..Plan::default()
            },
        )
        .all(fail);
    let p = pool(quick().workers(1).chunk_size(5), &script).unwrap();
    let out: Vec<Result<u64, RecordError>> = p.map(0..100u64).collect();
    assert_eq!(out.len(), 100);
    for (i, r) in out.iter().enumerate().take(10) {
        assert_eq!(r.as_ref().ok(), Some(&(i as u64)));
    }
    assert!(
        out[10..]
            .iter()
            .all(|r| matches!(r, Err(RecordError::PoolBroken(reason)) if reason.contains("3 workers in a row"))),
        "{:?}",
        &out[10..15]
    );
    assert_eq!(
        p.submit(1)
            .wait()
            .err()
            .map(|e| e.to_string().contains("broken")),
        Some(true)
    );
    p.shutdown();
    assert_eq!(script.launches(), 4);
}

#[test]
fn a_failed_spawn_of_a_replacement_is_retried() {
    let script = Script::new()
        .launch(
            0,
            Plan {
                die_after: Some(3),
                ..Plan::default()
            },
        )
        .launch(
            1,
            Plan {
                start: Start::SpawnFails,
                ..Plan::default()
            },
        );
    let p = pool(quick().workers(1).chunk_size(1), &script).unwrap();
    let out: Vec<u64> = p.map(0..20u64).map(Result::unwrap).collect();
    assert_eq!(out, (0..20).collect::<Vec<_>>());
    p.shutdown();
    assert_eq!(script.launches(), 3);
}

#[test]
fn a_record_over_the_timeout_fails_alone_and_its_worker_is_killed() {
    let script = Script::new().slow(7, Duration::from_secs(60));
    let p = pool(quick().workers(2).record_timeout(ms(100)), &script).unwrap();
    let t = Instant::now();
    let out: Vec<Result<u64, RecordError>> = p.map(0..50u64).collect();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    for (i, r) in out.iter().enumerate() {
        if i == 7 {
            assert!(matches!(r, Err(RecordError::TimedOut { .. })), "{r:?}");
        } else {
            assert_eq!(r.as_ref().ok(), Some(&(i as u64)));
        }
    }
    let stats = p.shutdown();
    let timed_out: Vec<_> = stats
        .iter()
        .filter(|s| s.end == Some(WorkerEnd::TimedOut))
        .collect();
    assert_eq!(timed_out.len(), 1, "{stats:?}");
    assert_eq!(script.launches(), 3);
}

/// A worker that stops answering (no results, no heartbeats) while holding
/// records is declared dead, and its records run elsewhere.
#[test]
fn a_silent_worker_is_declared_dead_and_its_records_run_elsewhere() {
    let script = Script::new().launch(
        0,
        Plan {
            silent_after: Some(5),
            ..Plan::default()
        },
    );
    let p = pool(
        // Long enough that a healthy worker starved by a loaded machine is
        // not taken for a silent one (the launch count below is exact).
        quick().workers(2).chunk_size(1).liveness_timeout(ms(600)),
        &script,
    )
    .unwrap();
    let out: Vec<u64> = p.map(0..200u64).map(Result::unwrap).collect();
    assert_eq!(out, (0..200).collect::<Vec<_>>());
    let stats = p.shutdown();
    assert!(
        stats.iter().any(|s| s.end == Some(WorkerEnd::Unresponsive)),
        "{stats:?}"
    );
    assert_eq!(script.launches(), 3);
}

/// A record far longer than the liveness timeout is fine while its worker
/// keeps heart-beating; an idle worker that says nothing is left alone.
#[test]
fn heartbeats_keep_a_long_record_alive_and_idle_workers_are_left_alone() {
    // The record lasts three liveness timeouts; the margin keeps a worker
    // starved by a loaded machine from being taken for a silent one.
    let script = Script::new().slow(3, ms(1500)).all(Plan {
        heartbeat: Some(ms(10)),
        ..Plan::default()
    });
    let p = pool(quick().workers(2).liveness_timeout(ms(500)), &script).unwrap();
    let out: Vec<u64> = p.map(0..10u64).map(Result::unwrap).collect();
    assert_eq!(out, (0..10).collect::<Vec<_>>());
    p.shutdown();
    assert_eq!(script.launches(), 2);

    let quiet = Script::new();
    let p = pool(quick().workers(1).liveness_timeout(ms(50)), &quiet).unwrap();
    std::thread::sleep(ms(300));
    assert_eq!(p.submit(5).wait(), Ok(5));
    p.shutdown();
    assert_eq!(quiet.launches(), 1);
}

#[test]
fn cancel_lets_records_finish_within_the_grace_period_then_kills() {
    let script = Script::new()
        .slow(0, ms(50))
        .slow(1, Duration::from_secs(60));
    let p = pool(
        quick().workers(2).chunk_size(1).shutdown_grace(ms(300)),
        &script,
    )
    .unwrap();
    let cancel = p.canceller();
    let t = Instant::now();
    let out = std::thread::scope(|s| {
        let run = s.spawn(|| p.map(0..1_000u64).collect::<Vec<_>>());
        std::thread::sleep(ms(20));
        cancel.cancel();
        run.join().unwrap()
    });
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(out.len(), 1_000);
    assert_eq!(out[0], Ok(0), "finished within the grace period");
    assert_eq!(out[1], Err(RecordError::Cancelled), "killed after it");
    // The rest ran before the cancel, or were dropped by it.
    for (i, r) in out.iter().enumerate().skip(2) {
        assert!(
            r == &Ok(i as u64) || r == &Err(RecordError::Cancelled),
            "{i}: {r:?}"
        );
    }
    assert!(out.iter().filter(|r| r.is_err()).count() > 900);
    assert_eq!(p.submit(3).wait(), Err(RecordError::Cancelled));
    let stats = p.shutdown();
    assert!(
        stats.iter().any(|s| s.end == Some(WorkerEnd::Killed)),
        "{stats:?}"
    );
}

#[test]
fn a_second_cancel_kills_at_once() {
    let script = Script::new().slow(0, Duration::from_secs(60));
    let p = pool(
        quick().workers(1).shutdown_grace(Duration::from_secs(60)),
        &script,
    )
    .unwrap();
    let cancel = p.canceller();
    let t = Instant::now();
    let out = std::thread::scope(|s| {
        let run = s.spawn(|| p.map(0..10u64).collect::<Vec<_>>());
        std::thread::sleep(ms(20));
        cancel.cancel();
        cancel.cancel();
        run.join().unwrap()
    });
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        out.iter().all(|r| r == &Err(RecordError::Cancelled)),
        "{out:?}"
    );
    p.shutdown();
}

/// A worker that ignores `Stop` is killed after the grace period, and
/// shutdown returns.
#[test]
fn shutdown_kills_a_worker_that_does_not_stop() {
    let script = Script::new().launch(
        1,
        Plan {
            ignores_stop: true,
            ..Plan::default()
        },
    );
    let p = pool(quick().workers(2).shutdown_grace(ms(100)), &script).unwrap();
    let out: Vec<u64> = p.map(0..100u64).map(Result::unwrap).collect();
    assert_eq!(out.len(), 100);
    let t = Instant::now();
    let stats = p.shutdown();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let ends: Vec<_> = stats.iter().map(|s| s.end.clone()).collect();
    assert!(ends.contains(&Some(WorkerEnd::Killed)), "{ends:?}");
    assert!(
        ends.contains(&Some(WorkerEnd::Stopped(WorkerExit::Code(0)))),
        "{ends:?}"
    );
}

/// If the supervisor thread dies (a bug), every record read from the input
/// still ends, in both kinds of iterator: those that did not run as
/// `PoolBroken`; then the iterator ends (the rest of the input stays unread).
#[test]
fn iterators_report_every_record_when_the_supervisor_dies() {
    for ordered in [true, false] {
        let script = Script::new().all(Plan {
            die_after: Some(20),
            reap_panics: true,
            ..Plan::default()
        });
        let p = pool(PoolBuilder::new().workers(1).chunk_size(5), &script).unwrap();
        let mut seqs: Vec<(u64, Result<u64, RecordError>)> = if ordered {
            p.map_detailed(0..200u64)
                .map(|d| (d.seq, d.result))
                .collect()
        } else {
            p.map_unordered(0..200u64)
                .map(|d| (d.seq, d.result))
                .collect()
        };
        seqs.sort_by_key(|(s, _)| *s);
        let n = seqs.len() as u64;
        assert!(n > 20, "ordered: {ordered}: {n} records");
        assert_eq!(
            seqs.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (0..n).collect::<Vec<_>>(),
            "ordered: {ordered}"
        );
        assert!(seqs[..20].iter().all(|(s, r)| r == &Ok(*s)), "{seqs:?}");
        assert!(
            seqs[20..]
                .iter()
                .all(|(_, r)| matches!(r, Err(RecordError::PoolBroken(_)))),
            "ordered: {ordered}: {seqs:?}"
        );
    }
}
