//! Records on their way: dispatch to workers, results, and what happens to
//! the records of a worker that is gone (requeue, or give up on a poison
//! record), record timeouts and liveness.

use std::time::{Duration, Instant};

use log::{error, info, warn};
use procpool_protocol::FailureKind;

use super::worker::{InFlight, Phase, Remains, Worker};
use super::{Admission, PoolPhase, Supervisor};
use crate::batch::Batch;
use crate::error::{HandshakeFailure, RecordError, WorkerEnd};
use crate::outcome::Block;
use crate::transport::Results;

impl Supervisor {
    /// Send queued batches to workers with room for them.
    pub(super) fn dispatch(&mut self) {
        if self.admission != Admission::Open {
            return;
        }
        // A suspect record (one a worker died running alone) is only ever
        // the first record of a fresh worker, which takes it before anything
        // else: a death there is proof against it. Each death that makes a
        // suspect also starts a replacement, so there is a fresh worker for
        // every suspect; should none be ready or coming (a backend that does
        // not replace), suspects go anywhere rather than wait forever.
        while !self.pending.is_empty() {
            let fresh =
                |w: &Worker| w.assigned == 0 && (w.is_starting() || w.phase == Phase::Ready);
            let fallback = !self.workers.iter().any(fresh);
            let limit = self.settings.in_flight;
            let max = self.settings.max_tasks_per_child;
            let eligible = |w: &Worker, suspect: bool| {
                w.phase == Phase::Ready
                    && w.in_flight.len() < limit
                    && max.is_none_or(|m| w.assigned < m)
                    && (!suspect || fallback || w.assigned == 0)
            };
            // A fresh ready worker takes the first queued suspect; otherwise
            // the first of the next few queued batches that some worker may take.
            let first_suspect = self.pending.iter().position(|c| c.suspect);
            let to_fresh = first_suspect.and_then(|i| {
                self.workers
                    .iter()
                    .position(|w| w.phase == Phase::Ready && w.assigned == 0)
                    .map(|slot| (i, slot))
            });
            let pick = to_fresh.or_else(|| {
                self.pending.iter().take(64).enumerate().find_map(|(i, c)| {
                    self.workers
                        .iter()
                        .enumerate()
                        .filter(|(_, w)| eligible(w, c.suspect))
                        .min_by_key(|(_, w)| (w.in_flight.len(), w.assigned))
                        .map(|(slot, _)| (i, slot))
                })
            });
            let Some((index, slot)) = pick else { break };
            let Some(mut batch) = self.pending.remove(index) else {
                break;
            };
            let w = &mut self.workers[slot];
            if let Some(m) = max {
                let quota = (m - w.assigned) as usize;
                if batch.len() > quota {
                    let tail = batch.split_off(quota);
                    self.pending.push_front(tail);
                }
            }
            let id = self.next_batch;
            self.next_batch += 1;
            let message = match batch.message(id) {
                Ok(message) => message,
                Err(e) => {
                    self.fail_batch(batch, RecordError::BadInput(e.to_string()), 0);
                    continue;
                }
            };
            w.send(message);
            let now = Instant::now();
            if w.in_flight.is_empty() {
                // An idle worker has had nothing to say: its liveness clock
                // starts now.
                w.last_heard = now;
                if self.settings.record_timeout.is_some() {
                    w.current_started = Some(now);
                }
            }
            w.assigned += batch.len() as u64;
            w.in_flight.push_back(InFlight {
                id,
                sent: now,
                batch,
                done: 0,
            });
        }
    }

    pub(super) fn results(&mut self, slot: usize, results: Results) {
        let w = &mut self.workers[slot];
        let pid = w.pid;
        let n = results.head.len();
        let Some(front) = w.in_flight.front_mut() else {
            self.protocol_error(
                slot,
                format!(
                    "sent results for batch {} it does not hold",
                    results.head.batch
                ),
            );
            return;
        };
        if front.id != results.head.batch || front.done + n > front.batch.len() {
            let batch = results.head.batch;
            self.protocol_error(slot, format!("sent results for batch {batch} out of turn"));
            return;
        }
        let failed = results.head.failures.len() as u64;
        let bad_input = results
            .head
            .failures
            .iter()
            .filter(|(_, f)| f.kind == FailureKind::BadInput)
            .count() as u64;
        let busy_nanos = results.head.busy_nanos;
        let seqs = front.batch.seqs[front.done..front.done + n].to_vec();
        let Some(block) = Block::answered(seqs, Some(pid).filter(|&p| p != 0), results) else {
            self.protocol_error(slot, "sent results that do not fit their message".into());
            return;
        };
        let w = &mut self.workers[slot];
        let Some(front) = w.in_flight.front_mut() else {
            return;
        };
        front.done += n;
        w.answered += n as u64;
        w.last_answer = Some(Instant::now());
        let job = front.batch.job;
        if front.done == front.batch.len() {
            w.in_flight.pop_front();
        }
        if self.settings.record_timeout.is_some() {
            w.current_started = (!w.in_flight.is_empty()).then(Instant::now);
        }
        if let Some(s) = w.stats.as_mut() {
            s.records += n as u64;
            s.failed += failed;
            s.bad_input += bad_input;
            s.busy += Duration::from_nanos(busy_nanos);
        }
        self.settings.sizer.observe(n, busy_nanos);
        self.deliver(job, block);
        self.maybe_recycle(slot);
    }

    /// With `max_tasks_per_child`, a worker that has had its quota and
    /// answered everything is told to stop; its replacement comes when it exits.
    fn maybe_recycle(&mut self, slot: usize) {
        let Some(max) = self.settings.max_tasks_per_child else {
            return;
        };
        let w = &mut self.workers[slot];
        if w.phase == Phase::Ready && w.assigned >= max && w.in_flight.is_empty() {
            w.recycle();
            info!("worker pid={} recycled after {} records", w.pid, w.assigned);
        }
    }

    pub(super) fn protocol_error(&mut self, slot: usize, reason: String) {
        let w = &mut self.workers[slot];
        error!(
            "worker pid={} broke the protocol: {reason}; killing it",
            w.pid
        );
        if w.is_starting() {
            self.start_failed(slot, HandshakeFailure::Protocol(reason));
            return;
        }
        w.end(WorkerEnd::ProtocolError(reason));
    }

    /// A worker's channel closed: it exited, we killed it, or it broke the
    /// protocol (`reason`). Settle it and replace it.
    pub(super) fn closed(&mut self, slot: usize, reason: Option<String>) {
        let w = &mut self.workers[slot];
        if w.is_starting() {
            if let Some(reason) = &reason {
                // Garbage instead of a handshake: killed now, not waited for.
                w.end(WorkerEnd::ProtocolError(reason.clone()));
            }
            let exit = w.gone().exit;
            let reason = reason.map_or(HandshakeFailure::Exited(exit), HandshakeFailure::Protocol);
            // Already gone: `start_failed` only counts it and replaces it.
            self.start_failed(slot, reason);
            return;
        }
        if w.phase == Phase::Gone {
            return;
        }
        if let Some(reason) = reason {
            // Garbage on the channel: the worker is not trusted any more.
            error!("worker pid={} {reason}; killing it", w.pid);
            w.end(WorkerEnd::ProtocolError(reason));
        }
        let remains = w.gone();
        self.settle(remains);
        self.respawn(slot);
    }

    /// Log how a worker ended, requeue (or give up) the records it held, and
    /// keep its statistics.
    fn settle(&mut self, mut remains: Remains) {
        let (pid, exit) = (remains.pid, remains.exit);
        match &remains.end {
            WorkerEnd::Stopped(_) | WorkerEnd::Recycled(_) => {
                info!("worker pid={pid} exited ({exit}): {}", remains.end)
            }
            end => warn!(
                "worker pid={pid} ended: {end}; it held {}",
                remains.describe_held()
            ),
        }
        let in_flight = std::mem::take(&mut remains.in_flight);
        let given_up = self.requeue(in_flight, &remains);
        if let Some(mut s) = remains.stats {
            // A record given up was run, and failed, by this worker.
            s.records += given_up;
            s.failed += given_up;
            self.past.push(s);
        }
    }

    /// Put the records a dead worker held back in front of the queue; the
    /// one it was running, if known, is charged with its death when the
    /// worker was fresh (see the README). Returns how many records were
    /// given up (failed as `WorkerDied`).
    fn requeue(&mut self, in_flight: Vec<InFlight>, dead: &Remains) -> u64 {
        let mut given_up = 0;
        let mut batches: Vec<Batch> = in_flight
            .into_iter()
            .map(|mut f| f.batch.split_off(f.done))
            .filter(|c| !c.is_empty())
            .collect();
        let died = matches!(
            dead.end,
            WorkerEnd::Crashed(_) | WorkerEnd::ProtocolError(_) | WorkerEnd::Unresponsive
        );
        let mut back = Vec::new();
        if died && !batches.is_empty() {
            let mut running = batches.remove(0);
            if self.settings.record_timeout.is_some() && running.len() > 1 {
                // Record-by-record answers: the first unanswered record was running.
                batches.insert(0, running.split_off(1));
            }
            if running.len() > 1 {
                // Which record of the batch was running is unknown: each is
                // sent again alone (not suspect: there is one replacement for
                // several records), so that a poison record is found by the
                // deaths it causes by itself.
                back.extend(running.into_singletons());
            } else if !dead.fresh {
                // It was running, but the worker had run others before: the
                // death may be theirs (a leak, say). Suspect, not charged.
                running.suspect = true;
                back.push(running);
            } else {
                running.deaths += 1;
                running.suspect = true;
                if running.deaths > self.settings.retries {
                    let seq = running.seqs[0];
                    warn!(
                        "record #{seq} given up: {} workers died running it",
                        running.deaths
                    );
                    let error = RecordError::WorkerDied {
                        pid: dead.pid,
                        exit: dead.exit,
                        attempts: running.deaths,
                    };
                    given_up += 1;
                    let failed = Block::failed_running(seq, dead.pid, error, dead.since);
                    self.deliver(running.job, failed);
                } else {
                    back.push(running);
                }
            }
        }
        back.extend(batches);
        if let Some(reason) = self.refusal() {
            for batch in back {
                self.fail_batch(batch, reason.clone(), 0);
            }
            return given_up;
        }
        if let PoolPhase::Stopping { .. } = self.phase {
            // No worker will take them any more.
            for batch in back {
                self.fail_batch(batch, RecordError::Cancelled, 0);
            }
            return given_up;
        }
        for batch in back.into_iter().rev() {
            self.pending.push_front(batch);
        }
        given_up
    }

    pub(super) fn check_record_timeout(&mut self, slot: usize, now: Instant) {
        let Some(timeout) = self.settings.record_timeout else {
            return;
        };
        let w = &mut self.workers[slot];
        let Some(started) = w.current_started else {
            return;
        };
        if now.duration_since(started) < timeout {
            return;
        }
        let Some(front) = w.in_flight.front_mut() else {
            return;
        };
        let seq = front.batch.seqs[front.done];
        let job = front.batch.job;
        front.done += 1;
        if front.done == front.batch.len() {
            w.in_flight.pop_front();
        }
        let pid = w.pid;
        warn!(
            "record #{seq} timed out after {:.3} s; killing worker pid={pid}",
            timeout.as_secs_f64()
        );
        w.current_started = None;
        w.end(WorkerEnd::TimedOut);
        if let Some(s) = w.stats.as_mut() {
            s.records += 1;
            s.failed += 1;
            s.busy += timeout;
        }
        let error = RecordError::TimedOut {
            pid,
            after: timeout,
        };
        self.deliver(job, Block::failed_running(seq, pid, error, started));
    }

    /// A worker holding records that has said nothing (not even a
    /// heartbeat) for the liveness timeout, and that the system does not
    /// say runs, is declared dead: killed, its records requeued as after a
    /// crash.
    pub(super) fn check_liveness(&mut self, slot: usize, now: Instant) {
        let limit = self.settings.liveness_timeout;
        let w = &mut self.workers[slot];
        if w.in_flight.is_empty() || now.duration_since(w.last_heard) < limit {
            return;
        }
        if w.runs() == Some(true) {
            // Busy, not stopped (a local process in a long record): asked
            // again after another timeout.
            w.last_heard = now;
            return;
        }
        warn!(
            "worker pid={} sent nothing for {:.1} s; declaring it dead",
            w.pid,
            limit.as_secs_f64()
        );
        w.end(WorkerEnd::Unresponsive);
    }
}
