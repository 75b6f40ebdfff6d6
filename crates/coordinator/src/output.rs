//! The ordered JSON-lines output and the job log, and resuming from them.
//!
//! Both files go through one write path: lines are buffered together and
//! written out together, the job log's first, so that whatever a crash (even
//! `kill -9`) leaves, the job log holds at least the records the output
//! holds; resuming cuts it back to exactly those. The list of records skipped
//! as bad input goes out before both, so that it names every record skipped
//! before the output's last line.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use procpool::RecordError;

use crate::report::JobEntry;
use crate::resume::{Patch, Sidecar};

/// The list of skipped records' input positions (`OUTPUT.procpool-skipped`),
/// appended to; created with its first entry.
struct SkipList {
    path: PathBuf,
    file: Option<File>,
    buf: Vec<u8>,
    /// Entries written out (those of earlier runs included), and buffered.
    written: u64,
    buffered: u64,
}

impl SkipList {
    fn write_out(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let named = |e: io::Error| named(&format!("{}", self.path.display()), e);
        if self.file.is_none() {
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .open(&self.path)
                .map_err(named)?;
            self.file = Some(file);
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(&self.buf).map_err(named)?;
        }
        self.buf.clear();
        self.written += std::mem::take(&mut self.buffered);
        Ok(())
    }
}

/// Buffered bytes beyond which lines are written out at once.
const WRITE_OUT_BYTES: usize = 256 << 10;
/// Bytes of lines held while the output is still being created, beyond
/// which the writer waits for it.
const HOLD_BYTES: usize = 4 << 20;
/// A run of lines this large, coming when nothing waits in the buffer, is
/// written out from where it is rather than copied into the buffer first.
const DIRECT_BYTES: usize = 64 << 10;
/// How often the resume sidecar is rewritten while lines are written out.
const SIDECAR_EVERY: Duration = Duration::from_secs(1);
/// Lines wait at most about this long in the buffers while results come
/// (a record that took this long goes out at once); the flush thread writes
/// out what waits when none come.
const PROMPT: Duration = Duration::from_millis(10);

/// Writes one JSON object per line (and a job-log line per record). Lines of
/// slow records are written out at once; fast runs are buffered, and a
/// background thread writes out whatever waits every 100 ms, so that a
/// finished line never sits unwritten while a slow record runs.
pub struct Output {
    shared: Arc<Shared>,
    line: Vec<u8>,
}

struct Shared {
    sinks: Mutex<Sinks>,
    dirty: AtomicBool,
    closed: AtomicBool,
}

/// One file written, with what it is called in errors.
struct Sink {
    name: String,
    file: Box<dyn Write + Send>,
    buf: Vec<u8>,
    /// The file being created on a thread of its own (truncating a large
    /// output of an earlier run takes milliseconds, which the first
    /// batches need not wait for); lines are held in `buf` meanwhile.
    opening: Option<JoinHandle<io::Result<File>>>,
}

impl Sink {
    /// The buffer, then `more`.
    fn write_out(&mut self, more: &[u8]) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf)?;
            self.buf.clear();
        }
        if !more.is_empty() {
            self.file.write_all(more)?;
        }
        self.file.flush()
    }
}

struct Sinks {
    out: Sink,
    joblog: Option<Sink>,
    sidecar: Option<(Sidecar, Instant)>,
    skips: Option<SkipList>,
    /// `--resume-failed`: lines go to a copy of the output (and of the job
    /// log) that replaces it at the end.
    patch: Option<Patch>,
    joblog_patch: Option<Patch>,
    /// Records written out, and records still in the buffers.
    written: u64,
    buffered: u64,
    /// When the buffers were last written out.
    written_at: Instant,
    /// The first write error, repeated to every later call: a run whose
    /// output cannot be written stops.
    failed: Option<(io::ErrorKind, String)>,
}

impl Shared {
    /// The sinks, locked, once no earlier write has failed.
    fn sinks(&self) -> io::Result<std::sync::MutexGuard<'_, Sinks>> {
        let sinks = self
            .sinks
            .lock()
            .map_err(|_| io::Error::other("output lock poisoned"))?;
        sinks.check()?;
        Ok(sinks)
    }
}

impl Sinks {
    /// Lines were added to the buffers: write them out now if `slow` (one
    /// of them took [`PROMPT`] or more), the buffer is full or the last
    /// lines went out [`PROMPT`] ago; else leave them to the flush thread.
    fn added(&mut self, slow: bool, dirty: &AtomicBool) -> io::Result<()> {
        if slow || self.out.buf.len() >= WRITE_OUT_BYTES || self.written_at.elapsed() >= PROMPT {
            self.write_out(false, &[])
        } else {
            dirty.store(true, Ordering::Relaxed);
            Ok(())
        }
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
            None => Ok(()),
        }
    }

    /// The skipped records, the job log, then the output (its buffer, then
    /// `more`), then (now and then) the sidecar.
    fn write_out(&mut self, final_: bool, more: &[u8]) -> io::Result<()> {
        self.check()?;
        let mut result = Ok(());
        if let Some(s) = self.skips.as_mut() {
            result = s.write_out();
        }
        if let (Ok(()), Some(j)) = (&result, self.joblog.as_mut()) {
            result = j.write_out(&[]).map_err(|e| named(&j.name, e));
        }
        if result.is_ok() {
            let wait = final_ || self.out.buf.len() + more.len() >= HOLD_BYTES;
            result = match self.open_out(wait) {
                Ok(true) => self
                    .out
                    .write_out(more)
                    .map_err(|e| named(&self.out.name, e)),
                // Held (and not counted as written) until the file exists.
                Ok(false) => {
                    self.out.buf.extend_from_slice(more);
                    return Ok(());
                }
                Err(e) => Err(e),
            };
        }
        if let Err(e) = &result {
            self.failed = Some((e.kind(), e.to_string()));
            return result;
        }
        self.written += std::mem::take(&mut self.buffered);
        self.written_at = Instant::now();
        // A patched copy counts only once it replaces the output.
        let patching = self.patch.is_some();
        if let Some((sidecar, last)) = self.sidecar.as_mut().filter(|_| !patching) {
            if final_ || last.elapsed() >= SIDECAR_EVERY {
                *last = Instant::now();
                sidecar.records = self.written;
                sidecar.skipped = self.skips.as_ref().map_or(0, |s| s.written);
                if let Err(e) = sidecar.save() {
                    let e = io::Error::new(e.kind(), format!("{e}"));
                    self.failed = Some((e.kind(), e.to_string()));
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl Sinks {
    /// Whether the output file exists (waiting for it if `wait`). Once it
    /// does, and before its first line, the sidecar says that this run
    /// writes it.
    fn open_out(&mut self, wait: bool) -> io::Result<bool> {
        match &self.out.opening {
            None => return Ok(true),
            Some(t) if !wait && !t.is_finished() => return Ok(false),
            Some(_) => {}
        }
        if let Some(t) = self.out.opening.take() {
            let file = t
                .join()
                .map_err(|_| io::Error::other("the thread creating the output panicked"))??;
            self.out.file = Box::new(file);
        }
        if let Some((sidecar, last)) = self.sidecar.as_mut().filter(|_| self.patch.is_none()) {
            *last = Instant::now();
            sidecar.records = self.written;
            sidecar.skipped = self.skips.as_ref().map_or(0, |s| s.written);
            sidecar.save()?;
        }
        Ok(true)
    }
}

/// An I/O error that says which file it is about.
fn named(name: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot write {name}: {e}"))
}

/// Open `path` for a fresh output. A regular file already there is replaced
/// by a new one, made with its permission bits, rather than cut to nothing,
/// when nothing but its contents would change: it is no symlink, has no
/// other name (hard link), belongs to this process's user and group, has
/// no extended attributes (ACLs, security labels) and no setuid, setgid or
/// sticky bit, and this process may write it (a read-only output is refused
/// as before). Anything else (a device, a FIFO, any of those, a file the
/// directory does not let this process remove) is truncated and written
/// through, as `File::create` does.
///
/// Why: on ext4 (its default `auto_da_alloc`), closing a file that was
/// truncated and then written starts the writing back of all of it there
/// and then, and the close (so the run) waits for that: 5–13 ms for a
/// 42 MB output, more for a larger one. A new file is written back by the
/// kernel later, like any other.
fn create_fresh(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return File::create(path);
    };
    // SAFETY: neither takes an argument nor fails.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mode = meta.permissions().mode() & 0o7777;
    let replaceable = meta.file_type().is_file()
        && meta.nlink() == 1
        && meta.uid() == uid
        && meta.gid() == gid
        && mode & 0o7000 == 0
        && !has_xattrs(path)
        // Writable by this process, as truncating it needs (opened without
        // truncating; a regular file, so the open does not block).
        && OpenOptions::new().write(true).open(path).is_ok();
    if !replaceable || std::fs::remove_file(path).is_err() {
        return File::create(path);
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(file) => {
            // The mode given to open is cut by the umask; the old one was not.
            // In a setgid directory the new file takes the directory's group.
            let fixed = file
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .and_then(|()| match file.metadata() {
                    Ok(m) if m.gid() != gid => std::os::unix::fs::fchown(&file, None, Some(gid)),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                });
            if let Err(e) = fixed {
                log::warn!(
                    "output {}: cannot give it back its mode {mode:o} and group {gid}: {e}",
                    path.display()
                );
            }
            Ok(file)
        }
        // Made again by someone else meanwhile: written through, as any file.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => File::create(path),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("{e} (the earlier output there was removed, to be made again)"),
        )),
    }
}

/// Whether the file at `path` (not following a symlink) has extended
/// attributes; `false` where the file system has none.
fn has_xattrs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(name) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return true; // a NUL in the name: not replaced
    };
    // SAFETY: a NUL-terminated path; a null buffer of size 0 asks for the
    // size of the list only.
    unsafe { libc::llistxattr(name.as_ptr(), std::ptr::null_mut(), 0) > 0 }
}

/// Where the output goes and how it starts.
pub struct OutputSpec<'a> {
    /// The file, or stdout.
    pub path: Option<&'a Path>,
    /// Append to what a previous run wrote.
    pub append: bool,
    /// The job log, opened (and, on resume, cut) by [`crate::report::open_joblog`].
    pub joblog: Option<(PathBuf, File)>,
    /// The resume sidecar kept next to the output.
    pub sidecar: Option<Sidecar>,
    /// With `--resume-failed`: write a patched copy of the output instead.
    pub patch: Option<Patch>,
}

impl Output {
    /// Stdout, or a file created (or appended to).
    pub fn open(spec: OutputSpec<'_>) -> anyhow::Result<Output> {
        let mut opening = None;
        let (name, file): (String, Box<dyn Write + Send>) = match spec.path {
            None => ("stdout".into(), Box::new(io::stdout())),
            Some(p) if spec.patch.is_some() => {
                let tmp = spec.patch.as_ref().map_or(p, |patch| patch.tmp_path());
                let file = File::create(tmp)
                    .with_context(|| format!("cannot create {}", tmp.display()))?;
                (format!("output {}", tmp.display()), Box::new(file))
            }
            Some(p) if spec.append => {
                let file = OpenOptions::new().append(true).create(true).open(p);
                let file = file.with_context(|| format!("cannot open output {}", p.display()))?;
                (format!("output {}", p.display()), Box::new(file))
            }
            Some(p) => {
                let path = p.to_owned();
                let created = std::thread::Builder::new()
                    .name("output-create".into())
                    .spawn(move || {
                        create_fresh(&path).map_err(|e| {
                            io::Error::new(
                                e.kind(),
                                format!("cannot open output {}: {e}", path.display()),
                            )
                        })
                    })
                    .context("cannot start the thread that creates the output")?;
                opening = Some(created);
                (format!("output {}", p.display()), Box::new(io::sink()))
            }
        };
        let mut joblog_patch = None;
        let joblog = match spec.joblog {
            None => None,
            Some((path, file)) => {
                let (name, file): (PathBuf, Box<dyn Write + Send>) = match &spec.patch {
                    // Patched like the output, through a copy of its own.
                    Some(patch) => {
                        drop(file);
                        let p = Patch::job_log(&path, patch.lines(), patch.skips().clone())?;
                        let tmp = p.tmp_path().to_owned();
                        let copy = File::create(&tmp)
                            .with_context(|| format!("cannot create {}", tmp.display()))?;
                        joblog_patch = Some(p);
                        (tmp, Box::new(copy))
                    }
                    None => (path, Box::new(file)),
                };
                Some(Sink {
                    name: format!("job log {}", name.display()),
                    file,
                    buf: Vec::with_capacity(64 << 10),
                    opening: None,
                })
            }
        };
        // Beside a file that can be resumed: the list of skipped records,
        // which a fresh run starts again.
        let skips = match (spec.path, &spec.sidecar) {
            (Some(p), Some(sidecar)) => {
                let path = crate::resume::skips_path(p);
                if !spec.append {
                    match std::fs::remove_file(&path) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => {
                            return Err(e).with_context(|| {
                                format!("cannot remove {} (of an earlier run)", path.display())
                            })
                        }
                        _ => {}
                    }
                }
                Some(SkipList {
                    path,
                    file: None,
                    buf: Vec::new(),
                    written: sidecar.skipped,
                    buffered: 0,
                })
            }
            _ => None,
        };
        let mut sinks = Sinks {
            out: Sink {
                name,
                file,
                buf: Vec::with_capacity(WRITE_OUT_BYTES + (64 << 10)),
                opening,
            },
            joblog,
            sidecar: spec.sidecar.map(|s| (s, Instant::now())),
            skips,
            patch: spec.patch,
            joblog_patch,
            written: 0,
            buffered: 0,
            written_at: Instant::now(),
            failed: None,
        };
        // The sidecar exists before the first line does (once the output
        // does, if it is still being created).
        sinks.written = sinks.sidecar.as_ref().map_or(0, |(s, _)| s.records);
        sinks.write_out(sinks.out.opening.is_none(), &[])?;
        let shared = Arc::new(Shared {
            sinks: Mutex::new(sinks),
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
                    if let Ok(mut sinks) = shared.sinks.lock() {
                        // An error is kept and returned to the writer's next call.
                        let _ = sinks.write_out(false, &[]);
                    }
                }
            })
            .context("cannot start the output thread")?;
        Ok(Output {
            shared,
            line: Vec::with_capacity(256),
        })
    }

    /// Write a result line: the worker's JSON, as it is.
    pub fn ok_bytes(&mut self, json: &[u8], entry: JobEntry) -> io::Result<()> {
        self.end_line(json, entry)
    }

    /// Write the lines of `count` successful records at once (each ends
    /// with its newline), when nothing needs them one by one: not (and
    /// nothing written) if the run patches an output or keeps a job log.
    /// Returns whether it wrote them.
    /// `slow`: one of them took long enough that the lines go out now; they
    /// also go out if the last lines did over [`PROMPT`] ago, so that a
    /// stream's lines come out promptly whether or not records are timed.
    pub fn ok_lines(&mut self, lines: &[u8], count: u64, slow: bool) -> io::Result<bool> {
        let mut sinks = self.shared.sinks()?;
        if sinks.patch.is_some() || sinks.joblog.is_some() {
            return Ok(false);
        }
        sinks.buffered += count;
        if sinks.out.buf.is_empty() && lines.len() >= DIRECT_BYTES {
            // One copy fewer for the bulk of a large output.
            sinks.write_out(false, lines)?;
        } else {
            sinks.out.buf.extend_from_slice(lines);
            sinks.added(slow, &self.shared.dirty)?;
        }
        Ok(true)
    }

    /// Write a failed record's line, in its place.
    pub fn failed(&mut self, seq: u64, error: &RecordError, entry: JobEntry) -> io::Result<()> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        let written = serde_json::to_writer(&mut line, &error_line(seq, error))
            .map_err(io::Error::other)
            .and_then(|()| self.end_line(&line, entry));
        self.line = line;
        written
    }

    /// A record skipped as bad input: no line, but its input position is
    /// listed (beside a file output), so that resuming knows which input
    /// record each line is.
    pub fn skipped(&mut self, seq: u64) -> io::Result<()> {
        let mut sinks = self.shared.sinks()?;
        if sinks.patch.as_ref().is_some_and(|p| p.replaces(seq)) {
            // Run again by --resume-failed: its earlier line stays.
            return Ok(());
        }
        if let Some(s) = sinks.skips.as_mut() {
            s.buf.extend_from_slice(format!("{seq}\n").as_bytes());
            s.buffered += 1;
            self.shared.dirty.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Write `line` (and its line end) in its place, straight into the
    /// output's buffer.
    fn end_line(&mut self, line: &[u8], entry: JobEntry) -> io::Result<()> {
        let mut sinks = self.shared.sinks()?;
        let sinks = &mut *sinks;
        let mut new_line = true;
        if let Some(patch) = sinks.patch.as_mut() {
            // The original lines before this record, then this record's in place of its own.
            new_line = !patch.replaces(entry.seq);
            patch
                .before(entry.seq, &mut sinks.out.buf)
                .map_err(|e| named(&sinks.out.name, e))?;
        }
        sinks.out.buf.extend_from_slice(line);
        sinks.out.buf.push(b'\n');
        if let Some(j) = sinks.joblog.as_mut() {
            if let Some(patch) = sinks.joblog_patch.as_mut() {
                patch
                    .before(entry.seq, &mut j.buf)
                    .map_err(|e| named(&j.name, e))?;
            }
            entry.write_to(&mut j.buf);
        }
        if new_line {
            sinks.buffered += 1;
        }
        sinks.added(entry.duration >= PROMPT, &self.shared.dirty)
    }

    /// The end of the run: write out everything buffered and the sidecar;
    /// with `--resume-failed`, copy the rest of the output and put the copy
    /// in its place.
    pub fn finish(&mut self) -> io::Result<()> {
        let mut sinks = self.shared.sinks()?;
        let sinks = &mut *sinks;
        if let Some(patch) = sinks.patch.as_mut() {
            patch
                .rest(&mut sinks.out.buf)
                .map_err(|e| named(&sinks.out.name, e))?;
            if let (Some(j), Some(jp)) = (sinks.joblog.as_mut(), sinks.joblog_patch.as_mut()) {
                jp.rest(&mut j.buf).map_err(|e| named(&j.name, e))?;
            }
            // The copies complete (no sidecar yet), then in place (the job
            // log first, like every write), then the sidecar.
            sinks.write_out(true, &[])?;
            if let Some(jp) = sinks.joblog_patch.take() {
                jp.commit()?;
            }
            if let Some(patch) = sinks.patch.take() {
                patch.commit()?;
            }
        }
        sinks.write_out(true, &[])
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
    }
}

/// The line a failed record leaves in the output, in its place.
pub fn error_line(seq: u64, error: &RecordError) -> serde_json::Value {
    serde_json::json!({
        "seq": seq,
        "error": { "kind": error_kind(error), "message": error.to_string() },
    })
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
        file.set_len(complete_len)
            .with_context(|| format!("cannot cut {}", path.display()))?;
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

    /// Small runs are buffered, a large one coming when nothing waits is
    /// written from where it is: the file gets every line, in order.
    #[test]
    fn runs_written_directly_or_through_the_buffer_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        let mut out = Output::open(OutputSpec {
            path: Some(&p),
            append: false,
            joblog: None,
            sidecar: None,
            patch: None,
        })
        .unwrap();
        let run = |from: u64, n: u64| -> Vec<u8> {
            (from..from + n)
                .flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes())
                .collect()
        };
        let big = 10_000; // ~100 KB: over DIRECT_BYTES
        let mut expected = Vec::new();
        let mut next = 0;
        for n in [3, big, big, 5, big, 1] {
            let lines = run(next, n);
            assert!(out.ok_lines(&lines, n, false).unwrap());
            expected.extend_from_slice(&lines);
            next += n;
        }
        assert!(run(0, big).len() >= DIRECT_BYTES);
        out.finish().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), expected);
    }

    #[test]
    fn failed_lines_name_the_kind() {
        let e = RecordError::Panicked("boom".into());
        assert_eq!(error_kind(&e), "panicked");
        let line = error_line(3, &e);
        assert_eq!(
            line.to_string(),
            r#"{"error":{"kind":"panicked","message":"task panicked: boom"},"seq":3}"#
        );
    }
}
