//! Heartbeats: the real worker binary, driven by a minimal coordinator written
//! here over ipc-channel, proves it is alive while a long record runs and
//! stops proving it when it is stopped (SIGSTOP).

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipc_channel::ipc::{IpcBytesReceiver, IpcBytesSender, IpcOneShotServer};
use procpool_protocol::{
    decode, encode, encode_value, Batch, Record, Request, WorkerMessage, ENV_HEARTBEAT_MS,
    ENV_SERVER, ENV_TOKEN,
};
use procpool_tasks::{Fault, FaultIn};

use crate::util::{send_signal, worker_bin};

/// A worker binary under this test's control; killed when dropped.
struct Worker {
    child: Child,
    tx: IpcBytesSender,
    rx: mpsc::Receiver<WorkerMessage>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Worker {
    fn start(heartbeat_ms: &str) -> Worker {
        let (server, name) = IpcOneShotServer::<(IpcBytesSender, IpcBytesReceiver)>::new().unwrap();
        let mut child = Command::new(worker_bin())
            .env(ENV_SERVER, name)
            .env(ENV_TOKEN, "t")
            .env(ENV_HEARTBEAT_MS, heartbeat_ms)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        // accept() has no timeout: run it on a thread and wait with a deadline.
        let (accepted, on_accept) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = accepted.send(server.accept().map(|(_, pair)| pair));
        });
        let Ok(Ok((tx, from_worker))) = on_accept.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the worker did not connect within 30 s");
        };
        // Every receive has a deadline: messages go through a channel.
        let (msgs, rx) = mpsc::channel();
        std::thread::spawn(move || {
            while let Ok(bytes) = from_worker.recv() {
                let Ok(m) = decode::<WorkerMessage>(&bytes) else {
                    return;
                };
                if msgs.send(m).is_err() {
                    return;
                }
            }
        });
        Worker { child, tx, rx }
    }

    fn next(&self, within: Duration) -> Option<WorkerMessage> {
        self.rx.recv_timeout(within).ok()
    }

    fn send(&self, request: &Request) {
        self.tx.send(&encode(request).unwrap()).unwrap();
    }

    /// Hello, configure the fault task, Ready (heartbeats may come between).
    fn configure(&self) {
        let first = self.next(Duration::from_secs(30));
        assert!(matches!(first, Some(WorkerMessage::Hello(_))), "{first:?}");
        self.send(&Request::Configure {
            spec: procpool_protocol::TaskSpec {
                name: "fault".into(),
                params: encode_value(&Fault).unwrap(),
                params_encoding: procpool_protocol::ParamsEncoding::Bincode,
                records: procpool_protocol::Encoding::Bincode,
                threads: 1,
            },
            flush_each: false,
            record_times: true,
        });
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            match self.next(end.saturating_duration_since(Instant::now())) {
                Some(WorkerMessage::Ready) => return,
                Some(WorkerMessage::Heartbeat) => continue,
                other => panic!("expected Ready, got {other:?}"),
            }
        }
    }

    /// Count heartbeats over `span`, failing on any other message.
    fn heartbeats_during(&self, span: Duration) -> (usize, Vec<WorkerMessage>) {
        let end = Instant::now() + span;
        let (mut beats, mut others) = (0, vec![]);
        while let Some(m) = self.next(end.saturating_duration_since(Instant::now())) {
            match m {
                WorkerMessage::Heartbeat => beats += 1,
                other => others.push(other),
            }
        }
        (beats, others)
    }
}

/// Heartbeats come while a long record runs, stop while the worker is
/// stopped (SIGSTOP), and come again once it is resumed; a second worker,
/// started with heartbeats off beside it, sends none all the while.
#[test]
fn heartbeats_during_a_long_record_none_when_stopped_or_turned_off() {
    let w = Worker::start("25");
    w.configure();
    let off = Worker::start("0");
    off.configure();
    let off_since = Instant::now();
    // Longer than both spans below (the beats, the silence) and the pause
    // between them.
    let payload = encode_value(&FaultIn {
        n: 7,
        fault: "sleep:1000".into(),
    })
    .unwrap();
    w.send(&Request::Batch(Batch {
        id: 1,
        records: vec![Record { seq: 0, payload }],
    }));
    // The record runs for 1 s on the main thread: heartbeats keep coming.
    let (beats, others) = w.heartbeats_during(Duration::from_millis(300));
    assert!(
        others.is_empty(),
        "a result before the record ended: {others:?}"
    );
    // 12 periods in 300 ms; a loaded machine may delay some of them.
    assert!(
        beats >= 5,
        "only {beats} heartbeats in 300 ms at a 25 ms period"
    );

    // A stopped process sends nothing, the heartbeat thread included.
    send_signal(w.child.id(), libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(100)); // let beats in flight arrive
    let (_, mut others) = w.heartbeats_during(Duration::from_millis(50));
    // 12 periods of silence.
    let (beats, late) = w.heartbeats_during(Duration::from_millis(300));
    send_signal(w.child.id(), libc::SIGCONT);
    assert_eq!(beats, 0, "heartbeats from a stopped worker");
    assert!(late.is_empty(), "messages from a stopped worker: {late:?}");

    // Resumed, it finishes its record (unless a loaded machine delayed the
    // SIGSTOP past its end: then its result came in flight) and beats again.
    let end = Instant::now() + Duration::from_secs(30);
    let result = loop {
        if let Some(m) = others.pop() {
            break m;
        }
        match w.next(end.saturating_duration_since(Instant::now())) {
            Some(WorkerMessage::Heartbeat) => continue,
            other => break other.expect("no result within 30 s"),
        }
    };
    match result {
        WorkerMessage::Results(r) => {
            assert_eq!(r.len(), 1);
            assert!(r.failures.is_empty(), "{r:?}");
        }
        other => panic!("expected the record's result, got {other:?}"),
    }
    assert!(
        matches!(
            w.next(Duration::from_millis(500)),
            Some(WorkerMessage::Heartbeat)
        ),
        "no heartbeat from an idle worker within 500 ms"
    );

    // Heartbeats off: nothing over at least 700 ms (already over, as a rule:
    // the record above took 1 s), longer than the default period.
    let (beats, others) =
        off.heartbeats_during(Duration::from_millis(700).saturating_sub(off_since.elapsed()));
    assert_eq!(
        (beats, others.len()),
        (0, 0),
        "from a worker with heartbeats off, over {:?}",
        off_since.elapsed()
    );
}

/// Through the pool: a record of three liveness timeouts' length still
/// succeeds on its first worker, which the kernel shows running all along.
#[test]
fn a_short_liveness_timeout_spares_a_long_record() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let pool = procpool::PoolBuilder::new()
            .workers(1)
            .worker_bin(worker_bin())
            .liveness_timeout(Duration::from_millis(400))
            .build(Fault)
            .unwrap();
        let pid = pool.pids()[0];
        let results: Vec<_> = pool
            .map([
                FaultIn {
                    n: 1,
                    fault: "sleep:1200".into(),
                },
                FaultIn {
                    n: 2,
                    fault: String::new(),
                },
            ])
            .collect();
        let stats = pool.shutdown();
        let _ = tx.send((pid, results, stats));
    });
    let (pid, results, stats) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("hung: the pool did not finish within 60 s");
    let ns: Vec<u64> = results.into_iter().map(|r| r.unwrap().n).collect();
    assert_eq!(ns, [1, 2]);
    // One worker did it all: nobody was declared silent and replaced.
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert_eq!(stats[0].pid, pid);
}
