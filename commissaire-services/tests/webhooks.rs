//! Webhooks end to end: the storage service on the in-process bus with an
//! embedded store, host and operation records written through it, a real HTTP
//! receiver on 127.0.0.1 that checks every signature, and beside it a dead
//! endpoint (accepts connections and never answers) that must not hold up the
//! live one; a full queue drops its oldest notifications and counts them.
//! HTTPS receivers are verified against the endpoint's `ca_file`.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use commissaire_core::{
    bus::{Bus, ServeOptions, memory::MemoryBus},
    metrics,
    secrets::SecretsKey,
};
use commissaire_services::{
    storage::{OpenHandler, StorageService, handlers},
    store::embedded::EmbeddedStore,
    webhooks,
};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const SECRET: &str = "a-webhook-secret-of-some-length";
const T: Duration = Duration::from_secs(10);

type Received = Arc<Mutex<Vec<(String, Value)>>>;

/// A receiver that records (event header, body) of every correctly signed POST
/// and answers 401 to a bad signature; over TLS when given an acceptor.
async fn receiver_on(tls: Option<tokio_rustls::TlsAcceptor>) -> (String, Received, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}/hook", listener.local_addr().expect("addr"));
    let received: Received = Arc::default();
    let bad: Arc<Mutex<usize>> = Arc::default();
    let (r, b) = (received.clone(), bad.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (r, b, tls) = (r.clone(), b.clone(), tls.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (r, b) = (r.clone(), b.clone());
                    async move {
                        let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
                        let signature = header(webhooks::SIGNATURE_HEADER).unwrap_or_default();
                        let event = header("x-commissaire-event").unwrap_or_default();
                        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        let expected = format!("sha256={}", webhooks::sign(SECRET.as_bytes(), &body));
                        let status = if signature == expected {
                            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            r.lock().expect("lock").push((event, json));
                            200
                        } else {
                            *b.lock().expect("lock") += 1;
                            401
                        };
                        let mut response = Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                        Ok::<_, Infallible>(response)
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                    // A client that does not trust the certificate ends here.
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                }
            });
        }
    });
    (url, received, bad)
}

async fn receiver() -> (String, Received, Arc<Mutex<usize>>) {
    receiver_on(None).await
}

/// A CA (its certificate PEM) and a TLS acceptor for 127.0.0.1 signed by it.
fn tls_for_loopback() -> (String, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls_pki_types::{PrivateKeyDer, pem::PemObject};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let cert =
        CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params").signed_by(&key, &ca).expect("sign");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key PEM"),
        )
        .expect("server config");
    (ca.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// An endpoint that accepts connections and never answers.
async fn black_hole() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    url
}

async fn storage_bus(dir: &tempfile::TempDir) -> Arc<dyn Bus> {
    let store = EmbeddedStore::open(dir.path().join("store.redb")).await.expect("store");
    let secrets = SecretsKey::generate(&dir.path().join("secrets.key")).expect("key");
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let spec = handlers::parse(None).expect("handlers").remove(0);
    let service = StorageService::new(vec![OpenHandler { spec, store: Arc::new(store) }], secrets, bus.clone());
    let handle = bus.serve("storage", &["storage.*"], Arc::new(service), ServeOptions::default()).await.expect("serve");
    std::mem::forget(handle);
    bus
}

async fn save(bus: &Arc<dyn Bus>, model: &str, doc: Value) {
    bus.request("storage.save", json!({"model_type_name": model, "model_json_data": doc}), T).await.expect("save");
}

async fn wait_for(received: &Received, n: usize) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = received.lock().expect("lock").clone();
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "only {} of {n} notifications arrived: {got:?}", got.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sample(series: &str) -> f64 {
    metrics::encode()
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_notifications_reach_a_live_endpoint_beside_a_dead_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = storage_bus(&dir).await;
    let (url, received, bad) = receiver().await;
    let dead = black_hole().await;
    let endpoints = webhooks::from_config(Some(&json!([
        {"url": dead, "secret": SECRET, "queue": 2, "attempts": 2},
        {"url": url, "secret": SECRET},
    ])))
    .expect("config");
    let dropped_before = sample("commissaire_webhook_dropped_total");
    let running = webhooks::start(bus.clone(), endpoints).await.expect("start");

    save(&bus, "Cluster", json!({"name": "prod", "hostset": ["10.1.0.1"]})).await;
    save(&bus, "Host", json!({"address": "10.1.0.1", "status": "investigating"})).await;
    save(&bus, "Host", json!({"address": "10.1.0.1", "status": "failed", "reason": "watcher: unreachable"})).await;
    save(&bus, "Host", json!({"address": "10.1.0.1", "status": "failed", "reason": "watcher: unreachable"})).await;
    let started = "2026-01-01T00:00:00.000000";
    save(&bus, "ClusterRestart", json!({"name": "prod", "status": "in_process", "started_at": started})).await;
    let failed = json!({"name": "prod", "status": "failed", "started_at": started,
        "finished_at": "2026-01-01T00:01:00.000000", "failed_hosts": ["10.1.0.1"], "reason": "host 10.1.0.1 failed"});
    save(&bus, "ClusterRestart", failed.clone()).await;
    save(&bus, "ClusterRestart", failed).await; // the same end again: no second notification

    let got = wait_for(&received, 3).await;
    assert_eq!(*bad.lock().expect("lock"), 0, "every signature verified");
    let (event, first) = &got[0];
    assert_eq!(event, "host.status");
    assert_eq!((first["host"].as_str(), first["status"].as_str()), (Some("10.1.0.1"), Some("investigating")));
    assert_eq!(first["cluster"], "prod");
    let (_, second) = &got[1];
    assert_eq!(second["status"], "failed");
    assert_eq!(second["previous_status"], "investigating");
    assert_eq!(second["reason"], "watcher: unreachable");
    let (event, op) = &got[2];
    assert_eq!(event, "operation.failed");
    assert_eq!(op["cluster"], "prod");
    assert_eq!(op["operation"], "restart");
    assert_eq!(op["host"], "10.1.0.1");
    assert_eq!(op["reason"], "host 10.1.0.1 failed");
    // Nothing more: an unchanged status and a repeated end are not notified.
    tokio::task::yield_now().await;
    assert_eq!(received.lock().expect("lock").len(), 3, "{:?}", received.lock().expect("lock"));

    // The dead endpoint (queue of 2, one notification in flight) overflows
    // when more come; the live one still gets every one of them.
    for status in ["investigating", "bootstrapping", "active", "failed"] {
        save(&bus, "Host", json!({"address": "10.1.0.2", "status": status})).await;
    }
    let got = wait_for(&received, 7).await;
    assert_eq!(got[6].1["status"], "failed");
    assert_eq!(got[6].1["cluster"], Value::Null, "10.1.0.2 is in no cluster");
    let deadline = Instant::now() + T;
    while sample("commissaire_webhook_dropped_total") <= dropped_before {
        assert!(Instant::now() < deadline, "nothing was dropped: {}", metrics::encode());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_are_verified_against_their_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = storage_bus(&dir).await;
    let (trusted_ca, acceptor) = tls_for_loopback();
    let (_, impostor) = tls_for_loopback(); // a certificate from a CA the endpoint does not trust
    let (url, received, bad) = receiver_on(Some(acceptor)).await;
    let (impostor_url, impostor_received, _) = receiver_on(Some(impostor)).await;
    let ca_file = dir.path().join("hooks-ca.pem");
    std::fs::write(&ca_file, &trusted_ca).expect("write CA");
    let endpoints = webhooks::from_config(Some(&json!([
        {"url": impostor_url, "secret": SECRET, "ca_file": ca_file, "attempts": 1},
        {"url": url, "secret": SECRET, "ca_file": ca_file},
    ])))
    .expect("config");
    let failed_before = sample("commissaire_webhook_deliveries_total{outcome=\"failed\"}");
    let running = webhooks::start(bus.clone(), endpoints).await.expect("start");

    save(&bus, "Host", json!({"address": "10.1.1.1", "status": "active"})).await;
    let got = wait_for(&received, 1).await;
    assert_eq!(*bad.lock().expect("lock"), 0, "every signature verified");
    assert_eq!((got[0].0.as_str(), got[0].1["host"].as_str()), ("host.status", Some("10.1.1.1")));
    // The impostor's delivery fails the TLS handshake and is given up (1 attempt).
    let deadline = Instant::now() + T;
    while sample("commissaire_webhook_deliveries_total{outcome=\"failed\"}") <= failed_before {
        assert!(Instant::now() < deadline, "the impostor's delivery never failed: {}", metrics::encode());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(impostor_received.lock().expect("lock").is_empty(), "delivered to an untrusted certificate");
    running.stop().await;
}

#[test]
fn configuration_errors_name_the_member() {
    let err = |v: Value| webhooks::from_config(Some(&v)).expect_err("refused").to_string();
    assert!(err(json!([{"url": "ftp://x/", "secret": SECRET}])).contains("https:// or http://"));
    assert!(err(json!([{"url": "https://x/", "secret": SECRET, "ca_file": "/nonexistent.pem"}])).contains("ca_file"));
    assert!(err(json!([{"url": "http://x/", "secret": SECRET, "ca_file": "/etc/hosts"}])).contains("only for https"));
    assert!(err(json!([{"url": "http://x/", "secret": "short"}])).contains("16 bytes"));
    assert!(err(json!([{"url": "http://x/", "secret": SECRET, "colour": 1}])).contains("colour"));
    assert!(err(json!([{"url": "http://x/", "secret": SECRET, "events": ["nope"]}])).contains("events"));
    assert!(
        !format!("{:?}", webhooks::from_config(Some(&json!([{"url": "http://x/", "secret": SECRET}]))))
            .contains(SECRET)
    );
}
