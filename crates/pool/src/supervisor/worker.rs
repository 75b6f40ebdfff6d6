//! One worker slot as the supervisor sees it: its phase, what it holds, its
//! statistics, and the transitions that end it.

use std::collections::VecDeque;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use procpool_protocol::{encode, Request};

use crate::batch::Batch;
use crate::error::{WorkerEnd, WorkerExit};
use crate::stats::WorkerStats;
use crate::transport::{Link, Outgoing};

/// How long a worker that is gone may take to exit before it is killed.
const REAP_PATIENCE: Duration = Duration::from_millis(500);

/// Where a worker is in its life (see the README's diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Launched; its `Hello` is awaited until `deadline`.
    Starting { deadline: Instant },
    /// Told its task; its `Ready` is awaited until `deadline`.
    Configuring { deadline: Instant },
    /// Takes records (busy when it holds some).
    Ready,
    /// Told to stop (shutdown, or recycled): finishes what it holds, exits.
    Draining,
    /// Ended by us (killed); its channel's close is awaited.
    Exiting,
    /// Nothing left: reaped, or never started.
    Gone,
}

/// One batch a worker holds.
pub(super) struct InFlight {
    pub id: u64,
    /// When it was sent.
    pub sent: Instant,
    pub batch: Batch,
    /// Records of the batch already answered.
    pub done: usize,
}

pub(super) struct Worker {
    /// Tags the events of this worker's life; bumped when it is gone, so
    /// that late events of a past life are ignored.
    pub generation: u64,
    pub phase: Phase,
    pub pid: u32,
    link: Option<Box<dyn Link>>,
    /// Requests to the worker, once it has connected.
    writer: Option<Sender<Outgoing>>,
    pub in_flight: VecDeque<InFlight>,
    /// Records sent to this worker in its life (for recycling).
    pub assigned: u64,
    /// Records it answered in its life: 0 means fresh.
    pub answered: u64,
    /// When the record now running started (kept only with a record timeout).
    pub current_started: Option<Instant>,
    /// When its last results arrived.
    pub last_answer: Option<Instant>,
    /// When it last said anything (any message counts), or was last given
    /// work while idle: the liveness clock.
    pub last_heard: Instant,
    /// Why we ended it, when we did.
    end: Option<WorkerEnd>,
    /// The host it runs on, from its `Hello`.
    pub host: String,
    /// Its statistics, from when it is ready.
    pub stats: Option<WorkerStats>,
}

/// What is left of a worker that is gone.
pub(super) struct Remains {
    pub pid: u32,
    pub exit: WorkerExit,
    pub end: WorkerEnd,
    /// Its batches, with what it had answered of them.
    pub in_flight: Vec<InFlight>,
    /// When the record it was running started (about).
    pub since: Instant,
    /// It had answered no record: a death running its first record is that
    /// record's doing.
    pub fresh: bool,
    pub stats: Option<WorkerStats>,
}

impl Remains {
    /// "no records", "record #7", "12 records (#3 to #40)".
    pub fn describe_held(&self) -> String {
        let seqs: Vec<u64> = self
            .in_flight
            .iter()
            .flat_map(|f| f.batch.seqs[f.done..].iter().copied())
            .collect();
        match seqs.as_slice() {
            [] => "no records".to_owned(),
            [one] => format!("record #{one}"),
            [first, .., last] => format!("{} records (#{first} to #{last})", seqs.len()),
        }
    }
}

impl Worker {
    /// A slot with no worker.
    pub fn empty() -> Self {
        Worker {
            generation: 0,
            phase: Phase::Gone,
            pid: 0,
            link: None,
            writer: None,
            in_flight: VecDeque::new(),
            assigned: 0,
            answered: 0,
            current_started: None,
            last_answer: None,
            last_heard: Instant::now(),
            end: None,
            host: String::new(),
            stats: None,
        }
    }

    /// A worker just launched, whose handshake is due by `deadline`.
    pub fn launched(generation: u64, link: Box<dyn Link>, deadline: Instant) -> Self {
        Worker {
            generation,
            pid: link.pid(),
            phase: Phase::Starting { deadline },
            link: Some(link),
            ..Worker::empty()
        }
    }

    pub fn is_starting(&self) -> bool {
        matches!(
            self.phase,
            Phase::Starting { .. } | Phase::Configuring { .. }
        )
    }

    /// It can still answer records (it is ready, or draining what it holds).
    pub fn is_serving(&self) -> bool {
        matches!(self.phase, Phase::Ready | Phase::Draining)
    }

    /// The worker connected: requests go to `writer` from now on.
    pub fn connected(&mut self, writer: Sender<Outgoing>) {
        self.writer = Some(writer);
        if let Some(link) = self.link.as_mut() {
            link.connected();
        }
    }

    /// Has it exited (without blocking)?
    pub fn exited(&mut self) -> Option<WorkerExit> {
        self.link.as_mut().and_then(|l| l.exited())
    }

    /// Whether the system says that it runs, where the transport can tell.
    pub fn runs(&self) -> Option<bool> {
        self.link.as_ref().and_then(|l| l.runs(self.pid))
    }

    /// Handshake done: it takes records from now on.
    pub fn ready(&mut self) {
        self.phase = Phase::Ready;
        self.last_heard = Instant::now();
        self.stats = Some(WorkerStats::new(self.pid));
    }

    /// Queue an encoded request (dropped if the worker is gone: its reader
    /// reports that).
    pub fn send(&self, message: impl Into<Outgoing>) {
        if let Some(w) = &self.writer {
            let _ = w.send(message.into());
        }
    }

    /// Ask it to finish what it holds and exit.
    pub fn stop(&mut self) {
        if let Some(link) = self.link.as_mut() {
            link.stopping();
        }
        if let Ok(bytes) = encode(&Request::Stop) {
            self.send(bytes);
        }
        self.phase = Phase::Draining;
    }

    /// Recycle it: stop it, and say so when it is gone.
    pub fn recycle(&mut self) {
        self.stop();
        self.end = Some(WorkerEnd::Recycled(WorkerExit::Unknown));
    }

    /// End it now for `why`: mark it exiting and kill it (our request
    /// channel closes too). Its reader reports the close, and then
    /// [`Worker::gone`] settles what it held. The first reason given stays.
    pub fn end(&mut self, why: WorkerEnd) {
        self.end.get_or_insert(why);
        self.phase = Phase::Exiting;
        if let Some(link) = self.link.as_mut() {
            link.kill();
        }
        self.writer = None;
    }

    /// It is gone: reap it (killing it after a short patience), close its
    /// statistics, and hand back what it held. Later events of this life
    /// are ignored.
    pub fn gone(&mut self) -> Remains {
        let was = self.phase;
        self.writer = None;
        let exit = self
            .link
            .take()
            .map_or(WorkerExit::Unknown, |mut l| l.reap(REAP_PATIENCE));
        let end = match self.end.take() {
            Some(WorkerEnd::Recycled(_)) => WorkerEnd::Recycled(exit),
            Some(end) => end,
            None if was == Phase::Draining => WorkerEnd::Stopped(exit),
            None => WorkerEnd::Crashed(exit),
        };
        let mut stats = self.stats.take();
        if let Some(s) = stats.as_mut() {
            s.end(end.clone());
        }
        let since = self.in_flight.front().map_or_else(Instant::now, |f| {
            self.last_answer.map_or(f.sent, |a| a.max(f.sent))
        });
        self.phase = Phase::Gone;
        self.generation += 1;
        self.current_started = None;
        Remains {
            pid: self.pid,
            exit,
            end,
            in_flight: self.in_flight.drain(..).collect(),
            since,
            fresh: self.answered == 0,
            stats,
        }
    }

    /// Give up on a worker that is still starting (or must go at once):
    /// kill it, release whatever waits for it, and settle it as gone.
    pub fn abandon(&mut self) -> Remains {
        if let Some(link) = self.link.as_mut() {
            link.abandon();
        }
        self.end.get_or_insert(WorkerEnd::Killed);
        self.gone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link whose process exits with `exit` once killed (or at once).
    struct Dummy {
        exit: WorkerExit,
        killed: bool,
    }

    impl Link for Dummy {
        fn pid(&self) -> u32 {
            42
        }
        fn kill(&mut self) {
            self.killed = true;
        }
        fn exited(&mut self) -> Option<WorkerExit> {
            self.killed.then_some(self.exit)
        }
        fn reap(&mut self, _patience: Duration) -> WorkerExit {
            if self.killed {
                WorkerExit::Signal(libc::SIGKILL)
            } else {
                self.exit
            }
        }
        fn abandon(&mut self) {
            self.killed = true;
        }
    }

    fn ready(exit: WorkerExit) -> Worker {
        let link = Box::new(Dummy {
            exit,
            killed: false,
        });
        let mut w = Worker::launched(1, link, Instant::now());
        w.ready();
        w
    }

    #[test]
    fn how_a_worker_ended_follows_its_transitions() {
        let code0 = WorkerExit::Code(0);
        let mut w = ready(code0);
        w.stop();
        let r = w.gone();
        assert_eq!(r.end, WorkerEnd::Stopped(code0));
        assert_eq!(r.stats.and_then(|s| s.end), Some(WorkerEnd::Stopped(code0)));
        assert_eq!(
            (w.phase, w.generation),
            (Phase::Gone, 2),
            "later events are ignored"
        );

        let mut w = ready(code0);
        w.recycle();
        assert_eq!(w.gone().end, WorkerEnd::Recycled(code0));

        let abort = WorkerExit::Signal(libc::SIGABRT);
        let mut w = ready(abort);
        assert_eq!(w.gone().end, WorkerEnd::Crashed(abort));

        // Ended by us: the first reason stays, the worker waits for its close.
        let mut w = ready(code0);
        w.end(WorkerEnd::TimedOut);
        w.end(WorkerEnd::Killed);
        assert_eq!(w.phase, Phase::Exiting);
        assert_eq!(w.gone().end, WorkerEnd::TimedOut);
    }

    #[test]
    fn a_fresh_worker_is_one_that_answered_nothing() {
        let mut w = ready(WorkerExit::Code(0));
        assert!(w.gone().fresh);
        let mut w = ready(WorkerExit::Code(0));
        w.answered = 1;
        assert!(!w.gone().fresh);
    }
}
