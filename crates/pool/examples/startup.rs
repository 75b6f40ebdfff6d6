//! Pool start-up (scenario d of `scripts/bench.sh`): the time from
//! `PoolBuilder::build` until each of K workers has handled one record, for
//! K = 1, 2, 4, 8, 16; the median of `--runs` (default 11) per K.
//!
//!     cargo run --release -p procpool --example startup -- --worker-bin target/release/worker
//!
//! Prints one JSON line per K: {"workers":K,"median_ms":M,"runs":[...]}.

use std::time::{Duration, Instant};

use procpool::PoolBuilder;
use procpool_tasks::{Fault, FaultIn};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As the coordinator does: rendezvous sockets in memory (unless $TMPDIR is set).
    procpool::rendezvous_in_memory();
    let args: Vec<String> = std::env::args().collect();
    let bin = arg(&args, "--worker-bin").unwrap_or_else(|| "target/release/worker".into());
    let runs: usize = arg(&args, "--runs")
        .and_then(|r| r.parse().ok())
        .unwrap_or(11);
    for workers in [1usize, 2, 4, 8, 16] {
        let mut times: Vec<Duration> = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t0 = Instant::now();
            let pool = PoolBuilder::new()
                .workers(workers)
                .worker_bin(&bin)
                .chunk_size(1)
                .in_flight(1)
                .build(Fault)?;
            // One record each: with one batch of one record in flight per
            // worker, the K records go to the K workers.
            let inputs = (0..workers as u64).map(|n| FaultIn {
                n,
                fault: String::new(),
            });
            let pids: std::collections::BTreeSet<u32> = pool
                .map_detailed(inputs)
                .map(|d| d.result.map(|_| d.pid.unwrap_or(0)))
                .collect::<Result<_, _>>()?;
            times.push(t0.elapsed());
            assert_eq!(pids.len(), workers, "a worker handled two records");
            pool.shutdown();
        }
        times.sort();
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        println!(
            "{{\"workers\":{workers},\"median_ms\":{:.2},\"runs\":[{}]}}",
            ms(&times[times.len() / 2]),
            times
                .iter()
                .map(|t| format!("{:.2}", ms(t)))
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    Ok(())
}
