//! The planner of a rolling operation: [`next`] says what to do, [`commit`]
//! records that it is being done, [`apply`] folds in what was observed. All
//! three are pure functions of their inputs (times are passed in), see the
//! [module documentation](super) for the rules and invariants.

use serde::{Deserialize, Serialize};

/// The original's per-host timeout (seconds).
pub const DEFAULT_HOST_TIMEOUT_SECONDS: i64 = 600;
/// The largest soak or per-host timeout accepted (one day, in seconds).
pub const MAX_SECONDS: i64 = 86_400;

/// How many hosts are acted on at once: a count (`2`) or a percentage of the
/// cluster's hosts (`"25%"`, rounded up, at least one host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Batch {
    Count(i64),
    Percent(String),
}

impl Default for Batch {
    fn default() -> Self {
        Batch::Count(1)
    }
}

/// The operation's knobs, all optional in a request body; the defaults are
/// the original's behaviour (one host at a time, stop at the first failure).
/// Deserializing accepts any integer so that [`Knobs::validate`] can name the
/// field of a bad value; use only validated knobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Knobs {
    pub batch: Batch,
    /// How many host failures are tolerated; one more fails the operation.
    pub failure_budget: i64,
    /// Pause between batches (not before the first, not after the last).
    pub soak_seconds: i64,
    /// How long one host may take before it counts as failed.
    pub host_timeout_seconds: i64,
    /// After a batch, the hosts must pass a health check before the next one.
    pub health_gate: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            batch: Batch::default(),
            failure_budget: 0,
            soak_seconds: 0,
            host_timeout_seconds: DEFAULT_HOST_TIMEOUT_SECONDS,
            health_gate: false,
        }
    }
}

/// Why knobs are refused; every variant names its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KnobsError {
    #[error("batch: a count must be at least 1, got {0}")]
    BatchCount(i64),
    #[error("batch: a percentage must be a whole number from 1% to 100%, got {0:?}")]
    BatchPercent(String),
    #[error("failure_budget: must be 0 or more, got {0}")]
    FailureBudget(i64),
    #[error("soak_seconds: must be from 0 to {MAX_SECONDS}, got {0}")]
    SoakSeconds(i64),
    #[error("host_timeout_seconds: must be from 1 to {MAX_SECONDS}, got {0}")]
    HostTimeoutSeconds(i64),
}

impl KnobsError {
    /// The name of the knob at fault.
    pub fn field(&self) -> &'static str {
        match self {
            KnobsError::BatchCount(_) | KnobsError::BatchPercent(_) => "batch",
            KnobsError::FailureBudget(_) => "failure_budget",
            KnobsError::SoakSeconds(_) => "soak_seconds",
            KnobsError::HostTimeoutSeconds(_) => "host_timeout_seconds",
        }
    }
}

/// The number in a percentage string, when it is one from 1 to 100.
fn parse_percent(text: &str) -> Option<u64> {
    let digits = text.strip_suffix('%')?;
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    (1..=100).contains(&value).then_some(value)
}

impl Knobs {
    /// Checks every knob; the first bad one is named.
    pub fn validate(&self) -> Result<(), KnobsError> {
        match &self.batch {
            Batch::Count(count) if *count < 1 => return Err(KnobsError::BatchCount(*count)),
            Batch::Percent(text) if parse_percent(text).is_none() => {
                return Err(KnobsError::BatchPercent(text.clone()));
            }
            _ => {}
        }
        if self.failure_budget < 0 {
            return Err(KnobsError::FailureBudget(self.failure_budget));
        }
        if !(0..=MAX_SECONDS).contains(&self.soak_seconds) {
            return Err(KnobsError::SoakSeconds(self.soak_seconds));
        }
        if !(1..=MAX_SECONDS).contains(&self.host_timeout_seconds) {
            return Err(KnobsError::HostTimeoutSeconds(self.host_timeout_seconds));
        }
        Ok(())
    }

    /// The failure budget as a count (a negative one, refused by
    /// [`Knobs::validate`], counts as 0).
    pub fn budget(&self) -> usize {
        usize::try_from(self.failure_budget).unwrap_or(0)
    }

    fn soak_ms(&self) -> u64 {
        u64::try_from(self.soak_seconds).unwrap_or(0).saturating_mul(1000)
    }

    fn host_timeout_ms(&self) -> u64 {
        u64::try_from(self.host_timeout_seconds).unwrap_or(1).max(1).saturating_mul(1000)
    }
}

/// How many hosts may be in process at once in a cluster of `cluster_size`
/// hosts: at least 1, at most the cluster's size (when it has hosts). A
/// percentage is rounded up. Invalid knobs are clamped (a count below 1 or a
/// bad percentage gives 1).
pub fn batch_size(knobs: &Knobs, cluster_size: usize) -> usize {
    let raw = match &knobs.batch {
        Batch::Count(count) => usize::try_from(*count).unwrap_or(1),
        Batch::Percent(text) => match parse_percent(text) {
            // ceil(size × p / 100) without overflow for any realistic size.
            Some(percent) => {
                let size = cluster_size as u128;
                usize::try_from((size * u128::from(percent)).div_ceil(100)).unwrap_or(usize::MAX)
            }
            None => 1,
        },
    };
    raw.max(1).min(cluster_size.max(1))
}

/// Where one host is in the operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HostState {
    /// Not touched yet in this run (or put back by a retry of the failed).
    Pending,
    /// Being acted on: `attempt` counts the starts of this host (1 on the
    /// first), `since_ms` is when it was started.
    InProcess {
        attempt: u32,
        since_ms: u64,
    },
    Done,
    Failed {
        reason: String,
    },
}

/// One host of the operation, in hostset order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    pub address: String,
    pub state: HostState,
    /// How many times this host was started (0: never touched).
    pub attempts: u32,
    /// The host's boot id, noted (`BootIdSeen`) before a reboot was asked of
    /// it in this attempt: an instance taking the operation over compares it
    /// with the host's boot id now to tell whether the reboot happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// Where the whole operation is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    Running,
    /// Nothing new starts until `Resume`; hosts in process finish.
    Paused,
    /// Nothing new starts; hosts in process finish, then the operation ends
    /// `Aborted`.
    Aborting,
    Finished,
    /// `host` is the host whose failure exceeded the budget, `None` when the
    /// health gate failed.
    Failed {
        host: Option<String>,
        reason: String,
    },
    Aborted,
}

impl Phase {
    /// Whether the operation has ended (nothing will start without a retry).
    pub fn is_ended(&self) -> bool {
        matches!(self, Phase::Finished | Phase::Failed { .. } | Phase::Aborted)
    }
}

/// The failure that ends the operation once nothing is in process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub host: Option<String>,
    pub reason: String,
}

/// The durable progress of one operation. Kept in the store as it is; every
/// change goes through [`commit`] or [`apply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpState {
    pub hosts: Vec<HostEntry>,
    pub phase: Phase,
    /// End of the soak after the last batch, once it began (ms, caller's clock).
    pub soak_until: Option<u64>,
    /// The health gate passed since the last batch started.
    pub gate_passed: bool,
    /// Set when the failure budget is exceeded (or the gate failed): no new
    /// host starts, and the operation fails once nothing is in process.
    pub failing: Option<Failure>,
    /// Batches started so far (over all retries).
    pub batches_started: u32,
    /// `RetryFailed` observations applied.
    pub retries: u32,
}

/// Why an operation cannot be planned, or an observation or decision does not
/// fit the state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("host {0} appears twice in the operation")]
    DuplicateHost(String),
    #[error("host {0} is not part of the operation")]
    UnknownHost(String),
    #[error("host {host} is not in process (it is {state})")]
    HostNotInProcess { host: String, state: &'static str },
    #[error("{observation} is not allowed while the operation is {phase}")]
    NotAllowed { observation: &'static str, phase: &'static str },
    #[error("the health gate is not being checked")]
    NoHealthCheck,
    #[error("the decision {0:?} is not the planner's decision for this state")]
    StaleDecision(Decision),
}

/// What the service observed, fed to [`apply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Observation {
    HostSucceeded {
        host: String,
    },
    HostFailed {
        host: String,
        reason: String,
    },
    HostTimedOut {
        host: String,
    },
    HealthGatePassed,
    HealthGateFailed {
        reason: String,
    },
    Pause,
    Resume,
    Abort,
    /// The boot id of a host in process, read before a reboot is asked of it.
    BootIdSeen {
        host: String,
        boot_id: String,
    },
    /// Puts the failed hosts back to pending and runs again (the hosts not
    /// reached yet run too; the done ones are not touched); only once the
    /// operation ended `Failed`, or `Finished` with failed hosts.
    RetryFailed,
    /// The time now: hosts in process longer than the per-host timeout fail.
    Tick {
        now_ms: u64,
    },
}

/// What to do next, from [`next`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Act on these hosts (hostset order; never more in process than the
    /// batch size). [`commit`] it before touching them.
    Start { hosts: Vec<String> },
    /// Soak between batches until this time; [`commit`] it so the end is kept.
    WaitSoak { until_ms: u64 },
    /// Check the hosts' health, then apply `HealthGatePassed`/`Failed`.
    CheckHealth,
    /// Hosts are in process: wait for their outcome.
    Wait,
    /// Every host done (or failed within the budget): [`commit`] ends the
    /// operation `Finished`.
    Finish,
    /// The budget is exceeded and nothing is in process: [`commit`] ends the
    /// operation `Failed`.
    Fail { host: Option<String>, reason: String },
    /// Aborting and nothing is in process: [`commit`] ends it `Aborted`.
    EndAborted,
    /// Paused or ended: nothing to do.
    Idle,
}

fn state_name(state: &HostState) -> &'static str {
    match state {
        HostState::Pending => "pending",
        HostState::InProcess { .. } => "in process",
        HostState::Done => "done",
        HostState::Failed { .. } => "failed",
    }
}

/// The phase as written in records (`phase`) and errors.
pub fn phase_name(phase: &Phase) -> &'static str {
    match phase {
        Phase::Running => "running",
        Phase::Paused => "paused",
        Phase::Aborting => "aborting",
        Phase::Finished => "finished",
        Phase::Failed { .. } => "failed",
        Phase::Aborted => "aborted",
    }
}

fn observation_name(observation: &Observation) -> &'static str {
    match observation {
        Observation::HostSucceeded { .. } => "HostSucceeded",
        Observation::HostFailed { .. } => "HostFailed",
        Observation::HostTimedOut { .. } => "HostTimedOut",
        Observation::HealthGatePassed => "HealthGatePassed",
        Observation::HealthGateFailed { .. } => "HealthGateFailed",
        Observation::Pause => "Pause",
        Observation::Resume => "Resume",
        Observation::Abort => "Abort",
        Observation::BootIdSeen { .. } => "BootIdSeen",
        Observation::RetryFailed => "RetryFailed",
        Observation::Tick { .. } => "Tick",
    }
}

impl OpState {
    /// A new operation over `hosts` (hostset order), every host pending.
    pub fn new<I, S>(hosts: I) -> Result<Self, PlanError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut entries: Vec<HostEntry> = Vec::new();
        for host in hosts {
            let address = host.into();
            if entries.iter().any(|entry| entry.address == address) {
                return Err(PlanError::DuplicateHost(address));
            }
            entries.push(HostEntry { address, state: HostState::Pending, attempts: 0, boot_id: None });
        }
        Ok(Self {
            hosts: entries,
            phase: Phase::Running,
            soak_until: None,
            gate_passed: false,
            failing: None,
            batches_started: 0,
            retries: 0,
        })
    }

    fn count(&self, pred: impl Fn(&HostState) -> bool) -> usize {
        self.hosts.iter().filter(|entry| pred(&entry.state)).count()
    }

    pub fn pending(&self) -> usize {
        self.count(|state| matches!(state, HostState::Pending))
    }

    pub fn in_process(&self) -> usize {
        self.count(|state| matches!(state, HostState::InProcess { .. }))
    }

    pub fn done(&self) -> usize {
        self.count(|state| matches!(state, HostState::Done))
    }

    pub fn failed(&self) -> usize {
        self.count(|state| matches!(state, HostState::Failed { .. }))
    }

    /// The entry of `host`.
    pub fn host(&self, host: &str) -> Option<&HostEntry> {
        self.hosts.iter().find(|entry| entry.address == host)
    }

    /// Whether the health gate is due: between batches of a gated operation
    /// that goes on (running or paused, not failing).
    fn awaits_gate(&self, knobs: &Knobs) -> bool {
        knobs.health_gate
            && matches!(self.phase, Phase::Running | Phase::Paused)
            && self.failing.is_none()
            && !self.gate_passed
            && self.batches_started > 0
            && self.in_process() == 0
            && self.pending() > 0
    }

    fn position(&self, host: &str) -> Result<usize, PlanError> {
        self.hosts
            .iter()
            .position(|entry| entry.address == host)
            .ok_or_else(|| PlanError::UnknownHost(host.to_string()))
    }

    /// Ends an in-process host with `outcome`; a failure beyond the budget
    /// makes the operation failing.
    fn end_host(&mut self, knobs: &Knobs, host: &str, outcome: HostState) -> Result<(), PlanError> {
        let index = self.position(host)?;
        let entry = &mut self.hosts[index];
        if !matches!(entry.state, HostState::InProcess { .. }) {
            return Err(PlanError::HostNotInProcess { host: host.to_string(), state: state_name(&entry.state) });
        }
        let reason = match &outcome {
            HostState::Failed { reason } => Some(reason.clone()),
            _ => None,
        };
        entry.state = outcome;
        if let Some(reason) = reason
            && self.failing.is_none()
            && self.failed() > knobs.budget()
        {
            self.failing = Some(Failure { host: Some(host.to_string()), reason });
        }
        Ok(())
    }
}

fn timeout_reason(knobs: &Knobs) -> String {
    format!("timed out after {} s", knobs.host_timeout_seconds)
}

/// The state after `observation`. Host outcomes are accepted for hosts in
/// process only, in any phase that can have them (running, paused,
/// aborting); controls only in the phases where they mean something
/// (repeating `Pause`, `Resume` or `Abort` is harmless).
pub fn apply(state: &OpState, knobs: &Knobs, observation: &Observation) -> Result<OpState, PlanError> {
    let mut next_state = state.clone();
    let not_allowed =
        || PlanError::NotAllowed { observation: observation_name(observation), phase: phase_name(&state.phase) };
    match observation {
        Observation::HostSucceeded { host } => next_state.end_host(knobs, host, HostState::Done)?,
        Observation::HostFailed { host, reason } => {
            next_state.end_host(knobs, host, HostState::Failed { reason: reason.clone() })?
        }
        Observation::HostTimedOut { host } => {
            next_state.end_host(knobs, host, HostState::Failed { reason: timeout_reason(knobs) })?
        }
        Observation::HealthGatePassed | Observation::HealthGateFailed { .. } => {
            if !state.awaits_gate(knobs) {
                return Err(PlanError::NoHealthCheck);
            }
            match observation {
                Observation::HealthGateFailed { reason } => {
                    next_state.failing = Some(Failure { host: None, reason: format!("health gate: {reason}") });
                }
                _ => next_state.gate_passed = true,
            }
        }
        Observation::Pause => match state.phase {
            Phase::Running | Phase::Paused => next_state.phase = Phase::Paused,
            _ => return Err(not_allowed()),
        },
        Observation::Resume => match state.phase {
            Phase::Running | Phase::Paused => next_state.phase = Phase::Running,
            _ => return Err(not_allowed()),
        },
        Observation::Abort => match state.phase {
            Phase::Running | Phase::Paused | Phase::Aborting => next_state.phase = Phase::Aborting,
            _ => return Err(not_allowed()),
        },
        Observation::BootIdSeen { host, boot_id } => {
            let index = next_state.position(host)?;
            let entry = &mut next_state.hosts[index];
            if !matches!(entry.state, HostState::InProcess { .. }) {
                return Err(PlanError::HostNotInProcess { host: host.clone(), state: state_name(&entry.state) });
            }
            entry.boot_id = Some(boot_id.clone());
        }
        Observation::RetryFailed => {
            let retriable = match state.phase {
                Phase::Failed { .. } => true,
                Phase::Finished => state.failed() > 0,
                _ => false,
            };
            if !retriable {
                return Err(not_allowed());
            }
            for entry in &mut next_state.hosts {
                if matches!(entry.state, HostState::Failed { .. }) {
                    entry.state = HostState::Pending;
                }
            }
            next_state.phase = Phase::Running;
            next_state.failing = None;
            next_state.gate_passed = false;
            next_state.retries += 1;
        }
        Observation::Tick { now_ms } => {
            let timeout = knobs.host_timeout_ms();
            let expired: Vec<String> = state
                .hosts
                .iter()
                .filter(|entry| match entry.state {
                    HostState::InProcess { since_ms, .. } => now_ms.saturating_sub(since_ms) >= timeout,
                    _ => false,
                })
                .map(|entry| entry.address.clone())
                .collect();
            for host in expired {
                next_state.end_host(knobs, &host, HostState::Failed { reason: timeout_reason(knobs) })?;
            }
        }
    }
    Ok(next_state)
}

/// What to do next at time `now_ms`. Never starts a host while any is in
/// process (batches follow one another), while paused, aborting or failing.
pub fn next(state: &OpState, knobs: &Knobs, now_ms: u64) -> Decision {
    let in_process = state.in_process();
    match state.phase {
        Phase::Finished | Phase::Failed { .. } | Phase::Aborted => return Decision::Idle,
        Phase::Aborting => return if in_process > 0 { Decision::Wait } else { Decision::EndAborted },
        Phase::Running | Phase::Paused => {}
    }
    if let Some(failure) = &state.failing {
        return if in_process > 0 {
            Decision::Wait
        } else {
            Decision::Fail { host: failure.host.clone(), reason: failure.reason.clone() }
        };
    }
    if state.phase == Phase::Paused {
        return Decision::Idle;
    }
    if in_process > 0 {
        return Decision::Wait;
    }
    if state.pending() == 0 {
        return Decision::Finish;
    }
    if state.batches_started > 0 {
        let soak = knobs.soak_ms();
        if soak > 0 {
            match state.soak_until {
                None => return Decision::WaitSoak { until_ms: now_ms.saturating_add(soak) },
                Some(until_ms) if now_ms < until_ms => return Decision::WaitSoak { until_ms },
                Some(_) => {}
            }
        }
        if knobs.health_gate && !state.gate_passed {
            return Decision::CheckHealth;
        }
    }
    let size = batch_size(knobs, state.hosts.len());
    let hosts = state
        .hosts
        .iter()
        .filter(|entry| entry.state == HostState::Pending)
        .take(size)
        .map(|entry| entry.address.clone())
        .collect();
    Decision::Start { hosts }
}

/// The state once `decision` (from [`next`] at `now_ms`) is being carried out:
/// `Start` marks its hosts in process (write this before touching them, so a
/// successor never starts them again), `WaitSoak` keeps the soak's end,
/// `Finish`/`Fail`/`EndAborted` end the operation. `Start`, `Finish`, `Fail`
/// and `EndAborted` must be what [`next`] decides for this state.
pub fn commit(state: &OpState, knobs: &Knobs, decision: &Decision, now_ms: u64) -> Result<OpState, PlanError> {
    let mut next_state = state.clone();
    match decision {
        Decision::Start { hosts } => {
            if next(state, knobs, now_ms) != *decision {
                return Err(PlanError::StaleDecision(decision.clone()));
            }
            for host in hosts {
                let index = next_state.position(host)?;
                let entry = &mut next_state.hosts[index];
                entry.attempts += 1;
                entry.state = HostState::InProcess { attempt: entry.attempts, since_ms: now_ms };
                entry.boot_id = None;
            }
            next_state.batches_started += 1;
            next_state.soak_until = None;
            next_state.gate_passed = false;
        }
        Decision::WaitSoak { until_ms } => {
            if next_state.soak_until.is_none() {
                next_state.soak_until = Some(*until_ms);
            }
        }
        Decision::Finish | Decision::Fail { .. } | Decision::EndAborted => {
            if next(state, knobs, now_ms) != *decision {
                return Err(PlanError::StaleDecision(decision.clone()));
            }
            next_state.phase = match decision {
                Decision::Finish => Phase::Finished,
                Decision::Fail { host, reason } => Phase::Failed { host: host.clone(), reason: reason.clone() },
                _ => Phase::Aborted,
            };
            next_state.failing = None;
            next_state.soak_until = None;
        }
        Decision::CheckHealth | Decision::Wait | Decision::Idle => {}
    }
    Ok(next_state)
}

#[cfg(test)]
mod tests;
