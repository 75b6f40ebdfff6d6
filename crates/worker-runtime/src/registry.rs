//! The tasks a worker binary offers, looked up by name.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use procpool_protocol::{
    decode_value, encode_value, FailureKind, Outcome, Task, TaskFailure, TaskInfo, TaskTypes,
};

/// A configured task, ready to run encoded records.
pub trait Runner: Send + Sync {
    /// Decode one payload, run the task on it with panics caught, and encode the result.
    fn run_encoded(&self, payload: &[u8]) -> Outcome;
    /// A short label of the record for log lines, if the task defines one.
    fn label(&self, payload: &[u8]) -> Option<String>;
}

struct TypedRunner<T: Task>(T);

impl<T: Task> Runner for TypedRunner<T> {
    fn run_encoded(&self, payload: &[u8]) -> Outcome {
        let input: T::Input = match decode_value(payload) {
            Ok(input) => input,
            Err(e) => {
                return Outcome::Failed(TaskFailure {
                    kind: FailureKind::BadInput,
                    message: format!("input does not decode as {} input: {e}", T::NAME),
                })
            }
        };
        match catch_unwind(AssertUnwindSafe(|| self.0.run(input))) {
            Ok(Ok(output)) => match encode_value(&output) {
                Ok(bytes) => Outcome::Ok(bytes),
                Err(e) => Outcome::Failed(TaskFailure {
                    kind: FailureKind::Error,
                    message: format!("output does not encode: {e}"),
                }),
            },
            Ok(Err(e)) => Outcome::Failed(TaskFailure {
                kind: FailureKind::Error,
                message: e.0,
            }),
            Err(panic) => Outcome::Failed(TaskFailure {
                kind: FailureKind::Panic,
                message: panic_message(panic.as_ref()),
            }),
        }
    }

    fn label(&self, payload: &[u8]) -> Option<String> {
        decode_value::<T::Input>(payload)
            .ok()
            .and_then(|input| T::label(&input))
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

type Factory = fn(&[u8]) -> Result<Box<dyn Runner>, String>;

fn make_runner<T: Task>(config: &[u8]) -> Result<Box<dyn Runner>, String> {
    let mut task: T = decode_value(config)
        .map_err(|e| format!("parameters of task `{}` do not decode: {e}", T::NAME))?;
    // Per-worker set-up; a panic in it is a failed start-up, not a dead worker.
    match catch_unwind(AssertUnwindSafe(|| task.init())) {
        Ok(Ok(())) => Ok(Box::new(TypedRunner(task))),
        Ok(Err(e)) => Err(format!("task `{}` failed to initialise: {e}", T::NAME)),
        Err(panic) => Err(format!(
            "task `{}` panicked while initialising: {}",
            T::NAME,
            panic_message(panic.as_ref())
        )),
    }
}

/// The tasks compiled into a worker binary.
#[derive(Default)]
pub struct Registry {
    tasks: BTreeMap<&'static str, (TaskInfo, Factory)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("tasks", &self.tasks.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Offer task `T` under [`Task::NAME`]. A later registration of the same name replaces it.
    pub fn register<T: Task>(&mut self) -> &mut Self {
        let info = TaskInfo {
            types: TaskTypes::of::<T>(),
            ..T::info()
        };
        self.tasks.insert(T::NAME, (info, make_runner::<T>));
        self
    }

    /// What this registry offers, sorted by name.
    pub fn infos(&self) -> Vec<TaskInfo> {
        self.tasks.values().map(|(info, _)| info.clone()).collect()
    }

    /// Whether a task of this name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.tasks.contains_key(name)
    }

    /// Build a runner for task `name` from its encoded parameters.
    pub fn runner(&self, name: &str, config: &[u8]) -> Result<Box<dyn Runner>, String> {
        match self.tasks.get(name) {
            Some((_, factory)) => factory(config),
            None => Err(format!(
                "this worker does not offer task `{name}` (it offers: {})",
                self.tasks.keys().copied().collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use procpool_protocol::TaskError;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Div {
        by: i64,
    }

    impl Task for Div {
        const NAME: &'static str = "div";
        type Input = i64;
        type Output = i64;
        fn run(&self, x: i64) -> Result<i64, TaskError> {
            if x < 0 {
                return Err("negative".into());
            }
            Ok(x / self.by) // panics when by == 0
        }
    }

    fn runner(by: i64) -> Box<dyn Runner> {
        let mut r = Registry::new();
        r.register::<Div>();
        r.runner("div", &encode_value(&Div { by }).unwrap())
            .unwrap()
    }

    #[test]
    fn runs_errors_and_panics_become_outcomes() {
        std::panic::set_hook(Box::new(|_| {}));
        let ok = runner(2).run_encoded(&encode_value(&10i64).unwrap());
        assert_eq!(ok, Outcome::Ok(encode_value(&5i64).unwrap()));
        match runner(2).run_encoded(&encode_value(&-1i64).unwrap()) {
            Outcome::Failed(f) => assert_eq!(
                (f.kind, f.message.as_str()),
                (FailureKind::Error, "negative")
            ),
            other => panic!("{other:?}"),
        }
        match runner(0).run_encoded(&encode_value(&1i64).unwrap()) {
            Outcome::Failed(f) => {
                assert_eq!(f.kind, FailureKind::Panic);
                assert!(f.message.contains("divide by zero"), "{}", f.message);
            }
            other => panic!("{other:?}"),
        }
        match runner(1).run_encoded(&[0xff, 0xff]) {
            Outcome::Failed(f) => assert_eq!(f.kind, FailureKind::BadInput),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_task_and_bad_parameters_are_errors() {
        let mut r = Registry::new();
        r.register::<Div>();
        let err = r.runner("nope", &[]).err().unwrap();
        assert!(
            err.contains("does not offer task `nope`") && err.contains("div"),
            "{err}"
        );
        assert!(r.runner("div", &[0xff]).is_err());
        assert_eq!(r.infos()[0].name, "div");
    }
}
