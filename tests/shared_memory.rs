//! Once batches are large, they reach local workers through shared memory
//! (a memfd per worker and direction, mapped by both), and the results come
//! back the same way, rather than over the socket; small batches, and a
//! worker that cannot map it, go over the socket. All give the same output,
//! on processes and on the thread executor.

use crate::util::{assert_same_output, coordinator, fault_input, ok_n, tempdir, write_file};

/// Per worker, the batches that came to it and the results that went back
/// through shared memory (its debug line at exit).
fn through_shared_memory(stderr: &str) -> Vec<(u64, u64)> {
    const BATCHES: &str = " batches came through shared memory, ";
    const RESULTS: &str = " results went back through it";
    let count = |s: &str| s.rsplit(' ').next()?.parse::<u64>().ok();
    stderr
        .lines()
        .filter_map(|l| {
            let (before, rest) = l.split_once(BATCHES)?;
            let results = rest.strip_suffix(RESULTS)?;
            Some((count(before)?, count(results)?))
        })
        .collect()
}

#[test]
fn batches_come_through_shared_memory_or_the_socket_with_the_same_output() {
    let dir = tempdir();
    let n = 50_000u64;
    let input = write_file(dir.path(), "in.jsonl", fault_input((0..n).map(|i| (i, ""))));
    let expected: String = (0..n).map(|i| ok_n(i) + "\n").collect();
    for executor in ["process", "thread"] {
        // A run with `extra` arguments and, if any, a fault injected: its
        // output checked, and each worker's counts.
        let run = |extra: &[&str], fault: Option<&str>| {
            let mut cmd = coordinator([
                "--task",
                "fault",
                "--workers",
                "2",
                "--executor",
                executor,
                "--input",
                &input,
            ])
            .args(extra)
            .env("RUST_LOG", "debug");
            if let Some(f) = fault {
                cmd = cmd.env("PROCPOOL_WORKER_FAULT", f);
            }
            let run = cmd.run();
            run.assert_code(0);
            run.assert_no_panic();
            assert_same_output(run.stdout_str(), &expected, executor);
            let counts = through_shared_memory(&run.stderr);
            assert!(
                !counts.is_empty(),
                "{executor}: no worker counted its batches"
            );
            counts
        };
        let counts = run(&[], None);
        assert!(
            counts.iter().all(|&(batches, results)| batches > 0 && results > 0),
            "{executor}: a worker took no batch or sent no results through shared memory: {counts:?}"
        );
        // Batches of 10 small records: no shared memory is made at all.
        let counts = run(&["--chunksize", "10"], None);
        assert!(
            counts.iter().all(|&c| c == (0, 0)),
            "{executor}: small batches went through shared memory: {counts:?}"
        );
        let counts = run(&[], Some("no-arena"));
        assert!(
            counts.iter().all(|&c| c == (0, 0)),
            "{executor}: a worker without shared memory counted {counts:?}"
        );
    }
}
