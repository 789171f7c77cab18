//! The storage service end to end over the bus, on both stores: the routes of
//! `storage.*`, events, validation, compare-and-swap and sealed credentials.
//! The bus here is the in-process one; every bus backend is checked by the bus
//! conformance suite.

use std::{sync::Arc, time::Duration};

use commissaire_core::{
    bus::{Bus, BusError, ServeOptions, memory::MemoryBus},
    jsonrpc,
    secrets::SecretsKey,
};
use commissaire_services::{
    storage::{OpenHandler, StorageService, handlers},
    store::{
        Store,
        embedded::EmbeddedStore,
        etcd::{EtcdConfig, EtcdStore},
        namespaced::Namespaced,
    },
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);

struct Fixture {
    bus: Arc<dyn Bus>,
    /// The raw store underneath, to inspect what really got written.
    raw: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn fixture(store: Arc<dyn Store>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = SecretsKey::generate(&dir.path().join("secrets.key")).expect("key");
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let spec = handlers::parse(None).expect("default handlers").remove(0);
    let service = StorageService::new(vec![OpenHandler { spec, store: store.clone() }], secrets, bus.clone());
    let handle = bus.serve("storage", &["storage.*"], Arc::new(service), ServeOptions::default()).await.expect("serve");
    std::mem::forget(handle); // serves for the life of the test
    Fixture { bus, raw: store, _dir: dir }
}

async fn embedded() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path().join("store.redb")).await.expect("open embedded");
    let mut fx = fixture(Arc::new(store)).await;
    // Keep the database directory alive with the fixture.
    let _ = std::mem::replace(&mut fx._dir, dir);
    fx
}

async fn etcd() -> Fixture {
    let url = std::env::var("COMMISSAIRE_ETCD_URL")
        .expect("COMMISSAIRE_ETCD_URL is not set: run `eval \"$(scripts/testbed env)\"` after `scripts/testbed up`");
    let store = EtcdStore::connect(EtcdConfig::new([url])).await.expect("connect etcd");
    // Each test gets its own namespace so tests never see each other's records.
    let namespace = format!("/t-{}", uuid::Uuid::new_v4());
    fixture(Arc::new(Namespaced::new(Arc::new(store), namespace))).await
}

async fn call(fx: &Fixture, method: &str, params: Value) -> Result<Value, BusError> {
    fx.bus.request(&format!("storage.{method}"), params, T).await
}

fn rpc_code(result: Result<Value, BusError>) -> i64 {
    match result {
        Err(BusError::Rpc(err)) => err.code,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded_store { $( #[tokio::test] async fn $name() { super::$name(super::embedded().await).await } )* }
        mod etcd_store { $( #[tokio::test] async fn $name() { super::$name(super::etcd().await).await } )* }
    };
}

on_both_stores!(
    save_get_list_delete_with_events,
    bad_documents_write_nothing,
    revisions_guard_concurrent_updates,
    credentials_are_sealed_and_never_announced,
    list_store_handlers_reports_the_configuration,
    audit_entries_are_stored_filtered_and_announced,
    counts_report_hosts_and_operations_by_status,
);

async fn save_get_list_delete_with_events(fx: Fixture) {
    let mut events = fx.bus.subscribe(&["notify.storage.*.*"]).await.expect("subscribe");

    let saved =
        call(&fx, "save", json!({"model_type_name": "Host", "model_json_data": {"address": "10.2.0.1", "cpus": 2}}))
            .await
            .expect("save");
    assert_eq!(saved["cpus"], 2);
    assert_eq!(saved["status"], "");

    // A JSON string of the document is accepted too, as the original sent it.
    let doc = json!({"name": "c1", "hostset": ["10.2.0.1"]}).to_string();
    call(&fx, "save", json!({"model_type_name": "Cluster", "model_json_data": doc})).await.expect("save cluster");

    // Saving an existing record replaces it.
    call(
        &fx,
        "save",
        json!({"model_type_name": "Host", "model_json_data": {"address": "10.2.0.1", "status": "active"}}),
    )
    .await
    .expect("update");
    let got = call(&fx, "get", json!({"model_type_name": "Host", "model_json_data": {"address": "10.2.0.1"}}))
        .await
        .expect("get");
    assert_eq!(got["status"], "active");
    assert_eq!(got["cpus"], 0, "an update replaces the record, it does not merge old fields");

    let list = call(&fx, "list", json!({"model_type_name": "Clusters"})).await.expect("list");
    assert_eq!(
        list,
        json!([{"name": "c1", "status": "", "network": "default", "hostset": ["10.2.0.1"], "container_manager": ""}])
    );
    let names = call(&fx, "list", json!({"model_type_name": "Hosts", "names_only": true})).await.expect("names");
    assert_eq!(names, json!(["10.2.0.1"]));

    call(&fx, "delete", json!({"model_type_name": "Host", "model_json_data": {"address": "10.2.0.1"}}))
        .await
        .expect("delete");
    let missing =
        call(&fx, "get", json!({"model_type_name": "Host", "model_json_data": {"address": "10.2.0.1"}})).await;
    assert_eq!(rpc_code(missing), jsonrpc::STORAGE_LOOKUP_ERROR);
    let missing =
        call(&fx, "delete", json!({"model_type_name": "Host", "model_json_data": {"address": "10.2.0.1"}})).await;
    assert_eq!(rpc_code(missing), jsonrpc::STORAGE_LOOKUP_ERROR);

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = tokio::time::timeout(T, events.next()).await.expect("event in time").expect("subscription open");
        assert_eq!(event.body["event"], event.routing_key.rsplit('.').next().expect("word"));
        assert_eq!(event.body["class"], event.routing_key.split('.').nth(2).expect("class"));
        assert!(event.body["model"].get("hostset").is_none(), "hidden fields never leave in events");
        seen.push(event.routing_key);
    }
    assert_eq!(
        seen,
        [
            "notify.storage.Host.created",
            "notify.storage.Cluster.created",
            "notify.storage.Host.updated",
            "notify.storage.Host.deleted"
        ]
    );
}

async fn bad_documents_write_nothing(fx: Fixture) {
    // The second document is bad: neither is written.
    let result = call(
        &fx,
        "save",
        json!({"model_type_name": "Host", "model_json_data": [{"address": "10.3.0.1"}, {"address": "10.3.0.2", "cpus": "four"}]}),
    )
    .await;
    match result {
        Err(BusError::Rpc(err)) => {
            assert_eq!(err.code, jsonrpc::INVALID_PARAMS);
            assert!(err.message.contains("Host.cpus"), "{}", err.message);
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
    let list = call(&fx, "list", json!({"model_type_name": "Hosts"})).await.expect("list");
    assert_eq!(list, json!([]));
    assert!(fx.raw.list("").await.expect("raw list").is_empty());

    assert_eq!(
        rpc_code(call(&fx, "save", json!({"model_type_name": "Nope", "model_json_data": {}})).await),
        jsonrpc::INVALID_PARAMS
    );
    assert_eq!(rpc_code(call(&fx, "list", json!({"model_type_name": "Host"})).await), jsonrpc::INVALID_PARAMS);
    assert_eq!(
        rpc_code(
            call(&fx, "get", json!({"model_type_name": "Host", "model_json_data": {"address": "../../etc"}})).await
        ),
        jsonrpc::INVALID_PARAMS
    );
    assert_eq!(rpc_code(call(&fx, "frobnicate", json!({})).await), jsonrpc::METHOD_NOT_FOUND);
}

async fn revisions_guard_concurrent_updates(fx: Fixture) {
    call(
        &fx,
        "save",
        json!({"model_type_name": "Cluster", "model_json_data": {"name": "shared"}, "expected_revision": 0}),
    )
    .await
    .expect("create");
    // Creating again with expected_revision 0 conflicts.
    let again = call(
        &fx,
        "save",
        json!({"model_type_name": "Cluster", "model_json_data": {"name": "shared"}, "expected_revision": 0}),
    )
    .await;
    assert_eq!(rpc_code(again), jsonrpc::CONFLICT);

    // Eight writers add a host each by read-modify-write: none is lost.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let bus = fx.bus.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            loop {
                let got = bus
                    .request("storage.get", json!({"model_type_name": "Cluster", "model_json_data": {"name": "shared"}, "with_revision": true}), T)
                    .await
                    .expect("get");
                let mut cluster = got["model"].clone();
                let revision = got["revision"].as_u64().expect("revision");
                cluster["hostset"].as_array_mut().expect("hostset").push(json!(format!("10.4.0.{i}")));
                let saved = bus
                    .request("storage.save", json!({"model_type_name": "Cluster", "model_json_data": cluster, "expected_revision": revision}), T)
                    .await;
                match saved {
                    Ok(_) => return conflicts,
                    Err(BusError::Rpc(err)) if err.code == jsonrpc::CONFLICT => conflicts += 1,
                    Err(other) => panic!("save failed: {other}"),
                }
            }
        }));
    }
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.expect("task");
    }
    let cluster = call(&fx, "get", json!({"model_type_name": "Cluster", "model_json_data": {"name": "shared"}}))
        .await
        .expect("get");
    let mut hosts: Vec<String> = cluster["hostset"]
        .as_array()
        .expect("hostset")
        .iter()
        .map(|h| h.as_str().unwrap_or_default().to_string())
        .collect();
    hosts.sort();
    assert_eq!(hosts, (0..8).map(|i| format!("10.4.0.{i}")).collect::<Vec<_>>());
    println!("8 concurrent membership updates, {conflicts} conflicts retried, none lost");
}

async fn credentials_are_sealed_and_never_announced(fx: Fixture) {
    use base64::Engine;
    let private_key =
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
    let encoded = base64::engine::general_purpose::STANDARD.encode(private_key);
    let mut events = fx.bus.subscribe(&["#"]).await.expect("subscribe");

    call(&fx, "save", json!({"model_type_name": "HostCreds", "model_json_data": {"address": "10.5.0.1", "ssh_priv_key": encoded, "remote_user": "admin"}}))
        .await
        .expect("save creds");
    let creds = call(&fx, "get", json!({"model_type_name": "HostCreds", "model_json_data": {"address": "10.5.0.1"}}))
        .await
        .expect("get");
    assert_eq!(creds, json!({"address": "10.5.0.1", "ssh_priv_key": encoded, "remote_user": "admin"}));

    // What the store holds shows neither the key nor its base64.
    let dump = fx.raw.list("").await.expect("dump");
    assert_eq!(dump.len(), 1);
    let stored = String::from_utf8_lossy(&dump[0].1.value).to_string();
    assert!(dump[0].0.ends_with("/commissaire/secrets/hosts/10.5.0.1"), "{}", dump[0].0);
    assert!(!stored.contains(&encoded) && !stored.contains("OPENSSH"), "credentials stored in clear: {stored}");

    call(&fx, "delete", json!({"model_type_name": "HostCreds", "model_json_data": {"address": "10.5.0.1"}}))
        .await
        .expect("delete");
    // Only the requests themselves crossed the bus, no storage event.
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(200), events.next()).await {
        assert!(!event.routing_key.starts_with("notify."), "secret announced: {}", event.routing_key);
    }
}

async fn list_store_handlers_reports_the_configuration(fx: Fixture) {
    let handlers = call(&fx, "list_store_handlers", json!({})).await.expect("handlers");
    assert_eq!(handlers[0]["handler_type"], "EtcdStoreHandler");
    assert_eq!(handlers[0]["config"]["name"], "commissaire.storage.etcd");
    let models = handlers[0]["model_types"].as_array().expect("models");
    assert!(models.contains(&json!("Host")) && !models.contains(&json!("HostCreds")));
}

fn audit_entry(time: &str, target: &str, cluster: Option<&str>) -> Value {
    let mut entry = json!({
        "time": time, "identity": "admin", "role": "read-write", "method": "PUT", "route": "cluster",
        "target": target, "status": 201, "client": "127.0.0.1",
    });
    if let Some(c) = cluster {
        entry["cluster"] = json!(c);
    }
    entry
}

async fn audit_entries_are_stored_filtered_and_announced(fx: Fixture) {
    let mut events = fx.bus.subscribe(&["notify.audit.entry"]).await.expect("subscribe");
    let times = ["2026-01-01T00:00:00.000000", "2026-01-02T00:00:00.000000", "2026-01-03T00:00:00.000000"];
    let targets = ["cluster/prod", "cluster/prod/hosts/10.0.0.1", "host/10.0.0.2"];
    for (time, target) in times.iter().zip(targets) {
        let cluster = target.strip_prefix("cluster/").map(|rest| rest.split('/').next().unwrap_or_default());
        call(&fx, "audit_append", json!({"entry": audit_entry(time, target, cluster)})).await.expect("append");
    }
    // Each entry is announced, with the cluster when it has one.
    let first = tokio::time::timeout(T, events.next()).await.expect("event in time").expect("event");
    assert_eq!(first.body["target"], "cluster/prod");
    assert_eq!(first.body["cluster"], "prod");

    let all = call(&fx, "audit_list", json!({})).await.expect("list");
    let listed: Vec<&str> = all.as_array().expect("array").iter().map(|e| e["target"].as_str().unwrap_or("")).collect();
    assert_eq!(listed, targets, "oldest first");

    let prod = call(&fx, "audit_list", json!({"target": "cluster/prod"})).await.expect("list");
    assert_eq!(prod.as_array().map(Vec::len), Some(2), "the target and what is under it: {prod}");
    let none = call(&fx, "audit_list", json!({"target": "cluster/pro"})).await.expect("list");
    assert_eq!(none.as_array().map(Vec::len), Some(0), "a prefix of a name is not the name");

    let nanos =
        |t: &str| commissaire_core::timestamp::parse(t).map(|at| at.unix_timestamp_nanos() as u64).expect("timestamp");
    let middle =
        call(&fx, "audit_list", json!({"since": nanos(times[1]), "until": nanos(times[1])})).await.expect("list");
    assert_eq!(middle.as_array().map(Vec::len), Some(1));
    assert_eq!(middle[0]["target"], targets[1]);
    let newest = call(&fx, "audit_list", json!({"limit": 1})).await.expect("list");
    assert_eq!(newest[0]["target"], targets[2], "a limit keeps the newest");

    // A malformed entry is refused and stores nothing.
    let mut bad = audit_entry(times[0], "x", None);
    bad["status"] = json!("ok");
    assert_eq!(rpc_code(call(&fx, "audit_append", json!({"entry": bad})).await), jsonrpc::INVALID_PARAMS);
    let after = call(&fx, "audit_list", json!({})).await.expect("list");
    assert_eq!(after.as_array().map(Vec::len), Some(3));
}

async fn counts_report_hosts_and_operations_by_status(fx: Fixture) {
    for (address, status) in [("10.9.0.1", "active"), ("10.9.0.2", "active"), ("10.9.0.3", "failed")] {
        call(
            &fx,
            "save",
            json!({"model_type_name": "Host", "model_json_data": {"address": address, "status": status}}),
        )
        .await
        .expect("save host");
    }
    call(
        &fx,
        "save",
        json!({"model_type_name": "ClusterRestart", "model_json_data": {"name": "c9", "status": "in_process"}}),
    )
    .await
    .expect("save restart");
    let counts = call(&fx, "counts", json!({})).await.expect("counts");
    assert_eq!(counts["hosts"]["active"], 2, "{counts}");
    assert_eq!(counts["hosts"]["failed"], 1, "{counts}");
    assert_eq!(counts["operations"]["restart"]["in_process"], 1, "{counts}");
    assert_eq!(counts["operations"]["upgrade"], json!({}), "{counts}");
}

#[tokio::test]
async fn the_audit_log_keeps_its_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(dir.path().join("store.redb")).await.expect("open embedded"));
    let secrets = SecretsKey::generate(&dir.path().join("secrets.key")).expect("key");
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let spec = handlers::parse(None).expect("default handlers").remove(0);
    let service = StorageService::new(vec![OpenHandler { spec, store: store.clone() }], secrets, bus.clone())
        .with_audit_retention(5);
    let _handle =
        bus.serve("storage", &["storage.*"], Arc::new(service), ServeOptions::default()).await.expect("serve");
    let every = commissaire_services::storage::audit::TRIM_EVERY as usize;
    let total = 2 * every + 1;
    for i in 0..total {
        let time = format!("2026-01-01T00:{:02}:{:02}.000000", i / 60, i % 60);
        bus.request("storage.audit_append", json!({"entry": audit_entry(&time, &format!("network/n{i}"), None)}), T)
            .await
            .expect("append");
    }
    let kept = store.list(commissaire_services::storage::audit::PREFIX).await.expect("list").len();
    assert!(kept >= 5 && kept <= 5 + every, "kept {kept} of {total} with retention 5");
    // The newest are the ones kept.
    let newest = bus.request("storage.audit_list", json!({"limit": 1}), T).await.expect("list");
    assert_eq!(newest[0]["target"], format!("network/n{}", total - 1));
    println!("audit retention 5: {kept} entries kept after {total} appends");
}
