//! Lean servers for the bench: an echo API, a counting webhook receiver and a slow one.
//!
//! Written on hyper directly (no router, no request log, no signature check) because on a small
//! machine every cycle they spend is taken from Envoy and would blur the comparison. The test
//! harness's recording servers (`crate::upstream`, `crate::receiver`) are for correctness, these
//! are for speed.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use super::load::per_second;
use super::timeline::{now_us, Timeline};

/// The body of every GET: a small JSON document, like an API's read.
const READ_BODY: &str = r#"{"id":1,"name":"bench","total":10}"#;

/// A server on a free port of 127.0.0.1; dropping it stops accepting connections.
struct Server {
    port: u16,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `handle` over HTTP/1.1 keep-alive, one task per connection.
async fn serve<H, F>(handle: H) -> Result<Server>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding 127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let handle = handle.clone();
            let service = service_fn(move |req| {
                let reply = handle(req);
                async move { Ok::<_, Infallible>(reply.await) }
            });
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(Server { port, task })
}

fn reply(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The API behind Envoy: GET → 200 with a small JSON body; POST → 201 echoing the request body
/// (so the client decides the event's `data.object`: its size, its sequence number).
pub struct Upstream {
    server: Server,
}

impl Upstream {
    pub async fn start() -> Result<Upstream> {
        let server = serve(|req: Request<Incoming>| async move {
            if req.method() == Method::POST {
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                reply(StatusCode::CREATED, body.unwrap_or_default())
            } else {
                reply(StatusCode::OK, Bytes::from_static(READ_BODY.as_bytes()))
            }
        })
        .await?;
        Ok(Upstream { server })
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }
}

/// What the receiver shares with its connections.
#[derive(Default)]
struct Tally {
    /// Requests received (every attempt, retries included).
    count: AtomicU64,
    /// The status to answer (204 unless set).
    status: AtomicU16,
    /// Where to note arrivals of numbered events, when a latency run is on.
    timeline: RwLock<Option<Arc<Timeline>>>,
}

/// The webhook receiver: counts what arrives and answers at once with one fixed status.
pub struct Receiver {
    server: Server,
    tally: Arc<Tally>,
}

impl Receiver {
    pub async fn start() -> Result<Receiver> {
        let tally = Arc::new(Tally::default());
        tally.status.store(204, Ordering::Relaxed);
        let shared = tally.clone();
        let server = serve(move |req: Request<Incoming>| {
            let tally = shared.clone();
            async move { receive(&tally, req).await }
        })
        .await?;
        Ok(Receiver { server, tally })
    }

    /// `http://127.0.0.1:<port><path>`, for subscription URLs.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.server.port)
    }

    /// Requests received so far.
    pub fn count(&self) -> u64 {
        self.tally.count.load(Ordering::Relaxed)
    }

    /// Answers every later request with `status`.
    pub fn set_status(&self, status: u16) {
        self.tally.status.store(status, Ordering::Relaxed);
    }

    /// Notes the arrival of numbered events in `timeline` (or stops, with `None`).
    pub fn set_timeline(&self, timeline: Option<Arc<Timeline>>) {
        if let Ok(mut slot) = self.tally.timeline.write() {
            *slot = timeline;
        }
    }
}

async fn receive(tally: &Tally, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let timeline = tally.timeline.read().ok().and_then(|t| t.clone());
    if let (Some(timeline), Ok(body)) = (timeline, &body) {
        if let Some(seq) = event_seq(body) {
            timeline.mark_arrived(seq);
        }
    }
    tally.count.fetch_add(1, Ordering::Relaxed);
    let status = StatusCode::from_u16(tally.status.load(Ordering::Relaxed))
        .unwrap_or(StatusCode::NO_CONTENT);
    reply(status, Bytes::new())
}

/// `data.object.seq` of a webhook body.
fn event_seq(body: &[u8]) -> Option<u64> {
    let event: serde_json::Value = serde_json::from_slice(body).ok()?;
    event.pointer("/data/object/seq")?.as_u64()
}

/// How slow the [`SlowReceiver`] is: the same settings as the test harness's paced receiver.
pub use crate::paced::Pace;

/// What the slow receiver's connections share.
#[derive(Default)]
struct SlowBooks {
    /// When the next request may be answered (µs on the [`now_us`] clock): one every 1/rate s.
    next_slot_us: AtomicU64,
    /// Requests answered 2xx.
    answered: AtomicU64,
    /// The first and the last answer's time (µs on the [`now_us`] clock; 0 before the first).
    first_us: AtomicU64,
    last_us: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    refused: AtomicU64,
    /// Every `webhook-id` answered, to tell distinct messages from repeated ones.
    ids: Mutex<HashSet<String>>,
}

/// A healthy but slow receiver (scenario 8): the same behaviour as the test harness's
/// `crate::paced::PacedReceiver` (at most `rate` answers a second in arrival order, a small
/// accept backlog, a connection cap), but its books are atomics plus the times of the first and
/// last answer, so the bench can poll its count every millisecond and time the interval in which
/// it was the bottleneck; `PacedReceiver` keeps neither times nor a count without a lock.
pub struct SlowReceiver {
    port: u16,
    books: Arc<SlowBooks>,
    task: JoinHandle<()>,
}

impl SlowReceiver {
    pub async fn start(pace: Pace) -> Result<SlowReceiver> {
        let socket = TcpSocket::new_v4()?;
        socket.bind("127.0.0.1:0".parse()?)?;
        let listener = socket.listen(pace.backlog).context("listening")?;
        let port = listener.local_addr()?.port();
        let books = Arc::new(SlowBooks::default());
        let open = Arc::new(AtomicUsize::new(0));
        let interval_us = 1_000_000 / u64::from(pace.rate.max(1));
        let shared = books.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if open.load(Ordering::SeqCst) >= pace.max_connections {
                    shared.refused.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                open.fetch_add(1, Ordering::SeqCst);
                let (books, open) = (shared.clone(), open.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let books = books.clone();
                        async move { Ok::<_, Infallible>(answer_slowly(&books, req, interval_us).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(SlowReceiver { port, books, task })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Requests answered 2xx so far.
    pub fn answered(&self) -> u64 {
        self.books.answered.load(Ordering::Relaxed)
    }

    /// Distinct `webhook-id`s answered so far.
    pub fn distinct(&self) -> u64 {
        self.books.ids.lock().map_or(0, |ids| ids.len() as u64)
    }

    /// Connections closed because `max_connections` were open.
    pub fn refused_connections(&self) -> u64 {
        self.books.refused.load(Ordering::Relaxed)
    }

    /// From the first answer to the last.
    pub fn busy_span(&self) -> Duration {
        let first = self.books.first_us.load(Ordering::Relaxed);
        let last = self.books.last_us.load(Ordering::Relaxed);
        Duration::from_micros(last.saturating_sub(first))
    }

    /// Answers per second from the first answer to the last (the n answers span n − 1 gaps).
    pub fn busy_rate(&self) -> f64 {
        per_second(self.answered().saturating_sub(1), self.busy_span())
    }
}

impl Drop for SlowReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the request, waits for its slot, then answers 204 and books it.
async fn answer_slowly(
    books: &SlowBooks,
    req: Request<Incoming>,
    interval_us: u64,
) -> Response<Full<Bytes>> {
    let id = req
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let _ = req.into_body().collect().await;
    let now = now_us();
    let slot = books
        .next_slot_us
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
            Some(next.max(now) + interval_us)
        })
        .map_or(now, |next| next.max(now));
    tokio::time::sleep(Duration::from_micros(slot.saturating_sub(now_us()))).await;
    let answered_at = now_us();
    let _ = books
        .first_us
        .compare_exchange(0, answered_at, Ordering::Relaxed, Ordering::Relaxed);
    books.last_us.fetch_max(answered_at, Ordering::Relaxed);
    if let Ok(mut ids) = books.ids.lock() {
        ids.insert(id);
    }
    books.answered.fetch_add(1, Ordering::Relaxed);
    reply(StatusCode::NO_CONTENT, Bytes::new())
}
