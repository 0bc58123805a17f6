//! Robustness of url.

use super::{fuzz_input, run};
use crate::support::url::{check_destination, parse_destination, Policy};
use crate::tests::fixtures::{scaled, seeded};

const URL_ITERATIONS: usize = 20_000;

#[test]
fn urls_never_panic_and_accepted_ones_are_whole() {
    let mut rng = seeded(0xb10e);
    let corpus: Vec<Vec<u8>> = [
        "https://hooks.example.com/in?x=1&y=2",
        "http://example.com",
        "https://EXAMPLE.com:8443/a/b/",
        "https://[2001:db8::1]:443/x",
        "http://[::ffff:127.0.0.1]/",
        "https://10.0.0.1/",
        "https://1.2.3.4:65535?q",
        "https://a-b_c.d.e/%2F",
        "http://localhost:8080/x",
        "https://0x7f.1/",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let mut accepted = 0;
    for i in 0..scaled(URL_ITERATIONS) {
        let bytes = fuzz_input(&mut rng, &corpus, false);
        let url = String::from_utf8_lossy(&bytes).into_owned();
        let parsed = run("url::parse_destination", i, &url, || {
            parse_destination(&url)
        });
        let strict = run("url::check_destination", i, &url, || {
            check_destination(&url, Policy::STRICT)
        });
        let relaxed = check_destination(&url, Policy::OPEN);
        assert_eq!(relaxed, parsed, "{url:?}");
        if let Ok(d) = &strict {
            assert!(d.https && Ok(d) == parsed.as_ref(), "{url:?}");
        }
        match parsed {
            Ok(d) => {
                accepted += 1;
                let whole = d.path_and_query.starts_with('/')
                    && d.port > 0
                    && !d.host.is_empty()
                    && !d.authority.is_empty()
                    && url.is_ascii()
                    && url.len() <= crate::support::url::MAX_URL_LEN
                    && !d.host.contains(['/', '@', '#', '?', ' '])
                    && d.host == d.host.to_ascii_lowercase();
                assert!(whole, "{url:?} -> {d:?}");
            }
            Err(e) => assert!(
                !e.message.is_empty() && ["invalid_url", "insecure_url"].contains(&e.code),
                "{url:?} -> {e:?}"
            ),
        }
    }
    assert!(accepted > URL_ITERATIONS / 20, "{accepted} accepted");
}
