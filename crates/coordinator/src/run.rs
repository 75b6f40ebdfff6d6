//! A run: a plan validated up front, then small steps: start the pool, feed
//! the input from a thread of its own, drain the ordered results into the
//! output, report.
//!
//! The coordinator never decodes records: the input is split into records
//! ([`crate::input`]), their bytes go to the workers, which decode them into
//! the task's input and answer JSON, and those bytes are written out in input
//! order. So any task a worker binary registers runs from here.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use log::{error, info, warn};
use procpool::raw::{Feed, RawPool, RawSource};
use procpool::Outcome;
use procpool::{
    Canceller, Encoding, ParamsEncoding, PoolBuilder, PoolError, RecordError, TaskSpec,
};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cli::{Backend, Executor, InputFormat, RunArgs, WorkerArgs};
use crate::input::{BadRecord, Block, Format, Item, Splitter};
use crate::output::{Output, OutputSpec};
use crate::report::{open_joblog, JobEntry, Stats, ThreadStats};
use crate::resume::{Patch, Resume, Selection, Sidecar};

/// The task the built-in data set is for.
const DEMO_TASK: &str = "age";

/// Blocks of records read ahead of the pool.
const BLOCKS_AHEAD: usize = 4;

pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // On one machine, the worker ranks wait for this coordinator from now
    // on, however long it prepares (e.g. reads a large output to resume).
    let _announced = (args.backend == Backend::Mpi)
        .then(procpool::worker::node::announce)
        .flatten();
    let mut plan = Plan::new(args)?;
    if !plan.mpi() {
        // Forked while this process is small: before the input is read.
        procpool::prepare().map_err(explain)?;
    }
    let (blocks_tx, blocks_rx) = sync_channel::<Feeding>(BLOCKS_AHEAD);
    let signals = SignalWatch::start(blocks_tx.clone(), plan.mpi())?;
    let (recycle_tx, recycle_rx) = std::sync::mpsc::channel::<Block>();
    start_input(&plan, blocks_tx, recycle_rx)?;
    let Some(opened) = wait_opened(&blocks_rx, &signals)? else {
        let signal = signals.signal.load(Ordering::SeqCst);
        warn!(
            "interrupted by {} before the input could be read: nothing was run",
            signal_hook::low_level::signal_name(signal).unwrap_or("signal")
        );
        return Ok(ExitCode::from(128 + signal as u8));
    };
    let mut settings = Settings {
        args,
        source: opened.source,
        executor: plan.executor,
        workers: plan.workers,
        resume_from: plan.resume_from,
        selection: plan.selection.clone(),
    };
    let multi = crate::MULTI.get().cloned().unwrap_or_default();
    // The built-in data set's size is known; a file's is counted on the side.
    let demo_records = || crate::input::DEMO_CSV.lines().skip(1).count() as u64;
    let mut progress = Progress::new(args, &multi, args.input.is_none().then(demo_records));
    count_records_in_background(args.input.as_deref(), progress.bar.clone());

    let pool = plan.start_pool(opened.records, &multi, progress.bar.is_some())?;
    if matches!(plan.executor, Executor::Process) {
        // The pool decides under MPI (the job's ranks), not --workers.
        settings.workers = pool.workers();
    }
    info!(
        "{} ready (pids {:?}) in {:.3} s",
        match plan.executor {
            Executor::Process => format!("{} workers", pool.workers()),
            Executor::Thread => format!("{} threads in one worker process", plan.workers),
        },
        pool.pids(),
        started.elapsed().as_secs_f64()
    );
    signals.arm(pool.canceller());
    let feeder = Feeder::new(
        blocks_rx,
        recycle_tx,
        plan.selection.clone(),
        signals.signal.clone(),
    );
    let (drained, out) = drain(
        &settings,
        &pool,
        feeder,
        (plan.sidecar.take(), plan.patch.take()),
        &mut progress,
    )?;
    progress.finish();
    // Everything is written out. Closing a large file can take milliseconds
    // (the file system may start writing it to disk): beside the workers'
    // ending rather than before it.
    let closing = thread::Builder::new()
        .name("output-close".into())
        .spawn(move || drop(out));
    let stats = pool.shutdown();
    if let Ok(closing) = closing {
        let _ = closing.join();
    }
    signals.handle.close();
    report(&settings, &drained, &stats, started.elapsed(), &multi)?;
    let signal = signals.signal.load(Ordering::SeqCst);
    if signal != 0 {
        let name = signal_hook::low_level::signal_name(signal).unwrap_or("signal");
        let lines = plan.resume_from + drained.records;
        match drained.last_seq.filter(|_| drained.skipped > 0) {
            // Skipped records leave no line: say what the lines cover.
            Some(last) => warn!(
                "interrupted by {name}: output holds {lines} lines in order, for the input up \
                 to record #{last} ({} bad input records skipped)",
                drained.skipped
            ),
            None => warn!("interrupted by {name}: output holds the first {lines} records in order"),
        }
    }
    drained.exit_code(signal)
}

/// What the steps after the plan need of the arguments.
struct Settings<'a> {
    args: &'a RunArgs,
    source: String,
    executor: Executor,
    workers: usize,
    resume_from: u64,
    selection: Selection,
}

/// Everything about a run that can be checked before anything starts.
struct Plan<'a> {
    args: &'a RunArgs,
    /// The input's format if the command line says it.
    format: Option<Format>,
    params: Vec<u8>,
    executor: Executor,
    workers: usize,
    resume_from: u64,
    /// The input records this run processes (all but those resumed after).
    selection: Selection,
    /// What lets a later `--resume` recognise this run.
    sidecar: Option<Sidecar>,
    /// `--resume-failed`: the output whose failed lines are replaced.
    patch: Option<Patch>,
}

impl<'a> Plan<'a> {
    fn new(args: &'a RunArgs) -> anyhow::Result<Plan<'a>> {
        // A record travels in one message of at most 64 MiB.
        let max_record = procpool_protocol::MAX_RECORD_BYTES - 1024;
        if args.max_record_bytes > max_record {
            bail!(
                "--max-record-bytes {} is over the largest record the pool can carry ({max_record} bytes: a record travels in one message of at most 64 MiB)",
                args.max_record_bytes
            );
        }
        // Before anything is opened for writing.
        crate::paths::check_distinct(&crate::paths::of_run(args))?;
        if let Some(p) = &args.stats_json {
            crate::paths::check_writable("--stats-json", p)?;
        }
        let demo = args.input.is_none();
        if demo && args.task != DEMO_TASK {
            bail!(
                "task `{}` needs --input (the built-in data set is for `{DEMO_TASK}`)",
                args.task
            );
        }
        let workers = args
            .workers
            .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()));
        if workers == 0 {
            bail!("--workers must be at least 1");
        }
        if args.executor == Executor::Thread {
            if args.backend == Backend::Mpi {
                bail!(
                    "--backend mpi runs worker processes: it cannot be used with --executor thread"
                );
            }
            if args.timeout.is_some() || args.max_tasks_per_child.is_some() {
                bail!("--timeout and --max-tasks-per-child need worker processes of their own (--executor process): on threads they would kill every thread's records");
            }
        }
        let params = task_params(args, demo)?;
        let resume = crate::resume::plan(
            args.output.as_deref(),
            match (args.resume, args.resume_failed) {
                (_, true) => Resume::AndFailed,
                (true, false) => Resume::After,
                (false, false) => Resume::No,
            },
            args.input.as_deref(),
            &args.task,
            serde_json::from_slice(&params)?,
        )?;
        let format = match args.format {
            InputFormat::Auto => None,
            InputFormat::Jsonl => Some(Format::JsonLines),
            InputFormat::Csv => Some(Format::Csv),
        };
        Ok(Plan {
            args,
            format,
            params,
            executor: args.executor,
            workers,
            resume_from: resume.skip,
            selection: resume.selection,
            sidecar: resume.sidecar,
            patch: resume.patch,
        })
    }

    fn mpi(&self) -> bool {
        self.args.backend == Backend::Mpi
    }

    /// Start the workers: N processes, or one process of N threads.
    fn start_pool(
        &self,
        records: Encoding,
        multi: &MultiProgress,
        bar: bool,
    ) -> anyhow::Result<RawPool> {
        let args = self.args;
        let in_flight = args.in_flight.unwrap_or(match args.backend {
            Backend::Local => LOCAL_IN_FLIGHT,
            Backend::Mpi => mpi_in_flight(),
        });
        let mut builder = PoolBuilder::new()
            .in_flight(in_flight)
            .retries(args.retries)
            .shutdown_grace(args.grace);
        builder = match self.executor {
            Executor::Process => builder.workers(self.workers),
            Executor::Thread => builder.workers(1).threads_per_worker(self.workers),
        };
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
        // Each record's time goes to the job log and to the thread
        // executor's per-thread statistics, and nowhere else.
        builder = builder
            .record_times(args.joblog.is_some() || matches!(self.executor, Executor::Thread));
        if let Some(n) = args.max_tasks_per_child {
            builder = builder.max_tasks_per_child(n);
        }
        if bar {
            // Worker lines go above the bar, never through it.
            let multi = multi.clone();
            builder = builder.worker_output(move |_pid, line| {
                multi.suspend(|| eprintln!("{line}"));
            });
        } else {
            // Our stderr is the user's: workers write their lines there
            // themselves (their logger's format is ours).
            builder = builder.inherit_worker_output();
        }
        builder
            .build_raw(TaskSpec {
                name: args.task.clone(),
                params: self.params.clone(),
                params_encoding: ParamsEncoding::Json,
                records,
                threads: 1,
            })
            .map_err(explain)
    }
}

/// The task value as a JSON object: `--params`, then each `--param`, then
/// the built-in tasks' `--year` and `--work-ms`.
fn task_params(args: &RunArgs, demo: bool) -> anyhow::Result<Vec<u8>> {
    use serde_json::{Map, Value};
    let mut map: Map<String, Value> = match &args.params {
        None => Map::new(),
        Some(text) => serde_json::from_str(text)
            .with_context(|| format!("--params must be a JSON object, not `{text}`"))?,
    };
    for pair in &args.param {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--param takes KEY=VALUE, not `{pair}`");
        };
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
        map.insert(key.trim().to_owned(), value);
    }
    if let Some(year) = args.year {
        map.insert("year".into(), year.into());
    }
    match args.work_ms {
        Some(ms) => {
            map.insert("work_ms".into(), ms.into());
        }
        // The demo stands for heavy work: a second per record.
        None if demo => {
            map.entry("work_ms").or_insert(1000.into());
        }
        None => {}
    }
    Ok(serde_json::to_vec(&Value::Object(map))?)
}

/// The input, once open: its name and how its records are encoded.
struct Opened {
    source: String,
    records: Encoding,
}

/// What goes from the input thread to the pool's feed.
enum Feeding {
    /// The input is open (or cannot be read); comes first.
    Opened(anyhow::Result<Opened>),
    Block(Block),
    /// The end of the input.
    End,
    /// Look at the signal flag (sent by the signal thread).
    Wake,
}

/// Ctrl-C and SIGTERM: the first stops reading input and dispatching, and
/// lets records in flight finish within the grace period; the second kills
/// at once. The signal thread also wakes the feed, which may be waiting for
/// a stalled input.
struct SignalWatch {
    signal: Arc<AtomicI32>,
    handle: signal_hook::iterator::Handle,
    /// The pool's canceller, once the pool runs.
    canceller: Arc<Mutex<Option<Canceller>>>,
}

impl SignalWatch {
    fn start(wake: SyncSender<Feeding>, mpi: bool) -> anyhow::Result<Self> {
        let signal = Arc::new(AtomicI32::new(0));
        let canceller: Arc<Mutex<Option<Canceller>>> = Arc::default();
        let pool = canceller.clone();
        let mut signals =
            Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
        let handle = signals.handle();
        let flag = signal.clone();
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
                    if flag.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                        warn!(
                            "{}: finishing records in flight, then stopping (again to stop at once)",
                            signal_hook::low_level::signal_name(sig).unwrap_or("signal")
                        );
                    } else {
                        warn!("{}: stopping now", signal_hook::low_level::signal_name(sig).unwrap_or("signal"));
                    }
                    // A full queue means the feed is not waiting: it sees the flag.
                    let _ = wake.try_send(Feeding::Wake);
                    if let Some(c) = pool.lock().ok().as_ref().and_then(|c| c.as_ref()) {
                        c.cancel();
                    }
                }
            })?;
        Ok(SignalWatch {
            signal,
            handle,
            canceller,
        })
    }

    /// Signals now cancel the pool's work (at once, if one came already).
    fn arm(&self, canceller: Canceller) {
        if self.signal.load(Ordering::SeqCst) != 0 {
            canceller.cancel();
        }
        if let Ok(mut slot) = self.canceller.lock() {
            *slot = Some(canceller);
        }
    }
}

/// The pool's source of records: blocks cut by the input thread. It keeps
/// the line of every record handed out, for messages about it, and stops at
/// a signal or when the run stops early.
struct Feeder {
    rx: Receiver<Feeding>,
    /// Blocks whose records were all handed out go back to the input thread.
    recycle: Sender<Block>,
    block: Block,
    next: usize,
    /// Which records to send, by input position; `index` is the next one's.
    selection: Selection,
    index: u64,
    lines: Rc<RefCell<LineQueue>>,
    /// Bytes and records of the current [`Item::Lines`] handed out.
    within: (usize, u64),
    halt: Rc<Cell<bool>>,
    signal: Arc<AtomicI32>,
}

/// Open the input, read its CSV header, then cut it into blocks, all on a
/// thread of its own: the main thread never waits on the input itself, only
/// on a channel that a signal can wake (an idle pipe, `tail -f`, /dev/zero).
fn start_input(
    plan: &Plan<'_>,
    tx: SyncSender<Feeding>,
    recycled: Receiver<Block>,
) -> anyhow::Result<()> {
    let (path, format, limit) = (
        plan.args.input.clone(),
        plan.format,
        plan.args.max_record_bytes,
    );
    thread::Builder::new()
        .name("input".into())
        .spawn(move || {
            let opened = (|| -> anyhow::Result<(Splitter, Opened)> {
                let mut splitter = match &path {
                    None => Splitter::demo(limit),
                    Some(path) => Splitter::open(path, format, limit)?,
                };
                let records = match splitter.format() {
                    Format::JsonLines => {
                        // Runs of lines travel whole (`Feed::Lines`).
                        splitter.lines_together();
                        Encoding::Json
                    }
                    Format::Csv => Encoding::Csv {
                        header: splitter
                            .header()
                            .map_err(|bad| anyhow!("{bad} (the CSV header cannot be read)"))?
                            .unwrap_or_default(),
                    },
                };
                log::debug!(
                    "reading {:?} records from {}",
                    splitter.format(),
                    splitter.source()
                );
                splitter.recycle_from(recycled);
                let source = splitter.source().to_owned();
                Ok((splitter, Opened { source, records }))
            })();
            let mut splitter = match opened {
                Ok((splitter, opened)) => {
                    if tx.send(Feeding::Opened(Ok(opened))).is_err() {
                        return;
                    }
                    splitter
                }
                Err(e) => {
                    let _ = tx.send(Feeding::Opened(Err(e)));
                    return;
                }
            };
            while let Some(block) = splitter.next_block() {
                if tx.send(Feeding::Block(block)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Feeding::End);
        })
        .context("cannot start the input thread")?;
    Ok(())
}

/// Wait for the input to be open; `None` if a signal came first.
fn wait_opened(rx: &Receiver<Feeding>, signals: &SignalWatch) -> anyhow::Result<Option<Opened>> {
    loop {
        match rx.recv() {
            Ok(Feeding::Opened(opened)) => return opened.map(Some),
            Ok(Feeding::Wake) if signals.signal.load(Ordering::SeqCst) != 0 => return Ok(None),
            Ok(Feeding::Wake) => {}
            Ok(Feeding::Block(_) | Feeding::End) | Err(_) => {
                bail!("the input thread stopped before opening the input")
            }
        }
    }
}

impl Feeder {
    fn new(
        rx: Receiver<Feeding>,
        recycle: Sender<Block>,
        selection: Selection,
        signal: Arc<AtomicI32>,
    ) -> Feeder {
        Feeder {
            rx,
            recycle,
            block: Block::default(),
            next: 0,
            selection,
            index: 0,
            lines: Rc::default(),
            within: (0, 0),
            halt: Rc::default(),
            signal,
        }
    }
}

impl Feeder {
    /// The index of the item to hand out from next, once there is one; or
    /// what to answer instead.
    fn ready(&mut self, wait: Option<Duration>) -> Result<usize, Feed<'static>> {
        loop {
            if self.halt.get() || self.signal.load(Ordering::Relaxed) != 0 {
                return Err(Feed::End);
            }
            if self.next < self.block.items.len() {
                return Ok(self.next);
            }
            let got = match wait {
                None => self.rx.recv().ok(),
                Some(d) if d.is_zero() => match self.rx.try_recv() {
                    Ok(m) => Some(m),
                    Err(TryRecvError::Empty) => return Err(Feed::Pause),
                    Err(TryRecvError::Disconnected) => None,
                },
                Some(d) => match self.rx.recv_timeout(d) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => return Err(Feed::Pause),
                    Err(RecvTimeoutError::Disconnected) => None,
                },
            };
            match got {
                Some(Feeding::Block(block)) => {
                    let used = std::mem::replace(&mut self.block, block);
                    let _ = self.recycle.send(used);
                    self.next = 0;
                    self.within = (0, 0);
                }
                Some(Feeding::Wake | Feeding::Opened(_)) => {}
                Some(Feeding::End) | None => {
                    self.halt.set(true);
                    return Err(Feed::End);
                }
            }
        }
    }

    /// `k` records of item `i`, an [`Item::Lines`], handed out: `len` bytes
    /// of it. Returns where they start in the block, and the first's line.
    fn take_lines(&mut self, i: usize, k: u64, len: usize) -> (usize, u64) {
        let Item::Lines {
            start, line, count, ..
        } = self.block.items[i]
        else {
            return (0, 0);
        };
        let (bytes, lines) = self.within;
        self.index += k;
        if lines + k >= count {
            self.next += 1;
            self.within = (0, 0);
        } else {
            self.within = (bytes + len + 1, lines + k);
        }
        (start + bytes, line + lines)
    }
}

impl RawSource for Feeder {
    fn next(&mut self, wait: Option<Duration>) -> Feed<'_> {
        loop {
            let i = match self.ready(wait) {
                Ok(i) => i,
                Err(feed) => return feed,
            };
            let (from, line) = match &self.block.items[i] {
                Item::Record { start, end, line } => {
                    self.next += 1;
                    self.index += 1;
                    (*start..*end, *line)
                }
                Item::Bad { line, reason } => {
                    self.next += 1;
                    self.index += 1;
                    if !self.selection.wants(self.index - 1) {
                        continue; // done in the run being resumed
                    }
                    self.lines.borrow_mut().push(*line, 1);
                    return Feed::Bad(reason.clone());
                }
                &Item::Lines { start, end, .. } => {
                    let rest = &self.block.data[start + self.within.0..end];
                    let len = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
                    let (at, line) = self.take_lines(i, 1, len);
                    (at..at + len, line)
                }
            };
            if !self.selection.wants(self.index - 1) {
                continue; // done in the run being resumed
            }
            self.lines.borrow_mut().push(line, 1);
            return Feed::Record(&self.block.data[from]);
        }
    }

    fn next_lines(
        &mut self,
        wait: Option<Duration>,
        max_records: usize,
        max_bytes: usize,
    ) -> Feed<'_> {
        let i = match self.ready(wait) {
            Ok(i) => i,
            Err(feed) => return feed,
        };
        let Item::Lines {
            start, end, count, ..
        } = self.block.items[i]
        else {
            return self.next(wait);
        };
        // Only where every record from here on is sent.
        if self.index < self.selection.tail_from || max_records == 0 {
            return self.next(wait);
        }
        let rest = &self.block.data[start + self.within.0..end];
        let left = count - self.within.1;
        let (k, len) = if left <= max_records as u64 && rest.len() <= max_bytes {
            (left, rest.len())
        } else {
            // Each line's end, up to the first over either limit.
            let (mut k, mut len) = (0u64, 0usize);
            for e in procpool_protocol::newlines(rest).chain([rest.len()]) {
                if k == max_records as u64 || (k > 0 && e > max_bytes) {
                    break;
                }
                (k, len) = (k + 1, e);
            }
            (k, len)
        };
        let (at, line) = self.take_lines(i, k, len);
        self.lines.borrow_mut().push(line, k);
        Feed::Lines {
            bytes: &self.block.data[at..at + len],
            count: k as usize,
        }
    }
}

/// The input line of every record handed out and not yet drained, as runs
/// of consecutive lines (a block of JSON lines is one run).
#[derive(Debug, Default)]
struct LineQueue {
    runs: VecDeque<(u64, u64)>,
}

impl LineQueue {
    /// `count` records, on lines `first..first + count`.
    fn push(&mut self, first: u64, count: u64) {
        match self.runs.back_mut() {
            Some((f, n)) if *f + *n == first => *n += count,
            _ if count > 0 => self.runs.push_back((first, count)),
            _ => {}
        }
    }

    /// The next record's line.
    fn pop(&mut self) -> Option<u64> {
        let (first, n) = self.runs.front_mut()?;
        let line = *first;
        *first += 1;
        *n -= 1;
        if *n == 0 {
            self.runs.pop_front();
        }
        Some(line)
    }

    /// Drop the lines of the next `k` records.
    fn skip(&mut self, mut k: u64) {
        while let Some((first, n)) = self.runs.front_mut() {
            if k < *n {
                *first += k;
                *n -= k;
                return;
            }
            k -= *n;
            self.runs.pop_front();
        }
    }
}

/// What the drain saw.
#[derive(Default)]
struct Drained {
    records: u64,
    failures: Vec<(u64, RecordError)>,
    skipped: u64,
    /// Input number of the last record written or skipped.
    last_seq: Option<u64>,
    stopped_early: bool,
    bad_input: Option<BadRecord>,
    /// Per thread of the thread executor's worker: (pid, stats).
    threads: Vec<ThreadStats>,
    thread_pid: u32,
}

impl Drained {
    fn exit_code(&self, signal: i32) -> anyhow::Result<ExitCode> {
        if signal != 0 {
            return Ok(ExitCode::from(128 + signal as u8));
        }
        if let Some(bad) = &self.bad_input {
            bail!("{bad} (use --skip-bad-input to skip such records)");
        }
        if self.stopped_early && self.failures.is_empty() {
            bail!("the run stopped before every record was processed");
        }
        Ok(if self.failures.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }

    fn count_thread<T>(&mut self, done: &Outcome<T>, pid: u32) {
        let i = done.thread as usize;
        if self.threads.len() <= i {
            self.threads.resize_with(i + 1, ThreadStats::default);
        }
        let t = &mut self.threads[i];
        t.records += 1;
        t.failed += u64::from(done.result.is_err());
        t.busy += done.duration;
        self.thread_pid = pid;
    }
}

/// Write the results in input order (errors in their place), the job log,
/// and the progress, until the input ends or the run stops.
fn drain(
    settings: &Settings<'_>,
    pool: &RawPool,
    feeder: Feeder,
    (sidecar, patch): (Option<Sidecar>, Option<Patch>),
    progress: &mut Progress,
) -> anyhow::Result<(Drained, Output)> {
    let args = settings.args;
    let resuming = args.resume || args.resume_failed;
    let joblog = match &args.joblog {
        Some(p) => Some((
            p.clone(),
            open_joblog(p, resuming.then_some(settings.resume_from))?,
        )),
        None => None,
    };
    let mut out = Output::open(OutputSpec {
        path: args.output.as_deref(),
        append: resuming,
        joblog,
        sidecar,
        patch,
    })?;
    let lines = feeder.lines.clone();
    let halt = feeder.halt.clone();
    let canceller = pool.canceller();
    let stop_now = || {
        halt.set(true);
        canceller.cancel();
        canceller.cancel();
    };
    let mut d = Drained::default();
    let mut map = pool.map(feeder);
    'runs: while let Some(run) = map.next_run() {
        let n = run.len() as u64;
        // A run of successful records with nothing to do one by one goes
        // out as it arrived.
        if let (Some(text), Executor::Process) = (run.lines(), settings.executor) {
            let slow = run.longest() >= Duration::from_millis(10);
            if out.ok_lines(text, n, slow)? {
                lines.borrow_mut().skip(n);
                d.records += n;
                d.last_seq = Some(settings.selection.seq_of(run.first_seq() + n - 1));
                progress.tick(d.records);
                continue;
            }
        }
        for done in run.outcomes() {
            let seq = settings.selection.seq_of(done.seq);
            let line = lines.borrow_mut().pop().unwrap_or(0);
            if matches!(done.result, Err(RecordError::Cancelled)) {
                d.stopped_early = true;
                break 'runs;
            }
            if let Err(RecordError::BadInput(reason)) = &done.result {
                let bad = BadRecord {
                    source: settings.source.clone(),
                    line,
                    reason: reason.clone(),
                };
                if args.skip_bad_input {
                    warn!("skipping bad input: {bad}");
                    d.skipped += 1;
                    d.last_seq = Some(seq);
                    out.skipped(seq)?;
                    continue;
                }
                d.bad_input = Some(bad);
                stop_now();
                break 'runs;
            }
            if let (Executor::Thread, Some(pid)) = (settings.executor, done.pid) {
                d.count_thread(&done, pid);
            }
            let entry = JobEntry::new(
                seq,
                done.pid.unwrap_or(0),
                done.started_us.unwrap_or(0),
                done.duration,
                done.result.as_ref().map(|_| ()),
            );
            d.records += 1;
            d.last_seq = Some(seq);
            match done.result {
                Ok(bytes) => out.ok_bytes(bytes, entry)?,
                Err(e) => {
                    out.failed(seq, &e, entry)?;
                    error!("record #{seq} failed: {e}");
                    d.failures.push((seq, e));
                    if args.fail_fast {
                        d.stopped_early = true;
                        stop_now();
                        break 'runs;
                    }
                }
            }
            progress.tick(d.records);
        }
    }
    drop(map);
    out.finish()?;
    Ok((d, out))
}

/// Statistics, the summary line and the failures, on stderr (and as JSON).
fn report(
    settings: &Settings<'_>,
    d: &Drained,
    stats: &[procpool::WorkerStats],
    elapsed: Duration,
    multi: &MultiProgress,
) -> anyhow::Result<()> {
    let args = settings.args;
    let report = match settings.executor {
        Executor::Thread => {
            let pid = stats.first().map_or(d.thread_pid, |s| s.pid);
            let lifetime = stats.first().map_or(Duration::ZERO, |s| s.lifetime);
            let mut threads = d.threads.clone();
            threads.resize_with(settings.workers.max(threads.len()), ThreadStats::default);
            Stats::threads(pid, &threads, d.records, lifetime, elapsed)
        }
        Executor::Process => Stats::new(stats, d.records, elapsed, "process"),
    };
    if args.stats {
        multi.suspend(|| eprint!("{}", report.table()));
    }
    if let Some(path) = &args.stats_json {
        report.write_json(path)?;
    }
    let mut summary = format!(
        "done: {} records, {} failed, with {} {} in {:.3} s",
        d.records,
        d.failures.len(),
        settings.workers,
        match settings.executor {
            Executor::Process => format!("workers ({} processes in all)", stats.len()),
            Executor::Thread => format!("threads (in {} worker process)", stats.len()),
        },
        elapsed.as_secs_f64()
    );
    if d.skipped > 0 {
        summary.push_str(&format!("; {} bad input records skipped", d.skipped));
    }
    if settings.resume_from > 0 {
        summary.push_str(&format!("; resumed after {} records", settings.resume_from));
        let skipped = settings
            .selection
            .tail_from
            .saturating_sub(settings.resume_from);
        if skipped > 0 {
            summary.push_str(&format!(
                " (from input record #{}: {skipped} before it were skipped)",
                settings.selection.tail_from
            ));
        }
    }
    let again = settings.selection.again.len();
    if again > 0 {
        summary.push_str(&format!(
            "; {again} failed records run again, their lines replaced"
        ));
    }
    info!("{summary}");
    if !d.failures.is_empty() {
        let shown: Vec<String> = d
            .failures
            .iter()
            .take(10)
            .map(|(seq, e)| format!("#{seq}: {e}"))
            .collect();
        let more = d.failures.len().saturating_sub(10);
        warn!(
            "{} records failed: {}{}",
            d.failures.len(),
            shown.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// Workers as MPI ranks: the other ranks of this MPI job, or, with
/// `--workers N` and no other ranks, N ranks spawned with `MPI_Comm_spawn`.
/// Batches in flight per worker rank by default: a message between the
/// coordinator and a rank takes longer to go and come back than over the
/// local backend's channels (a thread hop each way, and probes between
/// sleeps), so a deeper queue keeps the ranks fed. Measured on 1M `age`
/// records, 2 ranks on 2 cores (medians of 5, 11 and 7 alternating runs,
/// load 3): 0.580 / 0.494 / 0.552 s with 2 in flight, 0.472 / 0.409 /
/// 0.460 s with 8 (4 and 16: 0.492 and 0.496 s).
const MPI_IN_FLIGHT: usize = 8;
/// Batches in flight per local worker by default (and per MPI rank reached
/// over the local channels, on one machine).
const LOCAL_IN_FLIGHT: usize = 2;

#[cfg(feature = "mpi")]
fn mpi_in_flight() -> usize {
    if procpool::mpi::on_one_machine() {
        LOCAL_IN_FLIGHT
    } else {
        MPI_IN_FLIGHT
    }
}

#[cfg(not(feature = "mpi"))]
fn mpi_in_flight() -> usize {
    MPI_IN_FLIGHT
}

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

/// The worker binary to use, with a message that says how to get it.
fn worker_bin(args: &WorkerArgs) -> anyhow::Result<PathBuf> {
    // `worker` next to this executable, else this executable itself: it
    // serves the same tasks (see `procpool::init` in `main`).
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
    // Written, not printed: `coordinator tasks | head -1` closing the pipe
    // early is an error that main() takes as success, not a panic.
    let mut out = std::io::stdout().lock();
    writeln!(out, "Tasks offered by {}:", bin.display())?;
    for t in tasks {
        let fields = |f: &[String]| {
            if f.is_empty() {
                "(not declared by the task)".to_owned()
            } else {
                format!("{{{}}}", f.join(", "))
            }
        };
        let description = if t.description.is_empty() {
            "(no description)"
        } else {
            &t.description
        };
        writeln!(out, "\n  {}  {description}", t.name)?;
        writeln!(out, "      input:  {}", fields(&t.input_fields))?;
        writeln!(out, "      output: {}", fields(&t.output_fields))?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
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
                every: Some((started, args.progress_interval)),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A feeder of `blocks`, running the records the selection wants.
    fn feeder(blocks: Vec<Block>, selection: Selection) -> Feeder {
        let (tx, rx) = std::sync::mpsc::sync_channel(blocks.len() + 1);
        for block in blocks {
            tx.send(Feeding::Block(block)).unwrap();
        }
        tx.send(Feeding::End).unwrap();
        Feeder::new(rx, std::sync::mpsc::channel().0, selection, Arc::default())
    }

    /// What the feeder gives: `next_lines(None, max, max_bytes)`, as text.
    fn feed(f: &mut Feeder, max: usize, max_bytes: usize) -> String {
        match f.next_lines(None, max, max_bytes) {
            Feed::Record(b) => format!("record {}", String::from_utf8_lossy(b)),
            Feed::Lines { bytes, count } => {
                format!("{count} lines {}", String::from_utf8_lossy(bytes))
            }
            Feed::Bad(reason) => format!("bad {reason}"),
            Feed::Pause => "pause".into(),
            Feed::End => "end".into(),
        }
    }

    fn block() -> Block {
        let data = b"a\nbb\nccc\ndddd\nX\ne\nf".to_vec();
        let items = vec![
            Item::Lines {
                start: 0,
                end: 13,
                line: 1,
                count: 4,
            },
            Item::Bad {
                line: 6,
                reason: "too big".into(),
            },
            Item::Record {
                start: 14,
                end: 15,
                line: 7,
            },
            Item::Lines {
                start: 18,
                end: 19,
                line: 9,
                count: 1,
            },
        ];
        Block { data, items }
    }

    #[test]
    fn runs_of_lines_go_out_within_the_limits_asked_and_keep_their_lines() {
        let mut f = feeder(vec![block()], Selection::default());
        assert_eq!(feed(&mut f, 2, 100), "2 lines a\nbb");
        // At least one line, whatever its size.
        assert_eq!(feed(&mut f, 9, 1), "1 lines ccc");
        assert_eq!(feed(&mut f, 9, 100), "1 lines dddd");
        assert_eq!(feed(&mut f, 9, 100), "bad too big");
        assert_eq!(feed(&mut f, 9, 100), "record X");
        assert_eq!(feed(&mut f, 9, 100), "1 lines f");
        assert_eq!(feed(&mut f, 9, 100), "end");
        let mut lines = f.lines.borrow_mut();
        assert_eq!(lines.pop(), Some(1));
        lines.skip(3);
        assert_eq!(lines.pop(), Some(6));
        assert_eq!(
            (lines.pop(), lines.pop(), lines.pop()),
            (Some(7), Some(9), None)
        );
    }

    #[test]
    fn records_a_resumed_run_has_done_are_left_out_one_by_one() {
        // Input positions 0..4 are the four lines; 1 runs again, 3 on.
        let selection = Selection {
            again: vec![1],
            tail_from: 3,
        };
        let mut f = feeder(vec![block()], selection);
        assert_eq!(feed(&mut f, 9, 100), "record bb");
        // Position 2 is skipped in the same call.
        assert_eq!(feed(&mut f, 9, 100), "record dddd");
        assert_eq!(feed(&mut f, 9, 100), "bad too big");
        let mut lines = f.lines.borrow_mut();
        assert_eq!(
            (lines.pop(), lines.pop(), lines.pop()),
            (Some(2), Some(4), Some(6))
        );
    }
}
