//! The service side of a request, shared by every backend: decode the JSON-RPC
//! message, check the method against the routing key, run the handler and encode
//! the reply. The in-process bus hands over the decoded [`Request`] itself
//! ([`handle_request`]); the brokers go through the bytes ([`handle_delivery`]).

use serde_json::Value;

use super::Handler;
use crate::jsonrpc::{self, Request, Response, RpcError};

/// Handles one delivered message and returns the encoded reply, or `None` for a
/// notification (no `id`), which gets no reply.
pub async fn handle_delivery(handler: &dyn Handler, routing_key: &str, body: &[u8]) -> Option<Vec<u8>> {
    let request: Request = match jsonrpc::decode_body(body) {
        Ok(request) => request,
        Err(err) => {
            tracing::warn!(routing_key, error = %err, "dropping undecodable bus message");
            // Without a decodable id the caller can only be told by timeout.
            let reply = Response::from_result(Value::Null, Err(RpcError::new(jsonrpc::PARSE_ERROR, err.to_string())));
            return serde_json::to_vec(&reply).ok();
        }
    };
    let response = handle_request(handler, routing_key, request).await?;
    serde_json::to_vec(&response).ok()
}

/// Handles one decoded request and returns the reply, or `None` for a
/// notification.
pub async fn handle_request(handler: &dyn Handler, routing_key: &str, request: Request) -> Option<Response> {
    let expected = jsonrpc::method_of(routing_key);
    let outcome = if request.jsonrpc != "2.0" {
        Err(RpcError::new(jsonrpc::INVALID_REQUEST, "jsonrpc must be \"2.0\""))
    } else if request.method != expected {
        Err(RpcError::new(
            jsonrpc::INVALID_REQUEST,
            format!("method {:?} does not match routing key {routing_key:?}", request.method),
        ))
    } else {
        let params = if request.params.is_null() { Value::Object(Default::default()) } else { request.params };
        handler.call(&request.method, params).await
    };
    crate::metrics::get().bus_handled(routing_key, outcome.is_ok());
    let id = request.id?;
    if let Err(err) = &outcome {
        tracing::debug!(routing_key, code = err.code, message = %err.message, "request failed");
    }
    Some(Response::from_result(id, outcome))
}
