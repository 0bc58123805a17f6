//! Plain helpers that know nothing of webhooks: seeded hash maps, random ids, calendar
//! arithmetic, subscriber URL validation and reading the fields of a stored JSON record.
//!
//! May use: nothing else in the crate.

pub mod hashing;
pub mod ids;
pub(crate) mod record;
pub mod time;
pub mod url;
