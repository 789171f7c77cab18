//! The audit log: one record per mutating REST request, under
//! `/commissaire/audit/<time in ns, 20 digits>-<random>` in the store that holds
//! clusters, so keys sort by time.
//!
//! * `storage.audit_append` `{"entry": {...}}` stores an entry (its `time`, in
//!   the original's timestamp format, names the key) and publishes it as
//!   `notify.audit.entry` (the entry, with its `cluster` member when it has one);
//! * `storage.audit_list` `{"since", "until" (ns since the epoch, inclusive),
//!   "target", "limit"}` returns the newest `limit` matching entries, oldest
//!   first. `target` matches an entry's target or anything under it
//!   (`cluster/prod` matches `cluster/prod/hosts/10.0.0.1`).
//!
//! Retention is by count: after every [`TRIM_EVERY`]th append, an instance
//! deletes the oldest entries beyond `audit_retention` (default
//! [`DEFAULT_RETENTION`]), so the log holds at most the retention plus
//! `TRIM_EVERY` entries per storage service instance.

use std::sync::atomic::{AtomicU64, Ordering};

use commissaire_core::{jsonrpc::RpcError, timestamp};
use serde_json::{Map, Value, json};

use crate::store::{Expect, Store};

/// Where the entries live.
pub const PREFIX: &str = "/commissaire/audit/";
/// Entries kept unless `audit_retention` says otherwise.
pub const DEFAULT_RETENTION: usize = 10_000;
/// Appends between two trims by one instance.
pub const TRIM_EVERY: u64 = 32;
/// The most entries one `audit_list` returns.
pub const MAX_LIMIT: usize = 10_000;
/// Members every entry must have, as strings.
const STRING_MEMBERS: &[&str] = &["time", "identity", "role", "method", "route", "target", "client"];

/// The audit log of one storage service instance.
pub struct AuditLog {
    retention: usize,
    appended: AtomicU64,
}

impl AuditLog {
    pub fn new(retention: usize) -> Self {
        Self { retention: retention.max(1), appended: AtomicU64::new(0) }
    }

    /// Checks and stores an entry; returns it as stored.
    pub async fn append(&self, store: &dyn Store, params: &Value) -> Result<Value, RpcError> {
        let entry = validate(params.get("entry"))?;
        let at = entry.get("time").and_then(Value::as_str).and_then(timestamp::parse).ok_or_else(|| {
            RpcError::invalid_params("entry.time must be a timestamp like 2017-06-28T14:03:11.123456")
        })?;
        let nanos = u64::try_from(at.unix_timestamp_nanos()).unwrap_or(0);
        let key = format!("{PREFIX}{nanos:020}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let value = Value::Object(entry);
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        store
            .put(&key, bytes, Expect::Absent)
            .await
            .map_err(|e| RpcError::internal(format!("cannot store the audit entry: {e}")))?;
        if self.appended.fetch_add(1, Ordering::Relaxed).is_multiple_of(TRIM_EVERY) {
            self.trim(store).await;
        }
        Ok(value)
    }

    /// Deletes the oldest entries beyond the retention.
    async fn trim(&self, store: &dyn Store) {
        let entries = match store.list(PREFIX).await {
            Ok(entries) => entries,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list the audit log to trim it");
                return;
            }
        };
        let excess = entries.len().saturating_sub(self.retention);
        if excess == 0 {
            return;
        }
        let mut keys: Vec<String> = entries.into_iter().map(|(k, _)| k).collect();
        keys.sort_unstable();
        for key in keys.into_iter().take(excess) {
            if let Err(err) = store.delete(&key, Expect::Any).await {
                tracing::warn!(error = %err, "cannot delete an old audit entry");
                return;
            }
        }
        tracing::debug!(deleted = excess, "trimmed the audit log");
    }

    /// The newest `limit` entries matching the filter, oldest first.
    pub async fn list(&self, store: &dyn Store, params: &Value) -> Result<Value, RpcError> {
        let bound = |name: &str| -> Result<Option<u64>, RpcError> {
            match params.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| RpcError::invalid_params(format!("{name} must be nanoseconds since the epoch"))),
            }
        };
        let since = bound("since")?;
        let until = bound("until")?;
        let target = match params.get("target") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) => Some(t.trim_end_matches('/').to_string()),
            Some(_) => return Err(RpcError::invalid_params("target must be a string")),
        };
        let limit = match params.get("limit") {
            None | Some(Value::Null) => 1000,
            Some(v) => v.as_u64().map(|n| (n as usize).clamp(1, MAX_LIMIT)).ok_or_else(|| {
                RpcError::invalid_params(format!("limit must be an integer between 1 and {MAX_LIMIT}"))
            })?,
        };
        let mut entries =
            store.list(PREFIX).await.map_err(|e| RpcError::internal(format!("cannot read the audit log: {e}")))?;
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut found = Vec::new();
        for (key, stored) in entries.iter().rev() {
            let nanos =
                key.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next()).and_then(|n| n.parse::<u64>().ok());
            let Some(nanos) = nanos else { continue };
            if since.is_some_and(|s| nanos < s) || until.is_some_and(|u| nanos > u) {
                continue;
            }
            let Ok(entry) = serde_json::from_slice::<Value>(&stored.value) else {
                tracing::warn!(key, "skipping an unreadable audit entry");
                continue;
            };
            if let Some(target) = &target {
                let t = entry.get("target").and_then(Value::as_str).unwrap_or_default();
                if !(t == target || t.starts_with(&format!("{target}/"))) {
                    continue;
                }
            }
            found.push(entry);
            if found.len() == limit {
                break;
            }
        }
        found.reverse();
        Ok(Value::Array(found))
    }
}

/// The entry's members: the known ones, with their types checked.
fn validate(entry: Option<&Value>) -> Result<Map<String, Value>, RpcError> {
    let Some(Value::Object(entry)) = entry else {
        return Err(RpcError::invalid_params("entry must be an object"));
    };
    let mut out = Map::new();
    for member in STRING_MEMBERS {
        match entry.get(*member) {
            Some(Value::String(s)) => out.insert((*member).to_string(), json!(s)),
            _ => return Err(RpcError::invalid_params(format!("entry.{member} must be a string"))),
        };
    }
    match entry.get("status") {
        Some(Value::Number(n)) if n.is_u64() => out.insert("status".into(), Value::Number(n.clone())),
        _ => return Err(RpcError::invalid_params("entry.status must be an HTTP status code")),
    };
    match entry.get("cluster") {
        None | Some(Value::Null) => {}
        Some(Value::String(c)) => {
            out.insert("cluster".into(), json!(c));
        }
        Some(_) => return Err(RpcError::invalid_params("entry.cluster must be a string")),
    }
    Ok(out)
}
