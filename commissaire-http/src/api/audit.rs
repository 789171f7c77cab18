//! The audit log as the REST server sees it: entries appended after every
//! mutating request, `GET /api/v0/audit`, and the storage-derived gauges of
//! `/metrics`.

use std::{net::IpAddr, time::Duration};

use commissaire_core::{metrics, model::HOST_STATUSES, model::OPERATION_STATUSES, timestamp};
use serde_json::{Map, Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{Api, ApiError, ApiResult, Reply};

/// How long a scrape waits for the storage counts before serving the last ones.
const COUNTS_TIMEOUT: Duration = Duration::from_secs(2);

/// What one mutating request did, for the audit log.
#[derive(Debug, Clone)]
pub struct AuditRecord<'a> {
    pub identity: &'a str,
    pub role: &'static str,
    pub method: &'a str,
    pub route: &'static str,
    pub target: String,
    pub cluster: Option<String>,
    pub status: u16,
    pub client: IpAddr,
}

impl Api {
    /// Appends an entry to the audit log. A failure is logged and counted: the
    /// request it describes already happened.
    pub async fn audit(&self, record: AuditRecord<'_>) {
        let mut entry = json!({
            "time": timestamp::now(),
            "identity": record.identity,
            "role": record.role,
            "method": record.method,
            "route": record.route,
            "target": record.target,
            "status": record.status,
            "client": record.client.to_string(),
        });
        if let (Some(cluster), Some(map)) = (record.cluster, entry.as_object_mut()) {
            map.insert("cluster".into(), json!(cluster));
        }
        if let Err(err) = self.bus.request("storage.audit_append", json!({"entry": entry}), self.service_timeout).await
        {
            metrics::get().error(metrics::ErrorKind::Audit);
            tracing::error!(error = %err, route = record.route, "could not write the audit entry");
        }
    }

    /// `GET /api/v0/audit?since=&until=&target=&limit=`.
    pub async fn list_audit(&self, query: Option<&str>) -> ApiResult {
        let mut params = Map::new();
        for (name, value) in parse_query(query)? {
            match name.as_str() {
                "since" | "until" => {
                    let at = parse_time(&value).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "{name} must be a time like 2026-01-31T12:00:00Z (RFC 3339) or 2026-01-31T12:00:00.000000 (UTC)"
                        ))
                    })?;
                    // Before 1970 is 0; after 2554 (beyond u64 nanoseconds) is the end of time.
                    let nanos = at.unix_timestamp_nanos().clamp(0, i128::from(u64::MAX)) as u64;
                    params.insert(name, json!(nanos));
                }
                "target" => {
                    let ok = !value.is_empty()
                        && value.len() <= 600
                        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
                    if !ok {
                        return Err(ApiError::bad_request(
                            "target must be a resource path such as cluster/prod or host/10.0.0.1",
                        ));
                    }
                    params.insert(name, json!(value));
                }
                "limit" => {
                    let n = value
                        .parse::<u64>()
                        .ok()
                        .filter(|n| (1..=10_000).contains(n))
                        .ok_or_else(|| ApiError::bad_request("limit must be an integer from 1 to 10000"))?;
                    params.insert(name, json!(n));
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter {other}; allowed: since, until, target, limit"
                    )));
                }
            }
        }
        let entries = self
            .bus
            .request("storage.audit_list", Value::Object(params), self.service_timeout)
            .await
            .map_err(|e| super::service_error("storage", e))?;
        Ok(Reply::ok(entries))
    }

    /// Refreshes the host and operation gauges from storage (bounded wait; on
    /// failure the previous values stay and the error is counted).
    pub async fn refresh_gauges(&self) {
        let counts = match self.bus.request("storage.counts", json!({}), COUNTS_TIMEOUT).await {
            Ok(counts) => counts,
            Err(err) => {
                metrics::get().error(metrics::ErrorKind::MetricsRefresh);
                tracing::warn!(error = %err, "cannot refresh the storage gauges");
                return;
            }
        };
        let pairs = |v: Option<&Value>| -> Vec<(String, i64)> {
            v.and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, n)| (k.clone(), n.as_i64().unwrap_or(0))).collect())
                .unwrap_or_default()
        };
        let m = metrics::get();
        m.set_hosts(HOST_STATUSES, &pairs(counts.get("hosts")));
        for kind in ["restart", "upgrade", "deploy"] {
            m.set_operations(kind, OPERATION_STATUSES, &pairs(counts.get("operations").and_then(|o| o.get(kind))));
        }
    }
}

/// A query string's `name=value` pairs, percent-decoded; a name given twice is
/// refused.
pub(crate) fn parse_query(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name).ok_or_else(|| ApiError::bad_request("the query string is not valid"))?;
        let value = percent_decode(value).ok_or_else(|| ApiError::bad_request("the query string is not valid"))?;
        if out.iter().any(|(n, _)| *n == name) {
            return Err(ApiError::bad_request(format!("query parameter {name} is given more than once")));
        }
        out.push((name, value));
    }
    Ok(out)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// RFC 3339, or the original's timestamp format (UTC).
fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok().or_else(|| timestamp::parse(text))
}

#[cfg(test)]
mod query_tests {
    use super::*;

    #[test]
    fn queries_decode_and_refuse_repeats() {
        let q = parse_query(Some("since=2026-01-31T12%3A00%3A00Z&target=cluster/prod")).expect("parse");
        assert_eq!(q[0], ("since".into(), "2026-01-31T12:00:00Z".into()));
        assert!(parse_query(Some("a=1&a=2")).is_err());
        assert!(parse_query(Some("a=%zz")).is_err());
        assert!(parse_time("2026-01-31T12:00:00Z").is_some());
        assert!(parse_time("2026-01-31T12:00:00.000000").is_some());
        assert!(parse_time("yesterday").is_none());
    }
}
