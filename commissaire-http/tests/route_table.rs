//! The whole `/api/v0` route table over real HTTP, and hostile input to every
//! route: an in-process server (all-in-one services on the in-process bus, the
//! embedded store in a tempdir) on 127.0.0.1:0, spoken to with a raw HTTP/1.1
//! client so that any byte sequence can be sent.
//!
//! Users: `admin` (read-write) and `viewer` (read-only), bcrypt cost 4.
//!
//! What is checked (decisions.md, Fix rows 2, 3 and 8):
//! * no credentials: 401 with `WWW-Authenticate` on every route and verb, and on
//!   unknown paths; authenticated, an unknown path is 404;
//! * a known route with a wrong verb: 405 with `Allow` listing the right ones;
//! * `viewer`: 403 on every PUT and DELETE, on `GET .../creds` and `GET /api/v0/audit`, never on
//!   another GET;
//! * hostile input as `admin`: never a 5xx, every error body is exactly
//!   `{"error":{"code","message"}}` with `code` equal to the status, and nothing
//!   stored (a dump of everything readable is the same before and after).
//!
//! Each test prints how many requests it sent and the statuses it saw.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::Engine as _;
use commissaire_http::{
    router::{self, Control, Operation, Route},
    server::MAX_BODY_BYTES,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const ADMIN: (&str, &str) = ("admin", "admin-pass:with-colon");
const VIEWER: (&str, &str) = ("viewer", "viewer-pass");
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Every verb tried against every route.
const VERBS: &[&str] = &["GET", "PUT", "DELETE", "POST", "PATCH", "HEAD", "OPTIONS"];

// ---------------------------------------------------------------------------
// The route table

/// One concrete path per route (and the documented list alias), with the
/// verbs it must allow. The seeded data (see [`seed`]) makes these exist.
const TABLE: &[(&str, &[&str])] = &[
    ("/api/v0/hosts", &["GET"]),
    ("/api/v0/host", &["PUT"]),
    ("/api/v0/host/10.0.0.1", &["GET", "PUT", "DELETE"]),
    ("/api/v0/host/10.0.0.1/creds", &["GET"]),
    ("/api/v0/host/10.0.0.1/status", &["GET"]),
    ("/api/v0/host/10.0.0.1/hostkey", &["GET", "DELETE"]),
    ("/api/v0/clusters", &["GET"]),
    ("/api/v0/cluster/", &["GET"]),
    ("/api/v0/cluster/c1", &["GET", "PUT", "DELETE"]),
    ("/api/v0/cluster/c1/hosts", &["GET", "PUT"]),
    ("/api/v0/cluster/c1/hosts/10.0.0.1", &["GET", "PUT", "DELETE"]),
    ("/api/v0/cluster/c1/deploy", &["GET", "PUT"]),
    ("/api/v0/cluster/c1/upgrade", &["GET", "PUT"]),
    ("/api/v0/cluster/c1/restart", &["GET", "PUT"]),
    ("/api/v0/cluster/c1/restart/pause", &["PUT"]),
    ("/api/v0/cluster/c1/upgrade/resume", &["PUT"]),
    ("/api/v0/cluster/c1/deploy/abort", &["PUT"]),
    ("/api/v0/cluster/c1/restart/retry-failed", &["PUT"]),
    ("/api/v0/events", &["GET"]),
    ("/api/v0/networks", &["GET"]),
    ("/api/v0/network/n1", &["GET", "PUT", "DELETE"]),
    ("/api/v0/containermanagers", &["GET"]),
    ("/api/v0/containermanager/cm1", &["GET", "PUT", "DELETE"]),
    ("/api/v0/audit", &["GET"]),
];

/// Every kind of route. The match is exhaustive on purpose: a new `Route`
/// variant does not compile here until the table above has a row for it.
fn route_kind(route: &Route) -> &'static str {
    match route {
        Route::Hosts => "hosts",
        Route::HostSelf => "host_self",
        Route::Host { .. } => "host",
        Route::HostCreds { .. } => "host_creds",
        Route::HostStatus { .. } => "host_status",
        Route::HostKey { .. } => "host_key",
        Route::Clusters => "clusters",
        Route::Cluster { .. } => "cluster",
        Route::ClusterHosts { .. } => "cluster_hosts",
        Route::ClusterHost { .. } => "cluster_host",
        Route::ClusterOperation { operation: Operation::Deploy, .. } => "cluster_deploy",
        Route::ClusterOperation { operation: Operation::Upgrade, .. } => "cluster_upgrade",
        Route::ClusterOperation { operation: Operation::Restart, .. } => "cluster_restart",
        Route::ClusterOperationControl { control: Control::Pause, .. } => "cluster_operation_pause",
        Route::ClusterOperationControl { control: Control::Resume, .. } => "cluster_operation_resume",
        Route::ClusterOperationControl { control: Control::Abort, .. } => "cluster_operation_abort",
        Route::ClusterOperationControl { control: Control::RetryFailed, .. } => "cluster_operation_retry_failed",
        Route::Events => "events",
        Route::Networks => "networks",
        Route::Network { .. } => "network",
        Route::ContainerManagers => "container_managers",
        Route::ContainerManager { .. } => "container_manager",
        Route::Audit => "audit",
    }
}

const ALL_KINDS: &[&str] = &[
    "hosts",
    "host_self",
    "host",
    "host_creds",
    "host_status",
    "host_key",
    "clusters",
    "cluster",
    "cluster_hosts",
    "cluster_host",
    "cluster_deploy",
    "cluster_upgrade",
    "cluster_restart",
    "cluster_operation_pause",
    "cluster_operation_resume",
    "cluster_operation_abort",
    "cluster_operation_retry_failed",
    "events",
    "networks",
    "network",
    "container_managers",
    "container_manager",
    "audit",
];

/// Paths that are no route at all.
const UNKNOWN_PATHS: &[&str] = &[
    "/",
    "/api",
    "/api/v0",
    "/api/v0/",
    "/api/v1/hosts",
    "/API/V0/HOSTS",
    "/api/v0/nothing",
    "/api/v0/hosts/extra",
    "/api/v0/host/10.0.0.1/creds/",
    "/api/v0/host/10.0.0.1/hostkey/",
    "/api/v0/host/10.0.0.1/secrets",
    "/api/v0/cluster/c1/reboot",
    "/api/v0/cluster/c1/restart/",
    "/api/v0/cluster/c1/restart/pause/",
    "/api/v0/cluster/c1/restart/stop",
    "/api/v0/cluster",
    "/api/v0/network",
    "/api/v0//hosts",
    "/api/v0/cluster/c1/hosts/10.0.0.1/extra",
    "/favicon.ico",
    "/etc/passwd",
];

#[test]
fn the_table_covers_every_route_and_matches_the_router() {
    let mut kinds = BTreeSet::new();
    for (path, verbs) in TABLE {
        let route = router::resolve(path).unwrap_or_else(|| panic!("{path} does not resolve"));
        let allowed: Vec<&str> = route.allowed().iter().map(|m| m.as_str()).collect();
        assert_eq!(&allowed, verbs, "verbs of {path}");
        kinds.insert(route_kind(&route));
    }
    let all: BTreeSet<&str> = ALL_KINDS.iter().copied().collect();
    assert_eq!(kinds, all, "the table must have a row for every kind of route");
    for path in UNKNOWN_PATHS {
        assert_eq!(router::resolve(path), None, "{path} should be no route");
    }
}

// ---------------------------------------------------------------------------
// The server under test

#[path = "support/server.rs"]
mod support_server;
use support_server::TestServer;

async fn start_server() -> TestServer {
    support_server::start_server(ADMIN, VIEWER).await
}

// ---------------------------------------------------------------------------
// A raw HTTP/1.1 client (one connection per request, `Connection: close`)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anonymous,
    Admin,
    Viewer,
}

#[derive(Debug, Clone)]
enum Payload {
    None,
    /// Sent with a `Content-Length`.
    Sized(Vec<u8>),
    /// Sent with `Transfer-Encoding: chunked` and no length.
    Chunked(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Req {
    method: String,
    target: Vec<u8>,
    who: Who,
    content_type: Option<String>,
    payload: Payload,
}

impl Req {
    fn new(method: &str, target: impl AsRef<[u8]>, who: Who) -> Self {
        Req {
            method: method.to_string(),
            target: target.as_ref().to_vec(),
            who,
            content_type: None,
            payload: Payload::None,
        }
    }

    fn json(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.content_type = Some("application/json".into());
        self.payload = Payload::Sized(body.into());
        self
    }

    fn describe(&self) -> String {
        let body = match &self.payload {
            Payload::None => String::new(),
            Payload::Sized(b) | Payload::Chunked(b) if b.len() > 200 => format!(" <{} bytes>", b.len()),
            Payload::Sized(b) | Payload::Chunked(b) => format!(" {}", String::from_utf8_lossy(b)),
        };
        let target = String::from_utf8_lossy(&self.target);
        let target = if target.len() > 120 {
            format!("{}…<{} bytes>", target.chars().take(100).collect::<String>(), target.len())
        } else {
            target.into()
        };
        format!("{:?} {} {}{} (content-type {:?})", self.who, self.method, target, body, self.content_type)
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Counts what a test sent and saw.
struct Client {
    addr: SocketAddr,
    sent: AtomicUsize,
    statuses: Mutex<BTreeMap<u16, usize>>,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        Client { addr, sent: AtomicUsize::new(0), statuses: Mutex::new(BTreeMap::new()) }
    }

    async fn send(&self, req: &Req) -> Resp {
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(req))
            .await
            .unwrap_or_else(|_| panic!("no answer within {REQUEST_TIMEOUT:?} to {}", req.describe()))
            .unwrap_or_else(|e| panic!("{e} for {}", req.describe()));
        self.sent.fetch_add(1, Ordering::Relaxed);
        *self.statuses.lock().expect("stats").entry(resp.status).or_default() += 1;
        resp
    }

    async fn exchange(&self, req: &Req) -> Result<Resp, String> {
        let stream = TcpStream::connect(self.addr).await.map_err(|e| format!("connect: {e}"))?;
        let (mut reader, mut writer) = stream.into_split();
        let mut head = Vec::new();
        head.extend_from_slice(req.method.as_bytes());
        head.push(b' ');
        head.extend_from_slice(&req.target);
        head.extend_from_slice(format!(" HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr).as_bytes());
        match req.who {
            Who::Anonymous => {}
            Who::Admin => head.extend_from_slice(format!("Authorization: {}\r\n", basic(ADMIN.0, ADMIN.1)).as_bytes()),
            Who::Viewer => {
                head.extend_from_slice(format!("Authorization: {}\r\n", basic(VIEWER.0, VIEWER.1)).as_bytes())
            }
        }
        if let Some(ct) = &req.content_type {
            head.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        let body = match &req.payload {
            Payload::None => {
                if req.method == "PUT" || req.method == "POST" || req.method == "PATCH" {
                    head.extend_from_slice(b"Content-Length: 0\r\n");
                }
                Vec::new()
            }
            Payload::Sized(bytes) => {
                head.extend_from_slice(format!("Content-Length: {}\r\n", bytes.len()).as_bytes());
                bytes.clone()
            }
            Payload::Chunked(bytes) => {
                head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 1024 + 16);
                for chunk in bytes.chunks(64 * 1024) {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
                out
            }
        };
        head.extend_from_slice(b"\r\n");
        // Write while reading: the server may answer (413) before it has read
        // the body, and then stops reading. The write half is handed back, not
        // dropped, so the server never sees a half-closed connection early.
        let write = tokio::spawn(async move {
            let result = async {
                writer.write_all(&head).await?;
                writer.write_all(&body).await?;
                writer.flush().await
            }
            .await;
            (writer, result)
        });
        let mut buf = Vec::new();
        let read = reader.read_to_end(&mut buf).await;
        let _ = write.await;
        let parsed = parse_response(&buf, req.method == "HEAD");
        match (parsed, read) {
            (Some(resp), _) => Ok(resp),
            // A reset after a complete answer is fine; without one, it is not.
            (None, Err(e)) => Err(format!("read failed after {} bytes: {e}", buf.len())),
            (None, Ok(_)) => Err(format!("incomplete response: {:?}", String::from_utf8_lossy(&buf))),
        }
    }
}

/// Parses one complete response, or `None` if `buf` does not hold one.
fn parse_response(buf: &[u8], head_request: bool) -> Option<Resp> {
    parse_one(buf, head_request).map(|(resp, _)| resp)
}

/// One complete response at the start of `buf`, and how many bytes it took.
fn parse_one(buf: &[u8], head_request: bool) -> Option<(Resp, usize)> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &buf[end + 4..];
    let body = if head_request {
        Vec::new()
    } else {
        match headers.iter().find(|(n, _)| n == "content-length") {
            Some((_, len)) => {
                let len: usize = len.parse().ok()?;
                rest.get(..len)?.to_vec()
            }
            None if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) => {
                panic!("unexpected chunked response")
            }
            None => rest.to_vec(),
        }
    };
    let used = end + 4 + body.len();
    Some((Resp { status, headers, body }, used))
}

impl Client {
    fn report(&self, test: &str) {
        let statuses = self.statuses.lock().expect("stats");
        let seen: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        println!("{test}: {} requests sent; statuses seen: {}", self.sent.load(Ordering::Relaxed), seen.join(", "));
        assert!(statuses.keys().all(|s| *s < 500), "{test}: a 5xx was answered");
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = self.send(&Req::new("GET", path, Who::Admin)).await;
        let body = resp.json();
        (resp.status, body)
    }

    async fn put_ok(&self, path: &str, body: Value) -> Value {
        let resp = self.send(&Req::new("PUT", path, Who::Admin).json(body.to_string())).await;
        assert!(
            (200..300).contains(&resp.status),
            "PUT {path} {body}: {} {:?}",
            resp.status,
            String::from_utf8_lossy(&resp.body)
        );
        resp.json()
    }
}

/// Checks an error answer: the expected status (if any), and exactly
/// `{"error":{"code":<status>,"message":<text>}}` as `application/json`.
fn check_error(resp: &Resp, expected: &[u16], req: &Req) -> Result<(), String> {
    let ctx = req.describe();
    let text = || String::from_utf8_lossy(&resp.body).chars().take(300).collect::<String>();
    if resp.status < 400 {
        return Err(format!("expected an error, got {} for {ctx}: {}", resp.status, text()));
    }
    if !expected.is_empty() && !expected.contains(&resp.status) {
        return Err(format!("expected {expected:?}, got {} for {ctx}: {}", resp.status, text()));
    }
    if req.method == "HEAD" {
        return Ok(());
    }
    let ct = resp.header("content-type").unwrap_or_default();
    if !ct.starts_with("application/json") {
        return Err(format!("content-type {ct:?} for {ctx}"));
    }
    let body: Value = serde_json::from_slice(&resp.body)
        .map_err(|e| format!("error body is not JSON ({e}) for {ctx}: {:?}", text()))?;
    let well_formed = body.as_object().is_some_and(|outer| outer.len() == 1)
        && body["error"].as_object().is_some_and(|error| {
            error.len() == 2
                && error.get("code") == Some(&json!(resp.status))
                && error.get("message").and_then(Value::as_str).is_some_and(|m| !m.is_empty())
        });
    if !well_formed {
        return Err(format!(
            "error body is not {{\"error\":{{\"code\":{},\"message\":…}}}} for {ctx}: {body}",
            resp.status
        ));
    }
    Ok(())
}

fn assert_error(resp: &Resp, expected: &[u16], req: &Req) {
    if let Err(problem) = check_error(resp, expected, req) {
        panic!("{problem}");
    }
}

// ---------------------------------------------------------------------------
// Data

const PRIV_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n-----END OPENSSH PRIVATE KEY-----\n";

/// Something of every kind: networks, container managers, clusters (one
/// with members), hosts with credentials, one ready to join a cluster.
fn priv_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(PRIV_KEY)
}

async fn seed(client: &Client) {
    let key = priv_key();
    client.put_ok("/api/v0/network/n1", json!({"type": "flannel_etcd"})).await;
    client
        .put_ok("/api/v0/network/n2", json!({"type": "flannel_server", "options": {"address": "10.9.0.1:8080"}}))
        .await;
    client.put_ok("/api/v0/containermanager/cm1", json!({"type": "trivial"})).await;
    client.put_ok("/api/v0/cluster/c1", json!({"network": "n1"})).await;
    client.put_ok("/api/v0/cluster/c2", json!({"network": "n2", "container_manager": "cm1"})).await;
    client.put_ok("/api/v0/host/10.0.0.1", json!({"ssh_priv_key": key, "remote_user": "root", "cluster": "c1"})).await;
    client.put_ok("/api/v0/host/10.0.0.2", json!({"ssh_priv_key": key, "status": "disassociated"})).await;
    client.put_ok("/api/v0/host/node-3.example.com", json!({"cpus": 4, "memory": 2048})).await;
}

/// Everything the API shows, keyed by path: the lists and every item's
/// details, credentials, status, members and operation records.
async fn dump(client: &Client) -> BTreeMap<String, (u16, Value)> {
    let mut out = BTreeMap::new();
    let mut get = async |path: String| {
        let answer = client.get_json(&path).await;
        out.insert(path, answer.clone());
        answer
    };
    let (_, hosts) = get("/api/v0/hosts".into()).await;
    for host in hosts.as_array().expect("host list") {
        let address = host["address"].as_str().expect("address");
        for suffix in ["", "/creds", "/status"] {
            get(format!("/api/v0/host/{address}{suffix}")).await;
        }
    }
    let (_, clusters) = get("/api/v0/clusters".into()).await;
    for name in clusters.as_array().expect("cluster list") {
        let name = name.as_str().expect("cluster name");
        for suffix in ["", "/hosts", "/deploy", "/upgrade", "/restart"] {
            get(format!("/api/v0/cluster/{name}{suffix}")).await;
        }
    }
    for (list, item) in [("networks", "network"), ("containermanagers", "containermanager")] {
        let (_, names) = get(format!("/api/v0/{list}")).await;
        for name in names.as_array().expect("list") {
            get(format!("/api/v0/{item}/{}", name.as_str().expect("name"))).await;
        }
    }
    out
}

fn assert_same_dump(before: &BTreeMap<String, (u16, Value)>, after: &BTreeMap<String, (u16, Value)>) {
    for (path, answer) in after {
        assert_eq!(before.get(path), Some(answer), "{path} changed");
    }
    assert_eq!(before.len(), after.len(), "the set of resources changed");
}

// ---------------------------------------------------------------------------
// Route table tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_every_route_and_verb_is_401_with_a_challenge() {
    let server = start_server().await;
    let client = Client::new(server.addr);
    let paths = TABLE.iter().map(|(p, _)| *p).chain(UNKNOWN_PATHS.iter().copied());
    for path in paths {
        for verb in VERBS {
            let mut req = Req::new(verb, path, Who::Anonymous);
            if *verb == "PUT" {
                req = req.json("{}");
            }
            let resp = client.send(&req).await;
            assert_error(&resp, &[401], &req);
            let challenge = resp.header("www-authenticate").unwrap_or_default();
            assert_eq!(challenge, "Basic realm=\"commissaire\"", "{}", req.describe());
        }
    }
    client.report("without_credentials_every_route_and_verb_is_401_with_a_challenge");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_verbs_are_405_with_allow_and_unknown_paths_404() {
    let server = start_server().await;
    let client = Client::new(server.addr);
    seed(&client).await;
    let before = dump(&client).await;
    for (path, allowed) in TABLE {
        for verb in VERBS.iter().filter(|v| !allowed.contains(v)) {
            for who in [Who::Admin, Who::Viewer] {
                let req = Req::new(verb, path, who).json("{}");
                let resp = client.send(&req).await;
                assert_error(&resp, &[405], &req);
                let allow = resp.header("allow").unwrap_or_default();
                let listed: Vec<&str> = allow.split(',').map(str::trim).collect();
                assert_eq!(&listed, allowed, "Allow for {}", req.describe());
            }
        }
    }
    for path in UNKNOWN_PATHS {
        for verb in ["GET", "PUT", "DELETE", "POST"] {
            for who in [Who::Admin, Who::Viewer] {
                let req = Req::new(verb, path, who).json("{}");
                let resp = client.send(&req).await;
                assert_error(&resp, &[404], &req);
            }
        }
    }
    assert_same_dump(&before, &dump(&client).await);
    client.report("wrong_verbs_are_405_with_allow_and_unknown_paths_404");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_may_read_everything_but_credentials_and_change_nothing() {
    let server = start_server().await;
    let client = Client::new(server.addr);
    seed(&client).await;
    let before = dump(&client).await;
    // The event stream never ends; tests/events.rs reads it as a viewer.
    for (path, allowed) in TABLE.iter().filter(|(path, _)| *path != "/api/v0/events") {
        for verb in allowed.iter() {
            let mut req = Req::new(verb, path, Who::Viewer);
            if *verb == "PUT" {
                // A body the admin could send, so only the role stops it.
                req = req.json("{}");
            }
            let resp = client.send(&req).await;
            let secret = path.ends_with("/creds") || path.ends_with("/audit");
            if *verb != "GET" || secret {
                assert_error(&resp, &[403], &req);
            } else {
                assert!(
                    ![401, 403].contains(&resp.status),
                    "{} answered {} to the viewer",
                    req.describe(),
                    resp.status
                );
                if resp.status >= 400 {
                    assert_error(&resp, &[404], &req);
                }
            }
        }
    }
    // The admin may read the credentials the viewer may not.
    let (status, creds) = client.get_json("/api/v0/host/10.0.0.1/creds").await;
    assert_eq!(status, 200);
    assert_eq!(creds["remote_user"], "root");
    assert_same_dump(&before, &dump(&client).await);
    client.report("viewers_may_read_everything_but_credentials_and_change_nothing");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------
// Hostile input

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    /// A string, where null means "absent" (allowed).
    NullableStr,
    Int,
    StrList,
    Dict,
}

fn wrong_values(kind: Kind) -> Vec<String> {
    let mut values: Vec<String> = match kind {
        Kind::Str | Kind::NullableStr => {
            vec!["5", "-1", "1.5", "true", "false", "[]", "[\"a\"]", "{}", "{\"a\":\"b\"}"]
        }
        Kind::Int => {
            vec!["\"5\"", "-1", "1.5", "1e3", "18446744073709551616", "-9223372036854775809", "true", "[]", "[5]", "{}"]
        }
        Kind::StrList => vec!["\"10.0.0.1\"", "[1]", "[null]", "[[\"a\"]]", "[{}]", "{}", "5", "true"],
        Kind::Dict => vec!["\"x\"", "[]", "[{}]", "5", "true"],
    }
    .into_iter()
    .map(str::to_string)
    .collect();
    if kind != Kind::NullableStr {
        values.push("null".into());
    }
    values
}

/// A PUT target: a path, a body that would be accepted (and would change
/// something) and the body's fields with their kinds.
struct Target {
    path: &'static str,
    valid: Value,
    fields: &'static [(&'static str, Kind)],
    /// Semantically wrong values (right type): (field, JSON text).
    invalid: &'static [(&'static str, &'static str)],
}

const HOST_FIELDS: &[(&str, Kind)] = &[
    ("address", Kind::Str),
    ("status", Kind::Str),
    ("os", Kind::Str),
    ("cpus", Kind::Int),
    ("memory", Kind::Int),
    ("space", Kind::Int),
    ("last_check", Kind::Str),
    ("source", Kind::Str),
    ("ssh_priv_key", Kind::Str),
    ("remote_user", Kind::Str),
    ("cluster", Kind::NullableStr),
];
const HOST_SELF_FIELDS: &[(&str, Kind)] = &[
    ("address", Kind::NullableStr),
    ("status", Kind::Str),
    ("os", Kind::Str),
    ("cpus", Kind::Int),
    ("memory", Kind::Int),
    ("space", Kind::Int),
    ("last_check", Kind::Str),
    ("source", Kind::Str),
    ("ssh_priv_key", Kind::Str),
    ("remote_user", Kind::Str),
    ("cluster", Kind::NullableStr),
];
const HOST_INVALID: &[(&str, &str)] = &[
    ("status", "\"rebooting\""),
    ("ssh_priv_key", "\"not base64!\""),
    ("cluster", "\"no-such-cluster\""),
    ("source", "\"no-such-handler\""),
];
const CLUSTER_FIELDS: &[(&str, Kind)] =
    &[("name", Kind::Str), ("network", Kind::Str), ("container_manager", Kind::Str)];
const NAMED_FIELDS: &[(&str, Kind)] = &[("name", Kind::Str), ("type", Kind::Str), ("options", Kind::Dict)];

fn targets() -> Vec<Target> {
    vec![
        Target {
            path: "/api/v0/host",
            valid: json!({}),
            fields: HOST_SELF_FIELDS,
            invalid: &[("address", "\"..\""), ("address", "\"-oProxyCommand\""), ("address", "\"a b\"")],
        },
        Target { path: "/api/v0/host/10.0.0.9", valid: json!({}), fields: HOST_FIELDS, invalid: HOST_INVALID },
        Target {
            path: "/api/v0/host/10.0.0.2",
            valid: json!({"ssh_priv_key": priv_key()}),
            fields: HOST_FIELDS,
            invalid: &[("address", "\"10.0.0.3\""), ("ssh_priv_key", "\"c2Vjb25k\"")],
        },
        Target {
            path: "/api/v0/cluster/c9",
            valid: json!({"network": "n1"}),
            fields: CLUSTER_FIELDS,
            invalid: &[
                ("name", "\"c1\""),
                ("network", "\"no-such-network\""),
                ("container_manager", "\"no-such-manager\""),
                ("network", "\"..\""),
            ],
        },
        Target {
            path: "/api/v0/cluster/c1",
            valid: json!({"network": "n2"}),
            fields: CLUSTER_FIELDS,
            invalid: &[("name", "\"c2\"")],
        },
        Target {
            path: "/api/v0/cluster/c1/hosts",
            valid: json!({"old": ["10.0.0.1"], "new": []}),
            fields: &[("old", Kind::StrList), ("new", Kind::StrList)],
            invalid: &[("old", "[\"10.0.0.2\"]"), ("new", "[\"10.0.0.99\"]")],
        },
        Target { path: "/api/v0/cluster/c1/hosts/10.0.0.2", valid: json!({}), fields: &[], invalid: &[] },
        Target {
            path: "/api/v0/cluster/c1/deploy",
            valid: json!({"version": "7.1"}),
            fields: &[("version", Kind::Str)],
            invalid: &[("version", "\"\""), ("version", "\"a\\nb\"")],
        },
        Target { path: "/api/v0/cluster/c1/upgrade", valid: json!({}), fields: &[], invalid: &[] },
        Target { path: "/api/v0/cluster/c1/restart", valid: json!({}), fields: &[], invalid: &[] },
        Target { path: "/api/v0/cluster/c1/restart/pause", valid: json!({}), fields: &[], invalid: &[] },
        Target { path: "/api/v0/cluster/c1/restart/retry-failed", valid: json!({}), fields: &[], invalid: &[] },
        Target { path: "/api/v0/cluster/c1/upgrade/resume", valid: json!({}), fields: &[], invalid: &[] },
        Target { path: "/api/v0/cluster/c1/deploy/abort", valid: json!({}), fields: &[], invalid: &[] },
        Target {
            path: "/api/v0/network/n9",
            valid: json!({"type": "flannel_etcd"}),
            fields: NAMED_FIELDS,
            invalid: &[("type", "\"vxlan\""), ("name", "\"n1\""), ("type", "\"flannel_server\"")],
        },
        Target {
            path: "/api/v0/network/n1",
            valid: json!({"type": "flannel_etcd"}),
            fields: NAMED_FIELDS,
            invalid: &[("type", "\"flannel_server\"")],
        },
        Target {
            path: "/api/v0/containermanager/cm9",
            valid: json!({"type": "trivial"}),
            fields: NAMED_FIELDS,
            invalid: &[("type", "\"docker\""), ("type", "\"kubernetes\""), ("name", "\"cm1\"")],
        },
    ]
}

/// `base` with `field` set to the raw JSON `value`.
fn with_field(base: &Value, field: &str, value: &str) -> Vec<u8> {
    let mut map = base.as_object().cloned().unwrap_or_default();
    map.remove(field);
    let mut text = serde_json::to_string(&Value::Object(map)).expect("json");
    text.pop(); // the closing brace
    if text.len() > 1 {
        text.push(',');
    }
    text.push_str(&format!("{}:{value}}}", json!(field)));
    text.into_bytes()
}

/// Bodies that are not JSON, or not an object: (label, bytes).
fn malformed_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let mut out: Vec<(&str, Vec<u8>)> = [
        "{",
        "}",
        "{\"a\":",
        "{\"a\" 1}",
        "{'a': 1}",
        "{\"a\":1,}",
        "{\"a\":1}}",
        "{\"a\":1} trailing",
        "{} {}",
        "nul",
        "{\"a\":tru}",
        "{\"a\":\"unterminated}",
        "{\"a\":\"\\u12\"}",
        "{\"a\":\"\\ud800\"}",
        "{\"a\":1e999999}",
        "{\"a\":01}",
        "{\"a\":NaN}",
        "{\"a\":Infinity}",
        "/* comment */ {}",
        "\u{feff}{}",
        "<xml/>",
        "a=1&b=2",
    ]
    .into_iter()
    .map(|s| ("malformed", s.as_bytes().to_vec()))
    .collect();
    out.push(("deeply nested array", "[".repeat(100_000).into_bytes()));
    out.push(("deeply nested object", "{\"a\":".repeat(50_000).into_bytes()));
    out.push(("deep but closed", format!("{}{}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes()));
    out.push(("NUL byte", b"{\"a\":\x00}".to_vec()));
    for text in ["[]", "[{}]", "\"text\"", "\"{}\"", "42", "-1", "1.5", "null", "true", "false"] {
        out.push(("not an object", text.as_bytes().to_vec()));
    }
    out.push(("non-UTF-8", b"\xff\xfe{}".to_vec()));
    out.push(("non-UTF-8 in a string", b"{\"name\": \"\xc3\x28\"}".to_vec()));
    out.push(("non-UTF-8 overlong", b"{\"name\": \"\xc0\xaf\"}".to_vec()));
    out.push(("UTF-16", "{}".encode_utf16().flat_map(|u| u.to_le_bytes()).collect()));
    out.push(("latin-1", b"{\"os\": \"f\xe9dora\"}".to_vec()));
    out
}

/// Path parameters no route should accept (or, if one resolves, that must not
/// store anything): very long, dot segments, percent-encoded, unicode, shell
/// metacharacters.
fn absurd_parameters() -> Vec<String> {
    let mut out: Vec<String> = vec![
        "x".repeat(254),
        "x".repeat(4096),
        "9".repeat(60_000),
        "9".repeat(HYPER_MAX_URI + 1),
        format!("{}.com", "a.".repeat(200)),
        ".".into(),
        "..".into(),
        "...".into(),
        "..%2F..%2Fetc%2Fpasswd".into(),
        "%2e%2e".into(),
        "%2E%2E%2F".into(),
        ".hidden".into(),
        "a..b".into(),
        "h%31".into(),
        "%00".into(),
        "a%00b".into(),
        "a%20b".into(),
        "a%0Ab".into(),
        "a%0D%0AX-Injected:%201".into(),
        "%ff%fe".into(),
        "%".into(),
        "%zz".into(),
        "h%C3%A9".into(),
        "%F0%9F%98%80".into(),
        "%E2%80%AE".into(),
        "%EF%BD%88%EF%BD%8F%EF%BD%93%EF%BD%94".into(),
        "a;b".into(),
        ";rm%20-rf%20%2F".into(),
        "$(id)".into(),
        "%60id%60".into(),
        "a|b".into(),
        "a&b".into(),
        "a&&b".into(),
        "'".into(),
        "%22".into(),
        "$HOME".into(),
        "${IFS}".into(),
        "*".into(),
        "!".into(),
        "~root".into(),
        "a,b".into(),
        "a=b".into(),
        "a+b".into(),
        "@".into(),
        "a:b".into(),
        "%3Cscript%3E".into(),
        "%5C".into(),
        "10.0.0.1%2F".into(),
        "10.0.0.1%3B".into(),
        "::1".into(),
        "[::1]".into(),
    ];
    // Raw (not percent-encoded) non-ASCII: what some clients send.
    out.push("h\u{e9}".into());
    out.push("\u{1F600}".into());
    out
}

/// hyper refuses a request target longer than this itself (414, empty body).
const HYPER_MAX_URI: usize = 65_534;

/// Route templates with parameters; `{}` is replaced by the parameter, and the
/// other parameter takes a seeded value.
const TEMPLATES: &[(&str, &[&str])] = &[
    ("/api/v0/host/{}", &["GET", "PUT", "DELETE"]),
    ("/api/v0/host/{}/creds", &["GET"]),
    ("/api/v0/host/{}/status", &["GET"]),
    ("/api/v0/cluster/{}", &["GET", "PUT", "DELETE"]),
    ("/api/v0/cluster/{}/hosts", &["GET", "PUT"]),
    ("/api/v0/cluster/{}/hosts/10.0.0.2", &["GET", "PUT", "DELETE"]),
    ("/api/v0/cluster/c1/hosts/{}", &["GET", "PUT", "DELETE"]),
    ("/api/v0/cluster/{}/deploy", &["GET", "PUT"]),
    ("/api/v0/cluster/{}/upgrade", &["GET", "PUT"]),
    ("/api/v0/cluster/{}/restart", &["GET", "PUT"]),
    ("/api/v0/cluster/{}/restart/pause", &["PUT"]),
    ("/api/v0/network/{}", &["GET", "PUT", "DELETE"]),
    ("/api/v0/containermanager/{}", &["GET", "PUT", "DELETE"]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_to_every_route_is_refused_cleanly_and_stores_nothing() {
    let server = start_server().await;
    let client = Client::new(server.addr);
    seed(&client).await;
    let before = dump(&client).await;
    let mut by_category: BTreeMap<&str, usize> = BTreeMap::new();
    let mut violations: Vec<String> = Vec::new();

    // Every route that takes a body.
    let targets = targets();
    let put_kinds: BTreeSet<&str> =
        targets.iter().filter_map(|t| router::resolve(t.path)).map(|r| route_kind(&r)).collect();
    for (path, verbs) in TABLE {
        if verbs.contains(&"PUT") {
            let kind = route_kind(&router::resolve(path).expect("route"));
            assert!(put_kinds.contains(kind), "no hostile-input target for {kind}");
        }
    }

    for target in &targets {
        let path = target.path;
        let valid = target.valid.to_string();
        let mut cases: Vec<(&str, Req, &[u16])> = Vec::new();
        let put = || Req::new("PUT", path, Who::Admin);

        for (label, bytes) in malformed_bodies() {
            cases.push((label, put().json(bytes), &[400]));
        }
        // Content types: a body that would be accepted, labelled wrongly.
        let mut missing = put().json(valid.clone());
        missing.content_type = None;
        cases.push(("missing content-type", missing, &[415]));
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/xml",
            "application/jsonp",
            "application/json-patch+json",
            "json",
            "",
            "*/*",
        ] {
            let mut req = put().json(valid.clone());
            req.content_type = Some(ct.to_string());
            cases.push(("wrong content-type", req, &[415]));
        }
        // Oversize: a body that would be accepted, padded past the limit.
        let padded = format!("{valid}{}", " ".repeat(MAX_BODY_BYTES + 1 - valid.len()));
        assert!(padded.len() > MAX_BODY_BYTES);
        cases.push(("oversize with length", put().json(padded.clone()), &[413]));
        let mut chunked = put().json(Vec::new());
        chunked.payload = Payload::Chunked(padded.into_bytes());
        cases.push(("oversize chunked", chunked, &[413]));
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(2 * MAX_BODY_BYTES));
        cases.push(("oversize with length", put().json(big.clone()), &[413]));
        // Unknown fields, alone and beside a valid body.
        for field in ["bogus", "hostset", "__proto__", "", "STATUS", "Address", "name "] {
            cases.push(("unknown field", put().json(with_field(&json!({}), field, "1")), &[400]));
            cases.push(("unknown field", put().json(with_field(&target.valid, field, "\"x\"")), &[400]));
        }
        // Wrong types, each field of the route's body in turn.
        for (field, kind) in target.fields {
            for value in wrong_values(*kind) {
                cases.push(("wrong type", put().json(with_field(&target.valid, field, &value)), &[400]));
            }
        }
        // Right types, wrong values.
        for (field, value) in target.invalid {
            cases.push(("invalid value", put().json(with_field(&target.valid, field, value)), &[400, 404, 409]));
        }

        for (category, req, expected) in cases {
            let resp = client.send(&req).await;
            if let Err(problem) = check_error(&resp, expected, &req) {
                violations.push(problem);
            }
            *by_category.entry(category).or_default() += 1;
        }
    }

    // Absurd path parameters, every verb the route allows.
    for (template, verbs) in TEMPLATES {
        for parameter in absurd_parameters() {
            let path = template.replace("{}", &parameter);
            for verb in *verbs {
                let mut req = Req::new(verb, &path, Who::Admin);
                if *verb == "PUT" {
                    req = req.json("{}");
                }
                let resp = client.send(&req).await;
                if path.len() > HYPER_MAX_URI {
                    // Refused by hyper's parser before the service sees it:
                    // its own 414, with an empty body.
                    if resp.status != 414 {
                        violations.push(format!("expected 414, got {} for {}", resp.status, req.describe()));
                    }
                    *by_category.entry("URI over hyper's limit (bare 414)").or_default() += 1;
                    continue;
                }
                if let Err(problem) = check_error(&resp, &[400, 404], &req) {
                    violations.push(problem);
                }
                *by_category.entry("absurd path parameter").or_default() += 1;
            }
        }
    }
    // Query strings and fragments do not change the route or its target.
    for suffix in ["?address=10.0.0.5", "?$(id)", "?a=%00", "#frag"] {
        let req = Req::new("PUT", format!("/api/v0/host/..{suffix}"), Who::Admin).json("{}");
        let resp = client.send(&req).await;
        if let Err(problem) = check_error(&resp, &[400, 404], &req) {
            violations.push(problem);
        }
        *by_category.entry("absurd path parameter").or_default() += 1;
    }
    assert!(violations.is_empty(), "{} violations:\n{}", violations.len(), violations.join("\n"));
    for chunked in [false, true] {
        let statuses = oversize_body_is_not_read_as_requests(&client, chunked).await;
        *by_category.entry("oversize keep-alive with requests in the body").or_default() += 1;
        println!("oversize keep-alive body (chunked: {chunked}): answers {statuses:?}");
    }

    assert_same_dump(&before, &dump(&client).await);
    let categories: Vec<String> = by_category.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    println!("hostile requests by category: {}", categories.join(", "));

    // Control: the same targets accept their valid bodies, so the refusals
    // above were about the input (operations are sent to an unknown cluster:
    // there is no cluster exec service in this process).
    for target in &targets {
        let path = target.path.replace("/cluster/c1/deploy", "/cluster/nope/deploy");
        let path = path.replace("/cluster/c1/upgrade", "/cluster/nope/upgrade");
        let path = path.replace("/cluster/c1/restart", "/cluster/nope/restart");
        let req = Req::new("PUT", &path, Who::Admin).json(target.valid.to_string());
        let resp = client.send(&req).await;
        if path.contains("/nope/") {
            assert_error(&resp, &[404], &req);
        } else if path == "/api/v0/cluster/c1" || path == "/api/v0/network/n1" {
            // Other attributes than the stored ones.
            assert!(resp.status == 409 || resp.status == 201, "{}: {}", req.describe(), resp.status);
        } else {
            assert!(
                (200..300).contains(&resp.status),
                "control {} answered {}: {}",
                req.describe(),
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
        }
    }
    client.report("hostile_input_to_every_route_is_refused_cleanly_and_stores_nothing");
    server.shutdown().await;
}

/// An oversize body on a keep-alive connection whose bytes look like further
/// requests: one 413, and the body is never read as a request (a follow-up
/// request on the same connection, if it stays open, is answered as itself).
async fn oversize_body_is_not_read_as_requests(client: &Client, chunked: bool) -> Vec<u16> {
    let auth = format!("Authorization: {}\r\n", basic(ADMIN.0, ADMIN.1));
    let smuggled = format!("DELETE /api/v0/network/n1 HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\n\r\n");
    let mut body = Vec::with_capacity(MAX_BODY_BYTES + 2 * smuggled.len());
    while body.len() <= MAX_BODY_BYTES + smuggled.len() {
        body.extend_from_slice(smuggled.as_bytes());
    }
    let mut head =
        format!("PUT /api/v0/network/n9 HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\n", client.addr)
            .into_bytes();
    let wire = if chunked {
        head.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        let mut out = Vec::new();
        for chunk in body.chunks(4096) {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            out.extend_from_slice(chunk);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    } else {
        head.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        body
    };
    let stream = TcpStream::connect(client.addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let addr = client.addr;
    let write = tokio::spawn(async move {
        let sent = async {
            writer.write_all(&head).await?;
            writer.write_all(&wire).await
        }
        .await;
        if sent.is_ok() {
            // Still open: a follow-up that must be answered as itself.
            let follow_up =
                format!("GET /api/v0/network/n1 HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
            let _ = writer.write_all(follow_up.as_bytes()).await;
        }
        writer
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_to_end(&mut buf)).await.expect("no EOF in time");
    let _ = write.await;
    let mut statuses = Vec::new();
    let mut rest = &buf[..];
    while let Some((resp, used)) = parse_one(rest, false) {
        client.sent.fetch_add(1, Ordering::Relaxed);
        *client.statuses.lock().expect("stats").entry(resp.status).or_default() += 1;
        if statuses.is_empty() {
            let req = Req::new("PUT", "/api/v0/network/n9", Who::Admin);
            assert_error(&resp, &[413], &req);
        } else {
            assert_eq!(resp.status, 200, "follow-up: {:?}", String::from_utf8_lossy(&resp.body));
            assert_eq!(resp.json()["name"], "n1");
        }
        statuses.push(resp.status);
        rest = &rest[used..];
    }
    assert!(
        !statuses.is_empty() && rest.is_empty(),
        "responses {statuses:?}, then {} unparsed bytes ({read:?})",
        rest.len()
    );
    assert!(statuses.len() <= 2, "the body was read as requests: {statuses:?}");
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_answer_without_credentials() {
    let server = start_server().await;
    let client = Client::new(server.addr);
    for (path, body) in [("/healthz", json!({"status": "ok"})), ("/readyz", json!({"status": "ready"}))] {
        let req = Req::new("GET", path, Who::Anonymous);
        let resp = client.send(&req).await;
        assert_eq!(resp.status, 200, "{}", req.describe());
        assert_eq!(serde_json::from_slice::<Value>(&resp.body).expect("json"), body);
    }
    // Only GET; other verbs go through authentication like any path.
    let req = Req::new("PUT", "/healthz", Who::Anonymous).json("{}");
    assert_error(&client.send(&req).await, &[401], &req);
    server.shutdown().await;
}
