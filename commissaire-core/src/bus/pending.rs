//! Callers waiting for replies, keyed by the JSON-RPC request id. Each backend
//! routes reply messages here; a reply for an id nobody waits for any more (the
//! caller timed out) is dropped.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::sync::oneshot;

use super::BusError;
use crate::jsonrpc::{self, Response};

#[derive(Default)]
pub struct PendingReplies {
    waiting: Mutex<HashMap<String, oneshot::Sender<Response>>>,
}

/// Removes its entry when the caller stops waiting, whatever the reason.
pub struct PendingGuard<'a> {
    owner: &'a PendingReplies,
    id: String,
    rx: oneshot::Receiver<Response>,
}

impl PendingGuard<'_> {
    /// Waits for what is left of a caller's `timeout`, begun at `started` (the
    /// time spent publishing is not waited again); a timeout reports the caller's
    /// whole `timeout`.
    pub async fn wait_rest(self, routing_key: &str, started: Instant, timeout: Duration) -> Result<Value, BusError> {
        self.wait(routing_key, timeout.saturating_sub(started.elapsed())).await.map_err(|err| match err {
            BusError::Timeout { .. } => BusError::Timeout { routing_key: routing_key.to_string(), timeout },
            other => other,
        })
    }

    /// Waits for the reply to the request sent with `routing_key`: its outcome, a
    /// transport error if the backend gave up on it, or a timeout.
    pub async fn wait(mut self, routing_key: &str, timeout: Duration) -> Result<Value, BusError> {
        match tokio::time::timeout(timeout, &mut self.rx).await {
            Ok(Ok(response)) => Ok(response.into_outcome()?),
            Ok(Err(_)) => Err(BusError::Transport(format!(
                "connection to the bus was lost while waiting for the reply to {routing_key}"
            ))),
            Err(_) => Err(BusError::Timeout { routing_key: routing_key.to_string(), timeout }),
        }
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.owner.lock().remove(&self.id);
    }
}

impl PendingReplies {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Response>>> {
        // A poisoned map only means another caller panicked mid-insert; the map
        // itself is still consistent.
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a caller waiting for the reply to `id`.
    pub fn register(&self, id: &str) -> PendingGuard<'_> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id.to_string(), tx);
        PendingGuard { owner: self, id: id.to_string(), rx }
    }

    /// Hands a reply to its caller. Returns false if nobody waits for it.
    pub fn complete(&self, response: Response) -> bool {
        let Some(id) = response.id.as_str().map(str::to_string) else { return false };
        match self.lock().remove(&id) {
            Some(tx) => tx.send(response).is_ok(),
            None => false,
        }
    }

    /// Decodes a reply as it came off the wire and hands it to its caller; see
    /// [`Self::complete`].
    pub fn complete_encoded(&self, body: &[u8]) {
        match jsonrpc::decode_body::<Response>(body) {
            Ok(response) => {
                if !self.complete(response) {
                    tracing::debug!("dropping a reply nobody waits for (its caller timed out)");
                }
            }
            Err(err) => tracing::warn!(error = %err, "dropping an undecodable reply"),
        }
    }

    /// Fails every waiting caller now (the connection their replies would come on
    /// is gone); they see a transport error instead of waiting for the timeout.
    pub fn fail_all(&self) {
        self.lock().clear();
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
