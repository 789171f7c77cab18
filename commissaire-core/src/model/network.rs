//! Container networks given to hosts at bootstrap.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Field, FieldError, Kind, Model, check_name, check_one_of};

/// `flannel_etcd`: flannel reads its configuration from etcd; `flannel_server`:
/// client/server flannel, with `options.address` = `host:port` of the server.
pub const NETWORK_TYPES: &[&str] = &["flannel_etcd", "flannel_server"];

/// A network. Primary key `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    #[serde(rename = "type", default = "default_type")]
    pub kind: String,
    #[serde(default)]
    pub options: Map<String, Value>,
}

fn default_type() -> String {
    "flannel_etcd".to_string()
}

impl Network {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), kind: default_type(), options: Map::new() }
    }
}

impl Model for Network {
    const NAME: &'static str = "Network";
    const FIELDS: &'static [Field] = &[
        Field::required("name", Kind::Str),
        Field::optional("type", Kind::Str),
        Field::optional("options", Kind::Dict),
    ];

    fn primary_key(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn check(&self, errors: &mut Vec<FieldError>) {
        check_name("name", &self.name, errors);
        check_one_of("type", &self.kind, NETWORK_TYPES, errors);
        if self.kind == "flannel_server" {
            match self.options.get("address").and_then(Value::as_str) {
                Some(address) if address.contains(':') => {}
                _ => {
                    errors.push(FieldError::new("options.address", "flannel_server needs the server as \"host:port\""))
                }
            }
        }
    }
}
