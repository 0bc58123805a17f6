//! Robustness of Small helpers on untrusted strings.

use super::{fuzz_input, mutate_bytes, run, subscription};
use crate::api;
use crate::config;
use crate::dispatcher::delivery;
use crate::model::rules;
use crate::tests::fixtures::{scaled, seeded};

#[test]
fn string_helpers_never_panic() {
    let mut rng = seeded(0x5_7e1f);
    let corpus: Vec<Vec<u8>> = ["order.created", "a.b.*", "*", "5s", "365d", "/webhooks/x?y"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    for i in 0..scaled(10_000) {
        let text = String::from_utf8_lossy(&fuzz_input(&mut rng, &corpus, false)).into_owned();
        let other = String::from_utf8_lossy(&mutate_bytes(&mut rng, text.as_bytes())).into_owned();
        run("string helpers", i, &(&text, &other), || {
            let filters = subscription::lookup_filters(&text);
            assert_eq!(filters.first(), Some(&text));
            assert_eq!(filters.last().map(String::as_str), Some("*"));
            if rules::is_valid_event_type(&text) {
                for f in &filters {
                    assert!(rules::is_valid_event_filter(f), "{f:?}");
                    assert!(subscription::filter_matches(f, &text), "{f:?} {text:?}");
                }
            }
            let _ = subscription::filter_matches(&text, &other);
            let _ = rules::is_valid_event_filter(&text);
            let _ = api::is_api_path(&text, &other);
            if let Ok(ms) = config::parse_duration(&text) {
                assert!(ms <= config::MAX_DURATION_MS, "{text:?}");
            }
            let _ = delivery::classify(rng.next() as u16, None, text.as_bytes()).describe();
            let _ = delivery::classify(
                503,
                None,
                format!("upstream connect error{other}").as_bytes(),
            )
            .describe();
        });
    }
}
