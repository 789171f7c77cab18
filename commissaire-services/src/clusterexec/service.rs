//! The clusterexec service: `jobs.clusterexec.restart|upgrade|deploy` on the
//! shared queue `clusterexec`.
//!
//! A request's params are an array: the cluster's name, for `deploy` the
//! version to deploy, and optionally, as the last element, an object of
//! [`Knobs`] (absent: the defaults, the original's behaviour). The service
//! checks them, reads the cluster, writes the initial record (`in_process`,
//! `started_at`, empty host lists, `knobs`) with compare-and-swap, refusing
//! with a conflict (409) when any operation of the cluster is in process, and
//! replies with that record at once. The operation then runs in a task of its
//! own, driven by the [planner](super::plan): it starts the hosts of a batch
//! in parallel (each runs the operation's playbook over SSH), records every
//! host's move from `in_process` to the done list (`restarted`, `upgraded`,
//! `deployed`) or to `failed_hosts`, and ends the record `finished` or
//! `failed` (with `reason`) and `finished_at`. The final write is retried; a
//! record never stays `in_process` while this process lives.
//!
//! Per host: restart runs `restart.yaml` (reboot, wait for a new boot id);
//! upgrade runs `upgrade.yaml` with the variables of the host's OS; deploy
//! runs `deploy.yaml` with `commissaire_deploy_version`, then `restart.yaml`
//! so that the deployed version is the one booted.
//!
//! Not done yet: progress lives in the record but is not resumed by another
//! instance (no lease), there are no pause/resume/abort controls and no
//! events are published.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use commissaire_core::{
    bus::Handler,
    jsonrpc::RpcError,
    model::{Cluster, ClusterDeploy, ClusterRestart, ClusterUpgrade, Host, HostCreds, Model},
    storage_client::{StorageClient, StorageError},
    timestamp,
};
use serde_json::{Map, Value, json};
use tokio::task::JoinSet;

use super::plan::{self, Decision, HostState, Knobs, Observation, OpState, Phase};
use crate::{
    investigator::host_target,
    playbook::{OsSupport, Playbook, PlaybookError, PlaybookRunner},
    transport::{Command, SshTransport},
};

/// The routing keys the service answers.
pub const PATTERNS: &[&str] = &["jobs.clusterexec.*"];
/// Its shared queue.
pub const QUEUE: &str = "clusterexec";

/// How many times the final write of a record is tried.
const FINAL_WRITE_ATTEMPTS: u32 = 8;

/// The operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Restart,
    Upgrade,
    Deploy,
}

impl OpKind {
    pub fn from_method(method: &str) -> Option<Self> {
        match method {
            "restart" => Some(OpKind::Restart),
            "upgrade" => Some(OpKind::Upgrade),
            "deploy" => Some(OpKind::Deploy),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Restart => "restart",
            OpKind::Upgrade => "upgrade",
            OpKind::Deploy => "deploy",
        }
    }
}

/// The playbooks of the three operations.
#[derive(Debug, Clone)]
pub struct Playbooks {
    pub restart: Playbook,
    pub upgrade: Playbook,
    pub deploy: Playbook,
}

impl Playbooks {
    /// Loads `restart.yaml`, `upgrade.yaml` and `deploy.yaml` from `dir`.
    pub fn load(dir: &std::path::Path) -> Result<Self, PlaybookError> {
        Ok(Self {
            restart: Playbook::load(dir.join("restart.yaml"))?,
            upgrade: Playbook::load(dir.join("upgrade.yaml"))?,
            deploy: Playbook::load(dir.join("deploy.yaml"))?,
        })
    }
}

/// Why the service's configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Config(commissaire_core::config::ConfigError),
    #[error(transparent)]
    Playbook(PlaybookError),
}

/// The service's members of a configuration (optional): `playbooks_dir`.
pub fn playbooks_from_config(members: &Map<String, Value>) -> Result<Playbooks, ConfigError> {
    let dir = commissaire_core::config::string_member(members, "playbooks_dir").map_err(ConfigError::Config)?;
    let dir =
        crate::playbook::locate_dir(dir.map(std::path::PathBuf::from).as_deref()).map_err(ConfigError::Playbook)?;
    Playbooks::load(&dir).map_err(ConfigError::Playbook)
}

/// The fields of an operation record the service writes, for any of the three kinds.
struct Fields<'a> {
    status: &'a mut String,
    done: &'a mut Vec<String>,
    in_process: &'a mut Vec<String>,
    started_at: &'a mut String,
    finished_at: &'a mut Option<String>,
    reason: &'a mut String,
    failed_hosts: &'a mut Vec<String>,
    knobs: &'a mut Map<String, Value>,
    phase: &'a mut String,
}

trait OpRecord: Model + Clone + Send + Sync + 'static {
    fn named(name: &str, version: &str) -> Self;
    fn fields(&mut self) -> Fields<'_>;
    fn status(&self) -> &str;
    fn control(&self) -> &str;
}

macro_rules! op_record {
    ($model:ty, $done:ident, |$name:ident, $version:ident| $make:expr) => {
        impl OpRecord for $model {
            fn named($name: &str, $version: &str) -> Self {
                $make
            }
            fn fields(&mut self) -> Fields<'_> {
                Fields {
                    status: &mut self.status,
                    done: &mut self.$done,
                    in_process: &mut self.in_process,
                    started_at: &mut self.started_at,
                    finished_at: &mut self.finished_at,
                    reason: &mut self.reason,
                    failed_hosts: &mut self.failed_hosts,
                    knobs: &mut self.knobs,
                    phase: &mut self.phase,
                }
            }
            fn status(&self) -> &str {
                &self.status
            }
            fn control(&self) -> &str {
                &self.control
            }
        }
    };
}

op_record!(ClusterRestart, restarted, |name, _version| ClusterRestart { name: name.to_string(), ..Default::default() });
op_record!(ClusterUpgrade, upgraded, |name, _version| ClusterUpgrade { name: name.to_string(), ..Default::default() });
op_record!(ClusterDeploy, deployed, |name, version| ClusterDeploy {
    name: name.to_string(),
    version: version.to_string(),
    ..Default::default()
});

/// Copies the planner's state into a record's host lists and status.
fn mirror(fields: Fields<'_>, state: &OpState) {
    let with = |pred: fn(&HostState) -> bool| -> Vec<String> {
        state.hosts.iter().filter(|e| pred(&e.state)).map(|e| e.address.clone()).collect()
    };
    *fields.in_process = with(|s| matches!(s, HostState::InProcess { .. }));
    *fields.done = with(|s| matches!(s, HostState::Done));
    // keep the order of failure: hosts already listed first, then new ones
    let failed = with(|s| matches!(s, HostState::Failed { .. }));
    fields.failed_hosts.retain(|h| failed.contains(h));
    for host in failed {
        if !fields.failed_hosts.contains(&host) {
            fields.failed_hosts.push(host);
        }
    }
    *fields.phase = match &state.phase {
        Phase::Running => "running",
        Phase::Paused => "paused",
        Phase::Aborting => "aborting",
        Phase::Finished => "finished",
        Phase::Failed { .. } => "failed",
        Phase::Aborted => "aborted",
    }
    .into();
    match &state.phase {
        Phase::Finished => {
            *fields.status = "finished".into();
            *fields.finished_at = Some(timestamp::now());
        }
        Phase::Aborted => {
            *fields.status = "finished".into();
            *fields.reason = "aborted by an operator".into();
            *fields.finished_at = Some(timestamp::now());
        }
        Phase::Failed { host, reason } => {
            *fields.status = "failed".into();
            *fields.reason = match host {
                Some(host) => format!("{host}: {reason}"),
                None => reason.clone(),
            };
            *fields.finished_at = Some(timestamp::now());
        }
        Phase::Running | Phase::Paused | Phase::Aborting => *fields.status = "in_process".into(),
    }
}

/// One request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct OpRequest {
    pub kind: OpKind,
    pub cluster: String,
    /// The version to deploy (empty for restart and upgrade).
    pub version: String,
    pub knobs: Knobs,
    /// The knobs as given (recorded in the operation's record).
    pub knobs_given: Map<String, Value>,
}

/// Checks a request's params: `[cluster]`, `[cluster, version]` for deploy,
/// each optionally followed by an object of knobs.
pub fn parse_request(kind: OpKind, params: &Value) -> Result<OpRequest, RpcError> {
    let items = params
        .as_array()
        .ok_or_else(|| RpcError::invalid_params("params must be an array: [cluster, (version,) (knobs)]"))?;
    let cluster = items
        .first()
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| RpcError::invalid_params("the first param must be the cluster's name"))?
        .to_string();
    let mut rest = &items[1..];
    let mut version = String::new();
    if kind == OpKind::Deploy {
        version = rest
            .first()
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| RpcError::invalid_params("deploy needs the version to deploy as its second param"))?
            .to_string();
        rest = &rest[1..];
    }
    let knobs_given = match rest {
        [] | [Value::Null] => Map::new(),
        [Value::Object(knobs)] => knobs.clone(),
        _ => {
            return Err(RpcError::invalid_params("after the cluster (and version) only an object of knobs may follow"));
        }
    };
    let knobs: Knobs = serde_json::from_value(Value::Object(knobs_given.clone()))
        .map_err(|e| RpcError::invalid_params(format!("knobs: {e}")))?;
    knobs.validate().map_err(|e| RpcError::invalid_params(e.to_string()))?;
    super::nodes::NodeKnobs::from_knobs(&knobs_given).map_err(RpcError::invalid_params)?;
    Ok(OpRequest { kind, cluster, version, knobs, knobs_given })
}

struct Inner {
    storage: StorageClient,
    runner: PlaybookRunner,
    ssh: SshTransport,
    playbooks: Playbooks,
}

/// The service; serve it with [`QUEUE`] and [`PATTERNS`].
pub struct ClusterExec {
    inner: Arc<Inner>,
}

impl ClusterExec {
    pub fn new(bus: Arc<dyn commissaire_core::bus::Bus>, ssh: SshTransport, playbooks: Playbooks) -> Self {
        Self {
            inner: Arc::new(Inner {
                storage: StorageClient::new(bus),
                runner: PlaybookRunner::new(ssh.clone()),
                ssh,
                playbooks,
            }),
        }
    }

    /// Starts an operation: its initial record, once written.
    pub async fn start(&self, request: OpRequest) -> Result<Value, RpcError> {
        match request.kind {
            OpKind::Restart => self.start_as::<ClusterRestart>(request).await,
            OpKind::Upgrade => self.start_as::<ClusterUpgrade>(request).await,
            OpKind::Deploy => self.start_as::<ClusterDeploy>(request).await,
        }
    }

    async fn start_as<R: OpRecord>(&self, request: OpRequest) -> Result<Value, RpcError> {
        let storage = &self.inner.storage;
        let name = request.cluster.as_str();
        let cluster = match storage.get::<Cluster>(name).await {
            Ok(cluster) => cluster,
            Err(StorageError::NotFound { .. }) => {
                return Err(RpcError::not_found(format!("cluster {name} does not exist")));
            }
            Err(err) => return Err(storage_error(err)),
        };
        let state = OpState::new(cluster.hostset.iter().cloned())
            .map_err(|e| RpcError::invalid_params(format!("cluster {name}: {e}")))?;
        // Refuse while any operation of the cluster runs; this kind's record is
        // then written with compare-and-swap, so of two requests at once only
        // one starts.
        let revision = match storage.get_revisioned::<R>(name).await {
            Ok(existing) if existing.model.status() == "in_process" => {
                return Err(RpcError::conflict(format!(
                    "cluster {name} already has a {} in process",
                    request.kind.as_str()
                )));
            }
            Ok(existing) => existing.revision,
            Err(StorageError::NotFound { .. }) => 0,
            Err(err) => return Err(storage_error(err)),
        };
        if let Some(running) = self.other_running(name, request.kind).await? {
            return Err(RpcError::conflict(format!("cluster {name} already has a {running} in process")));
        }
        let mut record = R::named(name, &request.version);
        {
            let fields = record.fields();
            *fields.status = "in_process".into();
            *fields.started_at = timestamp::now();
            *fields.knobs = request.knobs_given.clone();
        }
        let saved = match storage.save_if(&record, revision).await {
            Ok(saved) => saved,
            Err(StorageError::Conflict(_)) => {
                return Err(RpcError::conflict(format!(
                    "cluster {name}: another {} started at the same time",
                    request.kind.as_str()
                )));
            }
            Err(err) => return Err(storage_error(err)),
        };
        tracing::info!(cluster = %name, operation = request.kind.as_str(), hosts = cluster.hostset.len(), "operation started");
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.drive::<R>(request, state).await });
        Ok(saved.to_full_json())
    }

    /// The kind of another operation of the cluster in process, if any.
    async fn other_running(&self, name: &str, kind: OpKind) -> Result<Option<&'static str>, RpcError> {
        let storage = &self.inner.storage;
        let running = |status: Option<&str>| status == Some("in_process");
        if kind != OpKind::Restart
            && running(storage.find::<ClusterRestart>(name).await.map_err(storage_error)?.as_ref().map(|r| r.status()))
        {
            return Ok(Some("restart"));
        }
        if kind != OpKind::Upgrade
            && running(storage.find::<ClusterUpgrade>(name).await.map_err(storage_error)?.as_ref().map(|r| r.status()))
        {
            return Ok(Some("upgrade"));
        }
        if kind != OpKind::Deploy
            && running(storage.find::<ClusterDeploy>(name).await.map_err(storage_error)?.as_ref().map(|r| r.status()))
        {
            return Ok(Some("deploy"));
        }
        Ok(None)
    }
}

fn storage_error(err: StorageError) -> RpcError {
    RpcError::internal(format!("storage: {err}"))
}

/// How often a paused operation looks for a resume or an abort.
const CONTROL_POLL: Duration = Duration::from_millis(300);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Inner {
    /// Runs the operation to its end; the record ends `finished` or `failed`.
    async fn drive<R: OpRecord>(self: Arc<Self>, request: OpRequest, state: OpState) {
        let name = request.cluster.clone();
        let state = match self.run_plan::<R>(&request, state).await {
            Ok(state) => state,
            Err((mut state, reason)) => {
                tracing::error!(cluster = %name, operation = request.kind.as_str(), %reason, "operation stopped");
                state.phase = Phase::Failed { host: None, reason };
                state
            }
        };
        // No node is left cordoned that was not before the operation.
        super::nodes::restore(&self.storage, request.kind, &name).await;
        // The final write: retried, so that the record does not stay in process.
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=FINAL_WRITE_ATTEMPTS {
            match self.write::<R>(&name, &state).await {
                Ok(()) => {
                    tracing::info!(cluster = %name, operation = request.kind.as_str(), phase = ?state.phase, "operation ended");
                    return;
                }
                Err(StorageError::NotFound { .. }) => {
                    tracing::warn!(cluster = %name, operation = request.kind.as_str(), "the operation's record was deleted");
                    return;
                }
                Err(err) => {
                    tracing::error!(cluster = %name, operation = request.kind.as_str(), attempt, error = %err,
                        "cannot write the end of the operation");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        tracing::error!(cluster = %name, operation = request.kind.as_str(),
            "GAVE UP writing the end of the operation: its record still says in_process");
    }

    /// Writes the state into the record (compare-and-swap).
    async fn write<R: OpRecord>(&self, name: &str, state: &OpState) -> Result<(), StorageError> {
        self.storage
            .update::<R, _, std::convert::Infallible>(name, 16, |record| {
                mirror(record.fields(), state);
                Ok(true)
            })
            .await
            .map(|_| ())
    }

    /// Carries the planner's decisions out until the operation ends. On a
    /// planner or storage error: the state so far and why.
    async fn run_plan<R: OpRecord>(
        self: &Arc<Self>,
        request: &OpRequest,
        mut state: OpState,
    ) -> Result<OpState, (OpState, String)> {
        let knobs = &request.knobs;
        let timeout = Duration::from_secs(u64::try_from(knobs.host_timeout_seconds).unwrap_or(1).max(1));
        let mut running: JoinSet<(String, Result<(), String>)> = JoinSet::new();
        let mut last_batch: Vec<String> = Vec::new();
        loop {
            // What an operator asked through the record (pause, abort, or
            // nothing: resume a paused operation).
            let wanted = match self.storage.get::<R>(&request.cluster).await {
                Ok(record) => record.control().to_string(),
                Err(e) => return Err((state, format!("storage: {e}"))),
            };
            let control = match (wanted.as_str(), &state.phase) {
                ("abort", Phase::Running | Phase::Paused) => Some(Observation::Abort),
                ("pause", Phase::Running) => Some(Observation::Pause),
                ("", Phase::Paused) => Some(Observation::Resume),
                _ => None,
            };
            if let Some(observation) = control {
                tracing::info!(cluster = %request.cluster, operation = request.kind.as_str(), ?observation, "operator control");
                state = plan::apply(&state, knobs, &observation).map_err(|e| (state.clone(), e.to_string()))?;
                self.write::<R>(&request.cluster, &state)
                    .await
                    .map_err(|e| (state.clone(), format!("storage: {e}")))?;
            }
            let now = now_ms();
            let decision = plan::next(&state, knobs, now);
            match &decision {
                Decision::Start { hosts } => {
                    state = plan::commit(&state, knobs, &decision, now).map_err(|e| (state.clone(), e.to_string()))?;
                    // recorded in process before they are touched
                    self.write::<R>(&request.cluster, &state)
                        .await
                        .map_err(|e| (state.clone(), format!("storage: {e}")))?;
                    for host in hosts {
                        let (inner, host, request) = (self.clone(), host.clone(), request.clone());
                        running.spawn(async move {
                            let outcome = match tokio::time::timeout(timeout, inner.run_host(&request, &host)).await {
                                Ok(outcome) => outcome,
                                Err(_) => Err(format!("no outcome within {} seconds", timeout.as_secs())),
                            };
                            (host, outcome)
                        });
                    }
                    last_batch = hosts.clone();
                }
                Decision::Wait => {
                    let Some(joined) = running.join_next().await else {
                        return Err((state, "hosts in process but none running (internal error)".into()));
                    };
                    let observation = match joined {
                        Ok((host, Ok(()))) => {
                            tracing::info!(cluster = %request.cluster, %host, operation = request.kind.as_str(), "host done");
                            Observation::HostSucceeded { host }
                        }
                        Ok((host, Err(reason))) => {
                            tracing::warn!(cluster = %request.cluster, %host, operation = request.kind.as_str(), %reason, "host failed");
                            Observation::HostFailed { host, reason }
                        }
                        Err(err) => return Err((state, format!("a host's task ended abnormally: {err}"))),
                    };
                    state = plan::apply(&state, knobs, &observation).map_err(|e| (state.clone(), e.to_string()))?;
                    self.write::<R>(&request.cluster, &state)
                        .await
                        .map_err(|e| (state.clone(), format!("storage: {e}")))?;
                }
                Decision::WaitSoak { until_ms } => {
                    state = plan::commit(&state, knobs, &decision, now).map_err(|e| (state.clone(), e.to_string()))?;
                    tokio::time::sleep(Duration::from_millis(until_ms.saturating_sub(now))).await;
                }
                Decision::CheckHealth => {
                    let observation = match self.healthy(&last_batch).await {
                        Ok(()) => Observation::HealthGatePassed,
                        Err(reason) => Observation::HealthGateFailed { reason },
                    };
                    state = plan::apply(&state, knobs, &observation).map_err(|e| (state.clone(), e.to_string()))?;
                }
                Decision::Finish | Decision::Fail { .. } | Decision::EndAborted => {
                    state = plan::commit(&state, knobs, &decision, now).map_err(|e| (state.clone(), e.to_string()))?;
                    return Ok(state);
                }
                // Paused: nothing starts until an operator resumes or aborts.
                Decision::Idle if state.phase == Phase::Paused => {
                    tokio::time::sleep(CONTROL_POLL).await;
                }
                Decision::Idle => return Ok(state),
            }
        }
    }

    /// The health gate: every host of the last batch that is done answers over SSH.
    async fn healthy(&self, hosts: &[String]) -> Result<(), String> {
        for address in hosts {
            let target = self.target(address).await?.0;
            let output =
                self.ssh.run(&target, &Command::script("true")).await.map_err(|e| format!("{address}: {e}"))?;
            if !output.success() {
                return Err(format!("{address}: the health check failed"));
            }
        }
        Ok(())
    }

    async fn target(&self, address: &str) -> Result<(crate::transport::HostTarget, Host), String> {
        let host = self.storage.get::<Host>(address).await.map_err(|e| format!("host record: {e}"))?;
        let creds = match self.storage.get::<HostCreds>(address).await {
            Ok(creds) => creds,
            Err(StorageError::NotFound { .. }) => return Err("the host has no credentials".into()),
            Err(err) => return Err(format!("credentials unavailable: {err}")),
        };
        Ok((host_target(&host, &creds)?, host))
    }

    /// Runs the operation on one host.
    async fn run_host(&self, request: &OpRequest, address: &str) -> Result<(), String> {
        let (target, host) = self.target(address).await?;
        let mut reboot_vars = Map::new();
        reboot_vars.insert("commissaire_reboot_timeout".into(), json!(request.knobs.host_timeout_seconds));
        let fail = |e: PlaybookError| format!("{} failed: {e}", request.kind.as_str());
        tracing::info!(cluster = %request.cluster, host = %address, operation = request.kind.as_str(), "host started");
        // managed cluster: cordon and drain the node first (see nodes.rs)
        let nodes =
            super::nodes::HostNodes::prepare(&self.storage, request.kind, &request.cluster, &request.knobs_given)
                .await?;
        nodes.before(address).await?;
        match request.kind {
            OpKind::Restart => {
                self.runner.run(&self.playbooks.restart, &target, reboot_vars).await.map_err(fail)?;
            }
            OpKind::Upgrade => {
                let vars = OsSupport::for_os(&host.os).map_err(|e| format!("cannot upgrade: {e}"))?.vars();
                self.runner.run(&self.playbooks.upgrade, &target, vars).await.map_err(fail)?;
            }
            OpKind::Deploy => {
                let mut vars = Map::new();
                vars.insert("commissaire_deploy_version".into(), json!(request.version));
                self.runner.run(&self.playbooks.deploy, &target, vars).await.map_err(fail)?;
                // boot the deployed version
                self.runner
                    .run(&self.playbooks.restart, &target, reboot_vars)
                    .await
                    .map_err(|e| format!("restart after the deploy failed: {e}"))?;
            }
        }
        // node Ready, then uncordoned
        nodes.after(address).await?;
        Ok(())
    }
}

#[async_trait]
impl Handler for ClusterExec {
    async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let kind = OpKind::from_method(method).ok_or_else(|| RpcError::method_not_found(method))?;
        let request = parse_request(kind, &params)?;
        self.start(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_and_knobs_named() {
        let ok = parse_request(OpKind::Restart, &json!(["c"])).expect("restart");
        assert_eq!((ok.cluster.as_str(), ok.knobs.clone()), ("c", Knobs::default()));
        let ok = parse_request(OpKind::Deploy, &json!(["c", "7.1", {"batch": 2}])).expect("deploy");
        assert_eq!(ok.version, "7.1");
        assert_eq!(ok.knobs.batch, plan::Batch::Count(2));
        assert_eq!(ok.knobs_given, json!({"batch": 2}).as_object().cloned().expect("object"));
        let ok = parse_request(OpKind::Upgrade, &json!(["c", {"batch": "50%"}])).expect("upgrade");
        assert_eq!(ok.knobs.batch, plan::Batch::Percent("50%".into()));
        assert!(parse_request(OpKind::Deploy, &json!(["c"])).is_err());
        assert!(parse_request(OpKind::Restart, &json!([])).is_err());
        assert!(parse_request(OpKind::Restart, &json!(["c", "x"])).is_err());
        let err = parse_request(OpKind::Restart, &json!(["c", {"soak_seconds": -1}])).expect_err("soak");
        assert!(err.message.contains("soak_seconds"), "{}", err.message);
    }

    #[test]
    fn the_record_mirrors_the_plan() {
        let knobs = Knobs::default();
        let state = OpState::new(["a", "b"]).expect("state");
        let start = plan::next(&state, &knobs, 0);
        let state = plan::commit(&state, &knobs, &start, 0).expect("commit");
        let mut record = ClusterRestart::named("c", "");
        mirror(record.fields(), &state);
        assert_eq!((record.status.as_str(), record.in_process.clone()), ("in_process", vec!["a".to_string()]));
        let state = plan::apply(&state, &knobs, &Observation::HostFailed { host: "a".into(), reason: "gone".into() })
            .expect("apply");
        let fail = plan::next(&state, &knobs, 0);
        let state = plan::commit(&state, &knobs, &fail, 0).expect("commit");
        mirror(record.fields(), &state);
        assert_eq!(record.status, "failed");
        assert_eq!(record.failed_hosts, vec!["a".to_string()]);
        assert!(record.in_process.is_empty() && record.restarted.is_empty());
        assert!(record.reason.starts_with("a: "), "{}", record.reason);
        assert!(record.finished_at.is_some());
    }
}
