//! The contract between a typed task and the pool that runs it.

use serde::{de::DeserializeOwned, Serialize};

use crate::TaskInfo;

/// The error a task returns for one record. The record fails; the worker lives on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TaskError(pub String);

impl From<String> for TaskError {
    fn from(message: String) -> Self {
        TaskError(message)
    }
}

impl From<&str> for TaskError {
    fn from(message: &str) -> Self {
        TaskError(message.to_owned())
    }
}

/// A named, typed task that worker processes can run.
///
/// The task *value* carries its parameters: it is encoded once per run and
/// sent to every worker, which decodes it and calls [`Task::run`] on each
/// record. Workers run only tasks compiled into their binary and chosen by
/// [`Task::NAME`]; nothing in the data is executed.
///
/// ```
/// use procpool_protocol::{Task, TaskError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Double;
///
/// impl Task for Double {
///     const NAME: &'static str = "double";
///     type Input = u64;
///     type Output = u64;
///     fn run(&self, x: u64) -> Result<u64, TaskError> {
///         x.checked_mul(2).ok_or_else(|| "overflow".into())
///     }
/// }
/// assert_eq!(Double.run(21), Ok(42));
/// ```
pub trait Task: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The name the task is registered and requested under.
    const NAME: &'static str;
    /// One input record.
    type Input: Serialize + DeserializeOwned + Send + 'static;
    /// One output record.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Process one record. A panic here is caught and becomes a failed record.
    fn run(&self, input: Self::Input) -> Result<Self::Output, TaskError>;

    /// Set up per-worker state, once in each worker process, after the task
    /// value arrived and before the first record (Python's `initializer=`).
    ///
    /// State that cannot be serialised (a database connection, a loaded
    /// model, a handle of a C library) lives in fields marked
    /// `#[serde(skip)]` (so they start from `Default`) and is filled in here.
    /// `run` takes `&self` and may be called from several threads of one
    /// worker, so mutable state goes behind a `Mutex` or in a thread-local.
    /// An error fails the pool's start-up (`build`), naming the worker.
    fn init(&mut self) -> Result<(), TaskError> {
        Ok(())
    }

    /// A short label of a record for log lines (`Process <pid> working record <label>`).
    fn label(_input: &Self::Input) -> Option<String> {
        None
    }

    /// What `coordinator tasks` shows about this task.
    fn info() -> TaskInfo {
        TaskInfo {
            name: Self::NAME.to_owned(),
            ..TaskInfo::default()
        }
    }
}
