//! Fault injection against the real binaries (see docs/reliability.md):
//!
//! * every process of the multi-process deployment killed with SIGKILL and
//!   started again under a steady REST load;
//! * RabbitMQ, Redis and etcd stopped and started under load, no process of
//!   the product restarted;
//! * a test host powered off in the middle of a rolling upgrade;
//! * the all-in-one server's data directory on a full filesystem.
//!
//! Every request of the load must end in a reply: a 2xx, or a clear error (a
//! JSON `{"error": {"code", "message"}}` whose code is the status); a broken
//! connection only while the server itself is down. Afterwards every
//! acknowledged write is readable and cluster membership names only hosts that
//! exist. Each test prints its figures (durations, errors by kind).

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use commissaire_features::{
    client::{Client, Request, Response},
    stack::{ADMIN, Binaries, Stack},
    test_hosts::TestHosts,
};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// One fault test at a time: they stop the test bed's servers and hosts.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Concurrent clients of the load.
const WORKERS: usize = 4;
/// Each load request's own deadline: longer than the server's 10 s service timeout.
const REQUEST_DEADLINE: Duration = Duration::from_secs(20);
/// The cluster the load's hosts join.
const CLUSTER: &str = "faults";
/// Not a key: the investigator fails such a host without opening any connection.
const NOT_A_KEY: &str = "bm90IGEga2V5";

/// How one request ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Ok,
    /// 502, 503 or 504 with a JSON error naming its code and a message.
    Clear(u16),
    /// A 4xx with a JSON error (the load's own conflicts, e.g. a retried create).
    Client(u16),
    /// Anything else: a 500, a 5xx without a proper body.
    Unclear(String),
    /// No HTTP answer at all (refused, reset, or past the deadline).
    Connection(String),
}

impl Outcome {
    fn of(result: anyhow::Result<Response>) -> Self {
        let response = match result {
            Ok(response) => response,
            Err(err) => return Self::Connection(format!("{err:#}")),
        };
        let status = response.status.as_u16();
        if response.status.is_success() {
            return Self::Ok;
        }
        let body = response.json().unwrap_or(Value::Null);
        let clear = body["error"]["code"].as_u64() == Some(u64::from(status))
            && body["error"]["message"].as_str().is_some_and(|m| !m.trim().is_empty());
        match status {
            502..=504 if clear => Self::Clear(status),
            400..=499 if clear => Self::Client(status),
            _ => Self::Unclear(format!("{status} {}", response.text())),
        }
    }

    fn kind(&self) -> String {
        match self {
            Self::Ok => "2xx".into(),
            Self::Clear(s) | Self::Client(s) => s.to_string(),
            Self::Unclear(_) => "unclear".into(),
            Self::Connection(_) => "connection".into(),
        }
    }
}

/// One request of the load, times from the start of the load.
#[derive(Debug, Clone)]
struct Record {
    start: Duration,
    end: Duration,
    write: bool,
    what: String,
    outcome: Outcome,
}

/// What a host is known to be after the last answered request about it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Known {
    Present,
    Absent,
    Unknown,
}

/// What one load worker did.
#[derive(Debug, Default)]
struct Worker {
    records: Vec<Record>,
    /// Networks whose PUT answered 201.
    networks: Vec<String>,
    hosts: BTreeMap<String, Known>,
    /// Acknowledged data found missing while the load ran.
    lost: Vec<String>,
}

/// A steady REST load of reads and writes from [`WORKERS`] clients.
struct Load {
    stop: Arc<AtomicBool>,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<Worker>>,
}

impl Load {
    async fn start(stack: &Stack) -> Self {
        let password = stack.users[ADMIN].clone();
        let cluster = Request::new(Method::PUT, format!("/api/v0/cluster/{CLUSTER}")).basic_auth(ADMIN, &password);
        let created = stack.client.send(cluster.json("{}")).await.expect("PUT cluster");
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tasks = (0..WORKERS)
            .map(|w| {
                let (client, password, stop) = (stack.client.clone(), password.clone(), stop.clone());
                tokio::spawn(async move { work(w, client, password, stop, started).await })
            })
            .collect();
        Self { stop, started, tasks }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    async fn finish(self) -> Vec<Worker> {
        self.stop.store(true, Ordering::SeqCst);
        let mut workers = Vec::new();
        for task in self.tasks {
            workers.push(task.await.expect("a load worker panicked"));
        }
        workers
    }
}

async fn work(w: usize, client: Client, password: String, stop: Arc<AtomicBool>, started: Instant) -> Worker {
    let mut me = Worker::default();
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let request = |method: Method, path: String| Request::new(method, path).basic_auth(ADMIN, &password);
        let send = async |me: &mut Worker, request: Request, write: bool| {
            let what = format!("{} {}", request.method, request.path);
            let start = started.elapsed();
            let outcome = Outcome::of(client.send_with_timeout(request, REQUEST_DEADLINE).await);
            me.records.push(Record { start, end: started.elapsed(), write, what, outcome: outcome.clone() });
            if matches!(outcome, Outcome::Connection(_) | Outcome::Clear(_)) {
                // As a client would: no busy loop against a server that is down.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            outcome
        };
        let network = format!("n{w}-{i}");
        let put = request(Method::PUT, format!("/api/v0/network/{network}")).json("{}");
        if send(&mut me, put, true).await == Outcome::Ok {
            me.networks.push(network);
        }
        if let Some(earlier) = me.networks.get(i * 7 % me.networks.len().max(1)).cloned() {
            let get = request(Method::GET, format!("/api/v0/network/{earlier}"));
            if send(&mut me, get, false).await == Outcome::Client(404) {
                me.lost.push(format!("network {earlier}"));
            }
        }
        // Hosts come and go in the cluster: a create joins the cluster, a
        // delete leaves it, so a half-done request shows as a dangling member.
        let address = format!("127.0.3.{}", 100 + w * 25 + (i % 25));
        let known = me.hosts.get(&address).copied().unwrap_or(Known::Absent);
        let path = format!("/api/v0/host/{address}");
        let next = if known == Known::Absent {
            let body = json!({"ssh_priv_key": NOT_A_KEY, "cluster": CLUSTER}).to_string();
            match send(&mut me, request(Method::PUT, path).json(body), true).await {
                Outcome::Ok => Known::Present,
                _ => Known::Unknown,
            }
        } else {
            match send(&mut me, request(Method::DELETE, path), true).await {
                Outcome::Ok => Known::Absent,
                Outcome::Client(404) if known == Known::Unknown => Known::Absent,
                Outcome::Client(404) => {
                    me.lost.push(format!("host {address}"));
                    Known::Absent
                }
                _ => Known::Unknown,
            }
        };
        me.hosts.insert(address, next);
        if i.is_multiple_of(4) {
            send(&mut me, request(Method::GET, format!("/api/v0/cluster/{CLUSTER}")), false).await;
        }
    }
    me
}

/// A window during which something was down, from the load's clock.
#[derive(Debug, Clone)]
struct Fault {
    name: String,
    down_at: Duration,
    back_at: Duration,
    /// Connection errors are allowed inside the window (the server itself was down).
    server_down: bool,
}

/// Checks every record against the faults and prints, per fault, the errors by
/// kind and how long after the fault ended the first write succeeded.
fn judge(records: &[Record], faults: &[Fault], load_end: Duration) -> Vec<String> {
    let mut problems = Vec::new();
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    for record in records {
        *totals.entry(record.outcome.kind()).or_default() += 1;
        let overlaps = |f: &Fault| record.start <= f.back_at && record.end >= f.down_at;
        match &record.outcome {
            Outcome::Unclear(body) => {
                problems.push(format!("{} at {:?}: unclear answer {body}", record.what, record.start))
            }
            Outcome::Connection(err) if !faults.iter().any(|f| f.server_down && overlaps(f)) => problems.push(format!(
                "{} at {:?}: connection error while the server was up: {err}",
                record.what, record.start
            )),
            _ => {}
        }
    }
    println!("load: {} requests, outcomes {totals:?}", records.len());
    for (n, fault) in faults.iter().enumerate() {
        // Errors caused by this fault: from its start until the next one.
        let until = faults.get(n + 1).map_or(load_end, |f| f.down_at);
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        let mut slowest = Duration::ZERO;
        for r in records.iter().filter(|r| r.end >= fault.down_at && r.start < until) {
            if r.outcome != Outcome::Ok {
                *errors.entry(r.outcome.kind()).or_default() += 1;
            }
            slowest = slowest.max(r.end - r.start);
        }
        let first_ok = records
            .iter()
            .filter(|r| r.write && r.start >= fault.back_at && r.outcome == Outcome::Ok)
            .map(|r| r.end)
            .min();
        let recovery = match first_ok {
            Some(end) => format!("{:.2} s", end.saturating_sub(fault.back_at).as_secs_f64()),
            None => {
                problems.push(format!("no write succeeded after {} was back", fault.name));
                "never".into()
            }
        };
        println!(
            "fault {:<40} down {:>6.2} s; first 2xx write {recovery} after it was back; slowest answer {:.2} s; \
             errors {errors:?}",
            fault.name,
            fault.back_at.saturating_sub(fault.down_at).as_secs_f64(),
            slowest.as_secs_f64()
        );
    }
    problems
}

/// After the load: every acknowledged write is there, and the cluster lists only hosts that exist.
async fn check_consistent(stack: &Stack, workers: &[Worker]) -> Vec<String> {
    let password = &stack.users[ADMIN];
    let get = async |path: &str| -> Value {
        let response = stack.client.send(Request::new(Method::GET, path).basic_auth(ADMIN, password)).await;
        let response = response.unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
        assert_eq!(response.status, StatusCode::OK, "GET {path}: {}", response.text());
        response.json().expect("JSON")
    };
    let names = |v: Value| -> BTreeSet<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| {
                        x.as_str().map(str::to_string).or_else(|| x["address"].as_str().map(str::to_string))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let networks = names(get("/api/v0/networks").await);
    let hosts = names(get("/api/v0/hosts").await);
    let members = names(get(&format!("/api/v0/cluster/{CLUSTER}/hosts")).await);
    let mut problems = Vec::new();
    let (mut acked, mut present, mut absent) = (0, 0, 0);
    for worker in workers {
        problems.extend(worker.lost.iter().map(|l| format!("acknowledged {l} was missing during the load")));
        for network in &worker.networks {
            acked += 1;
            if !networks.contains(network) {
                problems.push(format!("acknowledged network {network} is gone"));
            }
        }
        for (address, known) in &worker.hosts {
            match known {
                Known::Present if !hosts.contains(address) => {
                    problems.push(format!("acknowledged host {address} is gone"))
                }
                Known::Absent if hosts.contains(address) => problems.push(format!("deleted host {address} is back")),
                Known::Present => present += 1,
                Known::Absent => absent += 1,
                Known::Unknown => {}
            }
        }
    }
    // A create interrupted between the membership and the host record (its
    // client got no 2xx) may leave a member without a host; an acknowledged
    // request never does, and deleting the host again removes the member.
    let unanswered: BTreeSet<&String> =
        workers.iter().flat_map(|w| w.hosts.iter()).filter(|(_, k)| **k == Known::Unknown).map(|(a, _)| a).collect();
    let dangling: Vec<&String> = members.iter().filter(|m| !hosts.contains(*m)).collect();
    for member in &dangling {
        if !unanswered.contains(member) {
            problems.push(format!("cluster {CLUSTER} lists {member}, which is no host, after acknowledged requests"));
        }
        let delete = Request::new(Method::DELETE, format!("/api/v0/host/{member}")).basic_auth(ADMIN, password);
        let response = stack.client.send(delete).await.expect("DELETE");
        assert_eq!(response.status, StatusCode::NOT_FOUND, "DELETE of dangling {member}: {}", response.text());
    }
    let members_after = names(get(&format!("/api/v0/cluster/{CLUSTER}/hosts")).await);
    if let Some(left) = members_after.iter().find(|m| !hosts.contains(*m)) {
        problems.push(format!("cluster {CLUSTER} still lists {left} after DELETE /host/{left}"));
    }
    println!(
        "consistency: {acked} acknowledged networks all checked, {present} hosts present and {absent} absent as \
         acknowledged, {} cluster members of {} hosts; {} members without a host (left by unanswered creates) removed \
         by a DELETE",
        members.len(),
        hosts.len(),
        dangling.len()
    );
    problems
}

/// Polls `ok` until it holds, failing past `deadline`; returns how long it took.
async fn wait_until<F: AsyncFnMut() -> bool>(what: &str, deadline: Duration, mut ok: F) -> Duration {
    let started = Instant::now();
    while !ok().await {
        assert!(started.elapsed() < deadline, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// A new host (not a key) ends `failed`: the server, the bus, the storage
/// service and the investigator all work.
async fn investigator_answers(stack: &Stack, address: &str) -> Duration {
    let password = &stack.users[ADMIN];
    let body = json!({"ssh_priv_key": NOT_A_KEY}).to_string();
    let put = Request::new(Method::PUT, format!("/api/v0/host/{address}")).basic_auth(ADMIN, password).json(body);
    let created = stack.client.send(put).await.expect("PUT host");
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    wait_until(&format!("host {address} investigated"), Duration::from_secs(30), async || {
        let get = Request::new(Method::GET, format!("/api/v0/host/{address}")).basic_auth(ADMIN, password);
        matches!(stack.client.send(get).await, Ok(r) if r.json().is_ok_and(|v| v["status"] == "failed"))
    })
    .await
}

fn report(problems: Vec<String>) {
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}

/// Lets the load run for `d` (the load's requests are the thing being waited for).
async fn run_load_for(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_and_restart_each_process_under_load() {
    let _serial = SERIAL.lock().await;
    let bins = Binaries::locate().expect("binaries");
    let mut stack = Stack::multi_process(&bins, true, &[]).await.expect("multi-process stack");
    println!("{}", stack.description);
    let load = Load::start(&stack).await;
    let mut faults = Vec::new();
    run_load_for(Duration::from_secs(2)).await;
    // Services first, the server last (the load's connection errors belong to it).
    let mut names = stack.process_names();
    names.sort_by_key(|n| n == "commissaire-server");
    for name in names {
        let down_at = load.now();
        stack.kill(&name).expect("kill");
        run_load_for(Duration::from_secs(1)).await;
        let took = stack.restart(&name).await.unwrap_or_else(|e| panic!("restarting {name}: {e:#}"));
        let back_at = load.now();
        println!("{name}: SIGKILL, 1 s down, restarted and ready in {:.2} s", took.as_secs_f64());
        faults.push(Fault { server_down: name == "commissaire-server", name, down_at, back_at });
        run_load_for(Duration::from_secs(2)).await;
    }
    let load_end = load.now();
    let workers = load.finish().await;
    let records: Vec<Record> = workers.iter().flat_map(|w| w.records.clone()).collect();
    let mut problems = judge(&records, &faults, load_end);
    problems.extend(check_consistent(&stack, &workers).await);
    investigator_answers(&stack, "127.0.3.99").await;
    report(problems);
    stack.shutdown().await.expect("shutdown");
}

/// Runs `scripts/testbed ARGS` of the test bed the environment names.
fn testbed(args: &[&str]) -> Duration {
    let script = std::env::var("COMMISSAIRE_TESTBED").expect("COMMISSAIRE_TESTBED is not set: start the test bed");
    let started = Instant::now();
    let output = Command::new("bash").arg(&script).args(args).output().expect("run the test bed script");
    assert!(output.status.success(), "testbed {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    started.elapsed()
}

/// Stops `server` of the test bed for a while under load, starts it again and
/// checks that everything came back by itself.
async fn broker_outage(bus_uri: &str, server: &str, probe_host: &str) {
    let bins = Binaries::locate().expect("binaries");
    let stack = Stack::multi_process_on(&bins, bus_uri, true, &[]).await.expect("multi-process stack");
    println!("{}", stack.description);
    let load = Load::start(&stack).await;
    run_load_for(Duration::from_secs(2)).await;
    let down_at = load.now();
    let stopping = testbed(&["stop", server]);
    run_load_for(Duration::from_secs(2)).await;
    let starting = testbed(&["start", server]);
    let back_at = load.now();
    println!("{server}: stopped in {:.2} s, started in {:.2} s", stopping.as_secs_f64(), starting.as_secs_f64());
    // The load goes on until writes have succeeded for a while again.
    let password = stack.users[ADMIN].clone();
    let mut probes: Vec<(String, f64)> = Vec::new();
    let recovered = wait_until("writes succeed again", Duration::from_secs(60), async || {
        let put = Request::new(Method::PUT, "/api/v0/network/probe").basic_auth(ADMIN, &password).json("{}");
        let sent = Instant::now();
        let outcome = Outcome::of(stack.client.send_with_timeout(put, REQUEST_DEADLINE).await);
        probes.push((outcome.kind(), sent.elapsed().as_secs_f64()));
        outcome == Outcome::Ok
    })
    .await;
    println!(
        "{server}: a probe write succeeded {:.2} s after it was back; probes (outcome, seconds): {probes:.2?}",
        recovered.as_secs_f64()
    );
    run_load_for(Duration::from_secs(2)).await;
    let load_end = load.now();
    let workers = load.finish().await;
    let records: Vec<Record> = workers.iter().flat_map(|w| w.records.clone()).collect();
    let fault = Fault { name: format!("{server} stopped and started"), down_at, back_at, server_down: false };
    let mut problems = judge(&records, &[fault], load_end);
    problems.extend(check_consistent(&stack, &workers).await);
    let investigated = investigator_answers(&stack, probe_host).await;
    println!("{server}: a new host was investigated {:.2} s after its creation", investigated.as_secs_f64());
    report(problems);
    stack.shutdown().await.expect("shutdown");
}

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: start the test bed and eval its env"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn brokers_and_etcd_restarted_under_load() {
    let _serial = SERIAL.lock().await;
    // One after the other: they share the test bed's servers.
    broker_outage(&env("COMMISSAIRE_AMQP_URL"), "rabbitmq", "127.0.3.96").await;
    broker_outage(&env("COMMISSAIRE_AMQP_URL"), "etcd", "127.0.3.97").await;
    broker_outage(&env("COMMISSAIRE_REDIS_URL"), "redis", "127.0.3.98").await;
}

/// Runs a shell command inside test host `address`.
fn on_host(address: &str, script: &str) -> String {
    let script_path = std::env::var("COMMISSAIRE_TESTBED").expect("COMMISSAIRE_TESTBED is not set");
    let output = Command::new("bash")
        .arg(&script_path)
        .args(["host-exec", address, "--", "sh", "-c", script])
        .output()
        .expect("host-exec");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// How many apt runs upgraded `commissaire-testpkg` on the host.
fn testpkg_upgrades(address: &str) -> usize {
    on_host(address, "cat /var/log/apt/history.log 2>/dev/null | grep -c '^Upgrade:.*commissaire-testpkg' || true")
        .parse()
        .unwrap_or(0)
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_cut_off_during_an_upgrade_fails_it_alone() {
    let _serial = SERIAL.lock().await;
    let pool = TestHosts::from_env().expect("test hosts");
    let leases =
        [pool.lease().await.expect("host"), pool.lease().await.expect("host"), pool.lease().await.expect("host")];
    let [first, cut, later] = [&leases[0].address, &leases[1].address, &leases[2].address].map(String::as_str);
    for host in [first, cut, later] {
        testbed(&["host-reset", host]);
    }
    // The cut host's package update takes 6 s, so the cut lands inside it.
    on_host(cut, "echo 'APT::Update::Pre-Invoke {\"sleep 6\";};' > /etc/apt/apt.conf.d/00faults-slow");
    let bins = Binaries::locate().expect("binaries");
    let stack = Stack::multi_process(&bins, true, &[]).await.expect("multi-process stack");
    let password = &stack.users[ADMIN];
    let send = async |method: Method, path: String, body: Option<Value>| {
        let mut request = Request::new(method, path.clone()).basic_auth(ADMIN, password);
        if let Some(body) = body {
            request = request.json(body.to_string());
        }
        stack.client.send(request).await.unwrap_or_else(|e| panic!("{path}: {e:#}"))
    };
    let created = send(Method::PUT, "/api/v0/cluster/cut".into(), Some(json!({}))).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    for host in [first, cut, later] {
        let body = json!({"ssh_priv_key": pool.key, "cluster": "cut"});
        let r = send(Method::PUT, format!("/api/v0/host/{host}"), Some(body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }
    let bootstrapped = wait_until("the hosts bootstrapped", Duration::from_secs(120), async || {
        let mut all = true;
        for host in [first, cut, later] {
            let r = send(Method::GET, format!("/api/v0/host/{host}"), None).await;
            let status = r.json().map(|v| v["status"].as_str().unwrap_or_default().to_string()).unwrap_or_default();
            assert_ne!(status, "failed", "{host} failed its bootstrap: {}", r.text());
            all &= status == "disassociated" || status == "active";
        }
        all
    })
    .await;
    println!("3 hosts bootstrapped in {:.1} s", bootstrapped.as_secs_f64());

    let knobs = json!({"batch": 1, "host_timeout_seconds": 60});
    let started = send(Method::PUT, "/api/v0/cluster/cut/upgrade".into(), Some(knobs)).await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text());
    let record = async || send(Method::GET, "/api/v0/cluster/cut/upgrade".into(), None).await.json().expect("record");
    wait_until("the second host in process", Duration::from_secs(120), async || {
        let r = record().await;
        assert_eq!(r["status"], "in_process", "ended before the cut: {r}");
        r["progress"]["hosts"][1]["state"]["state"] == "in_process"
    })
    .await;
    let cut_at = Instant::now();
    testbed(&["host-down", cut]);
    let mut ended = Value::Null;
    wait_until("the upgrade ended", Duration::from_secs(180), async || {
        ended = record().await;
        ended["status"] != "in_process"
    })
    .await;
    println!(
        "{cut} cut off; the upgrade ended {:.1} s later: {} ({})",
        (cut_at.elapsed()).as_secs_f64(),
        ended["status"],
        ended["reason"]
    );
    assert_eq!(ended["status"], "failed", "{ended}");
    assert_eq!(strings(&ended["failed_hosts"]), vec![cut.to_string()], "{ended}");
    assert_eq!(strings(&ended["upgraded"]), vec![first.to_string()], "{ended}");
    let reason = ended["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(cut), "the reason names the host: {reason}");
    assert!(!reason.contains("private key"), "a host that went away is not a refused key: {reason}");
    assert_eq!(testpkg_upgrades(first), 1, "{first} upgraded once");
    assert_eq!(testpkg_upgrades(later), 0, "{later} untouched");
    assert!(pool.reboots(later).expect("events").is_empty(), "{later} untouched");

    // Back on: the watcher sees it again, and a retry upgrades only what is left.
    testbed(&["host-up", cut]);
    let back = wait_until("the cut host checked again", Duration::from_secs(60), async || {
        let r = send(Method::GET, format!("/api/v0/host/{cut}"), None).await;
        r.json().is_ok_and(|v| v["status"] == "disassociated" || v["status"] == "active")
    })
    .await;
    println!("{cut} back; its status recovered {:.1} s after host-up", back.as_secs_f64());
    let retried = send(Method::PUT, "/api/v0/cluster/cut/upgrade/retry-failed".into(), Some(json!({}))).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.text());
    wait_until("the retry ended", Duration::from_secs(180), async || {
        ended = record().await;
        ended["status"] != "in_process"
    })
    .await;
    assert_eq!(ended["status"], "finished", "{ended}");
    assert_eq!((testpkg_upgrades(first), testpkg_upgrades(cut), testpkg_upgrades(later)), (1, 1, 1));
    for host in [first, cut, later] {
        assert_eq!(on_host(host, "dpkg-query -W -f='${Version}' commissaire-testpkg"), "1.1", "{host}");
    }
    drop(stack);
    for host in [first, cut, later] {
        testbed(&["host-reset", host]);
    }
}

/// A tmpfs of `SIZE` in a mount namespace of its own, held by a sleeping process.
struct SmallDisk {
    holder: std::process::Child,
    mount_point: tempfile::TempDir,
}

impl SmallDisk {
    const SIZE: &str = "8m";

    fn mount() -> Self {
        let mount_point = tempfile::Builder::new().prefix("commissaire-faults-disk-").tempdir().expect("mount point");
        let script = format!("mount -t tmpfs -o size={} faults \"$0\" && echo mounted && exec sleep 3600", Self::SIZE);
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .arg(mount_point.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        let stdout = holder.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("read");
        assert_eq!(line.trim(), "mounted", "mounting the tmpfs failed");
        Self { holder, mount_point }
    }

    /// A path inside the tmpfs, as seen from outside its namespace.
    fn inside(&self, rel: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/proc/{}/root{}/{rel}", self.holder.id(), self.mount_point.path().display()))
    }

    /// Fills the tmpfs with a ballast file until it is full, then gives back
    /// `room` bytes.
    fn fill(&self, room: u64) -> u64 {
        use std::io::Write;
        let mut file = std::fs::File::create(self.inside("ballast")).expect("ballast");
        let chunk = vec![0x5au8; 4096];
        let mut written = 0u64;
        while file.write_all(&chunk).is_ok() {
            written += chunk.len() as u64;
        }
        let left = written.saturating_sub(room);
        file.set_len(left).expect("truncate the ballast");
        let _ = file.sync_all();
        left
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_refuses_writes_clearly_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    // Only root may mount a tmpfs.
    let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref().ok() != Some("0") {
        println!("SKIPPED: mounting a small tmpfs needs root (uid {uid:?})");
        return;
    }
    let disk = SmallDisk::mount();
    let data = disk.mount_point.path().join("data");
    let ns = format!("{}", disk.holder.id());
    let prefix = ["nsenter", "-t", ns.as_str(), "-m", "--"];
    let bins = Binaries::locate().expect("binaries");
    let mut stack = Stack::all_in_one_at(&bins, false, &[], Some(&data), &prefix).await.expect("all-in-one");
    let password = stack.users[ADMIN].clone();
    let put = |name: &str, pad: usize| {
        let body = json!({"type": "flannel_server", "options": {"address": "127.0.0.1:8080", "pad": "x".repeat(pad)}});
        Request::new(Method::PUT, format!("/api/v0/network/{name}")).basic_auth(ADMIN, &password).json(body.to_string())
    };
    let r = stack.client.send(put("before", 16)).await.expect("PUT");
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let mut acked = vec!["before".to_string()];

    let ballast = disk.fill(1024 * 1024);
    let mut first_error = None;
    for i in 0..400 {
        let name = format!("full-{i}");
        let response = stack.client.send(put(&name, 32 * 1024)).await;
        let text = response.as_ref().map(Response::text).unwrap_or_default();
        match Outcome::of(response) {
            Outcome::Ok => acked.push(name),
            other => {
                first_error = Some((i, other, text));
                break;
            }
        }
    }
    let (i, error, text) = first_error.expect("the disk never filled up");
    println!("ballast {ballast} bytes, 1 MiB left; {i} writes of 32 KiB acknowledged, then {error:?}: {text}");
    assert!(matches!(error, Outcome::Clear(_)), "a full disk answers a clear error: {error:?}");
    let log = stack.log_of("commissaire-server").expect("log");
    assert!(log.contains("disk is full") || log.contains("No space left"), "the log says why: {log}");
    let again = Outcome::of(stack.client.send(put("while-full", 16)).await);
    assert!(matches!(again, Outcome::Clear(_)), "still full: {again:?}");
    // Reads keep working.
    for name in &acked {
        let get = Request::new(Method::GET, format!("/api/v0/network/{name}")).basic_auth(ADMIN, &password);
        let r = stack.client.send(get).await.expect("GET");
        assert_eq!(r.status, StatusCode::OK, "{name} while full: {}", r.text());
    }

    // Space back: the server as the error message says (restart) and every acknowledged write is there.
    std::fs::remove_file(disk.inside("ballast")).expect("remove the ballast");
    let without_restart = Outcome::of(stack.client.send(put("space-back", 16)).await);
    println!("space back, before a restart: {without_restart:?}");
    if without_restart == Outcome::Ok {
        acked.push("space-back".into());
    }
    stack.kill("commissaire-server").expect("kill");
    let restarted = stack.restart("commissaire-server").await.expect("the store opens again");
    println!("server restarted on the same data in {:.2} s", restarted.as_secs_f64());
    for name in &acked {
        let get = Request::new(Method::GET, format!("/api/v0/network/{name}")).basic_auth(ADMIN, &password);
        let r = stack.client.send(get).await.expect("GET");
        assert_eq!(r.status, StatusCode::OK, "acknowledged {name} after the restart: {}", r.text());
    }
    let r = stack.client.send(put("after", 16)).await.expect("PUT");
    assert_eq!(r.status, StatusCode::CREATED, "writes work again: {}", r.text());
    println!("{} acknowledged writes all readable after the restart; writes work again", acked.len());
    stack.shutdown().await.expect("shutdown");
}
