//! The `trivial` manager: no API behind it. It keeps no state of its own — a
//! node is registered with a trivial manager exactly when its host is a member
//! of a cluster that uses the manager — so any number of instances agree and a
//! restart loses nothing. Cordon, drain and uncordon do nothing; a registered
//! node is always ready.

use commissaire_core::{model::Cluster, storage_client::StorageClient};
use serde_json::{Value, json};

use super::ManagerError;

/// Whether the trivial manager `name` has the node `address`.
pub async fn registered(storage: &StorageClient, name: &str, address: &str) -> Result<bool, ManagerError> {
    let clusters = storage.list::<Cluster>().await.map_err(|e| ManagerError::Storage(e.to_string()))?;
    Ok(clusters.iter().any(|c| c.container_manager == name && c.hostset.iter().any(|h| h == address)))
}

/// `{"node": <address>, "status": "ok"}` for a registered node.
pub async fn node_status(storage: &StorageClient, name: &str, address: &str) -> Result<Value, ManagerError> {
    if registered(storage, name, address).await? {
        Ok(json!({"node": address, "status": "ok"}))
    } else {
        Err(ManagerError::Manager(format!("node {address} is not registered with {name}")))
    }
}
