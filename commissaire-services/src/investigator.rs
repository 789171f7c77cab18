//! The investigator service: `jobs.investigate` (a notification with
//! `{"address", "cluster_data"}`, sent when a host is created).
//!
//! For the host it sets `investigating`, logs in over SSH with the host's
//! credentials (the key stays in memory), pins the host key on first contact
//! (a later, different key fails the host with a reason saying so), gathers the
//! facts (os, cpus, memory in MB, space in bytes), then sets `active` when the
//! host's cluster has a container manager that registered it, `disassociated`
//! otherwise — or `failed` with the reason. The bootstrap playbook step
//! (`bootstrapping`) is not run yet.
//!
//! The message is acknowledged after the investigation, so one whose
//! investigator died is investigated by another instance.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use commissaire_core::{
    bus::{Bus, DEFAULT_TIMEOUT, Handler},
    jsonrpc::RpcError,
    model::{Cluster, Host, HostCreds},
    storage_client::{StorageClient, StorageError},
    timestamp,
};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::transport::{Command, HostTarget, SshTransport};

/// The routing keys the service answers.
pub const PATTERNS: &[&str] = &["jobs.investigate"];
/// Its shared queue.
pub const QUEUE: &str = "investigator";

/// Operating systems the investigator manages (Atomic/OSTree hosts report
/// their distribution).
pub const SUPPORTED_OS: &[&str] = &["fedora", "rhel", "redhat", "centos", "debian", "ubuntu"];

/// Prints one `name=value` line per fact. Fixed text: no value from the API.
const FACTS: &str = r#". /etc/os-release 2>/dev/null; echo "os=$ID"; echo "cpus=$(nproc)"; awk '/^MemTotal:/ {printf "memory=%d\n", $2 / 1024}' /proc/meminfo; df -P -B1 -l -x tmpfs -x devtmpfs -x overlay -x squashfs 2>/dev/null | awk 'NR > 1 {s += $2} END {printf "space=%d\n", s}'"#;

/// The facts of a host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    pub os: String,
    pub cpus: u64,
    pub memory: u64,
    pub space: u64,
}

/// Parses the output of the facts script; a missing or malformed fact is an
/// error naming it.
pub fn parse_facts(output: &str) -> Result<Facts, String> {
    let mut facts = Facts::default();
    let (mut os, mut cpus, mut memory, mut space) = (None, None, None, None);
    for line in output.lines() {
        let Some((name, value)) = line.split_once('=') else { continue };
        let value = value.trim();
        match name {
            "os" => os = Some(value.to_ascii_lowercase()),
            "cpus" => cpus = value.parse().ok(),
            "memory" => memory = value.parse().ok(),
            "space" => space = value.parse().ok(),
            _ => {}
        }
    }
    facts.os = os.filter(|o| !o.is_empty()).ok_or("the host reported no OS (no ID in /etc/os-release)")?;
    facts.cpus = cpus.ok_or("the host reported no CPU count")?;
    facts.memory = memory.ok_or("the host reported no memory size")?;
    facts.space = space.ok_or("the host reported no disk space")?;
    Ok(facts)
}

/// Where and how to log in to `host`: its address, the credentials' user and
/// private key (decoded from base64, kept in memory only) and the pinned host
/// key when there is one. Shared by every service that logs in to hosts.
pub fn host_target(host: &Host, creds: &HostCreds) -> Result<HostTarget, String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(creds.ssh_priv_key.as_bytes())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(Zeroizing::new)
        .ok_or("the credentials' ssh_priv_key is not a base64-encoded key file")?;
    let target = HostTarget::new(host.address.clone(), creds.remote_user.clone(), key.as_str());
    Ok(if host.ssh_host_key.is_empty() { target } else { target.pinned(host.ssh_host_key.clone()) })
}

pub struct Investigator {
    bus: Arc<dyn Bus>,
    storage: StorageClient,
    ssh: SshTransport,
}

impl Investigator {
    pub fn new(bus: Arc<dyn Bus>, ssh: SshTransport) -> Self {
        Self { storage: StorageClient::new(bus.clone()), bus, ssh }
    }

    /// Investigates one host; the outcome is recorded on the host.
    pub async fn investigate(&self, address: &str) -> Result<(), StorageError> {
        let Some(host) = self.set_status(address, "investigating", "", |_| {}).await? else {
            tracing::info!(%address, "host deleted before its investigation");
            return Ok(());
        };
        match self.look(&host).await {
            Ok((facts, host_key)) => {
                let (status, reason) = match self.place(address).await {
                    Ok(status) => (status, String::new()),
                    Err(reason) => ("failed", reason),
                };
                self.set_status(address, status, &reason, |h| {
                    h.os = facts.os.clone();
                    h.cpus = facts.cpus;
                    h.memory = facts.memory;
                    h.space = facts.space;
                    if h.ssh_host_key.is_empty() {
                        h.ssh_host_key = host_key.clone();
                    }
                })
                .await?;
                tracing::info!(%address, status, os = %facts.os, "investigated");
            }
            Err(reason) => {
                tracing::warn!(%address, %reason, "investigation failed");
                self.set_status(address, "failed", &reason, |_| {}).await?;
            }
        }
        Ok(())
    }

    /// Logs in and gathers the facts: the facts and the host key seen.
    async fn look(&self, host: &Host) -> Result<(Facts, String), String> {
        let creds = match self.storage.get::<HostCreds>(&host.address).await {
            Ok(creds) => creds,
            Err(StorageError::NotFound { .. }) => return Err("the host has no credentials".into()),
            Err(err) => return Err(format!("credentials unavailable: {err}")),
        };
        let target = host_target(host, &creds)?;
        let output = self.ssh.run(&target, &Command::script(FACTS)).await.map_err(|e| e.to_string())?;
        if !output.success() {
            return Err(format!("gathering facts failed on the host: {}", output.stderr.trim()));
        }
        let facts = parse_facts(&output.stdout)?;
        if !SUPPORTED_OS.contains(&facts.os.as_str()) {
            return Err(format!("unsupported OS {:?} (supported: {})", facts.os, SUPPORTED_OS.join(", ")));
        }
        Ok((facts, output.host_key))
    }

    /// The status a reachable host ends in: `active` once its cluster's
    /// container manager registered it, else `disassociated`.
    async fn place(&self, address: &str) -> Result<&'static str, String> {
        let clusters = self.storage.list::<Cluster>().await.map_err(|e| format!("storage: {e}"))?;
        let Some(cluster) = clusters.iter().find(|c| c.hostset.iter().any(|h| h == address)) else {
            return Ok("disassociated");
        };
        if cluster.container_manager.is_empty() {
            return Ok("disassociated");
        }
        self.bus
            .request("container.register_node", json!([cluster.container_manager, address]), DEFAULT_TIMEOUT)
            .await
            .map(|_| "active")
            .map_err(|e| format!("container manager {} did not register the node: {e}", cluster.container_manager))
    }

    /// Sets the status (and reason) with compare-and-swap, applying `also`;
    /// `None` when the host no longer exists.
    async fn set_status(
        &self,
        address: &str,
        status: &str,
        reason: &str,
        also: impl Fn(&mut Host),
    ) -> Result<Option<Host>, StorageError> {
        let outcome = self
            .storage
            .update::<Host, _, std::convert::Infallible>(address, 16, |host| {
                host.status = status.to_string();
                host.reason = reason.to_string();
                host.last_check = timestamp::now();
                also(host);
                Ok(true)
            })
            .await;
        match outcome {
            Ok(Ok(host)) => Ok(Some(host)),
            Ok(Err(never)) => match never {},
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

#[async_trait]
impl Handler for Investigator {
    async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        if method != "investigate" {
            return Err(RpcError::method_not_found(method));
        }
        let address = params
            .get("address")
            .and_then(Value::as_str)
            .filter(|a| commissaire_core::model::is_valid_address(a))
            .ok_or_else(|| RpcError::invalid_params("address must be a host address"))?;
        self.investigate(address).await.map_err(|e| RpcError::internal(format!("storage: {e}")))?;
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_parsed_and_missing_ones_named() {
        let facts = parse_facts("os=Debian\ncpus=2\nmemory=23994\nspace=270582939648\n").expect("facts");
        assert_eq!(facts, Facts { os: "debian".into(), cpus: 2, memory: 23994, space: 270582939648 });
        assert_eq!(
            parse_facts("os=\ncpus=2\nmemory=1\nspace=1"),
            Err("the host reported no OS (no ID in /etc/os-release)".into())
        );
        assert_eq!(parse_facts("os=fedora\ncpus=x\nmemory=1\nspace=1"), Err("the host reported no CPU count".into()));
    }
}
