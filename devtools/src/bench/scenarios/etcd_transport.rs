//! Scenario 11: etcd's HTTP/JSON gateway against its gRPC API, the same etcd in the same run, for
//! the calls fleet mode makes: a txn with one put (a subscription write), a txn with 128 puts of
//! 1 KB (a batch of the outbox) and a range of a 1,000-key prefix of 1 KB values (the registry
//! read at start). The gateway is spoken as the plugin speaks it (JSON, base64, HTTP/1.1
//! keep-alive connections, like Envoy's callouts; answers parsed and values decoded); gRPC by
//! tonic over one HTTP/2 connection (how Envoy's gRPC client would multiplex calls). Each kind is
//! timed one call at a time and with [`IN_FLIGHT`] calls in flight, in rounds that alternate which
//! transport goes first. etcd's own CPU time per call is read from `/proc` as well: the gateway
//! runs inside etcd and turns JSON into gRPC there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use hdrhistogram::Histogram;

use crate::bench::cpu::Cpu;
use crate::bench::fleet::gateway::Gateway;
use crate::bench::fleet::grpc::{
    prefix_end, Compare, KvClient, PutRequest, RangeRequest, Request, RequestOp, TargetUnion,
    TxnRequest, COMPARE_EQUAL, TARGET_CREATE,
};
use crate::bench::fleet::seed;
use crate::bench::report::{thousands, Report};
use crate::bench::timeline::histogram;
use crate::etcd::Etcd;

const SCENARIO: &str = "11 etcd: HTTP/JSON gateway vs gRPC";
const ROUNDS: usize = 3;
const IN_FLIGHT: usize = 8;
const VALUE_BYTES: usize = 1024;
const RANGE_KEYS: usize = 1000;
const RANGE_PREFIX: &str = "/bench/range/";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Txn1,
    Txn128,
    Range1000,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Txn1 => "txn, 1 put (compare + 1 KB)",
            Kind::Txn128 => "txn, 128 puts of 1 KB",
            Kind::Range1000 => "range of a 1,000-key prefix (1 KB values)",
        }
    }

    /// Calls per round: (one at a time, in flight).
    fn calls(self) -> (u64, u64) {
        match self {
            Kind::Txn1 => (200, 800),
            Kind::Txn128 => (30, 96),
            Kind::Range1000 => (30, 96),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Gateway,
    Grpc,
}

#[derive(Clone)]
struct Clients {
    gateway: Gateway,
    grpc: KvClient,
    /// Makes every txn key unique.
    next: Arc<AtomicU64>,
}

/// The totals of one transport, one kind, one concurrency over all rounds.
struct Tally {
    latencies: Histogram<u64>,
    calls: u64,
    elapsed: Duration,
    etcd_cpu: Duration,
    /// This process's CPU time: building requests, reading answers (the plugin's side).
    client_cpu: Duration,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latencies: histogram(),
            calls: 0,
            elapsed: Duration::ZERO,
            etcd_cpu: Duration::ZERO,
            client_cpu: Duration::ZERO,
        }
    }

    fn ms(&self, q: f64) -> f64 {
        self.latencies.value_at_quantile(q) as f64 / 1000.0
    }

    fn per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn cpu_us(&self) -> f64 {
        self.etcd_cpu.as_secs_f64() * 1e6 / self.calls.max(1) as f64
    }

    fn client_cpu_us(&self) -> f64 {
        self.client_cpu.as_secs_f64() * 1e6 / self.calls.max(1) as f64
    }
}

pub async fn run(report: &mut Report) -> Result<()> {
    let etcd = Etcd::start().await?;
    let records = (0..RANGE_KEYS)
        .map(|i| {
            (
                format!("{RANGE_PREFIX}{i:05}").into_bytes(),
                value(i as u64),
            )
        })
        .collect();
    seed(&etcd, records).await?;
    let clients = Clients {
        gateway: Gateway::new(etcd.client_port()),
        grpc: KvClient::connect(etcd.client_port()).await?,
        next: Arc::new(AtomicU64::new(0)),
    };
    let (json_bytes, proto_bytes) = range_sizes(&etcd, &clients).await?;
    report.info(
        SCENARIO,
        "set-up",
        format!(
            "one etcd ({}), {ROUNDS} rounds alternating which transport goes first; a range \
             answer is {} bytes of JSON, {} of protobuf",
            etcd_version(),
            thousands(json_bytes as f64),
            thousands(proto_bytes as f64)
        ),
    );
    for kind in [Kind::Txn1, Kind::Txn128, Kind::Range1000] {
        let (sequential, in_flight) = kind.calls();
        // Warm-up: connections open, etcd's caches and the gateway's paths warm.
        for transport in [Transport::Gateway, Transport::Grpc] {
            measure(&etcd, &clients, kind, transport, 1, 5).await?;
        }
        let mut gateway = [Tally::new(), Tally::new()];
        let mut grpc = [Tally::new(), Tally::new()];
        for round in 0..ROUNDS {
            let order = if round % 2 == 0 {
                [Transport::Gateway, Transport::Grpc]
            } else {
                [Transport::Grpc, Transport::Gateway]
            };
            for transport in order {
                let tallies = match transport {
                    Transport::Gateway => &mut gateway,
                    Transport::Grpc => &mut grpc,
                };
                for (slot, (tasks, calls)) in [(1, sequential), (IN_FLIGHT, in_flight)]
                    .into_iter()
                    .enumerate()
                {
                    let one = measure(&etcd, &clients, kind, transport, tasks, calls).await?;
                    let tally = &mut tallies[slot];
                    tally.latencies.add(&one.latencies)?;
                    tally.calls += one.calls;
                    tally.elapsed += one.elapsed;
                    tally.etcd_cpu += one.etcd_cpu;
                    tally.client_cpu += one.client_cpu;
                }
            }
        }
        let [gw_seq, gw_par] = &gateway;
        let [rpc_seq, rpc_par] = &grpc;
        report.info(
            SCENARIO,
            &format!("{}, one at a time: p50 / p99", kind.name()),
            format!(
                "gateway {:.2} / {:.2} ms, gRPC {:.2} / {:.2} ms; gateway ÷ gRPC p50 {:.2} \
                 ({} calls each)",
                gw_seq.ms(0.5),
                gw_seq.ms(0.99),
                rpc_seq.ms(0.5),
                rpc_seq.ms(0.99),
                gw_seq.ms(0.5) / rpc_seq.ms(0.5).max(1e-9),
                gw_seq.calls
            ),
        );
        report.info(
            SCENARIO,
            &format!("{}, {IN_FLIGHT} in flight: calls/s", kind.name()),
            format!(
                "gateway {}, gRPC {}; gateway ÷ gRPC {:.2} (p99 {:.1} vs {:.1} ms)",
                thousands(gw_par.per_second()),
                thousands(rpc_par.per_second()),
                gw_par.per_second() / rpc_par.per_second().max(1e-9),
                gw_par.ms(0.99),
                rpc_par.ms(0.99)
            ),
        );
        let cpu_seq = gw_seq.cpu_us() / rpc_seq.cpu_us().max(1e-9);
        report.info(
            SCENARIO,
            &format!("{}: CPU per call, etcd / client", kind.name()),
            format!(
                "etcd: gateway {:.0} µs, gRPC {:.0} µs (one at a time; gateway ÷ gRPC \
                 {cpu_seq:.2}; {IN_FLIGHT} in flight {:.0} vs {:.0} µs); client: gateway {:.0} \
                 µs, gRPC {:.0} µs",
                gw_seq.cpu_us(),
                rpc_seq.cpu_us(),
                gw_par.cpu_us(),
                rpc_par.cpu_us(),
                gw_seq.client_cpu_us(),
                rpc_seq.client_cpu_us()
            ),
        );
    }
    Ok(())
}

/// `calls` calls of `kind` over `tasks` concurrent tasks.
async fn measure(
    etcd: &Etcd,
    clients: &Clients,
    kind: Kind,
    transport: Transport,
    tasks: usize,
    calls: u64,
) -> Result<Tally> {
    let left = Arc::new(AtomicU64::new(calls));
    let cpu_before = Cpu::of(etcd.pid())?;
    let client_before = Cpu::of(std::process::id())?;
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (clients, left) = (clients.clone(), left.clone());
        handles.push(tokio::spawn(async move {
            let mut clients = clients;
            let mut latencies = histogram();
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let at = Instant::now();
                call(&mut clients, kind, transport).await?;
                latencies.saturating_record(at.elapsed().as_micros().max(1) as u64);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut tally = Tally::new();
    for handle in handles {
        tally.latencies.add(&handle.await??)?;
    }
    tally.elapsed = started.elapsed();
    tally.calls = calls;
    tally.etcd_cpu = total(Cpu::of(etcd.pid())?).saturating_sub(total(cpu_before));
    tally.client_cpu = total(Cpu::of(std::process::id())?).saturating_sub(total(client_before));
    Ok(tally)
}

fn total(cpu: Cpu) -> Duration {
    cpu.main + cpu.workers + cpu.other
}

/// One call, its request built and its answer read (as the plugin would: parsed, values decoded).
async fn call(clients: &mut Clients, kind: Kind, transport: Transport) -> Result<()> {
    match kind {
        Kind::Range1000 => {
            let request = range_request();
            let keys = match transport {
                Transport::Gateway => clients.gateway.range(&request).await?.kvs.len(),
                Transport::Grpc => clients.grpc.range(request).await?.kvs.len(),
            };
            ensure!(keys == RANGE_KEYS, "the range read {keys} keys");
        }
        Kind::Txn1 | Kind::Txn128 => {
            let n = clients.next.fetch_add(1, Ordering::Relaxed);
            let txn = txn_request(kind, n);
            let succeeded = match transport {
                Transport::Gateway => clients.gateway.txn(&txn).await?,
                Transport::Grpc => clients.grpc.txn(txn).await?.succeeded,
            };
            ensure!(succeeded, "a {kind:?} txn failed its compare");
        }
    }
    Ok(())
}

/// A 1 KB value that looks like a record (JSON text).
fn value(n: u64) -> Vec<u8> {
    let head = format!(r#"{{"id":"msg_{n:012}","pad":""#);
    let mut text = head.into_bytes();
    text.resize(VALUE_BYTES - 2, b'x');
    text.extend_from_slice(b"\"}");
    text
}

fn put(key: Vec<u8>, n: u64) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key,
            value: value(n),
            lease: 0,
        })),
    }
}

/// Txn1: create a new key only if absent (a subscription create); Txn128: a batch of puts.
fn txn_request(kind: Kind, n: u64) -> TxnRequest {
    match kind {
        Kind::Txn1 => {
            let key = format!("/bench/one/{n:012}").into_bytes();
            TxnRequest {
                compare: vec![Compare {
                    result: COMPARE_EQUAL,
                    target: TARGET_CREATE,
                    key: key.clone(),
                    target_union: Some(TargetUnion::CreateRevision(0)),
                }],
                success: vec![put(key, n)],
                failure: Vec::new(),
            }
        }
        _ => TxnRequest {
            compare: Vec::new(),
            // The same 1,024 keys over and over: etcd's database stays small.
            success: (0..128u64)
                .map(|j| put(format!("/bench/batch/{:02}/{j:03}", n % 8).into_bytes(), n))
                .collect(),
            failure: Vec::new(),
        },
    }
}

fn range_request() -> RangeRequest {
    RangeRequest {
        key: RANGE_PREFIX.as_bytes().to_vec(),
        range_end: prefix_end(RANGE_PREFIX.as_bytes()),
        ..RangeRequest::default()
    }
}

/// The range answer's size in each encoding.
async fn range_sizes(etcd: &Etcd, clients: &Clients) -> Result<(usize, usize)> {
    let body = serde_json::json!({
        "key": base64_of(RANGE_PREFIX.as_bytes()),
        "range_end": base64_of(&prefix_end(RANGE_PREFIX.as_bytes())),
    });
    let json = reqwest::Client::new()
        .post(etcd.url("/v3/kv/range"))
        .body(body.to_string())
        .send()
        .await?
        .bytes()
        .await?
        .len();
    let proto = prost::Message::encoded_len(&clients.grpc.clone().range(range_request()).await?);
    Ok((json, proto))
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `etcd --version`'s first line, e.g. `etcd Version: 3.4.30`.
fn etcd_version() -> String {
    std::process::Command::new(crate::etcd::etcd_bin())
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "etcd".to_string())
}
