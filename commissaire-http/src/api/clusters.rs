//! `/api/v0/clusters`, `/api/v0/cluster/{name}` and its member routes.

use std::collections::BTreeSet;

use commissaire_core::model::{
    Cluster, ClusterDeploy, ClusterRestart, ClusterUpgrade, ContainerManagerConfig, Host, Model, Network, Unknown,
};
use serde_json::{Map, Value, json};

use super::{Api, ApiError, ApiResult, CAS_ATTEMPTS, Reply, reject_unknown, same_as_path};

/// Host statuses that may join a cluster.
const READY_TO_JOIN: &[&str] = &["active", "disassociated"];

impl Api {
    pub async fn list_clusters(&self) -> ApiResult {
        let names = self.storage.list_names::<Cluster>().await?;
        Ok(Reply::ok(json!(names)))
    }

    pub async fn get_cluster(&self, name: &str) -> ApiResult {
        let cluster = self.storage.get::<Cluster>(name).await?;
        let mut statuses = Vec::with_capacity(cluster.hostset.len());
        for address in &cluster.hostset {
            // A member whose record is gone counts as unavailable.
            let status = self.storage.find::<Host>(address).await?.map(|h| h.status).unwrap_or_default();
            statuses.push(status);
        }
        let refs: Vec<&str> = statuses.iter().map(String::as_str).collect();
        let (status, hosts) = Cluster::status_from(&refs);
        let mut body = cluster.to_full_json();
        body["status"] = json!(status);
        body["hosts"] = json!(hosts);
        Ok(Reply::ok(body))
    }

    /// Creates a cluster; re-creating it with the same attributes is a no-op
    /// (201), with different ones a conflict (409). Never resets the members.
    pub async fn put_cluster(&self, name: &str, body: &Map<String, Value>) -> ApiResult {
        reject_unknown(body, &["name", "network", "container_manager"])?;
        same_as_path(body, "name", name)?;
        let mut doc = body.clone();
        doc.insert("name".into(), Value::String(name.to_string()));
        let wanted = Cluster::from_json(&Value::Object(doc), Unknown::Reject)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if let Some(existing) = self.storage.find::<Cluster>(name).await? {
            return same_cluster(existing, &wanted);
        }
        if self.storage.find::<Network>(&wanted.network).await?.is_none() {
            return Err(ApiError::conflict(format!("network {} does not exist", wanted.network)));
        }
        if !wanted.container_manager.is_empty()
            && self.storage.find::<ContainerManagerConfig>(&wanted.container_manager).await?.is_none()
        {
            return Err(ApiError::conflict(format!("container manager {} does not exist", wanted.container_manager)));
        }
        match self.storage.save_if(&wanted, 0).await {
            Ok(saved) => {
                tracing::info!(cluster = %name, "cluster created");
                Ok(Reply::created(saved.to_safe_json()))
            }
            // Created concurrently: idempotent if it is the same.
            Err(commissaire_core::storage_client::StorageError::Conflict(_)) => {
                same_cluster(self.storage.get::<Cluster>(name).await?, &wanted)
            }
            Err(err) => Err(err.into()),
        }
    }

    pub async fn delete_cluster(&self, name: &str) -> ApiResult {
        let cluster = self.storage.get::<Cluster>(name).await?;
        if let Some(operation) = self.running_operation(name).await? {
            return Err(ApiError::conflict(format!(
                "cluster {name} has a {operation} in process; wait for it or abort it first"
            )));
        }
        if !cluster.container_manager.is_empty() {
            // Only this cluster's nodes, never the manager's others.
            for address in &cluster.hostset {
                self.call_service("containermgr", "container.remove_node", json!([cluster.container_manager, address]))
                    .await?;
            }
        }
        self.storage.delete::<Cluster>(name).await?;
        tracing::info!(cluster = %name, "cluster deleted");
        Ok(Reply::ok(json!([])))
    }

    /// The kind of operation running on the cluster, if one is `in_process`.
    pub(crate) async fn running_operation(&self, name: &str) -> Result<Option<&'static str>, ApiError> {
        if self.storage.find::<ClusterRestart>(name).await?.is_some_and(|r| r.status == "in_process") {
            return Ok(Some("restart"));
        }
        if self.storage.find::<ClusterUpgrade>(name).await?.is_some_and(|r| r.status == "in_process") {
            return Ok(Some("upgrade"));
        }
        if self.storage.find::<ClusterDeploy>(name).await?.is_some_and(|r| r.status == "in_process") {
            return Ok(Some("deploy"));
        }
        Ok(None)
    }

    pub async fn list_cluster_members(&self, name: &str) -> ApiResult {
        let cluster = self.storage.get::<Cluster>(name).await?;
        Ok(Reply::ok(json!(cluster.hostset)))
    }

    pub async fn check_cluster_member(&self, name: &str, host: &str) -> ApiResult {
        let cluster = self.storage.get::<Cluster>(name).await?;
        if cluster.hostset.iter().any(|h| h == host) {
            Ok(Reply::ok(json!([host])))
        } else {
            Err(ApiError::not_found(format!("host {host} is not a member of cluster {name}")))
        }
    }

    /// Replaces the member list if it still is `old` (compare-and-swap by the
    /// client): `{"old": [...], "new": [...]}`.
    pub async fn put_cluster_members(&self, name: &str, body: &Map<String, Value>) -> ApiResult {
        reject_unknown(body, &["old", "new"])?;
        let list = |field: &str| -> Result<BTreeSet<String>, ApiError> {
            body.get(field)
                .and_then(Value::as_array)
                .and_then(|items| items.iter().map(|i| i.as_str().map(str::to_string)).collect::<Option<BTreeSet<_>>>())
                .ok_or_else(|| ApiError::bad_request(format!("{field} must be a list of host addresses")))
        };
        let (old, new) = (list("old")?, list("new")?);
        let current = self.storage.get_revisioned::<Cluster>(name).await?;
        let current_set: BTreeSet<String> = current.model.hostset.iter().cloned().collect();
        if current_set != old {
            return Err(ApiError::conflict(format!("the members of cluster {name} are not the given \"old\" list")));
        }
        let added: Vec<String> = new.difference(&old).cloned().collect();
        let removed: Vec<String> = old.difference(&new).cloned().collect();
        let mut joining = Vec::with_capacity(added.len());
        for address in &added {
            let host = self
                .storage
                .find::<Host>(address)
                .await?
                .ok_or_else(|| ApiError::conflict(format!("host {address} does not exist")))?;
            check_ready(&host, name)?;
            if let Some(other) = self.cluster_of(address).await?
                && other.name != name
            {
                return Err(ApiError::conflict(format!("host {address} is a member of cluster {}", other.name)));
            }
            joining.push(host);
        }
        let mut cluster = current.model;
        // Register first: a manager that refuses leaves the members untouched.
        self.register_nodes(&cluster, &added).await?;
        cluster.hostset = new.into_iter().collect();
        let saved = match self.storage.save_if(&cluster, current.revision).await {
            Ok(saved) => saved,
            Err(err) => {
                self.remove_nodes(&cluster, &added).await;
                return Err(match err {
                    commissaire_core::storage_client::StorageError::Conflict(_) => {
                        ApiError::conflict(format!("the members of cluster {name} changed meanwhile; read them again"))
                    }
                    other => other.into(),
                });
            }
        };
        // A host added to another cluster at the same time is left out again.
        let contested = if added.is_empty() { Ok(()) } else { self.back_off_if_contested(name, &added).await };
        let mut saved = saved;
        if contested.is_err() {
            saved = self.storage.get::<Cluster>(name).await?;
            let backed_out: Vec<String> = added.iter().filter(|a| !saved.hostset.contains(*a)).cloned().collect();
            self.remove_nodes(&saved, &backed_out).await;
        }
        for host in joining {
            if saved.hostset.contains(&host.address) {
                self.mark_joined(&saved, host).await?;
            }
        }
        for address in removed {
            self.unregister_member(&saved, &address).await;
        }
        contested?;
        Ok(Reply::ok(saved.to_full_json()))
    }

    /// Adds one host to a cluster (idempotent).
    pub async fn put_cluster_member(&self, name: &str, address: &str) -> ApiResult {
        let host = self.storage.get::<Host>(address).await?;
        let cluster = self.storage.get::<Cluster>(name).await?;
        if cluster.hostset.iter().any(|h| h == address) {
            return Ok(Reply::ok(json!([address])));
        }
        check_ready(&host, name)?;
        let joining = [address.to_string()];
        self.register_nodes(&cluster, &joining).await?;
        let cluster = match self.join_cluster(name, address).await {
            Ok((cluster, _)) => cluster,
            Err(err) => {
                self.remove_nodes(&cluster, &joining).await;
                return Err(err);
            }
        };
        self.mark_joined(&cluster, host).await?;
        Ok(Reply::ok(json!([address])))
    }

    /// Removes one host from a cluster (idempotent).
    pub async fn delete_cluster_member(&self, name: &str, address: &str) -> ApiResult {
        let cluster = self.storage.get::<Cluster>(name).await?;
        if self.leave_cluster(name, address).await? {
            self.unregister_member(&cluster, address).await;
        }
        Ok(Reply::ok(json!([])))
    }

    /// Registers hosts with the cluster's container manager (if it has one); on
    /// a refusal, the ones already registered are removed again.
    async fn register_nodes(&self, cluster: &Cluster, addresses: &[String]) -> Result<(), ApiError> {
        if cluster.container_manager.is_empty() {
            return Ok(());
        }
        for (done, address) in addresses.iter().enumerate() {
            let registered = self
                .call_service("containermgr", "container.register_node", json!([cluster.container_manager, address]))
                .await;
            if let Err(err) = registered {
                self.remove_nodes(cluster, &addresses[..done]).await;
                return Err(err);
            }
        }
        Ok(())
    }

    /// Best-effort removal of nodes from the cluster's container manager.
    pub(crate) async fn remove_nodes(&self, cluster: &Cluster, addresses: &[String]) {
        if cluster.container_manager.is_empty() {
            return;
        }
        for address in addresses {
            if let Err(err) = self
                .call_service("containermgr", "container.remove_node", json!([cluster.container_manager, address]))
                .await
            {
                tracing::warn!(%address, cluster = %cluster.name, error = %err.message, "could not remove the node from the container manager");
            }
        }
    }

    /// A host that joined a cluster: `active` when the cluster has a container
    /// manager (it was registered), `disassociated` when it is unmanaged.
    async fn mark_joined(&self, cluster: &Cluster, mut host: Host) -> Result<(), ApiError> {
        host.status = if cluster.container_manager.is_empty() { "disassociated" } else { "active" }.into();
        self.storage.save(&host).await?;
        Ok(())
    }

    /// A host that left a cluster: removed from its container manager, and no
    /// longer `active` anywhere.
    async fn unregister_member(&self, cluster: &Cluster, address: &str) {
        self.remove_nodes(cluster, &[address.to_string()]).await;
        let demoted = self
            .storage
            .update::<Host, _, ApiError>(address, CAS_ATTEMPTS, |host| {
                if host.status != "active" {
                    return Ok(false);
                }
                host.status = "disassociated".into();
                Ok(true)
            })
            .await;
        if let Err(err) = demoted
            && !matches!(err, commissaire_core::storage_client::StorageError::NotFound { .. })
        {
            tracing::warn!(%address, error = %err, "could not update the status of a host that left its cluster");
        }
    }
}

fn same_cluster(existing: Cluster, wanted: &Cluster) -> ApiResult {
    if existing.network == wanted.network && existing.container_manager == wanted.container_manager {
        Ok(Reply::created(existing.to_safe_json()))
    } else {
        Err(ApiError::conflict(format!("cluster {} already exists with other attributes", existing.name)))
    }
}

fn check_ready(host: &Host, cluster: &str) -> Result<(), ApiError> {
    if READY_TO_JOIN.contains(&host.status.as_str()) {
        Ok(())
    } else {
        Err(ApiError::conflict(format!(
            "host {} (status {:?}) is not ready to join cluster {cluster}: it must be active or disassociated",
            host.address, host.status
        )))
    }
}
