//! The broker backends survive a broker restart: a service keeps serving and
//! callers keep calling through `$COMMISSAIRE_TESTBED restart rabbitmq|redis`,
//! with no call hanging past its timeout and no action from the caller to resume.
//!
//! A test binary of its own because it disrupts the shared broker. Needs the test
//! bed: `bash scripts/testbed up && eval "$(bash scripts/testbed env)"`.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use commissaire_core::{
    bus::{self, Bus, BusError, Handler, ServeOptions},
    jsonrpc::RpcError,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const CALLERS: usize = 4;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How much later than its timeout a call may end before it counts as hung.
const MARGIN: Duration = Duration::from_secs(2);
/// How long after the restart the service must be reachable again.
const RECOVERY_WINDOW: Duration = Duration::from_secs(30);

fn env_or_fail(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set. Start the test bed and export its settings first: \
             `bash scripts/testbed up && eval \"$(bash scripts/testbed env)\"`"
        )
    })
}

struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn call(&self, _method: &str, params: Value) -> Result<Value, RpcError> {
        Ok(params)
    }
}

/// Records the params of every call it handles.
#[derive(Default)]
struct Recorder(Mutex<Vec<Value>>);

#[async_trait]
impl Handler for Recorder {
    async fn call(&self, _method: &str, params: Value) -> Result<Value, RpcError> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(params.clone());
        Ok(params)
    }
}

#[derive(Default)]
struct Tally {
    ok_before: AtomicUsize,
    ok_after: AtomicUsize,
    errors: Mutex<BTreeMap<&'static str, usize>>,
    /// Calls that ended later than their timeout + margin.
    hung: Mutex<Vec<Duration>>,
}

fn kind_of(err: &BusError) -> &'static str {
    match err {
        BusError::Rpc(_) => "rpc",
        BusError::Timeout { .. } => "timeout",
        BusError::Transport(_) => "transport",
        BusError::InvalidUri { .. } => "invalid-uri",
        BusError::Malformed(_) => "malformed",
    }
}

/// Waits for `condition`, polling, until `within` has passed; false on deadline.
async fn wait_until(within: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition().await
}

async fn survives_restart(service: &str, uri_var: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let uri = env_or_fail(uri_var);
    let testbed = env_or_fail("COMMISSAIRE_TESTBED");
    let exchange = format!("t-{}", uuid::Uuid::new_v4());

    let server = bus::connect(&uri, &exchange).await.expect("connect the service");
    let client: Arc<dyn Bus> = bus::connect(&uri, &exchange).await.expect("connect the callers");
    let serving = server.serve("svc", &["restart.*"], Arc::new(Echo), ServeOptions::default()).await.expect("serve");
    let mut events = server.subscribe(&["restart.events.#"]).await.expect("subscribe");
    client.publish("restart.events.before", &json!({"before": true})).await.expect("publish");
    let first = tokio::time::timeout(CALL_TIMEOUT, events.next()).await.expect("event before the restart");
    assert_eq!(first.map(|e| e.routing_key), Some("restart.events.before".to_string()));

    let tally = Arc::new(Tally::default());
    let restarted = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (client, tally, restarted, stop) = (client.clone(), tally.clone(), restarted.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    n += 1;
                    let params = json!({"caller": caller, "n": n});
                    let started = Instant::now();
                    let outcome = client.request("restart.echo", params.clone(), CALL_TIMEOUT).await;
                    let took = started.elapsed();
                    if took > CALL_TIMEOUT + MARGIN {
                        tally.hung.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(took);
                    }
                    match outcome {
                        Ok(reply) => {
                            assert_eq!(reply, params, "reply does not match its request");
                            let counter =
                                if restarted.load(Ordering::SeqCst) { &tally.ok_after } else { &tally.ok_before };
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(err) => {
                            *tally
                                .errors
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .entry(kind_of(&err))
                                .or_default() += 1;
                            // Pace retries while the broker is down (errors come back at once).
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
        })
        .collect();

    assert!(
        wait_until(Duration::from_secs(30), async || tally.ok_before.load(Ordering::SeqCst) >= 50).await,
        "calls did not succeed before the restart"
    );

    // A request waiting in the queue of a service with no instance up when the
    // broker restarts (RabbitMQ: the queue is durable, so it is there afterwards).
    let queued =
        if service == "rabbitmq" { Some(queue_a_request(&uri, &exchange, &server, &client).await) } else { None };

    let restart_started = Instant::now();
    let status = tokio::process::Command::new("bash")
        .arg(&testbed)
        .args(["restart", service])
        .status()
        .await
        .expect("run the testbed script");
    assert!(status.success(), "`{testbed} restart {service}` failed: {status}");
    let restart_took = restart_started.elapsed();
    restarted.store(true, Ordering::SeqCst);
    let back_at = Instant::now();

    let recovered = wait_until(RECOVERY_WINDOW, async || tally.ok_after.load(Ordering::SeqCst) >= 50).await;
    let recovery = back_at.elapsed();
    stop.cancel();
    for caller in callers {
        caller.await.expect("caller task");
    }

    let errors = tally.errors.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let hung = tally.hung.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    println!(
        "{service}: restart took {restart_took:?}; ok before={} after={}; errors={:?}; \
         50 calls succeeded {recovery:?} after the broker was back; hung={}",
        tally.ok_before.load(Ordering::SeqCst),
        tally.ok_after.load(Ordering::SeqCst),
        errors,
        hung.len(),
    );
    assert!(hung.is_empty(), "calls ended later than {CALL_TIMEOUT:?} + {MARGIN:?}: {hung:?}");
    assert!(recovered, "the service did not answer again within {RECOVERY_WINDOW:?} after the restart");

    // The subscription came back by itself too (events published while it was
    // being re-established are lost, so keep publishing until one arrives).
    let deadline = Instant::now() + RECOVERY_WINDOW;
    let resubscribed = loop {
        let _ = client.publish("restart.events.after", &json!({"after": true})).await;
        match tokio::time::timeout(Duration::from_millis(200), events.next()).await {
            Ok(Some(event)) if event.routing_key == "restart.events.after" => break true,
            Ok(None) => break false,
            _ if Instant::now() > deadline => break false,
            _ => {}
        }
    };
    assert!(resubscribed, "the subscription did not resume within {RECOVERY_WINDOW:?} after the restart");

    if let Some(queued) = queued {
        // Its caller got an error, and the request is not handled after the restart: the
        // service, back, sees only a request made now (the queue is first in, first out).
        let outcome = queued.await.expect("the queued caller");
        assert!(outcome.is_err(), "a request queued over the broker restart was answered: {outcome:?}");
        let recorder = Arc::new(Recorder::default());
        let idle = server.serve("idle", &["idle.*"], recorder.clone(), ServeOptions::default()).await.expect("serve");
        let reply = client.request("idle.work", json!("after"), CALL_TIMEOUT).await.expect("call after the restart");
        assert_eq!(reply, json!("after"));
        let seen = recorder.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        assert_eq!(seen, vec![json!("after")], "the request queued before the restart was handled after it");
        idle.shutdown().await;
    }

    // The same bus and consumer still work for a plain call, and shut down cleanly.
    let reply = client.request("restart.echo", json!({"last": true}), CALL_TIMEOUT).await.expect("call after restart");
    assert_eq!(reply, json!({"last": true}));
    tokio::time::timeout(Duration::from_secs(10), serving.shutdown()).await.expect("consumer shuts down");
    cleanup(&uri, &exchange).await;
}

/// Sends a request to the `idle` service, whose queue exists but which no instance
/// serves, and returns once RabbitMQ holds it in that queue; the task ends with
/// the caller's outcome.
async fn queue_a_request(
    uri: &str,
    exchange: &str,
    server: &Arc<dyn Bus>,
    client: &Arc<dyn Bus>,
) -> tokio::task::JoinHandle<Result<Value, BusError>> {
    use lapin::{Connection, ConnectionProperties, options::QueueDeclareOptions, types::FieldTable};
    let idle = server.serve("idle", &["idle.*"], Arc::new(Echo), ServeOptions::default()).await.expect("serve idle");
    idle.shutdown().await;
    let caller = {
        let client = client.clone();
        tokio::spawn(async move { client.request("idle.work", json!("before"), Duration::from_secs(120)).await })
    };
    let conn = Connection::connect(uri, ConnectionProperties::default()).await.expect("inspect the broker");
    let channel = conn.create_channel().await.expect("channel");
    let queue = format!("{exchange}.idle");
    let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
    let held = wait_until(CALL_TIMEOUT, async || {
        let declared = channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await;
        declared.map(|q| q.message_count()).unwrap_or(0) == 1
    })
    .await;
    assert!(held, "the request to the idle service did not reach its queue");
    let _ = conn.close(200, "inspected".into()).await;
    caller
}

/// Removes what the test left on the broker (best effort).
async fn cleanup(uri: &str, exchange: &str) {
    if uri.starts_with("amqp") {
        use lapin::{
            Connection, ConnectionProperties,
            options::{ExchangeDeleteOptions, QueueDeleteOptions},
        };
        let Ok(conn) = Connection::connect(uri, ConnectionProperties::default()).await else { return };
        if let Ok(channel) = conn.create_channel().await {
            for name in ["svc", "idle"] {
                let queue = format!("{exchange}.{name}");
                let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
            }
            let _ = channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await;
            let _ = channel.close(200, "cleanup".into()).await;
        }
        let _ = conn.close(200, "cleanup".into()).await;
    } else {
        let Ok(client) = redis::Client::open(uri) else { return };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return };
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{exchange}:*")).query_async(&mut conn).await.unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_survives_broker_restart() {
    survives_restart("rabbitmq", "COMMISSAIRE_AMQP_URL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_survives_broker_restart() {
    survives_restart("redis", "COMMISSAIRE_REDIS_URL").await;
}
