//! The ordered JSON-lines output, and resuming from it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use procpool::RecordError;
use serde::Serialize;

/// Writes one JSON object per line. Lines of slow records are flushed at
/// once; fast runs are buffered, and a background thread flushes whatever
/// waits every 100 ms, so that a finished line never sits unwritten while a
/// slow record runs.
pub struct Output {
    shared: Arc<Shared>,
    line: Vec<u8>,
}

struct Shared {
    out: Mutex<BufWriter<Box<dyn Write + Send>>>,
    dirty: AtomicBool,
    closed: AtomicBool,
}

impl Output {
    /// Stdout, or a file created (or, with `resume`, appended to).
    pub fn open(path: Option<&Path>, resume: bool) -> anyhow::Result<Output> {
        let sink: Box<dyn Write + Send> = match path {
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
        let shared = Arc::new(Shared {
            out: Mutex::new(BufWriter::with_capacity(256 << 10, sink)),
            dirty: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("output-flush".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(100));
                let Some(shared) = weak.upgrade() else { return };
                if shared.closed.load(Ordering::Relaxed) {
                    return;
                }
                if shared.dirty.swap(false, Ordering::Relaxed) {
                    if let Ok(mut out) = shared.out.lock() {
                        // An error shows again on the writer's next flush.
                        let _ = out.flush();
                    }
                }
            })
            .context("cannot start the output thread")?;
        Ok(Output {
            shared,
            line: Vec::with_capacity(256),
        })
    }

    /// Write a result line.
    pub fn ok<O: Serialize>(&mut self, value: &O, took: Duration) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, value).map_err(io::Error::other)?;
        self.end_line(took)
    }

    /// Write a failed record's line, in its place.
    pub fn failed(&mut self, seq: u64, error: &RecordError, took: Duration) -> io::Result<()> {
        let line = serde_json::json!({
            "seq": seq,
            "error": { "kind": error_kind(error), "message": error.to_string() },
        });
        self.line.clear();
        serde_json::to_writer(&mut self.line, &line).map_err(io::Error::other)?;
        self.end_line(took)
    }

    fn end_line(&mut self, took: Duration) -> io::Result<()> {
        self.line.push(b'\n');
        let mut out = self
            .shared
            .out
            .lock()
            .map_err(|_| io::Error::other("output lock poisoned"))?;
        out.write_all(&self.line)?;
        if took >= Duration::from_millis(10) {
            out.flush()?;
        } else {
            self.shared.dirty.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Write out everything buffered.
    pub fn flush(&mut self) -> io::Result<()> {
        self.shared
            .out
            .lock()
            .map_err(|_| io::Error::other("output lock poisoned"))?
            .flush()
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
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
        _ => "failed",
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
