//! What `--resume` needs to recognise a run: a small sidecar file next to the
//! output (`OUTPUT.procpool-resume`, JSON) with the task, its parameters, a
//! fingerprint of the input's first bytes and the records written so far.
//!
//! The sidecar is written (atomically: a temporary file renamed over it)
//! before the first output line, then about once a second as lines are
//! written out, and at the end. Since it is rewritten only after the lines it
//! counts are written, the output always holds at least `records` lines; a
//! shorter one was cut after the run (resuming then redoes the records cut).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// Bytes of the input that identify it.
const PREFIX_BYTES: u64 = 64 << 10;
/// Bumped when the sidecar's meaning changes.
const FORMAT: u32 = 1;

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
}

/// Where the sidecar of `output` lives.
pub fn sidecar_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".procpool-resume");
    PathBuf::from(name)
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
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        let mut f = File::create(&tmp).map_err(named)?;
        f.write_all(&json).map_err(named)?;
        f.write_all(b"\n").map_err(named)?;
        fs::rename(&tmp, &self.path).map_err(named)
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
    /// that does not match the one that wrote it.
    pub fn check_resume(&self, output: &Path, lines: u64) -> anyhow::Result<()> {
        let refuse = |why: String| -> anyhow::Result<()> {
            bail!(
                "cannot --resume {}: {why}; run without --resume to start again",
                output.display()
            )
        };
        let Some(old) = Self::load(&self.path)? else {
            if lines == 0 {
                return Ok(());
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
        Ok(())
    }
}

/// Where a run starts: after how many records, and the sidecar to keep.
pub struct ResumePlan {
    pub skip: u64,
    pub sidecar: Option<Sidecar>,
}

/// Prepare the output for the run: with `resume`, cut a partial last line,
/// check the sidecar, and count the records to skip.
pub fn plan(
    output: Option<&Path>,
    resume: bool,
    input: Option<&str>,
    task: &str,
    params: serde_json::Value,
) -> anyhow::Result<ResumePlan> {
    let Some(output) = output else {
        return Ok(ResumePlan {
            skip: 0,
            sidecar: None,
        });
    };
    let mut sidecar = Sidecar::new(output, task, params, InputPrint::of(input, PREFIX_BYTES)?);
    let mut skip = 0;
    if resume {
        skip = crate::output::prepare_resume(output)?;
        sidecar.check_resume(output, skip)?;
        sidecar.records = skip;
    }
    Ok(ResumePlan {
        skip,
        sidecar: Some(sidecar),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
