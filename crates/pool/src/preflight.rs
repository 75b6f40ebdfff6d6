//! Checks made before local workers are started, so that a machine that
//! cannot host the pool gets one clear error instead of failures (and
//! panics inside ipc-channel) half-way through starting it.
//!
//! - **File descriptors.** Each local worker costs the coordinator a few
//!   descriptors ([`FDS_PER_WORKER`]: its two channel ends, the rendezvous
//!   socket while it connects, a pipe for its output); ipc-channel panics on
//!   a message whose descriptors could not be received. The soft limit is
//!   raised to the hard one if needed; beyond that, the error says how many
//!   workers fit.
//! - **The rendezvous directory** (`$TMPDIR`, else `/tmp`, unless
//!   [`rendezvous_in_memory`] chose one): ipc-channel binds a socket at
//!   `DIR/.tmpXXXXXX/socket` for each worker and panics if it cannot; the
//!   path must also fit in a Unix socket address (107 bytes).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use log::debug;

use crate::PoolError;

/// Descriptors the coordinator holds per local worker at its peak (while it
/// connects): measured 2 per running worker, plus the rendezvous socket, a
/// connection being accepted and an output pipe; and the two memfds of its
/// shared memory, held from the offer until the worker has mapped them.
pub(crate) const FDS_PER_WORKER: u64 = 6;
/// Descriptors kept free for everything the process opens itself: input,
/// output, job log, signal handling, the spawns in progress, large messages
/// (each travels over a channel of its own while it is received).
pub(crate) const FDS_RESERVE: u64 = 48;

/// Longest socket path a Unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// What ipc-channel appends to the directory: `/.tmpXXXXXX/socket`.
const SOCKET_SUFFIX: usize = "/.tmpXXXXXX/socket".len();

/// Everything checked before `workers` local workers start.
pub(crate) fn check_local(workers: usize) -> Result<(), PoolError> {
    check_rendezvous_dir()?;
    check_fd_limit(workers)
}

/// How many workers the descriptor limit `limit` allows with `open` already open.
pub(crate) fn workers_allowed(limit: u64, open: u64) -> u64 {
    limit.saturating_sub(open + FDS_RESERVE) / FDS_PER_WORKER
}

/// Descriptors the process inherited (open without close-on-exec: every
/// descriptor Rust opens has it). Those the process opens itself (input,
/// output, signal pipes, the caller's files) come out of [`FDS_RESERVE`]:
/// counting them would make the answer depend on what other threads have
/// open at this moment (an input being read, say).
fn open_fds() -> u64 {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return 3;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::c_int>().ok())
        .filter(|&fd| {
            // SAFETY: F_GETFD only reads the flags of a descriptor; a closed
            // one (the directory's own, say) returns -1.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            flags >= 0 && flags & libc::FD_CLOEXEC == 0
        })
        .count() as u64
}

fn check_fd_limit(workers: usize) -> Result<(), PoolError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        debug!(
            "cannot read the file-descriptor limit: {}",
            io::Error::last_os_error()
        );
        return Ok(());
    }
    let open = open_fds();
    let need = open + FDS_RESERVE + FDS_PER_WORKER * workers as u64;
    if need <= limit.rlim_cur {
        return Ok(());
    }
    if need <= limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: need.max(limit.rlim_cur),
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass; raising the soft
        // limit up to the hard one is always permitted.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            debug!(
                "raised the open-file limit from {} to {need} for {workers} workers",
                limit.rlim_cur
            );
            return Ok(());
        }
    }
    let allowed = workers_allowed(limit.rlim_max, open);
    Err(PoolError::Config(format!(
        "{workers} workers need about {need} open files, but the limit (`ulimit -n`) is {} \
         (hard limit {}) with {open} inherited descriptors open: it allows at most {allowed} workers; \
         raise the limit (e.g. `ulimit -n {need}`) or use fewer workers",
        limit.rlim_cur, limit.rlim_max,
    )))
}

/// The directory ipc-channel creates rendezvous sockets in: the `tempfile`
/// crate's default, `$TMPDIR` (else `/tmp`) unless overridden.
pub(crate) fn rendezvous_dir() -> PathBuf {
    tempfile::env::temp_dir()
}

/// `statfs` magic numbers of file systems kept in memory: tmpfs, ramfs.
const IN_MEMORY: [i64; 2] = [0x0102_1994, 0x8584_58f6];

/// Whether `dir` is on a file system kept in memory.
fn in_memory(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path and a zeroed struct for the kernel to fill.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(path.as_ptr(), &mut fs) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between libcs
    IN_MEMORY.contains(&(fs.f_type as i64))
}

/// Which directory [`rendezvous_in_memory`] takes: none if the user set
/// `$TMPDIR` or the default one is in memory already; else the first of
/// `candidates` that is in memory and can hold rendezvous sockets.
fn memory_dir_to_use(
    tmpdir_set: bool,
    default_in_memory: bool,
    candidates: impl IntoIterator<Item = (PathBuf, bool)>,
) -> Option<PathBuf> {
    if tmpdir_set || default_in_memory {
        return None;
    }
    candidates
        .into_iter()
        .find(|(dir, in_memory)| *in_memory && dir.is_absolute() && check_dir(dir).is_ok())
        .map(|(dir, _)| dir)
}

/// See [`crate::rendezvous_in_memory`].
pub(crate) fn rendezvous_in_memory() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        Some(PathBuf::from("/dev/shm")),
    ];
    let dir = memory_dir_to_use(
        std::env::var_os("TMPDIR").is_some_and(|d| !d.is_empty()),
        in_memory(&std::env::temp_dir()),
        candidates
            .into_iter()
            .flatten()
            .map(|dir| (dir.clone(), in_memory(&dir))),
    )?;
    match tempfile::env::override_temp_dir(&dir) {
        Ok(()) => Some(dir),
        // Chosen already (by this function or by the program): it stands.
        Err(chosen) => (chosen == dir).then_some(dir),
    }
}

/// The rendezvous directory exists, is a directory this user can create
/// entries in, and is short enough for a socket path.
pub(crate) fn check_rendezvous_dir() -> Result<(), PoolError> {
    // Probed in full once per process and directory: the probe creates and
    // removes an inode, which took a millisecond of every `build()`.
    static PROBED: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let dir = rendezvous_dir();
    let mut probed = PROBED.lock().unwrap_or_else(|e| e.into_inner());
    if probed.as_ref() == Some(&dir) && dir.is_dir() {
        return Ok(());
    }
    check_dir(&dir).map_err(|why| {
        PoolError::Ipc(io::Error::other(format!(
            "the rendezvous directory {} (from $TMPDIR, else /tmp, unless chosen in memory) {why}; set TMPDIR to a short, writable directory",
            dir.display()
        )))
    })?;
    *probed = Some(dir);
    Ok(())
}

/// Before each spawn: the directory checked at start-up may have been
/// removed since (a cleaner of `/tmp`, a user); create it again, private,
/// rather than fail every replacement worker from now on.
pub(crate) fn ensure_rendezvous_dir() -> Result<(), PoolError> {
    let dir = rendezvous_dir();
    if dir.is_dir() {
        // Checked in full at start-up; a probe entry per spawn would cost
        // an inode created and removed for every worker.
        return Ok(());
    }
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
    {
        Ok(()) => log::warn!(
            "the rendezvous directory {} was removed during the run; created it again",
            dir.display()
        ),
        Err(e) => debug!("cannot create {} again: {e}", dir.display()),
    }
    check_rendezvous_dir()
}

fn check_dir(dir: &Path) -> Result<(), String> {
    let Some(text) = dir.to_str() else {
        return Err("is not valid UTF-8".into());
    };
    if text.len() + SOCKET_SUFFIX > MAX_SOCKET_PATH {
        return Err(format!(
            "is too long for a Unix socket path ({} bytes; at most {} allowed)",
            text.len(),
            MAX_SOCKET_PATH - SOCKET_SUFFIX
        ));
    }
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err("is not a directory".into()),
        Err(e) => return Err(format!("cannot be used: {e}")),
    }
    // Writable and searchable: create and remove an entry, as ipc-channel will.
    let probe = dir.join(format!(".procpool-probe-{}", std::process::id()));
    match fs::create_dir(&probe) {
        Ok(()) => {
            let _ = fs::remove_dir(&probe);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("is not writable: {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn allowed_workers_leave_the_reserve() {
        assert_eq!(
            workers_allowed(256, 8),
            (256 - 8 - FDS_RESERVE) / FDS_PER_WORKER
        );
        assert_eq!(workers_allowed(10, 8), 0);
    }

    #[test]
    fn sockets_go_in_memory_only_where_the_user_did_not_choose() {
        let tmp = std::env::temp_dir();
        let missing = tmp.join("procpool-no-such-dir");
        let pick = |tmpdir_set, default_in_memory, candidates: &[(&Path, bool)]| {
            memory_dir_to_use(
                tmpdir_set,
                default_in_memory,
                candidates.iter().map(|(d, m)| (d.to_path_buf(), *m)),
            )
        };
        // The first usable directory in memory.
        let chosen = pick(
            false,
            false,
            &[(&missing, true), (&tmp, false), (&tmp, true)],
        );
        assert_eq!(chosen.as_deref(), Some(tmp.as_path()));
        // $TMPDIR set, or /tmp in memory already: left alone.
        assert_eq!(pick(true, false, &[(&tmp, true)]), None);
        assert_eq!(pick(false, true, &[(&tmp, true)]), None);
        // Nothing usable: left alone.
        assert_eq!(pick(false, false, &[(&missing, true), (&tmp, false)]), None);
        assert_eq!(pick(false, false, &[(Path::new("relative"), true)]), None);
    }

    #[test]
    fn memory_file_systems_are_told_from_disks() {
        assert!(!in_memory(Path::new("/proc/no/such/path")));
        // procfs is not tmpfs; where there is a /dev/shm, it is (as on every Linux here).
        assert!(!in_memory(Path::new("/proc")));
        if Path::new("/dev/shm").is_dir() {
            assert!(in_memory(Path::new("/dev/shm")));
        }
    }

    #[test]
    fn directories_that_cannot_host_a_socket_are_named_with_the_reason() {
        let base = std::env::temp_dir();
        assert!(check_dir(&base.join("procpool-no-such-dir"))
            .unwrap_err()
            .contains("No such file"));
        let long = PathBuf::from(format!("/tmp/{}", "d".repeat(100)));
        assert!(check_dir(&long).unwrap_err().contains("too long"));
        assert!(check_dir(Path::new("/proc/self/status"))
            .unwrap_err()
            .contains("not a directory"));
        check_dir(&base).unwrap();
    }
}
