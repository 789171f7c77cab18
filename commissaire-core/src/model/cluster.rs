//! Clusters and their member list.

use serde::{Deserialize, Serialize};

use super::{Field, FieldError, Kind, Model, check_name};

/// A cluster. Primary key `name`. `hostset` (the member addresses) is hidden:
/// kept in the store, never shown to clients, who see the `hosts` counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub name: String,
    /// Computed on read (`ok`, `degraded`, `failed`); what is stored is not used.
    #[serde(default)]
    pub status: String,
    #[serde(default = "default_network")]
    pub network: String,
    #[serde(default)]
    pub hostset: Vec<String>,
    /// Name of a container manager; empty for an unmanaged cluster.
    #[serde(default)]
    pub container_manager: String,
}

fn default_network() -> String {
    "default".to_string()
}

/// The member counters shown with a cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterHosts {
    pub total: u64,
    pub available: u64,
    pub unavailable: u64,
}

impl Cluster {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: String::new(),
            network: default_network(),
            hostset: Vec::new(),
            container_manager: String::new(),
        }
    }

    /// The cluster's status from its members' statuses: `ok` when every member is
    /// active (or there are none), `failed` when none is, `degraded` otherwise.
    pub fn status_from(member_statuses: &[&str]) -> (&'static str, ClusterHosts) {
        let total = member_statuses.len() as u64;
        let available = member_statuses.iter().filter(|s| **s == "active").count() as u64;
        let hosts = ClusterHosts { total, available, unavailable: total - available };
        let status = if available == total {
            "ok"
        } else if available == 0 {
            "failed"
        } else {
            "degraded"
        };
        (status, hosts)
    }
}

impl Model for Cluster {
    const NAME: &'static str = "Cluster";
    const FIELDS: &'static [Field] = &[
        Field::required("name", Kind::Str),
        Field::optional("status", Kind::Str),
        Field::optional("network", Kind::Str),
        Field::optional("hostset", Kind::StrList),
        Field::optional("container_manager", Kind::Str),
    ];
    const HIDDEN: &'static [&'static str] = &["hostset"];

    fn primary_key(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn check(&self, errors: &mut Vec<FieldError>) {
        check_name("name", &self.name, errors);
        check_name("network", &self.network, errors);
        if !self.container_manager.is_empty() {
            check_name("container_manager", &self.container_manager, errors);
        }
        let mut seen = std::collections::HashSet::new();
        for address in &self.hostset {
            if !super::is_valid_address(address) {
                errors.push(FieldError::new("hostset", format!("{address:?} is not a host address")));
            } else if !seen.insert(address) {
                errors.push(FieldError::new("hostset", format!("{address} is listed twice")));
            }
        }
    }
}
