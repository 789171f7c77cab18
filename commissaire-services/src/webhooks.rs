//! Webhooks: HTTP endpoints told when a host's status changes and when a
//! cluster operation finishes or fails, driven by the storage events on the bus
//! (`notify.storage.Host.*`, `notify.storage.Cluster{Restart,Upgrade,Deploy}.updated`).
//!
//! Configuration (`webhooks` in commissaire.conf for the all-in-one server, or
//! in webhooks.conf for `commissaire-webhook-service`):
//! ```json
//! {"webhooks": [{"url": "https://hooks.example:8443/commissaire",
//!                "secret_file": "/etc/commissaire/webhook.secret",
//!                "ca_file": "/etc/commissaire/hooks-ca.pem",
//!                "events": ["host", "operation"], "queue": 1000, "attempts": 6}]}
//! ```
//! (`secret` may be given inline instead of `secret_file`. `https://` endpoints
//! are verified against `ca_file`, default the system's bundle
//! `/etc/ssl/certs/ca-certificates.crt`; `http://` ones are sent in clear.)
//!
//! Each notification is a `POST` of a JSON object with `Content-Type:
//! application/json` and the headers `X-Commissaire-Event` (`host.status`,
//! `operation.finished`, `operation.failed`), `X-Commissaire-Delivery` (a
//! unique id, the same on every retry) and `X-Commissaire-Signature:
//! sha256=<hex HMAC-SHA256 of the body with the endpoint's secret>`.
//!
//! Invariants:
//! * every endpoint has its own bounded queue and its own sender task: a slow
//!   or dead endpoint delays only its own notifications; a full queue drops its
//!   oldest notification and counts it (`commissaire_webhook_dropped_total`);
//! * a delivery is retried with exponential backoff (0.5 s doubling, at most
//!   30 s) until `attempts` are used, each attempt bounded by a timeout;
//! * the secret is never logged.
//!
//! Every instance of the service sends every notification
//! (they subscribe, they do not share a queue): run one, or let receivers
//! de-duplicate on the delivery id's content (`event`, `cluster`, `host`,
//! `time`).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use commissaire_core::{bus::Bus, metrics, model::Cluster, storage_client::StorageClient, timestamp};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Notify;

/// The routing keys the webhooks follow.
pub const PATTERNS: &[&str] = &[
    "notify.storage.Host.created",
    "notify.storage.Host.updated",
    "notify.storage.ClusterRestart.updated",
    "notify.storage.ClusterUpgrade.updated",
    "notify.storage.ClusterDeploy.updated",
];
/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Commissaire-Signature";
const DEFAULT_QUEUE: usize = 1000;
const DEFAULT_ATTEMPTS: u32 = 6;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A configuration error, naming the member.
#[derive(Debug, thiserror::Error)]
#[error("webhooks: {0}")]
pub struct ConfigError(String);

/// Trusted by `https://` endpoints without a `ca_file` (Debian's ca-certificates).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// One configured endpoint.
#[derive(Clone)]
pub struct Endpoint {
    pub url: String,
    host: String,
    port: u16,
    path: String,
    /// For `https://` endpoints: the client configuration (trusted roots).
    tls: Option<Arc<rustls::ClientConfig>>,
    secret: Vec<u8>,
    pub host_events: bool,
    pub operation_events: bool,
    pub queue: usize,
    pub attempts: u32,
    /// First retry delay (doubling up to 30 s).
    pub backoff: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("url", &self.url).field("secret", &"<redacted>").finish()
    }
}

/// Parses the `webhooks` member (absent: none).
pub fn from_config(value: Option<&Value>) -> Result<Vec<Endpoint>, ConfigError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ConfigError("must be a list of endpoints".into())),
    };
    items.iter().enumerate().map(|(i, item)| endpoint(i, item)).collect()
}

fn endpoint(i: usize, item: &Value) -> Result<Endpoint, ConfigError> {
    let err = |m: String| ConfigError(format!("endpoint {i}: {m}"));
    let obj = item.as_object().ok_or_else(|| err("must be an object".into()))?;
    for key in obj.keys() {
        if !["url", "secret", "secret_file", "ca_file", "events", "queue", "attempts"].contains(&key.as_str()) {
            return Err(err(format!(
                "unknown member {key}; allowed: url, secret, secret_file, ca_file, events, queue, attempts"
            )));
        }
    }
    let url = obj.get("url").and_then(Value::as_str).ok_or_else(|| err("url is required".into()))?.to_string();
    let (rest, default_port, tls) = if let Some(rest) = url.strip_prefix("https://") {
        let ca_file = match obj.get("ca_file") {
            None => SYSTEM_CA_BUNDLE,
            Some(Value::String(path)) => path.as_str(),
            Some(_) => return Err(err("ca_file must be a path".into())),
        };
        (rest, 443, Some(client_config(ca_file).map_err(err)?))
    } else if let Some(rest) = url.strip_prefix("http://") {
        if obj.contains_key("ca_file") {
            return Err(err(format!("ca_file is only for https:// endpoints, not {url:?}")));
        }
        (rest, 80, None)
    } else {
        return Err(err(format!("url {url:?} must start with https:// or http://")));
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], rest[at..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().map_err(|_| err(format!("bad port in {url:?}")))?),
        None => (authority.to_string(), default_port),
    };
    if host.is_empty() {
        return Err(err(format!("no host in {url:?}")));
    }
    let secret = match (obj.get("secret"), obj.get("secret_file")) {
        (Some(Value::String(s)), None) => s.as_bytes().to_vec(),
        (None, Some(Value::String(path))) => std::fs::read_to_string(path)
            .map_err(|e| err(format!("cannot read secret_file {path}: {e}")))?
            .trim()
            .as_bytes()
            .to_vec(),
        _ => return Err(err("exactly one of secret or secret_file (a string) is required".into())),
    };
    if secret.len() < 16 {
        return Err(err("the secret must be at least 16 bytes".into()));
    }
    let (mut host_events, mut operation_events) = (true, true);
    if let Some(events) = obj.get("events") {
        let list = events.as_array().ok_or_else(|| err("events must be a list".into()))?;
        host_events = false;
        operation_events = false;
        for e in list {
            match e.as_str() {
                Some("host") => host_events = true,
                Some("operation") => operation_events = true,
                _ => return Err(err(format!("events: {e} is not \"host\" or \"operation\""))),
            }
        }
    }
    let number = |name: &str, default: u64| -> Result<u64, ConfigError> {
        match obj.get(name) {
            None => Ok(default),
            Some(v) => v.as_u64().filter(|n| *n > 0).ok_or_else(|| err(format!("{name} must be a positive integer"))),
        }
    };
    // Checked now, so that a bad name is a configuration error, not a failed delivery.
    if tls.is_some() && rustls_pki_types::ServerName::try_from(host.clone()).is_err() {
        return Err(err(format!("{host:?} is not a valid TLS server name")));
    }
    Ok(Endpoint {
        host,
        port,
        path,
        tls,
        secret,
        host_events,
        operation_events,
        queue: number("queue", DEFAULT_QUEUE as u64)? as usize,
        attempts: number("attempts", u64::from(DEFAULT_ATTEMPTS))? as u32,
        backoff: FIRST_BACKOFF,
        url,
    })
}

/// A TLS client trusting the certificates in the PEM file `ca_file`.
fn client_config(ca_file: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read ca_file {ca_file}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("ca_file {ca_file} holds no usable CA certificate"));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The hex HMAC-SHA256 of `body` with `secret`, as sent in [`SIGNATURE_HEADER`]
/// (after `sha256=`).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(), // HMAC takes keys of any length
    };
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// A notification waiting for its endpoint.
struct Pending {
    event: &'static str,
    delivery: String,
    body: Bytes,
}

struct Queue {
    endpoint: Endpoint,
    items: Mutex<VecDeque<Pending>>,
    wake: Notify,
}

impl Queue {
    fn push(&self, item: Pending) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if items.len() >= self.endpoint.queue {
            items.pop_front();
            metrics::get().webhook_dropped();
            tracing::warn!(url = %self.endpoint.url, "webhook queue full: dropped the oldest notification");
        }
        items.push_back(item);
        drop(items);
        self.wake.notify_one();
    }

    fn pop(&self) -> Option<Pending> {
        self.items.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }
}

/// The running webhooks; dropping it does not stop them, [`Running::stop`] does.
pub struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Subscribes to the storage events and starts one sender per endpoint.
pub async fn start(bus: Arc<dyn Bus>, endpoints: Vec<Endpoint>) -> Result<Running, commissaire_core::bus::BusError> {
    let mut tasks = Vec::new();
    if endpoints.is_empty() {
        return Ok(Running { tasks });
    }
    let queues: Vec<Arc<Queue>> = endpoints
        .into_iter()
        .map(|endpoint| Arc::new(Queue { endpoint, items: Mutex::new(VecDeque::new()), wake: Notify::new() }))
        .collect();
    for queue in &queues {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move { sender(queue).await }));
    }
    let mut subscription = bus.subscribe(PATTERNS).await?;
    let storage = StorageClient::new(bus.clone());
    tasks.push(tokio::spawn(async move {
        let mut watch = Watch::default();
        while let Some(event) = subscription.next().await {
            let Some((kind, notification)) = watch.notification(&storage, &event.routing_key, &event.body).await else {
                continue;
            };
            let body = Bytes::from(serde_json::to_vec(&notification).unwrap_or_default());
            for queue in &queues {
                let wanted = match kind {
                    "host.status" => queue.endpoint.host_events,
                    _ => queue.endpoint.operation_events,
                };
                if wanted {
                    queue.push(Pending { event: kind, delivery: uuid::Uuid::new_v4().to_string(), body: body.clone() });
                }
            }
        }
    }));
    Ok(Running { tasks })
}

/// What has been seen, to notify changes only once.
#[derive(Default)]
struct Watch {
    host_status: HashMap<String, String>,
    operations_done: HashSet<(String, String, String)>,
}

impl Watch {
    async fn notification(
        &mut self,
        storage: &StorageClient,
        routing_key: &str,
        body: &Value,
    ) -> Option<(&'static str, Value)> {
        let model = body.get("model")?;
        let class = routing_key.split('.').nth(2)?;
        let text = |k: &str| model.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        if class == "Host" {
            let address = text("address");
            let status = text("status");
            let previous = self.host_status.insert(address.clone(), status.clone());
            if previous.as_deref() == Some(status.as_str()) || status.is_empty() {
                return None;
            }
            let cluster = cluster_of(storage, &address).await;
            return Some((
                "host.status",
                json!({
                    "event": "host.status", "host": address, "cluster": cluster, "status": status,
                    "previous_status": previous.unwrap_or_default(), "reason": text("reason"),
                    "time": timestamp::now(),
                }),
            ));
        }
        let operation = match class {
            "ClusterRestart" => "restart",
            "ClusterUpgrade" => "upgrade",
            "ClusterDeploy" => "deploy",
            _ => return None,
        };
        let status = text("status");
        if status != "finished" && status != "failed" {
            return None;
        }
        let cluster = text("name");
        let once = (cluster.clone(), operation.to_string(), text("started_at"));
        if !self.operations_done.insert(once) {
            return None;
        }
        let failed_hosts = model.get("failed_hosts").cloned().unwrap_or(Value::Array(Vec::new()));
        let host = failed_hosts.get(0).cloned().unwrap_or(Value::Null);
        let event = if status == "finished" { "operation.finished" } else { "operation.failed" };
        Some((
            event,
            json!({
                "event": event, "cluster": cluster, "operation": operation, "status": status,
                "host": host, "failed_hosts": failed_hosts, "reason": text("reason"),
                "started_at": text("started_at"), "finished_at": model.get("finished_at").cloned().unwrap_or(Value::Null),
                "time": timestamp::now(),
            }),
        ))
    }
}

/// The cluster a host is a member of (null when none or unknown).
async fn cluster_of(storage: &StorageClient, address: &str) -> Value {
    match storage.list::<Cluster>().await {
        Ok(clusters) => clusters
            .into_iter()
            .find(|c| c.hostset.iter().any(|h| h == address))
            .map(|c| Value::String(c.name))
            .unwrap_or(Value::Null),
        Err(err) => {
            tracing::warn!(error = %err, "webhooks: cannot list clusters to name a host's cluster");
            Value::Null
        }
    }
}

async fn sender(queue: Arc<Queue>) {
    loop {
        let Some(item) = queue.pop() else {
            queue.wake.notified().await;
            continue;
        };
        let mut delay = queue.endpoint.backoff;
        let mut attempt = 1;
        loop {
            match tokio::time::timeout(ATTEMPT_TIMEOUT, post(&queue.endpoint, &item)).await {
                Ok(Ok(())) => {
                    metrics::get().webhook("delivered");
                    break;
                }
                outcome => {
                    let why = match outcome {
                        Ok(Err(e)) => e,
                        _ => format!("no answer within {ATTEMPT_TIMEOUT:?}"),
                    };
                    if attempt >= queue.endpoint.attempts {
                        metrics::get().webhook("failed");
                        metrics::get().error(metrics::ErrorKind::Webhook);
                        tracing::warn!(url = %queue.endpoint.url, attempt, error = %why, "webhook delivery failed; giving up");
                        break;
                    }
                    metrics::get().webhook("retried");
                    tracing::info!(url = %queue.endpoint.url, attempt, error = %why, "webhook delivery failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
            }
        }
    }
}

/// One POST; Ok on a 2xx answer.
async fn post(endpoint: &Endpoint, item: &Pending) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    match &endpoint.tls {
        None => post_on(stream, endpoint, item).await,
        Some(config) => {
            let name = rustls_pki_types::ServerName::try_from(endpoint.host.clone())
                .map_err(|e| format!("server name: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            post_on(stream, endpoint, item).await
        }
    }
}

async fn post_on<S>(stream: S, endpoint: &Endpoint, item: &Pending) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let default_port = if endpoint.tls.is_some() { 443 } else { 80 };
    let authority = if endpoint.port == default_port {
        endpoint.host.clone()
    } else {
        format!("{}:{}", endpoint.host, endpoint.port)
    };
    let request = hyper::Request::post(endpoint.path.as_str())
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header("X-Commissaire-Event", item.event)
        .header("X-Commissaire-Delivery", item.delivery.as_str())
        .header(SIGNATURE_HEADER, format!("sha256={}", sign(&endpoint.secret, &item.body)))
        .body(Full::new(item.body.clone()))
        .map_err(|e| format!("request: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("send: {e}"))?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    if status.is_success() { Ok(()) } else { Err(format!("answered {status}")) }
}
