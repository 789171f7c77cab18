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
    /// A key being rotated out: opens what it sealed, never seals (repeatable;
    /// overrides `previous_secrets_key_files`).
    #[arg(long, value_name = "PATH")]
    previous_secrets_key_file: Vec<PathBuf>,
    /// Write a new secrets key to PATH and exit.
    #[arg(long, value_name = "PATH", exclusive = true)]
    generate_secrets_key: Option<PathBuf>,
    /// Seal every stored host credential made with a previous key again with the
    /// current key, print what was done and exit (1 if any could not be).
    #[arg(long)]
    reseal_secrets: bool,
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
    let previous: Vec<PathBuf> = if cli.previous_secrets_key_file.is_empty() {
        config::string_list_member(&config.members, "previous_secrets_key_files")?
            .into_iter()
            .map(PathBuf::from)
            .collect()
    } else {
        cli.previous_secrets_key_file
    };
    // A production service never invents a key: credentials sealed with a key
    // nobody kept would be lost.
    let secrets = SecretsKey::load_with_previous(&key_path, &previous)?;

    let specs = storage::handlers::parse(config.members.get("storage_handlers"))?;
    let handlers = storage::open_handlers(specs).await?;
    if cli.reseal_secrets {
        // Needs only the stores: a bus that is never served.
        let bus = std::sync::Arc::new(commissaire_core::bus::memory::MemoryBus::new());
        let service = storage::StorageService::new(handlers, secrets, bus);
        let report = service.reseal_secrets().await;
        println!(
            "resealed {} host credentials with key {}; {} already used it; {} failed",
            report.resealed,
            service.secrets_key_id(),
            report.current,
            report.failed
        );
        if report.failed > 0 {
            anyhow::bail!("{} credentials could not be resealed (see the log); keep the previous keys", report.failed);
        }
        return Ok(());
    }
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
    if !previous.is_empty() {
        // Rotation: reseal in the background while serving; what is not yet
        // resealed still opens with the previous keys.
        let resealer = service.clone();
        tokio::spawn(async move { resealer.reseal_secrets().await.log() });
    }
    runner::serve_until_stopped(&config, &bus, storage::QUEUE, storage::PATTERNS, service, "storage").await
}
