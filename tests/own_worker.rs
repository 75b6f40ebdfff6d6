//! A worker binary of a user's own (the `word-stats` example crate, a task
//! the catalogue does not have) run from the command line: JSON lines and
//! CSV, both executors, parameters, errors in place; results compared with
//! the task run directly in this process.

use std::collections::BTreeSet;

use procpool_protocol::Task;
use word_stats::{Post, WordStats};

use crate::util::{coordinator, tempdir, word_stats_bin, write_file, Cmd};

const TEXTS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog",
    "Rust's ownership: memory safety, without a garbage collector!",
    "   ",
    "Ünïcödé wörds cöunt as wörds, \"quoted\" ones too",
    "one\ntwo lines, in one record",
    "a, b, c",
];

fn posts() -> Vec<Post> {
    (0..60)
        .map(|i| Post {
            id: 1000 + i as u64,
            text: TEXTS[i % TEXTS.len()].to_string(),
        })
        .collect()
}

/// The expected output: the task run here, errors in place as the
/// coordinator writes them.
fn reference(task: &WordStats, posts: &[Post]) -> Vec<serde_json::Value> {
    posts
        .iter()
        .enumerate()
        .map(|(seq, p)| match task.run(p.clone()) {
            Ok(out) => serde_json::to_value(out).unwrap(),
            Err(e) => serde_json::json!({
                "seq": seq,
                "error": {"kind": "task_error", "message": format!("task error: {e}")},
            }),
        })
        .collect()
}

fn jsonl(posts: &[Post]) -> String {
    posts
        .iter()
        .map(|p| serde_json::to_string(p).unwrap() + "\n")
        .collect()
}

/// CSV with a header, every text quoted (RFC 4180: `""` for a quote).
fn csv(posts: &[Post]) -> String {
    let mut text = String::from("id,text\r\n");
    for p in posts {
        text.push_str(&format!("{},\"{}\"\r\n", p.id, p.text.replace('"', "\"\"")));
    }
    text
}

fn word_stats(args: &[&str]) -> Cmd {
    coordinator(["--task", "word-stats", "--worker-bin"])
        .arg(word_stats_bin())
        .args(args)
}

#[test]
fn a_users_task_runs_on_json_lines_and_csv_on_both_executors() {
    let dir = tempdir();
    let posts = posts();
    let json = write_file(dir.path(), "posts.jsonl", jsonl(&posts));
    let csv = write_file(dir.path(), "posts.csv", csv(&posts));
    let task = WordStats {
        min_len: 4,
        stop: Vec::new(),
    };
    let expected = reference(&task, &posts);
    let failed = expected.iter().filter(|v| v.get("error").is_some()).count();
    assert!(failed > 0 && failed < posts.len());
    for input in [&json, &csv] {
        for executor in ["process", "thread"] {
            let out = word_stats(&["--input", input, "--workers", "3"])
                .args(["--param", "min_len=4", "--executor", executor])
                .args(["--chunksize", "4"])
                .run();
            out.assert_code(1);
            out.assert_no_panic();
            assert_eq!(out.json(), expected, "{input} on {executor}");
            let pids: BTreeSet<u32> = out.working_pids();
            match executor {
                "thread" => assert_eq!(out.spawned_pids().len(), 1, "{}", out.stderr),
                _ => assert_eq!(out.spawned_pids().len(), 3, "{}", out.stderr),
            }
            assert!(!pids.is_empty(), "no per-PID log lines:\n{}", out.stderr);
            // The task's own record label.
            assert!(
                out.stderr.contains(" working record post 10"),
                "{}",
                out.stderr
            );
        }
    }
}

#[test]
fn parameters_come_as_a_json_object_and_key_value_pairs() {
    let dir = tempdir();
    let posts = posts();
    let json = write_file(dir.path(), "posts.jsonl", jsonl(&posts));
    let task = WordStats {
        min_len: 7,
        stop: vec!["the".into(), "one".into()],
    };
    let out = word_stats(&["--input", &json, "--workers", "2"])
        .args(["--params", r#"{"min_len": 3, "stop": ["the", "one"]}"#])
        .args(["--param", "min_len=7"])
        .run();
    out.assert_code(1);
    assert_eq!(out.json(), reference(&task, &posts));
    // Parameters that do not decode are a start-up error naming the task.
    let out = word_stats(&["--input", &json, "--workers", "1"])
        .args(["--param", "min_len=many"])
        .run();
    out.assert_code(2);
    let msg = out.the_error();
    assert!(
        msg.contains("parameters of task `word-stats` do not decode"),
        "{msg}"
    );
    assert_eq!(out.stdout_str(), "");
}

#[test]
fn a_users_records_that_do_not_decode_are_bad_input_with_file_and_line() {
    let dir = tempdir();
    let data = "{\"id\":1,\"text\":\"fine words\"}\n\n{\"id\":\"two\",\"text\":\"x\"}\n{\"id\":3,\"text\":\"more words\"}\n";
    let json = write_file(dir.path(), "posts.jsonl", data);
    let out = word_stats(&["--input", &json, "--workers", "2"]).run();
    out.assert_code(2);
    let msg = out.the_error();
    assert!(msg.starts_with(&format!("{json}:3: invalid type")), "{msg}");
    let out = word_stats(&["--input", &json, "--workers", "2", "--skip-bad-input"]).run();
    out.assert_code(0);
    let ids: Vec<u64> = out
        .json()
        .iter()
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 3]);
}

#[test]
fn tasks_lists_a_users_task() {
    let out = coordinator(["tasks", "--worker-bin"])
        .arg(word_stats_bin())
        .run();
    out.assert_code(0);
    let text = out.stdout_str();
    assert!(text.contains("word-stats"), "{text}");
    assert!(text.contains("input:  {id, text}"), "{text}");
}

#[test]
fn thread_executor_statistics_have_one_row_per_thread_of_one_process() {
    let dir = tempdir();
    let posts = posts();
    let json = write_file(dir.path(), "posts.jsonl", jsonl(&posts));
    let stats = dir.path().join("stats.json");
    let out = word_stats(&["--input", &json, "--workers", "3", "--executor", "thread"])
        .args(["--chunksize", "2"])
        .arg("--stats-json")
        .arg(&stats)
        .run();
    out.assert_code(1);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let rows = report["workers"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{report}");
    let pids = out.spawned_pids();
    assert_eq!(pids.len(), 1);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["pid"], pids[0], "{report}");
        assert_eq!(row["ended"], format!("thread task-{i}"), "{report}");
    }
    let records: u64 = rows.iter().map(|r| r["records"].as_u64().unwrap()).sum();
    assert_eq!(records, posts.len() as u64);
    assert_eq!(report["executor"], "thread");
}

#[test]
fn a_users_worker_ignores_the_fault_injection_variable() {
    let dir = tempdir();
    let posts = posts();
    let json = write_file(dir.path(), "posts.jsonl", jsonl(&posts));
    let expected = reference(&WordStats::default(), &posts);
    // The project's own worker obeys it (so the variable is really there)...
    let fault = write_file(
        dir.path(),
        "fault.jsonl",
        crate::util::fault_input((0..5).map(|n| (n, ""))),
    );
    let obeyed = coordinator(["--task", "fault", "--input", &fault, "--workers", "1"])
        .env("PROCPOOL_WORKER_FAULT", "crash-after:1")
        .run();
    assert!(obeyed.stderr.contains("SIGABRT"), "{}", obeyed.stderr);
    // ... a worker of one's own, which never opted in, does not.
    for executor in ["process", "thread"] {
        let out = word_stats(&["--input", &json, "--workers", "1", "--executor", executor])
            .args(["--chunksize", "1"])
            .env("PROCPOOL_WORKER_FAULT", "crash-after:1")
            .run();
        out.assert_code(1);
        out.assert_no_panic();
        assert_eq!(out.json(), expected, "{executor}:\n{}", out.stderr);
        assert_eq!(out.spawned_pids().len(), 1, "{executor}:\n{}", out.stderr);
        for word in ["SIGABRT", "crashed", "worker_died", "replac"] {
            assert!(
                !out.stderr.contains(word),
                "{executor}: {word}:\n{}",
                out.stderr
            );
        }
    }
}
