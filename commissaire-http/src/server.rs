//! The HTTP front: accept (plain or TLS), authenticate, route, authorise, read
//! the body within its limits, call the handler, answer JSON.
//!
//! Order of checks, so nothing leaks to an anonymous client: authentication
//! (401, or 429 when an address keeps failing) → route (404) → verb (405 with
//! `Allow`) → role (403) → body (413, 415, 400) → handler.

use std::{
    collections::HashSet,
    convert::Infallible,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    api::{Api, ApiError, ApiResult},
    auth::{Authenticator, Credentials, Identity, Outcome, Role},
    router::{self, Route},
};

/// Liveness probe: the process serves HTTP.
pub const HEALTHZ: &str = "/healthz";
/// Readiness probe: the bus answers and the storage service reaches every store.
pub const READYZ: &str = "/readyz";
/// The OpenAPI 3.1 document of the API (docs/openapi.json, built in), served
/// without authentication: it describes routes, never data.
pub const OPENAPI: &str = "/api/v0/openapi.json";
/// The document served at [`OPENAPI`].
pub const OPENAPI_DOCUMENT: &str = include_str!("../../docs/openapi.json");
/// The process's metrics (Prometheus/OpenMetrics text), served without
/// authentication like the probes: its labels never name a host or a user.
pub const METRICS: &str = "/metrics";

/// Request bodies above this are refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Everything a request needs, shared by all connections.
pub struct AppState {
    pub api: Api,
    pub auth: Authenticator,
    /// Exact paths that skip authentication.
    pub self_auth: HashSet<String>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Cancelled when the server stops: open event streams end then, so the
    /// graceful shutdown does not wait for them.
    pub stopping: CancellationToken,
}

/// A response body: a whole JSON document, or an event stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

impl AppState {
    /// State without self-auth paths or trusted proxies (tests, benchmarks and
    /// embedders add them afterwards if they need them).
    pub fn new(api: Api, auth: Authenticator) -> Self {
        Self { api, auth, self_auth: HashSet::new(), trusted_proxies: Vec::new(), stopping: CancellationToken::new() }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"null".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(err: &ApiError) -> Response<Body> {
    json_response(err.status, &err.body())
}

/// The client's address: the TCP peer, or the first `X-Forwarded-For` entry
/// when the peer is a trusted proxy.
fn client_address(state: &AppState, peer: IpAddr, req: &Request<Incoming>) -> IpAddr {
    if !state.trusted_proxies.contains(&peer) {
        return peer;
    }
    req.headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|first| first.trim().parse().ok())
        .unwrap_or(peer)
}

/// Handles one request.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
    client_cn: Option<String>,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let client = client_address(&state, peer.ip(), &req);
    let (response, who, route_name) = respond(&state, req, client, client_cn.as_deref()).await;
    commissaire_core::metrics::get()
        .http_request(if route_name == "-" { "none" } else { route_name }, response.status().as_u16());
    tracing::info!(
        target: "commissaire::access",
        %method, route = route_name, status = response.status().as_u16(), user = who.as_deref().unwrap_or("-"),
        client = %client, elapsed_ms = started.elapsed().as_millis() as u64,
        "{method} {}", if route_name == "-" { "-" } else { path.as_str() }
    );
    response
}

async fn respond(
    state: &AppState,
    req: Request<Incoming>,
    client: IpAddr,
    client_cn: Option<&str>,
) -> (Response<Body>, Option<String>, &'static str) {
    let path = req.uri().path().to_string();
    // Probes for supervisors and load balancers: no credentials, nothing revealed.
    if req.method() == Method::GET && (path == HEALTHZ || path == READYZ) {
        let response = if path == HEALTHZ {
            json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
        } else {
            match state.api.ready().await {
                Ok(()) => json_response(StatusCode::OK, &serde_json::json!({"status": "ready"})),
                Err(err) => error_response(&err),
            }
        };
        return (response, None, if path == HEALTHZ { "healthz" } else { "readyz" });
    }
    if req.method() == Method::GET && path == OPENAPI {
        let mut response = Response::new(Full::new(Bytes::from_static(OPENAPI_DOCUMENT.as_bytes())).boxed_unsync());
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return (response, None, "openapi");
    }
    if req.method() == Method::GET && path == METRICS {
        state.api.refresh_gauges().await;
        let mut response = Response::new(Full::new(Bytes::from(commissaire_core::metrics::encode())).boxed_unsync());
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(commissaire_core::metrics::CONTENT_TYPE));
        return (response, None, "metrics");
    }
    let identity = if state.self_auth.contains(&path) {
        Identity { name: "self-auth".into(), role: Role::ReadWrite, method: "self-auth" }
    } else {
        let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let credentials = Credentials { authorization, client_cert_cn: client_cn, peer: client };
        match state.auth.authenticate(&credentials).await {
            Outcome::Authenticated(identity) => identity,
            Outcome::Denied { www_authenticate } => {
                let mut response = error_response(&ApiError::new(StatusCode::UNAUTHORIZED, "authentication required"));
                if let Ok(value) = HeaderValue::from_str(&www_authenticate) {
                    response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
                }
                return (response, None, "-");
            }
            Outcome::Throttled { retry_after } => {
                let mut response = error_response(&ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed logins from this address; try again later",
                ));
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
                return (response, None, "-");
            }
        }
    };
    let who = Some(identity.name.clone());
    let Some(route) = router::resolve(&path) else {
        return (error_response(&ApiError::not_found(format!("no such resource: {path}"))), who, "-");
    };
    let route_name = route.name();
    let method = req.method().clone();
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let audit = mutating.then(|| (route.target(&client.to_string()), route.cluster().map(str::to_string)));
    let response = routed(state, req, route, &identity, client).await;
    if let Some((target, cluster)) = audit {
        let record = crate::api::audit::AuditRecord {
            identity: &identity.name,
            role: identity.role.as_str(),
            method: method.as_str(),
            route: route_name,
            target,
            cluster,
            status: response.status().as_u16(),
            client,
        };
        state.api.audit(record).await;
    }
    (response, who, route_name)
}

/// A request whose route is known: verb (405) → role (403) → body → handler.
async fn routed(
    state: &AppState,
    req: Request<Incoming>,
    route: Route,
    identity: &Identity,
    client: IpAddr,
) -> Response<Body> {
    let method = req.method().clone();
    if !route.allowed().contains(&method) {
        let allow: Vec<&str> = route.allowed().iter().map(Method::as_str).collect();
        let mut response = error_response(&ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed here; allowed: {}", allow.join(", ")),
        ));
        if let Ok(value) = HeaderValue::from_str(&allow.join(", ")) {
            response.headers_mut().insert(header::ALLOW, value);
        }
        return response;
    }
    if identity.role == Role::ReadOnly && (method != Method::GET || route.is_secret() || route.needs_read_write()) {
        let message = if route.is_secret() {
            "read-only identities cannot read credentials"
        } else if route.needs_read_write() {
            "read-only identities cannot read the audit log"
        } else {
            "read-only identities may only read"
        };
        return error_response(&ApiError::new(StatusCode::FORBIDDEN, message));
    }
    if route == Route::Audit {
        return match state.api.list_audit(req.uri().query()).await {
            Ok(reply) => json_response(reply.status, &reply.body),
            Err(err) => error_response(&err),
        };
    }
    if route == Route::Events {
        return events_response(state, req.uri().query()).await;
    }
    let body = if method == Method::PUT {
        match read_body(req).await {
            Ok(body) => body,
            Err(err) => return error_response(&err),
        }
    } else {
        Map::new()
    };
    match dispatch(&state.api, route, &method, client, &body).await {
        Ok(reply) => json_response(reply.status, &reply.body),
        Err(err) => error_response(&err),
    }
}

/// `GET /api/v0/events`: a server-sent event stream (see [`crate::events`]).
async fn events_response(state: &AppState, query: Option<&str>) -> Response<Body> {
    let filter = match crate::events::Filter::parse(query) {
        Ok(filter) => filter,
        Err(message) => return error_response(&ApiError::bad_request(message)),
    };
    let hub = match state.api.events().await {
        Ok(hub) => hub,
        Err(err) => {
            tracing::error!(error = %err, "cannot subscribe to the bus for an event stream");
            return error_response(&ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the event stream is unavailable"));
        }
    };
    use tokio_stream::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(crate::events::pump(hub.subscribe(), filter, tx, state.stopping.clone()));
    let frames = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|bytes| Ok::<_, Infallible>(hyper::body::Frame::data(bytes)));
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Reads a PUT body: empty, or a JSON object sent as `application/json`, at
/// most [`MAX_BODY_BYTES`].
async fn read_body(req: Request<Incoming>) -> Result<Map<String, Value>, ApiError> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let bytes = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|err| {
            if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                too_large()
            } else {
                ApiError::bad_request("the request body could not be read")
            }
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let is_json = content_type.as_deref().is_some_and(|ct| {
        let media = ct.split(';').next().unwrap_or_default().trim();
        media.eq_ignore_ascii_case("application/json")
    });
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON sent as Content-Type: application/json",
        ));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
        Err(err) => Err(ApiError::bad_request(format!("the body is not valid JSON: {err}"))),
    }
}

fn too_large() -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {} bytes", MAX_BODY_BYTES))
}

/// Calls the handler of a route and verb that are known to match.
async fn dispatch(api: &Api, route: Route, method: &Method, client: IpAddr, body: &Map<String, Value>) -> ApiResult {
    use Route::*;
    match (route, method.clone()) {
        (Hosts, Method::GET) => api.list_hosts().await,
        (HostSelf, Method::PUT) => api.put_host(None, client, body).await,
        (Host { address }, Method::GET) => api.get_host(&address).await,
        (Host { address }, Method::PUT) => api.put_host(Some(&address), client, body).await,
        (Host { address }, Method::DELETE) => api.delete_host(&address).await,
        (HostCreds { address }, Method::GET) => api.get_host_creds(&address).await,
        (HostStatus { address }, Method::GET) => api.get_host_status(&address).await,
        (HostKey { address }, Method::GET) => api.get_host_key(&address).await,
        (HostKey { address }, Method::DELETE) => api.delete_host_key(&address).await,
        (Clusters, Method::GET) => api.list_clusters().await,
        (Cluster { name }, Method::GET) => api.get_cluster(&name).await,
        (Cluster { name }, Method::PUT) => api.put_cluster(&name, body).await,
        (Cluster { name }, Method::DELETE) => api.delete_cluster(&name).await,
        (ClusterHosts { name }, Method::GET) => api.list_cluster_members(&name).await,
        (ClusterHosts { name }, Method::PUT) => api.put_cluster_members(&name, body).await,
        (ClusterHost { name, host }, Method::GET) => api.check_cluster_member(&name, &host).await,
        // The route takes no body members: refuse any rather than ignore them.
        (ClusterHost { name, host }, Method::PUT) => match crate::api::reject_unknown(body, &[]) {
            Ok(()) => api.put_cluster_member(&name, &host).await,
            Err(err) => Err(err),
        },
        (ClusterHost { name, host }, Method::DELETE) => api.delete_cluster_member(&name, &host).await,
        (ClusterOperationControl { name, operation, control }, Method::PUT) => {
            match crate::api::reject_unknown(body, &[]) {
                Ok(()) => api.control_operation(&name, operation, control).await,
                Err(err) => Err(err),
            }
        }
        (ClusterOperation { name, operation }, Method::GET) => api.get_operation(&name, operation).await,
        (ClusterOperation { name, operation }, Method::PUT) => api.start_operation(&name, operation, body).await,
        (Networks, Method::GET) => api.list_networks().await,
        (Network { name }, Method::GET) => api.get_network(&name).await,
        (Network { name }, Method::PUT) => api.put_network(&name, body).await,
        (Network { name }, Method::DELETE) => api.delete_network(&name).await,
        (ContainerManagers, Method::GET) => api.list_container_managers().await,
        (ContainerManager { name }, Method::GET) => api.get_container_manager(&name).await,
        (ContainerManager { name }, Method::PUT) => api.put_container_manager(&name, body).await,
        (ContainerManager { name }, Method::DELETE) => api.delete_container_manager(&name).await,
        (route, method) => {
            Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", route.name())))
        }
    }
}

/// Serves connections from `listener` until `shutdown` resolves, then lets the
/// requests in progress finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Slow or idle clients may not hold a connection's header read forever.
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(std::time::Duration::from_secs(30));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: keep serving the rest.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        match &acceptor {
            None => {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(state, req, peer, None).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls =
                        match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(err)) => {
                                tracing::info!(%peer, error = %err, "TLS handshake refused");
                                return;
                            }
                            Err(_) => return,
                        };
                    let client_cn = crate::tls::peer_common_name(tls.get_ref().1);
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        let client_cn = client_cn.clone();
                        async move { Ok::<_, Infallible>(handle(state, req, peer, client_cn).await) }
                    });
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    let _ = watcher.watch(conn).await;
                });
            }
        }
    }
    drop(listener);
    state.stopping.cancel();
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => tracing::warn!("gave up waiting for open connections"),
    }
}
