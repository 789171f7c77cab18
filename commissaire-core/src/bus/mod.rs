//! The message bus: JSON-RPC request/reply, fire-and-forget publish, fan-out
//! subscriptions and competing consumers on shared queues, over one topic
//! exchange.
//!
//! Three backends implement [`Bus`], chosen by the URI given to [`connect`]:
//! `amqp://` (RabbitMQ), `redis://` (Redis streams) and `memory://` (in-process).
//! Every backend keeps the same contract, checked by one conformance suite
//! (`tests/bus_conformance.rs`):
//!
//! * a message published with routing key `k` reaches every queue bound with a
//!   pattern matching `k` (`*` = one word, `#` = zero or more) and every live
//!   subscription whose pattern matches;
//! * a message in a served queue is handled by exactly one instance, and is
//!   acknowledged only after the handler returned, so an instance that dies while
//!   handling it leaves it to another (AMQP and Redis; in-process dies with the
//!   process);
//! * every [`Bus::request`] ends in the reply or a [`BusError`] within its timeout.

pub mod amqp;
mod dispatch;
pub mod memory;
mod pending;
pub mod redis;
pub mod topic;
mod util;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::jsonrpc::RpcError;

pub use dispatch::{handle_delivery, handle_request};
pub use pending::PendingReplies;

/// The default topic exchange name (and key prefix on Redis).
pub const DEFAULT_EXCHANGE: &str = "commissaire";
/// How long callers wait for a reply unless they say otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a bus operation did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The service answered with a JSON-RPC error.
    #[error("{0}")]
    Rpc(#[from] RpcError),
    /// No reply arrived in time (no service consuming, or it is too slow).
    #[error("no reply to {routing_key} within {timeout:?}")]
    Timeout { routing_key: String, timeout: Duration },
    /// The broker could not be reached or the connection dropped.
    #[error("bus unavailable: {0}")]
    Transport(String),
    /// The bus URI cannot be used.
    #[error("invalid bus URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
    /// A message could not be encoded or decoded.
    #[error("malformed bus message: {0}")]
    Malformed(String),
}

impl BusError {
    pub fn transport(err: impl std::fmt::Display) -> Self {
        Self::Transport(err.to_string())
    }
}

/// A message delivered to a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub routing_key: String,
    pub body: Value,
}

/// Handles the JSON-RPC calls a service serves. `method` is the last word of the
/// routing key; the returned value becomes the reply's `result`.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError>;
}

/// How an instance consumes a served queue.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Messages handled at once by this instance (the broker's prefetch).
    pub concurrency: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self { concurrency: 32 }
    }
}

/// The bus, as every component sees it.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Sends a JSON-RPC request to whichever service serves `routing_key` and waits
    /// up to `timeout` for its reply.
    async fn request(&self, routing_key: &str, params: Value, timeout: Duration) -> Result<Value, BusError>;

    /// Publishes `body` (an event or a JSON-RPC notification) with no reply expected.
    /// Returns once the broker has accepted it.
    async fn publish(&self, routing_key: &str, body: &Value) -> Result<(), BusError>;

    /// Fan-out: receives every message published after this call whose routing key
    /// matches one of `patterns`. Dropping the subscription ends it.
    async fn subscribe(&self, patterns: &[&str]) -> Result<Subscription, BusError>;

    /// Competing consumer: joins the instances serving the shared, durable queue
    /// `queue` bound to `patterns`. Each message is handled by one instance and
    /// acknowledged after `handler` returned; replies go back to the caller.
    async fn serve(
        &self,
        queue: &str,
        patterns: &[&str],
        handler: Arc<dyn Handler>,
        options: ServeOptions,
    ) -> Result<ServeHandle, BusError>;
}

/// A live subscription; see [`Bus::subscribe`].
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Event>,
    _stop: tokio_util::sync::DropGuard,
}

impl Subscription {
    /// Builds a subscription fed by a backend task; the task should end when
    /// `stop` is cancelled (the subscription was dropped) or the sender fails.
    pub fn new(rx: mpsc::UnboundedReceiver<Event>, stop: CancellationToken) -> Self {
        Self { rx, _stop: stop.drop_guard() }
    }

    /// The next matching message; `None` once the bus is gone.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

/// A running consumer of a served queue; see [`Bus::serve`].
pub struct ServeHandle {
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl ServeHandle {
    pub fn new(stop: CancellationToken, done: tokio::task::JoinHandle<()>) -> Self {
        Self { stop, done }
    }

    /// Stops taking new messages and waits for the ones being handled to finish.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.done.await;
    }

    /// Waits until the consumer ends (it only ends when shut down).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Connects to the bus named by `uri`: `memory://`, `amqp://…`/`amqps://…` or
/// `redis://…`/`rediss://…`. `exchange` names the topic exchange (AMQP) or the key
/// prefix (Redis) so several deployments can share one broker.
pub async fn connect(uri: &str, exchange: &str) -> Result<Arc<dyn Bus>, BusError> {
    let scheme = uri.split("://").next().unwrap_or_default();
    match scheme {
        "memory" => Ok(Arc::new(Instrumented(memory::MemoryBus::new()))),
        "amqp" | "amqps" => Ok(Arc::new(Instrumented(amqp::AmqpBus::connect(uri, exchange).await?))),
        "redis" | "rediss" => Ok(Arc::new(Instrumented(redis::RedisBus::connect(uri, exchange).await?))),
        _ => Err(BusError::InvalidUri {
            uri: uri.to_string(),
            reason: "scheme must be memory://, amqp://, amqps://, redis:// or rediss://".into(),
        }),
    }
}

/// A bus whose requests are timed and whose failures are counted in the
/// process's metrics (`commissaire_bus_request_duration_seconds`,
/// `commissaire_errors_total`). [`connect`] returns every backend wrapped.
pub struct Instrumented<B>(pub B);

#[async_trait]
impl<B: Bus> Bus for Instrumented<B> {
    async fn request(&self, routing_key: &str, params: Value, timeout: Duration) -> Result<Value, BusError> {
        let started = std::time::Instant::now();
        let outcome = self.0.request(routing_key, params, timeout).await;
        let metrics = crate::metrics::get();
        metrics.bus_request(routing_key, started.elapsed().as_secs_f64());
        if let Err(err) = &outcome {
            metrics.error(match err {
                BusError::Timeout { .. } => crate::metrics::ErrorKind::BusTimeout,
                BusError::Transport(_) => crate::metrics::ErrorKind::BusTransport,
                BusError::Rpc(_) => crate::metrics::ErrorKind::BusRpc,
                _ => crate::metrics::ErrorKind::BusOther,
            });
        }
        outcome
    }

    async fn publish(&self, routing_key: &str, body: &Value) -> Result<(), BusError> {
        self.0.publish(routing_key, body).await
    }

    async fn subscribe(&self, patterns: &[&str]) -> Result<Subscription, BusError> {
        self.0.subscribe(patterns).await
    }

    async fn serve(
        &self,
        queue: &str,
        patterns: &[&str],
        handler: Arc<dyn Handler>,
        options: ServeOptions,
    ) -> Result<ServeHandle, BusError> {
        self.0.serve(queue, patterns, handler, options).await
    }
}
