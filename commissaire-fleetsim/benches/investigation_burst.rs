//! Investigation burst (benchmark, not a test): N simulated hosts created at
//! once through the REST API of the all-in-one server; the time until every
//! one is `active`, and the server's latency meanwhile.
//!
//! Set-up: the simulator binary (a child process, 127.20.80.1 onwards) and
//! `commissaire-server --all-in-one` (a child process, host services on, its
//! data in a tempdir, HTTP Basic with a bcrypt cost 4 user) with a `trivial`
//! container manager and one cluster using it. First one extra host is created
//! alone: its time from `PUT` to `active` is one investigation's time. Then the
//! N `PUT /api/v0/host/{address}` (the simulator's client key, `"cluster"`)
//! go out at once over a pool of keep-alive connections, while a probe on its
//! own connection sends `GET /api/v0/clusters` every 50 ms and `GET
//! /api/v0/hosts` is polled for the hosts' statuses. The ideal is
//! ceil(N / the investigator's concurrency) x one investigation's time; the
//! all-in-one investigator takes at most `ServeOptions::default().concurrency`
//! requests at once.
//!
//! Run: `cargo build --release -p commissaire-http --bin commissaire-server &&
//! cargo bench -p commissaire-fleetsim --bench investigation_burst`
//! Sizes: `FLEET_BURST_HOSTS` (default 1000), `FLEET_BURST_CONNECTIONS` (default 64). Under
//! `cargo test --all-targets` it is a smoke run over 20 hosts (the debug server must be built:
//! `cargo build --workspace --bins`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use base64::Engine;
use bytes::Bytes;
use commissaire_core::bus::ServeOptions;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use support::{Kid, addresses, client_key, load, start_fleet, with_files_limit};
use tokio::net::TcpStream;

mod support;

const USER: &str = "burst";
const PASSWORD: &str = "burst-password";
const CLUSTER: &str = "burst";
const PROBE_EVERY: Duration = Duration::from_millis(50);

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let var = |name: &str, full_default: &str, smoke: &str| {
        if full { std::env::var(name).unwrap_or_else(|_| full_default.into()) } else { smoke.into() }
    };
    let n: usize = var("FLEET_BURST_HOSTS", "1000", "20").parse().expect("FLEET_BURST_HOSTS");
    let pool: usize = var("FLEET_BURST_CONNECTIONS", "64", "4").parse().expect("FLEET_BURST_CONNECTIONS");
    // the smoke run has its own addresses, so it never meets a full run
    let first = if full { "127.20.80.1" } else { "127.20.180.1" };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run(n, pool.max(1), first, full));
}

/// `commissaire-server` next to this executable (`target/PROFILE/` or its `deps/`).
fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("bench executable");
    exe.ancestors().skip(1).take(2).map(|d| d.join("commissaire-server")).find(|p| p.is_file()).expect(
        "commissaire-server not found next to the bench: build it first with the same profile \
         (`cargo build --release -p commissaire-http --bin commissaire-server` for `cargo bench`)",
    )
}

/// A keep-alive HTTP/1 client connection with Basic credentials.
struct Client {
    addr: SocketAddr,
    authorization: String,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        let authorization =
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}")));
        Self { addr, authorization, sender: None }
    }

    /// Status and body; a broken connection is opened again on the next call.
    async fn send(&mut self, method: Method, path: &str, body: Option<&Value>) -> Result<(u16, Bytes), String> {
        if self.sender.is_none() {
            let stream = TcpStream::connect(self.addr).await.map_err(|e| format!("connect: {e}"))?;
            let _ = stream.set_nodelay(true);
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        let Some(sender) = self.sender.as_mut() else { return Err("no connection".into()) };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.to_string())
            .header(header::AUTHORIZATION, &self.authorization)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.map(Value::to_string).unwrap_or_default())))
            .expect("request");
        let outcome = async {
            sender.ready().await.map_err(|e| format!("connection: {e}"))?;
            let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
            Ok((status, body))
        }
        .await;
        if outcome.is_err() {
            self.sender = None;
        }
        outcome
    }

    /// A request that must answer `expect`; its body as JSON.
    async fn expect(&mut self, method: Method, path: &str, body: Option<&Value>, expect: u16) -> Value {
        let (status, bytes) =
            self.send(method.clone(), path, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(status, expect, "{method} {path}: {}", String::from_utf8_lossy(&bytes));
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }
}

/// Counts of the given hosts' statuses in a `GET /api/v0/hosts` answer: (active, failed).
fn tally(hosts: &Value, wanted: &std::collections::HashSet<&str>) -> (usize, usize, Vec<String>) {
    let (mut active, mut failed, mut reasons) = (0, 0, Vec::new());
    for host in hosts.as_array().map(Vec::as_slice).unwrap_or_default() {
        if !wanted.contains(host["address"].as_str().unwrap_or_default()) {
            continue;
        }
        match host["status"].as_str() {
            Some("active") => active += 1,
            Some("failed") => {
                failed += 1;
                reasons.push(format!("{}: {}", host["address"], host["reason"]));
            }
            _ => {}
        }
    }
    (active, failed, reasons)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Probe latencies of `GET /api/v0/clusters` every 50 ms until `stop`.
async fn probe(addr: SocketAddr, stop: Arc<AtomicBool>) -> (Vec<Duration>, usize) {
    let mut client = Client::new(addr);
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut latencies, mut errors) = (Vec::new(), 0);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let sent = Instant::now();
        match client.send(Method::GET, "/api/v0/clusters", None).await {
            Ok((200, _)) => latencies.push(sent.elapsed()),
            _ => errors += 1,
        }
    }
    latencies.sort();
    (latencies, errors)
}

async fn run(n: usize, pool: usize, first: &str, full: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_text = client_key(dir.path());
    // one more host than the burst: the first is investigated alone
    let _sim = start_fleet(dir.path(), n + 1, first, &[]);
    let all = addresses(first, n + 1);
    let (single, burst) = (all[0].clone(), all[1..].to_vec());

    let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt");
    std::fs::write(dir.path().join("users.json"), json!({USER: {"hash": hash, "role": "read-write"}}).to_string())
        .expect("users file");
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("port").port();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("server log");
    let mut server = with_files_limit(server_binary().to_str().expect("utf-8 path"));
    server
        .args(["--no-config-file", "--all-in-one", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen-interface", "127.0.0.1", "--listen-port", &port.to_string()])
        .arg("--authentication-plugin")
        .arg(format!("httpbasicauth:filepath={}", dir.path().join("users.json").display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let mut server = Kid(server.spawn().expect("start commissaire-server"));
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let server_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let mut admin = Client::new(addr);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!("the server exited ({status}): {}", server_log());
        }
        if let Ok((200, _)) = admin.send(Method::GET, "/api/v0/clusters", None).await {
            break;
        }
        assert!(Instant::now() < deadline, "the server did not answer within 60 s: {}", server_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin.expect(Method::PUT, "/api/v0/containermanager/local", Some(&json!({"type": "trivial"})), 201).await;
    admin
        .expect(Method::PUT, &format!("/api/v0/cluster/{CLUSTER}"), Some(&json!({"container_manager": "local"})), 201)
        .await;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&key_text);
    let body = json!({"ssh_priv_key": encoded, "remote_user": "root", "cluster": CLUSTER});

    // The probe's latency with the server idle, for comparison.
    let stop = Arc::new(AtomicBool::new(false));
    let idle_probe = tokio::spawn(probe(addr, stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (idle, _) = idle_probe.await.expect("idle probe");

    // One investigation alone.
    let started = Instant::now();
    admin.expect(Method::PUT, &format!("/api/v0/host/{single}"), Some(&body), 201).await;
    let one = loop {
        let host = admin.expect(Method::GET, &format!("/api/v0/host/{single}"), None, 200).await;
        match host["status"].as_str() {
            Some("active") => break started.elapsed(),
            Some("failed") => panic!("the single host failed: {host}\n{}", server_log()),
            _ => {}
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the single host is not active: {host}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    // The burst.
    let stop = Arc::new(AtomicBool::new(false));
    let burst_probe = tokio::spawn(probe(addr, stop.clone()));
    let burst = Arc::new(burst);
    let next = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(pool);
    for _ in 0..pool {
        let (burst, next, body, refused) = (burst.clone(), next.clone(), body.clone(), refused.clone());
        workers.push(tokio::spawn(async move {
            let mut client = Client::new(addr);
            let (mut latencies, mut errors) = (Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(address) = burst.get(i) else { break };
                let sent = Instant::now();
                match client.send(Method::PUT, &format!("/api/v0/host/{address}"), Some(&body)).await {
                    Ok((201, _)) => latencies.push(sent.elapsed()),
                    Ok((status, bytes)) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{address}: {status} {}", String::from_utf8_lossy(&bytes)))
                    }
                    Err(e) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{address}: {e}"))
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let wanted: std::collections::HashSet<&str> = burst.iter().map(String::as_str).collect();
    let limit = if full { Duration::from_secs(1800) } else { Duration::from_secs(120) };
    let mut poller = Client::new(addr);
    let mut puts_done = None;
    let (active, failed, reasons) = loop {
        if puts_done.is_none() && workers.iter().all(|w| w.is_finished()) {
            puts_done = Some(started.elapsed());
        }
        let (active, failed, reasons) = match poller.send(Method::GET, "/api/v0/hosts", None).await {
            Ok((200, bytes)) => tally(&serde_json::from_slice(&bytes).unwrap_or(Value::Null), &wanted),
            _ => (0, 0, Vec::new()),
        };
        // a refused PUT created no host: once every PUT is answered, wait for the created ones
        let created = n - refused.load(Ordering::Relaxed);
        if puts_done.is_some() && active + failed == created {
            break (active, failed, reasons);
        }
        if started.elapsed() > limit {
            break (active, failed, reasons);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let total = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (probes, probe_errors) = burst_probe.await.expect("probe");
    let (mut puts, mut put_errors) = (Vec::new(), Vec::new());
    for worker in workers {
        let (latencies, errors) = worker.await.expect("worker");
        puts.extend(latencies);
        put_errors.extend(errors);
    }
    puts.sort();
    let puts_done = puts_done.unwrap_or(total);

    let concurrency = ServeOptions::default().concurrency;
    // the ideal for the hosts that were created (a refused PUT is reported below)
    let investigated = (active + failed).max(1);
    let ideal = one.mul_f64(investigated.div_ceil(concurrency) as f64);
    let ratio = total.as_secs_f64() / ideal.as_secs_f64();
    // the hosts that were investigated, not the refused PUTs
    let rate = (active + failed) as f64 / total.as_secs_f64();
    let ideal_rate = concurrency as f64 / one.as_secs_f64();
    println!();
    println!(
        "Investigation burst ({n} hosts, {pool} PUT connections, investigator concurrency {concurrency}, all-in-one server)"
    );
    println!("| figure | measured | comparison | ratio |\n|---|---:|---|---:|");
    println!("| one investigation alone (PUT to active) | {} | - | - |", ms(one));
    println!(
        "| time until the {investigated} created hosts are investigated | {:.1} s | ideal ceil({investigated}/{concurrency}) x {} = {:.1} s | {ratio:.2} |",
        total.as_secs_f64(),
        ms(one),
        ideal.as_secs_f64()
    );
    println!(
        "| hosts per second | {rate:.1} | ideal {concurrency} / {} = {ideal_rate:.1} | {:.2} |",
        ms(one),
        rate / ideal_rate
    );
    println!("| all {n} PUTs answered after | {:.2} s | - | - |", puts_done.as_secs_f64());
    println!(
        "| PUT latency p50 / p99 ({} answered 201) | {} / {} | - | - |",
        puts.len(),
        ms(percentile(&puts, 50)),
        ms(percentile(&puts, 99))
    );
    println!(
        "| probe GET /clusters p50 / p99 during the burst ({} samples, {probe_errors} errors) | {} / {} | idle {} / {} ({} samples) | {:.1} / {:.1} |",
        probes.len(),
        ms(percentile(&probes, 50)),
        ms(percentile(&probes, 99)),
        ms(percentile(&idle, 50)),
        ms(percentile(&idle, 99)),
        idle.len(),
        percentile(&probes, 50).as_secs_f64() / percentile(&idle, 50).as_secs_f64().max(1e-9),
        percentile(&probes, 99).as_secs_f64() / percentile(&idle, 99).as_secs_f64().max(1e-9),
    );
    println!("| PUTs refused (no host created) | {} | 0 | - |", put_errors.len());
    println!("| hosts active / failed / neither | {active} / {failed} / {} | {n} | - |", n - active - failed);
    println!("| load average (1, 5, 15 min) at the end | {} | 2 cores | - |", load());
    for reason in reasons.iter().take(5) {
        println!("failed: {reason}");
    }
    for error in put_errors.iter().take(5) {
        println!("PUT error: {error}");
    }
    assert!(put_errors.is_empty(), "{} PUTs did not answer 201", put_errors.len());
    assert_eq!(failed, 0, "{failed} hosts failed");
    assert_eq!(active, n, "not every host was active within {limit:?}");
}
