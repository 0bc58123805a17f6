//! A test API server: answers any method and path, with behaviour chosen by request headers.
//!
//! | header | effect |
//! |---|---|
//! | `x-test-status` | response status (default: 201 for POST, else 200) |
//! | `x-test-body` | literal response body |
//! | `x-test-body-size: N` | a JSON body of about N bytes: `{"pad":"xxx…"}` |
//! | `x-test-content-type` | content-type (default `application/json`) |
//! | `x-test-response-header: name: value` | one more response header |
//! | `x-test-chunks: N` | stream the body in N chunks (chunked encoding, each flushed) |
//! | `x-test-chunk-delay-ms: D` | wait D ms before every chunk but the first |
//!
//! Without `x-test-body*` the body is `{"id":42,"path":"<path>","method":"<method>"}`.
//! Every request is recorded so tests can assert what did (or did not) reach the API.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use futures_util::stream;

use crate::server::Server;
use crate::util::lock;

/// One request the upstream received.
#[derive(Clone, Debug)]
pub struct UpstreamRequest {
    pub method: String,
    /// Path and query, as received.
    pub path: String,
}

/// The running test API. Stops when dropped.
pub struct Upstream {
    server: Server,
    requests: Arc<Mutex<Vec<UpstreamRequest>>>,
}

impl Upstream {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> Result<Upstream> {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let app = Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                record(&seen, &method, &uri);
                respond(&method, &uri, &headers)
            }
        });
        let server = Server::start(app, 0).await?;
        Ok(Upstream { server, requests })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<UpstreamRequest> {
        lock(&self.requests).clone()
    }
}

/// The body the upstream sends for a request with these headers (without streaming): tests use it
/// to compare what a client got through Envoy with what the upstream sent.
pub fn body_for(method: &Method, path: &str, headers: &HeaderMap) -> Bytes {
    if let Some(body) = header(headers, "x-test-body") {
        return Bytes::from(body);
    }
    if let Some(size) = header(headers, "x-test-body-size").and_then(|s| s.parse::<usize>().ok()) {
        // `{"pad":""}` is 10 bytes; pad the rest.
        let pad = "x".repeat(size.saturating_sub(10));
        return Bytes::from(format!(r#"{{"pad":"{pad}"}}"#));
    }
    let default = serde_json::json!({"id": 42, "path": path, "method": method.as_str()});
    Bytes::from(default.to_string())
}

/// The status the upstream answers for a request with these headers.
pub fn status_for(method: &Method, headers: &HeaderMap) -> StatusCode {
    let default = if method == Method::POST { 201 } else { 200 };
    let code = header(headers, "x-test-status")
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(default);
    StatusCode::from_u16(code).unwrap_or(StatusCode::OK)
}

fn record(seen: &Mutex<Vec<UpstreamRequest>>, method: &Method, uri: &Uri) {
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), |pq| pq.to_string());
    lock(seen).push(UpstreamRequest {
        method: method.to_string(),
        path,
    });
}

fn respond(method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
    let status = status_for(method, headers);
    let content_type = header(headers, "x-test-content-type").unwrap_or("application/json".into());
    let bodyless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let body = if bodyless {
        Body::empty()
    } else {
        let full = body_for(method, uri.path(), headers);
        match header(headers, "x-test-chunks").and_then(|s| s.parse::<usize>().ok()) {
            Some(chunks) if chunks > 1 => chunked(full, chunks, chunk_delay(headers)),
            _ => Body::from(full),
        }
    };
    let mut response = Response::builder()
        .status(status)
        .header("content-type", content_type);
    if let Some((name, value)) = header(headers, "x-test-response-header")
        .as_deref()
        .and_then(|h| h.split_once(':'))
    {
        response = response.header(name.trim(), value.trim());
    }
    response
        .body(body)
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn chunk_delay(headers: &HeaderMap) -> Duration {
    let ms = header(headers, "x-test-chunk-delay-ms")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_millis(ms)
}

/// Streams `full` as `n` pieces; hyper sends each as its own chunk as soon as it is yielded.
fn chunked(full: Bytes, n: usize, delay: Duration) -> Body {
    let size = full.len().div_ceil(n).max(1);
    let pieces: Vec<Bytes> = (0..full.len())
        .step_by(size)
        .map(|start| full.slice(start..(start + size).min(full.len())))
        .collect();
    let stream = stream::unfold(
        (pieces.into_iter(), true),
        move |(mut rest, first)| async move {
            let piece = rest.next()?;
            if !first {
                tokio::time::sleep(delay).await;
            }
            Some((Ok::<_, std::io::Error>(piece), (rest, false)))
        },
    );
    Body::from_stream(stream)
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
