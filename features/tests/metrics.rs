//! `/metrics` of real processes: the REST server (all-in-one and multi-process)
//! and every service binary of the multi-process stack (`--metrics-listen`).
//! Each check scrapes, does something, scrapes again and checks the values
//! moved by what was done.

use std::time::Duration;

use commissaire_features::{
    client::{Client, Request},
    stack::{ADMIN, Binaries, Stack},
};
use hyper::{Method, StatusCode};

/// The value of the sample `name{labels}` in a scrape (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(client: &Client) -> String {
    let response = client.send(Request::new(Method::GET, "/metrics")).await.expect("scrape");
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert!(response.header("content-type").unwrap_or_default().contains("openmetrics-text"));
    response.text()
}

/// N authenticated GETs and one 404 move the route counters by exactly that;
/// a created host shows in the host gauge; no label names a host or a user.
async fn server_counts_requests(stack: &Stack) {
    const N: usize = 7;
    let password = &stack.users[ADMIN];
    let before = scrape(&stack.client).await;
    for _ in 0..N {
        let r = stack.client.send(Request::new(Method::GET, "/api/v0/networks").basic_auth(ADMIN, password)).await;
        assert_eq!(r.expect("GET").status, StatusCode::OK);
    }
    let missing = Request::new(Method::GET, "/api/v0/network/no-such-net").basic_auth(ADMIN, password);
    assert_eq!(stack.client.send(missing).await.expect("GET").status, StatusCode::NOT_FOUND);
    let address = format!("10.77.{}.{}", rand_octet(), rand_octet());
    let host = Request::new(Method::PUT, format!("/api/v0/host/{address}"))
        .basic_auth(ADMIN, password)
        .json(r#"{"ssh_priv_key": "bm90IGEga2V5"}"#);
    assert_eq!(stack.client.send(host).await.expect("PUT host").status, StatusCode::CREATED);
    let after = scrape(&stack.client).await;

    let ok = r#"commissaire_http_requests_total{route="networks",status="200"}"#;
    assert_eq!(sample(&after, ok) - sample(&before, ok), N as f64, "{after}");
    let not_found = r#"commissaire_http_requests_total{route="network",status="404"}"#;
    assert_eq!(sample(&after, not_found) - sample(&before, not_found), 1.0);
    // Hosts by status: the new host counts under some status (investigating
    // or failed, as no SSH server answers at that address, or "" → other).
    let hosts: f64 = after
        .lines()
        .filter(|l| l.starts_with("commissaire_hosts{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(hosts >= 1.0, "hosts gauge: {after}");
    assert!(after.contains(r#"commissaire_operations{kind="restart",status="in_process"}"#), "{after}");
    // Bus round trips were timed (storage family).
    assert!(sample(&after, r#"commissaire_bus_request_duration_seconds_count{family="storage"}"#) >= N as f64);
    assert!(!after.contains(&address) && !after.contains(ADMIN), "no address or user in labels");
    println!(
        "{}: +{N} requests counted on route networks, hosts gauge {hosts}",
        stack.description.split(' ').next().unwrap_or_default()
    );
}

fn rand_octet() -> u8 {
    (uuid::Uuid::new_v4().as_u128() % 250) as u8 + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_in_one_server_metrics_move() {
    let bins = Binaries::locate().expect("binaries");
    let stack = Stack::all_in_one(&bins, false, &[]).await.expect("all-in-one");
    server_counts_requests(&stack).await;
    stack.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_process_server_and_service_metrics_move() {
    let bins = Binaries::locate().expect("binaries");
    let stack = Stack::multi_process(&bins, true, &[]).await.expect("multi-process");
    let storage = Client::new(stack.metrics["commissaire-storage-service"]);
    let handled = r#"commissaire_bus_handled_total{family="storage",outcome="ok"}"#;
    let before = sample(&scrape(&storage).await, handled);
    server_counts_requests(&stack).await;
    let after = sample(&scrape(&storage).await, handled);
    // At least the 7 GETs were answered by the storage service (the 404 is an
    // error reply, the host PUT and the gauges' counts add more).
    assert!(after - before >= 7.0, "storage handled {before} → {after}");
    // Every service answers its own scrape and health probe.
    for (name, addr) in &stack.metrics {
        let client = Client::new(*addr);
        let text = scrape(&client).await;
        assert!(text.contains("# TYPE commissaire_ssh_sessions_open gauge"), "{name}: {text}");
        let health = client.send_with_timeout(Request::new(Method::GET, "/healthz"), Duration::from_secs(5)).await;
        assert_eq!(health.expect("healthz").status, StatusCode::OK, "{name}");
    }
    println!("storage service handled {} storage requests during the test", after - before);
    stack.shutdown().await.expect("shutdown");
}
