//! The harness: run the real `coordinator` (with the real `worker` next to it)
//! under a deadline, read its logs, and watch processes through `/proc`.
//!
//! Every wait here is bounded: a run that outlives its deadline is killed
//! (with its workers) and the test panics with "hung" and the tail of stderr.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Default deadline of one coordinator run: far beyond any healthy run, so
/// reaching it means a hang.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// How long the harness waits, after the coordinator exited, for its stderr
/// to close (it closes when the last worker, which shares it, is gone).
const STDERR_GRACE: Duration = Duration::from_secs(5);

const POLL: Duration = Duration::from_millis(5);

/// The coordinator binary built by cargo for this test.
pub fn coordinator_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_coordinator"))
}

/// The worker binary, next to the coordinator (built by `cargo test --workspace`).
pub fn worker_bin() -> PathBuf {
    let path = coordinator_bin().with_file_name("worker");
    assert!(
        path.is_file(),
        "the worker binary is missing at {}: run the tests with `cargo test --workspace` \
         (or build it first with `cargo build -p procpool-worker-bin`)",
        path.display()
    );
    path
}

/// The example of a user's own worker binary (crate `word-stats`), next to
/// the coordinator (built by `cargo test --workspace`).
pub fn word_stats_bin() -> PathBuf {
    let path = coordinator_bin().with_file_name("word-stats-worker");
    assert!(
        path.is_file(),
        "the example worker binary is missing at {}: run the tests with `cargo test --workspace` \
         (or build it first with `cargo build -p word-stats`)",
        path.display()
    );
    path
}

/// A fresh temporary directory for one test's files.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("procpool-e2e-")
        .tempdir()
        .expect("create a temporary directory")
}

/// Write `contents` to `dir/name` and return the path as a string (for argv).
pub fn write_file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write a test input file");
    path.to_str().expect("a UTF-8 temp path").to_owned()
}

/// Sleep in small steps until `cond` holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(POLL);
    }
}

// ------------------------------------------------------------------ running

/// A coordinator command line to run.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: Option<PathBuf>,
    args: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    /// Hand the stdin pipe to the test (see [`Running::stdin`]).
    stdin_pipe: bool,
    stdin_from: Option<PathBuf>,
    stdout_to: Option<PathBuf>,
    stdout_closed: bool,
    env: Vec<(String, String)>,
    env_removed: Vec<String>,
    deadline: Duration,
}

/// `Cmd::new(["--workers", "2"])`.
pub fn coordinator<I, S>(args: I) -> Cmd
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    Cmd::new(args)
}

impl Cmd {
    pub fn new<I, S>(args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Cmd {
            program: None,
            args: args.into_iter().map(Into::into).collect(),
            stdin: None,
            stdin_pipe: false,
            stdin_from: None,
            stdout_to: None,
            stdout_closed: false,
            env: Vec::new(),
            env_removed: Vec::new(),
            deadline: DEADLINE,
        }
    }

    /// Run `program` (e.g. `mpirun`) with the arguments instead of the coordinator.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Cmd {
        self.program = Some(program.into());
        self
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Cmd {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Bytes fed to the coordinator's stdin (otherwise stdin is empty).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(bytes.into());
        self
    }

    /// A pipe on stdin that the test writes to and closes when it wants
    /// (`Running::stdin`), like a slow producer or `tail -f`.
    pub fn stdin_pipe(mut self) -> Cmd {
        self.stdin_pipe = true;
        self
    }

    /// Stdin is this file (as by `< path`).
    pub fn stdin_from(mut self, path: impl Into<PathBuf>) -> Cmd {
        self.stdin_from = Some(path.into());
        self
    }

    /// Stdout goes to this file (opened for appending, as by `>>`), or
    /// device, instead of being collected.
    pub fn stdout_to(mut self, path: impl Into<PathBuf>) -> Cmd {
        self.stdout_to = Some(path.into());
        self
    }

    /// Stdout is a pipe whose reading end is already closed, as when
    /// `coordinator ... | head -1` has read its line and gone.
    pub fn stdout_closed(mut self) -> Cmd {
        self.stdout_closed = true;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Cmd {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Run without the variable `key`.
    pub fn env_remove(mut self, key: &str) -> Cmd {
        self.env_removed.push(key.to_owned());
        self
    }

    pub fn deadline(mut self, deadline: Duration) -> Cmd {
        self.deadline = deadline;
        self
    }

    /// Run to completion (panics with "hung" past the deadline).
    pub fn run(self) -> Output {
        self.spawn().wait()
    }

    /// Start in the background, with stdout and stderr collected as they come.
    pub fn spawn(self) -> Running {
        // Fail early and clearly if the worker binary was not built.
        worker_bin();
        let mut command = Command::new(self.program.unwrap_or_else(coordinator_bin));
        command
            .args(&self.args)
            .stdin(match (&self.stdin, &self.stdin_from) {
                (Some(_), _) => Stdio::piped(),
                _ if self.stdin_pipe => Stdio::piped(),
                (None, Some(p)) => std::fs::File::open(p)
                    .expect("open the file for the coordinator's stdin")
                    .into(),
                (None, None) => Stdio::null(),
            })
            .stdout(match &self.stdout_to {
                None if self.stdout_closed => {
                    let (reader, writer) = std::io::pipe().expect("a pipe for stdout");
                    drop(reader);
                    writer.into()
                }
                None => Stdio::piped(),
                Some(p) => std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(p)
                    .expect("open the file for the coordinator's stdout")
                    .into(),
            })
            .stderr(Stdio::piped())
            // Tests assert on the default log format and level.
            .env_remove("RUST_LOG")
            .env_remove("PROCPOOL_WORKER_FAULT");
        for k in &self.env_removed {
            command.env_remove(k);
        }
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn the coordinator");
        let pid = child.id();
        let mut threads = Vec::new();
        let stdin = if self.stdin_pipe {
            child.stdin.take()
        } else {
            None
        };
        if let (Some(bytes), Some(mut pipe)) = (self.stdin, child.stdin.take()) {
            // On its own thread: the coordinator may not read it all (or at all).
            threads.push(thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            }));
        }
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout_reader = child.stdout.take().map(|pipe| collect(pipe, &stdout));
        let stderr_reader = collect(child.stderr.take().expect("piped stderr"), &stderr);
        Running {
            child,
            pid,
            args: self.args,
            started: Instant::now(),
            deadline: self.deadline,
            stdout,
            stderr,
            stdout_reader,
            stderr_reader: Some(stderr_reader),
            status: None,
            _stdin_writer: threads,
            stdin,
        }
    }
}

fn collect(mut pipe: impl Read + Send + 'static, into: &Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    let into = into.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => lock(&into).extend_from_slice(&buf[..n]),
            }
        }
    })
}

fn lock(m: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A coordinator running in the background.
pub struct Running {
    child: Child,
    /// The coordinator's pid.
    pub pid: u32,
    args: Vec<OsString>,
    started: Instant,
    deadline: Duration,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stdout_reader: Option<JoinHandle<()>>,
    stderr_reader: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
    _stdin_writer: Vec<JoinHandle<()>>,
    /// The coordinator's stdin, with [`Cmd::stdin_pipe`]: write to it, drop it to close.
    pub stdin: Option<std::process::ChildStdin>,
}

impl Running {
    /// Stderr so far.
    pub fn stderr_now(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stderr)).into_owned()
    }

    /// Stdout so far.
    pub fn stdout_now(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stdout)).into_owned()
    }

    /// Complete lines on stdout so far.
    pub fn stdout_lines_now(&self) -> usize {
        lock(&self.stdout).iter().filter(|&&b| b == b'\n').count()
    }

    /// Whether the coordinator has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait on the coordinator");
        }
        self.status.is_some()
    }

    /// Send a signal to the coordinator (only while it has not been reaped).
    pub fn signal(&mut self, sig: i32) {
        assert!(
            !self.exited(),
            "the coordinator exited before it could be sent signal {sig}:\n{}",
            tail(&self.stderr_now(), 40)
        );
        send_signal(self.pid, sig);
    }

    /// Wait (bounded by the run's deadline) until `cond` holds; panics if the
    /// coordinator exits first or the deadline passes.
    pub fn wait_for(&mut self, what: &str, mut cond: impl FnMut(&Running) -> bool) {
        loop {
            if cond(self) {
                return;
            }
            if self.exited() {
                panic!(
                    "the coordinator exited ({:?}) before {what}:\n{}",
                    self.status,
                    tail(&self.stderr_now(), 60)
                );
            }
            if self.started.elapsed() > self.deadline {
                let processes = self.kill_all();
                panic!(
                    "hung: still waiting for {what} after {:?}; processes:\n{processes}stderr:\n{}",
                    self.deadline,
                    tail(&self.stderr_now(), 60)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Wait for the coordinator to exit, bounded by the deadline (then it is
    /// killed with its workers and the test panics with "hung").
    pub fn wait(mut self) -> Output {
        while !self.exited() {
            if self.started.elapsed() > self.deadline {
                let processes = self.kill_all();
                panic!(
                    "hung: coordinator {:?} still running after {:?}; processes:\n{processes}stderr:\n{}",
                    self.args,
                    self.deadline,
                    tail(&self.stderr_now(), 60)
                );
            }
            thread::sleep(POLL);
        }
        let status = self.status.expect("reaped");
        // Only the coordinator holds stdout: it is at its end now.
        if let Some(r) = self.stdout_reader.take() {
            let _ = r.join();
        }
        // Workers share stderr: it ends when the last of them is gone.
        let reader = self.stderr_reader.take().expect("stderr reader");
        let stderr_closed = wait_until(STDERR_GRACE, || reader.is_finished());
        if stderr_closed {
            let _ = reader.join();
        }
        Output {
            status,
            stdout: std::mem::take(&mut *lock(&self.stdout)),
            stderr: String::from_utf8_lossy(&lock(&self.stderr)).into_owned(),
            stderr_closed,
            pid: self.pid,
        }
    }

    /// Kill the coordinator and every process below it (used on a hang);
    /// returns what they were doing, for the report.
    fn kill_all(&mut self) -> String {
        let tree = process_tree(self.pid);
        let report = describe_tree(&tree);
        for (pid, _, _) in tree.iter().skip(1) {
            send_signal(*pid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        report
    }
}

/// `root` and every process below it (zombies too), each after its parent:
/// (pid, depth, state letter).
fn process_tree(root: u32) -> Vec<(u32, usize, String)> {
    let mut all: Vec<(u32, u32, String)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some(f) = stat_fields(pid) {
                if let Some(ppid) = f.get(1).and_then(|p| p.parse().ok()) {
                    all.push((pid, ppid, f[0].clone()));
                }
            }
        }
    }
    let mut tree = vec![(
        root,
        0,
        stat_fields(root).map_or_else(|| "?".into(), |f| f[0].clone()),
    )];
    let mut i = 0;
    while i < tree.len() {
        let (parent, depth) = (tree[i].0, tree[i].1);
        let below: Vec<_> = all
            .iter()
            .filter(|(_, ppid, _)| *ppid == parent)
            .map(|(pid, _, state)| (*pid, depth + 1, state.clone()))
            .collect();
        tree.splice(i + 1..i + 1, below);
        i += 1;
    }
    tree
}

/// One line per process of a [`process_tree`]: pid, state, name, and the
/// kernel function it waits in; and a plain statement when every process
/// below the first has exited but is not reaped (a launcher such as
/// `mpirun` stuck in its own teardown).
fn describe_tree(tree: &[(u32, usize, String)]) -> String {
    let read = |pid: u32, what: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{what}"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let mut out = String::new();
    for (pid, depth, state) in tree {
        out.push_str(&format!(
            "{:indent$}{pid} {state} {} (waiting in {})\n",
            "",
            read(*pid, "comm"),
            read(*pid, "wchan"),
            indent = 2 * depth
        ));
    }
    if tree.len() > 1 && tree[1..].iter().all(|(_, _, state)| state == "Z") {
        out.push_str(&format!(
            "every process below {} has exited but was not reaped: {} itself is stuck\n",
            tree[0].0,
            read(tree[0].0, "comm")
        ));
    }
    out
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.exited() {
            self.kill_all();
        }
    }
}

/// What a finished run left.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    /// Whether stderr reached its end, i.e. every worker sharing it was gone,
    /// within a few seconds of the coordinator's exit.
    pub stderr_closed: bool,
    /// The coordinator's pid.
    pub pid: u32,
}

impl Output {
    /// The exit code (`None` if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn stdout_str(&self) -> &str {
        std::str::from_utf8(&self.stdout).expect("stdout is UTF-8")
    }

    /// Stdout split into lines (each must end with a newline).
    pub fn lines(&self) -> Vec<&str> {
        let text = self.stdout_str();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "stdout does not end with a complete line: {:?}",
            tail(text, 3)
        );
        text.lines().collect()
    }

    /// Each stdout line parsed as JSON.
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }

    /// Panic (showing stderr) unless the exit code is `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "exit status {:?}, expected code {code}; stdout (tail):\n{}\nstderr (tail):\n{}",
            self.status,
            tail(&String::from_utf8_lossy(&self.stdout), 10),
            tail(&self.stderr, 60)
        );
        self
    }

    /// The `coordinator: error: ...` line, if any.
    pub fn error_message(&self) -> Option<&str> {
        self.stderr
            .lines()
            .find_map(|l| l.strip_prefix("coordinator: error: "))
    }

    /// The error line, asserting there is exactly one.
    #[track_caller]
    pub fn the_error(&self) -> &str {
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("coordinator: error: "))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "expected one `coordinator: error:` line; stderr:\n{}",
            tail(&self.stderr, 60)
        );
        self.error_message().expect("one error line")
    }

    /// The final `done: ...` summary line.
    pub fn summary(&self) -> Option<&str> {
        let marker = format!("coordinator pid={}: ", self.pid);
        self.stderr.lines().find_map(|l| {
            let at = l.find(&marker)? + marker.len();
            l[at..].starts_with("done: ").then(|| &l[at..])
        })
    }

    /// Pids of every worker the coordinator spawned, in order.
    pub fn spawned_pids(&self) -> Vec<u32> {
        spawned_pids(&self.stderr)
    }

    /// Distinct pids of the `Process <pid> working record ...` lines.
    pub fn working_pids(&self) -> BTreeSet<u32> {
        find_pids(&self.stderr, "Process ", " working record ")
            .into_iter()
            .collect()
    }

    /// Assert that every worker this run spawned is gone (within `within`),
    /// and that stderr, which they share, was closed.
    #[track_caller]
    pub fn assert_no_workers_left(&self, within: Duration) {
        let pids = self.spawned_pids();
        let all_gone = wait_until(within, || {
            pids.iter().all(|&p| !worker_of_alive(p, self.pid))
        });
        let left: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&p| worker_of_alive(p, self.pid))
            .collect();
        assert!(
            all_gone,
            "workers {left:?} of coordinator {} are still alive {within:?} after it exited",
            self.pid
        );
        assert!(
            self.stderr_closed,
            "stderr stayed open after the coordinator exited: some process still holds it"
        );
    }

    /// Assert the coordinator itself did not panic.
    #[track_caller]
    pub fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked at"),
            "something panicked:\n{}",
            tail(&self.stderr, 60)
        );
    }
}

// -------------------------------------------------------------- log parsing

/// Every number that follows `prefix` and is followed by `suffix`.
pub fn find_pids(text: &str, prefix: &str, suffix: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        rest = &rest[at + prefix.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && rest[digits..].starts_with(suffix) {
            if let Ok(pid) = rest[..digits].parse() {
                out.push(pid);
            }
        }
    }
    out
}

/// Pids of `spawned worker pid=N` lines.
pub fn spawned_pids(stderr: &str) -> Vec<u32> {
    find_pids(stderr, "spawned worker pid=", "\n")
}

/// Pids of `worker pid=N on HOST ready` lines.
pub fn ready_pids(stderr: &str) -> BTreeSet<u32> {
    stderr
        .lines()
        .filter(|l| l.ends_with(" ready"))
        .flat_map(|l| find_pids(l, "worker pid=", " on "))
        .collect()
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ------------------------------------------------------------------- /proc

/// The fields of `/proc/<pid>/stat` after the command name: state, ppid, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// Whether `pid` is a live process (a zombie counts as dead).
pub fn alive(pid: u32) -> bool {
    match stat_fields(pid) {
        Some(f) => !matches!(f.first().map(String::as_str), Some("Z" | "X" | "x")),
        None => false,
    }
}

/// Whether `pid` is alive and is a worker of `coordinator` (checked through
/// its environment, so that a recycled pid is not mistaken for it).
pub fn worker_of_alive(pid: u32, coordinator: u32) -> bool {
    if !alive(pid) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(env) => {
            let needle = format!("PROCPOOL_PARENT={coordinator}");
            env.split(|&b| b == 0).any(|v| v == needle.as_bytes())
        }
        // Cannot tell: count it as alive.
        Err(_) => true,
    }
}

/// Live (non-zombie) children of `parent`, from the ppid field of `/proc/*/stat`.
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(f) = stat_fields(pid) {
            let zombie = matches!(f.first().map(String::as_str), Some("Z" | "X" | "x"));
            if !zombie && f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
                out.push(pid);
            }
        }
    }
    out
}

/// `kill(pid, sig)`, ignoring a process already gone.
pub fn send_signal(pid: u32, sig: i32) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill() takes plain integers and has no memory effects on us.
    unsafe {
        libc::kill(pid, sig);
    }
}

// ------------------------------------------------------------------ helpers

/// A small deterministic random generator (xorshift64*), seeded per test
/// and printed so that a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock; the seed is printed with `what` it is for.
    pub fn from_time(what: &str) -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = (nanos ^ (u64::from(std::process::id()) << 32)) | 1;
        eprintln!("random seed for {what}: {seed:#x}");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// JSON lines of `fault` records `{"n":i,"fault":F}` from `(n, fault)` pairs.
pub fn fault_input<'a>(records: impl IntoIterator<Item = (u64, &'a str)>) -> String {
    let mut s = String::new();
    for (n, fault) in records {
        s.push_str(&serde_json::json!({ "n": n, "fault": fault }).to_string());
        s.push('\n');
    }
    s
}

/// The output of a `fault` record that succeeded.
pub fn ok_n(n: u64) -> String {
    format!("{{\"n\":{n}}}")
}

/// Compare two outputs line by line, reporting the first difference rather
/// than both texts in full.
#[track_caller]
pub fn assert_same_output(actual: &str, expected: &str, what: &str) {
    if actual == expected {
        return;
    }
    let a: Vec<&str> = actual.split_inclusive('\n').collect();
    let e: Vec<&str> = expected.split_inclusive('\n').collect();
    let first = a
        .iter()
        .zip(&e)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(e.len()));
    panic!(
        "{what}: outputs differ ({} lines vs {} expected); first difference at line {}: got {:?}, expected {:?}",
        a.len(),
        e.len(),
        first + 1,
        a.get(first),
        e.get(first)
    );
}

/// The failed-record line at `line`, as `(kind, message, seq)`.
#[track_caller]
pub fn error_at(lines: &[serde_json::Value], line: usize) -> (String, String, u64) {
    let v = &lines[line];
    let kind = v["error"]["kind"].as_str();
    let message = v["error"]["message"].as_str();
    let seq = v["seq"].as_u64();
    match (kind, message, seq) {
        (Some(k), Some(m), Some(s)) => (k.to_owned(), m.to_owned(), s),
        _ => panic!("line {line} is not an error line: {v}"),
    }
}

/// Run `f` on its own thread and fail the test if it takes longer than
/// `deadline` (a hang), instead of blocking the suite.
pub fn within<R: Send + 'static>(deadline: Duration, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(deadline) {
        Ok(r) => {
            let _ = handle.join();
            r
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("hung: not done within {deadline:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the closure returned without sending"),
        },
    }
}
