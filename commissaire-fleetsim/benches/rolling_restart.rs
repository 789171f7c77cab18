//! Rolling restart at scale (benchmark, not a test): one cluster of N
//! simulated hosts restarted in 10 % batches, each reboot taking a fixed time;
//! the total against the ideal (batches x reboot time). Goal: within 1.2x.
//!
//! Set-up: the simulator binary (a child process, 127.20.60.1 onwards) with
//! `--reboot-ms`; in this process, over the in-process bus, the storage
//! service (embedded store) and the cluster exec service with its default
//! settings and the repository's playbooks (restart.yaml: boot id, shutdown,
//! wait for a new boot id polled every second, test command).
//!
//! Run: `cargo bench -p commissaire-fleetsim --bench rolling_restart`
//! Sizes: `FLEET_RESTART_HOSTS` (default 1000), `FLEET_RESTART_REBOOT_MS` (default 10000),
//! `FLEET_RESTART_BATCH` (default `10%`). Under `cargo test --all-targets`: 20 hosts, 50 %
//! batches, 1 s reboots.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine;
use commissaire_core::{
    bus::{Bus, ServeOptions, memory::MemoryBus},
    model::{Cluster, ClusterRestart, Model},
    secrets::SecretsKey,
    storage_client::StorageClient,
};
use commissaire_services::{
    clusterexec::service::{self, ClusterExec},
    storage::{self, StorageService},
    transport::SshTransport,
};
use futures_util::{StreamExt, stream};
use serde_json::json;
use support::{addresses, client_key, load, seed_host, start_fleet};

mod support;

const GOAL_RATIO: f64 = 1.2;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let var = |name: &str, full_default: &str, smoke: &str| {
        if full { std::env::var(name).unwrap_or_else(|_| full_default.into()) } else { smoke.into() }
    };
    let n: usize = var("FLEET_RESTART_HOSTS", "1000", "20").parse().expect("FLEET_RESTART_HOSTS");
    let reboot_ms: u64 = var("FLEET_RESTART_REBOOT_MS", "10000", "1000").parse().expect("FLEET_RESTART_REBOOT_MS");
    let batch = var("FLEET_RESTART_BATCH", "10%", "50%");
    let first = if full { "127.20.60.1" } else { "127.20.160.1" };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run(n, reboot_ms, &batch, first, full));
}

async fn run(n: usize, reboot_ms: u64, batch: &str, first: &str, full: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_text = client_key(dir.path());
    let _sim = start_fleet(dir.path(), n, first, &["--reboot-ms", &reboot_ms.to_string()]);

    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let specs = storage::handlers::parse(Some(&json!([{"type": "embedded", "path": dir.path().join("s.redb")}])))
        .expect("specs");
    let handlers = storage::open_handlers(specs).await.expect("open the store");
    let key = SecretsKey::generate(&dir.path().join("secrets.key")).expect("secrets key");
    let _storage = bus
        .serve(
            storage::QUEUE,
            storage::PATTERNS,
            Arc::new(StorageService::new(handlers, key, bus.clone())),
            ServeOptions::default(),
        )
        .await
        .expect("serve storage");
    let playbooks = service::playbooks_from_config(&serde_json::Map::new()).expect("the repository's playbooks");
    let exec = Arc::new(ClusterExec::new(bus.clone(), SshTransport::default(), playbooks));
    let _exec = bus.serve(service::QUEUE, service::PATTERNS, exec, ServeOptions::default()).await.expect("serve");
    let storage = StorageClient::new(bus.clone());

    let addresses = addresses(first, n);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&key_text);
    stream::iter(addresses.iter().enumerate())
        .for_each_concurrent(32, |(i, address)| {
            let (storage, encoded) = (storage.clone(), encoded.clone());
            async move {
                seed_host(&storage, i, address, &encoded, "disassociated", "fedora").await;
            }
        })
        .await;
    let mut cluster = Cluster::new("fleet");
    cluster.hostset = addresses.clone();
    storage.save(&cluster).await.expect("save cluster");

    let started = Instant::now();
    bus.request("jobs.clusterexec.restart", json!(["fleet", {"batch": batch}]), Duration::from_secs(60))
        .await
        .expect("the restart starts");
    let limit = Duration::from_millis(reboot_ms) * 40 + Duration::from_secs(120);
    let record = loop {
        let record = storage.get::<ClusterRestart>("fleet").await.expect("record").to_full_json();
        if record["status"] != "in_process" {
            break record;
        }
        assert!(started.elapsed() < limit, "the restart did not end within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let total = started.elapsed();
    let restarted = record["restarted"].as_array().map_or(0, Vec::len);
    let per_batch = match batch.strip_suffix('%') {
        Some(p) => (n * p.parse::<usize>().expect("percentage")).div_ceil(100),
        None => batch.parse().expect("batch"),
    };
    let batches = n.div_ceil(per_batch.max(1));
    let ideal = Duration::from_millis(reboot_ms) * batches as u32;
    let ratio = total.as_secs_f64() / ideal.as_secs_f64();

    println!();
    println!("Rolling restart at scale ({n} hosts, batch {batch} = {per_batch} hosts, reboot {reboot_ms} ms)");
    println!("| figure | measured | comparison | ratio | goal met |\n|---|---:|---|---:|---|");
    println!(
        "| total time | {:.1} s | ideal {batches} batches x {:.1} s = {:.1} s | {ratio:.2} | {} (goal <= {GOAL_RATIO}) |",
        total.as_secs_f64(),
        reboot_ms as f64 / 1000.0,
        ideal.as_secs_f64(),
        if ratio <= GOAL_RATIO { "yes" } else { "no" }
    );
    println!(
        "| overhead per batch | {:.2} s | - | - | - |",
        (total.as_secs_f64() - ideal.as_secs_f64()) / batches as f64
    );
    println!("| hosts restarted | {restarted} | {n} | - | {} |", if restarted == n { "yes" } else { "no" });
    println!("| load average (1, 5, 15 min) at the end | {} | 2 cores | - | - |", load());
    if !full {
        assert_eq!(record["status"], "finished", "{record}");
        assert_eq!(restarted, n, "{record}");
    }
}
