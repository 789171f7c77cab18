use serde_json::json;

use super::*;

#[test]
fn host_defaults_fill_absent_fields() {
    let host = Host::from_json(&json!({"address": "10.0.0.1"}), Unknown::Reject).expect("valid");
    assert_eq!(
        host.to_safe_json(),
        json!({"address":"10.0.0.1","status":"","os":"","cpus":0,"memory":0,"space":0,"last_check":"","source":"","reason":"","ssh_host_key":""})
    );
}

#[test]
fn wrong_type_names_the_field_and_the_types() {
    let err = Host::from_json(&json!({"address": "10.0.0.1", "cpus": "4"}), Unknown::Reject).expect_err("invalid");
    assert_eq!(err.errors, vec![FieldError::new("cpus", "expected a non-negative integer, got a string")]);
    assert_eq!(err.to_string(), "invalid Host: Host.cpus: expected a non-negative integer, got a string");
    let err = Host::from_json(&json!({"address": "10.0.0.1", "memory": true}), Unknown::Reject).expect_err("bool");
    assert_eq!(err.errors[0].field, "memory");
}

#[test]
fn unknown_fields_are_rejected_or_ignored_as_asked() {
    let doc = json!({"address": "10.0.0.1", "clutser": "x", "a_typo": 1});
    let err = Host::from_json(&doc, Unknown::Reject).expect_err("unknown");
    let fields: Vec<&str> = err.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["a_typo", "clutser"]);
    assert!(Host::from_json(&doc, Unknown::Ignore).is_ok());
}

#[test]
fn primary_key_is_required_and_checked() {
    let err = Cluster::from_json(&json!({}), Unknown::Reject).expect_err("no name");
    assert_eq!(err.errors, vec![FieldError::new("name", "is required")]);
    let err = Cluster::from_json(&json!({"name": "a.b"}), Unknown::Reject).expect_err("dot");
    assert_eq!(err.errors[0].field, "name");
    let err = Host::from_json(&json!({"address": "10.0.0.1; rm -rf /"}), Unknown::Reject).expect_err("shell");
    assert_eq!(err.errors[0].field, "address");
    assert!(Host::from_json(&json!({"address": "::1"}), Unknown::Reject).is_ok());
    assert!(Host::from_json(&json!({"address": "node-1.example.com"}), Unknown::Reject).is_ok());
    // Dot segments and empty labels are path tricks, not host names.
    for bad in [".", "..", "...", ".hidden", "a..b", "-oProxyCommand"] {
        assert!(Host::from_json(&json!({"address": bad}), Unknown::Reject).is_err(), "{bad}");
    }
    assert!(Host::from_json(&json!({"address": "node-1.example.com."}), Unknown::Reject).is_ok());
}

#[test]
fn not_an_object_is_refused() {
    let err = Network::from_json(&json!([1, 2]), Unknown::Reject).expect_err("array");
    assert_eq!(err.to_string(), "invalid Network: expected a JSON object, got a list");
}

#[test]
fn cluster_hides_hostset_and_computes_status() {
    let cluster = Cluster::from_json(&json!({"name": "c1", "hostset": ["10.0.0.1"]}), Unknown::Reject).expect("valid");
    assert_eq!(cluster.network, "default");
    assert_eq!(cluster.to_full_json()["hostset"], json!(["10.0.0.1"]));
    assert!(cluster.to_safe_json().get("hostset").is_none());
    assert_eq!(ModelType::Cluster.safe_json(&cluster.to_full_json()), Some(cluster.to_safe_json()));

    assert_eq!(Cluster::status_from(&[]).0, "ok");
    assert_eq!(Cluster::status_from(&["active", "active"]).0, "ok");
    let (status, hosts) = Cluster::status_from(&["active", "failed", "investigating"]);
    assert_eq!(status, "degraded");
    assert_eq!(hosts, ClusterHosts { total: 3, available: 1, unavailable: 2 });
    assert_eq!(Cluster::status_from(&["failed"]).0, "failed");

    let err = Cluster::from_json(&json!({"name": "c1", "hostset": ["a", "a"]}), Unknown::Reject).expect_err("dup");
    assert_eq!(err.errors[0].message, "a is listed twice");
}

#[test]
fn enumerations_are_enforced() {
    let err = Network::from_json(&json!({"name": "n", "type": "flanneld_service"}), Unknown::Reject).expect_err("type");
    assert_eq!(err.errors[0], FieldError::new("type", "must be one of: flannel_etcd, flannel_server"));
    let err =
        Network::from_json(&json!({"name": "n", "type": "flannel_server"}), Unknown::Reject).expect_err("address");
    assert_eq!(err.errors[0].field, "options.address");
    assert!(
        Network::from_json(
            &json!({"name": "n", "type": "flannel_server", "options": {"address": "10.0.0.1:8080"}}),
            Unknown::Reject
        )
        .is_ok()
    );
    let err = Host::from_json(&json!({"address": "h", "status": "happy"}), Unknown::Reject).expect_err("status");
    assert_eq!(err.errors[0].field, "status");
    let err = ContainerManagerConfig::from_json(&json!({"name": "k"}), Unknown::Reject).expect_err("server_url");
    assert_eq!(err.errors[0].field, "options.server_url");
    assert!(ContainerManagerConfig::from_json(&json!({"name": "k", "type": "trivial"}), Unknown::Reject).is_ok());
    let err =
        ClusterRestart::from_json(&json!({"name": "c", "status": "running"}), Unknown::Reject).expect_err("status");
    assert_eq!(err.errors[0].field, "status");
}

#[test]
fn deploy_needs_a_version_and_finished_at_starts_null() {
    let err = ClusterDeploy::from_json(&json!({"name": "c"}), Unknown::Reject).expect_err("version");
    assert_eq!(err.errors[0], FieldError::new("version", "must be a non-empty string"));
    let deploy = ClusterDeploy::from_json(&json!({"name": "c", "version": "7.2.6"}), Unknown::Reject).expect("valid");
    assert_eq!(deploy.to_full_json()["finished_at"], serde_json::Value::Null);
    assert_eq!(deploy.to_full_json()["deployed"], json!([]));
}

#[test]
fn creds_default_user_and_redacted_debug() {
    let creds =
        HostCreds::from_json(&json!({"address": "h", "ssh_priv_key": "c2VjcmV0"}), Unknown::Reject).expect("valid");
    assert_eq!(creds.remote_user, "root");
    assert!(!format!("{creds:?}").contains("c2VjcmV0"));
    let err = HostCreds::from_json(&json!({"address": "h", "remote_user": "root; reboot"}), Unknown::Reject)
        .expect_err("user");
    assert_eq!(err.errors[0].field, "remote_user");
    assert!(ModelType::HostCreds.safe_json(&creds.to_full_json()).is_none());
}

#[test]
fn watcher_record_checks_timestamp() {
    let record = WatcherRecord::from_json(&json!({"address": "h"}), Unknown::Reject).expect("default");
    assert_eq!(record.last_check, "9999-12-31T23:59:59.999999");
    let err =
        WatcherRecord::from_json(&json!({"address": "h", "last_check": "yesterday"}), Unknown::Reject).expect_err("ts");
    assert_eq!(err.errors[0].field, "last_check");
    // Keyed by address, so one record per host.
    assert_eq!(record.primary_key(), Some("h"));
    assert_eq!(ModelType::WatcherRecord.primary_key_field(), "address");
    assert_eq!(ModelType::from_list_name("WatcherRecords"), Some(ModelType::WatcherRecord));
    let err = WatcherRecord::from_json(&json!({"address": "h", "next_check": "soon"}), Unknown::Reject)
        .expect_err("next_check");
    assert_eq!(err.errors[0].field, "next_check");
    let err = WatcherRecord::from_json(&json!({"address": "h", "last_good_status": "failed"}), Unknown::Reject)
        .expect_err("last_good_status");
    assert_eq!(err.errors[0].field, "last_good_status");
}

#[test]
fn model_types_by_name() {
    for t in ModelType::ALL {
        assert_eq!(ModelType::from_name(t.name()), Some(t));
    }
    assert_eq!(ModelType::from_list_name("Hosts"), Some(ModelType::Host));
    assert_eq!(ModelType::from_list_name("ContainerManagerConfigs"), Some(ModelType::ContainerManagerConfig));
    assert_eq!(ModelType::from_name("Nope"), None);
    let (key, full) = ModelType::Network.parse(&json!({"name": "default"}), Unknown::Ignore).expect("parse");
    assert_eq!(key, "default");
    assert_eq!(full, json!({"name": "default", "type": "flannel_etcd", "options": {}}));
}

#[test]
fn host_status_view() {
    let mut host = Host::new("h");
    host.status = "active".into();
    host.last_check = "2017-06-28T14:03:11.123456".into();
    let view = HostStatus::of(&host, Default::default());
    assert_eq!(
        view.to_full_json(),
        json!({"type": "host_only", "host": {"last_check": "2017-06-28T14:03:11.123456", "status": "active"}, "container_manager": {}})
    );
}
