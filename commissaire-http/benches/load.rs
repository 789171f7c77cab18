//! Load: 1,000 concurrent clients, each on its own keep-alive connection, for 60 s against
//! the all-in-one server (in-process bus, embedded store in a tempdir, HTTP Basic with a
//! cached bcrypt verification), mixing reads and writes. The host services are off
//! (`host_services: false`, as `commissaire-server --no-host-services`), so no SSH traffic
//! happens: hosts are made-up addresses.
//!
//! Every client repeats the same cycle of 20 requests, 15 reads and 5 writes, on objects of
//! its own for the writes, so every answer is known in advance:
//! * reads: `GET /api/v0/clusters`, `GET /api/v0/cluster/cluster-K` (10 seeded clusters of
//!   10 hosts each), `GET /api/v0/host/ADDRESS` (100 seeded hosts, and the client's own);
//! * writes: `PUT /api/v0/cluster/load-C` (201, idempotent), `PUT` then `DELETE
//!   /api/v0/cluster/load-C/hosts/OWN` (an `active` host of the client's own, 200 each),
//!   `PUT` then `DELETE /api/v0/host/NEW-C` (201, 200).
//!
//! An error is a connection error or any status other than the one expected; the bench fails
//! if there is one. It prints errors, throughput, p50 / p99 / p999 latency, overall and for
//! reads and writes apart. Server and clients share this process and the machine's cores.
//!
//! Each client holds one socket and the server its peer: the bench raises its soft
//! `RLIMIT_NOFILE` (setrlimit) to 2 x clients + 512 when it is lower, up to the hard limit.
//!
//! Run: `cargo bench -p commissaire-http --bench load` (`LOAD_BENCH_CLIENTS`, default 1000;
//! `LOAD_BENCH_SECONDS`, default 60). Without `--bench` (as under `cargo test --all-targets`)
//! it is a smoke run of 20 clients for 2 s. Needs no test bed.

mod support;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use commissaire_core::{
    model::{Cluster, Host, Network},
    storage_client::StorageClient,
};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use support::{Served, basic_auth_user, basic_authorization, connect, load_average};

const CLUSTERS: usize = 10;
const HOSTS: usize = 100;
const USER: &str = "load";
const PASSWORD: &str = "load-password";

fn seeded_host(i: usize) -> String {
    format!("10.1.{}.{}", i / 250, i % 250 + 1)
}

/// The active host client `c` moves in and out of its cluster.
fn own_host(c: usize) -> String {
    format!("10.2.{}.{}", c / 250, c % 250 + 1)
}

/// The host client `c` creates and deletes.
fn new_host(c: usize) -> String {
    format!("10.3.{}.{}", c / 250, c % 250 + 1)
}

/// Step `step` of client `c`'s cycle: method, path, body, expected status, and whether it is
/// a write.
fn step(c: usize, step: usize) -> (Method, String, Option<&'static str>, StatusCode, bool) {
    let read = |path: String| (Method::GET, path, None, StatusCode::OK, false);
    match step % 20 {
        0 | 4 | 8 | 12 | 16 => read("/api/v0/clusters".into()),
        1 | 5 | 9 | 13 | 17 => read(format!("/api/v0/cluster/cluster-{}", (c + step) % CLUSTERS)),
        2 | 6 | 10 | 14 | 18 => read(format!("/api/v0/host/{}", seeded_host((c * 7 + step) % HOSTS))),
        3 => (Method::PUT, format!("/api/v0/cluster/load-{c}"), Some("{}"), StatusCode::CREATED, true),
        7 => (Method::PUT, format!("/api/v0/cluster/load-{c}/hosts/{}", own_host(c)), Some("{}"), StatusCode::OK, true),
        11 => (Method::DELETE, format!("/api/v0/cluster/load-{c}/hosts/{}", own_host(c)), None, StatusCode::OK, true),
        15 => (Method::PUT, format!("/api/v0/host/{}", new_host(c)), Some("{}"), StatusCode::CREATED, true),
        _ => (Method::DELETE, format!("/api/v0/host/{}", new_host(c)), None, StatusCode::OK, true),
    }
}

async fn seed(storage: &StorageClient, clients: usize) {
    storage.save(&Network::new("default")).await.expect("seed network");
    for c in 0..CLUSTERS {
        let mut cluster = Cluster::new(format!("cluster-{c}"));
        cluster.hostset = (0..HOSTS).filter(|h| h % CLUSTERS == c).map(seeded_host).collect();
        storage.save(&cluster).await.expect("seed cluster");
    }
    for address in (0..HOSTS).map(seeded_host).chain((0..clients).map(own_host)) {
        let mut host = Host::new(address);
        host.status = "active".into();
        host.os = "fedora".into();
        host.cpus = 4;
        host.memory = 8192;
        storage.save(&host).await.expect("seed host");
    }
}

#[derive(Default)]
struct ClientResult {
    /// latencies of the successful requests, µs
    reads: Vec<u32>,
    writes: Vec<u32>,
    errors: usize,
    first_error: Option<String>,
}

/// One client: its own connection (opened again after an error), the cycle until `deadline`
/// or `limit` requests.
async fn client(c: usize, addr: SocketAddr, authorization: Arc<str>, deadline: Instant, limit: usize) -> ClientResult {
    let mut result = ClientResult::default();
    let mut sender = None;
    let mut i = 0;
    while i < limit && Instant::now() < deadline {
        if sender.is_none() {
            match connect(addr).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    result.errors += 1;
                    result.first_error.get_or_insert(e);
                    // a refused connection must not turn into a busy loop
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(conn) = sender.as_mut() else { continue };
        let (method, path, body, expected, write) = step(c, i);
        let mut request = Request::builder()
            .method(method.clone())
            .uri(&path)
            .header(header::HOST, addr.to_string())
            .header(header::AUTHORIZATION, &*authorization);
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(body.map(|b| Bytes::from_static(b.as_bytes())).unwrap_or_default()))
            .expect("request");
        let sent = Instant::now();
        let outcome = async {
            conn.ready().await.map_err(|e| format!("connection: {e}"))?;
            let response = conn.send_request(request).await.map_err(|e| format!("request: {e}"))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            if status != expected {
                return Err(format!(
                    "{method} {path}: status {status}, {expected} expected: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => {
                let micros = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                if write {
                    result.writes.push(micros)
                } else {
                    result.reads.push(micros)
                }
                i += 1;
            }
            Err(e) => {
                result.errors += 1;
                result.first_error.get_or_insert(e);
                sender = None;
                // the cycle goes on: a write that failed is not retried, so the next write of
                // this client may fail as well; any failure fails the bench anyway
                i += 1;
            }
        }
    }
    result
}

/// Raise the soft limit of open files to `wanted` (at most the hard limit); returns the soft
/// limit in force.
fn raise_nofile(wanted: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 0 };
    if soft >= wanted {
        return soft;
    }
    let target = wanted.min(hard);
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => target,
        Err(e) => {
            eprintln!("setrlimit NOFILE {target}: {e}");
            soft
        }
    }
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    sorted.get(((sorted.len().max(1) - 1) as f64 * q) as usize).copied().unwrap_or(0) as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let number = |var: &str, default: u64| std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let clients = number("LOAD_BENCH_CLIENTS", if smoke { 20 } else { 1000 }).max(1) as usize;
    let seconds = number("LOAD_BENCH_SECONDS", if smoke { 2 } else { 60 }).max(1);
    let wanted_files = 2 * clients as u64 + 512;
    let files = raise_nofile(wanted_files);
    if files < wanted_files {
        eprintln!(
            "the open files limit is {files}, {wanted_files} are needed for {clients} clients: raise the hard limit"
        );
        std::process::exit(2);
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = vec![basic_auth_user(dir.path(), USER, PASSWORD, "read-write")];
    let served = Served::all_in_one(&dir.path().join("aio"), plugins).await;
    let (addr, storage) = (served.addr, served.storage.clone());
    seed(&storage, clients).await;

    let authorization: Arc<str> = basic_authorization(USER, PASSWORD).into();
    // one request first: it verifies the password (bcrypt); every later one hits the cache
    let warm = client(0, addr, authorization.clone(), Instant::now() + Duration::from_secs(30), 1).await;
    assert_eq!((warm.errors, warm.reads.len()), (0, 1), "warm-up: {:?}", warm.first_error);

    let load_before = load_average();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> =
        (0..clients).map(|c| tokio::spawn(client(c, addr, authorization.clone(), deadline, usize::MAX))).collect();
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    let mut errors = 0;
    let mut first_errors = Vec::new();
    for task in tasks {
        let r = task.await.expect("client panicked");
        reads.extend(r.reads);
        writes.extend(r.writes);
        errors += r.errors;
        if let Some(e) = r.first_error
            && first_errors.len() < 5
        {
            first_errors.push(e);
        }
    }
    let elapsed = started.elapsed();
    let load_after = load_average();
    served.stop().await;

    let mut all: Vec<u32> = reads.iter().chain(&writes).copied().collect();
    all.sort_unstable();
    reads.sort_unstable();
    writes.sort_unstable();
    println!(
        "\nLoad: {clients} keep-alive clients for {:.1} s against the all-in-one server (no host services), \
         15 reads and 5 writes in every 20 requests{}",
        elapsed.as_secs_f64(),
        if smoke { ", SMOKE RUN" } else { "" }
    );
    println!("load average before {load_before}, after {load_after}; open files limit {files}");
    println!("{:<8} {:>10} {:>12} {:>9} {:>9} {:>9}", "requests", "count", "requests/s", "p50 ms", "p99 ms", "p999 ms");
    for (name, sorted) in [("all", &all), ("reads", &reads), ("writes", &writes)] {
        println!(
            "{:<8} {:>10} {:>12.0} {:>9.2} {:>9.2} {:>9.2}",
            name,
            sorted.len(),
            sorted.len() as f64 / elapsed.as_secs_f64(),
            percentile(sorted, 0.5),
            percentile(sorted, 0.99),
            percentile(sorted, 0.999)
        );
    }
    println!("errors   {errors}");
    for e in &first_errors {
        eprintln!("error: {e}");
    }
    assert_eq!(errors, 0, "{errors} requests failed (connection errors or unexpected statuses)");
    assert!(!all.is_empty(), "no request succeeded");
}
