//! The CRD reference (`docs/reference/crds.md`): every field of every Airlock CRD, with its type,
//! whether it is required, its description and its limits, written from the generated CRDs
//! themselves (the descriptions are the Rust doc comments) so that it cannot say something the
//! API server does not enforce. `crdgen` writes it; `crds/tests/crd_drift.rs` fails on drift.

use std::fmt::Write;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};

/// Where the reference is written, relative to the workspace root.
pub const REFERENCE_FILE: &str = "docs/reference/crds.md";

/// The reference of `crds` as Markdown.
pub fn markdown(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::from(
        "# CRD reference\n\n\
         Generated from the CRDs by `cargo run -p airlock-crds --bin crdgen` (the descriptions are \
         the Rust types' doc comments); do not edit by hand. Each table lists the fields of the \
         storage version; the YAML of every served version is in `charts/airlock/crds/`.\n\n",
    );
    for crd in crds {
        let names = &crd.spec.names;
        let _ = writeln!(out, "- [{}](#{})", names.kind, names.kind.to_lowercase());
    }
    for crd in crds {
        out.push('\n');
        section(&mut out, crd);
    }
    out
}

fn section(out: &mut String, crd: &CustomResourceDefinition) {
    let names = &crd.spec.names;
    let _ = writeln!(out, "## {}\n", names.kind);
    let versions: Vec<String> = crd
        .spec
        .versions
        .iter()
        .map(|v| {
            let mut tags = Vec::new();
            if v.storage {
                tags.push("storage");
            }
            if !v.served {
                tags.push("not served");
            }
            if v.deprecated == Some(true) {
                tags.push("deprecated");
            }
            if tags.is_empty() {
                format!("`{}`", v.name)
            } else {
                format!("`{}` ({})", v.name, tags.join(", "))
            }
        })
        .collect();
    let short = names
        .short_names
        .as_ref()
        .filter(|s| !s.is_empty())
        .map(|s| format!(", short names `{}`", s.join("`, `")))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "`{}` in group `{}`, {} scope{short}; versions {}.\n",
        names.plural,
        crd.spec.group,
        crd.spec.scope,
        versions.join(", ")
    );
    let Some(schema) = crd
        .spec
        .versions
        .iter()
        .find(|v| v.storage)
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
    else {
        out.push_str("No schema.\n");
        return;
    };
    out.push_str("| Field | Type | Required | Description |\n|---|---|---|---|\n");
    for (name, props) in schema.properties.iter().flatten() {
        if matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let required = is_required(schema, name);
        rows(out, name, props, required);
    }
}

fn is_required(parent: &JSONSchemaProps, name: &str) -> bool {
    parent.required.iter().flatten().any(|r| r == name)
}

/// One row for `path` and one for each field below it.
fn rows(out: &mut String, path: &str, props: &JSONSchemaProps, required: bool) {
    let _ = writeln!(
        out,
        "| `{path}` | {} | {} | {} |",
        type_of(props),
        if required { "yes" } else { "" },
        cell(&describe(props))
    );
    for (name, child) in props.properties.iter().flatten() {
        rows(
            out,
            &format!("{path}.{name}"),
            child,
            is_required(props, name),
        );
    }
    if let Some(JSONSchemaPropsOrArray::Schema(item)) = &props.items
        && (item.properties.is_some() || item.items.is_some())
    {
        for (name, child) in item.properties.iter().flatten() {
            rows(
                out,
                &format!("{path}[].{name}"),
                child,
                is_required(item, name),
            );
        }
    }
    if let Some(JSONSchemaPropsOrBool::Schema(value)) = &props.additional_properties
        && value.properties.is_some()
    {
        for (name, child) in value.properties.iter().flatten() {
            rows(
                out,
                &format!("{path}.*.{name}"),
                child,
                is_required(value, name),
            );
        }
    }
}

/// `string`, `[]object`, `map[string]string`, `integer (int32)`, `any`.
fn type_of(props: &JSONSchemaProps) -> String {
    let base = match props.type_.as_deref() {
        Some("array") => match &props.items {
            Some(JSONSchemaPropsOrArray::Schema(item)) => format!("[]{}", type_of(item)),
            _ => "[]any".to_string(),
        },
        Some("object") => match &props.additional_properties {
            Some(JSONSchemaPropsOrBool::Schema(value)) => {
                format!("map[string]{}", type_of(value))
            }
            _ => "object".to_string(),
        },
        Some(t) => t.to_string(),
        None if props.x_kubernetes_int_or_string == Some(true) => "int or string".to_string(),
        None => "any".to_string(),
    };
    match &props.format {
        Some(f) => format!("{base} ({f})"),
        None => base,
    }
}

/// The description and, after it, the limits the API server checks.
fn describe(props: &JSONSchemaProps) -> String {
    let mut parts: Vec<String> = props
        .description
        .iter()
        .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|d| !d.is_empty())
        .collect();
    let mut limits = Vec::new();
    if let Some(values) = &props.enum_ {
        let values: Vec<String> = values.iter().map(|v| format!("`{}`", v.0)).collect();
        limits.push(format!("one of {}", values.join(", ")));
    }
    match (props.minimum, props.maximum) {
        (Some(min), Some(max)) => limits.push(format!("{min} to {max}")),
        (Some(min), None) => limits.push(format!("at least {min}")),
        (None, Some(max)) => limits.push(format!("at most {max}")),
        (None, None) => {}
    }
    if let Some(n) = props.min_length.filter(|n| *n > 0) {
        limits.push(format!("at least {}", count(n, "character")));
    }
    if let Some(n) = props.max_length {
        limits.push(format!("at most {}", count(n, "character")));
    }
    if let Some(n) = props.max_items {
        limits.push(format!("at most {}", count(n, "item")));
    }
    if let Some(n) = props.max_properties {
        limits.push(format!(
            "at most {}",
            count(n, "entry").replace("entrys", "entries")
        ));
    }
    if let Some(p) = &props.pattern {
        limits.push(format!("matches `{p}`"));
    }
    if let Some(d) = &props.default {
        limits.push(format!("default `{}`", d.0));
    }
    for rule in props.x_kubernetes_validations.iter().flatten() {
        let message = rule.message.as_deref().unwrap_or(&rule.rule);
        limits.push(format!("checked: {message}"));
    }
    if !limits.is_empty() {
        parts.push(format!("({})", limits.join("; ")));
    }
    parts.join(" ")
}

/// `1 item`, `16 items`.
fn count(n: i64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `text` fit for a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference lists every field of the Plugin's spec and status with what the API server
    /// checks, taken from the CRD itself.
    #[test]
    fn the_reference_names_fields_types_and_limits_from_the_crds() {
        let text = markdown(&crate::generate::crds());
        for expected in [
            "## Plugin\n",
            "## PluginTrustPolicy\n",
            "| `spec.version` | string | yes |",
            "| `spec.pluginApiVersion` | integer",
            "| `status.revisions[].bundleDigest` | string |  |",
            "| `status.health.failures.oom` |",
            "at most 71 characters",
        ] {
            assert!(text.contains(expected), "{expected:?} missing");
        }
        assert!(
            !text.contains("| `metadata` |"),
            "the object metadata is Kubernetes', not ours"
        );
        for line in text.lines().filter(|l| l.starts_with("| `")) {
            assert_eq!(line.matches(" | ").count(), 3, "four cells: {line}");
        }
    }
}
