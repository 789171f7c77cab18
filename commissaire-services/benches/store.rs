//! Store benchmark (not a test): get and put rates of the etcd store and the embedded redb
//! store, with 1 and 16 concurrent tasks, plus p50/p99 latency per operation.
//!
//! What it compares: the two [`Store`] implementations as the storage service would use them,
//! from one process over tokio — etcd (the test bed's single node on loopback: gRPC round
//! trip + raft + its WAL fsync for a put) against redb in a local file (a read transaction
//! for a get; a durable write transaction, fsync included, for a put, several concurrent puts
//! sharing one commit). Values are ~200-byte JSON documents on 100 keys; puts use
//! `Expect::Any`.
//!
//! Run: `eval "$(bash scripts/testbed env)" && cargo bench -p commissaire-services --bench store`
//! Optional: `STORE_BENCH_OPS` (default 2000) operations per row.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use commissaire_services::store::embedded::EmbeddedStore;
use commissaire_services::store::etcd::{EtcdConfig, EtcdStore};
use commissaire_services::store::{Expect, Store};

const KEYS: usize = 100;
const WARMUP: usize = 100;

struct Row {
    store: &'static str,
    op: &'static str,
    tasks: usize,
    ops: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

fn value(i: usize) -> Vec<u8> {
    format!(
        "{{\"address\":\"10.0.{}.{}\",\"status\":\"active\",\"os\":\"fedora\",\"cpus\":4,\"memory\":8192,\"space\":100000,\"last_check\":\"2026-11-22T10:00:00Z\",\"ssh_priv_key\":\"{}\"}}",
        i / 256,
        i % 256,
        "x".repeat(40)
    )
    .into_bytes()
}

async fn run(
    store: Arc<dyn Store>,
    prefix: &str,
    op: &'static str,
    tasks: usize,
    ops: usize,
) -> (Duration, Vec<Duration>) {
    let per_task = ops / tasks;
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        let prefix = prefix.to_owned();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let n = (t * per_task + i) % KEYS;
                let key = format!("{prefix}{n:03}");
                let start = Instant::now();
                match op {
                    "get" => {
                        store.get(&key).await.unwrap().unwrap();
                    }
                    _ => {
                        store.put(&key, value(n), Expect::Any).await.unwrap();
                    }
                }
                latencies.push(start.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::with_capacity(ops);
    for h in handles {
        all.extend(h.await.unwrap());
    }
    (started.elapsed(), all)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn bench(name: &'static str, store: Arc<dyn Store>, prefix: &str, ops: usize, rows: &mut Vec<Row>) {
    for n in 0..KEYS {
        store.put(&format!("{prefix}{n:03}"), value(n), Expect::Any).await.unwrap();
    }
    for op in ["get", "put"] {
        for tasks in [1, 16] {
            run(store.clone(), prefix, op, tasks.min(WARMUP), WARMUP).await;
            let (elapsed, mut latencies) = run(store.clone(), prefix, op, tasks, ops).await;
            latencies.sort();
            rows.push(Row {
                store: name,
                op,
                tasks,
                ops: latencies.len(),
                elapsed,
                p50: percentile(&latencies, 0.50),
                p99: percentile(&latencies, 0.99),
            });
            eprintln!("  {name} {op} x{tasks}: done");
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `cargo bench` passes "--bench"; `cargo test --all-targets` does not, and
    // then a short smoke run only checks the benchmark still works.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let Ok(url) = std::env::var("COMMISSAIRE_ETCD_URL") else {
        eprintln!(
            "COMMISSAIRE_ETCD_URL is not set: start the test bed first with \
             `bash scripts/testbed up && eval \"$(bash scripts/testbed env)\"`, then run \
             `cargo bench -p commissaire-services --bench store` again"
        );
        std::process::exit(2);
    };
    let ops: usize =
        std::env::var("STORE_BENCH_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(if smoke { 50 } else { 2000 });

    let mut rows = Vec::new();
    let prefix = format!("/bench-{}/", std::process::id());

    eprintln!("etcd at {url} ...");
    let etcd = match EtcdStore::connect(EtcdConfig::new([url.as_str()])).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("cannot reach etcd at {url}: {e}\nis the test bed up? `bash scripts/testbed up`");
            std::process::exit(2);
        }
    };
    bench("etcd", etcd.clone(), &prefix, ops, &mut rows).await;
    for (key, _) in etcd.list(&prefix).await.unwrap() {
        etcd.delete(&key, Expect::Any).await.unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.redb");
    eprintln!("embedded redb at {} ...", path.display());
    let embedded: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path).await.unwrap());
    bench("embedded", embedded, &prefix, ops, &mut rows).await;

    println!();
    println!("Store benchmark: {ops} operations per row, values ~{} bytes, {KEYS} keys", value(0).len());
    println!("etcd = {url} (single node, loopback); embedded = redb file in {}", dir.path().display());
    println!();
    println!("| store    | op  | tasks | ops   |     ops/s | p50 (ms) | p99 (ms) |");
    println!("|----------|-----|-------|-------|-----------|----------|----------|");
    for r in &rows {
        println!(
            "| {:<8} | {:<3} | {:>5} | {:>5} | {:>9.0} | {:>8} | {:>8} |",
            r.store,
            r.op,
            r.tasks,
            r.ops,
            r.ops as f64 / r.elapsed.as_secs_f64(),
            ms(r.p50),
            ms(r.p99)
        );
    }
}
