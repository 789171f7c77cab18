//! The investigator against the real sshd test hosts, over the in-process bus
//! with the real storage and container manager services.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine;
use commissaire_core::{
    bus::{Bus, ServeOptions, memory::MemoryBus},
    jsonrpc::Request,
    model::{Cluster, ContainerManagerConfig, Host, HostCreds, Model, Unknown},
    secrets::SecretsKey,
    storage_client::StorageClient,
};
use commissaire_services::{
    containermgr::{self, ContainerManagerService},
    investigator::{self, Investigator},
    storage::{self, StorageService},
    transport::{SshConfig, SshTransport},
};
use serde_json::json;

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run `scripts/testbed up --hosts 3` and `eval \"$(scripts/testbed env)\"`")
    })
}

struct Fixture {
    bus: Arc<dyn Bus>,
    storage: StorageClient,
    key_b64: String,
    hosts: Vec<String>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let specs = storage::handlers::parse(Some(&json!([{"type": "embedded", "path": dir.path().join("s.redb")}])))
        .expect("specs");
    let handlers = storage::open_handlers(specs).await.expect("open");
    let key = SecretsKey::generate(&dir.path().join("secrets.key")).expect("key");
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let opts = ServeOptions::default;
    let storage_service = Arc::new(StorageService::new(handlers, key, bus.clone()));
    std::mem::forget(bus.serve(storage::QUEUE, storage::PATTERNS, storage_service, opts()).await.expect("serve"));
    let cm = Arc::new(ContainerManagerService::new(bus.clone()));
    std::mem::forget(bus.serve(containermgr::QUEUE, containermgr::PATTERNS, cm, opts()).await.expect("serve"));
    let ssh = SshTransport::new(SshConfig { connect_timeout: Duration::from_secs(5), ..SshConfig::default() });
    let bootstrap = investigator::bootstrap_from_config(&serde_json::Map::new()).expect("the repository's playbooks");
    let inv = Arc::new(Investigator::new(bus.clone(), ssh, bootstrap));
    std::mem::forget(bus.serve(investigator::QUEUE, investigator::PATTERNS, inv, opts()).await.expect("serve"));
    let key_text = std::fs::read_to_string(env("COMMISSAIRE_TEST_KEY")).expect("test key");
    Fixture {
        storage: StorageClient::new(bus.clone()),
        bus,
        key_b64: base64::engine::general_purpose::STANDARD.encode(key_text),
        hosts: env("COMMISSAIRE_TEST_HOSTS").split_whitespace().map(str::to_string).collect(),
        _dir: dir,
    }
}

impl Fixture {
    async fn add_host(&self, address: &str, key_b64: &str, user: &str) {
        let creds = HostCreds::from_json(
            &json!({"address": address, "ssh_priv_key": key_b64, "remote_user": user}),
            Unknown::Reject,
        )
        .expect("creds");
        self.storage.save(&creds).await.expect("save creds");
        self.storage.save(&Host::new(address)).await.expect("save host");
    }

    async fn investigate(&self, address: &str) {
        let note = Request::new(None, "investigate", json!({"address": address, "cluster_data": {}}));
        self.bus.publish("jobs.investigate", &serde_json::to_value(note).expect("json")).await.expect("publish");
    }

    /// Waits until the host reaches a final status (not empty, `investigating`
    /// or `bootstrapping`).
    async fn settled(&self, address: &str) -> Host {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let host = self.storage.get::<Host>(address).await.expect("host");
            if !["", "investigating", "bootstrapping"].contains(&host.status.as_str()) {
                return host;
            }
            assert!(Instant::now() < deadline, "host {address} still {:?}", host.status);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_reachable_host_gets_its_facts_and_a_pinned_key() {
    let fx = fixture().await;
    let address = fx.hosts[0].clone();
    fx.add_host(&address, &fx.key_b64, "root").await;
    fx.investigate(&address).await;
    let host = fx.settled(&address).await;
    assert_eq!(host.status, "disassociated", "reason: {}", host.reason);
    assert_eq!(host.reason, "");
    assert_eq!(host.os, "debian");
    assert!(host.cpus > 0 && host.memory > 0 && host.space > 0, "{host:?}");
    assert!(host.ssh_host_key.starts_with("ssh-"), "{}", host.ssh_host_key);
    assert!(commissaire_core::timestamp::parse(&host.last_check).is_some());
}

#[tokio::test]
async fn a_member_of_a_managed_cluster_becomes_active() {
    let fx = fixture().await;
    let address = fx.hosts[1].clone();
    let manager =
        ContainerManagerConfig::from_json(&json!({"name": "triv", "type": "trivial"}), Unknown::Reject).expect("cm");
    fx.storage.save(&manager).await.expect("manager");
    let mut cluster = Cluster::new("c");
    cluster.container_manager = "triv".into();
    cluster.hostset = vec![address.clone()];
    fx.storage.save(&cluster).await.expect("cluster");
    // Through the sudo user this time.
    fx.add_host(&address, &fx.key_b64, "commissaire").await;
    fx.investigate(&address).await;
    let host = fx.settled(&address).await;
    assert_eq!(host.status, "active", "reason: {}", host.reason);
}

#[tokio::test]
async fn failures_end_failed_with_a_reason() {
    let fx = fixture().await;
    let address = fx.hosts[2].clone();

    // A key the host does not know.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("other");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen");
    assert!(made.success());
    let other = std::fs::read_to_string(&path).expect("key");
    fx.add_host(&address, &base64::engine::general_purpose::STANDARD.encode(other.as_bytes()), "root").await;
    fx.investigate(&address).await;
    let host = fx.settled(&address).await;
    assert_eq!(host.status, "failed");
    assert!(host.reason.contains("authentication"), "{}", host.reason);

    // Not base64 of a key.
    fx.add_host(&address, "bm90IGEga2V5", "root").await;
    fx.investigate(&address).await;
    let host = fx.settled(&address).await;
    assert_eq!(host.status, "failed");

    // A pinned key the host does not have.
    fx.add_host(&address, &fx.key_b64, "root").await;
    let mut pinned = fx.storage.get::<Host>(&address).await.expect("host");
    pinned.ssh_host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl".into();
    fx.storage.save(&pinned).await.expect("pin");
    fx.investigate(&address).await;
    let host = fx.settled(&address).await;
    assert_eq!(host.status, "failed");
    assert!(host.reason.contains("changed") || host.reason.contains("host key"), "{}", host.reason);

    // Nothing listens there.
    fx.add_host("127.0.0.99", &fx.key_b64, "root").await;
    fx.investigate("127.0.0.99").await;
    let host = fx.settled("127.0.0.99").await;
    assert_eq!(host.status, "failed");
    assert!(host.reason.contains("refused") || host.reason.contains("unreachable"), "{}", host.reason);
}
