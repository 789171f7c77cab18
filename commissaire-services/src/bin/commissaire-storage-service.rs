//! `commissaire-storage-service`: answers `storage.*` on the bus from the stores
//! configured by `storage_handlers` (default: etcd on 127.0.0.1:2379).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use commissaire_core::{config, secrets::SecretsKey};
use commissaire_services::{runner, storage};

/// Where the secrets key is looked for unless configured.
const DEFAULT_SECRETS_KEY: &str = "/etc/commissaire/secrets.key";

#[derive(Parser)]
#[command(name = "commissaire-storage-service", version, about = "Commissaire storage service")]
struct Cli {
    #[command(flatten)]
    common: runner::CommonArgs,
    /// Key that seals host credentials (overrides `secrets_key_file`).
    #[arg(long, value_name = "PATH")]
    secrets_key_file: Option<PathBuf>,
    /// Write a new secrets key to PATH and exit.
    #[arg(long, value_name = "PATH", exclusive = true)]
    generate_secrets_key: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(path) = cli.generate_secrets_key {
        let key = SecretsKey::generate(&path).with_context(|| format!("cannot create {}", path.display()))?;
        println!("wrote secrets key {} (id {}); keep it private and backed up", path.display(), key.id());
        return Ok(());
    }
    let config = cli.common.resolve("/etc/commissaire/storage.conf")?;
    runner::init_logging(config.debug);

    let key_path = match cli.secrets_key_file {
        Some(path) => path,
        None => config::string_member(&config.members, "secrets_key_file")?
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SECRETS_KEY)),
    };
    // A production service never invents a key: credentials sealed with a key
    // nobody kept would be lost.
    let secrets = SecretsKey::load(&key_path)?;

    let specs = storage::handlers::parse(config.members.get("storage_handlers"))?;
    let handlers = storage::open_handlers(specs).await?;
    let bus = config.connect_bus().await?;
    let retention = match config.members.get("audit_retention") {
        None => storage::audit::DEFAULT_RETENTION,
        Some(value) => value
            .as_u64()
            .filter(|n| *n > 0)
            .map(|n| n as usize)
            .context("audit_retention must be a positive number of entries")?,
    };
    let service = std::sync::Arc::new(
        storage::StorageService::new(handlers, secrets, bus.clone()).with_audit_retention(retention),
    );
    runner::serve_until_stopped(&config, &bus, storage::QUEUE, storage::PATTERNS, service, "storage").await
}
