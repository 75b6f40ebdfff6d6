//! A run: input reader thread -> pool -> ordered output, with signals,
//! failure policy and resume.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use log::{error, info, warn};
use procpool::{Done, PoolBuilder, PoolError, RecordError, Task};
use procpool_tasks::{Age, Fault, Locked, Primes};
use serde::Serialize;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cli::{Backend, Executor, RunArgs, WorkerArgs};
use crate::input::{BadRecord, RecordReader};
use crate::output::{Output, OutputSpec};
use crate::report::{open_joblog, JobEntry, Stats};
use crate::threads::ThreadMap;

/// Tasks the command line can feed (it must know their input and output types).
pub const CLI_TASKS: &[&str] = &["age", "primes", "locked", "fault"];

/// The current year, for `age`'s default.
fn current_year() -> i32 {
    let now = humantime::format_rfc3339(std::time::SystemTime::now()).to_string();
    now.get(..4).and_then(|y| y.parse().ok()).unwrap_or(2026)
}

pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    // Before anything is opened for writing.
    crate::paths::check_distinct(&crate::paths::of_run(args))?;
    if let Some(p) = &args.stats_json {
        crate::paths::check_writable("--stats-json", p)?;
    }
    let demo = args.input.is_none();
    if !CLI_TASKS.contains(&args.task.as_str()) {
        bail!(
            "unknown task `{}`; the coordinator can run: {} (`coordinator tasks` lists what the worker binary offers)",
            args.task,
            CLI_TASKS.join(", ")
        );
    }
    match args.task.as_str() {
        "age" => {
            let task = Age {
                year: args.year.unwrap_or_else(current_year),
                work_ms: args.work_ms.unwrap_or(if demo { 1000 } else { 0 }),
            };
            run_task(args, task)
        }
        other if demo => bail!("task `{other}` needs --input (the built-in data set is for `age`)"),
        "primes" => run_task(args, Primes),
        "locked" => run_task(args, Locked),
        "fault" => run_task(args, Fault),
        other => unreachable!("task {other} is in CLI_TASKS but not dispatched"),
    }
}

/// Workers as MPI ranks: the other ranks of this MPI job, or, with
/// `--workers N` and no other ranks, N ranks spawned with `MPI_Comm_spawn`.
#[cfg(feature = "mpi")]
fn use_mpi(builder: PoolBuilder, args: &RunArgs) -> anyhow::Result<PoolBuilder> {
    match args.workers {
        Some(n) => Ok(builder
            .worker_bin(worker_bin(&args.worker)?)
            .mpi_spawn(n)),
        None if procpool::mpi::launched_by_mpi() => Ok(builder.mpi()),
        None => bail!(
            "--backend mpi: this coordinator was not started by an MPI launcher and has no --workers to spawn; run it as rank 0 with its workers (`mpirun -n 1 coordinator --backend mpi ... : -n 3 worker`), or let it spawn them (`coordinator --backend mpi --workers 3`)"
        ),
    }
}

#[cfg(not(feature = "mpi"))]
fn use_mpi(_builder: PoolBuilder, _args: &RunArgs) -> anyhow::Result<PoolBuilder> {
    bail!(
        "--backend mpi: this coordinator was built without MPI support; rebuild with `cargo build --release -p procpool-coordinator -p procpool-worker-bin --features procpool-coordinator/mpi,procpool-worker-bin/mpi`"
    )
}

/// The worker binary to use: `--worker-bin`, else `worker` next to this
/// executable, else this executable itself (it serves the same tasks; see
/// `procpool::init` in `main`), with a message that says how to get it.
fn worker_bin(args: &WorkerArgs) -> anyhow::Result<PathBuf> {
    let path = match &args.worker_bin {
        Some(path) => path.clone(),
        None => {
            let exe = std::env::current_exe()?;
            let sibling = exe.with_file_name("worker");
            if sibling.is_file() {
                sibling
            } else {
                exe
            }
        }
    };
    if !path.exists() {
        bail!(
            "worker binary not found at {}: build it with `cargo build --release --workspace` \
             (the coordinator looks for `worker` next to its own executable, and serves as its \
             own worker without one), or pass --worker-bin PATH",
            path.display()
        );
    }
    Ok(path)
}

fn explain(e: PoolError) -> anyhow::Error {
    match e {
        PoolError::WorkerBinNotExecutable { path } => anyhow!(
            "worker binary {} is not executable (chmod +x it, or pass another --worker-bin)",
            path.display()
        ),
        other => anyhow::Error::new(other),
    }
}

pub fn list_tasks(worker: &WorkerArgs) -> anyhow::Result<ExitCode> {
    let bin = worker_bin(worker)?;
    let tasks = PoolBuilder::new()
        .worker_bin(&bin)
        .probe()
        .map_err(explain)?;
    println!("Tasks offered by {}:", bin.display());
    for t in tasks {
        println!("\n  {}  {}", t.name, t.description);
        println!("      input:  {{{}}}", t.input_fields.join(", "));
        println!("      output: {{{}}}", t.output_fields.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// Counts kept by the input thread.
#[derive(Default)]
struct InputCounts {
    skipped_bad: AtomicU64,
}

/// The progress display: a bar on a terminal, periodic log lines with
/// `--progress` elsewhere, nothing otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    every: Option<(Instant, Duration)>,
    started: Instant,
}

impl Progress {
    fn new(args: &RunArgs, multi: &MultiProgress, total: Option<u64>) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let started = Instant::now();
        if args.no_progress || !(terminal || args.progress) {
            return Progress {
                bar: None,
                every: None,
                started,
            };
        }
        if !terminal {
            return Progress {
                bar: None,
                every: Some((started, Duration::from_secs(2))),
                started,
            };
        }
        let bar = multi.add(ProgressBar::no_length());
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} records ({per_sec}, ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        if let Some(t) = total {
            bar.set_length(t);
        }
        Progress {
            bar: Some(bar),
            every: None,
            started,
        }
    }

    fn tick(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        } else if let Some((last, every)) = &mut self.every {
            if last.elapsed() >= *every {
                *last = Instant::now();
                let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
                info!("progress: {done} records, {rate:.0} records/s");
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Records in an input file, counted on a thread for the progress bar's ETA.
fn count_records_in_background(path: Option<&str>, bar: Option<ProgressBar>) {
    let (Some(path), Some(bar)) = (path, bar) else {
        return;
    };
    if path == "-" {
        return;
    }
    let path = path.to_owned();
    let _ = thread::Builder::new().name("count".into()).spawn(move || {
        use std::io::Read;
        let Ok(mut f) = std::fs::File::open(&path) else {
            return;
        };
        let mut buf = vec![0u8; 1 << 20];
        let (mut lines, mut last) = (0u64, b'\n');
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
            last = buf[n - 1];
        }
        if last != b'\n' {
            lines += 1;
        }
        let csv = path.ends_with(".csv");
        bar.set_length(lines.saturating_sub(u64::from(csv)));
    });
}

fn run_task<T: Task>(args: &RunArgs, task: T) -> anyhow::Result<ExitCode>
where
    T::Output: Serialize,
{
    let started = Instant::now();
    let resume = crate::resume::plan(
        args.output.as_deref(),
        args.resume,
        args.input.as_deref(),
        T::NAME,
        serde_json::to_value(&task)?,
    )?;
    let resume_from = resume.skip;
    let reader: RecordReader<T::Input> = match &args.input {
        None => RecordReader::demo(args.max_record_bytes),
        Some(path) => RecordReader::open(path, args.max_record_bytes)?,
    };
    log::debug!(
        "reading {:?} records from {}",
        reader.format(),
        reader.source()
    );
    let workers = args
        .workers
        .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()));
    if workers == 0 {
        bail!("--workers must be at least 1");
    }
    let multi = crate::MULTI.get().cloned().unwrap_or_default();
    // The built-in data set's size is known; a file's is counted on the side.
    let demo_records = || crate::input::DEMO_CSV.lines().skip(1).count() as u64;
    let mut progress = Progress::new(args, &multi, args.input.is_none().then(demo_records));
    count_records_in_background(args.input.as_deref(), progress.bar.clone());

    let mut workers = workers;
    let (pool, thread_task) = match args.executor {
        Executor::Process => {
            let mut builder = PoolBuilder::new()
                .workers(workers)
                .in_flight(args.in_flight)
                .retries(args.retries)
                .shutdown_grace(args.grace);
            builder = match args.backend {
                Backend::Local => builder.worker_bin(worker_bin(&args.worker)?),
                Backend::Mpi => use_mpi(builder, args)?,
            };
            if let Some(n) = args.chunksize {
                builder = builder.chunk_size(n);
            }
            if let Some(t) = args.timeout {
                builder = builder.record_timeout(t);
            }
            if let Some(n) = args.max_tasks_per_child {
                builder = builder.max_tasks_per_child(n);
            }
            if progress.bar.is_some() {
                // Worker lines go above the bar, never through it.
                let multi = multi.clone();
                builder = builder.worker_output(move |_pid, line| {
                    multi.suspend(|| eprintln!("{line}"));
                });
            }
            let pool = builder.build(task).map_err(explain)?;
            workers = pool.workers();
            info!(
                "{} workers ready (pids {:?}) in {:.3} s",
                workers,
                pool.pids(),
                started.elapsed().as_secs_f64()
            );
            (Some(pool), None)
        }
        Executor::Thread => {
            if args.backend == Backend::Mpi {
                bail!(
                    "--backend mpi runs worker processes: it cannot be used with --executor thread"
                );
            }
            if args.timeout.is_some() || args.max_tasks_per_child.is_some() {
                bail!("--timeout and --max-tasks-per-child need worker processes (--executor process)");
            }
            info!(
                "running `{}` on {workers} threads inside the coordinator",
                T::NAME
            );
            (None, Some(task))
        }
    };
    let canceller = pool.as_ref().map(|p| p.canceller());

    // Signals: the first stops dispatching and lets records in flight finish
    // within the grace period; the second kills at once.
    let signal = Arc::new(AtomicI32::new(0));
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    let signals_handle = signals.handle();
    {
        let signal = signal.clone();
        let canceller = canceller.clone();
        let mpi = args.backend == Backend::Mpi;
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if mpi && sig == SIGTERM {
                        #[cfg(feature = "mpi")]
                        procpool::mpi::end_job();
                        warn!(
                            "SIGTERM under MPI: the launcher is ending the job (usually because a rank failed; see its message); the output keeps every complete record in order, and `--resume` continues the job"
                        );
                    }
                    if signal.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                        warn!(
                            "{}: finishing records in flight, then stopping (again to stop at once)",
                            signal_hook::low_level::signal_name(sig).unwrap_or("signal")
                        );
                    } else {
                        warn!("{}: stopping now", signal_hook::low_level::signal_name(sig).unwrap_or("signal"));
                        if canceller.is_none() {
                            std::process::exit(128 + sig);
                        }
                    }
                    if let Some(c) = &canceller {
                        c.cancel();
                    }
                }
            })?;
    }

    // Input is parsed on its own thread, in slices, ahead of the pool.
    let counts = Arc::new(InputCounts::default());
    let (tx, rx) = sync_channel::<Vec<Result<T::Input, BadRecord>>>(8);
    {
        let counts = counts.clone();
        let skip_bad = args.skip_bad_input;
        thread::Builder::new().name("input".into()).spawn(move || {
            let mut to_skip = resume_from;
            let mut slice = Vec::with_capacity(256);
            for item in reader {
                match item {
                    Ok(_) if to_skip > 0 => to_skip -= 1,
                    Ok(record) => slice.push(Ok(record)),
                    Err(bad) if skip_bad => {
                        warn!("skipping bad input: {bad}");
                        counts.skipped_bad.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(bad) => {
                        slice.push(Err(bad));
                        break;
                    }
                }
                if slice.len() == 256 && tx.send(std::mem::take(&mut slice)).is_err() {
                    return;
                }
            }
            let _ = tx.send(slice);
        })?;
    }
    let bad_input: Rc<RefCell<Option<BadRecord>>> = Rc::default();
    let stop_input = Rc::new(std::cell::Cell::new(false));
    let inputs = {
        let bad_input = bad_input.clone();
        let stop_input = stop_input.clone();
        let signal = signal.clone();
        rx.into_iter().flatten().map_while(move |item| {
            // Threads cannot be cancelled: stop feeding them instead.
            if stop_input.get() || signal.load(Ordering::Relaxed) != 0 {
                return None;
            }
            match item {
                Ok(record) => Some(record),
                Err(bad) => {
                    *bad_input.borrow_mut() = Some(bad);
                    None
                }
            }
        })
    };
    let mut thread_stats = None;
    let results: Box<dyn Iterator<Item = Done<T::Output>> + '_> = match (&pool, thread_task) {
        (Some(pool), _) => Box::new(pool.map_detailed(inputs)),
        (None, Some(task)) => {
            let map = ThreadMap::new(task, workers, inputs)?;
            thread_stats = Some(map.stats_handle());
            Box::new(map)
        }
        (None, None) => bail!("no executor"),
    };

    let joblog = match &args.joblog {
        Some(p) => Some((
            p.clone(),
            open_joblog(p, args.resume.then_some(resume_from))?,
        )),
        None => None,
    };
    let mut out = Output::open(OutputSpec {
        path: args.output.as_deref(),
        append: args.resume,
        joblog,
        sidecar: resume.sidecar,
    })?;
    let mut records = 0u64;
    let mut failures: Vec<(u64, RecordError)> = Vec::new();
    let mut stopped_early = false;
    for done in results {
        let seq = resume_from + done.seq;
        if matches!(done.result, Err(RecordError::Cancelled)) {
            stopped_early = true;
            break;
        }
        let entry = JobEntry::new(
            seq,
            done.pid.unwrap_or(0),
            done.started_us.unwrap_or(0),
            done.duration,
            done.result.as_ref().map(|_| ()),
        );
        match done.result {
            Ok(value) => out.ok(&value, entry)?,
            Err(e) => {
                out.failed(seq, &e, entry)?;
                error!("record #{seq} failed: {e}");
                failures.push((seq, e));
                if args.fail_fast {
                    records += 1;
                    stopped_early = true;
                    stop_input.set(true);
                    if let Some(c) = &canceller {
                        c.cancel();
                        c.cancel();
                    }
                    break;
                }
            }
        }
        records += 1;
        progress.tick(records);
    }
    progress.finish();
    out.flush()?;
    let stats = pool.map(|p| p.shutdown()).unwrap_or_default();
    signals_handle.close();

    let skipped = counts.skipped_bad.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    let report = match &thread_stats {
        Some(handle) => {
            let threads: Vec<_> = handle
                .iter()
                .map(|m| m.lock().map(|s| s.clone()).unwrap_or_default())
                .collect();
            Stats::threads(&threads, records, elapsed)
        }
        None => Stats::new(&stats, records, elapsed, &args.executor.to_string()),
    };
    if args.stats {
        multi.suspend(|| eprint!("{}", report.table()));
    }
    if let Some(path) = &args.stats_json {
        report.write_json(path)?;
    }
    let mut summary = format!(
        "done: {records} records, {} failed, with {workers} {} in {:.3} s",
        failures.len(),
        match args.executor {
            Executor::Process => format!("workers ({} processes in all)", stats.len()),
            Executor::Thread => "threads".to_string(),
        },
        elapsed.as_secs_f64()
    );
    if skipped > 0 {
        summary.push_str(&format!("; {skipped} bad input records skipped"));
    }
    if resume_from > 0 {
        summary.push_str(&format!("; resumed after {resume_from} records"));
    }
    info!("{summary}");
    if !failures.is_empty() {
        let shown: Vec<String> = failures
            .iter()
            .take(10)
            .map(|(seq, e)| format!("#{seq}: {e}"))
            .collect();
        let more = failures.len().saturating_sub(10);
        warn!(
            "{} records failed: {}{}",
            failures.len(),
            shown.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        );
    }

    let sig = signal.load(Ordering::SeqCst);
    if sig != 0 {
        warn!(
            "interrupted by {}: output holds the first {} records in order",
            signal_hook::low_level::signal_name(sig).unwrap_or("signal"),
            resume_from + records
        );
        return Ok(ExitCode::from(128 + sig as u8));
    }
    if let Some(bad) = bad_input.borrow_mut().take() {
        bail!("{bad} (use --skip-bad-input to skip such records)");
    }
    if stopped_early && failures.is_empty() {
        bail!("the run stopped before every record was processed");
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
