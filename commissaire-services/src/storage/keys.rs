//! Where each model lives in a store: the etcd key layout under `/commissaire/`,
//! kept so operators can read their data with `etcdctl`.

use commissaire_core::model::ModelType;

/// The root of every key.
pub const ROOT: &str = "/commissaire/";

/// The key of the record of type `t` with primary key `key`.
pub fn record_key(t: ModelType, key: &str) -> String {
    match t {
        ModelType::Host => format!("{ROOT}hosts/{key}"),
        // Sealed; a separate tree so a listing of hosts never meets a secret.
        ModelType::HostCreds => format!("{}{key}", host_creds_prefix()),
        ModelType::Cluster => format!("{ROOT}clusters/{key}"),
        ModelType::ClusterDeploy => format!("{ROOT}cluster/{key}/deploy"),
        ModelType::ClusterRestart => format!("{ROOT}cluster/{key}/restart"),
        ModelType::ClusterUpgrade => format!("{ROOT}cluster/{key}/upgrade"),
        ModelType::Network => format!("{ROOT}networks/{key}"),
        ModelType::ContainerManagerConfig => format!("{ROOT}container_managers/{key}"),
        ModelType::WatcherRecord => format!("{ROOT}watcher/{key}"),
    }
}

/// Where every host's sealed credentials live (not listable through
/// `storage.list`; only key rotation walks it).
pub fn host_creds_prefix() -> String {
    format!("{ROOT}secrets/hosts/")
}

/// The prefix under which every record of a listable type lives.
pub fn list_prefix(t: ModelType) -> Option<String> {
    match t {
        ModelType::Host => Some(format!("{ROOT}hosts/")),
        ModelType::Cluster => Some(format!("{ROOT}clusters/")),
        ModelType::Network => Some(format!("{ROOT}networks/")),
        ModelType::ContainerManagerConfig => Some(format!("{ROOT}container_managers/")),
        ModelType::WatcherRecord => Some(format!("{ROOT}watcher/")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_documented_keys() {
        assert_eq!(record_key(ModelType::Host, "10.0.0.1"), "/commissaire/hosts/10.0.0.1");
        assert_eq!(record_key(ModelType::ClusterRestart, "prod"), "/commissaire/cluster/prod/restart");
        assert_eq!(record_key(ModelType::ContainerManagerConfig, "k8s"), "/commissaire/container_managers/k8s");
        assert_eq!(list_prefix(ModelType::Network).as_deref(), Some("/commissaire/networks/"));
        assert_eq!(record_key(ModelType::WatcherRecord, "10.0.0.1"), "/commissaire/watcher/10.0.0.1");
        // Every record of a listable type is under its list prefix and nothing else is.
        for t in ModelType::ALL {
            for other in ModelType::ALL {
                if let Some(prefix) = list_prefix(t) {
                    assert_eq!(record_key(other, "x").starts_with(&prefix), t == other, "{t:?} vs {other:?}");
                }
            }
        }
    }
}
