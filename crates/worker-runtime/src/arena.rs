//! The worker's side of the shared memory its coordinator puts batches in
//! ([`procpool_protocol::ENV_ARENA`]; the coordinator's side is the pool's
//! `arena.rs`): mapped once at start, read in place for each
//! `Request::BatchIn`, each slot handed back (its flag to 0) once its
//! records are done with.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use log::debug;
use procpool_protocol::{ARENA_HEAD_BYTES, ENV_ARENA};

pub(crate) struct Arena {
    base: NonNull<u8>,
    len: usize,
    slots: usize,
    slot_bytes: usize,
}

impl Arena {
    /// The shared memory named in the environment, mapped; `None` if there
    /// is none or it cannot be mapped (batches then come over the socket).
    pub fn from_env() -> Option<Arena> {
        let value = std::env::var(ENV_ARENA).ok()?;
        match Arena::map(&value) {
            Ok(arena) => Some(arena),
            Err(e) => {
                debug!("batches over the socket: cannot map {ENV_ARENA}={value}: {e}");
                None
            }
        }
    }

    fn map(value: &str) -> Result<Arena, String> {
        let mut parts = value.rsplitn(3, ':');
        let (Some(slot_bytes), Some(slots), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err("not PATH:SLOTS:SLOT_BYTES".into());
        };
        let slot_bytes: usize = slot_bytes.parse().map_err(|_| "bad slot size")?;
        let slots: usize = slots.parse().map_err(|_| "bad slot count")?;
        if slots == 0 || slots * 4 > ARENA_HEAD_BYTES {
            return Err(format!("{slots} slots"));
        }
        let len = slots
            .checked_mul(slot_bytes)
            .and_then(|n| n.checked_add(ARENA_HEAD_BYTES))
            .ok_or("too large")?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| e.to_string())?;
        let size = file.metadata().map_err(|e| e.to_string())?.len();
        if size < len as u64 {
            return Err(format!("{size} bytes, not {len}"));
        }
        // SAFETY: a shared mapping of a file we opened, of a length it has;
        // the descriptor may close after (the mapping keeps the memory).
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
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or("mmap gave null")?;
        Ok(Arena {
            base,
            len,
            slots,
            slot_bytes,
        })
    }

    /// The message in `slot`: its first `len` bytes.
    ///
    /// The coordinator filled the slot before naming it and leaves it alone
    /// until [`Arena::release`]: the bytes hold still for as long as they
    /// are used, which ends at the release.
    pub fn slot(&self, slot: u32, len: u32) -> Option<&[u8]> {
        let (slot, len) = (slot as usize, len as usize);
        if slot >= self.slots || len > self.slot_bytes {
            return None;
        }
        let at = ARENA_HEAD_BYTES + slot * self.slot_bytes;
        debug_assert!(at + len <= self.len);
        // SAFETY: within the mapping, which lives as long as `self`; see
        // above for why nothing writes it meanwhile.
        Some(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(at), len) })
    }

    /// Done with the records of `slot`: the coordinator may fill it again.
    pub fn release(&self, slot: u32) {
        let slot = slot as usize;
        if slot < self.slots {
            // SAFETY: the head's aligned u32s, within the mapping, only ever
            // accessed atomically, by both processes.
            let flag = unsafe { &*self.base.as_ptr().add(slot * 4).cast::<AtomicU32>() };
            // Release: every read of the slot comes before.
            flag.store(0, Ordering::Release);
        }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}
