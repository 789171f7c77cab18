//! `GET /api/v0/events` against the real server and the all-in-one services:
//! a stream filtered by cluster sees that cluster's records, its member
//! hosts and the operation events naming it, and nothing else; bad queries
//! and anonymous clients are refused; a server that stops ends its streams.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use base64::Engine;
use bytes::Bytes;
use commissaire_core::{
    bus::Bus,
    model::{Cluster, ClusterRestart, Host},
    storage_client::StorageClient,
};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const ADMIN: (&str, &str) = ("admin", "admin-pass");
const VIEWER: (&str, &str) = ("viewer", "viewer-pass");

#[path = "support/server.rs"]
mod support_server;
use support_server::TestServer;

async fn start_server() -> TestServer {
    support_server::start_server(ADMIN, VIEWER).await
}

fn basic((user, password): (&str, &str)) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// Sends one request on a new connection; the response with its body unread.
async fn send(addr: SocketAddr, method: &str, path: &str, who: Option<(&str, &str)>) -> hyper::Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let mut request = Request::builder().method(method).uri(path).header("host", "localhost");
    if let Some(who) = who {
        request = request.header("authorization", basic(who));
    }
    sender.send_request(request.body(Empty::<Bytes>::new()).expect("request")).await.expect("response")
}

/// An open event stream.
struct Events {
    body: Incoming,
    buffer: String,
}

/// One parsed event: (name, data).
type Parsed = (String, Value);

impl Events {
    async fn open(addr: SocketAddr, path: &str) -> Self {
        let response = send(addr, "GET", path, Some(VIEWER)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut events = Events { body: response.into_body(), buffer: String::new() };
        // the stream says when it is live: events from then on reach it
        let first = events.block().await.expect("a first block");
        assert!(first.contains(": connected"), "{first}");
        events
    }

    /// The next block (up to a blank line), or `None` once the stream ended.
    async fn block(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block = self.buffer[..end].to_string();
                self.buffer.drain(..end + 2);
                return Some(block);
            }
            let frame = tokio::time::timeout(Duration::from_secs(20), self.body.frame())
                .await
                .expect("the stream went silent")?
                .expect("a frame");
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&data).expect("UTF-8"));
            }
        }
    }

    /// The next event (comments skipped).
    async fn next(&mut self) -> Option<Parsed> {
        loop {
            let block = self.block().await?;
            let field =
                |name: &str| block.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim_start().to_string()));
            if let (Some(name), Some(data)) = (field("event:"), field("data:")) {
                assert!(field("id:").is_some(), "every event has an id: {block}");
                return Some((name, serde_json::from_str(&data).expect("data is JSON")));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_follows_one_cluster_and_nothing_else() {
    let server = start_server().await;
    let bus: Arc<dyn Bus> = server.aio.bus.clone();
    let storage = StorageClient::new(bus.clone());
    // Hosts first, so that no event of theirs is in the stream before they
    // are members.
    for address in ["10.0.0.7", "10.0.0.8"] {
        storage.save(&Host::new(address)).await.expect("host");
    }
    let mut stream = Events::open(server.addr, "/api/v0/events?cluster=watched").await;
    for (name, member) in [("watched", "10.0.0.7"), ("other", "10.0.0.8")] {
        let mut cluster = Cluster::new(name);
        cluster.hostset = vec![member.to_string()];
        storage.save(&cluster).await.expect("cluster");
    }
    for address in ["10.0.0.8", "10.0.0.7"] {
        let mut host = Host::new(address);
        host.status = "active".into();
        storage.save(&host).await.expect("host");
    }
    for name in ["other", "watched"] {
        storage
            .save(&ClusterRestart { name: name.into(), status: "in_process".into(), ..Default::default() })
            .await
            .expect("record");
        let body = json!({"cluster": name, "operation": "restart", "event": "host_done", "host": "10.0.0.7"});
        bus.publish("notify.clusterexec.restart.host_done", &body).await.expect("publish");
    }
    storage
        .save(&ClusterRestart { name: "watched".into(), status: "finished".into(), ..Default::default() })
        .await
        .expect("record");

    let mut seen: Vec<Parsed> = Vec::new();
    while let Some(event) = stream.next().await {
        let last = event.0 == "ClusterRestart.updated";
        seen.push(event);
        if last {
            break;
        }
    }
    let names: Vec<&str> = seen.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Cluster.created",
            "Host.updated",
            "ClusterRestart.created",
            "clusterexec.restart.host_done",
            "ClusterRestart.updated"
        ],
        "{seen:#?}"
    );
    for (name, data) in &seen {
        assert_eq!(data["cluster"], "watched", "{name}: {data}");
        assert!(!data.to_string().contains("10.0.0.8"), "{name}: {data}");
    }
    let (_, host) = &seen[1];
    assert_eq!((&host["model"], &host["event"]), (&json!("Host"), &json!("updated")));
    assert_eq!((&host["document"]["address"], &host["document"]["status"]), (&json!("10.0.0.7"), &json!("active")));
    // a cluster's safe form: never its hostset
    assert!(seen[0].1["document"].get("hostset").is_none(), "{:?}", seen[0]);
    assert_eq!(seen[3].1["document"]["host"], "10.0.0.7");

    // The server stops: the stream ends, and the stop does not wait for it.
    if let Some(stop) = server.stop {
        let _ = stop.send(());
    }
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("the server stopped with a stream open")
        .expect("the server task");
    assert!(stream.next().await.is_none(), "the stream ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_and_anonymous_clients_are_refused() {
    let server = start_server().await;
    let anonymous = send(server.addr, "GET", "/api/v0/events", None).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    for (query, named) in [("cluster=a%2Fb", "cluster"), ("models=", "models"), ("since=5", "since")] {
        let response = send(server.addr, "GET", &format!("/api/v0/events?{query}"), Some(ADMIN)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let body = response.into_body().collect().await.expect("body").to_bytes();
        let body: Value = serde_json::from_slice(&body).expect("JSON error body");
        assert!(body.to_string().contains(named), "{query}: {body}");
    }
    let put = send(server.addr, "PUT", "/api/v0/events", Some(ADMIN)).await;
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
}
