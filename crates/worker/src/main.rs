//! The `worker` binary: the built-in task catalogue behind procpool's serve loop.
//! A coordinator starts copies of it; run by hand it explains that and exits 2.

fn main() -> std::process::ExitCode {
    // This worker, and no other, obeys PROCPOOL_WORKER_FAULT: for the tests
    // and demonstrations of a coordinator's failure handling.
    procpool_worker::fault::obey_fault_injection_env();
    procpool_worker::main_with(procpool_worker_bin::registry())
}
