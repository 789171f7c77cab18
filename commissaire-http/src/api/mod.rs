//! The `/api/v0` handlers: each turns a request into storage and service calls
//! on the bus and a [`Reply`]. They know nothing of HTTP framing, TLS or
//! authentication (see `server`), so they are tested over the in-process bus.
//!
//! Invariants kept here:
//! * every input is validated before the first write, so a refused request
//!   stores nothing;
//! * a host belongs to at most one cluster, and membership changes use
//!   compare-and-swap on the cluster record, so concurrent requests lose nothing;
//! * a path parameter is never overridden by the body (a differing body value is
//!   400);
//! * `ssh_priv_key` leaves only through `GET /api/v0/host/{address}/creds`.

pub mod audit;
mod clusters;
mod error;
mod hosts;
mod named;
mod operations;

use std::{sync::Arc, time::Duration};

use commissaire_core::{bus::Bus, storage_client::StorageClient};
use hyper::StatusCode;
use serde_json::{Map, Value};

pub use error::{ApiError, service_error};

/// How long a readiness probe waits for storage.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// How many times a compare-and-swap update is tried under contention, with a
/// jittered back-off between tries (`StorageClient::update`): enough for a
/// thousand hosts registering into one cluster at once (about 4 s at worst).
const CAS_ATTEMPTS: usize = 64;

/// A handler's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Self { status: StatusCode::OK, body }
    }
    pub fn created(body: Value) -> Self {
        Self { status: StatusCode::CREATED, body }
    }
}

pub type ApiResult = Result<Reply, ApiError>;

/// The handlers and what they talk to.
#[derive(Clone)]
pub struct Api {
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) storage: StorageClient,
    pub(crate) service_timeout: Duration,
    /// The event stream's one bus subscription, made on first use.
    events: Arc<crate::events::LazyHub>,
}

impl Api {
    pub fn new(bus: Arc<dyn Bus>) -> Self {
        Self {
            storage: StorageClient::new(bus.clone()),
            bus,
            service_timeout: commissaire_core::bus::DEFAULT_TIMEOUT,
            events: Arc::default(),
        }
    }

    /// The event hub every `GET /api/v0/events` stream reads from.
    pub async fn events(&self) -> Result<Arc<crate::events::EventHub>, commissaire_core::bus::BusError> {
        self.events.get(&self.bus).await
    }

    /// The storage client the handlers use.
    pub fn storage_client(&self) -> &StorageClient {
        &self.storage
    }

    /// Whether the bus and the stores behind the storage service answer.
    pub async fn ready(&self) -> Result<(), ApiError> {
        match self.bus.request("storage.ping", Value::Object(Map::new()), READY_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err(err) => {
                // The detail (addresses of stores and brokers) goes to the log only.
                tracing::warn!(error = %err, "not ready");
                let why = match err {
                    commissaire_core::bus::BusError::Rpc(_) => "a store behind the storage service is unreachable",
                    commissaire_core::bus::BusError::Timeout { .. } => "the storage service did not answer",
                    _ => "the message bus is unavailable",
                };
                Err(ApiError::unavailable(format!("not ready: {why}")))
            }
        }
    }

    /// Calls a service other than storage (container manager, cluster exec).
    pub(crate) async fn call_service(
        &self,
        service: &str,
        routing_key: &str,
        params: Value,
    ) -> Result<Value, ApiError> {
        self.bus.request(routing_key, params, self.service_timeout).await.map_err(|e| service_error(service, e))
    }
}

/// Refuses body members outside `allowed`, naming them.
pub(crate) fn reject_unknown(body: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    let mut unknown: Vec<&str> = body.keys().map(String::as_str).filter(|k| !allowed.contains(k)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(ApiError::bad_request(format!(
        "unknown field{} {}; allowed: {}",
        if unknown.len() > 1 { "s" } else { "" },
        unknown.join(", "),
        if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") }
    )))
}

/// Checks a body's copy of a path parameter: absent or equal.
pub(crate) fn same_as_path(body: &Map<String, Value>, field: &str, path_value: &str) -> Result<(), ApiError> {
    match body.get(field) {
        None => Ok(()),
        Some(Value::String(v)) if v == path_value => Ok(()),
        Some(Value::String(v)) => {
            Err(ApiError::bad_request(format!("{field} in the body ({v:?}) differs from the URL ({path_value:?})")))
        }
        Some(_) => Err(ApiError::bad_request(format!("{field} must be a string"))),
    }
}

/// A string member of a body, if present.
pub(crate) fn string_field(body: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!("{field} must be a string"))),
    }
}

#[cfg(test)]
mod tests;
