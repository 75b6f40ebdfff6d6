//! The `coordinator` binary: a thin command line over the `procpool` library.

mod cli;
mod input;
mod output;
mod paths;
mod report;
mod resume;
mod run;
mod scale;

use std::process::ExitCode;
use std::sync::OnceLock;

use clap::Parser;
use indicatif::MultiProgress;

/// Progress bars live here; log lines are printed above them.
pub static MULTI: OnceLock<MultiProgress> = OnceLock::new();

/// Batches, messages and input blocks are a few hundred KiB each: glibc
/// would map and unmap every one of them (a page fault per 4 KiB each time,
/// a tenth of the coordinator's CPU on tiny records). Served from the heap
/// and kept there instead, they cost a few MB of peak memory.
fn keep_big_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before
    // the coordinator starts any thread, and a refused setting is harmless.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn main() -> ExitCode {
    // Started by a pool (no `worker` binary was next to the coordinator), it
    // serves the built-in tasks, as the `worker` binary offers them (without
    // its fault injection), and exits here.
    procpool::init(procpool_worker_bin::registry());
    keep_big_buffers();
    let logger = procpool::worker::build_logger("coordinator");
    let level = logger.filter();
    let multi = MULTI.get_or_init(MultiProgress::new).clone();
    if indicatif_log_bridge::LogWrapper::new(multi, logger)
        .try_init()
        .is_ok()
    {
        log::set_max_level(level);
    }
    let cli = cli::Cli::parse();
    // Workers start faster with their rendezvous sockets in memory; this
    // program makes no other temporary files that could take memory there.
    if let Some(dir) = procpool::rendezvous_in_memory() {
        log::debug!("rendezvous sockets in {} (in memory)", dir.display());
    }
    let result = match cli.command {
        Some(cli::Commands::Tasks { worker }) => run::list_tasks(&worker),
        Some(cli::Commands::Scale(args)) => scale::scale(&args),
        None => run::run(&cli.run),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("coordinator: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `coordinator | head` closing the pipe early is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
