//! Every relative link in the repository's documentation resolves: the file exists, and a
//! `#anchor` into a Markdown file names one of its headings (as a code host renders them). Run by
//! `make lint` (`make docs-links`) and with the unit tests.
// A test file: an unreadable docs/ is a failed test.
#![allow(clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The documents checked: the manual and the Markdown files it links to.
const DOCS: &[&str] = &[
    "README.md",
    "ARCHITECTURE.md",
    "SECURITY.md",
    "LIMITS.md",
    "sdk/README.md",
    "sdk/PROTOCOL.md",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every Markdown file under `docs/`, and [`DOCS`].
fn documents() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = DOCS.iter().map(|d| root().join(d)).collect();
    let mut dirs = vec![root().join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("docs/ is readable")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    out
}

/// The lines of `markdown` outside fenced code blocks.
fn prose_lines(markdown: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    markdown.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The targets of the inline links `[text](target)` of `markdown`, outside code blocks and
/// code spans.
fn links(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose_lines(markdown) {
        // Drop code spans: `[a](b)` inside backticks is not a link.
        let prose: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].trim().to_string());
            rest = &after[end..];
        }
    }
    out
}

/// The anchors of `markdown`'s headings, as GitHub makes them: lowercase, punctuation dropped,
/// spaces as `-`, a repeated heading suffixed `-1`, `-2`, ...
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in prose_lines(markdown) {
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        let text = heading.trim_start_matches('#').trim();
        let slug: String = text
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while out.contains(&unique) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
        out.insert(unique);
    }
    out
}

#[test]
fn every_relative_link_of_the_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).expect("a document");
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((target.as_str(), ""));
            let path = if file.is_empty() {
                doc.clone()
            } else {
                doc.parent().expect("a directory").join(file)
            };
            if !path.exists() {
                broken.push(format!("{}: {target}: no such file", doc.display()));
                continue;
            }
            if !anchor.is_empty() && path.extension().is_some_and(|e| e == "md") {
                let headings = anchors(&std::fs::read_to_string(&path).expect("a document"));
                if !headings.contains(anchor) {
                    broken.push(format!(
                        "{}: {target}: no heading #{anchor} in {}",
                        doc.display(),
                        path.display()
                    ));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: is the scan broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_are_made_as_a_code_host_makes_them() {
    let a = anchors(
        "# The Airlock manual\n### Configuring a plugin: `spec.config`\n## Request (shim → plugin)\n## Rules\n## Rules\n```\n# not a heading\n```\n",
    );
    for expected in [
        "the-airlock-manual",
        "configuring-a-plugin-specconfig",
        "request-shim--plugin",
        "rules",
        "rules-1",
    ] {
        assert!(a.contains(expected), "{expected} in {a:?}");
    }
    assert!(!a.contains("not-a-heading"));
    assert_eq!(
        links("see [a](x.md#y) and `[b](z.md)`\n```\n[c](w.md)\n```\n"),
        ["x.md#y"]
    );
}
