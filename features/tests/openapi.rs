//! Real responses of the running all-in-one server checked against
//! docs/openapi.json: for each request, the schema the document gives for the
//! route, the verb and the status answered (or its `default`) must accept the
//! body. The server also serves the document itself, unauthenticated.

use commissaire_features::{
    client::Request,
    stack::{ADMIN, Binaries, Stack, VIEWER},
};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

const DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// The document's path template matching a concrete path.
fn template_of<'a>(doc: &'a Value, path: &str) -> Option<&'a str> {
    let wanted: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    doc["paths"].as_object()?.keys().map(String::as_str).find(|template| {
        let parts: Vec<&str> = template.split('/').collect();
        parts.len() == wanted.len()
            && parts.iter().zip(&wanted).all(|(t, w)| (t.starts_with('{') && t.ends_with('}')) || t == w)
    })
}

/// Checks one response; returns the template it was checked against.
fn check(doc: &Value, method: &Method, path: &str, status: StatusCode, body: &Value) -> String {
    let bare = path.split('?').next().unwrap_or(path);
    let template = template_of(doc, bare).unwrap_or_else(|| panic!("{bare} is not in the document"));
    let operation = &doc["paths"][template][method.as_str().to_lowercase()];
    assert!(operation.is_object(), "{method} {template} is not documented");
    let responses = &operation["responses"];
    let response = responses
        .get(status.as_str())
        .or_else(|| responses.get("default"))
        .unwrap_or_else(|| panic!("{method} {template} answered {status}, which the document does not list"));
    let schema = &response["content"]["application/json"]["schema"];
    let mut root = schema.clone();
    if let Some(map) = root.as_object_mut() {
        map.insert("components".into(), doc["components"].clone());
    }
    let validator = jsonschema::validator_for(&root).expect("a valid schema");
    let errors: Vec<String> = validator.iter_errors(body).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{method} {path} → {status} {body}: {errors:?}");
    format!("{method} {template} {status}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_responses_match_the_document() {
    let doc: Value = serde_json::from_str(DOCUMENT).expect("JSON");
    let bins = Binaries::locate().expect("binaries");
    let stack = Stack::all_in_one(&bins, false, &[]).await.expect("all-in-one");
    let admin = &stack.users[ADMIN];
    let viewer = &stack.users[VIEWER];

    let served = stack.client.send(Request::new(Method::GET, "/api/v0/openapi.json")).await.expect("GET");
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(served.json().expect("JSON"), doc, "the server serves docs/openapi.json");

    let key = "bm90IGEga2V5";
    let steps: Vec<(Method, &str, Option<Value>, bool)> = vec![
        (Method::PUT, "/api/v0/network/n1", Some(json!({"type": "flannel_etcd"})), true),
        (Method::PUT, "/api/v0/containermanager/cm1", Some(json!({"type": "trivial"})), true),
        (Method::PUT, "/api/v0/cluster/c1", Some(json!({"network": "n1", "container_manager": "cm1"})), true),
        (Method::PUT, "/api/v0/host/10.0.0.1", Some(json!({"ssh_priv_key": key, "cluster": "c1"})), true),
        (Method::PUT, "/api/v0/host", Some(json!({"ssh_priv_key": key})), true),
        (Method::GET, "/api/v0/hosts", None, true),
        (Method::GET, "/api/v0/host/10.0.0.1", None, true),
        (Method::GET, "/api/v0/host/10.0.0.1/creds", None, true),
        (Method::GET, "/api/v0/host/10.0.0.1/creds", None, false),
        (Method::GET, "/api/v0/host/10.0.0.1/status", None, true),
        (Method::GET, "/api/v0/host/10.0.0.1/hostkey", None, true),
        (Method::GET, "/api/v0/clusters", None, true),
        (Method::GET, "/api/v0/cluster/c1", None, true),
        (Method::GET, "/api/v0/cluster/c1/hosts", None, true),
        (Method::GET, "/api/v0/cluster/c1/hosts/10.0.0.1", None, true),
        (Method::PUT, "/api/v0/cluster/c1/hosts", Some(json!({"old": ["10.0.0.1"], "new": ["10.0.0.1"]})), true),
        (Method::GET, "/api/v0/cluster/c1/restart", None, true),
        (Method::PUT, "/api/v0/cluster/c1/restart/pause", None, true),
        (Method::GET, "/api/v0/networks", None, true),
        (Method::GET, "/api/v0/network/n1", None, true),
        (Method::GET, "/api/v0/containermanagers", None, true),
        (Method::GET, "/api/v0/containermanager/cm1", None, true),
        (Method::PUT, "/api/v0/network/bad", Some(json!({"type": "nope"})), true),
        (Method::GET, "/api/v0/audit?target=cluster/c1", None, true),
        (Method::GET, "/api/v0/audit", None, false),
        (Method::DELETE, "/api/v0/cluster/c1/hosts/10.0.0.1", None, true),
        (Method::DELETE, "/api/v0/host/10.0.0.1/hostkey", None, true),
        (Method::DELETE, "/api/v0/host/10.0.0.1", None, true),
        (Method::DELETE, "/api/v0/cluster/c1", None, true),
        (Method::DELETE, "/api/v0/network/n1", None, true),
        (Method::GET, "/healthz", None, false),
        (Method::GET, "/readyz", None, false),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (method, path, body, as_admin) in steps {
        let mut request = Request::new(method.clone(), path);
        request = if as_admin { request.basic_auth(ADMIN, admin) } else { request.basic_auth(VIEWER, viewer) };
        if let Some(body) = body {
            request = request.json(body.to_string());
        }
        let response = stack.client.send(request).await.expect("request");
        assert!(response.status.as_u16() < 500, "{method} {path} answered {}: {}", response.status, response.text());
        let body = response.json().unwrap_or_else(|e| panic!("{method} {path}: not JSON: {e}"));
        seen.insert(check(&doc, &method, path, response.status, &body));
    }
    println!("{} (route, verb, status) combinations checked against the document:", seen.len());
    for line in &seen {
        println!("  {line}");
    }
    stack.shutdown().await.expect("shutdown");
}
