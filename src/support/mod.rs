//! Plain helpers that know nothing of webhooks: seeded hash maps, random ids, calendar
//! arithmetic, subscriber URL validation, reading the fields of a stored JSON record and sealing
//! values kept outside the process (an AEAD with rotating keys).
//!
//! May use: nothing else in the crate.

pub mod hashing;
pub mod ids;
pub(crate) mod record;
pub mod sealing;
pub mod time;
pub mod url;
