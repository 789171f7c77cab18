//! The bus contract (see `commissaire_core::bus`), written once and checked
//! against every backend: in-process, RabbitMQ and Redis.
//!
//! The broker backends need the test bed:
//! `bash scripts/testbed up && eval "$(bash scripts/testbed env)"`. Without its
//! environment variables their tests fail (they are not skipped). Every test uses
//! an exchange of its own (`t-<uuid>`), so tests run in parallel and against a
//! shared broker without seeing each other's messages.

use std::{
    collections::HashMap,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use commissaire_core::{
    bus::{self, Bus, BusError, Event, Handler, ServeOptions, Subscription, memory::MemoryBus},
    jsonrpc::{self, RpcError},
};
use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};

/// Longest any single behaviour may take before the test is declared hung.
const TEST_DEADLINE: Duration = Duration::from_secs(120);
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// Carries what a worker process needs (JSON); see [`worker_process`].
const WORKER_ENV: &str = "COMMISSAIRE_BUS_TEST_WORKER";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Memory,
    Amqp,
    Redis,
}

/// One backend under test, with an exchange of its own.
struct Backend {
    kind: Kind,
    uri: String,
    exchange: String,
    /// Instances of the in-process bus share state by cloning this.
    memory: MemoryBus,
}

fn env_or_fail(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set. Start the test bed and export its settings first: \
             `bash scripts/testbed up && eval \"$(bash scripts/testbed env)\"`"
        )
    })
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

impl Backend {
    fn new(kind: Kind) -> Self {
        init_tracing();
        let uri = match kind {
            Kind::Memory => "memory://".to_string(),
            Kind::Amqp => env_or_fail("COMMISSAIRE_AMQP_URL"),
            Kind::Redis => env_or_fail("COMMISSAIRE_REDIS_URL"),
        };
        Self { kind, uri, exchange: format!("t-{}", uuid::Uuid::new_v4()), memory: MemoryBus::new() }
    }

    /// Another bus instance on the same exchange: for the brokers a connection
    /// of its own, as a separate process would have.
    async fn instance(&self) -> Arc<dyn Bus> {
        match self.kind {
            Kind::Memory => Arc::new(self.memory.clone()),
            _ => bus::connect(&self.uri, &self.exchange).await.expect("connect to the test bed broker"),
        }
    }

    /// The URI with a short visibility timeout on Redis, so that a request held
    /// by a dead consumer is taken over within seconds.
    fn uri_for_takeover(&self) -> String {
        match self.kind {
            Kind::Redis => {
                let sep = if self.uri.contains('?') { '&' } else { '?' };
                format!("{}{sep}visibility_timeout_ms=2000", self.uri)
            }
            _ => self.uri.clone(),
        }
    }

    /// Removes what the test left on the broker (best effort; a failed test may
    /// leave it behind, which does no harm to other tests).
    async fn cleanup(&self, queues: &[&str]) {
        match self.kind {
            Kind::Memory => {}
            Kind::Amqp => {
                use lapin::{
                    Connection, ConnectionProperties,
                    options::{ExchangeDeleteOptions, QueueDeleteOptions},
                };
                let Ok(conn) = Connection::connect(&self.uri, ConnectionProperties::default()).await else { return };
                if let Ok(channel) = conn.create_channel().await {
                    for queue in queues {
                        let name = format!("{}.{queue}", self.exchange);
                        let _ = channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await;
                    }
                    let _ =
                        channel.exchange_delete(self.exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
                    let _ = channel.close(200, "cleanup".into()).await;
                }
                let _ = conn.close(200, "cleanup".into()).await;
            }
            Kind::Redis => {
                let Ok(client) = ::redis::Client::open(self.uri.as_str()) else { return };
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return };
                let keys: Vec<String> = ::redis::cmd("KEYS")
                    .arg(format!("{}:*", self.exchange))
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<(), _> = ::redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
                }
            }
        }
    }
}

/// A small service: `add`, `echo` and `fail` (always an RPC error).
struct Calc;

#[async_trait]
impl Handler for Calc {
    async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "add" => {
                let a = params["a"].as_i64().ok_or_else(|| RpcError::invalid_params("a must be an integer"))?;
                let b = params["b"].as_i64().ok_or_else(|| RpcError::invalid_params("b must be an integer"))?;
                Ok(json!(a + b))
            }
            "echo" => Ok(params),
            "fail" => Err(RpcError::new(4242, "refused on purpose").with_data(json!({"why": "test"}))),
            other => Err(RpcError::method_not_found(other)),
        }
    }
}

async fn round_trip(b: Backend) {
    let bus = b.instance().await;
    let service = bus.serve("calc", &["calc.*"], Arc::new(Calc), ServeOptions::default()).await.expect("serve");

    let sum = bus.request("calc.add", json!({"a": 2, "b": 40}), REPLY_TIMEOUT).await.expect("reply");
    assert_eq!(sum, json!(42));

    match bus.request("calc.fail", json!({}), REPLY_TIMEOUT).await {
        Err(BusError::Rpc(err)) => {
            assert_eq!(err.code, 4242);
            assert_eq!(err.message, "refused on purpose");
            assert_eq!(err.data, Some(json!({"why": "test"})));
        }
        other => panic!("expected the service's RPC error, got {other:?}"),
    }
    match bus.request("calc.nope", json!({}), REPLY_TIMEOUT).await {
        Err(BusError::Rpc(err)) => assert_eq!(err.code, jsonrpc::METHOD_NOT_FOUND),
        other => panic!("expected method not found, got {other:?}"),
    }

    service.shutdown().await;
    b.cleanup(&["calc"]).await;
}

async fn thousand_requests_in_flight(b: Backend) {
    let server = b.instance().await;
    let client = b.instance().await;
    let service =
        server.serve("echo", &["echo.*"], Arc::new(Calc), ServeOptions { concurrency: 64 }).await.expect("serve");

    let started = Instant::now();
    let callers = (0..8).map(|caller| {
        let client = client.clone();
        tokio::spawn(async move {
            // All 125 calls of a caller are started at once.
            let calls = (0..125).map(|n| {
                let client = client.clone();
                async move {
                    let params = json!({"caller": caller, "n": n, "pad": "x".repeat(n)});
                    let reply = client.request("echo.echo", params.clone(), Duration::from_secs(60)).await;
                    (params, reply)
                }
            });
            join_all(calls).await
        })
    });
    let mut answered = 0;
    for caller in join_all(callers).await {
        for (params, reply) in caller.expect("caller task") {
            assert_eq!(reply.expect("every request is answered"), params, "reply does not match its request");
            answered += 1;
        }
    }
    assert_eq!(answered, 1000);
    println!("{:?}: 1000 requests from 8 callers answered in {:?}", b.kind, started.elapsed());

    service.shutdown().await;
    b.cleanup(&["echo"]).await;
}

/// Records which instance handled which request.
struct Recorder {
    instance: usize,
    seen: Arc<Mutex<HashMap<String, Vec<usize>>>>,
}

#[async_trait]
impl Handler for Recorder {
    async fn call(&self, _method: &str, params: Value) -> Result<Value, RpcError> {
        // Long enough that one instance cannot take everything.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let id = params["id"].as_str().unwrap_or_default().to_string();
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(id).or_default().push(self.instance);
        Ok(json!(self.instance))
    }
}

async fn competing_consumers_handle_each_request_once(b: Backend) {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let mut services = Vec::new();
    for instance in 0..3 {
        let bus = b.instance().await;
        let handler = Arc::new(Recorder { instance, seen: seen.clone() });
        let service = bus.serve("work", &["work.*"], handler, ServeOptions { concurrency: 4 }).await.expect("serve");
        services.push((bus, service));
    }
    let client = b.instance().await;

    let calls = (0..300).map(|n| {
        let client = client.clone();
        async move { client.request("work.run", json!({"id": format!("r{n}")}), Duration::from_secs(60)).await }
    });
    for reply in join_all(calls).await {
        reply.expect("every request is answered");
    }

    let seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    assert_eq!(seen.len(), 300, "every request reached a handler");
    for (id, instances) in &seen {
        assert_eq!(instances.len(), 1, "request {id} was handled {} times: {instances:?}", instances.len());
    }
    let mut per_instance = [0usize; 3];
    for instances in seen.values() {
        per_instance[instances[0]] += 1;
    }
    println!("{:?}: requests handled per instance: {per_instance:?}", b.kind);
    assert!(per_instance.iter().filter(|&&n| n > 0).count() > 1, "only one instance did work: {per_instance:?}");

    for (_, service) in services {
        service.shutdown().await;
    }
    b.cleanup(&["work"]).await;
}

async fn request_without_consumer_times_out(b: Backend) {
    let bus = b.instance().await;
    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = bus.request("nobody.home", json!({}), timeout).await.expect_err("nobody answers");
    let elapsed = started.elapsed();
    match &err {
        BusError::Timeout { routing_key, timeout: reported } => {
            assert_eq!(routing_key, "nobody.home");
            assert_eq!(*reported, timeout);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(err.to_string().contains("nobody.home"), "message names the routing key: {err}");
    assert!(elapsed >= timeout, "gave up early, after {elapsed:?}");
    assert!(elapsed < timeout + Duration::from_secs(2), "gave up late, after {elapsed:?}");
    b.cleanup(&[]).await;
}

/// Reads events until one with `last` as routing key; returns their keys and `n`s.
async fn read_until(subscription: &mut Subscription, last: &str) -> Vec<(String, Value)> {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut got = Vec::new();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let event: Event = tokio::time::timeout(remaining, subscription.next())
            .await
            .unwrap_or_else(|_| panic!("no {last:?} event within {REPLY_TIMEOUT:?}; got {got:?}"))
            .expect("subscription ended");
        let done = event.routing_key == last;
        got.push((event.routing_key, event.body["n"].clone()));
        if done {
            return got;
        }
    }
}

async fn publish_reaches_subscribers_by_pattern(b: Backend) {
    let publisher = b.instance().await;
    let listener = b.instance().await;
    let mut one_word = listener.subscribe(&["news.*"]).await.expect("subscribe");
    let mut any_words = listener.subscribe(&["news.#"]).await.expect("subscribe");
    let mut other = listener.subscribe(&["other.*", "weather.*.*"]).await.expect("subscribe");

    for (key, n) in [("news.sport", 1), ("news.sport.football", 2), ("weather.today", 3), ("news", 4), ("other", 5)] {
        publisher.publish(key, &json!({"n": n})).await.expect("publish");
    }
    // Sent last: everything a subscription should not get would have come before.
    publisher.publish("news.end", &json!({"n": 0})).await.expect("publish");
    publisher.publish("other.end", &json!({"n": 0})).await.expect("publish");

    let keys = |events: Vec<(String, Value)>| events.into_iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>();
    assert_eq!(keys(read_until(&mut one_word, "news.end").await), ["news.sport=1", "news.end=0"]);
    assert_eq!(
        keys(read_until(&mut any_words, "news.end").await),
        ["news.sport=1", "news.sport.football=2", "news=4", "news.end=0"]
    );
    assert_eq!(keys(read_until(&mut other, "other.end").await), ["other.end=0"]);
    b.cleanup(&[]).await;
}

/// A worker started as a separate process (this test binary, running
/// [`worker_process`]), so that it can be killed with SIGKILL.
struct Worker {
    child: tokio::process::Child,
    stdout: Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Worker {
    async fn start(uri: &str, exchange: &str, role: &str) -> Self {
        let exe = std::env::current_exe().expect("path of the test binary");
        let spec = json!({"uri": uri, "exchange": exchange, "role": role}).to_string();
        let mut child = tokio::process::Command::new(exe)
            .args(["--exact", "worker_process", "--nocapture", "--ignored", "--test-threads=1"])
            .env(WORKER_ENV, spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the worker process");
        let stdout = BufReader::new(child.stdout.take().expect("worker stdout")).lines();
        let mut worker = Self { child, stdout };
        worker.wait_for_line("WORKER READY").await;
        worker
    }

    /// Waits until the worker prints a line containing `marker` (not necessarily
    /// at its start: libtest prints "test worker_process ... " before it).
    async fn wait_for_line(&mut self, marker: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = tokio::time::timeout(remaining, self.stdout.next_line())
                .await
                .unwrap_or_else(|_| panic!("worker did not print {marker:?} within 30 s"))
                .expect("read worker output")
                .unwrap_or_else(|| panic!("worker exited before printing {marker:?}"));
            if line.contains(marker) {
                return line;
            }
        }
    }

    async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL the worker");
        self.child.wait().await.expect("reap the worker");
    }
}

/// The handler of a worker process: `hang` announces the request and never
/// answers; `answer` answers.
struct WorkerHandler {
    role: String,
}

#[async_trait]
impl Handler for WorkerHandler {
    async fn call(&self, _method: &str, params: Value) -> Result<Value, RpcError> {
        if self.role == "hang" {
            println!("WORKER GOT {params}");
            std::future::pending::<()>().await;
        }
        Ok(json!({"handled_by": self.role, "job": params["job"]}))
    }
}

/// Not a test: the worker process of [`killed_consumer_loses_nothing`], run by
/// re-executing this binary with `WORKER_ENV` set. Does nothing without it.
#[tokio::test]
#[ignore = "helper process for the killed-consumer tests"]
async fn worker_process() {
    let Ok(spec) = std::env::var(WORKER_ENV) else { return };
    init_tracing();
    let spec: Value = serde_json::from_str(&spec).expect("worker spec");
    let field = |name: &str| spec[name].as_str().expect("worker spec field").to_string();
    let bus = bus::connect(&field("uri"), &field("exchange")).await.expect("worker connects");
    let handler = Arc::new(WorkerHandler { role: field("role") });
    let service = bus.serve("work", &["work.*"], handler, ServeOptions { concurrency: 1 }).await.expect("serve");
    println!("WORKER READY");
    service.wait().await;
}

async fn killed_consumer_loses_nothing(b: Backend) {
    let uri = b.uri_for_takeover();
    let caller = bus::connect(&uri, &b.exchange).await.expect("connect");
    let first = Worker::start(&uri, &b.exchange, "hang").await;
    let mut first = first;

    let request =
        tokio::spawn(async move { caller.request("work.run", json!({"job": 7}), Duration::from_secs(60)).await });
    let got = first.wait_for_line("WORKER GOT").await;
    assert!(got.contains("\"job\":7"), "the first worker got the request: {got}");
    let killed_at = Instant::now();
    first.kill().await;

    let second = Worker::start(&uri, &b.exchange, "answer").await;
    let reply = request.await.expect("caller task").expect("the request survives its consumer's death");
    assert_eq!(reply, json!({"handled_by": "answer", "job": 7}));
    println!("{:?}: request taken over {:?} after SIGKILL", b.kind, killed_at.elapsed());

    second.kill().await;
    b.cleanup(&["work"]).await;
}

/// One test per backend per behaviour.
macro_rules! suite {
    ($module:ident, $kind:ident, [$($behaviour:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let backend = super::Backend::new(super::Kind::$kind);
                    tokio::time::timeout(super::TEST_DEADLINE, super::$behaviour(backend))
                        .await
                        .expect("the test hung");
                }
            )*
        }
    };
}

suite!(
    memory,
    Memory,
    [
        round_trip,
        thousand_requests_in_flight,
        competing_consumers_handle_each_request_once,
        request_without_consumer_times_out,
        publish_reaches_subscribers_by_pattern,
    ]
);

suite!(
    amqp,
    Amqp,
    [
        round_trip,
        thousand_requests_in_flight,
        competing_consumers_handle_each_request_once,
        request_without_consumer_times_out,
        publish_reaches_subscribers_by_pattern,
        killed_consumer_loses_nothing,
    ]
);

suite!(
    redis,
    Redis,
    [
        round_trip,
        thousand_requests_in_flight,
        competing_consumers_handle_each_request_once,
        request_without_consumer_times_out,
        publish_reaches_subscribers_by_pattern,
        killed_consumer_loses_nothing,
    ]
);
