//! Running an operation: the planner's decisions carried out against the
//! hosts, every step written to the operation's record before or as it
//! happens, under this instance's lease.
//!
//! - The record is read before each step: an operator's `control` (pause,
//!   abort) is applied, and an `owner` other than this instance means the
//!   lease was lost (this instance stalled past it and another took the
//!   operation over): the run stops at once without writing anything more.
//! - Every write renews the lease; so does the loop every third of a lease
//!   while hosts are in process, so a long reboot never lets the lease lapse.
//! - Hosts of a batch run in parallel, each bounded by the per-host timeout.
//!   Before asking a host to reboot, its boot id is read and written to the
//!   record (`BootIdSeen`), and only then is the reboot asked for.
//! - Resuming a taken-over host in process: an upgrade runs again (it is
//!   idempotent); a restart (or a deploy's restart) whose boot id was noted
//!   waits for the host: a different boot id means the reboot happened (the
//!   host is done), the same one still after `reboot_grace` means it was
//!   never asked (the reboot is asked now). Without a noted boot id the
//!   reboot was never asked and the host's work runs from its start. So no
//!   host is rebooted twice and none is skipped.
//! - The end (`finished`, `failed` with `reason`, `aborted`) is written with
//!   retries, `owner` cleared; a planner or storage error ends it `failed`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use commissaire_core::{
    model::{Host, HostCreds},
    storage_client::StorageError,
};
use serde_json::{Map, json};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
};

use super::{
    plan::{self, Decision, HostState, Observation, OpState, Phase},
    service::{Inner, OpKind, OpRecord, OpRequest, mirror},
};
use crate::{
    investigator::host_target,
    playbook::{OsSupport, PlaybookError},
    transport::{Command, HostTarget, TransportError},
};

/// How many times the final write of a record is tried.
const FINAL_WRITE_ATTEMPTS: u32 = 8;
/// How often a paused operation looks for a resume or an abort.
const CONTROL_POLL: Duration = Duration::from_millis(300);
/// How often a taken-over host is probed while it may be rebooting.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A host's work bounded by `left` (what remains of its per-host timeout); the
/// error names the whole timeout.
async fn within(
    left: Duration,
    host_timeout: Duration,
    work: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::time::timeout(left, work)
        .await
        .unwrap_or_else(|_| Err(format!("no outcome within {} seconds", host_timeout.as_secs())))
}

/// What a host's task ends with: the host and its outcome.
type HostEnd = (String, Result<(), String>);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Why a run stopped before its end.
enum Stop {
    /// Another instance owns the operation now: write nothing more.
    Lost,
    /// Planner or storage trouble: end the operation failed with this reason.
    Error(Box<OpState>, String),
}

/// Why a write of the record failed.
enum WriteError {
    Lost,
    Storage(StorageError),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Lost => f.write_str("the operation's lease was lost to another instance"),
            WriteError::Storage(err) => write!(f, "storage: {err}"),
        }
    }
}

/// A host's boot id to note durably before its reboot; `ack` once written.
struct BootNote {
    host: String,
    boot_id: String,
    ack: oneshot::Sender<()>,
}

/// What a host's task hands the driver to note its boot id.
#[derive(Clone)]
struct Notes(mpsc::Sender<BootNote>);

impl Notes {
    /// Returns once the boot id is in the record.
    async fn boot_id(&self, host: &str, boot_id: &str) -> Result<(), String> {
        let (ack, written) = oneshot::channel();
        let note = BootNote { host: host.to_string(), boot_id: boot_id.to_string(), ack };
        self.0.send(note).await.map_err(|_| "the operation stopped".to_string())?;
        written.await.map_err(|_| "the boot id could not be recorded".to_string())
    }
}

impl Inner {
    /// Runs the operation to its end; the record ends `finished` or `failed`.
    pub(super) async fn drive<R: OpRecord>(self: Arc<Self>, request: OpRequest, state: OpState) {
        let name = request.cluster.clone();
        let kind = request.kind;
        let state = match self.run_plan::<R>(&request, state).await {
            Ok(state) => Some(state),
            Err(Stop::Lost) => {
                tracing::warn!(cluster = %name, operation = kind.as_str(),
                    "the operation's lease was lost: another instance drives it now");
                None
            }
            Err(Stop::Error(mut state, reason)) => {
                tracing::error!(cluster = %name, operation = kind.as_str(), %reason, "operation stopped");
                state.phase = Phase::Failed { host: None, reason };
                Some(*state)
            }
        };
        if let Some(state) = state {
            // No node is left cordoned that was not before the operation.
            super::nodes::restore(&self.storage, kind, &name).await;
            self.write_end::<R>(&request, &state).await;
        }
        self.end_driving(kind, &name);
    }

    /// The final write, retried so that the record does not stay in process.
    async fn write_end<R: OpRecord>(&self, request: &OpRequest, state: &OpState) {
        let (name, kind) = (request.cluster.as_str(), request.kind);
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=FINAL_WRITE_ATTEMPTS {
            match self.write::<R>(name, state).await {
                Ok(()) => {
                    tracing::info!(cluster = %name, operation = kind.as_str(), phase = ?state.phase, "operation ended");
                    let (event, host, reason) = match &state.phase {
                        Phase::Failed { host, reason } => ("failed", host.as_deref(), Some(reason.as_str())),
                        Phase::Aborted => ("aborted", None, None),
                        _ => ("finished", None, None),
                    };
                    self.publish(kind, name, event, host, reason).await;
                    return;
                }
                Err(WriteError::Storage(StorageError::NotFound { .. })) => {
                    tracing::warn!(cluster = %name, operation = kind.as_str(), "the operation's record was deleted");
                    return;
                }
                Err(WriteError::Lost) => {
                    tracing::warn!(cluster = %name, operation = kind.as_str(),
                        "the operation's lease was lost before its end was written: its new owner ends it");
                    return;
                }
                Err(err) => {
                    tracing::error!(cluster = %name, operation = kind.as_str(), attempt, error = %err,
                        "cannot write the end of the operation");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        tracing::error!(cluster = %name, operation = kind.as_str(),
            "GAVE UP writing the end of the operation: another instance takes it over once its lease runs out");
    }

    /// Writes the state into the record (compare-and-swap) and renews the
    /// lease, or gives it up once the operation ended; refused when the
    /// record has another owner.
    async fn write<R: OpRecord>(&self, name: &str, state: &OpState) -> Result<(), WriteError> {
        let deadline = self.lease_deadline();
        let outcome = self
            .storage
            .update::<R, _, ()>(name, 16, |record| {
                let fields = record.fields();
                if *fields.owner != self.instance {
                    return Err(());
                }
                mirror(fields, state);
                let fields = record.fields();
                if state.phase.is_ended() {
                    fields.owner.clear();
                    fields.lease_expires_at.clear();
                    fields.control.clear();
                } else {
                    *fields.lease_expires_at = deadline.clone();
                }
                Ok(true)
            })
            .await;
        match outcome {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(())) => Err(WriteError::Lost),
            Err(err) => Err(WriteError::Storage(err)),
        }
    }

    /// Carries the planner's decisions out until the operation ends.
    async fn run_plan<R: OpRecord>(self: &Arc<Self>, request: &OpRequest, mut state: OpState) -> Result<OpState, Stop> {
        let knobs = &request.knobs;
        let (kind, cluster) = (request.kind, request.cluster.as_str());
        let host_timeout = Duration::from_secs(u64::try_from(knobs.host_timeout_seconds).unwrap_or(1).max(1));
        let renew_every = self.settings.renew_every();
        let (note_tx, mut note_rx) = mpsc::channel::<BootNote>(64);
        let notes = Notes(note_tx);
        let mut running: JoinSet<HostEnd> = JoinSet::new();
        let mut last_batch: Vec<String> = Vec::new();
        let mut last_write = Instant::now();

        // Hosts in process when the operation was taken over: resumed.
        for entry in &state.hosts {
            if let HostState::InProcess { since_ms, .. } = entry.state {
                let elapsed = Duration::from_millis(now_ms().saturating_sub(since_ms));
                // At least one grace period, so a host caught rebooting can come back.
                let left = host_timeout.saturating_sub(elapsed).max(self.settings.reboot_grace);
                let (inner, host, boot_id, request, notes) =
                    (self.clone(), entry.address.clone(), entry.boot_id.clone(), request.clone(), notes.clone());
                tracing::info!(%cluster, %host, operation = kind.as_str(), noted_boot_id = boot_id.is_some(),
                    "resuming a host in process");
                running.spawn(async move {
                    let outcome = within(left, host_timeout, inner.resume_host(&request, &host, boot_id, &notes)).await;
                    (host, outcome)
                });
            }
        }

        loop {
            // The record: still ours? What does the operator want (pause,
            // abort, or nothing: resume a paused operation)?
            let record = match self.storage.get::<R>(cluster).await {
                Ok(record) => record,
                Err(e) => return Err(Stop::Error(Box::new(state), format!("storage: {e}"))),
            };
            if record.owner() != self.instance {
                return Err(Stop::Lost);
            }
            let control = match (record.control(), &state.phase) {
                ("abort", Phase::Running | Phase::Paused) => Some((Observation::Abort, "aborting")),
                ("pause", Phase::Running) => Some((Observation::Pause, "paused")),
                ("", Phase::Paused) => Some((Observation::Resume, "resumed")),
                _ => None,
            };
            if let Some((observation, event)) = control {
                tracing::info!(%cluster, operation = kind.as_str(), ?observation, "operator control");
                state = self.observe(&state, knobs, &observation)?;
                self.write_or_stop::<R>(cluster, &state).await?;
                last_write = Instant::now();
                self.publish(kind, cluster, event, None, None).await;
            } else if last_write.elapsed() >= renew_every {
                self.write_or_stop::<R>(cluster, &state).await?;
                last_write = Instant::now();
            }

            let now = now_ms();
            let decision = plan::next(&state, knobs, now);
            match &decision {
                Decision::Start { hosts } => {
                    state = self.commit(&state, knobs, &decision, now)?;
                    // recorded in process before they are touched
                    self.write_or_stop::<R>(cluster, &state).await?;
                    last_write = Instant::now();
                    for host in hosts {
                        self.publish(kind, cluster, "host_started", Some(host), None).await;
                        let (inner, host, request, notes) =
                            (self.clone(), host.clone(), request.clone(), notes.clone());
                        running.spawn(async move {
                            let outcome =
                                within(host_timeout, host_timeout, inner.run_host(&request, &host, &notes)).await;
                            (host, outcome)
                        });
                    }
                    last_batch = hosts.clone();
                }
                // Hosts in process (also while paused: their outcomes and
                // boot ids are recorded as they come).
                Decision::Wait | Decision::Idle if !running.is_empty() || state.phase == Phase::Paused => {
                    if decision == Decision::Wait && running.is_empty() {
                        return Err(Stop::Error(
                            Box::new(state),
                            "hosts in process but none running (internal error)".into(),
                        ));
                    }
                    let wait = if state.phase == Phase::Paused { CONTROL_POLL } else { renew_every };
                    // What arrives together is recorded with one write: with large
                    // batches, a write per host made the batch wait on the store.
                    let mut acks = Vec::new();
                    tokio::select! {
                        joined = running.join_next(), if !running.is_empty() => {
                            state = self.record_outcome(state, knobs, kind, cluster, joined).await?;
                        }
                        Some(note) = note_rx.recv() => {
                            let observation = Observation::BootIdSeen { host: note.host, boot_id: note.boot_id };
                            state = self.observe(&state, knobs, &observation)?;
                            acks.push(note.ack);
                        }
                        _ = tokio::time::sleep(wait) => continue,
                    }
                    while let Some(joined) = running.try_join_next() {
                        state = self.record_outcome(state, knobs, kind, cluster, Some(joined)).await?;
                    }
                    while let Ok(note) = note_rx.try_recv() {
                        let observation = Observation::BootIdSeen { host: note.host, boot_id: note.boot_id };
                        state = self.observe(&state, knobs, &observation)?;
                        acks.push(note.ack);
                    }
                    self.write_or_stop::<R>(cluster, &state).await?;
                    last_write = Instant::now();
                    // each of those hosts' tasks asks for its reboot only now
                    for ack in acks {
                        let _ = ack.send(());
                    }
                }
                Decision::Wait => {
                    return Err(Stop::Error(
                        Box::new(state),
                        "hosts in process but none running (internal error)".into(),
                    ));
                }
                Decision::WaitSoak { until_ms } => {
                    state = self.commit(&state, knobs, &decision, now)?;
                    let left = Duration::from_millis(until_ms.saturating_sub(now));
                    tokio::time::sleep(left.min(renew_every)).await;
                }
                Decision::CheckHealth => {
                    let observation = match self.healthy(&last_batch).await {
                        Ok(()) => Observation::HealthGatePassed,
                        Err(reason) => Observation::HealthGateFailed { reason },
                    };
                    state = self.observe(&state, knobs, &observation)?;
                }
                Decision::Finish | Decision::Fail { .. } | Decision::EndAborted => {
                    return self.commit(&state, knobs, &decision, now);
                }
                Decision::Idle => return Ok(state),
            }
        }
    }

    /// Applies a host task's end (announcing it); the caller writes the record.
    async fn record_outcome(
        &self,
        state: OpState,
        knobs: &plan::Knobs,
        kind: OpKind,
        cluster: &str,
        joined: Option<Result<HostEnd, tokio::task::JoinError>>,
    ) -> Result<OpState, Stop> {
        let observation = match joined {
            Some(Ok((host, Ok(())))) => {
                tracing::info!(%cluster, %host, operation = kind.as_str(), "host done");
                self.publish(kind, cluster, "host_done", Some(&host), None).await;
                Observation::HostSucceeded { host }
            }
            Some(Ok((host, Err(reason)))) => {
                tracing::warn!(%cluster, %host, operation = kind.as_str(), %reason, "host failed");
                self.publish(kind, cluster, "host_failed", Some(&host), Some(&reason)).await;
                Observation::HostFailed { host, reason }
            }
            Some(Err(err)) => {
                return Err(Stop::Error(Box::new(state), format!("a host's task ended abnormally: {err}")));
            }
            None => return Ok(state),
        };
        self.observe(&state, knobs, &observation)
    }

    fn observe(&self, state: &OpState, knobs: &plan::Knobs, observation: &Observation) -> Result<OpState, Stop> {
        plan::apply(state, knobs, observation).map_err(|e| Stop::Error(Box::new(state.clone()), e.to_string()))
    }

    fn commit(&self, state: &OpState, knobs: &plan::Knobs, decision: &Decision, now: u64) -> Result<OpState, Stop> {
        plan::commit(state, knobs, decision, now).map_err(|e| Stop::Error(Box::new(state.clone()), e.to_string()))
    }

    async fn write_or_stop<R: OpRecord>(&self, cluster: &str, state: &OpState) -> Result<(), Stop> {
        match self.write::<R>(cluster, state).await {
            Ok(()) => Ok(()),
            Err(WriteError::Lost) => Err(Stop::Lost),
            Err(err) => Err(Stop::Error(Box::new(state.clone()), err.to_string())),
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

    async fn target(&self, address: &str) -> Result<(HostTarget, Host), String> {
        let host = self.storage.get::<Host>(address).await.map_err(|e| format!("host record: {e}"))?;
        let creds = match self.storage.get::<HostCreds>(address).await {
            Ok(creds) => creds,
            Err(StorageError::NotFound { .. }) => return Err("the host has no credentials".into()),
            Err(err) => return Err(format!("credentials unavailable: {err}")),
        };
        Ok((host_target(&host, &creds)?, host))
    }

    /// The host's boot id now.
    async fn boot_id(&self, target: &HostTarget) -> Result<String, TransportError> {
        let output = self.ssh.run(target, &Command::script("cat /proc/sys/kernel/random/boot_id")).await?;
        let id = output.stdout.trim().to_string();
        if !output.success() || id.is_empty() {
            return Err(TransportError::Protocol {
                address: target.address.clone(),
                message: "cannot read /proc/sys/kernel/random/boot_id".into(),
            });
        }
        Ok(id)
    }

    fn reboot_vars(request: &OpRequest) -> Map<String, serde_json::Value> {
        let mut vars = Map::new();
        vars.insert("commissaire_reboot_timeout".into(), json!(request.knobs.host_timeout_seconds));
        vars
    }

    /// Notes the host's boot id in the record, then reboots it and waits for
    /// it to come back (the restart playbook).
    async fn reboot(
        &self,
        request: &OpRequest,
        target: &HostTarget,
        address: &str,
        notes: &Notes,
    ) -> Result<(), String> {
        let boot_id = self.boot_id(target).await.map_err(|e| format!("before the reboot: {e}"))?;
        notes.boot_id(address, &boot_id).await?;
        self.runner
            .run(&self.playbooks.restart, target, Self::reboot_vars(request))
            .await
            .map(|_| ())
            .map_err(|e| format!("restart failed: {e}"))
    }

    /// Runs the operation on one host.
    async fn run_host(&self, request: &OpRequest, address: &str, notes: &Notes) -> Result<(), String> {
        let (target, host) = self.target(address).await?;
        let fail = |e: PlaybookError| format!("{} failed: {e}", request.kind.as_str());
        tracing::info!(cluster = %request.cluster, host = %address, operation = request.kind.as_str(), "host started");
        // managed cluster: cordon and drain the node first (see nodes.rs)
        let nodes = self.nodes(request).await?;
        nodes.before(address).await?;
        match request.kind {
            OpKind::Restart => self.reboot(request, &target, address, notes).await?,
            OpKind::Upgrade => {
                let vars = OsSupport::for_os(&host.os).map_err(|e| format!("cannot upgrade: {e}"))?.vars();
                self.runner.run(&self.playbooks.upgrade, &target, vars).await.map_err(fail)?;
            }
            OpKind::Deploy => {
                let mut vars = Map::new();
                vars.insert("commissaire_deploy_version".into(), json!(request.version));
                self.runner.run(&self.playbooks.deploy, &target, vars).await.map_err(fail)?;
                // boot the deployed version
                self.reboot(request, &target, address, notes).await.map_err(|e| format!("after the deploy: {e}"))?;
            }
        }
        // node Ready, then uncordoned
        nodes.after(address).await
    }

    /// The node side of a host step (nothing for unmanaged clusters).
    async fn nodes<'a>(&'a self, request: &'a OpRequest) -> Result<super::nodes::HostNodes<'a>, String> {
        super::nodes::HostNodes::prepare(&self.storage, request.kind, &request.cluster, &request.knobs_given).await
    }

    /// Resumes a host that was in process when the operation was taken over
    /// (see the module documentation).
    async fn resume_host(
        &self,
        request: &OpRequest,
        address: &str,
        noted: Option<String>,
        notes: &Notes,
    ) -> Result<(), String> {
        let noted = match (request.kind, noted) {
            (OpKind::Restart | OpKind::Deploy, Some(noted)) => noted,
            // Nothing irreversible asked yet (or an idempotent upgrade): from the start.
            _ => return self.run_host(request, address, notes).await,
        };
        let (target, _) = self.target(address).await?;
        let since = Instant::now();
        loop {
            match self.boot_id(&target).await {
                Ok(id) if id != noted => {
                    tracing::info!(cluster = %request.cluster, host = %address, "the host rebooted before the takeover");
                    // its node, cordoned by the previous owner: Ready, then uncordoned
                    return self.nodes(request).await?.after(address).await;
                }
                Ok(_) if since.elapsed() >= self.settings.reboot_grace => {
                    tracing::info!(cluster = %request.cluster, host = %address,
                        "the host was never rebooted: asking for the reboot now");
                    return self.reboot(request, &target, address, notes).await;
                }
                // Same boot id within the grace, or down (rebooting): look again.
                Ok(_) | Err(TransportError::Unreachable { .. } | TransportError::CommandTimedOut { .. }) => {}
                Err(TransportError::Protocol { .. }) => {}
                Err(err) => return Err(format!("after the takeover: {err}")),
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }
}
