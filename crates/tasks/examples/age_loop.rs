//! The no-pool baseline of the benchmarks: one thread reads JSON lines of
//! scientists with serde_json, computes `age` and writes the same bytes the
//! coordinator writes (`scripts/bench.sh` checks they are identical).
//!
//! ```text
//! cargo run --release -p procpool-tasks --example age_loop -- IN.jsonl OUT.jsonl YEAR
//! ```

use std::io::{BufRead, BufReader, BufWriter, Write};

use procpool_protocol::Task;
use procpool_tasks::{Age, Scientist};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output, year] = &args[..] else {
        return Err("usage: age_loop IN.jsonl OUT.jsonl YEAR".into());
    };
    let task = Age {
        year: year.parse()?,
        work_ms: 0,
    };
    let mut reader = BufReader::with_capacity(256 << 10, std::fs::File::open(input)?);
    let mut out = BufWriter::with_capacity(256 << 10, std::fs::File::create(output)?);
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 {
        let text = line.trim_end_matches(['\n', '\r']);
        if !text.trim().is_empty() {
            let scientist: Scientist = serde_json::from_str(text)?;
            serde_json::to_writer(&mut out, &task.run(scientist)?)?;
            out.write_all(b"\n")?;
        }
        line.clear();
    }
    out.flush()?;
    Ok(())
}
