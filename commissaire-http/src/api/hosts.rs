//! `/api/v0/hosts`, `/api/v0/host[/{address}]`, `/creds`, `/status`.

use std::net::IpAddr;

use commissaire_core::{
    jsonrpc,
    model::{Cluster, Host, HostCreds, HostStatus, Model, Unknown},
    storage_client::StorageError,
};
use serde_json::{Map, Value, json};

use super::{Api, ApiError, ApiResult, CAS_ATTEMPTS, Reply, reject_unknown, same_as_path, string_field};

/// What a host PUT body may carry: the host's own fields, its credentials and
/// the cluster to join.
const HOST_PUT_FIELDS: &[&str] = &[
    "address",
    "status",
    "os",
    "cpus",
    "memory",
    "space",
    "last_check",
    "source",
    "ssh_priv_key",
    "remote_user",
    "cluster",
];

impl Api {
    pub async fn list_hosts(&self) -> ApiResult {
        let hosts = self.storage.list::<Host>().await?;
        Ok(Reply::ok(Value::Array(hosts.iter().map(Model::to_safe_json).collect())))
    }

    pub async fn get_host(&self, address: &str) -> ApiResult {
        let host = self.storage.get::<Host>(address).await?;
        Ok(Reply::ok(host.to_safe_json()))
    }

    pub async fn get_host_creds(&self, address: &str) -> ApiResult {
        let creds = self.storage.get::<HostCreds>(address).await?;
        Ok(Reply::ok(creds.to_full_json()))
    }

    /// The cluster a host is a member of, if any.
    pub(crate) async fn cluster_of(&self, address: &str) -> Result<Option<Cluster>, ApiError> {
        let clusters = self.storage.list::<Cluster>().await?;
        Ok(clusters.into_iter().find(|c| c.hostset.iter().any(|h| h == address)))
    }

    pub async fn get_host_status(&self, address: &str) -> ApiResult {
        let host = self.storage.get::<Host>(address).await?;
        let mut node = Map::new();
        if let Some(cluster) = self.cluster_of(address).await?
            && !cluster.container_manager.is_empty()
        {
            match self
                .bus
                .request("container.get_node_status", json!([cluster.container_manager, address]), self.service_timeout)
                .await
            {
                Ok(Value::Object(status)) => node = status,
                Ok(_) => {}
                // The manager does not know the node (yet): unmanaged view.
                Err(commissaire_core::bus::BusError::Rpc(e)) if e.code == jsonrpc::CONTAINER_MANAGER_ERROR => {}
                Err(err) => return Err(super::service_error("containermgr", err)),
            }
        }
        Ok(Reply::ok(HostStatus::of(&host, node).to_full_json()))
    }

    /// Creates a host (or re-creates it idempotently) and hands it to the
    /// investigator. `path_address` is absent for `PUT /api/v0/host`, where the
    /// body's address or else the client's address is used.
    pub async fn put_host(&self, path_address: Option<&str>, client: IpAddr, body: &Map<String, Value>) -> ApiResult {
        reject_unknown(body, HOST_PUT_FIELDS)?;
        let address = match path_address {
            Some(address) => {
                same_as_path(body, "address", address)?;
                address.to_string()
            }
            None => string_field(body, "address")?.unwrap_or_else(|| client.to_string()),
        };
        let cluster_name = string_field(body, "cluster")?;

        // Validate everything before the first write.
        let mut host_doc: Map<String, Value> = body
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "ssh_priv_key" | "remote_user" | "cluster"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        host_doc.insert("address".into(), Value::String(address.clone()));
        let host = Host::from_json(&Value::Object(host_doc), Unknown::Reject)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let mut creds_doc = Map::new();
        creds_doc.insert("address".into(), Value::String(address.clone()));
        for field in ["ssh_priv_key", "remote_user"] {
            if let Some(v) = body.get(field) {
                creds_doc.insert(field.into(), v.clone());
            }
        }
        let creds = HostCreds::from_json(&Value::Object(creds_doc), Unknown::Reject)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if !creds.ssh_priv_key.is_empty() && base64_decoded_len(&creds.ssh_priv_key).is_none() {
            return Err(ApiError::bad_request("HostCreds.ssh_priv_key: must be the private key file in base64"));
        }

        let cluster = match &cluster_name {
            Some(name) => Some(
                self.storage
                    .find::<Cluster>(name)
                    .await?
                    .ok_or_else(|| ApiError::conflict(format!("cluster {name} does not exist")))?,
            ),
            None => None,
        };
        // The host record is written after its credentials and membership (see
        // below), so it is read before them.
        let existing = self.storage.find::<Host>(&address).await?;
        let current_cluster = self.cluster_of(&address).await?;

        // An existing host is re-created idempotently when nothing differs.
        if let Some(existing) = existing {
            let stored_creds = self.storage.find::<HostCreds>(&address).await?;
            let same_key = stored_creds.as_ref().is_some_and(|c| c.ssh_priv_key == creds.ssh_priv_key);
            if !same_key {
                return Err(ApiError::conflict(format!("host {address} already exists with other credentials")));
            }
            if let Some(name) = &cluster_name
                && current_cluster.as_ref().map(|c| &c.name) != Some(name)
            {
                return Err(ApiError::conflict(format!("host {address} already exists and is not in cluster {name}")));
            }
            return Ok(Reply::created(existing.to_safe_json()));
        }
        if let (Some(current), Some(name)) = (&current_cluster, &cluster_name)
            && &current.name != name
        {
            return Err(ApiError::conflict(format!("host {address} is a member of cluster {}", current.name)));
        }

        // Another client may be adding the same host at this moment. The
        // credentials are created only where there are none (so of clients with
        // different keys one wins), then the membership, and the host record last:
        // whoever sees the host sees its credentials and its cluster.
        let created_creds = match self.storage.save_if(&creds, 0).await {
            Ok(_) => true,
            Err(StorageError::Conflict(_)) => {
                let stored = self.storage.find::<HostCreds>(&address).await?;
                if stored.is_none_or(|c| c.ssh_priv_key != creds.ssh_priv_key) {
                    return Err(ApiError::conflict(format!("host {address} already exists with other credentials")));
                }
                false
            }
            Err(err) => return Err(err.into()),
        };
        let (cluster_data, added) = match &cluster {
            Some(cluster) => match self.join_cluster(&cluster.name, &address).await {
                Ok((joined, added)) => (joined.to_full_json(), added),
                Err(err) => {
                    self.undo_host_creds(&address, created_creds).await;
                    return Err(err);
                }
            },
            None => (json!({}), false),
        };
        let saved = match self.storage.save_if(&host, 0).await {
            Ok(saved) => saved,
            // Created at the same time with the same key: a re-create.
            Err(StorageError::Conflict(_)) => {
                return Ok(Reply::created(self.storage.get::<Host>(&address).await?.to_safe_json()));
            }
            Err(err) => {
                if added && let Some(cluster) = &cluster {
                    let _ = self.leave_cluster(&cluster.name, &address).await;
                }
                self.undo_host_creds(&address, created_creds).await;
                return Err(err.into());
            }
        };
        self.request_investigation(&address, cluster_data).await;
        tracing::info!(%address, cluster = cluster_name.as_deref().unwrap_or(""), "host created");
        Ok(Reply::created(saved.to_safe_json()))
    }

    /// Hands a host to the investigator (a notification: nobody waits for it).
    async fn request_investigation(&self, address: &str, cluster_data: Value) {
        let notification =
            jsonrpc::Request::new(None, "investigate", json!({"address": address, "cluster_data": cluster_data}));
        if let Err(err) =
            self.bus.publish("jobs.investigate", &serde_json::to_value(notification).unwrap_or_default()).await
        {
            // The host is stored; it can be investigated again through its hostkey route.
            tracing::warn!(%address, error = %err, "could not hand the host to the investigator");
        }
    }

    /// `GET /api/v0/host/{address}/hostkey`: the SSH host key pinned on first
    /// contact (empty before it).
    pub async fn get_host_key(&self, address: &str) -> ApiResult {
        let host = self.storage.get::<Host>(address).await?;
        Ok(Reply::ok(json!({"address": host.address, "ssh_host_key": host.ssh_host_key})))
    }

    /// `DELETE /api/v0/host/{address}/hostkey`: the operator trusts the host's
    /// new key. The pinned key is forgotten and the host investigated again,
    /// which pins the key it then presents.
    pub async fn delete_host_key(&self, address: &str) -> ApiResult {
        let host = self
            .storage
            .update::<Host, _, std::convert::Infallible>(address, CAS_ATTEMPTS, |host| {
                let changed = !host.ssh_host_key.is_empty();
                host.ssh_host_key.clear();
                Ok(changed)
            })
            .await?
            .unwrap_or_else(|never| match never {});
        let cluster_data = match self.cluster_of(address).await? {
            Some(cluster) => cluster.to_full_json(),
            None => json!({}),
        };
        self.request_investigation(address, cluster_data).await;
        tracing::info!(%address, "pinned host key forgotten; investigating again");
        Ok(Reply::ok(json!({"address": host.address, "ssh_host_key": ""})))
    }

    /// Removes the credentials a failed host creation stored, unless a host
    /// record now uses them (a client adding the same host with the same key).
    async fn undo_host_creds(&self, address: &str, created: bool) {
        if created && matches!(self.storage.find::<Host>(address).await, Ok(None)) {
            let _ = self.storage.delete::<HostCreds>(address).await;
        }
    }

    /// Adds `address` to the cluster's member list (compare-and-swap), refusing
    /// when another cluster has it. Returns the cluster and whether this call
    /// added the host (false: it was a member already).
    pub(crate) async fn join_cluster(&self, name: &str, address: &str) -> Result<(Cluster, bool), ApiError> {
        if let Some(other) = self.cluster_of(address).await?
            && other.name != name
        {
            return Err(ApiError::conflict(format!("host {address} is a member of cluster {}", other.name)));
        }
        let mut added = false;
        let joined = self
            .storage
            .update::<Cluster, _, ApiError>(name, CAS_ATTEMPTS, |cluster| {
                added = !cluster.hostset.iter().any(|h| h == address);
                if added {
                    cluster.hostset.push(address.to_string());
                }
                Ok(added)
            })
            .await??;
        if added {
            self.back_off_if_contested(name, &[address.to_string()]).await?;
        }
        Ok((joined, added))
    }

    /// Called after `addresses` were added to cluster `name`: the check before
    /// that write cannot see a request adding the same host to another cluster at
    /// the same time, so look again. A host that is in another cluster too is
    /// taken out of this one again and the request is refused (409). Of two such
    /// requests at most one keeps the host: whichever reads second sees both.
    pub(crate) async fn back_off_if_contested(&self, name: &str, addresses: &[String]) -> Result<(), ApiError> {
        let clusters = self.storage.list::<Cluster>().await?;
        let contested: Vec<&String> =
            addresses.iter().filter(|a| clusters.iter().any(|c| c.name != name && c.hostset.contains(*a))).collect();
        if contested.is_empty() {
            return Ok(());
        }
        for address in &contested {
            if let Err(err) = self.leave_cluster(name, address).await {
                tracing::error!(%address, cluster = %name, error = %err.message, "could not back out of a contested membership");
            }
        }
        let list: Vec<&str> = contested.iter().map(|a| a.as_str()).collect();
        Err(ApiError::conflict(format!(
            "host {} joined another cluster at the same time and was not added to cluster {name}",
            list.join(", ")
        )))
    }

    /// Removes `address` from the cluster's member list; whether it was a member.
    pub(crate) async fn leave_cluster(&self, name: &str, address: &str) -> Result<bool, ApiError> {
        let mut removed = false;
        self.storage
            .update::<Cluster, _, ApiError>(name, CAS_ATTEMPTS, |cluster| {
                let before = cluster.hostset.len();
                cluster.hostset.retain(|h| h != address);
                removed = cluster.hostset.len() != before;
                Ok(removed)
            })
            .await??;
        Ok(removed)
    }

    pub async fn delete_host(&self, address: &str) -> ApiResult {
        // The membership goes first: a failure after it leaves a host outside
        // any cluster (the client sees the error and deletes again), never a
        // cluster naming a host that does not exist. It also removes a member
        // left by a create that was interrupted before its host record.
        let cluster = self.cluster_of(address).await?;
        if let Some(cluster) = &cluster {
            self.leave_cluster(&cluster.name, address).await?;
        }
        self.storage.delete::<Host>(address).await?;
        match self.storage.delete::<HostCreds>(address).await {
            Ok(()) | Err(StorageError::NotFound { .. }) => {}
            Err(err) => tracing::warn!(%address, error = %err, "could not delete host credentials"),
        }
        if let Some(cluster) = cluster {
            self.remove_nodes(&cluster, &[address.to_string()]).await;
        }
        tracing::info!(%address, "host deleted");
        Ok(Reply::ok(json!([])))
    }
}

/// The decoded length of standard base64 text, or `None` if it is not base64.
fn base64_decoded_len(text: &str) -> Option<usize> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok().map(|bytes| bytes.len())
}
