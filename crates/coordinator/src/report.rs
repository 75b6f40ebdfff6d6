//! What a run reports besides its results: per-worker statistics (table and
//! JSON) and the job log.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
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
    /// Failed records, bad input not counted.
    pub failed: u64,
    /// Records that did not decode as the task's input.
    pub bad_input: u64,
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
            failed: s.failed.saturating_sub(s.bad_input),
            bad_input: s.bad_input,
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
    pub total_bad_input: u64,
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
                bad_input: 0,
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
        let total_bad_input = workers.iter().map(|w| w.bad_input).sum();
        Stats {
            workers,
            total_records,
            total_failed,
            total_bad_input,
            not_run: records.saturating_sub(total_records),
            wall_s: wall.as_secs_f64(),
            executor: executor.to_owned(),
        }
    }

    /// The table printed by `--stats`. A `bad input` column appears when
    /// a worker had records that did not decode (not counted as failed).
    pub fn table(&self) -> String {
        let bad = self.total_bad_input > 0;
        let bad_cell = |n: u64| {
            if bad {
                format!("{n:>9}  ")
            } else {
                String::new()
            }
        };
        let mut t = String::new();
        t.push_str(&format!(
            "{:>8}  {:>10}  {:>8}  {}{:>9}  {:>6}  {}\n",
            "pid",
            "records",
            "failed",
            if bad {
                format!("{:>9}  ", "bad input")
            } else {
                String::new()
            },
            "busy (s)",
            "util",
            "ended"
        ));
        for w in &self.workers {
            t.push_str(&format!(
                "{:>8}  {:>10}  {:>8}  {}{:>9.3}  {:>5.1}%  {}\n",
                w.pid,
                w.records,
                w.failed,
                bad_cell(w.bad_input),
                w.busy_s,
                w.utilisation * 100.0,
                w.ended
            ));
        }
        let busy: f64 = self.workers.iter().map(|w| w.busy_s).sum();
        t.push_str(&format!(
            "{:>8}  {:>10}  {:>8}  {}{:>9.3}  {:>6}  {} {}, {:.3} s wall{}\n",
            "total",
            self.total_records,
            self.total_failed,
            bad_cell(self.total_bad_input),
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
        let named = |what: &str| format!("cannot {what} statistics file {}", path.display());
        let mut out = BufWriter::new(File::create(path).with_context(|| named("create"))?);
        serde_json::to_writer_pretty(&mut out, self).with_context(|| named("write"))?;
        // A write error may show only when the buffer is written out.
        out.flush().with_context(|| named("write"))
    }
}

/// The job log's header line (its columns).
pub const JOBLOG_HEADER: &str = "seq\tpid\tstart\tduration_s\toutcome";

/// `--joblog`: one tab-separated line per record, written with the record's
/// output line (see [`crate::output::Output`]).
#[derive(Debug, Clone, Copy)]
pub struct JobEntry {
    pub seq: u64,
    pub pid: u32,
    pub started_us: u64,
    pub duration: Duration,
    pub outcome: &'static str,
}

impl JobEntry {
    pub fn new(
        seq: u64,
        pid: u32,
        started_us: u64,
        duration: Duration,
        result: Result<(), &RecordError>,
    ) -> JobEntry {
        JobEntry {
            seq,
            pid,
            started_us,
            duration,
            outcome: match result {
                Ok(()) => "ok",
                Err(e) => error_kind(e),
            },
        }
    }

    pub fn write_to(&self, buf: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        let _ = writeln!(
            buf,
            "{}\t{}\t{}.{:06}\t{:.6}\t{}",
            self.seq,
            self.pid,
            self.started_us / 1_000_000,
            self.started_us % 1_000_000,
            self.duration.as_secs_f64(),
            self.outcome
        );
    }
}

/// Open the job log. Fresh: created with its header. Resuming after
/// `records` records: cut to its header and exactly those records' lines
/// (a crash can leave it ahead of the output, or with a partial last line),
/// then appended to.
pub fn open_joblog(path: &Path, resume_after: Option<u64>) -> anyhow::Result<File> {
    let named = |what: &str| format!("cannot {what} job log {}", path.display());
    let Some(records) = resume_after else {
        let mut file = File::create(path).with_context(|| named("create"))?;
        writeln!(file, "{JOBLOG_HEADER}").with_context(|| named("write"))?;
        return Ok(file);
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| named("open"))?;
    let mut text = Vec::new();
    file.read_to_end(&mut text).with_context(|| named("read"))?;
    // Keep the header and `records` complete lines after it.
    let mut keep = 0usize;
    let mut lines = 0u64;
    let wanted = records + 1;
    for (i, b) in text.iter().enumerate() {
        if lines == wanted {
            break;
        }
        if *b == b'\n' {
            lines += 1;
            keep = i + 1;
        }
    }
    if lines == 0 {
        // Empty (or only a partial header): start it again.
        keep = 0;
    } else if !text.starts_with(JOBLOG_HEADER.as_bytes()) {
        anyhow::bail!(
            "{} is not a job log (its first line is not `{}`): refusing to resume into it",
            path.display(),
            JOBLOG_HEADER.replace('\t', " ")
        );
    }
    if lines > 0 && lines < wanted {
        log::warn!(
            "job log {} holds {} records but the output holds {records}: the lines of the others are missing",
            path.display(),
            lines - 1
        );
    }
    if keep < text.len() {
        log::info!(
            "job log {}: dropping {} bytes written after the output's last record",
            path.display(),
            text.len() - keep
        );
    }
    file.set_len(keep as u64).with_context(|| named("cut"))?;
    file.seek(SeekFrom::End(0))
        .with_context(|| named("seek in"))?;
    if keep == 0 {
        writeln!(file, "{JOBLOG_HEADER}").with_context(|| named("write"))?;
    }
    Ok(file)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn joblog_lines_have_the_documented_columns() {
        let mut buf = Vec::new();
        JobEntry::new(
            0,
            42,
            1_700_000_000_123_456,
            Duration::from_millis(1500),
            Ok(()),
        )
        .write_to(&mut buf);
        JobEntry::new(1, 43, 5, Duration::ZERO, Err(&RecordError::Cancelled)).write_to(&mut buf);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "0\t42\t1700000000.123456\t1.500000\tok\n\
             1\t43\t0.000005\t0.000000\tcancelled\n"
        );
    }

    #[test]
    fn resuming_cuts_the_joblog_to_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("jobs.tsv");
        drop(open_joblog(&p, None).unwrap());
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{JOBLOG_HEADER}\n")
        );
        // Ahead of the output by one record and a partial line.
        let ahead = format!("{JOBLOG_HEADER}\n0\t1\t0.0\t0.0\tok\n1\t1\t0.0\t0.0\tok\n2\t1\t0.");
        std::fs::write(&p, &ahead).unwrap();
        let mut f = open_joblog(&p, Some(1)).unwrap();
        writeln!(f, "1\t2\t0.0\t0.0\tok").unwrap();
        drop(f);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{JOBLOG_HEADER}\n0\t1\t0.0\t0.0\tok\n1\t2\t0.0\t0.0\tok\n")
        );
        // Missing or empty: a header, then appended.
        let q = dir.path().join("new.tsv");
        drop(open_joblog(&q, Some(5)).unwrap());
        assert_eq!(
            std::fs::read_to_string(&q).unwrap(),
            format!("{JOBLOG_HEADER}\n")
        );
        // Not a job log: refused.
        std::fs::write(&q, "{\"n\":1}\n").unwrap();
        assert!(open_joblog(&q, Some(1)).is_err());
    }
}
