//! In-memory benchmark of the library API (scenario c of `scripts/bench.sh`):
//!
//!     cargo run --release -p procpool --example inmem -- --records 1000000 --workers 2 [--chunksize N] --worker-bin target/release/worker --records 1000000 --workers 2 [--chunksize N] --worker-bin PATH
//!
//! Builds N scientist records in memory (the same arithmetic as
//! scripts/gen_data.py), starts the pool and warms it up, then times only
//! `pool.map(records)` collected into a Vec, and prints one JSON line:
//! {"records":N,"seconds":S,"records_per_s":R}.

use std::time::Instant;

use procpool::PoolBuilder;
use procpool_tasks::{Age, Scientist};

const FIRST: &[&str] = &[
    "Ada",
    "Emmy",
    "Marie",
    "Tu",
    "Vera",
    "Sally",
    "Rosalind",
    "Lise",
    "Chien-Shiung",
    "Dorothy",
    "Barbara",
    "Grace",
    "Katherine",
    "Hedy",
    "Mary",
    "Jocelyn",
    "Gertrude",
    "Rita",
    "Henrietta",
    "Cecilia",
    "Sofia",
    "Maryam",
    "Donna",
    "Frances",
    "Alan",
    "Albert",
    "Niels",
    "Enrico",
    "Srinivasa",
    "Isaac",
    "Carl",
    "Leonhard",
    "Kurt",
    "Paul",
    "Richard",
    "Werner",
    "Erwin",
    "Max",
    "Satyendra",
    "Hideki",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Noether",
    "Curie",
    "Youyou",
    "Rubin",
    "Ride",
    "Franklin",
    "Meitner",
    "Wu",
    "Hodgkin",
    "McClintock",
    "Hopper",
    "Johnson",
    "Lamarr",
    "Somerville",
    "Bell Burnell",
    "Elion",
    "Levi-Montalcini",
    "Leavitt",
    "Payne",
    "Kovalevskaya",
    "Mirzakhani",
    "Strickland",
    "Arnold",
    "Turing",
    "Einstein",
    "Bohr",
    "Fermi",
    "Ramanujan",
    "Newton",
    "Gauss",
    "Euler",
    "Gödel",
    "Dirac",
    "Feynman",
    "Heisenberg",
    "Schrödinger",
    "Planck",
    "Bose",
    "Yukawa",
    "Yonath",
];
const FIELDS: &[&str] = &[
    "math",
    "physics",
    "chemistry",
    "astronomy",
    "biology",
    "computing",
    "medicine",
];

fn scientist(i: usize) -> Scientist {
    let (nf, nl, nd) = (FIRST.len(), LAST.len(), FIELDS.len());
    Scientist {
        name: format!("{} {} {}", FIRST[i % nf], LAST[(i * 7 + i / nf) % nl], i),
        field: FIELDS[(i * 3) % nd].to_string(),
        born: 1800 + ((i * 37) % 210) as i32,
        nobel: i.is_multiple_of(5),
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
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
    let pool = builder.build(Age {
        year: 2024,
        work_ms: 0,
    })?;
    // Warm-up: every worker has handled records before the clock runs.
    let warm: Vec<_> = pool.map((0..workers * 64).map(scientist)).collect();
    assert!(warm.iter().all(|r| r.is_ok()));

    let t0 = Instant::now();
    let out: Vec<_> = pool.map(inputs).collect();
    let secs = t0.elapsed().as_secs_f64();
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
