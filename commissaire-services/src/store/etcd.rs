//! [`Store`] on etcd's v3 API (etcd-client).
//!
//! * Revision = the key's `mod_revision`.
//! * Preconditions are transactions: `Absent` compares `create_revision == 0`, `Revision(r)`
//!   compares `mod_revision == r`.
//! * Deletes ask for `prev_kv`; list is a prefix range.
//! * A watch waits for etcd's "created" answer before it returns (so every later write is
//!   seen), asks for `prev_kv` (the value a delete removed), and re-establishes itself after an
//!   error from the revision it had reached, so no event is lost or repeated. If that revision
//!   was compacted meanwhile, the stream ends with [`StoreError::WatchLost`].
//! * Every call is bounded by [`EtcdConfig::request_timeout`]; an unreachable cluster gives
//!   [`StoreError::Unavailable`] naming the endpoints instead of hanging.
//! * TLS (etcd-client feature `tls`, rustls with ring): used when a CA or a client certificate
//!   is configured; the endpoints must then be `https://` URLs (or bare `host:port`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, Identity, KeyValue,
    KvClient, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchClient, WatchOptions,
};
use tokio::sync::mpsc;

use super::{Expect, Revision, Store, StoreError, Versioned, WatchEvent, WatchStream, check_key};

/// Largest answer accepted from etcd (a list of many hosts); etcd-client's default is 4 MiB.
const MAX_DECODING_MESSAGE_SIZE: usize = 64 * 1024 * 1024;
/// Events buffered between a watch's reader task and its consumer.
const WATCH_BUFFER: usize = 256;
/// Longest pause between two attempts to re-establish a broken watch.
const WATCH_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379` (or `https://...` with TLS).
    pub endpoints: Vec<String>,
    /// PEM file of the CA that signed etcd's server certificate. Enables TLS.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (with `key_file`). Enables TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key_file: Option<PathBuf>,
    /// etcd user (etcd's own authentication), with `password`.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Bound on establishing a connection to one endpoint.
    pub connect_timeout: Duration,
    /// Bound on every call (including connection set-up when needed).
    pub request_timeout: Duration,
}

impl EtcdConfig {
    /// Plain-text etcd at `endpoints`, no authentication, timeouts of 5 s.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }

    fn uses_tls(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// [`Store`] on an etcd cluster. Cheap to clone (one shared gRPC channel).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    kv: KvClient,
    endpoints: String,
    request_timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| StoreError::Config(format!("cannot read the etcd {what} {}: {e}", path.display())))
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers (one status round trip), so a wrong
    /// address or a stopped cluster is reported here as [`StoreError::Unavailable`], within
    /// `connect_timeout + request_timeout`.
    pub async fn connect(config: EtcdConfig) -> Result<Self, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Config("no etcd endpoint is configured".into()));
        }
        let endpoints = config.endpoints.join(",");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            // Finds a dead connection under a long-lived watch.
            .with_keep_alive(Duration::from_secs(10), config.request_timeout)
            .with_keep_alive_while_idle(true);

        match (&config.username, &config.password) {
            (Some(user), Some(password)) => {
                // etcd's auth tokens expire; get a new one instead of failing.
                options = options.with_user(user, password).with_auto_token_refresh(true);
            }
            (None, None) => {}
            _ => {
                return Err(StoreError::Config("etcd username and password must be given together".into()));
            }
        }

        if config.uses_tls() {
            if let Some(plain) = config.endpoints.iter().find(|e| e.starts_with("http://")) {
                return Err(StoreError::Config(format!(
                    "TLS is configured (CA or client certificate) but the etcd endpoint {plain} is plain http://; use https://"
                )));
            }
            let mut tls = TlsOptions::new();
            if let Some(ca) = &config.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read_pem("CA certificate", ca)?));
            }
            match (&config.cert_file, &config.key_file) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(Identity::from_pem(
                        read_pem("client certificate", cert)?,
                        read_pem("client key", key)?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::Config(
                        "the etcd client certificate and key must be given together".into(),
                    ));
                }
            }
            options = options.with_tls(tls);
        }

        let budget = config.connect_timeout + config.request_timeout;
        let client = match tokio::time::timeout(budget, Client::connect(config.endpoints.clone(), Some(options))).await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(map_error(&endpoints, "connect", "", e)),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "etcd at {endpoints}: connecting took longer than {budget:?}"
                )));
            }
        };
        let store = EtcdStore {
            kv: client.kv_client().max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            client,
            endpoints,
            request_timeout: config.request_timeout,
        };
        store.ping().await?;
        Ok(store)
    }

    /// The configured endpoints, comma-separated (for logs).
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Runs one etcd call within the request timeout and maps its error.
    async fn call<T>(
        &self,
        op: &str,
        key: &str,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        bounded(&self.endpoints, self.request_timeout, op, key, fut).await
    }

    fn kv(&self) -> KvClient {
        self.kv.clone()
    }
}

async fn bounded<T>(
    endpoints: &str,
    timeout: Duration,
    op: &str,
    key: &str,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(map_error(endpoints, op, key, e)),
        Err(_) => Err(StoreError::Unavailable(format!(
            "etcd at {endpoints}: {} got no answer within {timeout:?}",
            describe_call(op, key)
        ))),
    }
}

fn describe_call(op: &str, key: &str) -> String {
    if key.is_empty() { op.to_string() } else { format!("{op} {key}") }
}

/// The message of an error followed by those of its sources ("tcp connect error: Connection
/// refused (os error 111)"), without repeating a source already in the message.
fn with_sources(e: &(dyn std::error::Error + 'static), message: String) -> String {
    let mut out = message;
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Maps an etcd-client error to a [`StoreError`] that says which endpoint and call failed.
fn map_error(endpoints: &str, op: &str, key: &str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    let what = describe_call(op, key);
    match e {
        E::GRpcStatus(status) => {
            let msg = with_sources(&status, format!("etcd at {endpoints}: {what}: {}", status.message()));
            match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                    StoreError::Unavailable(msg)
                }
                Code::Unknown if status.message().contains("transport") => StoreError::Unavailable(msg),
                Code::PermissionDenied | Code::Unauthenticated => StoreError::Denied(msg),
                // etcd answers bad or missing credentials with InvalidArgument.
                _ if is_auth_failure(status.message()) => StoreError::Denied(msg),
                Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted => StoreError::Invalid(msg),
                code => StoreError::Backend(format!("{msg} (gRPC code {code:?})")),
            }
        }
        E::TransportError(t) => {
            StoreError::Unavailable(with_sources(&t, format!("etcd at {endpoints}: {what}: transport error: {t}")))
        }
        E::IoError(io) => StoreError::Unavailable(format!("etcd at {endpoints}: {what}: {io}")),
        E::InvalidArgs(a) => StoreError::Config(format!("etcd at {endpoints}: {what}: {a}")),
        E::InvalidUri(u) => StoreError::Config(format!("etcd endpoint URL in {endpoints} is invalid: {u}")),
        E::Utf8Error(u) => StoreError::Corrupt(format!("etcd at {endpoints}: {what}: a key is not UTF-8: {u}")),
        other => StoreError::Backend(format!("etcd at {endpoints}: {what}: {other}")),
    }
}

fn is_auth_failure(message: &str) -> bool {
    const AUTH: [&str; 5] = [
        "authentication failed",
        "user name is empty",
        "invalid auth token",
        "permission denied",
        "user name not found",
    ];
    AUTH.iter().any(|m| message.contains(m))
}

fn revision(raw: i64, key: &str) -> Result<Revision, StoreError> {
    match Revision::try_from(raw) {
        Ok(r) if r > 0 => Ok(r),
        _ => Err(StoreError::Corrupt(format!("etcd returned revision {raw} for {key}"))),
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>, key: &str) -> Result<Revision, StoreError> {
    match header {
        Some(h) => revision(h.revision(), key),
        None => Err(StoreError::Corrupt(format!("etcd answered a write of {key} without a header"))),
    }
}

fn key_string(kv: &KeyValue) -> Result<String, StoreError> {
    kv.key_str()
        .map(str::to_owned)
        .map_err(|_| StoreError::Corrupt(format!("etcd key {:?} is not UTF-8", String::from_utf8_lossy(kv.key()))))
}

fn versioned(kv: &KeyValue, key: &str) -> Result<Versioned, StoreError> {
    Ok(Versioned { value: kv.value().to_vec(), revision: revision(kv.mod_revision(), key)? })
}

/// `Expect::Revision(r)` as etcd's i64; `None` if no key can have that revision.
fn wanted_revision(r: Revision) -> Option<i64> {
    i64::try_from(r).ok()
}

fn conflict(key: &str) -> StoreError {
    StoreError::Conflict { key: key.to_owned() }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        check_key(key)?;
        let mut kv = self.kv();
        let resp = self.call("get", key, kv.get(key, None)).await?;
        match resp.kvs().first() {
            Some(found) => Ok(Some(versioned(found, key)?)),
            None => Ok(None),
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<(Revision, bool), StoreError> {
        check_key(key)?;
        let mut kv = self.kv();
        match expect {
            Expect::Any => {
                let resp = self.call("put", key, kv.put(key, value, Some(PutOptions::new().with_prev_key()))).await?;
                Ok((header_revision(resp.header(), key)?, resp.prev_key().is_none()))
            }
            Expect::Absent | Expect::Revision(0) => {
                let txn = Txn::new()
                    .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key, value, None)]);
                let resp = self.call("create", key, kv.txn(txn)).await?;
                if !resp.succeeded() {
                    return Err(conflict(key));
                }
                Ok((header_revision(resp.header(), key)?, true))
            }
            Expect::Revision(r) => {
                let Some(r) = wanted_revision(r) else {
                    return Err(conflict(key));
                };
                let txn = Txn::new()
                    .when([Compare::mod_revision(key, CompareOp::Equal, r)])
                    .and_then([TxnOp::put(key, value, None)]);
                let resp = self.call("update", key, kv.txn(txn)).await?;
                if !resp.succeeded() {
                    return Err(conflict(key));
                }
                Ok((header_revision(resp.header(), key)?, false))
            }
        }
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<Option<Versioned>, StoreError> {
        check_key(key)?;
        let mut kv = self.kv();
        match expect {
            Expect::Any => {
                let mut resp =
                    self.call("delete", key, kv.delete(key, Some(DeleteOptions::new().with_prev_key()))).await?;
                match resp.take_prev_kvs().first() {
                    Some(prev) => Ok(Some(versioned(prev, key)?)),
                    None => Ok(None),
                }
            }
            Expect::Absent | Expect::Revision(0) => {
                // Deleting a key that must not exist: nothing to do, unless it exists.
                let resp = self.call("delete", key, kv.get(key, Some(GetOptions::new().with_count_only()))).await?;
                if resp.count() > 0 {
                    return Err(conflict(key));
                }
                Ok(None)
            }
            Expect::Revision(r) => {
                let Some(r) = wanted_revision(r) else {
                    return Err(conflict(key));
                };
                let txn = Txn::new()
                    .when([Compare::mod_revision(key, CompareOp::Equal, r)])
                    .and_then([TxnOp::delete(key, Some(DeleteOptions::new().with_prev_key()))]);
                let resp = self.call("delete", key, kv.txn(txn)).await?;
                if !resp.succeeded() {
                    return Err(conflict(key));
                }
                for op in resp.op_responses() {
                    if let TxnOpResponse::Delete(del) = op
                        && let Some(prev) = del.prev_kvs().first()
                    {
                        return Ok(Some(versioned(prev, key)?));
                    }
                }
                Err(StoreError::Corrupt(format!("etcd deleted {key} at revision {r} but returned no previous value")))
            }
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let mut kv = self.kv();
        let resp = self.call("list", prefix, kv.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for item in resp.kvs() {
            let key = key_string(item)?;
            let v = versioned(item, &key)?;
            out.push((key, v));
        }
        // etcd returns a range in key order already; this keeps the contract explicit.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        let watcher = Watcher {
            client: self.client.watch_client(),
            prefix: prefix.to_owned(),
            endpoints: self.endpoints.clone(),
            timeout: self.request_timeout,
        };
        let (etcd_stream, next) = watcher.open(None).await?;
        let (tx, stream) = WatchStream::channel(WATCH_BUFFER);
        tokio::spawn(watcher.run(etcd_stream, next, tx));
        Ok(stream)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut maintenance = self.client.maintenance_client();
        self.call("status", "", maintenance.status()).await?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("etcd {}", self.endpoints)
    }
}

type EventSender = mpsc::Sender<Result<WatchEvent, StoreError>>;

/// Keeps one prefix watch going and feeds a [`WatchStream`].
struct Watcher {
    client: WatchClient,
    prefix: String,
    endpoints: String,
    timeout: Duration,
}

enum Feed {
    /// The consumer dropped the stream.
    Closed,
    /// The etcd stream broke; re-establish it from the revision reached.
    Broken(String),
    /// The watch cannot go on; the error was sent to the consumer.
    Ended,
}

impl Watcher {
    /// Opens an etcd watch (from `start`, or from now) and waits for etcd's "created" answer.
    /// Returns the stream and the first revision it will deliver.
    async fn open(&self, start: Option<i64>) -> Result<(etcd_client::WatchStream, i64), StoreError> {
        let mut options = WatchOptions::new().with_prefix().with_prev_key();
        if let Some(start) = start {
            options = options.with_start_revision(start);
        }
        let mut client = self.client.clone();
        let prefix = self.prefix.clone();
        let opened = async move {
            let mut stream = client.watch(prefix, Some(options)).await?;
            let first = stream.message().await?;
            Ok::<_, etcd_client::Error>((stream, first))
        };
        let (stream, first) = bounded(&self.endpoints, self.timeout, "watch", &self.prefix, opened).await?;
        let Some(first) = first else {
            return Err(StoreError::Unavailable(format!(
                "etcd at {}: watch {} closed before it was created",
                self.endpoints, self.prefix
            )));
        };
        if first.canceled() {
            return Err(self.canceled(&first));
        }
        if !first.created() || !first.events().is_empty() {
            return Err(StoreError::Backend(format!(
                "etcd at {}: watch {}: unexpected first answer (created={}, {} events)",
                self.endpoints,
                self.prefix,
                first.created(),
                first.events().len()
            )));
        }
        let next = match start {
            Some(start) => start,
            None => first.header().map(|h| h.revision()).unwrap_or(0) + 1,
        };
        Ok((stream, next))
    }

    fn canceled(&self, resp: &etcd_client::WatchResponse) -> StoreError {
        if resp.compact_revision() > 0 {
            StoreError::WatchLost(format!(
                "etcd at {}: watch {}: history was compacted up to revision {}; list and watch again",
                self.endpoints,
                self.prefix,
                resp.compact_revision()
            ))
        } else {
            StoreError::Backend(format!(
                "etcd at {}: watch {} was canceled: {}",
                self.endpoints,
                self.prefix,
                resp.cancel_reason()
            ))
        }
    }

    async fn run(self, mut stream: etcd_client::WatchStream, mut next: i64, tx: EventSender) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.feed(&mut stream, &mut next, &tx).await {
                Feed::Closed | Feed::Ended => return,
                Feed::Broken(why) => {
                    tracing::warn!(prefix = %self.prefix, endpoints = %self.endpoints, %why,
                        "etcd watch broke; re-establishing it from revision {next}");
                }
            }
            // Re-establish from `next`, with a growing pause, until it works or the consumer
            // goes away.
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(WATCH_MAX_BACKOFF);
                match self.open(Some(next)).await {
                    Ok((s, _)) => {
                        tracing::info!(prefix = %self.prefix, "etcd watch re-established from revision {next}");
                        stream = s;
                        backoff = Duration::from_millis(100);
                        break;
                    }
                    Err(e @ StoreError::WatchLost(_)) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(prefix = %self.prefix, error = %e, "etcd watch not re-established yet");
                    }
                }
            }
        }
    }

    /// Forwards events until the stream breaks or the consumer goes away.
    async fn feed(&self, stream: &mut etcd_client::WatchStream, next: &mut i64, tx: &EventSender) -> Feed {
        loop {
            let message = tokio::select! {
                _ = tx.closed() => return Feed::Closed,
                m = stream.message() => m,
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                Ok(None) => return Feed::Broken("etcd closed the watch stream".into()),
                Err(e) => return Feed::Broken(e.to_string()),
            };
            if resp.canceled() {
                let error = self.canceled(&resp);
                if matches!(error, StoreError::WatchLost(_)) {
                    let _ = tx.send(Err(error)).await;
                    return Feed::Ended;
                }
                return Feed::Broken(error.to_string());
            }
            for event in resp.events() {
                let converted = match convert_event(event) {
                    Ok(Some(ev)) => ev,
                    Ok(None) => continue,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return Feed::Ended;
                    }
                };
                let rev = i64::try_from(converted.revision()).unwrap_or(i64::MAX);
                *next = rev.saturating_add(1);
                if tx.send(Ok(converted)).await.is_err() {
                    return Feed::Closed;
                }
            }
        }
    }
}

fn convert_event(event: &etcd_client::Event) -> Result<Option<WatchEvent>, StoreError> {
    let Some(kv) = event.kv() else {
        return Ok(None);
    };
    let key = key_string(kv)?;
    let rev = revision(kv.mod_revision(), &key)?;
    Ok(Some(match event.event_type() {
        EventType::Put => {
            WatchEvent::Put { created: kv.version() == 1, value: kv.value().to_vec(), revision: rev, key }
        }
        EventType::Delete => {
            WatchEvent::Delete { previous: event.prev_kv().map(|p| p.value().to_vec()), revision: rev, key }
        }
    }))
}
