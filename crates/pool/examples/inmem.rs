//! In-memory benchmark of the library API (scenario c of `scripts/bench.sh`):
//!
//!     cargo run --release -p procpool --example inmem -- --records 1000000 --workers 2 [--chunksize N] --worker-bin target/release/worker
//!
//! Builds N scientist records in memory (the same arithmetic as
//! scripts/gen_data.py), starts the pool and warms it up, then times only
//! `pool.map(records)` collected into a Vec, and prints one JSON line:
//! {"records":N,"seconds":S,"records_per_s":R}. With `--cpu`, also the CPU time
//! of the map per thread and per worker, on stderr.

use std::time::Instant;

use procpool::PoolBuilder;
use procpool_tasks::{Age, Scientist};

#[path = "common/scientists.rs"]
mod scientists;
use scientists::scientist;

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// CPU seconds (user + system) of each thread of this process and of each worker.
fn cpu_times(workers: &[u32]) -> Vec<(String, f64)> {
    let ticks = 100.0; // USER_HZ on Linux
    let parse = |stat: &str| -> Option<f64> {
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks)
    };
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for task in dir.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            if let Some(t) = parse(&stat) {
                let name = format!("{} ({})", comm.trim(), task.file_name().to_string_lossy());
                out.push((name, t));
            }
        }
    }
    for pid in workers {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if let Some(t) = parse(&stat) {
            out.push((format!("worker {pid}"), t));
        }
    }
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let records: usize = arg(&args, "--records").unwrap_or(1_000_000);
    let workers: usize = arg(&args, "--workers").unwrap_or(2);
    let chunksize: Option<usize> = arg(&args, "--chunksize");
    let worker_bin: String = arg(&args, "--worker-bin").ok_or("--worker-bin PATH is required")?;

    let inputs: Vec<Scientist> = (0..records).map(scientist).collect();
    let mut builder = PoolBuilder::new().workers(workers).worker_bin(worker_bin);
    if let Some(c) = chunksize {
        builder = builder.chunk_size(c);
    }
    if let Some(n) = arg(&args, "--in-flight") {
        builder = builder.in_flight(n);
    }
    let pool = builder.build(Age {
        year: 2024,
        work_ms: 0,
    })?;
    // Warm-up: every worker has handled records before the clock runs.
    let warm: Vec<_> = pool.map((0..workers * 64).map(scientist)).collect();
    assert!(warm.iter().all(|r| r.is_ok()));

    let cpu_before = cpu_times(pool.pids());
    let t0 = Instant::now();
    let out: Vec<_> = pool.map(inputs).collect();
    let secs = t0.elapsed().as_secs_f64();
    if args.iter().any(|a| a == "--cpu") {
        // Where the CPU time of the map went, per thread of this process and per worker.
        let after = cpu_times(pool.pids());
        for (name, t) in &after {
            let was = cpu_before
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0.0, |b| b.1);
            if t - was > 0.005 {
                eprintln!("cpu {name:<28} {:.3} s", t - was);
            }
        }
    }
    let ok = out.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, records, "some records failed");
    assert_eq!(
        out.first().map(|r| r.as_ref().map(|o| o.age).ok()),
        if records > 0 { Some(Some(224)) } else { None }
    );
    drop(out);
    pool.shutdown();
    println!(
        "{{\"records\":{records},\"seconds\":{secs},\"records_per_s\":{}}}",
        records as f64 / secs
    );
    Ok(())
}
