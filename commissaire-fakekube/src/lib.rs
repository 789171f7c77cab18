//! A fake Kubernetes API server for tests (never a dependency of the product).
//!
//! No Kubernetes API server can be installed where Commissaire is built and
//! tested, so the container-manager tests run the real `kube` client against
//! this server. It follows the real API's paths, verbs, status codes and object
//! shapes for what Commissaire uses:
//!
//! | verb | path | answer |
//! |---|---|---|
//! | GET | `/api/v1/nodes` | `NodeList` |
//! | POST | `/api/v1/nodes` | `201` Node; `409 AlreadyExists` |
//! | GET | `/api/v1/nodes/{name}` | Node; `404 NotFound` |
//! | PATCH | `/api/v1/nodes/{name}` | merge or strategic-merge patch (cordon is `spec.unschedulable`); `415` for other patch types |
//! | DELETE | `/api/v1/nodes/{name}` | `200` Status Success; `404` |
//! | GET | `/api/v1/pods?fieldSelector=spec.nodeName=N` (also `/api/v1/namespaces/{ns}/pods`) | `PodList` |
//! | DELETE | `/api/v1/namespaces/{ns}/pods/{name}` | `200` Pod; `404` |
//! | POST | `/api/v1/namespaces/{ns}/pods/{name}/eviction` | `201` Status Success (the pod is gone); `429 TooManyRequests` while a disruption budget blocks it; `404` |
//! | POST | `/apis/authentication.k8s.io/v1/tokenreviews` | `201` TokenReview with `status.authenticated` and `status.user` |
//!
//! Anything else is a `404 NotFound` `Status` (or `405 MethodNotAllowed` for a
//! known path with another verb). Errors are `Status` objects
//! (`{"kind":"Status","apiVersion":"v1","status":"Failure","code":…,"reason":…,"message":…}`).
//!
//! Every request is recorded in arrival order ([`FakeKube::requests`]) with its
//! verb, path, query and JSON body (never the `Authorization` header: only
//! whether one was sent), so tests can assert the order of calls. Nodes are
//! created `Ready`; [`FakeKube::set_node_ready`] changes that. When
//! [`FakeKube::require_token`] is set, a request without that bearer token gets
//! `401 Unauthorized`.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};

/// One request as the fake API server saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// Position in arrival order, from 0.
    pub seq: u64,
    /// `GET`, `POST`, `PATCH`, `DELETE`, …
    pub verb: String,
    pub path: String,
    /// The raw query string (percent-encoded), empty when absent.
    pub query: String,
    /// The `Content-Type` header, empty when absent.
    pub content_type: String,
    /// The body parsed as JSON (`Null` when empty or not JSON).
    pub body: Value,
    /// Whether an `Authorization` header was sent (its value is never kept).
    pub authorized: bool,
}

impl RecordedRequest {
    /// `"VERB path"`, handy for asserting sequences.
    pub fn line(&self) -> String {
        format!("{} {}", self.verb, self.path)
    }
}

/// How a pod answers eviction requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionBlock {
    /// Evictions succeed.
    None,
    /// The next `n` evictions answer `429`, then they succeed.
    Times(u32),
    /// Every eviction answers `429` (a PodDisruptionBudget that never allows one).
    Always,
}

#[derive(Debug, Clone)]
struct Pod {
    namespace: String,
    name: String,
    node: String,
    block: EvictionBlock,
    uid: u64,
}

#[derive(Debug, Clone)]
struct User {
    name: String,
    groups: Vec<String>,
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, Value>,
    pods: Vec<Pod>,
    tokens: HashMap<String, User>,
    required_token: Option<String>,
    requests: Vec<RecordedRequest>,
    next_uid: u64,
    resource_version: u64,
}

impl State {
    fn bump(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn uid(&mut self) -> String {
        self.next_uid += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.next_uid)
    }

    fn new_node(&mut self, name: &str, labels: Option<Value>) -> Value {
        let uid = self.uid();
        let rv = self.bump();
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "uid": uid,
                "resourceVersion": rv,
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": labels.unwrap_or_else(|| json!({"kubernetes.io/hostname": name})),
            },
            "spec": {},
            "status": {
                "conditions": [ready_condition(true)],
                "nodeInfo": {"kubeletVersion": "v1.33.0", "operatingSystem": "linux", "architecture": "amd64"},
                "addresses": [{"type": "InternalIP", "address": name}],
            },
        })
    }
}

fn ready_condition(ready: bool) -> Value {
    json!({
        "type": "Ready",
        "status": if ready { "True" } else { "False" },
        "reason": if ready { "KubeletReady" } else { "KubeletNotReady" },
        "message": if ready { "kubelet is posting ready status" } else { "kubelet stopped posting node status" },
        "lastHeartbeatTime": "2026-01-01T00:00:00Z",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    })
}

/// The fake API server. It stops when dropped.
pub struct FakeKube {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FakeKube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKube").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FakeKube {
    /// Starts the server on a free port of 127.0.0.1 (call from a tokio runtime).
    pub async fn start() -> std::io::Result<FakeKube> {
        Self::start_on("127.0.0.1:0".parse().map_err(std::io::Error::other)?).await
    }

    /// Starts the server on `addr` (port 0: any free port).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<FakeKube> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(FakeKube { addr, state, accept })
    }

    /// The API server's URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// `"VERB path"` of every request so far, in arrival order.
    pub fn request_lines(&self) -> Vec<String> {
        self.state().requests.iter().map(RecordedRequest::line).collect()
    }

    /// Forgets the requests recorded so far.
    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    /// Adds a `Ready` node (as a kubelet registering itself would).
    pub fn add_node(&self, name: &str) {
        let mut state = self.state();
        let node = state.new_node(name, None);
        state.nodes.insert(name.to_string(), node);
    }

    /// Removes a node and the pods on it (a fresh start for a reused name).
    pub fn forget_node(&self, name: &str) {
        let mut state = self.state();
        state.nodes.remove(name);
        state.pods.retain(|p| p.node != name);
    }

    /// The node's current object.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.state().nodes.get(name).cloned()
    }

    /// The names of the nodes.
    pub fn node_names(&self) -> Vec<String> {
        self.state().nodes.keys().cloned().collect()
    }

    /// Whether the node exists and has `spec.unschedulable: true`.
    pub fn is_cordoned(&self, name: &str) -> bool {
        self.node(name).is_some_and(|n| n.pointer("/spec/unschedulable") == Some(&Value::Bool(true)))
    }

    /// Sets `spec.unschedulable` of an existing node (as another operator would).
    pub fn set_unschedulable(&self, name: &str, unschedulable: bool) {
        let mut state = self.state();
        let rv = state.bump();
        if let Some(node) = state.nodes.get_mut(name) {
            node["spec"]["unschedulable"] = Value::Bool(unschedulable);
            node["metadata"]["resourceVersion"] = Value::String(rv);
        }
    }

    /// Sets the node's `Ready` condition to `True` or `False`.
    pub fn set_node_ready(&self, name: &str, ready: bool) {
        let mut state = self.state();
        let rv = state.bump();
        if let Some(node) = state.nodes.get_mut(name) {
            node["status"]["conditions"] = json!([ready_condition(ready)]);
            node["metadata"]["resourceVersion"] = Value::String(rv);
        }
    }

    /// Adds a running pod on a node.
    pub fn add_pod(&self, namespace: &str, name: &str, node: &str) {
        let mut state = self.state();
        state.next_uid += 1;
        let uid = state.next_uid;
        state.pods.retain(|p| !(p.namespace == namespace && p.name == name));
        state.pods.push(Pod {
            namespace: namespace.into(),
            name: name.into(),
            node: node.into(),
            block: EvictionBlock::None,
            uid,
        });
    }

    /// Makes evictions of a pod answer `429`, as when a PodDisruptionBudget
    /// allows no disruption.
    pub fn block_eviction(&self, namespace: &str, name: &str, block: EvictionBlock) {
        for pod in self.state().pods.iter_mut().filter(|p| p.namespace == namespace && p.name == name) {
            pod.block = block;
        }
    }

    /// The pods (`namespace/name`) still on a node.
    pub fn pods_on(&self, node: &str) -> Vec<String> {
        self.state().pods.iter().filter(|p| p.node == node).map(|p| format!("{}/{}", p.namespace, p.name)).collect()
    }

    /// Makes TokenReview accept `token` as `user` in `groups`.
    pub fn accept_token(&self, token: &str, user: &str, groups: &[&str]) {
        self.state()
            .tokens
            .insert(token.into(), User { name: user.into(), groups: groups.iter().map(|g| g.to_string()).collect() });
    }

    /// Requires `Authorization: Bearer <token>` on every request (`None`: anything goes).
    pub fn require_token(&self, token: Option<&str>) {
        self.state().required_token = token.map(str::to_string);
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Reply = Response<Full<Bytes>>;

fn reply(code: StatusCode, body: &Value) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = code;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

/// A `Status` object for a failure.
fn status(code: StatusCode, reason: &str, message: &str, details: Value) -> Reply {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if !details.is_null() {
        body["details"] = details;
    }
    reply(code, &body)
}

fn not_found(kind: &str, name: &str) -> Reply {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{kind} \"{name}\" not found"),
        json!({"name": name, "kind": kind}),
    )
}

fn success(kind: &str, name: &str, code: StatusCode) -> Reply {
    reply(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "kind": kind},
            "code": code.as_u16(),
        }),
    )
}

fn method_not_allowed() -> Reply {
    status(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        Value::Null,
    )
}

fn pod_json(pod: &Pod) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": format!("00000000-0000-4000-9000-{:012x}", pod.uid),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{}-rs", pod.name), "uid": "00000000-0000-4000-a000-000000000001", "controller": true}],
        },
        "spec": {"nodeName": pod.node, "containers": [{"name": "main", "image": "registry.invalid/app:1"}]},
        "status": {"phase": "Running"},
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(map) = target {
                for (key, value) in fields {
                    if value.is_null() {
                        map.remove(key);
                    } else {
                        merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

async fn handle(state: &Arc<Mutex<State>>, req: Request<Incoming>) -> Reply {
    let verb = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let header =
        |name: hyper::header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_type = header(hyper::header::CONTENT_TYPE).unwrap_or_default();
    let authorization = header(hyper::header::AUTHORIZATION);
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);

    let mut st = lock(state);
    let seq = st.requests.len() as u64;
    st.requests.push(RecordedRequest {
        seq,
        verb: verb.to_string(),
        path: path.clone(),
        query: query.clone(),
        content_type: content_type.clone(),
        body: body.clone(),
        authorized: authorization.is_some(),
    });
    if let Some(required) = &st.required_token {
        let presented = authorization.as_deref().and_then(|h| h.strip_prefix("Bearer "));
        if presented != Some(required.as_str()) {
            return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized", Value::Null);
        }
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (segments.as_slice(), &verb) {
        (["api", "v1", "nodes"], &Method::GET) => {
            let items: Vec<Value> = st.nodes.values().cloned().collect();
            let rv = st.resource_version.to_string();
            reply(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": rv}, "items": items}),
            )
        }
        (["api", "v1", "nodes"], &Method::POST) => {
            let Some(name) = body.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string) else {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "Node \"\" is invalid: metadata.name: Required value: name or generateName is required",
                    Value::Null,
                );
            };
            if st.nodes.contains_key(&name) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("nodes \"{name}\" already exists"),
                    json!({"name": name, "kind": "nodes"}),
                );
            }
            let labels = body.pointer("/metadata/labels").cloned();
            let mut node = st.new_node(&name, labels);
            if let Some(spec) = body.get("spec").filter(|s| s.is_object()) {
                node["spec"] = spec.clone();
            }
            st.nodes.insert(name, node.clone());
            reply(StatusCode::CREATED, &node)
        }
        (["api", "v1", "nodes"], _) => method_not_allowed(),
        (["api", "v1", "nodes", name], &Method::GET) => match st.nodes.get(*name) {
            Some(node) => reply(StatusCode::OK, node),
            None => not_found("nodes", name),
        },
        (["api", "v1", "nodes", name], &Method::PATCH) => {
            let kind = content_type.split(';').next().unwrap_or("").trim();
            if kind != "application/merge-patch+json" && kind != "application/strategic-merge-patch+json" {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    &format!(
                        "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {kind:?})"
                    ),
                    Value::Null,
                );
            }
            let rv = st.bump();
            match st.nodes.get_mut(*name) {
                Some(node) => {
                    merge_patch(node, &body);
                    node["metadata"]["resourceVersion"] = Value::String(rv);
                    reply(StatusCode::OK, node)
                }
                None => not_found("nodes", name),
            }
        }
        (["api", "v1", "nodes", name], &Method::DELETE) => match st.nodes.remove(*name) {
            Some(_) => success("nodes", name, StatusCode::OK),
            None => not_found("nodes", name),
        },
        (["api", "v1", "nodes", _], _) => method_not_allowed(),
        (["api", "v1", "pods"], &Method::GET) => pod_list(&st, None, &query),
        (["api", "v1", "namespaces", ns, "pods"], &Method::GET) => pod_list(&st, Some(ns), &query),
        (["api", "v1", "namespaces", ns, "pods", name], &Method::GET) => {
            match st.pods.iter().find(|p| p.namespace == *ns && p.name == *name) {
                Some(pod) => reply(StatusCode::OK, &pod_json(pod)),
                None => not_found("pods", name),
            }
        }
        (["api", "v1", "namespaces", ns, "pods", name], &Method::DELETE) => {
            match st.pods.iter().position(|p| p.namespace == *ns && p.name == *name) {
                Some(i) => {
                    let pod = st.pods.remove(i);
                    reply(StatusCode::OK, &pod_json(&pod))
                }
                None => not_found("pods", name),
            }
        }
        (["api", "v1", "namespaces", ns, "pods", name, "eviction"], &Method::POST) => {
            let Some(i) = st.pods.iter().position(|p| p.namespace == *ns && p.name == *name) else {
                return not_found("pods", name);
            };
            let blocked = match st.pods[i].block {
                EvictionBlock::None => false,
                EvictionBlock::Always => true,
                EvictionBlock::Times(0) => false,
                EvictionBlock::Times(n) => {
                    st.pods[i].block = EvictionBlock::Times(n - 1);
                    true
                }
            };
            if blocked {
                return status(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                    json!({"causes": [{"reason": "DisruptionBudget", "message": "The disruption budget app-pdb needs 1 healthy pods and has 1 currently"}]}),
                );
            }
            st.pods.remove(i);
            success("pods", name, StatusCode::CREATED)
        }
        (["apis", "authentication.k8s.io", "v1", "tokenreviews"], &Method::POST) => {
            let token = body.pointer("/spec/token").and_then(Value::as_str).unwrap_or("");
            let mut review = json!({
                "kind": "TokenReview",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": null},
                "spec": {"token": token},
            });
            review["status"] = match st.tokens.get(token) {
                Some(user) => json!({
                    "authenticated": true,
                    "user": {"username": user.name, "uid": format!("uid-{}", user.name), "groups": user.groups},
                }),
                None => json!({"user": {}, "error": "token not valid"}),
            };
            reply(StatusCode::CREATED, &review)
        }
        _ => status(StatusCode::NOT_FOUND, "NotFound", "the server could not find the requested resource", Value::Null),
    }
}

fn pod_list(st: &State, namespace: Option<&str>, query: &str) -> Reply {
    let node = query_param(query, "fieldSelector")
        .and_then(|s| s.split(',').find_map(|term| term.strip_prefix("spec.nodeName=").map(str::to_string)));
    let items: Vec<Value> = st
        .pods
        .iter()
        .filter(|p| namespace.is_none_or(|ns| p.namespace == ns))
        .filter(|p| node.as_deref().is_none_or(|n| p.node == n))
        .map(pod_json)
        .collect();
    reply(
        StatusCode::OK,
        &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": st.resource_version.to_string()}, "items": items}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_sets_and_removes() {
        let mut node = json!({"spec": {"unschedulable": true, "taints": []}, "metadata": {"name": "a"}});
        merge_patch(&mut node, &json!({"spec": {"unschedulable": null}}));
        assert_eq!(node, json!({"spec": {"taints": []}, "metadata": {"name": "a"}}));
        merge_patch(&mut node, &json!({"spec": {"unschedulable": true}}));
        assert_eq!(node["spec"]["unschedulable"], json!(true));
    }

    #[test]
    fn field_selectors_are_decoded() {
        assert_eq!(
            query_param("fieldSelector=spec.nodeName%3D10.0.0.1&limit=5", "fieldSelector").as_deref(),
            Some("spec.nodeName=10.0.0.1")
        );
        assert_eq!(query_param("a=b", "fieldSelector"), None);
    }
}
