use super::*;
use crate::config::parse;

fn config(portal: &str) -> Config {
    let json = format!(r#"{{"api": {{"path_prefix": "/hooks", "portal": {portal}}}}}"#);
    parse(json.as_bytes()).unwrap()
}

fn on() -> Config {
    config(
        r#"{"enabled": true, "title": "Acme <\"webhooks\"> & co",
            "frame_ancestors": ["https://app.example.com", "'self'"]}"#,
    )
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

fn get(c: &Config, path: &str, accept: Option<&str>) -> Option<Response> {
    serve_page(c, "GET", path, || accept.map(|a| a.as_bytes().to_vec()))
}

fn asset_path(name: &str) -> String {
    format!("/hooks/portal/assets/{ASSET_DIR}/{name}")
}

#[test]
fn shell_names_the_hashed_assets_and_escapes_the_title() {
    let r = get(&on(), "/hooks/portal", None).unwrap();
    assert_eq!(r.status, 200);
    let html = String::from_utf8(r.body.clone()).unwrap();
    assert!(html.contains("<title>Acme &lt;&quot;webhooks&quot;&gt; &amp; co</title>"));
    assert!(html.contains(r#"<meta name="pw-prefix" content="/hooks">"#));
    assert!(html.contains(&format!(r#"src="/hooks/portal/assets/{ASSET_DIR}/app.js""#)));
    assert!(!html.contains("{{"), "every placeholder filled");
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "nothing inline"
    );
    assert_eq!(header(&r, "content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(header(&r, "cache-control"), Some("no-cache"));
}

#[test]
fn every_answer_carries_the_policy_with_the_configured_frame_ancestors() {
    let c = on();
    for path in ["/hooks/portal", "/hooks/portal/", &asset_path("app.js")] {
        let r = get(&c, path, None).unwrap();
        assert_eq!(
            header(&r, "content-security-policy"),
            Some("default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors https://app.example.com 'self'"),
            "{path}"
        );
        assert_eq!(header(&r, "x-content-type-options"), Some("nosniff"));
    }
    let none = config(r#"{"enabled": true}"#);
    let r = get(&none, "/hooks/portal", None).unwrap();
    assert!(header(&r, "content-security-policy")
        .unwrap()
        .ends_with("frame-ancestors 'none'"));
}

#[test]
fn assets_are_immutable_and_gzipped_when_accepted() {
    let c = on();
    for asset in ASSETS {
        let plain = get(&c, &asset_path(asset.name), None).unwrap();
        assert_eq!(plain.status, 200);
        assert_eq!(plain.body, asset.raw);
        assert_eq!(header(&plain, "content-encoding"), None);
        assert_eq!(header(&plain, "content-type"), Some(asset.content_type));
        assert_eq!(
            header(&plain, "cache-control"),
            Some("public, max-age=31536000, immutable")
        );
        assert_eq!(header(&plain, "vary"), Some("accept-encoding"));
        let gz = get(&c, &asset_path(asset.name), Some("gzip, deflate, br")).unwrap();
        assert_eq!(gz.body, asset.gzip);
        assert_eq!(header(&gz, "content-encoding"), Some("gzip"));
        assert!(asset.gzip.starts_with(&[0x1f, 0x8b]));
    }
    let names: Vec<_> = ASSETS.iter().map(|a| a.name).collect();
    for name in [
        "app.js",
        "api.js",
        "dom.js",
        "endpoints.js",
        "catalog.js",
        "portal.css",
    ] {
        assert!(names.contains(&name), "{name} embedded");
    }
}

#[test]
fn gzip_follows_accept_encoding_q_values() {
    for (value, gzip) in [
        ("gzip", true),
        ("GZIP;q=0.5", true),
        ("x-gzip", true),
        ("*", true),
        ("deflate, br", false),
        ("gzip;q=0", false),
        ("gzip; q=0.0, *", false),
        ("*;q=0", false),
        ("br, *;q=0.1", true),
        ("gzip;q=0.001", true),
        ("gzip;q=1.000", true),
        ("gzip;q=0.000, *;q=1", false),
        ("gzip;q=junk", false),
        ("", false),
    ] {
        assert_eq!(accepts_gzip(value.as_bytes()), gzip, "{value:?}");
    }
    assert!(!accepts_gzip(&[0xff, 0xfe]));
}

#[test]
fn unknown_or_stale_assets_are_404_and_other_methods_405() {
    let c = on();
    for path in [
        "/hooks/portal/assets/0000000000000000/app.js".to_string(),
        asset_path("nope.js"),
        asset_path("index.html"),
        format!("/hooks/portal/assets/{ASSET_DIR}/x/app.js"),
        "/hooks/portal/assets/".to_string(),
    ] {
        assert_eq!(get(&c, &path, None).unwrap().status, 404, "{path}");
    }
    let r = serve_page(&c, "POST", "/hooks/portal", || None).unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(header(&r, "allow"), Some("GET, HEAD"));
    let head = serve_page(&c, "HEAD", "/hooks/portal?x=1", || None).unwrap();
    assert_eq!(head.status, 200);
}

#[test]
fn other_paths_and_a_disabled_portal_are_left_to_the_api() {
    let c = on();
    for path in [
        "/hooks/portals",
        "/hooks/subscriptions",
        "/other/portal",
        "/hooks/portal/x",
    ] {
        assert!(get(&c, path, None).is_none(), "{path}");
    }
    let off = config(r#"{"enabled": false}"#);
    assert!(get(&off, "/hooks/portal", None).is_none());
    assert!(get(&Config::default(), "/webhooks/portal", None).is_none());
}

#[test]
fn fill_replaces_in_one_pass() {
    let out = fill("a {{x}} b {{y}} {{", |n| {
        (n == "x").then(|| "{{y}}".to_string())
    });
    assert_eq!(out, "a {{y}} b {{y}} {{");
}
