//! Robustness of QueueMessage.

use super::{mutate_bytes, run, shown, Shown};
use crate::model::queue::QueueMessage;
use crate::tests::fixtures::{scaled, seeded};

const QUEUE_ITERATIONS: usize = 20_000;

#[test]
fn queue_messages_round_trip_and_garbage_is_refused_cleanly() {
    let mut rng = seeded(0x9e_e7e);
    for i in 0..scaled(QUEUE_ITERATIONS) {
        // Names are never empty and never hold a newline: they are event types and ids.
        let mut name = rng.unicode(40).replace('\n', "");
        if name.is_empty() {
            name.push('x');
        }
        let payload = if rng.chance(2) {
            rng.bytes(200)
        } else {
            mutate_bytes(&mut rng, br#"{"type":"a.b","data":{"x":"\n"}}"#)
        };
        let message = match rng.below(3) {
            0 => QueueMessage::Event {
                event_type: name,
                payload,
                audience: match rng.below(3) {
                    0 => crate::model::audience::Target::All,
                    1 => crate::model::audience::Target::Nobody,
                    _ => crate::model::audience::Target::Consumer(format!("c{}", rng.below(1000))),
                },
                trace: None,
            },
            1 => QueueMessage::Test {
                subscription_id: name,
                payload,
            },
            _ => QueueMessage::Replay {
                webhook_id: name,
                kept: payload,
            },
        };
        let encoded = message.encode();
        let decoded = run("QueueMessage round trip", i, &message, || {
            QueueMessage::decode(&encoded)
        });
        assert_eq!(decoded.as_ref(), Ok(&message));

        let garbage = if rng.chance(2) {
            rng.bytes(64)
        } else {
            mutate_bytes(&mut rng, &encoded)
        };
        let decoded = run("QueueMessage::decode", i, &Shown(&garbage), || {
            QueueMessage::decode(&garbage)
        });
        // Whatever decodes is a message that survives its own round trip.
        if let Ok(m) = decoded {
            assert_eq!(
                QueueMessage::decode(&m.encode()),
                Ok(m.clone()),
                "{}",
                shown(&garbage)
            );
        }
    }
}
