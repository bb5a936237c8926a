//! data-formatter: `transform` tidies a JSON document — every string is trimmed and its inner runs
//! of whitespace collapsed to one space, at any depth — and marks it with `formattedBy`. Run in a
//! pipeline before plugins that read the strings.

use serde_json::Value;

fn tidy(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(s.split_whitespace().collect::<Vec<_>>().join(" ")),
        Value::Array(items) => Value::Array(items.into_iter().map(tidy).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, tidy(v))).collect()),
        other => other,
    }
}

fn main() -> std::io::Result<()> {
    airlock_sdk::run(|hook: &str, payload: Value| match hook {
        "transform" => {
            let mut out = tidy(payload);
            if let Value::Object(map) = &mut out {
                map.insert("formattedBy".into(), "data-formatter".into());
            }
            Ok(out)
        }
        other => Err(format!("data-formatter does not implement hook {other}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_are_trimmed_and_collapsed_at_any_depth() {
        let out = tidy(json!({"name": "  Ada \t Lovelace ", "tags": [" a  b "], "n": 1}));
        assert_eq!(
            out,
            json!({"name": "Ada Lovelace", "tags": ["a b"], "n": 1})
        );
    }
}
