//! The demo, ordering, worker counts, the `tasks` subcommand, and start-up errors.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::util::{coordinator, tempdir, write_file};

/// The built-in table with `--year 2024`, in the table's order.
const DEMO_2024: [(&str, i64); 7] = [
    ("Ada Lovelace", 209),
    ("Emmy Noether", 142),
    ("Marie Curie", 157),
    ("Tu Youyou", 94),
    ("Ada Yonath", 85),
    ("Vera Rubin", 96),
    ("Sally Ride", 73),
];

fn demo_expected() -> String {
    DEMO_2024
        .iter()
        .map(|(name, age)| format!("{{\"name\":\"{name}\",\"age\":{age}}}\n"))
        .collect()
}

#[test]
fn demo_with_four_workers() {
    let out = coordinator(["--workers", "4", "--work-ms", "100", "--year", "2024"]).run();
    out.assert_code(0);
    let rows = out.json();
    assert_eq!(rows.len(), 7, "{}", out.stdout_str());
    for (row, (name, age)) in rows.iter().zip(DEMO_2024) {
        assert_eq!(row, &serde_json::json!({"name": name, "age": age}));
    }
    assert_eq!(out.stdout_str(), demo_expected());
    // Work was spread over the four processes.
    let working = out.working_pids();
    assert!(
        working.len() >= 4,
        "records ran in only {working:?}:\n{}",
        out.stderr
    );
    for pid in &working {
        assert!(
            out.spawned_pids().contains(pid),
            "pid {pid} was not spawned"
        );
    }
    // Every record was announced by the worker that ran it.
    for (name, _) in DEMO_2024 {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.contains(" working record ") && l.ends_with(name)),
            "no `working record {name}` line:\n{}",
            out.stderr
        );
    }
    let summary = out.summary().expect("a summary line");
    assert!(
        summary.starts_with("done: 7 records, 0 failed, with 4 workers"),
        "{summary}"
    );
    out.assert_no_workers_left(Duration::from_secs(2));
}

#[test]
fn any_number_of_workers_gives_the_same_output() {
    let expected = demo_expected();
    // Run them side by side (the records sleep).
    let runs: Vec<_> = (1..=8)
        .map(|workers| {
            let run = coordinator(["--work-ms", "20", "--year", "2024", "--workers"])
                .arg(workers.to_string())
                .spawn();
            (workers, run)
        })
        .collect();
    for (workers, run) in runs {
        let out = run.wait();
        out.assert_code(0);
        assert_eq!(out.stdout_str(), expected, "with {workers} workers");
        assert_eq!(out.spawned_pids().len(), workers, "with {workers} workers");
    }
}

#[test]
fn more_workers_than_records() {
    let out = coordinator(["--workers", "12", "--work-ms", "20", "--year", "2024"]).run();
    out.assert_code(0);
    assert_eq!(out.stdout_str(), demo_expected());
    assert_eq!(out.spawned_pids().len(), 12);
    assert!(out
        .summary()
        .expect("summary")
        .starts_with("done: 7 records, 0 failed, with 12 workers"));
    out.assert_no_workers_left(Duration::from_secs(2));
}

#[test]
fn csv_input_with_age() {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "people.csv",
        "name,field,born,nobel\n\"Curie, Marie\",physics,1867,yes\nAda Lovelace,math,1815,no\n",
    );
    let out = coordinator(["--input", &input, "--year", "2000", "--workers", "2"]).run();
    out.assert_code(0);
    assert_eq!(
        out.stdout_str(),
        "{\"name\":\"Curie, Marie\",\"age\":133}\n{\"name\":\"Ada Lovelace\",\"age\":185}\n"
    );
}

#[test]
fn empty_inputs_give_empty_output() {
    let dir = tempdir();
    for (name, contents) in [
        ("empty.jsonl", ""),
        ("header.csv", "name,field,born,nobel\n"),
    ] {
        let input = write_file(dir.path(), name, contents);
        let out = coordinator(["--input", &input, "--workers", "2"]).run();
        out.assert_code(0);
        assert_eq!(out.stdout_str(), "", "{name}");
        assert!(
            out.summary()
                .expect("summary")
                .starts_with("done: 0 records, 0 failed"),
            "{name}: {}",
            out.stderr
        );
    }
    // To a file too: it exists, empty.
    let input = write_file(dir.path(), "empty2.jsonl", "");
    let output = dir.path().join("out.jsonl");
    let out = coordinator(["--task", "primes", "--input", &input, "--output"])
        .arg(&output)
        .run();
    out.assert_code(0);
    assert_eq!(std::fs::read(&output).unwrap(), b"");
}

#[test]
fn two_hundred_primes_records_in_input_order() {
    let dir = tempdir();
    // Mixed sizes, so that records finish out of order.
    let ns: Vec<u64> = (0..200u64)
        .map(|i| match i % 10 {
            0 => i,                        // tiny, including 0 and 10
            3 => 150_000 + i * 1_000,      // larger
            7 => 400_000 - i * 100,        // larger, shrinking
            _ => (i * 7_919) % 50_000 + 2, // small
        })
        .collect();
    let input: String = ns.iter().map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let path = write_file(dir.path(), "primes.jsonl", input);
    let out = coordinator(["--task", "primes", "--input", &path, "--workers", "3"]).run();
    out.assert_code(0);
    let expected: String = ns
        .iter()
        .map(|&n| {
            format!(
                "{{\"n\":{n},\"primes\":{}}}\n",
                procpool_tasks::count_primes_below(n)
            )
        })
        .collect();
    crate::util::assert_same_output(out.stdout_str(), &expected, "primes");
    // A few known values, independent of the library's sieve.
    let rows = out.json();
    assert_eq!(rows[0], serde_json::json!({"n": 0, "primes": 0}));
    assert_eq!(rows[10], serde_json::json!({"n": 10, "primes": 4}));
    assert_eq!(out.spawned_pids().len(), 3);
}

#[test]
fn same_output_with_locked_and_fixed_chunks() {
    let dir = tempdir();
    let input: String = (0..60u64)
        .map(|i| format!("{{\"n\":{}}}\n", i * 997))
        .collect();
    let path = write_file(dir.path(), "in.jsonl", input);
    let expected: String = (0..60u64)
        .map(|i| {
            let n = i * 997;
            format!(
                "{{\"n\":{n},\"primes\":{}}}\n",
                procpool_tasks::count_primes_below(n)
            )
        })
        .collect();
    for extra in [
        &["--task", "locked"][..],
        &["--task", "primes", "--chunksize", "1", "--in-flight", "1"],
        &["--task", "primes", "--chunksize", "7", "--in-flight", "3"],
    ] {
        let out = coordinator(["--input", &path, "--workers", "2"])
            .args(extra)
            .run();
        out.assert_code(0);
        assert_eq!(out.stdout_str(), expected, "{extra:?}");
    }
}

#[test]
fn stdin_input() {
    let input: String = (1..=20u64)
        .map(|k| format!("{{\"n\": {}}}\n", k * 10))
        .collect();
    let out = coordinator(["--task", "primes", "--input", "-", "--workers", "2"])
        .stdin(input)
        .run();
    out.assert_code(0);
    let counts: Vec<u64> = out
        .json()
        .iter()
        .map(|v| v["primes"].as_u64().unwrap())
        .collect();
    assert_eq!(&counts[..5], &[4, 8, 10, 12, 15]);
    let expected: Vec<u64> = (1..=20u64)
        .map(|k| procpool_tasks::count_primes_below(k * 10))
        .collect();
    assert_eq!(counts, expected);
}

#[test]
fn output_to_a_file() {
    let dir = tempdir();
    let output = dir.path().join("ages.jsonl");
    let out = coordinator(["--work-ms", "0", "--year", "2024", "--workers", "2", "-o"])
        .arg(&output)
        .run();
    out.assert_code(0);
    assert_eq!(out.stdout_str(), "", "results go to the file, not stdout");
    assert_eq!(std::fs::read_to_string(&output).unwrap(), demo_expected());
}

#[test]
fn tasks_subcommand_lists_the_catalogue() {
    let out = coordinator(["tasks"]).run();
    out.assert_code(0);
    let text = out.stdout_str();
    for (task, input, output) in [
        ("age", "{name, field, born, nobel}", "{name, age}"),
        ("primes", "{n}", "{n, primes}"),
        ("locked", "{n}", "{n, primes}"),
        ("fault", "{n, fault}", "{n}"),
    ] {
        let at = text
            .lines()
            .position(|l| l.trim_start().starts_with(&format!("{task} ")))
            .unwrap_or_else(|| panic!("task {task} not listed:\n{text}"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[at + 1].trim(), format!("input:  {input}"), "{text}");
        assert_eq!(lines[at + 2].trim(), format!("output: {output}"), "{text}");
    }
    // With an explicit worker binary too.
    let out = coordinator(["tasks", "--worker-bin"])
        .arg(crate::util::worker_bin())
        .run();
    out.assert_code(0);
    assert!(out.stdout_str().contains("primes"));
    out.assert_no_workers_left(Duration::from_secs(2));
}

#[test]
fn unknown_task_lists_the_known_ones() {
    let dir = tempdir();
    let input = write_file(dir.path(), "in.jsonl", "{\"n\":1}\n");
    let out = coordinator(["--task", "nope", "--workers", "1", "--input", &input]).run();
    out.assert_code(2);
    let msg = out.the_error();
    assert!(msg.contains("nope"), "{msg}");
    for task in ["age", "primes", "locked", "fault"] {
        assert!(msg.contains(task), "{msg}");
    }
    assert_eq!(out.stdout_str(), "");
}

#[test]
fn missing_worker_binary_says_how_to_build_it() {
    for args in [
        &[
            "--workers",
            "2",
            "--work-ms",
            "0",
            "--worker-bin",
            "/nonexistent/worker",
        ][..],
        &["tasks", "--worker-bin", "/nonexistent/worker"],
    ] {
        let out = coordinator(args).run();
        out.assert_code(2);
        let msg = out.the_error();
        assert!(msg.contains("/nonexistent/worker"), "{msg}");
        assert!(msg.contains("cargo build"), "{msg}");
        assert_eq!(out.stdout_str(), "");
    }
}

#[test]
fn non_executable_worker_binary() {
    let dir = tempdir();
    let path = dir.path().join("worker");
    std::fs::copy(crate::util::worker_bin(), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = coordinator(["--workers", "2", "--work-ms", "0", "--worker-bin"])
        .arg(&path)
        .run();
    out.assert_code(2);
    let msg = out.the_error();
    assert!(msg.contains("not executable"), "{msg}");
    assert!(msg.contains(path.to_str().unwrap()), "{msg}");
    // A directory is no worker binary either.
    let out = coordinator(["--workers", "1", "--work-ms", "0", "--worker-bin"])
        .arg(dir.path())
        .run();
    out.assert_code(2);
    assert!(out.error_message().is_some(), "{}", out.stderr);
}

#[test]
fn invalid_settings_exit_2() {
    for args in [
        &["--workers", "0"][..],
        &["--chunksize", "0"],
        &["--in-flight", "0"],
        &["--max-tasks-per-child", "0"],
        &["--timeout", "0s"],
    ] {
        let out = coordinator(["--work-ms", "0"]).args(args).run();
        out.assert_code(2);
        assert!(out.error_message().is_some(), "{args:?}: {}", out.stderr);
        assert_eq!(out.stdout_str(), "", "{args:?}");
        out.assert_no_workers_left(Duration::from_secs(2));
    }
    // Usage errors (clap) exit 2 too.
    for args in [
        &["--resume"][..],
        &["--workers", "many"],
        &["--timeout", "soon"],
    ] {
        let out = coordinator(args).run();
        out.assert_code(2);
    }
    // Other tasks need an input.
    let out = coordinator(["--task", "primes"]).run();
    out.assert_code(2);
    assert!(out.the_error().contains("--input"), "{}", out.stderr);
}

#[test]
fn per_record_log_lines_are_rate_limited() {
    let dir = tempdir();
    let input = crate::util::fault_input((0..3000).map(|n| (n, "")));
    let path = write_file(dir.path(), "in.jsonl", input);
    let started = std::time::Instant::now();
    let out = coordinator(["--task", "fault", "--input", &path, "--workers", "1"]).run();
    let elapsed = started.elapsed().as_secs_f64();
    out.assert_code(0);
    assert_eq!(out.lines().len(), 3000);
    let working = out.stderr.matches(" working record ").count();
    // A burst of 20, then 10 per second of the worker's life (bounded by
    // the whole run's).
    let allowed = 20 + (10.0 * elapsed).ceil() as usize + 1;
    assert!(
        (20..=allowed).contains(&working),
        "{working} per-record lines in {elapsed:.2} s"
    );
    assert!(
        out.stderr.contains("per-record log lines suppressed"),
        "{}",
        crate::util::tail(&out.stderr, 10)
    );
}

#[test]
fn unwritable_output_exits_2() {
    let dir = tempdir();
    let output = dir.path().join("no/such/dir/out.jsonl");
    let out = coordinator(["--work-ms", "0", "--workers", "1", "--output"])
        .arg(&output)
        .run();
    out.assert_code(2);
    let msg = out.the_error();
    assert!(msg.contains(output.to_str().unwrap()), "{msg}");
    out.assert_no_workers_left(Duration::from_secs(2));
}
