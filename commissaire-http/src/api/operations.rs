//! `/api/v0/cluster/{name}/deploy|upgrade|restart`: read an operation's record,
//! or start one through the cluster exec service.

use commissaire_core::model::{Cluster, ClusterDeploy, ClusterRestart, ClusterUpgrade, Model};
use commissaire_services::clusterexec::plan::Knobs;
use serde_json::{Map, Value, json};

use super::{Api, ApiError, ApiResult, Reply, reject_unknown, string_field};
use crate::router::{Control, Operation};

impl Api {
    pub async fn get_operation(&self, name: &str, operation: Operation) -> ApiResult {
        let missing = || ApiError::not_found(format!("cluster {name} has no {} record", operation.as_str()));
        let record = match operation {
            Operation::Deploy => self.storage.find::<ClusterDeploy>(name).await?.map(|r| r.to_full_json()),
            Operation::Upgrade => self.storage.find::<ClusterUpgrade>(name).await?.map(|r| r.to_full_json()),
            Operation::Restart => self.storage.find::<ClusterRestart>(name).await?.map(|r| r.to_full_json()),
        };
        match record {
            Some(record) => Ok(Reply::ok(record)),
            None => {
                // Say which is missing: the cluster or only the record.
                self.storage.get::<Cluster>(name).await?;
                Err(missing())
            }
        }
    }

    /// Starts an operation; the service answers with the initial record.
    /// The optional knobs ([`KNOBS`]) go to the service as the last params
    /// element (an object), only when some are given.
    pub async fn start_operation(&self, name: &str, operation: Operation, body: &Map<String, Value>) -> ApiResult {
        let knobs = knobs_of(body)?;
        let mut params = match operation {
            Operation::Deploy => {
                let mut allowed = vec!["version"];
                allowed.extend_from_slice(KNOBS);
                reject_unknown(body, &allowed)?;
                let version = string_field(body, "version")?
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| ApiError::bad_request("version is required: the OSTree version to deploy"))?;
                if version.len() > 128 || version.chars().any(|c| c.is_control()) {
                    return Err(ApiError::bad_request("version must be up to 128 printable characters"));
                }
                json!([name, version])
            }
            Operation::Upgrade | Operation::Restart => {
                reject_unknown(body, KNOBS)?;
                json!([name])
            }
        };
        if let (Some(knobs), Some(items)) = (knobs, params.as_array_mut()) {
            items.push(Value::Object(knobs));
        }
        self.storage.get::<Cluster>(name).await?;
        if let Some(running) = self.running_operation(name).await? {
            return Err(ApiError::conflict(format!("cluster {name} already has a {running} in process")));
        }
        let record =
            self.call_service("clusterexec", &format!("jobs.clusterexec.{}", operation.as_str()), params).await?;
        tracing::info!(cluster = %name, operation = operation.as_str(), "operation started");
        Ok(Reply::created(record))
    }

    /// Pauses, resumes or aborts the cluster's running operation: the request
    /// is written into its record (`control`), which the cluster exec service
    /// reads before each step. A pause lets the hosts in process finish and
    /// starts no new one until resumed; an abort lets them finish and ends the
    /// operation (`phase` `aborted`).
    pub async fn control_operation(&self, name: &str, operation: Operation, control: Control) -> ApiResult {
        if control == Control::RetryFailed {
            return self.retry_failed(name, operation).await;
        }
        let attempts = super::CAS_ATTEMPTS;
        let record = match operation {
            Operation::Deploy => self
                .storage
                .update::<ClusterDeploy, _, ApiError>(name, attempts, |r| {
                    apply_control(&r.status, &mut r.control, control)
                })
                .await?
                .map(|r| r.to_full_json()),
            Operation::Upgrade => self
                .storage
                .update::<ClusterUpgrade, _, ApiError>(name, attempts, |r| {
                    apply_control(&r.status, &mut r.control, control)
                })
                .await?
                .map(|r| r.to_full_json()),
            Operation::Restart => self
                .storage
                .update::<ClusterRestart, _, ApiError>(name, attempts, |r| {
                    apply_control(&r.status, &mut r.control, control)
                })
                .await?
                .map(|r| r.to_full_json()),
        }?;
        tracing::info!(cluster = %name, operation = operation.as_str(), control = control.as_str(), "operation control");
        Ok(Reply::ok(record))
    }
}

impl Api {
    /// Starts an ended operation again over its failed hosts (and the hosts it
    /// had not reached); the done ones are not touched. 201 with the record;
    /// 409 while any operation of the cluster is in process or when there is
    /// no failed host; 404 without a record.
    async fn retry_failed(&self, name: &str, operation: Operation) -> ApiResult {
        // What can be answered from the record is, without the service.
        if self.get_operation(name, operation).await?.body["status"] == "in_process" {
            return Err(ApiError::conflict(format!(
                "the {} of cluster {name} is still in process",
                operation.as_str()
            )));
        }
        let record = self
            .call_service("clusterexec", "jobs.clusterexec.retry_failed", json!([name, operation.as_str()]))
            .await?;
        tracing::info!(cluster = %name, operation = operation.as_str(), "retrying the failed hosts");
        Ok(Reply::created(record))
    }
}

/// Sets a record's `control` for an operator's request; whether it changed.
/// Only a running operation takes one, and an abort is final.
fn apply_control(status: &str, current: &mut String, control: Control) -> Result<bool, ApiError> {
    if status != "in_process" {
        return Err(ApiError::conflict(format!("the operation is {status}, not in process")));
    }
    let wanted = match control {
        Control::Pause | Control::Resume if current == "abort" => {
            return Err(ApiError::conflict("the operation is being aborted"));
        }
        Control::Pause => "pause",
        Control::Resume => "",
        Control::Abort => "abort",
        Control::RetryFailed => {
            return Err(ApiError::bad_request("retry-failed is not a control of a running operation"));
        }
    };
    let changed = current != wanted;
    *current = wanted.to_string();
    Ok(changed)
}

/// The optional rollout knobs of a PUT body (see `clusterexec::plan::Knobs`,
/// and `clusterexec::nodes::NodeKnobs` for the node knobs of managed clusters).
pub const KNOBS: &[&str] = &[
    "batch",
    "failure_budget",
    "soak_seconds",
    "host_timeout_seconds",
    "health_gate",
    "drain_timeout_seconds",
    "drain_retry_seconds",
    "drain_policy",
    "node_ready_timeout_seconds",
];

/// The knob members of `body`, checked (400 naming the field); `None` when
/// there are none.
fn knobs_of(body: &Map<String, Value>) -> Result<Option<Map<String, Value>>, ApiError> {
    let given: Map<String, Value> =
        body.iter().filter(|(k, _)| KNOBS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    if given.is_empty() {
        return Ok(None);
    }
    for (field, value) in &given {
        let ok = match field.as_str() {
            "batch" => value.is_i64() || value.is_string(),
            "health_gate" => value.is_boolean(),
            "drain_policy" => value.is_string(),
            "drain_timeout_seconds" | "drain_retry_seconds" | "node_ready_timeout_seconds" => value.is_number(),
            _ => value.is_i64(),
        };
        if !ok {
            let expected = match field.as_str() {
                "batch" => "a count or a percentage such as \"25%\"",
                "health_gate" => "true or false",
                "drain_policy" => "one of fail, force, skip",
                "drain_timeout_seconds" | "drain_retry_seconds" | "node_ready_timeout_seconds" => "a number of seconds",
                _ => "an integer",
            };
            return Err(ApiError::bad_request(format!("{field}: must be {expected}")));
        }
    }
    let knobs: Knobs = serde_json::from_value(Value::Object(given.clone()))
        .map_err(|e| ApiError::bad_request(format!("knobs: {e}")))?;
    knobs.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    commissaire_services::clusterexec::nodes::NodeKnobs::from_knobs(&given).map_err(ApiError::bad_request)?;
    Ok(Some(given))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("an object")
    }

    #[test]
    fn knobs_are_checked_and_the_field_named() {
        assert_eq!(knobs_of(&body(json!({"version": "1"}))).expect("none"), None);
        let given = knobs_of(&body(json!({"batch": "40%", "soak_seconds": 5}))).expect("valid");
        assert_eq!(given, Some(body(json!({"batch": "40%", "soak_seconds": 5}))));
        for (bad, field) in [
            (json!({"batch": 0}), "batch"),
            (json!({"batch": "200%"}), "batch"),
            (json!({"batch": true}), "batch"),
            (json!({"failure_budget": -1}), "failure_budget"),
            (json!({"soak_seconds": "x"}), "soak_seconds"),
            (json!({"host_timeout_seconds": 0}), "host_timeout_seconds"),
            (json!({"health_gate": 1}), "health_gate"),
        ] {
            let err = knobs_of(&body(bad.clone())).expect_err("refused");
            assert!(format!("{err:?}").contains(field), "{bad}: {err:?}");
        }
    }
}
