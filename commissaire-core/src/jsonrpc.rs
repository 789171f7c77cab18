//! JSON-RPC 2.0 messages as they travel on the bus, and the error codes the
//! services answer with.
//!
//! A request is `{"jsonrpc":"2.0","id":<uuid>,"method":<last word of the routing
//! key>,"params":<object or array>}`; a notification has no `id`. A reply carries
//! either `result` or `error{code,message,data}`. Receivers also accept a JSON
//! string that itself contains the JSON object (the original double-encoded some
//! bodies).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist on this service.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters (including model validation failures).
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error in the service.
pub const INTERNAL_ERROR: i64 = -32603;
/// The record asked for does not exist.
pub const STORAGE_LOOKUP_ERROR: i64 = -20000;
/// The container manager failed or refused.
pub const CONTAINER_MANAGER_ERROR: i64 = -20001;
/// A compare-and-swap lost the race, or a create conflicts with what is stored.
pub const CONFLICT: i64 = 409;

/// The error object of a JSON-RPC reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("({code}) {message}")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), data: None }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(STORAGE_LOOKUP_ERROR, message)
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(CONFLICT, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(INTERNAL_ERROR, message)
    }

    pub fn method_not_found(method: &str) -> Self {
        Self::new(METHOD_NOT_FOUND, format!("method not found: {method}"))
    }
}

/// A request (with `id`) or a notification (without).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub jsonrpc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub method: String,
    #[serde(default)]
    pub params: Value,
}

impl Request {
    pub fn new(id: Option<String>, method: impl Into<String>, params: Value) -> Self {
        Self { jsonrpc: "2.0".into(), id: id.map(Value::String), method: method.into(), params }
    }
}

/// A reply: exactly one of `result` and `error` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub jsonrpc: String,
    pub id: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

impl Response {
    pub fn from_result(id: Value, outcome: Result<Value, RpcError>) -> Self {
        match outcome {
            Ok(result) => Self { jsonrpc: "2.0".into(), id, result: Some(result), error: None },
            Err(error) => Self { jsonrpc: "2.0".into(), id, result: None, error: Some(error) },
        }
    }

    /// The outcome the caller sees: `result` (null when absent) or the error.
    pub fn into_outcome(self) -> Result<Value, RpcError> {
        match self.error {
            Some(error) => Err(error),
            None => Ok(self.result.unwrap_or(Value::Null)),
        }
    }
}

/// Parses a JSON body that may be the object itself or a JSON string holding it.
pub fn decode_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    // One pass for the usual object body; only a string body is parsed twice.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'"') {
        let inner: String = serde_json::from_slice(bytes)?;
        serde_json::from_str(&inner)
    } else {
        serde_json::from_slice(bytes)
    }
}

/// The method a routing key addresses: its last dot-separated word.
pub fn method_of(routing_key: &str) -> &str {
    routing_key.rsplit('.').next().unwrap_or(routing_key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn double_encoded_bodies_are_accepted() {
        let inner = json!({"jsonrpc":"2.0","id":"1","method":"get","params":{}}).to_string();
        let outer = serde_json::to_vec(&Value::String(inner)).expect("encode");
        let req: Request = decode_body(&outer).expect("decode");
        assert_eq!(req.method, "get");
        assert_eq!(req.id, Some(json!("1")));
    }

    #[test]
    fn reply_outcome_maps_error_and_result() {
        let ok = Response::from_result(json!("a"), Ok(json!({"x": 1})));
        assert_eq!(ok.clone().into_outcome(), Ok(json!({"x": 1})));
        let wire = serde_json::to_value(&ok).expect("encode");
        assert_eq!(wire, json!({"jsonrpc":"2.0","id":"a","result":{"x":1}}));
        let err = Response::from_result(json!("a"), Err(RpcError::not_found("no such host")));
        assert_eq!(err.into_outcome().expect_err("error").code, STORAGE_LOOKUP_ERROR);
    }

    #[test]
    fn method_is_last_word() {
        assert_eq!(method_of("storage.get"), "get");
        assert_eq!(method_of("jobs.clusterexec.restart"), "restart");
        assert_eq!(method_of("plain"), "plain");
    }
}
