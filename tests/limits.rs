//! The wire limit (64 MiB a message): a record over it fails alone as
//! `bad_input`, its neighbours succeed and no worker dies; the command line
//! refuses a `--max-record-bytes` it could not carry.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use procpool::{PoolBuilder, RecordError};
use procpool_protocol::MAX_MESSAGE_BYTES;
use procpool_tasks::{Fault, FaultIn, FaultOut};

use crate::util::{coordinator, worker_bin};

#[test]
fn a_record_over_the_wire_limit_is_its_own_bad_input() {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let pool = PoolBuilder::new()
            .workers(2)
            .worker_bin(worker_bin())
            .build(Fault)
            .unwrap();
        let inputs = (0..6u64).map(|n| FaultIn {
            n,
            // Record 3 alone is over the limit; the others are small.
            fault: if n == 3 {
                "x".repeat(MAX_MESSAGE_BYTES + 10)
            } else {
                String::new()
            },
        });
        let results: Vec<_> = pool.map(inputs).collect();
        let stats = pool.shutdown();
        let _ = tx.send((results, stats));
    });
    let (results, stats) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("hung: the pool did not finish within 120 s");
    assert_eq!(results.len(), 6);
    for (n, r) in results.into_iter().enumerate() {
        if n == 3 {
            let Err(RecordError::BadInput(why)) = r else {
                panic!("record 3: expected bad input, got {r:?}");
            };
            assert!(why.contains("limit"), "{why}");
        } else {
            assert_eq!(r.unwrap(), FaultOut { n: n as u64 }, "record {n}");
        }
    }
    // No worker died over it: the two started are the two there are.
    assert_eq!(stats.len(), 2, "{stats:?}");
}

#[test]
fn max_record_bytes_beyond_the_wire_limit_is_refused_up_front() {
    let run = coordinator([
        "--max-record-bytes",
        &(MAX_MESSAGE_BYTES as u64 * 2).to_string(),
    ])
    .run();
    run.assert_code(2);
    let e = run.the_error();
    assert!(
        e.contains("--max-record-bytes") && e.contains("64 MiB"),
        "{e}"
    );
    assert!(run.spawned_pids().is_empty());
}
