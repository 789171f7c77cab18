//! The in-process bus (`memory://`): the same contract as the brokers, for the
//! all-in-one mode and for unit tests. Queues are multi-consumer channels, so
//! instances serving one queue compete for its messages. Nothing survives the
//! process, which is acceptable because the all-in-one mode also runs every
//! consumer in that process.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Bus, BusError, Event, Handler, PendingReplies, ServeHandle, ServeOptions, Subscription, topic};
use crate::jsonrpc::{self, Request, Response};

struct Delivery {
    routing_key: String,
    body: Vec<u8>,
}

struct Queue {
    tx: async_channel::Sender<Delivery>,
    rx: async_channel::Receiver<Delivery>,
    patterns: Vec<String>,
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
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn route(&self, routing_key: &str, body: Vec<u8>) {
        let (queues, subscribers) = {
            let mut inner = self.lock();
            inner.subscribers.retain(|s| !s.tx.is_closed());
            let queues: Vec<_> = inner
                .queues
                .values()
                .filter(|q| q.patterns.iter().any(|p| topic::matches(p, routing_key)))
                .map(|q| q.tx.clone())
                .collect();
            let subscribers: Vec<_> = inner
                .subscribers
                .iter()
                .filter(|s| s.patterns.iter().any(|p| topic::matches(p, routing_key)))
                .map(|s| s.tx.clone())
                .collect();
            (queues, subscribers)
        };
        if !subscribers.is_empty() {
            match jsonrpc::decode_body::<Value>(&body) {
                Ok(value) => {
                    for tx in subscribers {
                        let _ = tx.send(Event { routing_key: routing_key.to_string(), body: value.clone() });
                    }
                }
                Err(err) => tracing::warn!(routing_key, error = %err, "not delivering undecodable event"),
            }
        }
        for tx in queues {
            // Unbounded channels only fail when closed, which never happens while
            // the queue is registered.
            let _ = tx.try_send(Delivery { routing_key: routing_key.to_string(), body: body.clone() });
        }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn request(&self, routing_key: &str, params: Value, timeout: Duration) -> Result<Value, BusError> {
        let id = uuid::Uuid::new_v4().to_string();
        let request = Request::new(Some(id.clone()), jsonrpc::method_of(routing_key), params);
        let body = serde_json::to_vec(&request).map_err(|e| BusError::Malformed(e.to_string()))?;
        let guard = self.pending.register(&id);
        self.route(routing_key, body);
        guard.wait(routing_key, timeout).await
    }

    async fn publish(&self, routing_key: &str, body: &Value) -> Result<(), BusError> {
        let body = serde_json::to_vec(body).map_err(|e| BusError::Malformed(e.to_string()))?;
        self.route(routing_key, body);
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
        let rx = {
            let mut inner = self.lock();
            let entry = inner.queues.entry(queue.to_string()).or_insert_with(|| {
                let (tx, rx) = async_channel::unbounded();
                Queue { tx, rx, patterns: Vec::new() }
            });
            for pattern in patterns {
                if !entry.patterns.iter().any(|p| p == pattern) {
                    entry.patterns.push(pattern.to_string());
                }
            }
            entry.rx.clone()
        };
        let stop = CancellationToken::new();
        let pending = self.pending.clone();
        let limit = Arc::new(Semaphore::new(options.concurrency.max(1)));
        let task_stop = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = limit.clone().acquire_owned().await else { break };
                let delivery = tokio::select! {
                    _ = task_stop.cancelled() => break,
                    next = rx.recv() => match next { Ok(d) => d, Err(_) => break },
                };
                let handler = handler.clone();
                let pending = pending.clone();
                tokio::spawn(async move {
                    let reply = super::handle_delivery(handler.as_ref(), &delivery.routing_key, &delivery.body).await;
                    if let Some(reply) = reply
                        && let Ok(response) = serde_json::from_slice::<Response>(&reply)
                    {
                        pending.complete(response);
                    }
                    drop(permit);
                });
            }
            // Wait for the messages being handled to finish.
            let _ = limit.acquire_many(options.concurrency.max(1) as u32).await;
        });
        Ok(ServeHandle::new(stop, task))
    }
}
