//! The `coordinator` binary: a thin command line over the `procpool` library.

mod cli;
mod input;
mod output;
mod run;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    procpool_worker::init_logging("coordinator");
    let cli = cli::Cli::parse();
    let result = match cli.command {
        Some(cli::Commands::Tasks { worker }) => run::list_tasks(&worker),
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
