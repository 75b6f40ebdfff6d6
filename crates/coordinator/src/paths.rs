//! The files of a run must be distinct: an output that is the input would be
//! emptied before it is read, and two outputs on one file would interleave.
//!
//! Files are compared by identity (device and inode), not by spelling, so
//! `./x`, `dir/../x`, hard links and symlinks are all caught. A file that does
//! not exist yet is identified by its directory's identity and its name. Only
//! regular files (and files still to be created) are compared: several
//! outputs to `/dev/null`, or a terminal, are fine.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::cli::RunArgs;

/// One file of a run, and what it is for (named in the error).
#[derive(Debug, Clone)]
pub struct RunFile {
    /// `--input`, `--output`, `stdout`, ...
    pub role: &'static str,
    /// The path as the user spelled it.
    pub path: PathBuf,
    /// Read (input) or written (output).
    pub written: bool,
}

impl RunFile {
    /// A file the run reads.
    pub fn read(role: &'static str, path: impl Into<PathBuf>) -> RunFile {
        RunFile {
            role,
            path: path.into(),
            written: false,
        }
    }

    /// A file the run writes.
    pub fn written(role: &'static str, path: impl Into<PathBuf>) -> RunFile {
        RunFile {
            role,
            path: path.into(),
            written: true,
        }
    }
}

impl RunFile {
    fn is_stream(&self) -> bool {
        self.path.starts_with("/proc/self/fd")
    }

    fn describe(&self) -> String {
        if self.is_stream() {
            self.role.to_owned()
        } else {
            format!("{} {}", self.role, self.path.display())
        }
    }
}

/// The files a run reads and writes, in the order they are checked.
pub fn of_run(args: &RunArgs) -> Vec<RunFile> {
    let mut files = Vec::new();
    match args.input.as_deref() {
        None => {} // the built-in data set
        Some("-") => files.push(RunFile::read("stdin (--input -)", stdin())),
        Some(p) => files.push(RunFile::read("--input", p)),
    }
    match &args.output {
        Some(p) => {
            files.push(RunFile::written("--output", p));
            files.push(RunFile::written(
                "the resume file",
                crate::resume::sidecar_path(p),
            ));
            files.push(RunFile::written(
                "the skipped-records file",
                crate::resume::skips_path(p),
            ));
        }
        None => files.push(RunFile::written("stdout", stdout())),
    }
    if let Some(p) = &args.joblog {
        files.push(RunFile::written("--joblog", p));
    }
    if let Some(p) = &args.stats_json {
        files.push(RunFile::written("--stats-json", p));
    }
    files
}

/// Where a file lives, whatever its spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    /// An existing regular file.
    File { dev: u64, ino: u64 },
    /// A file still to be created: its directory and name.
    New { dev: u64, ino: u64, name: PathBuf },
}

fn identity(path: &Path) -> io::Result<Option<Identity>> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Some(Identity::File {
            dev: m.dev(),
            ino: m.ino(),
        })),
        // Devices, pipes, terminals: writing to them twice loses nothing.
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A dangling symlink creates its target: identify that instead.
            let target = match fs::read_link(path) {
                Ok(t) => path.parent().unwrap_or(Path::new("")).join(t),
                Err(_) => path.to_path_buf(),
            };
            let (Some(name), parent) = (target.file_name(), target.parent()) else {
                return Ok(None);
            };
            let parent = match parent {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            match fs::metadata(parent) {
                Ok(m) => Ok(Some(Identity::New {
                    dev: m.dev(),
                    ino: m.ino(),
                    name: name.into(),
                })),
                // Opening it will fail with its own clear error.
                Err(_) => Ok(None),
            }
        }
        Err(e) => Err(e),
    }
}

/// Refuse, before anything is opened for writing, a run in which a written
/// file is the same file as the input or as another written file.
pub fn check_distinct(files: &[RunFile]) -> anyhow::Result<()> {
    let mut seen: Vec<(&RunFile, Identity)> = Vec::new();
    for f in files {
        // Unreadable metadata is left to the open that follows, which names the file.
        let Ok(Some(id)) = identity(&f.path) else {
            continue;
        };
        for (other, other_id) in &seen {
            if *other_id == id && (f.written || other.written) {
                let same = if f.path == other.path || f.is_stream() || other.is_stream() {
                    String::new()
                } else {
                    format!(" ({} is {})", f.path.display(), other.path.display())
                };
                bail!(
                    "{} and {} are the same file{same}: refusing to run, it would be overwritten",
                    other.describe(),
                    f.describe(),
                );
            }
        }
        seen.push((f, id));
    }
    Ok(())
}

/// Check, before a long run, that a file written only at its end (the
/// statistics, a chart) can be written: opened for writing without changing
/// it, and removed again if this created it.
pub fn check_writable(role: &str, path: &Path) -> anyhow::Result<()> {
    let existed = fs::symlink_metadata(path).is_ok();
    match fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
    {
        Ok(_) => {
            if !existed {
                let _ = fs::remove_file(path);
            }
            Ok(())
        }
        Err(e) => bail!("cannot write {role} {}: {e}", path.display()),
    }
}

/// The standard streams as files, for `--input -` and output to stdout:
/// `/proc/self/fd/N` is the file the stream is open on.
pub fn stdin() -> PathBuf {
    PathBuf::from("/proc/self/fd/0")
}

/// See [`stdin`].
pub fn stdout() -> PathBuf {
    PathBuf::from("/proc/self/fd/1")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn err(files: &[RunFile]) -> String {
        check_distinct(files).unwrap_err().to_string()
    }

    #[test]
    fn same_file_by_any_spelling_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        fs::write(&input, "{}\n").unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        let dotted = dir.path().join(".").join("sub/../in.jsonl");
        fs::create_dir(dir.path().join("sub")).unwrap();
        for out in [&input, &link, &dotted] {
            let e = err(&[
                RunFile::read("--input", &input),
                RunFile::written("--output", out),
            ]);
            assert!(e.contains("--input") && e.contains("--output"), "{e}");
            assert!(e.contains("same file"), "{e}");
        }
        // The input itself may be given twice; reading twice is harmless.
        check_distinct(&[
            RunFile::read("--input", &input),
            RunFile::read("stdin", &link),
        ])
        .unwrap();
    }

    #[test]
    fn two_outputs_still_to_be_created_are_compared_by_directory_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("out.jsonl");
        let b = dir.path().join("sub/../out.jsonl");
        fs::create_dir(dir.path().join("sub")).unwrap();
        let e = err(&[
            RunFile::written("--output", &a),
            RunFile::written("--joblog", &b),
        ]);
        assert!(e.contains("--joblog"), "{e}");
        // A dangling symlink names the file it would create.
        let link = dir.path().join("dangling");
        std::os::unix::fs::symlink("out.jsonl", &link).unwrap();
        err(&[
            RunFile::written("--output", &a),
            RunFile::written("--stats-json", &link),
        ]);
        check_distinct(&[
            RunFile::written("--output", &a),
            RunFile::written("--joblog", dir.path().join("jobs.tsv")),
        ])
        .unwrap();
    }

    #[test]
    fn writability_is_checked_without_leaving_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("chart.svg");
        check_writable("--chart", &p).unwrap();
        assert!(!p.exists());
        fs::write(&p, "keep").unwrap();
        check_writable("--chart", &p).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "keep");
        let e = check_writable("--chart", &dir.path().join("no/such/dir.svg")).unwrap_err();
        assert!(e.to_string().contains("no/such/dir.svg"), "{e}");
    }

    #[test]
    fn devices_may_be_shared() {
        check_distinct(&[
            RunFile::written("--output", "/dev/null"),
            RunFile::written("--joblog", "/dev/null"),
        ])
        .unwrap();
    }
}
