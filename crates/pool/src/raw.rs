//! The pool as a byte mover: records travel as their input's own bytes.
//!
//! A [`RawPool`] runs a task chosen by name (any task the worker binary
//! registers) on records that are already encoded, e.g. the lines of a
//! JSON-lines file or the records of a CSV file ([`Encoding`]). The workers
//! decode each record into the task's input and encode its output as JSON;
//! this side never needs the task's types. Records come from a
//! [`RawSource`], which may pause (a stream that has nothing more for now):
//! then the records already read go out as a partial batch after a short
//! linger instead of waiting for a full one.
//!
//! ```no_run
//! use procpool::raw::{Feed, RawSource};
//! use procpool::{Encoding, ParamsEncoding, PoolBuilder, TaskSpec};
//!
//! struct Lines(std::vec::IntoIter<String>, String);
//! impl RawSource for Lines {
//!     fn next(&mut self, _wait: Option<std::time::Duration>) -> Feed<'_> {
//!         match self.0.next() {
//!             Some(line) => {
//!                 self.1 = line;
//!                 Feed::Record(self.1.as_bytes())
//!             }
//!             None => Feed::End,
//!         }
//!     }
//! }
//!
//! let pool = PoolBuilder::new().workers(2).build_raw(TaskSpec {
//!     name: "primes".into(),
//!     params: b"{}".to_vec(),
//!     params_encoding: ParamsEncoding::Json,
//!     records: Encoding::Json,
//!     threads: 1,
//! })?;
//! let lines = vec![r#"{"n":10}"#.to_string(), r#"{"n":30}"#.to_string()];
//! for done in pool.map(Lines(lines.into_iter(), String::new())) {
//!     println!("{}", String::from_utf8_lossy(&done.result?));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ops::Range;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use procpool_protocol::{Encoding, TaskInfo, TaskSpec};

use crate::batch::{Batch, JobId};
use crate::error::{PoolError, RecordError};
use crate::outcome::{Block, Outcome, Payload};
use crate::pool::{Canceller, Core, PoolBuilder};
use crate::reorder::InOrder;
use crate::stats::WorkerStats;
use crate::supervisor::Command;
use procpool_protocol::MAX_RECORD_BYTES;

/// How long a partial batch waits for more records from a paused source.
pub const LINGER: Duration = Duration::from_millis(5);

/// What a [`RawSource`] has next.
#[derive(Debug)]
pub enum Feed<'a> {
    /// One record's bytes, in the run's encoding.
    Record(&'a [u8]),
    /// `count` records at once (see [`RawSource::next_lines`]): the lines of
    /// `bytes`, separated by `\n`, the last with none. No line may end with
    /// `\r` or be over [`MAX_RECORD_BYTES`].
    Lines {
        /// The lines.
        bytes: &'a [u8],
        /// How many (one more than the `\n`s in `bytes`).
        count: usize,
    },
    /// A record that cannot be sent (e.g. over a size limit): it takes its
    /// place in the output as `bad_input` with this reason.
    Bad(String),
    /// Nothing within the wait; more may come.
    Pause,
    /// No more records.
    End,
}

/// Where a [`RawPool::map`] reads records.
pub trait RawSource {
    /// The next record. `wait` is how long to wait for one before answering
    /// [`Feed::Pause`]; `None` means wait until there is one (or the end).
    fn next(&mut self, wait: Option<Duration>) -> Feed<'_>;

    /// The next record, or the next records as [`Feed::Lines`]: at most
    /// `max_records` of them in at most `max_bytes` (unless a single line is
    /// over that). Lines travel with no work per record on this side: a
    /// source of one-line records (JSON lines) should give them so. The
    /// default gives [`RawSource::next`]'s one record.
    fn next_lines(
        &mut self,
        wait: Option<Duration>,
        max_records: usize,
        max_bytes: usize,
    ) -> Feed<'_> {
        let _ = (max_records, max_bytes);
        self.next(wait)
    }
}

impl PoolBuilder {
    /// Start the workers and configure the task that `spec` names, with its
    /// parameters and record encoding as given (e.g. JSON from a command
    /// line). With `spec.threads` above 1 each worker runs batches on that
    /// many threads (set `in_flight` to keep them all busy).
    pub fn build_raw(self, spec: TaskSpec) -> Result<RawPool, PoolError> {
        let lines = !matches!(spec.records, Encoding::Bincode);
        Ok(RawPool {
            core: self.start(Some(spec))?,
            lines,
        })
    }
}

/// A pool whose records and results are bytes; see the module documentation.
/// Dropping it shuts it down as [`RawPool::shutdown`] does.
pub struct RawPool {
    core: Core,
    /// Outputs are JSON lines (each arrives with its newline).
    lines: bool,
}

impl std::fmt::Debug for RawPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawPool")
            .field("workers", &self.core.workers)
            .field("pids", &self.core.pids)
            .finish_non_exhaustive()
    }
}

impl RawPool {
    /// Results in the source's order. Only a bounded window of records is
    /// in flight or waiting to be reordered.
    pub fn map<S: RawSource>(&self, source: S) -> RawMap<'_, S> {
        let (job, rx) = self.core.new_job();
        RawMap {
            core: &self.core,
            source: Some(source),
            job,
            rx,
            reorder: InOrder::default(),
            lines: self.lines,
            next_seq: 0,
            yielded: 0,
            record_bytes: 64,
        }
    }

    /// Number of worker processes.
    pub fn workers(&self) -> usize {
        self.core.workers
    }

    /// Process ids of the workers started with the pool.
    pub fn pids(&self) -> &[u32] {
        &self.core.pids
    }

    /// The tasks the worker binary offers (from its handshake).
    pub fn offered_tasks(&self) -> &[TaskInfo] {
        self.core.offered()
    }

    /// A handle that can cancel the pool's work from another thread.
    pub fn canceller(&self) -> Canceller {
        self.core.canceller()
    }

    /// Stop every worker (killing those that do not exit within the grace
    /// period), reap them, and return their statistics.
    pub fn shutdown(self) -> Vec<WorkerStats> {
        self.core.shutdown_inner()
    }
}

/// A result's bytes from a [`RawPool`]: a range of the message they arrived
/// in, shared with the other results of that message, so that results cost
/// no allocation or copy each. Reads as a `[u8]`; [`Bytes::into_vec`] gives
/// bytes of their own.
#[derive(Clone)]
pub struct Bytes(Payload);

impl Bytes {
    /// The bytes as a vector of their own (a copy unless they were the
    /// whole of an unshared message).
    pub fn into_vec(self) -> Vec<u8> {
        self.0.into_vec()
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({:?})", String::from_utf8_lossy(&self.0))
    }
}

/// The iterator behind [`RawPool::map`].
pub struct RawMap<'p, S> {
    core: &'p Core,
    source: Option<S>,
    job: JobId,
    rx: Receiver<Block>,
    reorder: InOrder,
    lines: bool,
    next_seq: u64,
    yielded: u64,
    /// Average bytes of a record in the last batch.
    record_bytes: usize,
}

impl<S> std::fmt::Debug for RawMap<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawMap")
            .field("sent", &self.next_seq)
            .field("yielded", &self.yielded)
            .finish_non_exhaustive()
    }
}

impl<S: RawSource> RawMap<'_, S> {
    fn window(&self) -> u64 {
        (self.core.sizer.batch_size() * self.core.workers * (self.core.in_flight + 1)) as u64
    }

    /// Read records and send batches while the window has room for one.
    /// Returns whether the source paused (it may have more later).
    fn top_up(&mut self) -> bool {
        loop {
            let size = self.core.sizer.batch_size() as u64;
            let outstanding = self.next_seq - self.yielded;
            if self.source.is_none() || (outstanding > 0 && outstanding + size > self.window()) {
                return false;
            }
            // Sized from the last batch's records, to grow it rarely.
            let records = size as usize;
            let max_bytes = self.core.sizer.max_bytes();
            let bytes = (self.record_bytes * records).min(max_bytes + (64 << 10));
            let mut batch = Batch::with_capacity(self.job, records, bytes);
            // A batch is records or lines. Lines that cannot join a batch of
            // lines (after a gap in the numbers), or a record, send it as it
            // is; the next batch then takes records only, lines one by one
            // too, so that input mixing the two (`\r\n` here and there) makes
            // full batches of records, as it did before lines travelled whole.
            let next_batch = |batch: &mut Batch| {
                let full = std::mem::replace(batch, Batch::with_capacity(self.job, records, bytes));
                self.core.send_batch(full)
            };
            let mut records_only = false;
            let mut gone = false;
            let mut paused = false;
            while (batch.len() as u64) < size && batch.bytes() < max_bytes && !gone {
                let Some(source) = self.source.as_mut() else {
                    break;
                };
                // Nothing in flight and nothing gathered: wait for input.
                // Otherwise linger briefly, then send what there is.
                let idle = batch.is_empty() && self.next_seq == self.yielded;
                let wait = if idle {
                    None
                } else if batch.is_empty() {
                    Some(Duration::ZERO)
                } else {
                    Some(LINGER)
                };
                let seq = self.next_seq;
                let room = (size as usize).saturating_sub(batch.len());
                let feed = if records_only || !batch.takes_lines(seq) {
                    source.next(wait)
                } else {
                    source.next_lines(wait, room, max_bytes.saturating_sub(batch.bytes()))
                };
                match feed {
                    Feed::Lines { bytes, count } => {
                        self.next_seq += count as u64;
                        // The source's count must be its lines' (checked: a
                        // batch split by lines needs it).
                        let lines = memchr::memchr_iter(b'\n', bytes).count() + 1;
                        if count == 0 || lines != count {
                            let reason =
                                format!("the source gave {count} lines in bytes that hold {lines}");
                            for k in 0..count as u64 {
                                let error = RecordError::BadInput(reason.clone());
                                self.reorder.insert(Block::failed(seq + k, 0, error));
                            }
                        } else if !batch.push_lines(seq, count, bytes) {
                            // Lines after a gap: the batch goes, these are records.
                            if !batch.takes_records() {
                                gone |= !next_batch(&mut batch);
                                records_only = true;
                            }
                            for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
                                batch.push_bytes(seq + i as u64, line);
                            }
                        }
                    }
                    // It could not travel: the other side would refuse the message.
                    Feed::Record(bytes) if bytes.len() > MAX_RECORD_BYTES => {
                        self.next_seq += 1;
                        let reason = format!(
                            "the record is {} bytes, over the {MAX_RECORD_BYTES}-byte limit of one record",
                            bytes.len()
                        );
                        self.reorder
                            .insert(Block::failed(seq, 0, RecordError::BadInput(reason)));
                    }
                    Feed::Record(bytes) => {
                        self.next_seq += 1;
                        if !batch.takes_records() {
                            gone |= !next_batch(&mut batch);
                            records_only = true;
                        }
                        batch.push_bytes(seq, bytes);
                    }
                    Feed::Bad(reason) => {
                        self.next_seq += 1;
                        self.reorder
                            .insert(Block::failed(seq, 0, RecordError::BadInput(reason)));
                    }
                    Feed::Pause => {
                        paused = true;
                        break;
                    }
                    Feed::End => self.source = None,
                }
            }
            if gone {
                self.source = None; // the supervisor is gone
            }
            if !batch.is_empty() {
                self.record_bytes = batch.bytes().div_ceil(batch.len()).max(16);
            }
            if !batch.is_empty() && !self.core.send_batch(batch) {
                self.source = None; // the supervisor is gone
            }
            if paused || self.source.is_none() {
                return paused;
            }
        }
    }
}

impl<S: RawSource> RawMap<'_, S> {
    /// The next run of results, in the source's order: consecutive records
    /// that one worker answered in one message, all of which succeeded or
    /// all of which failed. Reading runs rather than records costs one step
    /// per message, and a run of JSON lines can be written out whole
    /// ([`RawRun::lines`]). Mixing this with [`Iterator::next`] is fine.
    pub fn next_run(&mut self) -> Option<RawRun<'_>> {
        self.next_run_of(usize::MAX)
    }

    fn next_run_of(&mut self, max: usize) -> Option<RawRun<'_>> {
        loop {
            let paused = self.top_up();
            if self.reorder.ready() {
                break;
            }
            if self.source.is_none() && self.yielded == self.next_seq {
                return None;
            }
            // Bounded by the supervisor, which ends every record it holds
            // and closes the channel if it dies. A paused source is looked
            // at again after a linger.
            let got = if paused {
                match self.rx.recv_timeout(LINGER) {
                    Ok(block) => Some(block),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => None,
                }
            } else {
                self.rx.recv().ok()
            };
            match got {
                Some(block) => {
                    self.reorder.insert(block);
                }
                None => {
                    let missing = self.reorder.next_seq();
                    self.source = None;
                    if missing >= self.next_seq {
                        return None;
                    }
                    let broken = RecordError::PoolBroken("the pool stopped".into());
                    self.reorder.insert(Block::failed(missing, 0, broken));
                }
            }
        }
        let run = self.reorder.pop_run(max)?;
        self.yielded += run.range.len() as u64;
        Some(RawRun {
            block: run.block,
            range: run.range,
            offset_ns: run.offset_ns,
            lines: self.lines,
        })
    }
}

impl<S: RawSource> Iterator for RawMap<'_, S> {
    type Item = Outcome<Bytes>;

    fn next(&mut self) -> Option<Outcome<Bytes>> {
        let run = self.next_run_of(1)?;
        let lines = run.lines;
        let i = run.range.start;
        let block = run.block;
        Some(block.outcome(i, run.offset_ns, |i| {
            let mut payload = block.payload(i);
            if lines {
                payload.strip_newline();
            }
            // The caller may keep it as long as it likes: not in a slot of a
            // worker's shared memory, which it would hold.
            Ok(Bytes(payload.detached()))
        }))
    }
}

/// Consecutive results from [`RawMap::next_run`]: records that one worker
/// answered in one message, all succeeded or all failed.
pub struct RawRun<'a> {
    block: &'a Block,
    range: Range<usize>,
    offset_ns: u64,
    lines: bool,
}

impl<'a> RawRun<'a> {
    /// How many records.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether there are none (never, for a run from [`RawMap::next_run`]).
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// The first record's position in the source.
    pub fn first_seq(&self) -> u64 {
        self.block.seqs[self.range.start]
    }

    /// Whether the records failed (all of them) rather than succeeded.
    pub fn failed(&self) -> bool {
        self.block.failure(self.range.start).is_some()
    }

    /// The longest time one of the records took.
    pub fn longest(&self) -> Duration {
        self.block.longest(self.range.clone())
    }

    /// The outputs of a successful run of JSON outputs, one after the other,
    /// each ending with a newline: what a JSON-lines output file gets.
    /// `None` for failed records or bincode outputs.
    pub fn lines(&self) -> Option<&'a [u8]> {
        (self.lines && !self.failed()).then(|| self.block.outputs(self.range.clone()))
    }

    /// The records one by one; outputs borrow the message they arrived in
    /// (without their newline).
    pub fn outcomes(&self) -> impl ExactSizeIterator<Item = Outcome<&'a [u8]>> + '_ {
        let block = self.block;
        let lines = self.lines;
        block.outcomes(self.range.clone(), self.offset_ns, move |i| {
            let out = block.output(i);
            Ok(if lines {
                out.strip_suffix(b"\n").unwrap_or(out)
            } else {
                out
            })
        })
    }
}

impl std::fmt::Debug for RawRun<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawRun")
            .field("first_seq", &self.first_seq())
            .field("len", &self.len())
            .field("failed", &self.failed())
            .finish_non_exhaustive()
    }
}

impl<S> Drop for RawMap<'_, S> {
    fn drop(&mut self) {
        self.core.send(Command::EndJob(self.job));
    }
}
