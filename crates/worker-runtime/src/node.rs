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
//! own pid. A worker rank waits for its file (at most [`FIRST_CONTACT`]),
//! and takes it only from a coordinator that the same launcher started
//! (same parent process): a file left by an earlier job is ignored.

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
const MAGIC: &str = "procpool-node 1";

/// This process's place in a launch whose ranks all run on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeJob {
    /// This process's rank (0 must be the coordinator).
    pub rank: usize,
    /// How many ranks the job has.
    pub size: usize,
    /// The job's rendezvous directory.
    pub dir: PathBuf,
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
    /// The coordinator's pid.
    pub coordinator: u32,
}

impl Invitation {
    fn encode(&self) -> String {
        format!(
            "{MAGIC}\n{}\n{}\n{}\n{}\n",
            self.server, self.token, self.heartbeat_ms, self.coordinator
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
    }))
}

/// (rank, size, job key) of a launch of several ranks on one machine, from
/// the launcher's variables as `var` gives them.
fn detect(var: &dyn Fn(&str) -> Option<String>) -> Option<(usize, usize, String)> {
    // Ranks spawned by a coordinator (`MPI_Comm_spawn`) reach it through MPI.
    if var("OMPI_PARENT_PORT").is_some() || var("PMI_SPAWNED").is_some_and(|v| v != "0") {
        return None;
    }
    let num = |name: &str| var(name)?.trim().parse::<usize>().ok();
    // A key for a file name: the job's id, only its safe characters.
    let key = |raw: String| -> Option<String> {
        let key: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        (!key.is_empty()).then_some(key)
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
        // srun with a PMI plugin (the MPI backend's Slurm launch).
        var("PMIX_RANK").or_else(|| var("PMI_RANK"))?;
        if num("SLURM_STEP_NUM_NODES")? != 1 {
            return None;
        }
        let (job, step) = (var("SLURM_JOB_ID")?, var("SLURM_STEP_ID")?);
        (
            num("SLURM_PROCID")?,
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

/// The parent of process `pid`, from `/proc/PID/stat`.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE PPID ...": COMM may hold any byte, `)` included.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 2..)?).ok()?;
    rest.split(' ').nth(1)?.parse().ok()
}

/// Remove this user's one-machine rendezvous directories in `tmp` that a
/// coordinator killed before its end left behind: untouched for `min_age`,
/// and every invitation in them from a process that no longer runs (or
/// none). Returns how many were removed.
pub fn remove_stale_dirs(tmp: &Path, min_age: Duration) -> usize {
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
                .is_some_and(|n| n.starts_with("rank-") || n.starts_with(".rank-"))
        });
        let abandoned = files.iter().all(|f| {
            std::fs::read_to_string(f)
                .ok()
                .and_then(|text| Invitation::decode(&text))
                .is_none_or(|i| !Path::new(&format!("/proc/{}", i.coordinator)).exists())
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

fn file_of(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("rank-{rank}"))
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
                std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            }
            Err(e) => Err(e),
        }
    }

    /// The coordinator's side: invite worker `rank` (written whole, then
    /// renamed into place, so a worker never reads half a file).
    pub fn invite(&self, rank: usize, invitation: &Invitation) -> std::io::Result<()> {
        let path = file_of(&self.dir, rank);
        let part = self.dir.join(format!(".rank-{rank}.part"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&part)?;
        file.write_all(invitation.encode().as_bytes())?;
        drop(file);
        std::fs::rename(&part, &path)
    }

    /// The coordinator's side: worker `rank` has connected (or will not).
    pub fn withdraw(&self, rank: usize) {
        let _ = std::fs::remove_file(file_of(&self.dir, rank));
    }

    /// The coordinator's side, at the end: remove the directory.
    pub fn remove_dir(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// A worker's side: wait (until `deadline`) for this rank's invitation
    /// from a coordinator started by the same launcher as this process.
    pub fn await_invitation(&self, deadline: Instant) -> Option<Invitation> {
        let path = file_of(&self.dir, self.rank);
        // SAFETY: getppid has no preconditions.
        let launcher = unsafe { libc::getppid() } as u32;
        let mut pause = Duration::from_micros(200);
        loop {
            let found = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| Invitation::decode(&text))
                .filter(|i| parent_of(i.coordinator) == Some(launcher));
            if found.is_some() {
                return found;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
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

    #[test]
    fn a_launch_on_one_machine_is_told_from_the_launchers_variables() {
        let ompi = [
            ("OMPI_COMM_WORLD_RANK", "2"),
            ("OMPI_COMM_WORLD_SIZE", "3"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "3"),
            ("PMIX_NAMESPACE", "1104478209"),
        ];
        assert_eq!(detect(&env(&ompi)), Some((2, 3, "ompi-1104478209".into())));
        // Ranks spawned by a coordinator: MPI.
        let mut spawned = ompi.to_vec();
        spawned.push(("OMPI_PARENT_PORT", "589758465.0:2222875988"));
        assert_eq!(detect(&env(&spawned)), None);
        // Ranks on another machine too, or a job of one rank: MPI.
        let mut two_hosts = ompi;
        two_hosts[2].1 = "2";
        assert_eq!(detect(&env(&two_hosts)), None);
        let alone = [
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "1"),
            ("PMIX_NAMESPACE", "7"),
        ];
        assert_eq!(detect(&env(&alone)), None);
        let slurm = [
            ("PMIX_RANK", "0"),
            ("SLURM_PROCID", "0"),
            ("SLURM_STEP_NUM_TASKS", "5"),
            ("SLURM_STEP_NUM_NODES", "1"),
            ("SLURM_JOB_ID", "42"),
            ("SLURM_STEP_ID", "0"),
        ];
        assert_eq!(detect(&env(&slurm)), Some((0, 5, "slurm-42-0".into())));
        let mut two_nodes = slurm;
        two_nodes[3].1 = "2";
        assert_eq!(detect(&env(&two_nodes)), None);
        // A batch script's own variables, with no PMI launch: not a job of ranks.
        assert_eq!(detect(&env(&slurm[1..])), None);
        // A job id is only ever a file name.
        let odd = [
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
            ("PMIX_NAMESPACE", "../x@1"),
        ];
        assert_eq!(detect(&env(&odd)), Some((0, 2, "ompi-___x_1".into())));
    }

    #[test]
    fn directories_left_by_dead_coordinators_are_removed() {
        let tmp = std::env::temp_dir().join(format!("procpool-node-stale-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let job = |name: &str| NodeJob {
            rank: 0,
            size: 2,
            dir: tmp.join(format!("procpool-mpi-{}-{name}", uid())),
        };
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        let invite = |name: &str, coordinator: u32| {
            job(name).create_dir().unwrap();
            job(name)
                .invite(
                    1,
                    &Invitation {
                        server: "/tmp/x/socket".into(),
                        token: "t".into(),
                        heartbeat_ms: 0,
                        coordinator,
                    },
                )
                .unwrap();
        };
        invite("dead", dead_pid);
        invite("alive", std::process::id());
        job("empty").create_dir().unwrap();
        // Too young: nothing goes.
        assert_eq!(remove_stale_dirs(&tmp, Duration::from_secs(3600)), 0);
        // Old enough: those of no running coordinator go.
        assert_eq!(remove_stale_dirs(&tmp, Duration::ZERO), 2);
        assert!(!job("dead").dir.exists() && !job("empty").dir.exists());
        assert!(job("alive").dir.exists());
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn an_invitation_reaches_a_process_of_the_same_launcher_only() {
        let dir = std::env::temp_dir().join(format!("procpool-node-test-{}", std::process::id()));
        let job = |rank| NodeJob {
            rank,
            size: 3,
            dir: dir.clone(),
        };
        job(0).create_dir().unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // This test's process stands for the worker rank. A coordinator
        // that is not its sibling (not started by the same parent, as the
        // ranks of one launcher are) is not believed: here a child of ours.
        let mut stranger = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert_eq!(parent_of(stranger.id()), Some(std::process::id()));
        let mut invitation = Invitation {
            server: "/tmp/x/socket".into(),
            token: "abc".into(),
            heartbeat_ms: 0,
            coordinator: stranger.id(),
        };
        job(0).invite(1, &invitation).unwrap();
        let soon = || Instant::now() + Duration::from_millis(50);
        assert_eq!(job(1).await_invitation(soon()), None);
        let _ = stranger.kill();
        let _ = stranger.wait();
        // One with our own parent is (ourselves, as far as /proc can tell).
        invitation.coordinator = std::process::id();
        job(0).invite(1, &invitation).unwrap();
        assert_eq!(job(1).await_invitation(soon()), Some(invitation.clone()));
        // Another rank's file is not ours.
        assert_eq!(job(2).await_invitation(soon()), None);
        assert_eq!(Invitation::decode("procpool-node 2\na\nb\n0\n1\n"), None);
        job(0).withdraw(1);
        assert!(!file_of(&dir, 1).exists());
        job(0).remove_dir();
        assert!(!dir.exists());
    }
}
