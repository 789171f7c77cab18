//! The clusterexec service: `jobs.clusterexec.restart|upgrade|deploy` and
//! `jobs.clusterexec.retry_failed` on the shared queue `clusterexec`.
//!
//! A start request's params are an array: the cluster's name, for `deploy`
//! the version to deploy, and optionally, as the last element, an object of
//! [`Knobs`] (absent: the defaults, the original's behaviour). The service
//! checks them, reads the cluster, writes the initial record (`in_process`,
//! `started_at`, `knobs`, the planner's state in `progress`, this instance as
//! `owner` with a lease) with compare-and-swap, refusing with a conflict (409)
//! when any operation of the cluster is in process, and replies with that
//! record at once. The operation then runs in a task of its own
//! ([`super::drive`]); an instance whose lease ran out loses the operation to
//! another instance, which resumes it from `progress` ([`super::takeover`]).
//!
//! `retry_failed` (params `[cluster, operation]`) starts an ended operation
//! again over its failed hosts (and the hosts it had not reached).

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use commissaire_core::{
    bus::Handler,
    jsonrpc::RpcError,
    model::{Cluster, ClusterDeploy, ClusterRestart, ClusterUpgrade, Model},
    storage_client::{StorageClient, StorageError},
    timestamp,
};
use serde_json::{Map, Value, json};

use super::plan::{HostState, Knobs, Observation, OpState, Phase};
use crate::{
    playbook::{Playbook, PlaybookError, PlaybookRunner},
    transport::SshTransport,
};

/// The routing keys the service answers.
pub const PATTERNS: &[&str] = &["jobs.clusterexec.*"];
/// Its shared queue.
pub const QUEUE: &str = "clusterexec";

/// The operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    #[error("{0} must be a number of seconds above 0 and at most 86400")]
    Seconds(&'static str),
}

/// How long an instance holds an operation without renewing its lease, and
/// how long a taken-over host may keep its old boot id before the reboot
/// counts as never issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// An operation's lease; renewed every third of it by its owner.
    pub lease: Duration,
    /// See [`super::drive`]: how long a successor waits for a host whose
    /// reboot may have been asked for to go down before asking again.
    pub reboot_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self { lease: Duration::from_secs(15), reboot_grace: Duration::from_secs(30) }
    }
}

impl Settings {
    /// How often the owner renews a lease and every instance looks for
    /// operations whose lease ran out.
    pub fn renew_every(&self) -> Duration {
        (self.lease / 3).max(Duration::from_millis(100))
    }
}

/// The service's settings from a configuration: `lease_seconds` (15) and
/// `reboot_grace_seconds` (30), numbers above 0.
pub fn settings_from_config(members: &Map<String, Value>) -> Result<Settings, ConfigError> {
    let seconds = |member: &'static str, default: Duration| -> Result<Duration, ConfigError> {
        match members.get(member) {
            None | Some(Value::Null) => Ok(default),
            Some(value) => value
                .as_f64()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .filter(|d| !d.is_zero() && *d <= Duration::from_secs(86_400))
                .ok_or(ConfigError::Seconds(member)),
        }
    };
    let defaults = Settings::default();
    Ok(Settings {
        lease: seconds("lease_seconds", defaults.lease)?,
        reboot_grace: seconds("reboot_grace_seconds", defaults.reboot_grace)?,
    })
}

/// The service's members of a configuration (optional): `playbooks_dir`.
pub fn playbooks_from_config(members: &Map<String, Value>) -> Result<Playbooks, ConfigError> {
    let dir = commissaire_core::config::string_member(members, "playbooks_dir").map_err(ConfigError::Config)?;
    let dir =
        crate::playbook::locate_dir(dir.map(std::path::PathBuf::from).as_deref()).map_err(ConfigError::Playbook)?;
    Playbooks::load(&dir).map_err(ConfigError::Playbook)
}

/// The fields of an operation record the service writes, for any of the three kinds.
pub(super) struct Fields<'a> {
    pub status: &'a mut String,
    pub done: &'a mut Vec<String>,
    pub in_process: &'a mut Vec<String>,
    pub started_at: &'a mut String,
    pub finished_at: &'a mut Option<String>,
    pub reason: &'a mut String,
    pub failed_hosts: &'a mut Vec<String>,
    pub knobs: &'a mut Map<String, Value>,
    pub control: &'a mut String,
    pub phase: &'a mut String,
    pub progress: &'a mut Map<String, Value>,
    pub owner: &'a mut String,
    pub lease_expires_at: &'a mut String,
}

pub(super) trait OpRecord: Model + Clone + Send + Sync + 'static {
    const KIND: OpKind;
    fn named(name: &str, version: &str) -> Self;
    fn fields(&mut self) -> Fields<'_>;
    fn status(&self) -> &str;
    fn control(&self) -> &str;
    fn owner(&self) -> &str;
    fn lease_expires_at(&self) -> &str;
    fn progress(&self) -> &Map<String, Value>;
    fn knobs(&self) -> &Map<String, Value>;
    /// The version of a deploy (empty for the other kinds).
    fn version(&self) -> &str;
}

macro_rules! op_record {
    ($model:ty, $kind:expr, $done:ident, |$name:ident, $version:ident| $make:expr, |$r:ident| $get_version:expr) => {
        impl OpRecord for $model {
            const KIND: OpKind = $kind;
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
                    control: &mut self.control,
                    phase: &mut self.phase,
                    progress: &mut self.progress,
                    owner: &mut self.owner,
                    lease_expires_at: &mut self.lease_expires_at,
                }
            }
            fn status(&self) -> &str {
                &self.status
            }
            fn control(&self) -> &str {
                &self.control
            }
            fn owner(&self) -> &str {
                &self.owner
            }
            fn lease_expires_at(&self) -> &str {
                &self.lease_expires_at
            }
            fn progress(&self) -> &Map<String, Value> {
                &self.progress
            }
            fn knobs(&self) -> &Map<String, Value> {
                &self.knobs
            }
            fn version(&self) -> &str {
                let $r = self;
                $get_version
            }
        }
    };
}

op_record!(
    ClusterRestart,
    OpKind::Restart,
    restarted,
    |name, _version| ClusterRestart { name: name.to_string(), ..Default::default() },
    |_r| ""
);
op_record!(
    ClusterUpgrade,
    OpKind::Upgrade,
    upgraded,
    |name, _version| ClusterUpgrade { name: name.to_string(), ..Default::default() },
    |_r| ""
);
op_record!(
    ClusterDeploy,
    OpKind::Deploy,
    deployed,
    |name, version| ClusterDeploy { name: name.to_string(), version: version.to_string(), ..Default::default() },
    |r| &r.version
);

/// Copies the planner's state into a record: host lists, status, phase,
/// `progress` (the state itself) and, at the end, `reason` and `finished_at`.
pub(super) fn mirror(fields: Fields<'_>, state: &OpState) {
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
    *fields.phase = super::plan::phase_name(&state.phase).into();
    if let Ok(Value::Object(progress)) = serde_json::to_value(state) {
        *fields.progress = progress;
    }
    match &state.phase {
        Phase::Finished => {
            *fields.status = "finished".into();
            fields.reason.clear();
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
        Phase::Running | Phase::Paused | Phase::Aborting => {
            *fields.status = "in_process".into();
            fields.reason.clear();
            *fields.finished_at = None;
        }
    }
}

/// The planner's state kept in a record, when there is one.
pub(super) fn progress_of<R: OpRecord>(record: &R) -> Option<OpState> {
    if record.progress().is_empty() {
        return None;
    }
    serde_json::from_value(Value::Object(record.progress().clone())).ok()
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

/// What the service's tasks share.
pub(super) struct Inner {
    pub storage: StorageClient,
    pub bus: Arc<dyn commissaire_core::bus::Bus>,
    pub runner: PlaybookRunner,
    pub ssh: SshTransport,
    pub playbooks: Playbooks,
    pub settings: Settings,
    /// This instance's name, written as the `owner` of the operations it drives.
    pub instance: String,
    /// The operations this instance drives now (kind, cluster).
    pub driving: Mutex<HashSet<(OpKind, String)>>,
}

/// The service; serve it with [`QUEUE`] and [`PATTERNS`], and run
/// [`ClusterExec::spawn_takeover`] beside it.
pub struct ClusterExec {
    inner: Arc<Inner>,
}

/// A name for this instance: host name, process id and a random part.
fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}-{}", host.trim(), std::process::id(), &random[..8])
}

impl ClusterExec {
    pub fn new(bus: Arc<dyn commissaire_core::bus::Bus>, ssh: SshTransport, playbooks: Playbooks) -> Self {
        Self::with_settings(bus, ssh, playbooks, Settings::default())
    }

    pub fn with_settings(
        bus: Arc<dyn commissaire_core::bus::Bus>,
        ssh: SshTransport,
        playbooks: Playbooks,
        settings: Settings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                storage: StorageClient::new(bus.clone()),
                bus,
                runner: PlaybookRunner::new(ssh.clone()),
                ssh,
                playbooks,
                settings,
                instance: instance_name(),
                driving: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// This instance's name (the `owner` of the operations it drives).
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Looks for operations whose owner's lease ran out, every third of a
    /// lease, and resumes them here; see [`super::takeover`].
    pub fn spawn_takeover(&self) -> tokio::task::JoinHandle<()> {
        super::takeover::spawn(self.inner.clone())
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
        let previous = match storage.get_revisioned::<R>(name).await {
            Ok(existing) if existing.model.status() == "in_process" => {
                return Err(RpcError::conflict(format!(
                    "cluster {name} already has a {} in process",
                    request.kind.as_str()
                )));
            }
            Ok(existing) => Some(existing),
            Err(StorageError::NotFound { .. }) => None,
            Err(err) => return Err(storage_error(err)),
        };
        if let Some(running) = self.other_running(name, request.kind).await? {
            return Err(RpcError::conflict(format!("cluster {name} already has a {running} in process")));
        }
        let mut record = R::named(name, &request.version);
        {
            let fields = record.fields();
            *fields.started_at = timestamp::now();
            *fields.knobs = request.knobs_given.clone();
        }
        self.claim_and_run(request, state, record, previous).await
    }

    /// Starts an ended operation again over its failed hosts: the failed
    /// hosts go back to pending (the hosts it had not reached run too; the
    /// done ones are not touched).
    pub async fn retry_failed(&self, kind: OpKind, cluster: &str) -> Result<Value, RpcError> {
        match kind {
            OpKind::Restart => self.retry_as::<ClusterRestart>(cluster).await,
            OpKind::Upgrade => self.retry_as::<ClusterUpgrade>(cluster).await,
            OpKind::Deploy => self.retry_as::<ClusterDeploy>(cluster).await,
        }
    }

    async fn retry_as<R: OpRecord>(&self, name: &str) -> Result<Value, RpcError> {
        let kind = R::KIND.as_str();
        let existing = match self.inner.storage.get_revisioned::<R>(name).await {
            Ok(existing) => existing,
            Err(StorageError::NotFound { .. }) => {
                return Err(RpcError::not_found(format!("cluster {name} has no {kind} to retry")));
            }
            Err(err) => return Err(storage_error(err)),
        };
        if existing.model.status() == "in_process" {
            return Err(RpcError::conflict(format!("the {kind} of cluster {name} is still in process")));
        }
        let state = progress_of(&existing.model).ok_or_else(|| {
            RpcError::conflict(format!("the {kind} of cluster {name} has no recorded progress to retry from"))
        })?;
        if state.failed() == 0 {
            return Err(RpcError::conflict(format!("the {kind} of cluster {name} has no failed hosts to retry")));
        }
        let state = super::plan::apply(&state, &Knobs::default(), &Observation::RetryFailed)
            .map_err(|e| RpcError::conflict(format!("the {kind} of cluster {name} cannot be retried: {e}")))?;
        if let Some(running) = self.other_running(name, R::KIND).await? {
            return Err(RpcError::conflict(format!("cluster {name} already has a {running} in process")));
        }
        let request = request_of(&existing.model).map_err(|e| {
            RpcError::conflict(format!("the {kind} of cluster {name} has knobs that are no longer valid: {e}"))
        })?;
        let mut record = existing.model.clone();
        *record.fields().control = String::new();
        tracing::info!(cluster = %name, operation = kind, failed = state.failed(), "retrying the failed hosts");
        self.claim_and_run(request, state, record, Some(existing)).await
    }

    /// Writes `record` as the running operation owned by this instance (with
    /// compare-and-swap against `previous`), checks again that no other kind
    /// started meanwhile (undoing the write if one did), and runs it.
    async fn claim_and_run<R: OpRecord>(
        &self,
        request: OpRequest,
        state: OpState,
        mut record: R,
        previous: Option<commissaire_core::storage_client::Revisioned<R>>,
    ) -> Result<Value, RpcError> {
        let storage = &self.inner.storage;
        let name = request.cluster.clone();
        let kind = request.kind.as_str();
        {
            let fields = record.fields();
            *fields.owner = self.inner.instance.clone();
            *fields.lease_expires_at = self.inner.lease_deadline();
            mirror(fields, &state);
        }
        let revision = previous.as_ref().map_or(0, |p| p.revision);
        let saved = match storage.save_if(&record, revision).await {
            Ok(saved) => saved,
            Err(StorageError::Conflict(_)) => {
                return Err(RpcError::conflict(format!("cluster {name}: another {kind} started at the same time")));
            }
            Err(err) => return Err(storage_error(err)),
        };
        // Two kinds started at once each wrote their own record: whoever sees
        // the other one running steps back, so at most one runs.
        if let Some(running) = self.other_running(&name, request.kind).await? {
            self.step_back(&name, &saved, previous).await;
            return Err(RpcError::conflict(format!("cluster {name}: a {running} started at the same time")));
        }
        tracing::info!(cluster = %name, operation = kind, hosts = state.hosts.len(), "operation started");
        self.inner.publish(request.kind, &name, "started", None, None).await;
        if self.inner.begin_driving(request.kind, &name) {
            let inner = self.inner.clone();
            tokio::spawn(async move { inner.drive::<R>(request, state).await });
        }
        Ok(saved.to_full_json())
    }

    /// Undoes the write of `saved`: the previous record back, or none.
    async fn step_back<R: OpRecord>(
        &self,
        name: &str,
        saved: &R,
        previous: Option<commissaire_core::storage_client::Revisioned<R>>,
    ) {
        let storage = &self.inner.storage;
        let outcome = match previous {
            Some(previous) => match storage.get_revisioned::<R>(name).await {
                Ok(now) if now.model.owner() == saved.owner() => {
                    storage.save_if(&previous.model, now.revision).await.map(|_| ())
                }
                Ok(_) => Ok(()),
                Err(err) => Err(err),
            },
            None => storage.delete::<R>(name).await,
        };
        if let Err(err) = outcome {
            tracing::error!(cluster = %name, error = %err, "cannot undo an operation record written in a race");
        }
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

/// The request an operation's record describes (for a retry or a takeover).
pub(super) fn request_of<R: OpRecord>(record: &R) -> Result<OpRequest, RpcError> {
    let mut params = vec![Value::String(record.primary_key().unwrap_or_default().to_string())];
    if R::KIND == OpKind::Deploy {
        params.push(Value::String(record.version().to_string()));
    }
    params.push(Value::Object(record.knobs().clone()));
    parse_request(R::KIND, &Value::Array(params))
}

pub(super) fn storage_error(err: StorageError) -> RpcError {
    RpcError::internal(format!("storage: {err}"))
}

impl Inner {
    /// When a lease taken or renewed now runs out.
    pub(super) fn lease_deadline(&self) -> String {
        let lease = time::Duration::try_from(self.settings.lease).unwrap_or(time::Duration::seconds(15));
        timestamp::format(time::OffsetDateTime::now_utc() + lease)
    }

    /// Marks (kind, cluster) as driven here; false if it already was.
    pub(super) fn begin_driving(&self, kind: OpKind, cluster: &str) -> bool {
        self.driving.lock().unwrap_or_else(PoisonError::into_inner).insert((kind, cluster.to_string()))
    }

    pub(super) fn end_driving(&self, kind: OpKind, cluster: &str) {
        self.driving.lock().unwrap_or_else(PoisonError::into_inner).remove(&(kind, cluster.to_string()));
    }

    pub(super) fn is_driving(&self, kind: OpKind, cluster: &str) -> bool {
        self.driving.lock().unwrap_or_else(PoisonError::into_inner).contains(&(kind, cluster.to_string()))
    }

    /// Publishes `notify.clusterexec.<operation>.<event>`: what happened to
    /// the operation or one of its hosts. A lost event is logged; the record
    /// (and its storage event) is what counts.
    pub(super) async fn publish(
        &self,
        kind: OpKind,
        cluster: &str,
        event: &str,
        host: Option<&str>,
        reason: Option<&str>,
    ) {
        let routing_key = format!("notify.clusterexec.{}.{event}", kind.as_str());
        let body = json!({
            "cluster": cluster,
            "operation": kind.as_str(),
            "event": event,
            "host": host,
            "reason": reason,
            "instance": self.instance,
            "at": timestamp::now(),
        });
        if let Err(err) = self.bus.publish(&routing_key, &body).await {
            tracing::warn!(routing_key, error = %err, "could not publish an operation event");
        }
    }
}

#[async_trait]
impl Handler for ClusterExec {
    async fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        if method == "retry_failed" {
            let (cluster, kind) = params
                .as_array()
                .and_then(|items| match items.as_slice() {
                    [Value::String(cluster), Value::String(kind)] => {
                        Some((cluster.clone(), OpKind::from_method(kind)?))
                    }
                    _ => None,
                })
                .ok_or_else(|| {
                    RpcError::invalid_params(
                        "params must be [cluster, operation] (operation: restart, upgrade or deploy)",
                    )
                })?;
            return self.retry_failed(kind, &cluster).await;
        }
        let kind = OpKind::from_method(method).ok_or_else(|| RpcError::method_not_found(method))?;
        let request = parse_request(kind, &params)?;
        self.start(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clusterexec::plan;

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

    #[test]
    fn the_record_keeps_the_progress_a_successor_resumes_from() {
        let knobs = Knobs::default();
        let state = OpState::new(["a", "b"]).expect("state");
        let start = plan::next(&state, &knobs, 7);
        let state = plan::commit(&state, &knobs, &start, 7).expect("commit");
        let state = plan::apply(&state, &knobs, &Observation::BootIdSeen { host: "a".into(), boot_id: "b-1".into() })
            .expect("boot id");
        let mut record = ClusterDeploy::named("c", "7.1");
        mirror(record.fields(), &state);
        let resumed = progress_of(&record).expect("progress");
        assert_eq!(resumed, state);
        assert_eq!(resumed.host("a").and_then(|e| e.boot_id.clone()), Some("b-1".into()));
        let request = request_of(&record).expect("request");
        assert_eq!((request.kind, request.cluster.as_str(), request.version.as_str()), (OpKind::Deploy, "c", "7.1"));
        // a record without progress (written before it was kept) is not resumable
        assert_eq!(progress_of(&ClusterRestart::named("c", "")), None);
    }

    #[test]
    fn settings_have_defaults_and_refuse_nonsense() {
        let members = |v: Value| v.as_object().cloned().expect("object");
        assert_eq!(settings_from_config(&members(json!({}))).expect("defaults"), Settings::default());
        let set = settings_from_config(&members(json!({"lease_seconds": 3, "reboot_grace_seconds": 1.5}))).expect("ok");
        assert_eq!((set.lease, set.reboot_grace), (Duration::from_secs(3), Duration::from_millis(1500)));
        assert_eq!(set.renew_every(), Duration::from_secs(1));
        for bad in [json!({"lease_seconds": 0}), json!({"lease_seconds": "x"}), json!({"reboot_grace_seconds": -1})] {
            let err = settings_from_config(&members(bad.clone())).expect_err("refused");
            assert!(err.to_string().contains("seconds"), "{bad}: {err}");
        }
    }
}
