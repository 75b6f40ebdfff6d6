//! Operating a run: `--stats` / `--stats-json`, `--joblog` (also across
//! `--resume`), the `tasks` subcommand, `--executor thread`, `scale`, and
//! `--progress` when stderr is not a terminal.
//!
//! No timing is asserted: only counts, pids, formats and outcomes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::util::{coordinator, error_at, fault_input, find_pids, tempdir, write_file, Output};

// ------------------------------------------------------------------ helpers

/// The header of the `--stats` table.
const STATS_HEADER: &str = "     pid     records    failed   busy (s)    util  ended";

/// The header of the `--joblog` file.
const JOBLOG_HEADER: &str = "seq\tpid\tstart\tduration_s\toutcome";

/// One worker row of the `--stats` table.
#[derive(Debug)]
struct TableRow {
    pid: u32,
    records: u64,
    failed: u64,
    ended: String,
}

/// The `--stats` table: its worker rows and its `total` row.
#[derive(Debug)]
struct Table {
    rows: Vec<TableRow>,
    total_records: u64,
    total_failed: u64,
    /// The `N processes` of the total row.
    processes: usize,
}

impl Table {
    fn row(&self, pid: u32) -> &TableRow {
        self.rows
            .iter()
            .find(|r| r.pid == pid)
            .unwrap_or_else(|| panic!("no row for pid {pid} in {:#?}", self.rows))
    }
}

/// Split `n` whitespace-separated columns off the front of `line`; the rest
/// (trimmed) comes last.
fn columns(line: &str, n: usize) -> (Vec<&str>, &str) {
    let mut rest = line;
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        rest = rest.trim_start();
        let end = rest.find(' ').unwrap_or(rest.len());
        cols.push(&rest[..end]);
        rest = &rest[end..];
    }
    (cols, rest.trim())
}

/// Parse the one `--stats` table on stderr.
#[track_caller]
fn stats_table(out: &Output) -> Table {
    let lines: Vec<&str> = out.stderr.lines().collect();
    let headers: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i] == STATS_HEADER)
        .collect();
    assert_eq!(
        headers.len(),
        1,
        "expected one stats header {STATS_HEADER:?}; stderr:\n{}",
        out.stderr
    );
    let mut rows = Vec::new();
    for line in &lines[headers[0] + 1..] {
        if line.starts_with("   total ") {
            let (cols, rest) = columns(line, 4);
            let processes = rest
                .split_once(" processes, ")
                .and_then(|(n, _)| n.parse().ok())
                .unwrap_or_else(|| panic!("bad total row {line:?}"));
            return Table {
                rows,
                total_records: cols[1].parse().expect("total records"),
                total_failed: cols[2].parse().expect("total failed"),
                processes,
            };
        }
        let (cols, ended) = columns(line, 5);
        let parse = |i: usize| -> u64 {
            cols[i]
                .parse()
                .unwrap_or_else(|e| panic!("column {i} of stats row {line:?}: {e}"))
        };
        let busy: f64 = cols[3].parse().expect("busy seconds");
        assert!(busy >= 0.0, "{line}");
        let util: f64 = cols[4]
            .strip_suffix('%')
            .and_then(|u| u.parse().ok())
            .unwrap_or_else(|| panic!("utilisation of {line:?}"));
        assert!((0.0..=100.0).contains(&util), "{line}");
        assert!(!ended.is_empty(), "no `ended` in {line:?}");
        rows.push(TableRow {
            pid: u32::try_from(parse(0)).expect("pid"),
            records: parse(1),
            failed: parse(2),
            ended: ended.to_owned(),
        });
    }
    panic!("no `total` row after the stats table:\n{}", out.stderr)
}

/// Read `--stats-json` and check its shape and internal sums.
#[track_caller]
fn stats_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the --stats-json file");
    let v: Value = serde_json::from_str(&text).expect("--stats-json is JSON");
    let workers = v["workers"].as_array().expect("workers array");
    let mut records = 0;
    let mut failed = 0;
    for w in workers {
        for key in ["pid", "records", "failed"] {
            assert!(w[key].is_u64(), "{key} of {w}");
        }
        for key in ["busy_s", "lifetime_s", "utilisation"] {
            let x = w[key].as_f64().unwrap_or_else(|| panic!("{key} of {w}"));
            assert!(x >= 0.0, "{key} of {w}");
        }
        assert!(w["utilisation"].as_f64().unwrap() <= 1.0, "{w}");
        assert!(w["ended"].is_string(), "{w}");
        records += w["records"].as_u64().unwrap();
        failed += w["failed"].as_u64().unwrap();
    }
    assert_eq!(v["total_records"].as_u64(), Some(records), "{text}");
    assert_eq!(v["total_failed"].as_u64(), Some(failed), "{text}");
    assert!(v["not_run"].is_u64(), "{text}");
    assert!(v["wall_s"].as_f64().is_some_and(|w| w >= 0.0), "{text}");
    assert!(v["executor"].is_string(), "{text}");
    v
}

/// Assert that the table and the JSON describe the same workers.
#[track_caller]
fn assert_table_matches_json(table: &Table, json: &Value) {
    let workers = json["workers"].as_array().unwrap();
    assert_eq!(table.rows.len(), workers.len(), "{table:#?}\n{json}");
    assert_eq!(table.processes, workers.len(), "{table:#?}");
    for (row, w) in table.rows.iter().zip(workers) {
        assert_eq!(
            u64::from(row.pid),
            w["pid"].as_u64().unwrap(),
            "{row:?} {w}"
        );
        assert_eq!(row.records, w["records"].as_u64().unwrap(), "{row:?} {w}");
        assert_eq!(row.failed, w["failed"].as_u64().unwrap(), "{row:?} {w}");
        assert_eq!(row.ended, w["ended"].as_str().unwrap(), "{row:?} {w}");
    }
    assert_eq!(
        table.total_records,
        table.rows.iter().map(|r| r.records).sum::<u64>()
    );
    assert_eq!(
        table.total_failed,
        table.rows.iter().map(|r| r.failed).sum::<u64>()
    );
    assert_eq!(Some(table.total_records), json["total_records"].as_u64());
    assert_eq!(Some(table.total_failed), json["total_failed"].as_u64());
}

/// One line of the job log.
#[derive(Debug)]
struct Job {
    seq: u64,
    pid: u32,
    start: f64,
    duration: f64,
    outcome: String,
}

/// Read a job log: exactly one header, first; five columns per line;
/// `start` as Unix seconds with six decimals; `duration_s` >= 0.
#[track_caller]
fn read_joblog(path: &Path) -> Vec<Job> {
    let text = std::fs::read_to_string(path).expect("the --joblog file");
    assert!(text.ends_with('\n'), "job log ends mid-line: {text:?}");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(JOBLOG_HEADER), "job log header");
    lines
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), 5, "job log line {line:?}");
            let (secs, micros) = cols[2]
                .split_once('.')
                .unwrap_or_else(|| panic!("start of {line:?}"));
            assert!(
                !secs.is_empty()
                    && secs.bytes().all(|b| b.is_ascii_digit())
                    && micros.len() == 6
                    && micros.bytes().all(|b| b.is_ascii_digit()),
                "start is not Unix seconds with 6 decimals: {line:?}"
            );
            let duration: f64 = cols[3]
                .parse()
                .unwrap_or_else(|e| panic!("duration of {line:?}: {e}"));
            assert!(duration >= 0.0, "{line:?}");
            Job {
                seq: cols[0]
                    .parse()
                    .unwrap_or_else(|e| panic!("seq of {line:?}: {e}")),
                pid: cols[1]
                    .parse()
                    .unwrap_or_else(|e| panic!("pid of {line:?}: {e}")),
                start: cols[2].parse().expect("start"),
                duration,
                outcome: cols[4].to_owned(),
            }
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// Whether a job's start is a real recent time: within the last hour.
fn recent(start: f64) -> bool {
    let now = unix_now();
    start > now - 3600.0 && start < now + 60.0
}

/// Assert the job log has exactly one line per output row, in order, each run
/// by one of `pids`, with the row's outcome and a recent start time.
#[track_caller]
fn check_joblog(jobs: &[Job], rows: &[Value], pids: &BTreeSet<u32>) {
    assert_eq!(jobs.len(), rows.len(), "one job log line per record");
    for (i, (job, row)) in jobs.iter().zip(rows).enumerate() {
        assert_eq!(job.seq, i as u64, "job log out of order: {job:?}");
        assert!(
            pids.contains(&job.pid),
            "job {job:?} ran in pid {}, not one of {pids:?}",
            job.pid
        );
        let outcome = row["error"]["kind"].as_str().unwrap_or("ok");
        assert_eq!(job.outcome, outcome, "job {job:?} vs output line {row}");
        assert!(recent(job.start), "start of {job:?} is not recent");
    }
}

/// Per-pid `(records, failed)` counted from the job log.
fn per_pid(jobs: &[Job]) -> BTreeMap<u32, (u64, u64)> {
    let mut m = BTreeMap::new();
    for j in jobs {
        let e = m.entry(j.pid).or_insert((0, 0));
        e.0 += 1;
        e.1 += u64::from(j.outcome != "ok");
    }
    m
}

fn spawned_set(out: &Output) -> BTreeSet<u32> {
    out.spawned_pids().into_iter().collect()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// Which `fault` the accounting input gives record `n`.
fn accounting_fault(n: u64) -> &'static str {
    match n {
        17 | 1234 => "error",
        99 | 2999 => "panic",
        _ => "",
    }
}

const ACCOUNTING_RECORDS: u64 = 3000;

/// 3000 `fault` records (two errors, two panics) on 3 workers with
/// `--stats --stats-json --joblog` and `extra` arguments: check that every
/// record is accounted for, in the output, the table, the JSON and the job log.
fn accounted_run(extra: &[&str]) -> (Output, Table, Value) {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..ACCOUNTING_RECORDS).map(|n| (n, accounting_fault(n)))),
    );
    let stats = dir.path().join("stats.json");
    let joblog = dir.path().join("jobs.tsv");
    let out = coordinator(["--task", "fault", "--input", &input, "--workers", "3"])
        .args(["--stats", "--stats-json", path_str(&stats)])
        .args(["--joblog", path_str(&joblog)])
        .args(extra)
        .run();
    out.assert_code(1);
    out.assert_no_panic();

    // The output: one line per record, the four failures in place.
    let rows = out.json();
    assert_eq!(rows.len() as u64, ACCOUNTING_RECORDS);
    let mut error_lines = 0;
    for (n, row) in rows.iter().enumerate() {
        match accounting_fault(n as u64) {
            "" => assert_eq!(row, &serde_json::json!({ "n": n })),
            fault => {
                let (kind, _, seq) = error_at(&rows, n);
                assert_eq!(seq, n as u64);
                let expected = if fault == "error" {
                    "task_error"
                } else {
                    "panicked"
                };
                assert_eq!(kind, expected, "{row}");
                error_lines += 1;
            }
        }
    }
    assert_eq!(error_lines, 4);

    // The JSON: every record counted once, failures as in the output.
    let json = stats_json(&stats);
    assert_eq!(json["total_records"].as_u64(), Some(ACCOUNTING_RECORDS));
    assert_eq!(json["total_failed"].as_u64(), Some(error_lines));
    assert_eq!(json["not_run"].as_u64(), Some(0));
    assert_eq!(json["executor"], "process");

    // The table says the same, and its pids are the workers of the log lines.
    let table = stats_table(&out);
    assert_table_matches_json(&table, &json);
    let spawned = spawned_set(&out);
    let in_stats: BTreeSet<u32> = table.rows.iter().map(|r| r.pid).collect();
    assert_eq!(
        in_stats, spawned,
        "stats pids vs `spawned worker pid=` lines"
    );
    assert_eq!(table.rows.len(), spawned.len(), "a pid listed twice");

    // The job log: one line per record, by those workers; its per-pid
    // counts are the table's.
    let jobs = read_joblog(&joblog);
    check_joblog(&jobs, &rows, &spawned);
    let counted = per_pid(&jobs);
    for row in &table.rows {
        let (records, failed) = counted.get(&row.pid).copied().unwrap_or((0, 0));
        assert_eq!(
            (row.records, row.failed),
            (records, failed),
            "stats row {row:?} vs the job log"
        );
    }
    out.assert_no_workers_left(Duration::from_secs(2));
    (out, table, json)
}

// -------------------------------------------------------------------- stats

#[test]
fn stats_and_joblog_account_for_every_record() {
    let (_, table, _) = accounted_run(&[]);
    assert_eq!(table.rows.len(), 3, "no worker was replaced: {table:#?}");
    for row in &table.rows {
        assert_eq!(row.ended, "stopped", "{row:?}");
    }
}

#[test]
fn stats_show_recycled_workers() {
    let (_, table, _) = accounted_run(&["--max-tasks-per-child", "200"]);
    // No worker ran more than its quota, so 3000 records needed 15 or more.
    assert!(
        table.rows.len() >= 15,
        "{} processes for 3000 records at 200 each: {table:#?}",
        table.rows.len()
    );
    let mut recycled = 0;
    for row in &table.rows {
        assert!(row.records <= 200, "{row:?}");
        match row.ended.as_str() {
            "recycled" => {
                assert_eq!(row.records, 200, "{row:?}");
                recycled += 1;
            }
            "stopped" => {}
            other => panic!("unexpected end {other:?} in {row:?}"),
        }
    }
    assert!(recycled >= 12, "only {recycled} recycled rows: {table:#?}");
}

#[test]
fn stats_show_a_worker_crashed_by_sigabrt() {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..300).map(|n| (n, if n == 100 { "abort" } else { "" }))),
    );
    let stats = dir.path().join("stats.json");
    let joblog = dir.path().join("jobs.tsv");
    let out = coordinator(["--task", "fault", "--input", &input, "--workers", "3"])
        .args([
            "--retries",
            "0",
            "--stats",
            "--stats-json",
            path_str(&stats),
        ])
        .args(["--joblog", path_str(&joblog)])
        .run();
    out.assert_code(1);
    let rows = out.json();
    assert_eq!(rows.len(), 300);
    let (kind, message, seq) = error_at(&rows, 100);
    assert_eq!((kind.as_str(), seq), ("worker_died", 100), "{message}");
    for (n, row) in rows.iter().enumerate().filter(|(n, _)| *n != 100) {
        assert_eq!(row, &serde_json::json!({ "n": n }));
    }

    let json = stats_json(&stats);
    let table = stats_table(&out);
    assert_table_matches_json(&table, &json);
    // The record that killed its worker counts as run, and failed, by it.
    assert_eq!(json["total_records"].as_u64(), Some(300), "{json}");
    assert_eq!(json["not_run"].as_u64(), Some(0), "{json}");
    assert_eq!(json["total_failed"].as_u64(), Some(1), "{json}");
    let spawned = spawned_set(&out);
    for row in &table.rows {
        assert!(spawned.contains(&row.pid), "{row:?} was not spawned");
    }
    // The last worker it killed (named in the message) ended as crashed.
    let killer = find_pids(&message, "last: pid ", ",");
    assert_eq!(killer.len(), 1, "{message}");
    assert_eq!(
        table.row(killer[0]).ended,
        "crashed with signal 6 (SIGABRT)",
        "{table:#?}"
    );
    // Other rows end either way.
    for row in &table.rows {
        assert!(
            row.ended == "stopped" || row.ended == "crashed with signal 6 (SIGABRT)",
            "{row:?}"
        );
    }
    check_joblog(&read_joblog(&joblog), &rows, &spawned);
    out.assert_no_workers_left(Duration::from_secs(2));
}

#[test]
fn stats_show_a_timed_out_worker() {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..30).map(|n| (n, if n == 10 { "hang" } else { "" }))),
    );
    let stats = dir.path().join("stats.json");
    let joblog = dir.path().join("jobs.tsv");
    let out = coordinator(["--task", "fault", "--input", &input, "--workers", "2"])
        .args(["--timeout", "300ms", "--stats", "--stats-json"])
        .arg(&stats)
        .args(["--joblog", path_str(&joblog)])
        .run();
    out.assert_code(1);
    let rows = out.json();
    assert_eq!(rows.len(), 30);
    let (kind, message, _) = error_at(&rows, 10);
    assert_eq!(kind, "timed_out", "{message}");

    let json = stats_json(&stats);
    assert_eq!(json["total_records"].as_u64(), Some(30), "{json}");
    assert_eq!(json["total_failed"].as_u64(), Some(1), "{json}");
    let table = stats_table(&out);
    assert_table_matches_json(&table, &json);
    let killed = find_pids(&message, "worker pid ", " killed");
    assert_eq!(killed.len(), 1, "{message}");
    let row = table.row(killed[0]);
    assert_eq!(row.ended, "timed out", "{table:#?}");
    assert!(row.failed >= 1, "{row:?}");
    assert_eq!(
        table.rows.iter().filter(|r| r.ended == "timed out").count(),
        1,
        "{table:#?}"
    );
    let spawned = spawned_set(&out);
    check_joblog(&read_joblog(&joblog), &rows, &spawned);
    out.assert_no_workers_left(Duration::from_secs(2));
}

#[test]
fn stats_show_protocol_errors() {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..60).map(|n| (n, ""))),
    );
    let stats = dir.path().join("stats.json");
    let out = coordinator(["--task", "fault", "--input", &input, "--workers", "2"])
        .args(["--stats", "--stats-json", path_str(&stats)])
        .env("PROCPOOL_WORKER_FAULT", "garbage-after:4")
        .run();
    assert!(matches!(out.code(), Some(0 | 1)), "{}", out.stderr);
    assert_eq!(out.json().len(), 60);
    let json = stats_json(&stats);
    let table = stats_table(&out);
    assert_table_matches_json(&table, &json);
    assert!(
        table
            .rows
            .iter()
            .any(|r| r.ended.starts_with("protocol error: ")),
        "{table:#?}"
    );
    let spawned = spawned_set(&out);
    for row in &table.rows {
        assert!(spawned.contains(&row.pid), "{row:?} was not spawned");
    }
    assert_eq!(
        json["total_records"].as_u64().unwrap() + json["not_run"].as_u64().unwrap(),
        60,
        "{json}"
    );
}

#[test]
fn stats_show_a_worker_killed_at_shutdown() {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..10).map(|n| (n, if n == 2 { "hang" } else { "" }))),
    );
    let stats = dir.path().join("stats.json");
    let joblog = dir.path().join("jobs.tsv");
    let mut run = coordinator(["--task", "fault", "--input", &input, "--workers", "1"])
        .args([
            "--grace",
            "300ms",
            "--stats",
            "--stats-json",
            path_str(&stats),
        ])
        .args(["--joblog", path_str(&joblog)])
        .spawn();
    run.wait_for("the hanging record to start", |r| {
        r.stderr_now().contains("working record n=2 fault=hang")
    });
    run.signal(libc::SIGTERM);
    let out = run.wait();
    out.assert_code(143);
    // What was written is a prefix of ok lines, before the hanging record.
    let rows = out.json();
    assert!(rows.len() <= 2, "{}", out.stdout_str());
    for (n, row) in rows.iter().enumerate() {
        assert_eq!(row, &serde_json::json!({ "n": n }));
    }
    let json = stats_json(&stats);
    let table = stats_table(&out);
    assert_table_matches_json(&table, &json);
    assert_eq!(table.rows.len(), 1, "{table:#?}");
    assert_eq!(table.rows[0].ended, "killed at shutdown");
    check_joblog(&read_joblog(&joblog), &rows, &spawned_set(&out));
    out.assert_no_workers_left(Duration::from_secs(2));
}

// ------------------------------------------------------------------- joblog

#[test]
fn joblog_start_of_timed_out_and_dead_records() {
    let dir = tempdir();
    let fault = |n| match n {
        3 => "abort",
        7 => "hang",
        _ => "",
    };
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..12).map(|n| (n, fault(n)))),
    );
    let joblog = dir.path().join("jobs.tsv");
    let out = coordinator(["--task", "fault", "--input", &input, "--workers", "2"])
        .args(["--timeout", "300ms", "--retries", "0", "--joblog"])
        .arg(&joblog)
        .run();
    out.assert_code(1);
    let jobs = read_joblog(&joblog);
    assert_eq!(jobs.len(), 12);
    assert_eq!(jobs[3].outcome, "worker_died");
    assert_eq!(jobs[7].outcome, "timed_out");
    for job in [&jobs[3], &jobs[7]] {
        // The record did start (its worker was running it): when?
        assert!(recent(job.start), "start of {job:?} is not a real time");
    }
    // It ran until the timeout killed it.
    assert!(jobs[7].duration > 0.0, "{:?}", jobs[7]);
}

#[test]
fn joblog_is_appended_on_resume() {
    const RECORDS: u64 = 400;
    let fault = |n: u64| if n % 37 == 36 { "error" } else { "sleep:2" };
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..RECORDS).map(|n| (n, fault(n)))),
    );
    let output = dir.path().join("out.jsonl");
    let joblog = dir.path().join("jobs.tsv");
    let command = |resume: bool| {
        let cmd = coordinator(["--task", "fault", "--input", &input, "--workers", "2"]).args([
            "--output",
            path_str(&output),
            "--joblog",
            path_str(&joblog),
        ]);
        if resume {
            cmd.arg("--resume")
        } else {
            cmd
        }
    };
    let lines_in = |p: &Path| {
        std::fs::read(p)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0)
    };

    let mut run = command(false).spawn();
    run.wait_for("part of the output", |_| lines_in(&output) >= 60);
    run.signal(libc::SIGINT);
    let first = run.wait();
    first.assert_code(130);
    let done = lines_in(&output);
    assert!((done as u64) < RECORDS, "the first run was not interrupted");
    let jobs = read_joblog(&joblog);
    assert_eq!(jobs.len(), done, "job log of the interrupted run");

    let second = command(true).run();
    let more_failures = (done as u64..RECORDS).any(|n| fault(n) == "error");
    second.assert_code(i32::from(more_failures));
    let text = std::fs::read_to_string(&output).unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len() as u64, RECORDS);
    let log = std::fs::read_to_string(&joblog).unwrap();
    assert_eq!(
        log.matches(JOBLOG_HEADER).count(),
        1,
        "one header after a resume"
    );
    let pids: BTreeSet<u32> = spawned_set(&first)
        .union(&spawned_set(&second))
        .copied()
        .collect();
    let jobs = read_joblog(&joblog);
    check_joblog(&jobs, &rows, &pids);
    // The first run's lines come from its workers, the rest from the second's.
    let second_pids = spawned_set(&second);
    for job in &jobs[done..] {
        assert!(second_pids.contains(&job.pid), "{job:?}");
    }
}

// -------------------------------------------------------------------- tasks

#[test]
fn tasks_lists_the_registry() {
    let out = coordinator(["tasks"]).run();
    out.assert_code(0);
    let text = out.stdout_str();
    let infos = procpool_worker_bin::registry().infos();
    assert!(!infos.is_empty());
    for info in &infos {
        let block = format!(
            "\n  {}  {}\n      input:  {{{}}}\n      output: {{{}}}\n",
            info.name,
            info.description,
            info.input_fields.join(", "),
            info.output_fields.join(", ")
        );
        assert!(
            text.contains(&block),
            "task {} not listed as\n{block}\nin:\n{text}",
            info.name
        );
    }
    // Nothing else is listed.
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("      input:"))
            .count(),
        infos.len(),
        "{text}"
    );
    out.assert_no_workers_left(Duration::from_secs(2));
}

// ---------------------------------------------------------- thread executor

/// Run the same arguments on both executors; both must exit with `code`
/// and give the same stdout. Returns (process, thread) runs.
fn on_both_executors(args: &[&str], code: i32) -> (Output, Output) {
    let process = coordinator(args).args(["--executor", "process"]).run();
    process.assert_code(code);
    let thread = coordinator(args).args(["--executor", "thread"]).run();
    thread.assert_code(code);
    crate::util::assert_same_output(
        thread.stdout_str(),
        process.stdout_str(),
        &format!("thread vs process executor for {args:?}"),
    );
    // One worker process, running the threads.
    assert_eq!(
        thread.spawned_pids().len(),
        1,
        "the thread executor is one worker process:\n{}",
        thread.stderr
    );
    assert!(
        thread.stderr.contains(" threads in one worker process"),
        "{}",
        thread.stderr
    );
    (process, thread)
}

#[test]
fn thread_executor_matches_processes_for_primes_and_age() {
    let dir = tempdir();
    let ns: Vec<u64> = (0..300u64).map(|i| (i * 7919) % 50_000).collect();
    let primes: String = ns.iter().map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let primes = write_file(dir.path(), "primes.jsonl", primes);
    let (_, thread) = on_both_executors(
        &["--task", "primes", "--input", &primes, "--workers", "2"],
        0,
    );
    for (row, n) in thread.json().iter().zip(&ns) {
        let expected = procpool_tasks::count_primes_below(*n);
        assert_eq!(row, &serde_json::json!({ "n": n, "primes": expected }));
    }
    assert_eq!(thread.json().len(), ns.len());

    let mut csv = String::from("name,field,born,nobel\n");
    for i in 0..40 {
        csv.push_str(&format!(
            "Person {i},math,{},{}\n",
            1900 + i,
            ["yes", "no"][i % 2]
        ));
    }
    let people = write_file(dir.path(), "people.csv", &csv);
    let (_, thread) = on_both_executors(
        &[
            "--input",
            &people,
            "--year",
            "2000",
            "--work-ms",
            "0",
            "--workers",
            "2",
        ],
        0,
    );
    let rows = thread.json();
    assert_eq!(rows.len(), 40);
    assert_eq!(rows[7], serde_json::json!({"name": "Person 7", "age": 93}));
}

#[test]
fn thread_executor_fails_records_one_by_one() {
    let dir = tempdir();
    let fault = |n: u64| match n {
        5 => "error",
        17 | 30 => "panic",
        _ => "",
    };
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..40).map(|n| (n, fault(n)))),
    );
    let joblog = dir.path().join("jobs.tsv");
    let (_, thread) = on_both_executors(
        &[
            "--task",
            "fault",
            "--input",
            &input,
            "--workers",
            "2",
            "--joblog",
            path_str(&joblog),
        ],
        1,
    );
    let rows = thread.json();
    assert_eq!(rows.len(), 40);
    for (n, row) in rows.iter().enumerate() {
        match fault(n as u64) {
            "" => assert_eq!(row, &serde_json::json!({ "n": n })),
            f => {
                let (kind, _, seq) = error_at(&rows, n);
                assert_eq!(seq, n as u64);
                assert_eq!(
                    kind,
                    if f == "error" {
                        "task_error"
                    } else {
                        "panicked"
                    }
                );
            }
        }
    }
    let summary = thread.summary().expect("a summary line");
    assert!(
        summary.starts_with("done: 40 records, 3 failed, with 2 threads"),
        "{summary}"
    );
    // (Both runs wrote the job log; the thread run, last, replaced it.)
    // On threads the job log names the one worker process.
    let jobs = read_joblog(&joblog);
    let pids: BTreeSet<u32> = thread.spawned_pids().into_iter().collect();
    check_joblog(&jobs, &rows, &pids);
}

#[test]
fn thread_executor_refuses_process_only_options() {
    let dir = tempdir();
    let input = write_file(dir.path(), "in.jsonl", fault_input((0..5).map(|n| (n, ""))));
    for option in [["--timeout", "1s"], ["--max-tasks-per-child", "3"]] {
        let out = coordinator(["--task", "fault", "--input", &input, "--executor", "thread"])
            .args(option)
            .run();
        out.assert_code(2);
        let msg = out.the_error();
        assert!(msg.contains(option[0]), "{msg}");
        assert_eq!(out.stdout_str(), "", "{option:?}");
        assert!(out.spawned_pids().is_empty());
    }
}

#[test]
fn locked_runs_on_threads() {
    let dir = tempdir();
    let ns: Vec<u64> = (1..=50u64).map(|i| i * 1000).collect();
    let input: String = ns.iter().map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let input = write_file(dir.path(), "locked.jsonl", input);
    let (_, thread) = on_both_executors(
        &["--task", "locked", "--input", &input, "--workers", "2"],
        0,
    );
    let rows = thread.json();
    assert_eq!(rows.len(), ns.len());
    for (row, n) in rows.iter().zip(&ns) {
        let expected = procpool_tasks::count_primes_below(*n);
        assert_eq!(row, &serde_json::json!({ "n": n, "primes": expected }));
    }
}

// -------------------------------------------------------------------- scale

const SCALE_HEADER: &str = "| executor | workers | wall (s) | records/s | speed-up | efficiency |";

#[test]
fn scale_prints_a_table_and_draws_a_chart() {
    let dir = tempdir();
    let chart = dir.path().join("F.svg");
    let out = coordinator([
        "scale",
        "--workers",
        "1,2",
        "--executor",
        "process,thread",
        "--task",
        "primes",
        "--records",
        "8",
        "--n",
        "200000",
        "--repeat",
        "1",
        "--chart",
    ])
    .arg(&chart)
    .run();
    out.assert_code(0);
    let text = out.stdout_str();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(lines.first(), Some(&SCALE_HEADER), "{text}");
    assert!(
        lines.get(1).is_some_and(|l| l.starts_with("|---")),
        "{text}"
    );
    let rows: Vec<Vec<&str>> = lines[2..]
        .iter()
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 6, "{l}");
            cells
        })
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    let points: BTreeSet<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(
        points,
        BTreeSet::from([
            ("process", "1"),
            ("process", "2"),
            ("thread", "1"),
            ("thread", "2")
        ]),
        "{text}"
    );
    for row in &rows {
        for (i, what) in [(2, "wall"), (3, "records/s")] {
            assert!(row[i].parse::<f64>().is_ok(), "{what} in {row:?}");
        }
        let speedup: f64 = row[4]
            .strip_suffix('x')
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("speed-up in {row:?}"));
        assert!(speedup > 0.0, "{row:?}");
        assert!(
            row[5]
                .strip_suffix('%')
                .is_some_and(|e| e.parse::<f64>().is_ok()),
            "efficiency in {row:?}"
        );
        if row[1] == "1" {
            assert_eq!(row[4], "1.00x", "{row:?}");
            assert_eq!(row[5], "100%", "{row:?}");
        }
    }
    let svg = std::fs::read_to_string(&chart).expect("the chart was written");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("process") && svg.contains("thread"));
    out.assert_no_workers_left(Duration::from_secs(2));
}

#[test]
fn scale_refuses_zero_workers() {
    let dir = tempdir();
    let chart = dir.path().join("F.svg");
    for workers in ["0", "1,0"] {
        let out = coordinator(["scale", "--workers", workers, "--repeat", "1", "--chart"])
            .arg(&chart)
            .run();
        out.assert_code(2);
        let msg = out.the_error();
        assert!(msg.contains("--workers"), "{msg}");
        assert_eq!(out.stdout_str(), "");
        assert!(out.spawned_pids().is_empty());
        assert!(!chart.exists(), "a chart was drawn for --workers {workers}");
    }
}

// ----------------------------------------------------------------- progress

/// The `progress: N records, R records/s` lines of the coordinator.
fn progress_lines(out: &Output) -> Vec<(u64, u64)> {
    let marker = format!("coordinator pid={}: progress: ", out.pid);
    out.stderr
        .lines()
        .filter_map(|l| {
            let at = l.find(&marker)? + marker.len();
            let rest = &l[at..];
            let parsed = rest.strip_suffix(" records/s").and_then(|r| {
                let (n, rate) = r.split_once(" records, ")?;
                Some((n.parse().ok()?, rate.parse().ok()?))
            });
            Some(parsed.unwrap_or_else(|| panic!("bad progress line {l:?}")))
        })
        .collect()
}

#[test]
fn progress_lines_when_stderr_is_not_a_terminal() {
    // 25 records of 20 ms on one worker: about 0.5 s each run, five times the
    // 100 ms progress interval. Run side by side (they sleep), with
    // --progress, with --no-progress, and by default.
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..25).map(|n| (n, "sleep:20"))),
    );
    let base = coordinator([
        "--task",
        "fault",
        "--input",
        &input,
        "--workers",
        "1",
        "--progress-interval",
        "100ms",
    ]);
    let runs: Vec<(&str, _)> = [
        ("--progress", Some("--progress")),
        ("--no-progress", Some("--no-progress")),
        ("default", None),
    ]
    .into_iter()
    .map(|(name, flag)| {
        let cmd = match flag {
            Some(f) => base.clone().arg(f),
            None => base.clone(),
        };
        (name, cmd.spawn())
    })
    .collect();
    for (name, run) in runs {
        let out = run.wait();
        out.assert_code(0);
        assert_eq!(out.json().len(), 25, "{name}");
        let progress = progress_lines(&out);
        if name == "--progress" {
            assert!(
                !progress.is_empty(),
                "no progress line in a ~0.5 s run with --progress:\n{}",
                out.stderr
            );
            let mut last = 0;
            for &(n, _) in &progress {
                assert!(n >= last && n <= 25, "{progress:?}");
                last = n;
            }
        } else {
            assert!(
                progress.is_empty(),
                "{name}: progress lines without --progress: {progress:?}"
            );
            assert!(!out.stderr.contains("progress:"), "{name}:\n{}", out.stderr);
        }
    }
}
