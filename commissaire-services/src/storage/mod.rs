//! The storage service: `storage.get`, `save`, `delete`, `list` and
//! `list_store_handlers` over the bus, on the stores configured by
//! `storage_handlers`.
//!
//! Invariants:
//! * every document is parsed and validated before anything is written, so a
//!   request with one bad document writes none of them;
//! * host credentials are sealed with the secrets key before they reach a store
//!   and never appear in events;
//! * every successful write or delete publishes
//!   `notify.storage.<Class>.<created|updated|deleted>` with
//!   `{"event","class","model"}`, the model in its safe form;
//! * a save or delete may carry `expected_revision` (0 = must not exist yet); a
//!   stale one fails with code 409 and writes nothing, which is how callers
//!   update a record without losing a concurrent update.

pub mod audit;
pub mod handlers;
pub mod keys;

use std::{borrow::Cow, collections::HashMap, sync::Arc};

use async_trait::async_trait;
use commissaire_core::{
    bus::{Bus, Handler},
    jsonrpc::{self, RpcError},
    model::{ModelType, Unknown, is_valid_address, is_valid_name},
    secrets::SecretsKey,
};
use serde_json::{Value, json};

use crate::store::{Expect, Store, StoreError, Versioned};
use handlers::HandlerSpec;

/// The routing keys the storage service answers.
pub const PATTERNS: &[&str] = &["storage.*"];
/// The shared queue its instances consume.
pub const QUEUE: &str = "storage";

/// What [`StorageService::reseal_secrets`] found and did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResealReport {
    /// Credentials sealed again with the current key.
    pub resealed: usize,
    /// Credentials already sealed with the current key.
    pub current: usize,
    /// Credentials (or stores) that could not be resealed; see the log.
    pub failed: usize,
}

impl ResealReport {
    /// Logs the outcome (one line, for the operator following a rotation).
    pub fn log(&self) {
        tracing::info!(
            resealed = self.resealed,
            current = self.current,
            failed = self.failed,
            "host credentials resealed with the current secrets key"
        );
    }
}

/// A configured handler with its open store.
pub struct OpenHandler {
    pub spec: HandlerSpec,
    pub store: Arc<dyn Store>,
}

/// See the module documentation.
pub struct StorageService {
    handlers: Vec<OpenHandler>,
    by_model: HashMap<ModelType, usize>,
    by_name: HashMap<String, usize>,
    secrets: SecretsKey,
    bus: Arc<dyn Bus>,
    audit: audit::AuditLog,
}

impl StorageService {
    pub fn new(handlers: Vec<OpenHandler>, secrets: SecretsKey, bus: Arc<dyn Bus>) -> Self {
        let mut by_model = HashMap::new();
        let mut by_name = HashMap::new();
        for (index, handler) in handlers.iter().enumerate() {
            by_name.insert(handler.spec.name.clone(), index);
            for model in &handler.spec.models {
                by_model.insert(*model, index);
            }
        }
        // Credentials live beside their hosts; so do watcher records unless a
        // handler claims them.
        if let Some(&host_store) = by_model.get(&ModelType::Host) {
            by_model.insert(ModelType::HostCreds, host_store);
            by_model.entry(ModelType::WatcherRecord).or_insert(host_store);
        }
        Self { handlers, by_model, by_name, secrets, bus, audit: audit::AuditLog::new(audit::DEFAULT_RETENTION) }
    }

    /// The id of the key that seals (not secret).
    pub fn secrets_key_id(&self) -> &str {
        self.secrets.id()
    }

    /// Keeps at most about `entries` audit entries (see [`audit`]).
    pub fn with_audit_retention(mut self, entries: usize) -> Self {
        self.audit = audit::AuditLog::new(entries);
        self
    }

    /// Seals again, with the current key, every stored host credential that a
    /// previous key sealed (key rotation). Each rewrite is compare-and-swap on
    /// the revision read, so a credential saved meanwhile (already under the
    /// current key) is left as it is. Safe to run from several instances at once.
    pub async fn reseal_secrets(&self) -> ResealReport {
        let mut report = ResealReport::default();
        let prefix = keys::host_creds_prefix();
        // Credentials live beside their hosts, which a `source` may put in any handler.
        for handler in &self.handlers {
            let entries = match handler.store.list(&prefix).await {
                Ok(entries) => entries,
                Err(err) => {
                    tracing::error!(handler = %handler.spec.name, error = %err, "cannot list credentials to reseal");
                    report.failed += 1;
                    continue;
                }
            };
            for (key, stored) in entries {
                if !self.secrets.needs_reseal(&stored.value) {
                    report.current += 1;
                    continue;
                }
                let outcome = match self.secrets.open(&key, &stored.value) {
                    Ok(plain) => handler
                        .store
                        .put(&key, self.secrets.seal(&key, &plain), Expect::Revision(stored.revision))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Err(err) => Err(err.to_string()),
                };
                match outcome {
                    Ok(()) => report.resealed += 1,
                    // Rewritten or deleted since it was listed: whatever is there now
                    // was written with the current key.
                    Err(_)
                        if handler.store.get(&key).await.is_ok_and(|now| {
                            now.is_none_or(|v| v.revision != stored.revision && !self.secrets.needs_reseal(&v.value))
                        }) =>
                    {
                        report.current += 1
                    }
                    Err(err) => {
                        tracing::error!(key, error = %err, "cannot reseal a host credential");
                        report.failed += 1;
                    }
                }
            }
        }
        report
    }

    /// The store of the audit log: the one holding clusters, else the first.
    fn audit_store(&self) -> Result<&Arc<dyn Store>, RpcError> {
        self.by_model
            .get(&ModelType::Cluster)
            .map(|&i| &self.handlers[i].store)
            .or_else(|| self.handlers.first().map(|h| &h.store))
            .ok_or_else(|| RpcError::invalid_params("no storage handler is configured"))
    }

    async fn audit_append(&self, params: &Value) -> Result<Value, RpcError> {
        let entry = self.audit.append(self.audit_store()?.as_ref(), params).await?;
        if let Err(err) = self.bus.publish("notify.audit.entry", &entry).await {
            tracing::warn!(error = %err, "could not publish the audit entry");
        }
        Ok(entry)
    }

    /// Hosts by status and operation records by kind and status, for metrics:
    /// `{"hosts": {status: n}, "operations": {kind: {status: n}}}`.
    async fn counts(&self) -> Result<Value, RpcError> {
        let mut hosts = serde_json::Map::new();
        let host_store = self.store_for(ModelType::Host, &Value::Null)?;
        let prefix = keys::list_prefix(ModelType::Host).unwrap_or_default();
        for (key, stored) in host_store.list(&prefix).await.map_err(|e| store_error(ModelType::Host, "*", e))? {
            if let Ok(doc) = self.decode(ModelType::Host, &key, &stored) {
                let status = doc.get("status").and_then(Value::as_str).unwrap_or("").to_string();
                let n = hosts.get(&status).and_then(Value::as_i64).unwrap_or(0);
                hosts.insert(status, json!(n + 1));
            }
        }
        let mut operations = serde_json::Map::new();
        for (t, kind) in [
            (ModelType::ClusterRestart, "restart"),
            (ModelType::ClusterUpgrade, "upgrade"),
            (ModelType::ClusterDeploy, "deploy"),
        ] {
            let mut by_status = serde_json::Map::new();
            let store = self.store_for(t, &Value::Null)?;
            let entries = store.list(&format!("{}cluster/", keys::ROOT)).await.map_err(|e| store_error(t, "*", e))?;
            for (key, stored) in entries {
                if !key.ends_with(&format!("/{kind}")) {
                    continue;
                }
                if let Ok(doc) = self.decode(t, &key, &stored) {
                    let status = doc.get("status").and_then(Value::as_str).unwrap_or("").to_string();
                    let n = by_status.get(&status).and_then(Value::as_i64).unwrap_or(0);
                    by_status.insert(status, json!(n + 1));
                }
            }
            operations.insert(kind.into(), Value::Object(by_status));
        }
        Ok(json!({"hosts": hosts, "operations": operations}))
    }

    /// The store holding `t` (or, for a host with a `source`, that handler's).
    fn store_for(&self, t: ModelType, doc: &Value) -> Result<&Arc<dyn Store>, RpcError> {
        if t == ModelType::Host
            && let Some(source) = doc.get("source").and_then(Value::as_str).filter(|s| !s.is_empty())
        {
            return self
                .by_name
                .get(source)
                .map(|&i| &self.handlers[i].store)
                .ok_or_else(|| RpcError::invalid_params(format!("Host.source: no storage handler named {source:?}")));
        }
        self.by_model
            .get(&t)
            .map(|&i| &self.handlers[i].store)
            .ok_or_else(|| RpcError::invalid_params(format!("no storage handler is configured for {}", t.name())))
    }

    fn encode(&self, t: ModelType, key: &str, full: &Value) -> Vec<u8> {
        let plain = serde_json::to_vec(full).unwrap_or_default();
        if t.is_secret() { self.secrets.seal(key, &plain) } else { plain }
    }

    fn decode(&self, t: ModelType, key: &str, stored: &Versioned) -> Result<Value, RpcError> {
        let plain: Cow<[u8]> = if t.is_secret() {
            Cow::Owned(self.secrets.open(key, &stored.value).map_err(|e| {
                tracing::error!(key, error = %e, "cannot open sealed record");
                RpcError::internal(format!("stored {} for this host cannot be opened: {e}", t.name()))
            })?)
        } else {
            Cow::Borrowed(&stored.value)
        };
        let (_, full) = t
            .parse_stored(&plain)
            .map_err(|e| RpcError::new(jsonrpc::INVALID_REQUEST, format!("stored record {key} is invalid: {e}")))?;
        Ok(full)
    }

    async fn announce(&self, t: ModelType, event: &str, full: &Value) {
        let Some(model) = t.safe_json(full) else { return };
        let routing_key = format!("notify.storage.{}.{event}", t.name());
        let body = json!({"event": event, "class": t.name(), "model": model});
        // The write already happened; a lost event is logged, not undone.
        if let Err(err) = self.bus.publish(&routing_key, &body).await {
            tracing::warn!(routing_key, error = %err, "could not publish storage event");
        }
    }

    async fn save(&self, params: &Value) -> Result<Value, RpcError> {
        let t = model_type(params)?;
        let (docs, many) = documents(params)?;
        let expect = expectation(params, many)?;
        // Parse everything first: one bad document writes nothing.
        let mut parsed = Vec::with_capacity(docs.len());
        for doc in &docs {
            let (pk, full) = t.parse(doc, Unknown::Ignore).map_err(validation_error)?;
            parsed.push((pk, full, doc));
        }
        let mut saved = Vec::with_capacity(parsed.len());
        for (pk, full, doc) in parsed {
            let store = self.store_for(t, doc)?;
            let key = keys::record_key(t, &pk);
            let (revision, created) =
                store.put(&key, self.encode(t, &key, &full), expect).await.map_err(|e| store_error(t, &pk, e))?;
            self.announce(t, if created { "created" } else { "updated" }, &full).await;
            tracing::debug!(model = t.name(), key = %pk, revision, created, "saved");
            saved.push(full);
        }
        Ok(if many { Value::Array(saved) } else { saved.pop().unwrap_or(Value::Null) })
    }

    async fn get(&self, params: &Value) -> Result<Value, RpcError> {
        let t = model_type(params)?;
        let (docs, many) = documents(params)?;
        let with_revision = wants_revision(params);
        let mut found = Vec::with_capacity(docs.len());
        for doc in &docs {
            let pk = identity(t, doc)?;
            let key = keys::record_key(t, &pk);
            let stored = self
                .store_for(t, doc)?
                .get(&key)
                .await
                .map_err(|e| store_error(t, &pk, e))?
                .ok_or_else(|| not_found(t, &pk, doc))?;
            let full = self.decode(t, &key, &stored)?;
            found.push(reply_item(full, stored.revision, with_revision));
        }
        Ok(if many { Value::Array(found) } else { found.pop().unwrap_or(Value::Null) })
    }

    async fn delete(&self, params: &Value) -> Result<Value, RpcError> {
        let t = model_type(params)?;
        let (docs, many) = documents(params)?;
        let expect = expectation(params, many)?;
        let mut targets = Vec::with_capacity(docs.len());
        for doc in &docs {
            targets.push((identity(t, doc)?, doc));
        }
        for (pk, doc) in targets {
            let key = keys::record_key(t, &pk);
            let previous = self
                .store_for(t, doc)?
                .delete(&key, expect)
                .await
                .map_err(|e| store_error(t, &pk, e))?
                .ok_or_else(|| not_found(t, &pk, doc))?;
            // The event carries what was deleted; an unreadable old value still
            // announces the key.
            let full = self.decode(t, &key, &previous).unwrap_or_else(|_| json!({t.primary_key_field(): pk}));
            self.announce(t, "deleted", &full).await;
        }
        Ok(Value::Null)
    }

    async fn list(&self, params: &Value) -> Result<Value, RpcError> {
        let name = params
            .get("model_type_name")
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid_params("model_type_name is required"))?;
        let t = ModelType::from_list_name(name).ok_or_else(|| {
            RpcError::invalid_params(format!(
                "{name:?} is not a list model (Hosts, Clusters, Networks, ContainerManagerConfigs or WatcherRecords)"
            ))
        })?;
        let prefix =
            keys::list_prefix(t).ok_or_else(|| RpcError::invalid_params(format!("{name} cannot be listed")))?;
        let store = self.store_for(t, &Value::Null)?;
        let entries = store.list(&prefix).await.map_err(|e| store_error(t, "*", e))?;
        if params.get("names_only").and_then(Value::as_bool) == Some(true) {
            // The primary keys, from the store keys alone: nothing is decoded, which
            // keeps `GET /clusters` cheap however many clusters there are.
            let names = entries.iter().filter_map(|(key, _)| key.strip_prefix(prefix.as_str()));
            return Ok(Value::Array(names.map(|n| Value::String(n.to_string())).collect()));
        }
        let with_revision = wants_revision(params);
        let mut items = Vec::with_capacity(entries.len());
        for (key, stored) in entries {
            match self.decode(t, &key, &stored) {
                Ok(full) => items.push(reply_item(full, stored.revision, with_revision)),
                // One damaged record must not hide all the others.
                Err(err) => tracing::warn!(key, error = %err.message, "skipping invalid stored record in list"),
            }
        }
        Ok(Value::Array(items))
    }

    fn list_store_handlers(&self) -> Value {
        Value::Array(
            self.handlers
                .iter()
                .map(|h| {
                    let mut config = h.spec.config.clone();
                    config.insert("name".into(), Value::String(h.spec.name.clone()));
                    // Never hand out store credentials.
                    for secret in ["password", "certificate_key_path"] {
                        if config.contains_key(secret) {
                            config.insert(secret.into(), Value::String("<redacted>".into()));
                        }
                    }
                    let mut models: Vec<&str> = h.spec.models.iter().map(|m| m.name()).collect();
                    models.sort_unstable();
                    json!({"handler_type": h.spec.kind.handler_type(), "config": config, "model_types": models})
                })
                .collect(),
        )
    }

    /// Checks every store answers (for readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        for handler in &self.handlers {
            handler.store.ping().await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Handler for StorageService {
    async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "save" => self.save(&params).await,
            "get" => self.get(&params).await,
            "delete" => self.delete(&params).await,
            "list" => self.list(&params).await,
            "list_store_handlers" => Ok(self.list_store_handlers()),
            "audit_append" => self.audit_append(&params).await,
            "audit_list" => self.audit.list(self.audit_store()?.as_ref(), &params).await,
            "counts" => self.counts().await,
            // Readiness: every store answers.
            "ping" => self
                .ping()
                .await
                .map(|()| Value::Null)
                .map_err(|e| RpcError::internal(format!("store unavailable: {e}"))),
            other => Err(RpcError::method_not_found(other)),
        }
    }
}

fn model_type(params: &Value) -> Result<ModelType, RpcError> {
    let name = params
        .get("model_type_name")
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params("model_type_name is required"))?;
    ModelType::from_name(name).ok_or_else(|| RpcError::invalid_params(format!("unknown model type {name:?}")))
}

/// The documents of a request: `model_json_data` as an object, a JSON string of
/// one, or a list of either. The flag says whether a list was sent.
fn documents(params: &Value) -> Result<(Vec<Value>, bool), RpcError> {
    fn one(value: &Value) -> Result<Value, RpcError> {
        let value = match value {
            Value::String(text) => serde_json::from_str(text)
                .map_err(|e| RpcError::invalid_params(format!("model_json_data is not JSON: {e}")))?,
            other => other.clone(),
        };
        if value.is_object() { Ok(value) } else { Err(RpcError::invalid_params("model_json_data must be an object")) }
    }
    match params.get("model_json_data") {
        None => Err(RpcError::invalid_params("model_json_data is required")),
        Some(Value::Array(items)) => Ok((items.iter().map(one).collect::<Result<_, _>>()?, true)),
        Some(value) => Ok((vec![one(value)?], false)),
    }
}

fn expectation(params: &Value, many: bool) -> Result<Expect, RpcError> {
    match params.get("expected_revision") {
        None | Some(Value::Null) => Ok(Expect::Any),
        Some(_) if many => Err(RpcError::invalid_params("expected_revision applies to a single document, not a list")),
        Some(value) => match value.as_u64() {
            Some(0) => Ok(Expect::Absent),
            Some(revision) => Ok(Expect::Revision(revision)),
            None => Err(RpcError::invalid_params("expected_revision must be a non-negative integer")),
        },
    }
}

/// The primary key of identifying data, checked so no odd string reaches a key.
fn identity(t: ModelType, doc: &Value) -> Result<String, RpcError> {
    let field = t.primary_key_field();
    let pk = doc
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_params(format!("{}.{field} is required", t.name())))?;
    let valid = if field == "address" { is_valid_address(pk) } else { is_valid_name(pk) };
    if !valid {
        return Err(RpcError::invalid_params(format!("{}.{field}: {pk:?} is not a valid {field}", t.name())));
    }
    Ok(pk.to_string())
}

/// Whether a `get` or `list` asks for each record's revision (`with_revision`).
fn wants_revision(params: &Value) -> bool {
    params.get("with_revision").and_then(Value::as_bool).unwrap_or(false)
}

/// A record as `get` and `list` answer it: alone, or as `{"model", "revision"}`
/// when the caller asked for revisions.
fn reply_item(full: Value, revision: u64, with_revision: bool) -> Value {
    if with_revision { json!({"model": full, "revision": revision}) } else { full }
}

fn validation_error(err: commissaire_core::model::ValidationError) -> RpcError {
    RpcError::invalid_params(err.to_string()).with_data(json!({"errors": err.errors}))
}

fn not_found(t: ModelType, pk: &str, doc: &Value) -> RpcError {
    // Echo only the key of a secret model, never what the caller sent with it.
    let echoed = if t.is_secret() { json!({t.primary_key_field(): pk}) } else { doc.clone() };
    RpcError::not_found(format!("{} {pk} does not exist", t.name()))
        .with_data(json!({"model_type_name": t.name(), "model_json_data": [echoed]}))
}

fn store_error(t: ModelType, pk: &str, err: StoreError) -> RpcError {
    match err {
        StoreError::Conflict { .. } => {
            RpcError::conflict(format!("{} {pk} was changed by someone else (revision mismatch)", t.name()))
        }
        other => {
            tracing::error!(model = t.name(), key = pk, error = %other, "store failure");
            RpcError::internal(format!("store failure: {other}"))
        }
    }
}

/// Opens the store of every configured handler, failing with a clear message
/// when one is misconfigured or unreachable.
pub async fn open_handlers(specs: Vec<HandlerSpec>) -> Result<Vec<OpenHandler>, StoreError> {
    let mut handlers = Vec::with_capacity(specs.len());
    for spec in specs {
        let mut store = open_store(&spec).await?;
        match spec.config.get("namespace") {
            None | Some(Value::Null) => {}
            Some(Value::String(ns)) if ns.starts_with('/') && !ns.contains("//") => {
                store = Arc::new(crate::store::namespaced::Namespaced::new(store, ns.clone()));
            }
            Some(_) => {
                return Err(StoreError::Config(format!(
                    "storage handler {:?}: namespace must be a key prefix starting with '/', e.g. \"/staging\"",
                    spec.name
                )));
            }
        }
        tracing::info!(handler = %spec.name, store = %store.describe(), "storage handler ready");
        handlers.push(OpenHandler { spec, store });
    }
    Ok(handlers)
}

async fn open_store(spec: &HandlerSpec) -> Result<Arc<dyn Store>, StoreError> {
    use crate::store::{
        embedded::EmbeddedStore,
        etcd::{EtcdConfig, EtcdStore},
    };
    use handlers::StoreKind;

    let text = |member: &str| -> Result<Option<String>, StoreError> {
        match spec.config.get(member) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(StoreError::Config(format!("storage handler {:?}: {member} must be a string", spec.name))),
        }
    };
    match spec.kind {
        StoreKind::Etcd => {
            let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            // server_url may be one URL or a list; without it, the etcd
            // client's conventional ETCD_* variables apply.
            let (endpoints, from_env) = match spec.config.get("server_url") {
                Some(Value::String(url)) => (vec![url.clone()], false),
                Some(Value::Array(urls)) => (
                    urls.iter().map(|u| u.as_str().map(str::to_string)).collect::<Option<Vec<_>>>().ok_or_else(
                        || {
                            StoreError::Config(format!(
                                "storage handler {:?}: server_url must be a URL or a list of URLs",
                                spec.name
                            ))
                        },
                    )?,
                    false,
                ),
                None => match env("ETCD_MACHINES") {
                    Some(machines) => (machines.split(',').map(|s| s.trim().to_string()).collect(), true),
                    None => (vec!["http://127.0.0.1:2379".to_string()], false),
                },
                Some(_) => {
                    return Err(StoreError::Config(format!(
                        "storage handler {:?}: server_url must be a URL or a list of URLs",
                        spec.name
                    )));
                }
            };
            let mut config = EtcdConfig::new(endpoints);
            let pick = |member: &str, var: &str| -> Result<Option<String>, StoreError> {
                Ok(text(member)?.or_else(|| if from_env { env(var) } else { None }))
            };
            config.cert_file = pick("certificate_path", "ETCD_TLSPEM")?.map(Into::into);
            config.key_file = pick("certificate_key_path", "ETCD_TLSKEY")?.map(Into::into);
            config.ca_file = pick("certificate_ca_path", "ETCD_CACERT")?.map(Into::into);
            config.username = pick("username", "ETCD_USERNAME")?;
            config.password = pick("password", "ETCD_PASSWORD")?;
            if config.cert_file.is_some() != config.key_file.is_some() {
                return Err(StoreError::Config(format!(
                    "storage handler {:?}: certificate_path and certificate_key_path must be given together",
                    spec.name
                )));
            }
            Ok(Arc::new(EtcdStore::connect(config).await?))
        }
        StoreKind::Embedded => {
            let path = text("path")?.ok_or_else(|| {
                StoreError::Config(format!(
                    "storage handler {:?}: the embedded store needs \"path\" (its database file)",
                    spec.name
                ))
            })?;
            Ok(Arc::new(EmbeddedStore::open(path).await?))
        }
    }
}
