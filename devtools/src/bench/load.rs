//! The load generator: N HTTP/1.1 keep-alive connections to Envoy, each sending one request at a
//! time, for a fixed duration (or a fixed number of requests), latencies in an HDR histogram.
//!
//! Closed loop by default (each connection sends its next request as soon as the last answer is
//! read: the maximum throughput). With a rate, open loop: requests start on a fixed schedule
//! spread over the connections, for latency at a steady, known load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::MissedTickBehavior;

use super::timeline::{histogram, Timeline};

/// How long a connection task waits before reconnecting after a failure.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// What each request looks like.
#[derive(Clone)]
pub enum Shape {
    /// `GET <path>`.
    Get(&'static str),
    /// `POST <path>` with this JSON body.
    Post(&'static str, Bytes),
    /// `POST <path>` with `{"seq":N}`, N counting up from 0; the response time of each N is
    /// noted in the timeline.
    Numbered(&'static str, Arc<Timeline>),
}

/// How much load, for how long.
#[derive(Clone, Debug)]
pub struct Load {
    pub connections: usize,
    pub duration: Duration,
    /// Stop after this many requests in total (the duration still bounds the run).
    pub budget: Option<u64>,
    /// Requests per second over all connections (open loop); `None` is closed loop.
    pub rate: Option<f64>,
}

impl Load {
    /// As fast as `connections` connections go, for `duration`.
    pub fn closed(connections: usize, duration: Duration) -> Load {
        Load {
            connections,
            duration,
            budget: None,
            rate: None,
        }
    }
}

/// What a run measured.
pub struct Outcome {
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests that failed or were answered otherwise.
    pub errors: u64,
    pub elapsed: Duration,
    /// Request latencies in microseconds (2xx only).
    pub latency: Histogram<u64>,
}

impl Outcome {
    pub fn empty() -> Outcome {
        Outcome {
            ok: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
        }
    }

    /// Requests per second answered 2xx.
    pub fn rate(&self) -> f64 {
        per_second(self.ok, self.elapsed)
    }

    /// Adds another run (rounds of one side are summed).
    pub fn absorb(&mut self, other: &Outcome) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        let _ = self.latency.add(&other.latency);
    }

    /// A latency quantile in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// `count / elapsed`, 0 for an empty span.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

/// What the connection tasks share: the request counter and when to stop.
struct Plan {
    port: u16,
    shape: Shape,
    issued: AtomicU64,
    budget: u64,
    deadline: Instant,
}

impl Plan {
    /// The next request's number, or `None` when the budget is spent or the time is up.
    fn next(&self) -> Option<u64> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        (n < self.budget).then_some(n)
    }
}

/// Sends load through Envoy's listener on `127.0.0.1:port` and waits for the last answer.
pub async fn run(port: u16, shape: &Shape, load: &Load) -> Result<Outcome> {
    let start = Instant::now();
    let plan = Arc::new(Plan {
        port,
        shape: shape.clone(),
        issued: AtomicU64::new(0),
        budget: load.budget.unwrap_or(u64::MAX),
        deadline: start + load.duration,
    });
    let connections = load.connections.max(1);
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let schedule = load.rate.map(|rate| Schedule::new(rate, connections, i));
            tokio::spawn(connection(plan.clone(), schedule))
        })
        .collect();
    let mut outcome = Outcome::empty();
    for task in tasks {
        outcome.absorb(&task.await.context("a load connection task failed")?);
    }
    outcome.elapsed = start.elapsed();
    Ok(outcome)
}

/// Open-loop pacing of one connection: its share of the rate, phase-shifted so the connections
/// do not all fire at the same instant.
struct Schedule {
    period: Duration,
    offset: Duration,
}

impl Schedule {
    fn new(rate: f64, connections: usize, index: usize) -> Schedule {
        let period = Duration::from_secs_f64(connections as f64 / rate.max(0.001));
        let offset = period.mul_f64(index as f64 / connections as f64);
        Schedule { period, offset }
    }

    fn ticker(&self) -> tokio::time::Interval {
        let first = tokio::time::Instant::now() + self.offset;
        let mut ticker = tokio::time::interval_at(first, self.period);
        // A slow answer delays the next request rather than causing a burst to catch up.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    }
}

/// One client connection: requests one after the other until the plan says stop.
async fn connection(plan: Arc<Plan>, schedule: Option<Schedule>) -> Outcome {
    let mut outcome = Outcome::empty();
    let mut ticker = schedule.map(|s| s.ticker());
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
        }
        let Some(seq) = plan.next() else { break };
        if sender.is_none() {
            sender = connect(plan.port).await.ok();
        }
        let Some(live) = sender.as_mut() else {
            outcome.errors += 1;
            tokio::time::sleep(RECONNECT_PAUSE).await;
            continue;
        };
        let started = Instant::now();
        match exchange(live, &plan.shape, seq).await {
            Ok(true) => {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                outcome.latency.saturating_record(micros.max(1));
                outcome.ok += 1;
            }
            Ok(false) => outcome.errors += 1,
            Err(_) => {
                outcome.errors += 1;
                sender = None;
            }
        }
    }
    outcome
}

async fn connect(port: u16) -> Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One request and its whole response; `Ok(true)` for a 2xx.
async fn exchange(sender: &mut SendRequest<Full<Bytes>>, shape: &Shape, seq: u64) -> Result<bool> {
    sender.ready().await?;
    if let Shape::Numbered(_, timeline) = shape {
        timeline.mark_sent(seq);
    }
    let response = sender.send_request(request(shape, seq)?).await?;
    let ok = response.status().is_success();
    response.into_body().collect().await?;
    if let (true, Shape::Numbered(_, timeline)) = (ok, shape) {
        timeline.mark_responded(seq);
    }
    Ok(ok)
}

fn request(shape: &Shape, seq: u64) -> Result<Request<Full<Bytes>>> {
    let (method, path, body) = match shape {
        Shape::Get(path) => (Method::GET, *path, Bytes::new()),
        Shape::Post(path, body) => (Method::POST, *path, body.clone()),
        Shape::Numbered(path, _) => (
            Method::POST,
            *path,
            Bytes::from(format!(r#"{{"seq":{seq}}}"#)),
        ),
    };
    Ok(Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "127.0.0.1")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?)
}
