//! The route table of `/api/v0`: a pure function from a path to a [`Route`], and
//! the verbs each route allows. Matching follows the original: collection and
//! item routes take an optional trailing slash, the `creds` and operation routes
//! do not; names are `[a-zA-Z0-9_-]+` and addresses `[a-zA-Z0-9_.-]+`. Anything
//! else is no route (404 once authenticated).

use hyper::Method;

/// A cluster-wide operation's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Deploy,
    Upgrade,
    Restart,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Deploy => "deploy",
            Operation::Upgrade => "upgrade",
            Operation::Restart => "restart",
        }
    }
}

/// What an operator asks of a running operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Abort,
    /// Start an ended operation again over its failed hosts.
    RetryFailed,
}

impl Control {
    pub fn as_str(self) -> &'static str {
        match self {
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Abort => "abort",
            Control::RetryFailed => "retry-failed",
        }
    }
}

/// A matched route with its path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/api/v0/hosts`
    Hosts,
    /// `/api/v0/host` (PUT without an address: self-registration)
    HostSelf,
    /// `/api/v0/host/{address}`
    Host { address: String },
    /// `/api/v0/host/{address}/creds`
    HostCreds { address: String },
    /// `/api/v0/host/{address}/status`
    HostStatus { address: String },
    /// `/api/v0/host/{address}/hostkey`: the pinned SSH host key; DELETE
    /// forgets it (the operator trusts a new key) and investigates again.
    HostKey { address: String },
    /// `/api/v0/clusters` (and the documented alias `/api/v0/cluster/`)
    Clusters,
    /// `/api/v0/cluster/{name}`
    Cluster { name: String },
    /// `/api/v0/cluster/{name}/hosts`
    ClusterHosts { name: String },
    /// `/api/v0/cluster/{name}/hosts/{host}`
    ClusterHost { name: String, host: String },
    /// `/api/v0/cluster/{name}/deploy|upgrade|restart`
    ClusterOperation { name: String, operation: Operation },
    /// `/api/v0/cluster/{name}/deploy|upgrade|restart/pause|resume|abort`
    ClusterOperationControl { name: String, operation: Operation, control: Control },
    /// `/api/v0/networks`
    Networks,
    /// `/api/v0/network/{name}`
    Network { name: String },
    /// `/api/v0/containermanagers`
    ContainerManagers,
    /// `/api/v0/containermanager/{name}`
    ContainerManager { name: String },
    /// `/api/v0/events`: storage and operation events as server-sent events
    Events,
    /// `/api/v0/audit` (read-write identities only)
    Audit,
}

impl Route {
    /// The verbs this route answers (HEAD is not served).
    pub fn allowed(&self) -> &'static [Method] {
        const GET: &[Method] = &[Method::GET];
        const GET_PUT: &[Method] = &[Method::GET, Method::PUT];
        const GET_PUT_DELETE: &[Method] = &[Method::GET, Method::PUT, Method::DELETE];
        const PUT: &[Method] = &[Method::PUT];
        const GET_DELETE: &[Method] = &[Method::GET, Method::DELETE];
        match self {
            Route::Hosts
            | Route::Clusters
            | Route::Networks
            | Route::ContainerManagers
            | Route::Events
            | Route::Audit => GET,
            Route::HostSelf | Route::ClusterOperationControl { .. } => PUT,
            Route::HostCreds { .. } | Route::HostStatus { .. } => GET,
            Route::HostKey { .. } => GET_DELETE,
            Route::ClusterHosts { .. } | Route::ClusterOperation { .. } => GET_PUT,
            Route::Host { .. }
            | Route::Cluster { .. }
            | Route::ClusterHost { .. }
            | Route::Network { .. }
            | Route::ContainerManager { .. } => GET_PUT_DELETE,
        }
    }

    /// A stable name for the route (metrics labels, logs): never a parameter.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Hosts => "hosts",
            Route::HostSelf => "host_self",
            Route::Host { .. } => "host",
            Route::HostCreds { .. } => "host_creds",
            Route::HostStatus { .. } => "host_status",
            Route::HostKey { .. } => "host_key",
            Route::Clusters => "clusters",
            Route::Cluster { .. } => "cluster",
            Route::ClusterHosts { .. } => "cluster_hosts",
            Route::ClusterHost { .. } => "cluster_host",
            Route::ClusterOperation { operation: Operation::Deploy, .. } => "cluster_deploy",
            Route::ClusterOperation { operation: Operation::Upgrade, .. } => "cluster_upgrade",
            Route::ClusterOperation { operation: Operation::Restart, .. } => "cluster_restart",
            Route::ClusterOperationControl { control: Control::Pause, .. } => "cluster_operation_pause",
            Route::ClusterOperationControl { control: Control::Resume, .. } => "cluster_operation_resume",
            Route::ClusterOperationControl { control: Control::Abort, .. } => "cluster_operation_abort",
            Route::ClusterOperationControl { control: Control::RetryFailed, .. } => "cluster_operation_retry_failed",
            Route::Networks => "networks",
            Route::Network { .. } => "network",
            Route::ContainerManagers => "container_managers",
            Route::ContainerManager { .. } => "container_manager",
            Route::Events => "events",
            Route::Audit => "audit",
        }
    }

    /// Whether only read-write identities may use the route, even to read.
    pub fn needs_read_write(&self) -> bool {
        matches!(self, Route::Audit)
    }

    /// What a request on this route acts on, for the audit log
    /// (`host/10.0.0.1`, `cluster/prod/hosts/10.0.0.1`, `cluster/prod/restart`…);
    /// `client` is the address a self-registration registers.
    pub fn target(&self, client: &str) -> String {
        match self {
            Route::Hosts => "hosts".into(),
            Route::HostSelf => format!("host/{client}"),
            Route::Host { address } => format!("host/{address}"),
            Route::HostCreds { address } => format!("host/{address}/creds"),
            Route::HostStatus { address } => format!("host/{address}/status"),
            Route::HostKey { address } => format!("host/{address}/hostkey"),
            Route::Clusters => "clusters".into(),
            Route::Cluster { name } => format!("cluster/{name}"),
            Route::ClusterHosts { name } => format!("cluster/{name}/hosts"),
            Route::ClusterHost { name, host } => format!("cluster/{name}/hosts/{host}"),
            Route::ClusterOperation { name, operation } => format!("cluster/{name}/{}", operation.as_str()),
            Route::ClusterOperationControl { name, operation, control } => {
                format!("cluster/{name}/{}/{}", operation.as_str(), control.as_str())
            }
            Route::Networks => "networks".into(),
            Route::Network { name } => format!("network/{name}"),
            Route::ContainerManagers => "containermanagers".into(),
            Route::ContainerManager { name } => format!("containermanager/{name}"),
            Route::Audit => "audit".into(),
            Route::Events => "events".into(),
        }
    }

    /// The cluster a route concerns, if any.
    pub fn cluster(&self) -> Option<&str> {
        match self {
            Route::Cluster { name }
            | Route::ClusterHosts { name }
            | Route::ClusterHost { name, .. }
            | Route::ClusterOperation { name, .. }
            | Route::ClusterOperationControl { name, .. } => Some(name),
            _ => None,
        }
    }

    /// Whether the route hands out secrets (read-only identities never see them).
    pub fn is_secret(&self) -> bool {
        matches!(self, Route::HostCreds { .. })
    }
}

fn operation(s: &str) -> Option<Operation> {
    match s {
        "deploy" => Some(Operation::Deploy),
        "upgrade" => Some(Operation::Upgrade),
        "restart" => Some(Operation::Restart),
        _ => None,
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The original's pattern, and a valid host address (no `..`, `.` or `-x`
/// segment reaches a handler).
fn is_address(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && commissaire_core::model::is_valid_address(s)
}

/// Matches a request path (without the query string).
pub fn resolve(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/api/v0/")?;
    let trailing = rest.ends_with('/');
    let trimmed = rest.strip_suffix('/').unwrap_or(rest);
    let parts: Vec<&str> = trimmed.split('/').collect();
    // Routes that refuse a trailing slash.
    let strict = |route: Route| if trailing { None } else { Some(route) };
    let name = |s: &str| is_name(s).then(|| s.to_string());
    let address = |s: &str| is_address(s).then(|| s.to_string());
    match parts.as_slice() {
        ["hosts"] => Some(Route::Hosts),
        ["events"] => strict(Route::Events),
        ["host"] => Some(Route::HostSelf),
        ["host", a] => Some(Route::Host { address: address(a)? }),
        ["host", a, "creds"] => strict(Route::HostCreds { address: address(a)? }),
        ["host", a, "status"] => Some(Route::HostStatus { address: address(a)? }),
        ["host", a, "hostkey"] => strict(Route::HostKey { address: address(a)? }),
        ["clusters"] => Some(Route::Clusters),
        // `/api/v0/cluster/` was documented as the list.
        ["cluster"] if trailing => Some(Route::Clusters),
        ["cluster", n] => Some(Route::Cluster { name: name(n)? }),
        ["cluster", n, "hosts"] => Some(Route::ClusterHosts { name: name(n)? }),
        ["cluster", n, "hosts", h] => Some(Route::ClusterHost { name: name(n)?, host: address(h)? }),
        ["cluster", n, op] => strict(Route::ClusterOperation { name: name(n)?, operation: operation(op)? }),
        ["cluster", n, op, c] => {
            let control = match *c {
                "pause" => Control::Pause,
                "resume" => Control::Resume,
                "abort" => Control::Abort,
                "retry-failed" => Control::RetryFailed,
                _ => return None,
            };
            strict(Route::ClusterOperationControl { name: name(n)?, operation: operation(op)?, control })
        }
        ["networks"] => Some(Route::Networks),
        ["network", n] => Some(Route::Network { name: name(n)? }),
        ["containermanagers"] => Some(Route::ContainerManagers),
        ["containermanager", n] => Some(Route::ContainerManager { name: name(n)? }),
        ["audit"] => Some(Route::Audit),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collections_and_items_take_an_optional_slash() {
        assert_eq!(resolve("/api/v0/hosts"), Some(Route::Hosts));
        assert_eq!(resolve("/api/v0/hosts/"), Some(Route::Hosts));
        assert_eq!(resolve("/api/v0/host/10.0.0.1/"), Some(Route::Host { address: "10.0.0.1".into() }));
        assert_eq!(resolve("/api/v0/cluster/"), Some(Route::Clusters));
        assert_eq!(resolve("/api/v0/host"), Some(Route::HostSelf));
        assert_eq!(resolve("/api/v0/host/"), Some(Route::HostSelf));
    }

    #[test]
    fn creds_and_operations_refuse_a_trailing_slash() {
        assert_eq!(resolve("/api/v0/host/h1/creds"), Some(Route::HostCreds { address: "h1".into() }));
        assert_eq!(resolve("/api/v0/host/h1/creds/"), None);
        assert_eq!(
            resolve("/api/v0/cluster/c1/restart"),
            Some(Route::ClusterOperation { name: "c1".into(), operation: Operation::Restart })
        );
        assert_eq!(resolve("/api/v0/cluster/c1/restart/"), None);
        assert_eq!(resolve("/api/v0/cluster/c1/reboot"), None);
    }

    #[test]
    fn parameters_follow_the_patterns() {
        assert_eq!(resolve("/api/v0/cluster/a.b"), None, "no dots in names");
        assert_eq!(resolve("/api/v0/host/a%20b"), None);
        assert_eq!(resolve("/api/v0/host/a;b"), None);
        assert_eq!(resolve("/api/v0/host/"), Some(Route::HostSelf));
        assert_eq!(resolve("/api/v0/cluster//hosts"), None);
        assert_eq!(resolve(&format!("/api/v0/cluster/{}", "x".repeat(300))), None);
        assert_eq!(
            resolve("/api/v0/cluster/c1/hosts/10.0.0.1"),
            Some(Route::ClusterHost { name: "c1".into(), host: "10.0.0.1".into() })
        );
        assert_eq!(resolve("/api/v0/host/.."), None);
        assert_eq!(resolve("/api/v0/host/./status"), None);
        assert_eq!(resolve("/api/v0/cluster/c1/hosts/a..b"), None);
        assert_eq!(resolve("/api/v0/host/-oProxyCommand"), None);
        assert_eq!(resolve("/api/v1/hosts"), None);
        assert_eq!(resolve("/api/v0/"), None);
    }

    #[test]
    fn verbs_per_route() {
        assert_eq!(Route::Hosts.allowed(), &[Method::GET]);
        assert_eq!(Route::HostSelf.allowed(), &[Method::PUT]);
        assert!(Route::Cluster { name: "c".into() }.allowed().contains(&Method::DELETE));
        assert!(!Route::ClusterHosts { name: "c".into() }.allowed().contains(&Method::DELETE));
        assert!(Route::HostCreds { address: "h".into() }.is_secret());
    }
}
