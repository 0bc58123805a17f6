//! Robustness of rules: PathTemplate, detect, infer_event_type.

use super::{fuzz_input, run};
use crate::model::rules::{self, EventRule, PathTemplate, StatusMatch};
use crate::tests::fixtures::{scaled, seeded, Rng};

/// The parameter names a template string declares, in order (for a template that parsed).
fn declared_params(template: &str) -> Vec<String> {
    template
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|s| s.trim_start_matches('*').to_string())
        .collect()
}

const TEMPLATE_ITERATIONS: usize = 5000;

#[test]
fn templates_never_panic_and_match_only_what_they_declare() {
    let mut rng = seeded(0x7e_3e1a7e);
    let templates: Vec<Vec<u8>> = [
        "/",
        "/orders",
        "/orders/{id}",
        "/orders/{id}/items/{item_id}/",
        "/files/{*rest}",
        "/a/{x}/b/{*tail}",
        "/v1/~user/$x/{id}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let paths: Vec<Vec<u8>> = [
        "/orders/42",
        "/orders/42/items/7/",
        "/files/a/b/c.txt",
        "/a/1/b/",
        "//",
        "/",
        "/v1/~user/$x/9?x=1#f",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let mut matched = 0;
    for i in 0..scaled(TEMPLATE_ITERATIONS) {
        let template =
            String::from_utf8_lossy(&fuzz_input(&mut rng, &templates, false)).into_owned();
        let parsed = run("PathTemplate::parse", i, &template, || {
            PathTemplate::parse(&template)
        });
        let Ok(t) = parsed else {
            continue;
        };
        assert_eq!(t.as_str(), template);
        let names = declared_params(&template);
        for _ in 0..4 {
            let path = if rng.chance(2) {
                instantiate(&mut rng, &template)
            } else {
                String::from_utf8_lossy(&fuzz_input(&mut rng, &paths, false)).into_owned()
            };
            let found = run("PathTemplate::matches", i, &(&template, &path), || {
                t.matches(&path)
            });
            if let Some(params) = found {
                matched += 1;
                let got: Vec<&String> = params.iter().map(|(n, _)| n).collect();
                assert_eq!(
                    got,
                    names.iter().collect::<Vec<_>>(),
                    "{template:?} {path:?}"
                );
                for (name, value) in &params {
                    let is_rest = template.contains(&format!("{{*{name}}}"));
                    if !is_rest {
                        assert!(
                            !value.is_empty() && !value.contains('/'),
                            "{template:?} {path:?} {params:?}"
                        );
                    }
                }
            }
            let rule = EventRule {
                event_type: "x.y".into(),
                methods: vec!["POST".into()],
                path: t.clone(),
                status: StatusMatch::Class(2),
                audience: crate::model::audience::Audience::All,
                include_object: true,
                doc: None,
            };
            let method = *rng.pick(&["POST", "PUT", "PATCH", "DELETE", "GET", "post"]);
            let status = rng.below(700) as u16;
            let detected = run("rules::detect", i, &(&template, &path), || {
                rules::detect(std::slice::from_ref(&rule), true, method, &path, status)
            });
            if let Some(d) = detected {
                assert!(rules::is_mutating(method));
                assert!(
                    rules::is_valid_event_type(&d.event_type),
                    "{method} {path:?} -> {d:?}"
                );
            }
            if let Some(t) = rules::infer_event_type(method, &path) {
                assert!(rules::is_valid_event_type(&t), "{method} {path:?} -> {t:?}");
            }
        }
    }
    assert!(matched > TEMPLATE_ITERATIONS / 10, "{matched} matched");
}

/// A path the template should match: each `{name}` replaced by a non-empty segment, `{*rest}`
/// by zero or more segments.
fn instantiate(rng: &mut Rng, template: &str) -> String {
    let seg_chars = "abcXYZ019-._~%!$&'()*+,;=:@é";
    let parts: Vec<String> = template
        .split('/')
        .map(|part| {
            if part.starts_with("{*") {
                let n = rng.below(4);
                (0..n)
                    .map(|_| {
                        let s = rng.from(seg_chars, 6);
                        if s.is_empty() {
                            "s".to_string()
                        } else {
                            s
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("/")
            } else if part.starts_with('{') {
                let s = rng.from(seg_chars, 8);
                if s.is_empty() {
                    "v".to_string()
                } else {
                    s
                }
            } else {
                part.to_string()
            }
        })
        .collect();
    let mut path = parts.join("/");
    if rng.chance(4) {
        path.push('/');
    }
    path
}

#[test]
fn instantiated_templates_match_with_their_values() {
    let mut rng = seeded(0x1a57);
    for i in 0..scaled(3000) {
        // A random valid template.
        let n = rng.below(5);
        let mut template = String::new();
        let mut values: Vec<(String, String)> = Vec::new();
        let mut path = String::new();
        for k in 0..n {
            let last = k + 1 == n;
            match rng.below(if last { 3 } else { 2 }) {
                0 => {
                    let lit = rng.from("abc019-._~!$&'()*+,;=:@%", 6);
                    let lit = if lit.is_empty() { "l".to_string() } else { lit };
                    template.push_str(&format!("/{lit}"));
                    path.push_str(&format!("/{lit}"));
                }
                1 => {
                    let value = rng.from("abcé019-%+:@ ?", 8);
                    let value = if value.is_empty() { "v".into() } else { value };
                    template.push_str(&format!("/{{p{k}}}"));
                    path.push_str(&format!("/{value}"));
                    values.push((format!("p{k}"), value));
                }
                _ => {
                    let segments: Vec<String> = (0..rng.below(4))
                        .map(|_| {
                            let s = rng.from("abc019-%", 5);
                            if s.is_empty() {
                                "s".into()
                            } else {
                                s
                            }
                        })
                        .collect();
                    let rest = segments.join("/");
                    template.push_str(&format!("/{{*r{k}}}"));
                    if !rest.is_empty() {
                        path.push_str(&format!("/{rest}"));
                    }
                    values.push((format!("r{k}"), rest));
                }
            }
        }
        if template.is_empty() {
            template.push('/');
        }
        if path.is_empty() || rng.chance(3) {
            path.push('/');
        }
        let t = PathTemplate::parse(&template)
            .unwrap_or_else(|e| panic!("iteration {i}: {template:?} refused: {e}"));
        assert_eq!(t.matches(&path), Some(values), "{template:?} {path:?}");
    }
}
