//! The container manager service: `container.*` on the shared queue
//! `containermgr`.
//!
//! | method | params | result |
//! |---|---|---|
//! | `register_node` | `[manager, address]` | `null` (idempotent) |
//! | `remove_node` | `[manager, address]` | `null` (idempotent) |
//! | `remove_all_nodes` | `[manager, cluster]` | `null`: removes the nodes of that cluster's hosts only |
//! | `node_registered` | `[manager, address]` | `null`, or a container manager error |
//! | `get_node_status` | `[manager, address]` | the Node object (`trivial`: `{"node", "status": "ok"}`) |
//! | `node_ready` | `[manager, address]` | whether the node's `Ready` condition is `True` |
//! | `cordon` | `[manager, address]` | whether the node was already unschedulable |
//! | `uncordon` | `[manager, address]` | `null` |
//! | `drain` | `[manager, address, {timeout_seconds, retry_seconds, policy}]` | `{"evicted", "forced", "skipped", "blocked_attempts"}` |
//!
//! Managers by type: `kubernetes` and `openshift` talk to a Kubernetes-compatible
//! API ([`kubernetes`]); `trivial` has no API behind it ([`trivial`]). The
//! node name is the host's address.
//!
//! Managers are loaded from storage at start-up ([`ContainerManagerService::watch`]),
//! kept current from the storage events `notify.storage.ContainerManagerConfig.*`
//! (the record is re-read, so a token never has to travel in an event), and a
//! name not known yet is looked up in storage on first use, so a call right
//! after a manager was saved never misses it.
//!
//! Errors: an unknown manager or a failing API call is a container manager
//! error (−20001) whose message names the manager, the node and what the API
//! answered; bad params are −32602. The token is never logged.

pub mod kubernetes;
pub mod trivial;

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use commissaire_core::{
    bus::Bus,
    jsonrpc::{CONTAINER_MANAGER_ERROR, RpcError},
    model::{Cluster, ContainerManagerConfig},
    storage_client::{StorageClient, StorageError},
};
use serde_json::Value;
use tokio::sync::RwLock;

pub use kubernetes::{DrainOptions, DrainPolicy, DrainReport, KubeManager, KubeOptions};

/// The routing keys the service answers.
pub const PATTERNS: &[&str] = &["container.*"];
/// Its shared queue.
pub const QUEUE: &str = "containermgr";
/// The storage events that keep the managers current.
pub const EVENTS: &str = "notify.storage.ContainerManagerConfig.*";

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManagerError {
    /// The manager (or the API behind it) refused or failed: −20001.
    #[error("{0}")]
    Manager(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("{0}")]
    Params(String),
}

impl From<ManagerError> for RpcError {
    fn from(err: ManagerError) -> Self {
        match err {
            ManagerError::Manager(m) => RpcError::new(CONTAINER_MANAGER_ERROR, m),
            ManagerError::Storage(m) => RpcError::internal(format!("storage: {m}")),
            ManagerError::Params(m) => RpcError::invalid_params(m),
        }
    }
}

/// A configured manager.
#[derive(Debug, Clone)]
pub enum Manager {
    Trivial,
    Kube(Arc<KubeManager>),
}

/// A manager as configured, or why its configuration cannot be used.
type Entry = Result<Manager, String>;

fn build(config: &ContainerManagerConfig) -> Entry {
    match config.kind.as_str() {
        "trivial" => Ok(Manager::Trivial),
        "kubernetes" | "openshift" => KubeManager::new(&config.name, &config.options)
            .map(|m| Manager::Kube(Arc::new(m)))
            .map_err(|e| format!("container manager {} is misconfigured: {e}", config.name)),
        other => Err(format!("container manager {} has the unknown type {other}", config.name)),
    }
}

pub struct ContainerManagerService {
    storage: StorageClient,
    managers: RwLock<HashMap<String, Entry>>,
}

impl ContainerManagerService {
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Self { storage: StorageClient::new(bus), managers: RwLock::new(HashMap::new()) }
    }

    /// Subscribes to the manager records' storage events, then loads every
    /// manager from storage (retrying while the storage service is not
    /// answering yet) in a task of its own. Call once, before serving.
    pub async fn watch(self: &Arc<Self>) -> Result<(), commissaire_core::bus::BusError> {
        let mut events = self.storage.bus().subscribe(&[EVENTS]).await?;
        let service = Arc::clone(self);
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                match service.load_all().await {
                    Ok(count) => {
                        tracing::info!(managers = count, "container managers loaded from storage");
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot load the container managers yet; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            }
        });
        let service = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let Some(service) = service.upgrade() else { break };
                let name = event.body.pointer("/model/name").and_then(Value::as_str).map(str::to_string);
                match name {
                    Some(name) => service.reload(&name).await,
                    None => tracing::warn!(key = %event.routing_key, "a container manager event without a name"),
                }
            }
        });
        Ok(())
    }

    /// Loads every manager record; returns how many.
    pub async fn load_all(&self) -> Result<usize, StorageError> {
        let configs = self.storage.list::<ContainerManagerConfig>().await?;
        let mut map = HashMap::new();
        for config in &configs {
            let entry = build(config);
            if let Err(reason) = &entry {
                tracing::warn!(manager = %config.name, %reason, "container manager not usable");
            }
            map.insert(config.name.clone(), entry);
        }
        *self.managers.write().await = map;
        Ok(configs.len())
    }

    /// Re-reads one manager's record (it was saved or deleted).
    pub async fn reload(&self, name: &str) {
        match self.storage.find::<ContainerManagerConfig>(name).await {
            Ok(Some(config)) => {
                let entry = build(&config);
                match &entry {
                    Ok(_) => tracing::info!(manager = %name, kind = %config.kind, "container manager (re)loaded"),
                    Err(reason) => tracing::warn!(manager = %name, %reason, "container manager not usable"),
                }
                self.managers.write().await.insert(name.to_string(), entry);
            }
            Ok(None) => {
                tracing::info!(manager = %name, "container manager forgotten");
                self.managers.write().await.remove(name);
            }
            // Forget it: the next call looks it up again.
            Err(err) => {
                tracing::warn!(manager = %name, error = %err, "cannot re-read the container manager");
                self.managers.write().await.remove(name);
            }
        }
    }

    /// The manager `name`: known, or looked up in storage now.
    pub async fn manager(&self, name: &str) -> Result<Manager, ManagerError> {
        if let Some(entry) = self.managers.read().await.get(name) {
            return entry.clone().map_err(ManagerError::Manager);
        }
        match self.storage.find::<ContainerManagerConfig>(name).await {
            Ok(Some(config)) => {
                let entry = build(&config);
                self.managers.write().await.insert(name.to_string(), entry.clone());
                entry.map_err(ManagerError::Manager)
            }
            Ok(None) => Err(ManagerError::Manager(format!("container manager {name} does not exist"))),
            Err(err) => Err(ManagerError::Storage(err.to_string())),
        }
    }

    async fn dispatch(&self, method: &str, params: &Value) -> Result<Value, ManagerError> {
        let items = params.as_array().ok_or_else(|| ManagerError::Params("params must be a list".into()))?;
        let text = |i: usize, what: &str| -> Result<String, ManagerError> {
            items
                .get(i)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| ManagerError::Params(format!("param {} must be the {what}", i + 1)))
        };
        let arity = |n: usize, shape: &str| -> Result<(), ManagerError> {
            if items.len() == n { Ok(()) } else { Err(ManagerError::Params(format!("params must be {shape}"))) }
        };
        let name = text(0, "container manager's name")?;
        match method {
            "remove_all_nodes" => {
                // `[manager]` alone is the original's form: refused for an API
                // manager, which would lose every node of every cluster.
                let manager = self.manager(&name).await?;
                if items.len() == 1 {
                    return match manager {
                        Manager::Trivial => Ok(Value::Null),
                        Manager::Kube(_) => Err(ManagerError::Params(
                            "params must be [manager, cluster]: only the cluster's own nodes are removed".into(),
                        )),
                    };
                }
                arity(2, "[manager, cluster]")?;
                let cluster = text(1, "cluster's name")?;
                if let Manager::Kube(kube) = manager {
                    let cluster = match self.storage.find::<Cluster>(&cluster).await {
                        Ok(Some(c)) => c,
                        Ok(None) => return Err(ManagerError::Params(format!("cluster {cluster} does not exist"))),
                        Err(e) => return Err(ManagerError::Storage(e.to_string())),
                    };
                    for address in &cluster.hostset {
                        kube.remove_node(address).await?;
                    }
                }
                Ok(Value::Null)
            }
            "drain" => {
                if items.len() != 2 && items.len() != 3 {
                    return Err(ManagerError::Params("params must be [manager, address, (options)]".into()));
                }
                let address = text(1, "node's address")?;
                let options = match items.get(2) {
                    None | Some(Value::Null) => DrainOptions::default(),
                    Some(Value::Object(o)) => DrainOptions::from_params(o).map_err(ManagerError::Params)?,
                    Some(_) => return Err(ManagerError::Params("param 3 must be an object of drain options".into())),
                };
                match self.manager(&name).await? {
                    Manager::Trivial => Ok(serde_json::to_value(DrainReport::default()).unwrap_or(Value::Null)),
                    Manager::Kube(kube) => {
                        let report = kube.drain(&address, &options).await?;
                        tracing::info!(manager = %name, node = %address, evicted = report.evicted.len(),
                            forced = report.forced.len(), skipped = report.skipped.len(), "node drained");
                        serde_json::to_value(report).map_err(|e| ManagerError::Manager(e.to_string()))
                    }
                }
            }
            "register_node" | "remove_node" | "node_registered" | "get_node_status" | "node_ready" | "cordon"
            | "uncordon" => {
                arity(2, "[manager, address]")?;
                let address = text(1, "node's address")?;
                let manager = self.manager(&name).await?;
                match manager {
                    Manager::Trivial => self.trivial(method, &name, &address).await,
                    Manager::Kube(kube) => Self::kube(&kube, method, &name, &address).await,
                }
            }
            other => Err(ManagerError::Manager(format!("unknown method container.{other}"))),
        }
    }

    async fn trivial(&self, method: &str, name: &str, address: &str) -> Result<Value, ManagerError> {
        match method {
            // The trivial manager's node set follows cluster membership, which
            // the caller has already changed.
            "register_node" | "remove_node" | "uncordon" => Ok(Value::Null),
            "cordon" => Ok(Value::Bool(false)),
            "node_registered" => {
                if trivial::registered(&self.storage, name, address).await? {
                    Ok(Value::Null)
                } else {
                    Err(ManagerError::Manager(format!("node {address} is not registered with {name}")))
                }
            }
            "node_ready" => Ok(Value::Bool(trivial::registered(&self.storage, name, address).await?)),
            _ => trivial::node_status(&self.storage, name, address).await,
        }
    }

    async fn kube(kube: &KubeManager, method: &str, name: &str, address: &str) -> Result<Value, ManagerError> {
        let outcome = match method {
            "register_node" => kube.register_node(address).await.map(|()| Value::Null),
            "remove_node" => kube.remove_node(address).await.map(|()| Value::Null),
            "node_registered" => kube.node_registered(address).await.map(|()| Value::Null),
            "node_ready" => kube.node_ready(address).await.map(Value::Bool),
            "cordon" => kube.cordon(address).await.map(Value::Bool),
            "uncordon" => kube.uncordon(address).await.map(|()| Value::Null),
            _ => kube.node_status(address).await,
        };
        match &outcome {
            Ok(_) if matches!(method, "register_node" | "remove_node" | "cordon" | "uncordon") => {
                tracing::info!(manager = %name, node = %address, method, "node call done");
            }
            Err(err) => tracing::warn!(manager = %name, node = %address, method, error = %err, "node call failed"),
            Ok(_) => {}
        }
        outcome
    }
}

#[async_trait]
impl commissaire_core::bus::Handler for ContainerManagerService {
    async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        const METHODS: &[&str] = &[
            "register_node",
            "remove_node",
            "remove_all_nodes",
            "node_registered",
            "get_node_status",
            "node_ready",
            "cordon",
            "uncordon",
            "drain",
        ];
        if !METHODS.contains(&method) {
            return Err(RpcError::method_not_found(method));
        }
        self.dispatch(method, &params).await.map_err(RpcError::from)
    }
}
