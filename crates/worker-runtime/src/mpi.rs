//! The worker side of the MPI backend (cargo feature `mpi`): this process is
//! a rank > 0 of an MPI job whose rank 0 is the coordinator.

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;
use procpool_protocol::{MPI_TAG_BYE, MPI_TAG_DATA};

use crate::{serve_over, Registry, ServeError, WorkerTransport};

/// Whether an MPI launcher (mpirun, srun, Hydra) started this process.
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

struct MpiTransport {
    world: SimpleCommunicator,
}

impl WorkerTransport for MpiTransport {
    fn recv(&mut self) -> Result<Option<Vec<u8>>, ServeError> {
        // Open MPI's blocking receive spins at full speed while it waits,
        // taking a core from the ranks that compute: probe, spin briefly,
        // then sleep between probes.
        let root = self.world.process_at_rank(0);
        let mut idle = 0u32;
        loop {
            if let Some((message, status)) = root.immediate_matched_probe_with_tag(MPI_TAG_DATA) {
                let (bytes, _) = (message, status).matched_receive_vec::<u8>();
                return Ok(Some(bytes));
            }
            idle = idle.saturating_add(1);
            if idle > 200 {
                std::thread::sleep(std::time::Duration::from_micros(50));
            } else {
                std::hint::spin_loop();
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), ServeError> {
        self.world
            .process_at_rank(0)
            .send_with_tag(bytes, MPI_TAG_DATA);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ServeError> {
        self.world
            .process_at_rank(0)
            .send_with_tag(&[] as &[u8], MPI_TAG_BYE);
        Ok(())
    }
}

/// Serve the coordinator at rank 0 until it says `Stop`, then finalise MPI.
pub fn serve_mpi(registry: Registry) -> Result<(), ServeError> {
    let Some((universe, _)) = mpi::initialize_with_threading(Threading::Single) else {
        return Err(ServeError::Ipc("MPI is already initialised".into()));
    };
    let world = universe.world();
    if world.rank() == 0 {
        return Err(ServeError::Ipc(
            "this worker is rank 0 of its MPI job; rank 0 must be the coordinator (`mpirun -n 1 coordinator --backend mpi ... : -n N worker`)".into(),
        ));
    }
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        serve_over(MpiTransport { world }, registry, String::new())
    }));
    match served {
        Ok(Ok(())) => {
            drop(universe); // MPI_Finalize
            Ok(())
        }
        // Finalising would wait for the other ranks forever: end the job instead.
        Ok(Err(e)) => {
            log::error!("{e}; aborting the MPI job");
            abort_job(1)
        }
        Err(_) => {
            log::error!("worker panicked outside a task; aborting the MPI job");
            abort_job(101)
        }
    }
}

/// `MPI_Abort` on the world communicator: the launcher ends every rank.
fn abort_job(code: i32) -> ! {
    // SAFETY: MPI is initialised; MPI_Abort takes the predefined world
    // communicator and an error code, and does not return.
    unsafe {
        mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
    }
    std::process::exit(code)
}
