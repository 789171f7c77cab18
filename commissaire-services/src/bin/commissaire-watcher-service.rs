//! `commissaire-watcher-service`: checks every host on a schedule kept in the
//! store (see `docs/watcher.md`); run as many instances as you like.

use std::sync::Arc;

use clap::Parser;
use commissaire_services::{
    runner,
    watcher::{self, SshCheck, Watcher},
};

#[derive(Parser)]
#[command(name = "commissaire-watcher-service", version, about = "Commissaire watcher service")]
struct Cli {
    #[command(flatten)]
    common: runner::CommonArgs,
    /// Seconds between two checks of a host (configuration: `interval`; default 60).
    #[arg(long, value_name = "SECS")]
    interval: Option<f64>,
    /// Fraction of the interval by which each host's checks are shifted, from 0 to 0.5
    /// (configuration: `jitter`; default 0.1).
    #[arg(long, value_name = "FRACTION")]
    jitter: Option<f64>,
    /// Checks running at the same time (configuration: `concurrency`; default 16).
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,
    /// Seconds a check may take before the host counts as failed (configuration:
    /// `check_timeout`; default the interval, at most 30).
    #[arg(long, value_name = "SECS")]
    check_timeout: Option<f64>,
    /// Longest time between two looks at the store, in seconds (configuration: `tick`;
    /// default the interval, at most 5).
    #[arg(long, value_name = "SECS")]
    tick: Option<f64>,
    /// Seconds an SSH connection is kept after a check (configuration: `connection_idle`;
    /// default 2; up to the interval to reuse it for the host's next check).
    #[arg(long, value_name = "SECS")]
    connection_idle: Option<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.common.resolve("/etc/commissaire/watcher.conf")?;
    runner::init_logging(config.debug);
    let flags = watcher::Overrides {
        interval: cli.interval,
        jitter: cli.jitter,
        concurrency: cli.concurrency,
        check_timeout: cli.check_timeout,
        tick: cli.tick,
        connection_idle: cli.connection_idle,
    };
    let settings = watcher::settings(&config.members, &flags)?;
    config.start_metrics().await?;
    let bus = config.connect_bus().await?;
    let ssh = watcher::transport_for(&settings);
    let running = Watcher::new(bus, Arc::new(SshCheck::new(ssh)), settings.clone()).spawn();
    tracing::info!(
        bus = %runner::redact_uri(&config.bus_uri),
        exchange = %config.bus_exchange,
        interval = ?settings.schedule.interval,
        jitter = settings.schedule.jitter,
        concurrency = settings.concurrency,
        "watcher service ready"
    );
    runner::shutdown_signal().await;
    tracing::info!("stopping: finishing the checks in progress");
    running.stop().await;
    Ok(())
}
