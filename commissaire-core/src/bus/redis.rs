//! Redis backend (`redis://host:port/db`, `rediss://…`), on Redis streams with
//! consumer groups.
//!
//! **Keys** are all prefixed with `<exchange>:` so deployments and tests sharing a
//! Redis never collide:
//! * `<exchange>:bindings` — a set of `["queue","pattern"]` members, the topic
//!   bindings of the served queues;
//! * `<exchange>:q:<queue>` — the stream of a served queue, consumed by the group
//!   `<queue>`;
//! * `<exchange>:ev:<routing key>` — the pub/sub channel every message is also
//!   published on, for subscriptions (PSUBSCRIBE `<exchange>:ev:*`, filtered here
//!   with [`topic::matches`]);
//! * `<exchange>:reply:<uuid>` — the reply list of one [`RedisBus`].
//!
//! **Routing.** `publish`/`request` XADD the message (fields `rk`, `body`, and for
//! requests `reply` and `exp`, the caller's deadline in Unix ms) to the stream of
//! every queue whose binding matches, and PUBLISH it. Bindings are cached for a
//! second; a key that matches nothing in the cache re-reads them, so a queue bound
//! a moment ago by another process is not missed.
//!
//! **Delivery.** Each serving instance is one consumer of the group (unique name)
//! and reads with XREADGROUP BLOCK on a connection of its own (blocking commands
//! would stall the shared multiplexed one), taking only as many entries as it has
//! room for. After the handler returned, the reply is RPUSHed (with a 60 s
//! expiry) to the caller's list, then the entry is XACKed and XDELed. While a
//! handler runs, its entry's idle time is reset every visibility/3 (XCLAIM to
//! itself, JUSTID), so a long handler keeps it; every instance runs XAUTOCLAIM
//! with min-idle = visibility timeout every visibility/2, taking over what a dead
//! consumer held. The visibility timeout is 30 s unless the URI says
//! `?visibility_timeout_ms=N`. Entries whose caller's deadline passed are dropped
//! unhandled (this assumes the hosts' clocks roughly agree).
//!
//! **Restarts.** Redis here has no persistence, so a restart loses streams,
//! groups, bindings and replies. Every dedicated connection reconnects by itself
//! with backoff (100 ms doubling to 5 s): a consumer then recreates its group
//! (also on NOGROUP) and re-registers its bindings, a subscription re-subscribes.
//! When the reply connection drops, waiting callers are failed at once with
//! [`BusError::Transport`], as their requests may be gone with the data. Commands
//! issued while Redis is down fail with a transport error.

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use redis::{
    AsyncConnectionConfig, RedisError, RedisResult,
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection, PubSub},
    streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply},
};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{
    Bus, BusError, Event, Handler, PendingReplies, ServeHandle, ServeOptions, Subscription, topic,
    util::{Backoff, redact_uri, sleep_unless_cancelled},
};
use crate::jsonrpc::{self, Request};

const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);
const VISIBILITY_PARAM: &str = "visibility_timeout_ms";
/// How long a blocking read waits; also how long a consumer takes to notice
/// that it was asked to stop.
const BLOCK: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Non-blocking commands that take longer than this count as a lost connection.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Replies nobody picked up (the caller is gone) disappear after this.
const REPLY_TTL_SECS: i64 = 60;
/// How long the binding set is trusted before being read again.
const BINDINGS_TTL: Duration = Duration::from_secs(1);

/// See the module documentation.
pub struct RedisBus {
    shared: Arc<Shared>,
}

/// State shared by the bus handle and its serve and subscription tasks. The reply
/// reader holds it weakly: once all of them are gone, `Drop` stops it.
struct Shared {
    client: redis::Client,
    /// Multiplexed, auto-reconnecting connection for every non-blocking command.
    commands: ConnectionManager,
    exchange: String,
    reply_key: String,
    visibility: Duration,
    pending: PendingReplies,
    bindings: Mutex<Option<(Instant, Arc<Vec<Binding>>)>>,
    shutdown: CancellationToken,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Binding(String, String); // (queue, pattern), stored as a JSON array

fn transport(err: impl std::fmt::Display) -> BusError {
    BusError::transport(err)
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, BusError> {
    serde_json::to_vec(value).map_err(|e| BusError::Malformed(e.to_string()))
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

fn is_no_group(err: &RedisError) -> bool {
    err.code() == Some("NOGROUP")
}

/// Escapes `*?[]\` so `text` matches itself in a PSUBSCRIBE pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Splits our own query parameters off `uri`; returns the URI for the redis
/// crate and the visibility timeout.
fn parse_uri(uri: &str) -> Result<(String, Duration), BusError> {
    let invalid = |reason: String| BusError::InvalidUri { uri: redact_uri(uri), reason };
    let (base, query) = match uri.split_once('?') {
        Some((base, query)) => (base, query),
        None => (uri, ""),
    };
    let mut visibility = DEFAULT_VISIBILITY;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((VISIBILITY_PARAM, value)) => {
                let ms: u64 = value
                    .parse()
                    .map_err(|_| invalid(format!("{VISIBILITY_PARAM} must be a number of milliseconds")))?;
                if ms < 100 {
                    return Err(invalid(format!("{VISIBILITY_PARAM} must be at least 100")));
                }
                visibility = Duration::from_millis(ms);
            }
            _ => kept.push(pair),
        }
    }
    let stripped = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    Ok((stripped, visibility))
}

/// A connection of its own for blocking commands, with a response timeout that
/// outlasts the blocking time.
async fn dedicated_connection(client: &redis::Client) -> RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(BLOCK + COMMAND_TIMEOUT));
    client.get_multiplexed_async_connection_with_config(&config).await
}

impl RedisBus {
    /// Connects to the Redis at `uri`; `exchange` prefixes every key. Fails if
    /// Redis cannot be reached now; later losses are recovered in the background.
    pub async fn connect(uri: &str, exchange: &str) -> Result<Self, BusError> {
        if exchange.is_empty() {
            return Err(BusError::InvalidUri {
                uri: redact_uri(uri),
                reason: "the exchange (key prefix) must not be empty".into(),
            });
        }
        let (redis_uri, visibility) = parse_uri(uri)?;
        let client = redis::Client::open(redis_uri.as_str())
            .map_err(|e| BusError::InvalidUri { uri: redact_uri(uri), reason: e.to_string() })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_max_delay(Duration::from_secs(5));
        let commands = ConnectionManager::new_with_config(client.clone(), config).await.map_err(transport)?;
        let replies = dedicated_connection(&client).await.map_err(transport)?;
        let shared = Arc::new(Shared {
            client,
            commands,
            exchange: exchange.to_string(),
            reply_key: format!("{exchange}:reply:{}", uuid::Uuid::new_v4()),
            visibility,
            pending: PendingReplies::default(),
            bindings: Mutex::new(None),
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(read_replies(Arc::downgrade(&shared), shared.shutdown.clone(), replies));
        Ok(Self { shared })
    }
}

impl Shared {
    fn bindings_key(&self) -> String {
        format!("{}:bindings", self.exchange)
    }

    fn stream_key(&self, queue: &str) -> String {
        format!("{}:q:{queue}", self.exchange)
    }

    fn event_channel(&self, routing_key: &str) -> String {
        format!("{}:ev:{routing_key}", self.exchange)
    }

    fn reply_prefix(&self) -> String {
        format!("{}:reply:", self.exchange)
    }

    async fn load_bindings(&self, refresh: bool) -> Result<Arc<Vec<Binding>>, BusError> {
        if !refresh {
            let cached = self.bindings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, bindings)) = cached.as_ref()
                && at.elapsed() < BINDINGS_TTL
            {
                return Ok(bindings.clone());
            }
        }
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.bindings_key())
            .query_async(&mut self.commands.clone())
            .await
            .map_err(transport)?;
        let bindings: Arc<Vec<Binding>> =
            Arc::new(members.iter().filter_map(|m| serde_json::from_str::<Binding>(m).ok()).collect());
        *self.bindings.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Instant::now(), bindings.clone()));
        Ok(bindings)
    }

    fn invalidate_bindings(&self) {
        *self.bindings.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// The queues bound to `routing_key`.
    async fn queues_for(&self, routing_key: &str) -> Result<Vec<String>, BusError> {
        let select = |bindings: &[Binding]| {
            let mut queues: Vec<String> = bindings
                .iter()
                .filter(|Binding(_, pattern)| topic::matches(pattern, routing_key))
                .map(|Binding(queue, _)| queue.clone())
                .collect();
            queues.sort();
            queues.dedup();
            queues
        };
        let queues = select(&self.load_bindings(false).await?);
        if !queues.is_empty() {
            return Ok(queues);
        }
        Ok(select(&self.load_bindings(true).await?))
    }

    /// XADDs `fields` to every bound queue and PUBLISHes `body` for subscribers.
    async fn route(&self, routing_key: &str, body: &[u8], reply: Option<(&str, u64)>) -> Result<(), BusError> {
        let queues = self.queues_for(routing_key).await?;
        if queues.is_empty() {
            tracing::debug!(routing_key, "no queue bound to this routing key");
        }
        let mut pipe = redis::pipe();
        for queue in &queues {
            let xadd =
                pipe.cmd("XADD").arg(self.stream_key(queue)).arg("*").arg("rk").arg(routing_key).arg("body").arg(body);
            if let Some((reply_key, expires)) = reply {
                xadd.arg("reply").arg(reply_key).arg("exp").arg(expires);
            }
            xadd.ignore();
        }
        pipe.cmd("PUBLISH").arg(self.event_channel(routing_key)).arg(body).ignore();
        pipe.query_async::<()>(&mut self.commands.clone()).await.map_err(transport)
    }

    async fn open_pubsub(&self) -> RedisResult<PubSub> {
        let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| RedisError::from((redis::ErrorKind::Io, "timed out connecting for pub/sub")))??;
        pubsub.psubscribe(format!("{}:ev:*", glob_escape(&self.exchange))).await?;
        Ok(pubsub)
    }
}

/// Reads this bus's reply list and hands replies to their callers. When its
/// connection drops, the callers are failed (their requests may be lost with a
/// restarted Redis) and it reconnects.
async fn read_replies(weak: Weak<Shared>, shutdown: CancellationToken, first: MultiplexedConnection) {
    let Some((client, reply_key)) = weak.upgrade().map(|s| (s.client.clone(), s.reply_key.clone())) else { return };
    let mut next = Some(first);
    let mut backoff = Backoff::new();
    loop {
        let mut conn = match next.take() {
            Some(conn) => conn,
            None => {
                let attempt = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    attempt = dedicated_connection(&client) => attempt,
                };
                match attempt {
                    Ok(conn) => {
                        tracing::info!("reconnected to Redis for replies");
                        backoff.reset();
                        conn
                    }
                    Err(err) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %err, retry_in = ?delay, "cannot reconnect to Redis for replies");
                        if !sleep_unless_cancelled(delay, &shutdown).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let mut blpop = redis::cmd("BLPOP");
        blpop.arg(&reply_key).arg(BLOCK.as_secs_f64());
        loop {
            let popped: RedisResult<Option<(String, Vec<u8>)>> = tokio::select! {
                _ = shutdown.cancelled() => return,
                popped = blpop.query_async(&mut conn) => popped,
            };
            match popped {
                Ok(Some((_, body))) => match weak.upgrade() {
                    Some(shared) => shared.pending.complete_encoded(&body),
                    None => return,
                },
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "lost the Redis connection for replies; failing waiting callers");
                    match weak.upgrade() {
                        Some(shared) => shared.pending.fail_all(),
                        None => return,
                    }
                    break;
                }
            }
        }
    }
}

/// One serving instance of a queue.
struct Served {
    shared: Arc<Shared>,
    queue: String,
    stream: String,
    consumer: String,
    patterns: Vec<String>,
    handler: Arc<dyn Handler>,
    concurrency: usize,
}

impl Served {
    fn group(&self) -> &str {
        &self.queue
    }

    /// Records the bindings (idempotent).
    async fn bind(&self, conn: &mut MultiplexedConnection) -> RedisResult<()> {
        let members: Vec<String> = self
            .patterns
            .iter()
            .filter_map(|p| serde_json::to_string(&Binding(self.queue.clone(), p.clone())).ok())
            .collect();
        redis::cmd("SADD").arg(self.shared.bindings_key()).arg(&members).query_async::<()>(conn).await
    }

    /// Records the bindings and creates the group (and stream) if missing. Run at
    /// start, after every reconnect and on NOGROUP, since a restarted Redis has
    /// lost both.
    async fn prepare(&self, conn: &mut MultiplexedConnection) -> RedisResult<()> {
        self.bind(conn).await?;
        // From "0": entries added before the group existed were routed to this
        // queue and must be handled too.
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(self.group())
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(conn)
            .await;
        match created {
            Err(err) if err.code() != Some("BUSYGROUP") => Err(err),
            _ => Ok(()),
        }
    }

    /// Takes over entries idle longer than the visibility timeout (their consumer
    /// is presumably dead), at most `count`.
    async fn autoclaim(&self, conn: &mut MultiplexedConnection, count: usize) -> RedisResult<Vec<StreamId>> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(self.group())
            .arg(&self.consumer)
            .arg(self.shared.visibility.as_millis() as u64)
            .arg("0-0")
            .arg(StreamAutoClaimOptions::default().count(count))
            .query_async(conn)
            .await?;
        if !reply.claimed.is_empty() {
            tracing::info!(queue = %self.queue, count = reply.claimed.len(), "took over requests of a consumer that stopped");
        }
        Ok(reply.claimed)
    }

    /// Reads up to `count` new entries, blocking up to [`BLOCK`].
    async fn read(&self, conn: &mut MultiplexedConnection, count: usize) -> RedisResult<Vec<StreamId>> {
        let options = StreamReadOptions::default()
            .group(self.group(), &self.consumer)
            .count(count)
            .block(BLOCK.as_millis() as usize);
        let reply: Option<StreamReadReply> =
            redis::cmd("XREADGROUP").arg(&options).arg("STREAMS").arg(&self.stream).arg(">").query_async(conn).await?;
        Ok(reply.map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect()).unwrap_or_default())
    }

    /// Starts a handler task for each entry, each holding one permit.
    fn dispatch(self: &Arc<Self>, entries: Vec<StreamId>, permits: &mut Vec<OwnedSemaphorePermit>) {
        for entry in entries {
            let Some(permit) = permits.pop() else {
                // Not expected (we ask for as many as we have room for); the entry
                // stays pending and is claimed again after the visibility timeout.
                tracing::warn!(queue = %self.queue, id = %entry.id, "more entries than room; leaving one pending");
                continue;
            };
            tokio::spawn(self.clone().handle(entry, permit));
        }
    }

    async fn handle(self: Arc<Self>, entry: StreamId, _permit: OwnedSemaphorePermit) {
        let id = entry.id.clone();
        let (Some(routing_key), Some(body)) = (entry.get::<String>("rk"), entry.get::<Vec<u8>>("body")) else {
            tracing::warn!(queue = %self.queue, %id, "dropping a malformed stream entry");
            self.finish(&id).await;
            return;
        };
        let reply_to: Option<String> = entry.get("reply");
        if entry.get::<u64>("exp").is_some_and(|deadline| unix_ms() > deadline) {
            tracing::debug!(routing_key, "dropping a request whose caller already gave up");
            self.finish(&id).await;
            return;
        }

        // Keep the entry ours while the handler runs, however long it takes.
        let refresher = tokio::spawn(self.clone().keep_claim(id.clone()));
        let outcome =
            AssertUnwindSafe(super::handle_delivery(self.handler.as_ref(), &routing_key, &body)).catch_unwind().await;
        refresher.abort();
        let reply = match outcome {
            Ok(reply) => reply,
            Err(_) => {
                // Handling it again would most likely panic again, forever.
                tracing::error!(routing_key, "handler panicked; dropping the message");
                None
            }
        };

        if let (Some(reply), Some(reply_to)) = (reply, reply_to) {
            if !reply_to.starts_with(&self.shared.reply_prefix()) {
                // Never write to an arbitrary key named by a message.
                tracing::warn!(routing_key, "reply key outside this exchange; reply dropped");
            } else {
                let pushed = redis::pipe()
                    .cmd("RPUSH")
                    .arg(&reply_to)
                    .arg(reply)
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&reply_to)
                    .arg(REPLY_TTL_SECS)
                    .ignore()
                    .query_async::<()>(&mut self.shared.commands.clone())
                    .await;
                if let Err(err) = pushed {
                    // Not acked: the entry stays pending and is handled again after
                    // the visibility timeout.
                    tracing::warn!(routing_key, error = %err, "could not push the reply; leaving the request pending");
                    return;
                }
            }
        }
        self.finish(&id).await;
    }

    /// Resets the entry's idle time every visibility/3 so XAUTOCLAIM elsewhere
    /// leaves it alone.
    async fn keep_claim(self: Arc<Self>, id: String) {
        let every = self.shared.visibility / 3;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            let claimed = redis::cmd("XCLAIM")
                .arg(&self.stream)
                .arg(self.group())
                .arg(&self.consumer)
                .arg(0)
                .arg(&id)
                .arg("JUSTID")
                .query_async::<Vec<String>>(&mut self.shared.commands.clone())
                .await;
            if let Err(err) = claimed {
                tracing::debug!(queue = %self.queue, error = %err, "could not refresh the claim on a request");
            }
        }
    }

    /// Acknowledges and deletes a handled entry.
    async fn finish(&self, id: &str) {
        let done = redis::pipe()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(self.group())
            .arg(id)
            .ignore()
            .cmd("XDEL")
            .arg(&self.stream)
            .arg(id)
            .ignore()
            .query_async::<()>(&mut self.shared.commands.clone())
            .await;
        if let Err(err) = done {
            // After a Redis restart the entry is gone anyway (NOGROUP); otherwise it
            // will be handled again once claimed.
            tracing::debug!(queue = %self.queue, error = %err, "could not acknowledge a request");
        }
    }

    /// Leaves the group on shutdown, but only with nothing pending: a deleted
    /// consumer's pending entries could never be claimed again.
    async fn leave_group(&self) {
        let mut conn = self.shared.commands.clone();
        let pending: RedisResult<Vec<redis::Value>> = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(self.group())
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(&self.consumer)
            .query_async(&mut conn)
            .await;
        if matches!(pending, Ok(ref entries) if entries.is_empty()) {
            let _ = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(&self.stream)
                .arg(self.group())
                .arg(&self.consumer)
                .query_async::<i64>(&mut conn)
                .await;
        }
    }
}

/// Consumes a served queue across reconnects until `stop`, then waits for the
/// requests being handled.
async fn serve_loop(served: Arc<Served>, stop: CancellationToken, first: MultiplexedConnection) {
    let limit = Arc::new(Semaphore::new(served.concurrency));
    let claim_every = (served.shared.visibility / 2).max(Duration::from_millis(100));
    // The first pass takes over what dead consumers left behind right away.
    let mut next_claim = Instant::now();
    let mut next = Some(first);
    let mut backoff = Backoff::new();
    'connection: loop {
        let mut conn = match next.take() {
            Some(conn) => conn,
            None => {
                let attempt = tokio::select! {
                    _ = stop.cancelled() => break,
                    attempt = async {
                        let mut conn = dedicated_connection(&served.shared.client).await?;
                        served.prepare(&mut conn).await?;
                        Ok::<_, RedisError>(conn)
                    } => attempt,
                };
                match attempt {
                    Ok(conn) => {
                        tracing::info!(queue = %served.queue, "consuming again after reconnect");
                        backoff.reset();
                        conn
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
        loop {
            // Take only what there is room for: what we read is ours until acked.
            let first = tokio::select! {
                _ = stop.cancelled() => break 'connection,
                permit = limit.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break 'connection,
                },
            };
            if stop.is_cancelled() {
                break 'connection;
            }
            let mut permits = vec![first];
            while permits.len() < served.concurrency {
                match limit.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let claim_due = Instant::now() >= next_claim;
            if claim_due {
                next_claim = Instant::now() + claim_every;
            }
            match poll_once(&served, &mut conn, &mut permits, claim_due).await {
                Ok(()) => {}
                Err(err) if is_no_group(&err) => {
                    tracing::info!(queue = %served.queue, "consumer group missing (Redis restarted?); recreating it");
                    if let Err(err) = served.prepare(&mut conn).await {
                        tracing::warn!(queue = %served.queue, error = %err, "cannot recreate the consumer group");
                        continue 'connection;
                    }
                }
                Err(err) => {
                    tracing::warn!(queue = %served.queue, error = %err, "lost the Redis connection; reconnecting");
                    continue 'connection;
                }
            }
        }
    }
    let _ = limit.acquire_many(served.concurrency as u32).await;
    served.leave_group().await;
}

/// One round: periodically re-asserts the bindings and claims abandoned
/// entries, then reads new ones with whatever room is left.
async fn poll_once(
    served: &Arc<Served>,
    conn: &mut MultiplexedConnection,
    permits: &mut Vec<OwnedSemaphorePermit>,
    claim_due: bool,
) -> RedisResult<()> {
    if claim_due {
        served.bind(conn).await?;
        let claimed = served.autoclaim(conn, permits.len()).await?;
        served.dispatch(claimed, permits);
    }
    if !permits.is_empty() {
        let read = served.read(conn, permits.len()).await?;
        served.dispatch(read, permits);
    }
    Ok(())
}

/// Forwards matching pub/sub messages until the subscription is dropped,
/// re-subscribing after a lost connection.
async fn subscription_loop(
    shared: Arc<Shared>,
    patterns: Vec<String>,
    tx: mpsc::UnboundedSender<Event>,
    stop: CancellationToken,
    first: PubSub,
) {
    let prefix = format!("{}:ev:", shared.exchange);
    let mut next = Some(first);
    let mut backoff = Backoff::new();
    loop {
        let pubsub = match next.take() {
            Some(pubsub) => pubsub,
            None => {
                let attempt = tokio::select! {
                    _ = stop.cancelled() => return,
                    attempt = shared.open_pubsub() => attempt,
                };
                match attempt {
                    Ok(pubsub) => {
                        backoff.reset();
                        pubsub
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
        let mut messages = pubsub.into_on_message();
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
                message = messages.next() => message,
            };
            let Some(message) = message else { break };
            let Some(routing_key) = message.get_channel_name().strip_prefix(&prefix) else { continue };
            if !patterns.iter().any(|p| topic::matches(p, routing_key)) {
                continue;
            }
            match jsonrpc::decode_body::<Value>(message.get_payload_bytes()) {
                Ok(body) => {
                    if tx.send(Event { routing_key: routing_key.to_string(), body }).is_err() {
                        return;
                    }
                }
                Err(err) => tracing::warn!(routing_key, error = %err, "dropping undecodable event"),
            }
        }
        tracing::warn!(?patterns, "lost the Redis pub/sub connection; subscribing again");
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn request(&self, routing_key: &str, params: Value, timeout: Duration) -> Result<Value, BusError> {
        let started = Instant::now();
        let id = uuid::Uuid::new_v4().to_string();
        let body = encode(&Request::new(Some(id.clone()), jsonrpc::method_of(routing_key), params))?;
        let guard = self.shared.pending.register(&id);
        let deadline = unix_ms().saturating_add(timeout.as_millis() as u64);
        let timed_out = || BusError::Timeout { routing_key: routing_key.to_string(), timeout };
        tokio::time::timeout(timeout, self.shared.route(routing_key, &body, Some((&self.shared.reply_key, deadline))))
            .await
            .map_err(|_| timed_out())??;
        guard.wait_rest(routing_key, started, timeout).await
    }

    async fn publish(&self, routing_key: &str, body: &Value) -> Result<(), BusError> {
        let body = encode(body)?;
        self.shared.route(routing_key, &body, None).await
    }

    async fn subscribe(&self, patterns: &[&str]) -> Result<Subscription, BusError> {
        // Subscribed before returning, so everything published after this call arrives.
        let pubsub = self.shared.open_pubsub().await.map_err(transport)?;
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(subscription_loop(self.shared.clone(), patterns, tx, stop.clone(), pubsub));
        Ok(Subscription::new(rx, stop))
    }

    async fn serve(
        &self,
        queue: &str,
        patterns: &[&str],
        handler: Arc<dyn Handler>,
        options: ServeOptions,
    ) -> Result<ServeHandle, BusError> {
        let served = Arc::new(Served {
            shared: self.shared.clone(),
            queue: queue.to_string(),
            stream: self.shared.stream_key(queue),
            consumer: format!("c-{}", uuid::Uuid::new_v4()),
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            handler,
            concurrency: options.concurrency.max(1),
        });
        // Bound before returning, so requests sent after this call are queued.
        let mut conn = dedicated_connection(&self.shared.client).await.map_err(transport)?;
        served.prepare(&mut conn).await.map_err(transport)?;
        self.shared.invalidate_bindings();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve_loop(served, stop.clone(), conn));
        Ok(ServeHandle::new(stop, task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_query_parameters_are_stripped() {
        let (uri, vis) = parse_uri("redis://127.0.0.1:6379/2?visibility_timeout_ms=2000").expect("valid");
        assert_eq!(uri, "redis://127.0.0.1:6379/2");
        assert_eq!(vis, Duration::from_millis(2000));
        let (uri, vis) = parse_uri("rediss://h/0?protocol=resp3&visibility_timeout_ms=500").expect("valid");
        assert_eq!(uri, "rediss://h/0?protocol=resp3");
        assert_eq!(vis, Duration::from_millis(500));
        let (uri, vis) = parse_uri("redis://h/").expect("valid");
        assert_eq!((uri.as_str(), vis), ("redis://h/", DEFAULT_VISIBILITY));
        assert!(matches!(parse_uri("redis://h/?visibility_timeout_ms=soon"), Err(BusError::InvalidUri { .. })));
        assert!(matches!(parse_uri("redis://h/?visibility_timeout_ms=5"), Err(BusError::InvalidUri { .. })));
    }

    #[test]
    fn glob_special_characters_are_escaped() {
        assert_eq!(glob_escape("t-1"), "t-1");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
