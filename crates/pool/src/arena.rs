//! Shared memory for the batches on their way to one local worker.
//!
//! A batch sent over the worker's socket is copied twice (into the kernel,
//! out again into a buffer of the worker's) and costs the worker a buffer
//! per message. Instead the writer thread copies it into a free slot of a
//! memfd that both processes map, and sends `Request::BatchIn` (a few
//! bytes) over the socket; the worker decodes the batch where it lies and
//! hands the slot back when done with its records. A batch larger than a
//! slot, or one sent while every slot is taken, goes over the socket as
//! before, and so does everything when the worker could not map the memory
//! (its `Hello` says so).
//!
//! Layout ([`procpool_protocol::ENV_ARENA`]): [`ARENA_HEAD_BYTES`] holding
//! one `u32` per slot (1: filled by the coordinator and not yet handed back,
//! 0: free), then the slots. A slot's flag is the one word both processes
//! write: the coordinator sets it before filling the slot, the worker clears
//! it (release) after its last read, and the coordinator reuses the slot only
//! once it reads 0 (acquire). The socket message that names the slot orders
//! the filling before the worker's reads.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use procpool_protocol::ARENA_HEAD_BYTES;

/// Slots per worker: enough for the batches a worker holds at once with
/// the default window (two in flight, one being answered), and a few more.
pub(crate) const SLOTS: usize = 6;
/// Bytes per slot: the largest batch message ([`crate::batch::MAX_BATCH_BYTES`]
/// of records, one record over, the head).
pub(crate) const SLOT_BYTES: usize = 320 << 10;

pub(crate) struct Arena {
    fd: OwnedFd,
    base: NonNull<u8>,
    len: usize,
    slots: usize,
    slot_bytes: usize,
}

// SAFETY: the mapping is owned by the Arena and only reached through its
// methods: flags atomically, a slot's bytes only by the one thread that
// claimed it (see `put`).
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl Arena {
    pub fn new(slots: usize, slot_bytes: usize) -> io::Result<Arena> {
        assert!(slots * 4 <= ARENA_HEAD_BYTES, "too many slots for the head");
        let len = ARENA_HEAD_BYTES + slots * slot_bytes;
        // SAFETY: a valid NUL-terminated name and flags.
        let raw = unsafe { libc::memfd_create(c"procpool-batches".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a descriptor of our own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = libc::off_t::try_from(len).map_err(|_| io::Error::other("arena too large"))?;
        // SAFETY: a descriptor of ours and a size.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh shared mapping of the whole memfd.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Arena {
            fd,
            base,
            len,
            slots,
            slot_bytes,
        })
    }

    /// The value of [`procpool_protocol::ENV_ARENA`] for the worker.
    pub fn env_value(&self) -> String {
        format!(
            "/proc/{}/fd/{}:{}:{}",
            std::process::id(),
            self.fd.as_raw_fd(),
            self.slots,
            self.slot_bytes
        )
    }

    fn flag(&self, slot: usize) -> &AtomicU32 {
        debug_assert!(slot < self.slots);
        // SAFETY: the head holds `slots` aligned u32s (checked in `new`),
        // within the mapping, which lives as long as `self`; they are only
        // ever accessed atomically, by both processes.
        unsafe { &*self.base.as_ptr().add(slot * 4).cast::<AtomicU32>() }
    }

    /// Copy `bytes` into a free slot and return its index; `None` if they
    /// do not fit one or every slot is taken. The lowest free slot, so that
    /// few pages are ever touched. Called by one thread (the worker's
    /// writer) at a time.
    pub fn put(&self, bytes: &[u8]) -> Option<u32> {
        if bytes.len() > self.slot_bytes {
            return None;
        }
        for slot in 0..self.slots {
            // Acquire: the worker's reads of the slot came before its 0.
            if self
                .flag(slot)
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            let at = ARENA_HEAD_BYTES + slot * self.slot_bytes;
            debug_assert!(at + bytes.len() <= self.len);
            // SAFETY: the slot is within the mapping and claimed (flag 1):
            // the worker reads it only once told of it, after this copy.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.base.as_ptr().add(at),
                    bytes.len(),
                );
            }
            return u32::try_from(slot).ok();
        }
        None
    }

    /// Claimed slots (for tests).
    #[cfg(test)]
    fn taken(&self) -> usize {
        (0..self.slots)
            .filter(|&s| self.flag(s).load(Ordering::Acquire) != 0)
            .count()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once; no reference to it outlives
        // `self`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// The worker's side, as the runtime maps it: through /proc, by name.
    fn map_as_worker(env: &str) -> (*mut u8, usize) {
        let mut parts = env.rsplitn(3, ':');
        let slot_bytes: usize = parts.next().unwrap().parse().unwrap();
        let slots: usize = parts.next().unwrap().parse().unwrap();
        let path = parts.next().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let len = ARENA_HEAD_BYTES + slots * slot_bytes;
        // SAFETY: a shared mapping of the file just opened.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        (ptr.cast(), len)
    }

    #[test]
    fn slots_are_filled_seen_by_another_mapping_and_reused_once_handed_back() {
        let arena = Arena::new(3, 64).unwrap();
        let (worker, len) = map_as_worker(&arena.env_value());
        let flag = |s: usize| {
            // SAFETY: the head's u32s, within the mapping.
            unsafe { &*worker.add(s * 4).cast::<AtomicU32>() }
        };
        let read = |s: usize, n: usize| {
            // SAFETY: within the mapping.
            unsafe { std::slice::from_raw_parts(worker.add(ARENA_HEAD_BYTES + s * 64), n) }.to_vec()
        };
        assert_eq!(arena.put(&[7; 65]), None, "over a slot");
        let a = arena.put(b"first").unwrap() as usize;
        let b = arena.put(b"second").unwrap() as usize;
        let c = arena.put(b"third").unwrap() as usize;
        assert_eq!(arena.put(b"fourth"), None, "every slot taken");
        assert_eq!(
            (read(a, 5), read(b, 6), read(c, 5)),
            (b"first".to_vec(), b"second".to_vec(), b"third".to_vec())
        );
        assert_eq!(flag(b).load(Ordering::Acquire), 1);
        // The worker hands one back: it is the one reused.
        flag(b).store(0, Ordering::Release);
        assert_eq!(arena.taken(), 2);
        assert_eq!(arena.put(b"again").unwrap() as usize, b);
        assert_eq!(read(b, 5), b"again".to_vec());
        // SAFETY: the test's own mapping.
        unsafe { libc::munmap(worker.cast(), len) };
    }
}
