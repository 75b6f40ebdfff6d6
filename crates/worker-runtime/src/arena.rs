//! Shared memory between a coordinator and one local worker: the batches on
//! their way to it, and its results on their way back.
//!
//! A message over the worker's socket is copied twice (into the kernel, and
//! out again into a fresh buffer on the other side). Instead the sender
//! copies it into a free slot of a memfd that both processes map and sends
//! a few bytes naming the slot (`Request::BatchIn`, `WorkerMessage::ResultsIn`);
//! the receiver decodes the message where it lies and hands the slot back
//! once done with it. A message larger than a slot, or one sent while every
//! slot is taken, goes over the socket as before, and so does everything for
//! a worker that could not map the memory.
//!
//! The coordinator creates one arena per direction ([`Arena::create`]) once
//! a worker's batches are large (small ones are not worth a memfd: starting
//! a worker costs none) and names them to it in `Request::Arenas` (each
//! `PATH:SLOTS:SLOT_BYTES`, `PATH` under `/proc/PID/fd/`); the worker maps
//! them ([`Arena::open`]) and answers which it could.
//! Layout: [`ARENA_HEAD_BYTES`] holding one `u32` flag per slot (1: filled by
//! the sender and not yet handed back, 0: free), then the slots. The flag is
//! the one word both sides write: the sender claims a slot (0 to 1) before
//! filling it, the receiver clears it (release) after its last read, and the
//! sender reuses it only once it reads 0 (acquire). The socket message that
//! names the slot orders the filling before the receiver's reads.
#![doc(hidden)]

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use procpool_protocol::ARENA_HEAD_BYTES;

/// One direction's shared memory, mapped.
pub struct Arena {
    /// The memfd, kept open by its creator until the worker has opened it
    /// ([`Arena::forget_name`]); the mapping keeps the memory.
    fd: std::sync::Mutex<Option<OwnedFd>>,
    base: NonNull<u8>,
    len: usize,
    slots: usize,
    slot_bytes: usize,
}

// SAFETY: the mapping is owned by the Arena and reached only through its
// methods: flags atomically, a slot's bytes by the one side that holds it
// (the sender from its claim to its message, the receiver from the message
// to its release).
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl Arena {
    /// A fresh arena of `slots` slots of `slot_bytes`, to name to a worker.
    pub fn create(slots: usize, slot_bytes: usize) -> io::Result<Arena> {
        let len = layout(slots, slot_bytes).map_err(io::Error::other)?;
        // SAFETY: a valid NUL-terminated name and flags.
        let raw = unsafe { libc::memfd_create(c"procpool-arena".as_ptr(), libc::MFD_CLOEXEC) };
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
        let base = map(&fd, len)?;
        Ok(Arena {
            fd: std::sync::Mutex::new(Some(fd)),
            base,
            len,
            slots,
            slot_bytes,
        })
    }

    /// The arena named by `value` (`PATH:SLOTS:SLOT_BYTES`), mapped.
    pub fn open(value: &str) -> io::Result<Arena> {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_owned());
        let mut parts = value.rsplitn(3, ':');
        let (Some(slot_bytes), Some(slots), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not PATH:SLOTS:SLOT_BYTES"));
        };
        let slot_bytes: usize = slot_bytes.parse().map_err(|_| bad("bad slot size"))?;
        let slots: usize = slots.parse().map_err(|_| bad("bad slot count"))?;
        let len = layout(slots, slot_bytes).map_err(|e| bad(&e))?;
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let size = file.metadata()?.len();
        if size < len as u64 {
            return Err(bad(&format!("{size} bytes, not {len}")));
        }
        // The mapping keeps the memory; the descriptor closes now.
        let base = map(&file, len)?;
        Ok(Arena {
            fd: std::sync::Mutex::new(None),
            base,
            len,
            slots,
            slot_bytes,
        })
    }

    /// This arena as the worker is to find it: `PATH:SLOTS:SLOT_BYTES`.
    /// Only for an arena of ours ([`Arena::create`]), until
    /// [`Arena::forget_name`].
    pub fn env_value(&self) -> Option<String> {
        let fd = self.fd.lock().ok()?;
        Some(format!(
            "/proc/{}/fd/{}:{}:{}",
            std::process::id(),
            fd.as_ref()?.as_raw_fd(),
            self.slots,
            self.slot_bytes
        ))
    }

    /// The worker has mapped it: close the memfd (the mapping keeps the
    /// memory), a descriptor fewer per worker.
    pub fn forget_name(&self) {
        if let Ok(mut fd) = self.fd.lock() {
            drop(fd.take());
        }
    }

    fn flag(&self, slot: usize) -> &AtomicU32 {
        debug_assert!(slot < self.slots);
        // SAFETY: the head holds `slots` aligned u32s (see `layout`), within
        // the mapping, which lives as long as `self`; they are only ever
        // accessed atomically, by both processes.
        unsafe { &*self.base.as_ptr().add(slot * 4).cast::<AtomicU32>() }
    }

    fn at(&self, slot: usize) -> *mut u8 {
        // SAFETY: slot < slots: within the mapping (see `layout`).
        unsafe {
            self.base
                .as_ptr()
                .add(ARENA_HEAD_BYTES + slot * self.slot_bytes)
        }
    }

    /// Claim a free slot, copy `bytes` into it and return its index; `None`
    /// if they do not fit one or every slot is taken. The lowest free slot,
    /// so that few pages are ever touched. Several threads may send: each
    /// claim is atomic.
    pub fn put(&self, bytes: &[u8]) -> Option<u32> {
        if bytes.len() > self.slot_bytes {
            return None;
        }
        for slot in 0..self.slots {
            // Acquire: the receiver's reads of the slot came before its 0.
            if self
                .flag(slot)
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // SAFETY: within the mapping; the slot is ours (claimed), and the
            // receiver reads it only once told of it, after this copy.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.at(slot), bytes.len()) };
            return u32::try_from(slot).ok();
        }
        None
    }

    /// The message the sender put in `slot`: its first `len` bytes; `None`
    /// if there is no such slot or it was not filled.
    ///
    /// # Safety
    /// The sender leaves a filled slot alone until it is released: the
    /// caller must not use the slice after releasing `slot` (with
    /// [`Arena::release`], here or through another mapping).
    pub unsafe fn slot(&self, slot: u32, len: u32) -> Option<&[u8]> {
        let (slot, len) = (slot as usize, len as usize);
        if slot >= self.slots || len > self.slot_bytes {
            return None;
        }
        if self.flag(slot).load(Ordering::Acquire) == 0 {
            return None;
        }
        // SAFETY: within the mapping, which lives as long as `self`; see
        // above for why nothing writes it meanwhile.
        Some(unsafe { std::slice::from_raw_parts(self.at(slot), len) })
    }

    /// Done with the message in `slot`: the sender may fill it again (or,
    /// from the sender, a claim it will not use after all).
    ///
    /// # Safety
    /// No slice of `slot` from [`Arena::slot`] may be used after this.
    pub unsafe fn release(&self, slot: u32) {
        let slot = slot as usize;
        if slot < self.slots {
            // Release: every read of the slot comes before.
            self.flag(slot).store(0, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("slots", &self.slots)
            .field("slot_bytes", &self.slot_bytes)
            .finish_non_exhaustive()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once; nothing borrowed from it
        // outlives `self`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// The arena's size in bytes, if its slots fit the head.
fn layout(slots: usize, slot_bytes: usize) -> Result<usize, String> {
    if slots == 0 || slots * 4 > ARENA_HEAD_BYTES {
        return Err(format!("{slots} slots (1 to {})", ARENA_HEAD_BYTES / 4));
    }
    slots
        .checked_mul(slot_bytes)
        .and_then(|n| n.checked_add(ARENA_HEAD_BYTES))
        .ok_or_else(|| "too large".to_owned())
}

fn map(fd: &impl AsRawFd, len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh shared mapping of a file of at least `len` bytes.
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
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_filled_on_one_side_is_read_on_the_other_and_reused_once_handed_back() {
        let sender = Arena::create(3, 64).unwrap();
        // The other side, as a worker maps it: through /proc, by name.
        let receiver = Arena::open(&sender.env_value().unwrap()).unwrap();
        assert_eq!(receiver.env_value(), None);
        // Mapped: the sender's descriptor can go, and the memory stays shared.
        sender.forget_name();
        assert_eq!(sender.env_value(), None);
        // Each slice read is copied out before any release.
        // SAFETY: see above.
        let read = |slot: u32, len: u32| unsafe { receiver.slot(slot, len) }.map(<[u8]>::to_vec);
        assert_eq!(sender.put(&[7; 65]), None, "over a slot");
        let a = sender.put(b"first").unwrap();
        let b = sender.put(b"second").unwrap();
        let c = sender.put(b"third").unwrap();
        assert_eq!(sender.put(b"fourth"), None, "every slot taken");
        assert_eq!(read(a, 5).as_deref(), Some(&b"first"[..]));
        assert_eq!(read(b, 6).as_deref(), Some(&b"second"[..]));
        assert_eq!(read(c, 5).as_deref(), Some(&b"third"[..]));
        assert_eq!(read(c, 65), None, "longer than a slot");
        assert_eq!(read(3, 1), None, "no such slot");
        // Handed back: that one is reused, and reads as free meanwhile.
        // SAFETY: no slice of it is held.
        unsafe { receiver.release(b) };
        assert_eq!(read(b, 6), None, "a free slot");
        assert_eq!(sender.put(b"again"), Some(b));
        assert_eq!(read(b, 5).as_deref(), Some(&b"again"[..]));
    }

    #[test]
    fn names_that_do_not_map_are_errors() {
        for bad in [
            "",
            "x",
            "/nonexistent:2:64",
            "/proc/self/status:0:64",
            "/dev/null:2:64",
        ] {
            assert!(Arena::open(bad).is_err(), "{bad}");
        }
    }
}
