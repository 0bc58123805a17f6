//! Lean servers for the bench: an echo API and a counting webhook receiver.
//!
//! Written on hyper directly (no router, no request log, no signature check) because on a small
//! machine every cycle they spend is taken from Envoy and would blur the comparison. The test
//! harness's recording servers (`crate::upstream`, `crate::receiver`) are for correctness, these
//! are for speed.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::timeline::Timeline;

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
