//! plugin.yaml's JSON Schema says what the parser accepts: the committed file is the generated
//! one, its fields are the parser's, every example manifest validates, and what the parser
//! refuses for a field the schema knows about, the schema refuses too.

#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};

use airlock_bundle::Manifest;
use airlock_bundle::manifest::FIELDS;
use airlock_bundle::schema::{SCHEMA_FILE, plugin_yaml_schema};
use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&plugin_yaml_schema()).expect("the schema compiles")
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).expect("yaml")
}

#[test]
fn the_committed_schema_is_the_generated_one() {
    let path = workspace().join(SCHEMA_FILE);
    let generated = serde_json::to_string_pretty(&plugin_yaml_schema()).expect("json") + "\n";
    if std::env::var_os("AIRLOCK_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).expect("writing the schema");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with bundle/src/schema.rs: run `AIRLOCK_UPDATE_DOCS=1 cargo test -p airlock-bundle --test plugin_schema` and commit the result",
        path.display()
    );
}

#[test]
fn the_schema_has_the_parsers_fields() {
    let schema = plugin_yaml_schema();
    let mut properties: Vec<&str> = schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .map(String::as_str)
        .collect();
    let mut fields = FIELDS.to_vec();
    properties.sort_unstable();
    fields.sort_unstable();
    assert_eq!(properties, fields);
    assert_eq!(schema["additionalProperties"], false);
}

#[test]
fn every_example_manifest_is_valid_under_the_schema() {
    let validator = validator();
    let mut seen = 0;
    for entry in std::fs::read_dir(workspace().join("examples")).expect("examples") {
        let path = entry.expect("entry").path().join("plugin.yaml");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        Manifest::parse(&text).expect("the parser accepts it");
        let errors: Vec<String> = validator
            .iter_errors(&yaml(&text))
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        seen += 1;
    }
    assert!(seen >= 5, "examples found: {seen}");
}

#[test]
fn what_the_parser_refuses_the_schema_refuses() {
    let validator = validator();
    let base = "name: t\nversion: 1.0.0\napiVersion: 1\nhooks: [transform]\nentryPoint: [/t]\n";
    assert!(validator.is_valid(&yaml(base)));
    for bad in [
        "hooks: [transfrom]",
        "permissions: [root]",
        "permissions: [log, log]",
        "imageDigest: sha256:abc",
        "name: Not_A_Label",
        "entryPoint: []",
        "entrypoint: [/t]",
    ] {
        let field = bad.split(':').next().expect("field");
        let text: String = base
            .lines()
            .filter(|l| !l.starts_with(&format!("{field}:")))
            .chain([bad])
            .collect::<Vec<_>>()
            .join("\n");
        assert!(Manifest::parse(&text).is_err(), "the parser refuses {bad}");
        assert!(
            !validator.is_valid(&yaml(&text)),
            "the schema refuses {bad}"
        );
    }
    // An API version no shim serves parses, and is refused when it would run; editors say so at once.
    let future = base.replace("apiVersion: 1", "apiVersion: 99");
    let parsed = Manifest::parse(&future).expect("parses");
    assert!(parsed.check_api_version().is_err());
    assert!(!validator.is_valid(&yaml(&future)));
}
