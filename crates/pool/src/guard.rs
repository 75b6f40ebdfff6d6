//! The guard: one small process per coordinator process whose only job is
//! to kill the workers' process groups if the coordinator dies without doing
//! it (SIGKILL, a crash, the OOM killer).
//!
//! Workers are started with `posix_spawn` (std's fast path), which cannot
//! set `PR_SET_PDEATHSIG` in the child. A worker built on the runtime sets
//! it itself, but a worker binary that is not (a script, a program in
//! another language) would outlive its coordinator. Forking the
//! coordinator once for the guard, when its first pool starts, instead of
//! once per worker, keeps that guarantee for every worker and takes a
//! `fork` (and the copy-on-write faults that follow it) off each worker's
//! start. All the process's pools share it.
//!
//! How it works: the guard is forked, not executed, and from then on makes
//! only async-signal-safe calls (no allocation, no locks). It holds the
//! reading end of a pipe whose writing end only the coordinator holds
//! (close-on-exec keeps it out of the workers). The pool writes each
//! worker's pid when it starts and its negation when it is reaped, four
//! bytes at a time (atomic on a pipe). When the writing end closes, because
//! the coordinator exited or died, the guard kills the groups of the workers
//! still listed (none after an orderly end) and exits.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The most workers the guard lists at once; more go unguarded (the
/// runtime's own `PR_SET_PDEATHSIG` still takes those built on it down).
const CAPACITY: usize = 4096;

/// The coordinator's side of the guard. Dropping it lets the guard exit.
#[derive(Debug)]
pub(crate) struct Guard {
    /// The pipe's writing end; `None` once closed.
    tx: Option<File>,
    pid: libc::pid_t,
}

impl Guard {
    /// This process's guard, forked the first time it is wanted.
    pub fn shared() -> io::Result<Arc<Guard>> {
        // With the pid of the process that forked it: a child of a `fork`
        // of ours (a daemon, say) gets a guard of its own.
        static SHARED: Mutex<Option<(u32, Arc<Guard>)>> = Mutex::new(None);
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        let me = std::process::id();
        if let Some((owner, guard)) = shared.as_ref() {
            if *owner == me {
                return Ok(guard.clone());
            }
        }
        let guard = Arc::new(Guard::start()?);
        *shared = Some((me, guard.clone()));
        Ok(guard)
    }

    /// [`Guard::shared`], its failure as the pool reports it.
    pub fn for_pools() -> Result<Arc<Guard>, crate::PoolError> {
        Guard::shared().map_err(|e| {
            crate::PoolError::Ipc(io::Error::new(
                e.kind(),
                format!("cannot start the guard process: {e}"),
            ))
        })
    }

    /// Fork a guard.
    pub fn start() -> io::Result<Guard> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let [rx, tx] = fds;
        // SAFETY: the child runs only `guard_main`, which makes
        // async-signal-safe calls only and never returns.
        match unsafe { libc::fork() } {
            -1 => {
                let e = io::Error::last_os_error();
                // SAFETY: both descriptors are ours and not used elsewhere.
                unsafe {
                    libc::close(rx);
                    libc::close(tx);
                }
                Err(e)
            }
            // SAFETY: see above; `rx` is the pipe's reading end.
            0 => unsafe { guard_main(rx) },
            pid => {
                // SAFETY: `rx` is ours and goes now; `tx` is ours and owned
                // by the File from here on.
                let tx = unsafe {
                    libc::close(rx);
                    File::from_raw_fd(tx)
                };
                Ok(Guard { tx: Some(tx), pid })
            }
        }
    }

    /// A worker started: its group is killed if the coordinator dies.
    pub fn watch(&self, pid: u32) {
        if let Ok(pid) = i32::try_from(pid) {
            self.send(pid);
        }
    }

    /// A worker was reaped: its pid (and group id) may be reused.
    pub fn forget(&self, pid: u32) {
        if let Ok(pid) = i32::try_from(pid) {
            self.send(-pid);
        }
    }

    fn send(&self, value: i32) {
        // Non-blocking: a guard that is not reading (stopped) costs that
        // worker its guard, never the pool its progress.
        if let Some(mut tx) = self.tx.as_ref() {
            let _ = tx.write_all(&value.to_ne_bytes());
        }
    }
}

/// The shared guard is never dropped (its pipe closes with the process);
/// others, in tests, are.
impl Drop for Guard {
    fn drop(&mut self) {
        // Closing the pipe ends the guard: it kills what is still listed
        // and exits at once.
        drop(self.tx.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child, with a valid status pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r != 0 {
                return; // reaped, or not ours to wait for any more
            }
            if Instant::now() >= deadline {
                // SAFETY: kill and waitpid on our own child.
                unsafe {
                    libc::kill(self.pid, libc::SIGKILL);
                    libc::waitpid(self.pid, &mut status, 0);
                }
                return;
            }
            thread::sleep(Duration::from_micros(200));
        }
    }
}

/// The guard process. Only async-signal-safe calls: it is a fork of a
/// multi-threaded process whose other threads may hold any lock.
///
/// # Safety
/// Call only in the child of `fork`, with `rx` the reading end of the pipe.
unsafe fn guard_main(rx: libc::c_int) -> ! {
    // SAFETY: the caller's contract; every call below is async-signal-safe
    // and takes plain integers or pointers into this function's stack.
    unsafe {
        // Out of the coordinator's process group, and deaf to the signals a
        // terminal or a job's teardown sends a whole group: it must outlive
        // the coordinator. It ends when its pipe closes.
        libc::setpgid(0, 0);
        for signal in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            libc::signal(signal, libc::SIG_IGN);
        }
        libc::prctl(libc::PR_SET_NAME, c"procpool-guard".as_ptr());
        // Hold nothing of the coordinator's open: not its stdout (a reader
        // waiting for its end), not another pool's guard pipe, not a socket.
        close_all_but(rx);
        libc::fcntl(rx, libc::F_SETFL, 0);

        let mut groups = [0 as libc::pid_t; CAPACITY];
        let mut listed = 0usize;
        let mut word = [0u8; 4];
        let mut have = 0usize;
        loop {
            let got = libc::read(
                rx,
                word.as_mut_ptr().add(have).cast::<libc::c_void>(),
                word.len() - have,
            );
            if got < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if got <= 0 {
                break; // the coordinator's end closed (or the pipe failed)
            }
            have += got as usize;
            if have < word.len() {
                continue;
            }
            have = 0;
            let value = i32::from_ne_bytes(word);
            if value > 0 {
                if listed < CAPACITY {
                    groups[listed] = value;
                    listed += 1;
                }
            } else {
                let pid = value.wrapping_neg();
                let mut i = 0;
                while i < listed {
                    if groups[i] == pid {
                        listed -= 1;
                        groups[i] = groups[listed];
                        break;
                    }
                    i += 1;
                }
            }
        }
        let mut i = 0;
        while i < listed {
            libc::kill(-groups[i], libc::SIGKILL);
            i += 1;
        }
        libc::_exit(0)
    }
}

/// Close every descriptor but `keep` (close_range, or one by one where the
/// kernel has no close_range).
///
/// # Safety
/// Only in the guard: nothing else in the process may own a descriptor.
unsafe fn close_all_but(keep: libc::c_int) {
    // SAFETY: the caller's contract (a fresh fork that owns no Rust
    // object holding these descriptors); plain integer syscalls.
    unsafe {
        let all = |from: libc::c_uint, to: libc::c_uint| {
            libc::syscall(libc::SYS_close_range, from, to, 0 as libc::c_uint) == 0
        };
        let keep_u = keep as libc::c_uint;
        let low = keep_u == 0 || all(0, keep_u - 1);
        let high = all(keep_u + 1, libc::c_uint::MAX);
        if low && high {
            return;
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(1 << 20) as libc::c_int
        } else {
            1024
        };
        for fd in 0..max {
            if fd != keep {
                libc::close(fd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// Running (a zombie is not).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    fn wait_gone(pid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) {
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// A process in a group of its own, as workers are started.
    fn group_leader() -> std::process::Child {
        use std::os::unix::process::CommandExt;
        Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn sleep")
    }

    #[test]
    fn the_process_has_one_guard() {
        let a = Guard::shared().expect("the guard");
        let b = Guard::shared().expect("the guard");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(alive(a.pid as u32));
    }

    #[test]
    fn a_dropped_guard_kills_the_groups_still_listed_and_spares_the_forgotten() {
        let guard = Guard::start().expect("start the guard");
        let guard_pid = guard.pid as u32;
        let mut watched = group_leader();
        let mut forgotten = group_leader();
        guard.watch(watched.id());
        guard.watch(forgotten.id());
        guard.forget(forgotten.id());
        drop(guard);
        assert!(!alive(guard_pid), "the guard outlived its pipe");
        assert!(wait_gone(watched.id()), "the watched group lives on");
        let _ = watched.wait();
        assert!(alive(forgotten.id()), "a forgotten group was killed");
        let _ = forgotten.kill();
        let _ = forgotten.wait();
    }

    #[test]
    fn the_guard_holds_no_descriptor_of_ours_but_its_pipe() {
        let guard = Guard::start().expect("start the guard");
        let fds = || -> Vec<_> {
            std::fs::read_dir(format!("/proc/{}/fd", guard.pid))
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default()
        };
        let comm = || std::fs::read_to_string(format!("/proc/{}/comm", guard.pid));
        // It closes them right after the fork: give it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while (fds().len() != 1 || comm().map_or(true, |c| c.trim() != "procpool-guard"))
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(fds().len(), 1, "{:?}", fds());
        assert_eq!(comm().unwrap_or_default().trim(), "procpool-guard");
    }
}
