//! `commissaire-clusterexec-service`: answers `jobs.clusterexec.restart|upgrade|deploy|retry_failed`
//! on the bus, and takes over the operations of instances that died.

use clap::Parser;
use commissaire_services::{
    clusterexec::service::{self, ClusterExec},
    runner,
    transport::{SshConfig, SshTransport},
};

#[derive(Parser)]
#[command(name = "commissaire-clusterexec-service", version, about = "Commissaire cluster exec service")]
struct Cli {
    #[command(flatten)]
    common: runner::CommonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.common.resolve("/etc/commissaire/clusterexec.conf")?;
    runner::init_logging(config.debug);
    let bus = config.connect_bus().await?;
    let playbooks = service::playbooks_from_config(&config.members)?;
    let settings = service::settings_from_config(&config.members)?;
    tracing::info!(playbook = %playbooks.restart.path().display(), lease = ?settings.lease, "operation playbooks loaded");
    let clusterexec = std::sync::Arc::new(ClusterExec::with_settings(
        bus.clone(),
        SshTransport::new(SshConfig::default()),
        playbooks,
        settings,
    ));
    tracing::info!(instance = clusterexec.instance(), "cluster exec instance");
    // Operations whose instance died are resumed here once their lease ran out.
    let _takeover = clusterexec.spawn_takeover();
    runner::serve_until_stopped(&config, &bus, service::QUEUE, service::PATTERNS, clusterexec, "clusterexec").await
}
