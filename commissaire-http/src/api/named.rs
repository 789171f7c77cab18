//! Networks and container managers: named records created idempotently.

use commissaire_core::model::{Cluster, ContainerManagerConfig, Model, Network, Unknown};
use serde_json::{Map, Value, json};

use super::{Api, ApiError, ApiResult, Reply, reject_unknown, same_as_path};

/// What differs between the two kinds of named record.
trait Named: Model {
    /// How the record is called in messages.
    const LABEL: &'static str;
    /// Whether `cluster` refers to the record named `name`.
    fn used_by(cluster: &Cluster, name: &str) -> bool;
}

impl Named for Network {
    const LABEL: &'static str = "network";
    fn used_by(cluster: &Cluster, name: &str) -> bool {
        cluster.network == name
    }
}

impl Named for ContainerManagerConfig {
    const LABEL: &'static str = "container manager";
    fn used_by(cluster: &Cluster, name: &str) -> bool {
        cluster.container_manager == name
    }
}

impl Api {
    pub async fn list_networks(&self) -> ApiResult {
        self.list_names::<Network>().await
    }
    pub async fn get_network(&self, name: &str) -> ApiResult {
        self.get_named::<Network>(name).await
    }
    pub async fn put_network(&self, name: &str, body: &Map<String, Value>) -> ApiResult {
        self.put_named::<Network>(name, body).await
    }
    pub async fn delete_network(&self, name: &str) -> ApiResult {
        self.delete_named::<Network>(name).await
    }
    pub async fn list_container_managers(&self) -> ApiResult {
        self.list_names::<ContainerManagerConfig>().await
    }
    pub async fn get_container_manager(&self, name: &str) -> ApiResult {
        self.get_named::<ContainerManagerConfig>(name).await
    }
    pub async fn put_container_manager(&self, name: &str, body: &Map<String, Value>) -> ApiResult {
        self.put_named::<ContainerManagerConfig>(name, body).await
    }
    pub async fn delete_container_manager(&self, name: &str) -> ApiResult {
        self.delete_named::<ContainerManagerConfig>(name).await
    }

    async fn list_names<M: Named>(&self) -> ApiResult {
        Ok(Reply::ok(serde_json::json!(self.storage.list_names::<M>().await?)))
    }

    async fn get_named<M: Named>(&self, name: &str) -> ApiResult {
        Ok(Reply::ok(self.storage.get::<M>(name).await?.to_safe_json()))
    }

    /// Same attributes as the stored record: 201 and nothing changes; other
    /// attributes: 409.
    async fn put_named<M: Named>(&self, name: &str, body: &Map<String, Value>) -> ApiResult {
        reject_unknown(body, &["name", "type", "options"])?;
        same_as_path(body, "name", name)?;
        let mut doc = body.clone();
        doc.insert("name".into(), Value::String(name.to_string()));
        let wanted =
            M::from_json(&Value::Object(doc), Unknown::Reject).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let same = |existing: M| {
            if existing.to_full_json() == wanted.to_full_json() {
                Ok(Reply::created(existing.to_safe_json()))
            } else {
                Err(ApiError::conflict(format!("a {} named {name} already exists with other attributes", M::LABEL)))
            }
        };
        if let Some(existing) = self.storage.find::<M>(name).await? {
            return same(existing);
        }
        match self.storage.save_if(&wanted, 0).await {
            Ok(saved) => Ok(Reply::created(saved.to_safe_json())),
            Err(commissaire_core::storage_client::StorageError::Conflict(_)) => {
                same(self.storage.get::<M>(name).await?)
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn delete_named<M: Named>(&self, name: &str) -> ApiResult {
        self.storage.get::<M>(name).await?;
        let users: Vec<String> =
            self.storage.list::<Cluster>().await?.into_iter().filter(|c| M::used_by(c, name)).map(|c| c.name).collect();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!("{} {name} is used by cluster(s) {}", M::LABEL, users.join(", "))));
        }
        self.storage.delete::<M>(name).await?;
        Ok(Reply::ok(json!([])))
    }
}
