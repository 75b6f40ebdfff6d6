//! `procspawn::Pool` on the in-memory benchmark of `crates/pool/examples/inmem.rs`:
//! N scientist records (the same data), `age` for 2024, on W workers, in
//! batches of B records (each batch one `pool.spawn`), results collected in
//! input order. Only the map is timed, after a warm-up. Prints one JSON line:
//! {"records":N,"seconds":S,"records_per_s":R}.
//!
//!     cargo run --release -- --records 1000000 --workers 2 --batch 10000

use std::time::Instant;

use procpool_protocol::Task;
use procpool_tasks::{Age, AgeOut, Scientist};

#[path = "../../../../crates/pool/examples/common/scientists.rs"]
mod scientists;

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn run_batch(batch: Vec<Scientist>) -> Vec<Result<AgeOut, String>> {
    let task = Age {
        year: 2024,
        work_ms: 0,
    };
    batch
        .into_iter()
        .map(|s| task.run(s).map_err(|e| e.0))
        .collect()
}

fn map(pool: &procspawn::Pool, inputs: Vec<Scientist>, batch: usize) -> Vec<Result<AgeOut, String>> {
    let mut handles = Vec::new();
    let mut inputs = inputs.into_iter();
    loop {
        let chunk: Vec<Scientist> = inputs.by_ref().take(batch).collect();
        if chunk.is_empty() {
            break;
        }
        handles.push(pool.spawn(chunk, run_batch));
    }
    let mut out = Vec::new();
    for h in handles {
        out.extend(h.join().expect("a procspawn batch failed"));
    }
    out
}

fn main() {
    procspawn::init();
    let args: Vec<String> = std::env::args().collect();
    let records: usize = arg(&args, "--records").unwrap_or(1_000_000);
    let workers: usize = arg(&args, "--workers").unwrap_or(2);
    let batch: usize = arg(&args, "--batch").unwrap_or(10_000);

    let inputs: Vec<Scientist> = (0..records).map(scientists::scientist).collect();
    let pool = procspawn::Pool::new(workers).expect("start the procspawn pool");
    let warm = map(&pool, (0..workers * 64).map(scientists::scientist).collect(), 64);
    assert!(warm.iter().all(|r| r.is_ok()));

    let t0 = Instant::now();
    let out = map(&pool, inputs, batch);
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(out.iter().filter(|r| r.is_ok()).count(), records);
    if records > 0 {
        assert_eq!(out[0].as_ref().map(|o| o.age).ok(), Some(224));
    }
    drop(out);
    pool.shutdown();
    println!(
        "{{\"records\":{records},\"seconds\":{secs},\"records_per_s\":{}}}",
        records as f64 / secs
    );
}
