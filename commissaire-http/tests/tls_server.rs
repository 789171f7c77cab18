//! The real `commissaire-server` binary over HTTPS, in all-in-one mode, spoken to
//! with the real `curl`: certificates are made at test time with rcgen.
//!
//! * one PEM file (certificate + key) and a client CA, with the
//!   `httpauthclientcert` plugin: a certificate from that CA gets in (GET and
//!   PUT), no certificate or one from another CA is refused at the handshake;
//! * certificate and key in separate files, no client CA, basic authentication
//!   (the admin that all-in-one creates on first start): `curl --cacert` works.
//!
//! The server listens on port 0; its URL is read from its first output lines
//! and the port polled until it accepts. A Drop guard kills the process.

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use rcgen::ExtendedKeyUsagePurpose;

#[path = "support/certs.rs"]
mod certs;
use certs::{ca, leaf};

const STARTUP: Duration = Duration::from_secs(60);

struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    server_single: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client: (PathBuf, PathBuf),
    rogue: (PathBuf, PathBuf),
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        path
    };
    let ca1 = ca("Commissaire Test CA");
    let ca2 = ca("Some Other CA");
    let (server_cert, server_key) =
        leaf(&ca1, "localhost", &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf(&ca1, "node-1.example", &[], ExtendedKeyUsagePurpose::ClientAuth);
    // Same name, wrong issuer.
    let (rogue_cert, rogue_key) = leaf(&ca2, "node-1.example", &[], ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca: write("ca.pem", &ca1.pem()),
        server_single: write("server.pem", &format!("{server_cert}{server_key}")),
        server_cert: write("server-cert.pem", &server_cert),
        server_key: write("server-key.pem", &server_key),
        client: (write("client.pem", &client_cert), write("client-key.pem", &client_key)),
        rogue: (write("rogue.pem", &rogue_cert), write("rogue-key.pem", &rogue_key)),
        dir,
    }
}

/// A running `commissaire-server`; killed when dropped.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    /// What it printed before it listened.
    output: Vec<String>,
    log: PathBuf,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- commissaire-server output ---\n{}\n--- log ---\n{log}", self.output.join("\n"));
        }
    }
}

fn start_server(work: &Path, name: &str, args: &[&std::ffi::OsStr]) -> ServerProcess {
    let data_dir = work.join(format!("{name}-data"));
    let log = work.join(format!("{name}.log"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_commissaire-server"))
        .args(["--no-config-file", "--all-in-one", "--listen-port", "0", "--data-dir"])
        .arg(&data_dir)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start commissaire-server");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut server = ServerProcess { child, addr: "127.0.0.1:1".parse().expect("addr"), output: Vec::new(), log };
    let deadline = Instant::now() + STARTUP;
    // "Commissaire is listening on https://127.0.0.1:PORT/api/v0/"
    let addr = loop {
        assert!(Instant::now() < deadline, "commissaire-server did not say where it listens within {STARTUP:?}");
        if let Some(status) = server.child.try_wait().expect("try_wait") {
            panic!("commissaire-server exited early ({status})");
        }
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                server.output.push(line.clone());
                if let Some(rest) = line.split("is listening on https://").nth(1) {
                    let host_port = rest.split('/').next().unwrap_or_default();
                    break host_port.parse::<SocketAddr>().expect("listening address");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("commissaire-server closed its output"),
        }
    };
    server.addr = addr;
    // Poll the port until it accepts.
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{addr} does not accept connections");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || while lines.recv().is_ok() {});
    server
}

struct Curl {
    /// `None` when no HTTP response came back (e.g. the handshake failed).
    status: Option<u16>,
    body: String,
    stderr: String,
}

/// Runs curl against the server: `extra` are curl options, `path` the API path.
fn curl(server: &ServerProcess, extra: &[&std::ffi::OsStr], path: &str) -> Curl {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("https://{}{path}", server.addr))
        .output()
        .expect("the curl binary is needed for this test (apt-get install -y curl)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    let status = code.trim().parse::<u16>().ok().filter(|c| *c != 0);
    Curl { status, body: body.to_string(), stderr: String::from_utf8_lossy(&output.stderr).into_owned() }
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

#[test]
fn client_certificates_from_the_configured_ca_are_the_only_way_in() {
    let pki = pki();
    let server = start_server(
        pki.dir.path(),
        "clientcert",
        &[
            os("--tls-pemfile"),
            pki.server_single.as_os_str(),
            os("--tls-clientverifyfile"),
            pki.ca.as_os_str(),
            os("--authentication-plugin"),
            os("httpauthclientcert:role=read-write"),
        ],
    );
    let ca = [os("--cacert"), pki.ca.as_os_str()];
    let good: Vec<&std::ffi::OsStr> =
        [&ca[..], &[os("--cert"), pki.client.0.as_os_str(), os("--key"), pki.client.1.as_os_str()]].concat();

    let r = curl(&server, &good, "/api/v0/networks");
    assert_eq!(r.status, Some(200), "GET /api/v0/networks: {} {}", r.body, r.stderr);
    let networks: serde_json::Value = serde_json::from_str(&r.body).expect("JSON list");
    assert!(networks.is_array(), "{networks}");

    let put: Vec<&std::ffi::OsStr> = [
        &good[..],
        &[
            os("-X"),
            os("PUT"),
            os("-H"),
            os("Content-Type: application/json"),
            os("--data"),
            os(r#"{"type": "flannel_etcd"}"#),
        ],
    ]
    .concat();
    let r = curl(&server, &put, "/api/v0/network/tls-net");
    assert_eq!(r.status, Some(201), "PUT /api/v0/network/tls-net: {} {}", r.body, r.stderr);
    let r = curl(&server, &good, "/api/v0/network/tls-net");
    assert_eq!(r.status, Some(200), "{} {}", r.body, r.stderr);
    let network: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(network["name"], "tls-net");

    // No client certificate: refused by a TLS alert, no HTTP at all.
    let r = curl(&server, &ca, "/api/v0/networks");
    assert_eq!(r.status, None, "served without a client certificate: {}", r.body);
    assert!(r.stderr.to_lowercase().contains("alert"), "{}", r.stderr);

    // Same subject, another CA: refused.
    let rogue: Vec<&std::ffi::OsStr> =
        [&ca[..], &[os("--cert"), pki.rogue.0.as_os_str(), os("--key"), pki.rogue.1.as_os_str()]].concat();
    let r = curl(&server, &rogue, "/api/v0/networks");
    assert_eq!(r.status, None, "served a certificate from another CA: {}", r.body);
    assert!(r.stderr.to_lowercase().contains("alert"), "{}", r.stderr);

    // Basic credentials are no way around the certificate.
    let r = curl(&server, &[&ca[..], &[os("-u"), os("admin:admin")]].concat(), "/api/v0/networks");
    assert_eq!(r.status, None, "served basic auth without a certificate: {}", r.body);

    // And the server is still serving after the refusals.
    let r = curl(&server, &good, "/api/v0/networks");
    assert_eq!(r.status, Some(200), "{} {}", r.body, r.stderr);
    let networks: serde_json::Value = serde_json::from_str(&r.body).expect("JSON list");
    assert!(networks.as_array().is_some_and(|n| n.contains(&serde_json::json!("tls-net"))), "{networks}");
}

#[test]
fn separate_key_file_without_client_ca_serves_basic_auth() {
    let pki = pki();
    let server = start_server(
        pki.dir.path(),
        "basic",
        &[os("--tls-pemfile"), pki.server_cert.as_os_str(), os("--tls-keyfile"), pki.server_key.as_os_str()],
    );
    // All-in-one without configured authentication creates `admin` and prints
    // its password once.
    let password = server
        .output
        .iter()
        .find_map(|l| l.split("Created user \"admin\" with password ").nth(1))
        .map(|p| p.trim().to_string())
        .unwrap_or_else(|| panic!("no generated admin password in {:?}", server.output));
    let credentials = format!("admin:{password}");
    let ca = [os("--cacert"), pki.ca.as_os_str()];
    let admin: Vec<&std::ffi::OsStr> = [&ca[..], &[os("-u"), os(&credentials)]].concat();

    let r = curl(&server, &admin, "/api/v0/networks");
    assert_eq!(r.status, Some(200), "GET /api/v0/networks: {} {}", r.body, r.stderr);

    let put: Vec<&std::ffi::OsStr> = [
        &admin[..],
        &[
            os("-X"),
            os("PUT"),
            os("-H"),
            os("Content-Type: application/json"),
            os("--data"),
            os(r#"{"type": "trivial"}"#),
        ],
    ]
    .concat();
    let r = curl(&server, &put, "/api/v0/containermanager/cm-tls");
    assert_eq!(r.status, Some(201), "{} {}", r.body, r.stderr);

    // Without credentials: 401 with a challenge, over TLS.
    let r = curl(&server, &[&ca[..], &[os("-i")]].concat(), "/api/v0/networks");
    assert_eq!(r.status, Some(401), "{} {}", r.body, r.stderr);
    assert!(r.body.to_lowercase().contains("www-authenticate: basic realm=\"commissaire\""), "{}", r.body);
    // A wrong password: 401.
    let r = curl(&server, &[&ca[..], &[os("-u"), os("admin:wrong")]].concat(), "/api/v0/networks");
    assert_eq!(r.status, Some(401), "{} {}", r.body, r.stderr);

    // curl does not trust the server without the CA.
    let r = curl(&server, &[os("-u"), os(&credentials)], "/api/v0/networks");
    assert_eq!(r.status, None, "trusted an unknown CA: {}", r.body);
}
