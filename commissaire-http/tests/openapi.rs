//! docs/openapi.json and the router describe the same API: every path of the
//! document resolves to a route allowing exactly the documented verbs, every
//! kind of route is documented, and the server serves that very document.

use std::collections::{BTreeMap, BTreeSet};

use commissaire_http::{
    router::{self, Control, Operation, Route},
    server::OPENAPI_DOCUMENT,
};
use serde_json::Value;

/// Paths the document describes outside the router (probes, metrics, itself).
const OUTSIDE_THE_ROUTER: &[&str] = &["/healthz", "/readyz", "/metrics", "/api/v0/openapi.json"];

/// Every kind of route: exhaustive, so a new `Route` variant does not compile
/// here until it is thought about (and then documented, or this test fails).
fn kind(route: &Route) -> &'static str {
    match route {
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
        Route::ClusterOperationControl { operation, control, .. } => match (operation, control) {
            (Operation::Deploy, Control::Pause) => "deploy_pause",
            (Operation::Deploy, Control::Resume) => "deploy_resume",
            (Operation::Deploy, Control::Abort) => "deploy_abort",
            (Operation::Upgrade, Control::Pause) => "upgrade_pause",
            (Operation::Upgrade, Control::Resume) => "upgrade_resume",
            (Operation::Upgrade, Control::Abort) => "upgrade_abort",
            (Operation::Restart, Control::Pause) => "restart_pause",
            (Operation::Restart, Control::Resume) => "restart_resume",
            (Operation::Restart, Control::Abort) => "restart_abort",
            (Operation::Deploy, Control::RetryFailed) => "deploy_retry_failed",
            (Operation::Upgrade, Control::RetryFailed) => "upgrade_retry_failed",
            (Operation::Restart, Control::RetryFailed) => "restart_retry_failed",
        },
        Route::Networks => "networks",
        Route::Network { .. } => "network",
        Route::ContainerManagers => "container_managers",
        Route::ContainerManager { .. } => "container_manager",
        Route::Audit => "audit",
        Route::Events => "events",
    }
}

const ALL_KINDS: &[&str] = &[
    "hosts",
    "host_self",
    "host",
    "host_creds",
    "host_status",
    "host_key",
    "clusters",
    "cluster",
    "cluster_hosts",
    "cluster_host",
    "cluster_deploy",
    "cluster_upgrade",
    "cluster_restart",
    "deploy_pause",
    "deploy_resume",
    "deploy_abort",
    "upgrade_pause",
    "upgrade_resume",
    "upgrade_abort",
    "restart_pause",
    "restart_resume",
    "restart_abort",
    "deploy_retry_failed",
    "upgrade_retry_failed",
    "restart_retry_failed",
    "networks",
    "network",
    "container_managers",
    "container_manager",
    "audit",
    "events",
];

fn document() -> Value {
    serde_json::from_str(OPENAPI_DOCUMENT).expect("docs/openapi.json is JSON")
}

#[test]
fn the_document_and_the_router_agree() {
    let doc = document();
    assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.")), Some(true));
    let paths = doc["paths"].as_object().expect("paths");
    let mut covered: BTreeMap<&'static str, String> = BTreeMap::new();
    for (template, item) in paths {
        if OUTSIDE_THE_ROUTER.contains(&template.as_str()) {
            continue;
        }
        let concrete = template.replace("{name}", "c1").replace("{address}", "10.0.0.1").replace("{host}", "10.0.0.2");
        let route = router::resolve(&concrete).unwrap_or_else(|| panic!("{template} is documented but no route"));
        let documented: BTreeSet<String> = item
            .as_object()
            .expect("path item")
            .keys()
            .filter(|k| k.as_str() != "parameters")
            .map(|k| k.to_uppercase())
            .collect();
        let allowed: BTreeSet<String> = route.allowed().iter().map(|m| m.as_str().to_string()).collect();
        assert_eq!(documented, allowed, "verbs of {template}");
        if let Some(previous) = covered.insert(kind(&route), template.clone()) {
            panic!("{template} and {previous} document the same route");
        }
    }
    let documented: BTreeSet<&str> = covered.keys().copied().collect();
    let all: BTreeSet<&str> = ALL_KINDS.iter().copied().collect();
    assert_eq!(documented, all, "routes the document misses (or that do not exist)");
    // Each referenced schema exists.
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for reference in OPENAPI_DOCUMENT.match_indices("#/components/schemas/") {
        let rest = &OPENAPI_DOCUMENT[reference.0 + reference.1.len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        assert!(schemas.contains_key(&name), "schema {name} is referenced but not defined");
    }
}
