//! What differs between operating systems, and the variables of the bootstrap playbook.
//!
//! [`OsSupport::for_os`] maps the `os` fact of a host (lower-cased distribution name) to its
//! package manager, package names, configuration paths, service names and upgrade command;
//! an OS that is not in the table is [`OsError::Unsupported`], naming it. Atomic (OSTree)
//! hosts are detected at playbook time (`/run/ostree-booted`), so the install steps of the
//! table are simply skipped there; `atomic` is also accepted as an OS name of its own.
//!
//! [`bootstrap_vars`] builds the extra variables of `playbooks/bootstrap.yaml` from the host
//! address, its [`Network`] and the [`BootstrapSettings`] of the deployment. Every value that
//! ends up in a file on the host is checked here first (no quotes, spaces, newlines or shell
//! characters in a host name, URL or key), on top of the quoting the templates and the engine do.

use std::path::PathBuf;

use commissaire_core::model::Network;
use serde_json::{Map, Value, json};

/// The flannel configuration prefix in etcd when the network does not name one.
pub const DEFAULT_FLANNEL_KEY: &str = "/atomic01/network";

/// Where the etcd client files are copied to on the host.
pub const REMOTE_ETCD_CA: &str = "/etc/etcd/cacert.pem";
pub const REMOTE_ETCD_CLIENT_CERT: &str = "/etc/etcd/client.crt";
pub const REMOTE_ETCD_CLIENT_KEY: &str = "/etc/etcd/key.crt";

/// Why bootstrap variables cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OsError {
    #[error(
        "operating system {os:?} is not supported (supported: fedora, rhel, redhat, centos, debian, ubuntu, atomic)"
    )]
    Unsupported { os: String },
    #[error("network {network:?} has unknown type {kind:?} (expected flannel_etcd or flannel_server)")]
    UnknownNetworkType { network: String, kind: String },
    #[error("network {network:?} of type flannel_server needs the option `address` (host:port of the flannel server)")]
    MissingServerAddress { network: String },
    #[error("flannel_etcd network {network:?} needs the etcd server URL of the deployment (BootstrapSettings)")]
    MissingEtcdUrl { network: String },
    #[error("{what} {value:?} is not acceptable: {reason}")]
    InvalidValue { what: &'static str, value: String, reason: &'static str },
}

/// The package manager the `package` tasks use (`use:` of Ansible's `package` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    Dnf,
    Yum,
    Apt,
    /// OSTree hosts: nothing is installed.
    None,
}

impl PackageManager {
    /// The name Ansible's `package` module knows it by.
    pub fn ansible_name(self) -> &'static str {
        match self {
            PackageManager::Dnf => "dnf",
            PackageManager::Yum => "yum",
            PackageManager::Apt => "apt",
            PackageManager::None => "none",
        }
    }
}

/// One row of the OS table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsSupport {
    /// The OS name as given (lower-cased).
    pub os: String,
    pub package_manager: PackageManager,
    /// The flannel package.
    pub flannel_package: &'static str,
    /// The docker package.
    pub docker_package: &'static str,
    /// SELinux Python bindings (`""`: none on this OS).
    pub selinux_python_package: &'static str,
    /// argv to enable extra package repositories before installing (empty: nothing to do).
    pub enable_pkg_repos: &'static [&'static str],
    /// argv of the whole-system package upgrade (traditional, non-OSTree hosts).
    pub upgrade_command: &'static [&'static str],
    /// Where the rendered docker options go.
    pub docker_config: &'static str,
    /// Where the rendered flanneld options go.
    pub flanneld_config: &'static str,
    pub docker_service: &'static str,
    pub flannel_service: &'static str,
}

const DNF_UPGRADE: &[&str] = &["dnf", "-y", "upgrade"];
const YUM_UPGRADE: &[&str] = &["yum", "-y", "update"];
/// fixed text (no value of the API in it): refresh the lists, then upgrade without questions
const APT_UPGRADE: &[&str] = &[
    "sh",
    "-c",
    "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Options::=--force-confdef \
     -o Dpkg::Options::=--force-confold upgrade",
];
const RHEL_REPOS: &[&str] =
    &["subscription-manager", "repos", "--enable=rhel-7-server-extras-rpms", "--enable=rhel-7-server-optional-rpms"];

impl OsSupport {
    /// The row for `os` (case-insensitive), or [`OsError::Unsupported`] naming it.
    pub fn for_os(os: &str) -> Result<OsSupport, OsError> {
        let name = os.trim().to_ascii_lowercase();
        let redhat_like = |pm: PackageManager, selinux: &'static str, repos: &'static [&'static str]| OsSupport {
            os: name.clone(),
            package_manager: pm,
            flannel_package: "flannel",
            docker_package: "docker",
            selinux_python_package: selinux,
            enable_pkg_repos: repos,
            upgrade_command: if pm == PackageManager::Dnf { DNF_UPGRADE } else { YUM_UPGRADE },
            docker_config: "/etc/sysconfig/docker",
            flanneld_config: "/etc/sysconfig/flanneld",
            docker_service: "docker",
            flannel_service: "flanneld",
        };
        let row = match name.as_str() {
            "fedora" => redhat_like(PackageManager::Dnf, "python3-libselinux", &[]),
            "rhel" | "redhat" => redhat_like(PackageManager::Yum, "libselinux-python", RHEL_REPOS),
            "centos" => redhat_like(PackageManager::Yum, "libselinux-python", &[]),
            "atomic" => OsSupport {
                package_manager: PackageManager::None,
                selinux_python_package: "",
                upgrade_command: &["rpm-ostree", "upgrade"],
                ..redhat_like(PackageManager::None, "", &[])
            },
            "debian" | "ubuntu" => OsSupport {
                os: name.clone(),
                package_manager: PackageManager::Apt,
                flannel_package: "flannel",
                docker_package: "docker.io",
                selinux_python_package: "",
                enable_pkg_repos: &[],
                upgrade_command: APT_UPGRADE,
                docker_config: "/etc/default/docker",
                flanneld_config: "/etc/default/flanneld",
                docker_service: "docker",
                flannel_service: "flanneld",
            },
            _ => return Err(OsError::Unsupported { os: os.to_owned() }),
        };
        Ok(row)
    }

    /// The variables every playbook of this OS gets (package manager, names, paths, upgrade).
    pub fn vars(&self) -> Map<String, Value> {
        let mut v = Map::new();
        v.insert("commissaire_os".into(), json!(self.os));
        v.insert("commissaire_package_manager".into(), json!(self.package_manager.ansible_name()));
        v.insert("commissaire_flannel_package".into(), json!(self.flannel_package));
        v.insert("commissaire_docker_package".into(), json!(self.docker_package));
        v.insert("commissaire_selinux_python_package".into(), json!(self.selinux_python_package));
        v.insert("commissaire_enable_pkg_repos".into(), json!(self.enable_pkg_repos));
        v.insert("commissaire_upgrade_command".into(), json!(self.upgrade_command));
        v.insert("commissaire_docker_config".into(), json!(self.docker_config));
        v.insert("commissaire_flanneld_config".into(), json!(self.flanneld_config));
        v.insert("commissaire_docker_service".into(), json!(self.docker_service));
        v.insert("commissaire_flannel_service".into(), json!(self.flannel_service));
        v
    }
}

/// A docker registry mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerRegistry {
    pub host: String,
    pub port: Option<u16>,
}

/// Deployment-wide inputs of the bootstrap (from the configuration and the storage service).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootstrapSettings {
    /// A registry mirror for docker; `None`: docker gets no mirror option.
    pub docker_registry: Option<DockerRegistry>,
    /// The flannel prefix in etcd; `None`: [`DEFAULT_FLANNEL_KEY`]. A network's `flannel_key`
    /// option wins over both.
    pub flannel_key: Option<String>,
    /// The etcd server flannel reads from (flannel_etcd networks), e.g. `https://etcd:2379`.
    pub etcd_server_url: Option<String>,
    /// CA certificate for etcd on this machine (copied to the host when the URL is https).
    pub etcd_ca_path: Option<PathBuf>,
    /// Client certificate and key for etcd on this machine (copied to the host together).
    pub etcd_client_cert_path: Option<PathBuf>,
    pub etcd_client_key_path: Option<PathBuf>,
}

/// The extra variables of `bootstrap.yaml` for one host: the OS table's variables plus the
/// network's (§6.5 of the original, with the registry, flannel key and docker service fixed).
pub fn bootstrap_vars(
    address: &str,
    os: &str,
    network: &Network,
    settings: &BootstrapSettings,
) -> Result<Map<String, Value>, OsError> {
    let support = OsSupport::for_os(os)?;
    let mut v = support.vars();
    check_host("host address", address)?;
    v.insert("commissaire_bootstrap_ip".into(), json!(address));

    if let Some(registry) = &settings.docker_registry {
        check_host("docker registry host", &registry.host)?;
        v.insert("commissaire_docker_registry_host".into(), json!(registry.host));
        if let Some(port) = registry.port {
            v.insert("commissaire_docker_registry_port".into(), json!(port));
        }
    }

    let key = match network.options.get("flannel_key") {
        Some(Value::String(k)) => k.clone(),
        Some(other) => {
            return Err(OsError::InvalidValue {
                what: "network option flannel_key",
                value: other.to_string(),
                reason: "it must be a string",
            });
        }
        None => settings.flannel_key.clone().unwrap_or_else(|| DEFAULT_FLANNEL_KEY.to_owned()),
    };
    check_flannel_key(&key)?;
    v.insert("commissaire_flannel_key".into(), json!(key));

    match network.kind.as_str() {
        "flannel_server" => {
            let address = match network.options.get("address") {
                Some(Value::String(a)) if !a.is_empty() => a.clone(),
                _ => return Err(OsError::MissingServerAddress { network: network.name.clone() }),
            };
            check_host("flannel server address", &address)?;
            v.insert("commissaire_flanneld_server".into(), json!(address));
        }
        "flannel_etcd" => {
            let url = settings
                .etcd_server_url
                .clone()
                .ok_or_else(|| OsError::MissingEtcdUrl { network: network.name.clone() })?;
            check_url(&url)?;
            let https = url.to_ascii_lowercase().starts_with("https://");
            v.insert("commissaire_etcd_server_url".into(), json!(url));
            if https && let Some(ca) = &settings.etcd_ca_path {
                v.insert("commissaire_etcd_ca_path".into(), json!(REMOTE_ETCD_CA));
                v.insert("commissaire_etcd_ca_path_local".into(), json!(local_path("etcd CA path", ca)?));
            }
            if let (Some(cert), Some(key)) = (&settings.etcd_client_cert_path, &settings.etcd_client_key_path) {
                v.insert("commissaire_etcd_client_cert_path".into(), json!(REMOTE_ETCD_CLIENT_CERT));
                v.insert(
                    "commissaire_etcd_client_cert_path_local".into(),
                    json!(local_path("etcd client certificate path", cert)?),
                );
                v.insert("commissaire_etcd_client_key_path".into(), json!(REMOTE_ETCD_CLIENT_KEY));
                v.insert(
                    "commissaire_etcd_client_key_path_local".into(),
                    json!(local_path("etcd client key path", key)?),
                );
            }
        }
        other => {
            return Err(OsError::UnknownNetworkType { network: network.name.clone(), kind: other.to_owned() });
        }
    }
    Ok(v)
}

/// Host names, IP addresses and `host:port`: letters, digits, `.-:_` and `[]` for IPv6.
fn check_host(what: &'static str, value: &str) -> Result<(), OsError> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && !value.starts_with('-')
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_' | b'[' | b']'));
    if ok {
        Ok(())
    } else {
        Err(OsError::InvalidValue {
            what,
            value: value.to_owned(),
            reason: "only letters, digits and . - : _ [ ] are allowed in a host",
        })
    }
}

/// `http(s)://` URLs (comma-separated lists of them, as flannel accepts) of URL-safe characters.
fn check_url(url: &str) -> Result<(), OsError> {
    let bad = |reason| OsError::InvalidValue { what: "etcd server URL", value: url.to_owned(), reason };
    for one in url.split(',') {
        let lower = one.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Err(bad("each URL must start with http:// or https://"));
        }
    }
    let allowed =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_' | b'/' | b'[' | b']' | b',' | b'%');
    if url.len() > 2048 || !url.bytes().all(allowed) {
        return Err(bad("only letters, digits and . - : _ / [ ] , % are allowed"));
    }
    Ok(())
}

/// An etcd key path: `/` then letters, digits and `/._-`.
fn check_flannel_key(key: &str) -> Result<(), OsError> {
    let ok = key.starts_with('/')
        && key.len() <= 512
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(OsError::InvalidValue {
            what: "flannel key",
            value: key.to_owned(),
            reason: "it must start with / and hold only letters, digits and / . _ -",
        })
    }
}

fn local_path(what: &'static str, path: &std::path::Path) -> Result<String, OsError> {
    match path.to_str() {
        Some(s) if path.is_absolute() && !s.contains('\n') => Ok(s.to_owned()),
        _ => Err(OsError::InvalidValue {
            what,
            value: path.display().to_string(),
            reason: "it must be an absolute UTF-8 path",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BootstrapSettings {
        BootstrapSettings { etcd_server_url: Some("http://127.0.0.1:2379".into()), ..Default::default() }
    }

    #[test]
    fn os_table_rows() {
        let f = OsSupport::for_os("Fedora").expect("fedora");
        assert_eq!(f.package_manager, PackageManager::Dnf);
        assert_eq!(f.docker_service, "docker");
        assert_eq!(f.upgrade_command, &["dnf", "-y", "upgrade"]);
        for os in ["rhel", "redhat"] {
            let r = OsSupport::for_os(os).expect("rhel");
            assert_eq!(r.package_manager, PackageManager::Yum);
            assert_eq!(r.enable_pkg_repos[0], "subscription-manager");
        }
        let c = OsSupport::for_os("centos").expect("centos");
        assert!(c.enable_pkg_repos.is_empty());
        for os in ["debian", "ubuntu"] {
            let d = OsSupport::for_os(os).expect("debian");
            assert_eq!(d.package_manager, PackageManager::Apt);
            assert_eq!((d.flannel_package, d.docker_package), ("flannel", "docker.io"));
            assert_eq!(d.docker_service, "docker");
            assert!(d.upgrade_command[2].contains("DEBIAN_FRONTEND=noninteractive"));
        }
        let a = OsSupport::for_os("atomic").expect("atomic");
        assert_eq!(a.package_manager, PackageManager::None);
        assert_eq!(a.upgrade_command, &["rpm-ostree", "upgrade"]);
    }

    #[test]
    fn unsupported_os_is_named() {
        let err = OsSupport::for_os("plan9").expect_err("unsupported");
        assert_eq!(err, OsError::Unsupported { os: "plan9".into() });
        assert!(err.to_string().contains("\"plan9\""), "{err}");
        assert!(bootstrap_vars("h", "", &Network::new("default"), &settings()).is_err());
    }

    #[test]
    fn flannel_etcd_defaults() {
        let v = bootstrap_vars("192.0.2.7", "fedora", &Network::new("default"), &settings()).expect("vars");
        assert_eq!(v["commissaire_bootstrap_ip"], "192.0.2.7");
        assert_eq!(v["commissaire_flannel_key"], DEFAULT_FLANNEL_KEY);
        assert_eq!(v["commissaire_etcd_server_url"], "http://127.0.0.1:2379");
        assert_eq!(v["commissaire_docker_service"], "docker");
        assert_eq!(v["commissaire_flannel_service"], "flanneld");
        assert_eq!(v["commissaire_package_manager"], "dnf");
        assert!(!v.contains_key("commissaire_docker_registry_host"), "no mirror unless configured");
        assert!(!v.contains_key("commissaire_docker_registry_port"));
        assert!(!v.contains_key("commissaire_flanneld_server"));
        // plain http: no CA copied even if configured
        let s = BootstrapSettings { etcd_ca_path: Some("/etc/ca.pem".into()), ..settings() };
        let v = bootstrap_vars("h", "fedora", &Network::new("n"), &s).expect("vars");
        assert!(!v.contains_key("commissaire_etcd_ca_path"));
    }

    #[test]
    fn registry_key_and_tls_files() {
        let mut net = Network::new("n");
        net.options.insert("flannel_key".into(), json!("/cluster-a/network"));
        let s = BootstrapSettings {
            docker_registry: Some(DockerRegistry { host: "registry.example.com".into(), port: Some(5000) }),
            flannel_key: Some("/ignored/because/network/wins".into()),
            etcd_server_url: Some("https://etcd.example.com:2379".into()),
            etcd_ca_path: Some("/etc/commissaire/ca.pem".into()),
            etcd_client_cert_path: Some("/etc/commissaire/client.pem".into()),
            etcd_client_key_path: Some("/etc/commissaire/client.key".into()),
        };
        let v = bootstrap_vars("h1", "debian", &net, &s).expect("vars");
        assert_eq!(v["commissaire_docker_registry_host"], "registry.example.com");
        assert_eq!(v["commissaire_docker_registry_port"], 5000);
        assert_eq!(v["commissaire_flannel_key"], "/cluster-a/network");
        assert_eq!(v["commissaire_etcd_ca_path"], REMOTE_ETCD_CA);
        assert_eq!(v["commissaire_etcd_ca_path_local"], "/etc/commissaire/ca.pem");
        assert_eq!(v["commissaire_etcd_client_cert_path"], REMOTE_ETCD_CLIENT_CERT);
        assert_eq!(v["commissaire_etcd_client_key_path_local"], "/etc/commissaire/client.key");
        assert_eq!(v["commissaire_docker_config"], "/etc/default/docker");
        // settings' key when the network has none
        let v = bootstrap_vars("h1", "debian", &Network::new("n"), &s).expect("vars");
        assert_eq!(v["commissaire_flannel_key"], "/ignored/because/network/wins");
    }

    #[test]
    fn flannel_server_network() {
        let mut net = Network::new("srv");
        net.kind = "flannel_server".into();
        assert_eq!(
            bootstrap_vars("h", "centos", &net, &BootstrapSettings::default()),
            Err(OsError::MissingServerAddress { network: "srv".into() })
        );
        net.options.insert("address".into(), json!("flannel.example.com:8080"));
        let v = bootstrap_vars("h", "centos", &net, &BootstrapSettings::default()).expect("vars");
        assert_eq!(v["commissaire_flanneld_server"], "flannel.example.com:8080");
        assert!(!v.contains_key("commissaire_etcd_server_url"));
    }

    #[test]
    fn hostile_values_are_refused() {
        let net = Network::new("n");
        for bad in ["$(touch /tmp/x)", "a b", "h\nFOO=1", "'", "-oProxyCommand=x"] {
            assert!(bootstrap_vars(bad, "fedora", &net, &settings()).is_err(), "address {bad:?}");
            let s = BootstrapSettings {
                docker_registry: Some(DockerRegistry { host: bad.into(), port: None }),
                ..settings()
            };
            assert!(bootstrap_vars("h", "fedora", &net, &s).is_err(), "registry {bad:?}");
            let mut n = Network::new("n");
            n.options.insert("flannel_key".into(), json!(format!("/k{bad}")));
            assert!(bootstrap_vars("h", "fedora", &n, &settings()).is_err(), "key {bad:?}");
            let s = BootstrapSettings { etcd_server_url: Some(format!("http://e{bad}")), ..settings() };
            assert!(bootstrap_vars("h", "fedora", &net, &s).is_err(), "url {bad:?}");
        }
        let mut n = Network::new("n");
        n.kind = "vxlan".into();
        assert!(matches!(bootstrap_vars("h", "fedora", &n, &settings()), Err(OsError::UnknownNetworkType { .. })));
    }
}
