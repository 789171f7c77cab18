//! `/api/v0/cluster/{name}/deploy|upgrade|restart`: read an operation's record,
//! or start one through the cluster exec service.

use commissaire_core::model::{Cluster, ClusterDeploy, ClusterRestart, ClusterUpgrade, Model};
use serde_json::{Map, Value, json};

use super::{Api, ApiError, ApiResult, Reply, reject_unknown, string_field};
use crate::router::Operation;

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
    pub async fn start_operation(&self, name: &str, operation: Operation, body: &Map<String, Value>) -> ApiResult {
        let params = match operation {
            Operation::Deploy => {
                reject_unknown(body, &["version"])?;
                let version = string_field(body, "version")?
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| ApiError::bad_request("version is required: the OSTree version to deploy"))?;
                if version.len() > 128 || version.chars().any(|c| c.is_control()) {
                    return Err(ApiError::bad_request("version must be up to 128 printable characters"));
                }
                json!([name, version])
            }
            Operation::Upgrade | Operation::Restart => {
                reject_unknown(body, &[])?;
                json!([name])
            }
        };
        self.storage.get::<Cluster>(name).await?;
        if let Some(running) = self.running_operation(name).await? {
            return Err(ApiError::conflict(format!("cluster {name} already has a {running} in process")));
        }
        let record =
            self.call_service("clusterexec", &format!("jobs.clusterexec.{}", operation.as_str()), params).await?;
        tracing::info!(cluster = %name, operation = operation.as_str(), "operation started");
        Ok(Reply::created(record))
    }
}
