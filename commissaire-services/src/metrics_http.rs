//! The metrics endpoint of a service process: `GET /metrics` (the process's
//! metrics, see `commissaire_core::metrics`) and `GET /healthz` on a plain HTTP
//! listener of its own, without authentication: bind it to an address only the
//! monitoring system reaches. Off unless `--metrics-listen` (or
//! `metrics_listen` in the service's configuration) names an address.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Binds `addr` and serves the metrics endpoint in a background task until the
/// process ends; returns the bound address.
pub async fn spawn(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|req| async move { Ok::<_, Infallible>(respond(&req)) });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(local)
}

/// The answer to one request on the metrics listener.
pub fn respond(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            (StatusCode::OK, commissaire_core::metrics::CONTENT_TYPE, commissaire_core::metrics::encode())
        }
        (&Method::GET, "/healthz") => (StatusCode::OK, "application/json", "{\"status\":\"ok\"}".to_string()),
        _ => (
            StatusCode::NOT_FOUND,
            "application/json",
            "{\"error\":\"only /metrics and /healthz are served here\"}".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}
