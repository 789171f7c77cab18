//! The container manager service with `kubernetes` managers: the real `kube`
//! client against the fake API server of `commissaire-fakekube`, over the
//! in-process bus with the real storage service on an embedded store. Also the
//! node steps of rolling operations (`clusterexec::nodes`) against the same.

use std::{sync::Arc, time::Duration};

use commissaire_core::{
    bus::{Bus, BusError, ServeOptions, memory::MemoryBus},
    jsonrpc::CONTAINER_MANAGER_ERROR,
    model::{Cluster, ClusterRestart, ContainerManagerConfig},
    secrets::SecretsKey,
    storage_client::StorageClient,
};
use commissaire_fakekube::{EvictionBlock, FakeKube};
use commissaire_services::{
    clusterexec::{nodes, service::OpKind},
    containermgr::{self, ContainerManagerService},
    storage::{self, StorageService},
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);
const TOKEN: &str = "manager-token-9f1c";

struct Fixture {
    bus: Arc<dyn Bus>,
    storage: StorageClient,
    kube: FakeKube,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let specs = storage::handlers::parse(Some(&json!([{"type": "embedded", "path": dir.path().join("store.redb")}])))
        .expect("handlers");
    let handlers = storage::open_handlers(specs).await.expect("open");
    let key = SecretsKey::generate(&dir.path().join("secrets.key")).expect("key");
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let service = Arc::new(StorageService::new(handlers, key, bus.clone()));
    std::mem::forget(
        bus.serve(storage::QUEUE, storage::PATTERNS, service, ServeOptions::default()).await.expect("serve"),
    );
    let containermgr = Arc::new(ContainerManagerService::new(bus.clone()));
    containermgr.watch().await.expect("watch");
    std::mem::forget(
        bus.serve(containermgr::QUEUE, containermgr::PATTERNS, containermgr, ServeOptions::default())
            .await
            .expect("serve"),
    );
    let kube = FakeKube::start().await.expect("fake kube");
    kube.require_token(Some(TOKEN));
    let storage = StorageClient::new(bus.clone());
    Fixture { bus, storage, kube, _dir: dir }
}

impl Fixture {
    async fn manager(&self, name: &str, url: &str) {
        let config = ContainerManagerConfig {
            name: name.into(),
            kind: "kubernetes".into(),
            options: json!({"server_url": url, "token": TOKEN}).as_object().cloned().expect("object"),
        };
        self.storage.save(&config).await.expect("save manager");
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value, BusError> {
        self.bus.request(&format!("container.{method}"), params, T).await
    }

    async fn ok(&self, method: &str, params: Value) -> Value {
        match self.call(method, params.clone()).await {
            Ok(v) => v,
            Err(e) => panic!("container.{method} {params}: {e}"),
        }
    }

    async fn manager_error(&self, method: &str, params: Value) -> String {
        match self.call(method, params).await {
            Err(BusError::Rpc(e)) if e.code == CONTAINER_MANAGER_ERROR => e.message,
            other => panic!("container.{method}: expected a container manager error, got {other:?}"),
        }
    }
}

/// Polls `check` until it holds or the deadline passes.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + T;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn nodes_are_registered_read_cordoned_and_removed_through_the_api() {
    let f = fixture().await;
    f.manager("k8s", &f.kube.url()).await;
    let node = "192.0.2.11";

    assert_eq!(f.ok("register_node", json!(["k8s", node])).await, Value::Null);
    assert!(f.kube.node(node).is_some());
    // registering again (a kubelet may have done it) is fine
    f.ok("register_node", json!(["k8s", node])).await;
    f.ok("node_registered", json!(["k8s", node])).await;
    let status = f.ok("get_node_status", json!(["k8s", node])).await;
    assert_eq!(status["metadata"]["name"], json!(node));
    assert_eq!(status["kind"], json!("Node"));
    assert_eq!(f.ok("node_ready", json!(["k8s", node])).await, json!(true));
    f.kube.set_node_ready(node, false);
    assert_eq!(f.ok("node_ready", json!(["k8s", node])).await, json!(false));

    assert_eq!(f.ok("cordon", json!(["k8s", node])).await, json!(false), "was schedulable");
    assert!(f.kube.is_cordoned(node));
    assert_eq!(f.ok("cordon", json!(["k8s", node])).await, json!(true), "already cordoned");
    f.ok("uncordon", json!(["k8s", node])).await;
    assert!(!f.kube.is_cordoned(node));

    f.ok("remove_node", json!(["k8s", node])).await;
    assert!(f.kube.node(node).is_none());
    f.ok("remove_node", json!(["k8s", node])).await; // idempotent
    let message = f.manager_error("node_registered", json!(["k8s", node])).await;
    assert!(message.contains("not registered") && message.contains(node), "{message}");
    let message = f.manager_error("get_node_status", json!(["k8s", node])).await;
    assert!(message.contains(node), "{message}");

    // every request carried the manager's token; the cordon was a patch
    let requests = f.kube.requests();
    assert!(requests.iter().all(|r| r.authorized));
    let patch = requests.iter().find(|r| r.verb == "PATCH").expect("a patch");
    assert_eq!(patch.body, json!({"spec": {"unschedulable": true}}));
    assert!(patch.content_type.starts_with("application/strategic-merge-patch+json"), "{}", patch.content_type);
}

#[tokio::test]
async fn api_failures_are_container_manager_errors_that_say_what_happened() {
    let f = fixture().await;
    f.manager("k8s", &f.kube.url()).await;
    // wrong token: the API answers 401
    f.kube.require_token(Some("another"));
    let message = f.manager_error("register_node", json!(["k8s", "192.0.2.12"])).await;
    assert!(message.contains("401") && message.contains("k8s") && message.contains("192.0.2.12"), "{message}");
    assert!(!message.contains(TOKEN), "the token must never show: {message}");
    // nothing listening
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    f.manager("gone", &format!("http://{closed}")).await;
    let message = f.manager_error("register_node", json!(["gone", "192.0.2.12"])).await;
    assert!(message.contains("cannot talk to the API"), "{message}");
    // unknown manager, bad params
    let message = f.manager_error("register_node", json!(["nope", "192.0.2.12"])).await;
    assert!(message.contains("nope") && message.contains("does not exist"), "{message}");
    match f.call("drain", json!(["k8s", "192.0.2.12", {"policy": "later"}])).await {
        Err(BusError::Rpc(e)) => assert!(e.message.contains("policy"), "{}", e.message),
        other => panic!("expected invalid params, got {other:?}"),
    }
}

#[tokio::test]
async fn managers_follow_their_records_in_storage() {
    let f = fixture().await;
    let second = FakeKube::start().await.expect("second fake");
    second.require_token(Some(TOKEN));
    f.manager("k8s", &f.kube.url()).await;
    f.ok("register_node", json!(["k8s", "192.0.2.21"])).await;
    assert!(f.kube.node("192.0.2.21").is_some());
    // the record now points at another API server: the event reloads it
    f.manager("k8s", &second.url()).await;
    eventually("the manager to follow its record", || async {
        let _ = f.call("register_node", json!(["k8s", "192.0.2.22"])).await;
        second.node("192.0.2.22").is_some()
    })
    .await;
    // deleted: unknown again
    f.storage.delete::<ContainerManagerConfig>("k8s").await.expect("delete");
    eventually("the manager to be forgotten", || async {
        matches!(f.call("register_node", json!(["k8s", "192.0.2.23"])).await,
            Err(BusError::Rpc(e)) if e.code == CONTAINER_MANAGER_ERROR && e.message.contains("does not exist"))
    })
    .await;
}

#[tokio::test]
async fn managers_in_storage_before_start_up_are_loaded() {
    let f = fixture().await;
    f.manager("early", &f.kube.url()).await;
    // a second instance started after the record was saved knows it at once
    let late = Arc::new(ContainerManagerService::new(f.bus.clone()));
    assert_eq!(late.load_all().await.expect("load"), 1);
    let manager = late.manager("early").await.expect("known");
    assert!(matches!(manager, containermgr::Manager::Kube(_)));
}

#[tokio::test]
async fn remove_all_nodes_removes_only_the_clusters_nodes() {
    let f = fixture().await;
    f.manager("k8s", &f.kube.url()).await;
    let mut cluster = Cluster::new("c1");
    cluster.container_manager = "k8s".into();
    cluster.hostset = vec!["192.0.2.31".into(), "192.0.2.32".into()];
    f.storage.save(&cluster).await.expect("cluster");
    for node in ["192.0.2.31", "192.0.2.32", "192.0.2.99"] {
        f.ok("register_node", json!(["k8s", node])).await;
    }
    f.ok("remove_all_nodes", json!(["k8s", "c1"])).await;
    assert_eq!(f.kube.node_names(), vec!["192.0.2.99".to_string()]);
    // the original's form would remove every node: refused
    match f.call("remove_all_nodes", json!(["k8s"])).await {
        Err(BusError::Rpc(e)) => assert!(e.message.contains("cluster"), "{}", e.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(f.kube.node_names().len(), 1);
}

#[tokio::test]
async fn drains_evict_and_honour_disruption_budgets() {
    let f = fixture().await;
    f.manager("k8s", &f.kube.url()).await;
    let node = "192.0.2.41";
    f.kube.add_node(node);
    f.kube.add_pod("default", "web-1", node);
    f.kube.add_pod("default", "db-1", node);
    f.kube.add_pod("default", "elsewhere", "192.0.2.42");
    // blocked twice, then the budget allows it
    f.kube.block_eviction("default", "db-1", EvictionBlock::Times(2));
    let report = f.ok("drain", json!(["k8s", node, {"retry_seconds": 0.05, "timeout_seconds": 10}])).await;
    assert_eq!(report["blocked_attempts"], json!(2));
    let mut evicted: Vec<String> = serde_json::from_value(report["evicted"].clone()).expect("list");
    evicted.sort();
    assert_eq!(evicted, vec!["default/db-1", "default/web-1"]);
    assert!(f.kube.pods_on(node).is_empty());
    assert_eq!(f.kube.pods_on("192.0.2.42"), vec!["default/elsewhere"]);
    let evictions = f.kube.request_lines().into_iter().filter(|l| l.ends_with("/eviction")).count();
    assert_eq!(evictions, 4, "two evictions plus two retries");
    // the pod list asked only for this node's pods
    let list = f.kube.requests().into_iter().find(|r| r.path == "/api/v1/pods").expect("pod list");
    assert!(list.query.contains("fieldSelector=spec.nodeName"), "{}", list.query);

    // a budget that never allows it: policy fail, skip, force
    f.kube.add_pod("default", "stuck", node);
    f.kube.block_eviction("default", "stuck", EvictionBlock::Always);
    let quick = |policy: &str| json!(["k8s", node, {"retry_seconds": 0.05, "timeout_seconds": 0.2, "policy": policy}]);
    let message = f.manager_error("drain", quick("fail")).await;
    assert!(message.contains("default/stuck") && message.contains("disruption budget"), "{message}");
    assert_eq!(f.kube.pods_on(node), vec!["default/stuck"]);
    let report = f.ok("drain", quick("skip")).await;
    assert_eq!(report["skipped"], json!(["default/stuck"]));
    assert_eq!(f.kube.pods_on(node), vec!["default/stuck"]);
    let report = f.ok("drain", quick("force")).await;
    assert_eq!(report["forced"], json!(["default/stuck"]));
    assert!(f.kube.pods_on(node).is_empty());
    assert!(f.kube.request_lines().contains(&"DELETE /api/v1/namespaces/default/pods/stuck".to_string()));
}

async fn managed_cluster(f: &Fixture, hosts: &[&str]) {
    f.manager("k8s", &f.kube.url()).await;
    let mut cluster = Cluster::new("c");
    cluster.container_manager = "k8s".into();
    cluster.hostset = hosts.iter().map(|h| h.to_string()).collect();
    f.storage.save(&cluster).await.expect("cluster");
    f.storage
        .save(&ClusterRestart { name: "c".into(), status: "in_process".into(), ..Default::default() })
        .await
        .expect("record");
    for h in hosts {
        f.kube.add_node(h);
    }
}

async fn cordoned_in_record(f: &Fixture) -> Vec<String> {
    f.storage.get::<ClusterRestart>("c").await.expect("record").cordoned
}

#[tokio::test]
async fn a_host_step_cordons_drains_waits_for_ready_and_uncordons() {
    let f = fixture().await;
    let node = "192.0.2.51";
    managed_cluster(&f, &[node]).await;
    f.kube.add_pod("default", "app", node);
    let knobs = json!({"drain_retry_seconds": 0.05, "node_ready_timeout_seconds": 10});
    let knobs = knobs.as_object().expect("object");
    let steps = nodes::HostNodes::prepare(&f.storage, OpKind::Restart, "c", knobs).await.expect("prepare");
    f.kube.clear_requests();
    steps.before(node).await.expect("before");
    assert!(f.kube.is_cordoned(node));
    assert_eq!(cordoned_in_record(&f).await, vec![node.to_string()], "remembered while cordoned");
    // the node goes away during the restart and comes back later
    f.kube.set_node_ready(node, false);
    let after = steps.after(node);
    tokio::pin!(after);
    let early = tokio::time::timeout(Duration::from_millis(300), &mut after).await;
    assert!(early.is_err(), "must wait for the node to be Ready");
    f.kube.set_node_ready(node, true);
    tokio::time::timeout(T, after).await.expect("after in time").expect("after");
    assert!(!f.kube.is_cordoned(node));
    assert!(cordoned_in_record(&f).await.is_empty());
    let lines: Vec<String> = f.kube.request_lines();
    let cordon = lines.iter().position(|l| l.starts_with("PATCH")).expect("cordon");
    let evict = lines.iter().position(|l| l.ends_with("/eviction")).expect("eviction");
    let uncordon = lines.iter().rposition(|l| l.starts_with("PATCH")).expect("uncordon");
    assert!(cordon < evict && evict < uncordon, "{lines:?}");
}

#[tokio::test]
async fn a_node_cordoned_before_the_operation_stays_cordoned() {
    let f = fixture().await;
    let node = "192.0.2.61";
    managed_cluster(&f, &[node]).await;
    f.kube.set_unschedulable(node, true);
    let steps =
        nodes::HostNodes::prepare(&f.storage, OpKind::Restart, "c", &Default::default()).await.expect("prepare");
    steps.before(node).await.expect("before");
    assert!(cordoned_in_record(&f).await.is_empty(), "not ours");
    steps.after(node).await.expect("after");
    assert!(f.kube.is_cordoned(node), "left as it was");
    nodes::restore(&f.storage, OpKind::Restart, "c").await;
    assert!(f.kube.is_cordoned(node), "left as it was");
}

#[tokio::test]
async fn a_failed_or_aborted_operation_restores_the_nodes_it_cordoned() {
    let f = fixture().await;
    let (a, b) = ("192.0.2.71", "192.0.2.72");
    managed_cluster(&f, &[a, b]).await;
    f.kube.set_unschedulable(b, true); // cordoned by an operator before
    let steps =
        nodes::HostNodes::prepare(&f.storage, OpKind::Restart, "c", &Default::default()).await.expect("prepare");
    steps.before(a).await.expect("before a");
    steps.before(b).await.expect("before b");
    // the hosts fail (or the operation is aborted): no after()
    assert!(f.kube.is_cordoned(a) && f.kube.is_cordoned(b));
    nodes::restore(&f.storage, OpKind::Restart, "c").await;
    assert!(!f.kube.is_cordoned(a), "ours: uncordoned");
    assert!(f.kube.is_cordoned(b), "not ours: still cordoned");
    assert!(cordoned_in_record(&f).await.is_empty());
}

#[tokio::test]
async fn a_blocked_drain_with_policy_fail_fails_the_host_step() {
    let f = fixture().await;
    let node = "192.0.2.81";
    managed_cluster(&f, &[node]).await;
    f.kube.add_pod("default", "guarded", node);
    f.kube.block_eviction("default", "guarded", EvictionBlock::Always);
    let knobs = json!({"drain_timeout_seconds": 0.2, "drain_retry_seconds": 0.05, "drain_policy": "fail"});
    let steps = nodes::HostNodes::prepare(&f.storage, OpKind::Restart, "c", knobs.as_object().expect("object"))
        .await
        .expect("prepare");
    let err = steps.before(node).await.expect_err("blocked");
    assert!(err.contains("default/guarded"), "{err}");
    assert_eq!(cordoned_in_record(&f).await, vec![node.to_string()]);
    nodes::restore(&f.storage, OpKind::Restart, "c").await;
    assert!(!f.kube.is_cordoned(node));
    assert_eq!(f.kube.pods_on(node), vec!["default/guarded"]);
}

#[tokio::test]
async fn unmanaged_and_trivial_clusters_are_not_touched() {
    let f = fixture().await;
    let config = ContainerManagerConfig { name: "t".into(), kind: "trivial".into(), options: Default::default() };
    f.storage.save(&config).await.expect("trivial");
    let mut cluster = Cluster::new("c");
    cluster.container_manager = "t".into();
    cluster.hostset = vec!["192.0.2.91".into()];
    f.storage.save(&cluster).await.expect("cluster");
    let steps =
        nodes::HostNodes::prepare(&f.storage, OpKind::Restart, "c", &Default::default()).await.expect("prepare");
    steps.before("192.0.2.91").await.expect("before");
    steps.after("192.0.2.91").await.expect("after");
    assert!(f.kube.requests().is_empty());
    // and the trivial manager answers the new methods
    assert_eq!(f.ok("cordon", json!(["t", "192.0.2.91"])).await, json!(false));
    assert_eq!(f.ok("node_ready", json!(["t", "192.0.2.91"])).await, json!(true));
}
