use super::*;
use crate::registry::store::MemoryStore;
use crate::registry::Registry;

fn at(state: State, ms: u32) -> Attempt {
    Attempt {
        webhook_id: format!("msg_{ms}"),
        event_type: "a.b".into(),
        attempt: 1,
        timestamp: format!("2026-12-06T08:00:00.{ms:03}Z"),
        response_status: None,
        error: None,
        duration_ms: 1,
        next_retry_at: None,
        state,
    }
}

fn t(ms: u32) -> Option<String> {
    Some(format!("2026-12-06T08:00:00.{ms:03}Z"))
}

/// The summary of a log given oldest first.
fn of(log: &[(State, u32)]) -> Summary {
    let newest_first: Vec<Attempt> = log.iter().rev().map(|(s, ms)| at(*s, *ms)).collect();
    summarize(&newest_first)
}

use State::{Dropped, Exhausted, Retrying, Succeeded};

#[test]
fn a_summary_counts_the_failures_since_the_last_success() {
    let s = of(&[
        (Retrying, 1),
        (Succeeded, 2),
        (Retrying, 3),
        (Dropped, 4),
        (Exhausted, 5),
    ]);
    assert_eq!(
        s,
        Summary {
            last_success_at: t(2),
            last_failure_at: t(5),
            failing_since: t(3),
            consecutive_failures: 2,
        }
    );
    assert_eq!(of(&[]), Summary::default());
    assert_eq!(of(&[(Retrying, 1), (Succeeded, 2)]).consecutive_failures, 0);
}

#[test]
fn merged_summaries_are_the_fleets_exactly_when_runs_do_not_straddle_a_success() {
    // A fails from 3 on; B succeeded at 2: the fleet fails since 3, twice.
    let a = of(&[(Succeeded, 1), (Retrying, 3), (Retrying, 5)]);
    let b = of(&[(Succeeded, 2)]);
    let fleet = merge([&a, &b]);
    assert_eq!(
        fleet,
        Summary {
            last_success_at: t(2),
            last_failure_at: t(5),
            failing_since: t(3),
            consecutive_failures: 2,
        }
    );
    // Two replicas failing after the last success: their runs add up.
    let c = of(&[(Retrying, 4)]);
    let fleet = merge([&a, &b, &c]);
    assert_eq!((fleet.consecutive_failures, fleet.failing_since), (3, t(3)));
    // B succeeds after every failure: healthy, whatever A's and C's runs say.
    let b = of(&[(Succeeded, 2), (Succeeded, 6)]);
    let fleet = merge([&a, &b, &c]);
    assert_eq!((fleet.consecutive_failures, fleet.failing_since), (0, None));
    assert_eq!(fleet.last_success_at, t(6));
    assert_eq!(merge([&a]), a, "one replica: its own summary");
    assert_eq!(merge(std::iter::empty()), Summary::default());
}

#[test]
fn a_run_begun_before_another_replicas_success_counts_at_least_its_newest_failure() {
    // A failed at 1, 3 and 5; B succeeded at 2: A's failures after 2 (3 and 5) are not known
    // one by one from its summary, so the fleet counts at least one, since 5.
    let a = of(&[(Retrying, 1), (Retrying, 3), (Retrying, 5)]);
    let b = of(&[(Succeeded, 2)]);
    let fleet = merge([&a, &b]);
    assert_eq!((fleet.consecutive_failures, fleet.failing_since), (1, t(5)));
    assert_eq!(fleet.last_failure_at, t(5));
}

#[test]
fn summaries_round_trip_and_bad_ones_are_refused() {
    let s = of(&[(Succeeded, 1), (Retrying, 3)]);
    assert_eq!(Summary::parse(&s.to_json()), Some(s));
    assert_eq!(
        Summary::parse(&Summary::default().to_json()),
        Some(Summary::default())
    );
    for bad in [
        &b"not json"[..],
        b"[]",
        b"{\"consecutive_failures\": -1}",
        b"{\"consecutive_failures\": 1, \"last_success_at\": 5}",
    ] {
        assert_eq!(
            Summary::parse(bad),
            None,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

fn registry_with(store: &MemoryStore, id: &str) {
    let r = Registry::new(store);
    r.prepare();
    let sub = crate::registry::tests::sub(id, "c", &["a.*"]);
    r.insert(&sub, None).unwrap();
}

#[test]
fn other_replicas_summaries_are_kept_per_node_bounded_and_cleared_with_the_subscription() {
    let store = MemoryStore::default();
    registry_with(&store, "sub_1");
    let r = Registry::new(&store);
    let failing = of(&[(Retrying, 3)]);
    r.record_health("sub_1", "a", &of(&[(Succeeded, 1)]))
        .unwrap();
    r.record_health("sub_1", "a", &failing).unwrap();
    r.record_health("sub_1", "b", &of(&[(Succeeded, 2)]))
        .unwrap();
    let mut kept = others(&store, "sub_1", "");
    kept.sort_by(|x, y| x.newest().cmp(&y.newest()));
    assert_eq!(kept, [of(&[(Succeeded, 2)]), failing.clone()]);
    // Summaries whose newest attempt is older than the logs keep are left out.
    assert_eq!(
        others(&store, "sub_1", "2026-12-06T08:00:00.003Z"),
        [failing]
    );
    // At most MAX_NODES: a new node replaces the one whose newest attempt is the oldest.
    for n in 0..MAX_NODES as u32 {
        r.record_health("sub_1", &format!("n{n}"), &of(&[(Succeeded, 100 + n)]))
            .unwrap();
    }
    let kept = others(&store, "sub_1", "");
    assert_eq!(kept.len(), MAX_NODES);
    assert!(!kept.contains(&of(&[(Succeeded, 2)])), "b was the oldest");
    // No line for a subscription the registry does not have; a delete takes the line.
    r.record_health("sub_2", "a", &of(&[(Succeeded, 1)]))
        .unwrap();
    assert!(others(&store, "sub_2", "").is_empty());
    r.delete("sub_1").unwrap();
    assert!(others(&store, "sub_1", "").is_empty());
}
