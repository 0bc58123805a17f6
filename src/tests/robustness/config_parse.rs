//! Robustness of config::parse.

use super::{full_config, fuzz_input, run, shown, Shown};
use crate::config::{self, Config};
use crate::model::rules::{self, PathTemplate};
use crate::model::signing::Secret;
use crate::support::url::check_destination;
use crate::tests::fixtures::{scaled, seeded};

fn config_corpus() -> Vec<Vec<u8>> {
    vec![
        full_config().to_string().into_bytes(),
        serde_json::to_vec_pretty(&full_config()).unwrap(),
        b"{}".to_vec(),
        b"  \n".to_vec(),
        br#"{"infer_events":["/orders","/a/b/"],"audience":{"header":"x-tenant"},"events":[{"type":"a.b","path":"/a","audience":{"response_header":"x-owner"}}],"api":{"consumer_header":"x-consumer"}}"#.to_vec(),
        br#"{"events":[{"type":"a.b","path":"/a/{x}/b"}],"delivery":{"allow_insecure_destinations":true}}"#.to_vec(),
        br#"{"subscriptions":[{"id":"s1","consumer":"c","url":"http://[fe80::1]:8080/x?y","events":["*"],"secret":"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}],"delivery":{"allow_insecure_destinations":true}}"#.to_vec(),
    ]
}

const CONFIG_ITERATIONS: usize = 6000;

#[test]
fn config_parse_never_panics_and_names_the_field() {
    let mut rng = seeded(0xc0f1_6000);
    let corpus = config_corpus();
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..scaled(CONFIG_ITERATIONS) {
        let input = fuzz_input(&mut rng, &corpus, true);
        let outcome = run("config::parse", i, &Shown(&input), || config::parse(&input));
        match outcome {
            Err(e) => {
                refused += 1;
                assert!(
                    !e.field.is_empty() && !e.problem.is_empty(),
                    "empty field or problem {e:?} for {}",
                    shown(&input)
                );
            }
            Ok(c) => {
                accepted += 1;
                check_config(&c, &input);
            }
        }
    }
    // The mutations must reach past the JSON parser, or they test nothing behind it.
    assert!(accepted > CONFIG_ITERATIONS / 20, "{accepted} accepted");
    assert!(refused > CONFIG_ITERATIONS / 4, "{refused} refused");
}

/// What a parsed configuration promises to the rest of the plugin.
fn check_config(c: &Config, input: &[u8]) {
    let d = &c.delivery;
    let ok = !d.retry_schedule_ms.is_empty()
        && d.retry_schedule_ms.len() <= config::MAX_RETRY_SCHEDULE
        && d.retry_schedule_ms
            .iter()
            .all(|ms| *ms <= config::MAX_DURATION_MS)
        && (0.0..1.0).contains(&d.jitter)
        && d.timeout_ms > 0
        && d.disable_after_ms > 0
        && d.max_queue >= 1
        && d.max_in_flight >= 1
        && !d.cluster_http.is_empty()
        && !d.cluster_https.is_empty()
        && c.api.path_prefix.starts_with('/')
        && !c.api.path_prefix.ends_with('/')
        && c.api.max_body_bytes >= 1024
        && c.events.iter().all(|r| {
            rules::is_valid_event_type(&r.event_type)
                && !r.methods.is_empty()
                && PathTemplate::parse(r.path.as_str()).as_ref() == Ok(&r.path)
        })
        && c.subscriptions.iter().all(|s| {
            s.secret
                .as_deref()
                .is_none_or(|k| Secret::parse_chosen(k).is_ok())
                && s.signing_key
                    .as_deref()
                    .is_none_or(|k| Secret::parse_signing_key(k).is_ok())
                && (s.secret.is_some() || s.signing_key.is_some())
                && check_destination(&s.url, d.url_policy()).is_ok()
                && !s.events.is_empty()
                && s.events.iter().all(|f| rules::is_valid_event_filter(f))
        });
    assert!(
        ok,
        "accepted an invalid configuration {c:?} from {}",
        shown(input)
    );
}

// A regression the fuzzer found.
#[test]
fn an_empty_unknown_key_is_still_named() {
    for (input, field) in [
        (&br#"{"":1}"#[..], "configuration"),
        (br#"{"delivery":{"":1}}"#, "delivery"),
        (br#"{"events":[{"":1}]}"#, "events[0]"),
    ] {
        let e = config::parse(input).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.problem.as_str()),
            (field, "unknown field \"\"")
        );
    }
}
