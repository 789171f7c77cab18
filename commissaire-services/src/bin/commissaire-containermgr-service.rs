//! `commissaire-containermgr-service`: answers `container.*` on the bus.

use clap::Parser;
use commissaire_core::bus::ServeOptions;
use commissaire_services::{containermgr, runner};

#[derive(Parser)]
#[command(name = "commissaire-containermgr-service", version, about = "Commissaire container manager service")]
struct Cli {
    #[command(flatten)]
    common: runner::CommonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.common.resolve("/etc/commissaire/containermgr.conf")?;
    runner::init_logging(config.debug);
    let bus = config.connect_bus().await?;
    let service = std::sync::Arc::new(containermgr::ContainerManagerService::new(bus.clone()));
    let serving = bus.serve(containermgr::QUEUE, containermgr::PATTERNS, service, ServeOptions::default()).await?;
    tracing::info!(bus = %runner::redact_uri(&config.bus_uri), exchange = %config.bus_exchange, "container manager service ready");
    runner::shutdown_signal().await;
    serving.shutdown().await;
    Ok(())
}
