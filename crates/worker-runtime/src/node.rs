//! An MPI launch whose ranks all run on this one machine (`mpirun -n 1
//! coordinator --backend mpi : -n 4 worker` on a workstation, or an `srun`
//! step on one node): the ranks do not start MPI at all. They meet through
//! a rendezvous directory of the job's own and talk over the local
//! backend's channels and shared memory.
//!
//! Why: on one machine, `MPI_Init` and `MPI_Finalize` in every rank cost
//! Open MPI 0.1-0.15 s (a C program that does nothing else takes that
//! long), and MPI's messages a probe loop; a job of a million tiny records
//! took 1.7x the local backend's time. Launched this way it takes the local
//! backend's time plus the launcher's own start.
//!
//! Both sides decide the same way, from the launcher's environment alone:
//! Open MPI's `OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_SIZE}` (every rank local),
//! or Slurm's `SLURM_PROCID`, `SLURM_STEP_NUM_TASKS` and
//! `SLURM_STEP_NUM_NODES` (one node) under a PMI launch. A job of one rank
//! (a coordinator that spawns its workers) uses MPI, and so do the ranks it
//! spawns (`OMPI_PARENT_PORT`). So does every job when
//! [`ENV_TRANSPORT`] is `mpi` (to try MPI itself on a workstation).
//!
//! The rendezvous: rank 0, the coordinator, writes a file per worker rank
//! into `$TMPDIR/procpool-mpi-UID-JOB` (private to the user) naming the
//! channel to connect to, the run's token, the heartbeat period, and its
//! own pid; and, as soon as it can, a `coordinator` file with its pid alone
//! ([`announce`]). A worker rank waits for its file: at most
//! [`FIRST_CONTACT`] for a coordinator to announce itself, then as long as
//! that coordinator runs. It believes only files in a directory of its own
//! user's that nobody else may write, written by a process of this same job
//! (rank 0, by the launcher's variables in its environment): a file left by
//! an earlier job, or put there by someone else, is ignored.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Environment variable: `mpi` makes a one-machine MPI launch use MPI all
/// the same; `auto` (the default) uses the local channels there.
pub const ENV_TRANSPORT: &str = "PROCPOOL_MPI_TRANSPORT";

/// How long a worker rank waits for its coordinator's rendezvous file.
pub const FIRST_CONTACT: Duration = Duration::from_secs(10);

/// How to launch correctly, for the error messages of wrong launches.
pub const HOW_TO_LAUNCH: &str = "launch one coordinator as rank 0 with its workers beside it (`mpirun -n 1 coordinator --backend mpi ... : -n 4 worker`), or let a lone coordinator spawn them (`coordinator --backend mpi --workers 4`, alone or under `mpirun -n 1`)";

/// The first line of a rendezvous file, and its version.
const MAGIC: &str = "procpool-node 2";

/// The file in which the coordinator announces itself.
const ANNOUNCED: &str = "coordinator";

/// This process's place in a launch whose ranks all run on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeJob {
    /// This process's rank (0 must be the coordinator).
    pub rank: usize,
    /// How many ranks the job has.
    pub size: usize,
    /// The job's rendezvous directory.
    pub dir: PathBuf,
    /// The job's key (from the launcher's variables).
    key: String,
}

/// What the coordinator tells a worker rank in its rendezvous file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// The ipc-channel one-shot server to connect to.
    pub server: String,
    /// The run's token, for the worker's `Hello`.
    pub token: String,
    /// Heartbeat period (0: none; the coordinator asks the kernel).
    pub heartbeat_ms: u64,
    /// How long the coordinator may be stopped before this rank ends the job.
    pub liveness_ms: u64,
    /// The coordinator's pid.
    pub coordinator: u32,
}

impl Invitation {
    fn encode(&self) -> String {
        format!(
            "{MAGIC}\n{}\n{}\n{}\n{}\n{}\n",
            self.server, self.token, self.heartbeat_ms, self.liveness_ms, self.coordinator
        )
    }

    fn decode(text: &str) -> Option<Invitation> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let invitation = Invitation {
            server: lines.next()?.to_owned(),
            token: lines.next()?.to_owned(),
            heartbeat_ms: lines.next()?.parse().ok()?,
            liveness_ms: lines.next()?.parse().ok()?,
            coordinator: lines.next()?.parse().ok()?,
        };
        (!invitation.server.is_empty()).then_some(invitation)
    }
}

/// The job this process belongs to, if it is an MPI (or Slurm) launch of
/// several ranks all on this machine and [`ENV_TRANSPORT`] does not ask for
/// MPI. An error for a value of [`ENV_TRANSPORT`] that means nothing.
pub fn one_node_job() -> Result<Option<NodeJob>, String> {
    let var = |name: &str| std::env::var(name).ok();
    match var(ENV_TRANSPORT).as_deref().map(str::trim) {
        None | Some("" | "auto") => {}
        Some("mpi") => return Ok(None),
        Some(other) => {
            return Err(format!(
                "{ENV_TRANSPORT}={other}: expected `auto` (the local channels when every rank runs on this machine) or `mpi`"
            ))
        }
    }
    Ok(detect(&var).map(|(rank, size, key)| NodeJob {
        rank,
        size,
        dir: std::env::temp_dir().join(format!("procpool-mpi-{}-{key}", uid())),
        key,
    }))
}

/// The coordinator's side, as early as it can: tell the worker ranks of a
/// one-machine launch that their coordinator runs (so that they wait for
/// it beyond [`FIRST_CONTACT`] while it prepares, e.g. reads a large output
/// to resume). Nothing when this is not such a launch, or not rank 0.
/// Dropping the value removes the job's rendezvous directory.
#[must_use = "dropping it removes the announcement"]
pub fn announce() -> Option<Announcement> {
    let job = one_node_job().ok().flatten().filter(|job| job.rank == 0)?;
    job.create_dir().and_then(|()| job.announce()).ok()?;
    Some(Announcement(job))
}

/// A coordinator's announcement (see [`announce`]); dropping it removes the
/// job's rendezvous directory.
#[derive(Debug)]
pub struct Announcement(NodeJob);

impl Drop for Announcement {
    fn drop(&mut self) {
        self.0.remove_dir();
    }
}

/// The (rank, size, key) of the one-machine launch process `pid` belongs
/// to, by the launcher's variables in its environment.
fn job_of(pid: u32) -> Option<(usize, usize, String)> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let vars: std::collections::HashMap<&[u8], &[u8]> = environ
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let eq = kv.iter().position(|&b| b == b'=')?;
            Some((&kv[..eq], &kv[eq + 1..]))
        })
        .collect();
    detect(&|name: &str| {
        let value = vars.get(name.as_bytes())?;
        std::str::from_utf8(value).ok().map(str::to_owned)
    })
}

/// Whether process `pid` is stopped (SIGSTOP, a debugger's stop), from
/// `/proc/PID/stat`; `None` where that cannot be read (or it is gone).
pub fn stopped(pid: u32) -> Option<bool> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE ...": COMM may hold any byte, `)` included.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let state = *stat.get(close + 2)?;
    Some(matches!(state, b'T' | b't'))
}

/// A worker rank's watch on its coordinator, over local channels where no
/// heartbeat comes: a coordinator stopped for longer than `liveness` ends
/// this rank (exit code 1, and the launcher ends the job), as a silent one
/// does over MPI. Runs on a thread of its own until the process ends.
pub fn watch_coordinator(pid: u32, liveness: Duration) -> std::io::Result<()> {
    let every = (liveness / 4).clamp(Duration::from_millis(10), Duration::from_millis(500));
    std::thread::Builder::new()
        .name("procpool-watch".into())
        .stack_size(64 << 10)
        .spawn(move || {
            let mut stopped_since: Option<Instant> = None;
            let mut last_turn = Instant::now();
            loop {
                std::thread::sleep(every);
                let now = Instant::now();
                // This rank did not run for far longer than its wait (it was
                // stopped itself, or starved): start the count again.
                if now.duration_since(last_turn) > every * 4 + Duration::from_millis(500) {
                    stopped_since = None;
                }
                last_turn = now;
                match stopped(pid) {
                    None => return, // gone: its channel closes too
                    Some(false) => stopped_since = None,
                    Some(true) => {
                        let since = *stopped_since.get_or_insert(now);
                        if now.duration_since(since) > liveness {
                            log::error!(
                                "the coordinator (pid {pid}) has been stopped for {:.1} s; this rank ends (the launcher ends the job; `--resume` continues it)",
                                liveness.as_secs_f64()
                            );
                            // SAFETY: _exit ends the process at once.
                            unsafe { libc::_exit(1) }
                        }
                    }
                }
            }
        })
        .map(drop)
}

/// A 64-bit FNV-1a hash, for a job id too long for a file name.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// (rank, size, job key) of a launch of several ranks on one machine, from
/// the launcher's variables as `var` gives them.
fn detect(var: &dyn Fn(&str) -> Option<String>) -> Option<(usize, usize, String)> {
    // Ranks spawned by a coordinator (`MPI_Comm_spawn`) reach it through MPI.
    if var("OMPI_PARENT_PORT").is_some() || var("PMI_SPAWNED").is_some_and(|v| v != "0") {
        return None;
    }
    let num = |name: &str| var(name)?.trim().parse::<usize>().ok();
    // A key for a file name: the start of the job's id in safe characters,
    // and a hash of all of it (two jobs never share one for a long id).
    let key = |raw: String| -> Option<String> {
        let readable: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(32)
            .collect();
        Some(format!("{readable}-{:016x}", fnv1a(raw.as_bytes())))
    };
    let (rank, size, key) = if let (Some(rank), Some(size), Some(local)) = (
        num("OMPI_COMM_WORLD_RANK"),
        num("OMPI_COMM_WORLD_SIZE"),
        num("OMPI_COMM_WORLD_LOCAL_SIZE"),
    ) {
        if local != size {
            return None;
        }
        let id = var("PMIX_NAMESPACE").or_else(|| var("OMPI_MCA_ess_base_jobid"))?;
        (rank, size, key(format!("ompi-{id}"))?)
    } else {
        // srun with a PMI plugin (the MPI backend's Slurm launch), whose
        // rank is Slurm's (not a launcher's of its own inside the step).
        let pmi_rank = num("PMIX_RANK").or_else(|| num("PMI_RANK"))?;
        if num("SLURM_STEP_NUM_NODES")? != 1 {
            return None;
        }
        let rank = num("SLURM_PROCID").filter(|&r| r == pmi_rank)?;
        let (job, step) = (var("SLURM_JOB_ID")?, var("SLURM_STEP_ID")?);
        (
            rank,
            num("SLURM_STEP_NUM_TASKS")?,
            key(format!("slurm-{job}-{step}"))?,
        )
    };
    (size > 1 && rank < size).then_some((rank, size, key))
}

fn uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Remove this user's one-machine rendezvous directories in `tmp` that a
/// coordinator killed before its end left behind: untouched for `min_age`,
/// and every invitation in them from a process that no longer runs (or
/// none). Returns how many were removed.
pub fn remove_stale_dirs(tmp: &Path, min_age: Duration, except: &Path) -> usize {
    let prefix = format!("procpool-mpi-{}-", uid());
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let dir = entry.path();
        if dir == except {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        if !meta.is_dir() || meta.uid() != uid() || !old {
            continue;
        }
        let Ok(files) = std::fs::read_dir(&dir) else {
            continue;
        };
        let files: Vec<PathBuf> = files.flatten().map(|f| f.path()).collect();
        let ours = files.iter().all(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("rank-") || n.starts_with('.') || n == ANNOUNCED)
        });
        // Every pid a file names (an invitation's coordinator, or the one
        // announced) no longer runs.
        let abandoned = files.iter().all(|f| {
            std::fs::read_to_string(f).ok().is_none_or(|text| {
                let pid = Invitation::decode(&text)
                    .map(|i| i.coordinator)
                    .or_else(|| announced_pid(&text));
                pid.is_none_or(|pid| !runs(pid))
            })
        });
        if ours && abandoned {
            for f in &files {
                let _ = std::fs::remove_file(f);
            }
            removed += usize::from(std::fs::remove_dir(&dir).is_ok());
        }
    }
    removed
}

/// The name of rank `rank`'s invitation.
fn rank_file(rank: usize) -> String {
    format!("rank-{rank}")
}

fn file_of(dir: &Path, rank: usize) -> PathBuf {
    dir.join(rank_file(rank))
}

/// The pid in a coordinator's announcement (see [`NodeJob::announce`]).
fn announced_pid(text: &str) -> Option<u32> {
    let mut lines = text.lines();
    (lines.next()? == MAGIC).then_some(())?;
    lines.next()?.parse().ok()
}

/// Whether process `pid` exists.
fn runs(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl NodeJob {
    /// The coordinator's side: make the job's rendezvous directory (private
    /// to this user; one already there must be this user's own, and not a
    /// link).
    pub fn create_dir(&self) -> std::io::Result<()> {
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let meta = std::fs::symlink_metadata(&self.dir)?;
                if !meta.is_dir() || meta.uid() != uid() {
                    return Err(std::io::Error::other(format!(
                        "{} is not a directory of this user's",
                        self.dir.display()
                    )));
                }
                std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
                // In use again: not stale (see `remove_stale_dirs`).
                std::fs::File::open(&self.dir)?.set_modified(std::time::SystemTime::now())
            }
            Err(e) => Err(e),
        }
    }

    /// The coordinator's side: say that it runs (see [`announce`]).
    pub fn announce(&self) -> std::io::Result<()> {
        self.write_whole(ANNOUNCED, &format!("{MAGIC}\n{}\n", std::process::id()))
    }

    /// Write `name` in the directory whole: into a part file, renamed into place.
    fn write_whole(&self, name: &str, text: &str) -> std::io::Result<()> {
        let part = self.dir.join(format!(".{name}.part"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&part)?;
        file.write_all(text.as_bytes())?;
        drop(file);
        std::fs::rename(&part, self.dir.join(name))
    }

    /// The coordinator's side: invite worker `rank` (written whole, then
    /// renamed into place, so a worker never reads half a file).
    pub fn invite(&self, rank: usize, invitation: &Invitation) -> std::io::Result<()> {
        self.write_whole(&rank_file(rank), &invitation.encode())
    }

    /// The coordinator's side: worker `rank` has connected (or will not).
    pub fn withdraw(&self, rank: usize) {
        let _ = std::fs::remove_file(file_of(&self.dir, rank));
    }

    /// The coordinator's side, at the end: remove the directory.
    pub fn remove_dir(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// A worker's side: wait for this rank's invitation from the
    /// coordinator of this job: at most `first_contact` for one to announce
    /// itself (or invite), then as long as the one announced runs.
    pub fn await_invitation(&self, first_contact: Duration) -> Result<Invitation, String> {
        let started = Instant::now();
        let mut announced: Option<u32> = None;
        let mut pause = Duration::from_micros(200);
        loop {
            if let Some(invitation) = self
                .read_trusted(&rank_file(self.rank))
                .and_then(|text| Invitation::decode(&text))
                .filter(|i| self.is_our_coordinator(i.coordinator))
            {
                return Ok(invitation);
            }
            if announced.is_none() {
                announced = self
                    .read_trusted(ANNOUNCED)
                    .and_then(|text| announced_pid(&text))
                    .filter(|&pid| self.is_our_coordinator(pid));
            }
            match announced {
                Some(pid) if !runs(pid) => {
                    return Err(format!(
                        "the coordinator (pid {pid}) ended before it invited this rank"
                    ));
                }
                None if started.elapsed() >= first_contact => {
                    return Err(format!(
                        "no coordinator answered at rank 0 within {:.0} s",
                        first_contact.as_secs_f64()
                    ));
                }
                _ => {}
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Whether `pid` is rank 0 of this very job (by the launcher's
    /// variables in its environment).
    fn is_our_coordinator(&self, pid: u32) -> bool {
        job_of(pid)
            .is_some_and(|(rank, size, key)| rank == 0 && size == self.size && key == self.key)
    }

    /// The text of file `name` of the job's directory, if the directory is
    /// this user's own, a directory (not a link) that nobody else may write
    /// in, and the file is this user's, not a link.
    fn read_trusted(&self, name: &str) -> Option<String> {
        use std::io::Read;
        let dir = std::fs::symlink_metadata(&self.dir).ok()?;
        if !dir.is_dir() || dir.uid() != uid() || dir.mode() & 0o022 != 0 {
            return None;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.dir.join(name))
            .ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.uid() != uid() || meta.len() > 64 << 10 {
            return None;
        }
        let mut text = String::new();
        file.read_to_string(&mut text).ok()?;
        Some(text)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn ompi(rank: &str, namespace: &str) -> [(&'static str, String); 4] {
        [
            ("OMPI_COMM_WORLD_RANK", rank.into()),
            ("OMPI_COMM_WORLD_SIZE", "3".into()),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "3".into()),
            ("PMIX_NAMESPACE", namespace.into()),
        ]
    }

    fn detect_of(pairs: &[(&str, String)]) -> Option<(usize, usize, String)> {
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        detect(&env(&pairs))
    }

    #[test]
    fn a_launch_on_one_machine_is_told_from_the_launchers_variables() {
        let (rank, size, key) = detect_of(&ompi("2", "1104478209")).unwrap();
        assert_eq!((rank, size), (2, 3));
        assert!(key.starts_with("ompi-1104478209-"), "{key}");
        // Every rank of the job has the same key; another job another.
        assert_eq!(detect_of(&ompi("0", "1104478209")).unwrap().2, key);
        assert_ne!(detect_of(&ompi("0", "1104478210")).unwrap().2, key);
        // Long ids that differ only at the end (Open MPI 5: host, then pid).
        let long = |pid: &str| format!("prterun-{}-{pid}@1", "h".repeat(60));
        assert_ne!(
            detect_of(&ompi("0", &long("17"))).unwrap().2,
            detect_of(&ompi("0", &long("18"))).unwrap().2
        );
        // A job id is only ever a file name.
        let odd = detect_of(&ompi("0", "../x@1")).unwrap().2;
        assert!(
            odd.starts_with("ompi-___x_1-") && !odd.contains('/'),
            "{odd}"
        );
        // Ranks spawned by a coordinator: MPI.
        let mut spawned = ompi("1", "7").to_vec();
        spawned.push(("OMPI_PARENT_PORT", "589758465.0:2222875988".into()));
        assert_eq!(detect_of(&spawned), None);
        // Ranks on another machine too, or a job of one rank: MPI.
        let mut two_hosts = ompi("1", "7");
        two_hosts[2].1 = "2".into();
        assert_eq!(detect_of(&two_hosts), None);
        let mut alone = ompi("0", "7");
        alone[1].1 = "1".into();
        alone[2].1 = "1".into();
        assert_eq!(detect_of(&alone), None);
        let slurm = [
            ("PMIX_RANK", "0"),
            ("SLURM_PROCID", "0"),
            ("SLURM_STEP_NUM_TASKS", "5"),
            ("SLURM_STEP_NUM_NODES", "1"),
            ("SLURM_JOB_ID", "42"),
            ("SLURM_STEP_ID", "0"),
        ];
        let (rank, size, key) = detect(&env(&slurm)).unwrap();
        assert_eq!((rank, size), (0, 5));
        assert!(key.starts_with("slurm-42-0-"), "{key}");
        let mut two_nodes = slurm;
        two_nodes[3].1 = "2";
        assert_eq!(detect(&env(&two_nodes)), None);
        // A batch script's own variables, with no PMI launch: not a job of ranks.
        assert_eq!(detect(&env(&slurm[1..])), None);
        // A launcher of its own inside the step (its ranks are not Slurm's).
        let mut nested = slurm;
        nested[0].1 = "3";
        assert_eq!(detect(&env(&nested)), None);
    }

    /// A process standing for a rank of job `namespace` (its environment
    /// says so, as the launcher's would).
    fn rank_process(rank: &str, namespace: &str) -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("30")
            .envs(ompi(rank, namespace).iter().map(|(k, v)| (*k, v.as_str())))
            .spawn()
            .unwrap()
    }

    fn job_in(dir: &Path, rank: usize, namespace: &str) -> NodeJob {
        let (_, size, key) = detect_of(&ompi(&rank.to_string(), namespace)).unwrap();
        NodeJob {
            rank,
            size,
            dir: dir.to_owned(),
            key,
        }
    }

    fn invitation(coordinator: u32) -> Invitation {
        Invitation {
            server: "/tmp/x/socket".into(),
            token: "abc".into(),
            heartbeat_ms: 0,
            liveness_ms: 10_000,
            coordinator,
        }
    }

    #[test]
    fn an_invitation_is_taken_only_from_this_jobs_coordinator_in_a_private_directory() {
        let ns = format!("test-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("procpool-node-test-{}", std::process::id()));
        let (coordinator, worker) = (job_in(&dir, 0, &ns), job_in(&dir, 1, &ns));
        coordinator.create_dir().unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let soon = Duration::from_millis(50);
        let mut others = [rank_process("1", &ns), rank_process("0", "another job")];
        let mut ours = rank_process("0", &ns);
        // Invitations from another rank of the job, or rank 0 of another
        // job: not taken.
        for other in &others {
            coordinator.invite(1, &invitation(other.id())).unwrap();
            let got = worker.await_invitation(soon);
            assert!(got.unwrap_err().contains("no coordinator answered"));
        }
        // From this job's rank 0: taken.
        coordinator.invite(1, &invitation(ours.id())).unwrap();
        assert_eq!(worker.await_invitation(soon), Ok(invitation(ours.id())));
        // Another rank's file is not ours.
        assert!(job_in(&dir, 2, &ns).await_invitation(soon).is_err());
        // A directory others may write in is not believed, nor a link.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(worker.await_invitation(soon).is_err());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::remove_file(file_of(&dir, 1)).unwrap();
        let elsewhere = dir.with_extension("elsewhere");
        std::fs::write(&elsewhere, invitation(ours.id()).encode()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, file_of(&dir, 1)).unwrap();
        assert!(worker.await_invitation(soon).is_err());
        std::fs::remove_file(&elsewhere).unwrap();
        std::fs::remove_file(file_of(&dir, 1)).unwrap();
        // Announced: waited for beyond the first contact while it runs,
        // and no more once it is gone.
        coordinator.announce().unwrap();
        std::fs::write(dir.join(ANNOUNCED), format!("{MAGIC}\n{}\n", ours.id())).unwrap();
        let pid = ours.id();
        let waiting = std::thread::spawn(move || {
            let started = Instant::now();
            (
                job_in(&dir, 1, &ns).await_invitation(Duration::ZERO),
                started.elapsed(),
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        ours.kill().unwrap();
        ours.wait().unwrap();
        let (got, waited) = waiting.join().unwrap();
        assert_eq!(
            got,
            Err(format!(
                "the coordinator (pid {pid}) ended before it invited this rank"
            ))
        );
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert_eq!(Invitation::decode("procpool-node 1\na\nb\n0\n1\n"), None);
        for other in &mut others {
            let _ = other.kill();
            let _ = other.wait();
        }
        coordinator.remove_dir();
        assert!(!coordinator.dir.exists());
    }

    #[test]
    fn directories_left_by_dead_coordinators_are_removed() {
        let tmp = std::env::temp_dir().join(format!("procpool-node-stale-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let job = |name: &str| NodeJob {
            rank: 0,
            size: 2,
            dir: tmp.join(format!("procpool-mpi-{}-{name}", uid())),
            key: name.into(),
        };
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        let invite = |name: &str, coordinator: u32| {
            job(name).create_dir().unwrap();
            job(name).invite(1, &invitation(coordinator)).unwrap();
        };
        invite("dead", dead_pid);
        invite("alive", std::process::id());
        job("empty").create_dir().unwrap();
        job("announced").create_dir().unwrap();
        job("announced").announce().unwrap();
        job("mine").create_dir().unwrap();
        // Too young: nothing goes.
        assert_eq!(
            remove_stale_dirs(&tmp, Duration::from_secs(3600), Path::new("")),
            0
        );
        // Old enough: those of no running coordinator go, but not the one
        // this process is about to use.
        assert_eq!(remove_stale_dirs(&tmp, Duration::ZERO, &job("mine").dir), 2);
        assert!(!job("dead").dir.exists() && !job("empty").dir.exists());
        assert!(job("alive").dir.exists() && job("announced").dir.exists());
        assert!(job("mine").dir.exists());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
