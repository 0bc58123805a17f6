//! A fake [`StreamHost`]: the test sets the stream's headers and bodies phase by phase, and
//! reads back what the filter did (local replies, queued messages, metrics, body reads).

use crate::port::{Metric, StreamHost};
use crate::registry::store::MemoryStore;
use crate::support::ids::RandomUnavailable;
use crate::tests::fixtures::Rng as TestRng;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// One local reply.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub(crate) struct FakeStreamHost {
    pub request_headers: RefCell<Vec<(String, Vec<u8>)>>,
    pub response_headers: RefCell<Vec<(String, Vec<u8>)>>,
    /// All of the request body buffered so far.
    pub request_body: RefCell<Vec<u8>>,
    /// The response body chunk being passed on.
    pub response_chunk: RefCell<Vec<u8>>,
    /// How often a body (request or response) was read.
    pub body_reads: Cell<usize>,
    pub replies: RefCell<Vec<Reply>>,
    /// Encoded messages the dispatcher would read.
    pub queue: RefCell<Vec<Vec<u8>>>,
    /// False: the queue is not there (no dispatcher configured with this vm_id).
    pub queue_exists: Cell<bool>,
    pub store: Rc<MemoryStore>,
    pub now_ms: Cell<u64>,
    pub rng: RefCell<TestRng>,
    pub detected: Cell<u64>,
    pub dropped: Cell<u64>,
    /// `webhooks_fleet_etcd_errors`.
    pub etcd_errors: Cell<u64>,
    /// The last `webhooks_dispatcher_alive` shown.
    pub alive_gauge: Cell<Option<bool>>,
    /// Every etcd call started: token, cluster, request.
    pub etcd_sent: RefCell<Vec<(u32, String, crate::fleet::etcd::Request)>>,
    /// The `Authorization` each etcd call carried, in the order of `etcd_sent`.
    pub etcd_auth: RefCell<Vec<Option<String>>>,
    /// When set, `call_etcd` refuses.
    pub refuse_etcd: Cell<bool>,
    /// The etcd answer being reported: `:status` and body.
    pub etcd_reply: RefCell<(Option<String>, Vec<u8>)>,
}

impl Default for FakeStreamHost {
    fn default() -> Self {
        FakeStreamHost {
            request_headers: RefCell::default(),
            response_headers: RefCell::default(),
            request_body: RefCell::default(),
            response_chunk: RefCell::default(),
            body_reads: Cell::new(0),
            replies: RefCell::default(),
            queue: RefCell::default(),
            queue_exists: Cell::new(true),
            store: Rc::default(),
            now_ms: Cell::new(1_795_000_000_000),
            rng: RefCell::new(TestRng(7)),
            detected: Cell::new(0),
            dropped: Cell::new(0),
            etcd_errors: Cell::new(0),
            alive_gauge: Cell::new(None),
            etcd_sent: RefCell::default(),
            etcd_auth: RefCell::default(),
            refuse_etcd: Cell::new(false),
            etcd_reply: RefCell::default(),
        }
    }
}

fn lookup(map: &RefCell<Vec<(String, Vec<u8>)>>, name: &str) -> Option<Vec<u8>> {
    let map = map.borrow();
    map.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

fn to_map(headers: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect()
}

impl FakeStreamHost {
    /// A new stream's request headers (and no body yet).
    pub fn request(&self, headers: &[(&str, &str)]) {
        *self.request_headers.borrow_mut() = to_map(headers);
        self.request_body.borrow_mut().clear();
        self.response_headers.borrow_mut().clear();
    }

    /// More of the request body arrives; returns all of it so far, as the host reports it.
    pub fn request_data(&self, chunk: &[u8]) -> usize {
        let mut body = self.request_body.borrow_mut();
        body.extend_from_slice(chunk);
        body.len()
    }

    pub fn response(&self, headers: &[(&str, &str)]) {
        *self.response_headers.borrow_mut() = to_map(headers);
    }

    /// The response chunk passing now; returns its size.
    pub fn response_data(&self, chunk: &[u8]) -> usize {
        *self.response_chunk.borrow_mut() = chunk.to_vec();
        chunk.len()
    }
}

impl StreamHost for FakeStreamHost {
    type Store = Rc<MemoryStore>;

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        lookup(&self.request_headers, name)
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        lookup(&self.response_headers, name)
    }

    fn request_body(&self, max: usize) -> Option<Vec<u8>> {
        self.body_reads.set(self.body_reads.get() + 1);
        let body = self.request_body.borrow();
        Some(body[..max.min(body.len())].to_vec())
    }

    fn response_body(&self, max: usize) -> Option<Vec<u8>> {
        self.body_reads.set(self.body_reads.get() + 1);
        let chunk = self.response_chunk.borrow();
        Some(chunk[..max.min(chunk.len())].to_vec())
    }

    fn send_response(&self, status: u16, headers: Vec<(&str, &str)>, body: &[u8]) {
        self.replies.borrow_mut().push(Reply {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        });
    }

    fn enqueue(&self, message: &[u8]) -> bool {
        if self.queue_exists.get() {
            self.queue.borrow_mut().push(message.to_vec());
        }
        self.queue_exists.get()
    }

    fn store(&self) -> Rc<MemoryStore> {
        Rc::clone(&self.store)
    }

    fn now_ms(&self) -> u64 {
        self.now_ms.get()
    }

    fn fill_random(&self, buf: &mut [u8]) -> Result<(), RandomUnavailable> {
        crate::support::ids::RandomSource::fill(&mut *self.rng.borrow_mut(), buf)
    }

    fn add_metric(&self, metric: Metric, n: u64) {
        let cell = match metric {
            Metric::EventsDetected => &self.detected,
            Metric::EventsDropped => &self.dropped,
            Metric::FleetEtcdErrors => &self.etcd_errors,
            _ => return,
        };
        cell.set(cell.get() + n);
    }

    fn record_metric(&self, metric: Metric, value: u64) {
        if metric == Metric::DispatcherAlive {
            self.alive_gauge.set(Some(value == 1));
        }
    }

    fn call_etcd(
        &self,
        request: &crate::fleet::etcd::Request,
        cluster: &str,
        auth: Option<&str>,
    ) -> Option<u32> {
        if self.refuse_etcd.get() {
            return None;
        }
        let mut sent = self.etcd_sent.borrow_mut();
        let token = u32::try_from(sent.len()).ok()? + 1;
        sent.push((token, cluster.to_string(), request.clone()));
        self.etcd_auth.borrow_mut().push(auth.map(str::to_string));
        Some(token)
    }

    fn etcd_answer(&self, body_size: usize) -> (Option<String>, Vec<u8>) {
        let (status, body) = self.etcd_reply.borrow().clone();
        (status, body.into_iter().take(body_size).collect())
    }
}

pub(crate) use crate::tests::fixtures::logged;
