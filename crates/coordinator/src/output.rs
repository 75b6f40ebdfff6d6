//! The ordered JSON-lines output, and resuming from it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use procpool::RecordError;
use serde::Serialize;

/// Writes one JSON object per line, flushing often enough that slow runs
/// show each line as it completes and seldom enough that fast runs stay fast.
pub struct Output {
    out: BufWriter<Box<dyn Write>>,
    last_flush: Instant,
}

impl Output {
    /// Stdout, or a file created (or, with `resume`, appended to).
    pub fn open(path: Option<&Path>, resume: bool) -> anyhow::Result<Output> {
        let sink: Box<dyn Write> = match path {
            None => Box::new(io::stdout()),
            Some(p) => {
                let file = if resume {
                    OpenOptions::new().append(true).create(true).open(p)
                } else {
                    File::create(p)
                };
                Box::new(file.with_context(|| format!("cannot open output {}", p.display()))?)
            }
        };
        Ok(Output {
            out: BufWriter::with_capacity(256 << 10, sink),
            last_flush: Instant::now(),
        })
    }

    /// Write a result line.
    pub fn ok<O: Serialize>(&mut self, value: &O, took: Duration) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value).map_err(io::Error::other)?;
        self.end_line(took)
    }

    /// Write a failed record's line, in its place.
    pub fn failed(&mut self, seq: u64, error: &RecordError, took: Duration) -> io::Result<()> {
        let line = serde_json::json!({
            "seq": seq,
            "error": { "kind": error_kind(error), "message": error.to_string() },
        });
        serde_json::to_writer(&mut self.out, &line).map_err(io::Error::other)?;
        self.end_line(took)
    }

    fn end_line(&mut self, took: Duration) -> io::Result<()> {
        self.out.write_all(b"\n")?;
        if took >= Duration::from_millis(10)
            || self.last_flush.elapsed() >= Duration::from_millis(50)
        {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.last_flush = Instant::now();
        self.out.flush()
    }
}

/// A short machine-readable name for each way a record can fail.
pub fn error_kind(e: &RecordError) -> &'static str {
    match e {
        RecordError::Task(_) => "task_error",
        RecordError::Panicked(_) => "panicked",
        RecordError::BadInput(_) => "bad_input",
        RecordError::WorkerDied { .. } => "worker_died",
        RecordError::TimedOut { .. } => "timed_out",
        RecordError::Cancelled => "cancelled",
        RecordError::PoolBroken(_) => "pool_broken",
        RecordError::BadOutput(_) => "bad_output",
    }
}

/// Prepare `path` for resuming: cut a partial last line (a run killed in
/// the middle of a write) and return how many complete lines remain.
pub fn prepare_resume(path: &Path) -> anyhow::Result<u64> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot open {} to resume", path.display()))
        }
    };
    let mut lines = 0u64;
    let mut complete_len = 0u64;
    let mut pos = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            if *b == b'\n' {
                lines += 1;
                complete_len = pos + i as u64 + 1;
            }
        }
        pos += n as u64;
    }
    if complete_len < pos {
        log::warn!(
            "{}: dropping a partial last line ({} bytes) before resuming",
            path.display(),
            pos - complete_len
        );
        file.set_len(complete_len)?;
        file.seek(SeekFrom::End(0))?;
    }
    Ok(lines)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resume_counts_complete_lines_and_cuts_a_partial_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        assert_eq!(prepare_resume(&p).unwrap(), 0);
        std::fs::write(&p, b"{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        assert_eq!(prepare_resume(&p).unwrap(), 2);
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(prepare_resume(&p).unwrap(), 2);
    }

    #[test]
    fn failed_lines_name_the_kind() {
        let e = RecordError::Panicked("boom".into());
        assert_eq!(error_kind(&e), "panicked");
        let line = serde_json::json!({"seq": 3, "error": {"kind": error_kind(&e), "message": e.to_string()}});
        assert_eq!(
            line.to_string(),
            r#"{"error":{"kind":"panicked","message":"task panicked: boom"},"seq":3}"#
        );
    }
}
