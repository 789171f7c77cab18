//! What the HTTP benchmarks share: the REST server under load, started in this process with an
//! HTTP Basic user, and the client side of one keep-alive HTTP/1.1 connection.
#![allow(dead_code)]

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use base64::Engine as _;
use commissaire_core::{
    bus::{Bus, ServeHandle},
    storage_client::StorageClient,
};
use commissaire_http::{
    allinone,
    api::Api,
    auth::{self, Authenticator, PluginSpec},
    server::{self, AppState},
};
use hyper::body::Body;
use hyper_util::rt::TokioIo;
use serde_json::{Map, json};
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle};

/// A REST server under load, with the bus services it runs on.
pub struct Served {
    pub addr: SocketAddr,
    pub storage: StorageClient,
    pub state: Arc<AppState>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    services: Vec<ServeHandle>,
}

impl Served {
    /// The REST server on 127.0.0.1 (a free port) in front of `bus`, authenticating with
    /// `plugins`; `services` are shut down with it.
    pub async fn start(bus: Arc<dyn Bus>, plugins: Vec<PluginSpec>, services: Vec<ServeHandle>) -> Served {
        let api = Api::new(bus);
        let storage = api.storage_client().clone();
        let state = Arc::new(AppState::new(api, Authenticator::new(plugins).expect("authenticator")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, None, state.clone(), async move {
            let _ = stopped.await;
        }));
        Served { addr, storage, state, stop, task, services }
    }

    /// The all-in-one server (in-process bus, embedded store under `dir`) without the host
    /// services, as `commissaire-server --no-host-services`.
    pub async fn all_in_one(dir: &Path, plugins: Vec<PluginSpec>) -> Served {
        let aio = allinone::start(dir, plugins, allinone::Options { host_services: false, ..Default::default() })
            .await
            .expect("all-in-one");
        Served::start(aio.bus, aio.plugins, aio.services).await
    }

    /// Stops the server (30 s for open connections to end), then its services.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        for service in self.services {
            service.shutdown().await;
        }
    }
}

/// The `httpbasicauth` plugin with one user (`role`: read-only or read-write), its bcrypt hash
/// in `dir/users.json`.
pub fn basic_auth_user(dir: &Path, user: &str, password: &str, role: &str) -> PluginSpec {
    let hash = auth::hash_password(password).expect("bcrypt");
    let users = dir.join("users.json");
    std::fs::write(&users, json!({user: {"hash": hash, "role": role}}).to_string()).expect("users file");
    let mut options = Map::new();
    options.insert("filepath".into(), json!(users));
    PluginSpec { name: "httpbasicauth".into(), options }
}

/// The `Authorization` header value for HTTP Basic.
pub fn basic_authorization(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// One HTTP/1.1 connection (TCP_NODELAY, as the server sets it), its driver spawned.
pub async fn connect<B>(addr: SocketAddr) -> Result<hyper::client::conn::http1::SendRequest<B>, String>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
