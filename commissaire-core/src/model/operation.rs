//! Records of cluster-wide operations: deploy, restart and upgrade. One record per
//! cluster and kind, keyed by the cluster's name. Host lists hold addresses;
//! `finished_at` is null until the operation ends.
//!
//! Additive fields (not in the original): `reason` says why a `failed`
//! operation failed, `failed_hosts` lists the hosts that failed (addresses),
//! `knobs` holds the rollout knobs the operation was started with, `phase` says
//! where a running operation is (`running`, `paused`, `aborting`, then
//! `finished`, `failed` or `aborted`), `control` is what an operator asked
//! of it (`pause`, `abort`, or empty to let it run), `progress` is the durable
//! per-host state the cluster exec service resumes from, `owner` /
//! `lease_expires_at` say which service instance drives it and until when,
//! and `cordoned` lists the Kubernetes nodes the operation cordoned and has
//! not uncordoned yet.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Field, FieldError, Kind, Model, check_name, check_one_of};

/// `in_process` while running, then `finished` or `failed`.
pub const OPERATION_STATUSES: &[&str] = &["in_process", "finished", "failed"];
/// What an operator may ask of a running operation (empty: let it run).
pub const OPERATION_CONTROLS: &[&str] = &["pause", "abort"];
/// Where an operation is.
pub const OPERATION_PHASES: &[&str] = &["running", "paused", "aborting", "finished", "failed", "aborted"];

fn check_common(name: &str, status: &str, control: &str, phase: &str, errors: &mut Vec<FieldError>) {
    check_name("name", name, errors);
    if !status.is_empty() {
        check_one_of("status", status, OPERATION_STATUSES, errors);
    }
    if !control.is_empty() {
        check_one_of("control", control, OPERATION_CONTROLS, errors);
    }
    if !phase.is_empty() {
        check_one_of("phase", phase, OPERATION_PHASES, errors);
    }
}

/// An OSTree deploy of `version` over a cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterDeploy {
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub deployed: Vec<String>,
    #[serde(default)]
    pub in_process: Vec<String>,
    #[serde(default)]
    pub started_at: String,
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Why the operation failed (empty otherwise).
    #[serde(default)]
    pub reason: String,
    /// The hosts that failed, in the order they failed.
    #[serde(default)]
    pub failed_hosts: Vec<String>,
    /// The knobs the operation runs with (empty: the defaults).
    #[serde(default)]
    pub knobs: Map<String, Value>,
    /// What an operator asked: `pause`, `abort`, or empty.
    #[serde(default)]
    pub control: String,
    /// Where the operation is (see [`OPERATION_PHASES`]).
    #[serde(default)]
    pub phase: String,
    /// The durable progress: every host's state and attempts, as the cluster
    /// exec service's planner keeps it (empty until the service wrote it).
    #[serde(default)]
    pub progress: Map<String, Value>,
    /// The cluster exec instance driving the operation (empty once ended).
    #[serde(default)]
    pub owner: String,
    /// Until when `owner` holds the operation; past it, another instance
    /// takes the operation over.
    #[serde(default)]
    pub lease_expires_at: String,
    /// Nodes (host addresses) this operation cordoned and has not uncordoned
    /// yet: written before the cordon, cleared after the uncordon.
    #[serde(default)]
    pub cordoned: Vec<String>,
}

impl Model for ClusterDeploy {
    const NAME: &'static str = "ClusterDeploy";
    const FIELDS: &'static [Field] = &[
        Field::required("name", Kind::Str),
        Field::optional("status", Kind::Str),
        Field::optional("version", Kind::Str),
        Field::optional("deployed", Kind::StrList),
        Field::optional("in_process", Kind::StrList),
        Field::optional("started_at", Kind::Str),
        Field::optional("finished_at", Kind::OptStr),
        Field::optional("reason", Kind::Str),
        Field::optional("failed_hosts", Kind::StrList),
        Field::optional("knobs", Kind::Dict),
        Field::optional("control", Kind::Str),
        Field::optional("phase", Kind::Str),
        Field::optional("progress", Kind::Dict),
        Field::optional("owner", Kind::Str),
        Field::optional("lease_expires_at", Kind::Str),
        Field::optional("cordoned", Kind::StrList),
    ];

    fn primary_key(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn check(&self, errors: &mut Vec<FieldError>) {
        check_common(&self.name, &self.status, &self.control, &self.phase, errors);
        if self.version.is_empty() {
            errors.push(FieldError::new("version", "must be a non-empty string"));
        }
    }
}

/// A rolling restart of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterRestart {
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub restarted: Vec<String>,
    #[serde(default)]
    pub in_process: Vec<String>,
    #[serde(default)]
    pub started_at: String,
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Why the operation failed (empty otherwise).
    #[serde(default)]
    pub reason: String,
    /// The hosts that failed, in the order they failed.
    #[serde(default)]
    pub failed_hosts: Vec<String>,
    /// The knobs the operation runs with (empty: the defaults).
    #[serde(default)]
    pub knobs: Map<String, Value>,
    /// What an operator asked: `pause`, `abort`, or empty.
    #[serde(default)]
    pub control: String,
    /// Where the operation is (see [`OPERATION_PHASES`]).
    #[serde(default)]
    pub phase: String,
    /// The durable progress: every host's state and attempts, as the cluster
    /// exec service's planner keeps it (empty until the service wrote it).
    #[serde(default)]
    pub progress: Map<String, Value>,
    /// The cluster exec instance driving the operation (empty once ended).
    #[serde(default)]
    pub owner: String,
    /// Until when `owner` holds the operation; past it, another instance
    /// takes the operation over.
    #[serde(default)]
    pub lease_expires_at: String,
    /// Nodes (host addresses) this operation cordoned and has not uncordoned
    /// yet: written before the cordon, cleared after the uncordon.
    #[serde(default)]
    pub cordoned: Vec<String>,
}

impl Model for ClusterRestart {
    const NAME: &'static str = "ClusterRestart";
    const FIELDS: &'static [Field] = &[
        Field::required("name", Kind::Str),
        Field::optional("status", Kind::Str),
        Field::optional("restarted", Kind::StrList),
        Field::optional("in_process", Kind::StrList),
        Field::optional("started_at", Kind::Str),
        Field::optional("finished_at", Kind::OptStr),
        Field::optional("reason", Kind::Str),
        Field::optional("failed_hosts", Kind::StrList),
        Field::optional("knobs", Kind::Dict),
        Field::optional("control", Kind::Str),
        Field::optional("phase", Kind::Str),
        Field::optional("progress", Kind::Dict),
        Field::optional("owner", Kind::Str),
        Field::optional("lease_expires_at", Kind::Str),
        Field::optional("cordoned", Kind::StrList),
    ];

    fn primary_key(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn check(&self, errors: &mut Vec<FieldError>) {
        check_common(&self.name, &self.status, &self.control, &self.phase, errors);
    }
}

/// A rolling package (or OSTree) upgrade of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterUpgrade {
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub upgraded: Vec<String>,
    #[serde(default)]
    pub in_process: Vec<String>,
    #[serde(default)]
    pub started_at: String,
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Why the operation failed (empty otherwise).
    #[serde(default)]
    pub reason: String,
    /// The hosts that failed, in the order they failed.
    #[serde(default)]
    pub failed_hosts: Vec<String>,
    /// The knobs the operation runs with (empty: the defaults).
    #[serde(default)]
    pub knobs: Map<String, Value>,
    /// What an operator asked: `pause`, `abort`, or empty.
    #[serde(default)]
    pub control: String,
    /// Where the operation is (see [`OPERATION_PHASES`]).
    #[serde(default)]
    pub phase: String,
    /// The durable progress: every host's state and attempts, as the cluster
    /// exec service's planner keeps it (empty until the service wrote it).
    #[serde(default)]
    pub progress: Map<String, Value>,
    /// The cluster exec instance driving the operation (empty once ended).
    #[serde(default)]
    pub owner: String,
    /// Until when `owner` holds the operation; past it, another instance
    /// takes the operation over.
    #[serde(default)]
    pub lease_expires_at: String,
    /// Nodes (host addresses) this operation cordoned and has not uncordoned
    /// yet: written before the cordon, cleared after the uncordon.
    #[serde(default)]
    pub cordoned: Vec<String>,
}

impl Model for ClusterUpgrade {
    const NAME: &'static str = "ClusterUpgrade";
    const FIELDS: &'static [Field] = &[
        Field::required("name", Kind::Str),
        Field::optional("status", Kind::Str),
        Field::optional("upgraded", Kind::StrList),
        Field::optional("in_process", Kind::StrList),
        Field::optional("started_at", Kind::Str),
        Field::optional("finished_at", Kind::OptStr),
        Field::optional("reason", Kind::Str),
        Field::optional("failed_hosts", Kind::StrList),
        Field::optional("knobs", Kind::Dict),
        Field::optional("control", Kind::Str),
        Field::optional("phase", Kind::Str),
        Field::optional("progress", Kind::Dict),
        Field::optional("owner", Kind::Str),
        Field::optional("lease_expires_at", Kind::Str),
        Field::optional("cordoned", Kind::StrList),
    ];

    fn primary_key(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn check(&self, errors: &mut Vec<FieldError>) {
        check_common(&self.name, &self.status, &self.control, &self.phase, errors);
    }
}
