//! What the machine must offer before workers start: enough file
//! descriptors, and a usable rendezvous directory ($TMPDIR). Each shortfall
//! is one clear error, before any worker starts, with no panic.

use std::time::Duration;

use std::path::{Path, PathBuf};

use crate::util::{
    coordinator, coordinator_bin, fault_input, ready_pids, tempdir, write_file, Cmd,
};

/// The coordinator under `sh -c 'ulimit -n N; exec coordinator ARGS'`.
fn with_fd_limit(limit: u32, args: &str) -> Cmd {
    Cmd::new([
        "-c".to_owned(),
        format!(
            "ulimit -n {limit} && exec {} {args}",
            coordinator_bin().display()
        ),
    ])
    .program("sh")
}

#[test]
fn too_few_file_descriptors_is_one_clear_error_naming_what_fits() {
    let dir = tempdir();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    // The same input in both runs: an open input file takes a descriptor too.
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..500).map(|n| (n, ""))),
    );
    let run = with_fd_limit(256, &format!("--task fault --workers 256 --input {input}"))
        .env("TMPDIR", tmp.to_str().unwrap())
        .run();
    run.assert_code(2);
    run.assert_no_panic();
    let e = run.the_error();
    assert!(e.contains("256 workers") && e.contains("at most"), "{e}");
    assert!(e.contains("ulimit -n"), "{e}");
    assert!(
        run.spawned_pids().is_empty(),
        "workers started: {}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "rendezvous left behind"
    );
    // Exactly as many workers as it says fit do run.
    let allowed: usize = e
        .split("at most ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {e}"));
    assert!(allowed >= 8, "{e}");
    let run = with_fd_limit(
        256,
        &format!("--task fault --workers {allowed} --input {input}"),
    )
    .env("TMPDIR", tmp.to_str().unwrap())
    .run();
    run.assert_code(0);
    run.assert_no_panic();
    assert_eq!(run.lines().len(), 500);
}

#[test]
fn an_unusable_tmpdir_is_named_at_start_up() {
    let dir = tempdir();
    let file = write_file(dir.path(), "plain-file", "x");
    let long = format!("/tmp/{}", "d".repeat(100));
    let missing = dir.path().join("missing");
    for (tmpdir, why) in [
        (missing.to_str().unwrap(), "No such file"),
        ("/proc", "not writable"),
        (file.as_str(), "not a directory"),
        (long.as_str(), "too long"),
    ] {
        let run = coordinator(["--workers", "2", "--work-ms", "0"])
            .env("TMPDIR", tmpdir)
            .run();
        run.assert_code(2);
        run.assert_no_panic();
        let e = run.the_error();
        assert!(
            e.contains(tmpdir) && e.contains(why),
            "TMPDIR={tmpdir}: {e}"
        );
        assert!(run.spawned_pids().is_empty());
    }
}

#[test]
fn tmpdir_removed_mid_run_does_not_break_the_pool() {
    let dir = tempdir();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    // Slow records, and later ones that kill their worker: replacements are
    // started after the directory is gone.
    let records: Vec<(u64, &str)> = (0..60)
        .map(|n| {
            (
                n,
                if n >= 40 && n % 5 == 0 {
                    "kill"
                } else {
                    "sleep:15"
                },
            )
        })
        .collect();
    let input = write_file(dir.path(), "in.jsonl", fault_input(records.clone()));
    let mut run = coordinator([
        "--task",
        "fault",
        "--workers",
        "2",
        "--retries",
        "1",
        "--input",
        &input,
    ])
    .env("TMPDIR", tmp.to_str().unwrap())
    .spawn();
    run.wait_for("the first results", |r| r.stdout_lines_now() >= 4);
    std::fs::remove_dir_all(&tmp).unwrap();
    let out = run.wait();
    out.assert_code(1);
    out.assert_no_panic();
    let lines = out.json();
    assert_eq!(lines.len(), 60);
    for (n, fault) in records {
        let line = &lines[n as usize];
        if fault == "kill" {
            assert_eq!(line["error"]["kind"], "worker_died", "record {n}: {line}");
        } else {
            assert_eq!(line["n"], n, "record {n}: {line}");
        }
    }
    assert!(out.stderr.contains("created it again"), "{}", out.stderr);
    out.assert_no_workers_left(Duration::from_secs(5));
}

/// Whether `dir` is on tmpfs (kept in memory).
fn on_tmpfs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path and a zeroed struct for the kernel to fill.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::statfs(path.as_ptr(), &mut fs) == 0 && fs.f_type as i64 == 0x0102_1994 }
}

/// Where the one worker of a run with `env` found its coordinator's
/// rendezvous socket (its `PROCPOOL_SERVER`), read while it runs a record.
fn rendezvous_of_a_run(set: &[(&str, &Path)], removed: &[&str]) -> PathBuf {
    let dir = tempdir();
    let input = write_file(dir.path(), "in.jsonl", fault_input([(0, "sleep:1500")]));
    let mut cmd = coordinator(["--task", "fault", "--workers", "1", "--input", &input]);
    for key in removed {
        cmd = cmd.env_remove(key);
    }
    for (key, value) in set {
        cmd = cmd.env(key, value.to_str().unwrap());
    }
    let mut run = cmd.spawn();
    run.wait_for("the worker", |r| !ready_pids(&r.stderr_now()).is_empty());
    let pid = *ready_pids(&run.stderr_now()).iter().next().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let server = environ
        .split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(b"PROCPOOL_SERVER="))
        .map(|v| PathBuf::from(String::from_utf8_lossy(v).into_owned()))
        .expect("the worker has no PROCPOOL_SERVER");
    let out = run.wait();
    out.assert_code(0);
    server
}

/// Each worker's start creates a rendezvous socket in a directory of its
/// own: with `$TMPDIR` unset the coordinator puts them in memory
/// (`$XDG_RUNTIME_DIR` here: a directory of this test's in /dev/shm), unless
/// /tmp is in memory already; with `$TMPDIR` set, they go there.
#[test]
fn rendezvous_sockets_go_in_memory_unless_tmpdir_is_set() {
    let runtime = tempfile::Builder::new()
        .prefix("procpool-runtime-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let expected = if on_tmpfs(Path::new("/tmp")) || !on_tmpfs(runtime.path()) {
        PathBuf::from("/tmp")
    } else {
        runtime.path().to_path_buf()
    };
    let server = rendezvous_of_a_run(&[("XDG_RUNTIME_DIR", runtime.path())], &["TMPDIR"]);
    assert!(
        server.starts_with(&expected),
        "socket {} not in {}",
        server.display(),
        expected.display()
    );
    // The user's $TMPDIR stands, in memory or not.
    let tmp = tempdir();
    let server = rendezvous_of_a_run(
        &[("TMPDIR", tmp.path()), ("XDG_RUNTIME_DIR", runtime.path())],
        &[],
    );
    assert!(
        server.starts_with(tmp.path()),
        "socket {} not in $TMPDIR {}",
        server.display(),
        tmp.path().display()
    );
}
