//! `commissaire-investigator-service`: answers `jobs.investigate` on the bus.

use clap::Parser;
use commissaire_services::{
    investigator::{self, Investigator},
    runner,
    transport::{SshConfig, SshTransport},
};

#[derive(Parser)]
#[command(name = "commissaire-investigator-service", version, about = "Commissaire investigator service")]
struct Cli {
    #[command(flatten)]
    common: runner::CommonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.common.resolve("/etc/commissaire/investigator.conf")?;
    runner::init_logging(config.debug);
    let bus = config.connect_bus().await?;
    let bootstrap = investigator::bootstrap_from_config(&config.members)?;
    tracing::info!(playbook = %bootstrap.playbook.path().display(), "bootstrap playbook loaded");
    let service =
        std::sync::Arc::new(Investigator::new(bus.clone(), SshTransport::new(SshConfig::default()), bootstrap));
    runner::serve_until_stopped(&config, &bus, investigator::QUEUE, investigator::PATTERNS, service, "investigator")
        .await
}
