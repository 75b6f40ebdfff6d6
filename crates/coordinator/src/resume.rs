//! What `--resume` needs to recognise a run: a small sidecar file next to the
//! output (`OUTPUT.procpool-resume`, JSON) with the task, its parameters, a
//! fingerprint of the input's first bytes and the records written so far.
//!
//! The sidecar is written (atomically: a temporary file renamed over it)
//! before the first output line, then about once a second as lines are
//! written out, and at the end. Since it is rewritten only after the lines it
//! counts are written, the output always holds at least `records` lines; a
//! shorter one was cut after the run (resuming then redoes the records cut).
//!
//! Records skipped as bad input (`--skip-bad-input`) leave no line, so line
//! *i* of the output is not always input record *i*. Their input positions
//! are appended to a second file, `OUTPUT.procpool-skipped` (one number a
//! line), written out before the output lines that follow them: whatever a
//! `kill -9` leaves, it lists every skipped record before the output's last
//! line, which is all it takes to map lines to input positions ([`Skips`]).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// Bytes of the input that identify it.
const PREFIX_BYTES: u64 = 64 << 10;
/// Bumped when the sidecar's meaning changes (2: skipped records are
/// listed in their own file, and counted here).
const FORMAT: u32 = 2;

/// The beginning of the input, as a length and a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputPrint {
    /// Where the records came from, as given (`-` for stdin, `demo`).
    pub source: String,
    /// How many bytes were hashed (the first 64 KiB, or all of a smaller file);
    /// `None` when the input could not be read twice (a pipe).
    pub prefix_len: Option<u64>,
    /// FNV-1a (64 bits, hex) of those bytes.
    pub prefix_fnv1a64: String,
}

impl InputPrint {
    /// The fingerprint of `input` (`None`: the built-in data set), hashing
    /// at most `limit` bytes. Reading it does not disturb the run's reading.
    pub fn of(input: Option<&str>, limit: u64) -> anyhow::Result<InputPrint> {
        let source = input.unwrap_or("demo").to_owned();
        let bytes: Option<Vec<u8>> = match input {
            None => Some(
                crate::input::DEMO_CSV.as_bytes()
                    [..crate::input::DEMO_CSV.len().min(limit as usize)]
                    .to_vec(),
            ),
            Some(path) => {
                // For stdin, its file: a fresh open has its own offset.
                let path = if path == "-" { "/proc/self/fd/0" } else { path };
                match fs::metadata(path) {
                    Ok(m) if m.is_file() => {
                        let mut buf = Vec::new();
                        File::open(path)
                            .and_then(|f| f.take(limit).read_to_end(&mut buf))
                            .map_err(|e| {
                                anyhow::anyhow!("cannot read input {}: {e}", input.unwrap_or(path))
                            })?;
                        Some(buf)
                    }
                    _ => None,
                }
            }
        };
        Ok(match bytes {
            Some(b) => InputPrint {
                source,
                prefix_len: Some(b.len() as u64),
                prefix_fnv1a64: format!("{:016x}", fnv1a64(&b)),
            },
            None => InputPrint {
                source,
                prefix_len: None,
                prefix_fnv1a64: String::new(),
            },
        })
    }
}

/// FNV-1a, 64 bits: stable across versions and platforms, which is all a
/// fingerprint that only recognises a file needs.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The sidecar's contents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    #[serde(skip)]
    path: PathBuf,
    pub format: u32,
    pub task: String,
    pub params: serde_json::Value,
    pub input: InputPrint,
    /// Output lines (records) written so far.
    pub records: u64,
    /// Entries of the skipped-records file written so far.
    #[serde(default)]
    pub skipped: u64,
}

/// Where the sidecar of `output` lives.
pub fn sidecar_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".procpool-resume");
    PathBuf::from(name)
}

/// Where the input positions of the records skipped in `output` are listed.
pub fn skips_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".procpool-skipped");
    PathBuf::from(name)
}

/// The input positions of the records that have no line in an output
/// (skipped as bad input), sorted: what maps its lines to input records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skips(Vec<u64>);

impl Skips {
    /// The list in `path` (none if it does not exist); a partial last line
    /// (a run killed in the middle of a write) is not an entry.
    pub fn load(path: &Path) -> anyhow::Result<Skips> {
        let text = match fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Skips::default()),
            Err(e) => bail!("cannot read {}: {e}", path.display()),
        };
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut list = Vec::new();
        for (i, line) in text[..complete].split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let n = std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.trim().parse::<u64>().ok());
            let Some(n) = n else {
                bail!(
                    "{} line {}: `{}` is not an input record number; it lists the records skipped in the output beside it",
                    path.display(),
                    i + 1,
                    String::from_utf8_lossy(line)
                );
            };
            list.push(n);
        }
        list.sort_unstable();
        list.dedup();
        Ok(Skips(list))
    }

    #[cfg(test)]
    pub fn from_positions(mut list: Vec<u64>) -> Skips {
        list.sort_unstable();
        list.dedup();
        Skips(list)
    }

    pub fn len(&self) -> u64 {
        self.0.len() as u64
    }

    /// The output line of the record at input position `seq` (for a
    /// skipped one, the line of the next record).
    pub fn line_of(&self, seq: u64) -> u64 {
        seq - self.0.partition_point(|&s| s < seq) as u64
    }

    /// The input position of the record after an output's first `lines`
    /// lines and the skipped records right after them: where resuming starts.
    pub fn position_after(&self, lines: u64) -> u64 {
        let mut at = lines;
        for &s in &self.0 {
            if s > at {
                break;
            }
            at += 1;
        }
        at
    }

    /// Forget the entries at or after `position` (records not yet covered
    /// by the output, skipped again when they are run again); whether any were.
    pub fn keep_before(&mut self, position: u64) -> bool {
        let keep = self.0.partition_point(|&s| s < position);
        let cut = keep < self.0.len();
        self.0.truncate(keep);
        cut
    }

    /// Write the list to `path` atomically (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = String::with_capacity(self.0.len() * 8);
        for n in &self.0 {
            text.push_str(&n.to_string());
            text.push('\n');
        }
        replace_file(path, text.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    }
}

/// Write `bytes` to `path` atomically: to `PATH.tmp`, renamed over it.
///
/// The file it replaces is freed when its last holder lets go of it: held
/// here, that is another thread, since on a file system mounted with
/// `discard` freeing waits for the disk (1-4 ms on ext4 here), which would
/// hold up the output.
fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes)?;
    // (Opened without blocking, should the name be a FIFO.)
    let replaced = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok();
    fs::rename(&tmp, path)?;
    if let Some(replaced) = replaced {
        // Should the thread not start, the file is let go of here.
        let _ = std::thread::Builder::new()
            .name("replaced-free".into())
            .spawn(move || drop(replaced));
    }
    Ok(())
}

impl Sidecar {
    pub fn new(output: &Path, task: &str, params: serde_json::Value, input: InputPrint) -> Self {
        Sidecar {
            path: sidecar_path(output),
            format: FORMAT,
            task: task.to_owned(),
            params,
            input,
            records: 0,
            skipped: 0,
        }
    }

    /// Write it atomically; the error names the file.
    pub fn save(&self) -> io::Result<()> {
        let named = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("cannot write resume file {}: {e}", self.path.display()),
            )
        };
        let mut json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        json.push(b'\n');
        replace_file(&self.path, &json).map_err(named)
    }

    fn load(path: &Path) -> anyhow::Result<Option<Sidecar>> {
        let text = match fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => bail!("cannot read resume file {}: {e}", path.display()),
        };
        let mut s: Sidecar = serde_json::from_slice(&text)
            .map_err(|e| anyhow::anyhow!("resume file {} is not valid: {e}", path.display()))?;
        s.path = path.to_owned();
        Ok(Some(s))
    }

    /// Refuse to resume `output` (holding `lines` complete lines) with a run
    /// that does not match the one that wrote it. Returns how many skipped
    /// records the old sidecar says were listed.
    pub fn check_resume(&self, output: &Path, lines: u64) -> anyhow::Result<u64> {
        let refuse = |why: String| -> anyhow::Result<u64> {
            bail!(
                "cannot --resume {}: {why}; run without --resume to start again",
                output.display()
            )
        };
        let Some(old) = Self::load(&self.path)? else {
            if lines == 0 {
                return Ok(0);
            }
            return refuse(format!(
                "it holds {lines} lines but has no {} next to it, so nothing says which run wrote it",
                self.path.display()
            ));
        };
        if old.format != FORMAT {
            return refuse(format!(
                "{} has format {} (this coordinator writes {FORMAT})",
                self.path.display(),
                old.format
            ));
        }
        if old.task != self.task {
            return refuse(format!(
                "it was written by task `{}`, this run is task `{}`",
                old.task, self.task
            ));
        }
        if old.params != self.params {
            return refuse(format!(
                "it was written with task parameters {}, this run has {}",
                old.params, self.params
            ));
        }
        match (old.input.prefix_len, self.input.prefix_len) {
            (Some(len), Some(_)) => {
                // Hash as many bytes of this input as were hashed then.
                let now = InputPrint::of(
                    (self.input.source != "demo").then_some(self.input.source.as_str()),
                    len,
                )?;
                if now.prefix_len != Some(len) || now.prefix_fnv1a64 != old.input.prefix_fnv1a64 {
                    return refuse(format!(
                        "its input was {} and {} does not begin with the same {len} bytes",
                        old.input.source, self.input.source
                    ));
                }
            }
            _ if old.input.source != self.input.source => {
                return refuse(format!(
                    "its input was {}, this run reads {}",
                    old.input.source, self.input.source
                ))
            }
            _ => log::warn!(
                "resuming from a pipe: the input cannot be checked against the run that wrote {}",
                output.display()
            ),
        }
        if lines < old.records {
            // Cut by hand, say, to redo the last records: they are run again.
            log::warn!(
                "{} holds {lines} lines but {} had been written: it was cut after the run; resuming after line {lines}",
                output.display(),
                old.records
            );
        }
        Ok(old.skipped)
    }
}

/// Which input records a run processes: those at or after `tail_from`, and
/// the earlier ones listed in `again` (failed records run again).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Sorted input positions of records to run again.
    pub again: Vec<u64>,
    /// Input position from which every record runs.
    pub tail_from: u64,
}

impl Selection {
    /// Whether the record at input position `index` is run.
    pub fn wants(&self, index: u64) -> bool {
        index >= self.tail_from || self.again.binary_search(&index).is_ok()
    }

    /// The input position of the `k`-th record run.
    pub fn seq_of(&self, k: u64) -> u64 {
        match self.again.get(k as usize) {
            Some(&seq) => seq,
            None => self.tail_from + (k - self.again.len() as u64),
        }
    }
}

/// Where a run starts: which records it runs, the sidecar to keep, and with
/// `--resume-failed` the output whose failed lines are replaced.
pub struct ResumePlan {
    pub skip: u64,
    pub selection: Selection,
    pub sidecar: Option<Sidecar>,
    pub patch: Option<Patch>,
}

/// Input positions of the failed records of an output: lines that are
/// exactly `{"error": {...}, "seq": N}` with N the input position of the
/// record on that line (its line number, less the records skipped before it).
pub fn failed_lines(output: &Path, skips: &Skips) -> anyhow::Result<Vec<u64>> {
    use std::io::BufRead;
    let file =
        File::open(output).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", output.display()))?;
    let mut failed = Vec::new();
    // The input position of line i, walking the skipped records alongside.
    let mut skipped = skips.0.iter().peekable();
    let mut position = 0u64;
    for line in io::BufReader::new(file).split(b'\n') {
        while skipped.next_if(|&&s| s == position).is_some() {
            position += 1;
        }
        let seq = position;
        position += 1;
        let line = line.map_err(|e| anyhow::anyhow!("cannot read {}: {e}", output.display()))?;
        // Cheap filter first: most lines are results.
        if !line.starts_with(b"{\"error\":") {
            continue;
        }
        let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(&line) else {
            continue;
        };
        if map.len() == 2 && map.get("seq").and_then(serde_json::Value::as_u64) == Some(seq) {
            failed.push(seq);
        }
    }
    Ok(failed)
}

/// `--resume-failed`: a copy of the output with the failed records' lines
/// replaced by their new ones, renamed over the output when the run ends.
/// Until then the output is untouched, so a run killed half-way loses nothing.
pub struct Patch {
    output: PathBuf,
    tmp: PathBuf,
    original: io::BufReader<File>,
    /// Lines of the original copied (or replaced) so far.
    next_line: u64,
    lines: u64,
    /// A job log: its header line, copied first; and lines it may lack
    /// (a job log started after the output) are tolerated.
    header: Option<Vec<u8>>,
    job_log: bool,
    /// Which line holds which record.
    skips: Skips,
}

impl Patch {
    fn open(output: &Path, lines: u64, skips: Skips) -> anyhow::Result<Patch> {
        let mut tmp = output.as_os_str().to_owned();
        tmp.push(".procpool-tmp");
        let original = File::open(output)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", output.display()))?;
        Ok(Patch {
            output: output.to_owned(),
            tmp: PathBuf::from(tmp),
            original: io::BufReader::new(original),
            next_line: 0,
            lines,
            header: None,
            job_log: false,
            skips,
        })
    }

    /// The same for the job log (a header, then one line per record), so
    /// that it too keeps one line per record.
    pub fn job_log(path: &Path, records: u64, skips: Skips) -> anyhow::Result<Patch> {
        let mut patch = Patch::open(path, records, skips)?;
        let mut header = Vec::new();
        io::BufRead::read_until(&mut patch.original, b'\n', &mut header)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        patch.header = Some(header);
        patch.job_log = true;
        Ok(patch)
    }

    /// Lines of the output being patched.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The records skipped in it.
    pub fn skips(&self) -> &Skips {
        &self.skips
    }

    /// Whether the record at input position `seq` replaces a line (rather
    /// than adding one after them all).
    pub fn replaces(&self, seq: u64) -> bool {
        self.skips.line_of(seq) < self.lines
    }

    /// Where the output is written meanwhile.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Before the line of the record at input position `seq`: copy the
    /// original lines before it into `buf`, and skip its original line
    /// (which it replaces).
    pub fn before(&mut self, seq: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let line = self.skips.line_of(seq);
        self.copy_until(line.min(self.lines), buf)?;
        if line < self.lines && self.next_line == line {
            let mut skipped = Vec::new();
            io::BufRead::read_until(&mut self.original, b'\n', &mut skipped)?;
            self.next_line += 1;
        }
        Ok(())
    }

    /// The original lines not replaced, to the end.
    pub fn rest(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        self.copy_until(self.lines, buf)
    }

    fn copy_until(&mut self, end: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        if let Some(header) = self.header.take() {
            buf.extend_from_slice(&header);
        }
        while self.next_line < end {
            let n = io::BufRead::read_until(&mut self.original, b'\n', buf)?;
            if n == 0 && self.job_log {
                self.next_line = end; // the lines it lacks stay lacking
                return Ok(());
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} changed during the run", self.output.display()),
                ));
            }
            self.next_line += 1;
        }
        Ok(())
    }

    /// Put the patched copy in place of the output.
    pub fn commit(&self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.output).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot replace {} with {}: {e}",
                    self.output.display(),
                    self.tmp.display()
                ),
            )
        })
    }
}

/// `--resume`, `--resume-failed`, or neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    No,
    After,
    AndFailed,
}

/// Prepare the output for the run: when resuming, cut a partial last line,
/// check the sidecar, and choose the records to run.
pub fn plan(
    output: Option<&Path>,
    resume: Resume,
    input: Option<&str>,
    task: &str,
    params: serde_json::Value,
) -> anyhow::Result<ResumePlan> {
    // Only a file can be resumed: a device or a pipe (`/dev/null`) keeps no
    // sidecar beside it.
    let output = output.filter(|p| fs::metadata(p).map_or(true, |m| m.is_file()));
    let Some(output) = output else {
        return Ok(ResumePlan {
            skip: 0,
            selection: Selection::default(),
            sidecar: None,
            patch: None,
        });
    };
    let mut sidecar = Sidecar::new(output, task, params, InputPrint::of(input, PREFIX_BYTES)?);
    let mut skip = 0;
    let mut selection = Selection::default();
    let mut patch = None;
    if resume != Resume::No {
        skip = crate::output::prepare_resume(output)?;
        let listed = sidecar.check_resume(output, skip)?;
        let skips_file = skips_path(output);
        let mut skips = Skips::load(&skips_file)?;
        if skips.len() < listed {
            bail!(
                "cannot --resume {}: {} lists {} skipped records but {listed} had been written: it was cut or removed, so the output's lines cannot be matched to input records; run without --resume to start again",
                output.display(),
                skips_file.display(),
                skips.len()
            );
        }
        // The lines, and the records skipped among and right after them.
        selection.tail_from = skips.position_after(skip);
        if skips.keep_before(selection.tail_from) {
            // Listed, but their neighbours' lines were not written: they are
            // run (and skipped) again.
            skips.save(&skips_file)?;
        }
        sidecar.records = skip;
        sidecar.skipped = skips.len();
        if resume == Resume::AndFailed && skip > 0 {
            selection.again = failed_lines(output, &skips)?;
            if !selection.again.is_empty() {
                patch = Some(Patch::open(output, skip, skips)?);
            }
        }
    }
    Ok(ResumePlan {
        skip,
        selection,
        sidecar: Some(sidecar),
        patch,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn selection_maps_the_records_run_to_their_input_positions() {
        let s = Selection {
            again: vec![1, 4],
            tail_from: 6,
        };
        let run: Vec<u64> = (0..9).filter(|&i| s.wants(i)).collect();
        assert_eq!(run, [1, 4, 6, 7, 8]);
        let seqs: Vec<u64> = (0..5).map(|k| s.seq_of(k)).collect();
        assert_eq!(seqs, run);
        // Plain --resume: everything after the first N.
        let s = Selection {
            again: vec![],
            tail_from: 3,
        };
        assert!(!s.wants(2) && s.wants(3));
        assert_eq!(s.seq_of(0), 3);
    }

    #[test]
    fn failed_lines_are_error_objects_in_their_own_place() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        fs::write(
            &out,
            concat!(
                "{\"n\":0}\n",
                "{\"error\":{\"kind\":\"task_error\",\"message\":\"m\"},\"seq\":1}\n",
                "{\"error\":\"a result that has an error field\",\"x\":1}\n",
                "{\"error\":{\"kind\":\"panicked\",\"message\":\"m\"},\"seq\":3}\n",
            ),
        )
        .unwrap();
        assert_eq!(failed_lines(&out, &Skips::default()).unwrap(), [1, 3]);
        // Patching: line 1 and a tail line replaced, the rest copied.
        let mut p = Patch::open(&out, 4, Skips::default()).unwrap();
        let mut buf = Vec::new();
        p.before(1, &mut buf).unwrap();
        buf.extend_from_slice(b"{\"n\":1}\n");
        p.before(3, &mut buf).unwrap();
        buf.extend_from_slice(b"{\"n\":3}\n");
        p.before(4, &mut buf).unwrap();
        buf.extend_from_slice(b"{\"n\":4}\n");
        p.rest(&mut buf).unwrap();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "{\"n\":0}\n{\"n\":1}\n{\"error\":\"a result that has an error field\",\"x\":1}\n{\"n\":3}\n{\"n\":4}\n"
        );
    }

    #[test]
    fn skipped_records_map_lines_to_input_positions() {
        // Records 0..10, of which 2, 5 and 6 were skipped.
        let s = Skips::from_positions(vec![6, 2, 5, 2]);
        assert_eq!(s.len(), 3);
        let lines: Vec<u64> = [0, 1, 3, 4, 7, 8, 9].map(|p| s.line_of(p)).to_vec();
        assert_eq!(lines, [0, 1, 2, 3, 4, 5, 6]);
        // After k lines, resuming starts past the records skipped after them.
        let after: Vec<u64> = (0..7).map(|k| s.position_after(k)).collect();
        assert_eq!(after, [0, 1, 3, 4, 7, 8, 9]);
        assert_eq!(Skips::default().position_after(5), 5);
        // A skip listed beyond the last line written is forgotten.
        let mut s = Skips::from_positions(vec![2, 5, 9]);
        let at = s.position_after(4); // lines of 0, 1, 3, 4
        assert_eq!(at, 6);
        assert!(s.keep_before(at));
        assert_eq!(s, Skips::from_positions(vec![2, 5]));
        assert!(!s.keep_before(at));
    }

    #[test]
    fn the_skip_list_is_read_back_without_a_partial_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl.procpool-skipped");
        assert_eq!(Skips::load(&p).unwrap(), Skips::default());
        fs::write(&p, "7\n3\n7\n1").unwrap();
        assert_eq!(Skips::load(&p).unwrap(), Skips::from_positions(vec![3, 7]));
        Skips::from_positions(vec![4, 9]).save(&p).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "4\n9\n");
        fs::write(&p, "4\nfour\n").unwrap();
        let e = Skips::load(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("four"), "{e}");
    }

    #[test]
    fn failed_lines_and_patches_account_for_skipped_records() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");
        // Input records 0..6; 1 and 2 skipped; 3 and 5 failed.
        fs::write(
            &out,
            concat!(
                "{\"n\":0}\n",
                "{\"error\":{\"kind\":\"task_error\",\"message\":\"m\"},\"seq\":3}\n",
                "{\"n\":4}\n",
                "{\"error\":{\"kind\":\"task_error\",\"message\":\"m\"},\"seq\":5}\n",
            ),
        )
        .unwrap();
        let skips = Skips::from_positions(vec![1, 2]);
        assert_eq!(failed_lines(&out, &skips).unwrap(), [3, 5]);
        // Without the list, the seqs are not those of their lines.
        assert!(failed_lines(&out, &Skips::default()).unwrap().is_empty());
        let mut p = Patch::open(&out, 4, skips).unwrap();
        assert!(p.replaces(3) && p.replaces(5) && !p.replaces(6));
        let mut buf = Vec::new();
        p.before(3, &mut buf).unwrap();
        buf.extend_from_slice(b"{\"n\":3}\n");
        p.before(5, &mut buf).unwrap();
        buf.extend_from_slice(b"{\"n\":5}\n");
        p.before(6, &mut buf).unwrap();
        buf.extend_from_slice(b"{\"n\":6}\n");
        p.rest(&mut buf).unwrap();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "{\"n\":0}\n{\"n\":3}\n{\"n\":4}\n{\"n\":5}\n{\"n\":6}\n"
        );
    }

    #[test]
    fn fnv_is_the_published_function() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_mismatch_of_task_parameters_or_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        fs::write(&input, "{\"n\":1}\n{\"n\":2}\n").unwrap();
        let out = dir.path().join("out.jsonl");
        fs::write(&out, "{\"n\":1}\n").unwrap();
        let inp = input.to_str().unwrap();
        let params = serde_json::json!({"year": 2000});
        let run = |task: &str, params: serde_json::Value, inp: &str| {
            Sidecar::new(
                &out,
                task,
                params,
                InputPrint::of(Some(inp), PREFIX_BYTES).unwrap(),
            )
        };
        // No sidecar and a non-empty output: refused.
        let e = run("age", params.clone(), inp)
            .check_resume(&out, 1)
            .unwrap_err();
        assert!(e.to_string().contains("procpool-resume"), "{e}");
        let mut s = run("age", params.clone(), inp);
        s.records = 1;
        s.save().unwrap();
        run("age", params.clone(), inp)
            .check_resume(&out, 1)
            .unwrap();
        let e = run("primes", params.clone(), inp)
            .check_resume(&out, 1)
            .unwrap_err();
        assert!(e.to_string().contains("task `age`"), "{e}");
        let e = run("age", serde_json::json!({"year": 2001}), inp)
            .check_resume(&out, 1)
            .unwrap_err();
        assert!(e.to_string().contains("parameters"), "{e}");
        let other = dir.path().join("other.jsonl");
        fs::write(&other, "{\"n\":9}\n").unwrap();
        let e = run("age", params.clone(), other.to_str().unwrap())
            .check_resume(&out, 1)
            .unwrap_err();
        assert!(e.to_string().contains("does not begin with"), "{e}");
        // An input that grew since is the same input.
        fs::write(&input, "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n").unwrap();
        run("age", params.clone(), inp)
            .check_resume(&out, 1)
            .unwrap();
        // An output cut after the run resumes where it was cut.
        run("age", params, inp).check_resume(&out, 0).unwrap();
    }
}
