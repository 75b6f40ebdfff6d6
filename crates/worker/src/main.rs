//! The `worker` binary: the built-in task catalogue behind procpool's serve loop.
//! A coordinator starts copies of it; run by hand it explains that and exits 2.

fn main() -> std::process::ExitCode {
    procpool_worker::main_with(procpool_worker_bin::registry())
}
