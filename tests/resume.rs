//! `--resume`: an interrupted run, run again, leaves exactly the output of
//! an uninterrupted one.

use std::path::Path;
use std::time::Duration;

use crate::util::{coordinator, fault_input, tempdir, write_file, Cmd};

const RECORDS: u64 = 400;

/// Record n fails with a task error when n % 37 == 36, so that resumed
/// error lines must carry their absolute `seq`.
fn fails(n: u64) -> bool {
    n % 37 == 36
}

/// 400 records; with `slow`, each sleeps 2 ms (about 0.4 s on 2 workers,
/// batches of a few records: lines come out steadily to be interrupted).
fn input(slow: bool) -> String {
    let sleep = if slow { "sleep:2" } else { "" };
    fault_input((0..RECORDS).map(|n| (n, if fails(n) { "error" } else { sleep })))
}

fn command(input: &str, output: &Path, resume: bool) -> Cmd {
    command_on(2, input, output, resume)
}

fn command_on(workers: usize, input: &str, output: &Path, resume: bool) -> Cmd {
    let cmd = coordinator(["--task", "fault", "--input", input, "--workers"])
        .arg(workers.to_string())
        .arg("--output")
        .arg(output);
    if resume {
        cmd.arg("--resume")
    } else {
        cmd
    }
}

/// The output of an uninterrupted run (the fast input gives the same lines).
fn reference(dir: &Path) -> String {
    let path = write_file(dir, "fast.jsonl", input(false));
    let output = dir.join("reference.jsonl");
    let out = command(&path, &output, false).run();
    out.assert_code(1);
    let text = std::fs::read_to_string(&output).unwrap();
    // Sanity: it is what we think it is.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, RECORDS);
    for (n, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if fails(n as u64) {
            assert_eq!(v["seq"], n as u64, "{line}");
            assert_eq!(v["error"]["kind"], "task_error", "{line}");
        } else {
            assert_eq!(v, serde_json::json!({ "n": n }));
        }
    }
    text
}

fn lines_in(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

fn interrupted_then_resumed(signal: i32) {
    let dir = tempdir();
    let expected = reference(dir.path());
    let slow = write_file(dir.path(), "slow.jsonl", input(true));
    let output = dir.path().join("out.jsonl");

    let mut run = command(&slow, &output, false).spawn();
    run.wait_for("part of the output", |_| lines_in(&output) >= 60);
    run.signal(signal);
    let first = run.wait();
    match signal {
        libc::SIGKILL => {}
        libc::SIGINT => first
            .assert_code(130)
            .assert_no_workers_left(Duration::from_secs(2)),
        _ => unreachable!(),
    };
    let partial = std::fs::read_to_string(&output).unwrap();
    let complete = partial.matches('\n').count();
    assert!(
        (complete as u64) < RECORDS,
        "the first run was not interrupted"
    );
    assert!(
        expected.starts_with(&partial[..partial.rfind('\n').map_or(0, |i| i + 1)]),
        "the interrupted output is not a prefix"
    );

    let second = command(&slow, &output, true).run();
    let more_failures = (complete as u64..RECORDS).any(fails);
    second.assert_code(i32::from(more_failures));
    let resumed = std::fs::read_to_string(&output).unwrap();
    crate::util::assert_same_output(&resumed, &expected, "resumed");
    let summary = second.summary().expect("summary");
    assert!(
        summary.contains(&format!("resumed after {complete} records")),
        "{summary}"
    );
    assert_eq!(second.stdout_str(), "", "results go to the file");
}

#[test]
fn resume_after_sigkill() {
    interrupted_then_resumed(libc::SIGKILL);
}

#[test]
fn resume_after_sigint() {
    interrupted_then_resumed(libc::SIGINT);
}

#[test]
fn resume_cuts_a_partial_last_line() {
    let dir = tempdir();
    let expected = reference(dir.path());
    let fast = write_file(dir.path(), "fast.jsonl", input(false));
    let output = dir.path().join("out.jsonl");
    // Cut inside and at a failed line's neighbourhood, and at the very start.
    for keep in [0usize, 1, 36, 37, 250] {
        let prefix: String = expected.split_inclusive('\n').take(keep).collect();
        for garbage in ["{\"n\":", "{\"error\":{\"kind\":\"task_e", "x"] {
            std::fs::write(&output, format!("{prefix}{garbage}")).unwrap();
            // What the reference run (same task, same input) left beside its output.
            std::fs::copy(
                dir.path().join("reference.jsonl.procpool-resume"),
                dir.path().join("out.jsonl.procpool-resume"),
            )
            .unwrap();
            let out = command(&fast, &output, true).run();
            out.assert_code(1);
            let resumed = std::fs::read_to_string(&output).unwrap();
            crate::util::assert_same_output(
                &resumed,
                &expected,
                &format!("resumed after {keep} lines + {garbage:?}"),
            );
            assert!(out.stderr.contains("partial last line"), "{}", out.stderr);
        }
    }
}

#[test]
fn resume_of_a_finished_or_missing_output() {
    let dir = tempdir();
    let expected = reference(dir.path());
    let fast = write_file(dir.path(), "fast.jsonl", input(false));
    // Nothing there yet: a full run.
    let output = dir.path().join("new.jsonl");
    command(&fast, &output, true).run().assert_code(1);
    assert_eq!(std::fs::read_to_string(&output).unwrap(), expected);
    // Already complete: nothing to do, nothing changes.
    let out = command(&fast, &output, true).run();
    // (0 or 1: whether failures of the earlier run count is not specified.)
    assert!(matches!(out.code(), Some(0 | 1)), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&output).unwrap(), expected);
    assert!(
        out.summary()
            .unwrap()
            .starts_with("done: 0 records, 0 failed"),
        "{}",
        out.stderr
    );
}

#[test]
fn resume_with_age_csv() {
    // Resuming works for CSV input too: the header is not a record.
    let dir = tempdir();
    let mut csv = String::from("name,field,born,nobel\n");
    for i in 0..50 {
        csv.push_str(&format!("Person {i},math,{},no\n", 1900 + i));
    }
    let input = write_file(dir.path(), "people.csv", &csv);
    let output = dir.path().join("ages.jsonl");
    let args = |resume: bool| {
        let cmd =
            coordinator(["--input", &input, "--year", "2000", "--workers", "2", "-o"]).arg(&output);
        if resume {
            cmd.arg("--resume")
        } else {
            cmd
        }
    };
    args(false).run().assert_code(0);
    let expected = std::fs::read_to_string(&output).unwrap();
    assert_eq!(expected.lines().count(), 50);
    assert_eq!(
        expected.lines().nth(7).unwrap(),
        "{\"name\":\"Person 7\",\"age\":93}"
    );
    let prefix: String = expected.split_inclusive('\n').take(20).collect();
    std::fs::write(&output, format!("{prefix}{{\"na")).unwrap();
    args(true).run().assert_code(0);
    assert_eq!(std::fs::read_to_string(&output).unwrap(), expected);
}

/// Every line of a job log after its header: `seq pid start duration outcome`.
fn joblog_seqs(path: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.ends_with('\n'), "job log ends in a partial line");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("seq\tpid\tstart\tduration_s\toutcome"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 5, "malformed job-log line {l:?}");
            f[2].parse::<f64>().unwrap();
            f[3].parse::<f64>().unwrap();
            (f[0].parse().unwrap(), f[4].to_owned())
        })
        .collect()
}

#[test]
fn joblog_holds_one_line_per_record_after_sigkills_and_resumes() {
    let dir = tempdir();
    let expected = reference(dir.path());
    let slow = write_file(dir.path(), "slow.jsonl", input(true));
    let output = dir.path().join("out.jsonl");
    let joblog = dir.path().join("jobs.tsv");
    let with_log = |resume: bool| command(&slow, &output, resume).arg("--joblog").arg(&joblog);
    // Killed three times, at different points, each time resumed.
    let mut resume = false;
    for at in [40, 130, 250] {
        let mut run = with_log(resume).spawn();
        run.wait_for("part of the output", |_| lines_in(&output) >= at);
        run.signal(libc::SIGKILL);
        run.wait();
        resume = true;
    }
    with_log(true).run().assert_code(1);
    crate::util::assert_same_output(
        &std::fs::read_to_string(&output).unwrap(),
        &expected,
        "resumed output",
    );
    let log = joblog_seqs(&joblog);
    let seqs: Vec<u64> = log.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (0..RECORDS).collect::<Vec<_>>(),
        "one line per record, in order"
    );
    for (seq, outcome) in log {
        let want = if fails(seq) { "task_error" } else { "ok" };
        assert_eq!(outcome, want, "record {seq}");
    }
}

#[test]
fn resume_of_another_runs_output_is_refused() {
    let dir = tempdir();
    let _ = reference(dir.path());
    let reference_out = dir.path().join("reference.jsonl");
    let before = std::fs::read(&reference_out).unwrap();
    // A 400-line output resumed with a 3-record input.
    let small = write_file(
        dir.path(),
        "small.jsonl",
        fault_input([(1, ""), (2, ""), (3, "")]),
    );
    let out = command(&small, &reference_out, true).run();
    out.assert_code(2);
    let e = out.the_error();
    assert!(
        e.contains("cannot --resume") && e.contains("does not begin with"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&reference_out).unwrap(),
        before,
        "the output changed"
    );
    // Another task, or other parameters.
    let fast = dir.path().join("fast.jsonl");
    let out = coordinator(["--task", "primes", "--input"])
        .arg(&fast)
        .arg("--output")
        .arg(&reference_out)
        .arg("--resume")
        .run();
    out.assert_code(2);
    assert!(
        out.the_error().contains("task `fault`"),
        "{}",
        out.the_error()
    );
    // An output with no sidecar (not written by a run) is not trusted either.
    let foreign = write_file(dir.path(), "foreign.jsonl", "{\"n\":0}\n{\"n\":1}\n");
    let out = command(fast.to_str().unwrap(), Path::new(&foreign), true).run();
    out.assert_code(2);
    assert!(
        out.the_error().contains("procpool-resume"),
        "{}",
        out.the_error()
    );
    // The same run resumes fine (nothing left to do).
    command(fast.to_str().unwrap(), &reference_out, true).run();
    assert_eq!(std::fs::read(&reference_out).unwrap(), before);
}

#[test]
fn age_parameters_are_part_of_the_run() {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "p.csv",
        "name,field,born,nobel\nA,math,1900,no\nB,math,1901,no\n",
    );
    let output = dir.path().join("ages.jsonl");
    let run = |year: &str, resume: bool| {
        let c =
            coordinator(["--input", &input, "--workers", "1", "--year", year, "-o"]).arg(&output);
        if resume { c.arg("--resume") } else { c }.run()
    };
    run("2000", false).assert_code(0);
    let out = run("2001", true);
    out.assert_code(2);
    assert!(
        out.the_error().contains("parameters"),
        "{}",
        out.the_error()
    );
}

#[test]
fn resume_failed_runs_the_failed_records_again_in_place() {
    let dir = tempdir();
    // Records 7, 23 and 41 take 400 ms: over a 300 ms --timeout, they always
    // fail. Three workers, so that the three run side by side.
    let command = |input: &str, output: &Path, resume: bool| command_on(3, input, output, resume);
    let slow = |n: u64| [7, 23, 41].contains(&n);
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..60).map(|n| (n, if slow(n) { "sleep:400" } else { "" }))),
    );
    // The output of an uninterrupted run (the fast input gives the same lines).
    let fast = write_file(
        dir.path(),
        "fast.jsonl",
        fault_input((0..60).map(|n| (n, ""))),
    );
    let clean = dir.path().join("clean.jsonl");
    command(&fast, &clean, false).run().assert_code(0);
    let expected = std::fs::read_to_string(&clean).unwrap();
    assert_eq!(expected.lines().count(), 60);

    let output = dir.path().join("out.jsonl");
    let joblog = dir.path().join("jobs.tsv");
    let first = command(&input, &output, false)
        .args(["--timeout", "300ms", "--joblog"])
        .arg(&joblog)
        .run();
    first.assert_code(1);
    let failed: Vec<u64> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("\"timed_out\""))
        .map(|(i, _)| i as u64)
        .collect();
    assert_eq!(failed, [7, 23, 41]);

    // Plain --resume has nothing to do: the output is complete.
    command(&input, &output, true).run();
    assert_eq!(
        std::fs::read_to_string(&output)
            .unwrap()
            .matches("timed_out")
            .count(),
        3
    );

    let again = command(&input, &output, false)
        .args(["--resume-failed", "--joblog"])
        .arg(&joblog)
        .run();
    again.assert_code(0);
    crate::util::assert_same_output(
        &std::fs::read_to_string(&output).unwrap(),
        &expected,
        "after --resume-failed",
    );
    let summary = again.summary().unwrap();
    assert!(
        summary.starts_with("done: 3 records, 0 failed"),
        "{summary}"
    );
    assert!(summary.contains("3 failed records run again"), "{summary}");
    // The job log too: one line per record, the records run again replaced.
    let log = joblog_seqs(&joblog);
    let seqs: Vec<u64> = log.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (0..60).collect::<Vec<_>>());
    assert!(log.iter().all(|(_, outcome)| outcome == "ok"), "{log:?}");
    assert!(!dir.path().join("out.jsonl.procpool-tmp").exists());
    assert!(!dir.path().join("jobs.tsv.procpool-tmp").exists());

    // Cut after line 30 (keeping the failures at 7 and 23) and back to
    // them: --resume-failed redoes both those and the missing tail.
    let text = std::fs::read_to_string(&output).unwrap();
    let failed_once = std::fs::read_to_string(&clean).unwrap();
    let mut cut: Vec<String> = text.lines().take(30).map(str::to_owned).collect();
    for n in [7, 23] {
        cut[n] = format!("{{\"error\":{{\"kind\":\"timed_out\",\"message\":\"m\"}},\"seq\":{n}}}");
    }
    std::fs::write(&output, cut.join("\n") + "\n").unwrap();
    command(&input, &output, false)
        .arg("--resume-failed")
        .run()
        .assert_code(0);
    crate::util::assert_same_output(
        &std::fs::read_to_string(&output).unwrap(),
        &failed_once,
        "cut, then --resume-failed",
    );
}

// With --skip-bad-input a skipped record leaves no line, so lines and input
// records part ways: resuming must still continue from the right record.

const MIXED: u64 = 300;
/// Over this, a record is cut out by the coordinator itself.
const LIMIT: &str = "400";

/// What is wrong with input record `n`, if anything: not JSON and a wrong
/// type (found by the worker), or over --max-record-bytes (found by the
/// coordinator). Bad records come early, in a run of two, and throughout.
fn bad(n: u64) -> Option<&'static str> {
    match n {
        2 | 3 => Some("not json"),
        9 => Some("type"),
        _ if n % 50 == 20 => Some("long"),
        _ if n % 41 == 40 => Some("not json"),
        _ => None,
    }
}

/// 300 records, bad ones among them; with `slow`, the others sleep 4 ms
/// (about 0.6 s on 2 workers).
fn mixed_input(slow: bool) -> String {
    let mut s = String::new();
    for n in 0..MIXED {
        match bad(n) {
            Some("not json") => s.push_str(&format!("record {n} is not json\n")),
            Some("type") => s.push_str(&format!("{{\"n\":\"{n}\",\"fault\":\"\"}}\n")),
            Some(_) => s.push_str(&format!(
                "{{\"n\":{n},\"fault\":\"\",\"pad\":\"{}\"}}\n",
                "x".repeat(500)
            )),
            None => {
                let fault = if fails(n) {
                    "error"
                } else if slow {
                    "sleep:4"
                } else {
                    ""
                };
                s.push_str(&crate::util::fault_input([(n, fault)]));
            }
        }
    }
    s
}

/// A run that skips bad records. One record per batch, so that lines come
/// out steadily to be interrupted (the batch size a batch of bad records,
/// which cost nothing, would suggest is the rest of the input).
fn skipping(input: &str, output: &Path, joblog: &Path, resume: &str) -> Cmd {
    skipping_on(2, input, output, joblog, resume)
}

fn skipping_on(workers: usize, input: &str, output: &Path, joblog: &Path, resume: &str) -> Cmd {
    let cmd = command_on(workers, input, output, false)
        .args([
            "--skip-bad-input",
            "--max-record-bytes",
            LIMIT,
            "--chunksize",
            "1",
        ])
        .arg("--joblog")
        .arg(joblog);
    if resume.is_empty() {
        cmd
    } else {
        cmd.arg(resume)
    }
}

/// The output an uninterrupted run gives: a line per good record, failed
/// ones as error lines whose `seq` is their input position.
fn mixed_reference(dir: &Path) -> String {
    let path = write_file(dir, "mixed-fast.jsonl", mixed_input(false));
    let output = dir.join("mixed-reference.jsonl");
    let joblog = dir.join("mixed-reference.tsv");
    let out = skipping(&path, &output, &joblog, "").run();
    out.assert_code(1);
    let skipped = (0..MIXED).filter(|&n| bad(n).is_some()).count();
    assert!(
        out.summary()
            .unwrap()
            .contains(&format!("; {skipped} bad input records skipped")),
        "{}",
        out.stderr
    );
    let text = std::fs::read_to_string(&output).unwrap();
    let good: Vec<u64> = (0..MIXED).filter(|&n| bad(n).is_none()).collect();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), good.len());
    for (&n, line) in good.iter().zip(&lines) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if fails(n) {
            assert_eq!(v["seq"], n, "{line}");
            assert_eq!(v["error"]["kind"], "task_error", "{line}");
        } else {
            assert_eq!(v, serde_json::json!({ "n": n }));
        }
    }
    text
}

/// The job log holds exactly the good records, by input position, in order.
fn assert_mixed_joblog(joblog: &Path) {
    let log = joblog_seqs(joblog);
    let seqs: Vec<u64> = log.iter().map(|(s, _)| *s).collect();
    let good: Vec<u64> = (0..MIXED).filter(|&n| bad(n).is_none()).collect();
    assert_eq!(seqs, good, "one line per record, by input position");
    for (seq, outcome) in log {
        let want = if fails(seq) { "task_error" } else { "ok" };
        assert_eq!(outcome, want, "record {seq}");
    }
}

/// Interrupted by `signal` once the output holds each of `at` lines, each
/// time resumed; finally resumed to the end.
fn skipped_then_resumed(signal: i32, at: &[usize]) {
    let dir = tempdir();
    let expected = mixed_reference(dir.path());
    let slow = write_file(dir.path(), "mixed-slow.jsonl", mixed_input(true));
    let output = dir.path().join("out.jsonl");
    let joblog = dir.path().join("jobs.tsv");
    let mut resume = "";
    for &lines in at {
        let mut run = skipping(&slow, &output, &joblog, resume).spawn();
        run.wait_for("part of the output", |_| lines_in(&output) >= lines);
        run.signal(signal);
        let out = run.wait();
        if signal == libc::SIGINT {
            out.assert_code(130)
                .assert_no_workers_left(Duration::from_secs(2));
        }
        let partial = std::fs::read_to_string(&output).unwrap();
        let complete = &partial[..partial.rfind('\n').map_or(0, |i| i + 1)];
        assert!(
            complete.len() < expected.len(),
            "the run was not interrupted at {lines} lines: {} bytes of {}, {} lines; {}",
            complete.len(),
            expected.len(),
            lines_in(&output),
            crate::util::tail(&out.stderr, 12)
        );
        assert!(
            expected.starts_with(complete),
            "the interrupted output is not a prefix"
        );
        resume = "--resume";
    }
    let lines = lines_in(&output);
    let last = skipping(&slow, &output, &joblog, "--resume").run();
    last.assert_code(1);
    // It says where in the input it went on: after the record on the last
    // line, and past the bad records after it that the first run had reached.
    let good: Vec<u64> = (0..MIXED).filter(|&n| bad(n).is_none()).collect();
    let summary = last.summary().unwrap();
    let from: u64 = summary
        .split(&format!(
            "resumed after {lines} records (from input record #"
        ))
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(
        (good[lines - 1] + 1..=good[lines]).contains(&from),
        "{summary}"
    );
    assert!(
        summary.contains(&format!(
            "#{from}: {} before it were skipped)",
            from - lines as u64
        )),
        "{summary}"
    );
    crate::util::assert_same_output(
        &std::fs::read_to_string(&output).unwrap(),
        &expected,
        "resumed output",
    );
    assert_mixed_joblog(&joblog);
    // The list of skipped records is exactly the bad ones.
    let listed = std::fs::read_to_string(dir.path().join("out.jsonl.procpool-skipped")).unwrap();
    let bad_ones: String = (0..MIXED)
        .filter(|&n| bad(n).is_some())
        .map(|n| format!("{n}\n"))
        .collect();
    let mut listed: Vec<u64> = listed.lines().map(|l| l.parse().unwrap()).collect();
    listed.sort_unstable();
    let listed: String = listed.iter().map(|n| format!("{n}\n")).collect();
    assert_eq!(listed, bad_ones);
}

#[test]
fn resume_with_skipped_records_after_sigkills() {
    skipped_then_resumed(libc::SIGKILL, &[5, 60, 130, 200]);
}

#[test]
fn resume_with_skipped_records_after_sigint() {
    skipped_then_resumed(libc::SIGINT, &[70]);
}

#[test]
fn resume_refuses_an_output_whose_skip_list_is_gone() {
    let dir = tempdir();
    let expected = mixed_reference(dir.path());
    let fast = write_file(dir.path(), "mixed-fast.jsonl", mixed_input(false));
    let output = dir.path().join("mixed-reference.jsonl");
    let joblog = dir.path().join("mixed-reference.tsv");
    let skips = dir.path().join("mixed-reference.jsonl.procpool-skipped");
    // Cut after 100 lines: resuming redoes the rest, by input position.
    let prefix: String = expected.split_inclusive('\n').take(100).collect();
    std::fs::write(&output, &prefix).unwrap();
    skipping(&fast, &output, &joblog, "--resume")
        .run()
        .assert_code(1);
    assert_eq!(std::fs::read_to_string(&output).unwrap(), expected);
    // Without the list, the lines cannot be matched to records.
    std::fs::write(&output, &prefix).unwrap();
    std::fs::remove_file(&skips).unwrap();
    let out = skipping(&fast, &output, &joblog, "--resume").run();
    out.assert_code(2);
    assert!(
        out.the_error().contains("procpool-skipped"),
        "{}",
        out.the_error()
    );
    assert_eq!(std::fs::read_to_string(&output).unwrap(), prefix);
    // A fresh run starts the list again (and leaves none without skips).
    skipping(&fast, &output, &joblog, "").run().assert_code(1);
    assert_eq!(std::fs::read_to_string(&output).unwrap(), expected);
    assert!(skips.exists());
    let clean = write_file(dir.path(), "clean.jsonl", fault_input([(0, ""), (1, "")]));
    skipping(&clean, &output, &joblog, "").run().assert_code(0);
    assert!(!skips.exists(), "a stale list of skipped records was kept");
}

#[test]
fn resume_failed_with_skipped_records_after_sigkill() {
    let dir = tempdir();
    // Bad records before and among the slow ones; 7, 23 and 41 take 400 ms
    // and fail over a 300 ms --timeout. Three workers, so that they run side
    // by side.
    let skipping = |input: &str, output: &Path, joblog: &Path, resume: &str| {
        skipping_on(3, input, output, joblog, resume)
    };
    let slow = |n: u64| [7, 23, 41].contains(&n);
    let bad = |n: u64| [1, 2, 15, 30, 42].contains(&n);
    let text = |fast: bool| -> String {
        (0..80)
            .map(|n| match (bad(n), fast, slow(n)) {
                (true, _, _) => format!("bad record {n}\n"),
                (false, true, _) => fault_input([(n, "")]),
                (false, false, true) => fault_input([(n, "sleep:400")]),
                (false, false, false) => fault_input([(n, "sleep:5")]),
            })
            .collect()
    };
    let input = write_file(dir.path(), "in.jsonl", text(false));
    // The output of an uninterrupted run (the fast input gives the same
    // lines, with the same records skipped).
    let fast = write_file(dir.path(), "fast.jsonl", text(true));
    let clean = dir.path().join("clean.jsonl");
    let clean_log = dir.path().join("clean.tsv");
    skipping(&fast, &clean, &clean_log, "").run().assert_code(0);
    let expected = std::fs::read_to_string(&clean).unwrap();
    let good: Vec<u64> = (0..80).filter(|&n| !bad(n)).collect();
    let want: String = good.iter().map(|&n| crate::util::ok_n(n) + "\n").collect();
    assert_eq!(expected, want);

    // Timed out at 7 and 23, then killed before the end.
    let output = dir.path().join("out.jsonl");
    let joblog = dir.path().join("jobs.tsv");
    let timed =
        |resume: &str| skipping(&input, &output, &joblog, resume).args(["--timeout", "300ms"]);
    let mut run = timed("").spawn();
    run.wait_for("the second failure and more", |_| lines_in(&output) >= 30);
    run.signal(libc::SIGKILL);
    run.wait();
    let partial = std::fs::read_to_string(&output).unwrap();
    let failed: Vec<u64> = partial
        .lines()
        .filter(|l| l.contains("\"timed_out\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(failed[..2], [7, 23], "{partial}");

    // --resume-failed runs them again, in place, and the rest of the input.
    let again = skipping(&input, &output, &joblog, "--resume-failed").run();
    again.assert_code(0);
    crate::util::assert_same_output(
        &std::fs::read_to_string(&output).unwrap(),
        &expected,
        "after --resume-failed",
    );
    let summary = again.summary().unwrap();
    assert!(
        summary.contains(&format!("{} failed records run again", failed.len())),
        "{summary}"
    );
    let log = joblog_seqs(&joblog);
    assert_eq!(log.iter().map(|(s, _)| *s).collect::<Vec<_>>(), good);
    assert!(log.iter().all(|(_, outcome)| outcome == "ok"), "{log:?}");
}
