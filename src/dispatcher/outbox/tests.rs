use super::*;

fn limits(max_in_flight: usize, per_subscription: usize) -> Limits {
    Limits {
        max_queue: 100_000,
        max_queue_bytes: usize::MAX,
        max_in_flight,
        max_in_flight_per_subscription: per_subscription,
    }
}

fn message(id: &str, subscription: &str, attempts: u32, created_ms: u64) -> Message {
    Message {
        webhook_id: id.into(),
        subscription_id: subscription.into(),
        event_type: "a.b".into(),
        payload: Payload::new(&b"{}"[..]),
        attempts,
        created_ms,
        host_waits: 0,
        replayed: false,
    }
}

/// Starts every attempt allowed at `now`; returns (key, webhook-id, subscription).
fn start_all(o: &mut Outbox, now: u64) -> Vec<(MessageKey, String, String)> {
    std::iter::from_fn(|| {
        o.next_attempt(now)
            .map(|(k, m)| (k, m.webhook_id.clone(), m.subscription_id.to_string()))
    })
    .collect()
}

fn succeed(o: &mut Outbox, key: MessageKey, now: u64) -> Option<Message> {
    o.finish(key, None, Signal::Answered, now, now)
}

#[test]
fn attempts_start_in_due_order_and_reschedule() {
    let mut o = Outbox::new(limits(10, 32));
    o.push(message("late", "s", 0, 0), "c", 50);
    o.push(message("early", "s", 0, 0), "c", 10);
    assert!(o.next_attempt(5).is_none());
    let started = start_all(&mut o, 60);
    let ids: Vec<_> = started.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(ids, ["early", "late"]);
    assert_eq!(o.in_flight(), 2);
    let (early, late) = (started[0].0, started[1].0);
    assert!(o
        .finish(early, Some(100), Signal::Neutral, 60, 70)
        .is_none());
    assert_eq!(succeed(&mut o, late, 70).unwrap().webhook_id, "late");
    assert!(o.next_attempt(99).is_none());
    let (_, m) = o.next_attempt(100).unwrap();
    assert_eq!((m.webhook_id.as_str(), m.attempts), ("early", 1));
    assert_eq!(o.len(), 1);
}

#[test]
fn the_window_holds_attempts_back_without_counting_them() {
    let mut o = Outbox::new(limits(256, 32));
    for n in 0..10 {
        o.push(message(&format!("m{n}"), "s", 0, n), "c", 0);
    }
    let first = start_all(&mut o, 0);
    assert_eq!(first.len(), 4, "a fresh window allows 4");
    // Each prompt answer frees a slot and grows the window by one (slow start).
    for (key, ..) in &first {
        succeed(&mut o, *key, 1);
    }
    let second = start_all(&mut o, 1);
    assert_eq!(second.len(), 6, "the other 6, within a window of 8");
    assert!(o.messages().all(|m| m.attempts == 0));
    assert_eq!(o.window("s"), Some(8));
}

#[test]
fn overruns_shrink_the_window() {
    let mut o = Outbox::new(limits(256, 32));
    for n in 0..20 {
        o.push(message(&format!("m{n}"), "s", 0, n), "c", 0);
    }
    let started = start_all(&mut o, 0);
    assert_eq!(started.len(), 4);
    for (key, ..) in &started {
        o.finish(*key, Some(1000), Signal::Overrun, 0, 10);
    }
    assert_eq!(o.window("s"), Some(2));
    assert_eq!(start_all(&mut o, 10).len(), 2);
}

#[test]
fn subscriptions_take_turns() {
    let mut o = Outbox::new(limits(256, 1));
    for n in 0..3 {
        o.push(message(&format!("a{n}"), "busy", 0, n), "c", 0);
    }
    o.push(message("b0", "quiet", 0, 9), "c", 0);
    // One at a time each: the quiet subscription's one message goes out beside the busy
    // one's first, not after all of them.
    let subs: Vec<_> = start_all(&mut o, 0).into_iter().map(|s| s.2).collect();
    assert_eq!(subs, ["busy", "quiet"]);
}

#[test]
fn a_hanging_consumer_cannot_take_every_slot() {
    let mut o = Outbox::new(limits(16, 32));
    // Consumer a: 20 subscriptions, 10 messages each, nothing ever answers.
    for s in 0..20 {
        for n in 0..10 {
            o.push(
                message(&format!("a{s}_{n}"), &format!("a{s}"), 0, n),
                "a",
                0,
            );
        }
    }
    let hanging = start_all(&mut o, 0);
    assert_eq!(hanging.len(), 14, "7/8 of 16 at most");
    // Consumer b arrives while all of a's attempts hang: its message starts at once.
    o.push(message("b", "b0", 0, 0), "b", 0);
    let started = start_all(&mut o, 0);
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].2, "b0");
}

#[test]
fn consumers_split_the_global_limit() {
    let mut o = Outbox::new(limits(8, 32));
    for n in 0..20 {
        o.push(message(&format!("a{n}"), "a0", 0, n), "a", 0);
        o.push(message(&format!("b{n}"), "b0", 0, n), "b", 0);
    }
    let started = start_all(&mut o, 0);
    let of = |c: &str| started.iter().filter(|s| s.2.starts_with(c)).count();
    // 7 of 8 are shared (3 each); the last is kept for a consumer that arrives.
    assert_eq!((of("a"), of("b")), (3, 3));
    o.push(message("c", "c0", 0, 0), "c", 0);
    assert_eq!(start_all(&mut o, 0).len(), 1);
}

#[test]
fn far_off_retries_of_others_do_not_shrink_a_busy_subscription_s_share() {
    let mut o = Outbox::new(limits(256, 32));
    for c in 0..255 {
        o.push(
            message(&format!("r{c}"), &format!("s{c}"), 1, 0),
            &format!("c{c}"),
            3_600_000,
        );
    }
    for s in 0..99 {
        o.push(
            message(&format!("t{s}"), &format!("sib{s}"), 1, 0),
            "h",
            3_600_000,
        );
    }
    for n in 0..1000 {
        o.push(message(&format!("h{n}"), "healthy", 0, n), "h", 0);
    }
    let mut started = start_all(&mut o, 0);
    assert_eq!(started.len(), 4, "its whole window");
    // Prompt answers grow its window to the maximum, and the share lets all of it run.
    for round in 1..10 {
        for (key, ..) in started {
            succeed(&mut o, key, round);
        }
        started = start_all(&mut o, round);
    }
    assert_eq!(o.window("healthy"), Some(32));
    assert_eq!(started.len(), 32);
}

#[test]
fn hanging_consumers_leave_the_reserve_to_newcomers() {
    let mut o = Outbox::new(limits(256, 32));
    // Seven consumers whose 40 endpoints each accept and never answer, one after another.
    let mut hanging = Vec::new();
    for c in 0..7 {
        for s in 0..40 {
            for n in 0..10 {
                let sub = format!("{c}_{s}");
                o.push(
                    message(&format!("{sub}_{n}"), &sub, 0, n),
                    &format!("c{c}"),
                    0,
                );
            }
        }
        hanging.push(start_all(&mut o, 0).len());
    }
    // The first two fill the shared seven eighths (the first's windows allow 40 × 4), each
    // later one takes 4 of the reserve.
    assert_eq!(hanging, [160, 64, 4, 4, 4, 4, 4]);
    o.push(message("new", "new", 0, 0), "new", 0);
    assert_eq!(
        start_all(&mut o, 0).len(),
        1,
        "the eighth still starts at once"
    );
}

#[test]
fn an_attempt_end_releases_only_as_many_blocked_lanes_as_it_frees() {
    let mut o = Outbox::new(limits(16, 32));
    for s in 0..500 {
        o.push(message(&format!("m{s}"), &format!("s{s}"), 0, s), "c", 0);
    }
    let started = start_all(&mut o, 0);
    assert_eq!(started.len(), 14);
    succeed(&mut o, started[0].0, 1);
    assert!(
        o.ready.len() <= 2,
        "{} lanes requeued for one free slot",
        o.ready.len()
    );
    assert_eq!(start_all(&mut o, 1).len(), 1);
}

#[test]
fn a_message_larger_than_the_byte_bound_is_shed_alone() {
    let mut o = Outbox::new(Limits {
        max_queue_bytes: 4 * (MESSAGE_OVERHEAD + 2),
        ..limits(1, 1)
    });
    for n in 0..3 {
        assert!(o
            .push(message(&format!("a{n}"), "a", 0, n), "c", 10)
            .is_empty());
    }
    let mut big = message("big", "b", 0, 9);
    big.payload = Payload::new(vec![b'x'; 10_000]);
    let shed = o.push(big, "c", 10);
    assert_eq!(shed.len(), 1);
    assert_eq!(shed[0].0.webhook_id, "big");
    assert_eq!(o.len(), 3);
}

#[test]
fn a_blocked_lane_gets_its_turn_when_its_consumer_frees_a_slot() {
    let mut o = Outbox::new(limits(8, 32));
    // One consumer, whose share is 7 of 8, over ten subscriptions: 7 start, 3 wait.
    for s in 0..10 {
        o.push(message(&format!("m{s}"), &format!("s{s}"), 0, s), "c", 0);
    }
    let started = start_all(&mut o, 0);
    assert_eq!(started.len(), 7);
    succeed(&mut o, started[0].0, 1);
    let next = start_all(&mut o, 1);
    assert_eq!(next.len(), 1);
    assert!(!started.iter().any(|s| s.2 == next[0].2));
}

#[test]
fn overflow_sheds_the_subscription_with_most_waiting_first() {
    let mut o = Outbox::new(Limits {
        max_queue: 5,
        ..limits(1, 1)
    });
    o.push(message("q0", "quiet", 0, 0), "c", 10);
    o.push(message("b0", "busy", 0, 1), "c", 10);
    o.push(message("b1", "busy", 1, 2), "c", 10);
    o.push(message("b2", "busy", 0, 3), "c", 10);
    o.push(message("b3", "busy", 0, 4), "c", 10);
    // The busy subscription (4 waiting against 1) sheds: its waiting retry first…
    let shed = o.push(message("q1", "quiet", 0, 5), "c", 10);
    assert_eq!(shed[0].0.webhook_id, "b1");
    // …then its oldest (3 against 2).
    let shed = o.push(message("q2", "quiet", 0, 6), "c", 10);
    assert_eq!(shed[0].0.webhook_id, "b0");
    // Now quiet has the most waiting (4 with the newcomer against 2).
    let shed = o.push(message("q3", "quiet", 0, 7), "c", 10);
    assert_eq!(shed[0].0.webhook_id, "q0");
    assert_eq!(o.len(), 5);
}

#[test]
fn bytes_count_a_shared_payload_once() {
    let mut o = Outbox::new(limits(256, 32));
    let payload = Payload::new(vec![b'x'; 1000]);
    for s in 0..10 {
        let mut m = message(&format!("m{s}"), &format!("s{s}"), 0, 0);
        m.payload = Rc::clone(&payload);
        o.push(m, "c", 0);
    }
    assert_eq!(o.bytes(), 1000 + 10 * MESSAGE_OVERHEAD);
    for (key, ..) in start_all(&mut o, 0) {
        succeed(&mut o, key, 1);
    }
    assert_eq!((o.bytes(), o.len()), (0, 0));
    assert!(o.lanes.is_empty() && o.consumers.is_empty());
    assert_eq!(payload.held.get(), 0);
}

#[test]
fn the_byte_bound_sheds_like_the_count_bound() {
    let mut o = Outbox::new(Limits {
        max_queue_bytes: 3 * (MESSAGE_OVERHEAD + 100),
        ..limits(1, 1)
    });
    let mut shed = Vec::new();
    for n in 0..10 {
        let mut m = message(&format!("m{n}"), "s", 0, n);
        m.payload = Payload::new(vec![b'x'; 100]);
        shed.extend(o.push(m, "c", 10).into_iter().map(|(m, _)| m));
    }
    assert_eq!(o.len(), 3);
    assert!(o.bytes() <= 3 * (MESSAGE_OVERHEAD + 100));
    let ids: Vec<_> = shed.iter().map(|m| m.webhook_id.as_str()).collect();
    assert_eq!(ids, ["m0", "m1", "m2", "m3", "m4", "m5", "m6"]);
}

#[test]
fn a_queue_full_of_attempts_in_flight_sheds_the_newcomer() {
    let mut o = Outbox::new(Limits {
        max_queue: 2,
        ..limits(256, 32)
    });
    for n in 0..2 {
        assert!(o
            .push(message(&format!("m{n}"), "s", 0, n), "c", 0)
            .is_empty());
    }
    let started = start_all(&mut o, 0);
    assert_eq!(started.len(), 2);
    let shed = o.push(message("m2", "s", 0, 2), "c", 0);
    assert_eq!(shed[0].0.webhook_id, "m2");
    assert_eq!((o.len(), o.in_flight()), (2, 2));
    // Once one waits for a retry, it is the one a newcomer displaces.
    o.finish(started[0].0, Some(100), Signal::Neutral, 0, 1);
    let shed = o.push(message("m3", "s", 0, 3), "c", 0);
    assert_eq!(shed[0].0.webhook_id, "m0");
}

#[test]
fn deferred_attempts_do_not_count() {
    let mut o = Outbox::new(limits(256, 32));
    o.push(message("m", "s", 0, 0), "c", 0);
    let (key, _) = o.next_attempt(0).unwrap();
    o.defer(key, 100);
    assert_eq!(o.in_flight(), 0);
    assert!(o.next_attempt(99).is_none());
    let (_, m) = o.next_attempt(100).unwrap();
    assert_eq!((m.attempts, m.host_waits), (0, 1));
}

#[test]
fn sustained_overflow_keeps_memory_bounded() {
    let mut o = Outbox::new(Limits {
        max_queue: 100,
        ..limits(256, 32)
    });
    for n in 0..20_000u64 {
        o.push(message(&format!("m{n}"), "s", 1, n), "c", 1_000_000 + n);
    }
    assert_eq!(o.len(), 100);
    assert!(
        o.timers.len() <= 2 * o.lanes.len() + 1024,
        "{}",
        o.timers.len()
    );
    assert_eq!(o.next_attempt(u64::MAX).unwrap().1.webhook_id, "m19900");
}

/// Pushes one event of `size` payload bytes fanned out to `subscriptions` of `consumer`'s.
fn fan_out(
    o: &mut Outbox,
    consumer: &str,
    subscriptions: usize,
    size: usize,
    n: u64,
) -> Vec<Message> {
    let payload = Payload::new(vec![b'x'; size]);
    let mut shed = Vec::new();
    for s in 0..subscriptions {
        let mut m = message(
            &format!("{consumer}{n}_{s}"),
            &format!("{consumer}{s}"),
            0,
            n,
        );
        m.payload = Rc::clone(&payload);
        shed.extend(o.push(m, consumer, 10).into_iter().map(|(m, _)| m));
    }
    shed
}

#[test]
fn overflow_sheds_the_consumer_holding_most_bytes_first() {
    // `fan` writes small events fanned out to its 100 subscriptions (2 waiting each); `solo`
    // has one subscription with 30 larger messages waiting: the most waiting of any lane.
    let mut o = Outbox::new(Limits {
        max_queue: 230,
        ..limits(1, 1)
    });
    for n in 0..2 {
        assert!(fan_out(&mut o, "fan", 100, 100, n).is_empty());
    }
    for n in 0..30 {
        assert!(fan_out(&mut o, "solo", 1, 1000, n).is_empty());
    }
    // fan holds 2 × 100 + 200 × 256 bytes, solo 30 × (1000 + 256): fan sheds.
    let shed = fan_out(&mut o, "solo", 1, 1000, 30);
    assert_eq!(shed.len(), 1);
    assert!(shed[0].subscription_id.starts_with("fan"), "{shed:?}");
    // Each shedding takes from whoever holds more then: fan's 256 bytes a message (its
    // payloads stay while 99 others share them), until solo holds more and sheds its own.
    let mut fan_shed = 1;
    for n in 31..60 {
        let fan = o.consumer_bytes("fan");
        let solo = o.consumer_bytes("solo") + 1000 + MESSAGE_OVERHEAD;
        let shed = fan_out(&mut o, "solo", 1, 1000, n);
        let expected = if fan > solo { "fan" } else { "solo" };
        assert!(
            shed[0].subscription_id.starts_with(expected),
            "{n}: {shed:?}"
        );
        fan_shed += usize::from(expected == "fan");
    }
    assert_eq!(o.len(), 230);
    assert!(fan_shed > 5, "{fan_shed}");
}

#[test]
fn shed_messages_say_whose_they_were() {
    let mut o = Outbox::new(Limits {
        max_queue: 1,
        ..limits(1, 1)
    });
    o.push(message("a", "s1", 0, 0), "alice", 10);
    let shed = o.push(message("b", "s2", 0, 1), "bob", 10);
    let (m, consumer) = &shed[0];
    assert_eq!((m.webhook_id.as_str(), &**consumer), ("b", "bob"));
}

#[test]
fn a_consumer_with_everything_in_flight_is_passed_over() {
    let mut o = Outbox::new(Limits {
        max_queue: 4,
        ..limits(256, 32)
    });
    let big = Payload::new(vec![b'x'; 5000]);
    for n in 0..2 {
        let mut m = message(&format!("big{n}"), "heavy", 0, n);
        m.payload = Rc::clone(&big);
        o.push(m, "heavy", 0);
    }
    assert_eq!(start_all(&mut o, 0).len(), 2, "heavy's both in flight");
    o.push(message("l0", "light", 0, 5), "light", 100);
    o.push(message("l1", "light", 1, 6), "light", 100);
    // heavy holds the most bytes but nothing it holds waits: light's retry goes.
    let shed = o.push(message("l2", "light", 0, 7), "light", 100);
    assert_eq!(shed[0].0.webhook_id, "l1");
    assert_eq!(o.len(), 4);
}

#[test]
fn a_consumer_counts_a_payload_it_shares_once() {
    let mut o = Outbox::new(limits(256, 32));
    fan_out(&mut o, "c", 10, 1000, 0);
    assert_eq!(o.consumer_bytes("c"), 1000 + 10 * MESSAGE_OVERHEAD);
    for (key, ..) in start_all(&mut o, 10) {
        succeed(&mut o, key, 11);
    }
    assert_eq!(o.consumer_bytes("c"), 0);
    assert!(o.shares.is_empty() && o.consumers.is_empty());
}

#[test]
fn shedding_indexes_stay_bounded_under_churn() {
    let mut o = Outbox::new(Limits {
        max_queue: 50,
        ..limits(256, 32)
    });
    for n in 0..20_000u64 {
        let consumer = format!("c{}", n % 7);
        o.push(
            message(&format!("m{n}"), &format!("s{}", n % 13), 0, n),
            &consumer,
            10,
        );
        if n % 3 == 0 {
            if let Some((key, _)) = o.next_attempt(10) {
                o.finish(key, Some(10), Signal::Neutral, 10, 10);
            }
        }
    }
    assert_eq!(o.len(), 50);
    assert!(
        o.by_bytes.len() <= 2 * o.consumers.len() + 64,
        "{}",
        o.by_bytes.len()
    );
}

#[test]
fn a_fifo_lane_sends_one_at_a_time_in_detection_order_and_a_failure_holds_the_rest() {
    let mut o = Outbox::new(limits(256, 32));
    // Arrival order differs from detection order (a claim): detection order wins; the same
    // millisecond keeps arrival order.
    for (id, created) in [("m2", 20), ("m0", 10), ("m1", 10), ("m3", 30)] {
        o.push_ordered(message(id, "f", 0, created), "c", 0, true);
    }
    o.push(message("other", "s", 0, 0), "c", 0);
    let started = start_all(&mut o, 0);
    let ids: Vec<_> = started.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(
        ids,
        ["m0", "other"],
        "one at a time; the other lane is not held back"
    );
    // m0 fails: a retry due at 100; m1 (due now) still waits behind it.
    let m0 = started[0].0;
    assert!(o.finish(m0, Some(100), Signal::Overrun, 0, 5).is_none());
    assert!(start_all(&mut o, 50).is_empty());
    let again = start_all(&mut o, 100);
    assert_eq!((again.len(), again[0].1.as_str()), (1, "m0"));
    succeed(&mut o, again[0].0, 101);
    let mut order = Vec::new();
    let mut now = 101;
    while let Some((key, m)) = o.next_attempt(now) {
        order.push(m.webhook_id.clone());
        assert!(o.next_attempt(now).is_none(), "never two in flight");
        succeed(&mut o, key, now);
        now += 1;
    }
    assert_eq!(order, ["m1", "m2", "m3"]);
    assert_eq!(o.len(), 1, "only the other lane's message is left");
}

#[test]
fn an_exhausted_or_shed_fifo_head_lets_the_next_go() {
    let mut o = Outbox::new(Limits {
        max_queue: 3,
        ..limits(256, 32)
    });
    for (n, id) in ["m0", "m1", "m2"].iter().enumerate() {
        o.push_ordered(message(id, "f", 0, n as u64), "c", 0, true);
    }
    let (m0, _) = o
        .next_attempt(0)
        .map(|(k, m)| (k, m.webhook_id.clone()))
        .unwrap();
    // Exhausted (no reschedule): removed, m1 goes next.
    assert_eq!(
        o.finish(m0, None, Signal::Neutral, 0, 1)
            .unwrap()
            .webhook_id,
        "m0"
    );
    let (m1, _) = o
        .next_attempt(1)
        .map(|(k, m)| (k, m.webhook_id.clone()))
        .unwrap();
    o.finish(m1, Some(1_000), Signal::Neutral, 1, 2);
    // A full queue sheds the waiting retry m1 first: m2 is no longer held back by it.
    assert!(o
        .push_ordered(message("m3", "f", 0, 3), "c", 0, true)
        .is_empty());
    let shed = o.push_ordered(message("m4", "f", 0, 4), "c", 0, true);
    let shed: Vec<_> = shed.iter().map(|(m, _)| m.webhook_id.as_str()).collect();
    assert_eq!(shed, ["m1"]);
    let next: Vec<_> = start_all(&mut o, 2).into_iter().map(|s| s.1).collect();
    assert_eq!(next, ["m2"]);
}
