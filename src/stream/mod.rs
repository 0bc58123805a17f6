//! The HTTP filter's decisions, host-free: per stream, whether it is a subscription API call
//! (answered here, never sent upstream) or a state-changing request whose response makes an
//! event (read as it streams past and handed to the dispatcher once the response is over); per
//! worker, whether the dispatcher is alive and what was dropped. For the API's own traffic it
//! only ever reads: those phases answer [`Flow::Continue`], so the API's responses are never
//! changed, delayed or failed. `crate::host` forwards the proxy-wasm callbacks here.
//!
//! May use: `api`, `config`, `fleet`, `model`, `port`, `registry`, `support`.

use crate::api;
use crate::config::Config;
use crate::fleet::auth::{self, Pass};
use crate::fleet::commit::{Commit, Step, Write};
use crate::fleet::dead;
use crate::fleet::etcd::Request;
use crate::fleet::keys::Keys;
use crate::fleet::log as fleet_log;
use crate::fleet::recover as fleet_recover;
use crate::fleet::vault::Vault;
use crate::model::audience::{self, Audience, Facts};
use crate::model::event::{self, BodyCapture, CapturedObject, RequestInfo};
use crate::model::identity::OwnedCredentials;
use crate::model::queue::QueueMessage;
use crate::model::rules::{self, Detected};
use crate::model::trace::TraceContext;
use crate::port::{Metric, StreamHost};
use crate::registry::attempts;
use crate::registry::portal;
use crate::registry::store::KvStore;
use crate::registry::watchdog::{self, Change, Watchdog};
use crate::registry::Registry;
use crate::registry::RegistryError;
use crate::support::ids::{RandomSource, RandomUnavailable};
use std::cell::Cell;
use std::rc::Rc;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

/// Whether a stream goes on or waits (then the filter has answered it, or will).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Pause,
}

/// What every stream of a worker shares.
pub struct Filter<H> {
    host: H,
    config: Rc<Config>,
    /// Events this worker could not hand over (for a rate-limited warning).
    dropped: Cell<u64>,
    watchdog: Cell<Watchdog>,
    /// Whether the dispatcher's heartbeat is recent (see `crate::registry::watchdog`).
    dispatcher_alive: Cell<bool>,
    /// The request headers some audience names, read on every request that may make an event.
    audience_headers: Vec<String>,
    /// Whether some audience is the requester (then its credentials are read too).
    needs_requester: bool,
    /// Fleet mode: where the API's writes go in etcd.
    keys: Option<Keys>,
    /// Fleet mode: how secrets and messages are sealed there.
    vault: Vault,
}

/// Times an API write is handled again because etcd had a newer record than the cache.
const MAX_REHANDLES: u8 = 4;

impl<H: StreamHost> Filter<H> {
    pub fn new(config: Rc<Config>, host: H) -> Filter<H> {
        let audiences = || {
            config
                .events
                .iter()
                .map(|r| &r.audience)
                .chain([&config.audience])
        };
        let audience_headers = audience::request_headers(audiences());
        let needs_requester = audiences().any(|a| *a == Audience::Requester);
        Filter {
            audience_headers,
            needs_requester,
            keys: config.fleet.as_ref().map(|f| Keys::new(&f.prefix)),
            vault: config.fleet.as_ref().map_or_else(Vault::default, |f| {
                Vault::new(f.keyring.clone(), f.encrypt_payloads)
            }),
            config,
            host,
            dropped: Cell::new(0),
            watchdog: Cell::new(Watchdog::default()),
            dispatcher_alive: Cell::new(true),
        }
    }

    /// Readies shared data for the API (once per worker; idempotent).
    pub fn configure(&self) {
        Registry::new(self.host.store()).prepare();
    }

    /// Checks the dispatcher's heartbeat (every `watchdog::CHECK_EVERY_MS`).
    pub fn tick(&self) {
        let heartbeat = self
            .host
            .store()
            .get(watchdog::HEARTBEAT_KEY)
            .map(|(bytes, _)| bytes);
        let mut dog = self.watchdog.take();
        let change = dog.check(heartbeat.as_deref(), self.host.now_ms());
        let alive = dog.alive();
        self.watchdog.set(dog);
        match change {
            Some(Change::Died { silent_ms }) => log::error!(
                "proxy-webhooks: the dispatcher has not run for {silent_ms} ms: its VM failed, and Envoy does not restart it; no webhook is delivered and new events are dropped until Envoy restarts"
            ),
            Some(Change::Revived) => log::warn!("proxy-webhooks: the dispatcher runs again"),
            None => {}
        }
        self.dispatcher_alive.set(alive);
        self.host
            .record_metric(Metric::DispatcherAlive, u64::from(alive));
    }

    /// Hands a message to the dispatcher; false (logged and counted) when it cannot, or when
    /// the dispatcher is gone and nothing would ever read it.
    fn enqueue(&self, message: &QueueMessage) -> bool {
        let alive = self.dispatcher_alive.get();
        let sent = alive && self.host.enqueue(&message.encode());
        if !sent {
            self.host.add_metric(Metric::EventsDropped, 1);
            // One line for the first drop and then one per thousand, not one per event.
            let dropped = self.dropped.get();
            self.dropped.set(dropped.wrapping_add(1));
            if dropped % 1000 == 0 {
                let why = if alive {
                    "the dispatcher's queue is not available (is the webhooks_dispatcher bootstrap extension configured with the same vm_id?)"
                } else {
                    "the dispatcher is not running (restart Envoy)"
                };
                log::warn!(
                    "proxy-webhooks: event dropped ({} so far on this worker): {why}",
                    dropped + 1
                );
            }
        }
        sent
    }

    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.host.request_header(name)
    }

    /// The request's `traceparent` and `tracestate` when valid (`tracestate` is read only
    /// after a valid `traceparent`; nothing is allocated without one).
    fn trace_context(&self) -> Option<TraceContext> {
        let traceparent = self.header("traceparent")?;
        let tracestate = self.header("tracestate");
        TraceContext::from_headers(Some(&traceparent), tracestate.as_deref())
    }

    fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).and_then(|v| String::from_utf8(v).ok())
    }

    fn response_header_str(&self, name: &str) -> Option<String> {
        self.host
            .response_header(name)
            .and_then(|v| String::from_utf8(v).ok())
    }

    /// The request headers that can identify the caller: `api.consumer_header` when set, else
    /// the API key headers.
    fn credentials(&self) -> OwnedCredentials {
        match &self.config.api.consumer_header {
            Some(name) => OwnedCredentials {
                consumer_header: self.header(name),
                ..OwnedCredentials::default()
            },
            None => OwnedCredentials {
                authorization: self.header("authorization"),
                api_key: self.header("x-api-key"),
                consumer_header: None,
            },
        }
    }

    /// Runs an API call against the cache.
    fn handle_api(&self, request: &api::Request<'_>) -> api::Answer {
        self.with_api(|cx| api::handle(request, cx))
    }

    /// Answers a retry with etcd's kept copy of its message (`None`: etcd has none).
    fn retry_kept(&self, request: &api::Request<'_>, kept: Option<&[u8]>) -> api::Response {
        self.with_api(|cx| api::retry_kept(request, cx, kept))
    }

    /// Runs `call` with what the API may use: the cache, randomness, the clock, the queue.
    fn with_api<R>(&self, call: impl FnOnce(&mut api::Context<'_, H::Store>) -> R) -> R {
        let store = self.host.store();
        let registry = Registry::new(self.host.store());
        let mut enqueue = |message: QueueMessage| self.enqueue(&message);
        let mut cx = api::Context {
            config: &self.config,
            registry: &registry,
            store: &store,
            rng: &mut HostRandom(&self.host),
            now_ms: self.host.now_ms(),
            enqueue: &mut enqueue,
        };
        call(&mut cx)
    }

    /// Whether the cache holds the registry: always without fleet mode; in fleet mode once the
    /// dispatcher applied its first read of etcd's (`crate::registry::watchdog`).
    fn registry_read(&self) -> bool {
        if self.config.fleet.is_none() {
            return true;
        }
        let value = self.host.store().get(watchdog::REGISTRY_READ_KEY);
        watchdog::registry_read(value.map(|(v, _)| v).as_deref())
    }

    /// Starts an etcd call on the fleet's cluster, with the dispatcher's etcd token when
    /// `fleet.username` is set (then `sent` keeps the call, to send it once more if etcd
    /// rejects that token); false when there is no cluster or token, or Envoy refuses.
    fn call_etcd(&self, request: &Request, sent: &mut Option<EtcdCall>) -> bool {
        let Some(fleet) = &self.config.fleet else {
            return false;
        };
        let pass = match fleet.credentials {
            Some(_) => auth::shared_pass(&self.host.store()).0,
            None => Pass::Open,
        };
        if !pass.usable() {
            return false;
        }
        if self
            .host
            .call_etcd(request, &fleet.cluster, pass.header())
            .is_none()
        {
            return false;
        }
        *sent = fleet.credentials.as_ref().map(|_| EtcdCall {
            request: request.clone(),
            pass,
            retried: false,
        });
        true
    }

    /// Makes the cache hold a write etcd has (at `revision`, the record's mod_revision). A
    /// failure is only logged: the write is etcd's now, and the next sync brings it. A record
    /// put is reported to the dispatcher, whose next registry read checks it against etcd (a
    /// newer record, or a delete through another replica, may have overtaken it).
    fn apply(&self, write: &Write, revision: i64) {
        let registry = Registry::new(self.host.store());
        let outcome = match write {
            Write::Static { after: sub } => registry.apply_synced(sub),
            Write::Create { sub, .. } | Write::Replace { after: sub, .. } => {
                let put = registry.apply_synced(sub);
                self.host.enqueue(
                    &QueueMessage::Cached {
                        subscription_id: sub.id.clone(),
                        mod_revision: revision,
                    }
                    .encode(),
                );
                put
            }
            Write::Delete { id, .. } => registry.delete(id).map(|_| ()),
            // This replica knows at once; the others within `sync_interval`.
            Write::Revoke { consumer, up_to_ms } => {
                let now = self.host.now_ms();
                let store = self.host.store();
                portal::revoke(&store, consumer, *up_to_ms, now)
                    .map_err(|e| RegistryError::Unavailable(format!("{e:?}")))
            }
        };
        if let Err(e) = outcome {
            log::warn!(
                "proxy-webhooks: a write etcd has is not in this replica's cache yet: {e:?}"
            );
        }
    }

    /// Answers an API write etcd did not confirm: 503, counted and logged.
    fn etcd_unavailable(&self, reason: &str) {
        self.host.add_metric(Metric::FleetEtcdErrors, 1);
        log::warn!(
            "proxy-webhooks: a subscription write was refused, etcd did not confirm it: {reason}"
        );
        self.send(api::etcd_unavailable());
    }

    /// Answers a retry whose kept copy etcd could not be asked for: 503, counted and logged.
    fn lookup_unavailable(&self, reason: &str) {
        self.host.add_metric(Metric::FleetEtcdErrors, 1);
        log::warn!("proxy-webhooks: a retry could not read its message from etcd: {reason}");
        self.send(api::lookup_unavailable());
    }

    fn recover_unavailable(&self, reason: &str) {
        self.host.add_metric(Metric::FleetEtcdErrors, 1);
        log::warn!("proxy-webhooks: a recover could not read the kept copies from etcd: {reason}");
        self.send(api::recover_unavailable());
    }

    /// Answers `GET .../deliveries` with this replica's own attempts when etcd could not give
    /// the fleet's (reads serve what this replica has while etcd is away); counted and logged.
    fn send_own_log(&self, subscription_id: &str, reason: &str) {
        self.host.add_metric(Metric::FleetEtcdErrors, 1);
        log::warn!(
            "proxy-webhooks: the fleet's delivery log of {subscription_id} could not be read from etcd ({reason}); answered with this replica's attempts"
        );
        let own = attempts::read(&self.host.store(), subscription_id);
        self.send(api::delivery_log(&own));
    }

    /// Sends a local reply for an API call.
    fn send(&self, response: api::Response) {
        let headers: Vec<(&str, &str)> = response
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        self.host
            .send_response(response.status, headers, &response.body);
    }
}

/// The host's randomness as the API's [`RandomSource`].
struct HostRandom<'a, H>(&'a H);

impl<H: StreamHost> RandomSource for HostRandom<'_, H> {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomUnavailable> {
        self.0.fill_random(buf)
    }
}

enum State {
    /// Nothing (more) to do for this stream: no event, or it was handed over.
    Idle,
    /// A subscription API call, waiting for its body; answered here, never sent upstream.
    Api(Box<ApiCall>),
    /// A state-changing request; what the response phase needs of it.
    Request(Box<Seen>),
    /// The response makes an event; its body is being read as it streams past.
    Response(Box<Pending>),
    /// Fleet mode: an API write waiting for etcd's answer.
    Committing(Box<Committing>),
    /// Fleet mode: a retry waiting for etcd's kept copy of its message.
    Finding(Box<ApiCall>),
    /// Fleet mode: `GET .../deliveries` waiting for every replica's log of this subscription.
    ReadingLog(String),
    /// Fleet mode: a recover scanning and taking the kept copies in etcd.
    Recovering(Box<Recovery>),
}

/// A recover in etcd's hands: the subscription (checked) and its scan and take.
struct Recovery {
    subscription_id: String,
    since_ms: u64,
    scan: fleet_recover::Recovery,
}

/// An API write in etcd's hands, with the call kept to handle it again if etcd has a newer
/// record than the one checked.
struct Committing {
    call: Box<ApiCall>,
    body: Vec<u8>,
    commit: Commit,
    /// What to send once etcd has the write.
    response: api::Response,
    /// Times the call was handled again.
    rehandled: u8,
}

struct ApiCall {
    method: String,
    path: String,
    credentials: OwnedCredentials,
    content_type: Option<Vec<u8>>,
    /// The other headers the API reads: `api.operator_header`, `x-webhooks-session`, `origin`,
    /// `sec-fetch-site`, `:authority`.
    operator_header: Option<Vec<u8>>,
    session: Option<Vec<u8>>,
    origin: Option<Vec<u8>>,
    sec_fetch_site: Option<Vec<u8>>,
    authority: Option<Vec<u8>>,
}

impl ApiCall {
    fn request<'a>(&'a self, body: &'a [u8]) -> api::Request<'a> {
        api::Request {
            method: &self.method,
            path: &self.path,
            authorization: self.credentials.authorization.as_deref(),
            api_key: self.credentials.api_key.as_deref(),
            consumer_header: self.credentials.consumer_header.as_deref(),
            content_type: self.content_type.as_deref(),
            operator_header: self.operator_header.as_deref(),
            session: self.session.as_deref(),
            origin: self.origin.as_deref(),
            sec_fetch_site: self.sec_fetch_site.as_deref(),
            authority: self.authority.as_deref(),
            body,
        }
    }
}

/// A state-changing request as the request phase saw it (request headers cannot be read later).
struct Seen {
    method: String,
    path: String,
    /// The caller's credentials, when some audience is the requester.
    credentials: OwnedCredentials,
    /// The request headers audiences name, where present.
    headers: Vec<(String, Vec<u8>)>,
    /// The request's valid trace context, forwarded on its webhooks.
    trace: Option<TraceContext>,
}

struct Pending {
    /// Whether the response ended normally (its body can be trusted).
    complete: bool,
    seen: Box<Seen>,
    /// The response header the audience names, where present.
    response_header: Option<Vec<u8>>,
    status: u16,
    detected: Detected,
    seen_ms: u64,
    capture: BodyCapture,
}

/// One HTTP stream, driven phase by phase by the host's callbacks.
pub struct Stream<H> {
    filter: Rc<Filter<H>>,
    state: State,
    /// The etcd call waiting for its answer (with `fleet.username`).
    etcd_call: Option<EtcdCall>,
}

/// An etcd call kept to be sent once more when etcd rejects the token it carried.
struct EtcdCall {
    request: Request,
    pass: Pass,
    retried: bool,
}

impl<H: StreamHost> Stream<H> {
    pub fn new(filter: Rc<Filter<H>>) -> Stream<H> {
        Stream {
            filter,
            state: State::Idle,
            etcd_call: None,
        }
    }

    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Flow {
        if !self.on_request() {
            return Flow::Continue;
        }
        if self.page_served() || self.api_refused_at_headers() {
            return Flow::Pause;
        }
        let declared = self
            .filter
            .header_str("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if !self.api_body_too_large(declared) && end_of_stream {
            self.answer_api(&[]);
        }
        Flow::Pause
    }

    /// `size` is all of the body so far: the host buffers it while the stream waits.
    pub fn on_request_body(&mut self, size: usize, end_of_stream: bool) -> Flow {
        if !matches!(self.state, State::Api(_)) {
            return Flow::Continue;
        }
        if self.api_body_too_large(size) || !end_of_stream {
            return Flow::Pause;
        }
        let body = self.filter.host.request_body(size).unwrap_or_default();
        self.answer_api(&body);
        Flow::Pause
    }

    pub fn on_request_trailers(&mut self) -> Flow {
        if !matches!(self.state, State::Api(_)) {
            return Flow::Continue;
        }
        // A body that ends with trailers never reaches `on_request_body` with end_of_stream:
        // answer here, or the call would go upstream.
        let body = self
            .filter
            .host
            .request_body(usize::MAX)
            .unwrap_or_default();
        if !self.api_body_too_large(body.len()) {
            self.answer_api(&body);
        }
        Flow::Pause
    }

    pub fn on_response_headers(&mut self, end_of_stream: bool) -> Flow {
        self.on_response();
        if end_of_stream {
            self.response_complete();
        }
        Flow::Continue
    }

    /// `size` is this chunk's: the response streams past, it is never held back.
    pub fn on_response_body(&mut self, size: usize, end_of_stream: bool) -> Flow {
        self.on_body_chunk(size);
        if end_of_stream {
            self.response_complete();
        }
        Flow::Continue
    }

    pub fn on_response_trailers(&mut self) -> Flow {
        self.response_complete();
        Flow::Continue
    }

    /// An etcd call this stream started (fleet mode's API writes and retries) has answered.
    pub fn on_etcd_answer(&mut self, body_size: usize) {
        if self.sent_again_with_a_fresh_token(body_size) {
            return;
        }
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Committing(c) => self.on_commit_answer(c, body_size),
            State::Finding(call) => self.on_kept_answer(&call, body_size),
            State::ReadingLog(id) => self.on_log_answer(&id, body_size),
            State::Recovering(r) => self.on_recover_answer(r, body_size),
            other => self.state = other,
        }
    }

    /// etcd rejected the token the call carried: sent once more when the dispatcher has a
    /// newer one; else the shared one is cleared (the dispatcher authenticates again) and the
    /// rejection is the call's answer (503, as with etcd down).
    fn sent_again_with_a_fresh_token(&mut self, body_size: usize) -> bool {
        let Some(call) = self.etcd_call.take().filter(|c| !c.retried) else {
            return false;
        };
        let filter = &*self.filter;
        let (status, _) = filter.host.etcd_answer(0);
        if !auth::may_be_rejection(status.as_deref()) {
            return false;
        }
        let (status, body) = filter.host.etcd_answer(body_size);
        if !auth::rejected(status.as_deref(), &body) {
            return false;
        }
        let Some(fresh) = auth::after_rejection(&filter.host.store(), &call.pass) else {
            return false;
        };
        let Some(fleet) = &filter.config.fleet else {
            return false;
        };
        if filter
            .host
            .call_etcd(&call.request, &fleet.cluster, fresh.header())
            .is_none()
        {
            return false;
        }
        self.etcd_call = Some(EtcdCall {
            request: call.request,
            pass: fresh,
            retried: true,
        });
        true
    }

    fn on_commit_answer(&mut self, mut c: Box<Committing>, body_size: usize) {
        let filter = &*self.filter;
        let (status, body) = filter.host.etcd_answer(body_size);
        match c.commit.on_answer(status.as_deref(), &body) {
            Step::Send(request) if filter.call_etcd(&request, &mut self.etcd_call) => {
                self.state = State::Committing(c)
            }
            Step::Send(_) => filter.etcd_unavailable("the call could not be started"),
            Step::Committed { revision } => {
                filter.apply(c.commit.write(), revision);
                filter.send(c.response);
            }
            Step::LimitReached(count) => filter.send(api::limit_reached(&filter.config, count)),
            Step::RegistryFull(count) => filter.send(api::registry_full(&filter.config, count)),
            Step::Stale(record, revision) => self.rehandle(c, &record, revision),
            Step::Gone => {
                // Absent from the cache already is as good.
                let _ = Registry::new(filter.host.store()).delete(c.commit.write().id());
                filter.send(api::not_found());
            }
            Step::Unavailable(reason) => filter.etcd_unavailable(&reason),
        }
    }

    fn on_kept_answer(&mut self, call: &ApiCall, body_size: usize) {
        let filter = &*self.filter;
        let (status, body) = filter.host.etcd_answer(body_size);
        let keys = filter.keys.as_ref();
        let read = keys.map(|keys| dead::read(keys, &filter.vault, status.as_deref(), &body));
        match read.unwrap_or_else(|| Err("fleet mode is not configured".into())) {
            Ok(kept) => filter.send(filter.retry_kept(&call.request(&[]), kept.as_deref())),
            Err(reason) => filter.lookup_unavailable(&reason),
        }
    }

    /// etcd has a newer record than the cache: the cache takes it and the call runs again, so
    /// its checks see the current record.
    fn rehandle(
        &mut self,
        c: Box<Committing>,
        record: &crate::model::subscription::Subscription,
        revision: i64,
    ) {
        let filter = &*self.filter;
        let write = Write::Replace {
            after: record.clone(),
            before_version: record.version,
        };
        filter.apply(&write, revision);
        if c.rehandled >= MAX_REHANDLES {
            let reason = format!("the record kept changing ({MAX_REHANDLES} times) while written");
            filter.etcd_unavailable(&reason);
            return;
        }
        let Committing {
            call,
            body,
            rehandled,
            ..
        } = *c;
        self.run_api(call, &body, rehandled + 1);
    }

    /// Runs once the response has gone out (or the stream was cut short).
    pub fn on_log(&mut self) {
        self.emit();
    }

    /// Remembers what the response phase needs; returns whether the request is the API's.
    fn on_request(&mut self) -> bool {
        let filter = &self.filter;
        let Some(method) = filter.header_str(":method") else {
            return false;
        };
        let Some(mut path) = filter.header_str(":path") else {
            return false;
        };
        if api::is_api_path(&filter.config.api.path_prefix, &path) {
            let operator_header = filter.config.api.operator_header.as_deref();
            let call = ApiCall {
                method,
                path,
                // Operator keys come in these headers whatever identifies consumers.
                credentials: OwnedCredentials {
                    authorization: filter.header("authorization"),
                    api_key: filter.header("x-api-key"),
                    ..filter.credentials()
                },
                content_type: filter.header("content-type"),
                operator_header: operator_header.and_then(|name| filter.header(name)),
                session: filter.header("x-webhooks-session"),
                origin: filter.header("origin"),
                sec_fetch_site: filter.header("sec-fetch-site"),
                authority: filter.header(":authority"),
            };
            self.state = State::Api(Box::new(call));
            return true;
        }
        if rules::is_mutating(&method) {
            path.truncate(rules::strip_query(&path).len());
            let credentials = match filter.needs_requester {
                true => filter.credentials(),
                false => OwnedCredentials::default(),
            };
            let headers = filter
                .audience_headers
                .iter()
                .filter_map(|name| Some((name.clone(), filter.header(name)?)))
                .collect();
            self.state = State::Request(Box::new(Seen {
                method,
                path,
                credentials,
                headers,
                trace: filter.trace_context(),
            }));
        }
        false
    }

    /// Answers a request for the portal's page or assets (`api.portal`): no body, no
    /// authentication. True when answered.
    fn page_served(&mut self) -> bool {
        let State::Api(call) = &self.state else {
            return false;
        };
        let filter = &self.filter;
        let accept_encoding = || filter.header("accept-encoding");
        let Some(response) =
            api::serve_page(&filter.config, &call.method, &call.path, accept_encoding)
        else {
            return false;
        };
        self.state = State::Idle;
        self.filter.send(response);
        true
    }

    /// Answers an API call at its headers when they decide it (401, 404, 405; 503 in fleet
    /// mode before the first registry read is applied): no body is buffered for a caller that
    /// is refused anyway. True when answered.
    fn api_refused_at_headers(&mut self) -> bool {
        let State::Api(call) = &self.state else {
            return false;
        };
        let filter = &self.filter;
        let response = filter
            .with_api(|cx| api::answer_before_body(&call.request(&[]), cx))
            .or_else(|| (!filter.registry_read()).then(api::registry_not_read));
        let Some(response) = response else {
            return false;
        };
        self.state = State::Idle;
        self.filter.send(response);
        true
    }

    /// Answers a subscription API call with its whole body; the call never goes upstream.
    fn answer_api(&mut self, body: &[u8]) {
        let State::Api(call) = std::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        self.run_api(call, body, 0);
    }

    /// Handles an API call; a write in fleet mode goes to etcd first (the stream waits).
    fn run_api(&mut self, call: Box<ApiCall>, body: &[u8], rehandled: u8) {
        let filter = &*self.filter;
        let (write, response) = match filter.handle_api(&call.request(body)) {
            api::Answer::Now(response) => return filter.send(response),
            api::Answer::FindKept { webhook_id } => return self.find_kept(call, &webhook_id),
            api::Answer::ReadLog { subscription_id } => return self.read_log(subscription_id),
            api::Answer::TakeKept {
                subscription_id,
                since_ms,
            } => return self.take_kept(subscription_id, since_ms),
            api::Answer::Commit { write, response } => (write, response),
        };
        let Some(keys) = &filter.keys else {
            return filter.etcd_unavailable("fleet mode is not configured");
        };
        let mut rng = HostRandom(&filter.host);
        let (commit, request) = Commit::start(*write, keys, &filter.vault, &mut rng);
        if !filter.call_etcd(&request, &mut self.etcd_call) {
            return filter.etcd_unavailable("the call could not be started");
        }
        self.state = State::Committing(Box::new(Committing {
            call,
            body: body.to_vec(),
            commit,
            response,
            rehandled,
        }));
    }

    /// Asks etcd for the kept copy of a message a retry names (the stream waits).
    fn find_kept(&mut self, call: Box<ApiCall>, webhook_id: &str) {
        let filter = &*self.filter;
        let Some(keys) = &filter.keys else {
            return filter.lookup_unavailable("fleet mode is not configured");
        };
        if !filter.call_etcd(&dead::lookup(keys, webhook_id), &mut self.etcd_call) {
            return filter.lookup_unavailable("the call could not be started");
        }
        self.state = State::Finding(call);
    }

    /// Starts the scan of etcd's kept copies for a recover (the stream waits).
    fn take_kept(&mut self, subscription_id: String, since_ms: u64) {
        let filter = &*self.filter;
        let Some(keys) = &filter.keys else {
            return filter.recover_unavailable("fleet mode is not configured");
        };
        let max = filter.config.delivery.max_replay;
        let (scan, request) = fleet_recover::Recovery::start(keys, &subscription_id, since_ms, max);
        if !filter.call_etcd(&request, &mut self.etcd_call) {
            return filter.recover_unavailable("the call could not be started");
        }
        self.state = State::Recovering(Box::new(Recovery {
            subscription_id,
            since_ms,
            scan,
        }));
    }

    fn on_recover_answer(&mut self, mut r: Box<Recovery>, body_size: usize) {
        let filter = &*self.filter;
        let (status, body) = filter.host.etcd_answer(body_size);
        match r.scan.on_answer(&filter.vault, status.as_deref(), &body) {
            fleet_recover::Step::Send(request) => {
                if !filter.call_etcd(&request, &mut self.etcd_call) {
                    return filter.recover_unavailable("the call could not be started");
                }
                self.state = State::Recovering(r);
            }
            fleet_recover::Step::Done { taken, unreadable } => {
                if unreadable > 0 {
                    log::warn!("proxy-webhooks: recover of {}: {unreadable} kept cop(ies) in etcd could not be opened or read (skipped)", r.subscription_id);
                }
                let response = filter
                    .with_api(|cx| api::recover_taken(cx, &r.subscription_id, r.since_ms, taken));
                filter.send(response);
            }
            fleet_recover::Step::Unavailable(reason) => filter.recover_unavailable(&reason),
        }
    }

    /// Asks etcd for every replica's delivery log of a subscription (the stream waits); without
    /// etcd, answers with this replica's own log.
    fn read_log(&mut self, subscription_id: String) {
        let filter = &*self.filter;
        let started = filter.keys.as_ref().is_some_and(|keys| {
            filter.call_etcd(
                &fleet_log::lookup(keys, &subscription_id),
                &mut self.etcd_call,
            )
        });
        match started {
            true => self.state = State::ReadingLog(subscription_id),
            false => filter.send_own_log(&subscription_id, "the call could not be started"),
        }
    }

    fn on_log_answer(&mut self, subscription_id: &str, body_size: usize) {
        let filter = &*self.filter;
        let (status, body) = filter.host.etcd_answer(body_size);
        match fleet_log::read(status.as_deref(), &body, filter.host.now_ms()) {
            Ok(log) => filter.send(api::delivery_log(&log)),
            Err(reason) => filter.send_own_log(subscription_id, &reason),
        }
    }

    /// Whether an API request body has grown past the limit (then it was answered 413).
    fn api_body_too_large(&mut self, size: usize) -> bool {
        let limit = self.filter.config.api.max_body_bytes;
        if size <= limit {
            return false;
        }
        self.state = State::Idle;
        self.filter.send(api::too_large(limit));
        true
    }

    fn on_response(&mut self) {
        let State::Request(seen) = std::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        let filter = &self.filter;
        let host = &filter.host;
        let status = filter
            .response_header_str(":status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        let config = &filter.config;
        let infer = config.infers(&seen.path);
        let Some(detected) = rules::detect(&config.events, infer, &seen.method, &seen.path, status)
        else {
            return;
        };
        let audience = config.audience_of(detected.rule);
        let response_header = match audience {
            Audience::ResponseHeader(name) => host.response_header(name),
            _ => None,
        };
        // The body is read only when the event carries it or its audience is found in it.
        let wants_body =
            config.include_object(detected.rule) || matches!(audience, Audience::Json(_));
        let capture = match wants_body {
            true => BodyCapture::new(
                config.delivery.max_payload_bytes,
                host.response_header("content-type").as_deref(),
                host.response_header("content-encoding").as_deref(),
                filter
                    .response_header_str("content-length")
                    .and_then(|s| s.trim().parse::<u64>().ok()),
            ),
            false => BodyCapture::skip(),
        };
        let pending = Pending {
            complete: false,
            seen,
            response_header,
            status,
            detected,
            seen_ms: host.now_ms(),
            capture,
        };
        self.state = State::Response(Box::new(pending));
    }

    fn on_body_chunk(&mut self, size: usize) {
        if let State::Response(pending) = &mut self.state {
            if pending.capture.wants_more() && size > 0 {
                if let Some(chunk) = self.filter.host.response_body(size) {
                    pending.capture.push(&chunk);
                }
            }
        }
    }

    /// The response has ended: its body is whole. The event is built later, in `on_log`, so
    /// that none of that work delays the response's last bytes.
    fn response_complete(&mut self) {
        if let State::Response(pending) = &mut self.state {
            pending.complete = true;
        }
    }

    /// Builds the event from what was seen and queues it for the dispatcher.
    fn emit(&mut self) {
        let State::Response(pending) = std::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        let Pending {
            complete,
            seen,
            response_header,
            status,
            detected,
            seen_ms,
            capture,
        } = *pending;
        // A response cut short has no trustworthy body, but the state change still happened.
        let object = if complete {
            capture.finish()
        } else {
            CapturedObject::NotJson
        };
        let config = &self.filter.config;
        let facts = Facts {
            identification: config.api.identification(),
            credentials: seen.credentials.borrow(),
            params: &detected.params,
            request_headers: &seen.headers,
            response_header: response_header.as_deref(),
            body: match &object {
                CapturedObject::Json(body) => Some(body),
                _ => None,
            },
        };
        let target = audience::resolve(config.audience_of(detected.rule), &facts);
        let object = match config.include_object(detected.rule) {
            true => object,
            false => CapturedObject::NotJson,
        };
        let request = RequestInfo {
            method: &seen.method,
            path: &seen.path,
            params: &detected.params,
            status,
        };
        let payload = event::build_payload(&detected.event_type, seen_ms, &request, object);
        self.filter.host.add_metric(Metric::EventsDetected, 1);
        let message = QueueMessage::Event {
            event_type: detected.event_type,
            payload,
            audience: target,
            trace: seen.trace,
        };
        self.filter.enqueue(&message);
    }
}
