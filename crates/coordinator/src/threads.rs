//! `--executor thread`: the same tasks on threads inside the coordinator.
//!
//! Threads share one process, so a task that takes a process-wide lock
//! (`locked`) runs one record at a time however many threads there are:
//! the lesson of Python's GIL, which worker processes do not have.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use procpool::{Done, RecordError, Task};

type Work<I> = Arc<Mutex<Receiver<(u64, I)>>>;

/// What one task thread did.
#[derive(Debug, Clone, Default)]
pub struct ThreadStats {
    pub records: u64,
    pub failed: u64,
    pub busy: std::time::Duration,
}

/// Per-thread statistics, readable while and after the threads run.
pub type StatsHandle = Arc<Vec<Mutex<ThreadStats>>>;

/// Task panics are per-record failures here as in worker processes: keep
/// the default hook's message (and backtrace) off stderr for task threads.
fn quiet_task_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let task_thread = thread::current()
                .name()
                .is_some_and(|n| n.starts_with("task-"));
            if !task_thread {
                previous(info);
            }
        }));
    });
}

/// Results of `task` over `inputs` in input order, computed on `threads` threads.
pub struct ThreadMap<T: Task, I> {
    input: Option<I>,
    work: Option<Sender<(u64, T::Input)>>,
    results: Receiver<Done<T::Output>>,
    /// Results that arrived ahead of their turn, by position.
    reorder: std::collections::BTreeMap<u64, Done<T::Output>>,
    ready: VecDeque<Done<T::Output>>,
    sent: u64,
    yielded: u64,
    window: u64,
    handles: Vec<thread::JoinHandle<()>>,
    stats: StatsHandle,
}

impl<T: Task, I: Iterator<Item = T::Input>> ThreadMap<T, I> {
    pub fn new(task: T, threads: usize, inputs: I) -> std::io::Result<Self> {
        quiet_task_panics();
        let task = Arc::new(task);
        let stats: StatsHandle = Arc::new(
            (0..threads.max(1))
                .map(|_| Mutex::new(ThreadStats::default()))
                .collect(),
        );
        let (work_tx, work_rx) = mpsc::channel::<(u64, T::Input)>();
        let work: Work<T::Input> = Arc::new(Mutex::new(work_rx));
        let (res_tx, res_rx) = mpsc::channel();
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let (task, work, res_tx) = (task.clone(), work.clone(), res_tx.clone());
            let stats = stats.clone();
            handles.push(
                thread::Builder::new()
                    .name(format!("task-{i}"))
                    .spawn(move || run_thread(&*task, &work, &res_tx, &stats[i]))?,
            );
        }
        Ok(ThreadMap {
            input: Some(inputs),
            work: Some(work_tx),
            results: res_rx,
            reorder: Default::default(),
            ready: VecDeque::new(),
            sent: 0,
            yielded: 0,
            window: 64 * threads.max(1) as u64,
            handles,
            stats,
        })
    }

    /// Statistics of each thread, updated as records complete.
    pub fn stats_handle(&self) -> StatsHandle {
        self.stats.clone()
    }
}

fn run_thread<T: Task>(
    task: &T,
    work: &Work<T::Input>,
    results: &Sender<Done<T::Output>>,
    stats: &Mutex<ThreadStats>,
) {
    let pid = std::process::id();
    loop {
        // The lock is held only to take one record.
        let next = match work.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((seq, input)) = next else { return };
        let started_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let t0 = Instant::now();
        let result = match catch_unwind(AssertUnwindSafe(|| task.run(input))) {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(RecordError::Task(e.0)),
            Err(p) => Err(RecordError::Panicked(
                p.downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into()),
            )),
        };
        let duration = t0.elapsed();
        if let Ok(mut s) = stats.lock() {
            s.records += 1;
            s.failed += u64::from(result.is_err());
            s.busy += duration;
        }
        let done = Done {
            seq,
            pid: Some(pid),
            started_us: Some(started_us),
            duration,
            result,
        };
        if results.send(done).is_err() {
            return;
        }
    }
}

impl<T: Task, I: Iterator<Item = T::Input>> Iterator for ThreadMap<T, I> {
    type Item = Done<T::Output>;

    fn next(&mut self) -> Option<Done<T::Output>> {
        loop {
            while self.sent - self.yielded < self.window {
                let Some(item) = self.input.as_mut().and_then(Iterator::next) else {
                    self.input = None;
                    self.work = None; // threads finish what is queued, then end
                    break;
                };
                if let Some(w) = &self.work {
                    let _ = w.send((self.sent, item));
                }
                self.sent += 1;
            }
            if let Some(d) = self.ready.pop_front() {
                self.yielded += 1;
                return Some(d);
            }
            if let Some(d) = self.reorder.remove(&self.yielded) {
                self.yielded += 1;
                return Some(d);
            }
            if self.yielded == self.sent && self.input.is_none() {
                return None;
            }
            match self.results.recv() {
                Ok(d) => {
                    self.reorder.insert(d.seq, d);
                }
                Err(_) => return None,
            }
        }
    }
}

impl<T: Task, I> Drop for ThreadMap<T, I> {
    fn drop(&mut self) {
        self.work = None;
        // Threads end once the queue is empty; a record still running is
        // waited for (threads cannot be killed).
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use procpool_tasks::{Fault, FaultIn, Primes, PrimesIn};

    #[test]
    fn ordered_and_correct_on_threads() {
        let inputs = (0..300u64).map(|i| PrimesIn {
            n: (i * 7919) % 5000,
        });
        let out: Vec<u64> = ThreadMap::new(Primes, 4, inputs)
            .unwrap()
            .map(|d| d.result.unwrap().primes)
            .collect();
        let expected: Vec<u64> = (0..300u64)
            .map(|i| procpool_tasks::count_primes_below((i * 7919) % 5000))
            .collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn errors_and_panics_are_per_record() {
        std::panic::set_hook(Box::new(|_| {}));
        let inputs = ["", "error", "panic", ""].map(|f| FaultIn {
            n: 1,
            fault: f.into(),
        });
        let kinds: Vec<String> = ThreadMap::new(Fault, 2, inputs.into_iter())
            .unwrap()
            .map(|d| match d.result {
                Ok(_) => "ok".to_string(),
                Err(e) => crate::output::error_kind(&e).to_string(),
            })
            .collect();
        assert_eq!(kinds, ["ok", "task_error", "panicked", "ok"]);
    }
}
