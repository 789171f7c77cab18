//! The Kubernetes side of a rolling operation on a managed cluster.
//!
//! When the cluster's container manager is of an API type (`kubernetes`,
//! `openshift`), each host's step is wrapped:
//!
//! 1. before acting: if the node is schedulable, its address is added to the
//!    operation record's `cordoned` list (written first), then the node is
//!    cordoned (`container.cordon`) and drained (`container.drain`, through the
//!    eviction API, honouring disruption budgets); a node that was already
//!    unschedulable is drained but never listed, so it is left as it was;
//! 2. after acting: the node must be `Ready` (`container.node_ready`, polled
//!    until `node_ready_timeout_seconds`), then a node this operation cordoned
//!    is uncordoned and removed from the list.
//!
//! When the operation ends — finished, failed or aborted — every node still
//! in `cordoned` is uncordoned ([`restore`]), so no node is left cordoned that
//! was not cordoned before the operation. Clusters without a manager or with
//! a `trivial` one are not touched.
//!
//! Knobs (in the operation's knobs object, all optional):
//! `drain_timeout_seconds` (default 300), `drain_retry_seconds` (5),
//! `drain_policy` (`fail` | `force` | `skip`, default `fail`) and
//! `node_ready_timeout_seconds` (300).

use std::time::Duration;

use commissaire_core::{
    bus::Bus,
    model::{Cluster, ClusterDeploy, ClusterRestart, ClusterUpgrade, ContainerManagerConfig, Model},
    storage_client::{StorageClient, StorageError},
};
use serde_json::{Map, Value, json};

use super::service::OpKind;
use crate::containermgr::{DrainOptions, kubernetes};

/// How often the node's readiness is polled after a host acted.
const READY_POLL: Duration = Duration::from_millis(500);
/// Default `node_ready_timeout_seconds`.
pub const DEFAULT_NODE_READY_TIMEOUT_SECONDS: f64 = 300.0;
/// Time allowed for a container manager call beyond its own timeouts.
const CALL_MARGIN: Duration = Duration::from_secs(30);

/// The node knobs of an operation.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeKnobs {
    pub drain: DrainOptions,
    pub ready_timeout: Duration,
}

impl NodeKnobs {
    /// Reads the node knobs from an operation's knobs object (other knobs
    /// are ignored here); an error names the knob.
    pub fn from_knobs(knobs: &Map<String, Value>) -> Result<Self, String> {
        let mut drain = Map::new();
        for (knob, option) in [
            ("drain_timeout_seconds", "timeout_seconds"),
            ("drain_retry_seconds", "retry_seconds"),
            ("drain_policy", "policy"),
        ] {
            if let Some(v) = knobs.get(knob) {
                drain.insert(option.to_string(), v.clone());
            }
        }
        let drain = DrainOptions::from_params(&drain).map_err(|e| format!("drain_{e}"))?;
        let ready_timeout = match knobs.get("node_ready_timeout_seconds") {
            None | Some(Value::Null) => Duration::from_secs_f64(DEFAULT_NODE_READY_TIMEOUT_SECONDS),
            Some(v) => match v.as_f64() {
                Some(s) if (0.0..=86_400.0).contains(&s) => Duration::from_secs_f64(s),
                _ => {
                    return Err(format!(
                        "node_ready_timeout_seconds: must be a number of seconds from 0 to 86400, got {v}"
                    ));
                }
            },
        };
        Ok(NodeKnobs { drain, ready_timeout })
    }

    /// The drain options as `container.drain` takes them.
    fn drain_params(&self) -> Value {
        let policy = match self.drain.policy {
            kubernetes::DrainPolicy::Fail => "fail",
            kubernetes::DrainPolicy::Force => "force",
            kubernetes::DrainPolicy::Skip => "skip",
        };
        json!({
            "timeout_seconds": self.drain.timeout.as_secs_f64(),
            "retry_seconds": self.drain.retry.as_secs_f64(),
            "policy": policy,
        })
    }
}

/// The records' `cordoned` list.
trait Cordoned: Model {
    fn cordoned(&mut self) -> &mut Vec<String>;
}

impl Cordoned for ClusterRestart {
    fn cordoned(&mut self) -> &mut Vec<String> {
        &mut self.cordoned
    }
}
impl Cordoned for ClusterUpgrade {
    fn cordoned(&mut self) -> &mut Vec<String> {
        &mut self.cordoned
    }
}
impl Cordoned for ClusterDeploy {
    fn cordoned(&mut self) -> &mut Vec<String> {
        &mut self.cordoned
    }
}

/// Adds (`true`) or removes an address in the record's `cordoned` list.
async fn mark_as<R: Cordoned>(storage: &StorageClient, cluster: &str, address: &str, add: bool) -> Result<(), String> {
    storage
        .update::<R, _, std::convert::Infallible>(cluster, 16, |record| {
            let list = record.cordoned();
            let present = list.iter().any(|a| a == address);
            if add && !present {
                list.push(address.to_string());
                Ok(true)
            } else if !add && present {
                list.retain(|a| a != address);
                Ok(true)
            } else {
                Ok(false)
            }
        })
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot record the cordoned node {address}: storage: {e}"))
}

async fn mark(storage: &StorageClient, kind: OpKind, cluster: &str, address: &str, add: bool) -> Result<(), String> {
    match kind {
        OpKind::Restart => mark_as::<ClusterRestart>(storage, cluster, address, add).await,
        OpKind::Upgrade => mark_as::<ClusterUpgrade>(storage, cluster, address, add).await,
        OpKind::Deploy => mark_as::<ClusterDeploy>(storage, cluster, address, add).await,
    }
}

async fn listed(storage: &StorageClient, kind: OpKind, cluster: &str) -> Result<Vec<String>, StorageError> {
    Ok(match kind {
        OpKind::Restart => storage.find::<ClusterRestart>(cluster).await?.map(|r| r.cordoned),
        OpKind::Upgrade => storage.find::<ClusterUpgrade>(cluster).await?.map(|r| r.cordoned),
        OpKind::Deploy => storage.find::<ClusterDeploy>(cluster).await?.map(|r| r.cordoned),
    }
    .unwrap_or_default())
}

/// The API manager of a cluster, if it has one (`None`: nothing to do).
async fn api_manager(storage: &StorageClient, cluster: &str) -> Result<Option<String>, String> {
    let cluster = storage.get::<Cluster>(cluster).await.map_err(|e| format!("cluster record: {e}"))?;
    if cluster.container_manager.is_empty() {
        return Ok(None);
    }
    match storage.find::<ContainerManagerConfig>(&cluster.container_manager).await {
        Ok(Some(config)) if config.kind == "kubernetes" || config.kind == "openshift" => Ok(Some(config.name)),
        Ok(_) => Ok(None),
        Err(e) => Err(format!("container manager record: {e}")),
    }
}

async fn call(bus: &dyn Bus, method: &str, params: Value, timeout: Duration) -> Result<Value, String> {
    bus.request(&format!("container.{method}"), params, timeout).await.map_err(|e| format!("container.{method}: {e}"))
}

/// The node steps around one host of an operation.
pub struct HostNodes<'a> {
    storage: &'a StorageClient,
    kind: OpKind,
    cluster: &'a str,
    manager: Option<String>,
    knobs: NodeKnobs,
}

impl<'a> HostNodes<'a> {
    /// Looks up the cluster's manager; without an API manager the steps do nothing.
    pub async fn prepare(
        storage: &'a StorageClient,
        kind: OpKind,
        cluster: &'a str,
        knobs: &Map<String, Value>,
    ) -> Result<Self, String> {
        let knobs = NodeKnobs::from_knobs(knobs)?;
        let manager = api_manager(storage, cluster).await?;
        Ok(HostNodes { storage, kind, cluster, manager, knobs })
    }

    fn bus(&self) -> &dyn Bus {
        self.storage.bus().as_ref()
    }

    /// Cordons (remembering it first) and drains the node of `address`.
    pub async fn before(&self, address: &str) -> Result<(), String> {
        let Some(manager) = &self.manager else { return Ok(()) };
        let short = commissaire_core::bus::DEFAULT_TIMEOUT;
        let status = call(self.bus(), "get_node_status", json!([manager, address]), short).await?;
        let already = status.pointer("/spec/unschedulable") == Some(&Value::Bool(true));
        if already {
            tracing::info!(cluster = %self.cluster, node = %address, "node already unschedulable: left as it is");
        } else {
            mark(self.storage, self.kind, self.cluster, address, true).await?;
            let was = call(self.bus(), "cordon", json!([manager, address]), short).await?;
            if was == Value::Bool(true) {
                // cordoned by someone else meanwhile: not ours to uncordon
                mark(self.storage, self.kind, self.cluster, address, false).await?;
            }
            tracing::info!(cluster = %self.cluster, node = %address, "node cordoned");
        }
        let report = call(
            self.bus(),
            "drain",
            json!([manager, address, self.knobs.drain_params()]),
            self.knobs.drain.timeout + CALL_MARGIN,
        )
        .await
        .map_err(|e| format!("drain of node {address}: {e}"))?;
        tracing::info!(cluster = %self.cluster, node = %address, report = %report, "node drained");
        Ok(())
    }

    /// Waits for the node to be `Ready`, then uncordons it if this operation
    /// cordoned it.
    pub async fn after(&self, address: &str) -> Result<(), String> {
        let Some(manager) = &self.manager else { return Ok(()) };
        let short = commissaire_core::bus::DEFAULT_TIMEOUT;
        let deadline = tokio::time::Instant::now() + self.knobs.ready_timeout;
        loop {
            let ready = call(self.bus(), "node_ready", json!([manager, address]), short).await;
            match ready {
                Ok(Value::Bool(true)) => break,
                Ok(_) | Err(_) if tokio::time::Instant::now() >= deadline => {
                    let why = ready.err().map(|e| format!(" (last answer: {e})")).unwrap_or_default();
                    return Err(format!(
                        "node {address} not Ready within {} seconds{why}",
                        self.knobs.ready_timeout.as_secs_f64()
                    ));
                }
                _ => tokio::time::sleep(READY_POLL).await,
            }
        }
        let ours = listed(self.storage, self.kind, self.cluster)
            .await
            .map_err(|e| format!("storage: {e}"))?
            .iter()
            .any(|a| a == address);
        if ours {
            call(self.bus(), "uncordon", json!([manager, address]), short).await?;
            mark(self.storage, self.kind, self.cluster, address, false).await?;
            tracing::info!(cluster = %self.cluster, node = %address, "node uncordoned");
        }
        Ok(())
    }
}

/// At the end of an operation: uncordons every node it cordoned and has not
/// uncordoned (a host that failed, an abort, a timeout). Failures are logged
/// and the node stays listed in the record.
pub async fn restore(storage: &StorageClient, kind: OpKind, cluster: &str) {
    let nodes = match listed(storage, kind, cluster).await {
        Ok(nodes) => nodes,
        Err(e) => {
            tracing::error!(%cluster, error = %e, "cannot read which nodes the operation cordoned");
            return;
        }
    };
    if nodes.is_empty() {
        return;
    }
    let manager = match api_manager(storage, cluster).await {
        Ok(Some(manager)) => manager,
        Ok(None) => {
            tracing::warn!(%cluster, ?nodes, "nodes are listed as cordoned but the cluster has no API manager any more");
            return;
        }
        Err(e) => {
            tracing::error!(%cluster, error = %e, ?nodes, "cannot uncordon the nodes the operation cordoned");
            return;
        }
    };
    for address in nodes {
        let done =
            call(storage.bus().as_ref(), "uncordon", json!([manager, address]), commissaire_core::bus::DEFAULT_TIMEOUT)
                .await;
        match done {
            Ok(_) => {
                if let Err(e) = mark(storage, kind, cluster, &address, false).await {
                    tracing::error!(%cluster, node = %address, error = %e, "node uncordoned but still listed");
                } else {
                    tracing::info!(%cluster, node = %address, "node restored to schedulable");
                }
            }
            Err(e) => {
                tracing::error!(%cluster, node = %address, error = %e, "CANNOT uncordon a node the operation cordoned")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_knobs_default_and_name_bad_values() {
        let k = NodeKnobs::from_knobs(&Map::new()).expect("defaults");
        assert_eq!(k.drain, DrainOptions::default());
        assert_eq!(k.ready_timeout, Duration::from_secs(300));
        let knobs = json!({"drain_policy": "force", "drain_timeout_seconds": 2, "batch": 3});
        let k = NodeKnobs::from_knobs(knobs.as_object().expect("object")).expect("knobs");
        assert_eq!((k.drain.policy, k.drain.timeout), (kubernetes::DrainPolicy::Force, Duration::from_secs(2)));
        let knobs = json!({"drain_policy": "later"});
        let err = NodeKnobs::from_knobs(knobs.as_object().expect("object")).expect_err("policy");
        assert!(err.starts_with("drain_policy"), "{err}");
        let knobs = json!({"node_ready_timeout_seconds": "x"});
        let err = NodeKnobs::from_knobs(knobs.as_object().expect("object")).expect_err("ready");
        assert!(err.starts_with("node_ready_timeout_seconds"), "{err}");
    }
}
