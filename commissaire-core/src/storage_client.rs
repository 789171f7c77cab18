//! A typed client of the storage service, over any [`Bus`]: what the server and
//! the services use instead of building `storage.*` requests by hand.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use crate::{
    bus::{Bus, BusError},
    jsonrpc,
    model::{Model, ModelType, ValidationError},
};

/// Why a storage call failed, in the terms callers branch on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("{model} {key} does not exist")]
    NotFound { model: &'static str, key: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl From<ValidationError> for StorageError {
    fn from(err: ValidationError) -> Self {
        StorageError::Invalid(err.to_string())
    }
}

/// A record and the revision it was read at (to update it with compare-and-swap).
#[derive(Debug, Clone)]
pub struct Revisioned<M> {
    pub model: M,
    pub revision: u64,
}

/// Lets code written for records take them with their revisions too.
impl<M> std::borrow::Borrow<M> for Revisioned<M> {
    fn borrow(&self) -> &M {
        &self.model
    }
}

#[derive(Clone)]
pub struct StorageClient {
    bus: Arc<dyn Bus>,
    timeout: Duration,
}

impl StorageClient {
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Self { bus, timeout: crate::bus::DEFAULT_TIMEOUT }
    }

    /// The bus this client talks over (for callers that also call other services).
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn call(&self, method: &str, params: Value, model: &'static str, key: &str) -> Result<Value, StorageError> {
        self.bus.request(&format!("storage.{method}"), params, self.timeout).await.map_err(|err| match err {
            BusError::Rpc(e) if e.code == jsonrpc::STORAGE_LOOKUP_ERROR => {
                StorageError::NotFound { model, key: key.to_string() }
            }
            BusError::Rpc(e) if e.code == jsonrpc::CONFLICT => StorageError::Conflict(e.message),
            BusError::Rpc(e) if e.code == jsonrpc::INVALID_PARAMS || e.code == jsonrpc::INVALID_REQUEST => {
                StorageError::Invalid(e.message)
            }
            other => StorageError::Unavailable(other.to_string()),
        })
    }

    fn key_doc<M: Model>(key: &str) -> Value {
        let field = ModelType::from_name(M::NAME).map(ModelType::primary_key_field).unwrap_or("name");
        json!({ field: key })
    }

    /// A record from the storage service, which validated it (see
    /// [`Model::from_stored`]).
    fn decode<M: Model>(value: Value) -> Result<M, StorageError> {
        M::from_stored(value).map_err(|e| StorageError::Invalid(format!("storage returned an invalid record: {e}")))
    }

    /// The record of type `M` whose primary key is `key`.
    pub async fn get<M: Model>(&self, key: &str) -> Result<M, StorageError> {
        let params = json!({"model_type_name": M::NAME, "model_json_data": Self::key_doc::<M>(key)});
        Self::decode(self.call("get", params, M::NAME, key).await?)
    }

    /// The record and its revision, for a later [`StorageClient::save_if`].
    pub async fn get_revisioned<M: Model>(&self, key: &str) -> Result<Revisioned<M>, StorageError> {
        let params =
            json!({"model_type_name": M::NAME, "model_json_data": Self::key_doc::<M>(key), "with_revision": true});
        Self::decode_revisioned(self.call("get", params, M::NAME, key).await?)
    }

    /// A `{"model", "revision"}` reply item (`with_revision`).
    fn decode_revisioned<M: Model>(mut item: Value) -> Result<Revisioned<M>, StorageError> {
        let revision =
            item["revision"].as_u64().ok_or_else(|| StorageError::Invalid("storage reply has no revision".into()))?;
        Ok(Revisioned { model: Self::decode(item["model"].take())?, revision })
    }

    /// Whether the record exists (`Ok(None)` when it does not).
    pub async fn find<M: Model>(&self, key: &str) -> Result<Option<M>, StorageError> {
        match self.get(key).await {
            Ok(model) => Ok(Some(model)),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Saves (creates or replaces) a record; returns it as stored.
    pub async fn save<M: Model>(&self, model: &M) -> Result<M, StorageError> {
        self.save_with(model, None).await
    }

    /// Saves only if the record is still at `revision` (0: only if it does not
    /// exist yet); otherwise [`StorageError::Conflict`] and nothing is written.
    pub async fn save_if<M: Model>(&self, model: &M, revision: u64) -> Result<M, StorageError> {
        self.save_with(model, Some(revision)).await
    }

    async fn save_with<M: Model>(&self, model: &M, revision: Option<u64>) -> Result<M, StorageError> {
        let key = model.primary_key().unwrap_or_default().to_string();
        let mut params = json!({"model_type_name": M::NAME, "model_json_data": model.to_full_json()});
        if let Some(revision) = revision {
            params["expected_revision"] = json!(revision);
        }
        Self::decode(self.call("save", params, M::NAME, &key).await?)
    }

    /// Deletes a record; [`StorageError::NotFound`] if it did not exist.
    pub async fn delete<M: Model>(&self, key: &str) -> Result<(), StorageError> {
        let params = json!({"model_type_name": M::NAME, "model_json_data": Self::key_doc::<M>(key)});
        self.call("delete", params, M::NAME, key).await.map(|_| ())
    }

    /// Every record of type `M` (a listable type: Host, Cluster, Network,
    /// ContainerManagerConfig, WatcherRecord).
    pub async fn list<M: Model>(&self) -> Result<Vec<M>, StorageError> {
        let list_name = Self::list_name::<M>()?;
        let reply = self.call("list", json!({"model_type_name": list_name}), M::NAME, "*").await?;
        Self::items(reply)?.into_iter().map(Self::decode).collect()
    }

    /// Every record of type `M` with the revision it was read at, for later
    /// compare-and-swap writes without reading each again.
    pub async fn list_revisioned<M: Model>(&self) -> Result<Vec<Revisioned<M>>, StorageError> {
        let list_name = Self::list_name::<M>()?;
        let params = json!({"model_type_name": list_name, "with_revision": true});
        let reply = self.call("list", params, M::NAME, "*").await?;
        Self::items(reply)?.into_iter().map(Self::decode_revisioned).collect()
    }

    fn items(reply: Value) -> Result<Vec<Value>, StorageError> {
        match reply {
            Value::Array(items) => Ok(items),
            _ => Err(StorageError::Invalid("storage list reply is not a list".into())),
        }
    }

    fn list_name<M: Model>() -> Result<&'static str, StorageError> {
        ModelType::from_name(M::NAME)
            .and_then(ModelType::list_name)
            .ok_or_else(|| StorageError::Invalid(format!("{} cannot be listed", M::NAME)))
    }

    /// The primary keys (names, addresses) of every stored `M`, without reading
    /// the records themselves.
    pub async fn list_names<M: Model>(&self) -> Result<Vec<String>, StorageError> {
        let list_name = Self::list_name::<M>()?;
        let reply = self.call("list", json!({"model_type_name": list_name, "names_only": true}), M::NAME, "*").await?;
        serde_json::from_value(reply).map_err(|e| StorageError::Invalid(format!("storage list reply: {e}")))
    }

    /// Reads `key`, applies `change` and saves with compare-and-swap, retrying on
    /// a concurrent update (up to `attempts` times). `change` returns `Ok(false)`
    /// to leave the record as it is.
    pub async fn update<M, F, E>(&self, key: &str, attempts: usize, mut change: F) -> Result<Result<M, E>, StorageError>
    where
        M: Model,
        F: FnMut(&mut M) -> Result<bool, E>,
    {
        let mut last = None;
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                // Jittered, growing back-off (up to 64 ms): writers contending for one
                // record (many hosts joining one cluster at once) spread out instead
                // of colliding again on the next round.
                let cap = 1u64 << attempt.min(6);
                let pause = rand::Rng::gen_range(&mut rand::thread_rng(), 0..=cap);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            let Revisioned { mut model, revision } = self.get_revisioned::<M>(key).await?;
            match change(&mut model) {
                Err(e) => return Ok(Err(e)),
                Ok(false) => return Ok(Ok(model)),
                Ok(true) => {}
            }
            match self.save_if(&model, revision).await {
                Ok(saved) => return Ok(Ok(saved)),
                Err(StorageError::Conflict(message)) => last = Some(message),
                Err(other) => return Err(other),
            }
        }
        Err(StorageError::Conflict(last.unwrap_or_else(|| format!("{} {key} kept changing", M::NAME))))
    }
}
