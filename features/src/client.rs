//! A plain-HTTP client on hyper: one connection per request (so a request the
//! server refuses early never poisons the next one), a deadline on each request.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::{HeaderMap, Method, StatusCode, body::Frame, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// How long one request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a request carries.
#[derive(Debug, Clone, Default)]
pub enum Body {
    /// No body at all.
    #[default]
    Empty,
    /// A body sent with its `Content-Length`.
    Sized(Bytes),
    /// A body sent with `Transfer-Encoding: chunked` in chunks of this size.
    Chunked(Bytes, usize),
}

/// One request to the server.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// Path and query, e.g. `/api/v0/hosts`.
    pub path: String,
    /// `(user, password)` for HTTP Basic authentication.
    pub basic_auth: Option<(String, String)>,
    pub content_type: Option<String>,
    /// Other headers, sent as given.
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Request {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Self { method, path: path.into(), basic_auth: None, content_type: None, headers: Vec::new(), body: Body::Empty }
    }

    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        self.basic_auth = Some((user.to_string(), password.to_string()));
        self
    }

    /// A JSON body sent as `application/json`.
    pub fn json(mut self, body: impl Into<Bytes>) -> Self {
        self.content_type = Some("application/json".into());
        self.body = Body::Sized(body.into());
        self
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("the body is not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// A header's value as text (empty when absent).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as (lossy) text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Talks to one server.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: SocketAddr,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    /// Sends `request` on a fresh connection and reads the whole response.
    pub async fn send(&self, request: Request) -> anyhow::Result<Response> {
        self.send_with_timeout(request, REQUEST_TIMEOUT).await
    }

    pub async fn send_with_timeout(&self, request: Request, timeout: Duration) -> anyhow::Result<Response> {
        let what = format!("{} {}", request.method, request.path);
        tokio::time::timeout(timeout, self.exchange(request))
            .await
            .with_context(|| format!("{what}: no response within {timeout:?}"))?
            .with_context(|| format!("{what} failed"))
    }

    async fn exchange(&self, request: Request) -> anyhow::Result<Response> {
        let stream = tokio::net::TcpStream::connect(self.addr).await.context("connect")?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(connection);

        let mut builder = hyper::Request::builder()
            .method(request.method)
            .uri(&request.path)
            .header(header::HOST, self.addr.to_string());
        if let Some((user, password)) = &request.basic_auth {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            builder = builder.header(header::AUTHORIZATION, format!("Basic {token}"));
        }
        if let Some(content_type) = &request.content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let body: BoxBody<Bytes, Infallible> = match request.body {
            Body::Empty => Empty::new().boxed(),
            Body::Sized(bytes) => Full::new(bytes).boxed(),
            Body::Chunked(bytes, size) => {
                let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..bytes.len())
                    .step_by(size.max(1))
                    .map(|start| Ok(Frame::data(bytes.slice(start..(start + size.max(1)).min(bytes.len())))))
                    .collect();
                StreamBody::new(futures_util::stream::iter(chunks)).boxed()
            }
        };
        let response = sender.send_request(builder.body(body)?).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        drop(sender);
        driver.abort();
        Ok(Response { status: parts.status, headers: parts.headers, body })
    }
}

/// One server-sent event: its name and its data (JSON).
pub type StreamEvent = (String, Value);

/// An open `GET /api/v0/events` stream read in the background: every event
/// that arrived so far is in [`EventStream::events`]. Dropping it closes the
/// stream.
#[derive(Debug)]
pub struct EventStream {
    events: std::sync::Arc<std::sync::Mutex<Vec<StreamEvent>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl EventStream {
    /// The events received so far, in order.
    pub fn events(&self) -> Vec<StreamEvent> {
        self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl Client {
    /// Opens an event stream (`path` with its query) and returns once the
    /// server said it is live (`: connected`): later events all reach it.
    pub async fn follow(&self, path: &str, user: &str, password: &str) -> anyhow::Result<EventStream> {
        let stream = tokio::net::TcpStream::connect(self.addr).await.context("connect")?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let request = hyper::Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::HOST, self.addr.to_string())
            .header(header::AUTHORIZATION, format!("Basic {token}"))
            .body(Empty::<Bytes>::new())?;
        let driver = tokio::spawn(connection);
        let response = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(request)).await??;
        if response.status() != StatusCode::OK {
            driver.abort();
            anyhow::bail!("GET {path} answered {}", response.status());
        }
        let mut body = response.into_body();
        let mut buffer = String::new();
        // up to the first block: the stream is live
        while !buffer.contains("\n\n") {
            let frame = tokio::time::timeout(REQUEST_TIMEOUT, body.frame())
                .await
                .context("no first block on the event stream")?
                .context("the event stream ended at once")??;
            if let Ok(data) = frame.into_data() {
                buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = events.clone();
        let reader = tokio::spawn(async move {
            let _keep = (sender, driver);
            loop {
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    let field = |name: &str| {
                        block.lines().find_map(|l| l.strip_prefix(name).map(str::trim).map(str::to_string))
                    };
                    if let (Some(name), Some(data)) = (field("event:"), field("data:")) {
                        let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                        sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((name, data));
                    }
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            buffer.push_str(&String::from_utf8_lossy(&data));
                        }
                    }
                    _ => return,
                }
            }
        });
        Ok(EventStream { events, reader })
    }
}
