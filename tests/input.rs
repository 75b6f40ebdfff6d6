//! Bad input: named by file, line and reason; fatal (exit 2) unless
//! `--skip-bad-input`, which skips and counts it.

use std::time::Duration;

use crate::util::{coordinator, tempdir, write_file, Output};

/// One kind of bad input.
struct Case {
    name: &'static str,
    /// File name (its extension picks the format).
    file: &'static str,
    contents: Vec<u8>,
    task: &'static str,
    extra: &'static [&'static str],
    /// 1-based line of the (first) bad record.
    line: u64,
    /// Part of the reason.
    reason: &'static str,
    /// Output lines of the good records before the bad one.
    before: Vec<&'static str>,
    /// Output lines of the good records after it (all skipped bad records
    /// left out), when the bad ones are skipped.
    after: Vec<&'static str>,
    /// How many bad records there are.
    bad: usize,
}

const HEADER: &str = "name,field,born,nobel\n";

fn cases() -> Vec<Case> {
    let p1 = "{\"n\":10,\"primes\":4}";
    let p3 = "{\"n\":30,\"primes\":10}";
    let ada = "{\"name\":\"Ada\",\"age\":185}";
    let cy = "{\"name\":\"Cy\",\"age\":100}";
    let csv = |middle: &str| {
        format!("{HEADER}Ada,math,1815,no\n{middle}Cy,physics,1900,yes\n").into_bytes()
    };
    let mut invalid_utf8_json = b"{\"n\":10}\n{\"n\":20,\"x\":\"\xff\xfe\"}\n".to_vec();
    invalid_utf8_json.extend_from_slice(b"{\"n\":30}\n");
    let mut invalid_utf8_csv = format!("{HEADER}Ada,math,1815,no\nB").into_bytes();
    invalid_utf8_csv.extend_from_slice(b"\xC3ob,math,1900,no\nCy,physics,1900,yes\n");
    let long = "x".repeat(300);
    vec![
        Case {
            name: "wrong field type (JSON)",
            file: "in.jsonl",
            contents: b"{\"n\":10}\n{\"n\":\"twenty\"}\n{\"n\":30}\n".to_vec(),
            task: "primes",
            extra: &[],
            line: 2,
            reason: "invalid type",
            before: vec![p1],
            after: vec![p3],
            bad: 1,
        },
        Case {
            name: "missing field (JSON)",
            file: "in.ndjson",
            contents: b"{\"n\":10}\n{\"m\":20}\n{\"n\":30}\n".to_vec(),
            task: "primes",
            extra: &[],
            line: 2,
            reason: "missing field `n`",
            before: vec![p1],
            after: vec![p3],
            bad: 1,
        },
        Case {
            name: "malformed JSON",
            file: "in.json",
            contents: b"{\"n\":10}\n{\"n\":20\n{\"n\":30}\n".to_vec(),
            task: "primes",
            extra: &[],
            line: 2,
            reason: "invalid JSON",
            before: vec![p1],
            after: vec![p3],
            bad: 1,
        },
        Case {
            name: "trailing characters (JSON)",
            file: "in.jsonl",
            contents: b"{\"n\":10}\n{\"n\":20} {\"n\":21}\n{\"n\":30}\n".to_vec(),
            task: "primes",
            extra: &[],
            line: 2,
            reason: "trailing characters",
            before: vec![p1],
            after: vec![p3],
            bad: 1,
        },
        Case {
            name: "blank lines count in line numbers (JSON)",
            file: "in.jsonl",
            contents: b"{\"n\":10}\n\n   \n{\"n\":-1}\n{\"n\":30}\n".to_vec(),
            task: "primes",
            extra: &[],
            line: 4,
            reason: "invalid value",
            before: vec![p1],
            after: vec![p3],
            bad: 1,
        },
        Case {
            name: "invalid UTF-8 (JSON)",
            file: "in.jsonl",
            contents: invalid_utf8_json,
            task: "primes",
            extra: &[],
            line: 2,
            reason: "invalid UTF-8",
            before: vec![p1],
            after: vec![p3],
            bad: 1,
        },
        Case {
            name: "record over --max-record-bytes (JSON)",
            file: "in.jsonl",
            contents: format!("{{\"n\":10}}\n{{\"n\":20,\"pad\":\"{long}\"}}\n{{\"n\":30}}\n")
                .into_bytes(),
            task: "primes",
            extra: &["--max-record-bytes", "100"],
            line: 2,
            reason: "over the limit of 100 bytes",
            before: vec![p1],
            after: vec![p3],
            bad: 1,
        },
        Case {
            name: "sniffed JSON lines without an extension",
            file: "input",
            contents: b"{\"n\":10}\n{\"n\":true}\n{\"n\":30}\n".to_vec(),
            task: "primes",
            extra: &[],
            line: 2,
            reason: "invalid type",
            before: vec![p1],
            after: vec![p3],
            bad: 1,
        },
        Case {
            name: "wrong field type (CSV)",
            file: "in.csv",
            contents: csv("Bob,math,abc,no\n"),
            task: "age",
            extra: &[],
            line: 3,
            reason: "born",
            before: vec![ada],
            after: vec![cy],
            bad: 1,
        },
        Case {
            name: "bad yes/no (CSV)",
            file: "in.csv",
            contents: csv("Bob,math,1900,maybe\n"),
            task: "age",
            extra: &[],
            line: 3,
            reason: "maybe",
            before: vec![ada],
            after: vec![cy],
            bad: 1,
        },
        Case {
            name: "wrong number of fields (CSV)",
            file: "in.csv",
            contents: csv("Bob,math,1900\n"),
            task: "age",
            extra: &[],
            line: 3,
            reason: "wrong number of fields",
            before: vec![ada],
            after: vec![cy],
            bad: 1,
        },
        Case {
            name: "invalid UTF-8 (CSV)",
            file: "in.csv",
            contents: invalid_utf8_csv,
            task: "age",
            extra: &[],
            line: 3,
            reason: "invalid UTF-8",
            before: vec![ada],
            after: vec![cy],
            bad: 1,
        },
        Case {
            name: "record over --max-record-bytes (CSV)",
            file: "in.csv",
            contents: csv(&format!("{long},math,1900,no\n")),
            task: "age",
            extra: &["--max-record-bytes", "100"],
            line: 3,
            reason: "over the limit of 100 bytes",
            before: vec![ada],
            after: vec![cy],
            bad: 1,
        },
        Case {
            name: "several bad records (CSV)",
            file: "in.csv",
            contents: csv("Bob,math,abc,no\n\nBo,math\nBe,math,1,sometimes\n"),
            task: "age",
            extra: &[],
            line: 3,
            reason: "born",
            before: vec![ada],
            after: vec![cy],
            bad: 3,
        },
        Case {
            // The quoted field runs to the end of the input: nothing after it.
            name: "unterminated quote (CSV)",
            file: "in.csv",
            contents: csv("Bob,\"math,1900,no\n"),
            task: "age",
            extra: &[],
            line: 3,
            reason: "unterminated quoted field",
            before: vec![ada],
            after: vec![],
            bad: 1,
        },
    ]
}

fn run_case(case: &Case, skip: bool) -> (Output, String) {
    let dir = tempdir();
    let path = write_file(dir.path(), case.file, &case.contents);
    let mut cmd = coordinator(["--task", case.task, "--input", &path, "--workers", "2"])
        .args(["--year", "2000"])
        .args(case.extra);
    if skip {
        cmd = cmd.arg("--skip-bad-input");
    }
    (cmd.run(), path)
}

#[test]
fn bad_input_stops_the_run_naming_file_and_line() {
    for case in cases() {
        let (out, path) = run_case(&case, false);
        assert_eq!(
            out.code(),
            Some(2),
            "{}: {:?}\n{}",
            case.name,
            out.status,
            out.stderr
        );
        let msg = out.the_error();
        let place = format!("{path}:{}: ", case.line);
        assert!(
            msg.starts_with(&place),
            "{}: {msg} (expected {place})",
            case.name
        );
        assert!(msg.contains(case.reason), "{}: {msg}", case.name);
        assert!(msg.contains("--skip-bad-input"), "{}: {msg}", case.name);
        // Whatever was output before stopping is the records before it, in order.
        let lines = out.lines();
        assert!(
            case.before.starts_with(&lines),
            "{}: output {lines:?} is not a prefix of {:?}",
            case.name,
            case.before
        );
        out.assert_no_panic();
        out.assert_no_workers_left(Duration::from_secs(2));
    }
}

#[test]
fn skip_bad_input_skips_and_counts() {
    for case in cases() {
        let (out, path) = run_case(&case, true);
        assert_eq!(
            out.code(),
            Some(0),
            "{}: {:?}\n{}",
            case.name,
            out.status,
            out.stderr
        );
        let expected: Vec<&str> = case.before.iter().chain(&case.after).copied().collect();
        assert_eq!(out.lines(), expected, "{}", case.name);
        let warning = format!("skipping bad input: {path}:{}: ", case.line);
        assert!(
            out.stderr.contains(&warning) && out.stderr.contains(case.reason),
            "{}: no warning {warning:?}:\n{}",
            case.name,
            out.stderr
        );
        assert_eq!(
            out.stderr.matches("skipping bad input: ").count(),
            case.bad,
            "{}",
            case.name
        );
        let summary = out.summary().expect("summary");
        assert!(
            summary.contains(&format!("; {} bad input records skipped", case.bad)),
            "{}: {summary}",
            case.name
        );
        assert!(out.error_message().is_none(), "{}", case.name);
    }
}

#[test]
fn bad_input_on_stdin_is_named_stdin() {
    let out = coordinator(["--task", "primes", "--input", "-", "--workers", "1"])
        .stdin("{\"n\":10}\nnot json\n")
        .run();
    out.assert_code(2);
    let msg = out.the_error();
    assert!(msg.starts_with("<stdin>:2: "), "{msg}");
    let out = coordinator(["--task", "primes", "--input", "-", "--workers", "1"])
        .arg("--skip-bad-input")
        .stdin("{\"n\":10}\nnot json\n{\"n\":30}")
        .run();
    out.assert_code(0);
    assert_eq!(
        out.stdout_str(),
        "{\"n\":10,\"primes\":4}\n{\"n\":30,\"primes\":10}\n"
    );
}

#[test]
fn unreadable_inputs_exit_2() {
    let dir = tempdir();
    let missing = dir.path().join("missing.csv");
    let out = coordinator(["--workers", "1", "--input"])
        .arg(&missing)
        .run();
    out.assert_code(2);
    let msg = out.the_error();
    assert!(msg.contains("cannot open"), "{msg}");
    assert!(msg.contains(missing.to_str().unwrap()), "{msg}");
    let out = coordinator(["--workers", "1", "--input"])
        .arg(dir.path())
        .run();
    out.assert_code(2);
    assert!(out.the_error().contains("directory"), "{}", out.stderr);
}

#[test]
fn the_last_line_needs_no_newline_and_crlf_is_fine() {
    let dir = tempdir();
    let csv = write_file(
        dir.path(),
        "in.csv",
        "name,field,born,nobel\r\nAda,math,1815,no\r\n\r\nCy,physics,1900,yes",
    );
    let out = coordinator(["--input", &csv, "--year", "2000", "--workers", "2"]).run();
    out.assert_code(0);
    assert_eq!(
        out.stdout_str(),
        "{\"name\":\"Ada\",\"age\":185}\n{\"name\":\"Cy\",\"age\":100}\n"
    );
    let json = write_file(dir.path(), "in.jsonl", "{\"n\":10}\r\n\r\n{\"n\":30}");
    let out = coordinator(["--task", "primes", "--input", &json, "--workers", "2"]).run();
    out.assert_code(0);
    assert_eq!(
        out.stdout_str(),
        "{\"n\":10,\"primes\":4}\n{\"n\":30,\"primes\":10}\n"
    );
}

/// The statistics count a skipped bad record apart: not as a failure, so
/// that the table, the JSON and the summary line agree.
#[test]
fn statistics_count_skipped_bad_input_apart_from_failures() {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        "{\"n\":10}\n{\"n\":\n{\"n\":100000000000000}\n{\"n\":30}\nnot json\n",
    );
    let stats = dir.path().join("stats.json");
    let out = coordinator(["--task", "primes", "--workers", "1", "--skip-bad-input"])
        .args(["--input", &input, "--stats", "--stats-json"])
        .arg(&stats)
        .run();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let w = &v["workers"][0];
    // Five records reached the worker: two did not decode, one failed
    // (n over the task's limit), two succeeded.
    assert_eq!(w["records"], 5, "{v}");
    assert_eq!(
        (w["bad_input"].as_u64(), w["failed"].as_u64()),
        (Some(2), Some(1)),
        "{v}"
    );
    assert_eq!(
        (v["total_bad_input"].as_u64(), v["total_failed"].as_u64()),
        (Some(2), Some(1))
    );
    let header = out
        .stderr
        .lines()
        .find(|l| l.contains("busy (s)"))
        .unwrap_or_else(|| panic!("no stats table: {}", out.stderr));
    assert!(header.contains("bad input"), "{header}");
    let total = out
        .stderr
        .lines()
        .find(|l| l.trim_start().starts_with("total"))
        .unwrap();
    let cells: Vec<&str> = total.split_whitespace().collect();
    assert_eq!(cells[1..4], ["5", "1", "2"], "{total}");
    assert!(
        out.stderr.contains("2 bad input records skipped"),
        "{}",
        out.stderr
    );
    // Without bad input the table keeps its columns.
    let good = write_file(dir.path(), "good.jsonl", "{\"n\":10}\n");
    let out = coordinator([
        "--task",
        "primes",
        "--workers",
        "1",
        "--stats",
        "--input",
        &good,
    ])
    .run();
    out.assert_code(0);
    assert!(!out.stderr.contains("bad input"), "{}", out.stderr);
}

/// JSON lines go to the workers in runs of lines (as the input's bytes);
/// what breaks a run (a blank or whitespace-only line, a `\r\n`, a line
/// starting with a space, a bad record) must change neither the output nor
/// the line a message names, across many read blocks.
#[test]
fn runs_of_json_lines_keep_every_record_and_line_number() {
    const RECORDS: u64 = 60_000;
    let primes_below = |n: u64| {
        (2..n)
            .filter(|&k| (2..k).take_while(|d| d * d <= k).all(|d| k % d != 0))
            .count()
    };
    let dir = tempdir();
    let (mut text, mut want, mut bad_lines) = (String::new(), Vec::new(), Vec::new());
    let mut line = 0u64;
    for i in 0..RECORDS {
        let n = 4 * (i % 50);
        line += 1;
        match i % 1000 {
            7 => text.push_str(&format!("{{\"n\":{n}}}\r\n")),
            8 => text.push_str(&format!("  {{\"n\":{n}}}\n")),
            9 => {
                text.push_str("\n \t\n");
                line += 2;
                text.push_str(&format!("{{\"n\":{n}}}\n"));
            }
            500 => {
                text.push_str("not json\n");
                bad_lines.push(line);
                continue;
            }
            _ => text.push_str(&format!("{{\"n\":{n}}}\n")),
        }
        want.push(format!("{{\"n\":{n},\"primes\":{}}}", primes_below(n)));
    }
    let path = write_file(dir.path(), "in.jsonl", &text);
    let run = |extra: &[&str]| {
        coordinator(["--task", "primes", "--input", &path, "--workers", "2"])
            .args(extra)
            .run()
    };
    let out = run(&["--skip-bad-input"]);
    out.assert_code(0);
    assert_eq!(out.lines(), want);
    let warned: Vec<u64> = out
        .stderr
        .lines()
        .filter_map(|l| {
            l.split_once(&format!("skipping bad input: {path}:"))?
                .1
                .split(':')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(warned, bad_lines);
    // Stopped at the first bad record, named by its line, after the ordered records before it.
    let out = run(&[]);
    out.assert_code(2);
    let msg = out.the_error();
    assert!(
        msg.starts_with(&format!("{path}:{}: ", bad_lines[0])),
        "{msg}"
    );
    let lines = out.lines();
    assert!(want.starts_with(&lines.iter().map(|l| l.to_string()).collect::<Vec<_>>()));
    out.assert_no_workers_left(Duration::from_secs(2));
}

/// Input that switches between runs of lines and single records at every
/// line (`\n` and `\r\n` alternating) goes in full batches of records, as
/// before lines travelled whole: a batch sent at every switch, each one
/// record, took about 90 s for these 100,000 records instead of 0.3 s (and
/// read all the input at once, past the window). The deadline catches that
/// without timing a healthy run.
#[test]
fn alternating_line_endings_still_make_full_batches() {
    let dir = tempdir();
    let mut text = String::new();
    for i in 0..100_000u64 {
        let end = if i % 2 == 1 { "\r\n" } else { "\n" };
        text.push_str(&format!("{{\"n\":{}}}{end}", 4 * (i % 50)));
    }
    let path = write_file(dir.path(), "mixed.jsonl", &text);
    let out = coordinator(["--task", "primes", "--input", &path, "--workers", "2"])
        .deadline(Duration::from_secs(30))
        .run();
    out.assert_code(0);
    let lines = out.lines();
    assert_eq!(lines.len(), 100_000);
    assert_eq!(lines[1], "{\"n\":4,\"primes\":2}");
    assert_eq!(lines[99_999], "{\"n\":196,\"primes\":44}");
}
