//! The `kubernetes` and `openshift` managers: a Kubernetes-compatible API
//! reached with the `kube` client.
//!
//! Options (of the ContainerManagerConfig record):
//!
//! | option | meaning |
//! |---|---|
//! | `server_url` | the API server, `https://host:port` (`http://` only for tests); any path is dropped, as the original did |
//! | `token` | bearer token sent with every request (never logged) |
//! | `certificate_path` + `certificate_key_path` | PEM client certificate and key (both or neither) |
//! | `certificate_ca_path` | PEM file of the CA(s) that signed the API server's certificate (default: the system's roots) |
//! | `insecure_skip_tls_verify` | `true` turns off verification of the server's certificate (default `false`) |
//!
//! The node name is the host's address. Node calls are idempotent where that
//! is what a caller means: registering a node that exists and removing one
//! that does not both succeed.

use std::{fmt, path::PathBuf, time::Duration};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, EvictParams, ListParams, ObjectMeta, PostParams},
};
use serde::Serialize;
use serde_json::{Map, Value};

use super::ManagerError;

/// How long one API request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The connection options of a Kubernetes-compatible API (from a manager's
/// `options`, or an authentication plugin's). `Debug` never shows the token.
#[derive(Clone, PartialEq)]
pub struct KubeOptions {
    /// `scheme://authority` of the API server.
    pub server_url: String,
    pub token: Option<String>,
    pub certificate_path: Option<PathBuf>,
    pub certificate_key_path: Option<PathBuf>,
    pub certificate_ca_path: Option<PathBuf>,
    pub insecure_skip_tls_verify: bool,
}

impl fmt::Debug for KubeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeOptions")
            .field("server_url", &self.server_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("certificate_path", &self.certificate_path)
            .field("certificate_key_path", &self.certificate_key_path)
            .field("certificate_ca_path", &self.certificate_ca_path)
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .finish()
    }
}

fn string_option(options: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match options.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(format!("option {name} must be a string")),
    }
}

impl KubeOptions {
    /// Reads and checks the options; every error names the option.
    pub fn from_options(options: &Map<String, Value>) -> Result<Self, String> {
        let url =
            string_option(options, "server_url")?.ok_or("option server_url (the API server's URL) is required")?;
        let (scheme, rest) = url
            .split_once("://")
            .filter(|(s, _)| *s == "https" || *s == "http")
            .ok_or_else(|| format!("option server_url must start with https:// or http://, got {url:?}"))?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.is_empty() {
            return Err(format!("option server_url has no host: {url:?}"));
        }
        let certificate_path = string_option(options, "certificate_path")?.map(PathBuf::from);
        let certificate_key_path = string_option(options, "certificate_key_path")?.map(PathBuf::from);
        if certificate_path.is_some() != certificate_key_path.is_some() {
            return Err("options certificate_path and certificate_key_path must be given together".into());
        }
        if certificate_path.is_some() && scheme != "https" {
            return Err("a client certificate needs an https:// server_url".into());
        }
        let insecure_skip_tls_verify = match options.get("insecure_skip_tls_verify") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("option insecure_skip_tls_verify must be true or false".into()),
        };
        Ok(KubeOptions {
            server_url: format!("{scheme}://{authority}"),
            token: string_option(options, "token")?,
            certificate_path,
            certificate_key_path,
            certificate_ca_path: string_option(options, "certificate_ca_path")?.map(PathBuf::from),
            insecure_skip_tls_verify,
        })
    }

    /// A client for these options. Files named by the options must be
    /// readable now (a clear error names the one that is not).
    pub fn client(&self) -> Result<Client, String> {
        // One crypto provider in the process (ring); installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let uri: http::Uri = self
            .server_url
            .parse()
            .map_err(|e| format!("option server_url {:?} is not a URL: {e}", self.server_url))?;
        let mut config = kube::Config::new(uri);
        config.read_timeout = Some(REQUEST_TIMEOUT);
        // 429 means "a disruption budget blocks this eviction": the caller decides.
        config.default_retry = false;
        config.accept_invalid_certs = self.insecure_skip_tls_verify;
        for (option, path) in [
            ("certificate_path", &self.certificate_path),
            ("certificate_key_path", &self.certificate_key_path),
            ("certificate_ca_path", &self.certificate_ca_path),
        ] {
            if let Some(path) = path {
                std::fs::metadata(path).map_err(|e| format!("option {option}: cannot read {}: {e}", path.display()))?;
            }
        }
        if let Some(ca) = &self.certificate_ca_path {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("option certificate_ca_path: cannot read {}: {e}", ca.display()))?;
            let certs = pem_certificates(&pem);
            if certs.is_empty() {
                return Err(format!("option certificate_ca_path: {} holds no PEM certificate", ca.display()));
            }
            config.root_cert = Some(certs);
        }
        config.auth_info.token = self.token.clone().map(secrecy::SecretString::from);
        config.auth_info.client_certificate = self.certificate_path.as_ref().map(|p| p.display().to_string());
        config.auth_info.client_key = self.certificate_key_path.as_ref().map(|p| p.display().to_string());
        Client::try_from(config).map_err(|e| format!("cannot build a client for {}: {e}", self.server_url))
    }
}

/// The DER bytes of every `CERTIFICATE` block of a PEM file.
fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine;
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line == "-----BEGIN CERTIFICATE-----" {
            body = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            if let Some(b64) = body.take()
                && let Ok(der) = base64::engine::general_purpose::STANDARD.decode(b64)
            {
                out.push(der);
            }
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    out
}

/// What to do with pods whose eviction a disruption budget still blocks when
/// the drain's time is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainPolicy {
    /// The drain fails, naming the pods (the default).
    #[default]
    Fail,
    /// The pods are deleted (bypassing the budget).
    Force,
    /// The pods are left where they are; the drain succeeds.
    Skip,
}

/// Options of a drain (the third param of `container.drain`).
#[derive(Debug, Clone, PartialEq)]
pub struct DrainOptions {
    /// How long blocked evictions are retried.
    pub timeout: Duration,
    /// Pause between rounds of retries.
    pub retry: Duration,
    pub policy: DrainPolicy,
}

/// Default `timeout_seconds` of a drain.
pub const DEFAULT_DRAIN_TIMEOUT_SECONDS: f64 = 300.0;
/// Default `retry_seconds` of a drain.
pub const DEFAULT_DRAIN_RETRY_SECONDS: f64 = 5.0;

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            timeout: Duration::from_secs_f64(DEFAULT_DRAIN_TIMEOUT_SECONDS),
            retry: Duration::from_secs_f64(DEFAULT_DRAIN_RETRY_SECONDS),
            policy: DrainPolicy::Fail,
        }
    }
}

fn seconds(options: &Map<String, Value>, name: &str, default: f64, max: f64) -> Result<Duration, String> {
    match options.get(name) {
        None | Some(Value::Null) => Ok(Duration::from_secs_f64(default)),
        Some(v) => match v.as_f64() {
            Some(s) if (0.0..=max).contains(&s) => Ok(Duration::from_secs_f64(s)),
            _ => Err(format!("{name}: must be a number of seconds from 0 to {max}, got {v}")),
        },
    }
}

impl DrainOptions {
    /// Reads `timeout_seconds`, `retry_seconds` and `policy` (`fail`, `force`
    /// or `skip`); absent ones take the defaults, unknown names are refused.
    pub fn from_params(options: &Map<String, Value>) -> Result<Self, String> {
        if let Some(unknown) =
            options.keys().find(|k| !["timeout_seconds", "retry_seconds", "policy"].contains(&k.as_str()))
        {
            return Err(format!("unknown drain option {unknown:?} (known: timeout_seconds, retry_seconds, policy)"));
        }
        let policy = match options.get("policy") {
            None | Some(Value::Null) => DrainPolicy::Fail,
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|_| format!("policy: must be one of fail, force, skip, got {v}"))?,
        };
        Ok(DrainOptions {
            timeout: seconds(options, "timeout_seconds", DEFAULT_DRAIN_TIMEOUT_SECONDS, 86_400.0)?,
            retry: seconds(options, "retry_seconds", DEFAULT_DRAIN_RETRY_SECONDS, 3_600.0)?,
            policy,
        })
    }
}

/// What a drain did, by pod (`namespace/name`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    /// Evicted through the eviction API.
    pub evicted: Vec<String>,
    /// Deleted after the timeout (policy `force`).
    pub forced: Vec<String>,
    /// Left in place after the timeout (policy `skip`).
    pub skipped: Vec<String>,
    /// Eviction requests a disruption budget refused (429), all pods together.
    pub blocked_attempts: u32,
}

/// A manager talking to one API server.
pub struct KubeManager {
    name: String,
    url: String,
    client: Client,
}

impl fmt::Debug for KubeManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeManager").field("name", &self.name).field("url", &self.url).finish_non_exhaustive()
    }
}

fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == code)
}

impl KubeManager {
    /// Builds the manager `name` from its options.
    pub fn new(name: &str, options: &Map<String, Value>) -> Result<Self, String> {
        let options = KubeOptions::from_options(options)?;
        let client = options.client()?;
        Ok(KubeManager { name: name.to_string(), url: options.server_url, client })
    }

    fn fail(&self, what: &str, err: kube::Error) -> ManagerError {
        let detail = match err {
            kube::Error::Api(status) => {
                format!("the API answered {} {}: {}", status.code, status.reason, status.message)
            }
            other => format!("cannot talk to the API at {}: {other}", self.url),
        };
        ManagerError::Manager(format!("container manager {}: {what}: {detail}", self.name))
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// Creates the node (success when it exists already).
    pub async fn register_node(&self, address: &str) -> Result<(), ManagerError> {
        let node = Node {
            metadata: ObjectMeta { name: Some(address.to_string()), ..Default::default() },
            ..Default::default()
        };
        match self.nodes().create(&PostParams::default(), &node).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(self.fail(&format!("cannot register the node {address}"), e)),
        }
    }

    /// Deletes the node (success when it does not exist).
    pub async fn remove_node(&self, address: &str) -> Result<(), ManagerError> {
        match self.nodes().delete(address, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(self.fail(&format!("cannot remove the node {address}"), e)),
        }
    }

    async fn node(&self, address: &str) -> Result<Node, ManagerError> {
        match self.nodes().get_opt(address).await {
            Ok(Some(node)) => Ok(node),
            Ok(None) => {
                Err(ManagerError::Manager(format!("container manager {}: node {address} is not registered", self.name)))
            }
            Err(e) => Err(self.fail(&format!("cannot read the node {address}"), e)),
        }
    }

    pub async fn node_registered(&self, address: &str) -> Result<(), ManagerError> {
        self.node(address).await.map(|_| ())
    }

    /// The whole Node object.
    pub async fn node_status(&self, address: &str) -> Result<Value, ManagerError> {
        let node = self.node(address).await?;
        serde_json::to_value(node).map_err(|e| ManagerError::Manager(format!("cannot encode the node {address}: {e}")))
    }

    /// Whether the node's `Ready` condition is `True`.
    pub async fn node_ready(&self, address: &str) -> Result<bool, ManagerError> {
        let node = self.node(address).await?;
        Ok(node
            .status
            .and_then(|s| s.conditions)
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
    }

    /// Whether the node is marked unschedulable.
    pub async fn unschedulable(&self, address: &str) -> Result<bool, ManagerError> {
        Ok(self.node(address).await?.spec.and_then(|s| s.unschedulable).unwrap_or(false))
    }

    /// Marks the node unschedulable; returns whether it already was.
    pub async fn cordon(&self, address: &str) -> Result<bool, ManagerError> {
        let was = self.unschedulable(address).await?;
        if !was {
            self.nodes()
                .cordon(address)
                .await
                .map_err(|e| self.fail(&format!("cannot cordon the node {address}"), e))?;
        }
        Ok(was)
    }

    /// Marks the node schedulable.
    pub async fn uncordon(&self, address: &str) -> Result<(), ManagerError> {
        self.nodes()
            .uncordon(address)
            .await
            .map_err(|e| self.fail(&format!("cannot uncordon the node {address}"), e))?;
        Ok(())
    }

    /// The pods of the node a drain moves: not those of DaemonSets (they would
    /// come back at once), not mirror pods, not finished ones.
    async fn movable_pods(&self, address: &str) -> Result<Vec<(String, String)>, ManagerError> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let list = pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={address}")))
            .await
            .map_err(|e| self.fail(&format!("cannot list the pods of the node {address}"), e))?;
        Ok(list
            .items
            .into_iter()
            .filter(|pod| {
                let meta = &pod.metadata;
                let daemon = meta.owner_references.iter().flatten().any(|o| o.kind == "DaemonSet");
                let mirror = meta.annotations.as_ref().is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
                let finished = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|p| p == "Succeeded" || p == "Failed");
                !daemon && !mirror && !finished
            })
            .filter_map(|pod| Some((pod.metadata.namespace.unwrap_or_else(|| "default".into()), pod.metadata.name?)))
            .collect())
    }

    /// Evicts the node's pods through the eviction API, so disruption budgets
    /// are honoured: an eviction answered `429` is retried every
    /// `options.retry` until `options.timeout`, then `options.policy` decides.
    pub async fn drain(&self, address: &str, options: &DrainOptions) -> Result<DrainReport, ManagerError> {
        let deadline = tokio::time::Instant::now() + options.timeout;
        let mut report = DrainReport::default();
        let mut pending = self.movable_pods(address).await?;
        loop {
            let mut blocked = Vec::new();
            for (namespace, name) in pending {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
                match pods.evict(&name, &EvictParams::default()).await {
                    Ok(_) => report.evicted.push(format!("{namespace}/{name}")),
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) if is_status(&e, 429) => {
                        report.blocked_attempts += 1;
                        blocked.push((namespace, name));
                    }
                    Err(e) => {
                        return Err(self.fail(&format!("cannot evict the pod {namespace}/{name} from {address}"), e));
                    }
                }
            }
            if blocked.is_empty() {
                return Ok(report);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                let names: Vec<String> = blocked.iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
                return match options.policy {
                    DrainPolicy::Fail => Err(ManagerError::Manager(format!(
                        "container manager {}: cannot drain the node {address}: a disruption budget still blocks the eviction of {} after {} seconds (policy fail)",
                        self.name,
                        names.join(", "),
                        options.timeout.as_secs_f64()
                    ))),
                    DrainPolicy::Skip => {
                        report.skipped = names;
                        Ok(report)
                    }
                    DrainPolicy::Force => {
                        for (namespace, name) in blocked {
                            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
                            match pods.delete(&name, &DeleteParams::default()).await {
                                Ok(_) => report.forced.push(format!("{namespace}/{name}")),
                                Err(e) if is_status(&e, 404) => {}
                                Err(e) => {
                                    return Err(self.fail(&format!("cannot delete the pod {namespace}/{name}"), e));
                                }
                            }
                        }
                        Ok(report)
                    }
                };
            }
            tokio::time::sleep(options.retry.min(deadline - now)).await;
            pending = blocked;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn options_are_checked_and_the_token_never_shown() {
        let o = KubeOptions::from_options(&opts(
            json!({"server_url": "https://api.example:6443/some/path", "token": "s3cret"}),
        ))
        .expect("options");
        assert_eq!(o.server_url, "https://api.example:6443");
        assert!(!o.insecure_skip_tls_verify);
        assert!(!format!("{o:?}").contains("s3cret"));
        let err = KubeOptions::from_options(&opts(json!({}))).expect_err("no url");
        assert!(err.contains("server_url"), "{err}");
        let err = KubeOptions::from_options(&opts(json!({"server_url": "ftp://x"}))).expect_err("scheme");
        assert!(err.contains("server_url"), "{err}");
        let err = KubeOptions::from_options(&opts(json!({"server_url": "https://x", "certificate_path": "/c"})))
            .expect_err("pair");
        assert!(err.contains("certificate_key_path"), "{err}");
        let err =
            KubeOptions::from_options(&opts(json!({"server_url": "https://x", "insecure_skip_tls_verify": "yes"})))
                .expect_err("flag");
        assert!(err.contains("insecure_skip_tls_verify"), "{err}");
    }

    #[test]
    fn drain_options_have_defaults_and_name_bad_values() {
        let d = DrainOptions::from_params(&Map::new()).expect("defaults");
        assert_eq!(d, DrainOptions::default());
        let d = DrainOptions::from_params(&opts(json!({"policy": "skip", "timeout_seconds": 0.5}))).expect("ok");
        assert_eq!((d.policy, d.timeout), (DrainPolicy::Skip, Duration::from_millis(500)));
        let err = DrainOptions::from_params(&opts(json!({"policy": "maybe"}))).expect_err("policy");
        assert!(err.starts_with("policy"), "{err}");
        let err = DrainOptions::from_params(&opts(json!({"timeout_seconds": -1}))).expect_err("timeout");
        assert!(err.starts_with("timeout_seconds"), "{err}");
        let err = DrainOptions::from_params(&opts(json!({"grace": 1}))).expect_err("unknown");
        assert!(err.contains("grace"), "{err}");
    }

    #[test]
    fn pem_blocks_are_decoded() {
        let pem = b"-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\njunk\n-----BEGIN CERTIFICATE-----\nAwQF\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_certificates(pem), vec![vec![0, 1, 2], vec![3, 4, 5]]);
    }
}
