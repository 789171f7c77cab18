//! Hosts, their credentials, their status view and watcher records.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Field, FieldError, Kind, Model, check_one_of};

/// The statuses a host moves through (`""` until the investigator first sees it).
pub const HOST_STATUSES: &[&str] = &["investigating", "bootstrapping", "active", "disassociated", "failed"];

fn check_address(address: &str, errors: &mut Vec<FieldError>) {
    if !super::is_valid_address(address) {
        errors
            .push(FieldError::new("address", "must be an IP address or a host name (letters, digits, '-', '_', '.')"));
    }
}

/// A managed host. Primary key `address`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub address: String,
    #[serde(default)]
    pub status: String,
    /// Lower-cased OS name (`fedora`, `rhel`, `centos`, `debian`, …).
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub cpus: u64,
    /// Total memory in MB.
    #[serde(default)]
    pub memory: u64,
    /// Total size of the host's mounts in bytes.
    #[serde(default)]
    pub space: u64,
    #[serde(default)]
    pub last_check: String,
    /// Name of the storage handler authoritative for this host.
    #[serde(default)]
    pub source: String,
    /// Why the host is `failed` (empty otherwise). Additive to the original.
    #[serde(default)]
    pub reason: String,
    /// The host's SSH public key, pinned on first contact (OpenSSH line; empty
    /// until then). Additive to the original.
    #[serde(default)]
    pub ssh_host_key: String,
}

impl Host {
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            status: String::new(),
            os: String::new(),
            cpus: 0,
            memory: 0,
            space: 0,
            last_check: String::new(),
            source: String::new(),
            reason: String::new(),
            ssh_host_key: String::new(),
        }
    }
}

impl Model for Host {
    const NAME: &'static str = "Host";
    const FIELDS: &'static [Field] = &[
        Field::required("address", Kind::Str),
        Field::optional("status", Kind::Str),
        Field::optional("os", Kind::Str),
        Field::optional("cpus", Kind::Int),
        Field::optional("memory", Kind::Int),
        Field::optional("space", Kind::Int),
        Field::optional("last_check", Kind::Str),
        Field::optional("source", Kind::Str),
        Field::optional("reason", Kind::Str),
        Field::optional("ssh_host_key", Kind::Str),
    ];

    fn primary_key(&self) -> Option<&str> {
        Some(&self.address)
    }

    fn check(&self, errors: &mut Vec<FieldError>) {
        check_address(&self.address, errors);
        if !self.status.is_empty() {
            check_one_of("status", &self.status, HOST_STATUSES, errors);
        }
    }
}

/// How to log in to a host. Primary key `address`. Secret: sealed at rest, never
/// in events, logs or any route but `GET /api/v0/host/{address}/creds`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct HostCreds {
    pub address: String,
    /// Base64 of the private key file, without newlines.
    #[serde(default)]
    pub ssh_priv_key: String,
    #[serde(default = "default_remote_user")]
    pub remote_user: String,
}

fn default_remote_user() -> String {
    "root".to_string()
}

impl std::fmt::Debug for HostCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCreds")
            .field("address", &self.address)
            .field("ssh_priv_key", &if self.ssh_priv_key.is_empty() { "" } else { "<redacted>" })
            .field("remote_user", &self.remote_user)
            .finish()
    }
}

impl Model for HostCreds {
    const NAME: &'static str = "HostCreds";
    const FIELDS: &'static [Field] = &[
        Field::required("address", Kind::Str),
        Field::optional("ssh_priv_key", Kind::Str),
        Field::optional("remote_user", Kind::Str),
    ];

    fn primary_key(&self) -> Option<&str> {
        Some(&self.address)
    }

    fn check(&self, errors: &mut Vec<FieldError>) {
        check_address(&self.address, errors);
        let user_ok = !self.remote_user.is_empty()
            && self.remote_user.len() <= 32
            && self.remote_user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            && !self.remote_user.starts_with('-');
        if !user_ok {
            errors.push(FieldError::new(
                "remote_user",
                "must be a user name of letters, digits, '_', '-' and '.' (1 to 32)",
            ));
        }
        if self.ssh_priv_key.bytes().any(|b| b.is_ascii_whitespace()) {
            errors.push(FieldError::new("ssh_priv_key", "must be base64 without newlines or spaces"));
        }
    }
}

/// The status view of a host (response only, no primary key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    #[serde(rename = "type", default = "host_only")]
    pub kind: String,
    /// `{"last_check": …, "status": …}`.
    #[serde(default)]
    pub host: Map<String, Value>,
    /// The container manager's node status object, `{}` when unmanaged.
    #[serde(default)]
    pub container_manager: Map<String, Value>,
}

fn host_only() -> String {
    "host_only".to_string()
}

impl HostStatus {
    pub fn of(host: &Host, container_manager: Map<String, Value>) -> Self {
        let mut view = Map::new();
        view.insert("last_check".into(), Value::String(host.last_check.clone()));
        view.insert("status".into(), Value::String(host.status.clone()));
        Self { kind: host_only(), host: view, container_manager }
    }
}

impl Model for HostStatus {
    const NAME: &'static str = "HostStatus";
    const FIELDS: &'static [Field] = &[
        Field::optional("type", Kind::Str),
        Field::optional("host", Kind::Dict),
        Field::optional("container_manager", Kind::Dict),
    ];

    fn primary_key(&self) -> Option<&str> {
        None
    }
}

/// A host the watcher checks: its schedule, kept in the store. Primary key
/// `address` (one record per host, so there are never two schedules for one
/// host). `address` and `last_check` keep the original's meaning; the other
/// members are additive and used by the watcher service to share the hosts
/// between its instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatcherRecord {
    #[serde(default)]
    pub address: String,
    /// When the host was last claimed for a check (the original's default,
    /// `9999-12-31T23:59:59.999999`, until the first one).
    #[serde(default = "max_timestamp")]
    pub last_check: String,
    /// When the host is due for its next check; empty means due now.
    #[serde(default)]
    pub next_check: String,
    /// The watcher instance that claimed the last check (for operators).
    #[serde(default)]
    pub owner: String,
    /// The last good status (`active` or `disassociated`) the watcher saw, to
    /// restore when a host it failed recovers.
    #[serde(default)]
    pub last_good_status: String,
}

impl WatcherRecord {
    /// A record for `address`, due at `next_check`, never checked yet.
    pub fn new(address: impl Into<String>, next_check: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            last_check: max_timestamp(),
            next_check: next_check.into(),
            owner: String::new(),
            last_good_status: String::new(),
        }
    }
}

fn max_timestamp() -> String {
    "9999-12-31T23:59:59.999999".to_string()
}

impl Model for WatcherRecord {
    const NAME: &'static str = "WatcherRecord";
    const FIELDS: &'static [Field] = &[
        Field::optional("address", Kind::Str),
        Field::optional("last_check", Kind::Str),
        Field::optional("next_check", Kind::Str),
        Field::optional("owner", Kind::Str),
        Field::optional("last_good_status", Kind::Str),
    ];

    fn primary_key(&self) -> Option<&str> {
        Some(&self.address)
    }

    fn check(&self, errors: &mut Vec<FieldError>) {
        check_address(&self.address, errors);
        if crate::timestamp::parse(&self.last_check).is_none() {
            errors.push(FieldError::new("last_check", "must be a timestamp like 2017-06-28T14:03:11.123456"));
        }
        if !self.next_check.is_empty() && crate::timestamp::parse(&self.next_check).is_none() {
            errors.push(FieldError::new("next_check", "must be empty or a timestamp like 2017-06-28T14:03:11.123456"));
        }
        if !self.last_good_status.is_empty() {
            check_one_of("last_good_status", &self.last_good_status, &["active", "disassociated"], errors);
        }
    }
}
