//! Commissaire's behaviour suite: the scenarios in `features/*.feature`, run
//! against the real binaries twice: the multi-process deployment (storage
//! service on etcd + REST server, over RabbitMQ) and the all-in-one server.
//!
//! Names written `$word` in a scenario (paths, bodies, expected values) stand for
//! `word-<scenario id>`, so every scenario works on its own records and scenarios
//! run concurrently. Requests are made as `admin` (read-write) unless a step says
//! otherwise.
//!
//! Arguments are cucumber's (`--name REGEX`, `--tags EXPR`, `--concurrency N`,
//! `--help`); see features/README.md.

use std::{
    process::ExitCode,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use commissaire_fakekube::{EvictionBlock, FakeKube};
use commissaire_features::{
    client::{Body, Client, EventStream, Request, Response},
    stack::{ADMIN, Binaries, Stack},
    test_hosts::{HostLease, TestHosts},
};
use cucumber::{World as _, gherkin::Step, given, tag::Ext as _, then, when, writer};
use hyper::Method;
use serde_json::Value;

#[path = "steps/commctl.rs"]
mod commctl_steps;

/// The stack the scenarios of the current run talk to.
#[derive(Debug)]
struct Target {
    client: Client,
    users: std::collections::BTreeMap<String, String>,
    /// The sshd test hosts, for the `@hosts` scenarios.
    hosts: Option<Arc<TestHosts>>,
    /// The fake Kubernetes API of the run (container managers, TokenReview).
    kube: Arc<FakeKube>,
}

/// Scenarios tagged `@hosts` (on the feature or the scenario) need real test
/// hosts and a stack that contacts them; the others use made-up hosts.
const HOSTS_TAG: &str = "hosts";

static TARGET: Mutex<Option<Arc<Target>>> = Mutex::new(None);

fn current_target() -> Arc<Target> {
    TARGET.lock().unwrap_or_else(PoisonError::into_inner).clone().expect("no stack is running")
}

/// How a scenario authenticates.
#[derive(Debug, Clone)]
enum Auth {
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

#[derive(Debug, cucumber::World)]
#[world(init = Self::new)]
struct ApiWorld {
    target: Arc<Target>,
    /// Makes the scenario's names unique.
    id: String,
    auth: Auth,
    response: Option<Response>,
    /// Requests sent at the same time: what each sent and got.
    batch: Vec<(Request, Response)>,
    /// `$word` names bound to a value instead of `word-<id>` (test host
    /// addresses, keys).
    bindings: std::collections::HashMap<String, String>,
    /// Test hosts this scenario holds.
    leases: Vec<HostLease>,
    /// Test hosts this scenario stopped and has not started again.
    stopped: Vec<String>,
    /// The event stream the scenario follows.
    events: Option<EventStream>,
    /// commctl runs (`commctl_steps`).
    commctl: commctl_steps::State,
    /// Pods this scenario put in the fake Kubernetes API, by node.
    pods: std::collections::HashMap<String, Vec<String>>,
}

impl Drop for ApiWorld {
    /// A scenario that failed half-way must not leave a test host down for the
    /// next one.
    fn drop(&mut self) {
        if let Some(hosts) = &self.target.hosts {
            for address in self.stopped.drain(..) {
                if let Err(err) = hosts.testbed(&["host-start", &address]) {
                    eprintln!("could not restart test host {address}: {err:#}");
                }
            }
        }
    }
}

impl ApiWorld {
    fn new() -> Self {
        let target = current_target();
        let auth = Auth::Basic(ADMIN.into(), target.users[ADMIN].clone());
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let mut bindings = std::collections::HashMap::new();
        if let Some(hosts) = &target.hosts {
            bindings.insert("TEST_KEY".to_string(), hosts.key.clone());
            bindings.insert("OTHER_KEY".to_string(), hosts.other_key.clone());
        }
        Self {
            target,
            id,
            auth,
            response: None,
            batch: Vec::new(),
            bindings,
            leases: Vec::new(),
            stopped: Vec::new(),
            events: None,
            commctl: Default::default(),
            pods: Default::default(),
        }
    }

    /// Replaces every `$word` by its binding, else by `word-<scenario id>`.
    fn expand(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len() + 16);
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '$' || !chars.peek().is_some_and(|n| n.is_ascii_alphabetic()) {
                out.push(c);
                continue;
            }
            let mut word = String::new();
            while let Some(&n) = chars.peek() {
                if !(n.is_ascii_alphanumeric() || n == '_') {
                    break;
                }
                word.push(n);
                chars.next();
            }
            match self.bindings.get(&word) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str(&word);
                    out.push('-');
                    out.push_str(&self.id);
                }
            }
        }
        out
    }

    fn docstring(&self, step: &Step) -> String {
        self.expand(step.docstring.as_deref().expect("this step needs a doc string (\"\"\" … \"\"\")").trim())
    }

    fn expected_json(&self, text: &str) -> Value {
        let text = self.expand(text);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("the scenario's JSON {text:?} is invalid: {e}"))
    }

    fn request(&self, method: &str, path: &str) -> Request {
        let method = Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut request = Request::new(method, self.expand(path));
        match &self.auth {
            Auth::Basic(user, password) => request = request.basic_auth(user, password),
            Auth::Bearer(token) => request.headers.push(("authorization".into(), format!("Bearer {token}"))),
            Auth::Anonymous => {}
        }
        request
    }

    async fn send(&mut self, request: Request) -> &Response {
        let what = format!("{} {}", request.method, request.path);
        let response = self.target.client.send(request).await.unwrap_or_else(|e| panic!("{what}: {e:#}"));
        self.response.insert(response)
    }

    fn response(&self) -> &Response {
        self.response.as_ref().expect("no request was made yet")
    }

    fn body(&self) -> Value {
        let response = self.response();
        response.json().unwrap_or_else(|e| panic!("{e:#} (status {})", response.status))
    }

    /// Sends a request that must succeed with `status` (set-up steps).
    async fn must(&mut self, request: Request, status: u16) {
        let what = format!("{} {}", request.method, request.path);
        let response = self.send(request).await;
        assert_eq!(response.status.as_u16(), status, "set-up {what} failed: {}", response.text());
    }
}

/// The value at a JSON pointer (`""` for the whole document, `/a/0/b`).
fn at<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value.pointer(pointer).unwrap_or_else(|| panic!("the response has no {pointer:?}: {value}"))
}

/// Whether `actual` has every member of `expected` (recursively for objects;
/// everything else compares equal).
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e.iter().all(|(k, v)| a.get(k).is_some_and(|av| contains(av, v))),
        _ => actual == expected,
    }
}

/// Whether a list item is `wanted`: the string itself, or an object whose
/// `address` or `name` it is.
fn item_is(item: &Value, wanted: &str) -> bool {
    match item {
        Value::String(s) => s == wanted,
        Value::Object(o) => ["address", "name"].iter().any(|k| o.get(*k).and_then(Value::as_str) == Some(wanted)),
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Who is asking

#[given(regex = r#"^I am "(\w+)"$"#)]
#[when(regex = r#"^I am "(\w+)"$"#)]
async fn i_am(w: &mut ApiWorld, user: String) {
    let password = w.target.users.get(&user).unwrap_or_else(|| panic!("no user {user:?} in the users file")).clone();
    w.auth = Auth::Basic(user, password);
}

#[given("I send no credentials")]
#[when("I send no credentials")]
async fn anonymous(w: &mut ApiWorld) {
    w.auth = Auth::Anonymous;
}

#[given(regex = r#"^I am "(\w+)" with the password "([^"]*)"$"#)]
#[when(regex = r#"^I am "(\w+)" with the password "([^"]*)"$"#)]
async fn i_am_with_password(w: &mut ApiWorld, user: String, password: String) {
    w.auth = Auth::Basic(user, password);
}

// ---------------------------------------------------------------------------
// Set-up: requests that must succeed

#[given(regex = r"^I have created (\S+)$")]
async fn have_created(w: &mut ApiWorld, path: String) {
    let request = w.request("PUT", &path);
    w.must(request, 201).await;
}

#[given(regex = r"^I have created (\S+) with:$")]
async fn have_created_with(w: &mut ApiWorld, path: String, step: &Step) {
    let request = w.request("PUT", &path).json(w.docstring(step));
    w.must(request, 201).await;
}

#[given(regex = r"^I have added host (\$\w+) to cluster (\$\w+)$")]
async fn have_added(w: &mut ApiWorld, host: String, cluster: String) {
    let request = w.request("PUT", &format!("/api/v0/cluster/{cluster}/hosts/{host}"));
    w.must(request, 200).await;
}

// ---------------------------------------------------------------------------
// Requests

#[when(regex = r"^I (GET|PUT|DELETE|POST|PATCH|HEAD) (\S+)$")]
async fn plain_request(w: &mut ApiWorld, method: String, path: String) {
    let request = w.request(&method, &path);
    w.send(request).await;
}

#[when(regex = r"^I (PUT|POST) (\S+) with:$")]
async fn json_request(w: &mut ApiWorld, method: String, path: String, step: &Step) {
    let request = w.request(&method, &path).json(w.docstring(step));
    w.send(request).await;
}

#[when(regex = r#"^I PUT (\S+) with the header "([^":]+): ([^"]*)" and:$"#)]
async fn request_with_header(w: &mut ApiWorld, path: String, name: String, value: String, step: &Step) {
    let mut request = w.request("PUT", &path).json(w.docstring(step));
    request.headers.push((name, w.expand(&value)));
    w.send(request).await;
}

#[when(regex = r#"^I PUT (\S+) with the content type "([^"]*)" and:$"#)]
async fn typed_request(w: &mut ApiWorld, path: String, content_type: String, step: &Step) {
    let mut request = w.request("PUT", &path);
    request.content_type = Some(content_type);
    request.body = Body::Sized(w.docstring(step).into());
    w.send(request).await;
}

#[when(regex = r"^I PUT (\S+) without a content type and:$")]
async fn untyped_request(w: &mut ApiWorld, path: String, step: &Step) {
    let mut request = w.request("PUT", &path);
    request.body = Body::Sized(w.docstring(step).into());
    w.send(request).await;
}

/// A valid JSON object of exactly `size` bytes.
fn padded_json(size: usize) -> String {
    let frame = r#"{"type": "flannel_etcd", "options": {"padding": ""}}"#;
    assert!(size > frame.len());
    let padding = "x".repeat(size - frame.len());
    let body = format!(r#"{{"type": "flannel_etcd", "options": {{"padding": "{padding}"}}}}"#);
    debug_assert_eq!(body.len(), size);
    body
}

#[when(regex = r"^I PUT (\S+) with a JSON body of (\d+) bytes$")]
async fn sized_request(w: &mut ApiWorld, path: String, size: usize) {
    let request = w.request("PUT", &path).json(padded_json(size));
    w.send(request).await;
}

#[when(regex = r"^I PUT (\S+) with a JSON body of (\d+) bytes sent in chunks$")]
async fn chunked_request(w: &mut ApiWorld, path: String, size: usize) {
    let mut request = w.request("PUT", &path).json(padded_json(size));
    request.body = Body::Chunked(padded_json(size).into(), 64 * 1024);
    w.send(request).await;
}

#[then(regex = r"^(GET|PUT|DELETE) (\S+) answers (\d+)$")]
async fn answers(w: &mut ApiWorld, method: String, path: String, status: u16) {
    let request = w.request(&method, &path);
    let response = w.send(request).await;
    assert_eq!(response.status.as_u16(), status, "{method} {path}: {}", response.text());
    if status >= 400 {
        check_error(w.response(), status);
    }
}

// ---------------------------------------------------------------------------
// Clients at the same time

impl ApiWorld {
    /// `$host1` … `$hostN` from a prefix `$host` and N.
    fn numbered(&self, prefix: &str, count: usize) -> Vec<String> {
        (1..=count).map(|i| self.expand(&format!("{prefix}{i}"))).collect()
    }

    /// Sends all requests at once; keeps them with their responses, in order.
    async fn send_at_once(&mut self, requests: Vec<Request>) {
        let client = self.target.client.clone();
        let responses = futures_util::future::join_all(requests.iter().map(|r| client.send(r.clone()))).await;
        self.batch = requests
            .into_iter()
            .zip(responses)
            .map(|(request, response)| {
                let response = response.unwrap_or_else(|e| panic!("{} {}: {e:#}", request.method, request.path));
                (request, response)
            })
            .collect();
    }

    fn batch_statuses(&self) -> Vec<u16> {
        self.batch.iter().map(|(_, r)| r.status.as_u16()).collect()
    }
}

/// A base64 SSH "key" that differs per client.
fn client_key(i: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("ssh-key-of-client-{i}"))
}

#[given(regex = r"^I have created hosts (\$[a-z_]+)1 to \$[a-z_]+?(\d+) with:$")]
async fn have_created_hosts(w: &mut ApiWorld, prefix: String, count: usize, step: &Step) {
    for address in w.numbered(&prefix, count) {
        let request = w.request("PUT", &format!("/api/v0/host/{address}")).json(w.docstring(step));
        w.must(request, 201).await;
    }
}

#[when(regex = r"^(\d+) clients PUT (\S+) at the same time with:$")]
async fn clients_put_same(w: &mut ApiWorld, count: usize, path: String, step: &Step) {
    let body = w.docstring(step);
    let requests = (0..count).map(|_| w.request("PUT", &path).json(body.clone())).collect();
    w.send_at_once(requests).await;
}

#[when(regex = r"^(\d+) clients PUT (\S+) at the same time, each with a key of its own$")]
async fn clients_put_own_key(w: &mut ApiWorld, count: usize, path: String) {
    let requests = (0..count)
        .map(|i| w.request("PUT", &path).json(serde_json::json!({"ssh_priv_key": client_key(i)}).to_string()))
        .collect();
    w.send_at_once(requests).await;
}

#[when(regex = r"^the hosts (\$[a-z_]+)1 to \$[a-z_]+?(\d+) are created in the cluster (\$\w+) at the same time$")]
async fn create_in_cluster_at_once(w: &mut ApiWorld, prefix: String, count: usize, cluster: String) {
    let body = serde_json::json!({"ssh_priv_key": "c3NoLWtleS1vbmU=", "cluster": w.expand(&cluster)}).to_string();
    let requests = w
        .numbered(&prefix, count)
        .iter()
        .map(|address| w.request("PUT", &format!("/api/v0/host/{address}")).json(body.clone()))
        .collect();
    w.send_at_once(requests).await;
}

#[then(regex = r"^the cluster (\$\w+) has exactly the hosts (\$[a-z_]+)1 to \$[a-z_]+?(\d+)$")]
async fn cluster_has_exactly(w: &mut ApiWorld, cluster: String, prefix: String, count: usize) {
    let request = w.request("GET", &format!("/api/v0/cluster/{cluster}/hosts"));
    let response = w.target.client.send(request).await.unwrap_or_else(|e| panic!("GET members: {e:#}"));
    let mut members: Vec<String> =
        serde_json::from_slice(&response.body).unwrap_or_else(|e| panic!("{e}: {}", response.text()));
    let mut wanted = w.numbered(&prefix, count);
    members.sort();
    wanted.sort();
    assert_eq!(members, wanted);
}

#[when(
    regex = r"^I add each of the hosts (\$[a-z_]+)1 to \$[a-z_]+?(\d+) to the clusters (\$\w+) and (\$\w+) at the same time$"
)]
async fn add_to_both(w: &mut ApiWorld, prefix: String, count: usize, first: String, second: String) {
    let mut requests = Vec::new();
    for address in w.numbered(&prefix, count) {
        for cluster in [&first, &second] {
            requests.push(w.request("PUT", &format!("/api/v0/cluster/{cluster}/hosts/{address}")));
        }
    }
    w.send_at_once(requests).await;
}

#[when(
    regex = r"^I set the members of the clusters (\$\w+) and (\$\w+) to the hosts (\$[a-z_]+)1 to \$[a-z_]+?(\d+) at the same time$"
)]
async fn set_both(w: &mut ApiWorld, first: String, second: String, prefix: String, count: usize) {
    let body = serde_json::json!({"old": [], "new": w.numbered(&prefix, count)}).to_string();
    let requests = [&first, &second]
        .iter()
        .map(|c| w.request("PUT", &format!("/api/v0/cluster/{c}/hosts")).json(body.clone()))
        .collect();
    w.send_at_once(requests).await;
}

#[then(regex = r"^a cluster whose new member list was accepted has all of the hosts (\$[a-z_]+)1 to \$[a-z_]+?(\d+)$")]
async fn accepted_has_all(w: &mut ApiWorld, prefix: String, count: usize) {
    let hosts = w.numbered(&prefix, count);
    for (request, response) in w.batch.clone() {
        match response.status.as_u16() {
            200 => {
                let listing = w.request("GET", &format!("{}/", request.path.trim_end_matches('/')));
                let list = w.send(listing).await.json().expect("JSON");
                for host in &hosts {
                    assert!(list.as_array().is_some_and(|l| l.iter().any(|h| h == host)), "{host} missing from {list}");
                }
            }
            409 => check_error(&response, 409),
            other => panic!("{} {}: unexpected {other}: {}", request.method, request.path, response.text()),
        }
    }
}

#[then(regex = r"^every response status is (\d+)$")]
async fn every_status(w: &mut ApiWorld, status: u16) {
    assert!(!w.batch.is_empty(), "no requests were sent at the same time");
    for (request, response) in &w.batch {
        assert_eq!(response.status.as_u16(), status, "{} {}: {}", request.method, request.path, response.text());
    }
}

#[then(regex = r"^exactly (\d+) of the responses? (?:has|have) status (\d+) and the others (\d+)$")]
async fn exactly_n(w: &mut ApiWorld, count: usize, status: u16, others: u16) {
    let statuses = w.batch_statuses();
    assert_eq!(statuses.iter().filter(|s| **s == status).count(), count, "statuses: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == status || *s == others), "statuses: {statuses:?}");
    for (_, response) in w.batch.iter().filter(|(_, r)| r.status.as_u16() != status) {
        check_error(response, others);
    }
}

#[then(regex = r"^the credentials of (\S+) are those the successful client sent$")]
async fn creds_of_winner(w: &mut ApiWorld, address: String) {
    let winner = w.batch.iter().find(|(_, r)| r.status.as_u16() == 201).map(|(q, _)| q.clone());
    let winner = winner.expect("one client succeeded");
    let sent: Value = match &winner.body {
        Body::Sized(bytes) => serde_json::from_slice(bytes).expect("JSON"),
        other => panic!("unexpected body {other:?}"),
    };
    let request = w.request("GET", &format!("/api/v0/host/{address}/creds"));
    let response = w.send(request).await;
    assert_eq!(response.status.as_u16(), 200, "creds: {}", response.text());
    let creds = response.json().expect("JSON");
    assert_eq!(creds["ssh_priv_key"], sent["ssh_priv_key"], "the stored key is not the winner's");
}

#[then(
    regex = r"^each of the hosts (\$[a-z_]+)1 to \$[a-z_]+?(\d+) is a member of at most one of the clusters (\$\w+) and (\$\w+)$"
)]
async fn member_of_one(w: &mut ApiWorld, prefix: String, count: usize, first: String, second: String) {
    let mut members = Vec::new();
    for cluster in [&first, &second] {
        let request = w.request("GET", &format!("/api/v0/cluster/{cluster}/hosts"));
        let response = w.send(request).await;
        assert_eq!(response.status.as_u16(), 200, "{}", response.text());
        members.push(response.json().expect("JSON"));
    }
    for address in w.numbered(&prefix, count) {
        let holders: Vec<&String> = [&first, &second]
            .into_iter()
            .zip(&members)
            .filter(|(_, list)| list.as_array().is_some_and(|l| l.iter().any(|h| h == &Value::String(address.clone()))))
            .map(|(c, _)| c)
            .collect();
        assert!(holders.len() <= 1, "{address} is a member of {holders:?}; members: {members:?}");
    }
}

#[then("every request that answered 200 added its host and every one that answered 409 did not")]
async fn answers_are_true(w: &mut ApiWorld) {
    let mut members = std::collections::BTreeMap::new();
    let batch = w.batch.clone();
    assert!(!batch.is_empty(), "no requests were sent at the same time");
    for (request, response) in &batch {
        let rest = request.path.trim_start_matches("/api/v0/cluster/");
        let (cluster, address) = rest.split_once("/hosts/").expect("a membership path");
        if !members.contains_key(cluster) {
            let listing = w.request("GET", &format!("/api/v0/cluster/{cluster}/hosts"));
            let list = w.send(listing).await.json().expect("JSON");
            members.insert(cluster.to_string(), list);
        }
        let listed = members[cluster].as_array().is_some_and(|l| l.iter().any(|h| h == address));
        match response.status.as_u16() {
            200 => assert!(listed, "{address} was added to {cluster} (200) but is not a member"),
            409 => {
                check_error(response, 409);
                assert!(!listed, "{address} was refused by {cluster} (409) but is a member");
            }
            other => panic!("{} {}: unexpected {other}: {}", request.method, request.path, response.text()),
        }
    }
}

// ---------------------------------------------------------------------------
// Real test hosts (`@hosts` scenarios)

impl ApiWorld {
    fn test_hosts(&self) -> Arc<TestHosts> {
        self.target.hosts.clone().expect("this step needs the test hosts: tag the scenario @hosts")
    }

    fn bound(&self, name: &str) -> String {
        let word = name.trim_start_matches('$');
        self.bindings.get(word).unwrap_or_else(|| panic!("{name} is not bound to a test host")).clone()
    }
}

#[given(regex = r"^a test host (\$\w+)$")]
async fn a_test_host(w: &mut ApiWorld, name: String) {
    let lease = w.test_hosts().lease().await.unwrap_or_else(|e| panic!("{e:#}"));
    // A fresh machine: nothing an earlier scenario's bootstrap wrote.
    w.test_hosts().testbed(&["host-reset", &lease.address]).unwrap_or_else(|e| panic!("{e:#}"));
    // An earlier scenario may have added this host to the stack: start afresh.
    let request = w.request("DELETE", &format!("/api/v0/host/{}", lease.address));
    let status = w.send(request).await.status.as_u16();
    assert!(matches!(status, 200 | 404), "removing an earlier scenario's host {}: {status}", lease.address);
    w.response = None;
    // Nor any node or pod an earlier scenario left in the fake Kubernetes API.
    w.target.kube.forget_node(&lease.address);
    w.bindings.insert(name.trim_start_matches('$').to_string(), lease.address.clone());
    w.leases.push(lease);
}

#[given(regex = r"^an address (\$\w+) where no SSH server answers$")]
async fn dead_address(w: &mut ApiWorld, name: String) {
    // Loopback, so nothing leaves the machine; no test host uses .99.
    w.bindings.insert(name.trim_start_matches('$').to_string(), "127.0.0.99".to_string());
}

#[when(regex = r"^the test host (\$\w+) gets a new host key$")]
async fn rekey(w: &mut ApiWorld, name: String) {
    let address = w.bound(&name);
    w.test_hosts().testbed(&["host-rekey", &address]).unwrap_or_else(|e| panic!("{e:#}"));
}

#[then(regex = r#"^the test host (\$\w+) has a file "([^"]+)" that mentions "([^"]*)"$"#)]
async fn host_file(w: &mut ApiWorld, name: String, path: String, text: String) {
    let address = w.bound(&name);
    let content = w
        .test_hosts()
        .testbed(&["host-exec", &address, "--", "cat", &path])
        .unwrap_or_else(|e| panic!("reading {path} on {address}: {e:#}"));
    assert!(content.contains(&text), "{path} on {address} does not mention {text:?}: {content:?}");
}

#[when(regex = r"^the test host (\$\w+) goes down$")]
async fn host_down(w: &mut ApiWorld, name: String) {
    let address = w.bound(&name);
    w.test_hosts().testbed(&["host-stop", &address]).unwrap_or_else(|e| panic!("{e:#}"));
    w.stopped.push(address);
}

#[when(regex = r"^the test host (\$\w+) comes back$")]
async fn host_up(w: &mut ApiWorld, name: String) {
    let address = w.bound(&name);
    w.test_hosts().testbed(&["host-start", &address]).unwrap_or_else(|e| panic!("{e:#}"));
    w.stopped.retain(|a| a != &address);
}

#[given(regex = r"^test hosts (\$[a-z_]+)1 to \$[a-z_]+?(\d+) in cluster (\$\w+)$")]
async fn test_hosts_in_cluster(w: &mut ApiWorld, prefix: String, count: usize, cluster: String) {
    for i in 1..=count {
        a_test_host(w, format!("{prefix}{i}")).await;
    }
    for i in 1..=count {
        let host = format!("{prefix}{i}");
        let body = w.expand(&format!(r#"{{"ssh_priv_key": "$TEST_KEY", "cluster": "{cluster}"}}"#));
        let request = w.request("PUT", &format!("/api/v0/host/{host}")).json(body);
        w.must(request, 201).await;
    }
    for i in 1..=count {
        eventually_status(w, 60, format!("{prefix}{i}"), "disassociated".into()).await;
    }
}

#[then(
    regex = r"^the test hosts (\$[a-z_]+)1 to \$[a-z_]+?(\d+) each rebooted once, never more than (\d+) down at a time$"
)]
async fn rebooted_once(w: &mut ApiWorld, prefix: String, count: usize, most: i32) {
    let mut edges = Vec::new();
    for i in 1..=count {
        let address = w.bound(&format!("{prefix}{i}"));
        let pairs = w.test_hosts().reboots(&address).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(pairs.len(), 1, "{address} rebooted {} times: {pairs:?}", pairs.len());
        edges.push((pairs[0].0, 1));
        edges.push((pairs[0].1, -1));
    }
    // an `up` at the same millisecond as a `down` counts first
    edges.sort();
    let (mut down, mut seen) = (0, 0);
    for (_, step) in edges {
        down += step;
        seen = seen.max(down);
    }
    assert!(seen <= most, "{seen} hosts were down at the same time (at most {most} allowed)");
}

// ---------------------------------------------------------------------------
// The event stream

#[when(regex = r"^I follow the events of cluster (\$\w+)$")]
async fn follow_events(w: &mut ApiWorld, cluster: String) {
    let Auth::Basic(user, password) = w.auth.clone() else { panic!("following events needs credentials") };
    let path = format!("/api/v0/events?cluster={}", w.expand(&cluster));
    let stream = w.target.client.follow(&path, &user, &password).await.unwrap_or_else(|e| panic!("{path}: {e:#}"));
    w.events = Some(stream);
}

/// Whether an event named `name` (about `host`, when given) arrived; the
/// events so far otherwise.
fn has_event(w: &ApiWorld, name: &str, host: Option<&str>) -> Result<(), Vec<(String, Value)>> {
    let events = w.events.as_ref().expect("no event stream is followed").events();
    let found = events.iter().any(|(n, data)| {
        n == name && host.is_none_or(|h| data.pointer("/document/host").and_then(Value::as_str) == Some(h))
    });
    if found { Ok(()) } else { Err(events) }
}

#[then(regex = r#"^within (\d+) seconds the event stream has shown "([^"]+)"(?: for (\$\w+))?$"#)]
async fn event_shown(w: &mut ApiWorld, seconds: u64, name: String, host: String) {
    let host = (!host.is_empty()).then(|| w.bound(&host));
    let deadline = Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        match has_event(w, &name, host.as_deref()) {
            Ok(()) => return,
            Err(events) if Instant::now() >= deadline => {
                let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
                panic!("no {name} event (host {host:?}) within {seconds} s; seen: {names:?}");
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

#[then(regex = r#"^the event stream has shown "([^"]+)"(?: for (\$\w+))?$"#)]
async fn event_shown_now(w: &mut ApiWorld, name: String, host: String) {
    event_shown(w, 0, name, host).await;
}

#[then(regex = r#"^every event of the stream is about cluster (\$\w+)$"#)]
async fn events_of_cluster(w: &mut ApiWorld, cluster: String) {
    let cluster = w.expand(&cluster);
    let events = w.events.as_ref().expect("no event stream is followed").events();
    assert!(!events.is_empty(), "no event at all");
    for (name, data) in events {
        assert_eq!(data["cluster"].as_str(), Some(cluster.as_str()), "{name}: {data}");
    }
}

#[then(regex = r#"^within (\d+) seconds GET (\S+) has "([^"]*)" at "([^"]*)"$"#)]
async fn eventually_field(w: &mut ApiWorld, seconds: u64, path: String, value: String, pointer: String) {
    let deadline = Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let request = w.request("GET", &path);
        let response = w.send(request).await;
        let current =
            response.json().ok().and_then(|b| b.pointer(&pointer).and_then(Value::as_str).map(str::to_string));
        if current.as_deref() == Some(value.as_str()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} did not have {value:?} at {pointer} within {seconds}s; last answer: {} {}",
            response.status,
            response.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[given(regex = r#"^within (\d+) seconds host (\$\w+) has status "(\w+)"$"#)]
#[then(regex = r#"^within (\d+) seconds host (\$\w+) has status "(\w+)"$"#)]
async fn eventually_status(w: &mut ApiWorld, seconds: u64, name: String, status: String) {
    eventually_status_and_reason(w, seconds, name, status, String::new()).await;
}

#[then(regex = r#"^within (\d+) seconds host (\$\w+) has status "(\w+)" with a reason that mentions "([^"]*)"$"#)]
async fn eventually_status_and_reason(w: &mut ApiWorld, seconds: u64, name: String, status: String, reason: String) {
    let address = w.bound(&name);
    let deadline = Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let request = w.request("GET", &format!("/api/v0/host/{address}"));
        let response = w.send(request).await;
        let body = response.json().ok();
        let current = body.as_ref().and_then(|b| b.get("status")).and_then(Value::as_str).unwrap_or_default();
        let why = body.as_ref().and_then(|b| b.get("reason")).and_then(Value::as_str).unwrap_or_default();
        if current == status && why.contains(&reason) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "host {address} did not reach status {status:?} (reason mentioning {reason:?}) within {seconds}s; last \
             answer: {} {}",
            response.status,
            response.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[then(regex = r#"^the response has a positive number at "([^"]*)"$"#)]
async fn field_positive(w: &mut ApiWorld, pointer: String) {
    let body = w.body();
    let value = at(&body, &pointer).as_u64().unwrap_or(0);
    assert!(value > 0, "field {pointer} of {body} is not a positive number");
}

#[when(regex = r#"^I remember the response field "([^"]*)" as (\$\w+)$"#)]
async fn remember(w: &mut ApiWorld, pointer: String, name: String) {
    let body = w.body();
    let value = at(&body, &pointer).as_str().unwrap_or_else(|| panic!("field {pointer} of {body} is not a string"));
    w.bindings.insert(name.trim_start_matches('$').to_string(), value.to_string());
}

#[then(regex = r#"^the response field "([^"]*)" differs from (\$\w+)$"#)]
async fn field_differs(w: &mut ApiWorld, pointer: String, name: String) {
    let body = w.body();
    let remembered = w.bound(&name);
    assert_ne!(at(&body, &pointer).as_str(), Some(remembered.as_str()), "field {pointer} of {body}");
}

#[then(regex = r#"^the response field "([^"]*)" mentions "([^"]*)"$"#)]
async fn field_mentions(w: &mut ApiWorld, pointer: String, text: String) {
    let body = w.body();
    let value = at(&body, &pointer).as_str().unwrap_or_else(|| panic!("field {pointer} of {body} is not a string"));
    assert!(value.contains(&text), "field {pointer} of {body} does not mention {text:?}");
}

#[then(regex = r#"^the response field "([^"]*)" starts with "([^"]*)"$"#)]
async fn field_starts(w: &mut ApiWorld, pointer: String, prefix: String) {
    let body = w.body();
    let value = at(&body, &pointer).as_str().unwrap_or_else(|| panic!("field {pointer} of {body} is not a string"));
    assert!(value.starts_with(&prefix), "field {pointer} of {body} does not start with {prefix:?}");
}

// ---------------------------------------------------------------------------
// The fake Kubernetes API (container managers, TokenReview)

#[given(regex = r"^a kubernetes container manager (\$\w+) on the fake Kubernetes API$")]
async fn kube_manager(w: &mut ApiWorld, name: String) {
    let body = serde_json::json!({"type": "kubernetes", "options": {"server_url": w.target.kube.url()}}).to_string();
    let request = w.request("PUT", &format!("/api/v0/containermanager/{name}")).json(body);
    w.must(request, 201).await;
}

/// The node name of a `$word`: its binding (a test host's address) or `word-<id>`.
fn node_name(w: &ApiWorld, name: &str) -> String {
    w.expand(name)
}

#[then(regex = r"^the fake Kubernetes API has (the|no) node (\$\w+)$")]
async fn kube_has_node(w: &mut ApiWorld, which: String, name: String) {
    let node = node_name(w, &name);
    let present = w.target.kube.node(&node).is_some();
    assert_eq!(present, which == "the", "node {node} in {:?}", w.target.kube.node_names());
}

#[given(regex = r"^the fake Kubernetes API also has a node (\$\w+)$")]
#[then(regex = r"^the fake Kubernetes API also has a node (\$\w+)$")]
async fn kube_other_node(w: &mut ApiWorld, name: String) {
    w.target.kube.add_node(&node_name(w, &name));
}

#[given(regex = r"^the fake Kubernetes API has the pod (\$\w+) on the node (\$\w+)$")]
async fn kube_pod(w: &mut ApiWorld, pod: String, name: String) {
    let (pod, node) = (w.expand(&pod), node_name(w, &name));
    w.target.kube.add_pod("default", &pod, &node);
    w.pods.entry(node).or_default().push(pod);
}

#[given(regex = r"^a disruption budget blocks every eviction of the pod (\$\w+)$")]
async fn kube_pdb(w: &mut ApiWorld, pod: String) {
    w.target.kube.block_eviction("default", &w.expand(&pod), EvictionBlock::Always);
}

#[given(regex = r"^an operator cordoned the node (\$\w+) in the fake Kubernetes API$")]
async fn kube_cordon(w: &mut ApiWorld, name: String) {
    let node = node_name(w, &name);
    assert!(w.target.kube.node(&node).is_some(), "no node {node}");
    w.target.kube.set_unschedulable(&node, true);
}

#[then(regex = r"^the node (\$\w+) is (cordoned|schedulable) in the fake Kubernetes API$")]
async fn kube_cordoned(w: &mut ApiWorld, name: String, state: String) {
    let node = node_name(w, &name);
    assert_eq!(w.target.kube.is_cordoned(&node), state == "cordoned", "node {node}: {:?}", w.target.kube.node(&node));
}

#[then(regex = r"^the pod (\$\w+) is (still on|gone from) the node (\$\w+)$")]
async fn kube_pod_state(w: &mut ApiWorld, pod: String, state: String, name: String) {
    let (pod, node) = (w.expand(&pod), node_name(w, &name));
    let present = w.target.kube.pods_on(&node).contains(&format!("default/{pod}"));
    assert_eq!(present, state == "still on", "pod {pod} on {node}: {:?}", w.target.kube.pods_on(&node));
}

/// The position in the fake API's log of the first request after `after`
/// that `matches`.
fn first_after(
    log: &[commissaire_fakekube::RecordedRequest],
    after: Option<u64>,
    what: &str,
    matches: impl Fn(&commissaire_fakekube::RecordedRequest) -> bool,
) -> u64 {
    log.iter()
        .filter(|r| after.is_none_or(|a| r.seq > a))
        .find(|r| matches(r))
        .map(|r| r.seq)
        .unwrap_or_else(|| panic!("the fake Kubernetes API log has no {what} after {after:?}"))
}

#[then(
    regex = r"^the fake Kubernetes API log shows, for (\$\w+) then (\$\w+), the cordon, the evictions, the node read and the uncordon$"
)]
async fn kube_rolling_log(w: &mut ApiWorld, first: String, second: String) {
    let log = w.target.kube.requests();
    let mut previous_uncordon: Option<u64> = None;
    for name in [first, second] {
        let node = node_name(w, &name);
        let path = format!("/api/v1/nodes/{node}");
        let cordon = first_after(&log, previous_uncordon, &format!("cordon of {node}"), |r| {
            r.verb == "PATCH" && r.path == path && r.body.pointer("/spec/unschedulable") == Some(&Value::Bool(true))
        });
        let mut last_eviction = cordon;
        for pod in w.pods.get(&node).cloned().unwrap_or_default() {
            let eviction = format!("/api/v1/namespaces/default/pods/{pod}/eviction");
            let seq = first_after(&log, Some(cordon), &format!("eviction of {pod}"), |r| {
                r.verb == "POST" && r.path == eviction
            });
            last_eviction = last_eviction.max(seq);
        }
        let read =
            first_after(&log, Some(last_eviction), &format!("read of {node}"), |r| r.verb == "GET" && r.path == path);
        let uncordon = first_after(&log, Some(read), &format!("uncordon of {node}"), |r| {
            r.verb == "PATCH" && r.path == path && r.body.pointer("/spec/unschedulable") == Some(&Value::Bool(false))
        });
        previous_uncordon = Some(uncordon);
    }
}

#[given(regex = r#"^the fake Kubernetes API accepts the token (\$\w+) for the user "([^"]+)" in the group "([^"]+)"$"#)]
async fn kube_token(w: &mut ApiWorld, token: String, user: String, group: String) {
    w.target.kube.accept_token(&w.expand(&token), &user, &[group.as_str()]);
}

#[given(regex = r"^I use the bearer token (\$\w+)$")]
#[when(regex = r"^I use the bearer token (\$\w+)$")]
async fn use_bearer(w: &mut ApiWorld, token: String) {
    w.auth = Auth::Bearer(w.expand(&token));
}

// ---------------------------------------------------------------------------
// Checks

/// An error answer: JSON `{"error": {"code": <status>, "message": <text>}}`.
fn check_error(response: &Response, status: u16) {
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "an error must be application/json: {}",
        response.text()
    );
    let body = response.json().expect("an error body is JSON");
    let error = body.as_object().and_then(|o| o.get("error")).and_then(Value::as_object);
    let error = error.unwrap_or_else(|| panic!("an error body is {{\"error\": {{…}}}}, got {body}"));
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "only \"error\" in an error body: {body}");
    assert_eq!(error.get("code").and_then(Value::as_u64), Some(u64::from(status)), "error code in {body}");
    let message = error.get("message").and_then(Value::as_str).unwrap_or_default();
    assert!(!message.trim().is_empty(), "an error has a message for a human: {body}");
    assert_eq!(error.len(), 2, "only code and message in an error: {body}");
}

#[then(regex = r"^the response status is (\d+)$")]
async fn status_is(w: &mut ApiWorld, status: u16) {
    let response = w.response();
    assert_eq!(response.status.as_u16(), status, "unexpected status; body: {}", response.text());
    if status >= 400 {
        check_error(response, status);
    }
}

#[then(regex = r"^the response is an error with code (\d+)$")]
async fn is_error(w: &mut ApiWorld, status: u16) {
    let response = w.response();
    assert_eq!(response.status.as_u16(), status, "unexpected status; body: {}", response.text());
    check_error(response, status);
}

#[then(regex = r#"^the error message mentions "([^"]*)"$"#)]
async fn error_mentions(w: &mut ApiWorld, text: String) {
    let wanted = w.expand(&text);
    let body = w.body();
    let message = at(&body, "/error/message").as_str().unwrap_or_default();
    assert!(message.contains(&wanted), "the error message {message:?} does not mention {wanted:?}");
}

#[then("the response is:")]
async fn response_is(w: &mut ApiWorld, step: &Step) {
    let expected = w.expected_json(step.docstring.as_deref().unwrap_or_default());
    let actual = w.body();
    assert_eq!(actual, expected, "response body");
}

#[then("the response contains:")]
async fn response_contains(w: &mut ApiWorld, step: &Step) {
    let expected = w.expected_json(step.docstring.as_deref().unwrap_or_default());
    let actual = w.body();
    assert!(contains(&actual, &expected), "the response {actual} does not contain {expected}");
}

#[then(regex = r#"^the response field "([^"]*)" is (.+)$"#)]
async fn field_is(w: &mut ApiWorld, pointer: String, expected: String) {
    let expected = w.expected_json(&expected);
    let body = w.body();
    assert_eq!(at(&body, &pointer), &expected, "field {pointer} of {body}");
}

#[then(regex = r#"^the response has no field "([^"]*)"$"#)]
async fn no_field(w: &mut ApiWorld, pointer: String) {
    let body = w.body();
    assert!(body.pointer(&pointer).is_none(), "the response has {pointer}: {body}");
}

#[then(regex = r#"^the response does not mention "([^"]*)"$"#)]
async fn not_mentioned(w: &mut ApiWorld, text: String) {
    let text = w.expand(&text);
    let body = w.response().text();
    assert!(!body.contains(&text), "the response mentions {text:?}: {body}");
}

#[then(regex = r#"^the response list (contains|does not contain) "([^"]*)"$"#)]
async fn list_contains(w: &mut ApiWorld, verb: String, wanted: String) {
    let wanted = w.expand(&wanted);
    let body = w.body();
    let list = body.as_array().unwrap_or_else(|| panic!("the response is not a list: {body}"));
    let found = list.iter().any(|item| item_is(item, &wanted));
    assert_eq!(found, verb == "contains", "{wanted:?} in {body}");
}

#[then(regex = r"^the response list has (\d+) entr(?:y|ies)$")]
async fn list_length(w: &mut ApiWorld, n: usize) {
    let body = w.body();
    let list = body.as_array().unwrap_or_else(|| panic!("the response is not a list: {body}"));
    assert_eq!(list.len(), n, "entries in {body}");
}

#[then("the response list has an entry with:")]
async fn list_has_entry(w: &mut ApiWorld, step: &Step) {
    let expected = w.expected_json(step.docstring.as_deref().unwrap_or_default());
    let body = w.body();
    let list = body.as_array().unwrap_or_else(|| panic!("the response is not a list: {body}"));
    assert!(list.iter().any(|item| contains(item, &expected)), "no entry of {body} contains {expected}");
}

#[then(regex = r#"^the response header "([^"]+)" is "([^"]*)"$"#)]
async fn header_is(w: &mut ApiWorld, name: String, value: String) {
    assert_eq!(w.response().header(&name), Some(value.as_str()), "header {name}");
}

#[then(regex = r#"^the response header "([^"]+)" starts with "([^"]*)"$"#)]
async fn header_starts(w: &mut ApiWorld, name: String, prefix: String) {
    let value = w.response().header(&name).unwrap_or_else(|| panic!("no {name} header")).to_string();
    assert!(value.starts_with(&prefix), "header {name}: {value:?}");
}

// ---------------------------------------------------------------------------

/// Cucumber's options from the command line; unknown arguments (e.g. a
/// `--nocapture` meant for libtest tests in the same `cargo test`) are ignored.
fn cli_options<O: clap::Parser + Default>() -> O {
    match O::try_parse() {
        Ok(options) => options,
        Err(err)
            if matches!(err.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) =>
        {
            let _ = err.print();
            std::process::exit(0);
        }
        Err(err) => {
            eprintln!("features: ignoring the command line ({})", err.kind());
            O::default()
        }
    }
}

struct Totals {
    scenarios_passed: usize,
    scenarios_failed: usize,
    failed_runs: Vec<String>,
}

/// Runs the scenarios with (`hosts` set) or without the `@hosts` tag.
async fn run(name: &str, stack: &Stack, hosts: Option<Arc<TestHosts>>, kube: &Arc<FakeKube>, totals: &mut Totals) {
    println!("\n==> {name}: {}", stack.description);
    let want_hosts = hosts.is_some();
    *TARGET.lock().unwrap_or_else(PoisonError::into_inner) =
        Some(Arc::new(Target { client: stack.client.clone(), users: stack.users.clone(), hosts, kube: kube.clone() }));
    let started = Instant::now();
    let features = concat!(env!("CARGO_MANIFEST_DIR"), "/features");
    // cucumber replaces the run's own filter with `--name`/`--tags` when they
    // are given; apply them here instead, on top of the `@hosts` split.
    let mut options: cucumber::cli::Opts<_, _, _, cucumber::cli::Empty> = cli_options();
    let by_name = options.re_filter.take();
    let by_tags = options.tags_filter.take();
    let writer = ApiWorld::cucumber()
        .max_concurrent_scenarios(16)
        .fail_on_skipped()
        .with_cli(options)
        .filter_run(features, move |feature, rule, scenario| {
            let tags = || feature.tags.iter().chain(rule.into_iter().flat_map(|r| &r.tags)).chain(&scenario.tags);
            let tagged = tags().any(|t| t == HOSTS_TAG);
            tagged == want_hosts
                && by_name.as_ref().is_none_or(|name| name.is_match(&scenario.name))
                && by_tags.as_ref().is_none_or(|expr| expr.eval(tags()))
        })
        .await;
    let scenarios = writer.inner_writer().scenarios_stats();
    let steps = writer.inner_writer().steps_stats();
    println!(
        "==> {name}: {} scenarios ({} passed, {} failed), {} steps ({} passed, {} failed) in {:.1}s",
        scenarios.passed + scenarios.failed + scenarios.skipped,
        scenarios.passed,
        scenarios.failed,
        steps.passed + steps.failed + steps.skipped,
        steps.passed,
        steps.failed,
        started.elapsed().as_secs_f64()
    );
    totals.scenarios_passed += scenarios.passed;
    totals.scenarios_failed += scenarios.failed + scenarios.skipped;
    if writer::Stats::execution_has_failed(&writer) {
        totals.failed_runs.push(name.to_string());
    }
    *TARGET.lock().unwrap_or_else(PoisonError::into_inner) = None;
}

async fn main_async() -> anyhow::Result<ExitCode> {
    let bins = Binaries::locate()?;
    let started = Instant::now();
    let mut totals = Totals { scenarios_passed: 0, scenarios_failed: 0, failed_runs: Vec::new() };

    let hosts = TestHosts::from_env()?;
    // One fake Kubernetes API for the whole run; the server reviews bearer
    // tokens against it (scenarios use tokens and node names of their own).
    let kube = Arc::new(FakeKube::start().await?);
    let auth = [format!(
        "kubetokenreview:server_url={},cache_seconds=0,read_only_groups=viewers,read_write_groups=operators",
        kube.url()
    )];

    let stack = Stack::multi_process(&bins, false, &auth).await?;
    run("multi-process", &stack, None, &kube, &mut totals).await;
    stack.shutdown().await?;
    let stack = Stack::multi_process(&bins, true, &auth).await?;
    run("multi-process, @hosts", &stack, Some(hosts.clone()), &kube, &mut totals).await;
    stack.shutdown().await?;

    let stack = Stack::all_in_one(&bins, false, &auth).await?;
    run("all-in-one", &stack, None, &kube, &mut totals).await;
    stack.shutdown().await?;
    let stack = Stack::all_in_one(&bins, true, &auth).await?;
    run("all-in-one, @hosts", &stack, Some(hosts), &kube, &mut totals).await;
    stack.shutdown().await?;

    println!("\n==> both deployments in {:.1}s", started.elapsed().as_secs_f64());
    println!("features: {} passed, {} failed", totals.scenarios_passed, totals.scenarios_failed);
    if totals.failed_runs.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("features: failures in {}", totals.failed_runs.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(main_async()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("features: {err:#}");
            ExitCode::FAILURE
        }
    }
}
