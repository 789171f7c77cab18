//! TLS end to end: certificates made at test time with rcgen, a tokio-rustls + hyper 1
//! server that answers the peer's certificate CN, and the real `curl` as the client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use commissaire_http::tls::{peer_common_name, server_config};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::ExtendedKeyUsagePurpose;

#[path = "support/certs.rs"]
mod certs;
use certs::{ca, leaf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_single: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).expect("write");
        p
    };
    let ca1 = ca("Commissaire Test CA");
    let ca2 = ca("Some Other CA");
    let (server_cert, server_key) =
        leaf(&ca1, "localhost", &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf(&ca1, "client-a", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let (rogue_cert, rogue_key) = leaf(&ca2, "client-a", &[], ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca: write("ca.pem", &ca1.pem()),
        server_single: write("server.pem", &format!("{server_cert}{server_key}")),
        server_cert: write("server-cert.pem", &server_cert),
        server_key: write("server-key.pem", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client-key.pem", &client_key),
        rogue_cert: write("rogue.pem", &rogue_cert),
        rogue_key: write("rogue-key.pem", &rogue_key),
        _dir: dir,
    }
}

/// Serves HTTPS on a random local port; every response body is the peer's CN (or `-`).
async fn serve(config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                break;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let cn = peer_common_name(tls.get_ref().1).unwrap_or_else(|| "-".to_string());
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let body = Bytes::from(cn.clone());
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    addr
}

struct CurlResult {
    ok: bool,
    body: String,
    stderr: String,
}

async fn curl(addr: SocketAddr, ca: Option<&Path>, client: Option<(&Path, &Path)>) -> CurlResult {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--http1.1"]);
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    cmd.arg(format!("https://{addr}/"));
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("curl did not finish")
        .expect("the curl binary is needed for this test (apt-get install -y curl)");
    CurlResult {
        ok: out.status.success(),
        body: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_pem_file_serves_https() {
    let pki = pki();
    let config = server_config(&pki.server_single, None, None).expect("single PEM config");
    let addr = serve(config).await;

    let r = curl(addr, Some(&pki.ca), None).await;
    assert!(r.ok, "curl failed: {}", r.stderr);
    assert_eq!(r.body, "-");

    // Without the CA, curl does not trust the server.
    let r = curl(addr, None, None).await;
    assert!(!r.ok, "curl trusted an unknown CA: {}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_certificate_and_key_files() {
    let pki = pki();
    let config = server_config(&pki.server_cert, Some(&pki.server_key), None).expect("separate files");
    let addr = serve(config).await;
    let r = curl(addr, Some(&pki.ca), None).await;
    assert!(r.ok, "curl failed: {}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_verified() {
    let pki = pki();
    let config = server_config(&pki.server_single, None, Some(&pki.ca)).expect("config with client CA");
    let addr = serve(config).await;

    // No client certificate: refused at the handshake.
    let r = curl(addr, Some(&pki.ca), None).await;
    assert!(!r.ok, "served without a client certificate: {:?}", r.body);
    assert!(r.body.is_empty());
    // Refused by a TLS alert (certificate required / unknown CA), not by HTTP.
    assert!(r.stderr.to_lowercase().contains("alert"), "{}", r.stderr);

    // A certificate from the client CA: accepted, and the server sees its CN.
    let r = curl(addr, Some(&pki.ca), Some((&pki.client_cert, &pki.client_key))).await;
    assert!(r.ok, "curl failed: {}", r.stderr);
    assert_eq!(r.body, "client-a");

    // Same CN, but issued by another CA: refused.
    let r = curl(addr, Some(&pki.ca), Some((&pki.rogue_cert, &pki.rogue_key))).await;
    assert!(!r.ok, "served a certificate from another CA: {:?}", r.body);
    assert!(r.body.is_empty());
    // Refused by a TLS alert (certificate required / unknown CA), not by HTTP.
    assert!(r.stderr.to_lowercase().contains("alert"), "{}", r.stderr);
}
