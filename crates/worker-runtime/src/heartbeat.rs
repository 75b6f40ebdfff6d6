//! Heartbeats: proof of life from a thread of the worker's own.
//!
//! The serve loop runs records on the main thread, so a record that takes
//! minutes says nothing for minutes. A second thread sends
//! [`WorkerMessage::Heartbeat`] every period over its own handle on the
//! result channel, so that the coordinator can tell a worker busy with a long
//! record from one that is stopped, deadlocked in the runtime or cut off.
//! A stopped process (SIGSTOP) stops this thread too, which is the point.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, warn};
use procpool_protocol::{encode, WorkerMessage, DEFAULT_HEARTBEAT_MS, ENV_HEARTBEAT_MS};

/// A way to send one encoded message from another thread than the serve
/// loop's; returns `false` once the coordinator is gone.
pub type SideSender = Box<dyn FnMut(&[u8]) -> bool + Send>;

/// The heartbeat period from [`ENV_HEARTBEAT_MS`]: `None` when set to `0`
/// (heartbeats off); the default when unset or not a number.
pub fn period_from_env() -> Option<Duration> {
    let ms = match std::env::var(ENV_HEARTBEAT_MS) {
        Err(_) => DEFAULT_HEARTBEAT_MS,
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(ms) => ms,
            Err(_) => {
                warn!("ignoring {ENV_HEARTBEAT_MS}={v} (not a number of milliseconds)");
                DEFAULT_HEARTBEAT_MS
            }
        },
    };
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// The running heartbeat thread; dropping it stops and joins the thread.
#[derive(Debug)]
pub struct Heartbeat {
    // Dropping the sender wakes the thread at once, whatever its period.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Start sending a heartbeat every `period` through `send`, until the
    /// returned value is dropped or `send` reports the coordinator gone.
    /// `None` if the thread could not be started (the worker runs on,
    /// without heartbeats).
    pub fn start(period: Duration, mut send: SideSender) -> Option<Heartbeat> {
        let bytes = match encode(&WorkerMessage::Heartbeat) {
            Ok(b) => b,
            Err(e) => {
                warn!("no heartbeats: {e}");
                return None;
            }
        };
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("procpool-heartbeat".into())
            .spawn(move || loop {
                match stopped.recv_timeout(period) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if !send(&bytes) {
                            debug!("heartbeat: the coordinator is gone");
                            return;
                        }
                    }
                    // Stopped, or the serve loop is gone.
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            });
        match thread {
            Ok(thread) => Some(Heartbeat {
                stop: Some(stop),
                thread: Some(thread),
            }),
            Err(e) => {
                warn!("no heartbeats: cannot start the heartbeat thread: {e}");
                None
            }
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use procpool_protocol::decode;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    #[test]
    fn beats_every_period_and_stops_when_dropped() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let beat = Heartbeat::start(
            Duration::from_millis(10),
            Box::new(move |b| {
                sink.lock().unwrap().push(b.to_vec());
                true
            }),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().len() < 3 {
            assert!(Instant::now() < deadline, "no heartbeats within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        let t0 = Instant::now();
        drop(beat);
        // Dropping wakes the thread at once rather than after a period.
        assert!(t0.elapsed() < Duration::from_secs(5));
        let n = seen.lock().unwrap().len();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(seen.lock().unwrap().len(), n, "beats after drop");
        for b in seen.lock().unwrap().iter() {
            assert_eq!(
                decode::<WorkerMessage>(b).unwrap(),
                WorkerMessage::Heartbeat
            );
        }
    }

    #[test]
    fn thread_ends_when_the_coordinator_is_gone() {
        let calls = Arc::new(Mutex::new(0));
        let c = calls.clone();
        let beat = Heartbeat::start(
            Duration::from_millis(1),
            Box::new(move |_| {
                *c.lock().unwrap() += 1;
                false
            }),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(*calls.lock().unwrap(), 1);
        drop(beat);
    }
}
