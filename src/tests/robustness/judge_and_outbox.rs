//! Robustness of delivery: judge and the Outbox.

use super::{full_config, run};
use crate::config;
use crate::dispatcher::delivery::{self, Verdict};
use crate::dispatcher::outbox::{Limits, Message, Outbox, Payload};
use crate::dispatcher::pacing::Signal;
use crate::tests::fixtures::{scaled, seeded};
use std::rc::Rc;

#[test]
fn judge_and_outbox_never_panic() {
    let mut rng = seeded(0xde11);
    let config = config::parse(full_config().to_string().as_bytes()).unwrap();
    for i in 0..scaled(20_000) {
        let response = if rng.chance(5) {
            delivery::Response::NotSent(rng.ascii(10))
        } else {
            delivery::Response::Status {
                code: rng.next() as u16,
                retry_after_ms: rng.chance(2).then(|| rng.next() >> rng.below(64)),
            }
        };
        let attempts_made = *rng.pick(&[0, 1, 4, 5, 6, u32::MAX]);
        let now = if rng.chance(4) {
            u64::MAX
        } else {
            rng.next() >> 8
        };
        let unit = *rng.pick(&[
            0.0,
            -1.0,
            1.0,
            7.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ]);
        let verdict = run(
            "delivery::judge",
            i,
            &(&response, attempts_made, now, unit),
            || delivery::judge(&response, attempts_made, now, &config.delivery, unit),
        );
        match (&response, verdict) {
            (delivery::Response::Status { code, .. }, Verdict::Delivered) => {
                assert!((200..300).contains(code))
            }
            (delivery::Response::Status { code, .. }, Verdict::Gone) => assert_eq!(*code, 410),
            (_, Verdict::RetryAt(at)) => assert!(at >= now),
            (_, Verdict::Exhausted) => {
                assert!(attempts_made as usize >= config.delivery.retry_schedule_ms.len())
            }
            other => panic!("{other:?}"),
        }
    }
    // The outbox under a random mix of operations keeps its counts and bounds straight, and
    // loses no message: once time passes and every attempt ends, all the rest get attempted.
    let limits = Limits {
        max_queue: 16,
        max_queue_bytes: 16 * 1024,
        max_in_flight: 6,
        max_in_flight_per_subscription: 3,
    };
    let mut outbox = Outbox::new(limits);
    let mut in_flight: Vec<u64> = Vec::new();
    let mut now = 0u64;
    let mut shared: Option<Rc<Payload>> = None;
    let signals = [Signal::Answered, Signal::Overrun, Signal::Neutral];
    for i in 0..scaled(20_000) {
        run("Outbox", i, &i, || match rng.below(7) {
            0 | 1 => {
                let sub = rng.below(5);
                let message = Message {
                    webhook_id: format!("msg_{i}"),
                    subscription_id: Rc::from(format!("s{sub}")),
                    event_type: Rc::from("a.b"),
                    // Fan-out: messages of one event share its payload.
                    payload: match &shared {
                        Some(payload) if rng.chance(2) => Rc::clone(payload),
                        _ => Payload::new(vec![b'x'; rng.below(2000)]),
                    },
                    attempts: 0,
                    created_ms: now,
                    host_waits: 0,
                    replayed: false,
                };
                let consumer = format!("c{}", sub % 2);
                shared = Some(Rc::clone(&message.payload));
                let _ = outbox.push(message, &consumer, now + rng.below(100) as u64);
            }
            2 => {
                if let Some((key, _)) = outbox.next_attempt(now) {
                    in_flight.push(key);
                }
            }
            3 if !in_flight.is_empty() => {
                let key = in_flight.swap_remove(rng.below(in_flight.len()));
                let again = rng.chance(2).then(|| now + rng.below(50) as u64);
                let signal = signals[rng.below(3)];
                let _ = outbox.finish(key, again, signal, now.saturating_sub(5), now);
            }
            4 if !in_flight.is_empty() => {
                let key = in_flight.swap_remove(rng.below(in_flight.len()));
                outbox.defer(key, now + 1);
            }
            _ => now += rng.below(20) as u64,
        });
        assert_eq!(outbox.in_flight(), in_flight.len(), "iteration {i}");
        assert!(outbox.in_flight() <= limits.max_in_flight, "iteration {i}");
        assert!(outbox.len() <= limits.max_queue, "iteration {i}");
        assert!(outbox.bytes() <= limits.max_queue_bytes, "iteration {i}");
    }
    for key in in_flight.drain(..) {
        let _ = outbox.finish(key, Some(now), Signal::Neutral, now, now);
    }
    let mut left = outbox.len();
    while left > 0 {
        let key = outbox.next_attempt(u64::MAX).map(|(key, _)| key);
        let Some(key) = key else {
            panic!("{left} message(s) never attempted");
        };
        assert!(outbox
            .finish(key, None, Signal::Answered, now, now)
            .is_some());
        left -= 1;
    }
    assert_eq!(outbox.bytes(), 0);
    assert_eq!(outbox.consumer_bytes("c0") + outbox.consumer_bytes("c1"), 0);
}
