//! `coordinator scale`: the same workload at several worker counts and
//! executors, as a table and a chart.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use log::info;
use plotters::prelude::*;
use procpool::{PoolBuilder, Task};
use procpool_tasks::{Age, Locked, Primes, PrimesIn};

use crate::cli::{Executor, ScaleArgs};
use crate::input::{Format, Splitter, DEMO_CSV};

/// One measured point.
#[derive(Debug, Clone)]
pub struct Point {
    pub executor: Executor,
    pub workers: usize,
    pub wall: Duration,
    pub records: usize,
}

pub fn scale(args: &ScaleArgs) -> anyhow::Result<ExitCode> {
    if args.workers.is_empty() || args.workers.contains(&0) {
        bail!("--workers needs a list of counts of at least 1, e.g. 1,2,4,8");
    }
    // Before measuring, which takes a while.
    if let Some(path) = &args.chart {
        let mut files = vec![crate::paths::RunFile::written("--chart", path)];
        if let Some(input) = &args.input {
            files.insert(0, crate::paths::RunFile::read("--input", input));
        }
        crate::paths::check_distinct(&files)?;
        crate::paths::check_writable("--chart", path)?;
    }
    let points = match args.task.as_str() {
        "primes" => sweep(args, || Primes, primes_input(args)?)?,
        "locked" => sweep(args, || Locked, primes_input(args)?)?,
        "age" => {
            let year = args.year;
            let work_ms = args.work_ms;
            let inputs = match &args.input {
                Some(p) => read_all(p)?,
                None => read_csv(DEMO_CSV.as_bytes())?,
            };
            sweep(args, move || Age { year, work_ms }, inputs)?
        }
        other => bail!("scale runs age, primes or locked, not `{other}`"),
    };
    // Written, not printed: a closed stdout is an error for main(), not a panic.
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", table(&points))?;
    out.flush()?;
    drop(out);
    if let Some(path) = &args.chart {
        chart(&points, path, &args.task)
            .with_context(|| format!("cannot write chart {}", path.display()))?;
        info!("chart written to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The whole input as typed records: `scale` measures the pool alone, so
/// records are decoded before it starts.
fn read_all<T: serde::de::DeserializeOwned>(path: &str) -> anyhow::Result<Vec<T>> {
    let format = Splitter::open(path, None, 1 << 20)?.format();
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
    match format {
        Format::Csv => read_csv(&bytes),
        Format::JsonLines => bytes
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.trim_ascii().is_empty())
            .map(|(i, line)| {
                serde_json::from_slice(line).with_context(|| format!("{path}:{}: bad input", i + 1))
            })
            .collect(),
    }
}

fn read_csv<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> anyhow::Result<Vec<T>> {
    csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(bytes)
        .deserialize()
        .collect::<Result<Vec<T>, _>>()
        .context("bad CSV input")
}

fn primes_input(args: &ScaleArgs) -> anyhow::Result<Vec<PrimesIn>> {
    match &args.input {
        Some(p) => read_all(p),
        None => Ok((0..args.records).map(|_| PrimesIn { n: args.n }).collect()),
    }
}

fn sweep<T: Task>(
    args: &ScaleArgs,
    task: impl Fn() -> T,
    inputs: Vec<T::Input>,
) -> anyhow::Result<Vec<Point>>
where
    T::Input: Clone,
{
    let mut points = Vec::new();
    for &executor in &args.executor {
        for &workers in &args.workers {
            let mut walls = Vec::with_capacity(args.repeat);
            for _ in 0..args.repeat.max(1) {
                walls.push(measure(args, executor, workers, task(), inputs.clone())?);
            }
            walls.sort();
            let wall = walls[walls.len() / 2];
            info!(
                "{executor} x{workers}: {:.3} s (median of {})",
                wall.as_secs_f64(),
                walls.len()
            );
            points.push(Point {
                executor,
                workers,
                wall,
                records: inputs.len(),
            });
        }
    }
    Ok(points)
}

/// Wall time of the map alone: from the first record sent to the last result
/// received, with the pool already started.
fn measure<T: Task>(
    args: &ScaleArgs,
    executor: Executor,
    workers: usize,
    task: T,
    inputs: Vec<T::Input>,
) -> anyhow::Result<Duration> {
    let n = inputs.len();
    let mut builder = match executor {
        Executor::Process => PoolBuilder::new().workers(workers),
        Executor::Thread => PoolBuilder::new().workers(1).threads_per_worker(workers),
    };
    if let Some(bin) = &args.worker.worker_bin {
        builder = builder.worker_bin(bin);
    }
    let pool = builder.build(task)?;
    let t0 = Instant::now();
    let failed = pool.map(inputs).filter(Result::is_err).count();
    let wall = t0.elapsed();
    pool.shutdown();
    if failed > 0 {
        bail!("{failed} of {n} records failed with {executor} x{workers}");
    }
    Ok(wall)
}

fn baseline(points: &[Point], executor: Executor) -> Option<&Point> {
    points
        .iter()
        .filter(|p| p.executor == executor)
        .min_by_key(|p| p.workers)
}

/// Speed-up against the smallest worker count of the same executor,
/// scaled to what that count itself represents.
fn speedup(points: &[Point], p: &Point) -> f64 {
    baseline(points, p.executor).map_or(1.0, |b| {
        b.wall.as_secs_f64() / p.wall.as_secs_f64() * b.workers as f64
    })
}

pub fn table(points: &[Point]) -> String {
    let mut t = String::from(
        "| executor | workers | wall (s) | records/s | speed-up | efficiency |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for p in points {
        let s = speedup(points, p);
        t.push_str(&format!(
            "| {} | {} | {:.3} | {:.0} | {:.2}x | {:.0}% |\n",
            p.executor,
            p.workers,
            p.wall.as_secs_f64(),
            p.records as f64 / p.wall.as_secs_f64(),
            s,
            100.0 * s / p.workers as f64
        ));
    }
    t
}

fn chart(points: &[Point], path: &Path, task: &str) -> anyhow::Result<()> {
    let max_workers = points.iter().map(|p| p.workers).max().unwrap_or(1) as f64;
    let max_speedup = points
        .iter()
        .map(|p| speedup(points, p))
        .fold(max_workers, f64::max);
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("procpool scaling: task `{task}`"),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..max_workers + 0.5, 0.0..max_speedup * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("workers")
        .y_desc("speed-up")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (max_workers, max_workers)],
            BLACK.mix(0.3),
        ))?
        .label("ideal")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.3)));
    for (i, executor) in [Executor::Process, Executor::Thread]
        .into_iter()
        .enumerate()
    {
        let series: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.executor == executor)
            .map(|p| (p.workers as f64, speedup(points, p)))
            .collect();
        if series.is_empty() {
            continue;
        }
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))?
            .label(executor.to_string())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(
            series
                .into_iter()
                .map(|(x, y)| Circle::new((x, y), 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
