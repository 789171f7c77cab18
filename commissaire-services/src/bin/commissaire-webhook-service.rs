//! `commissaire-webhook-service`: sends the configured webhooks (member
//! `webhooks` of webhooks.conf, see `commissaire_services::webhooks`) from the
//! storage events on the bus.

use clap::Parser;
use commissaire_services::{runner, webhooks};

#[derive(Parser)]
#[command(name = "commissaire-webhook-service", version, about = "Commissaire webhook sender")]
struct Cli {
    #[command(flatten)]
    common: runner::CommonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.common.resolve("/etc/commissaire/webhooks.conf")?;
    runner::init_logging(config.debug);
    let endpoints = webhooks::from_config(config.members.get("webhooks"))?;
    if endpoints.is_empty() {
        tracing::warn!("no webhooks are configured (member `webhooks` of the configuration)");
    }
    config.start_metrics().await?;
    let bus = config.connect_bus().await?;
    let count = endpoints.len();
    let running = webhooks::start(bus, endpoints).await?;
    tracing::info!(endpoints = count, bus = %runner::redact_uri(&config.bus_uri), "webhook service ready");
    runner::shutdown_signal().await;
    running.stop().await;
    Ok(())
}
