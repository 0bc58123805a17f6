use super::*;

#[test]
fn inferable_types_are_exactly_what_inference_makes() {
    for (method, path) in [
        ("POST", "/orders"),
        ("PATCH", "/a/b-c/9"),
        ("DELETE", "/x_y/1"),
    ] {
        let made = infer_event_type(method, path).unwrap();
        assert!(is_inferable_type(&made), "{made}");
    }
    for not in [
        "orders",
        "orders.moved",
        "orders1.created",
        "a-b.created",
        ".created",
        "a.b.created",
    ] {
        assert!(!is_inferable_type(not), "{not}");
    }
}

fn t(s: &str) -> PathTemplate {
    PathTemplate::parse(s).unwrap()
}

fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn rule(ty: &str, methods: &[&str], path: &str, status: StatusMatch) -> EventRule {
    EventRule {
        event_type: ty.to_string(),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        path: t(path),
        status,
        audience: Audience::Requester,
        include_object: true,
        doc: None,
    }
}

#[test]
fn template_literals() {
    let tpl = t("/orders");
    assert_eq!(tpl.as_str(), "/orders");
    assert_eq!(tpl.matches("/orders"), Some(vec![]));
    assert_eq!(tpl.matches("/orders/"), Some(vec![]));
    assert_eq!(tpl.matches("/orders/1"), None);
    assert_eq!(tpl.matches("/Orders"), None);
    assert_eq!(tpl.matches("/"), None);
    assert_eq!(tpl.matches(""), None);
    assert_eq!(tpl.matches("orders"), None);
    assert_eq!(tpl.matches("/orders//"), None);
}

#[test]
fn template_trailing_slash_in_template() {
    let tpl = t("/orders/");
    assert_eq!(tpl.as_str(), "/orders/");
    assert_eq!(tpl.matches("/orders"), Some(vec![]));
    assert_eq!(tpl.matches("/orders/"), Some(vec![]));
}

#[test]
fn template_root() {
    let tpl = t("/");
    assert_eq!(tpl.matches("/"), Some(vec![]));
    assert_eq!(tpl.matches("/a"), None);
    assert_eq!(tpl.matches("//"), None);
}

#[test]
fn template_params() {
    let tpl = t("/users/{user}/keys/{key_id}");
    assert_eq!(
        tpl.matches("/users/7/keys/3"),
        Some(p(&[("user", "7"), ("key_id", "3")]))
    );
    assert_eq!(
        tpl.matches("/users/7/keys/3/"),
        Some(p(&[("user", "7"), ("key_id", "3")]))
    );
    assert_eq!(tpl.matches("/users/7/keys"), None);
    assert_eq!(tpl.matches("/users/7/keys/3/x"), None);
    assert_eq!(tpl.matches("/users//keys/3"), None);
    assert_eq!(tpl.matches("/users/7/keys//"), None);
}

#[test]
fn template_percent_encoding_is_raw() {
    let tpl = t("/files/{name}");
    assert_eq!(tpl.matches("/files/a%2Fb"), Some(p(&[("name", "a%2Fb")])));
    assert_eq!(t("/caf%C3%A9").matches("/caf%C3%A9"), Some(vec![]));
    assert_eq!(t("/caf%C3%A9").matches("/caf%c3%a9"), None);
}

#[test]
fn template_rest() {
    let tpl = t("/files/{*path}");
    assert_eq!(tpl.matches("/files/a/b/c"), Some(p(&[("path", "a/b/c")])));
    assert_eq!(tpl.matches("/files/a/b/"), Some(p(&[("path", "a/b")])));
    assert_eq!(tpl.matches("/files/a//b"), Some(p(&[("path", "a//b")])));
    assert_eq!(tpl.matches("/files"), Some(p(&[("path", "")])));
    assert_eq!(tpl.matches("/files/"), Some(p(&[("path", "")])));
    assert_eq!(tpl.matches("/filesx"), None);
    assert_eq!(t("/{*all}").matches("/"), Some(p(&[("all", "")])));
    assert_eq!(t("/{*all}").matches("/x/y"), Some(p(&[("all", "x/y")])));
    assert_eq!(
        t("/a/{id}/{*rest}").matches("/a/1/2/3"),
        Some(p(&[("id", "1"), ("rest", "2/3")]))
    );
}

#[test]
fn template_very_long_path() {
    let long = "/x".repeat(100_000);
    assert_eq!(t("/x/{id}").matches(&long), None);
    let got = t("/x/{*rest}").matches(&long).unwrap();
    assert_eq!(got[0].1.len(), long.len() - 3);
    let seg = "a".repeat(1_000_000);
    assert_eq!(
        t("/{id}").matches(&format!("/{seg}")),
        Some(p(&[("id", &seg)]))
    );
}

#[test]
fn template_captures() {
    let tpl = t("/tenants/{tenant}/files/{*rest}");
    assert!(tpl.has_param("tenant") && tpl.has_param("rest"));
    assert!(!tpl.has_param("files") && !tpl.has_param("id") && !tpl.has_param(""));
}

#[test]
fn template_refusals() {
    let err = |s: &str| PathTemplate::parse(s).unwrap_err();
    assert_eq!(err(""), "path must start with '/'");
    assert_eq!(err("orders"), "path must start with '/'");
    assert_eq!(err("/a/{id}/{id}"), "parameter \"id\" is used twice");
    assert_eq!(err("/a/{id}/{*id}"), "parameter \"id\" is used twice");
    assert_eq!(
        err("/a/{*rest}/b"),
        "a {*name} parameter must be the last segment"
    );
    assert_eq!(
        err("/a/{}"),
        "invalid parameter \"{}\": names are letters, digits and '_'"
    );
    assert_eq!(
        err("/a/{*}"),
        "invalid parameter \"{*}\": names are letters, digits and '_'"
    );
    assert_eq!(
        err("/a/{i-d}"),
        "invalid parameter \"{i-d}\": names are letters, digits and '_'"
    );
    assert_eq!(
        err("/a/x{id}"),
        "invalid character '{' in path segment \"x{id}\""
    );
    assert_eq!(err("/a b"), "invalid character ' ' in path segment \"a b\"");
    assert_eq!(
        err("/a?x=1"),
        "invalid character '?' in path segment \"a?x=1\""
    );
    assert_eq!(
        err("/a//b"),
        "path must not contain empty segments (\"//\")"
    );
    assert_eq!(err("//"), "path must not contain empty segments (\"//\")");
}

#[test]
fn status_match() {
    let two = StatusMatch::Class(2);
    assert!(two.matches(200) && two.matches(204) && two.matches(299));
    assert!(!two.matches(199) && !two.matches(300) && !two.matches(0));
    let codes = StatusMatch::Codes(vec![201, 202]);
    assert!(codes.matches(201) && codes.matches(202) && !codes.matches(200));
    assert!(!StatusMatch::Codes(vec![]).matches(200));
}

#[test]
fn mutating_methods() {
    for m in ["POST", "PUT", "PATCH", "DELETE"] {
        assert!(is_mutating(m));
    }
    for m in ["GET", "HEAD", "OPTIONS", "post", "TRACE", "CONNECT", ""] {
        assert!(!is_mutating(m));
    }
}

#[test]
fn detect_explicit_first_match_wins() {
    let rules = vec![
        rule(
            "order.created",
            &["POST"],
            "/orders",
            StatusMatch::Codes(vec![201]),
        ),
        rule(
            "order.updated",
            &["PUT", "PATCH"],
            "/orders/{id}",
            StatusMatch::Class(2),
        ),
        rule(
            "order.touched",
            &["PATCH"],
            "/orders/{id}",
            StatusMatch::Class(2),
        ),
    ];
    let d = detect(&rules, false, "POST", "/orders", 201).unwrap();
    assert_eq!(d.event_type, "order.created");
    assert!(d.params.is_empty());
    assert_eq!(detect(&rules, false, "POST", "/orders", 200), None);
    assert_eq!(d.rule, Some(0));
    let d = detect(&rules, false, "PATCH", "/orders/42?x=1", 200).unwrap();
    assert_eq!(d.event_type, "order.updated");
    assert_eq!(d.rule, Some(1));
    assert_eq!(d.params, p(&[("id", "42")]));
    assert_eq!(detect(&rules, false, "PATCH", "/orders/42", 404), None);
}

#[test]
fn detect_never_for_safe_methods() {
    let rules = vec![rule("x.y", &["GET"], "/orders", StatusMatch::Class(2))];
    for m in ["GET", "HEAD", "OPTIONS", "post"] {
        assert_eq!(detect(&rules, true, m, "/orders", 200), None);
    }
}

#[test]
fn detect_empty_methods_never_match() {
    let rules = vec![rule("x.y", &[], "/orders", StatusMatch::Class(2))];
    assert_eq!(detect(&rules, false, "POST", "/orders", 200), None);
}

#[test]
fn detect_falls_back_to_inference() {
    let rules = vec![rule(
        "order.created",
        &["POST"],
        "/orders",
        StatusMatch::Class(2),
    )];
    let d = detect(&rules, true, "DELETE", "/users/7/keys/3", 204).unwrap();
    assert_eq!(d.event_type, "keys.deleted");
    assert!(d.params.is_empty());
    assert_eq!(d.rule, None);
    assert_eq!(
        detect(&rules, false, "DELETE", "/users/7/keys/3", 204),
        None
    );
    assert_eq!(detect(&rules, true, "DELETE", "/users/7/keys/3", 302), None);
    assert_eq!(detect(&rules, true, "DELETE", "/users/7/keys/3", 500), None);
    assert_eq!(detect(&rules, true, "POST", "/", 201), None);
    // An explicit non-2xx rule still applies where inference would not.
    let rules = vec![rule(
        "order.failed",
        &["POST"],
        "/orders",
        StatusMatch::Class(4),
    )];
    assert_eq!(
        detect(&rules, true, "POST", "/orders", 409)
            .unwrap()
            .event_type,
        "order.failed"
    );
}

#[test]
fn infer_types() {
    let cases = [
        ("POST", "/orders", Some("orders.created")),
        ("PUT", "/orders/42", Some("orders.updated")),
        ("PATCH", "/orders/42", Some("orders.updated")),
        ("DELETE", "/users/7/keys/3", Some("keys.deleted")),
        ("POST", "/api/v1/orders/42", Some("orders.created")),
        ("POST", "/orders/", Some("orders.created")),
        ("POST", "/line-items", Some("line_items.created")),
        ("POST", "/order_lines/abc-123", Some("order_lines.created")),
        ("POST", "/orders/42?expand=1", Some("orders.created")),
        ("POST", "/orders//42", Some("orders.created")),
        ("POST", "/orders/a%20b", Some("orders.created")),
        ("POST", "/caf%C3%A9", None),
        ("POST", "/", None),
        ("POST", "", None),
        ("POST", "/42", None),
        ("POST", "/v1/42", None),
        ("GET", "/orders", None),
        ("HEAD", "/orders", None),
        ("OPTIONS", "/orders", None),
    ];
    for (m, path, want) in cases {
        assert_eq!(infer_event_type(m, path).as_deref(), want, "{m} {path}");
    }
}

#[test]
fn infer_respects_length_limit() {
    let ok = "a".repeat(MAX_EVENT_TYPE_LEN - ".created".len());
    let got = infer_event_type("POST", &format!("/{ok}")).unwrap();
    assert!(is_valid_event_type(&got));
    let too_long = format!("/{ok}a");
    assert_eq!(infer_event_type("POST", &too_long), None);
    assert_eq!(
        infer_event_type("POST", &"/x".repeat(100_000)).unwrap(),
        "x.created"
    );
}

#[test]
fn event_type_validity() {
    for ok in ["order", "order.created", "a.b.c", "A_1.b2", "_"] {
        assert!(is_valid_event_type(ok), "{ok}");
    }
    for bad in [
        "",
        ".",
        "order.",
        ".order",
        "a..b",
        "order-created",
        "order.*",
        "*",
        "é",
    ] {
        assert!(!is_valid_event_type(bad), "{bad}");
    }
    assert!(is_valid_event_type(&"a".repeat(128)));
    assert!(!is_valid_event_type(&"a".repeat(129)));
}

#[test]
fn event_filter_validity() {
    for ok in ["*", "order", "order.created", "order.*", "a.b.*"] {
        assert!(is_valid_event_filter(ok), "{ok}");
    }
    for bad in [
        "",
        ".*",
        "*.created",
        "order.**",
        "order*",
        "**",
        "order.*.x",
        " order",
    ] {
        assert!(!is_valid_event_filter(bad), "{bad}");
    }
}
