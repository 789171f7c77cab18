//! Container manager configurations.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Field, FieldError, Kind, Model, check_name, check_one_of};

/// `openshift` and `kubernetes` talk to a Kubernetes-compatible API; `trivial`
/// keeps nodes in memory (clusters without a real manager, and tests).
pub const CONTAINER_MANAGER_TYPES: &[&str] = &["openshift", "kubernetes", "trivial"];

/// A container manager. Primary key `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerManagerConfig {
    pub name: String,
    #[serde(rename = "type", default = "default_type")]
    pub kind: String,
    /// For the API types: `server_url` (required), `token`, `certificate_path` and
    /// `certificate_key_path`, `certificate_ca_path`, `insecure_skip_tls_verify`.
    #[serde(default)]
    pub options: Map<String, Value>,
}

fn default_type() -> String {
    "openshift".to_string()
}

impl Model for ContainerManagerConfig {
    const NAME: &'static str = "ContainerManagerConfig";
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
        check_one_of("type", &self.kind, CONTAINER_MANAGER_TYPES, errors);
        if self.kind != "trivial" {
            match self.options.get("server_url").and_then(Value::as_str) {
                Some(url) if url.starts_with("https://") || url.starts_with("http://") => {}
                _ => errors
                    .push(FieldError::new("options.server_url", "must be the API server's http:// or https:// URL")),
            }
            let cert = self.options.contains_key("certificate_path");
            let key = self.options.contains_key("certificate_key_path");
            if cert != key {
                errors.push(FieldError::new(
                    "options",
                    "certificate_path and certificate_key_path must be given together",
                ));
            }
            if let Some(flag) = self.options.get("insecure_skip_tls_verify")
                && !flag.is_boolean()
            {
                errors.push(FieldError::new("options.insecure_skip_tls_verify", "must be true or false"));
            }
        }
    }
}
