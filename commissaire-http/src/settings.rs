//! The server's settings: `/etc/commissaire/commissaire.conf` (JSON, member names
//! with `-` or `_`) overlaid by command-line flags, as the original did.

use std::{net::IpAddr, path::PathBuf};

use anyhow::{Context, bail};
use commissaire_core::config;
use serde_json::{Map, Value};

use crate::auth::{self, PluginSpec};

/// The default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/commissaire/commissaire.conf";

/// Command-line flags of `commissaire-server`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "commissaire-server", version, about = "Commissaire REST server")]
pub struct Flags {
    /// JSON configuration file (default /etc/commissaire/commissaire.conf when it exists).
    #[arg(short = 'c', long = "config", visible_alias = "config-file", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Ignore the configuration file entirely.
    #[arg(long, conflicts_with = "config")]
    pub no_config_file: bool,
    /// Log at debug level.
    #[arg(long)]
    pub debug: bool,
    /// Address to listen on (default 0.0.0.0; 127.0.0.1 with --all-in-one).
    #[arg(short = 'i', long, value_name = "ADDRESS")]
    pub listen_interface: Option<IpAddr>,
    /// Port to listen on (default 8000).
    #[arg(short = 'p', long, value_name = "PORT")]
    pub listen_port: Option<u16>,
    /// PEM file with the server certificate (and its key, unless --tls-keyfile): serve HTTPS.
    #[arg(long, value_name = "PATH")]
    pub tls_pemfile: Option<PathBuf>,
    /// PEM file with the server's private key, when not in --tls-pemfile.
    #[arg(long, value_name = "PATH", requires = "tls_pemfile")]
    pub tls_keyfile: Option<PathBuf>,
    /// CA bundle: require client certificates signed by it.
    #[arg(long, value_name = "PATH", requires = "tls_pemfile")]
    pub tls_clientverifyfile: Option<PathBuf>,
    /// Authentication plugin as NAME:key=value,… (repeatable; replaces the file's plugins).
    #[arg(long = "authentication-plugin", value_name = "NAME:OPTIONS")]
    pub authentication_plugins: Vec<String>,
    /// Path that skips authentication (repeatable).
    #[arg(long = "self-auth", value_name = "PATH")]
    pub self_auths: Vec<String>,
    /// Proxy whose X-Forwarded-For is trusted for the client address (repeatable).
    #[arg(long = "trusted-proxy", value_name = "ADDRESS")]
    pub trusted_proxies: Vec<IpAddr>,
    /// Topic exchange (AMQP) or key prefix (Redis) of the bus.
    #[arg(long, value_name = "NAME")]
    pub bus_exchange: Option<String>,
    /// Bus URI: amqp://…, redis://… (default redis://127.0.0.1:6379/).
    #[arg(long, value_name = "URI", conflicts_with = "all_in_one")]
    pub bus_uri: Option<String>,
    /// Run the server and every service in this process, on the in-process bus and
    /// the embedded store in --data-dir.
    #[arg(long)]
    pub all_in_one: bool,
    /// Where the all-in-one mode keeps its store, secrets key and users
    /// (default $XDG_DATA_HOME/commissaire, else ~/.local/share/commissaire).
    #[arg(long, value_name = "DIR", requires = "all_in_one")]
    pub data_dir: Option<PathBuf>,
    /// All-in-one without the services that connect to managed hosts over SSH
    /// (investigator, watcher, cluster exec): for trying the REST API with made-up hosts.
    #[arg(long, requires = "all_in_one")]
    pub no_host_services: bool,
}

/// Everything resolved, flags over file over defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: std::net::SocketAddr,
    pub tls_pemfile: Option<PathBuf>,
    pub tls_keyfile: Option<PathBuf>,
    pub tls_clientverifyfile: Option<PathBuf>,
    pub plugins: Vec<PluginSpec>,
    pub self_auths: Vec<String>,
    pub trusted_proxies: Vec<IpAddr>,
    pub bus_uri: String,
    pub bus_exchange: String,
    pub debug: bool,
    pub all_in_one: Option<PathBuf>,
    /// All-in-one runs the services that reach managed hosts.
    pub host_services: bool,
    /// The all-in-one investigator's settings: the `investigator` object of the
    /// configuration file (playbooks_dir, etcd_server_url, docker_registry_host, …).
    pub investigator: Map<String, Value>,
    /// The all-in-one watcher's settings: the `watcher` object of the
    /// configuration file (interval, jitter, concurrency, …).
    pub watcher: Map<String, Value>,
    /// The all-in-one cluster exec service's settings: the `clusterexec`
    /// object of the configuration file (lease_seconds, reboot_grace_seconds).
    pub clusterexec: Map<String, Value>,
    /// The all-in-one webhooks: the `webhooks` list of the configuration file
    /// (see `commissaire_services::webhooks`).
    pub webhooks: Option<Value>,
    /// Audit entries the all-in-one storage keeps (`audit_retention`).
    pub audit_retention: Option<usize>,
    /// Keys being rotated out of the all-in-one (`previous_secrets_key_files`).
    pub previous_secrets_key_files: Vec<std::path::PathBuf>,
}

fn member<'a>(file: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    file.get(name).filter(|v| !v.is_null())
}

/// An object member (service settings), empty when absent.
fn object_member(file: &Map<String, Value>, name: &str) -> anyhow::Result<Map<String, Value>> {
    match member(file, name) {
        None => Ok(Map::new()),
        Some(Value::Object(members)) => Ok(members.clone()),
        Some(_) => bail!("configuration member {name} must be an object"),
    }
}

fn string_list(file: &Map<String, Value>, name: &str) -> anyhow::Result<Vec<String>> {
    match member(file, name) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("configuration member {name} must be a list of strings")),
        Some(_) => bail!("configuration member {name} must be a list of strings"),
    }
}

impl Flags {
    pub fn resolve(&self) -> anyhow::Result<Settings> {
        let (file, source) = if self.no_config_file {
            (Map::new(), config::Source::Defaults)
        } else {
            config::load(self.config.as_deref(), std::path::Path::new(DEFAULT_CONFIG))?
        };
        if let config::Source::File(path) = &source {
            eprintln!("Using configuration in {path}");
        }
        let string = |name: &str| config::string_member(&file, name);
        let interface = match self.listen_interface {
            Some(address) => address,
            None => match string("listen_interface")? {
                Some(text) => {
                    text.parse().with_context(|| format!("listen-interface {text:?} is not an IP address"))?
                }
                None if self.all_in_one => IpAddr::from([127, 0, 0, 1]),
                None => IpAddr::from([0, 0, 0, 0]),
            },
        };
        let port = match self.listen_port {
            Some(port) => port,
            None => match member(&file, "listen_port") {
                None => 8000,
                Some(value) => {
                    value.as_u64().and_then(|p| u16::try_from(p).ok()).context("listen-port must be a port number")?
                }
            },
        };
        let path = |flag: &Option<PathBuf>, name: &str| -> anyhow::Result<Option<PathBuf>> {
            Ok(match flag {
                Some(p) => Some(p.clone()),
                None => string(name)?.map(PathBuf::from),
            })
        };
        let plugins = if self.authentication_plugins.is_empty() {
            match member(&file, "authentication_plugins") {
                Some(value) => PluginSpec::from_config(value)?,
                None => Vec::new(),
            }
        } else {
            self.authentication_plugins.iter().map(|arg| auth::parse_plugin_arg(arg)).collect::<Result<_, _>>()?
        };
        let mut self_auths = string_list(&file, "self_auths")?;
        self_auths.extend(self.self_auths.iter().cloned());
        let mut trusted_proxies: Vec<IpAddr> = string_list(&file, "trusted_proxies")?
            .iter()
            .map(|p| p.parse().with_context(|| format!("trusted-proxies: {p:?} is not an IP address")))
            .collect::<anyhow::Result<_>>()?;
        trusted_proxies.extend(self.trusted_proxies.iter().copied());
        let all_in_one = self.all_in_one.then(|| self.data_dir.clone().unwrap_or_else(default_data_dir));
        let bus_uri = match (&self.bus_uri, &all_in_one) {
            (_, Some(_)) => "memory://".to_string(),
            (Some(uri), None) => uri.clone(),
            (None, None) => {
                string("bus_uri")?.unwrap_or_else(|| commissaire_services::runner::DEFAULT_BUS_URI.to_string())
            }
        };
        Ok(Settings {
            listen: std::net::SocketAddr::new(interface, port),
            tls_pemfile: path(&self.tls_pemfile, "tls_pemfile")?,
            tls_keyfile: path(&self.tls_keyfile, "tls_keyfile")?,
            tls_clientverifyfile: path(&self.tls_clientverifyfile, "tls_clientverifyfile")?,
            plugins,
            self_auths,
            trusted_proxies,
            bus_uri,
            bus_exchange: match &self.bus_exchange {
                Some(name) => name.clone(),
                None => string("bus_exchange")?.unwrap_or_else(|| commissaire_core::bus::DEFAULT_EXCHANGE.to_string()),
            },
            debug: self.debug || member(&file, "debug").and_then(Value::as_bool).unwrap_or(false),
            all_in_one,
            host_services: !self.no_host_services,
            investigator: object_member(&file, "investigator")?,
            watcher: object_member(&file, "watcher")?,
            clusterexec: object_member(&file, "clusterexec")?,
            webhooks: member(&file, "webhooks").cloned(),
            audit_retention: match member(&file, "audit_retention") {
                None => None,
                Some(v) => Some(
                    v.as_u64()
                        .filter(|n| *n > 0)
                        .map(|n| n as usize)
                        .context("audit_retention must be a positive number of entries")?,
                ),
            },
            previous_secrets_key_files: commissaire_core::config::string_list_member(
                &file,
                "previous_secrets_key_files",
            )?
            .into_iter()
            .map(std::path::PathBuf::from)
            .collect(),
        })
    }
}

/// `$XDG_DATA_HOME/commissaire`, else `~/.local/share/commissaire`, else `./commissaire-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("commissaire");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/commissaire"),
        None => PathBuf::from("commissaire-data"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("commissaire.conf");
        std::fs::write(
            &conf,
            r#"{"listen-interface": "127.0.0.1", "listen-port": 9000, "bus-uri": "amqp://x/",
                "authentication-plugins": [{"name": "httpbasicauth", "users": {"a": {"hash": "$2b$04$abcdefghijklmnopqrstuu"}}}],
                "self-auths": ["/api/v0/secrets"]}"#,
        )
        .expect("write");
        let flags = Flags::parse_from(["commissaire-server", "-c", conf.to_str().expect("utf8"), "-p", "8100"]);
        let settings = flags.resolve().expect("resolve");
        assert_eq!(settings.listen.to_string(), "127.0.0.1:8100");
        assert_eq!(settings.bus_uri, "amqp://x/");
        assert_eq!(settings.plugins.len(), 1);
        assert_eq!(settings.self_auths, ["/api/v0/secrets"]);

        let flags = Flags::parse_from([
            "commissaire-server",
            "--no-config-file",
            "--authentication-plugin",
            "commissaire_http.authentication.httpbasicauth:filepath=/etc/commissaire/users.json",
        ]);
        let settings = flags.resolve().expect("resolve");
        assert_eq!(settings.listen.to_string(), "0.0.0.0:8000");
        assert_eq!(settings.plugins[0].options["filepath"], "/etc/commissaire/users.json");
    }

    #[test]
    fn all_in_one_uses_the_in_process_bus_and_loopback() {
        let flags =
            Flags::parse_from(["commissaire-server", "--no-config-file", "--all-in-one", "--data-dir", "/tmp/x"]);
        let settings = flags.resolve().expect("resolve");
        assert_eq!(settings.bus_uri, "memory://");
        assert_eq!(settings.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(settings.all_in_one.as_deref(), Some(std::path::Path::new("/tmp/x")));
        assert!(Flags::try_parse_from(["commissaire-server", "--data-dir", "/tmp/x"]).is_err());
    }
}
