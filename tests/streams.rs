//! Input that is a stream: a pipe kept open, a slow producer, /dev/zero;
//! signals while the input is stalled; numbering of input records when bad
//! ones are skipped; the thread executor's grace period.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::util::{coordinator, fault_input, ok_n, tempdir, write_file};

#[test]
fn records_from_a_pipe_kept_open_come_out_while_it_stays_open() {
    let mut run = coordinator(["--task", "fault", "--input", "-", "--workers", "2"])
        .stdin_pipe()
        .deadline(Duration::from_secs(30))
        .spawn();
    let mut stdin = run.stdin.take().expect("stdin pipe");
    stdin
        .write_all(fault_input([(0, ""), (1, "")]).as_bytes())
        .unwrap();
    stdin.flush().unwrap();
    // The pipe stays open: the two results must not wait for its end.
    run.wait_for("the first two results while stdin is open", |r| {
        r.stdout_lines_now() >= 2
    });
    assert_eq!(run.stdout_now(), format!("{}\n{}\n", ok_n(0), ok_n(1)));
    // More later, still streamed.
    stdin
        .write_all(fault_input([(2, "sleep:20")]).as_bytes())
        .unwrap();
    run.wait_for("the third result", |r| r.stdout_lines_now() >= 3);
    drop(stdin);
    let out = run.wait();
    out.assert_code(0);
    assert_eq!(out.lines(), [ok_n(0), ok_n(1), ok_n(2)]);
    out.assert_no_workers_left(Duration::from_secs(2));
}

#[test]
fn csv_from_a_pipe_streams_after_its_header() {
    let mut run = coordinator(["--input", "-", "--workers", "1", "--year", "2000"])
        .stdin_pipe()
        .deadline(Duration::from_secs(30))
        .spawn();
    let mut stdin = run.stdin.take().expect("stdin pipe");
    stdin
        .write_all(b"name,field,born,nobel\nAda,math,1815,no\n")
        .unwrap();
    run.wait_for("Ada's result while stdin is open", |r| {
        r.stdout_lines_now() >= 1
    });
    assert_eq!(run.stdout_now(), "{\"name\":\"Ada\",\"age\":185}\n");
    drop(stdin);
    run.wait().assert_code(0);
}

/// A signal stops the run within the grace period, whatever the input does.
fn signal_with_stalled_input(before: &[u8], signal: i32, code: i32) {
    let mut run = coordinator(["--task", "fault", "--input", "-", "--workers", "1"])
        .args(["--grace", "2s"])
        .stdin_pipe()
        .deadline(Duration::from_secs(20))
        .spawn();
    let mut stdin = run.stdin.take().expect("stdin pipe");
    stdin.write_all(before).unwrap();
    let records = before.iter().filter(|&&b| b == b'\n').count();
    if records > 0 {
        run.wait_for("the records written so far", |r| {
            r.stdout_lines_now() >= records
        });
    } else {
        // Its input thread runs once its signal handlers are in place.
        run.wait_for("the coordinator's input thread", |r| {
            has_thread(r.pid, "input")
        });
    }
    let sent = Instant::now();
    run.signal(signal);
    let out = run.wait();
    // The pipe is still open: only the signal can have ended the run.
    drop(stdin);
    out.assert_code(code);
    out.assert_no_panic();
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        sent.elapsed()
    );
    let expected: Vec<String> = (0..records as u64).map(ok_n).collect();
    assert_eq!(out.lines(), expected);
    out.assert_no_workers_left(Duration::from_secs(2));
}

#[test]
fn sigint_stops_a_run_whose_input_is_stalled() {
    signal_with_stalled_input(
        fault_input([(0, ""), (1, "")]).as_bytes(),
        libc::SIGINT,
        130,
    );
}

#[test]
fn sigterm_stops_a_run_whose_input_never_started() {
    // Nothing written: the format cannot even be sniffed yet.
    signal_with_stalled_input(b"", libc::SIGTERM, 143);
}

#[test]
fn dev_zero_is_refused_as_csv_and_stoppable_as_json_lines() {
    // Sniffed as CSV: a header with no line end, refused at the limit.
    let out = coordinator(["--input", "/dev/zero", "--workers", "1"])
        .args(["--max-record-bytes", "1000"])
        .deadline(Duration::from_secs(20))
        .run();
    out.assert_code(2);
    let msg = out.the_error();
    assert!(msg.starts_with("/dev/zero:1: "), "{msg}");
    assert!(msg.contains("over the limit of 1000 bytes"), "{msg}");

    // As JSON lines: one endless record, read and dropped; a signal ends it.
    let mut run = coordinator(["--task", "fault", "--input", "/dev/zero"])
        .args(["--format", "jsonl", "--workers", "1", "--grace", "2s"])
        .deadline(Duration::from_secs(20))
        .spawn();
    run.wait_for("the workers to start", |r| r.stderr_now().contains("ready"));
    run.signal(libc::SIGTERM);
    let out = run.wait();
    out.assert_code(143);
    assert_eq!(out.stdout_str(), "");
    out.assert_no_workers_left(Duration::from_secs(2));
}

#[test]
fn skipped_bad_input_keeps_the_numbering_of_input_records() {
    let dir = tempdir();
    let mut input = fault_input([(0, "")]);
    input.push_str("not json\n");
    input.push_str(&fault_input([(2, ""), (3, "error"), (4, "")]));
    let input = write_file(dir.path(), "in.jsonl", input);
    let joblog = dir.path().join("jobs.tsv");
    let out = coordinator(["--task", "fault", "--input", &input, "--workers", "2"])
        .arg("--skip-bad-input")
        .arg("--joblog")
        .arg(&joblog)
        .run();
    out.assert_code(1);
    let rows = out.json();
    // The skipped record leaves no line; the others keep their input numbers.
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(rows[0], serde_json::json!({"n": 0}));
    assert_eq!(rows[1], serde_json::json!({"n": 2}));
    assert_eq!(rows[2]["seq"], 3, "{rows:?}");
    assert_eq!(rows[2]["error"]["kind"], "task_error");
    assert_eq!(rows[3], serde_json::json!({"n": 4}));
    let seqs: Vec<u64> = std::fs::read_to_string(&joblog)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqs, [0, 2, 3, 4]);
    assert!(
        out.stderr
            .contains(&format!("skipping bad input: {input}:2: invalid JSON")),
        "{}",
        out.stderr
    );
}

#[test]
fn thread_executor_stops_hung_tasks_after_the_grace_period() {
    let dir = tempdir();
    let input = fault_input((0..6).map(|n| (n, if n < 2 { "" } else { "hang" })));
    let input = write_file(dir.path(), "in.jsonl", input);
    let mut run = coordinator(["--task", "fault", "--input", &input, "--workers", "2"])
        .args(["--executor", "thread", "--grace", "300ms"])
        .deadline(Duration::from_secs(20))
        .spawn();
    run.wait_for("a hang to start", |r| {
        r.stderr_now().contains("fault=hang\n")
    });
    let sent = Instant::now();
    // One SIGTERM: the grace period passes, then the hung threads' process is killed.
    run.signal(libc::SIGTERM);
    let out = run.wait();
    out.assert_code(143);
    assert!(
        sent.elapsed() < Duration::from_secs(8),
        "took {:?} with --grace 300ms",
        sent.elapsed()
    );
    assert_eq!(out.lines(), [ok_n(0), ok_n(1)]);
    out.assert_no_workers_left(Duration::from_secs(2));
}

/// Whether process `pid` has a thread named `name`.
fn has_thread(pid: u32, name: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
            })
        })
        .unwrap_or(false)
}

/// Records that cost next to nothing at the start (bad input, skipped) do
/// not make the batch size jump: the records after them are still sent in
/// small batches, so their results come out while a slow record at the end
/// runs (in one large batch with it, none would until it finished).
#[test]
fn cheap_bad_records_first_do_not_hold_back_the_output() {
    let dir = tempdir();
    let mut input = String::from("not json\nnot json either\n");
    input.push_str(&fault_input((2..102).map(|n| (n, "sleep:2"))));
    input.push_str(&fault_input([(102, "hang")]));
    let input = write_file(dir.path(), "in.jsonl", input);
    let mut run = coordinator(["--task", "fault", "--input", &input, "--workers", "2"])
        .args(["--skip-bad-input", "--grace", "300ms"])
        .deadline(Duration::from_secs(30))
        .spawn();
    // The batch size grows at most twofold per measurement and 2 ms records
    // keep it near 2: the batch holding the hung record holds few others.
    run.wait_for("90 results while the last record hangs", |r| {
        r.stdout_lines_now() >= 90
    });
    run.signal(libc::SIGTERM);
    let out = run.wait();
    out.assert_code(143);
    let lines = out.lines();
    assert!((90..=100).contains(&lines.len()), "{} lines", lines.len());
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(*line, ok_n(i as u64 + 2), "line {i}");
    }
    // The skipped records leave no line: the message counts lines and
    // names the last input record they cover.
    let expected = format!(
        "interrupted by SIGTERM: output holds {} lines in order, for the input up to \
         record #{} (2 bad input records skipped)",
        lines.len(),
        lines.len() + 1
    );
    assert!(out.stderr.contains(&expected), "{}", out.stderr);
    out.assert_no_workers_left(Duration::from_secs(2));
}

/// `coordinator ... | head -1`: once the reader has gone, writing fails
/// with a broken pipe. Every command ends quietly with 0 then, and never
/// panics (a panic exits 101, which a `set -o pipefail` script reports).
#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let commands: [&[&str]; 3] = [
        &["tasks"],
        &["--workers", "2", "--work-ms", "0"],
        &[
            "scale",
            "--workers",
            "1",
            "--executor",
            "process",
            "--task",
            "primes",
            "--records",
            "2",
            "--n",
            "1000",
            "--repeat",
            "1",
        ],
    ];
    for args in commands {
        let out = coordinator(args).stdout_closed().run();
        let stderr = &out.stderr;
        assert_eq!(out.code(), Some(0), "{args:?}: stderr:\n{stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("error"),
            "{args:?}: stderr:\n{stderr}"
        );
    }
}

/// Without a progress bar, workers write their lines straight to the
/// coordinator's stderr (no pipe and no reader of their own): a worker's
/// stdout and stderr are the coordinator's stderr.
#[test]
fn workers_write_straight_to_the_coordinators_stderr() {
    let mut run = coordinator(["--workers", "2", "--work-ms", "100"]).spawn();
    run.wait_for("both workers ready", |r| {
        crate::util::ready_pids(&r.stderr_now()).len() == 2
    });
    let link = |pid: u32, fd: u32| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok();
    let ours = link(run.pid, 2).expect("the coordinator's stderr");
    for pid in crate::util::ready_pids(&run.stderr_now()) {
        assert_eq!(link(pid, 2).as_ref(), Some(&ours), "stderr of worker {pid}");
        assert_eq!(link(pid, 1).as_ref(), Some(&ours), "stdout of worker {pid}");
    }
    let out = run.wait();
    out.assert_code(0);
    assert!(out.stderr.contains("working record"), "{}", out.stderr);
}
