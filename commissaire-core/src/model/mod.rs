//! The data models, with the original's field names, JSON types, defaults,
//! primary keys and enumerations.
//!
//! Every model is checked against its field schema before it is built, so a bad
//! document is refused with errors that name the field ("Host.cpus: expected an
//! integer, got a string") instead of a generic decoding failure. Model-specific
//! rules (enumerations, non-empty names) run after that. Both run in
//! [`Model::from_json`]; a value that passes can be stored.

mod cluster;
mod container_manager;
mod host;
mod network;
mod operation;
mod schema;

pub use cluster::{Cluster, ClusterHosts};
pub use container_manager::{CONTAINER_MANAGER_TYPES, ContainerManagerConfig};
pub use host::{HOST_STATUSES, Host, HostCreds, HostStatus, WatcherRecord};
pub use network::{NETWORK_TYPES, Network};
pub use operation::{ClusterDeploy, ClusterRestart, ClusterUpgrade, OPERATION_STATUSES};
pub use schema::{Field, FieldError, Kind, Unknown, ValidationError};

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// A model: a JSON object with a fixed schema.
pub trait Model: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The class name used on the bus (`model_type_name`) and in events.
    const NAME: &'static str;
    /// Every attribute with its JSON kind and whether it is required.
    const FIELDS: &'static [Field];
    /// Attributes left out of the safe JSON form (never sent to clients or events).
    const HIDDEN: &'static [&'static str] = &[];

    /// The primary key's value, for models that have one.
    fn primary_key(&self) -> Option<&str>;

    /// Model-specific rules beyond the field kinds.
    fn check(&self, _errors: &mut Vec<FieldError>) {}

    /// Builds the model from a JSON object: defaults for absent attributes, every
    /// present attribute of its declared kind, then the model's own rules.
    fn from_json(value: &Value, unknown: Unknown) -> Result<Self, ValidationError> {
        schema::check_fields(Self::NAME, Self::FIELDS, value, unknown)?;
        let model: Self =
            serde_json::from_value(value.clone()).map_err(|err| ValidationError::undecodable(Self::NAME, err))?;
        model.validate()?;
        Ok(model)
    }

    /// Rebuilds a record as the storage service returned it. The schema was
    /// checked when it was saved and the storage service checked it again when it
    /// read it back ([`ModelType::parse_stored`]), so only serde's own type checks
    /// run here: a reader does not pay for a third validation.
    fn from_stored(value: Value) -> Result<Self, ValidationError> {
        serde_json::from_value(value).map_err(|err| ValidationError::undecodable(Self::NAME, err))
    }

    /// Runs the model-specific rules.
    fn validate(&self) -> Result<(), ValidationError> {
        let mut errors = Vec::new();
        self.check(&mut errors);
        if errors.is_empty() { Ok(()) } else { Err(ValidationError { model: Self::NAME, errors }) }
    }

    /// Every attribute, hidden ones included (what the store keeps).
    fn to_full_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The attributes a client or an event may see.
    fn to_safe_json(&self) -> Value {
        let mut value = self.to_full_json();
        if let Value::Object(map) = &mut value {
            for hidden in Self::HIDDEN {
                map.remove(*hidden);
            }
        }
        value
    }
}

/// The model classes that travel on the bus by name (`model_type_name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelType {
    Host,
    HostCreds,
    Cluster,
    ClusterDeploy,
    ClusterRestart,
    ClusterUpgrade,
    Network,
    ContainerManagerConfig,
    WatcherRecord,
}

/// Evaluates `$body` with `$m` naming the model struct of the [`ModelType`]
/// `$t`: the one place that maps each variant to its type.
macro_rules! with_model {
    ($t:expr, $m:ident => $body:expr) => {
        match $t {
            ModelType::Host => {
                type $m = Host;
                $body
            }
            ModelType::HostCreds => {
                type $m = HostCreds;
                $body
            }
            ModelType::Cluster => {
                type $m = Cluster;
                $body
            }
            ModelType::ClusterDeploy => {
                type $m = ClusterDeploy;
                $body
            }
            ModelType::ClusterRestart => {
                type $m = ClusterRestart;
                $body
            }
            ModelType::ClusterUpgrade => {
                type $m = ClusterUpgrade;
                $body
            }
            ModelType::Network => {
                type $m = Network;
                $body
            }
            ModelType::ContainerManagerConfig => {
                type $m = ContainerManagerConfig;
                $body
            }
            ModelType::WatcherRecord => {
                type $m = WatcherRecord;
                $body
            }
        }
    };
}

/// A parsed record as `parse` and `parse_stored` return it: its primary key
/// and its full JSON form.
fn keyed<M: Model>(model: M) -> (String, Value) {
    let key = model.primary_key().unwrap_or_default().to_string();
    (key, model.to_full_json())
}

impl ModelType {
    pub const ALL: [ModelType; 9] = [
        ModelType::Host,
        ModelType::HostCreds,
        ModelType::Cluster,
        ModelType::ClusterDeploy,
        ModelType::ClusterRestart,
        ModelType::ClusterUpgrade,
        ModelType::Network,
        ModelType::ContainerManagerConfig,
        ModelType::WatcherRecord,
    ];

    pub fn name(self) -> &'static str {
        with_model!(self, M => M::NAME)
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Secret models never go to a plain store and never appear in events.
    pub fn is_secret(self) -> bool {
        self == ModelType::HostCreds
    }

    /// The list model class that lists this type, if any (`Hosts` for `Host`).
    pub fn list_name(self) -> Option<&'static str> {
        match self {
            ModelType::Host => Some("Hosts"),
            ModelType::Cluster => Some("Clusters"),
            ModelType::Network => Some("Networks"),
            ModelType::ContainerManagerConfig => Some("ContainerManagerConfigs"),
            ModelType::WatcherRecord => Some("WatcherRecords"),
            _ => None,
        }
    }

    /// The item type listed by a list model class name.
    pub fn from_list_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.list_name() == Some(name))
    }

    /// Parses and validates a document of this type, returning its primary key and
    /// its full JSON form.
    pub fn parse(self, value: &Value, unknown: Unknown) -> Result<(String, Value), ValidationError> {
        fn go<M: Model>(value: &Value, unknown: Unknown) -> Result<(String, Value), ValidationError> {
            M::from_json(value, unknown).map(keyed)
        }
        with_model!(self, M => go::<M>(value, unknown))
    }

    /// Reads back a record from its stored bytes: its types (serde) and the
    /// model's own rules, returning its primary key and full JSON form. What a
    /// store holds was parsed by [`ModelType::parse`] before it was written, so
    /// this guards against damaged or foreign records without a second pass
    /// through the field schema.
    pub fn parse_stored(self, bytes: &[u8]) -> Result<(String, Value), ValidationError> {
        fn go<M: Model>(bytes: &[u8]) -> Result<(String, Value), ValidationError> {
            let model: M = serde_json::from_slice(bytes).map_err(|err| ValidationError::undecodable(M::NAME, err))?;
            model.validate()?;
            Ok(keyed(model))
        }
        with_model!(self, M => go::<M>(bytes))
    }

    /// The safe JSON form of a full document of this type (hidden attributes
    /// removed; secrets have no safe form and give `None`).
    pub fn safe_json(self, full: &Value) -> Option<Value> {
        if self.is_secret() {
            return None;
        }
        let hidden: &[&str] = match self {
            ModelType::Cluster => Cluster::HIDDEN,
            _ => &[],
        };
        let mut value = full.clone();
        if let Value::Object(map) = &mut value {
            for field in hidden {
                map.remove(*field);
            }
        }
        Some(value)
    }

    /// The primary key's name.
    pub fn primary_key_field(self) -> &'static str {
        match self {
            ModelType::Host | ModelType::HostCreds | ModelType::WatcherRecord => "address",
            _ => "name",
        }
    }
}

/// A name of a cluster, network or container manager: letters, digits, `-` and
/// `_`, 1 to 253 characters (the original's route pattern `[a-zA-Z0-9\-\_]+`).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A host address: an IP address or host name of letters, digits, `-`, `_` and
/// `.`, 1 to 253 characters (the original's route pattern `[a-zA-Z0-9\-\_\.]+`).
/// IPv6 literals are accepted too. A name may not start with `-` (it would read
/// as an option to ssh) nor have an empty label (`.`, `..`, `.x`, `a..b`: path
/// segments, not hosts); a trailing dot (absolute name) is allowed.
pub fn is_valid_address(address: &str) -> bool {
    if address.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !address.is_empty()
        && address.len() <= 253
        && !address.starts_with('-')
        && !address.starts_with('.')
        && !address.contains("..")
        && address.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn check_name(field: &str, value: &str, errors: &mut Vec<FieldError>) {
    if !is_valid_name(value) {
        errors.push(FieldError::new(field, "must be 1 to 253 characters of letters, digits, '-' and '_'"));
    }
}

fn check_one_of(field: &str, value: &str, allowed: &[&str], errors: &mut Vec<FieldError>) {
    if !allowed.contains(&value) {
        errors.push(FieldError::new(field, format!("must be one of: {}", allowed.join(", "))));
    }
}

#[cfg(test)]
mod tests;
