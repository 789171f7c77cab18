//! The HTTP(S) client: one connection per request, endpoints tried in order.
//!
//! A request goes to the endpoint that answered last (the first one at the
//! start). When the connection to an endpoint cannot be made (refused, no
//! route, timeout, TLS handshake failure) the next endpoint is tried and a
//! line saying so goes to standard error; once connected, a request is never
//! sent twice (it may have been applied). When every endpoint failed the
//! error lists them all.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock, atomic::AtomicUsize, atomic::Ordering},
    time::Duration,
};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, body::Incoming, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    config::{Auth, Config},
    error::{Error, Result},
};

/// How long connecting to one endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may take once connected.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One server URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As configured, without a trailing `/`.
    pub url: String,
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix (usually empty), without a trailing `/`.
    pub base: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim().trim_end_matches('/');
        let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => return Err(format!("scheme {other:?}: only http and https are supported")),
            None => return Err("no scheme (http:// or https://)".into()),
        };
        let authority = uri.authority().ok_or("no host")?;
        if authority.as_str().contains('@') {
            return Err("credentials belong in username/password, not in the URL".into());
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err("no host".into());
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        if uri.query().is_some() {
            return Err("a query string has no place in an endpoint".into());
        }
        let base = uri.path().trim_end_matches('/').to_string();
        Ok(Self { url: url.to_string(), https, host, port, base })
    }

    fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let default = if self.https { 443 } else { 80 };
        if self.port == default { host } else { format!("{host}:{}", self.port) }
    }
}

/// A complete answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON (`null` when empty).
    pub fn json(&self) -> Result<Value> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::Transport(format!("the server's answer is not JSON ({e}): {}", self.text_excerpt())))
    }

    fn text_excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        if text.chars().count() > 200 {
            format!("{}…", text.chars().take(200).collect::<String>())
        } else {
            text.into()
        }
    }

    /// The error this answer stands for: the server's own message when it
    /// sent `{"error": {"message": …}}`.
    pub fn error(&self) -> Error {
        let message = serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| {
                let reason = hyper::StatusCode::from_u16(self.status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("error")
                    .to_string();
                let text = self.text_excerpt();
                if text.is_empty() { reason } else { format!("{reason}: {text}") }
            });
        Error::Server { status: self.status, message }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Talks to the configured endpoints.
#[derive(Debug)]
pub struct Client {
    endpoints: Vec<Endpoint>,
    current: AtomicUsize,
    auth: Auth,
    ca_file: Option<PathBuf>,
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
}

impl Client {
    pub fn new(config: &Config) -> Result<Self> {
        if config.endpoints.is_empty() {
            return Err(Error::usage("no endpoint is configured (\"endpoint\" in the configuration file)"));
        }
        let endpoints = config
            .endpoints
            .iter()
            .map(|url| Endpoint::parse(url).map_err(|e| Error::usage(format!("endpoint {url:?}: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            endpoints,
            current: AtomicUsize::new(0),
            auth: config.auth.clone(),
            ca_file: config.ca_file.clone(),
            tls: OnceLock::new(),
        })
    }

    /// The endpoint requests go to now.
    pub fn current_endpoint(&self) -> &Endpoint {
        &self.endpoints[self.current.load(Ordering::Relaxed).min(self.endpoints.len() - 1)]
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.tls.get_or_init(|| build_tls(self.ca_file.as_deref())).clone()
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<Box<dyn Io>, String> {
        let address = (endpoint.host.as_str(), endpoint.port);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
            .await
            .map_err(|_| format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()))?
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        if !endpoint.https {
            return Ok(Box::new(tcp));
        }
        let connector = tokio_rustls::TlsConnector::from(self.tls_config()?);
        let name = rustls_pki_types::ServerName::try_from(endpoint.host.clone())
            .map_err(|e| format!("{:?} is not a valid TLS server name: {e}", endpoint.host))?;
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS: {e}"))?;
        Ok(Box::new(tls))
    }

    /// Sends a request and returns the response with its body still to read.
    async fn open(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        accept: &str,
    ) -> Result<hyper::Response<Incoming>> {
        let start = self.current.load(Ordering::Relaxed);
        let count = self.endpoints.len();
        let mut tried = Vec::new();
        let mut last = String::new();
        for offset in 0..count {
            let index = (start + offset) % count;
            let endpoint = &self.endpoints[index];
            let io = match self.connect(endpoint).await {
                Ok(io) => io,
                Err(err) => {
                    tried.push(endpoint.url.clone());
                    if offset + 1 < count {
                        let next = &self.endpoints[(index + 1) % count];
                        eprintln!("Could not connect to {} ({err}). Retrying with {}.", endpoint.url, next.url);
                    }
                    last = err;
                    continue;
                }
            };
            self.current.store(index, Ordering::Relaxed);
            return self.send_on(io, endpoint, method, path, body, accept).await;
        }
        Err(Error::Unreachable { tried, last })
    }

    async fn send_on(
        &self,
        io: Box<dyn Io>,
        endpoint: &Endpoint,
        method: Method,
        path: &str,
        body: Option<&Value>,
        accept: &str,
    ) -> Result<hyper::Response<Incoming>> {
        let transport =
            |what: &str, e: &dyn std::fmt::Display| Error::Transport(format!("{}: {what}: {e}", endpoint.url));
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| transport("HTTP handshake", &e))?;
        tokio::spawn(connection);
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", endpoint.base))
            .header(header::HOST, endpoint.authority())
            .header(header::ACCEPT, accept)
            .header(header::USER_AGENT, concat!("commctl/", env!("CARGO_PKG_VERSION")));
        match &self.auth {
            Auth::None => {}
            Auth::Basic { username, password } => {
                let token = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
                builder = builder.header(header::AUTHORIZATION, format!("Basic {token}"));
            }
            Auth::Bearer(token) => builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}")),
        }
        let bytes = match body {
            Some(value) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(value.to_string())
            }
            None => Bytes::new(),
        };
        let request = builder.body(Full::new(bytes)).map_err(|e| transport("building the request", &e))?;
        sender.send_request(request).await.map_err(|e| transport("sending the request", &e))
    }

    /// One request; the whole answer, whatever its status.
    pub async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Reply> {
        let exchange = async {
            let response = self.open(method, path, body, "application/json").await?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::Transport(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Reply { status, content_type, body })
        };
        tokio::time::timeout(REQUEST_TIMEOUT + CONNECT_TIMEOUT * self.endpoints.len() as u32, exchange)
            .await
            .map_err(|_| Error::Transport(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())))?
    }

    /// One request that must succeed (2xx); its JSON body.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let reply = self.request(method, path, body).await?;
        if !reply.is_success() {
            return Err(reply.error());
        }
        reply.json()
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub async fn put(&self, path: &str, body: Option<&Value>) -> Result<Value> {
        self.call(Method::PUT, path, body).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.call(Method::DELETE, path, None).await
    }

    /// Opens a server-sent event stream; the body is read by the caller.
    pub async fn events(&self, path: &str) -> Result<Incoming> {
        let response = tokio::time::timeout(
            REQUEST_TIMEOUT + CONNECT_TIMEOUT * self.endpoints.len() as u32,
            self.open(Method::GET, path, None, "text/event-stream"),
        )
        .await
        .map_err(|_| Error::Transport(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())))??;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(Reply { status, content_type: String::new(), body }.error());
        }
        let content_type =
            response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !content_type.starts_with("text/event-stream") {
            return Err(Error::Transport(format!("{path}: expected an event stream, got {content_type:?}")));
        }
        Ok(response.into_body())
    }
}

/// rustls with ring: the system's roots, plus `ca_file` when given.
fn build_tls(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_file {} holds no certificate", path.display()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("http://127.0.0.1:8000/").expect("valid");
        assert_eq!((e.https, e.host.as_str(), e.port, e.base.as_str()), (false, "127.0.0.1", 8000, ""));
        assert_eq!(e.url, "http://127.0.0.1:8000");
        let e = Endpoint::parse("https://c.example.com/commissaire/").expect("valid");
        assert_eq!(
            (e.https, e.port, e.base.as_str(), e.authority()),
            (true, 443, "/commissaire", "c.example.com".into())
        );
        let e = Endpoint::parse("http://[::1]:8000").expect("valid");
        assert_eq!((e.host.as_str(), e.authority()), ("::1", "[::1]:8000".to_string()));
        assert!(Endpoint::parse("127.0.0.1:8000").is_err());
        assert!(Endpoint::parse("ftp://h").is_err());
        assert!(Endpoint::parse("http://u:p@h").is_err());
    }

    #[test]
    fn server_errors_carry_the_servers_message() {
        let reply = Reply {
            status: 409,
            content_type: "application/json".into(),
            body: Bytes::from(
                r#"{"error":{"code":409,"message":"cluster prod already exists with other attributes"}}"#,
            ),
        };
        let err = reply.error();
        assert_eq!(err.to_string(), "cluster prod already exists with other attributes (HTTP 409)");
        assert_eq!(err.exit_code(), 1);
        let bare = Reply { status: 502, content_type: String::new(), body: Bytes::from("upstream down") };
        assert_eq!(bare.error().to_string(), "Bad Gateway: upstream down (HTTP 502)");
    }

    #[tokio::test]
    async fn unreachable_endpoints_are_all_named() {
        // Two ports nothing listens on.
        let ports: Vec<u16> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port())
            .collect();
        let config = Config {
            endpoints: ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect(),
            auth: Auth::None,
            ca_file: None,
        };
        let client = Client::new(&config).expect("client");
        let err = client.get("/api/v0/clusters").await.expect_err("nothing listens");
        match &err {
            Error::Unreachable { tried, .. } => assert_eq!(tried, &config.endpoints),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(err.exit_code(), 1);
    }
}
