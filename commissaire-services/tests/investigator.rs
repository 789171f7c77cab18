//! The investigator against the real sshd test hosts (each its own machine:
//! files, packages and services of its own; see docs/testing.md), over the in-process bus
//! with the real storage and container manager services.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine;
use commissaire_core::{
    bus::{Bus, ServeOptions, memory::MemoryBus},
    jsonrpc::Request,
    model::{Cluster, ContainerManagerConfig, Host, HostCreds, Model, Network, Unknown},
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

/// Tests that use a few hosts share this lock; the test that uses every host
/// takes it alone.
static HOSTS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Runs `scripts/testbed ARGS…`; its standard output.
fn testbed(args: &[&str]) -> String {
    let output = std::process::Command::new("bash")
        .arg(env("COMMISSAIRE_TESTBED"))
        .args(args)
        .output()
        .expect("run scripts/testbed");
    assert!(output.status.success(), "testbed {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a shell snippet inside a test host (its own filesystem view): whether
/// it succeeded, and its output.
fn on_host(address: &str, script: &str) -> (bool, String) {
    let output = std::process::Command::new("bash")
        .arg(env("COMMISSAIRE_TESTBED"))
        .args(["host-exec", address, "--", "sh", "-c", script])
        .output()
        .expect("run scripts/testbed host-exec");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The test hosts that are not OSTree hosts.
fn debian_hosts() -> Vec<String> {
    let ostree = std::env::var("COMMISSAIRE_TEST_OSTREE_HOSTS").unwrap_or_default();
    env("COMMISSAIRE_TEST_HOSTS")
        .split_whitespace()
        .filter(|h| !ostree.split_whitespace().any(|o| o == *h))
        .map(str::to_string)
        .collect()
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
        hosts: debian_hosts(),
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
async fn a_reachable_host_is_investigated_then_bootstrapped() {
    let _shared = HOSTS.read().await;
    let fx = fixture().await;
    let address = fx.hosts[0].clone();
    let untouched = fx.hosts.last().expect("hosts").clone();
    testbed(&["host-reset", &address]);
    testbed(&["host-reset", &untouched]);
    // Outside a cluster the host gets the default network's flannel settings.
    let network = Network::from_json(
        &json!({"name": "default", "type": "flannel_etcd", "options": {"etcd_server_url": "http://127.0.0.1:2379", "flannel_key": "/testing/network"}}),
        Unknown::Reject,
    )
    .expect("network");
    fx.storage.save(&network).await.expect("default network");
    let mut events = fx.bus.subscribe(&["notify.storage.Host.*"]).await.expect("subscribe");
    fx.add_host(&address, &fx.key_b64, "root").await;
    fx.investigate(&address).await;
    let host = fx.settled(&address).await;
    assert_eq!(host.status, "disassociated", "reason: {}", host.reason);

    // Every status the host went through, as the storage events told it.
    let mut seen: Vec<String> = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(500), events.next()).await {
        let model = &event.body["model"];
        if model["address"] == address.as_str()
            && let Some(status) = model["status"].as_str()
            && seen.last().map(String::as_str) != Some(status)
        {
            seen.push(status.to_string());
        }
    }
    assert_eq!(seen, ["", "investigating", "bootstrapping", "disassociated"], "statuses of {address}");

    // What the bootstrap wrote is on that host, and only there.
    let (ok, flanneld) = on_host(&address, "cat /etc/default/flanneld");
    assert!(
        ok && flanneld.contains("http://127.0.0.1:2379") && flanneld.contains("/testing/network"),
        "flanneld options on {address}: {flanneld:?}"
    );
    let (ok, active) = on_host(&address, "systemctl is-active docker flanneld");
    assert!(ok, "docker and flanneld active on {address}: {active}");
    assert!(!std::path::Path::new("/etc/default/flanneld").exists(), "the machine itself was bootstrapped");
    assert_ne!(untouched, address);
    let (exists, _) = on_host(&untouched, "test -e /etc/default/flanneld");
    assert!(!exists, "{untouched} was never bootstrapped but has the flanneld options");
    assert_eq!(host.reason, "");
    assert_eq!(host.os, "debian");
    assert!(host.cpus > 0 && host.memory > 0 && host.space > 0, "{host:?}");
    assert!(host.ssh_host_key.starts_with("ssh-"), "{}", host.ssh_host_key);
    assert!(commissaire_core::timestamp::parse(&host.last_check).is_some());
}

#[tokio::test]
async fn a_member_of_a_managed_cluster_becomes_active() {
    let _shared = HOSTS.read().await;
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
    let _shared = HOSTS.read().await;
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

#[tokio::test]
async fn hostile_network_options_run_nothing_on_the_host() {
    let _shared = HOSTS.read().await;
    let fx = fixture().await;
    let address = fx.hosts[3].clone();
    testbed(&["host-reset", &address]);
    let (_, boot_before) = on_host(&address, "cat /proc/sys/kernel/random/boot_id");
    let marker = format!("/tmp/commissaire-hostile-{}", std::process::id());
    let mut cluster = Cluster::new("hostile");
    cluster.network = "evil".into();
    cluster.hostset = vec![address.clone()];
    for options in [
        json!({"flannel_key": format!("/x$(touch {marker})")}),
        json!({"etcd_server_url": format!("http://e:2379;touch {marker}")}),
        json!({"flannel_key": "/k'\n reboot"}),
    ] {
        let network =
            Network::from_json(&json!({"name": "evil", "type": "flannel_etcd", "options": options}), Unknown::Reject)
                .expect("network");
        fx.storage.save(&network).await.expect("network");
        fx.storage.save(&cluster).await.expect("cluster");
        let _ = fx.storage.delete::<Host>(&address).await;
        fx.add_host(&address, &fx.key_b64, "root").await;
        fx.investigate(&address).await;
        let host = fx.settled(&address).await;
        assert_eq!(host.status, "failed", "{options}: {host:?}");
        assert!(host.reason.contains("not acceptable"), "{options}: {}", host.reason);
    }
    let (exists, _) = on_host(&address, &format!("test -e {marker}"));
    assert!(!exists && !std::path::Path::new(&marker).exists(), "a hostile value ran a command");
    let (_, boot_after) = on_host(&address, "cat /proc/sys/kernel/random/boot_id");
    assert_eq!(boot_before, boot_after, "the host rebooted");
    let (exists, _) = on_host(&address, "test -e /etc/default/flanneld");
    assert!(!exists, "the bootstrap ran although its variables were refused");
}

/// 20 hosts created at once all reach their final status, investigated at the
/// same time (the wall time is printed, not asserted).
#[tokio::test]
async fn twenty_hosts_at_once() {
    let _all = HOSTS.write().await;
    let fx = fixture().await;
    let all: Vec<String> = env("COMMISSAIRE_TEST_HOSTS").split_whitespace().map(str::to_string).collect();
    assert!(all.len() >= 20, "20 test hosts are needed (scripts/testbed up --hosts 20), found {}", all.len());
    let hosts = &all[..20];
    for address in hosts {
        testbed(&["host-reset", address]);
        fx.add_host(address, &fx.key_b64, "root").await;
    }
    let mut events = fx.bus.subscribe(&["notify.storage.Host.*"]).await.expect("subscribe");
    let started = Instant::now();
    for address in hosts {
        fx.investigate(address).await;
    }
    let mut statuses = Vec::new();
    for address in hosts {
        statuses.push((address.clone(), fx.settled(address).await));
    }
    let elapsed = started.elapsed();
    println!("20 hosts investigated and bootstrapped in {:.1}s", elapsed.as_secs_f64());
    for (address, host) in &statuses {
        assert_eq!(host.status, "disassociated", "{address}: {}", host.reason);
    }
    // They ran at the same time: every host was being investigated before
    // the first one finished (the service takes up to 32 at once).
    let mut order = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(500), events.next()).await {
        let host = &event.body["model"];
        if let (Some(address), Some(status)) = (host["address"].as_str(), host["status"].as_str()) {
            order.push((address.to_string(), status.to_string()));
        }
    }
    let first_done = order.iter().position(|(_, s)| s == "disassociated").expect("a host finished");
    for address in hosts {
        assert!(
            order[..first_done].iter().any(|(a, s)| a == address && s == "investigating"),
            "{address} was not being investigated before the first host finished: {order:?}"
        );
    }
}
