//! The supervisor with real processes: process groups, liveness of a stopped
//! worker, deaths during start-up, handshakes that never come. (The same
//! paths are unit-tested over the in-process fake backend in milliseconds;
//! these are the proof with the real worker binary.)

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use procpool::{PoolBuilder, PoolError, RecordError, WorkerEnd};
use procpool_tasks::{Fault, FaultIn, Primes, PrimesIn};

use crate::util::{alive, tempdir, wait_until, within, worker_bin};

const DEADLINE: Duration = Duration::from_secs(60);

/// An executable shell script `name` in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Live processes running `sleep <marker>`.
fn sleeps(marker: &str) -> usize {
    let want = format!("sleep\0{marker}\0");
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want.as_bytes())
                })
                .count()
        })
        .unwrap_or(0)
}

/// A sleep duration no other test (or run) uses, short enough that a
/// leftover does not hold the test harness's pipes for long.
fn marker(n: u32) -> String {
    format!("30.{}{n}", std::process::id())
}

/// The pids of the helpers the scripts below started (each appends `$!`
/// to `file` once its helper is forked).
fn helper_pids(file: &Path) -> Vec<u32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

/// What a worker starts goes with it: killed at the handshake deadline, at
/// a record timeout, or at an orderly exit, its process group is killed.
#[test]
fn helpers_a_worker_starts_die_with_it() {
    within(DEADLINE, || {
        let dir = tempdir();
        // Never connects: given up at the handshake deadline, three times.
        let m = marker(1);
        let pids = dir.path().join("pids");
        let hangs = script(
            dir.path(),
            "hangs",
            &format!("sleep {m} &\necho $! >> '{}'\nsleep {m}", pids.display()),
        );
        let err = PoolBuilder::new()
            .workers(1)
            .worker_bin(&hangs)
            .handshake_timeout(Duration::from_millis(200))
            .build(Primes)
            .err()
            .unwrap();
        assert!(matches!(err, PoolError::Handshake { .. }), "{err}");
        // The helpers were there to be killed (one per attempt that got as
        // far as starting one), and are gone.
        let helpers = helper_pids(&pids);
        assert!(!helpers.is_empty(), "no attempt started its helper");
        assert!(
            wait_until(Duration::from_secs(3), || !helpers
                .iter()
                .any(|&p| alive(p))),
            "helpers {helpers:?} outlived their workers"
        );
        assert!(
            wait_until(Duration::from_secs(3), || sleeps(&m) == 0),
            "{} `sleep {m}` left",
            sleeps(&m)
        );
    });
}

/// A real worker with a helper: killed at a record timeout, then stopped at
/// shutdown; the helpers go with it.
#[test]
fn helpers_of_a_timed_out_or_stopped_worker_die_with_it() {
    within(DEADLINE, || {
        let dir = tempdir();
        let m = marker(2);
        let pids = dir.path().join("pids");
        let worker = worker_bin();
        let helper = script(
            dir.path(),
            "helper",
            &format!(
                "sleep {m} &\necho $! >> '{}'\nexec '{}'",
                pids.display(),
                worker.display()
            ),
        );
        let pool = PoolBuilder::new()
            .workers(1)
            .worker_bin(&helper)
            .record_timeout(Duration::from_millis(300))
            .build(Fault)
            .unwrap_or_else(|e| panic!("build: {e}"));
        let ins = ["hang", ""].iter().enumerate().map(|(n, f)| FaultIn {
            n: n as u64,
            fault: (*f).to_owned(),
        });
        let results: Vec<_> = pool.map(ins).collect();
        assert!(matches!(results[0], Err(RecordError::TimedOut { .. })));
        assert!(results[1].is_ok(), "{:?}", results[1]);
        // The timed-out worker's helper went with it; its replacement's lives.
        let helpers = helper_pids(&pids);
        assert_eq!(helpers.len(), 2, "{helpers:?}");
        assert!(
            wait_until(Duration::from_secs(3), || !alive(helpers[0])),
            "the timed-out worker's helper {} is still there",
            helpers[0]
        );
        assert!(alive(helpers[1]), "the replacement's helper is gone");
        pool.shutdown();
        assert!(
            wait_until(Duration::from_secs(3), || !alive(helpers[1])),
            "the stopped worker's helper {} is still there",
            helpers[1]
        );
        assert!(
            wait_until(Duration::from_secs(3), || sleeps(&m) == 0),
            "{} `sleep {m}` left",
            sleeps(&m)
        );
    });
}

/// A worker stopped with SIGSTOP sends nothing: it is declared dead after
/// the liveness timeout, killed and replaced, and its records run elsewhere.
#[test]
fn a_stopped_worker_is_declared_dead_and_replaced() {
    within(DEADLINE, || {
        let pool = PoolBuilder::new()
            .workers(2)
            .worker_bin(worker_bin())
            .chunk_size(1)
            .liveness_timeout(Duration::from_millis(500))
            .build(Fault)
            .unwrap_or_else(|e| panic!("build: {e}"));
        let stopped = pool.pids()[0];
        let ins = (0..30u64).map(|n| FaultIn {
            n,
            fault: "sleep:10".into(),
        });
        let t = Instant::now();
        let mut results = Vec::new();
        for (i, r) in pool.map(ins).enumerate() {
            if i == 5 {
                // SAFETY: kill takes plain integers.
                unsafe { libc::kill(stopped as i32, libc::SIGSTOP) };
            }
            results.push(r);
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        for (n, r) in results.iter().enumerate() {
            assert_eq!(r.as_ref().map(|o| o.n).ok(), Some(n as u64), "{r:?}");
        }
        assert!(
            wait_until(Duration::from_secs(3), || !alive(stopped)),
            "the stopped worker {stopped} is still there"
        );
        let stats = pool.shutdown();
        assert!(
            stats
                .iter()
                .any(|s| s.pid == stopped && s.end == Some(WorkerEnd::Unresponsive)),
            "{stats:?}"
        );
    });
}

/// One worker of sixteen dies before its handshake: it is replaced, as it
/// would be later, and the pool starts with sixteen.
#[test]
fn one_worker_dying_during_start_up_is_replaced() {
    within(DEADLINE, || {
        let dir = tempdir();
        let once = dir.path().join("once");
        let worker = worker_bin();
        let flaky = script(
            dir.path(),
            "flaky",
            &format!(
                "if mkdir '{}' 2>/dev/null; then exit 3; fi\nexec '{}'",
                once.display(),
                worker.display()
            ),
        );
        let pool = PoolBuilder::new()
            .workers(16)
            .worker_bin(&flaky)
            .build(Primes)
            .unwrap_or_else(|e| panic!("build: {e}"));
        assert!(once.exists(), "no worker died");
        assert_eq!(pool.pids().len(), 16);
        let counts: Vec<u64> = pool
            .map((1..=40).map(|k| PrimesIn { n: k * 10 }))
            .map(|r| r.map(|o| o.primes))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(counts[..3], [4, 8, 10]);
        let stats = pool.shutdown();
        assert_eq!(stats.len(), 16, "{stats:?}");
    });
}

/// Workers that connect and never say hello (or never connect), with a short
/// handshake deadline: three attempts, then a clear error. (The two cases
/// run side by side.)
#[test]
fn handshakes_that_never_come_fail_build_after_three_attempts() {
    within(DEADLINE, || {
        let dir = tempdir();
        let worker = worker_bin();
        let builds: Vec<_> = ["hang-before-hello", "hang-after-connect"]
            .into_iter()
            .map(|fault| {
                let bin = script(
                    dir.path(),
                    fault,
                    &format!("PROCPOOL_WORKER_FAULT={fault} exec '{}'", worker.display()),
                );
                let build = std::thread::spawn(move || {
                    let t = Instant::now();
                    let err = PoolBuilder::new()
                        .workers(2)
                        .worker_bin(&bin)
                        .handshake_timeout(Duration::from_millis(200))
                        .build(Primes)
                        .err()
                        .unwrap();
                    (err, t.elapsed())
                });
                (fault, build)
            })
            .collect();
        for (fault, build) in builds {
            let (err, took) = build.join().unwrap();
            let msg = err.to_string();
            assert!(msg.contains("handshake within 0.2 s"), "{fault}: {msg}");
            assert!(took < Duration::from_secs(10), "{fault}: {took:?}");
        }
    });
}

/// A coordinator killed before its workers connected leaves a rendezvous
/// directory with a dead socket in `$TMPDIR`: the next run of the same user
/// removes it, and leaves alone anything else there. The next minute's runs
/// do not look again (a stamp file says when it was done).
#[test]
fn a_stale_rendezvous_directory_is_removed_at_start_up() {
    use std::os::unix::net::UnixListener;
    let dir = tempdir();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let stale = tmp.join(".tmpAbC123");
    std::fs::create_dir(&stale).unwrap();
    drop(UnixListener::bind(stale.join("socket")).unwrap());
    // Left there a minute ago.
    let minute_ago = std::time::SystemTime::now() - Duration::from_secs(60);
    std::fs::File::open(&stale)
        .unwrap()
        .set_modified(minute_ago)
        .unwrap();
    let mine = tmp.join(".tmpKeepMe");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes"), "not a rendezvous").unwrap();
    let input = crate::util::write_file(
        dir.path(),
        "in.jsonl",
        crate::util::fault_input((0..5).map(|n| (n, ""))),
    );
    let out = crate::util::coordinator(["--task", "fault", "--workers", "2", "--input", &input])
        .env("TMPDIR", tmp.to_str().unwrap())
        .run();
    out.assert_code(0);
    assert!(!stale.exists(), "stale rendezvous left: {}", out.stderr);
    assert!(mine.join("notes").exists());
    assert!(
        out.stderr.contains("removed 1 stale rendezvous"),
        "{}",
        out.stderr
    );
    // Another one left now is there for the next scan, a minute on.
    std::fs::create_dir(&stale).unwrap();
    drop(UnixListener::bind(stale.join("socket")).unwrap());
    std::fs::File::open(&stale)
        .unwrap()
        .set_modified(minute_ago)
        .unwrap();
    let again = crate::util::coordinator(["--task", "fault", "--workers", "2", "--input", &input])
        .env("TMPDIR", tmp.to_str().unwrap())
        .run();
    again.assert_code(0);
    assert!(
        stale.exists(),
        "looked again within the minute: {}",
        again.stderr
    );
}
