//! The clusterexec service against the real sshd test hosts (each its own
//! machine: reboots, packages and OSTree deployments of its own; see
//! docs/testing.md), over the in-process bus with the real storage service.
//! It uses the hosts 127.0.0.21-25 and the OSTree host 127.0.0.29; what it
//! checks about reboots is read from the hosts' own `events` files (`down <ms>`
//! / `up <ms>` per reboot), not from the service's record.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine;
use commissaire_core::{
    bus::{Bus, ServeOptions, memory::MemoryBus},
    model::{Cluster, ClusterDeploy, ClusterRestart, ClusterUpgrade, Host, HostCreds, Model, Unknown},
    secrets::SecretsKey,
    storage_client::StorageClient,
};
use commissaire_services::{
    clusterexec::service::{self, ClusterExec},
    storage::{self, StorageService},
    transport::{SshConfig, SshTransport},
};
use serde_json::{Value, json};

const HOSTS: [&str; 5] = ["127.0.0.21", "127.0.0.22", "127.0.0.23", "127.0.0.24", "127.0.0.25"];
const OSTREE_HOST: &str = "127.0.0.29";

/// The tests share the hosts: one at a time.
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run `scripts/testbed up --hosts 20 --ostree-hosts 2` and `eval \"$(scripts/testbed env)\"`")
    })
}

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

/// Runs a shell snippet inside a test host: its output.
fn on_host(address: &str, script: &str) -> String {
    testbed(&["host-exec", address, "--", "sh", "-c", script])
}

/// Checks from the hosts' own events files that each of `hosts` rebooted
/// exactly once, and answers how many were down at the same time at most.
fn most_down_at_once_after_one_reboot_each(hosts: &[&str]) -> i32 {
    let mut edges = Vec::new();
    for host in hosts {
        let pairs = reboots(host);
        assert_eq!(pairs.len(), 1, "{host} rebooted {} times: {pairs:?}", pairs.len());
        let (down, up) = pairs[0];
        edges.push((down, 1i32));
        edges.push((up, -1i32));
    }
    // an `up` at the same millisecond as a `down` counts first
    edges.sort();
    let (mut down_now, mut most) = (0, 0);
    for (_, step) in edges {
        down_now += step;
        most = most.max(down_now);
    }
    most
}

/// The host's reboots as `(down_ms, up_ms)` pairs, from its events file.
fn reboots(address: &str) -> Vec<(u64, u64)> {
    let path =
        std::path::Path::new(&env("COMMISSAIRE_TESTBED_DIR")).join("ssh").join(format!("h{address}")).join("events");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut pairs = Vec::new();
    let mut down = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("down", ms)) => {
                assert!(down.is_none(), "{address}: two downs in a row: {text}");
                down = Some(ms.trim().parse::<u64>().expect("down time"));
            }
            Some(("up", ms)) => {
                let up = ms.trim().parse::<u64>().expect("up time");
                if let Some(d) = down.take() {
                    pairs.push((d, up));
                }
            }
            _ => {}
        }
    }
    assert!(down.is_none(), "{address}: down and never up again: {text}");
    pairs
}

struct Fixture {
    bus: Arc<dyn Bus>,
    storage: StorageClient,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    fixture_on(Arc::new(MemoryBus::new()), true).await
}

/// The storage service on `bus`, and (`with_exec`) a cluster exec instance in this process.
async fn fixture_on(bus: Arc<dyn Bus>, with_exec: bool) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let specs = storage::handlers::parse(Some(&json!([{"type": "embedded", "path": dir.path().join("s.redb")}])))
        .expect("specs");
    let handlers = storage::open_handlers(specs).await.expect("open");
    let key = SecretsKey::generate(&dir.path().join("secrets.key")).expect("key");
    let storage_service = Arc::new(StorageService::new(handlers, key, bus.clone()));
    std::mem::forget(
        bus.serve(storage::QUEUE, storage::PATTERNS, storage_service, ServeOptions::default()).await.expect("serve"),
    );
    if with_exec {
        let ssh = SshTransport::new(SshConfig { connect_timeout: Duration::from_secs(5), ..SshConfig::default() });
        let playbooks = service::playbooks_from_config(&serde_json::Map::new()).expect("the repository's playbooks");
        let exec = Arc::new(ClusterExec::new(bus.clone(), ssh, playbooks));
        std::mem::forget(
            bus.serve(service::QUEUE, service::PATTERNS, exec, ServeOptions::default()).await.expect("serve"),
        );
    }
    Fixture { storage: StorageClient::new(bus.clone()), bus, _dir: dir }
}

impl Fixture {
    /// A cluster of `hosts`, each a `disassociated` debian (or `os`) host
    /// with the test key; no host key pinned.
    async fn cluster(&self, name: &str, hosts: &[&str], os: &str) {
        let key_text = std::fs::read_to_string(env("COMMISSAIRE_TEST_KEY")).expect("test key");
        let key_b64 = base64::engine::general_purpose::STANDARD.encode(key_text);
        for address in hosts {
            let creds = HostCreds::from_json(
                &json!({"address": address, "ssh_priv_key": key_b64, "remote_user": "root"}),
                Unknown::Reject,
            )
            .expect("creds");
            self.storage.save(&creds).await.expect("save creds");
            let mut host = Host::new(*address);
            host.status = "disassociated".into();
            host.os = os.into();
            self.storage.save(&host).await.expect("save host");
        }
        let mut cluster = Cluster::new(name);
        cluster.hostset = hosts.iter().map(|h| h.to_string()).collect();
        self.storage.save(&cluster).await.expect("save cluster");
    }

    async fn start(&self, operation: &str, params: Value) -> Value {
        self.bus
            .request(&format!("jobs.clusterexec.{operation}"), params, Duration::from_secs(30))
            .await
            .expect("the operation starts")
    }

    /// Waits until the record of cluster `name` is no longer in process.
    async fn ended<M: Model>(&self, name: &str, deadline: Duration) -> Value {
        let deadline = Instant::now() + deadline;
        loop {
            let record = self.storage.get::<M>(name).await.expect("record").to_full_json();
            if record["status"] != "in_process" {
                return record;
            }
            assert!(Instant::now() < deadline, "still in process: {record}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().expect("a list").iter().map(|v| v.as_str().expect("a string").to_string()).collect()
}

#[tokio::test]
async fn a_rolling_restart_by_twos_reboots_each_host_once_and_never_more_than_two_at_a_time() {
    let _one = LOCK.lock().await;
    for host in HOSTS {
        testbed(&["host-reset", host]);
    }
    let fx = fixture().await;
    fx.cluster("roll", &HOSTS, "debian").await;
    let initial = fx.start("restart", json!(["roll", {"batch": 2}])).await;
    assert_eq!(initial["status"], "in_process");
    assert_eq!(initial["knobs"], json!({"batch": 2}));
    assert!(strings(&initial["restarted"]).is_empty());
    let started = Instant::now();
    let record = fx.ended::<ClusterRestart>("roll", Duration::from_secs(600)).await;
    println!("rolling restart of 5 hosts by twos: {:?}", started.elapsed());
    assert_eq!(record["status"], "finished", "{record}");
    assert_eq!(strings(&record["restarted"]), HOSTS.map(str::to_string).to_vec(), "{record}");
    assert!(strings(&record["in_process"]).is_empty() && strings(&record["failed_hosts"]).is_empty());
    assert!(record["finished_at"].is_string());

    // As the hosts saw it: one reboot each, never more than two down at once.
    let most = most_down_at_once_after_one_reboot_each(&HOSTS);
    assert!((1..=2).contains(&most), "{most} hosts were down at the same time");
}

#[tokio::test]
async fn an_upgrade_moves_the_test_package_to_1_1_on_each_host() {
    let _one = LOCK.lock().await;
    for host in HOSTS {
        testbed(&["host-reset", host]);
        assert_eq!(on_host(host, "dpkg-query -W -f='${Version}' commissaire-testpkg"), "1.0");
    }
    let fx = fixture().await;
    fx.cluster("up", &HOSTS, "debian").await;
    let initial = fx.start("upgrade", json!(["up", {"batch": "100%"}])).await;
    assert_eq!(initial["status"], "in_process");
    let record = fx.ended::<ClusterUpgrade>("up", Duration::from_secs(600)).await;
    assert_eq!(record["status"], "finished", "{record}");
    assert_eq!(strings(&record["upgraded"]).len(), HOSTS.len(), "{record}");
    for host in HOSTS {
        assert_eq!(on_host(host, "dpkg-query -W -f='${Version}' commissaire-testpkg"), "1.1", "{host}");
    }
}

#[tokio::test]
async fn a_deploy_boots_the_version_on_the_ostree_host() {
    let _one = LOCK.lock().await;
    testbed(&["host-reset", OSTREE_HOST]);
    let booted = || -> String {
        let status: Value = serde_json::from_str(&on_host(OSTREE_HOST, "rpm-ostree status --json")).expect("json");
        let deployments = status["deployments"].as_array().expect("deployments").clone();
        let booted = deployments.iter().find(|d| d["booted"] == true).expect("a booted deployment");
        booted["version"].as_str().expect("version").to_string()
    };
    assert_eq!(booted(), "7.0");
    let fx = fixture().await;
    fx.cluster("atomic", &[OSTREE_HOST], "fedora").await;
    let initial = fx.start("deploy", json!(["atomic", "7.1"])).await;
    assert_eq!((&initial["status"], &initial["version"]), (&json!("in_process"), &json!("7.1")));
    let record = fx.ended::<ClusterDeploy>("atomic", Duration::from_secs(600)).await;
    assert_eq!(record["status"], "finished", "{record}");
    assert_eq!(strings(&record["deployed"]), vec![OSTREE_HOST.to_string()]);
    assert_eq!(booted(), "7.1");
    assert_eq!(reboots(OSTREE_HOST).len(), 1);
}

#[tokio::test]
async fn a_host_that_never_comes_back_fails_the_operation_and_later_hosts_stay_untouched() {
    let _one = LOCK.lock().await;
    let [first, dead, later] = [HOSTS[0], HOSTS[1], HOSTS[2]];
    for host in [first, dead, later] {
        testbed(&["host-reset", host]);
    }
    testbed(&["host-down", dead]);
    let later_boot = on_host(later, "cat /proc/sys/kernel/random/boot_id");
    let fx = fixture().await;
    fx.cluster("broken", &[first, dead, later], "debian").await;
    fx.start("restart", json!(["broken"])).await;
    let record = fx.ended::<ClusterRestart>("broken", Duration::from_secs(600)).await;
    testbed(&["host-up", dead]);
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(strings(&record["restarted"]), vec![first.to_string()]);
    assert_eq!(strings(&record["failed_hosts"]), vec![dead.to_string()]);
    assert!(strings(&record["in_process"]).is_empty());
    let reason = record["reason"].as_str().expect("reason");
    assert!(reason.contains(dead), "the reason names the host: {reason}");
    assert!(record["finished_at"].is_string());
    assert_eq!(reboots(first).len(), 1);
    assert!(reboots(later).is_empty(), "{later} was touched");
    assert_eq!(on_host(later, "cat /proc/sys/kernel/random/boot_id"), later_boot);
}

#[tokio::test]
async fn a_second_operation_on_a_running_cluster_is_refused_and_a_missing_cluster_named() {
    let _one = LOCK.lock().await;
    let fx = fixture().await;
    // hosts that do not exist as records: the operation fails fast, no host is contacted
    let mut cluster = Cluster::new("busy");
    cluster.hostset = vec!["127.0.0.25".into()];
    fx.storage.save(&cluster).await.expect("cluster");
    // a record in process (as another instance would have left it)
    let running =
        ClusterUpgrade::from_json(&json!({"name": "busy", "status": "in_process"}), Unknown::Reject).expect("record");
    fx.storage.save(&running).await.expect("record");
    for (operation, params) in
        [("restart", json!(["busy"])), ("upgrade", json!(["busy"])), ("deploy", json!(["busy", "7.1"]))]
    {
        let err = fx
            .bus
            .request(&format!("jobs.clusterexec.{operation}"), params, Duration::from_secs(30))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("in process"), "{operation}: {err}");
    }
    let err = fx.bus.request("jobs.clusterexec.restart", json!(["nowhere"]), Duration::from_secs(30)).await;
    assert!(err.expect_err("missing").to_string().contains("nowhere"));
    let err = fx.bus.request("jobs.clusterexec.restart", json!(["busy", {"batch": 0}]), Duration::from_secs(30)).await;
    assert!(err.expect_err("bad knob").to_string().contains("batch"));
}

/// Sets the operator's `control` in a restart record, as the REST routes do.
async fn control(fx: &Fixture, name: &str, wanted: &str) {
    fx.storage
        .update::<ClusterRestart, _, std::convert::Infallible>(name, 16, |r| {
            r.control = wanted.to_string();
            Ok(true)
        })
        .await
        .expect("storage")
        .unwrap_or_else(|never| match never {});
}

#[tokio::test]
async fn a_paused_restart_starts_no_host_until_resumed_then_restarts_each_once() {
    let _one = LOCK.lock().await;
    let hosts = &HOSTS[..3];
    for host in hosts {
        testbed(&["host-reset", host]);
    }
    let fx = fixture().await;
    fx.cluster("pausing", hosts, "debian").await;
    fx.start("restart", json!(["pausing"])).await;
    control(&fx, "pausing", "pause").await;
    // Paused with nothing in process: the hosts not restarted yet were never touched.
    let deadline = Instant::now() + Duration::from_secs(300);
    let paused = loop {
        let record = fx.storage.get::<ClusterRestart>("pausing").await.expect("record").to_full_json();
        if record["phase"] == "paused" && strings(&record["in_process"]).is_empty() {
            break record;
        }
        assert!(Instant::now() < deadline, "not paused: {record}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(paused["status"], "in_process", "{paused}");
    let done = strings(&paused["restarted"]);
    assert!(done.len() < hosts.len(), "the pause came after the last host: {paused}");
    for host in hosts.iter().filter(|h| !done.contains(&h.to_string())) {
        assert!(reboots(host).is_empty(), "{host} was restarted although the operation is paused");
    }
    control(&fx, "pausing", "").await;
    let record = fx.ended::<ClusterRestart>("pausing", Duration::from_secs(300)).await;
    assert_eq!(record["status"], "finished", "{record}");
    assert_eq!(record["phase"], "finished", "{record}");
    assert_eq!(strings(&record["restarted"]), hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for host in hosts {
        assert_eq!(reboots(host).len(), 1, "{host} rebooted once");
    }
}

#[tokio::test]
async fn an_aborted_restart_ends_without_touching_the_remaining_hosts() {
    let _one = LOCK.lock().await;
    let hosts = &HOSTS[..3];
    for host in hosts {
        testbed(&["host-reset", host]);
    }
    let fx = fixture().await;
    fx.cluster("aborting", hosts, "debian").await;
    fx.start("restart", json!(["aborting"])).await;
    control(&fx, "aborting", "abort").await;
    let record = fx.ended::<ClusterRestart>("aborting", Duration::from_secs(300)).await;
    assert_eq!(record["status"], "finished", "{record}");
    assert_eq!(record["phase"], "aborted", "{record}");
    assert_eq!(record["reason"], "aborted by an operator", "{record}");
    assert!(record["finished_at"].is_string() && strings(&record["in_process"]).is_empty());
    let done = strings(&record["restarted"]);
    assert!(done.len() < hosts.len(), "the abort came after the last host: {record}");
    for host in hosts {
        let expected = usize::from(done.contains(&host.to_string()));
        assert_eq!(reboots(host).len(), expected, "{host}: reboots after the abort");
    }
}

#[tokio::test]
async fn within_a_failure_budget_the_restart_goes_on_and_retry_failed_restarts_only_the_failed_host() {
    let _one = LOCK.lock().await;
    let [first, dead, later] = [HOSTS[0], HOSTS[1], HOSTS[2]];
    for host in [first, dead, later] {
        testbed(&["host-reset", host]);
    }
    testbed(&["host-down", dead]);
    let fx = fixture().await;
    fx.cluster("budget", &[first, dead, later], "debian").await;
    fx.start("restart", json!(["budget", {"failure_budget": 1}])).await;
    let record = fx.ended::<ClusterRestart>("budget", Duration::from_secs(600)).await;
    testbed(&["host-up", dead]);
    assert_eq!(record["status"], "finished", "{record}");
    assert_eq!(strings(&record["restarted"]), vec![first.to_string(), later.to_string()]);
    assert_eq!(strings(&record["failed_hosts"]), vec![dead.to_string()]);
    assert_eq!((reboots(first).len(), reboots(later).len()), (1, 1));
    let dead_host = record["progress"]["hosts"][1].clone();
    assert_eq!((dead_host["address"].as_str(), dead_host["state"]["state"].as_str()), (Some(dead), Some("failed")));

    // Retry: only the failed host is restarted (its power-off and power-on
    // above count as one down/up already).
    let dead_before = reboots(dead).len();
    let retried = fx
        .bus
        .request("jobs.clusterexec.retry_failed", json!(["budget", "restart"]), Duration::from_secs(30))
        .await
        .expect("the retry starts");
    assert_eq!(retried["status"], "in_process", "{retried}");
    let record = fx.ended::<ClusterRestart>("budget", Duration::from_secs(600)).await;
    assert_eq!(record["status"], "finished", "{record}");
    assert_eq!(strings(&record["restarted"]), vec![first.to_string(), dead.to_string(), later.to_string()]);
    assert!(strings(&record["failed_hosts"]).is_empty(), "{record}");
    assert_eq!(record["owner"], "", "an ended operation has no owner: {record}");
    assert_eq!((reboots(first).len(), reboots(dead).len(), reboots(later).len()), (1, dead_before + 1, 1));

    // Nothing failed now: nothing to retry.
    let err = fx
        .bus
        .request("jobs.clusterexec.retry_failed", json!(["budget", "restart"]), Duration::from_secs(30))
        .await
        .expect_err("nothing to retry");
    assert!(err.to_string().contains("no failed hosts"), "{err}");
}

/// A child process killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a `commissaire-clusterexec-service` process on `exchange` and waits
/// until it answers.
async fn clusterexec_process(bus: &Arc<dyn Bus>, config: &std::path::Path, log: &str) -> Child {
    // its log: kept out of the test's output, named there (shown on failure)
    let log = std::env::temp_dir().join(log);
    println!("cluster exec log: {}", log.display());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_commissaire-clusterexec-service"))
        .arg("-c")
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start commissaire-clusterexec-service");
    let child = Child(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Any instance answering "does not exist" is serving.
        let reply = bus.request("jobs.clusterexec.restart", json!(["no-such-cluster"]), Duration::from_secs(2)).await;
        if reply.as_ref().is_err_and(|e| e.to_string().contains("does not exist")) {
            return child;
        }
        assert!(Instant::now() < deadline, "the cluster exec service does not answer: {reply:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_killed_instance_s_restart_is_finished_by_another_with_each_host_rebooted_exactly_once() {
    let _one = LOCK.lock().await;
    for host in HOSTS {
        testbed(&["host-reset", host]);
    }
    let exchange = format!("takeover-{}", uuid::Uuid::new_v4().simple());
    let bus = commissaire_core::bus::connect(&env("COMMISSAIRE_AMQP_URL"), &exchange).await.expect("AMQP bus");
    let fx = fixture_on(bus.clone(), false).await;
    let config = fx._dir.path().join("clusterexec.conf");
    let playbooks = concat!(env!("CARGO_MANIFEST_DIR"), "/../playbooks");
    let settings = json!({
        "bus_uri": env("COMMISSAIRE_AMQP_URL"),
        "bus_exchange": exchange,
        "playbooks_dir": playbooks,
        "lease_seconds": 3,
        "reboot_grace_seconds": 10,
    });
    std::fs::write(&config, settings.to_string()).expect("config");
    fx.cluster("takeover", &HOSTS, "debian").await;

    let mut first = clusterexec_process(&bus, &config, &format!("{exchange}-first.log")).await;
    let initial = fx.start("restart", json!(["takeover", {"batch": 2}])).await;
    let owner = initial["owner"].as_str().expect("owner").to_string();
    assert!(!owner.is_empty(), "{initial}");
    // Kill it while its first batch is rebooting: a host is down.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !HOSTS.iter().any(|h| {
        let text = std::fs::read_to_string(
            std::path::Path::new(&env("COMMISSAIRE_TESTBED_DIR")).join("ssh").join(format!("h{h}")).join("events"),
        )
        .unwrap_or_default();
        text.lines().any(|l| l.starts_with("down"))
    }) {
        assert!(Instant::now() < deadline, "no host went down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.0.kill().expect("SIGKILL");
    let _ = first.0.wait();
    let at_kill = fx.storage.get::<ClusterRestart>("takeover").await.expect("record").to_full_json();
    assert_eq!(at_kill["status"], "in_process", "{at_kill}");

    let _second = clusterexec_process(&bus, &config, &format!("{exchange}-second.log")).await;
    let record = fx.ended::<ClusterRestart>("takeover", Duration::from_secs(600)).await;
    println!("at the kill: {at_kill}\nat the end: {record}");
    assert_eq!(record["status"], "finished", "{record}");
    assert_eq!(strings(&record["restarted"]), HOSTS.map(str::to_string).to_vec(), "{record}");
    assert!(strings(&record["failed_hosts"]).is_empty(), "{record}");

    // As the hosts saw it: each rebooted exactly once, never more than two down at once.
    let most = most_down_at_once_after_one_reboot_each(&HOSTS);
    assert!(most <= 2, "{most} hosts were down at the same time");
}

#[tokio::test]
async fn two_kinds_started_at_the_same_instant_never_both_run() {
    let _one = LOCK.lock().await;
    let fx = fixture().await;
    for round in 0..20 {
        let name = format!("race-{round}");
        // a member without a host record: an operation that starts fails fast, touching nothing
        let mut cluster = Cluster::new(&name);
        cluster.hostset = vec!["127.0.0.250".into()];
        fx.storage.save(&cluster).await.expect("cluster");
        let timeout = Duration::from_secs(30);
        let (restart, upgrade) = tokio::join!(
            fx.bus.request("jobs.clusterexec.restart", json!([name]), timeout),
            fx.bus.request("jobs.clusterexec.upgrade", json!([name]), timeout),
        );
        assert!(!(restart.is_ok() && upgrade.is_ok()), "round {round}: both started");
        for refused in [&restart, &upgrade].into_iter().filter_map(|r| r.as_ref().err()) {
            let text = refused.to_string();
            assert!(text.contains("in process") || text.contains("same time"), "round {round}: {text}");
        }
        // a kind that stepped back left no record of its own behind
        let restart_record = fx.storage.find::<ClusterRestart>(&name).await.expect("storage");
        assert_eq!(restart_record.is_some(), restart.is_ok(), "round {round}: {restart_record:?}");
        let upgrade_record = fx.storage.find::<ClusterUpgrade>(&name).await.expect("storage");
        assert_eq!(upgrade_record.is_some(), upgrade.is_ok(), "round {round}: {upgrade_record:?}");
    }
}
