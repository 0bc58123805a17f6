//! A fake [`DispatchHost`] for native tests: the test moves its clock, fills its queue, and
//! answers (or refuses) its callouts.

use crate::dispatcher::delivery::Request;
use crate::port::{CalloutRefused, CalloutResponse, DispatchHost, Metric, MetricKind};
use crate::registry::store::MemoryStore;
use crate::support::ids::{RandomSource, RandomUnavailable};
use crate::tests::fixtures::Rng as TestRng;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

/// One callout the dispatcher started.
#[derive(Debug, Clone)]
pub struct Sent {
    pub token: u32,
    pub at_ms: u64,
    pub request: Request,
    pub body: Vec<u8>,
}

impl Sent {
    pub fn header(&self, name: &str) -> Option<&str> {
        let found = self.request.headers.iter().find(|(k, _)| k == name);
        found.map(|(_, v)| v.as_str())
    }
}

pub struct FakeHost {
    clock: Cell<u64>,
    /// Added to the clock at every reading (to model slow work inside one callback).
    pub step_ms: Cell<u64>,
    pub store: Rc<MemoryStore>,
    /// Counters summed; gauges and histograms: the last value.
    metrics: RefCell<HashMap<Metric, u64>>,
    pub queue: VecDeque<Vec<u8>>,
    pub queue_registered: bool,
    /// Dequeue calls, to prove a callback's drain is bounded.
    pub dequeues: usize,
    pub tick_ms: Option<u64>,
    /// Every callout started, in order (answered ones stay listed).
    pub sent: Vec<Sent>,
    /// When set, `dispatch` refuses with it.
    pub refuse: Option<CalloutRefused>,
    /// Refusals, counted (they are not sent).
    pub refusals: usize,
    /// The answer being reported to `on_http_call_response`.
    pub answer: CalloutResponse,
    pub answer_body: Vec<u8>,
    pub done_calls: usize,
    /// Draws of randomness (message ids, retry jitter).
    pub fills: usize,
    /// Every etcd call started, in order: token, cluster, request.
    pub etcd_sent: Vec<(u32, String, crate::fleet::etcd::Request)>,
    /// The `Authorization` each etcd call carried, in the order of `etcd_sent`.
    pub etcd_auth: Vec<Option<String>>,
    /// When set, `call_etcd` refuses.
    pub refuse_etcd: bool,
    /// etcd calls a test answered already.
    pub etcd_answered: HashSet<u32>,
    /// What `node_id` answers.
    pub node: Option<String>,
    rng: TestRng,
    next_token: u32,
}

impl FakeHost {
    pub fn new(now_ms: u64) -> FakeHost {
        FakeHost {
            clock: Cell::new(now_ms),
            step_ms: Cell::new(0),
            store: Rc::new(MemoryStore::default()),
            metrics: RefCell::default(),
            queue: VecDeque::new(),
            queue_registered: false,
            dequeues: 0,
            tick_ms: None,
            sent: Vec::new(),
            refuse: None,
            refusals: 0,
            answer: CalloutResponse::default(),
            answer_body: Vec::new(),
            done_calls: 0,
            fills: 0,
            etcd_sent: Vec::new(),
            etcd_auth: Vec::new(),
            refuse_etcd: false,
            etcd_answered: HashSet::new(),
            node: None,
            rng: TestRng(0x5eed),
            next_token: 1,
        }
    }

    pub fn advance(&self, ms: u64) {
        self.clock.set(self.clock.get() + ms);
    }

    pub fn clock(&self) -> u64 {
        self.clock.get()
    }

    pub fn metric(&self, metric: Metric) -> u64 {
        self.metrics.borrow().get(&metric).copied().unwrap_or(0)
    }
}

impl RandomSource for FakeHost {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), RandomUnavailable> {
        self.fills += 1;
        self.rng.fill(buf)
    }
}

impl DispatchHost for FakeHost {
    type Store = Rc<MemoryStore>;

    fn now_ms(&self) -> u64 {
        let now = self.clock.get();
        self.clock.set(now + self.step_ms.get());
        now
    }

    fn store(&self) -> &Rc<MemoryStore> {
        &self.store
    }

    fn add_metric(&self, metric: Metric, n: u64) {
        assert_eq!(
            metric.kind(),
            MetricKind::Counter,
            "{metric:?} is no counter"
        );
        *self.metrics.borrow_mut().entry(metric).or_default() += n;
    }

    fn record_metric(&self, metric: Metric, value: u64) {
        assert_ne!(
            metric.kind(),
            MetricKind::Counter,
            "{metric:?} is a counter"
        );
        self.metrics.borrow_mut().insert(metric, value);
    }

    fn dispatch(&mut self, request: &Request, body: &[u8]) -> Result<u32, CalloutRefused> {
        if let Some(refused) = self.refuse {
            self.refusals += 1;
            return Err(refused);
        }
        let token = self.next_token;
        self.next_token += 1;
        self.sent.push(Sent {
            token,
            at_ms: self.clock.get(),
            request: request.clone(),
            body: body.to_vec(),
        });
        Ok(token)
    }

    fn callout_response(&self, headers: usize, body_size: usize) -> CalloutResponse {
        // As Envoy: no header map for a call without an answer.
        if headers == 0 {
            return CalloutResponse::default();
        }
        assert_eq!(
            (headers, body_size),
            (self.answer.headers, self.answer.body_size)
        );
        self.answer.clone()
    }

    fn callout_body(&self, max: usize) -> Vec<u8> {
        self.answer_body.iter().copied().take(max).collect()
    }

    fn set_tick_period_ms(&mut self, period_ms: u64) -> bool {
        self.tick_ms = Some(period_ms);
        true
    }

    fn register_queue(&mut self, name: &str) -> bool {
        assert_eq!(name, crate::model::queue::QUEUE_NAME);
        self.queue_registered = true;
        true
    }

    fn dequeue(&mut self) -> Option<Vec<u8>> {
        self.dequeues += 1;
        self.queue.pop_front()
    }

    fn done(&mut self) {
        self.done_calls += 1;
    }

    fn call_etcd(
        &mut self,
        request: &crate::fleet::etcd::Request,
        cluster: &str,
        auth: Option<&str>,
    ) -> Result<u32, CalloutRefused> {
        if self.refuse_etcd {
            return Err(CalloutRefused {
                unresolved: false,
                no_token: false,
            });
        }
        let token = self.next_token;
        self.next_token += 1;
        self.etcd_sent
            .push((token, cluster.to_string(), request.clone()));
        self.etcd_auth.push(auth.map(str::to_string));
        Ok(token)
    }

    fn node_id(&self) -> Option<String> {
        self.node.clone()
    }
}
