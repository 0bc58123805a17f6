use super::*;
use crate::model::subscription::{SigningSecret, Status};
use crate::registry::store::{MemoryStore, LIST_BUCKETS, LOG_BUCKETS, RECORD_BUCKETS};

fn sub(id: &str, consumer: &str, events: &[&str]) -> Subscription {
    Subscription {
        id: id.into(),
        consumer: consumer.into(),
        url: "https://example.com/hook".into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        description: String::new(),
        status: Status::Active,
        disabled_reason: None,
        created_at_ms: 1,
        updated_at_ms: 1,
        secrets: vec![SigningSecret {
            secret: "whsec_AAAA".into(),
            expires_at_ms: None,
        }],
        is_static: false,
        headers: Vec::new(),
        privileged: false,
        ordering: Default::default(),
        version: 1,
    }
}

fn registry() -> Registry<MemoryStore> {
    let r = Registry::new(MemoryStore::default());
    r.prepare();
    r
}

#[test]
fn apply_synced_adds_replaces_keeps_the_version_and_skips_no_ops() {
    let r = registry();
    let mut s = sub("s1", "acme", &["a.*"]);
    s.version = 7;
    r.apply_synced(&s).unwrap();
    assert_eq!(r.get("s1").unwrap().0, s);
    assert_eq!(r.candidates("a.b"), vec!["s1".to_string()]);
    // No per-consumer limit here: etcd enforced it.
    for n in 0..3 {
        r.apply_synced(&sub(&format!("x{n}"), "acme", &["z"]))
            .unwrap();
    }
    assert_eq!(r.ids_for_consumer("acme").len(), 4);
    let generation = r.generation();
    r.apply_synced(&s).unwrap();
    assert_eq!(
        r.generation(),
        generation,
        "an unchanged record is not written"
    );
    s.events = vec!["b.c".into()];
    s.status = Status::Disabled;
    s.version = 8;
    r.apply_synced(&s).unwrap();
    assert_eq!(r.get("s1").unwrap().0.version, 8);
    assert!(r.candidates("a.b").is_empty());
    assert_eq!(r.candidates("b.c"), vec!["s1".to_string()]);
    assert_eq!(r.active_count(), 3);
}

/// A first attempt that succeeded.
fn delivered(webhook_id: &str, event_type: &str) -> crate::registry::attempts::Attempt {
    crate::registry::attempts::Attempt {
        webhook_id: webhook_id.into(),
        event_type: event_type.into(),
        attempt: 1,
        timestamp: "2026-11-27T10:00:00.000Z".into(),
        response_status: Some(200),
        error: None,
        duration_ms: 3,
        next_retry_at: None,
        state: crate::registry::attempts::State::Succeeded,
    }
}

/// How many times each of `keys` was written: MemoryStore's version grows by one per write.
fn writes<'a>(store: &MemoryStore, keys: impl IntoIterator<Item = &'a String>) -> Vec<u32> {
    let version = |key: &String| store.get(key).map_or(0, |(_, version)| version);
    keys.into_iter().map(version).collect()
}

/// A registry over `store`, its buckets made.
fn prepared(store: &MemoryStore) -> Registry<&MemoryStore> {
    let r = Registry::new(store);
    r.prepare();
    r
}

/// `n` records of one event type spread over `consumers`, as etcd holds them (version 3).
fn synced(n: usize, consumers: usize) -> Vec<Subscription> {
    (0..n)
        .map(|i| {
            let mut s = sub(&format!("s{i}"), &format!("c{}", i % consumers), &["o.new"]);
            s.version = 3;
            s
        })
        .collect()
}

#[test]
fn a_synced_batch_writes_each_list_bucket_once() {
    let store = MemoryStore::default();
    let r = prepared(&store);
    let subs = synced(500, 5);
    let lists: HashSet<String> = subs
        .iter()
        .map(|s| owner_key(&s.consumer))
        .chain([index_key("o.new")])
        .collect();
    let before = writes(&store, &lists);
    r.apply_synced_batch(subs.clone());
    let once: Vec<u32> = before.iter().map(|v| v + 1).collect();
    assert_eq!(writes(&store, &lists), once, "one write per list bucket");
    let ids: Vec<&str> = subs.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        r.candidates("o.new"),
        ids,
        "all listed, in the answer's order"
    );
    for s in &subs {
        assert_eq!(
            r.get(&s.id).unwrap().0,
            *s,
            "stored as etcd has it, version kept"
        );
    }
    assert_eq!(r.ids_for_consumer("c0").len(), 100);
    assert_eq!(r.active_count(), 500);
}

#[test]
fn a_synced_batch_ends_as_applying_each_record_does() {
    let (one, batch) = (registry(), registry());
    let mut first = synced(6, 2);
    first[5].status = Status::Disabled;
    for s in &first {
        one.apply_synced(s).unwrap();
    }
    batch.apply_synced_batch(first.clone());
    // Unchanged, changed (filters, status, version moved by etcd) and new records.
    let mut second = first.clone();
    second[1].events = vec!["o.old".into(), "x.*".into()];
    second[1].version = 4;
    second[2].status = Status::Disabled;
    second[5].status = Status::Active;
    second.push(sub("s9", "c9", &["x.y"]));
    for s in &second {
        one.apply_synced(s).unwrap();
    }
    batch.apply_synced_batch(second.clone());
    for r in [&one, &batch] {
        for s in &second {
            assert_eq!(r.get(&s.id).unwrap().0, *s);
        }
        let mut found = r.candidates("o.new");
        found.sort();
        assert_eq!(found, ["s0", "s2", "s3", "s4", "s5"]);
        assert_eq!(
            r.candidates("x.y"),
            ["s9", "s1"],
            "x.y's index first, then x.*'s"
        );
        assert_eq!(r.active_count(), 6);
        assert_eq!(r.ids_for_consumer("c1").len(), 3);
    }
}

#[test]
fn an_unchanged_synced_batch_writes_nothing() {
    let store = MemoryStore::default();
    let r = prepared(&store);
    r.apply_synced_batch(synced(50, 3));
    let before = store.snapshot();
    r.apply_synced_batch(synced(50, 3));
    r.apply_synced_batch(Vec::new());
    r.delete_batch(&[]);
    assert!(store.snapshot() == before, "no key written");
}

#[test]
fn a_delete_batch_takes_every_line_out_with_one_write_per_bucket() {
    let store = MemoryStore::default();
    let r = prepared(&store);
    let subs = synced(300, 3);
    r.apply_synced_batch(subs.clone());
    let log = delivered("msg_1", "o.new");
    crate::registry::Registry::new(&store)
        .record_attempts("s0", vec![log])
        .unwrap();
    let lists = [
        owner_key("c0"),
        owner_key("c1"),
        owner_key("c2"),
        index_key("o.new"),
    ];
    let before = writes(&store, &lists);
    // Every third (all of c0's), and an id etcd listed that this cache never had.
    let mut gone: Vec<String> = subs.iter().step_by(3).map(|s| s.id.clone()).collect();
    gone.push("never_cached".into());
    r.delete_batch(&gone);
    let after = writes(&store, &lists);
    let expected: Vec<u32> = before
        .iter()
        .zip([1, 0, 0, 1])
        .map(|(v, n)| v + n)
        .collect();
    assert_eq!(
        after, expected,
        "one write per bucket that listed a deleted id"
    );
    assert!(gone.iter().all(|id| r.get(id).is_none()));
    assert!(
        crate::registry::attempts::read(&store, "s0").is_empty(),
        "log cleared"
    );
    assert_eq!(r.candidates("o.new").len(), 200);
    assert!(r.candidates("o.new").iter().all(|id| !gone.contains(id)));
    assert!(r.ids_for_consumer("c0").is_empty());
    assert_eq!(r.ids_for_consumer("c1").len(), 100);
    assert_eq!(r.active_count(), 200);
}

/// Applies `batch` through a store where, right after the batch's first read of `key`,
/// another worker sharing the store runs `worker` (between this writer's read and its
/// compare-and-swap); the registry of the shared store afterwards.
fn batch_raced_by(
    key: String,
    worker: impl FnOnce(&Registry<std::rc::Rc<MemoryStore>>) + 'static,
    batch: Vec<Subscription>,
) -> Registry<std::rc::Rc<MemoryStore>> {
    let shared = std::rc::Rc::new(MemoryStore::default());
    let other = Registry::new(std::rc::Rc::clone(&shared));
    other.prepare();
    let store = AfterRead {
        inner: std::rc::Rc::clone(&shared),
        key,
        hook: std::cell::RefCell::new(Some(Box::new(move || worker(&other)))),
    };
    Registry::new(&store).apply_synced_batch(batch);
    assert!(store.hook.borrow().is_none(), "the race happened");
    Registry::new(shared)
}

#[test]
fn a_synced_batch_racing_a_worker_loses_neither_listing() {
    // A worker's API create lands between the batch's read of the index bucket and its
    // compare-and-swap.
    let create = |w: &Registry<_>| w.insert(&sub("api", "c0", &["o.new"]), None).unwrap();
    let r = batch_raced_by(index_key("o.new"), create, synced(20, 2));
    let mut found = r.candidates("o.new");
    found.sort();
    let mut wanted: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    wanted.push("api".into());
    wanted.sort();
    assert_eq!(found, wanted);
    assert_eq!(r.ids_for_consumer("c0").len(), 11);
    assert_eq!(r.active_count(), 21);
}

#[test]
fn a_record_synced_by_a_worker_and_the_dispatcher_at_once_is_counted_once() {
    // The worker applies its API write of s4 (as etcd confirmed it) right after the
    // dispatcher's batch found no record for s4.
    let subs = synced(10, 2);
    let raced = subs[4].clone();
    let apply = move |w: &Registry<_>| w.apply_synced(&raced).unwrap();
    let r = batch_raced_by(record_key("s4"), apply, subs.clone());
    assert_eq!(r.active_count(), 10, "s4 counted once");
    assert_eq!(r.candidates("o.new").len(), 10, "s4 listed once");
    assert_eq!(r.ids_for_consumer("c0").len(), 5);
    assert_eq!(r.get("s4").unwrap().0, subs[4]);
}

/// A store shared by several registries (as workers share Envoy's shared data) that runs
/// `after_set` once, right after the first write of `key`: another worker acting between
/// two steps of this one.
struct Interleaved {
    inner: std::rc::Rc<MemoryStore>,
    key: String,
    after_set: std::cell::RefCell<Option<Box<dyn FnOnce()>>>,
}

impl KvStore for Interleaved {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.inner.set(key, value, cas)?;
        if key == self.key {
            let hook = self.after_set.borrow_mut().take();
            if let Some(hook) = hook {
                hook();
            }
        }
        Ok(())
    }
}

#[test]
fn racing_updates_leave_the_index_following_the_newest_record() {
    let shared = std::rc::Rc::new(MemoryStore::default());
    let other = std::rc::Rc::clone(&shared);
    let second = move || {
        // Worker 2 changes the subscription back while worker 1 is between its record
        // write and its index update.
        let w2 = Registry::new(Interleaved {
            inner: other,
            key: String::new(),
            after_set: std::cell::RefCell::new(None),
        });
        w2.update("s1", |s| {
            s.events = vec!["a".into()];
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
    };
    let store = Interleaved {
        inner: shared,
        key: record_key("s1"),
        after_set: std::cell::RefCell::new(None),
    };
    let w1 = Registry::new(&store);
    w1.prepare();
    w1.insert(&sub("s1", "c", &["a"]), None).unwrap();
    *store.after_set.borrow_mut() = Some(Box::new(second));
    w1.update("s1", |s| {
        s.events = vec!["b".into()];
        Ok::<(), ()>(())
    })
    .unwrap()
    .unwrap();
    assert_eq!(w1.get("s1").unwrap().0.events, ["a"]);
    assert_eq!(w1.candidates("a"), ["s1"], "the stored record lists a");
    assert!(w1.candidates("b").is_empty());
}

#[test]
fn candidates_come_only_from_matching_indexes() {
    let r = registry();
    r.insert(&sub("s1", "c", &["order.created"]), None).unwrap();
    r.insert(&sub("s2", "c", &["order.*", "user.*"]), None)
        .unwrap();
    r.insert(&sub("s3", "c", &["*"]), None).unwrap();
    r.insert(&sub("s4", "c", &["user.deleted"]), None).unwrap();
    assert_eq!(r.candidates("order.created"), ["s1", "s2", "s3"]);
    assert_eq!(r.candidates("user.deleted"), ["s4", "s2", "s3"]);
    assert_eq!(r.candidates("invoice.paid"), ["s3"]);
}

#[test]
fn update_reindexes_and_bumps_version_and_generation() {
    let r = registry();
    r.insert(&sub("s1", "c", &["order.created"]), None).unwrap();
    let gen = r.generation();
    let updated = r
        .update("s1", |s| {
            s.events = vec!["user.*".into()];
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
    assert_eq!(updated.version, 2);
    assert!(r.candidates("order.created").is_empty());
    assert_eq!(r.candidates("user.created"), ["s1"]);
    assert_ne!(r.generation(), gen);
}

#[test]
fn refused_update_writes_nothing() {
    let r = registry();
    r.insert(&sub("s1", "c", &["a"]), None).unwrap();
    let out = r.update("s1", |s| {
        s.url = "changed".into();
        Err("no")
    });
    assert_eq!(out, Ok(Err("no")));
    assert_eq!(r.get("s1").unwrap().0.url, "https://example.com/hook");
}

#[test]
fn delete_removes_record_and_index_entries() {
    let r = registry();
    r.insert(&sub("s1", "c", &["a"]), None).unwrap();
    r.delete("s1").unwrap();
    assert!(r.get("s1").is_none());
    assert!(r.candidates("a").is_empty());
    assert!(r.list_for_consumer("c").is_empty());
    assert_eq!(r.delete("s1"), Err(RegistryError::NotFound));
}

#[test]
fn consumer_limit_is_enforced() {
    let r = registry();
    r.insert(&sub("s1", "c", &["a"]), Some(2)).unwrap();
    r.insert(&sub("s2", "c", &["a"]), Some(2)).unwrap();
    assert_eq!(
        r.insert(&sub("s3", "c", &["a"]), Some(2)),
        Err(RegistryError::LimitReached(2))
    );
    assert!(r.get("s3").is_none());
    r.insert(&sub("s4", "other", &["a"]), Some(2)).unwrap();
    assert_eq!(r.list_for_consumer("c").len(), 2);
    assert_eq!(r.active_count(), 3);
}

fn static_sub(id: &str, url: &str) -> StaticSubscription {
    StaticSubscription {
        id: id.into(),
        consumer: "ops".into(),
        url: url.into(),
        events: vec!["*".into()],
        secret: Some("whsec_AAAA".into()),
        signing_key: None,
        description: String::new(),
        privileged: false,
        ordering: Default::default(),
    }
}

#[test]
fn static_sync_adds_keeps_rewrites_and_removes() {
    let r = registry();
    r.sync_static(
        &[
            static_sub("a", "https://x/1"),
            static_sub("b", "https://x/2"),
        ],
        5,
    );
    assert_eq!(r.candidates("any.thing"), ["a", "b"]);
    assert_eq!(r.store.get(STATIC_KEY).unwrap().0, b"a\nb");
    r.update("a", |s| {
        s.status = Status::Disabled;
        Ok::<(), ()>(())
    })
    .unwrap()
    .unwrap();
    // Unchanged configuration keeps the disabled state; a changed url re-activates.
    r.sync_static(
        &[
            static_sub("a", "https://x/1"),
            static_sub("b", "https://x/2"),
        ],
        6,
    );
    assert_eq!(r.get("a").unwrap().0.status, Status::Disabled);
    r.sync_static(&[static_sub("a", "https://x/new")], 7);
    let (a, _) = r.get("a").unwrap();
    assert_eq!(
        (a.status, a.url.as_str(), a.created_at_ms),
        (Status::Active, "https://x/new", 5)
    );
    assert!(r.get("b").is_none());
    assert_eq!(r.candidates("any.thing"), ["a"]);
    assert_eq!(r.store.get(STATIC_KEY).unwrap().0, b"a");
    assert_eq!(r.active_count(), 1);
}

#[test]
fn static_sync_follows_privileged() {
    let r = registry();
    r.sync_static(&[static_sub("a", "https://x/1")], 5);
    assert!(!r.get("a").unwrap().0.privileged);
    let privileged = StaticSubscription {
        privileged: true,
        ordering: Default::default(),
        ..static_sub("a", "https://x/1")
    };
    r.sync_static(std::slice::from_ref(&privileged), 6);
    assert!(r.get("a").unwrap().0.privileged);
    // Records from before the field read as not privileged.
    let (bytes, _) = r.get_raw("a").unwrap();
    let text = String::from_utf8(bytes)
        .unwrap()
        .replace(",\"privileged\":true", "");
    let old: Subscription = serde_json::from_str(&text).unwrap();
    assert!(!old.privileged);
}

/// A store whose writes to index buckets fail, to check that nothing is half-written.
struct FailingIndex(MemoryStore);

impl KvStore for FailingIndex {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.0.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        if key.starts_with("pwh:idx:") && !value.is_empty() {
            return Err(StoreError::Failed("disk on fire".into()));
        }
        self.0.set(key, value, cas)
    }
}

#[test]
fn a_failed_insert_leaves_nothing_behind() {
    let r = Registry::new(FailingIndex(MemoryStore::default()));
    r.prepare();
    let out = r.insert(&sub("s1", "c", &["a"]), None);
    assert!(matches!(out, Err(RegistryError::Unavailable(_))));
    assert!(r.get("s1").is_none());
    assert!(r.ids_for_consumer("c").is_empty());
    assert_eq!(r.active_count(), 0);
}

/// Every key and the bytes of all values: what shared data holds.
fn footprint(store: &MemoryStore) -> (usize, usize) {
    let all = store.snapshot();
    (all.len(), all.values().map(|(v, _)| v.len()).sum())
}

#[test]
fn create_delete_churn_leaves_the_keys_as_they_were() {
    let store = MemoryStore::default();
    let r = Registry::new(&store);
    r.prepare();
    r.insert(&sub("keeper", "c", &["a.*"]), None).unwrap();
    let attempt = |n: u32| delivered(&format!("msg_{n}"), "a.b");
    crate::registry::Registry::new(&store)
        .record_attempts("keeper", vec![attempt(0)])
        .unwrap();
    let before = footprint(&store);
    let buckets = 2 * LIST_BUCKETS + RECORD_BUCKETS + LOG_BUCKETS;
    // The buckets, the generation, the active count, the API subscription count and the
    // portal's two keys.
    assert_eq!(before.0, buckets as usize + 5);
    for n in 0..10_000 {
        let id = format!("sub_{n:024}");
        let consumer = format!("consumer{}", n % 7);
        r.insert(&sub(&id, &consumer, &["a.b", "*"]), Some(3))
            .unwrap();
        crate::registry::Registry::new(&store)
            .record_attempts(&id, vec![attempt(n)])
            .unwrap();
        assert_eq!(crate::registry::attempts::read(&store, &id).len(), 1);
        r.delete(&id).unwrap();
        assert!(crate::registry::attempts::read(&store, &id).is_empty());
    }
    assert_eq!(footprint(&store), before, "same keys, same bytes");
    assert_eq!(r.candidates("a.b"), ["keeper"]);
    assert_eq!(crate::registry::attempts::read(&store, "keeper").len(), 1);
    assert_eq!(r.active_count(), 1);
}

#[test]
fn a_records_version_moves_exactly_when_it_is_written() {
    let r = registry();
    // Two records that share a bucket.
    let first = "s0".to_string();
    let second = (1..)
        .map(|n| format!("s{n}"))
        .find(|id| record_key(id) == record_key(&first))
        .unwrap();
    r.insert(&sub(&first, "c", &["a"]), None).unwrap();
    r.insert(&sub(&second, "c", &["a"]), None).unwrap();
    let (bytes, version) = r.get_raw(&first).unwrap();
    assert_eq!(
        bytes,
        serde_json::to_vec(&sub(&first, "c", &["a"])).unwrap()
    );
    r.update(&second, |s| {
        s.url = "https://example.com/other".into();
        Ok::<(), ()>(())
    })
    .unwrap()
    .unwrap();
    r.delete(&second).unwrap();
    assert_eq!(r.get_raw(&first).unwrap().1, version, "neighbours' writes");
    r.update(&first, |_| Ok::<(), ()>(())).unwrap().unwrap();
    let updated = r.get_raw(&first).unwrap().1;
    assert_ne!(updated, version);
    // Deleted and made again with the same id and the same version field (a static
    // subscription removed from the configuration and added back): a new version.
    r.delete(&first).unwrap();
    r.insert(&sub(&first, "c", &["a"]), None).unwrap();
    assert!(![version, updated].contains(&r.get_raw(&first).unwrap().1));
    assert_eq!(r.get(&first).unwrap().0.version, 1);
}

/// A shared store that runs `hook` once, right after the first read of `key`: another
/// worker writing between this one's read of a bucket and its compare-and-swap.
struct AfterRead {
    inner: std::rc::Rc<MemoryStore>,
    key: String,
    hook: std::cell::RefCell<Option<Box<dyn FnOnce()>>>,
}

impl KvStore for AfterRead {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let value = self.inner.get(key);
        if key == self.key {
            let hook = self.hook.borrow_mut().take();
            if let Some(hook) = hook {
                hook();
            }
        }
        value
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        self.inner.set(key, value, cas)
    }
}

/// An id other than `id` whose record shares `id`'s bucket.
fn neighbour_of(id: &str, prefix: &str) -> String {
    (1..)
        .map(|n| format!("{prefix}{n}"))
        .find(|other| record_key(other) == record_key(id))
        .unwrap()
}

#[test]
fn racing_writers_in_one_record_bucket_lose_nothing() {
    let shared = std::rc::Rc::new(MemoryStore::default());
    let plain = Registry::new(std::rc::Rc::clone(&shared));
    plain.prepare();
    plain.insert(&sub("s0", "c", &["a"]), None).unwrap();
    let racing = |step: &dyn Fn(&Registry<&AfterRead>), neighbour: String| {
        let other = std::rc::Rc::clone(&shared);
        let n = neighbour.clone();
        let store = AfterRead {
            inner: std::rc::Rc::clone(&shared),
            key: record_key("s0"),
            hook: std::cell::RefCell::new(Some(Box::new(move || {
                Registry::new(other)
                    .insert(&sub(&n, "d", &["a"]), None)
                    .unwrap();
            }))),
        };
        step(&Registry::new(&store));
        assert!(store.hook.borrow().is_none(), "the race happened");
        assert_eq!(plain.get(&neighbour).unwrap().0.consumer, "d");
    };
    racing(
        &|w1| {
            w1.update("s0", |s| {
                s.url = "https://example.com/new".into();
                Ok::<(), ()>(())
            })
            .unwrap()
            .unwrap();
        },
        neighbour_of("s0", "n"),
    );
    assert_eq!(plain.get("s0").unwrap().0.url, "https://example.com/new");
    racing(
        &|w1| drop(w1.delete("s0").unwrap()),
        neighbour_of("s0", "m"),
    );
    assert!(plain.get("s0").is_none());
    let mut found = plain.candidates("a");
    found.sort();
    assert_eq!(found, [neighbour_of("s0", "m"), neighbour_of("s0", "n")]);
}

#[test]
fn a_delete_racing_a_log_write_leaves_no_log() {
    let shared = std::rc::Rc::new(MemoryStore::default());
    let api = Registry::new(std::rc::Rc::clone(&shared));
    api.prepare();
    api.insert(&sub("s0", "c", &["a"]), None).unwrap();
    // The dispatcher has read the log bucket and found the record; the API deletes the
    // subscription before the dispatcher writes the log.
    let dispatcher = AfterRead {
        inner: std::rc::Rc::clone(&shared),
        key: record_key("s0"),
        hook: std::cell::RefCell::new(Some(Box::new(move || {
            api.delete("s0").unwrap();
        }))),
    };
    let entry = delivered("msg_1", "a");
    crate::registry::Registry::new(&dispatcher)
        .record_attempts("s0", vec![entry])
        .unwrap();
    assert!(dispatcher.hook.borrow().is_none(), "the race happened");
    assert!(crate::registry::attempts::read(&*shared, "s0").is_empty());
    assert_eq!(
        shared
            .get(&crate::registry::store::log_key("s0"))
            .unwrap()
            .0,
        b""
    );
}

#[test]
fn the_registry_limit_counts_api_subscriptions_only_and_deletes_free_room() {
    let r = registry();
    r.sync_static(&[static_sub("audit", "https://example.com/a")], 1);
    r.insert_within(&sub("s1", "c", &["a"]), None, Some(2))
        .unwrap();
    r.insert_within(&sub("s2", "d", &["a"]), None, Some(2))
        .unwrap();
    assert_eq!(
        r.insert_within(&sub("s3", "e", &["a"]), None, Some(2)),
        Err(RegistryError::RegistryFull(2))
    );
    assert!(r.get("s3").is_none());
    assert_eq!(r.count(), 2, "the static subscription is not counted");
    // The per-consumer limit refusing gives the place back.
    assert_eq!(
        r.insert_within(&sub("s4", "c", &["a"]), Some(1), Some(3)),
        Err(RegistryError::LimitReached(1))
    );
    assert_eq!(r.count(), 2);
    r.delete("s1").unwrap();
    r.delete_batch(&["s2".to_string()]);
    assert_eq!(r.count(), 0);
    // Records synced from etcd (fleet mode) are counted as they come and go.
    r.apply_synced_batch(vec![sub("s5", "c", &["a"]), sub("s6", "c", &["a"])]);
    assert_eq!(r.count(), 2);
    r.sync_static(&[], 2);
    assert_eq!(r.count(), 2);
}

#[test]
fn a_failed_insert_gives_its_place_back() {
    let r = Registry::new(FailingIndex(MemoryStore::default()));
    r.prepare();
    let out = r.insert_within(&sub("s1", "c", &["a"]), None, Some(1));
    assert!(matches!(out, Err(RegistryError::Unavailable(_))));
    assert_eq!(r.count(), 0);
}

/// Two workers at the last place: the one whose compare-and-swap loses reads the count again
/// and is refused, so the limit is never passed.
#[test]
fn racing_creates_at_the_last_place_never_pass_the_registry_limit() {
    let shared = std::rc::Rc::new(MemoryStore::default());
    let plain = Registry::new(std::rc::Rc::clone(&shared));
    plain.prepare();
    plain
        .insert_within(&sub("s0", "c", &["a"]), None, Some(2))
        .unwrap();
    let other = std::rc::Rc::clone(&shared);
    let store = AfterRead {
        inner: std::rc::Rc::clone(&shared),
        key: crate::registry::store::COUNT_KEY.to_string(),
        hook: std::cell::RefCell::new(Some(Box::new(move || {
            Registry::new(other)
                .insert_within(&sub("s1", "d", &["a"]), None, Some(2))
                .unwrap();
        }))),
    };
    let late = Registry::new(&store).insert_within(&sub("s2", "e", &["a"]), None, Some(2));
    assert!(store.hook.borrow().is_none(), "the race happened");
    assert_eq!(late, Err(RegistryError::RegistryFull(2)));
    assert_eq!(plain.count(), 2);
    assert!(plain.get("s1").is_some() && plain.get("s2").is_none());
}
