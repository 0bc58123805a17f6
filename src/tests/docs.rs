//! Fails when the docs drift from the code: every relative link in the Markdown files resolves
//! (file and heading), and docs/configuration.md names exactly the fields the parser accepts,
//! read from the parser's own field tables.

use crate::config::{self, FIELD_TABLES};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files a reader follows links through: the README, BENCHMARKS.md, docs/ and the
/// READMEs of examples/ and deploy/.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md"), repo().join("BENCHMARKS.md")];
    let mut todo = vec![
        repo().join("docs"),
        repo().join("examples"),
        repo().join("deploy"),
    ];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files
}

/// The lines of a Markdown text outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut in_code = false;
    text.lines()
        .filter(|line| {
            let fence = line.trim_start().starts_with("```");
            in_code ^= fence;
            !fence && !in_code
        })
        .collect()
}

/// The targets of inline links `[text](target)` outside code blocks.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose_lines(text) {
        for (at, _) in line.match_indices("](") {
            let rest = &line[at + 2..];
            if let Some(end) = rest.find(')') {
                out.push(rest[..end].trim().to_string());
            }
        }
    }
    out
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    prose_lines(text)
        .into_iter()
        .filter(|line| line.starts_with('#'))
        .map(|line| anchor(line.trim_start_matches('#')))
        .collect()
}

fn is_external(target: &str) -> bool {
    ["http://", "https://", "mailto:"]
        .iter()
        .any(|scheme| target.starts_with(scheme))
}

/// Where a relative link from `file` leads, and the heading it names (if any).
fn resolve(file: &Path, target: &str) -> (PathBuf, Option<String>) {
    let (path, fragment) = match target.split_once('#') {
        Some((path, fragment)) => (path, Some(fragment.to_string())),
        None => (target, None),
    };
    let dir = file.parent().unwrap();
    let resolved = match path {
        "" => file.to_path_buf(),
        _ => dir.join(path),
    };
    (resolved, fragment)
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = fs::read_to_string(&file).unwrap();
        for target in link_targets(&text).iter().filter(|t| !is_external(t)) {
            checked += 1;
            let (path, fragment) = resolve(&file, target);
            let shown = file.strip_prefix(repo()).unwrap().display().to_string();
            if !path.exists() {
                broken.push(format!("{shown}: {target} (no such file)"));
                continue;
            }
            let Some(fragment) = fragment else { continue };
            let is_markdown = path.extension().is_some_and(|e| e == "md");
            if is_markdown && !anchors(&fs::read_to_string(&path).unwrap()).contains(&fragment) {
                broken.push(format!("{shown}: {target} (no such heading)"));
            }
        }
    }
    assert!(checked > 50, "only {checked} relative links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Every field the parser accepts, in the docs' dotted notation.
fn parser_fields() -> BTreeSet<String> {
    FIELD_TABLES
        .iter()
        .flat_map(|(parent, table)| {
            table.iter().map(move |name| match *parent {
                "" => name.to_string(),
                _ => format!("{parent}.{name}"),
            })
        })
        .collect()
}

/// The fields docs/configuration.md documents: first cells of table rows that are a
/// backticked dotted name.
fn documented_fields() -> BTreeSet<String> {
    let text = fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once("` |").map(|(name, _)| name))
        .filter(|name| {
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_[].".contains(c))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn the_configuration_reference_names_exactly_the_parsers_fields() {
    let parser = parser_fields();
    let documented = documented_fields();
    let missing: Vec<&String> = parser.difference(&documented).collect();
    let extra: Vec<&String> = documented.difference(&parser).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/configuration.md lacks {missing:?} and names {extra:?}, which the parser refuses"
    );
    assert!(parser.contains("delivery.clusters.http"));
    assert!(parser.contains("events[].audience.json"));
}

/// A document whose object at `parent` (dotted, `[]` for an array's only item) holds
/// `extra`, with the sibling fields an item needs to be read that far.
fn document_at(parent: &str, extra: Value) -> Value {
    let mut value = extra;
    let parts: Vec<&str> = parent.split('.').filter(|p| !p.is_empty()).collect();
    for (depth, part) in parts.iter().enumerate().rev() {
        let name = part.trim_end_matches("[]");
        let inner = match *part == "events[]" && depth + 1 < parts.len() {
            true => {
                let mut item = json!({"type": "a.b", "path": "/a"});
                item[parts[depth + 1]] = value[parts[depth + 1]].take();
                item
            }
            false => value,
        };
        let inner = with_required_siblings(part, inner);
        let inner = match part.ends_with("[]") {
            true => json!([inner]),
            false => inner,
        };
        value = json!({ name: inner });
    }
    value
}

/// `inner` (an object of `part`) with the fields the parser reads before the others.
fn with_required_siblings(part: &str, mut inner: Value) -> Value {
    let required = match part {
        "fleet" => json!({"cluster": "e"}),
        "subscriptions[]" => json!({"id": "s", "consumer": "c", "url": "https://h.example.com/",
                                    "events": ["*"]}),
        _ => json!({}),
    };
    for (name, value) in required.as_object().into_iter().flatten() {
        if inner.get(name).is_none() {
            inner[name] = value.clone();
        }
    }
    inner
}

/// The parser refuses an unknown field exactly where [`FIELD_TABLES`] says each table hangs, so
/// the table of tables cannot drift from the parser either.
#[test]
fn every_field_table_is_the_one_the_parser_checks_there() {
    for (parent, _) in FIELD_TABLES {
        let doc = document_at(parent, json!({"zz_unknown": 1}));
        let error = config::parse(doc.to_string().as_bytes()).unwrap_err();
        let expected = match parent {
            "" => "zz_unknown".to_string(),
            _ => format!("{}.zz_unknown", parent.replace("[]", "[0]")),
        };
        assert_eq!(error.field, expected, "{doc}: {error}");
    }
}

#[test]
fn anchors_follow_githubs_rules() {
    assert_eq!(
        anchor(" Consumers from your own authentication (`api.consumer_header`)"),
        "consumers-from-your-own-authentication-apiconsumer_header"
    );
    assert_eq!(
        anchor("Pacing, fairness and memory"),
        "pacing-fairness-and-memory"
    );
    let links = link_targets("[a](x.md#y) and [b](z)\n```\n[c](no.md)\n```\n");
    assert_eq!(links, ["x.md#y", "z"]);
}
