//! Authentication of REST requests: HTTP Basic against bcrypt hashes, TLS client
//! certificates, bearer tokens and Kubernetes TokenReview, with read-only /
//! read-write roles.
//!
//! The server extracts [`Credentials`] from a request and asks the [`Authenticator`]
//! for an [`Outcome`]. Plugins are tried in configuration order and the first one that
//! accepts wins. With no plugin configured, every request is denied.
//!
//! Differences from the original (see `shared/design/decisions.md` rows 2 and 20):
//! * a denial carries the `WWW-Authenticate` challenge for a `401`;
//! * a successful bcrypt verification is remembered for a short time (keyed by an
//!   HMAC of user and password with a per-process random key), so authenticated
//!   requests do not pay bcrypt's cost every time;
//! * passwords may contain `:`; plugin options on the command line may contain `:`;
//! * a burst of failed logins from one address is throttled before any bcrypt work.

mod basic;
mod bearer;
mod clientcert;
mod reload;
mod throttle;
mod tokenreview;

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use bearer::token_sha256_hex;
pub use throttle::ThrottleConfig;

/// Realm named in every `WWW-Authenticate` challenge.
pub const REALM: &str = "commissaire";

/// bcrypt cost used by [`hash_password`].
pub const HASH_COST: u32 = 12;

/// What an authenticated client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// May read and change everything.
    #[default]
    ReadWrite,
    /// May only use safe methods (GET, HEAD, OPTIONS).
    ReadOnly,
}

impl Role {
    /// The role's name as written in configuration files (`read-write`, `read-only`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadWrite => "read-write",
            Role::ReadOnly => "read-only",
        }
    }

    /// Whether this role may change state.
    pub fn can_write(self) -> bool {
        self == Role::ReadWrite
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "read-write" => Some(Role::ReadWrite),
            "read-only" => Some(Role::ReadOnly),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who made a request, as established by an authentication plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User name, certificate common name or token name.
    pub name: String,
    pub role: Role,
    /// `"basic"`, `"client-cert"` or `"bearer"`.
    pub method: &'static str,
}

/// What the server extracted from a request.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a str>,
    /// The subject CN of a client certificate that the TLS layer verified against the
    /// configured client CA (never set for an unverified certificate).
    pub client_cert_cn: Option<&'a str>,
    /// The TCP peer address (used for throttling and logs).
    pub peer: IpAddr,
}

/// Result of [`Authenticator::authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Authenticated(Identity),
    /// No or bad credentials: answer `401` with this `WWW-Authenticate` value.
    Denied {
        www_authenticate: String,
    },
    /// Too many recent failures from this address: answer `429` with `Retry-After`.
    Throttled {
        retry_after: Duration,
    },
}

/// A configuration problem in the authentication plugins. Every message names the
/// plugin, option or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("invalid authentication plugin argument {arg:?}: {reason}")]
    InvalidArgument { arg: String, reason: String },
    #[error("authentication plugin option {item:?} in {arg:?} has no '=' (expected NAME:key=value,key=value)")]
    OptionWithoutValue { arg: String, item: String },
    #[error("unknown authentication plugin {name:?}; known plugins: {known}")]
    UnknownPlugin { name: String, known: String },
    #[error("invalid authentication_plugins configuration: {0}")]
    InvalidConfig(String),
    #[error("authentication plugin {plugin}: option {option:?}: {reason}")]
    InvalidOption { plugin: &'static str, option: String, reason: String },
    #[error("authentication plugin {plugin}: {reason}")]
    Plugin { plugin: &'static str, reason: String },
    #[error("{kind} {path}: {reason}")]
    File { kind: &'static str, path: String, reason: String },
}

/// A plugin name and its options, from the command line or the configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSpec {
    pub name: String,
    pub options: Map<String, Value>,
}

/// Parses the command-line form `NAME:key=value,key=value` (or just `NAME`).
///
/// The name ends at the FIRST `:`, so values may contain `:` (URLs). Option names have
/// `-` replaced by `_` (as the configuration loader does for member names); values are
/// strings. An item without `=` is an error naming the item.
pub fn parse_plugin_arg(arg: &str) -> Result<PluginSpec, AuthConfigError> {
    let invalid = |reason: &str| AuthConfigError::InvalidArgument { arg: arg.to_string(), reason: reason.to_string() };
    let (name, rest) = arg.split_once(':').unwrap_or((arg, ""));
    let name = name.trim();
    if name.is_empty() {
        return Err(invalid("the plugin name is empty"));
    }
    let mut options = Map::new();
    for item in rest.split(',') {
        if item.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = item.split_once('=') else {
            return Err(AuthConfigError::OptionWithoutValue { arg: arg.to_string(), item: item.to_string() });
        };
        let key = normalise_key(key.trim());
        if key.is_empty() {
            return Err(invalid(&format!("option {item:?} has an empty name")));
        }
        if options.contains_key(&key) {
            return Err(invalid(&format!("option {key:?} is given twice")));
        }
        options.insert(key, Value::String(value.to_string()));
    }
    Ok(PluginSpec { name: name.to_string(), options })
}

impl PluginSpec {
    /// Reads the configuration file member `authentication_plugins`: either an array of
    /// objects, each with a `name` and the plugin's options (tried in array order), or
    /// an object mapping a plugin name to its options object (JSON objects are
    /// unordered: tried in name order; use the array form to choose the order or to
    /// configure a plugin twice). `null` means no plugin. Option names have `-`
    /// replaced by `_`.
    pub fn from_config(value: &Value) -> Result<Vec<PluginSpec>, AuthConfigError> {
        let bad = |m: String| AuthConfigError::InvalidConfig(m);
        match value {
            Value::Null => Ok(Vec::new()),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let Value::Object(obj) = item else {
                        return Err(bad(format!("item {i} is not an object")));
                    };
                    let name = match obj.get("name") {
                        Some(Value::String(n)) if !n.trim().is_empty() => n.trim().to_string(),
                        Some(_) => {
                            return Err(bad(format!("item {i}: \"name\" is not a plugin name")));
                        }
                        None => return Err(bad(format!("item {i} has no \"name\""))),
                    };
                    let options = obj
                        .iter()
                        .filter(|(k, _)| k.as_str() != "name")
                        .map(|(k, v)| (normalise_key(k), v.clone()))
                        .collect();
                    Ok(PluginSpec { name, options })
                })
                .collect(),
            Value::Object(map) => map
                .iter()
                .map(|(name, opts)| {
                    let options = match opts {
                        Value::Object(o) => o.iter().map(|(k, v)| (normalise_key(k), v.clone())).collect(),
                        Value::Null => Map::new(),
                        _ => {
                            return Err(bad(format!("the options of plugin {name:?} are not an object")));
                        }
                    };
                    Ok(PluginSpec { name: name.trim().to_string(), options })
                })
                .collect(),
            _ => Err(bad("expected an array of plugin objects or an object of plugin name to options".to_string())),
        }
    }
}

fn normalise_key(key: &str) -> String {
    key.replace('-', "_")
}

/// Hashes a password for a users file: bcrypt, cost 12, `$2b$` (about a quarter of a
/// second of CPU: call it from a blocking context).
pub fn hash_password(password: &str) -> Result<String, HashPasswordError> {
    bcrypt::hash(password, HASH_COST).map_err(|e| HashPasswordError(e.to_string()))
}

/// Hashing a password failed (no randomness available for the salt).
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashPasswordError(String);

/// Tunables of the [`Authenticator`] that are not plugin options.
#[derive(Debug, Clone)]
pub struct AuthOptions {
    pub throttle: ThrottleConfig,
    /// How often, at most, users and token files are checked for changes.
    pub reload_check_interval: Duration,
}

impl Default for AuthOptions {
    fn default() -> Self {
        AuthOptions { throttle: ThrottleConfig::default(), reload_check_interval: Duration::from_secs(1) }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthStats {
    /// bcrypt verifications run (including the dummy ones for unknown users).
    pub bcrypt_verifications: u64,
    /// Basic credentials accepted from the verification cache.
    pub cache_hits: u64,
    pub authenticated: u64,
    pub denied: u64,
    pub throttled: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) bcrypt_verifications: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    authenticated: AtomicU64,
    denied: AtomicU64,
    throttled: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What one plugin made of a request.
pub(crate) enum Verdict {
    Accept(Identity),
    /// Credentials of this plugin's kind were presented and are wrong.
    Reject {
        method: &'static str,
        user: Option<String>,
        reason: &'static str,
    },
    /// No credentials of this plugin's kind.
    NotApplicable,
}

pub(crate) struct PluginContext {
    pub(crate) reload_check_interval: Duration,
    pub(crate) counters: Arc<Counters>,
    /// Limits concurrent bcrypt verifications to the number of cores, so a flood of
    /// logins queues instead of filling the blocking thread pool.
    pub(crate) bcrypt_slots: Arc<tokio::sync::Semaphore>,
}

enum Plugin {
    Basic(Box<basic::BasicAuth>),
    ClientCert(clientcert::ClientCertAuth),
    Bearer(bearer::BearerTokens),
    TokenReview(Box<tokenreview::TokenReviewAuth>),
}

impl Plugin {
    fn name(&self) -> &'static str {
        match self {
            Plugin::Basic(_) => basic::NAME,
            Plugin::ClientCert(_) => clientcert::NAME,
            Plugin::Bearer(_) => bearer::NAME,
            Plugin::TokenReview(_) => tokenreview::NAME,
        }
    }

    async fn check(&self, creds: &Credentials<'_>) -> Verdict {
        match self {
            Plugin::Basic(p) => p.check(creds).await,
            Plugin::ClientCert(p) => p.check(creds),
            Plugin::Bearer(p) => p.check(creds),
            Plugin::TokenReview(p) => p.check(creds).await,
        }
    }
}

const KNOWN_PLUGINS: &str =
    "httpbasicauth, httpauthclientcert, bearertokens, kubetokenreview (alias openshiftbearertokenauth)";
const MODULE_PREFIX: &str = "commissaire_http.authentication.";

/// The configured chain of authentication plugins.
pub struct Authenticator {
    plugins: Vec<Plugin>,
    throttle: throttle::Throttle,
    www_authenticate: String,
    counters: Arc<Counters>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("plugins", &self.plugin_names())
            .field("www_authenticate", &self.www_authenticate)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds the plugin chain with default throttling and reload settings. Users and
    /// token files are read now; an unreadable or invalid one is an error naming it.
    pub fn new(specs: Vec<PluginSpec>) -> Result<Self, AuthConfigError> {
        Self::with_options(specs, AuthOptions::default())
    }

    pub fn with_options(specs: Vec<PluginSpec>, options: AuthOptions) -> Result<Self, AuthConfigError> {
        let counters = Arc::new(Counters::default());
        let ctx = PluginContext {
            reload_check_interval: options.reload_check_interval,
            counters: counters.clone(),
            bcrypt_slots: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            )),
        };
        let mut plugins = Vec::with_capacity(specs.len());
        for spec in specs {
            let short = spec.name.strip_prefix(MODULE_PREFIX).unwrap_or(&spec.name);
            let plugin = match short {
                basic::NAME => Plugin::Basic(Box::new(basic::BasicAuth::new(&spec.options, &ctx)?)),
                clientcert::NAME => Plugin::ClientCert(clientcert::ClientCertAuth::new(&spec.options)?),
                bearer::NAME => Plugin::Bearer(bearer::BearerTokens::new(&spec.options, &ctx)?),
                tokenreview::NAME | tokenreview::ALIAS => {
                    Plugin::TokenReview(Box::new(tokenreview::TokenReviewAuth::new(&spec.options)?))
                }
                _ => {
                    return Err(AuthConfigError::UnknownPlugin {
                        name: spec.name.clone(),
                        known: KNOWN_PLUGINS.to_string(),
                    });
                }
            };
            plugins.push(plugin);
        }
        let scheme = if plugins.iter().any(|p| matches!(p, Plugin::Basic(_))) { "Basic" } else { "Bearer" };
        Ok(Authenticator {
            plugins,
            throttle: throttle::Throttle::new(options.throttle),
            www_authenticate: format!("{scheme} realm=\"{REALM}\""),
            counters,
        })
    }

    /// True when no plugin is configured: every request is denied.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// The configured plugins' names, in order.
    pub fn plugin_names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(Plugin::name).collect()
    }

    /// The `WWW-Authenticate` value sent with every denial.
    pub fn www_authenticate(&self) -> &str {
        &self.www_authenticate
    }

    pub fn stats(&self) -> AuthStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AuthStats {
            bcrypt_verifications: get(&c.bcrypt_verifications),
            cache_hits: get(&c.cache_hits),
            authenticated: get(&c.authenticated),
            denied: get(&c.denied),
            throttled: get(&c.throttled),
        }
    }

    /// Authenticates one request. The throttle is checked first, so a throttled address
    /// costs no bcrypt work.
    pub async fn authenticate(&self, creds: &Credentials<'_>) -> Outcome {
        let now = Instant::now();
        if let Some(retry_after) = self.throttle.check(creds.peer, now) {
            bump(&self.counters.throttled);
            tracing::debug!(peer = %creds.peer, ?retry_after, "authentication throttled");
            return Outcome::Throttled { retry_after };
        }

        let mut rejections = Vec::new();
        for plugin in &self.plugins {
            match plugin.check(creds).await {
                Verdict::Accept(identity) => {
                    bump(&self.counters.authenticated);
                    tracing::debug!(
                        user = ?identity.name,
                        method = identity.method,
                        role = %identity.role,
                        peer = %creds.peer,
                        "authenticated"
                    );
                    return Outcome::Authenticated(identity);
                }
                Verdict::Reject { method, user, reason } => rejections.push((method, user, reason)),
                Verdict::NotApplicable => {}
            }
        }

        bump(&self.counters.denied);
        let header_presented = creds.authorization.is_some_and(|a| !a.trim().is_empty());
        if rejections.is_empty() {
            if header_presented {
                tracing::warn!(
                    method = authorization_scheme(creds.authorization),
                    peer = %creds.peer,
                    "authentication failed: no configured plugin accepts these credentials"
                );
            } else {
                tracing::debug!(peer = %creds.peer, "request without credentials denied");
            }
        }
        // Log each distinct rejection once (the same credentials may be turned down by
        // several plugins of the same kind).
        let mut seen = HashSet::new();
        for (method, user, reason) in &rejections {
            if !seen.insert((*method, user.clone(), *reason)) {
                continue;
            }
            // User names come from the client: `?` escapes control characters.
            match user {
                Some(user) => tracing::warn!(
                    user = ?user,
                    method,
                    peer = %creds.peer,
                    reason,
                    "authentication failed"
                ),
                None => tracing::warn!(method, peer = %creds.peer, reason, "authentication failed"),
            }
        }
        if (header_presented || !rejections.is_empty()) && self.throttle.record_failure(creds.peer, now) {
            tracing::warn!(
                peer = %creds.peer,
                "too many failed logins from this address: throttling it"
            );
        }
        Outcome::Denied { www_authenticate: self.www_authenticate.clone() }
    }
}

/// The scheme word of an `Authorization` header, for logs (never the credentials).
fn authorization_scheme(header: Option<&str>) -> &'static str {
    match header.and_then(|h| h.split_whitespace().next()) {
        Some(s) if s.eq_ignore_ascii_case("basic") => "basic",
        Some(s) if s.eq_ignore_ascii_case("bearer") => "bearer",
        Some(_) => "other",
        None => "none",
    }
}

/// Splits `Authorization: <scheme> <rest>` when the scheme matches (case-insensitive).
pub(crate) fn strip_scheme<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let header = header.trim_start();
    let (word, rest) = header.split_once(|c: char| c.is_ascii_whitespace())?;
    if word.eq_ignore_ascii_case(scheme) {
        let rest = rest.trim();
        (!rest.is_empty()).then_some(rest)
    } else {
        None
    }
}

/// Reads an optional role option (`read-write` / `read-only`).
pub(crate) fn role_option(plugin: &'static str, options: &Map<String, Value>) -> Result<Role, AuthConfigError> {
    match options.get("role") {
        None | Some(Value::Null) => Ok(Role::default()),
        Some(Value::String(s)) => Role::parse(s.trim()).ok_or_else(|| AuthConfigError::InvalidOption {
            plugin,
            option: "role".into(),
            reason: format!("{s:?} is not a role (read-write or read-only)"),
        }),
        Some(_) => Err(AuthConfigError::InvalidOption {
            plugin,
            option: "role".into(),
            reason: "must be a string (read-write or read-only)".into(),
        }),
    }
}

/// Reads an optional string option.
pub(crate) fn string_option<'a>(
    plugin: &'static str,
    options: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, AuthConfigError> {
    match options.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => {
            Err(AuthConfigError::InvalidOption { plugin, option: name.into(), reason: "must be a string".into() })
        }
    }
}

/// Rejects options a plugin does not know (a typo should not silently weaken auth).
pub(crate) fn check_known_options(
    plugin: &'static str,
    options: &Map<String, Value>,
    known: &[&str],
) -> Result<(), AuthConfigError> {
    match options.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(AuthConfigError::InvalidOption {
            plugin,
            option: k.clone(),
            reason: format!("unknown option (known: {})", known.join(", ")),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
