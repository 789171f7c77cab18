//! The all-in-one mode: every service in this process on the in-process bus,
//! state in one data directory (the embedded store, the secrets key and, when no
//! authentication is configured, a users file with a generated admin).
//!
//! It runs the storage, container manager, investigator, cluster exec and
//! watcher services (the last three only with [`Options::host_services`]). The
//! cluster exec service takes its playbooks from the investigator's
//! `playbooks_dir`.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use commissaire_core::{
    bus::{Bus, ServeHandle, ServeOptions, memory::MemoryBus},
    secrets::SecretsKey,
};
use commissaire_services::{
    clusterexec::service::{self as clusterexec, ClusterExec},
    containermgr::{self, ContainerManagerService},
    investigator::{self, Investigator},
    storage::{self, StorageService},
    transport::{SshConfig, SshTransport},
    watcher::{self, SshCheck, Watcher},
};
use rand::{Rng, distributions::Alphanumeric};
use serde_json::json;

use crate::auth::{self, PluginSpec};

/// The running in-process services.
pub struct AllInOne {
    pub bus: Arc<dyn Bus>,
    pub services: Vec<ServeHandle>,
    /// The watcher, with the host services.
    pub watcher: Option<watcher::Running>,
    /// The authentication to use: the configured one, or the generated admin.
    pub plugins: Vec<PluginSpec>,
    /// The webhook senders (none unless configured).
    pub webhooks: commissaire_services::webhooks::Running,
}

/// What the all-in-one process runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Run the services that connect to managed hosts (investigator, cluster
    /// exec, watcher). Off only to try or test the REST layer with made-up
    /// hosts, which would otherwise be contacted.
    pub host_services: bool,
    /// The investigator's configuration members (see
    /// `investigator::bootstrap_from_config`): the `investigator` object of
    /// commissaire.conf.
    pub investigator: serde_json::Map<String, serde_json::Value>,
    /// The watcher's configuration members (see `watcher::settings`): the
    /// `watcher` object of commissaire.conf.
    pub watcher: serde_json::Map<String, serde_json::Value>,
    /// The cluster exec service's settings (see `clusterexec::service::settings_from_config`):
    /// the `clusterexec` object of commissaire.conf.
    pub clusterexec: serde_json::Map<String, serde_json::Value>,
    /// The `webhooks` list of commissaire.conf (see `commissaire_services::webhooks`).
    pub webhooks: Option<serde_json::Value>,
    /// Audit entries kept (default `storage::audit::DEFAULT_RETENTION`).
    pub audit_retention: Option<usize>,
    /// Keys being rotated out: they open what they sealed, and everything they
    /// sealed is sealed again with `secrets.key` at start-up.
    pub previous_secrets_key_files: Vec<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            host_services: true,
            investigator: serde_json::Map::new(),
            watcher: serde_json::Map::new(),
            clusterexec: serde_json::Map::new(),
            webhooks: None,
            audit_retention: None,
            previous_secrets_key_files: Vec::new(),
        }
    }
}

/// Starts every service on a fresh in-process bus with its state in `data_dir`.
pub async fn start(data_dir: &Path, configured_plugins: Vec<PluginSpec>, options: Options) -> anyhow::Result<AllInOne> {
    create_private_dir(data_dir)?;
    let key = SecretsKey::load_or_generate(&data_dir.join("secrets.key"))?;
    let key = options
        .previous_secrets_key_files
        .iter()
        .try_fold(key, |key, path| SecretsKey::load(path).map(|older| key.with_previous(older)))?;
    let store_path = data_dir.join("store.redb");
    let specs = storage::handlers::parse(Some(&json!([{"type": "embedded", "path": store_path}])))?;
    let handlers = storage::open_handlers(specs)
        .await
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    let bus: Arc<dyn Bus> = Arc::new(commissaire_core::bus::Instrumented(MemoryBus::new()));
    let storage_service = Arc::new(
        StorageService::new(handlers, key, bus.clone())
            .with_audit_retention(options.audit_retention.unwrap_or(storage::audit::DEFAULT_RETENTION)),
    );
    if !options.previous_secrets_key_files.is_empty() {
        // Before serving, so that once started the previous keys are no longer needed.
        let report = storage_service.reseal_secrets().await;
        report.log();
        if report.failed > 0 {
            anyhow::bail!("{} host credentials could not be resealed (see the log)", report.failed);
        }
    }
    let endpoints = commissaire_services::webhooks::from_config(options.webhooks.as_ref())?;
    let webhooks = commissaire_services::webhooks::start(bus.clone(), endpoints).await?;
    let containermgr_service = Arc::new(ContainerManagerService::new(bus.clone()));
    containermgr_service.watch().await?;
    let mut services = vec![
        bus.serve(storage::QUEUE, storage::PATTERNS, storage_service, ServeOptions::default()).await?,
        bus.serve(containermgr::QUEUE, containermgr::PATTERNS, containermgr_service, ServeOptions::default()).await?,
    ];
    if options.host_services {
        let bootstrap = investigator::bootstrap_from_config(&options.investigator)?;
        let investigator = Arc::new(Investigator::new(bus.clone(), SshTransport::new(SshConfig::default()), bootstrap));
        services
            .push(bus.serve(investigator::QUEUE, investigator::PATTERNS, investigator, ServeOptions::default()).await?);
        let playbooks = clusterexec::playbooks_from_config(&options.investigator)?;
        let settings = clusterexec::settings_from_config(&options.clusterexec)
            .context("the cluster exec settings (member `clusterexec` of the configuration)")?;
        let clusterexec_service = Arc::new(ClusterExec::with_settings(
            bus.clone(),
            SshTransport::new(SshConfig::default()),
            playbooks,
            settings,
        ));
        // Operations left in process by an earlier run of this process are
        // resumed once their lease ran out.
        std::mem::drop(clusterexec_service.spawn_takeover());
        services.push(
            bus.serve(clusterexec::QUEUE, clusterexec::PATTERNS, clusterexec_service, ServeOptions::default()).await?,
        );
    }
    let watcher = if options.host_services {
        let settings = watcher::settings(&options.watcher, &watcher::Overrides::default())
            .context("the watcher's settings (member `watcher` of the configuration)")?;
        let check = Arc::new(SshCheck::new(watcher::transport_for(&settings)));
        tracing::info!(interval = ?settings.schedule.interval, "watcher running");
        Some(Watcher::new(bus.clone(), check, settings).spawn())
    } else {
        None
    };
    let plugins = if configured_plugins.is_empty() { vec![admin_identity(data_dir)?] } else { configured_plugins };
    Ok(AllInOne { bus, services, watcher, plugins, webhooks })
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict permissions of {}", dir.display()))?;
    }
    Ok(())
}

/// Basic authentication against `users.json` in the data directory, creating it
/// with an `admin` user and a random password on first start. The password is
/// printed once; only its bcrypt hash is kept.
fn admin_identity(data_dir: &Path) -> anyhow::Result<PluginSpec> {
    let users: PathBuf = data_dir.join("users.json");
    if !users.exists() {
        let password: String = rand::thread_rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect();
        let hash = auth::hash_password(&password)?;
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&users).with_context(|| format!("cannot create {}", users.display()))?;
        writeln!(file, "{}", json!({"admin": {"hash": hash, "role": "read-write"}}))?;
        file.sync_all()?;
        println!("Created user \"admin\" with password {password}");
        println!("(shown only this once; its bcrypt hash is in {})", users.display());
    } else {
        println!("Users are in {} (the admin password was printed on first start)", users.display());
    }
    let mut spec = PluginSpec { name: "httpbasicauth".into(), options: Default::default() };
    spec.options.insert("filepath".into(), json!(users));
    Ok(spec)
}
