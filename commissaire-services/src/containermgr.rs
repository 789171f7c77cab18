//! The container manager service: `container.register_node`, `remove_node`,
//! `remove_all_nodes`, `node_registered` and `get_node_status`, each with params
//! `[manager_name, address]` (`[manager_name]` for `remove_all_nodes`).
//!
//! Managers are looked up in storage on every call, so a saved or deleted
//! manager takes effect at once on every instance. Only the `trivial` type is
//! served so far: it keeps no state of its own — a node is registered with a
//! trivial manager exactly when its host is a member of a cluster that uses the
//! manager — so any number of instances agree and a restart loses nothing. The
//! `openshift` and `kubernetes` types answer with a container manager error
//! saying they are not available yet.

use std::sync::Arc;

use async_trait::async_trait;
use commissaire_core::{
    bus::Bus,
    jsonrpc::{CONTAINER_MANAGER_ERROR, RpcError},
    model::{Cluster, ContainerManagerConfig},
    storage_client::{StorageClient, StorageError},
};
use serde_json::{Value, json};

/// The routing keys the service answers.
pub const PATTERNS: &[&str] = &["container.*"];
/// Its shared queue.
pub const QUEUE: &str = "containermgr";

pub struct ContainerManagerService {
    storage: StorageClient,
}

impl ContainerManagerService {
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Self { storage: StorageClient::new(bus) }
    }

    async fn manager(&self, name: &str) -> Result<ContainerManagerConfig, RpcError> {
        match self.storage.get::<ContainerManagerConfig>(name).await {
            Ok(config) if config.kind == "trivial" => Ok(config),
            Ok(config) => Err(manager_error(format!(
                "container manager {name} is of type {}, which is not available yet (only trivial is)",
                config.kind
            ))),
            Err(StorageError::NotFound { .. }) => {
                Err(manager_error(format!("container manager {name} does not exist")))
            }
            Err(err) => Err(RpcError::internal(format!("storage: {err}"))),
        }
    }

    /// Whether the trivial manager `name` has the node `address`.
    async fn registered(&self, name: &str, address: &str) -> Result<bool, RpcError> {
        let clusters = self.storage.list::<Cluster>().await.map_err(|e| RpcError::internal(format!("storage: {e}")))?;
        Ok(clusters.iter().any(|c| c.container_manager == name && c.hostset.iter().any(|h| h == address)))
    }
}

fn manager_error(message: String) -> RpcError {
    RpcError::new(CONTAINER_MANAGER_ERROR, message)
}

fn args(params: &Value, count: usize) -> Result<Vec<String>, RpcError> {
    let list = params
        .as_array()
        .filter(|items| items.len() == count)
        .and_then(|items| items.iter().map(|i| i.as_str().map(str::to_string)).collect::<Option<Vec<_>>>());
    list.ok_or_else(|| RpcError::invalid_params(format!("params must be a list of {count} strings")))
}

#[async_trait]
impl commissaire_core::bus::Handler for ContainerManagerService {
    async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            // The trivial manager's node set follows cluster membership, which
            // the caller has already changed.
            "register_node" | "remove_node" => {
                let [name, _address] =
                    <[String; 2]>::try_from(args(&params, 2)?).map_err(|_| RpcError::internal("arity"))?;
                self.manager(&name).await?;
                Ok(Value::Null)
            }
            "remove_all_nodes" => {
                let [name] = <[String; 1]>::try_from(args(&params, 1)?).map_err(|_| RpcError::internal("arity"))?;
                self.manager(&name).await?;
                Ok(Value::Null)
            }
            "node_registered" => {
                let [name, address] =
                    <[String; 2]>::try_from(args(&params, 2)?).map_err(|_| RpcError::internal("arity"))?;
                self.manager(&name).await?;
                if self.registered(&name, &address).await? {
                    Ok(Value::Null)
                } else {
                    Err(manager_error(format!("node {address} is not registered with {name}")))
                }
            }
            "get_node_status" => {
                let [name, address] =
                    <[String; 2]>::try_from(args(&params, 2)?).map_err(|_| RpcError::internal("arity"))?;
                self.manager(&name).await?;
                if self.registered(&name, &address).await? {
                    Ok(json!({"node": address, "status": "ok"}))
                } else {
                    Err(manager_error(format!("node {address} is not registered with {name}")))
                }
            }
            other => Err(RpcError::method_not_found(other)),
        }
    }
}
