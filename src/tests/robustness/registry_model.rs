//! Robustness of registry and attempts over a MemoryStore, with corrupted stored bytes.

use super::{attempt, fuzz_input, run, subscription};
use crate::model::subscription::{Status, Subscription};
use crate::registry::attempts::{self, State};
use crate::registry::store::{self, KvStore, MemoryStore};
use crate::registry::Registry;
use crate::tests::fixtures::{scaled, seeded, Rng};

const REGISTRY_ITERATIONS: usize = 1500;

#[test]
fn registry_follows_a_model_and_survives_corrupted_bytes() {
    let mut rng = seeded(0x4e91);
    let store = MemoryStore::default();
    let registry = Registry::new(&store);
    registry.prepare();
    let ids = ["s1", "s2", "s3", "s4", "s5", "s6"];
    let consumers = ["acme", "beta"];
    let mut model: std::collections::HashMap<String, Subscription> = Default::default();
    let mut corrupted = false;
    for i in 0..scaled(REGISTRY_ITERATIONS) {
        let id = *rng.pick(&ids);
        if i == REGISTRY_ITERATIONS / 2 {
            corrupted = true;
        }
        if corrupted && rng.chance(3) {
            let key = match rng.below(5) {
                0 => store::record_key(id),
                1 => format!("pwh:idx:{}", rng.below(256)),
                2 => format!("pwh:own:{}", rng.below(256)),
                3 => "pwh:active".to_string(),
                _ => "pwh:static".to_string(),
            };
            let seed = store.get(&key).map(|(b, _)| b).unwrap_or_default();
            let bytes = fuzz_input(&mut rng, &[seed, b"acme s1\nbeta s2".to_vec()], true);
            store.set(&key, &bytes, None).unwrap();
        }
        run("registry", i, &id, || match rng.below(5) {
            0 => {
                let consumer = *rng.pick(&consumers);
                let sub = subscription(&mut rng, id, consumer);
                // Ids are random in production: insert is only ever asked for a new one.
                if registry.get(id).is_none() && registry.insert(&sub, Some(4)).is_ok() {
                    model.insert(id.to_string(), sub);
                }
            }
            1 => {
                let events = subscription(&mut rng, id, "x").events;
                let result = registry.update(id, |s| {
                    s.events.clone_from(&events);
                    Ok::<(), ()>(())
                });
                if let Ok(Ok(after)) = result {
                    model.insert(id.to_string(), after);
                }
            }
            2 => {
                if registry.delete(id).is_ok() {
                    model.remove(id);
                }
            }
            3 => {
                let event = *rng.pick(&["order.created", "a.b.c", "x_y.z", ""]);
                let consumer = *rng.pick(&consumers);
                let _ = registry.candidates(event);
                let _ = registry.list_for_consumer(consumer);
                let _ = registry.active_count();
            }
            _ => {
                let log = (0..rng.below(3))
                    .map(|n| attempt(&format!("msg_{n}"), State::Failed))
                    .collect();
                if rng.chance(2) {
                    let key = store::log_key(id);
                    let seed = store.get(&key).unwrap_or_default().0;
                    let bytes = fuzz_input(&mut rng, &[seed], true);
                    store.set(&key, &bytes, None).unwrap();
                }
                let _ = attempts::read(&store, id);
                crate::registry::Registry::new(&store)
                    .record_attempts(id, log)
                    .unwrap();
                assert!(attempts::read(&store, id).len() <= attempts::MAX_ENTRIES);
            }
        });
        if !corrupted {
            // Until the store is corrupted, the registry says exactly what the model says.
            for id in ids {
                assert_eq!(
                    registry.get(id).map(|(s, _)| s),
                    model.get(id).cloned(),
                    "iteration {i}"
                );
            }
            for consumer in consumers {
                let mut listed: Vec<String> = registry
                    .list_for_consumer(consumer)
                    .into_iter()
                    .map(|s| s.id)
                    .collect();
                listed.sort();
                let mut expected: Vec<String> = model
                    .values()
                    .filter(|s| s.consumer == consumer)
                    .map(|s| s.id.clone())
                    .collect();
                expected.sort();
                assert_eq!(listed, expected, "iteration {i}");
            }
            for event in ["order.created", "a.b.c", "x_y.z"] {
                let found = registry.candidates(event);
                for sub in model.values() {
                    if sub
                        .events
                        .iter()
                        .any(|f| subscription::filter_matches(f, event))
                    {
                        assert!(found.contains(&sub.id), "iteration {i}: {event} {sub:?}");
                    }
                }
            }
            let active = model.values().filter(|s| s.is_active()).count() as u64;
            assert_eq!(registry.active_count(), active, "iteration {i}");
        }
    }
}

// A regression the fuzzer found.
#[test]
fn an_extreme_stored_active_count_does_not_overflow() {
    let store = MemoryStore::default();
    let registry = Registry::new(&store);
    registry.prepare();
    store
        .set("pwh:active", b"9223372036854775807", None)
        .unwrap();
    let sub = subscription(&mut Rng(1), "s1", "acme");
    let sub = Subscription {
        status: Status::Active,
        ..sub
    };
    registry.insert(&sub, None).unwrap();
    assert_eq!(registry.active_count(), i64::MAX as u64);
    store
        .set("pwh:active", b"-9223372036854775808", None)
        .unwrap();
    registry.delete("s1").unwrap();
    assert_eq!(registry.active_count(), 0);
}
