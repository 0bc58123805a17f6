//! Robustness of time.

use super::{fuzz_input, run};
use crate::support::time::{format_rfc3339_millis, parse_http_date, parse_retry_after};
use crate::tests::fixtures::{scaled, seeded};

const TIME_ITERATIONS: usize = 10_000;

#[test]
fn dates_never_panic_and_retry_after_is_capped() {
    const THIRTY_DAYS_MS: u64 = 30 * 86_400_000;
    let mut rng = seeded(0x7173);
    let corpus: Vec<Vec<u8>> = [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
        "Thu, 31 Dec 9999 23:59:60 GMT",
        "Thu, 29 Feb 2024 00:00:00 GMT",
        "120",
        " 0 ",
        "99999999999999999999999",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    for i in 0..scaled(TIME_ITERATIONS) {
        let value = String::from_utf8_lossy(&fuzz_input(&mut rng, &corpus, false)).into_owned();
        let now = match rng.below(4) {
            0 => 0,
            1 => u64::MAX,
            _ => rng.next() >> rng.below(64),
        };
        let date = run("parse_http_date", i, &value, || parse_http_date(&value));
        let delay = run("parse_retry_after", i, &(&value, now), || {
            parse_retry_after(&value, now)
        });
        assert!(
            delay.is_none_or(|d| d <= THIRTY_DAYS_MS),
            "{value:?} {now} -> {delay:?}"
        );
        if let Some(secs) = date {
            // An accepted date formats back to the same instant.
            assert!(secs <= 253_402_300_800, "{value:?} -> {secs}");
        }
        // Formatting any instant works, and an IMF-fixdate built from it parses back.
        let ms = if rng.chance(8) {
            rng.next()
        } else {
            rng.next() % 253_402_300_800_000
        };
        let text = run("format_rfc3339_millis", i, &ms, || {
            format_rfc3339_millis(ms)
        });
        if ms < 253_402_300_800_000 {
            let imf = imf_from_rfc3339(&text);
            assert_eq!(parse_http_date(&imf), Some(ms / 1000), "{text} {imf}");
        }
    }
}

/// `2026-11-27T10:00:00.123Z` → `Xxx, 27 Nov 2026 10:00:00 GMT` (any weekday word is accepted).
fn imf_from_rfc3339(text: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month: usize = text[5..7].parse().unwrap();
    format!(
        "Xxx, {} {} {} {} GMT",
        &text[8..10],
        MONTHS[month - 1],
        &text[0..4],
        &text[11..19]
    )
}
