//! The scientists demo: `{name, field, born, nobel}` -> `{name, age}`.

use std::time::Duration;

use procpool_protocol::{Task, TaskError, TaskInfo};
use serde::{Deserialize, Deserializer, Serialize};

/// One row of `data/scientists.csv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scientist {
    /// Full name.
    pub name: String,
    /// Field of work.
    pub field: String,
    /// Year of birth.
    pub born: i32,
    /// Whether they won a Nobel prize (`yes`/`no` or `true`/`false` in text input).
    #[serde(deserialize_with = "yes_no")]
    pub nobel: bool,
}

/// Accept `yes`/`no` as well as booleans in text formats (CSV, JSON); binary
/// formats carry a plain `bool`. A visitor rather than an untagged enum: the
/// enum would build (and format) an error for every word before trying it.
fn yes_no<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct YesNo;

    impl serde::de::Visitor<'_> for YesNo {
        type Value = bool;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("yes, no, true or false")
        }

        fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<bool, E> {
            Ok(b)
        }

        fn visit_str<E: serde::de::Error>(self, w: &str) -> Result<bool, E> {
            let w = w.trim();
            if ["yes", "y", "true", "1"]
                .iter()
                .any(|t| w.eq_ignore_ascii_case(t))
            {
                Ok(true)
            } else if ["no", "n", "false", "0", ""]
                .iter()
                .any(|t| w.eq_ignore_ascii_case(t))
            {
                Ok(false)
            } else {
                Err(E::custom(format!("nobel: expected yes or no, found `{w}`")))
            }
        }
    }

    if d.is_human_readable() {
        d.deserialize_any(YesNo)
    } else {
        bool::deserialize(d)
    }
}

/// The output of [`Age`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgeOut {
    /// The scientist's name.
    pub name: String,
    /// `year - born`.
    pub age: i32,
}

/// Age of a scientist in `year`, after sleeping `work_ms` to stand for heavy work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Age {
    /// The year ages are computed for.
    pub year: i32,
    /// Simulated work per record, in milliseconds.
    pub work_ms: u64,
}

impl Task for Age {
    const NAME: &'static str = "age";
    type Input = Scientist;
    type Output = AgeOut;

    fn run(&self, s: Scientist) -> Result<AgeOut, TaskError> {
        if self.work_ms > 0 {
            std::thread::sleep(Duration::from_millis(self.work_ms));
        }
        let age = self
            .year
            .checked_sub(s.born)
            .ok_or_else(|| TaskError::from(format!("age of {} overflows", s.name)))?;
        Ok(AgeOut { name: s.name, age })
    }

    fn label(input: &Scientist) -> Option<String> {
        Some(input.name.clone())
    }

    fn info() -> TaskInfo {
        TaskInfo {
            name: Self::NAME.into(),
            description: "a scientist's age in --year, after --work-ms of simulated work".into(),
            input_fields: ["name", "field", "born", "nobel"]
                .map(String::from)
                .to_vec(),
            output_fields: ["name", "age"].map(String::from).to_vec(),
            ..TaskInfo::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_is_year_minus_born() {
        let s: Scientist = serde_json::from_str(
            r#"{"name":"Ada Lovelace","field":"math","born":1815,"nobel":"no"}"#,
        )
        .unwrap();
        let out = Age {
            year: 2024,
            work_ms: 0,
        }
        .run(s)
        .unwrap();
        assert_eq!(
            out,
            AgeOut {
                name: "Ada Lovelace".into(),
                age: 209
            }
        );
    }

    #[test]
    fn nobel_accepts_words_and_booleans_in_text_and_plain_bool_in_bincode() {
        let yes: Scientist =
            serde_json::from_str(r#"{"name":"M","field":"p","born":1,"nobel":"Yes"}"#).unwrap();
        let t: Scientist =
            serde_json::from_str(r#"{"name":"M","field":"p","born":1,"nobel":true}"#).unwrap();
        assert!(yes.nobel && t.nobel);
        assert!(serde_json::from_str::<Scientist>(
            r#"{"name":"M","field":"p","born":1,"nobel":"maybe"}"#
        )
        .is_err());
        let bytes = procpool_protocol::encode_value(&yes).unwrap();
        assert_eq!(
            procpool_protocol::decode_value::<Scientist>(&bytes).unwrap(),
            yes
        );
    }
}
