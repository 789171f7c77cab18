//! Handler behaviour over the in-process bus, the real storage service and a
//! real embedded store.

use std::{net::IpAddr, sync::Arc, time::Duration};

use commissaire_core::{
    bus::{Bus, ServeOptions, memory::MemoryBus},
    model::{ClusterRestart, Model, Network},
    secrets::SecretsKey,
};
use commissaire_services::{
    containermgr::{self, ContainerManagerService},
    storage::{self, StorageService},
};
use hyper::StatusCode;
use serde_json::{Map, Value, json};

use super::{Api, ApiError};

struct Fixture {
    api: Api,
    bus: Arc<dyn Bus>,
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
    std::mem::forget(
        bus.serve(containermgr::QUEUE, containermgr::PATTERNS, containermgr, ServeOptions::default())
            .await
            .expect("serve"),
    );
    let api = Api::new(bus.clone());
    api.storage.save(&Network::new("default")).await.expect("default network");
    Fixture { api, bus, _dir: dir }
}

fn body(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

fn status(result: Result<super::Reply, ApiError>) -> StatusCode {
    match result {
        Ok(reply) => reply.status,
        Err(err) => err.status,
    }
}

#[tokio::test]
async fn host_creation_joins_its_cluster_and_hands_it_to_the_investigator() {
    let fx = fixture().await;
    let mut jobs = fx.bus.subscribe(&["jobs.investigate"]).await.expect("subscribe");
    fx.api.put_cluster("c1", &Map::new()).await.expect("cluster");
    let reply = fx
        .api
        .put_host(
            Some("10.1.0.1"),
            CLIENT,
            &body(json!({"ssh_priv_key": "a2V5", "remote_user": "admin", "cluster": "c1"})),
        )
        .await
        .expect("host");
    assert_eq!(reply.status, StatusCode::CREATED);
    assert!(reply.body.get("ssh_priv_key").is_none());

    let members = fx.api.list_cluster_members("c1").await.expect("members");
    assert_eq!(members.body, json!(["10.1.0.1"]));
    let job = tokio::time::timeout(Duration::from_secs(5), jobs.next()).await.expect("job in time").expect("job");
    assert_eq!(job.body["method"], "investigate");
    assert_eq!(job.body["params"]["address"], "10.1.0.1");
    assert_eq!(job.body["params"]["cluster_data"]["hostset"], json!(["10.1.0.1"]));

    let creds = fx.api.get_host_creds("10.1.0.1").await.expect("creds");
    assert_eq!(creds.body, json!({"address": "10.1.0.1", "ssh_priv_key": "a2V5", "remote_user": "admin"}));

    // Same again: idempotent. Another key: conflict.
    let again =
        fx.api.put_host(Some("10.1.0.1"), CLIENT, &body(json!({"ssh_priv_key": "a2V5", "cluster": "c1"}))).await;
    assert_eq!(status(again), StatusCode::CREATED);
    let other = fx.api.put_host(Some("10.1.0.1"), CLIENT, &body(json!({"ssh_priv_key": "b3RoZXI="}))).await;
    assert_eq!(status(other), StatusCode::CONFLICT);
}

#[tokio::test]
async fn self_registration_uses_the_client_address_and_paths_win_over_bodies() {
    let fx = fixture().await;
    let reply = fx.api.put_host(None, CLIENT, &Map::new()).await.expect("self registration");
    assert_eq!(reply.body["address"], "192.0.2.7");
    let mismatch = fx.api.put_host(Some("10.1.0.2"), CLIENT, &body(json!({"address": "10.1.0.3"}))).await;
    assert_eq!(status(mismatch), StatusCode::BAD_REQUEST);
    let mismatch = fx.api.put_cluster("c2", &body(json!({"name": "c3"}))).await;
    assert_eq!(status(mismatch), StatusCode::BAD_REQUEST);
    // Nothing was stored by the refused requests.
    assert_eq!(fx.api.list_hosts().await.expect("hosts").body, json!([reply.body]));
    assert_eq!(fx.api.list_clusters().await.expect("clusters").body, json!([]));
}

#[tokio::test]
async fn refused_host_writes_store_nothing() {
    let fx = fixture().await;
    for bad in [
        json!({"cpus": "4"}),
        json!({"ssh_priv_key": "not base64!"}),
        json!({"remote_user": "root; reboot"}),
        json!({"cluster": "missing"}),
        json!({"status": "happy"}),
        json!({"surprise": 1}),
    ] {
        let result = fx.api.put_host(Some("10.1.0.9"), CLIENT, &body(bad.clone())).await;
        let code = status(result);
        assert!(code.is_client_error(), "{bad} gave {code}");
    }
    assert_eq!(fx.api.list_hosts().await.expect("hosts").body, json!([]));
    assert_eq!(status(fx.api.get_host_creds("10.1.0.9").await), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_host_belongs_to_one_cluster_and_concurrent_joins_lose_nothing() {
    let fx = fixture().await;
    fx.api.put_cluster("a", &Map::new()).await.expect("a");
    fx.api.put_cluster("b", &Map::new()).await.expect("b");
    let mut tasks = Vec::new();
    for i in 0..12 {
        let api = fx.api.clone();
        tasks.push(tokio::spawn(async move {
            api.put_host(Some(&format!("10.2.0.{i}")), CLIENT, &body(json!({"status": "disassociated"})))
                .await
                .expect("host");
            api.put_cluster_member("a", &format!("10.2.0.{i}")).await.expect("join")
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task").status, StatusCode::OK);
    }
    let members = fx.api.list_cluster_members("a").await.expect("members").body;
    assert_eq!(members.as_array().map(Vec::len), Some(12), "{members}");
    let second = fx.api.put_cluster_member("b", "10.2.0.0").await;
    assert_eq!(status(second), StatusCode::CONFLICT);
    let host = fx.api.get_host("10.2.0.0").await.expect("host").body;
    assert_eq!(host["status"], "disassociated");

    // Leaving demotes nothing that was not active, and is idempotent.
    assert_eq!(fx.api.delete_cluster_member("a", "10.2.0.0").await.expect("leave").body, json!([]));
    assert_eq!(fx.api.delete_cluster_member("a", "10.2.0.0").await.expect("again").body, json!([]));
    assert_eq!(status(fx.api.check_cluster_member("a", "10.2.0.0").await), StatusCode::NOT_FOUND);
    assert_eq!(status(fx.api.put_cluster_member("b", "10.2.0.0").await), StatusCode::OK);

    // Deleting a host removes it from its cluster.
    fx.api.delete_host("10.2.0.1").await.expect("delete");
    let members = fx.api.list_cluster_members("a").await.expect("members").body;
    assert!(!members.as_array().expect("list").contains(&json!("10.2.0.1")));
}

#[tokio::test]
async fn not_ready_hosts_cannot_join_and_member_swaps_are_compare_and_swap() {
    let fx = fixture().await;
    fx.api.put_cluster("c", &Map::new()).await.expect("cluster");
    fx.api.put_host(Some("10.3.0.1"), CLIENT, &Map::new()).await.expect("new host");
    assert_eq!(status(fx.api.put_cluster_member("c", "10.3.0.1").await), StatusCode::CONFLICT);
    fx.api.put_host(Some("10.3.0.2"), CLIENT, &body(json!({"status": "active"}))).await.expect("host");

    let swap = fx.api.put_cluster_members("c", &body(json!({"old": [], "new": ["10.3.0.2"]}))).await.expect("swap");
    assert_eq!(swap.body["hostset"], json!(["10.3.0.2"]));
    let stale = fx.api.put_cluster_members("c", &body(json!({"old": [], "new": []}))).await;
    assert_eq!(status(stale), StatusCode::CONFLICT);
    let not_ready =
        fx.api.put_cluster_members("c", &body(json!({"old": ["10.3.0.2"], "new": ["10.3.0.2", "10.3.0.1"]}))).await;
    assert_eq!(status(not_ready), StatusCode::CONFLICT);
    let missing = fx.api.put_cluster_members("c", &body(json!({"old": ["10.3.0.2"], "new": ["10.3.0.99"]}))).await;
    assert_eq!(status(missing), StatusCode::CONFLICT);
    assert_eq!(fx.api.list_cluster_members("c").await.expect("members").body, json!(["10.3.0.2"]));
}

#[tokio::test]
async fn cluster_re_create_keeps_members_and_conflicting_attributes_are_refused() {
    let fx = fixture().await;
    fx.api
        .put_network("other", &body(json!({"type": "flannel_server", "options": {"address": "10.0.0.1:8080"}})))
        .await
        .expect("net");
    fx.api.put_cluster("c", &Map::new()).await.expect("create");
    fx.api.put_host(Some("10.4.0.1"), CLIENT, &body(json!({"cluster": "c"}))).await.expect("host");
    let again = fx.api.put_cluster("c", &Map::new()).await.expect("re-create");
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.body.get("hostset").is_none(), "the safe form hides members");
    assert_eq!(fx.api.list_cluster_members("c").await.expect("members").body, json!(["10.4.0.1"]));
    assert_eq!(status(fx.api.put_cluster("c", &body(json!({"network": "other"}))).await), StatusCode::CONFLICT);
    assert_eq!(status(fx.api.put_cluster("d", &body(json!({"network": "nowhere"}))).await), StatusCode::CONFLICT);
    assert_eq!(status(fx.api.get_cluster("nowhere").await), StatusCode::NOT_FOUND);

    let cluster = fx.api.get_cluster("c").await.expect("get").body;
    assert_eq!(cluster["status"], "failed");
    assert_eq!(cluster["hosts"], json!({"total": 1, "available": 0, "unavailable": 1}));

    // Networks in use and clusters with a running operation are not deleted.
    fx.api.put_cluster("e", &body(json!({"network": "other"}))).await.expect("e");
    assert_eq!(status(fx.api.delete_network("other").await), StatusCode::CONFLICT);
    let running = ClusterRestart::from_json(
        &json!({"name": "e", "status": "in_process"}),
        commissaire_core::model::Unknown::Reject,
    )
    .expect("record");
    fx.api.storage.save(&running).await.expect("save record");
    assert_eq!(status(fx.api.delete_cluster("e").await), StatusCode::CONFLICT);
    let start = fx.api.start_operation("e", crate::router::Operation::Restart, &Map::new()).await;
    assert_eq!(status(start), StatusCode::CONFLICT);
    assert_eq!(
        fx.api.get_operation("e", crate::router::Operation::Restart).await.expect("record").body["status"],
        "in_process"
    );
    assert_eq!(status(fx.api.get_operation("c", crate::router::Operation::Upgrade).await), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn named_records_are_created_idempotently() {
    let fx = fixture().await;
    let created = fx.api.put_container_manager("triv", &body(json!({"type": "trivial"}))).await.expect("cm");
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(
        fx.api.put_container_manager("triv", &body(json!({"type": "trivial"}))).await.expect("again").status,
        StatusCode::CREATED
    );
    assert_eq!(
        status(fx.api.put_container_manager("triv", &Map::new()).await),
        StatusCode::BAD_REQUEST,
        "openshift needs server_url"
    );
    assert_eq!(
        status(
            fx.api
                .put_container_manager(
                    "triv",
                    &body(json!({"type": "openshift", "options": {"server_url": "https://k:6443"}}))
                )
                .await
        ),
        StatusCode::CONFLICT
    );
    assert_eq!(fx.api.list_container_managers().await.expect("list").body, json!(["triv"]));
    assert_eq!(fx.api.delete_container_manager("triv").await.expect("delete").body, json!([]));
    assert_eq!(status(fx.api.delete_container_manager("triv").await), StatusCode::NOT_FOUND);
    assert_eq!(
        status(fx.api.put_network("n", &body(json!({"type": "flanneld_service"}))).await),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn managed_clusters_register_members_and_a_refusing_manager_stores_nothing() {
    let fx = fixture().await;
    fx.api.put_container_manager("triv", &body(json!({"type": "trivial"}))).await.expect("trivial");
    fx.api
        .put_container_manager(
            "k8s",
            &body(json!({"type": "kubernetes", "options": {"server_url": "https://k8s.invalid:6443"}})),
        )
        .await
        .expect("kubernetes");
    fx.api.put_cluster("managed", &body(json!({"container_manager": "triv"}))).await.expect("cluster");
    fx.api.put_cluster("refusing", &body(json!({"container_manager": "k8s"}))).await.expect("cluster");
    fx.api.put_host(Some("10.6.0.1"), CLIENT, &body(json!({"status": "disassociated"}))).await.expect("host");

    assert_eq!(fx.api.put_cluster_member("managed", "10.6.0.1").await.expect("join").body, json!(["10.6.0.1"]));
    assert_eq!(fx.api.get_host("10.6.0.1").await.expect("host").body["status"], "active");
    let view = fx.api.get_host_status("10.6.0.1").await.expect("status").body;
    assert_eq!(view["container_manager"], json!({"node": "10.6.0.1", "status": "ok"}));

    // Leaving demotes it; a manager that refuses keeps it out of the cluster.
    fx.api.delete_cluster_member("managed", "10.6.0.1").await.expect("leave");
    assert_eq!(fx.api.get_host("10.6.0.1").await.expect("host").body["status"], "disassociated");
    assert_eq!(fx.api.get_host_status("10.6.0.1").await.expect("status").body["container_manager"], json!({}));
    let refused = fx.api.put_cluster_member("refusing", "10.6.0.1").await;
    assert_eq!(status(refused), StatusCode::BAD_GATEWAY);
    assert_eq!(fx.api.list_cluster_members("refusing").await.expect("members").body, json!([]));
    let refused = fx.api.put_cluster_members("refusing", &body(json!({"old": [], "new": ["10.6.0.1"]}))).await;
    assert_eq!(status(refused), StatusCode::BAD_GATEWAY);
    assert_eq!(fx.api.list_cluster_members("refusing").await.expect("members").body, json!([]));
}

#[tokio::test]
async fn readiness_needs_the_storage_service() {
    let fx = fixture().await;
    fx.api.ready().await.expect("ready with storage served");
    // A bus nobody serves storage on: not ready, and the answer names no address.
    let lonely = Api { service_timeout: Duration::from_millis(100), ..Api::new(Arc::new(MemoryBus::new())) };
    let err = lonely.ready().await.expect_err("not ready");
    assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(err.message, "not ready: the storage service did not answer");
}
