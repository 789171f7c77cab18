//! The `storage_handlers` configuration: which store holds which models.
//!
//! Each entry has a `type` (`etcd` or `embedded`, also accepted with the
//! original's `commissaire.storage.` prefix), an optional unique `name` and
//! `models` (class names or glob patterns, default `["*"]`); every other member
//! configures the store. A pattern matching no model, or a model claimed twice,
//! is refused at start-up. Host credentials live in the store that holds `Host`,
//! sealed.

use std::collections::{HashMap, HashSet};

use commissaire_core::model::ModelType;
use serde_json::{Map, Value};

/// A store kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Etcd,
    Embedded,
}

impl StoreKind {
    fn from_type(name: &str) -> Option<Self> {
        match name.strip_prefix("commissaire.storage.").unwrap_or(name) {
            "etcd" => Some(Self::Etcd),
            "embedded" => Some(Self::Embedded),
            _ => None,
        }
    }

    /// The handler type reported by `storage.list_store_handlers`.
    pub fn handler_type(self) -> &'static str {
        match self {
            Self::Etcd => "EtcdStoreHandler",
            Self::Embedded => "EmbeddedStoreHandler",
        }
    }

    fn module(self) -> &'static str {
        match self {
            Self::Etcd => "commissaire.storage.etcd",
            Self::Embedded => "commissaire.storage.embedded",
        }
    }
}

/// One configured handler.
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerSpec {
    pub name: String,
    pub kind: StoreKind,
    /// The models this handler holds (secret models excluded).
    pub models: Vec<ModelType>,
    /// Store-specific members (everything but `type`, `name` and `models`).
    pub config: Map<String, Value>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HandlerConfigError {
    #[error("storage_handlers must be an object or a list of objects")]
    NotObjects,
    #[error("storage handler #{0} is missing \"type\" (etcd or embedded)")]
    MissingType(usize),
    #[error("storage handler #{index} has unknown type {kind:?} (use etcd or embedded)")]
    UnknownType { index: usize, kind: String },
    #[error("storage handler name {0:?} is used twice")]
    DuplicateName(String),
    #[error("storage handler {handler:?}: no model matches {pattern:?}")]
    NoMatch { handler: String, pattern: String },
    #[error("model {model} is claimed by both {first:?} and {second:?}")]
    ClaimedTwice { model: String, first: String, second: String },
    #[error("storage handler {handler:?}: models must be a list of class names or patterns")]
    BadModels { handler: String },
}

/// The default when nothing is configured: everything in etcd on 127.0.0.1:2379.
pub fn default_handlers() -> Vec<HandlerSpec> {
    let mut config = Map::new();
    config.insert("server_url".into(), Value::String("http://127.0.0.1:2379".into()));
    vec![HandlerSpec {
        name: StoreKind::Etcd.module().into(),
        kind: StoreKind::Etcd,
        models: claimable().collect(),
        config,
    }]
}

fn claimable() -> impl Iterator<Item = ModelType> {
    ModelType::ALL.into_iter().filter(|t| !t.is_secret())
}

/// Parses `storage_handlers` (absent or null: the default).
pub fn parse(value: Option<&Value>) -> Result<Vec<HandlerSpec>, HandlerConfigError> {
    let entries: Vec<&Value> = match value {
        None | Some(Value::Null) => return Ok(default_handlers()),
        Some(Value::Array(items)) => items.iter().collect(),
        Some(item @ Value::Object(_)) => vec![item],
        Some(_) => return Err(HandlerConfigError::NotObjects),
    };
    if entries.is_empty() {
        return Ok(default_handlers());
    }
    let mut specs = Vec::new();
    let mut names = HashSet::new();
    let mut claimed: HashMap<ModelType, String> = HashMap::new();
    for (index, entry) in entries.into_iter().enumerate() {
        let Value::Object(map) = entry else { return Err(HandlerConfigError::NotObjects) };
        let mut config = map.clone();
        let kind_name = match config.remove("type") {
            Some(Value::String(s)) => s,
            _ => return Err(HandlerConfigError::MissingType(index)),
        };
        let kind =
            StoreKind::from_type(&kind_name).ok_or(HandlerConfigError::UnknownType { index, kind: kind_name })?;
        let name = match config.remove("name") {
            Some(Value::String(name)) => {
                if !names.insert(name.clone()) {
                    return Err(HandlerConfigError::DuplicateName(name));
                }
                name
            }
            _ => {
                // Unnamed handlers of one type are numbered: etcd, etcd-1, etcd-2…
                let base = kind.module().to_string();
                let mut name = base.clone();
                let mut n = 0;
                while names.contains(&name) {
                    n += 1;
                    name = format!("{base}-{n}");
                }
                names.insert(name.clone());
                name
            }
        };
        let patterns: Vec<String> = match config.remove("models") {
            None => vec!["*".into()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| HandlerConfigError::BadModels { handler: name.clone() })?,
            Some(_) => return Err(HandlerConfigError::BadModels { handler: name.clone() }),
        };
        let mut models = Vec::new();
        for pattern in &patterns {
            let glob =
                glob::Pattern::new(pattern).map_err(|_| HandlerConfigError::BadModels { handler: name.clone() })?;
            let matched: Vec<ModelType> = claimable().filter(|t| glob.matches(t.name())).collect();
            if matched.is_empty() {
                return Err(HandlerConfigError::NoMatch { handler: name.clone(), pattern: pattern.clone() });
            }
            for model in matched {
                if let Some(first) = claimed.get(&model) {
                    if first != &name {
                        return Err(HandlerConfigError::ClaimedTwice {
                            model: model.name().into(),
                            first: first.clone(),
                            second: name.clone(),
                        });
                    }
                    continue;
                }
                claimed.insert(model, name.clone());
                models.push(model);
            }
        }
        specs.push(HandlerSpec { name, kind, models, config });
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn default_is_etcd_for_everything_but_secrets() {
        let specs = parse(None).expect("default");
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].kind, StoreKind::Etcd);
        assert_eq!(specs[0].config["server_url"], "http://127.0.0.1:2379");
        assert!(!specs[0].models.contains(&ModelType::HostCreds));
        assert_eq!(specs[0].models.len(), ModelType::ALL.len() - 1);
    }

    #[test]
    fn the_original_shipped_config_parses() {
        let value = json!([{"type": "etcd", "server_url": "http://127.0.0.1:2379", "models": ["*"]}]);
        let specs = parse(Some(&value)).expect("parse");
        assert_eq!(specs[0].name, "commissaire.storage.etcd");
        assert_eq!(
            specs[0].config,
            json!({"server_url": "http://127.0.0.1:2379"}).as_object().cloned().expect("object")
        );
    }

    #[test]
    fn globs_split_models_between_handlers() {
        let value = json!([
            {"type": "commissaire.storage.etcd", "models": ["Host*", "Cluster"]},
            {"type": "embedded", "name": "local", "path": "/tmp/x", "models": ["*"]},
        ]);
        let err = parse(Some(&value)).expect_err("Host claimed twice via *");
        assert!(matches!(err, HandlerConfigError::ClaimedTwice { .. }), "{err}");

        let value = json!([
            {"type": "etcd", "models": ["Host*", "Cluster"]},
            {"type": "embedded", "name": "local", "path": "/tmp/x", "models": ["ClusterDeploy", "ClusterRestart", "ClusterUpgrade", "Network", "ContainerManagerConfig"]},
        ]);
        let specs = parse(Some(&value)).expect("split");
        assert_eq!(specs[0].models, vec![ModelType::Host, ModelType::Cluster]);
        assert_eq!(specs[1].name, "local");
        assert_eq!(specs[1].models.len(), 5);
    }

    #[test]
    fn bad_configs_are_refused_with_reasons() {
        assert_eq!(parse(Some(&json!([{"name": "x"}]))), Err(HandlerConfigError::MissingType(0)));
        assert!(matches!(parse(Some(&json!([{"type": "mongo"}]))), Err(HandlerConfigError::UnknownType { .. })));
        assert!(matches!(
            parse(Some(&json!([{"type": "etcd", "models": ["Nope*"]}]))),
            Err(HandlerConfigError::NoMatch { .. })
        ));
        // Secret models can never be claimed, even by name.
        assert!(matches!(
            parse(Some(&json!([{"type": "etcd", "models": ["HostCreds"]}]))),
            Err(HandlerConfigError::NoMatch { .. })
        ));
        assert_eq!(
            parse(Some(
                &json!([{"type": "etcd", "name": "a", "models": ["Host"]}, {"type": "etcd", "name": "a", "models": ["Cluster"]}])
            )),
            Err(HandlerConfigError::DuplicateName("a".into()))
        );
        let two = parse(Some(&json!([{"type": "etcd", "models": ["Host"]}, {"type": "etcd", "models": ["Cluster"]}])))
            .expect("numbered");
        assert_eq!(two[1].name, "commissaire.storage.etcd-1");
        assert_eq!(parse(Some(&json!(3))), Err(HandlerConfigError::NotObjects));
    }
}
