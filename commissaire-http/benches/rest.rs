//! REST throughput and latency: `GET /api/v0/clusters` and
//! `GET /api/v0/host/{address}` with 64 concurrent keep-alive connections,
//! authenticated with HTTP Basic (bcrypt cost 12, verified once and then
//! cached), in two set-ups started in this process:
//!
//! * `all-in-one`: the in-process bus and the embedded store in a tempdir;
//! * `amqp+etcd`: the storage service on an AMQP bus (an exchange of its own)
//!   with an etcd store (a key namespace of its own), and the server on its own
//!   AMQP connection.
//!
//! 10 clusters and 100 hosts are seeded first. The load generator is hyper 1
//! client connections, one per worker.
//!
//! Ceilings, measured in the same run at the same concurrency: for all-in-one, a
//! minimal hyper 1 server answering each path with the bytes the real server sent
//! for it; for amqp+etcd, bare request/reply round trips on the AMQP bus (echo
//! handler) and bare etcd gets of one key holding a host document (one client).
//! The last table gives each REST row against its ceiling (the lower of the two for
//! amqp+etcd) and whether the goal, a ratio of at least 0.5, is met.
//!
//! Run: `bash scripts/testbed up && eval "$(bash scripts/testbed env)" &&
//! cargo bench -p commissaire-http --bench rest` (`REST_BENCH_REQUESTS` sets the
//! requests per row, default 20,000). Without `--bench` (as under
//! `cargo test --all-targets`) it does a short smoke run of 200 per row.

mod support;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use commissaire_core::{
    bus::{self, Handler, ServeOptions},
    jsonrpc::RpcError,
    model::{Cluster, Host, Network},
    secrets::SecretsKey,
    storage_client::StorageClient,
};
use commissaire_http::auth::PluginSpec;
use commissaire_services::storage::{self, StorageService};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use support::{Served, basic_auth_user, basic_authorization, connect, load_average};
use tokio::{sync::oneshot, task::JoinHandle};

const WORKERS: usize = 64;
const CLUSTERS: usize = 10;
const HOSTS: usize = 100;
const USER: &str = "bench";
const PASSWORD: &str = "bench-password";

/// A server under load, named for its row.
struct Setup {
    name: &'static str,
    served: Served,
}

fn users_file(dir: &Path) -> PluginSpec {
    basic_auth_user(dir, USER, PASSWORD, "read-only")
}

async fn all_in_one(dir: &Path) -> Setup {
    Setup { name: "all-in-one", served: Served::all_in_one(&dir.join("aio"), vec![users_file(dir)]).await }
}

async fn amqp_etcd(dir: &Path, amqp: &str, etcd: &str) -> Setup {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("rest-bench-{id}");
    let storage_bus = bus::connect(amqp, &exchange).await.expect("storage's AMQP connection");
    let specs = storage::handlers::parse(Some(
        &json!([{"type": "etcd", "server_url": etcd, "namespace": format!("/rest-bench-{id}")}]),
    ))
    .expect("handler configuration");
    let handlers = storage::open_handlers(specs).await.expect("etcd");
    let key = SecretsKey::load_or_generate(&dir.join("secrets.key")).expect("secrets key");
    let service = Arc::new(StorageService::new(handlers, key, storage_bus.clone()));
    let serving = storage_bus
        .serve(storage::QUEUE, storage::PATTERNS, service, ServeOptions { concurrency: WORKERS })
        .await
        .expect("serve storage");
    let server_bus = bus::connect(amqp, &exchange).await.expect("the server's AMQP connection");
    Setup { name: "amqp+etcd", served: Served::start(server_bus, vec![users_file(dir)], vec![serving]).await }
}

fn host_address(i: usize) -> String {
    format!("10.1.{}.{}", i / 250, i % 250 + 1)
}

async fn seed(storage: &StorageClient) {
    storage.save(&Network::new("default")).await.expect("seed network");
    for c in 0..CLUSTERS {
        let mut cluster = Cluster::new(format!("cluster-{c}"));
        cluster.hostset = (0..HOSTS).filter(|h| h % CLUSTERS == c).map(host_address).collect();
        storage.save(&cluster).await.expect("seed cluster");
    }
    for h in 0..HOSTS {
        let mut host = Host::new(host_address(h));
        host.status = "active".into();
        host.os = "fedora".into();
        host.cpus = 4;
        host.memory = 8192;
        storage.save(&host).await.expect("seed host");
    }
}

async fn unseed(storage: &StorageClient) {
    for h in 0..HOSTS {
        let _ = storage.delete::<Host>(&host_address(h)).await;
    }
    for c in 0..CLUSTERS {
        let _ = storage.delete::<Cluster>(&format!("cluster-{c}")).await;
    }
    let _ = storage.delete::<Network>("default").await;
}

struct Row {
    setup: &'static str,
    route: &'static str,
    requests: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

/// One worker: its own keep-alive connection, `count` requests in sequence.
async fn worker(
    addr: SocketAddr,
    authorization: Arc<str>,
    path: impl Fn(usize) -> String,
    count: usize,
) -> (Vec<Duration>, usize, Option<String>) {
    let mut latencies = Vec::with_capacity(count);
    let mut errors = 0;
    let mut first_error = None;
    let mut sender = None;
    for i in 0..count {
        if sender.is_none() {
            match connect(addr).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                    continue;
                }
            }
        }
        let Some(conn) = sender.as_mut() else { continue };
        let request = Request::get(path(i))
            .header(header::HOST, addr.to_string())
            .header(header::AUTHORIZATION, &*authorization)
            .body(Empty::<Bytes>::new())
            .expect("request");
        let sent = Instant::now();
        let outcome = async {
            conn.ready().await.map_err(|e| format!("connection: {e}"))?;
            let response = conn.send_request(request).await.map_err(|e| format!("request: {e}"))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            if status != StatusCode::OK {
                return Err(format!("status {status}: {}", String::from_utf8_lossy(&body)));
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => latencies.push(sent.elapsed()),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
                sender = None;
            }
        }
    }
    (latencies, errors, first_error)
}

/// `total` requests on `route` from `workers` concurrent connections.
async fn measure(setup: &Setup, route: &'static str, total: usize, workers: usize) -> Row {
    measure_at(setup.name, setup.served.addr, route, total, workers).await
}

/// `total` requests on `route` to `addr` (a server named `name`) from `workers` connections.
async fn measure_at(name: &'static str, addr: SocketAddr, route: &'static str, total: usize, workers: usize) -> Row {
    let authorization: Arc<str> = authorization().into();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let authorization = authorization.clone();
        let count = total / workers + usize::from(w < total % workers);
        tasks.push(tokio::spawn(async move {
            let path = move |i: usize| match route {
                "clusters" => "/api/v0/clusters".to_string(),
                _ => format!("/api/v0/host/{}", host_address((w * 7 + i) % HOSTS)),
            };
            worker(addr, authorization, path, count).await
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    for task in tasks {
        let (l, e, first) = task.await.expect("worker panicked");
        if let Some(first) = first {
            eprintln!("{name} {route}: first error of a worker: {first}");
        }
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pick = |q: f64| latencies.get(((latencies.len().max(1) - 1) as f64 * q) as usize).copied().unwrap_or_default();
    Row {
        setup: name,
        route: if route == "clusters" { "GET /api/v0/clusters" } else { "GET /api/v0/host/{address}" },
        requests: latencies.len() + errors,
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.5),
        p99: pick(0.99),
        errors,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn authorization() -> String {
    basic_authorization(USER, PASSWORD)
}

/// The body the real server answers `path` with.
async fn body_of(addr: SocketAddr, path: &str) -> Bytes {
    let mut conn = connect(addr).await.expect("connect for the body");
    let request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .header(header::AUTHORIZATION, authorization())
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = conn.send_request(request).await.expect("GET for the body");
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    response.into_body().collect().await.expect("body").to_bytes()
}

/// The ceiling of the all-in-one rows: a minimal hyper 1 server (HTTP/1.1, keep-alive,
/// TCP_NODELAY as the real one) answering each path with the bytes the real server sent for
/// it; no authentication, no routing beyond a map lookup, no store.
async fn hyper_ceiling(bodies: Arc<HashMap<String, Bytes>>) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
            };
            let _ = stream.set_nodelay(true);
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let body = bodies.get(req.uri().path()).cloned();
                    async move {
                        let response = match body {
                            Some(body) => Response::builder()
                                .status(StatusCode::OK)
                                .header(header::CONTENT_TYPE, "application/json")
                                .body(Full::new(body)),
                            None => Response::builder().status(StatusCode::NOT_FOUND).body(Full::new(Bytes::new())),
                        };
                        Ok::<_, Infallible>(response.expect("response"))
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (addr, stop, task)
}

struct Echo;

#[async_trait::async_trait]
impl Handler for Echo {
    async fn call(&self, _method: &str, params: Value) -> Result<Value, RpcError> {
        Ok(params)
    }
}

/// Percentiles and rate of `latencies` gathered over `elapsed`.
fn row(setup: &'static str, route: &'static str, mut latencies: Vec<Duration>, elapsed: Duration) -> Row {
    latencies.sort_unstable();
    let pick = |q: f64| latencies.get(((latencies.len().max(1) - 1) as f64 * q) as usize).copied().unwrap_or_default();
    Row {
        setup,
        route,
        requests: latencies.len(),
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.5),
        p99: pick(0.99),
        errors: 0,
    }
}

/// One ceiling of the amqp+etcd rows: bare request/reply round trips on the AMQP bus (an echo
/// handler served with the storage service's concurrency) from `workers` concurrent callers.
async fn bus_ceiling(amqp: &str, total: usize, workers: usize) -> Row {
    let exchange = format!("rest-bench-echo-{}", uuid::Uuid::new_v4().simple());
    let bus = bus::connect(amqp, &exchange).await.expect("AMQP bus");
    let serving = bus
        .serve("bench", &["bench.*"], Arc::new(Echo), ServeOptions { concurrency: WORKERS })
        .await
        .expect("serve echo");
    let caller = bus::connect(amqp, &exchange).await.expect("the caller's AMQP connection");
    let run = |total: usize| {
        let caller = caller.clone();
        async move {
            let started = Instant::now();
            let tasks: Vec<_> = (0..workers)
                .map(|w| {
                    let caller = caller.clone();
                    let count = total / workers + usize::from(w < total % workers);
                    tokio::spawn(async move {
                        let mut latencies = Vec::with_capacity(count);
                        for i in 0..count {
                            let sent = Instant::now();
                            let reply = caller
                                .request("bench.echo", json!({"w": w, "i": i}), Duration::from_secs(30))
                                .await
                                .expect("bus round trip");
                            assert_eq!(reply["i"], i, "reply does not match its request");
                            latencies.push(sent.elapsed());
                        }
                        latencies
                    })
                })
                .collect();
            let mut latencies = Vec::with_capacity(total);
            for task in tasks {
                latencies.extend(task.await.expect("caller panicked"));
            }
            (latencies, started.elapsed())
        }
    };
    run(workers * 4).await;
    let (latencies, elapsed) = run(total).await;
    serving.shutdown().await;
    row("amqp bus", "echo round trip", latencies, elapsed)
}

/// The other ceiling of the amqp+etcd rows: bare etcd gets of one key holding a host document
/// (the bytes the server returned for a host) from `workers` concurrent tasks on one client.
async fn etcd_ceiling(etcd: &str, value: Bytes, total: usize, workers: usize) -> Row {
    let mut client = etcd_client::Client::connect([etcd], None).await.expect("etcd");
    let key = format!("/rest-bench-ceiling-{}/host", uuid::Uuid::new_v4().simple());
    client.put(key.as_str(), value.to_vec(), None).await.expect("etcd put");
    let run = |total: usize| {
        let client = client.clone();
        let key = key.clone();
        async move {
            let started = Instant::now();
            let tasks: Vec<_> = (0..workers)
                .map(|w| {
                    let mut client = client.clone();
                    let key = key.clone();
                    let count = total / workers + usize::from(w < total % workers);
                    tokio::spawn(async move {
                        let mut latencies = Vec::with_capacity(count);
                        for _ in 0..count {
                            let sent = Instant::now();
                            let got = client.get(key.as_str(), None).await.expect("etcd get");
                            assert_eq!(got.kvs().len(), 1, "the key is there");
                            latencies.push(sent.elapsed());
                        }
                        latencies
                    })
                })
                .collect();
            let mut latencies = Vec::with_capacity(total);
            for task in tasks {
                latencies.extend(task.await.expect("getter panicked"));
            }
            (latencies, started.elapsed())
        }
    };
    run(workers * 4).await;
    let (latencies, elapsed) = run(total).await;
    let _ = client.delete(key.as_str(), None).await;
    row("etcd", "get one key", latencies, elapsed)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let requests: usize = std::env::var("REST_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 200 } else { 20_000 })
        .max(WORKERS);
    let need = |var: &str| {
        std::env::var(var).unwrap_or_else(|_| {
            eprintln!("{var} is not set: run `bash scripts/testbed up && eval \"$(bash scripts/testbed env)\"` first");
            std::process::exit(2)
        })
    };
    let (amqp, etcd) = (need("COMMISSAIRE_AMQP_URL"), need("COMMISSAIRE_ETCD_URL"));
    let dir = tempfile::tempdir().expect("tempdir");

    let mut rows = Vec::new();
    let mut ceilings = Vec::new();
    let mut host_body = Bytes::new();
    for which in ["all-in-one", "amqp+etcd"] {
        let sub = dir.path().join(which);
        std::fs::create_dir_all(&sub).expect("dir");
        let setup = if which == "all-in-one" { all_in_one(&sub).await } else { amqp_etcd(&sub, &amqp, &etcd).await };
        seed(&setup.served.storage).await;
        // Warm up: one request verifies the password (bcrypt), the rest hit the cache.
        let warm = measure(&setup, "clusters", 1, 1).await;
        assert_eq!(warm.errors, 0, "{}: the warm-up request failed", setup.name);
        measure(&setup, "host", WORKERS * 4, WORKERS).await;
        for route in ["clusters", "host"] {
            rows.push(measure(&setup, route, requests, WORKERS).await);
        }
        let stats = setup.served.state.auth.stats();
        println!(
            "{}: {} requests authenticated with {} bcrypt verification(s) and {} cache hits",
            setup.name, stats.authenticated, stats.bcrypt_verifications, stats.cache_hits
        );
        if which == "all-in-one" {
            // the same bytes, served by nothing but hyper
            let mut bodies = HashMap::new();
            bodies.insert("/api/v0/clusters".to_owned(), body_of(setup.served.addr, "/api/v0/clusters").await);
            for h in 0..HOSTS {
                let path = format!("/api/v0/host/{}", host_address(h));
                let body = body_of(setup.served.addr, &path).await;
                bodies.insert(path, body);
            }
            host_body = bodies.get(&format!("/api/v0/host/{}", host_address(0))).cloned().unwrap_or_default();
            let (addr, stop, task) = hyper_ceiling(Arc::new(bodies)).await;
            measure_at("hyper", addr, "host", WORKERS * 4, WORKERS).await;
            for route in ["clusters", "host"] {
                ceilings.push(measure_at("hyper", addr, route, requests, WORKERS).await);
            }
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        unseed(&setup.served.storage).await;
        setup.served.stop().await;
    }
    ceilings.push(bus_ceiling(&amqp, requests, WORKERS).await);
    ceilings.push(etcd_ceiling(&etcd, host_body, requests, WORKERS).await);

    println!(
        "\nREST server: {WORKERS} concurrent keep-alive connections, basic auth (cached bcrypt), \
         {CLUSTERS} clusters and {HOSTS} hosts{}; load average {}",
        if smoke { ", SMOKE RUN" } else { "" },
        load_average()
    );
    println!(
        "{:<11} {:<28} {:>9} {:>11} {:>8} {:>8} {:>7}",
        "set-up", "route", "requests", "requests/s", "p50 ms", "p99 ms", "errors"
    );
    for row in rows.iter().chain(&ceilings) {
        println!(
            "{:<11} {:<28} {:>9} {:>11.0} {:>8} {:>8} {:>7}",
            row.setup,
            row.route,
            row.requests,
            row.per_second,
            ms(row.p50),
            ms(row.p99),
            row.errors
        );
    }

    // each REST row against its ceiling: the hyper server on the same route for all-in-one, the
    // lower of the bus round trip and the etcd get for amqp+etcd
    let rate = |setup: &str, route: &str| {
        ceilings.iter().chain(&rows).find(|r| r.setup == setup && r.route == route).map(|r| r.per_second).unwrap_or(0.0)
    };
    let bus_rate = rate("amqp bus", "echo round trip");
    let etcd_rate = rate("etcd", "get one key");
    println!("\nAgainst the ceilings measured in this run (goal: ratio >= 0.50)");
    println!(
        "{:<11} {:<28} {:>11} {:>11} {:<16} {:>6} {:>7}",
        "set-up", "route", "requests/s", "ceiling/s", "ceiling", "ratio", "goal"
    );
    for row in &rows {
        let (ceiling, what) = if row.setup == "all-in-one" {
            (rate("hyper", row.route), "hyper, same bytes")
        } else if bus_rate <= etcd_rate {
            (bus_rate, "AMQP round trip")
        } else {
            (etcd_rate, "etcd get")
        };
        let ratio = row.per_second / ceiling.max(f64::MIN_POSITIVE);
        println!(
            "{:<11} {:<28} {:>11.0} {:>11.0} {:<16} {:>6.2} {:>7}",
            row.setup,
            row.route,
            row.per_second,
            ceiling,
            what,
            ratio,
            if ratio >= 0.5 { "met" } else { "MISSED" }
        );
    }
    let errors: usize = rows.iter().map(|r| r.errors).sum();
    assert_eq!(errors, 0, "{errors} requests failed");
}
