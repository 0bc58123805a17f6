//! Many small entries kept in a fixed number of store keys (hash buckets), so that the set of
//! keys stays bounded however many entries come and go: shared data has no delete, so a key per
//! entry would leave one empty key behind for every entry ever removed.
//!
//! A bucket's value is lines `<name> <value>`; a name has no space or newline, a value no
//! newline. Lines that do not parse are kept as they are and never match a name. Which bucket a
//! name lands in is [`crate::support::hashing::bucket_key`].

use crate::registry::store::{KvStore, StoreError};

/// One read of a bucket: its bytes and the version they had.
pub struct Bucket {
    bytes: Vec<u8>,
    /// The store version read; a write succeeds only while it is still current.
    pub cas: u32,
}

impl Bucket {
    /// Reads `key` (an absent key reads as an empty bucket).
    pub fn read<S: KvStore + ?Sized>(store: &S, key: &str) -> Bucket {
        let (bytes, cas) = store.get(key).unwrap_or_default();
        Bucket { bytes, cas }
    }

    /// The value of `name`'s entry.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.bytes
            .split(|b| *b == b'\n')
            .find_map(|line| value_of(line, name))
    }

    /// Every line but `name`'s, with `value` as `name`'s new entry when given.
    pub fn with(&self, name: &str, value: Option<&[u8]>) -> Vec<u8> {
        let added = value.map_or(0, |v| name.len() + v.len() + 2);
        let mut out = Vec::with_capacity(self.bytes.len() + added);
        for line in self.bytes.split(|b| *b == b'\n') {
            if !line.is_empty() && value_of(line, name).is_none() {
                out.extend_from_slice(line);
                out.push(b'\n');
            }
        }
        if let Some(value) = value.filter(|_| valid(name)) {
            out.extend_from_slice(name.as_bytes());
            out.push(b' ');
            out.extend_from_slice(value);
            out.push(b'\n');
        }
        out
    }

    /// Writes `bytes` in place of what was read, unless someone wrote the bucket since.
    pub fn replace<S: KvStore + ?Sized>(
        &self,
        store: &S,
        key: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        store.set(key, bytes, Some(self.cas))
    }
}

/// Whether `name` can name an entry (a name with a space could match another entry's line).
fn valid(name: &str) -> bool {
    !name.is_empty() && !name.contains([' ', '\n'])
}

/// The value of `line` when it is `name`'s entry.
fn value_of<'a>(line: &'a [u8], name: &str) -> Option<&'a [u8]> {
    if !valid(name) {
        return None;
    }
    let rest = line.strip_prefix(name.as_bytes())?;
    rest.strip_prefix(b" ")
}

/// What an edit does to an entry.
pub enum Change {
    Put(Vec<u8>),
    Remove,
}

/// An edit of one entry: its current value and the bucket's version in, the change out.
pub type Edit<'a> = dyn FnMut(Option<&[u8]>, u32) -> Result<Change, StoreError> + 'a;

/// Read-modify-write of `name`'s entry in the bucket `key` with compare-and-swap, retried on
/// conflict up to `retries` times. `edit` sees the entry's current value and the bucket's version
/// (each successful write starts from a different one) and may fail, in which case nothing is
/// written. Removing writes the bucket even when the entry is absent: a writer that read the
/// bucket before fails its swap and looks again (see [`crate::registry::attempts::record`]).
pub fn edit(
    store: &dyn KvStore,
    key: &str,
    name: &str,
    retries: usize,
    edit: &mut Edit<'_>,
) -> Result<(), StoreError> {
    for _ in 0..retries {
        let bucket = Bucket::read(store, key);
        let current = bucket.get(name);
        let bytes = match edit(current, bucket.cas)? {
            Change::Remove => bucket.with(name, None),
            Change::Put(value) => bucket.with(name, Some(&value)),
        };
        match bucket.replace(store, key, &bytes) {
            Err(StoreError::Conflict) => continue,
            done => return done,
        }
    }
    Err(StoreError::Failed("too much contention".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::store::MemoryStore;

    #[test]
    fn entries_are_found_by_their_whole_name() {
        let bucket = Bucket {
            bytes: b"ab 1\na 2\ngarbage\n\na b 3\n".to_vec(),
            cas: 1,
        };
        assert_eq!(bucket.get("a"), Some(&b"2"[..]));
        assert_eq!(bucket.get("ab"), Some(&b"1"[..]));
        assert_eq!(bucket.get("garbage"), None);
        assert_eq!(bucket.get("a b"), None, "a name with a space names nothing");
        assert_eq!(bucket.with("a b", Some(b"4")), bucket.with("none", None));
        // `a b 3` is a second line of `a` (value `b 3`): replacing `a` takes both.
        assert_eq!(bucket.with("a", Some(b"9")), b"ab 1\ngarbage\na 9\n");
        assert_eq!(bucket.with("ab", None), b"a 2\ngarbage\na b 3\n");
    }

    #[test]
    fn edits_retry_on_conflict_and_stop_when_told() {
        let store = MemoryStore::default();
        let mut calls = 0;
        let out = edit(&store, "k", "n", 5, &mut |current, _| {
            calls += 1;
            if calls == 1 {
                // Another writer gets in between this edit's read and its write.
                store.set("k", b"other 1\n", None).unwrap();
            }
            assert_eq!(current, None);
            Ok(Change::Put(b"v".to_vec()))
        });
        assert_eq!(out, Ok(()));
        assert_eq!(calls, 2);
        assert_eq!(store.get("k").unwrap().0, b"other 1\nn v\n");
        let before = store.get("k");
        let no = StoreError::Failed("no".into());
        let refused = edit(&store, "k", "n", 5, &mut |_, _| Err(no.clone()));
        assert_eq!(refused, Err(no));
        assert_eq!(store.get("k"), before, "nothing written");
        let gone = edit(&store, "k", "absent", 5, &mut |_, _| Ok(Change::Remove));
        assert_eq!(gone, Ok(()));
        let (value, version) = store.get("k").unwrap();
        assert_eq!(value, before.as_ref().unwrap().0, "same entries");
        assert_ne!(version, before.unwrap().1, "but written");
    }
}
