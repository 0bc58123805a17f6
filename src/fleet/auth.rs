//! etcd's own authentication over its gateway (`fleet.username`, `fleet.password`): the token
//! conversation, pure. etcd's gateway does not authenticate a client by its certificate's name,
//! so a replica asks `/v3/auth/authenticate` for a token and every call carries it in its
//! `Authorization` header.
//!
//! Only the dispatcher authenticates ([`Auth`]): it alone holds a conversation with a password,
//! one at a time and with a backoff, so a wrong password costs etcd one password check per
//! backoff step, not one per API write. It publishes its token in shared data ([`publish`]);
//! the workers' calls (API writes, retries, log reads) carry that one ([`shared_pass`]).
//!
//! etcd rejects a token it no longer knows (restarted, expired, revoked) with gRPC code 16
//! (`invalid auth token`, HTTP 401), and a call without one with code 3 (`user name is empty`,
//! HTTP 400), checked against etcd 3.4 by `devtools/tests/fleet_auth.rs`. The dispatcher then
//! authenticates again and sends the call once more; a worker sends it again if the dispatcher
//! already has a newer token, else clears the shared one ([`after_rejection`]) so that the
//! dispatcher authenticates at its next tick, and the call fails as with etcd down. While there
//! is no token, calls are not sent and fail as with etcd down.

use super::etcd::{self, Error, Request};
use crate::registry::store::{KvStore, FLEET_PASS_KEY};

/// What a call carries to etcd.
#[derive(Clone, PartialEq, Eq)]
pub enum Pass {
    /// No token (yet, or etcd rejected the last one): calls are not sent.
    None,
    /// etcd said its authentication is off: calls go without a token (until one is rejected).
    Open,
    /// Calls carry this token in `Authorization`.
    Token(String),
}

impl Pass {
    /// Whether a call may be sent with it.
    pub fn usable(&self) -> bool {
        *self != Pass::None
    }

    /// The `Authorization` header's value.
    pub fn header(&self) -> Option<&str> {
        match self {
            Pass::Token(token) => Some(token),
            _ => None,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Pass::None => Vec::new(),
            Pass::Open => b"open".to_vec(),
            Pass::Token(token) => format!("token {token}").into_bytes(),
        }
    }

    fn decode(bytes: &[u8]) -> Pass {
        match bytes {
            b"open" => Pass::Open,
            _ => match bytes.strip_prefix(b"token ").map(std::str::from_utf8) {
                Some(Ok(token)) if !token.is_empty() => Pass::Token(token.to_string()),
                _ => Pass::None,
            },
        }
    }
}

/// Never shows a token.
impl std::fmt::Debug for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pass::None => "None",
            Pass::Open => "Open",
            Pass::Token(_) => "Token(..)",
        })
    }
}

/// Whether an answer with this status may be a rejection (only then is its body read).
pub fn may_be_rejection(status: Option<&str>) -> bool {
    matches!(status, Some("400" | "401"))
}

/// Whether etcd refused a call for the pass it carried (then a fresh token may do).
pub fn rejected(status: Option<&str>, body: &[u8]) -> bool {
    if !may_be_rejection(status) {
        return false;
    }
    match etcd::refusal(body) {
        Some(Error::Etcd { code: 16, .. }) => true,
        Some(Error::Etcd { code: 3, message }) => {
            message.contains("user name is empty") || message.contains("auth store is old")
        }
        _ => false,
    }
}

// ---- The dispatcher's token ------------------------------------------------------------------

/// The first wait after a failed authentication; it doubles up to [`MAX_BACKOFF_MS`].
const FIRST_BACKOFF_MS: u64 = 250;
/// The longest wait between authentications (a wrong password, etcd down).
pub const MAX_BACKOFF_MS: u64 = 5_000;

/// A call in flight that etcd may reject for its pass.
struct Sent {
    /// Envoy's token of this send.
    token: u32,
    /// The caller's id of the call: Envoy's token of its first send.
    call: u32,
    request: Request,
    pass: Pass,
    retried: bool,
}

/// What became of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not a call of this session (a delivery's).
    NotOurs,
    /// The answer of call `.0` (the caller's id), for the caller to read.
    Answer(u32),
    /// etcd rejected the call's pass: it goes again once a fresh one is there.
    Held,
}

/// How an authentication ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticated {
    /// A token (or etcd's authentication is off): send the held calls again ([`Auth::take_held`]).
    Ready,
    /// No token: why (etcd's refusal, for the log only), and the caller's ids of the held
    /// calls, which have failed.
    Failed { why: String, failed: Vec<u32> },
}

/// The dispatcher's side: its token, its authentication, and the calls it may send again once.
pub struct Auth {
    name: String,
    password: String,
    pass: Pass,
    authenticating: bool,
    next_try_ms: u64,
    failures: u32,
    sent: Vec<Sent>,
    held: Vec<Sent>,
}

impl Auth {
    pub fn new(name: &str, password: &str) -> Auth {
        Auth {
            name: name.to_string(),
            password: password.to_string(),
            pass: Pass::None,
            authenticating: false,
            next_try_ms: 0,
            failures: 0,
            sent: Vec::new(),
            held: Vec::new(),
        }
    }

    pub fn pass(&self) -> &Pass {
        &self.pass
    }

    /// The authenticate call when one is due: no token, none in flight, the backoff over.
    pub fn due(&mut self, now: u64) -> Option<Request> {
        if self.pass.usable() || self.authenticating || now < self.next_try_ms {
            return None;
        }
        self.authenticating = true;
        Some(etcd::authenticate(&self.name, &self.password))
    }

    /// Envoy did not start the authenticate call.
    pub fn on_refused(&mut self, now: u64) -> Vec<u32> {
        self.authenticating = false;
        self.back_off(now);
        self.fail_held()
    }

    /// The authenticate call's answer (`status` None: no answer at all).
    pub fn on_authenticated(
        &mut self,
        status: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Authenticated {
        self.authenticating = false;
        match self.read_token(status, body) {
            Ok(pass) => {
                self.pass = pass;
                self.failures = 0;
                Authenticated::Ready
            }
            Err(why) => {
                self.back_off(now);
                let failed = self.fail_held();
                Authenticated::Failed { why, failed }
            }
        }
    }

    fn read_token(&self, status: Option<&str>, body: &[u8]) -> Result<Pass, String> {
        let Some(status) = status else {
            return Err("etcd did not answer (timeout or connection reset)".into());
        };
        match etcd::parse_authenticate(body) {
            Ok(token) if status == "200" => Ok(Pass::Token(token)),
            // 9: FailedPrecondition, "authentication is not enabled".
            Err(Error::Etcd { code: 9, .. }) => Ok(Pass::Open),
            Err(Error::Etcd { code: 3, message }) => Err(format!(
                "etcd refused fleet.username {:?} and its password ({message})",
                self.name
            )),
            Err(e) => Err(format!("status {status}: {e}")),
            Ok(_) => Err(format!("status {status}")),
        }
    }

    fn back_off(&mut self, now: u64) {
        let wait = FIRST_BACKOFF_MS
            .saturating_mul(1 << self.failures.min(16))
            .min(MAX_BACKOFF_MS);
        self.failures = self.failures.saturating_add(1);
        self.next_try_ms = now.saturating_add(wait);
    }

    /// The caller's ids of the held calls, which have failed now.
    fn fail_held(&mut self) -> Vec<u32> {
        self.held.drain(..).map(|s| s.call).collect()
    }

    /// The held calls to send again, each once, with the fresh pass (when there is one).
    pub fn take_held(&mut self) -> Vec<(u32, Request)> {
        if !self.pass.usable() {
            return Vec::new();
        }
        self.held.drain(..).map(|s| (s.call, s.request)).collect()
    }

    /// A call went out as Envoy's `token` with the current pass; `call` is the caller's id
    /// (`token` itself for a first send).
    pub fn sent(&mut self, token: u32, call: u32, request: &Request) {
        let retried = call != token;
        self.sent.push(Sent {
            token,
            call,
            request: request.clone(),
            pass: self.pass.clone(),
            retried,
        });
    }

    /// Whether `token` is a call of this session waiting for its answer.
    pub fn owns(&self, token: u32) -> bool {
        self.sent.iter().any(|s| s.token == token)
    }

    /// Reads an answer: a first rejection of a call's pass holds it (and drops that pass).
    pub fn on_answer(&mut self, token: u32, status: Option<&str>, body: &[u8]) -> Verdict {
        let Some(at) = self.sent.iter().position(|s| s.token == token) else {
            return Verdict::NotOurs;
        };
        let sent = self.sent.swap_remove(at);
        if sent.retried || !rejected(status, body) {
            return Verdict::Answer(sent.call);
        }
        self.drop_pass(&sent.pass);
        self.held.push(sent);
        Verdict::Held
    }

    /// A worker found `shared` (the pass it read) no longer there: etcd rejected ours.
    pub fn check_shared(&mut self, shared: &Pass) {
        if *shared != self.pass && !self.authenticating {
            let ours = self.pass.clone();
            self.drop_pass(&ours);
        }
    }

    /// etcd rejected `pass`: if it is still ours, authenticate again at once.
    fn drop_pass(&mut self, pass: &Pass) {
        if self.pass == *pass && self.pass.usable() {
            self.pass = Pass::None;
            self.next_try_ms = 0;
        }
    }
}

// ---- The pass in shared data (the workers') ----------------------------------------------------

/// The pass the dispatcher published, and its version in the store.
pub fn shared_pass(store: &impl KvStore) -> (Pass, Option<u32>) {
    match store.get(FLEET_PASS_KEY) {
        Some((bytes, cas)) => (Pass::decode(&bytes), Some(cas)),
        None => (Pass::None, None),
    }
}

/// Publishes the dispatcher's pass for the workers.
pub fn publish(store: &impl KvStore, pass: &Pass) {
    if shared_pass(store).0 != *pass {
        let _ = store.set(FLEET_PASS_KEY, &pass.encode(), None);
    }
}

/// A worker's call was rejected for `used`: the pass to send it again with when the dispatcher
/// has published a newer one; else None, and the shared one is cleared, which tells the
/// dispatcher to authenticate again.
pub fn after_rejection(store: &impl KvStore, used: &Pass) -> Option<Pass> {
    let (shared, cas) = shared_pass(store);
    if shared != *used && shared.usable() {
        return Some(shared);
    }
    if shared.usable() {
        // A conflict means the dispatcher has just published: the next call takes that one.
        let _ = store.set(FLEET_PASS_KEY, &Pass::None.encode(), cas);
    }
    None
}

#[cfg(test)]
mod tests;
