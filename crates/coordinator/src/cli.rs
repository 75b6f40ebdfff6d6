//! Command-line arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  coordinator --workers 4
      The demo: 7 scientists through `age`, 1 s of simulated work each, in about 2 s.
  coordinator --workers 1        (about 7 s)    coordinator --workers 7   (about 1 s)
  coordinator --input people.csv --task age --year 2000 --work-ms 0 --output ages.jsonl
  seq 1 200 | sed 's/.*/{\"n\": &000}/' | coordinator --task primes --input - --workers 2
  coordinator --input big.jsonl --output out.jsonl --timeout 5s --retries 3 --resume
  coordinator --input big.jsonl --output out.jsonl --stats --joblog jobs.tsv --progress
  coordinator --task locked --input n.jsonl --executor thread   (threads share one lock)
  coordinator --worker-bin target/release/word-stats-worker --task word-stats \
      --param min_len=4 --input posts.csv        Any task a worker binary registers.
  coordinator scale --workers 1,2,4 --executor process,thread --task locked
  coordinator tasks             List the tasks the worker binary offers.
  RUST_LOG=debug coordinator    More detail on stderr (RUST_LOG=warn for less).

Exit codes: 0 all records ok; 1 some records failed (error objects in their place
on the output); 2 the run could not start or stopped on an error (bad input,
missing worker binary, unknown task); 130 / 143 interrupted by SIGINT / SIGTERM.";

/// Run records through a pool of worker processes; results come out in input order.
#[derive(Debug, Parser)]
#[command(name = "coordinator", version, after_help = EXAMPLES)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Commands>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands; without one, the coordinator runs records.
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Run one workload at several worker counts and executors; print a
    /// table (wall time, records/s, speed-up, efficiency) and draw a chart.
    Scale(ScaleArgs),
    /// List the tasks the worker binary offers, with their input and output fields.
    Tasks {
        #[command(flatten)]
        worker: WorkerArgs,
    },
}

/// Options of `coordinator scale`.
#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// Worker counts to try.
    #[arg(short, long, value_delimiter = ',', default_values_t = [1, 2, 4, 8])]
    pub workers: Vec<usize>,

    /// Executors to compare.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Executor::Process, Executor::Thread])]
    pub executor: Vec<Executor>,

    /// Task: primes, locked or age.
    #[arg(short, long, default_value = "primes")]
    pub task: String,

    /// Input file [default: --records copies of {"n": N} for primes/locked,
    /// the scientists for age].
    #[arg(short, long, value_name = "PATH")]
    pub input: Option<String>,

    /// Records generated for primes/locked without --input.
    #[arg(long, default_value_t = 2000)]
    pub records: usize,

    /// `n` of each generated primes/locked record (the default keeps each
    /// record's sieve in a core's cache, so that memory bandwidth does not
    /// blur the scaling).
    #[arg(long, default_value_t = 1_000_000)]
    pub n: u64,

    /// Simulated work per record for `age`, in ms.
    #[arg(long, default_value_t = 1000)]
    pub work_ms: u64,

    /// Year for `age`.
    #[arg(long, default_value_t = 2026)]
    pub year: i32,

    /// Runs per point; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,

    /// Write the chart (SVG) here.
    #[arg(long, value_name = "FILE", default_value = "scale.svg")]
    pub chart: Option<PathBuf>,

    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// How worker processes are started and reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Spawned by the coordinator on this machine, over ipc-channel.
    Local,
    /// Ranks 1..N of the MPI job whose rank 0 is the coordinator.
    Mpi,
}

/// Where tasks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Executor {
    /// N worker processes of one thread each.
    Process,
    /// One worker process running N threads.
    Thread,
}

/// The format of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// From the extension, else from the first non-blank byte.
    Auto,
    /// JSON lines.
    Jsonl,
    /// CSV with a header line.
    Csv,
}

impl std::fmt::Display for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Executor::Process => "process",
            Executor::Thread => "thread",
        })
    }
}

/// Where the worker binary is.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Worker binary [default: `worker` next to the coordinator's executable].
    #[arg(long, value_name = "PATH")]
    pub worker_bin: Option<PathBuf>,
}

/// Options of a run.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Number of worker processes [default: number of CPUs].
    #[arg(short, long, value_name = "N")]
    pub workers: Option<usize>,

    /// Input: a CSV file with a header, or JSON lines (`-` reads stdin)
    /// [default: the built-in scientists data set].
    #[arg(short, long, value_name = "PATH")]
    pub input: Option<String>,

    /// Format of the input: `auto` takes it from the extension (.csv;
    /// .jsonl, .ndjson, .json), else from the first non-blank byte (`{`
    /// means JSON lines, anything else CSV), for files and stdin alike.
    #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
    pub format: InputFormat,

    /// Output file for the JSON-lines results [default: stdout].
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Task to run: any task the worker binary offers (`coordinator tasks`
    /// lists them).
    #[arg(short, long, default_value = "age", value_name = "NAME")]
    pub task: String,

    /// A task parameter, decoded into the task value by the worker; VALUE is
    /// read as JSON if it parses (`3`, `true`, `[1,2]`), else as a string.
    /// Repeatable; applied over --params.
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
    pub param: Vec<String>,

    /// The task parameters as one JSON object, e.g. `{"factor": 2.5}`.
    #[arg(long, value_name = "JSON")]
    pub params: Option<String>,

    /// Simulated work per record for `age`, in ms (the parameter `work_ms`)
    /// [default: 1000 for the built-in demo, 0 with --input].
    #[arg(long, value_name = "MS")]
    pub work_ms: Option<u64>,

    /// Year that `age` computes ages for (the parameter `year`) [default: the current year].
    #[arg(long, value_name = "Y")]
    pub year: Option<i32>,

    /// Records per batch sent to a worker [default: adapted to the measured cost per record].
    #[arg(long, value_name = "N")]
    pub chunksize: Option<usize>,

    /// Batches in flight per worker [default: 2; 8 with --backend mpi].
    #[arg(long, value_name = "N")]
    pub in_flight: Option<usize>,

    #[command(flatten)]
    pub worker: WorkerArgs,

    /// Per-record time limit, e.g. `500ms`, `30s`: the worker is killed and
    /// replaced and the record fails as timed out (not retried).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,

    /// How many times a record whose worker died is sent again before it fails.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub retries: u32,

    /// Replace each worker after it has been given N records.
    #[arg(long, value_name = "N")]
    pub max_tasks_per_child: Option<u64>,

    /// Stop at the first failed record (exit 1), the way Python's `map` raises.
    #[arg(long)]
    pub fail_fast: bool,

    /// Skip malformed input records (counted and reported) instead of stopping.
    #[arg(long)]
    pub skip_bad_input: bool,

    /// Continue an interrupted run: keep the complete lines already in
    /// --output and process only the records after them.
    #[arg(long, requires = "output")]
    pub resume: bool,

    /// Like --resume, and also run again the records that failed: their
    /// error lines in --output are replaced in place by the new results.
    #[arg(long, requires = "output", conflicts_with = "resume")]
    pub resume_failed: bool,

    /// Largest input record accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub max_record_bytes: usize,

    /// How worker processes are started and reached: `local` (spawned here,
    /// over ipc-channel) or `mpi` (the other ranks of this MPI job; needs a
    /// build with `--features mpi` and a launch such as
    /// `mpirun -n 1 coordinator --backend mpi ... : -n 3 worker`).
    #[arg(long, value_enum, default_value_t = Backend::Local)]
    pub backend: Backend,

    /// Where tasks run: N worker processes, or one worker process running N
    /// threads (to compare: a task under a process-wide lock does not scale
    /// on threads).
    #[arg(long, value_enum, default_value_t = Executor::Process)]
    pub executor: Executor,

    /// Show a progress bar with rate and ETA on stderr (default: only when
    /// stderr is a terminal; when it is not, --progress logs a progress line every
    /// --progress-interval).
    #[arg(long)]
    pub progress: bool,

    /// Time between two progress lines when stderr is not a terminal.
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,

    /// Never show a progress bar.
    #[arg(long, conflicts_with = "progress")]
    pub no_progress: bool,

    /// Print a table of per-worker statistics at the end (pid, records,
    /// failures, busy time, utilisation, how it ended).
    #[arg(long)]
    pub stats: bool,

    /// Write the per-worker statistics as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,

    /// Write one tab-separated line per record to FILE as results are
    /// written: seq, pid, start (Unix seconds), duration (s), outcome.
    #[arg(long, value_name = "FILE")]
    pub joblog: Option<PathBuf>,

    /// Seconds that workers get to finish their records on Ctrl-C or SIGTERM
    /// before they are killed (a second Ctrl-C kills at once).
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub grace: Duration,
}
