//! Launching workers, their handshake, and what happens when one fails to
//! start: at any time, it is replaced, and after `MAX_START_FAILURES` in a
//! row the pool is broken (during `build`: `build` fails).

use std::time::Instant;

use log::{error, info};
use procpool_protocol::{encode, Hello, Request};

use super::worker::{Phase, Worker};
use super::{Admission, PoolPhase, Started, Supervisor};
use crate::batch::Batch;
use crate::error::{HandshakeFailure, PoolError, RecordError, WorkerEnd};
use crate::transport::Link;

/// Workers in a row that may fail to start before the pool gives up.
pub(super) const MAX_START_FAILURES: u32 = 3;

impl Supervisor {
    /// Launch every slot's first worker, all at once: the launcher may start
    /// them side by side. A launcher that cannot launch fails `build`.
    pub(super) fn launch_all(&mut self) {
        let slots: Vec<(usize, u64)> = (0..self.workers.len()).map(|s| (s, 1)).collect();
        let links = self.settings.launcher.launch_all(&slots, &self.events);
        let mut failure = None;
        for ((slot, generation), link) in slots.into_iter().zip(links) {
            match link {
                Ok(link) => self.attach(slot, generation, link),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            self.fail_start(e);
        }
    }

    fn attach(&mut self, slot: usize, generation: u64, link: Box<dyn Link>) {
        info!("spawned worker {}", link.label());
        let deadline = Instant::now() + self.settings.handshake_timeout;
        self.workers[slot] = Worker::launched(generation, link, deadline);
    }

    /// Once every worker is ready, `build` returns.
    pub(super) fn check_started(&mut self) {
        let PoolPhase::Starting { reply } = &self.phase else {
            return;
        };
        if !self.workers.iter().all(|w| w.phase == Phase::Ready) {
            return;
        }
        let started = Started {
            pids: self.workers.iter().map(|w| w.pid).collect(),
            offered: self.offered.clone(),
        };
        if reply.send(Ok(started)).is_ok() {
            self.phase = PoolPhase::Running;
        } else {
            // `build` gave up waiting: nobody will use this pool.
            self.stop_now(None);
        }
    }

    pub(super) fn hello(&mut self, slot: usize, deadline: Instant, hello: Hello) {
        let w = &self.workers[slot];
        let reason = if hello.token != self.settings.token {
            Some(HandshakeFailure::WrongToken)
        } else if w.pid != 0 && hello.pid != w.pid {
            Some(HandshakeFailure::WrongPid {
                claimed: hello.pid,
                started: w.pid,
            })
        } else {
            None
        };
        if let Some(reason) = reason {
            self.start_failed(slot, reason);
            return;
        }
        let w = &mut self.workers[slot];
        if w.pid == 0 {
            // A backend that learns the pid from the handshake.
            w.pid = hello.pid;
        }
        w.host = hello.host;
        self.offered = hello.tasks;
        let Some(spec) = &self.settings.task else {
            self.became_ready(slot);
            return;
        };
        if let Err(e) = crate::pool::check_offer(
            &spec.name,
            self.settings.types.as_ref(),
            &self.offered,
            &self.settings.bin,
        ) {
            self.reject(slot, e);
            return;
        }
        let request = Request::Configure {
            spec: spec.clone(),
            flush_each: self.settings.record_timeout.is_some(),
            record_times: self.settings.record_times,
        };
        match encode(&request) {
            Ok(bytes) => {
                let w = &mut self.workers[slot];
                w.send(bytes);
                w.phase = Phase::Configuring { deadline };
            }
            Err(e) => self.start_failed(slot, HandshakeFailure::Protocol(e.to_string())),
        }
    }

    pub(super) fn became_ready(&mut self, slot: usize) {
        self.start_failures = 0;
        let w = &mut self.workers[slot];
        w.ready();
        info!("worker pid={} on {} ready", w.pid, w.host);
    }

    /// A starting worker that exited, or whose handshake is overdue.
    pub(super) fn check_handshake(&mut self, slot: usize, deadline: Instant, now: Instant) {
        if let Some(exit) = self.workers[slot].exited() {
            self.start_failed(slot, HandshakeFailure::Exited(exit));
        } else if now >= deadline {
            let t = self.settings.handshake_timeout;
            self.start_failed(slot, HandshakeFailure::NoHello(t));
        }
    }

    /// The worker cannot run our task: a start-up error, never retried.
    pub(super) fn reject(&mut self, slot: usize, error: PoolError) {
        let reason = error.to_string();
        self.workers[slot].end(WorkerEnd::ProtocolError(reason.clone()));
        if let PoolPhase::Starting { .. } = self.phase {
            self.fail_start(error);
        } else {
            self.break_pool(reason);
        }
    }

    /// A worker failed to start: give it up and replace it, unless too many
    /// failed in a row.
    pub(super) fn start_failed(&mut self, slot: usize, reason: HandshakeFailure) {
        let pid = self.workers[slot].pid;
        self.workers[slot].abandon();
        self.start_failures += 1;
        error!("worker pid={pid} failed to start: {reason}");
        if self.start_failures < MAX_START_FAILURES && self.settings.launcher.respawns() {
            self.respawn(slot);
            return;
        }
        if let PoolPhase::Starting { .. } = self.phase {
            self.fail_start(PoolError::Handshake {
                pid: Some(pid).filter(|&p| p != 0),
                failure: reason,
            });
        } else {
            self.break_pool(format!(
                "{MAX_START_FAILURES} workers in a row failed to start; last: pid {pid} {reason}"
            ));
        }
    }

    /// Report a start-up failure to `build` and take everything down.
    pub(super) fn fail_start(&mut self, error: PoolError) {
        if let PoolPhase::Starting { reply } = &self.phase {
            let _ = reply.send(Err(error));
        }
        self.stop_now(None);
    }

    /// No worker can be started: every queued and future record fails.
    pub(super) fn break_pool(&mut self, reason: String) {
        if self.admission != Admission::Open {
            return;
        }
        if let PoolPhase::Starting { .. } = self.phase {
            self.fail_start(PoolError::Handshake {
                pid: None,
                failure: HandshakeFailure::Unavailable(reason),
            });
            return;
        }
        error!("pool broken: {reason}");
        self.admission = Admission::Broken(reason.clone());
        let queued: Vec<Batch> = self.pending.drain(..).collect();
        for batch in queued {
            self.fail_batch(batch, RecordError::PoolBroken(reason.clone()), 0);
        }
    }

    /// Start a replacement in `slot`, when one is wanted.
    pub(super) fn respawn(&mut self, slot: usize) {
        if self.admission != Admission::Open || matches!(self.phase, PoolPhase::Stopping { .. }) {
            return;
        }
        if !self.settings.launcher.respawns() {
            self.break_pool("a worker is gone and this backend cannot replace it".into());
            return;
        }
        let generation = self.workers[slot].generation + 1;
        match self
            .settings
            .launcher
            .launch(slot, generation, &self.events)
        {
            Ok(link) => self.attach(slot, generation, link),
            Err(e) => {
                self.start_failures += 1;
                error!("cannot start a replacement worker: {e}");
                if self.start_failures < MAX_START_FAILURES {
                    self.respawn(slot);
                } else if let PoolPhase::Starting { .. } = self.phase {
                    self.fail_start(e);
                } else {
                    self.break_pool(e.to_string());
                }
            }
        }
    }
}
