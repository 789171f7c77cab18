//! `commissaire-fleetsim`: serve a simulated fleet until interrupted (or for
//! `--for` seconds). Prints `ready N` on standard output once every host
//! listens, so a parent process can wait for it.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::Context;
use clap::Parser;
use commissaire_fleetsim::{Fleet, FleetConfig, HostKeys, Os};
use russh::keys::PublicKey;

#[derive(Parser)]
#[command(name = "commissaire-fleetsim", version, about = "Simulated SSH hosts for tests and benchmarks")]
struct Cli {
    /// Hosts to simulate.
    #[arg(long, default_value_t = 100)]
    hosts: usize,
    /// Address of the first host (the others follow); keep within 127.20.0.0/16.
    #[arg(long, default_value = "127.20.0.1")]
    first_address: Ipv4Addr,
    #[arg(long, default_value_t = 22)]
    port: u16,
    /// File holding the one accepted client public key (OpenSSH line).
    #[arg(long, value_name = "FILE")]
    authorized_key: std::path::PathBuf,
    /// Seed of the host keys (host i's key is derived from it and i).
    #[arg(long, default_value_t = 0)]
    key_seed: u64,
    /// Milliseconds before each command answers.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Milliseconds a rebooting host refuses connections.
    #[arg(long, default_value_t = 1000)]
    reboot_ms: u64,
    /// Fraction of the hosts down from the start.
    #[arg(long, default_value_t = 0.0)]
    down: f64,
    /// Fraction of the hosts whose commands fail.
    #[arg(long, default_value_t = 0.0)]
    failing: f64,
    /// Fraction of the hosts booted from OSTree.
    #[arg(long, default_value_t = 0.0)]
    ostree: f64,
    /// Picks the down, failing and OSTree hosts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// fedora, centos or debian.
    #[arg(long, default_value = "fedora")]
    os: String,
    /// Stop after this many seconds (default: until SIGINT/SIGTERM).
    #[arg(long = "for", value_name = "SECS")]
    run_for: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let text = std::fs::read_to_string(&cli.authorized_key)
        .with_context(|| format!("reading {}", cli.authorized_key.display()))?;
    let authorized_key = PublicKey::from_openssh(text.trim())
        .with_context(|| format!("{} is not an OpenSSH public key line", cli.authorized_key.display()))?;
    let os = Os::parse(&cli.os).with_context(|| format!("unknown os {:?} (fedora, centos, debian)", cli.os))?;
    let config = FleetConfig {
        first_address: cli.first_address,
        port: cli.port,
        host_keys: HostKeys::Derived { seed: cli.key_seed },
        latency: Duration::from_millis(cli.latency_ms),
        reboot_time: Duration::from_millis(cli.reboot_ms),
        down_fraction: cli.down,
        failing_fraction: cli.failing,
        ostree_fraction: cli.ostree,
        seed: cli.seed,
        os,
        ..FleetConfig::new(cli.hosts, authorized_key)
    };
    let fleet = Fleet::start(config).await?;
    println!("ready {}", fleet.hosts().len());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let timer = async {
        match cli.run_for {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = timer => {}
    }
    let stats = fleet.stats();
    use std::sync::atomic::Ordering::Relaxed;
    eprintln!(
        "connections {} commands {} reboots {} auth_failures {}",
        stats.connections.load(Relaxed),
        stats.commands.load(Relaxed),
        stats.reboots.load(Relaxed),
        stats.auth_failures.load(Relaxed)
    );
    fleet.stop().await;
    Ok(())
}
