//! The worker binary: register the task, serve the coordinator.

fn main() -> std::process::ExitCode {
    let mut registry = procpool::worker::Registry::new();
    registry.register::<word_stats::WordStats>();
    procpool::worker::main_with(registry)
}
