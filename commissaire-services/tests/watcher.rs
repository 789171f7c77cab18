//! The watcher against the real sshd test hosts, with the storage service on
//! etcd (a namespace of its own) over RabbitMQ (an exchange of its own); each
//! watcher instance has its own bus connection, as separate processes would.
//! Checks are the real SSH check, counted by a wrapper.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use base64::Engine;
use commissaire_core::{
    bus::{self, Bus, ServeHandle, ServeOptions},
    model::{Host, HostCreds, Model, Unknown, WatcherRecord},
    secrets::SecretsKey,
    storage_client::StorageClient,
};
use commissaire_services::{
    storage::{self, OpenHandler, StorageService},
    store::{
        etcd::{EtcdConfig, EtcdStore},
        namespaced::Namespaced,
    },
    transport::{Command, HostTarget, SshConfig, SshTransport},
    watcher::{HostCheck, REASON_PREFIX, Running, Schedule, SshCheck, Watcher, WatcherConfig},
};
use serde_json::json;

const INTERVAL: Duration = Duration::from_secs(1);
const JITTER: f64 = 0.1;
/// Generous: the machine is shared; conditions are polled, never slept on.
const DEADLINE: Duration = Duration::from_secs(60);

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run `scripts/testbed up --hosts 3` and `eval \"$(scripts/testbed env)\"`")
    })
}

/// The test that stops a host holds this for writing; the others, which need
/// every host up, for reading (tokio's lock works across the tests' runtimes).
static HOSTS_UP: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Every check started, as (address, instance).
type Log = Arc<Mutex<Vec<(String, String)>>>;

/// The real SSH check, counted.
struct Counting {
    inner: SshCheck,
    who: String,
    log: Log,
}

#[async_trait]
impl HostCheck for Counting {
    async fn check(&self, host: &Host, creds: &HostCreds) -> Result<(), String> {
        self.log.lock().expect("log").push((host.address.clone(), self.who.clone()));
        self.inner.check(host, creds).await
    }
}

struct Fixture {
    amqp: String,
    exchange: String,
    storage: StorageClient,
    key_text: String,
    log: Log,
    _serving: ServeHandle,
    dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let amqp = env("COMMISSAIRE_AMQP_URL");
    let exchange = format!("t-watcher-{}", uuid::Uuid::new_v4());
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = EtcdStore::connect(EtcdConfig::new([env("COMMISSAIRE_ETCD_URL")])).await.expect("connect etcd");
    let store = Arc::new(Namespaced::new(Arc::new(etcd), format!("/{exchange}")));
    let spec = storage::handlers::parse(None).expect("default handlers").remove(0);
    let secrets = SecretsKey::generate(&dir.path().join("secrets.key")).expect("key");
    let bus = bus::connect(&amqp, &exchange).await.expect("connect amqp");
    let service = StorageService::new(vec![OpenHandler { spec, store }], secrets, bus.clone());
    let serving =
        bus.serve(storage::QUEUE, storage::PATTERNS, Arc::new(service), ServeOptions::default()).await.expect("serve");
    Fixture {
        storage: StorageClient::new(bus),
        amqp,
        exchange,
        key_text: std::fs::read_to_string(env("COMMISSAIRE_TEST_KEY")).expect("test key"),
        log: Arc::default(),
        _serving: serving,
        dir,
    }
}

impl Fixture {
    /// A host as the investigator leaves it: `status`, host key pinned.
    async fn add_host(&self, address: &str, status: &str) {
        let seen = SshTransport::new(SshConfig::default())
            .run(&HostTarget::new(address, "root", self.key_text.as_str()), &Command::new("true"))
            .await
            .expect("the test host answers");
        let creds = HostCreds::from_json(
            &json!({
                "address": address,
                "ssh_priv_key": base64::engine::general_purpose::STANDARD.encode(&self.key_text),
                "remote_user": "root",
            }),
            Unknown::Reject,
        )
        .expect("creds");
        self.storage.save(&creds).await.expect("save creds");
        let mut host = Host::new(address);
        host.status = status.into();
        host.ssh_host_key = seen.host_key;
        self.storage.save(&host).await.expect("save host");
    }

    /// A watcher instance on its own bus connection, named `who` in the log.
    async fn watcher(&self, who: &str) -> Running {
        let bus: Arc<dyn Bus> = bus::connect(&self.amqp, &self.exchange).await.expect("connect amqp");
        let ssh = SshTransport::new(SshConfig { connect_timeout: Duration::from_secs(5), ..SshConfig::default() });
        let check = Counting { inner: SshCheck::new(ssh), who: who.into(), log: self.log.clone() };
        let mut config = WatcherConfig::new(Schedule::new(INTERVAL, JITTER).expect("schedule"));
        config.tick = Duration::from_millis(250);
        config.check_timeout = Duration::from_secs(10);
        Watcher::new(bus, Arc::new(check), config).spawn()
    }

    fn checks(&self, address: &str) -> usize {
        self.log.lock().expect("log").iter().filter(|(a, _)| a == address).count()
    }

    fn checks_by(&self, address: &str, who: &str) -> usize {
        self.log.lock().expect("log").iter().filter(|(a, w)| a == address && w == who).count()
    }

    async fn host(&self, address: &str) -> Host {
        self.storage.get::<Host>(address).await.expect("host")
    }
}

/// Polls `condition` until it holds; panics with `what` at the deadline.
async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !condition().await {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the test host again when dropped, even if the test failed.
struct Stopped(String);

impl Stopped {
    fn new(address: &str) -> Self {
        testbed("host-stop", address);
        Stopped(address.into())
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        testbed("host-start", &self.0);
    }
}

fn testbed(command: &str, address: &str) {
    let status = std::process::Command::new("bash")
        .arg(env("COMMISSAIRE_TESTBED"))
        .args([command, address])
        .status()
        .expect("run the testbed script");
    assert!(status.success(), "testbed {command} {address} failed");
}

#[tokio::test]
async fn an_unreachable_host_fails_and_recovers_to_its_previous_status() {
    let _exclusive = HOSTS_UP.write().await;
    let fx = fixture().await;
    let address = "127.0.0.13";
    fx.add_host(address, "active").await;
    let _watcher = fx.watcher("a").await;

    wait_for("a first check", || async { fx.checks(address) >= 1 && !fx.host(address).await.last_check.is_empty() })
        .await;
    assert_eq!(fx.host(address).await.status, "active");

    let stopped = Stopped::new(address);
    let down = Instant::now();
    wait_for("the stopped host to fail", || async { fx.host(address).await.status == "failed" }).await;
    let failed_after = down.elapsed();
    let host = fx.host(address).await;
    assert!(host.reason.starts_with(REASON_PREFIX), "{}", host.reason);
    assert!(host.reason.contains("unreachable"), "{}", host.reason);
    let record = fx.storage.get::<WatcherRecord>(address).await.expect("record");
    assert_eq!(record.last_good_status, "active");

    drop(stopped); // host-start: same host key
    let up = Instant::now();
    wait_for("the host to recover", || async { fx.host(address).await.status != "failed" }).await;
    let host = fx.host(address).await;
    assert_eq!((host.status.as_str(), host.reason.as_str()), ("active", ""));
    eprintln!(
        "failed {:.1} intervals after host-stop, recovered {:.1} intervals after host-start",
        failed_after.as_secs_f64() / INTERVAL.as_secs_f64(),
        up.elapsed().as_secs_f64() / INTERVAL.as_secs_f64()
    );
}

#[tokio::test]
async fn two_instances_share_the_hosts_and_check_each_once_per_interval() {
    let _up = HOSTS_UP.read().await;
    let fx = fixture().await;
    let hosts: Vec<String> = env("COMMISSAIRE_TEST_HOSTS").split_whitespace().map(str::to_string).collect();
    assert!(hosts.len() >= 3, "needs 3 test hosts");
    for address in &hosts {
        fx.add_host(address, "disassociated").await;
    }
    // Failed by its investigation: never checked, never touched. (Loopback, and
    // no sshd there; were it checked, the connection would be refused.)
    let mut broken = Host::new("127.0.0.99");
    broken.status = "failed".into();
    broken.reason = "authentication as root@127.0.0.99 failed: the host does not accept the private key".into();
    fx.storage.save(&broken).await.expect("save");

    let started = Instant::now();
    let a = fx.watcher("a").await;
    let b = fx.watcher("b").await;
    wait_for("every host checked 5 times", || async { hosts.iter().all(|h| fx.checks(h) >= 5) }).await;
    a.stop().await;
    b.stop().await;
    let elapsed = started.elapsed();

    // A claim moves the host's next check at least (1 - jitter) intervals
    // ahead, so no host is checked more often than that, whichever instance
    // checks it; claims only happen while the watchers run.
    let min_gap = Schedule::new(INTERVAL, JITTER).expect("schedule").min_gap();
    let bound = (elapsed.as_secs_f64() / min_gap.as_secs_f64()).floor() as usize + 1;
    let mut shares = HashMap::new();
    for address in &hosts {
        let n = fx.checks(address);
        assert!(n <= bound, "{address} checked {n} times in {elapsed:?} (at most {bound})");
        shares.insert(address.clone(), (fx.checks_by(address, "a"), fx.checks_by(address, "b")));
    }
    eprintln!("{:.1} s, at most {bound} checks per host; (a, b) per host: {shares:?}", elapsed.as_secs_f64());
    assert_eq!(fx.checks("127.0.0.99"), 0);
    assert_eq!(fx.host("127.0.0.99").await, broken);
    // One record per host, each with an owner.
    for address in &hosts {
        let record = fx.storage.get::<WatcherRecord>(address).await.expect("record");
        assert!(record.owner.starts_with("watcher-"), "{record:?}");
        assert_eq!(fx.host(address).await.status, "disassociated");
    }
}

#[tokio::test]
async fn a_deleted_host_is_no_longer_checked() {
    let _up = HOSTS_UP.read().await;
    let fx = fixture().await;
    let (kept, deleted) = ("127.0.0.11", "127.0.0.12");
    fx.add_host(kept, "disassociated").await;
    fx.add_host(deleted, "disassociated").await;
    let _watcher = fx.watcher("a").await;
    wait_for("both hosts checked", || async { fx.checks(kept) >= 2 && fx.checks(deleted) >= 2 }).await;

    fx.storage.delete::<Host>(deleted).await.expect("delete host");
    fx.storage.delete::<HostCreds>(deleted).await.expect("delete creds");
    wait_for("the record to go", || async { fx.storage.find::<WatcherRecord>(deleted).await.expect("find").is_none() })
        .await;
    // Let any check under way end, then watch two more checks of the other host.
    let n = fx.checks(kept);
    wait_for("two more checks", || async { fx.checks(kept) >= n + 2 }).await;
    let after = fx.checks(deleted);
    let n = fx.checks(kept);
    wait_for("two more checks", || async { fx.checks(kept) >= n + 2 }).await;
    assert_eq!(fx.checks(deleted), after, "the deleted host was checked again");
    assert!(fx.storage.find::<WatcherRecord>(deleted).await.expect("find").is_none(), "its record came back");
}

#[tokio::test]
async fn a_restarted_watcher_loses_no_host() {
    let _up = HOSTS_UP.read().await;
    let fx = fixture().await;
    let hosts: Vec<String> = env("COMMISSAIRE_TEST_HOSTS").split_whitespace().map(str::to_string).collect();
    for address in &hosts {
        fx.add_host(address, "disassociated").await;
    }
    let first = fx.watcher("first").await;
    wait_for("every host checked", || async { hosts.iter().all(|h| fx.checks(h) >= 1) }).await;
    // Killed, checks in progress and all: as a crash would.
    drop(first);
    let _second = fx.watcher("second").await;
    wait_for("the new instance to check every host", || async { hosts.iter().all(|h| fx.checks_by(h, "second") >= 2) })
        .await;
}

#[tokio::test]
async fn a_changed_host_key_fails_the_host_saying_so() {
    let _up = HOSTS_UP.read().await;
    let fx = fixture().await;
    let (address, other) = ("127.0.0.12", "127.0.0.11");
    fx.add_host(address, "disassociated").await;
    fx.add_host(other, "disassociated").await;
    // Pin another host's key, as if the host had been replaced.
    let wrong = fx.host(other).await.ssh_host_key;
    fx.storage
        .update::<Host, _, std::convert::Infallible>(address, 4, |h| {
            h.ssh_host_key = wrong.clone();
            Ok(true)
        })
        .await
        .expect("storage")
        .expect("update");
    let _watcher = fx.watcher("a").await;
    wait_for("the host to fail", || async { fx.host(address).await.status == "failed" }).await;
    let host = fx.host(address).await;
    assert!(host.reason.contains("host key") && host.reason.contains("changed"), "{}", host.reason);
    assert_eq!(fx.host(other).await.status, "disassociated");
}

#[tokio::test]
async fn the_binary_reads_its_configuration_and_stops_on_sigterm() {
    let _up = HOSTS_UP.read().await;
    let fx = fixture().await;
    let address = "127.0.0.11";
    fx.add_host(address, "disassociated").await;
    let conf = fx.dir.path().join("watcher.conf");
    let text = json!({"bus_uri": fx.amqp, "bus_exchange": fx.exchange, "interval": 1, "jitter": 0.1, "tick": 0.25});
    std::fs::write(&conf, text.to_string()).expect("write conf");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_commissaire-watcher-service"))
        .arg("-c")
        .arg(&conf)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the watcher binary");
    wait_for("the binary to check the host", || async {
        let host = fx.host(address).await;
        host.status == "disassociated" && !host.last_check.is_empty()
    })
    .await;
    let record = fx.storage.get::<WatcherRecord>(address).await.expect("record");
    assert!(record.owner.starts_with(&format!("watcher-{}-", child.id())), "{record:?}");
    let killed = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the binary did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}
