//! The MPI backend (`--features mpi`): the coordinator as rank 0 of an
//! `mpirun` job, workers as the other ranks. Needs Open MPI's `mpirun` on
//! the PATH (CI installs it). Results must equal the local backend's.

use std::time::{Duration, Instant};

use crate::util::{
    alive, assert_same_output, coordinator, fault_input, ready_pids, send_signal, tempdir,
    wait_until, worker_bin, write_file, Cmd, Output,
};

/// Which way the ranks of a launch on this one machine talk: `mpi` (MPI
/// itself, as on a cluster) or `auto` (local channels, without MPI).
const TRANSPORT: &str = "PROCPOOL_MPI_TRANSPORT";

/// `mpirun --oversubscribe ARGS`, as root if need be, with MPI itself
/// between the ranks (`on_one_machine` for the local channels).
fn mpirun_args<S: AsRef<str>>(args: &[S]) -> Cmd {
    Cmd::new(
        std::iter::once("--oversubscribe".to_string())
            .chain(args.iter().map(|s| s.as_ref().to_string())),
    )
    .program("mpirun")
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    .env(TRANSPORT, "mpi")
    .deadline(Duration::from_secs(120))
}

/// The same launch as its ranks run it by default on one machine: over
/// local channels and shared memory, without MPI.
fn on_one_machine(cmd: Cmd) -> Cmd {
    cmd.env(TRANSPORT, "auto")
}

fn bin_str(path: std::path::PathBuf) -> String {
    path.display().to_string()
}

/// `mpirun -n 1 coordinator --backend mpi ARGS : -n RANKS worker`, with MPI
/// itself between the ranks.
fn mpirun(ranks: usize, mpirun_opts: &[&str], args: &[&str]) -> Cmd {
    let coordinator = crate::util::coordinator_bin();
    let worker = worker_bin();
    let mut all: Vec<String> = vec!["--oversubscribe".into()];
    all.extend(mpirun_opts.iter().map(|s| s.to_string()));
    all.extend(["-n".into(), "1".into()]);
    all.push(coordinator.display().to_string());
    all.extend(["--backend".into(), "mpi".into()]);
    all.extend(args.iter().map(|s| s.to_string()));
    all.extend([
        ":".into(),
        "-n".into(),
        ranks.to_string(),
        worker.display().to_string(),
    ]);
    Cmd::new(all)
        .program("mpirun")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env(TRANSPORT, "mpi")
        .deadline(Duration::from_secs(120))
}

fn local(args: &[&str]) -> Output {
    coordinator(args.iter().copied()).run()
}

#[test]
fn demo_under_mpirun_equals_local() {
    let args = ["--work-ms", "50", "--year", "2024"];
    let want = local(&[&args[..], &["--workers", "3"]].concat());
    want.assert_code(0);
    let got = mpirun(3, &[], &args).run();
    got.assert_code(0);
    assert_eq!(got.stdout_str(), want.stdout_str());
    let pids = ready_pids(&got.stderr);
    assert_eq!(pids.len(), 3, "{}", got.stderr);
    // Worker lines name their host and pid; every record has one.
    for name in ["Ada Lovelace", "Sally Ride", "Tu Youyou"] {
        assert!(
            got.stderr
                .lines()
                .any(|l| l.contains("worker@") && l.contains(&format!("working record {name}"))),
            "{}",
            got.stderr
        );
    }
    assert!(got.stderr.contains("3 workers ready"), "{}", got.stderr);
    // The summary counts the job's ranks, not the --workers default.
    assert!(
        got.stderr.contains("with 3 workers (3 processes in all)"),
        "{}",
        got.stderr
    );
}

#[test]
fn hundred_thousand_records_equal_local_over_shared_memory() {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..100_000).map(|n| (n, ""))),
    );
    let want = local(&["--task", "fault", "--input", &input, "--workers", "3"]);
    want.assert_code(0);
    // Shared memory, launched as the README says to on one node (TCP: see
    // the namespace tests, which need no network interface of the machine's own).
    let one_node = [
        "--bind-to",
        "none",
        "--mca",
        "pml",
        "ob1",
        "--mca",
        "btl",
        "self,vader",
    ];
    let got = mpirun(3, &one_node, &["--task", "fault", "--input", &input]).run();
    got.assert_code(0);
    assert_same_output(
        got.stdout_str(),
        want.stdout_str(),
        "MPI against the local backend",
    );
}

/// The documented one-machine launch, as its ranks run it by default: no
/// MPI, local channels and shared memory; the same output, statistics and
/// job log as on the local backend, with a row per rank.
#[test]
fn on_one_machine_the_ranks_use_local_channels_and_equal_local() {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..100_000).map(|n| (n, if n % 9973 == 11 { "error" } else { "" }))),
    );
    let want = local(&["--task", "fault", "--input", &input, "--workers", "3"]);
    want.assert_code(1);
    let stats = dir.path().join("stats.json");
    let joblog = dir.path().join("jobs.tsv");
    let got = on_one_machine(mpirun(
        3,
        &["--bind-to", "none"],
        &[
            "--task",
            "fault",
            "--input",
            &input,
            "--stats-json",
            stats.to_str().unwrap_or_default(),
            "--joblog",
            joblog.to_str().unwrap_or_default(),
        ],
    ))
    .env("RUST_LOG", "debug")
    .run();
    got.assert_code(1);
    assert_same_output(
        got.stdout_str(),
        want.stdout_str(),
        "against the local backend",
    );
    assert!(
        got.stderr.contains(
            "every rank of this MPI job runs on this machine: 3 worker ranks over local channels"
        ),
        "{}",
        got.stderr
    );
    // Every rank took its invitation, and its large batches came through
    // the shared memory.
    let coordinator_pid = got
        .stderr
        .lines()
        .find_map(|l| l.split("coordinator pid=").nth(1)?.split(':').next())
        .unwrap_or_default()
        .to_owned();
    for rank in 1..=3 {
        assert!(
            got.stderr.contains(&format!(
                "rank {rank} of 4, every rank on this machine: the coordinator (pid {coordinator_pid})"
            )),
            "rank {rank}: {}",
            got.stderr
        );
    }
    let through_memory = got
        .stderr
        .lines()
        .filter(|l| l.contains(" batches came through shared memory"))
        .filter_map(|l| {
            l.split(" batches came through shared memory")
                .next()?
                .rsplit(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .filter(|&n| n > 0)
        .count();
    assert_eq!(through_memory, 3, "{}", got.stderr);
    let pids = ready_pids(&got.stderr);
    assert_eq!(pids.len(), 3, "{}", got.stderr);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(json["total_records"].as_u64(), Some(100_000), "{json}");
    let rows = json["workers"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{json}");
    for row in rows {
        assert!(
            pids.contains(&(row["pid"].as_u64().unwrap() as u32)),
            "{row}"
        );
    }
    let log = std::fs::read_to_string(&joblog).unwrap();
    assert_eq!(log.lines().count(), 100_001);
}

/// A rank started through a wrapper (a shell that does not `exec` it, as a
/// container starter or a profiler would) still takes its invitation: it is
/// believed by the coordinator's job, not by who started it.
#[test]
fn ranks_started_through_a_wrapper_take_their_invitation() {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..500).map(|n| (n, ""))),
    );
    let want = local(&["--task", "fault", "--input", &input, "--workers", "2"]);
    want.assert_code(0);
    let c = bin_str(crate::util::coordinator_bin());
    let wrapped = format!("{}; exit $?", bin_str(worker_bin()));
    let got = on_one_machine(mpirun_args(&[
        "-n",
        "1",
        &c,
        "--backend",
        "mpi",
        "--task",
        "fault",
        "--input",
        &input,
        ":",
        "-n",
        "2",
        "sh",
        "-c",
        &wrapped,
    ]))
    .run();
    got.assert_code(0);
    assert_transport(&got.stderr, true);
    assert_same_output(
        got.stdout_str(),
        want.stdout_str(),
        "against the local backend",
    );
}

/// Ranks on local channels wait for a coordinator that announced itself
/// for as long as it prepares: here its input, a FIFO nobody writes for
/// longer than a rank's first-contact wait (10 s).
#[test]
fn ranks_wait_for_a_coordinator_that_prepares_longer_than_first_contact() {
    let dir = tempdir();
    let records = fault_input((0..2_000).map(|n| (n, "")));
    let file = write_file(dir.path(), "in.jsonl", records.clone());
    let want = local(&["--task", "fault", "--input", &file, "--workers", "2"]);
    want.assert_code(0);
    let fifo = dir.path().join("in.fifo");
    let fifo_s = fifo.to_str().unwrap_or_default().to_owned();
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let run = on_one_machine(mpirun(
        2,
        &[],
        &["--task", "fault", "--format", "jsonl", "--input", &fifo_s],
    ))
    .spawn();
    std::thread::sleep(Duration::from_secs(12));
    // Opening the FIFO for writing waits for the coordinator's reader.
    std::fs::write(&fifo, records).unwrap();
    let got = run.wait();
    got.assert_code(0);
    assert_transport(&got.stderr, true);
    assert_same_output(
        got.stdout_str(),
        want.stdout_str(),
        "against the local backend",
    );
}

#[test]
fn task_errors_and_panics_are_per_record_under_mpi() {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..50).map(|n| {
            (
                n,
                match n {
                    7 => "error",
                    21 => "panic",
                    _ => "",
                },
            )
        })),
    );
    let want = local(&["--task", "fault", "--input", &input, "--workers", "2"]);
    want.assert_code(1);
    let got = mpirun(2, &[], &["--task", "fault", "--input", &input]).run();
    got.assert_code(1);
    assert_eq!(got.stdout_str(), want.stdout_str());
}

#[test]
fn statistics_and_job_log_under_mpi() {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..2_000).map(|n| (n, ""))),
    );
    let joblog = dir.path().join("jobs.tsv");
    let stats = dir.path().join("stats.json");
    let got = mpirun(
        3,
        &[],
        &[
            "--task",
            "fault",
            "--input",
            &input,
            "--joblog",
            joblog.to_str().unwrap_or_default(),
            "--stats-json",
            stats.to_str().unwrap_or_default(),
        ],
    )
    .run();
    got.assert_code(0);
    let pids = ready_pids(&got.stderr);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    assert_eq!(json["total_records"].as_u64(), Some(2_000), "{json}");
    let rows = json["workers"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{json}");
    for row in rows {
        assert!(
            pids.contains(&(row["pid"].as_u64().unwrap() as u32)),
            "{row}"
        );
    }
    let log = std::fs::read_to_string(&joblog).unwrap();
    let lines: Vec<&str> = log.lines().skip(1).collect();
    assert_eq!(lines.len(), 2_000);
    for (i, line) in lines.iter().enumerate() {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols[0], i.to_string());
        assert!(pids.contains(&cols[1].parse().unwrap()), "{line}");
        assert_eq!(cols[4], "ok");
    }
}

#[test]
fn options_needing_local_processes_are_refused() {
    let got = mpirun(2, &[], &["--timeout", "1s"]).run();
    assert_ne!(got.code(), Some(0));
    assert!(
        got.stderr.contains("cannot be killed or replaced"),
        "{}",
        got.stderr
    );
    let got = mpirun(2, &[], &["--max-tasks-per-child", "10"]).run();
    assert_ne!(got.code(), Some(0));
    assert!(
        got.stderr.contains("cannot be killed or replaced"),
        "{}",
        got.stderr
    );
}

/// Every way of launching wrongly ends within seconds (no hang), with a
/// message that says how to launch.
#[test]
fn wrong_launches_end_at_once_saying_how_to_launch() {
    let (c, w) = (
        bin_str(crate::util::coordinator_bin()),
        bin_str(worker_bin()),
    );
    let how = "coordinator --backend mpi --workers";
    let cases: Vec<(&str, Cmd, &str)> = vec![
        (
            "only workers",
            mpirun_args(&["-n", "3", &w]),
            "rank 0 must be the coordinator",
        ),
        (
            "only two workers",
            mpirun_args(&["-n", "2", &w]),
            "rank 0 must be the coordinator",
        ),
        (
            "several coordinators",
            mpirun_args(&["-n", "3", &c, "--backend", "mpi"]),
            "there must be one coordinator, at rank 0",
        ),
        (
            "a worker at rank 0",
            mpirun_args(&["-n", "1", &w, ":", "-n", "1", &c, "--backend", "mpi"]),
            "rank 0 must be the coordinator",
        ),
        (
            "a coordinator alone under mpirun, no --workers",
            mpirun_args(&["-n", "1", &c, "--backend", "mpi"]),
            "no worker ranks",
        ),
        (
            "a coordinator alone, no --workers",
            coordinator(["--backend", "mpi"]),
            "no --workers to spawn",
        ),
    ];
    // Each launch of several ranks also as it runs by default, without MPI.
    let cases: Vec<(String, Cmd, &str)> = cases
        .into_iter()
        .flat_map(|(what, cmd, says)| {
            let lone = what.contains("alone");
            let local = (!lone).then(|| {
                (
                    format!("{what}, local channels"),
                    on_one_machine(cmd.clone()),
                    says,
                )
            });
            std::iter::once((what.to_owned(), cmd, says)).chain(local)
        })
        .collect();
    for (what, cmd, says) in cases {
        let local_channels = what.ends_with("local channels");
        let started = Instant::now();
        // A hang fails at this deadline; the launch should end in seconds.
        let got = cmd.deadline(Duration::from_secs(60)).run();
        assert_ne!(got.code(), Some(0), "{what}: {}", got.stderr);
        assert!(got.stderr.contains(says), "{what}: {}", got.stderr);
        assert!(got.stderr.contains(how), "{what}: {}", got.stderr);
        // Told which way the ranks were to talk (the messages are the same).
        assert_eq!(
            got.stderr.contains("(every rank on this machine)"),
            local_channels,
            "{what}: {}",
            got.stderr
        );
        let took = started.elapsed();
        eprintln!("{what}: ended in {:.1} s", took.as_secs_f64());
        assert!(took < Duration::from_secs(20), "{what}: took {took:?}");
    }
}

/// `coordinator --backend mpi --workers N` alone (an MPI singleton) or
/// under `mpirun -n 1` spawns N worker ranks: same output as local.
#[test]
fn a_lone_coordinator_spawns_its_worker_ranks() {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..20_000).map(|n| (n, if n % 997 == 5 { "error" } else { "" }))),
    );
    let c = bin_str(crate::util::coordinator_bin());
    let demo = ["--work-ms", "20", "--year", "2024", "--workers", "3"];
    let fault = [
        "--task",
        "fault",
        "--input",
        input.as_str(),
        "--workers",
        "3",
    ];
    for args in [&demo[..], &fault[..]] {
        let want = local(args);
        let mut mpi_args = vec!["--backend", "mpi"];
        mpi_args.extend(args);
        let singleton = coordinator(mpi_args.iter().copied())
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            // Three ranks on a machine with fewer cores.
            .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
            .deadline(Duration::from_secs(120));
        // With the settings the README gives for one node.
        let one_node = coordinator(mpi_args.iter().copied())
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
            .env("OMPI_MCA_pml", "ob1")
            .env("OMPI_MCA_odls_base_sigkill_timeout", "0")
            .deadline(Duration::from_secs(120));
        let under_mpirun = mpirun_args(&[&["-n", "1", c.as_str()][..], &mpi_args[..]].concat());
        for (how, cmd) in [
            ("singleton", singleton),
            ("singleton, one-node settings", one_node),
            ("mpirun -n 1", under_mpirun),
        ] {
            let got = cmd.run();
            assert_eq!(got.code(), want.code(), "{how}: {}", got.stderr);
            assert_same_output(got.stdout_str(), want.stdout_str(), how);
            assert!(
                got.stderr.contains("spawned 3 worker ranks"),
                "{how}: {}",
                got.stderr
            );
            assert_eq!(ready_pids(&got.stderr).len(), 3, "{how}: {}", got.stderr);
        }
    }
}

/// A rank deep in a long record is not silent: its heartbeat thread keeps
/// beating, so a record longer than the liveness timeout completes.
#[test]
fn a_record_longer_than_the_liveness_timeout_completes() {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..4).map(|n| (n, if n == 1 { "sleep:3500" } else { "" }))),
    );
    let want = local(&["--task", "fault", "--input", &input, "--workers", "2"]);
    want.assert_code(0);
    let got = mpirun(2, &[], &["--task", "fault", "--input", &input])
        .env("PROCPOOL_MPI_LIVENESS", "1")
        .run();
    got.assert_code(0);
    assert_eq!(got.stdout_str(), want.stdout_str());
    assert!(!got.stderr.contains("sent nothing"), "{}", got.stderr);
}

/// A job to interrupt: `records` `fault` records, each running `fault`,
/// written to `out.jsonl` with `--resume`; and the local backend's output
/// (from `workers` workers), which the job must end with once resumed.
struct Resumable {
    /// Holds the files.
    _dir: tempfile::TempDir,
    input: String,
    out: std::path::PathBuf,
    records: usize,
    want: Output,
}

impl Resumable {
    fn new(records: usize, fault: &str, workers: usize) -> Resumable {
        let dir = tempdir();
        let input = write_file(
            dir.path(),
            "in.jsonl",
            fault_input((0..records).map(|n| (n as u64, fault))),
        );
        let workers = workers.to_string();
        let want = local(&["--task", "fault", "--input", &input, "--workers", &workers]);
        want.assert_code(0);
        let out = dir.path().join("out.jsonl");
        Resumable {
            _dir: dir,
            input,
            out,
            records,
            want,
        }
    }

    /// The coordinator's arguments.
    fn args(&self) -> [&str; 7] {
        [
            "--task",
            "fault",
            "--input",
            &self.input,
            "--output",
            self.out.to_str().unwrap_or_default(),
            "--resume",
        ]
    }

    /// Wait until `run` has `workers` workers ready and `lines` results out.
    fn wait_running(&self, run: &mut crate::util::Running, workers: usize, lines: usize) {
        run.wait_for("the workers ready", |r| {
            ready_pids(&r.stderr_now()).len() == workers
        });
        run.wait_for("some results", |_| {
            std::fs::read_to_string(&self.out).is_ok_and(|s| s.lines().count() >= lines)
        });
    }

    /// The output of the interrupted job is an ordered prefix of the whole,
    /// short of it: how many records it holds.
    fn assert_stopped_early(&self) -> usize {
        let partial = std::fs::read_to_string(&self.out).unwrap();
        let done = partial.lines().count();
        assert!(done < self.records, "the job should have stopped early");
        assert!(
            self.want.stdout_str().starts_with(&partial),
            "not an ordered prefix"
        );
        done
    }

    /// `resumed`, the same job run again after `done` records, completed
    /// the output: it is the local backend's.
    fn assert_completed(&self, resumed: &Output, done: usize) {
        resumed.assert_code(0);
        assert!(
            resumed
                .stderr
                .contains(&format!("resumed after {done} records")),
            "{}",
            resumed.stderr
        );
        self.assert_complete();
    }

    fn assert_complete(&self) {
        assert_eq!(
            std::fs::read_to_string(&self.out).unwrap(),
            self.want.stdout_str()
        );
    }
}

/// A rank that goes silent (SIGSTOP) is noticed by the heartbeats: the job
/// ends with a clear error, leaves nothing running, and its output is an
/// ordered prefix that `--resume` completes.
#[test]
fn a_stopped_rank_ends_the_job_and_resume_completes_it() {
    stopped_rank(
        mpirun,
        &["sent nothing for 2.0 s", "aborting the MPI job"],
        true,
    );
}

/// The same over local channels: the liveness check asks the kernel, which
/// says the rank is stopped; the job ends the same way.
#[test]
fn a_stopped_rank_on_local_channels_ends_the_job_and_resume_completes_it() {
    stopped_rank(
        |ranks, opts, args| on_one_machine(mpirun(ranks, opts, args)),
        &[
            "sent nothing for 2.0 s; declaring it dead",
            "ending the MPI job: not every worker rank stopped in order",
        ],
        false,
    );
}

/// `says`: what the coordinator's error must say; `named`: the rank is
/// named with its pid and host.
fn stopped_rank(mpirun: impl Fn(usize, &[&str], &[&str]) -> Cmd, says: &[&str], named: bool) {
    let job = Resumable::new(400, "sleep:20", 2);
    let mut run = mpirun(2, &[], &job.args())
        .env("PROCPOOL_MPI_LIVENESS", "2")
        .spawn();
    job.wait_running(&mut run, 2, 20);
    let pids = ready_pids(&run.stderr_now());
    let victim = *pids.iter().next().unwrap();
    send_signal(victim, libc::SIGSTOP);
    let stopped_at = Instant::now();
    // A hang (mpirun not ending) fails at the run's deadline with a report
    // of the processes left (see `util`).
    let stopped = run.wait();
    let ended_in = stopped_at.elapsed();
    assert_eq!(stopped.code(), Some(75), "{}", stopped.stderr);
    assert_transport(&stopped.stderr, !named);
    let who = if named {
        format!("(pid {victim} on")
    } else {
        format!("worker pid={victim} sent nothing")
    };
    assert!(
        stopped.stderr.contains(&who) && says.iter().all(|s| stopped.stderr.contains(s)),
        "{}",
        stopped.stderr
    );
    // The stopped rank, woken by the launcher's SIGCONT, knows the silence
    // was its own (it does not blame the coordinator, nor abort a second time).
    assert!(
        !stopped
            .stderr
            .contains("the coordinator (rank 0) sent nothing"),
        "{}",
        stopped.stderr
    );
    // Liveness (2 s) and the launcher's teardown: seconds, not a deadline.
    assert!(
        ended_in < Duration::from_secs(30),
        "the job took {ended_in:?} to end after the SIGSTOP"
    );
    // Nothing left running (the launcher kills the stopped rank too).
    for pid in pids {
        assert!(
            wait_until(Duration::from_secs(10), || !alive(pid)),
            "rank pid {pid} left running"
        );
    }
    let done = job.assert_stopped_early();
    let resumed = mpirun(2, &[], &job.args()).run();
    job.assert_completed(&resumed, done);
}

/// Over local channels no heartbeat comes from the coordinator: its ranks
/// watch it through `/proc`. One stopped (SIGSTOP) for the liveness timeout
/// ends the job within a bounded time, leaving nothing running, its output
/// an ordered prefix that `--resume` completes, as over MPI.
#[test]
fn a_stopped_coordinator_on_local_channels_ends_the_job_and_resume_completes_it() {
    let job = Resumable::new(400, "sleep:20", 2);
    let mut run = on_one_machine(mpirun(2, &[], &job.args()))
        .env("PROCPOOL_MPI_LIVENESS", "2")
        .spawn();
    job.wait_running(&mut run, 2, 20);
    let stderr = run.stderr_now();
    let coordinator: u32 = stderr
        .lines()
        .find_map(|l| {
            l.split("coordinator pid=")
                .nth(1)?
                .split(':')
                .next()?
                .parse()
                .ok()
        })
        .unwrap();
    let ranks = ready_pids(&stderr);
    send_signal(coordinator, libc::SIGSTOP);
    let stopped_at = Instant::now();
    let ended = run.wait();
    let ended_in = stopped_at.elapsed();
    assert_ne!(ended.code(), Some(0), "{}", ended.stderr);
    assert!(
        ended.stderr.contains(&format!(
            "the coordinator (pid {coordinator}) has been stopped for 2.0 s; this rank ends"
        )),
        "{}",
        ended.stderr
    );
    assert!(
        ended_in < Duration::from_secs(30),
        "the job took {ended_in:?} to end after the SIGSTOP"
    );
    for pid in ranks.into_iter().chain([coordinator]) {
        assert!(
            wait_until(Duration::from_secs(10), || !alive(pid)),
            "pid {pid} left running"
        );
    }
    let done = job.assert_stopped_early();
    let resumed = on_one_machine(mpirun(2, &[], &job.args())).run();
    job.assert_completed(&resumed, done);
}

/// Should a launcher hang again (every rank gone, `mpirun` stuck in its
/// teardown), the harness says so plainly: here a stand-in launcher whose
/// child has exited and is never reaped.
#[test]
fn a_stuck_launcher_is_reported_with_its_unreaped_children() {
    let hung = std::panic::catch_unwind(|| {
        Cmd::new(["-c", "sleep 0 & exec sleep 30"])
            .program("sh")
            .deadline(Duration::from_secs(2))
            .run()
    });
    let message = match hung {
        Ok(out) => panic!("the stand-in launcher ended: {out:?}"),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default(),
    };
    assert!(message.starts_with("hung:"), "{message}");
    assert!(message.contains(" Z sleep "), "{message}");
    assert!(
        message.contains("has exited but was not reaped: sleep itself is stuck"),
        "{message}"
    );
}

#[test]
fn a_rank_crash_ends_the_job_and_resume_continues_it() {
    rank_crash(mpirun, false);
}

#[test]
fn a_rank_crash_on_local_channels_ends_the_job_and_resume_continues_it() {
    rank_crash(
        |ranks, opts, args| on_one_machine(mpirun(ranks, opts, args)),
        true,
    );
}

/// What the coordinator says when its ranks use the local channels.
const LOCAL_CHANNELS: &str = "every rank of this MPI job runs on this machine";

/// Whether the run's log shows the transport it was meant to use.
fn assert_transport(stderr: &str, local_channels: bool) {
    assert_eq!(stderr.contains(LOCAL_CHANNELS), local_channels, "{stderr}");
}

/// `local_channels`: the launch's ranks use the local channels (else MPI).
fn rank_crash(mpirun: impl Fn(usize, &[&str], &[&str]) -> Cmd, local_channels: bool) {
    let job = Resumable::new(600, "sleep:5", 2);
    let mut run = mpirun(2, &[], &job.args()).spawn();
    job.wait_running(&mut run, 2, 50);
    let victim = *ready_pids(&run.stderr_now()).iter().next().unwrap();
    send_signal(victim, libc::SIGKILL);
    let crashed = run.wait();
    assert_ne!(crashed.code(), Some(0), "{}", crashed.stderr);
    assert_transport(&crashed.stderr, local_channels);
    if local_channels {
        // (mpirun's code is the killed rank's, 137; the coordinator's is 75.)
        assert!(
            crashed
                .stderr
                .contains("closed its channel before it was asked to stop"),
            "{}",
            crashed.stderr
        );
    }
    let done = job.assert_stopped_early();
    // Continue the job: the file ends as an uninterrupted run's.
    let resumed = mpirun(2, &[], &job.args()).run();
    job.assert_completed(&resumed, done);
}

/// Recovery without a person: `scripts/mpi-relaunch.sh` relaunches the job
/// with `--resume` after a rank is killed, and the output ends identical to
/// an undisturbed run's.
#[test]
fn the_relaunch_loop_survives_a_rank_killed_and_finishes_identical() {
    relaunch_loop("mpi");
}

#[test]
fn the_relaunch_loop_on_local_channels_survives_a_rank_killed_and_finishes_identical() {
    relaunch_loop("auto");
}

fn relaunch_loop(transport: &str) {
    let job = Resumable::new(600, "sleep:5", 2);
    let (c, w) = (
        bin_str(crate::util::coordinator_bin()),
        bin_str(worker_bin()),
    );
    let mut run = Cmd::new(
        [
            script("mpi-relaunch.sh"),
            "--pause".into(),
            "0".into(),
            "--".into(),
            "mpirun".into(),
            "--oversubscribe".into(),
            "-n".into(),
            "1".into(),
            c,
            "--backend".into(),
            "mpi".into(),
        ]
        .into_iter()
        .chain(job.args().map(String::from))
        .chain([":".into(), "-n".into(), "2".into(), w]),
    )
    .program("bash")
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    .env(TRANSPORT, transport)
    .deadline(Duration::from_secs(120))
    .spawn();
    job.wait_running(&mut run, 2, 50);
    let victim = *ready_pids(&run.stderr_now()).iter().next().unwrap();
    send_signal(victim, libc::SIGKILL);
    let got = run.wait();
    got.assert_code(0);
    assert_transport(&got.stderr, transport == "auto");
    assert!(
        got.stderr.contains("relaunching with --resume"),
        "{}",
        got.stderr
    );
    assert!(got.stderr.contains("resumed after"), "{}", got.stderr);
    job.assert_complete();
}

/// The relaunch loop's watchdog: a launcher still running after everything
/// it started has exited (here a stand-in whose child is an unreaped
/// zombie, as Open MPI 4.1's mpirun stuck in its teardown) is killed, and
/// the attempt counts as failed instead of the loop waiting forever.
#[test]
fn the_relaunch_loop_kills_a_launcher_stuck_after_its_processes_exited() {
    let started = Instant::now();
    let got = Cmd::new([
        script("mpi-relaunch.sh"),
        "--attempts".into(),
        "1".into(),
        "--stuck".into(),
        "1".into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        "sleep 0 & exec sleep 60".into(),
        "stand-in".into(),
        "--resume".into(),
    ])
    .program("bash")
    .deadline(Duration::from_secs(30))
    .run();
    assert_eq!(got.code(), Some(124), "{}", got.stderr);
    assert!(
        got.stderr
            .contains("still running 1 s after every process it started exited"),
        "{}",
        got.stderr
    );
    assert!(got.stderr.contains("giving up"), "{}", got.stderr);
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Two namespace hosts of this test run alone (`scripts/mpi-netns.sh`):
/// unique names and subnet, removed even if the test fails.
struct NetnsHosts {
    id: String,
    a: String,
    b: String,
}

impl NetnsHosts {
    fn up() -> NetnsHosts {
        // Several tests (and runs) at once: let the script pick free IDs.
        for _ in 0..5 {
            let out = std::process::Command::new("bash")
                .arg(script("mpi-netns.sh"))
                .arg("up")
                .output()
                .expect("run scripts/mpi-netns.sh (needs root and iproute2)");
            if !out.status.success() {
                continue;
            }
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let mut lines = text.lines();
            let id = lines.next().unwrap_or_default().to_owned();
            let ips = lines.next().unwrap_or_default();
            let ip = |key: &str| {
                ips.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(key))
                    .unwrap_or_else(|| panic!("mpi-netns.sh printed {text:?}"))
                    .to_owned()
            };
            return NetnsHosts {
                a: ip("A="),
                b: ip("B="),
                id,
            };
        }
        panic!("scripts/mpi-netns.sh up failed five times");
    }

    fn names(&self) -> (String, String) {
        (format!("pp{}a", self.id), format!("pp{}b", self.id))
    }

    /// `mpirun MPIRUN-ARGS` in host A, MPI over the veth pair only.
    fn mpirun(&self, args: &[&str]) -> Cmd {
        Cmd::new(
            [
                script("mpi-netns.sh"),
                "run".into(),
                self.id.clone(),
                "--".into(),
            ]
            .into_iter()
            .chain(args.iter().map(|s| s.to_string())),
        )
        .program("bash")
        .env(TRANSPORT, "mpi")
        .deadline(Duration::from_secs(120))
    }

    fn script(&self, command: &str) -> String {
        let out = std::process::Command::new("bash")
            .args([script("mpi-netns.sh"), command.into(), self.id.clone()])
            .output()
            .expect("run scripts/mpi-netns.sh");
        assert!(out.status.success(), "mpi-netns.sh {command} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .args([script("mpi-netns.sh"), "down".into(), self.id.clone()])
            .status();
    }
}

fn script(name: &str) -> String {
    format!("{}/../../scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Over TCP on one host that has nothing but loopback and its own veth
/// pair (Open MPI's TCP transport leaves out 127/8): the same output.
#[test]
fn tcp_on_a_host_with_only_loopback_and_its_own_veth() {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..100_000).map(|n| (n, ""))),
    );
    let want = local(&["--task", "fault", "--input", &input, "--workers", "3"]);
    want.assert_code(0);
    let hosts = NetnsHosts::up();
    let (c, w) = (
        bin_str(crate::util::coordinator_bin()),
        bin_str(worker_bin()),
    );
    let a3 = format!("{}:3", hosts.a);
    let got = hosts
        .mpirun(&[
            "-n",
            "1",
            "--host",
            &hosts.a,
            &c,
            "--backend",
            "mpi",
            "--task",
            "fault",
            "--input",
            &input,
            ":",
            "-n",
            "3",
            "--host",
            &a3,
            &w,
        ])
        .run();
    got.assert_code(0);
    assert_same_output(
        got.stdout_str(),
        want.stdout_str(),
        "against the local backend",
    );
    let (ns_a, _) = hosts.names();
    assert_eq!(
        got.stderr.matches(&format!("on {ns_a} ready")).count(),
        3,
        "{}",
        got.stderr
    );
}

/// Two hosts (network namespaces with their own addresses and host names)
/// joined by a veth pair; coordinator and one worker on A, two workers
/// on B, MPI over TCP between them.
#[test]
fn across_two_namespace_hosts_over_tcp() {
    let dir = tempdir();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        fault_input((0..100_000).map(|n| (n, ""))),
    );
    let want = local(&["--task", "fault", "--input", &input, "--workers", "3"]);
    want.assert_code(0);
    let hosts = NetnsHosts::up();
    let (c, w) = (
        bin_str(crate::util::coordinator_bin()),
        bin_str(worker_bin()),
    );
    let b2 = format!("{}:2", hosts.b);
    let demo_want = local(&["--workers", "3", "--work-ms", "50", "--year", "2024"]);
    for (args, want) in [
        (vec!["--work-ms", "50", "--year", "2024"], &demo_want),
        (vec!["--task", "fault", "--input", input.as_str()], &want),
    ] {
        let mut all = vec!["-n", "1", "--host", &hosts.a, &c, "--backend", "mpi"];
        all.extend(args.iter().copied());
        all.extend([
            ":", "-n", "1", "--host", &hosts.a, &w, ":", "-n", "2", "--host", &b2, &w,
        ]);
        let got = hosts.mpirun(&all).run();
        got.assert_code(0);
        assert_same_output(
            got.stdout_str(),
            want.stdout_str(),
            "against the local backend",
        );
        let (ns_a, ns_b) = hosts.names();
        for host in [ns_a, ns_b] {
            assert!(
                got.stderr.contains(&format!("on {host} ready")),
                "{}",
                got.stderr
            );
        }
    }
}

/// A network partition mid-run: host B's link goes down. The heartbeats
/// notice, the job ends with a clear error, nothing is left running in
/// either host, and `--resume` completes the output.
#[test]
fn a_partition_ends_the_job_and_resume_completes_it() {
    let job = Resumable::new(1_000, "sleep:20", 3);
    let hosts = NetnsHosts::up();
    let (c, w) = (
        bin_str(crate::util::coordinator_bin()),
        bin_str(worker_bin()),
    );
    let b2 = format!("{}:2", hosts.b);
    let mut all = vec![
        "-x",
        "PROCPOOL_MPI_LIVENESS",
        "-n",
        "1",
        "--host",
        &hosts.a,
        &c,
        "--backend",
        "mpi",
    ];
    all.extend(job.args());
    all.extend([
        ":", "-n", "1", "--host", &hosts.a, &w, ":", "-n", "2", "--host", &b2, &w,
    ]);
    let mut run = hosts.mpirun(&all).env("PROCPOOL_MPI_LIVENESS", "3").spawn();
    job.wait_running(&mut run, 3, 50);
    hosts.script("cut");
    let cut = run.wait();
    assert_ne!(cut.code(), Some(0), "{}", cut.stderr);
    let (_, ns_b) = hosts.names();
    assert!(
        cut.stderr
            .contains(&format!("on {ns_b}) sent nothing for 3.0 s")),
        "{}",
        cut.stderr
    );
    // Open MPI's daemons end too once their links time out.
    assert!(
        wait_until(Duration::from_secs(30), || hosts
            .script("pids")
            .trim()
            .is_empty()),
        "left running: {}",
        hosts.script("pids")
    );
    let done = job.assert_stopped_early();
    let resumed = mpirun(3, &[], &job.args()).run();
    job.assert_completed(&resumed, done);
}
