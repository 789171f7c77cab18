//! `commissaire-server`: the REST front end, or with `--all-in-one` the whole
//! product in one process.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use commissaire_core::{model::Network, storage_client::StorageError};
use commissaire_http::{
    allinone,
    api::Api,
    auth::Authenticator,
    server::{self, AppState},
    settings::Flags,
    tls,
};
use commissaire_services::runner;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Flags::parse().resolve()?;
    runner::init_logging(settings.debug);

    let (bus, plugins, services) = match &settings.all_in_one {
        Some(data_dir) => {
            let aio = allinone::start(
                data_dir,
                settings.plugins.clone(),
                allinone::Options {
                    host_services: settings.host_services,
                    investigator: settings.investigator.clone(),
                    watcher: settings.watcher.clone(),
                    clusterexec: settings.clusterexec.clone(),
                    webhooks: settings.webhooks.clone(),
                    audit_retention: settings.audit_retention,
                    previous_secrets_key_files: settings.previous_secrets_key_files.clone(),
                },
            )
            .await?;
            tracing::info!(data_dir = %data_dir.display(), "all-in-one: services running in this process");
            (aio.bus, aio.plugins, (aio.services, aio.watcher))
        }
        None => {
            let bus = commissaire_core::bus::connect(&settings.bus_uri, &settings.bus_exchange)
                .await
                .with_context(|| format!("cannot connect to the bus at {}", runner::redact_uri(&settings.bus_uri)))?;
            (bus, settings.plugins.clone(), (Vec::new(), None))
        }
    };
    let auth = Authenticator::new(plugins)?;
    if auth.is_empty() {
        tracing::warn!("no authentication plugin is configured: every request except self-auth paths is denied");
    }
    let api = Api::new(bus);
    tokio::spawn(ensure_default_network(api.clone()));

    let tls = match &settings.tls_pemfile {
        Some(pem) => {
            Some(tls::server_config(pem, settings.tls_keyfile.as_deref(), settings.tls_clientverifyfile.as_deref())?)
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("Commissaire is listening on {scheme}://{}/api/v0/", listener.local_addr().unwrap_or(settings.listen));

    let mut state = AppState::new(api, auth);
    state.self_auth = settings.self_auths.iter().cloned().collect();
    state.trusted_proxies = settings.trusted_proxies.clone();
    let state = Arc::new(state);
    server::serve(listener, tls, state, runner::shutdown_signal()).await;
    let (services, watcher) = services;
    if let Some(watcher) = watcher {
        watcher.stop().await;
    }
    for service in services {
        service.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Clusters use the network `default` unless told otherwise; make sure it
/// exists once storage answers.
async fn ensure_default_network(api: Api) {
    let network = Network::new("default");
    let mut delay = Duration::from_millis(200);
    loop {
        match api.storage_client().save_if(&network, 0).await {
            Ok(_) => {
                tracing::info!("created the default network");
                return;
            }
            Err(StorageError::Conflict(_)) => return,
            Err(err) => {
                tracing::warn!(error = %err, "cannot ensure the default network yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
