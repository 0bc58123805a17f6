//! A webhook receiver for tests: records every request and answers as programmed.
//!
//! Replies come from a queue (e.g. `500, 500, 200`), then the default reply (204 unless changed).
//! A reply can carry `Retry-After`, `Location` and a delay before answering (to make the sender
//! time out). Signatures are checked with the `standardwebhooks` crate: an implementation
//! independent of the plugin's signer.
//!
//! [`Receiver::start_tls`] serves HTTPS instead, with a certificate from a [`tls::TestCa`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap, Method, Uri};
use axum::response::Response;
use axum::Router;
use tokio_rustls::rustls::ServerConfig;

use crate::server::Server;
use crate::util::lock;

pub mod tls;
use tls::{Handshake, TlsListener, TlsPeer};

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it arrived (monotonic clock).
    pub at: Instant,
    /// The status the receiver answered it with (chosen on arrival; a delayed reply is sent later).
    pub replied: u16,
    /// The server name (SNI) the client sent in its TLS handshake; `None` over plain HTTP.
    pub sni: Option<String>,
}

impl Received {
    /// A header as text, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON (no signature check).
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body is not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Verifies the Standard Webhooks signature with `secret` (`whsec_…`) and returns the body.
    pub fn verify(&self, secret: &str) -> Result<serde_json::Value> {
        verify(&self.headers, &self.body, secret)?;
        self.json()
    }

    /// Verifies that one of the `v1a` signatures is `public_key`'s (`whpk_…`) over
    /// "id.timestamp.body", with ring's ed25519 (independent of the plugin's signer), and that
    /// the timestamp is within 5 minutes, as the Standard Webhooks libraries require.
    pub fn verify_v1a(&self, public_key: &str) -> Result<()> {
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine;
        let raw = STANDARD.decode(public_key.strip_prefix("whpk_").context("no whpk_")?)?;
        let id = self.header("webhook-id").context("no webhook-id")?;
        let timestamp = self.header("webhook-timestamp").context("no timestamp")?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let skew = timestamp.parse::<u64>()?.abs_diff(now.as_secs());
        anyhow::ensure!(skew < 300, "timestamp {timestamp} is {skew} s off");
        let mut signed = format!("{id}.{timestamp}.").into_bytes();
        signed.extend_from_slice(&self.body);
        let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, raw);
        let header = self.header("webhook-signature").context("no signature")?;
        let verified = header
            .split(' ')
            .filter_map(|pair| pair.strip_prefix("v1a,"))
            .filter_map(|sig| STANDARD.decode(sig).ok())
            .any(|sig| key.verify(&signed, &sig).is_ok());
        anyhow::ensure!(verified, "no v1a signature by {public_key} in {header}");
        Ok(())
    }

    /// The `type` of the event in the body, or "" when there is none.
    pub fn event_type(&self) -> String {
        self.json()
            .ok()
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
            .unwrap_or_default()
    }
}

/// Checks a Standard Webhooks signature (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &str) -> Result<()> {
    let hook = standardwebhooks::Webhook::new(secret)
        .map_err(|e| anyhow!("bad secret {secret:?}: {e}"))?;
    hook.verify(body, headers)
        .map_err(|e| anyhow!("signature check failed: {e}"))
}

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub location: Option<String>,
    /// Wait this long before answering.
    pub delay: Option<Duration>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            retry_after: None,
            location: None,
            delay: None,
        }
    }

    pub fn retry_after(mut self, value: &str) -> Reply {
        self.retry_after = Some(value.to_string());
        self
    }

    pub fn location(mut self, url: &str) -> Reply {
        self.location = Some(url.to_string());
        self
    }

    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = Some(delay);
        self
    }

    async fn into_response(self) -> Response {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        let mut builder = Response::builder().status(self.status);
        if let Some(value) = &self.retry_after {
            builder = builder.header("retry-after", value);
        }
        if let Some(url) = &self.location {
            builder = builder.header("location", url);
        }
        builder
            .body(Body::empty())
            .unwrap_or_else(|_| Response::new(Body::empty()))
    }
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    queued: VecDeque<Reply>,
    default: Option<Reply>,
}

/// The running receiver. Stops when dropped.
pub struct Receiver {
    server: Server,
    state: Arc<Mutex<State>>,
    /// TLS handshakes (HTTPS receivers only).
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    https: bool,
}

impl Receiver {
    /// Starts on a free port of 127.0.0.1, answering 204 to everything until told otherwise.
    pub async fn start() -> Result<Receiver> {
        let state = Arc::new(Mutex::new(State::default()));
        let server = Server::start(app(state.clone()), 0).await?;
        Ok(Receiver {
            server,
            state,
            handshakes: Arc::default(),
            https: false,
        })
    }

    /// Like [`Receiver::start`], serving HTTPS with `tls` (see [`tls::TestCa::server_config`]).
    pub async fn start_tls(tls: Arc<ServerConfig>) -> Result<Receiver> {
        let state = Arc::new(Mutex::new(State::default()));
        let handshakes = Arc::default();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = tcp.local_addr()?;
        let listener = TlsListener::new(tcp, tls, Arc::clone(&handshakes));
        let service = app(state.clone()).into_make_service_with_connect_info::<TlsPeer>();
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, service).await {
                eprintln!("HTTPS receiver on {addr} stopped: {err}");
            }
        });
        Ok(Receiver {
            server: Server::adopt(addr, task),
            state,
            handshakes,
            https: true,
        })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `http://127.0.0.1:<port><path>`, or for an HTTPS receiver `https://localhost:<port><path>`
    /// (a name, as certificates are for names): use it as a subscription URL.
    pub fn url(&self, path: &str) -> String {
        if self.https {
            format!("https://localhost:{}{}", self.port(), path)
        } else {
            self.server.url(path)
        }
    }

    /// Every TLS handshake a client started so far, failed ones included (HTTPS receivers only).
    pub fn handshakes(&self) -> Vec<Handshake> {
        lock(&self.handshakes).clone()
    }

    /// Answers the next requests with these replies, in order, then with the default.
    pub fn push_replies(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.state).queued.extend(replies);
    }

    /// The reply for requests when the queue is empty (initially 204).
    pub fn set_default(&self, reply: Reply) {
        lock(&self.state).default = Some(reply);
    }

    /// A snapshot of everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state).received.clone()
    }

    /// Waits until at least `n` requests arrived; on timeout the error lists what did arrive.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n {
                return Ok(got);
            }
            if Instant::now() >= deadline {
                bail!(
                    "receiver got {} of {n} expected webhooks within {timeout:?}: {}",
                    got.len(),
                    describe(&got)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Verifies `req` with `secret`, returning its JSON body.
    pub fn verify(&self, req: &Received, secret: &str) -> Result<serde_json::Value> {
        req.verify(secret)
    }
}

/// The receiver's routes: everything goes to one handler that records and replies.
fn app(state: Arc<Mutex<State>>) -> Router {
    Router::new().fallback(
        move |method: Method, uri: Uri, extensions: Extensions, headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move {
                let sni = extensions
                    .get::<ConnectInfo<TlsPeer>>()
                    .and_then(|peer| peer.0.sni.clone());
                let request = Received {
                    method: method.to_string(),
                    path: uri.path().to_string(),
                    headers,
                    body,
                    at: Instant::now(),
                    replied: 0,
                    sni,
                };
                take_reply(&state, request).into_response().await
            }
        },
    )
}

/// Records the request and picks the reply for it, under one lock so replies keep their order.
fn take_reply(state: &Mutex<State>, mut request: Received) -> Reply {
    let mut state = lock(state);
    // Stamped under the lock, so arrival instants are in the order of `received`.
    request.at = Instant::now();
    let reply = state
        .queued
        .pop_front()
        .or_else(|| state.default.clone())
        .unwrap_or(Reply::status(204));
    request.replied = reply.status;
    state.received.push(request);
    reply
}

/// A one-line-per-request summary for error messages.
pub fn describe(got: &[Received]) -> String {
    if got.is_empty() {
        return "nothing".to_string();
    }
    got.iter()
        .map(|r| {
            format!(
                "\n  {} {} webhook-id={:?} replied={} body={}",
                r.method,
                r.path,
                r.header("webhook-id").unwrap_or("-"),
                r.replied,
                String::from_utf8_lossy(&r.body)
            )
        })
        .collect()
}
