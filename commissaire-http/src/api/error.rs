//! Errors as the API returns them: a status and a message for a human, sent as
//! `{"error": {"code": <status>, "message": <text>}}` with `application/json`.
//! Never a stack trace, a secret or an internal host name.

use commissaire_core::{bus::BusError, storage_client::StorageError};
use hyper::StatusCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.status.as_u16(), "message": self.message}})
    }
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::NotFound { model, key } => ApiError::not_found(format!("{model} {key} does not exist")),
            StorageError::Conflict(message) => ApiError::conflict(message),
            StorageError::Invalid(message) => ApiError::bad_request(message),
            StorageError::Unavailable(message) => {
                tracing::error!(error = %message, "storage unavailable");
                ApiError::unavailable("storage is unavailable; try again shortly")
            }
        }
    }
}

/// A failed call to a service other than storage.
pub fn service_error(service: &str, err: BusError) -> ApiError {
    match err {
        BusError::Rpc(e) if e.code == commissaire_core::jsonrpc::CONFLICT => ApiError::conflict(e.message),
        BusError::Rpc(e) if e.code == commissaire_core::jsonrpc::STORAGE_LOOKUP_ERROR => ApiError::not_found(e.message),
        BusError::Rpc(e) if e.code == commissaire_core::jsonrpc::INVALID_PARAMS => ApiError::bad_request(e.message),
        BusError::Rpc(e) => {
            tracing::error!(service, code = e.code, error = %e.message, "service call failed");
            ApiError::new(StatusCode::BAD_GATEWAY, format!("the {service} service failed: {}", e.message))
        }
        BusError::Timeout { .. } => {
            tracing::error!(service, "service did not answer");
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, format!("the {service} service did not answer in time"))
        }
        other => {
            tracing::error!(service, error = %other, "bus failure");
            ApiError::unavailable("the message bus is unavailable; try again shortly")
        }
    }
}
