//! What a run reports besides its results: per-worker statistics (table and
//! JSON) and the job log.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use procpool::{RecordError, WorkerStats};
use serde::Serialize;

use crate::output::error_kind;

/// What one task thread of the thread executor did.
#[derive(Debug, Clone, Default)]
pub struct ThreadStats {
    pub records: u64,
    pub failed: u64,
    pub busy: Duration,
}

/// One row of `--stats` / `--stats-json`.
#[derive(Debug, Serialize)]
pub struct StatsRow {
    pub pid: u32,
    pub records: u64,
    pub failed: u64,
    pub busy_s: f64,
    pub lifetime_s: f64,
    pub utilisation: f64,
    pub ended: String,
}

impl From<&WorkerStats> for StatsRow {
    fn from(s: &WorkerStats) -> Self {
        StatsRow {
            pid: s.pid,
            records: s.records,
            failed: s.failed,
            busy_s: s.busy.as_secs_f64(),
            lifetime_s: s.lifetime.as_secs_f64(),
            utilisation: s.utilisation(),
            ended: s.end.as_ref().map_or("running".into(), ToString::to_string),
        }
    }
}

/// The whole statistics report.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub workers: Vec<StatsRow>,
    pub total_records: u64,
    pub total_failed: u64,
    /// Records that ended without a worker answering them (cancelled, or
    /// failed before dispatch).
    pub not_run: u64,
    pub wall_s: f64,
    pub executor: String,
}

impl Stats {
    pub fn new(stats: &[WorkerStats], records: u64, wall: Duration, executor: &str) -> Self {
        Self::from_rows(
            stats.iter().map(StatsRow::from).collect(),
            records,
            wall,
            executor,
        )
    }

    /// Rows for the thread executor: one per task thread of its one worker
    /// process (`lifetime`: how long that process lived).
    pub fn threads(
        pid: u32,
        threads: &[ThreadStats],
        records: u64,
        lifetime: Duration,
        wall: Duration,
    ) -> Self {
        let life = if lifetime.is_zero() { wall } else { lifetime };
        let rows = threads
            .iter()
            .enumerate()
            .map(|(i, t)| StatsRow {
                pid,
                records: t.records,
                failed: t.failed,
                busy_s: t.busy.as_secs_f64(),
                lifetime_s: life.as_secs_f64(),
                utilisation: if life.is_zero() {
                    0.0
                } else {
                    (t.busy.as_secs_f64() / life.as_secs_f64()).min(1.0)
                },
                ended: format!("thread task-{i}"),
            })
            .collect();
        Self::from_rows(rows, records, wall, "thread")
    }

    fn from_rows(workers: Vec<StatsRow>, records: u64, wall: Duration, executor: &str) -> Self {
        let total_records = workers.iter().map(|w| w.records).sum();
        let total_failed = workers.iter().map(|w| w.failed).sum();
        Stats {
            workers,
            total_records,
            total_failed,
            not_run: records.saturating_sub(total_records),
            wall_s: wall.as_secs_f64(),
            executor: executor.to_owned(),
        }
    }

    /// The table printed by `--stats`.
    pub fn table(&self) -> String {
        let mut t = String::new();
        t.push_str(&format!(
            "{:>8}  {:>10}  {:>8}  {:>9}  {:>6}  {}\n",
            "pid", "records", "failed", "busy (s)", "util", "ended"
        ));
        for w in &self.workers {
            t.push_str(&format!(
                "{:>8}  {:>10}  {:>8}  {:>9.3}  {:>5.1}%  {}\n",
                w.pid,
                w.records,
                w.failed,
                w.busy_s,
                w.utilisation * 100.0,
                w.ended
            ));
        }
        let busy: f64 = self.workers.iter().map(|w| w.busy_s).sum();
        t.push_str(&format!(
            "{:>8}  {:>10}  {:>8}  {:>9.3}  {:>6}  {} {}, {:.3} s wall{}\n",
            "total",
            self.total_records,
            self.total_failed,
            busy,
            "",
            self.workers.len(),
            if self.executor == "thread" {
                "threads"
            } else {
                "processes"
            },
            self.wall_s,
            if self.not_run > 0 {
                format!(", {} records not run", self.not_run)
            } else {
                String::new()
            }
        ));
        t
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        serde_json::to_writer_pretty(BufWriter::new(file), self)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// `--joblog`: one tab-separated line per record, in the order written.
pub struct JobLog {
    out: BufWriter<File>,
}

/// The job log's header line (its columns).
pub const JOBLOG_HEADER: &str = "seq\tpid\tstart\tduration_s\toutcome";

impl JobLog {
    pub fn create(path: &Path, append: bool) -> anyhow::Result<JobLog> {
        let exists = path.exists();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .with_context(|| format!("cannot create job log {}", path.display()))?;
        let mut log = JobLog {
            out: BufWriter::new(file),
        };
        if !(append && exists) {
            writeln!(log.out, "{JOBLOG_HEADER}")?;
        }
        Ok(log)
    }

    pub fn record(
        &mut self,
        seq: u64,
        pid: u32,
        started_us: u64,
        duration: Duration,
        result: Result<(), &RecordError>,
    ) -> io::Result<()> {
        let outcome = match result {
            Ok(()) => "ok",
            Err(e) => error_kind(e),
        };
        writeln!(
            self.out,
            "{seq}\t{pid}\t{}.{:06}\t{:.6}\t{outcome}",
            started_us / 1_000_000,
            started_us % 1_000_000,
            duration.as_secs_f64()
        )
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn joblog_lines_have_the_documented_columns() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("jobs.tsv");
        let mut log = JobLog::create(&p, false).unwrap();
        log.record(
            0,
            42,
            1_700_000_000_123_456,
            Duration::from_millis(1500),
            Ok(()),
        )
        .unwrap();
        log.record(1, 43, 5, Duration::ZERO, Err(&RecordError::Cancelled))
            .unwrap();
        log.flush().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            text,
            "seq\tpid\tstart\tduration_s\toutcome\n\
             0\t42\t1700000000.123456\t1.500000\tok\n\
             1\t43\t0.000005\t0.000000\tcancelled\n"
        );
        // Appending (resume) keeps one header.
        drop(log);
        let mut log = JobLog::create(&p, true).unwrap();
        log.record(2, 44, 0, Duration::ZERO, Ok(())).unwrap();
        log.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(&p)
                .unwrap()
                .matches("seq\t")
                .count(),
            1
        );
    }
}
