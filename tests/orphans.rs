//! Processes that a worker's task starts go down with the worker's
//! coordinator, even when it is killed with SIGKILL.

use std::time::Duration;

use crate::util::{coordinator, fault_input, send_signal, tempdir, wait_until, write_file};

/// Pids of the `sleep SECS` processes running on this machine.
fn sleeps(secs: u64) -> Vec<u32> {
    let want = format!("sleep\0{secs}\0").into_bytes();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .filter(|pid| {
            // A zombie still has a /proc entry (but no cmdline): alive only.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        })
        .collect()
}

#[test]
fn sigkill_of_the_coordinator_takes_what_workers_started_down() {
    // A duration no other process uses: how the test finds its sleeps.
    let secs = 771_000 + u64::from(std::process::id() % 100_000);
    let dir = tempdir();
    let orphan = format!("orphan:{secs}");
    let input = fault_input(
        (0..4)
            .map(|n| (n, orphan.as_str()))
            .chain((4..8).map(|n| (n, "hang"))),
    );
    let path = write_file(dir.path(), "in.jsonl", input);
    let mut run = coordinator(["--task", "fault", "--input", &path, "--workers", "2"])
        .deadline(Duration::from_secs(30))
        .spawn();
    run.wait_for("sleeps started and a worker hanging", |r| {
        !sleeps(secs).is_empty() && r.stderr_now().contains("fault=hang")
    });
    let started = sleeps(secs);
    send_signal(run.pid, libc::SIGKILL);
    let gone = wait_until(Duration::from_secs(2), || sleeps(secs).is_empty());
    let left = sleeps(secs);
    for &pid in &left {
        send_signal(pid, libc::SIGKILL);
    }
    assert!(
        gone,
        "sleeps {left:?} of {started:?} outlived their coordinator by 2 s"
    );
    let _ = run.wait();
}

#[test]
fn sigkill_of_the_coordinator_takes_a_foreign_worker_binary_down() {
    use std::os::unix::fs::PermissionsExt;
    // A worker binary not built on the worker runtime: it never answers, and
    // only the coordinator's guard process ties it to its coordinator.
    let secs = 772_000 + u64::from(std::process::id() % 100_000);
    let dir = tempdir();
    let bin = dir.path().join("worker");
    std::fs::write(&bin, format!("#!/bin/sh\nexec sleep {secs}\n")).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = write_file(dir.path(), "in.jsonl", fault_input([(0, "")]));
    let mut run = coordinator(["--task", "fault", "--input", &path, "--workers", "1"])
        .arg("--worker-bin")
        .arg(&bin)
        .deadline(Duration::from_secs(30))
        .spawn();
    // Started, and its start complete on the coordinator's side (the guard
    // lists a worker once its spawn has returned, microseconds after the
    // process exists).
    run.wait_for("the foreign worker started", |r| {
        !sleeps(secs).is_empty() && r.stderr_now().contains("spawned worker pid=")
    });
    send_signal(run.pid, libc::SIGKILL);
    let gone = wait_until(Duration::from_secs(2), || sleeps(secs).is_empty());
    let left = sleeps(secs);
    for &pid in &left {
        send_signal(pid, libc::SIGKILL);
    }
    assert!(gone, "worker {left:?} outlived its coordinator by 2 s");
    let _ = run.wait();
}
