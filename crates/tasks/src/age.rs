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
    /// The year ages are computed for (from text parameters: the current
    /// year when not given).
    #[serde(default = "current_year")]
    pub year: i32,
    /// Simulated work per record, in milliseconds (0 when not given).
    #[serde(default)]
    pub work_ms: u64,
}

/// The current year (UTC).
pub fn current_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    year_of_day((secs / 86_400) as i64)
}

/// The year of a day counted from 1970-01-01 (proleptic Gregorian calendar).
fn year_of_day(days: i64) -> i32 {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2)) as i32
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
    fn parameters_default_to_this_year_and_no_work() {
        assert_eq!(year_of_day(0), 1970);
        assert_eq!(year_of_day(19_723), 2024); // 2024-01-01
        assert_eq!(year_of_day(19_722), 2023);
        assert_eq!(year_of_day(20_453), 2025); // 2025-12-31
        let age: Age = serde_json::from_str("{}").unwrap();
        assert_eq!((age.year, age.work_ms), (current_year(), 0));
        let age: Age = serde_json::from_str(r#"{"year":1900,"work_ms":5}"#).unwrap();
        assert_eq!((age.year, age.work_ms), (1900, 5));
    }

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
