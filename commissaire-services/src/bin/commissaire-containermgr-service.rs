//! `commissaire-containermgr-service`: answers `container.*` on the bus.

use clap::Parser;
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
    service.watch().await?;
    runner::serve_until_stopped(
        &config,
        &bus,
        containermgr::QUEUE,
        containermgr::PATTERNS,
        service,
        "container manager",
    )
    .await
}
