//! The worker binary: register the task, serve the coordinator.

fn main() -> std::process::ExitCode {
    let mut registry = procpool_worker::Registry::new();
    registry.register::<word_stats::WordStats>();
    procpool_worker::main_with(registry)
}
