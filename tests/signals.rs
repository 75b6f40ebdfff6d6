//! SIGINT, SIGTERM and SIGKILL sent to the coordinator in the middle of a run.

use std::time::Duration;

use crate::util::{
    children, coordinator, fault_input, ok_n, send_signal, spawned_pids, tempdir, worker_of_alive,
    write_file, Running,
};

/// 40 records of 50 ms each on 2 workers: about 1 s of work.
fn slow_run(dir: &std::path::Path) -> Running {
    let input = fault_input((0..40).map(|n| (n, "sleep:50")));
    let path = write_file(dir, "in.jsonl", input);
    coordinator(["--task", "fault", "--input", &path, "--workers", "2"]).spawn()
}

fn interrupt_mid_run(signal: i32, code: i32, name: &str) {
    let dir = tempdir();
    let mut run = slow_run(dir.path());
    // Mid-run: some results are out, most are not.
    run.wait_for("a few results", |r| r.stdout_lines_now() >= 4);
    run.signal(signal);
    let out = run.wait();
    out.assert_code(code);
    out.assert_no_panic();
    let lines = out.lines();
    assert!(
        lines.len() < 40,
        "the run was not interrupted ({} lines)",
        lines.len()
    );
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(*line, ok_n(n as u64), "line {n} of the prefix");
    }
    assert!(
        out.stderr.contains(&format!("interrupted by {name}")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("output holds the first {} records", lines.len())),
        "{}",
        out.stderr
    );
    out.assert_no_workers_left(Duration::from_secs(2));
}

#[test]
fn sigint_mid_run_exits_130_with_an_ordered_prefix() {
    interrupt_mid_run(libc::SIGINT, 130, "SIGINT");
}

#[test]
fn sigterm_mid_run_exits_143_with_an_ordered_prefix() {
    interrupt_mid_run(libc::SIGTERM, 143, "SIGTERM");
}

#[test]
fn second_sigint_stops_at_once() {
    // Records that would outlast the grace period: the second SIGINT kills.
    let dir = tempdir();
    let input = fault_input((0..6).map(|n| (n, if n < 2 { "" } else { "hang" })));
    let path = write_file(dir.path(), "in.jsonl", input);
    let mut run = coordinator(["--task", "fault", "--input", &path, "--workers", "2"])
        .args(["--grace", "30s"])
        .deadline(Duration::from_secs(20))
        .spawn();
    run.wait_for("a hang to start", |r| {
        r.stderr_now().contains("fault=hang\n")
    });
    run.signal(libc::SIGINT);
    run.wait_for("the first signal to be handled", |r| {
        r.stderr_now().contains("finishing records in flight")
    });
    run.signal(libc::SIGINT);
    // Within the deadline, far below the 30 s grace.
    let out = run.wait();
    out.assert_code(130);
    // An in-order prefix of the two records that can succeed.
    let lines = out.lines();
    assert!(lines.len() <= 2, "{lines:?}");
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(*line, ok_n(n as u64));
    }
    assert!(out.stderr.contains("stopping now"), "{}", out.stderr);
    out.assert_no_workers_left(Duration::from_secs(2));
}

#[test]
fn sigint_with_a_short_grace_kills_hung_workers() {
    let dir = tempdir();
    let input = fault_input((0..4).map(|n| (n, "hang")));
    let path = write_file(dir.path(), "in.jsonl", input);
    let mut run = coordinator(["--task", "fault", "--input", &path, "--workers", "2"])
        .args(["--grace", "200ms"])
        .deadline(Duration::from_secs(20))
        .spawn();
    run.wait_for("a hang to start", |r| {
        r.stderr_now().contains("fault=hang\n")
    });
    run.signal(libc::SIGINT);
    let out = run.wait();
    out.assert_code(130);
    assert_eq!(out.stdout_str(), "");
    out.assert_no_workers_left(Duration::from_secs(2));
}

#[test]
fn sigkill_of_the_coordinator_takes_its_workers_down() {
    let dir = tempdir();
    let mut run = slow_run(dir.path());
    run.wait_for("results flowing", |r| r.stdout_lines_now() >= 2);
    let coordinator_pid = run.pid;
    let mut workers = children(coordinator_pid);
    workers.extend(spawned_pids(&run.stderr_now()));
    workers.sort_unstable();
    workers.dedup();
    assert!(workers.len() >= 2, "{workers:?}");
    send_signal(coordinator_pid, libc::SIGKILL);
    assert!(
        crate::util::wait_until(Duration::from_secs(5), || run.exited()),
        "the coordinator survived SIGKILL"
    );
    // PR_SET_PDEATHSIG: the kernel kills them with their coordinator.
    let gone = crate::util::wait_until(Duration::from_secs(1), || {
        workers
            .iter()
            .all(|&p| !worker_of_alive(p, coordinator_pid))
    });
    let left: Vec<u32> = workers
        .iter()
        .copied()
        .filter(|&p| worker_of_alive(p, coordinator_pid))
        .collect();
    assert!(gone, "workers {left:?} outlived their coordinator by 1 s");
    let out = run.wait();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGKILL)
    );
    assert!(
        out.stderr_closed,
        "something still holds the coordinator's stderr"
    );
    // The output holds complete lines in order, and maybe a partial one.
    let text = String::from_utf8_lossy(&out.stdout);
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.ends_with('\n') {
            assert_eq!(line.trim_end(), ok_n(n as u64));
        }
    }
}
