//! RabbitMQ backend (`amqp://`, `amqps://`), on lapin.
//!
//! **Topology.** One durable topic exchange named `exchange`. A served queue `q`
//! is the durable queue `<exchange>.q` (prefixed so that deployments and tests on
//! one broker stay apart), bound to the exchange with each of its patterns. A
//! subscription is an exclusive, auto-delete, server-named queue bound to its
//! patterns. Replies come back on one exclusive, server-named reply queue per
//! [`AmqpBus`], through the default exchange (`reply_to` = that queue,
//! `correlation_id` = the JSON-RPC id).
//!
//! **Delivery.** Served queues are consumed with manual acks and a prefetch of
//! `concurrency`; a message is acked only once the handler returned and its reply
//! was confirmed by the broker, so a consumer that dies mid-request leaves the
//! message to be redelivered to another one. Every publish waits for its publisher
//! confirm (a nack is an error). Requests are transient and carry an
//! `expiration` equal to the caller's timeout, so a request nobody picked up in
//! time, or one queued when the broker restarts, is dropped instead of being
//! handled for a caller that already gave up; notifications are persistent. A
//! publish, ack or consumer cancel under way when the connection is lost is
//! given up at once (lapin does not always end it), so no handler, caller or
//! shutdown waits on a dead connection.
//!
//! **Reconnect.** A supervisor task owns the connection. When it drops (broker
//! restart, network), the supervisor fails every waiting caller at once with
//! [`BusError::Transport`] (their replies would come on the lost reply queue) and
//! reconnects with backoff (100 ms doubling to 5 s). Every served queue,
//! subscription and the reply queue is then set up again by its own task, with no
//! action from the caller. While disconnected, `request`/`publish` fail at once
//! with a transport error rather than wait: the caller knows best whether to retry.
//! Fan-out events published while a subscription is being re-established are lost.

use std::{
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use futures_util::{FutureExt, Stream, StreamExt};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer, ExchangeKind,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::{FieldTable, ShortString},
};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{
    Bus, BusError, Event, Handler, PendingReplies, ServeHandle, ServeOptions, Subscription,
    util::{Backoff, redact_uri, sleep_unless_cancelled},
};
use crate::jsonrpc::{self, Request};

/// How long one connection attempt (TCP + AMQP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `publish` waits for the broker's confirm (it can be slow when the
/// broker throttles publishers under a memory alarm).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long closing a connection, or cancelling a consumer and closing its
/// channel, may take before it is given up (the broker may be gone).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the supervisor checks that the connection and its channels are open,
/// in case a close is not reported as an event.
const HEALTH_CHECK_EVERY: Duration = Duration::from_millis(250);
/// AMQP delivery mode for messages that must survive a broker restart.
const PERSISTENT: u8 = 2;

/// See the module documentation.
pub struct AmqpBus {
    shared: Arc<Shared>,
}

/// State shared by the bus handle, its serve and subscription tasks. The
/// connection supervisor only holds a weak reference: once the bus and every
/// consumer are gone, `Drop` stops it and the connection is closed.
struct Shared {
    exchange: String,
    pending: PendingReplies,
    /// The live connection, `None` while reconnecting.
    link: watch::Sender<Option<Arc<Link>>>,
    shutdown: CancellationToken,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One established connection with what every user of it needs.
struct Link {
    connection: Connection,
    /// Publisher-confirm channel for requests, replies and events.
    publisher: Channel,
    /// Kept open for the reply consumer; dropping it would close the channel.
    _reply_channel: Channel,
    reply_queue: ShortString,
    /// Cancelled once this connection is gone, before its callers are failed.
    lost: CancellationToken,
}

type Events = Pin<Box<dyn Stream<Item = lapin::Event> + Send>>;

/// A freshly opened connection and the streams the supervisor watches.
struct Opened {
    link: Arc<Link>,
    replies: Consumer,
    events: Events,
}

fn transport(err: impl std::fmt::Display) -> BusError {
    BusError::transport(err)
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, BusError> {
    serde_json::to_vec(value).map_err(|e| BusError::Malformed(e.to_string()))
}

fn json_properties() -> BasicProperties {
    BasicProperties::default().with_content_type("application/json".into())
}

impl Link {
    async fn open(uri: &str, exchange: &str) -> Result<Opened, BusError> {
        let properties = ConnectionProperties::default().with_connection_name("commissaire".into());
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(uri, properties))
            .await
            .map_err(|_| BusError::Transport(format!("connecting to RabbitMQ took more than {CONNECT_TIMEOUT:?}")))?
            .map_err(transport)?;
        // Listen before anything else can fail so no error event is missed.
        let events: Events = Box::pin(connection.events_listener());

        let publisher = connection.create_channel().await.map_err(transport)?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await.map_err(transport)?;
        publisher
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(transport)?;

        let reply_channel = connection.create_channel().await.map_err(transport)?;
        let queue = reply_channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(transport)?;
        let reply_queue = queue.name().clone();
        let replies = reply_channel
            .basic_consume(
                reply_queue.clone(),
                format!("commissaire-replies-{}", uuid::Uuid::new_v4()).into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .map_err(transport)?;

        let link =
            Link { connection, publisher, _reply_channel: reply_channel, reply_queue, lost: CancellationToken::new() };
        Ok(Opened { link: Arc::new(link), replies, events })
    }

    /// Runs `operation` unless the connection is lost first: lapin does not
    /// always end an operation that was under way when the broker went away,
    /// and a publish or ack left waiting would hold its caller (or a handler's
    /// permit, and with it the consumer's shutdown) for good.
    async fn unless_lost<F: std::future::Future>(&self, operation: F) -> Option<F::Output> {
        tokio::select! {
            output = operation => Some(output),
            _ = self.lost.cancelled() => None,
        }
    }

    /// Publishes and waits for the broker's confirm (a request bounds this by
    /// its own deadline; see [`Link::publish_bounded`] for the rest).
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BusError> {
        let publish = async {
            self.publisher
                .basic_publish(exchange.into(), routing_key.into(), BasicPublishOptions::default(), body, properties)
                .await?
                .await
        };
        let confirm = self
            .unless_lost(publish)
            .await
            .ok_or_else(|| BusError::Transport("the connection to RabbitMQ was lost".into()))?
            .map_err(transport)?;
        match confirm {
            Confirmation::Nack(_) => {
                Err(BusError::Transport(format!("RabbitMQ refused the message for {routing_key} (nack)")))
            }
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
        }
    }

    /// [`Link::publish`] waiting at most [`PUBLISH_TIMEOUT`] for the confirm:
    /// for notifications and replies, which have no caller's deadline.
    async fn publish_bounded(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BusError> {
        tokio::time::timeout(PUBLISH_TIMEOUT, self.publish(exchange, routing_key, body, properties))
            .await
            .map_err(|_| BusError::Transport(format!("no confirm from RabbitMQ within {PUBLISH_TIMEOUT:?}")))?
    }
}

impl AmqpBus {
    /// Connects to the broker at `uri` and declares the topic exchange `exchange`.
    /// Fails if the broker cannot be reached now; later losses of the connection
    /// are recovered in the background.
    pub async fn connect(uri: &str, exchange: &str) -> Result<Self, BusError> {
        if exchange.is_empty() {
            return Err(BusError::InvalidUri {
                uri: redact_uri(uri),
                reason: "the exchange name must not be empty".into(),
            });
        }
        let opened = Link::open(uri, exchange).await?;
        let (link, _) = watch::channel(Some(opened.link.clone()));
        let shared = Arc::new(Shared {
            exchange: exchange.to_string(),
            pending: PendingReplies::default(),
            link,
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(supervise(
            Arc::downgrade(&shared),
            shared.shutdown.clone(),
            uri.to_string(),
            exchange.to_string(),
            opened,
        ));
        Ok(Self { shared })
    }
}

impl Shared {
    /// The live connection, or a transport error while reconnecting.
    fn current_link(&self) -> Result<Arc<Link>, BusError> {
        match self.link.borrow().as_ref() {
            Some(link) if !link.lost.is_cancelled() => Ok(link.clone()),
            _ => Err(BusError::Transport("not connected to RabbitMQ (reconnecting)".into())),
        }
    }

    /// Waits for a live connection; `None` if `stop` or the bus shut down first.
    async fn wait_for_link(&self, stop: &CancellationToken) -> Option<Arc<Link>> {
        let mut changes = self.link.subscribe();
        loop {
            if let Some(link) = changes.borrow_and_update().as_ref()
                && !link.lost.is_cancelled()
            {
                return Some(link.clone());
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = self.shutdown.cancelled() => return None,
                changed = changes.changed() => if changed.is_err() { return None },
            }
        }
    }
}

/// Owns the connection: routes replies, notices when the connection is gone,
/// fails the callers waiting on it and reconnects with backoff.
async fn supervise(weak: Weak<Shared>, shutdown: CancellationToken, uri: String, exchange: String, first: Opened) {
    let mut next = Some(first);
    let mut backoff = Backoff::new();
    loop {
        let Opened { link, mut replies, mut events } = match next.take() {
            Some(opened) => opened,
            None => {
                let attempt = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    attempt = Link::open(&uri, &exchange) => attempt,
                };
                match attempt {
                    Ok(opened) => {
                        tracing::info!(exchange, "reconnected to RabbitMQ");
                        backoff.reset();
                        opened
                    }
                    Err(err) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(exchange, error = %err, retry_in = ?delay, "cannot reconnect to RabbitMQ");
                        if !sleep_unless_cancelled(delay, &shutdown).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        match weak.upgrade() {
            Some(shared) => shared.link.send_replace(Some(link.clone())),
            None => return,
        };

        let Some(reason) = watch_link(&weak, &shutdown, &link, &mut replies, &mut events).await else {
            link.lost.cancel();
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, link.connection.close(200, "bus closed".into())).await;
            return;
        };
        tracing::warn!(exchange, %reason, "lost the connection to RabbitMQ; failing waiting callers and reconnecting");
        // Order matters: a caller that registers after `lost` is set sees it and
        // fails by itself; one that registered before is failed by `fail_all`.
        link.lost.cancel();
        match weak.upgrade() {
            Some(shared) => {
                shared.link.send_replace(None);
                shared.pending.fail_all();
            }
            None => return,
        }
        // Close whatever is left of the old connection (a no-op once the socket is gone).
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, link.connection.close(200, "reconnecting".into())).await;
        });
    }
}

/// Routes replies until the connection is lost (returns why) or the bus shuts
/// down (returns `None`).
async fn watch_link(
    weak: &Weak<Shared>,
    shutdown: &CancellationToken,
    link: &Link,
    replies: &mut Consumer,
    events: &mut Events,
) -> Option<String> {
    let mut health = tokio::time::interval(HEALTH_CHECK_EVERY);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            next = replies.next() => match next {
                Some(Ok(delivery)) => match weak.upgrade() {
                    Some(shared) => shared.pending.complete_encoded(&delivery.data),
                    None => return None,
                },
                Some(Err(err)) => return Some(err.to_string()),
                None => return Some("the reply consumer was cancelled".into()),
            },
            event = events.next() => match event {
                Some(lapin::Event::Error(err)) => return Some(err.to_string()),
                Some(_) => {}
                None => return Some("the connection was closed".into()),
            },
            _ = health.tick() => {
                if !link.connection.status().connected() || !link.publisher.status().connected() {
                    return Some("the connection or its publishing channel was closed".into());
                }
            }
        }
    }
}

/// What a served queue is, to set it up again after a reconnect.
struct Served {
    /// Full queue name, `<exchange>.<queue>`.
    queue: String,
    patterns: Vec<String>,
    handler: Arc<dyn Handler>,
    concurrency: usize,
}

/// Opens a channel on `link`, declares and binds `served`'s queue and starts
/// consuming it with manual acks.
async fn open_served(link: &Link, exchange: &str, served: &Served) -> Result<(Channel, Consumer), BusError> {
    let channel = link.connection.create_channel().await.map_err(transport)?;
    let setup = async {
        let prefetch = u16::try_from(served.concurrency).unwrap_or(u16::MAX);
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        channel
            .queue_declare(
                served.queue.as_str().into(),
                QueueDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        bind_all(&channel, served.queue.as_str(), exchange, &served.patterns).await?;
        channel
            .basic_consume(
                served.queue.as_str().into(),
                format!("commissaire-{}", uuid::Uuid::new_v4()).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
    };
    let setup = setup.await;
    keep_or_close(channel, setup).await
}

/// The channel and its consumer once set up; on a failed setup the channel is
/// closed rather than left open on the connection.
async fn keep_or_close(
    channel: Channel,
    setup: Result<Consumer, lapin::Error>,
) -> Result<(Channel, Consumer), BusError> {
    match setup {
        Ok(consumer) => Ok((channel, consumer)),
        Err(err) => {
            let _ = channel.close(200, "setup failed".into()).await;
            Err(transport(err))
        }
    }
}

/// Binds `queue` to the exchange with each pattern.
async fn bind_all(channel: &Channel, queue: &str, exchange: &str, patterns: &[String]) -> Result<(), lapin::Error> {
    for pattern in patterns {
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Opens a channel on `link` with an exclusive queue bound to `patterns`,
/// consumed with auto-ack (events are fan-out, best effort).
async fn open_subscription(link: &Link, exchange: &str, patterns: &[String]) -> Result<(Channel, Consumer), BusError> {
    let channel = link.connection.create_channel().await.map_err(transport)?;
    let setup = async {
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        bind_all(&channel, queue.name().as_str(), exchange, patterns).await?;
        channel
            .basic_consume(
                queue.name().clone(),
                format!("commissaire-sub-{}", uuid::Uuid::new_v4()).into(),
                BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
    };
    let setup = setup.await;
    keep_or_close(channel, setup).await
}

/// Why a consumer stopped taking deliveries.
enum Interrupted {
    /// The caller asked it to stop.
    Stopped,
    /// The channel or connection went away; set it up again.
    Lost,
}

/// Keeps a served queue consumed across reconnects until `stop`, then waits for
/// the requests being handled.
async fn serve_loop(
    shared: Arc<Shared>,
    served: Arc<Served>,
    stop: CancellationToken,
    first: (Arc<Link>, Channel, Consumer),
) {
    let limit = Arc::new(Semaphore::new(served.concurrency));
    let mut next = Some(first);
    let mut backoff = Backoff::new();
    loop {
        let (link, channel, mut consumer) = match next.take() {
            Some(current) => current,
            None => {
                let Some(link) = shared.wait_for_link(&stop).await else { break };
                match open_served(&link, &shared.exchange, &served).await {
                    Ok((channel, consumer)) => {
                        tracing::info!(queue = %served.queue, "consuming again after reconnect");
                        backoff.reset();
                        (link, channel, consumer)
                    }
                    Err(err) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(queue = %served.queue, error = %err, retry_in = ?delay, "cannot consume");
                        if !sleep_unless_cancelled(delay, &stop).await {
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        match consume_served(&served, &limit, &stop, &link, &channel, &mut consumer).await {
            Interrupted::Stopped => {
                let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, link.unless_lost(cancel)).await;
                // Handlers still running ack on this channel: keep it open until they
                // are done. Messages prefetched but not handled go back to the queue
                // when it closes.
                let _ = limit.acquire_many(served.concurrency as u32).await;
                let close = channel.close(200, "consumer stopped".into());
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, link.unless_lost(close)).await;
                return;
            }
            Interrupted::Lost if link.connection.status().connected() && !link.lost.is_cancelled() => {
                // The broker cancelled us on a live connection (queue deleted, …):
                // don't hammer it.
                let delay = backoff.next_delay();
                tracing::warn!(queue = %served.queue, retry_in = ?delay, "consumer cancelled by the broker; consuming again");
                if !sleep_unless_cancelled(delay, &stop).await {
                    break;
                }
            }
            Interrupted::Lost => {}
        }
    }
    let _ = limit.acquire_many(served.concurrency as u32).await;
}

async fn consume_served(
    served: &Arc<Served>,
    limit: &Arc<Semaphore>,
    stop: &CancellationToken,
    link: &Arc<Link>,
    channel: &Channel,
    consumer: &mut Consumer,
) -> Interrupted {
    loop {
        let delivery = tokio::select! {
            biased;
            _ = stop.cancelled() => return Interrupted::Stopped,
            _ = link.lost.cancelled() => return Interrupted::Lost,
            next = consumer.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(err)) => {
                    tracing::debug!(queue = %served.queue, error = %err, "consumer interrupted");
                    return Interrupted::Lost;
                }
                None => return Interrupted::Lost,
            },
        };
        // The prefetch already bounds deliveries; the semaphore also counts
        // handlers still finishing on a previous channel, and lets shutdown wait.
        let Ok(permit) = limit.clone().acquire_owned().await else { return Interrupted::Stopped };
        tokio::spawn(handle_request(link.clone(), channel.clone(), served.handler.clone(), delivery, permit));
    }
}

/// Runs the handler, publishes the reply, then acks. Without an ack the broker
/// redelivers the message (to another instance) once this channel is gone.
async fn handle_request(
    link: Arc<Link>,
    _channel: Channel,
    handler: Arc<dyn Handler>,
    delivery: Delivery,
    _permit: OwnedSemaphorePermit,
) {
    let routing_key = delivery.routing_key.as_str();
    let outcome =
        AssertUnwindSafe(super::handle_delivery(handler.as_ref(), routing_key, &delivery.data)).catch_unwind().await;
    let reply = match outcome {
        Ok(reply) => reply,
        Err(_) => {
            // Redelivering would most likely panic again, forever.
            tracing::error!(routing_key, "handler panicked; dropping the message");
            None
        }
    };
    if let Some(reply) = reply {
        match delivery.properties.reply_to() {
            Some(reply_to) => {
                let mut properties = json_properties();
                if let Some(correlation_id) = delivery.properties.correlation_id() {
                    properties = properties.with_correlation_id(correlation_id.clone());
                }
                if let Err(err) = link.publish_bounded("", reply_to.as_str(), &reply, properties).await {
                    tracing::warn!(routing_key, error = %err, "could not publish the reply; requeueing the request");
                    let nack = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() });
                    let _ = link.unless_lost(nack).await;
                    return;
                }
            }
            None => tracing::debug!(routing_key, "request without reply_to; reply dropped"),
        }
    }
    match link.unless_lost(delivery.acker.ack(BasicAckOptions::default())).await {
        Some(Ok(_)) => {}
        Some(Err(err)) => {
            tracing::debug!(routing_key, error = %err, "ack failed (channel gone); the broker will redeliver")
        }
        None => tracing::debug!(routing_key, "connection lost before the ack; the broker will redeliver"),
    }
}

/// Keeps a subscription's queue consumed across reconnects until it is dropped.
async fn subscription_loop(
    shared: Arc<Shared>,
    patterns: Vec<String>,
    tx: mpsc::UnboundedSender<Event>,
    stop: CancellationToken,
    first: (Arc<Link>, Channel, Consumer),
) {
    let mut next = Some(first);
    let mut backoff = Backoff::new();
    loop {
        let (link, channel, mut consumer) = match next.take() {
            Some(current) => current,
            None => {
                let Some(link) = shared.wait_for_link(&stop).await else { return };
                match open_subscription(&link, &shared.exchange, &patterns).await {
                    Ok((channel, consumer)) => {
                        backoff.reset();
                        (link, channel, consumer)
                    }
                    Err(err) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(?patterns, error = %err, retry_in = ?delay, "cannot subscribe");
                        if !sleep_unless_cancelled(delay, &stop).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = channel.close(200, "unsubscribed".into()).await;
                    return;
                }
                _ = tx.closed() => {
                    let _ = channel.close(200, "unsubscribed".into()).await;
                    return;
                }
                _ = link.lost.cancelled() => break,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let routing_key = delivery.routing_key.to_string();
                        match jsonrpc::decode_body::<Value>(&delivery.data) {
                            Ok(body) => {
                                if tx.send(Event { routing_key, body }).is_err() {
                                    return;
                                }
                            }
                            Err(err) => tracing::warn!(routing_key, error = %err, "dropping undecodable event"),
                        }
                    }
                    Some(Err(_)) | None => break,
                },
            }
        }
        if link.connection.status().connected() && !link.lost.is_cancelled() {
            let delay = backoff.next_delay();
            tracing::warn!(?patterns, retry_in = ?delay, "subscription cancelled by the broker; subscribing again");
            if !sleep_unless_cancelled(delay, &stop).await {
                return;
            }
        }
    }
}

#[async_trait]
impl Bus for AmqpBus {
    async fn request(&self, routing_key: &str, params: Value, timeout: Duration) -> Result<Value, BusError> {
        let started = Instant::now();
        let link = self.shared.current_link()?;
        let id = uuid::Uuid::new_v4().to_string();
        let body = encode(&Request::new(Some(id.clone()), jsonrpc::method_of(routing_key), params))?;
        let guard = self.shared.pending.register(&id);
        if link.lost.is_cancelled() {
            // Lost between `current_link` and `register`: `fail_all` ran before we
            // registered, so nobody would fail this caller.
            return Err(BusError::Transport("not connected to RabbitMQ (reconnecting)".into()));
        }
        // Transient: a request is worth nothing past its caller's deadline, and one
        // kept over a broker restart would be handled after its caller was told it
        // failed (its reply queue is gone). Notifications stay persistent.
        let properties = json_properties()
            .with_reply_to(link.reply_queue.clone())
            .with_correlation_id(id.as_str().into())
            .with_expiration(timeout.as_millis().max(1).to_string().into());
        let timed_out = || BusError::Timeout { routing_key: routing_key.to_string(), timeout };
        tokio::time::timeout(timeout, link.publish(&self.shared.exchange, routing_key, &body, properties))
            .await
            .map_err(|_| timed_out())??;
        guard.wait_rest(routing_key, started, timeout).await
    }

    async fn publish(&self, routing_key: &str, body: &Value) -> Result<(), BusError> {
        let link = self.shared.current_link()?;
        let body = encode(body)?;
        let properties = json_properties().with_delivery_mode(PERSISTENT);
        link.publish_bounded(&self.shared.exchange, routing_key, &body, properties).await
    }

    async fn subscribe(&self, patterns: &[&str]) -> Result<Subscription, BusError> {
        let link = self.shared.current_link()?;
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        // Bound before returning, so everything published after this call arrives.
        let (channel, consumer) = open_subscription(&link, &self.shared.exchange, &patterns).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(subscription_loop(self.shared.clone(), patterns, tx, stop.clone(), (link, channel, consumer)));
        Ok(Subscription::new(rx, stop))
    }

    async fn serve(
        &self,
        queue: &str,
        patterns: &[&str],
        handler: Arc<dyn Handler>,
        options: ServeOptions,
    ) -> Result<ServeHandle, BusError> {
        let link = self.shared.current_link()?;
        let served = Arc::new(Served {
            queue: format!("{}.{queue}", self.shared.exchange),
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            handler,
            concurrency: options.concurrency.clamp(1, u16::MAX as usize),
        });
        // Declared and bound before returning, so requests sent after this call
        // are queued even if the consumer is still starting.
        let (channel, consumer) = open_served(&link, &self.shared.exchange, &served).await?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve_loop(self.shared.clone(), served, stop.clone(), (link, channel, consumer)));
        Ok(ServeHandle::new(stop, task))
    }
}
