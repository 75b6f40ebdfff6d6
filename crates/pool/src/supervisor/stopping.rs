//! Cancel and shutdown.
//!
//! `cancel` closes admission: queued records end as cancelled, records in
//! flight may finish within the grace period, then the workers still holding
//! some are killed. `shutdown` drains (submitted work finishes), then stops:
//! `Stop` to every worker, and whatever is not gone by the grace period is
//! killed and reaped.

use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::{Admission, PoolPhase, Supervisor};
use crate::batch::Batch;
use crate::error::{RecordError, WorkerEnd};
use crate::stats::WorkerStats;
use std::sync::mpsc::Sender;

impl Supervisor {
    pub(super) fn cancel(&mut self, grace: Duration) {
        if let Admission::Cancelled { kill_at } = &mut self.admission {
            // A second cancel: stop at once.
            *kill_at = Some(Instant::now());
            return;
        }
        self.admission = Admission::Cancelled {
            kill_at: Some(Instant::now() + grace),
        };
        let queued: Vec<Batch> = self.pending.drain(..).collect();
        let held: usize = queued.iter().map(Batch::len).sum();
        info!("cancelling: {held} queued records dropped, letting records in flight finish");
        for batch in queued {
            self.fail_batch(batch, RecordError::Cancelled, 0);
        }
    }

    /// After the cancel grace period, kill the workers still busy.
    pub(super) fn check_cancel_grace(&mut self, now: Instant) {
        let Admission::Cancelled {
            kill_at: Some(deadline),
        } = self.admission
        else {
            return;
        };
        if now < deadline {
            return;
        }
        self.admission = Admission::Cancelled { kill_at: None };
        for w in &mut self.workers {
            if !w.in_flight.is_empty() && w.is_serving() {
                warn!(
                    "worker pid={} still busy after the grace period; killing it",
                    w.pid
                );
                w.end(WorkerEnd::Killed);
            }
        }
    }

    /// Move shutdown along; returns `true` when the supervisor is done.
    pub(super) fn advance_shutdown(&mut self) -> bool {
        if let PoolPhase::Draining { grace, .. } = &self.phase {
            let grace = *grace;
            let broken = matches!(self.admission, Admission::Broken(_));
            let busy =
                !self.pending.is_empty() || self.workers.iter().any(|w| !w.in_flight.is_empty());
            let starting = self.workers.iter().any(|w| w.is_starting());
            // Let submitted work finish first, and replacements start to run it.
            if !broken && (busy || (starting && self.admission == Admission::Open)) {
                return false;
            }
            let PoolPhase::Draining { reply, .. } =
                std::mem::replace(&mut self.phase, PoolPhase::Running)
            else {
                return false;
            };
            self.stop(grace, Some(reply));
        }
        let PoolPhase::Stopping { deadline, .. } = self.phase else {
            return false;
        };
        if Instant::now() >= deadline {
            self.kill_the_rest();
        }
        if self.workers.iter().any(|w| w.phase != super::Phase::Gone) {
            return false;
        }
        if let PoolPhase::Stopping {
            reply: Some(reply), ..
        } = &self.phase
        {
            let _ = reply.send(self.stats());
        }
        true
    }

    /// Tell every worker to stop; those still starting are given up.
    fn stop(&mut self, grace: Duration, reply: Option<Sender<Vec<WorkerStats>>>) {
        self.phase = PoolPhase::Stopping {
            deadline: Instant::now() + grace,
            reply,
        };
        for w in &mut self.workers {
            if w.phase == super::Phase::Ready {
                w.stop();
            } else if w.is_starting() {
                w.abandon();
            }
        }
    }

    /// Take everything down now (start-up failed, or nobody waits for the
    /// pool): no grace.
    pub(super) fn stop_now(&mut self, reply: Option<Sender<Vec<WorkerStats>>>) {
        self.phase = PoolPhase::Stopping {
            deadline: Instant::now(),
            reply,
        };
        self.kill_the_rest();
    }

    /// Kill and reap every worker not gone yet; its records end as cancelled.
    fn kill_the_rest(&mut self) {
        let mut unfinished = Vec::new();
        for w in &mut self.workers {
            if w.phase == super::Phase::Gone {
                continue;
            }
            if !w.is_starting() {
                warn!(
                    "worker pid={} did not stop within the grace period; killing it",
                    w.pid
                );
            }
            w.end(WorkerEnd::Killed);
            let mut remains = w.abandon();
            debug!("worker pid={} reaped: {}", remains.pid, remains.exit);
            for mut f in remains.in_flight.drain(..) {
                unfinished.push(f.batch.split_off(f.done));
            }
            self.past.extend(remains.stats);
        }
        for batch in unfinished {
            self.fail_batch(batch, RecordError::Cancelled, 0);
        }
    }
}
