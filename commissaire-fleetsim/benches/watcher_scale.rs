//! Watcher at scale (benchmark, not a test): N simulated hosts, one watcher in
//! its own process, every host due at once. Measures a cold full pass (every
//! connection opened: SSH handshakes) and a warm one (connections reused),
//! checks per second, the watcher's CPU seconds and peak RSS (VmHWM), and its
//! memory per managed host, against the goal: a full pass over 10,000 hosts
//! within the default 60 s interval, the watcher under 256 MB.
//!
//! Set-up: the simulator binary (`commissaire-fleetsim`, a child process) on
//! 127.20.0.1 onwards; the storage service in this process on the test bed's
//! etcd (a namespace of its own) over its Redis (an exchange of its own); the
//! watcher as this same executable re-run in a child process (the code of
//! `commissaire-watcher-service`: settings, `transport_for`, `SshCheck`), so
//! its CPU and memory are its own. Pass 2 starts right after pass 1: with a
//! `connection_idle` above pass 1's length its checks reuse the connections. Both children run with `ulimit -n 65536`:
//! 10,000 hosts are 10,000 listeners and 10,000 connections.
//!
//! Run: `eval "$(bash scripts/testbed env)" && cargo bench -p commissaire-fleetsim --bench watcher_scale`
//! Sizes: `FLEET_WATCHER_HOSTS=1000,10000` (default); `FLEET_WATCHER_CONCURRENCY` (default: the
//! product's default, 16); `FLEET_WATCHER_CONNECTION_IDLE` (seconds; default: the product's,
//! 2). Under `cargo test --all-targets` it is a smoke run over 20 hosts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine;
use commissaire_core::{
    bus::{self, ServeOptions},
    model::{Host, WatcherRecord},
    secrets::SecretsKey,
    storage_client::StorageClient,
    timestamp,
};
use commissaire_services::{
    storage::{self, OpenHandler, StorageService},
    store::{
        Expect, Store,
        etcd::{EtcdConfig, EtcdStore},
        namespaced::Namespaced,
    },
    watcher::{self, SshCheck, Watcher},
};
use futures_util::{StreamExt, stream};
use support::{Kid, addresses, client_key, env, load, seed_host, start_fleet, with_files_limit};

mod support;

const ROLE: &str = "FLEET_WATCHER_ROLE";
const GOAL_PASS: Duration = Duration::from_secs(60);
const GOAL_RSS_MB: f64 = 256.0;

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("watcher") {
        return watcher_child();
    }
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: Vec<usize> = if full {
        std::env::var("FLEET_WATCHER_HOSTS")
            .unwrap_or_else(|_| "1000,10000".into())
            .split(',')
            .map(|s| s.trim().parse().expect("FLEET_WATCHER_HOSTS: numbers separated by commas"))
            .collect()
    } else {
        vec![20]
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut rows = Vec::new();
    for &n in &sizes {
        // the smoke run has its own addresses, so it never meets a full run
        let first = if full { "127.20.0.1" } else { "127.20.100.1" };
        rows.push(runtime.block_on(run(n, first, full)));
    }
    print_table(&rows);
}

/// The watcher process: what `commissaire-watcher-service` does, with its
/// settings from the environment.
fn watcher_child() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let concurrency = std::env::var("FLEET_WATCHER_CONCURRENCY").ok().map(|c| c.parse().expect("concurrency"));
        let connection_idle = std::env::var("FLEET_WATCHER_CONNECTION_IDLE").ok().map(|c| c.parse().expect("seconds"));
        let flags = watcher::Overrides { concurrency, connection_idle, ..watcher::Overrides::default() };
        let settings = watcher::settings(&serde_json::Map::new(), &flags).expect("settings");
        let bus = bus::connect(&env("FLEET_WATCHER_BUS"), &env("FLEET_WATCHER_EXCHANGE")).await.expect("bus");
        let ssh = watcher::transport_for(&settings);
        let running = Watcher::new(bus, Arc::new(SshCheck::new(ssh)), settings).spawn();
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        term.recv().await;
        running.stop().await;
    });
}

struct Row {
    hosts: usize,
    cold: Option<Duration>,
    warm: Option<Duration>,
    cpu: f64,
    hwm_mb: f64,
    load: String,
}

async fn run(n: usize, first: &str, full: bool) -> Row {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_text = client_key(dir.path());
    let sim = start_fleet(dir.path(), n, first, &[]);

    // The storage service and the hosts as the investigator leaves them, all due now.
    let exchange = format!("fleet-watcher-{}", uuid::Uuid::new_v4());
    let bus_uri = env("COMMISSAIRE_REDIS_URL");
    let etcd = EtcdStore::connect(EtcdConfig::new([env("COMMISSAIRE_ETCD_URL")])).await.expect("etcd");
    let store = Arc::new(Namespaced::new(Arc::new(etcd), format!("/{exchange}")));
    let spec = storage::handlers::parse(None).expect("handlers").remove(0);
    let secrets = SecretsKey::generate(&dir.path().join("secrets.key")).expect("secrets key");
    let bus = bus::connect(&bus_uri, &exchange).await.expect("bus");
    let service = StorageService::new(vec![OpenHandler { spec, store: store.clone() }], secrets, bus.clone());
    let _serving = bus
        .serve(storage::QUEUE, storage::PATTERNS, Arc::new(service), ServeOptions::default())
        .await
        .expect("serve storage");
    let storage = StorageClient::new(bus);
    let addresses = addresses(first, n);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&key_text);
    let due = timestamp::format(time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
    let started = Instant::now();
    stream::iter(addresses.iter().enumerate())
        .for_each_concurrent(64, |(i, address)| {
            let (storage, encoded, due) = (storage.clone(), encoded.clone(), due.clone());
            async move {
                seed_host(&storage, i, address, &encoded, "active", "").await;
                storage.save(&WatcherRecord::new(address.clone(), due)).await.expect("save record");
            }
        })
        .await;
    eprintln!("{n} hosts stored in {:.1} s", started.elapsed().as_secs_f64());

    // The watcher, in its own process; pass 1 counts from its start.
    let (before, started) = (last_checks(&storage).await, Instant::now());
    let exe = std::env::current_exe().expect("current exe");
    let mut w = with_files_limit(exe.to_str().expect("utf-8 path"));
    w.env(ROLE, "watcher").env("FLEET_WATCHER_BUS", &bus_uri).env("FLEET_WATCHER_EXCHANGE", &exchange);
    let watcher = Kid(w.spawn().expect("start the watcher"));
    let pid = watcher.0.id();

    let limit = if full { Duration::from_secs(600) } else { Duration::from_secs(60) };
    let cold = pass(&storage, &addresses, before, started, limit, pid).await;
    let warm = if cold.is_some() {
        // Every host due again, connections still open. The snapshot and the clock are taken
        // before the first record is rewritten: the watcher checks hosts while the rest are
        // still being rewritten, and a check that landed before the snapshot would count only
        // at that host's next check, an interval later.
        let before = last_checks(&storage).await;
        let started = Instant::now();
        let due = timestamp::format(time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
        let records = storage.list::<WatcherRecord>().await.expect("records");
        stream::iter(records)
            .for_each_concurrent(64, |mut r| {
                let (storage, due) = (storage.clone(), due.clone());
                async move {
                    r.next_check = due;
                    storage.save(&r).await.expect("save record");
                }
            })
            .await;
        pass(&storage, &addresses, before, started, limit, pid).await
    } else {
        None
    };
    let (cpu, hwm_mb) = usage(pid);
    let load = load();
    drop(watcher);
    drop(sim);
    // Leave the test bed's etcd as it was (three keys per host): a keyspace that grows with
    // every run slows the next ones down.
    let keys = store.list("").await.expect("list the bench's keys");
    stream::iter(keys)
        .for_each_concurrent(64, |(key, _)| {
            let store = store.clone();
            async move {
                let _ = store.delete(&key, Expect::Any).await;
            }
        })
        .await;
    if !full {
        assert!(cold.is_some() && warm.is_some(), "the watcher did not check all {n} hosts within {limit:?}");
    }
    Row { hosts: n, cold, warm, cpu, hwm_mb, load }
}

/// Each host's `last_check` now.
async fn last_checks(storage: &StorageClient) -> HashMap<String, String> {
    storage.list::<Host>().await.expect("hosts").into_iter().map(|h| (h.address, h.last_check)).collect()
}

/// Time from `started` until every host has a `last_check` other than the one
/// in `before`; `None` past `limit`.
async fn pass(
    storage: &StorageClient,
    addresses: &[String],
    before: HashMap<String, String>,
    started: Instant,
    limit: Duration,
    pid: u32,
) -> Option<Duration> {
    let mut next_report = Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let hosts = storage.list::<Host>().await.expect("hosts");
        let done = hosts
            .iter()
            .filter(|h| !h.last_check.is_empty() && before.get(&h.address).is_none_or(|b| *b != h.last_check))
            .count();
        let failed = hosts.iter().filter(|h| h.status == "failed").count();
        if done >= addresses.len() {
            return Some(started.elapsed());
        }
        if started.elapsed() > limit {
            eprintln!("pass not finished after {limit:?}: {done}/{} checked", addresses.len());
            return None;
        }
        if started.elapsed() >= next_report {
            next_report += Duration::from_secs(10);
            let (cpu, hwm) = usage(pid);
            eprintln!(
                "  {:>5.1} s: {done}/{} checked, {failed} failed; watcher {cpu:.1} CPU s, {hwm:.0} MB peak",
                started.elapsed().as_secs_f64(),
                addresses.len()
            );
        }
    }
}

/// CPU seconds (user + system) and peak RSS (MB) of process `pid`.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the command name (which is in parentheses): state is field 3, utime 14, stime 15
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, hwm_kb / 1024.0)
}

fn print_table(rows: &[Row]) {
    let secs = |d: Option<Duration>| d.map_or("not done".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
    println!();
    println!(
        "Watcher at scale (one watcher process; concurrency {}, connection_idle {} s; simulated hosts answer at once)",
        std::env::var("FLEET_WATCHER_CONCURRENCY").unwrap_or_else(|_| "16 (default)".into()),
        std::env::var("FLEET_WATCHER_CONNECTION_IDLE").unwrap_or_else(|_| "2 (default)".into())
    );
    println!("| hosts | figure | measured | comparison | ratio | goal met |\n|---:|---|---:|---|---:|---|");
    for r in rows {
        let ratio =
            |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64() / GOAL_PASS.as_secs_f64()));
        let met = |d: Option<Duration>| if d.is_some_and(|d| d <= GOAL_PASS) { "yes" } else { "no" };
        println!(
            "| {} | full pass 1 | {} | 60 s interval | {} | {} |",
            r.hosts,
            secs(r.cold),
            ratio(r.cold),
            met(r.cold)
        );
        println!(
            "| {} | full pass 2 (right after 1) | {} | 60 s interval | {} | {} |",
            r.hosts,
            secs(r.warm),
            ratio(r.warm),
            met(r.warm)
        );
        if let Some(w) = r.warm {
            println!(
                "| {} | checks per second, pass 2 | {:.0} | {:.0} needed for 60 s | {:.2} | - |",
                r.hosts,
                r.hosts as f64 / w.as_secs_f64(),
                r.hosts as f64 / 60.0,
                (r.hosts as f64 / w.as_secs_f64()) / (r.hosts as f64 / 60.0)
            );
        }
        println!("| {} | watcher CPU, both passes | {:.1} s | - | - | - |", r.hosts, r.cpu);
        println!(
            "| {} | watcher peak RSS | {:.0} MB | 256 MB | {:.2} | {} |",
            r.hosts,
            r.hwm_mb,
            r.hwm_mb / GOAL_RSS_MB,
            if r.hwm_mb <= GOAL_RSS_MB { "yes" } else { "no" }
        );
        println!("| {} | peak RSS per host | {:.1} KB | - | - | - |", r.hosts, r.hwm_mb * 1024.0 / r.hosts as f64);
        println!("| {} | load average (1, 5, 15 min) at the end | {} | 2 cores | - | - |", r.hosts, r.load);
    }
}
