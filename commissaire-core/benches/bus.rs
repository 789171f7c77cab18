//! Request/reply over each bus backend: round trips per second and latency
//! percentiles with 1 and 64 concurrent callers against one serving instance
//! (an echo handler, so the figures are the bus's own cost).
//!
//! Run: `eval "$(bash scripts/testbed env)" && cargo bench -p commissaire-core --bench bus`
//! (`BUS_BENCH_REQUESTS` sets the requests per row, default 4,000). Without
//! `--bench` (as under `cargo test --all-targets`) it does a short smoke run.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use commissaire_core::{
    bus::{self, Bus, Handler, ServeOptions},
    jsonrpc::RpcError,
};
use serde_json::{Value, json};

struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn call(&self, _method: &str, params: Value) -> Result<Value, RpcError> {
        Ok(params)
    }
}

struct Row {
    bus: &'static str,
    callers: usize,
    requests: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn measure(name: &'static str, bus: Arc<dyn Bus>, callers: usize, requests: usize) -> Row {
    let per_caller = requests.div_ceil(callers);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(callers);
    for caller in 0..callers {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_caller);
            for i in 0..per_caller {
                let sent = Instant::now();
                let reply = bus
                    .request("bench.echo", json!({"caller": caller, "i": i}), Duration::from_secs(30))
                    .await
                    .unwrap_or_else(|e| panic!("{name}: request failed: {e}"));
                assert_eq!(reply["i"], i, "{name}: reply does not match its request");
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    for task in tasks {
        latencies.extend(task.await.unwrap_or_else(|e| panic!("{name}: caller panicked: {e}")));
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    Row {
        bus: name,
        callers,
        requests: latencies.len(),
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.5),
        p99: pick(0.99),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let requests: usize =
        std::env::var("BUS_BENCH_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(if smoke { 64 } else { 4000 });
    let need = |var: &str| {
        std::env::var(var).unwrap_or_else(|_| {
            eprintln!("{var} is not set: run `bash scripts/testbed up && eval \"$(bash scripts/testbed env)\"` first");
            std::process::exit(2)
        })
    };
    let backends = [
        ("memory", "memory://".to_string()),
        ("amqp", need("COMMISSAIRE_AMQP_URL")),
        ("redis", need("COMMISSAIRE_REDIS_URL")),
    ];
    let mut rows = Vec::new();
    for (name, uri) in backends {
        let exchange = format!("bench-{}", std::process::id());
        let bus = bus::connect(&uri, &exchange).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let serving = bus
            .serve("bench", &["bench.*"], Arc::new(Echo), ServeOptions { concurrency: 64 })
            .await
            .unwrap_or_else(|e| panic!("{name}: serve: {e}"));
        // Warm the connection and the queue before timing.
        measure(name, bus.clone(), 4, 40).await;
        for callers in [1, 64] {
            let count = if callers == 1 { requests / 4 } else { requests };
            rows.push(measure(name, bus.clone(), callers, count.max(callers)).await);
        }
        serving.shutdown().await;
    }
    println!(
        "\nBus request/reply round trips (echo handler, one serving instance{})",
        if smoke { ", SMOKE RUN" } else { "" }
    );
    println!(
        "{:<8} {:>8} {:>9} {:>12} {:>10} {:>10} {:>16}",
        "bus", "callers", "requests", "round trips/s", "p50 ms", "p99 ms", "vs in-process"
    );
    let memory_rate =
        |callers| rows.iter().find(|r| r.bus == "memory" && r.callers == callers).map(|r| r.per_second).unwrap_or(1.0);
    for row in &rows {
        println!(
            "{:<8} {:>8} {:>9} {:>12.0} {:>10} {:>10} {:>15.3}x",
            row.bus,
            row.callers,
            row.requests,
            row.per_second,
            ms(row.p50),
            ms(row.p99),
            row.per_second / memory_rate(row.callers)
        );
    }
    println!("(the last column compares each broker with the in-process bus at the same concurrency)");
}
