//! The REST server on the all-in-one services (without host services), with
//! HTTP Basic users, on a free loopback port: what the REST tests talk to.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use commissaire_http::{
    allinone::{self, AllInOne},
    api::Api,
    auth::{Authenticator, PluginSpec},
    server::{self, AppState},
};
use serde_json::{Map, json};
use tokio::{net::TcpListener, sync::oneshot};

pub struct TestServer {
    pub addr: SocketAddr,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<()>,
    pub aio: AllInOne,
    _dir: tempfile::TempDir,
}

/// Starts the server with a read-write `admin` and a read-only `viewer`
/// (name, password each).
pub async fn start_server(admin: (&str, &str), viewer: (&str, &str)) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("users.json");
    let hash = |password: &str| bcrypt::hash(password, 4).expect("bcrypt");
    let users_doc = json!({
        admin.0: {"hash": hash(admin.1), "role": "read-write"},
        viewer.0: {"hash": hash(viewer.1), "role": "read-only"},
    });
    std::fs::write(&users, users_doc.to_string()).expect("write users file");
    let mut options = Map::new();
    options.insert("filepath".into(), json!(users));
    let spec = PluginSpec { name: "httpbasicauth".into(), options };
    let aio = allinone::start(
        &dir.path().join("data"),
        vec![spec],
        allinone::Options { host_services: false, ..Default::default() },
    )
    .await
    .expect("start the all-in-one services");
    let auth = Authenticator::new(aio.plugins.clone()).expect("authenticator");
    let state = Arc::new(AppState::new(Api::new(aio.bus.clone()), auth));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(listener, None, state, async move {
        let _ = stopped.await;
    }));
    TestServer { addr, stop: Some(stop), task, aio, _dir: dir }
}

impl TestServer {
    /// Stops the server (it must stop within 30 s) and the services.
    #[allow(dead_code)] // not every test binary stops it this way
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("the server did not stop")
            .expect("the server task panicked");
        for service in std::mem::take(&mut self.aio.services) {
            service.shutdown().await;
        }
    }
}
