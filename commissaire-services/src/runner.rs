//! What every service binary shares: the original's flags (`--bus-uri`,
//! `--bus-exchange`, `-c/--config-file`), the JSON configuration, logging, the bus
//! connection and a graceful stop on SIGTERM or Ctrl-C.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use commissaire_core::{
    bus::{self, Bus},
    config,
};
use serde_json::{Map, Value};

/// The bus used when neither the flag nor the configuration names one (the
/// original's shipped configuration).
pub const DEFAULT_BUS_URI: &str = "redis://127.0.0.1:6379/";

/// Flags every service takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Bus to connect to: amqp://…, redis://… or memory:// (overrides `bus_uri` in the configuration).
    #[arg(long, value_name = "URI")]
    pub bus_uri: Option<String>,
    /// Topic exchange name on AMQP, key prefix on Redis.
    #[arg(long, value_name = "NAME")]
    pub bus_exchange: Option<String>,
    /// JSON configuration file (`-` reads standard input).
    #[arg(short = 'c', long = "config-file", value_name = "PATH")]
    pub config_file: Option<PathBuf>,
    /// Log at debug level.
    #[arg(long)]
    pub debug: bool,
    /// Serve `GET /metrics` (Prometheus text) and `GET /healthz` on this
    /// address, e.g. 127.0.0.1:9101 (overrides `metrics_listen`; default: off).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// The resolved configuration of a service.
pub struct ServiceConfig {
    pub bus_uri: String,
    pub bus_exchange: String,
    /// The whole configuration object, for service-specific members.
    pub members: Map<String, Value>,
    pub debug: bool,
    /// Where to serve the metrics endpoint, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl CommonArgs {
    /// Loads the configuration (`default_path` when no file is given) and applies
    /// the flags over it.
    pub fn resolve(&self, default_path: &str) -> anyhow::Result<ServiceConfig> {
        let (members, source) = config::load(self.config_file.as_deref(), std::path::Path::new(default_path))?;
        if let config::Source::File(path) = &source {
            eprintln!("Using configuration in {path}");
        }
        let bus_uri = match &self.bus_uri {
            Some(uri) => uri.clone(),
            None => config::string_member(&members, "bus_uri")?.unwrap_or_else(|| DEFAULT_BUS_URI.to_string()),
        };
        let bus_exchange = match &self.bus_exchange {
            Some(name) => name.clone(),
            None => {
                config::string_member(&members, "bus_exchange")?.unwrap_or_else(|| bus::DEFAULT_EXCHANGE.to_string())
            }
        };
        let debug = self.debug || members.get("debug").and_then(Value::as_bool).unwrap_or(false);
        let metrics_listen = match self.metrics_listen {
            Some(addr) => Some(addr),
            None => match config::string_member(&members, "metrics_listen")? {
                Some(text) => Some(
                    text.parse()
                        .with_context(|| format!("metrics_listen: {text:?} is not an address like 127.0.0.1:9101"))?,
                ),
                None => None,
            },
        };
        Ok(ServiceConfig { bus_uri, bus_exchange, members, debug, metrics_listen })
    }
}

impl ServiceConfig {
    /// Connects to the configured bus.
    pub async fn connect_bus(&self) -> anyhow::Result<Arc<dyn Bus>> {
        bus::connect(&self.bus_uri, &self.bus_exchange)
            .await
            .with_context(|| format!("cannot connect to the bus at {}", redact_uri(&self.bus_uri)))
    }

    /// Starts the metrics endpoint when one is configured.
    pub async fn start_metrics(&self) -> anyhow::Result<()> {
        if let Some(addr) = self.metrics_listen {
            let bound =
                crate::metrics_http::spawn(addr).await.with_context(|| format!("cannot serve metrics on {addr}"))?;
            tracing::info!(%bound, "metrics on http://{bound}/metrics");
        }
        Ok(())
    }
}

/// Serves `handler` on its shared `queue` until the process is asked to stop,
/// then lets the requests in progress finish. `name` is for the log lines.
pub async fn serve_until_stopped(
    config: &ServiceConfig,
    bus: &Arc<dyn Bus>,
    queue: &str,
    patterns: &[&str],
    handler: Arc<dyn commissaire_core::bus::Handler>,
    name: &str,
) -> anyhow::Result<()> {
    config.start_metrics().await?;
    let serving = bus.serve(queue, patterns, handler, commissaire_core::bus::ServeOptions::default()).await?;
    tracing::info!(bus = %redact_uri(&config.bus_uri), exchange = %config.bus_exchange, "{name} service ready");
    shutdown_signal().await;
    tracing::info!("stopping: finishing requests in progress");
    serving.shutdown().await;
    Ok(())
}

/// Structured logs on standard error; `RUST_LOG` refines the level.
pub fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A URI fit for logs: any password replaced.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else { return uri.to_string() };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(redact_uri("amqp://guest:guest@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact_uri("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        assert_eq!(redact_uri("memory://"), "memory://");
    }
}
