//! `httpbasicauth`: HTTP Basic against bcrypt hashes, with a short-lived cache of
//! successful verifications.
//!
//! Users come from the inline `users` option and/or the users file (`filepath`, the
//! original's `users.json`: `{"<user>": {"hash": "<bcrypt>", "role": "read-only"}}`,
//! `role` optional, read-write by default); file entries override inline ones. The
//! file is re-read when its modification time, size or inode change (checked at most
//! once per reload interval); a reload empties the cache.
//!
//! The cache holds, per user, an HMAC-SHA256 (random per-process key) of user and
//! password and the stored hash it was verified against, never the password. A cache
//! entry counts only while it is younger than `cache_seconds` (default 300) and the
//! user's stored hash is unchanged; tags are compared in constant time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::reload::Reloadable;
use super::{
    AuthConfigError, Counters, Credentials, HASH_COST, Identity, PluginContext, Role, Verdict, bump,
    check_known_options, strip_scheme,
};

pub(crate) const NAME: &str = "httpbasicauth";

/// Default lifetime of a cached successful verification.
pub(crate) const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);

#[derive(Deserialize)]
struct UserRecord {
    hash: String,
    #[serde(default)]
    role: Role,
}

#[derive(Clone)]
struct User {
    hash: Arc<str>,
    role: Role,
}

type Users = HashMap<String, User>;

struct UserTable {
    users: Users,
    /// A well-formed hash that no password matches, with the users' (highest) cost,
    /// verified against for unknown users so that timing does not reveal them.
    dummy_hash: Arc<str>,
}

fn dummy_hash(cost: u32) -> String {
    // An all-zero salt and digest: valid bcrypt syntax, never produced by a password
    // in practice.
    format!("$2b${cost:02}${}", ".".repeat(53))
}

fn parse_records(value: Value) -> Result<Users, String> {
    let records: HashMap<String, UserRecord> = serde_json::from_value(value)
        .map_err(|e| format!("expected {{\"<user>\": {{\"hash\": \"<bcrypt hash>\"}}}}: {e}"))?;
    records
        .into_iter()
        .map(|(name, r)| {
            r.hash.parse::<bcrypt::HashParts>().map_err(|e| format!("user {name:?}: invalid bcrypt hash ({e})"))?;
            Ok((name, User { hash: r.hash.into(), role: r.role }))
        })
        .collect()
}

fn build_table(inline: &Users, from_file: Users) -> UserTable {
    let mut users = inline.clone();
    users.extend(from_file);
    let cost = users
        .values()
        .filter_map(|u| u.hash.parse::<bcrypt::HashParts>().ok())
        .map(|p| p.get_cost())
        .max()
        .unwrap_or(HASH_COST);
    UserTable { users, dummy_hash: dummy_hash(cost).into() }
}

enum Source {
    Static(Arc<UserTable>),
    File(Reloadable<UserTable>),
}

struct CacheEntry {
    tag: [u8; 32],
    hash: Arc<str>,
    expires: Instant,
}

pub(crate) struct BasicAuth {
    source: Source,
    cache: Mutex<HashMap<String, CacheEntry>>,
    cache_ttl: Duration,
    mac: Hmac<Sha256>,
    counters: Arc<Counters>,
    bcrypt_slots: Arc<Semaphore>,
}

fn cache_ttl_option(options: &Map<String, Value>) -> Result<Duration, AuthConfigError> {
    let bad = || AuthConfigError::InvalidOption {
        plugin: NAME,
        option: "cache_seconds".into(),
        reason: "must be a whole number of seconds (0 disables the cache)".into(),
    };
    match options.get("cache_seconds") {
        None | Some(Value::Null) => Ok(DEFAULT_CACHE_TTL),
        Some(Value::Number(n)) => n.as_u64().map(Duration::from_secs).ok_or_else(bad),
        Some(Value::String(s)) => s.trim().parse::<u64>().map(Duration::from_secs).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

impl BasicAuth {
    pub(crate) fn new(options: &Map<String, Value>, ctx: &PluginContext) -> Result<Self, AuthConfigError> {
        check_known_options(NAME, options, &["filepath", "users", "cache_seconds"])?;
        let inline = match options.get("users") {
            None | Some(Value::Null) => Users::new(),
            Some(v @ Value::Object(_)) => parse_records(v.clone())
                .map_err(|reason| AuthConfigError::InvalidOption { plugin: NAME, option: "users".into(), reason })?,
            Some(_) => {
                return Err(AuthConfigError::InvalidOption {
                    plugin: NAME,
                    option: "users".into(),
                    reason: "must be an object of user name to {\"hash\": ...}".into(),
                });
            }
        };
        let path = match options.get("filepath") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) if !p.trim().is_empty() => Some(PathBuf::from(p.trim())),
            Some(_) => {
                return Err(AuthConfigError::InvalidOption {
                    plugin: NAME,
                    option: "filepath".into(),
                    reason: "must be the path of the users file".into(),
                });
            }
        };
        let source = match path {
            None if !options.contains_key("users") => {
                return Err(AuthConfigError::Plugin {
                    plugin: NAME,
                    reason: "needs a users file (filepath) and/or inline users (users)".into(),
                });
            }
            None => Source::Static(Arc::new(build_table(&inline, Users::new()))),
            Some(path) => Source::File(Reloadable::load(
                path,
                "users file",
                ctx.reload_check_interval,
                Box::new(move |bytes: &[u8]| {
                    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
                    Ok(build_table(&inline, parse_records(value)?))
                }),
            )?),
        };
        let key: [u8; 32] = rand::random();
        let mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| AuthConfigError::Plugin {
            plugin: NAME,
            reason: format!("cannot set up the verification cache: {e}"),
        })?;
        let auth = BasicAuth {
            source,
            cache: Mutex::new(HashMap::new()),
            cache_ttl: cache_ttl_option(options)?,
            mac,
            counters: ctx.counters.clone(),
            bcrypt_slots: ctx.bcrypt_slots.clone(),
        };
        if auth.table().users.is_empty() {
            tracing::warn!("{NAME}: no users are configured; basic authentication accepts nobody");
        }
        Ok(auth)
    }

    fn table(&self) -> Arc<UserTable> {
        match &self.source {
            Source::Static(t) => t.clone(),
            Source::File(r) => {
                let (table, reloaded) = r.current();
                if reloaded {
                    self.cache.lock().unwrap_or_else(PoisonError::into_inner).clear();
                }
                table
            }
        }
    }

    fn tag(&self, user: &str, password: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(&(user.len() as u64).to_be_bytes());
        mac.update(user.as_bytes());
        mac.update(password);
        mac.finalize().into_bytes().into()
    }

    fn cache_hit(&self, user: &str, hash: &Arc<str>, tag: &[u8; 32]) -> bool {
        if self.cache_ttl.is_zero() {
            return false;
        }
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = cache.get(user) else {
            return false;
        };
        if entry.expires <= Instant::now() || entry.hash != *hash {
            cache.remove(user);
            return false;
        }
        bool::from(entry.tag.ct_eq(tag))
    }

    fn remember(&self, user: &str, tag: [u8; 32], hash: Arc<str>) {
        if self.cache_ttl.is_zero() {
            return;
        }
        let entry = CacheEntry { tag, hash, expires: Instant::now() + self.cache_ttl };
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).insert(user.to_string(), entry);
    }

    /// Runs bcrypt on the blocking pool, at most one per core at a time.
    async fn verify(&self, password: Vec<u8>, hash: Arc<str>) -> Result<bool, String> {
        let permit = self.bcrypt_slots.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        bump(&self.counters.bcrypt_verifications);
        tokio::task::spawn_blocking(move || {
            let result = bcrypt::verify(&password, &hash);
            drop(permit);
            result
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    pub(crate) async fn check(&self, creds: &Credentials<'_>) -> Verdict {
        let Some(payload) = creds.authorization.and_then(|h| strip_scheme(h, "basic")) else {
            return Verdict::NotApplicable;
        };
        // Bad base64, no ':' or a user name that is not UTF-8: no credentials.
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(payload) else {
            return Verdict::NotApplicable;
        };
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return Verdict::NotApplicable;
        };
        let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
        let Ok(user) = std::str::from_utf8(user) else {
            return Verdict::NotApplicable;
        };

        let table = self.table();
        let Some(record) = table.users.get(user) else {
            // Spend comparable time so that unknown users cannot be told apart.
            let _ = self.verify(password.to_vec(), table.dummy_hash.clone()).await;
            return Verdict::Reject { method: "basic", user: Some(user.to_string()), reason: "unknown user" };
        };
        let tag = self.tag(user, password);
        let accept = || Verdict::Accept(Identity { name: user.to_string(), role: record.role, method: "basic" });
        if self.cache_hit(user, &record.hash, &tag) {
            bump(&self.counters.cache_hits);
            return accept();
        }
        match self.verify(password.to_vec(), record.hash.clone()).await {
            Ok(true) => {
                self.remember(user, tag, record.hash.clone());
                accept()
            }
            Ok(false) => Verdict::Reject { method: "basic", user: Some(user.to_string()), reason: "wrong password" },
            Err(e) => {
                tracing::warn!(user = ?user, error = %e, "{NAME}: cannot verify the password");
                Verdict::Reject {
                    method: "basic",
                    user: Some(user.to_string()),
                    reason: "password verification failed",
                }
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn dummy_hash_for_tests(&self) -> Arc<str> {
        self.table().dummy_hash.clone()
    }
}
