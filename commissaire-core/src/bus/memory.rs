//! The in-process bus (`memory://`): the same contract as the brokers, for the
//! all-in-one mode and for unit tests. Nothing survives the process, which is
//! acceptable because the all-in-one mode also runs every consumer in that
//! process.
//!
//! A served queue is a list of the instances serving it. A message is handed to
//! one of them in turn, in a task of its own that first takes one of the
//! instance's `concurrency` permits, so instances compete and each handles at most
//! `concurrency` at once. A message that arrives while no instance serves its
//! queue waits in the queue for the next one.
//!
//! Requests and replies are handed over as values, never encoded: the JSON-RPC
//! shape and checks are the brokers' ([`super::handle_request`]), without the four
//! JSON passes a broker needs, and without a hop through a consumer task.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Bus, BusError, Event, Handler, PendingReplies, ServeHandle, ServeOptions, Subscription, topic};
use crate::jsonrpc::{self, Request};

#[derive(Clone)]
struct Delivery {
    routing_key: String,
    message: Message,
}

/// What travels: a request as built by [`Bus::request`], or whatever was
/// published (an event, or a notification for a served queue).
#[derive(Clone)]
enum Message {
    Request(Request),
    Published(Value),
}

/// One instance serving a queue.
struct Instance {
    handler: Arc<dyn Handler>,
    /// `concurrency` permits; closed once the instance stopped.
    limit: Arc<Semaphore>,
}

#[derive(Default)]
struct Queue {
    patterns: Vec<String>,
    instances: Vec<Arc<Instance>>,
    /// Round robin over `instances`.
    next: usize,
    /// Messages that arrived while no instance served the queue.
    waiting: VecDeque<Delivery>,
}

impl Queue {
    fn pick(&mut self) -> Option<Arc<Instance>> {
        if self.instances.is_empty() {
            return None;
        }
        self.next = (self.next + 1) % self.instances.len();
        Some(self.instances[self.next].clone())
    }
}

struct Subscriber {
    patterns: Vec<String>,
    tx: mpsc::UnboundedSender<Event>,
}

#[derive(Default)]
struct Inner {
    queues: HashMap<String, Queue>,
    subscribers: Vec<Subscriber>,
}

/// See the module documentation.
#[derive(Clone, Default)]
pub struct MemoryBus {
    inner: Arc<Mutex<Inner>>,
    pending: Arc<PendingReplies>,
    /// Request ids: unique within the bus, which is all an id must be here.
    ids: Arc<AtomicU64>,
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn route(&self, delivery: Delivery) {
        let mut handoffs = Vec::new();
        let subscribers = {
            let mut inner = self.lock();
            inner.subscribers.retain(|s| !s.tx.is_closed());
            for (name, queue) in inner.queues.iter_mut() {
                if !queue.patterns.iter().any(|p| topic::matches(p, &delivery.routing_key)) {
                    continue;
                }
                match queue.pick() {
                    Some(instance) => handoffs.push((name.clone(), instance)),
                    None => queue.waiting.push_back(delivery.clone()),
                }
            }
            inner
                .subscribers
                .iter()
                .filter(|s| s.patterns.iter().any(|p| topic::matches(p, &delivery.routing_key)))
                .map(|s| s.tx.clone())
                .collect::<Vec<_>>()
        };
        if !subscribers.is_empty() {
            let body = match &delivery.message {
                Message::Published(value) => value.clone(),
                Message::Request(request) => serde_json::to_value(request).unwrap_or_default(),
            };
            for tx in subscribers {
                let _ = tx.send(Event { routing_key: delivery.routing_key.clone(), body: body.clone() });
            }
        }
        // Every matching queue gets the message (the last one without a copy).
        if let Some((queue, instance)) = handoffs.pop() {
            for (other, instance) in handoffs {
                self.hand_over(other, instance, delivery.clone());
            }
            self.hand_over(queue, instance, delivery);
        }
    }

    /// Handles `delivery` on `instance` in a task of its own, once one of the
    /// instance's permits is free. An instance that stopped meanwhile gives it
    /// back to its queue.
    fn hand_over(&self, queue: String, instance: Arc<Instance>, delivery: Delivery) {
        let bus = self.clone();
        tokio::spawn(async move {
            let Ok(permit) = instance.limit.clone().acquire_owned().await else {
                bus.requeue(&queue, delivery);
                return;
            };
            let routing_key = &delivery.routing_key;
            match delivery.message {
                Message::Request(request) => {
                    if let Some(response) = super::handle_request(instance.handler.as_ref(), routing_key, request).await
                    {
                        bus.pending.complete(response);
                    }
                }
                // Published to a served queue: decoded as a broker would (a
                // notification gets no reply).
                Message::Published(body) => {
                    let bytes = serde_json::to_vec(&body).unwrap_or_default();
                    if let Some(reply) = super::handle_delivery(instance.handler.as_ref(), routing_key, &bytes).await {
                        bus.pending.complete_encoded(&reply);
                    }
                }
            }
            drop(permit);
        });
    }

    /// Gives a message its stopped instance could not take to another one (or
    /// keeps it for the next).
    fn requeue(&self, queue: &str, delivery: Delivery) {
        let instance = {
            let mut inner = self.lock();
            let Some(q) = inner.queues.get_mut(queue) else { return };
            match q.pick() {
                Some(instance) => instance,
                None => {
                    q.waiting.push_back(delivery);
                    return;
                }
            }
        };
        self.hand_over(queue.to_string(), instance, delivery);
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn request(&self, routing_key: &str, params: Value, timeout: Duration) -> Result<Value, BusError> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed).to_string();
        let request = Request::new(Some(id.clone()), jsonrpc::method_of(routing_key), params);
        let guard = self.pending.register(&id);
        self.route(Delivery { routing_key: routing_key.to_string(), message: Message::Request(request) });
        guard.wait(routing_key, timeout).await
    }

    async fn publish(&self, routing_key: &str, body: &Value) -> Result<(), BusError> {
        self.route(Delivery { routing_key: routing_key.to_string(), message: Message::Published(body.clone()) });
        Ok(())
    }

    async fn subscribe(&self, patterns: &[&str]) -> Result<Subscription, BusError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().subscribers.push(Subscriber { patterns: patterns.iter().map(|p| p.to_string()).collect(), tx });
        // The subscriber is removed lazily once its receiver is dropped.
        Ok(Subscription::new(rx, CancellationToken::new()))
    }

    async fn serve(
        &self,
        queue: &str,
        patterns: &[&str],
        handler: Arc<dyn Handler>,
        options: ServeOptions,
    ) -> Result<ServeHandle, BusError> {
        let concurrency = options.concurrency.max(1);
        let instance = Arc::new(Instance { handler, limit: Arc::new(Semaphore::new(concurrency)) });
        let waiting: Vec<Delivery> = {
            let mut inner = self.lock();
            let entry = inner.queues.entry(queue.to_string()).or_default();
            for pattern in patterns {
                if !entry.patterns.iter().any(|p| p == pattern) {
                    entry.patterns.push(pattern.to_string());
                }
            }
            entry.instances.push(instance.clone());
            entry.waiting.drain(..).collect()
        };
        for delivery in waiting {
            self.hand_over(queue.to_string(), instance.clone(), delivery);
        }
        let stop = CancellationToken::new();
        let bus = self.clone();
        let queue = queue.to_string();
        let task_stop = stop.clone();
        let task = tokio::spawn(async move {
            task_stop.cancelled().await;
            // No new message from now on; those handed over already finish first
            // (the semaphore is fair), then the rest go back to the queue.
            if let Some(q) = bus.lock().queues.get_mut(&queue) {
                q.instances.retain(|i| !Arc::ptr_eq(i, &instance));
            }
            let _ = instance.limit.acquire_many(concurrency as u32).await;
            instance.limit.close();
        });
        Ok(ServeHandle::new(stop, task))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use serde_json::json;

    use super::*;
    use crate::jsonrpc::RpcError;

    const WAIT: Duration = Duration::from_secs(5);

    /// Counts the calls running at once, each held until the gate lets it go.
    struct Gated {
        running: AtomicUsize,
        most: AtomicUsize,
        done: AtomicUsize,
        gate: Semaphore,
    }

    impl Gated {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                running: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
                done: AtomicUsize::new(0),
                gate: Semaphore::new(0),
            })
        }
    }

    #[async_trait]
    impl Handler for Gated {
        async fn call(&self, _method: &str, params: Value) -> Result<Value, RpcError> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            if let Ok(permit) = self.gate.acquire().await {
                permit.forget();
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.done.fetch_add(1, Ordering::SeqCst);
            Ok(params)
        }
    }

    fn send(bus: &MemoryBus, params: Value) -> tokio::task::JoinHandle<Result<Value, BusError>> {
        let bus = bus.clone();
        tokio::spawn(async move { bus.request("q.echo", params, WAIT).await })
    }

    async fn until(what: impl Fn() -> bool) {
        tokio::time::timeout(WAIT, async {
            while !what() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("condition not reached");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_instance_handles_at_most_its_concurrency_at_once() {
        let bus = MemoryBus::new();
        let handler = Gated::new();
        let serving = bus.serve("q", &["q.*"], handler.clone(), ServeOptions { concurrency: 3 }).await.expect("serve");
        let calls: Vec<_> = (0..20).map(|i| send(&bus, json!({"i": i}))).collect();
        until(|| handler.running.load(Ordering::SeqCst) == 3).await;
        handler.gate.add_permits(20);
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.expect("task").expect("reply"), json!({"i": i}));
        }
        assert_eq!(handler.most.load(Ordering::SeqCst), 3);
        serving.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopping_instance_finishes_what_it_was_handed_and_the_next_one_gets_the_rest() {
        let bus = MemoryBus::new();
        let first = Gated::new();
        let serving = bus.serve("q", &["q.*"], first.clone(), ServeOptions { concurrency: 1 }).await.expect("serve");
        let early: Vec<_> = (0..3).map(|i| send(&bus, json!(i))).collect();
        until(|| first.running.load(Ordering::SeqCst) == 1).await;
        let stopping = tokio::spawn(serving.shutdown());
        until(|| bus.lock().queues.get("q").is_some_and(|q| q.instances.is_empty())).await;
        // Sent while the only instance stops: kept for the next one.
        let late = send(&bus, json!("late"));
        first.gate.add_permits(3);
        for call in early {
            call.await.expect("task").expect("the stopping instance answers what it was handed");
        }
        stopping.await.expect("shutdown");
        assert_eq!(first.done.load(Ordering::SeqCst), 3, "the late request went to the stopped instance");

        let second = Gated::new();
        second.gate.add_permits(1);
        let serving = bus.serve("q", &["q.*"], second.clone(), ServeOptions { concurrency: 1 }).await.expect("serve");
        assert_eq!(late.await.expect("task").expect("reply"), json!("late"));
        assert_eq!(second.done.load(Ordering::SeqCst), 1);
        serving.shutdown().await;
    }
}
