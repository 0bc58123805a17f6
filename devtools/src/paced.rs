//! A healthy but slow webhook receiver, as many real ones are: it answers at most `rate`
//! requests a second (one at a time, in arrival order), keeps a small accept backlog, and
//! holds at most `max_connections` connections, closing any further one at once (as a server
//! at its connection limit does). Overrun it and attempts fail; pace to it and every one
//! succeeds. It counts each webhook-id it answered 2xx, to check "exactly once".

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

use crate::util::lock;

/// The receiver's settings.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Requests answered per second at most.
    pub rate: u32,
    /// Connections held at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// The listen backlog.
    pub backlog: u32,
}

#[derive(Default)]
struct Books {
    /// webhook-id → times answered 2xx.
    delivered: HashMap<String, usize>,
}

pub struct PacedReceiver {
    port: u16,
    books: Arc<Mutex<Books>>,
    refused_connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl PacedReceiver {
    pub async fn start(pace: Pace) -> Result<PacedReceiver> {
        let socket = TcpSocket::new_v4()?;
        socket.bind("127.0.0.1:0".parse()?)?;
        let listener = socket.listen(pace.backlog).context("listening")?;
        let port = listener.local_addr()?.port();
        let books = Arc::new(Mutex::new(Books::default()));
        let refused = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        // The next instant a request may be answered: one every 1/rate seconds.
        let slot = Arc::new(tokio::sync::Mutex::new(Instant::now()));
        let interval = Duration::from_secs(1) / pace.rate.max(1);
        let (b, r) = (Arc::clone(&books), Arc::clone(&refused));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if open.load(Ordering::SeqCst) >= pace.max_connections {
                    r.fetch_add(1, Ordering::SeqCst);
                    drop(stream);
                    continue;
                }
                open.fetch_add(1, Ordering::SeqCst);
                let (books, slot, open) = (Arc::clone(&b), Arc::clone(&slot), Arc::clone(&open));
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        answer(req, Arc::clone(&books), Arc::clone(&slot), interval)
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(PacedReceiver {
            port,
            books,
            refused_connections: refused,
            task,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// webhook-id → times it was answered 2xx.
    pub fn delivered(&self) -> HashMap<String, usize> {
        lock(&self.books).delivered.clone()
    }

    /// Requests answered 2xx so far.
    pub fn answered(&self) -> usize {
        lock(&self.books).delivered.values().sum()
    }

    /// Connections closed because `max_connections` were open.
    pub fn refused_connections(&self) -> usize {
        self.refused_connections.load(Ordering::SeqCst)
    }
}

impl Drop for PacedReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits for the request's slot, then answers 204 and books its webhook-id.
async fn answer(
    req: Request<Incoming>,
    books: Arc<Mutex<Books>>,
    slot: Arc<tokio::sync::Mutex<Instant>>,
    interval: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = {
        let mut next = slot.lock().await;
        let at = (*next).max(Instant::now());
        *next = at + interval;
        at
    };
    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    let id = req
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    *lock(&books).delivered.entry(id).or_default() += 1;
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = hyper::StatusCode::NO_CONTENT;
    Ok(response)
}
