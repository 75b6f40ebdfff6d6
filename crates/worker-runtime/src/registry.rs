//! The tasks a worker binary offers, looked up by name, and the decoding of
//! records into each task's typed input.
//!
//! A record arrives as bytes in the run's [`Encoding`]: bincode (the library
//! path), the text of one JSON value, or one CSV record read by the header
//! the coordinator sent once. A record that does not decode fails as
//! `BadInput` with a reason (its place in the input is known to the
//! coordinator); the output is encoded back as bincode, or as JSON text for
//! text inputs.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use procpool_protocol::{
    decode_value, encode_into, Encoding, FailureKind, ParamsEncoding, Task, TaskFailure, TaskInfo,
    TaskSpec, TaskTypes,
};
use serde::de::DeserializeOwned;

/// A configured task, ready to run encoded records.
pub trait Runner: Send + Sync {
    /// Decode one payload, hand its label to `started` (if given) before the
    /// task runs, run the task with panics caught, and append the encoded
    /// output to `out` (left as it was on a failure). A JSON output (a run of
    /// JSON or CSV records) is one line: it ends with a newline.
    fn run_record(
        &self,
        payload: &[u8],
        out: &mut Vec<u8>,
        started: Option<&mut dyn FnMut(Option<String>)>,
    ) -> Result<(), TaskFailure>;
}

/// How payloads become inputs and outputs become bytes.
enum Codec {
    Bincode,
    Json,
    Csv { header: csv::ByteRecord },
}

struct TypedRunner<T: Task> {
    task: T,
    codec: Codec,
}

fn bad_input(message: String) -> TaskFailure {
    TaskFailure {
        kind: FailureKind::BadInput,
        message,
    }
}

impl<T: Task> TypedRunner<T> {
    fn decode(&self, payload: &[u8]) -> Result<T::Input, String> {
        match &self.codec {
            Codec::Bincode => decode_value(payload)
                .map_err(|e| format!("input does not decode as {} input: {e}", T::NAME)),
            Codec::Json => decode_json(payload),
            Codec::Csv { header } => decode_csv(payload, header),
        }
    }

    fn encode(&self, output: &T::Output, out: &mut Vec<u8>) -> Result<(), String> {
        let start = out.len();
        let done = match self.codec {
            Codec::Bincode => encode_into(output, out).map_err(|e| e.to_string()),
            // One line each: compact JSON has no raw newline in it.
            Codec::Json | Codec::Csv { .. } => serde_json::to_writer(&mut *out, output)
                .map(|()| out.push(b'\n'))
                .map_err(|e| e.to_string()),
        };
        if done.is_err() {
            out.truncate(start);
        }
        done
    }
}

impl<T: Task> Runner for TypedRunner<T> {
    fn run_record(
        &self,
        payload: &[u8],
        out: &mut Vec<u8>,
        started: Option<&mut dyn FnMut(Option<String>)>,
    ) -> Result<(), TaskFailure> {
        let input = self.decode(payload).map_err(bad_input)?;
        if let Some(started) = started {
            started(T::label(&input));
        }
        match catch_unwind(AssertUnwindSafe(|| self.task.run(input))) {
            Ok(Ok(output)) => self.encode(&output, out).map_err(|e| TaskFailure {
                kind: FailureKind::Error,
                message: format!("output does not encode: {e}"),
            }),
            Ok(Err(e)) => Err(TaskFailure {
                kind: FailureKind::Error,
                message: e.0,
            }),
            Err(panic) => Err(TaskFailure {
                kind: FailureKind::Panic,
                message: panic_message(panic.as_ref()),
            }),
        }
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

fn invalid_utf8(err: &std::str::Utf8Error) -> String {
    format!(
        "invalid UTF-8 (at byte {} of the record)",
        err.valid_up_to()
    )
}

/// One JSON value, with serde_json's message made relative to the record.
fn decode_json<I: DeserializeOwned>(payload: &[u8]) -> Result<I, String> {
    let text = std::str::from_utf8(payload).map_err(|e| invalid_utf8(&e))?;
    serde_json::from_str(text).map_err(|e| json_reason(&e))
}

/// serde_json's message, with its position made relative to the record: the
/// line is always 1, so only the column is kept.
fn json_reason(err: &serde_json::Error) -> String {
    let message = err.to_string();
    let message = match message.rfind(" at line ") {
        Some(at) if err.line() != 0 => format!("{} at column {}", &message[..at], err.column()),
        _ => message,
    };
    match err.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            format!("invalid JSON: {message}")
        }
        serde_json::error::Category::Data | serde_json::error::Category::Io => message,
    }
}

/// Split one CSV record into fields trimmed of ASCII whitespace (like
/// `csv::Trim::All`), RFC 4180 quoting with `""` escapes.
pub(crate) fn csv_fields(payload: &[u8]) -> Result<csv::ByteRecord, String> {
    std::str::from_utf8(payload).map_err(|e| invalid_utf8(&e))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_reader(payload);
    let mut raw = csv::ByteRecord::new();
    match reader.read_byte_record(&mut raw) {
        Ok(_) => {}
        Err(err) => return Err(format!("malformed CSV: {err}")),
    }
    let mut rest = csv::ByteRecord::new();
    if matches!(reader.read_byte_record(&mut rest), Ok(true) | Err(_)) {
        return Err("malformed CSV: cannot find the end of the record".to_owned());
    }
    let mut record = csv::ByteRecord::new();
    for field in &raw {
        record.push_field(field.trim_ascii());
    }
    Ok(record)
}

fn decode_csv<I: DeserializeOwned>(payload: &[u8], header: &csv::ByteRecord) -> Result<I, String> {
    let record = csv_fields(payload)?;
    if record.len() != header.len() {
        return Err(format!(
            "malformed CSV: wrong number of fields: expected {} (as in the header), found {}",
            header.len(),
            record.len()
        ));
    }
    record.deserialize(Some(header)).map_err(|err| {
        let csv::ErrorKind::Deserialize { err, .. } = err.kind() else {
            return err.to_string();
        };
        let field = err.field().and_then(|i| usize::try_from(i).ok());
        let name = field.and_then(|i| header.get(i));
        let value = field.and_then(|i| record.get(i)).filter(|v| !v.is_empty());
        match (name, value, err.kind()) {
            (
                Some(name),
                Some(value),
                csv::DeserializeErrorKind::ParseInt(_)
                | csv::DeserializeErrorKind::ParseFloat(_)
                | csv::DeserializeErrorKind::ParseBool(_),
            ) => format!(
                "field `{}`: {} (value `{}`)",
                String::from_utf8_lossy(name),
                err.kind(),
                String::from_utf8_lossy(value)
            ),
            (Some(name), _, kind) => format!("field `{}`: {kind}", String::from_utf8_lossy(name)),
            (None, _, kind) => kind.to_string(),
        }
    })
}

/// The task value from its parameters. A task without fields (a unit
/// struct, which JSON writes as `null`) also decodes from any JSON object,
/// whose keys it ignores as a struct ignores keys it has no field for.
fn decode_params<T: Task>(params: &[u8], encoding: ParamsEncoding) -> Result<T, String> {
    let fail =
        |e: &dyn std::fmt::Display| format!("parameters of task `{}` do not decode: {e}", T::NAME);
    match encoding {
        ParamsEncoding::Bincode => decode_value(params).map_err(|e| fail(&e)),
        ParamsEncoding::Json => serde_json::from_slice::<T>(params).or_else(|e| {
            let object =
                serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(params)
                    .is_ok();
            match object.then(|| serde_json::from_slice::<T>(b"null")) {
                Some(Ok(task)) => Ok(task),
                _ => Err(fail(&e)),
            }
        }),
    }
}

type Factory = fn(&TaskSpec) -> Result<Box<dyn Runner>, String>;

fn make_runner<T: Task>(spec: &TaskSpec) -> Result<Box<dyn Runner>, String> {
    let mut task: T = decode_params(&spec.params, spec.params_encoding)?;
    // Per-worker set-up; a panic in it is a failed start-up, not a dead worker.
    match catch_unwind(AssertUnwindSafe(|| task.init())) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("task `{}` failed to initialise: {e}", T::NAME)),
        Err(panic) => {
            return Err(format!(
                "task `{}` panicked while initialising: {}",
                T::NAME,
                panic_message(panic.as_ref())
            ))
        }
    }
    let codec = match &spec.records {
        Encoding::Bincode => Codec::Bincode,
        Encoding::Json => Codec::Json,
        Encoding::Csv { header } => Codec::Csv {
            header: csv_fields(header).map_err(|e| format!("the CSV header: {e}"))?,
        },
    };
    Ok(Box::new(TypedRunner { task, codec }))
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

    /// Build a runner for the task `spec` names, from its parameters and encodings.
    pub fn runner(&self, spec: &TaskSpec) -> Result<Box<dyn Runner>, String> {
        let name = spec.name.as_str();
        match self.tasks.get(name) {
            Some((_, factory)) => factory(spec),
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
    use procpool_protocol::encode_value;
    use procpool_protocol::TaskError;

    /// How one record ended.
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Ok(Vec<u8>),
        Failed(TaskFailure),
    }
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

    #[derive(Serialize, Deserialize)]
    struct Greet;

    #[derive(Serialize, Deserialize)]
    struct Person {
        name: String,
        born: i32,
    }

    #[derive(Serialize, Deserialize)]
    struct Hi {
        hello: String,
        born: i32,
    }

    impl Task for Greet {
        const NAME: &'static str = "greet";
        type Input = Person;
        type Output = Hi;
        fn run(&self, p: Person) -> Result<Hi, TaskError> {
            Ok(Hi {
                hello: p.name,
                born: p.born,
            })
        }
        fn label(p: &Person) -> Option<String> {
            Some(p.name.clone())
        }
    }

    /// A record's outcome, as the worker reports it.
    trait RunOne {
        fn run_one(
            &self,
            payload: &[u8],
            started: Option<&mut dyn FnMut(Option<String>)>,
        ) -> Outcome;
    }

    impl RunOne for Box<dyn Runner> {
        fn run_one(
            &self,
            payload: &[u8],
            started: Option<&mut dyn FnMut(Option<String>)>,
        ) -> Outcome {
            let mut out = vec![0xAA]; // appended to, not replaced
            match self.run_record(payload, &mut out, started) {
                Ok(()) => {
                    assert_eq!(out[0], 0xAA);
                    Outcome::Ok(out[1..].to_vec())
                }
                Err(f) => {
                    assert_eq!(out, [0xAA], "a failure left output behind");
                    Outcome::Failed(f)
                }
            }
        }
    }

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.register::<Div>().register::<Greet>();
        r
    }

    fn spec(name: &str, params: &[u8], pe: ParamsEncoding, records: Encoding) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            params: params.to_vec(),
            params_encoding: pe,
            records,
            threads: 1,
        }
    }

    fn runner(by: i64) -> Box<dyn Runner> {
        let params = encode_value(&Div { by }).unwrap();
        registry()
            .runner(&spec(
                "div",
                &params,
                ParamsEncoding::Bincode,
                Encoding::Bincode,
            ))
            .unwrap()
    }

    fn failure(o: Outcome) -> (FailureKind, String) {
        match o {
            Outcome::Failed(f) => (f.kind, f.message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn runs_errors_and_panics_become_outcomes() {
        std::panic::set_hook(Box::new(|_| {}));
        let ok = runner(2).run_one(&encode_value(&10i64).unwrap(), None);
        assert_eq!(ok, Outcome::Ok(encode_value(&5i64).unwrap()));
        let (kind, message) = failure(runner(2).run_one(&encode_value(&-1i64).unwrap(), None));
        assert_eq!((kind, message.as_str()), (FailureKind::Error, "negative"));
        let (kind, message) = failure(runner(0).run_one(&encode_value(&1i64).unwrap(), None));
        assert_eq!(kind, FailureKind::Panic);
        assert!(message.contains("divide by zero"), "{message}");
        assert_eq!(
            failure(runner(1).run_one(&[0xff, 0xff], None)).0,
            FailureKind::BadInput
        );
    }

    #[test]
    fn json_records_decode_and_encode_as_json() {
        let r = registry()
            .runner(&spec(
                "div",
                br#"{"by": 3}"#,
                ParamsEncoding::Json,
                Encoding::Json,
            ))
            .unwrap();
        assert_eq!(r.run_one(b"12", None), Outcome::Ok(b"4\n".to_vec()));
        let (kind, message) = failure(r.run_one(b"\"x\"", None));
        assert_eq!(kind, FailureKind::BadInput);
        assert!(message.starts_with("invalid type: string"), "{message}");
        assert!(message.ends_with("at column 3"), "{message}");
        let (_, message) = failure(r.run_one(b"12 13", None));
        assert!(message.contains("trailing characters"), "{message}");
        let (_, message) = failure(r.run_one(b"\xff", None));
        assert_eq!(message, "invalid UTF-8 (at byte 0 of the record)");

        let g = registry()
            .runner(&spec("greet", b"{}", ParamsEncoding::Json, Encoding::Json))
            .unwrap();
        let mut label = None;
        let out = g.run_one(
            br#"{"born":1815,"name":"Ada"}"#,
            Some(&mut |l: Option<String>| label = l),
        );
        assert_eq!(
            out,
            Outcome::Ok(b"{\"hello\":\"Ada\",\"born\":1815}\n".to_vec())
        );
        assert_eq!(label.as_deref(), Some("Ada"));
        let (_, message) = failure(g.run_one(br#"{"name":"Ada"}"#, None));
        assert_eq!(message, "missing field `born` at column 14");
    }

    #[test]
    fn csv_records_decode_by_the_header() {
        let g = registry()
            .runner(&spec(
                "greet",
                b"{}",
                ParamsEncoding::Json,
                Encoding::Csv {
                    header: b" born , name".to_vec(),
                },
            ))
            .unwrap();
        assert_eq!(
            g.run_one(b"1815,\"Ada, \"\"the\"\" first\"", None),
            Outcome::Ok(br#"{"hello":"Ada, \"the\" first","born":1815}"#.iter().chain(b"\n").copied().collect())
        );
        let (kind, message) = failure(g.run_one(b"abc,Ada", None));
        assert_eq!(kind, FailureKind::BadInput);
        assert!(message.starts_with("field `born`: "), "{message}");
        assert!(message.contains("(value `abc`)"), "{message}");
        let (_, message) = failure(g.run_one(b"1815", None));
        assert_eq!(
            message,
            "malformed CSV: wrong number of fields: expected 2 (as in the header), found 1"
        );
        let (_, message) = failure(g.run_one(b"18\xC3,x", None));
        assert!(message.starts_with("invalid UTF-8"), "{message}");
    }

    #[test]
    fn unknown_task_and_bad_parameters_are_errors() {
        let r = registry();
        let err = r
            .runner(&spec(
                "nope",
                &[],
                ParamsEncoding::Bincode,
                Encoding::Bincode,
            ))
            .err()
            .unwrap();
        assert!(
            err.contains("does not offer task `nope`") && err.contains("div"),
            "{err}"
        );
        assert!(r
            .runner(&spec(
                "div",
                &[0xff],
                ParamsEncoding::Bincode,
                Encoding::Bincode
            ))
            .is_err());
        let err = r
            .runner(&spec("div", b"{}", ParamsEncoding::Json, Encoding::Json))
            .err()
            .unwrap();
        assert!(err.contains("missing field `by`"), "{err}");
        assert_eq!(r.infos()[0].name, "div");
    }
}
