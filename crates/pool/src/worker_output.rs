//! Workers' stdout and stderr, line by line, to the pool's output handler:
//! one thread per pool that polls every worker's pipe, instead of a thread
//! per worker (starting a thread is a measurable part of starting a worker).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;

use crate::process::OutputHandler;

/// A line longer than this is handed on in pieces of this size.
const MAX_LINE: usize = 64 << 10;

/// Once the pool is gone, how long a silent pipe is still read.
const CLOSING_WAIT_MS: libc::c_int = 200;

/// The pool's side of the output thread.
pub(crate) struct OutputHub {
    add: Sender<Entry>,
    /// Writing a byte wakes the thread to take new pipes; closing it (on
    /// drop) ends the thread.
    wake: Option<File>,
    thread: Option<thread::JoinHandle<()>>,
}

/// One worker's pipe, as the thread holds it.
struct Entry {
    pid: u32,
    pipe: File,
    partial: Vec<u8>,
    done: Arc<AtomicBool>,
}

impl OutputHub {
    pub fn start(handler: OutputHandler) -> io::Result<OutputHub> {
        let (wake_rx, wake_tx) = io::pipe()?;
        let (add, added) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("procpool-output".into())
            .spawn(move || run(handler, File::from(OwnedFd::from(wake_rx)), added))?;
        Ok(OutputHub {
            add,
            wake: Some(File::from(OwnedFd::from(wake_tx))),
            thread: Some(thread),
        })
    }

    /// Hand on the lines of worker `pid` read from `pipe`. The flag is set
    /// once the pipe has reached its end (every writer closed it) and its
    /// last line went out.
    pub fn add(&self, pid: u32, pipe: io::PipeReader) -> Arc<AtomicBool> {
        let done = Arc::new(AtomicBool::new(false));
        let entry = Entry {
            pid,
            pipe: File::from(OwnedFd::from(pipe)),
            partial: Vec::new(),
            done: done.clone(),
        };
        let sent = self.add.send(entry).is_ok()
            && self
                .wake
                .as_ref()
                .is_some_and(|mut w| w.write_all(&[1]).is_ok());
        if !sent {
            // No thread to read it: nothing will come.
            done.store(true, Ordering::Release);
        }
        done
    }
}

impl Drop for OutputHub {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(handler: OutputHandler, mut wake: File, added: Receiver<Entry>) {
    let mut entries: Vec<Entry> = Vec::new();
    let mut buf = vec![0u8; MAX_LINE];
    let mut closing = false;
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        entries.extend(added.try_iter());
        if closing && entries.is_empty() {
            return;
        }
        fds.clear();
        fds.push(libc::pollfd {
            fd: if closing { -1 } else { wake.as_raw_fd() },
            events: libc::POLLIN,
            revents: 0,
        });
        fds.extend(entries.iter().map(|e| libc::pollfd {
            fd: e.pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // Waiting for output needs no deadline while the pool lives; once it
        // is gone, a pipe that a worker's own child still holds open is
        // given up after a short wait.
        let timeout = if closing { CLOSING_WAIT_MS } else { -1 };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if ready < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if ready < 0 || (ready == 0 && closing) {
            // Cannot wait: give up on what is left rather than spin.
            for e in entries.drain(..) {
                e.done.store(true, Ordering::Release);
            }
            return;
        }
        if fds[0].revents != 0 {
            match wake.read(&mut buf) {
                Ok(0) | Err(_) => closing = true,
                Ok(_) => {}
            }
        }
        // Back to front, so that removing one leaves the others' indices.
        for i in (0..entries.len()).rev() {
            if fds[i + 1].revents == 0 {
                continue;
            }
            let entry = &mut entries[i];
            let ended = match entry.pipe.read(&mut buf) {
                Ok(0) => true,
                Ok(n) => {
                    emit(&handler, entry, &buf[..n]);
                    false
                }
                Err(e) => e.kind() != io::ErrorKind::Interrupted,
            };
            if ended {
                let entry = entries.swap_remove(i);
                if !entry.partial.is_empty() {
                    handler(entry.pid, &String::from_utf8_lossy(&entry.partial));
                }
                entry.done.store(true, Ordering::Release);
            }
        }
    }
}

/// Hand on the complete lines in `entry.partial` + `bytes`; keep the rest.
fn emit(handler: &OutputHandler, entry: &mut Entry, bytes: &[u8]) {
    entry.partial.extend_from_slice(bytes);
    let mut start = 0;
    while let Some(nl) = entry.partial[start..].iter().position(|&b| b == b'\n') {
        let line = &entry.partial[start..start + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        handler(entry.pid, &String::from_utf8_lossy(line));
        start += nl + 1;
    }
    entry.partial.drain(..start);
    while entry.partial.len() >= MAX_LINE {
        let piece: Vec<u8> = entry.partial.drain(..MAX_LINE).collect();
        handler(entry.pid, &String::from_utf8_lossy(&piece));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    fn wait(flag: &AtomicBool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !flag.load(Ordering::Acquire) {
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(1));
        }
        true
    }

    #[test]
    fn lines_of_several_pipes_come_out_whole_with_their_pid() {
        let got: Arc<Mutex<Vec<(u32, String)>>> = Arc::default();
        let sink = got.clone();
        let hub = OutputHub::start(Arc::new(move |pid, line: &str| {
            sink.lock().unwrap().push((pid, line.to_owned()));
        }))
        .unwrap();
        let (r1, mut w1) = io::pipe().unwrap();
        let (r2, mut w2) = io::pipe().unwrap();
        let d1 = hub.add(1, r1);
        let d2 = hub.add(2, r2);
        w1.write_all(b"one\npart").unwrap();
        w2.write_all(b"two\r\n\xc3\xa9\xff").unwrap();
        w2.write_all(b"\n").unwrap();
        w1.write_all(b"ial\nlast without newline").unwrap();
        drop(w1);
        drop(w2);
        assert!(wait(&d1) && wait(&d2), "the pipes' ends were not seen");
        let got = got.lock().unwrap().clone();
        let of = |pid| -> Vec<String> {
            got.iter()
                .filter(|(p, _)| *p == pid)
                .map(|(_, l)| l.clone())
                .collect()
        };
        assert_eq!(of(1), ["one", "partial", "last without newline"]);
        assert_eq!(of(2), ["two", "\u{e9}\u{fffd}"]);
        drop(hub);
    }

    #[test]
    fn a_long_line_comes_in_pieces_and_dropping_the_hub_ends_its_thread() {
        let got: Arc<Mutex<Vec<usize>>> = Arc::default();
        let sink = got.clone();
        let hub = OutputHub::start(Arc::new(move |_, line: &str| {
            sink.lock().unwrap().push(line.len());
        }))
        .unwrap();
        let (r, mut w) = io::pipe().unwrap();
        let done = hub.add(7, r);
        let writer = thread::spawn(move || {
            w.write_all(&vec![b'x'; MAX_LINE * 2 + 5]).unwrap();
        });
        writer.join().unwrap();
        assert!(wait(&done));
        assert_eq!(*got.lock().unwrap(), [MAX_LINE, MAX_LINE, 5]);
        let started = Instant::now();
        drop(hub);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
