//! `run --test CASES`: a plugin's test cases, and whether what it did is what a case expects. Pure:
//! the tests here call [`check`] with answers, no plugin needed.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A file of test cases.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cases {
    /// The plugin's configuration for the run (what `Plugin.spec.config` would hold); `--config`
    /// replaces it.
    #[serde(default)]
    pub config: Option<Value>,
    /// The plugin's storage when the run starts, key → JSON value (as if an earlier version
    /// wrote it). Storage carries over from case to case, in file order.
    #[serde(default)]
    pub storage: BTreeMap<String, Value>,
    /// The plugin version that wrote `storage` (what the cluster records as
    /// `status.writtenBy`): older than the plugin's, its onUpgrade runs at start.
    #[serde(default, rename = "writtenBy")]
    pub written_by: Option<String>,
    /// The cases, run in order against one running plugin.
    pub cases: Vec<Case>,
}

/// One call and what it must do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub hook: String,
    /// The hook's input. Default `{}`.
    #[serde(default = "empty_object")]
    pub payload: Value,
    #[serde(default)]
    pub expect: Expect,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// What a case expects; every part given must hold (none given: the call must succeed).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The output, equal as JSON (key order and number spelling do not matter).
    #[serde(default)]
    pub output: Option<Value>,
    /// The call fails: with this gRPC code (as `invoke` prints it, e.g. ABORTED) and a message
    /// containing this text, each if given.
    #[serde(default)]
    pub error: Option<ExpectError>,
    /// After the call, these storage keys hold these values (other keys are not compared);
    /// `null` means the key is absent.
    #[serde(default)]
    pub storage: BTreeMap<String, Value>,
    /// The events the call emitted, in order: type and, if given, payload.
    #[serde(default)]
    pub emitted: Option<Vec<ExpectEvent>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectError {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// What one call did.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The output, or the failure's gRPC code name and message.
    pub result: Result<Value, (String, String)>,
    /// The storage after the call, key → JSON value.
    pub storage: BTreeMap<String, Value>,
    /// The events emitted during the call: type (as the plugin named it) and payload.
    pub emitted: Vec<ExpectEvent>,
}

#[derive(Debug, thiserror::Error)]
pub enum CasesError {
    #[error("reading the test cases {}: {source}", .path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the test cases {} are not valid: {reason}; see `run --help` for the format", .path.display())]
    Invalid {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl Cases {
    /// The cases in `path` (YAML, or JSON, which is YAML).
    pub fn read(path: &Path) -> Result<Self, CasesError> {
        let text = std::fs::read_to_string(path).map_err(|source| CasesError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| CasesError::Invalid {
            path: path.to_path_buf(),
            reason,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let cases: Self = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if cases.cases.is_empty() {
            return Err("`cases` lists no case".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for case in &cases.cases {
            if !names.insert(case.name.as_str()) {
                return Err(format!(
                    "two cases are named {:?}; give each its own name",
                    case.name
                ));
            }
            if case.expect.output.is_some() && case.expect.error.is_some() {
                return Err(format!(
                    "case {:?} expects both an output and an error; a call has one",
                    case.name
                ));
            }
        }
        Ok(cases)
    }
}

/// Whether two JSON values are the same document: objects by key (any order), numbers by value
/// (`1`, `1.0` and `1e0` are one number), everything else as is.
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Why `observed` is not what `expect` says: one line per difference, none when it passes.
pub fn check(expect: &Expect, observed: &Observed) -> Vec<String> {
    let mut wrong = Vec::new();
    match (&observed.result, &expect.error) {
        (Ok(output), None) => {
            if let Some(want) = &expect.output
                && !same_json(want, output)
            {
                wrong.push(format!("output: expected {want}, got {output}"));
            }
        }
        (Ok(output), Some(_)) => {
            wrong.push(format!("expected the call to fail, it answered {output}"));
        }
        (Err((code, message)), None) => {
            wrong.push(format!("the call failed: {code}: {message}"));
        }
        (Err((code, message)), Some(want)) => {
            if let Some(want_code) = &want.code
                && !want_code.eq_ignore_ascii_case(code)
            {
                wrong.push(format!(
                    "error code: expected {want_code}, got {code} ({message})"
                ));
            }
            if let Some(part) = &want.message
                && !message.contains(part.as_str())
            {
                wrong.push(format!(
                    "error message: expected it to contain {part:?}, got {message:?}"
                ));
            }
        }
    }
    for (key, want) in &expect.storage {
        let got = observed.storage.get(key).unwrap_or(&Value::Null);
        if !same_json(got, want) {
            wrong.push(format!("storage {key:?}: expected {want}, got {got}"));
        }
    }
    if let Some(want) = &expect.emitted {
        let matches = want.len() == observed.emitted.len()
            && want.iter().zip(&observed.emitted).all(|(w, o)| {
                w.event_type == o.event_type
                    && w.payload
                        .as_ref()
                        .is_none_or(|p| o.payload.as_ref().is_some_and(|o| same_json(p, o)))
            });
        if !matches {
            wrong.push(format!(
                "emitted: expected {}, got {}",
                serde_json::to_string(want).unwrap_or_default(),
                serde_json::to_string(&observed.emitted).unwrap_or_default()
            ));
        }
    }
    wrong
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn observed(result: Result<Value, (&str, &str)>) -> Observed {
        Observed {
            result: result.map_err(|(c, m)| (c.to_string(), m.to_string())),
            storage: BTreeMap::from([("count".to_string(), json!(2))]),
            emitted: vec![ExpectEvent {
                event_type: "counted".into(),
                payload: Some(json!({"n": 2})),
            }],
        }
    }

    fn expect(yaml: &str) -> Expect {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_case_passes_when_every_part_it_names_holds() {
        let e = expect(
            "output: {greeting: hi, n: 1.0}\nstorage: {count: 2, gone: null}\nemitted: [{type: counted}]",
        );
        assert_eq!(
            check(&e, &observed(Ok(json!({"n": 1, "greeting": "hi"})))),
            Vec::<String>::new(),
            "1 and 1.0 are one number"
        );
        assert!(check(&Expect::default(), &observed(Ok(json!(null)))).is_empty());
    }

    #[test]
    fn each_difference_is_named() {
        let e = expect("output: {greeting: hi}\nstorage: {count: 3}\nemitted: []");
        let wrong = check(&e, &observed(Ok(json!({"greeting": "hello"}))));
        assert_eq!(wrong.len(), 3, "{wrong:?}");
        assert!(wrong[0].starts_with("output: expected"), "{wrong:?}");
        assert!(
            wrong[1].starts_with("storage \"count\": expected 3, got 2"),
            "{wrong:?}"
        );
        assert!(wrong[2].starts_with("emitted: expected []"), "{wrong:?}");
    }

    #[test]
    fn an_expected_error_matches_by_code_and_message_part() {
        let e = expect("error: {code: aborted, message: name is required}");
        let failed = observed(Err(("ABORTED", "the plugin failed: name is required")));
        assert!(check(&e, &failed).is_empty());
        let other = observed(Err(("DEADLINE_EXCEEDED", "took too long")));
        assert_eq!(check(&e, &other).len(), 2);
        assert_eq!(
            check(&e, &observed(Ok(json!(1)))),
            ["expected the call to fail, it answered 1"]
        );
        assert_eq!(
            check(&Expect::default(), &failed),
            ["the call failed: ABORTED: the plugin failed: name is required"]
        );
    }

    #[test]
    fn a_cases_file_is_checked_for_what_would_make_it_meaningless() {
        assert!(Cases::parse("cases: []").unwrap_err().contains("no case"));
        let twice = "cases:\n- {name: a, hook: transform}\n- {name: a, hook: transform}";
        assert!(Cases::parse(twice).unwrap_err().contains("two cases"));
        let both = "cases:\n- {name: a, hook: transform, expect: {output: 1, error: {}}}";
        assert!(Cases::parse(both).unwrap_err().contains("both"));
        let typo = "cases:\n- {name: a, hook: transform, expect: {outptu: 1}}";
        assert!(Cases::parse(typo).unwrap_err().contains("outptu"));
        let ok = Cases::parse("storage: {seen: 3}\ncases:\n- {name: a, hook: transform}").unwrap();
        assert_eq!(ok.cases[0].payload, json!({}));
        assert_eq!(ok.storage["seen"], json!(3));
    }
}
