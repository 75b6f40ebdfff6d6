//! Workers that crash, panic, hang, misbehave at start-up, or are killed
//! from outside: the run still ends, with the right lines in the right places.

use std::thread;
use std::time::Duration;

use crate::util::{
    children, coordinator, error_at, fault_input, ok_n, ready_pids, send_signal, tempdir,
    write_file, Output, Rng,
};

/// Run the `fault` task on `input` with extra arguments.
fn run_fault(input: &str, args: &[&str]) -> Output {
    let dir = tempdir();
    let path = write_file(dir.path(), "in.jsonl", input);
    coordinator(["--task", "fault", "--input", &path])
        .args(args)
        .run()
}

/// `count` good records with one `fault` at `at`.
fn one_bad(count: u64, at: u64, fault: &str) -> String {
    fault_input((0..count).map(|n| (n, if n == at { fault } else { "" })))
}

/// Every line is `{"n":i}`, except line `at` which is an error of `kind`.
#[track_caller]
fn assert_all_ok_but(out: &Output, count: u64, at: u64, kind: &str) -> String {
    let rows = out.json();
    assert_eq!(rows.len() as u64, count, "{}", out.stdout_str());
    let lines = out.lines();
    for n in 0..count {
        if n != at {
            assert_eq!(lines[n as usize], ok_n(n), "line {n}");
        }
    }
    let (k, message, seq) = error_at(&rows, at as usize);
    assert_eq!((k.as_str(), seq), (kind, at), "{}", lines[at as usize]);
    message
}

// ------------------------------------------------------- killed from outside

/// Kill random ready workers while `records` records run; the output must
/// be exactly that of an undisturbed run.
fn survive_random_kills(workers: usize) {
    const RECORDS: u64 = 10_000;
    const MIN_KILLS: usize = 3;
    // Each kill charges at most one batch once: with fewer kills than
    // `--retries`, no record can fail.
    const MAX_KILLS: usize = 8;
    // Enough sleeping records for about 0.5 s of work per worker, so that
    // there is time for several kills (one every 30-90 ms) whatever the
    // worker count.
    const WORK_MS: u64 = 500;
    let sleep_ms = (WORK_MS * workers as u64).div_ceil(RECORDS);
    let sleepers = (WORK_MS * workers as u64 / sleep_ms).min(RECORDS);
    let sleep = format!("sleep:{sleep_ms}");
    let input = fault_input((0..RECORDS).map(|n| {
        // Spread evenly: record n sleeps when it crosses a multiple.
        let sleeps = (n + 1) * sleepers / RECORDS != n * sleepers / RECORDS;
        (n, if sleeps { sleep.as_str() } else { "" })
    }));
    let expected: String = (0..RECORDS).map(|n| ok_n(n) + "\n").collect();

    let dir = tempdir();
    let path = write_file(dir.path(), "in.jsonl", &input);
    let mut run = coordinator(["--task", "fault", "--input", &path, "--retries", "10"])
        .args(["--workers", &workers.to_string()])
        .spawn();
    let mut rng = Rng::from_time(&format!("{workers} workers"));
    let mut killed = Vec::new();
    // Start once records flow.
    run.wait_for("the first results", |r| r.stdout_lines_now() > 0);
    while killed.len() < MAX_KILLS && !run.exited() {
        thread::sleep(Duration::from_millis(rng.range(30, 90)));
        // Only workers past their handshake: killing starting workers
        // repeatedly would (rightly) break the pool.
        let ready = ready_pids(&run.stderr_now());
        let candidates: Vec<u32> = children(run.pid)
            .into_iter()
            .filter(|p| ready.contains(p) && !killed.contains(p))
            .collect();
        if candidates.is_empty() || run.exited() {
            continue;
        }
        let victim = candidates[rng.range(0, candidates.len() as u64) as usize];
        send_signal(victim, libc::SIGKILL);
        killed.push(victim);
    }
    let out = run.wait();
    out.assert_code(0);
    out.assert_no_panic();
    assert!(
        killed.len() >= MIN_KILLS,
        "the run ended after only {} kills; make it longer",
        killed.len()
    );
    crate::util::assert_same_output(out.stdout_str(), &expected, "after kills");
    // The coordinator saw the kills (all but maybe one that raced with a
    // worker's orderly exit at the very end).
    let seen = out.stderr.matches("signal 9 (SIGKILL)").count();
    assert!(
        seen + 1 >= killed.len(),
        "{} kills but {seen} SIGKILL endings logged",
        killed.len()
    );
    eprintln!(
        "{workers} workers: {} kills, {} processes in all",
        killed.len(),
        out.spawned_pids().len()
    );
    assert!(out.spawned_pids().len() >= workers + killed.len() - 1);
    out.assert_no_workers_left(Duration::from_secs(2));
}

/// With 1, 2, 4 and 8 workers, side by side (the records sleep).
#[test]
fn random_kills_with_1_2_4_and_8_workers() {
    let runs: Vec<_> = [1, 2, 4, 8]
        .into_iter()
        .map(|workers| {
            (
                workers,
                thread::spawn(move || survive_random_kills(workers)),
            )
        })
        .collect();
    let failed: Vec<String> = runs
        .into_iter()
        .filter_map(|(workers, run)| {
            let panic = run.join().err()?;
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Some(format!("with {workers} workers: {message}"))
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

// ------------------------------------------------------------ record faults

#[test]
fn poison_record_fails_alone_as_worker_died() {
    let input = one_bad(51, 5, "abort");
    let out = run_fault(&input, &["--workers", "2"]);
    out.assert_code(1);
    let message = assert_all_ok_but(&out, 51, 5, "worker_died");
    assert!(message.contains("SIGABRT"), "{message}");
    assert!(message.contains("3 attempts"), "{message}");
    // The documented bound: retries + 1 = 3 deaths with it running alone
    // as a fresh worker's first record, plus at most one inside a batch of
    // several records and one alone on a worker that had run others (both
    // charge nobody).
    let crashes = out
        .stderr
        .matches("crashed with signal 6 (SIGABRT)")
        .count();
    assert!(
        (3..=5).contains(&crashes),
        "{crashes} crashes\n{}",
        out.stderr
    );
    assert!(out.spawned_pids().len() >= 2 + 3);
    assert!(
        out.summary()
            .unwrap()
            .starts_with("done: 51 records, 1 failed"),
        "{}",
        out.summary().unwrap()
    );
    out.assert_no_workers_left(Duration::from_secs(2));
}

#[test]
fn poison_records_of_every_deadly_kind() {
    // kill (SIGKILL itself) and exit (code 3): both poison, each on its own.
    let input = fault_input((0..30).map(|n| match n {
        3 => (n, "kill"),
        17 => (n, "exit"),
        _ => (n, ""),
    }));
    let out = run_fault(&input, &["--workers", "3", "--retries", "1"]);
    out.assert_code(1);
    let rows = out.json();
    assert_eq!(rows.len(), 30);
    for (n, row) in rows.iter().enumerate() {
        if n == 3 || n == 17 {
            let (kind, message, seq) = error_at(&rows, n);
            assert_eq!((kind.as_str(), seq), ("worker_died", n as u64));
            assert!(message.contains("2 attempts"), "{message}");
            let how = if n == 3 { "SIGKILL" } else { "exit code 3" };
            assert!(message.contains(how), "{message}");
        } else {
            assert_eq!(row, &serde_json::json!({ "n": n }));
        }
    }
    out.assert_no_workers_left(Duration::from_secs(2));
}

#[test]
fn panic_fails_one_record_and_the_worker_lives_on() {
    let input = one_bad(50, 5, "panic");
    let out = run_fault(&input, &["--workers", "2"]);
    out.assert_code(1);
    let message = assert_all_ok_but(&out, 50, 5, "panicked");
    assert!(message.contains("record 5 asked for a panic"), "{message}");
    // No worker was replaced.
    assert_eq!(out.spawned_pids().len(), 2, "{}", out.stderr);
    assert!(!out.stderr.contains("crashed"), "{}", out.stderr);
    out.assert_no_panic();
}

#[test]
fn task_error_fails_one_record() {
    let input = one_bad(20, 12, "error");
    let out = run_fault(&input, &["--workers", "2"]);
    out.assert_code(1);
    let message = assert_all_ok_but(&out, 20, 12, "task_error");
    assert!(
        message.contains("record 12 asked for an error"),
        "{message}"
    );
    assert_eq!(out.spawned_pids().len(), 2);
    // An unknown fault is a task error too.
    let out = run_fault(&one_bad(3, 1, "explode"), &["--workers", "1"]);
    out.assert_code(1);
    let message = assert_all_ok_but(&out, 3, 1, "task_error");
    assert!(message.contains("explode"), "{message}");
}

#[test]
fn primes_over_the_limit_is_a_task_error() {
    let dir = tempdir();
    let path = write_file(
        dir.path(),
        "in.jsonl",
        "{\"n\":100}\n{\"n\":200000001}\n{\"n\":1000}\n",
    );
    let out = coordinator(["--task", "primes", "--input", &path, "--workers", "2"]).run();
    out.assert_code(1);
    let rows = out.json();
    assert_eq!(rows[0], serde_json::json!({"n": 100, "primes": 25}));
    let (kind, message, seq) = error_at(&rows, 1);
    assert_eq!((kind.as_str(), seq), ("task_error", 1));
    assert!(message.contains("200000001"), "{message}");
    assert_eq!(rows[2], serde_json::json!({"n": 1000, "primes": 168}));
}

/// A record that hangs past the timeout fails alone as timed out, is not
/// retried, and its worker is killed and replaced. One worker: the records
/// after the hang need the replacement.
#[test]
fn hang_past_the_timeout_is_timed_out_and_its_worker_replaced() {
    let input = one_bad(10, 4, "hang");
    let out = run_fault(&input, &["--workers", "1", "--timeout", "300ms"]);
    out.assert_code(1);
    let message = assert_all_ok_but(&out, 10, 4, "timed_out");
    assert!(message.contains("0.300 s"), "{message}");
    // Not retried: one worker was killed for it.
    assert_eq!(
        out.stderr.matches("ended: timed out").count(),
        1,
        "{}",
        out.stderr
    );
    let spawned = out.spawned_pids();
    assert_eq!(spawned.len(), 2, "{}", out.stderr);
    let killed = crate::util::find_pids(&out.stderr, "killing worker pid=", "\n");
    assert_eq!(killed, [spawned[0]], "{}", out.stderr);
    // The replacement ran the rest.
    for n in 5..10 {
        let line = format!("Process {} working record n={n} fault=\n", spawned[1]);
        assert!(
            out.stderr.contains(&line),
            "{line:?} missing:\n{}",
            out.stderr
        );
    }
    out.assert_no_workers_left(Duration::from_secs(2));
}

#[test]
fn timeout_spares_records_that_finish_in_time() {
    // Slow but in time, around a hang: only the hang fails.
    let input = fault_input((0..12).map(|n| match n {
        6 => (n, "hang"),
        n if n % 3 == 0 => (n, "sleep:50"),
        _ => (n, ""),
    }));
    let out = run_fault(&input, &["--workers", "3", "--timeout", "400ms"]);
    out.assert_code(1);
    assert_all_ok_but(&out, 12, 6, "timed_out");
}

#[test]
fn max_tasks_per_child_1_recycles_every_worker() {
    let input = fault_input((0..20).map(|n| (n, "")));
    let out = run_fault(&input, &["--workers", "2", "--max-tasks-per-child", "1"]);
    out.assert_code(0);
    let expected: String = (0..20).map(|n| ok_n(n) + "\n").collect();
    assert_eq!(out.stdout_str(), expected);
    let spawned = out.spawned_pids();
    let distinct: std::collections::BTreeSet<u32> = spawned.iter().copied().collect();
    assert!(distinct.len() >= 20, "only {} worker pids", distinct.len());
    // Each working pid ran exactly one record.
    let working = crate::util::find_pids(&out.stderr, "Process ", " working record ");
    let distinct_working: std::collections::BTreeSet<u32> = working.iter().copied().collect();
    assert_eq!(working.len(), 20, "{}", out.stderr);
    assert_eq!(distinct_working.len(), 20, "{}", out.stderr);
    assert!(out.stderr.contains("recycled"), "{}", out.stderr);
    out.assert_no_workers_left(Duration::from_secs(2));
}

#[test]
fn max_tasks_per_child_larger_quota() {
    let dir = tempdir();
    let input: String = (0..100u64)
        .map(|i| format!("{{\"n\":{}}}\n", i * 37))
        .collect();
    let path = write_file(dir.path(), "in.jsonl", input);
    let out = coordinator(["--task", "primes", "--input", &path, "--workers", "3"])
        .args(["--max-tasks-per-child", "7"])
        .run();
    out.assert_code(0);
    let expected: String = (0..100u64)
        .map(|i| {
            let n = i * 37;
            format!(
                "{{\"n\":{n},\"primes\":{}}}\n",
                procpool_tasks::count_primes_below(n)
            )
        })
        .collect();
    assert_eq!(out.stdout_str(), expected);
    // 100 records at most 7 per worker: at least 15 processes.
    assert!(out.spawned_pids().len() >= 15, "{}", out.stderr);
}

// -------------------------------------------------------- crash/garbage after K

#[test]
fn crash_after_k_still_completes_with_identical_output() {
    let input = fault_input((0..100).map(|n| (n, "")));
    let expected: String = (0..100).map(|n| ok_n(n) + "\n").collect();
    let undisturbed = run_fault(&input, &["--workers", "2"]);
    undisturbed.assert_code(0);
    assert_eq!(undisturbed.stdout_str(), expected);
    // With K = 1 every worker dies at its second record, whatever it is. A
    // death counts against a record only on a fresh worker, so no innocent
    // record ends as worker_died, with the default retries.
    // Side by side.
    let dir = tempdir();
    let path = write_file(dir.path(), "in.jsonl", &input);
    let runs: Vec<_> = [1, 5]
        .into_iter()
        .map(|k| {
            let retries = "2";
            let run = coordinator([
                "--task",
                "fault",
                "--input",
                &path,
                "--workers",
                "2",
                "--retries",
                retries,
            ])
            .env("PROCPOOL_WORKER_FAULT", &format!("crash-after:{k}"))
            .spawn();
            (k, run)
        })
        .collect();
    for (k, run) in runs {
        let out = run.wait();
        out.assert_no_panic();
        crate::util::assert_same_output(out.stdout_str(), &expected, &format!("crash-after:{k}"));
        out.assert_code(0);
        assert!(out.stderr.contains("SIGABRT"), "{}", out.stderr);
        // No worker completes more than k records.
        assert!(out.spawned_pids().len() >= 100 / k, "{}", out.stderr);
        out.assert_no_workers_left(Duration::from_secs(2));
    }
}

#[test]
fn crash_after_k_with_retries_to_spare() {
    // With retries to spare, every record gets through even though every
    // worker, replacements included, aborts after 5 records.
    let input = fault_input((0..100).map(|n| (n, "")));
    let expected: String = (0..100).map(|n| ok_n(n) + "\n").collect();
    let dir = tempdir();
    let path = write_file(dir.path(), "in.jsonl", &input);
    let out = coordinator(["--task", "fault", "--input", &path, "--workers", "2"])
        .args(["--retries", "10"])
        .env("PROCPOOL_WORKER_FAULT", "crash-after:5")
        .run();
    out.assert_no_panic();
    crate::util::assert_same_output(out.stdout_str(), &expected, "crash-after:5");
    out.assert_code(0);
    assert!(out.stderr.contains("crashed with signal 6 (SIGABRT)"));
    // 100 records, at most 5 per worker.
    assert!(out.spawned_pids().len() >= 20, "{}", out.stderr);
    out.assert_no_workers_left(Duration::from_secs(2));
}

#[test]
fn garbage_after_k_is_survived() {
    const RECORDS: usize = 30;
    let input = fault_input((0..RECORDS as u64).map(|n| (n, "")));
    let dir = tempdir();
    let path = write_file(dir.path(), "in.jsonl", &input);
    // Run them side by side.
    let runs: Vec<_> = [0, 1, 4]
        .into_iter()
        .map(|k| {
            let run = coordinator(["--task", "fault", "--input", &path, "--workers", "2"])
                .env("PROCPOOL_WORKER_FAULT", &format!("garbage-after:{k}"))
                .spawn();
            (k, run)
        })
        .collect();
    for (k, run) in runs {
        let out = run.wait();
        out.assert_no_panic();
        assert!(
            matches!(out.code(), Some(0 | 1)),
            "garbage-after:{k}: {:?}\n{}",
            out.status,
            out.stderr
        );
        let rows = out.json();
        assert_eq!(rows.len(), RECORDS, "garbage-after:{k}");
        let mut failed = 0;
        for (n, row) in rows.iter().enumerate() {
            if row.get("error").is_some() {
                let (kind, _, seq) = error_at(&rows, n);
                assert_eq!(seq, n as u64);
                assert_eq!(kind, "worker_died", "garbage-after:{k}: {row}");
                failed += 1;
            } else {
                assert_eq!(row, &serde_json::json!({ "n": n }), "garbage-after:{k}");
            }
        }
        assert_eq!(out.code(), Some(if failed > 0 { 1 } else { 0 }));
        if k == 0 {
            // Nothing can ever succeed.
            assert_eq!(failed, RECORDS);
        }
        assert!(
            out.stderr.contains("malformed") || out.stderr.contains("broke the protocol"),
            "garbage-after:{k}:\n{}",
            out.stderr
        );
        out.assert_no_workers_left(Duration::from_secs(2));
    }
}

// --------------------------------------------------------- start-up faults

#[test]
fn start_up_faults_fail_the_run_with_exit_2() {
    let input = fault_input((0..10).map(|n| (n, "")));
    let cases = [
        ("exit-before-hello", "exited with exit code 4", 10),
        ("garbage-hello", "malformed", 10),
        ("wrong-version", "protocol version", 10),
        ("wrong-token", "token", 10),
        // Hangs, with a short handshake deadline: `supervise.rs`.
    ];
    // Run them side by side.
    let dir = tempdir();
    let path = write_file(dir.path(), "in.jsonl", &input);
    let runs: Vec<_> = cases
        .iter()
        .map(|(fault, _, deadline)| {
            coordinator(["--task", "fault", "--input", &path, "--workers", "2"])
                .env("PROCPOOL_WORKER_FAULT", fault)
                .deadline(Duration::from_secs(*deadline))
                .spawn()
        })
        .collect();
    for ((fault, expect, _), run) in cases.iter().zip(runs) {
        let out = run.wait();
        out.assert_code(2);
        let msg = out.the_error();
        assert!(msg.contains(expect), "{fault}: {msg}");
        assert!(msg.contains("failed to start"), "{fault}: {msg}");
        assert_eq!(out.stdout_str(), "", "{fault}");
        out.assert_no_panic();
        out.assert_no_workers_left(Duration::from_secs(2));
    }
}

#[test]
fn start_up_fault_in_tasks_subcommand() {
    let out = coordinator(["tasks"])
        .env("PROCPOOL_WORKER_FAULT", "exit-before-hello")
        .deadline(Duration::from_secs(10))
        .run();
    out.assert_code(2);
    assert!(out.the_error().contains("exit code 4"), "{}", out.stderr);
}

// --------------------------------------------------------------- fail-fast

#[test]
fn fail_fast_stops_at_the_first_failure() {
    let input = fault_input((0..40).map(|n| (n, if n == 7 { "error" } else { "sleep:20" })));
    let dir = tempdir();
    let path = write_file(dir.path(), "in.jsonl", &input);
    let run = |args: &[&str]| {
        coordinator(["--task", "fault", "--input", &path])
            .args(args)
            .spawn()
    };
    // Side by side: with --fail-fast, and without (the same input runs to
    // the end).
    let fail_fast = run(&["--workers", "2", "--fail-fast"]);
    let to_the_end = run(&["--workers", "2"]);
    let out = fail_fast.wait();
    out.assert_code(1);
    let rows = out.json();
    let lines = out.lines();
    assert_eq!(
        rows.len(),
        8,
        "stops right after the failure:\n{}",
        out.stdout_str()
    );
    for (n, line) in lines.iter().enumerate().take(7) {
        assert_eq!(*line, ok_n(n as u64));
    }
    let (kind, _, seq) = error_at(&rows, 7);
    assert_eq!((kind.as_str(), seq), ("task_error", 7));
    assert!(
        out.summary().unwrap().contains("1 failed"),
        "{}",
        out.stderr
    );
    out.assert_no_workers_left(Duration::from_secs(2));

    let out = to_the_end.wait();
    out.assert_code(1);
    assert_eq!(out.lines().len(), 40);
}

#[test]
fn fail_fast_with_no_failure_runs_everything() {
    let input = fault_input((0..30).map(|n| (n, "")));
    let out = run_fault(&input, &["--workers", "2", "--fail-fast"]);
    out.assert_code(0);
    assert_eq!(out.lines().len(), 30);
}
