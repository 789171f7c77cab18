//! `kubetokenreview` (alias `openshiftbearertokenauth`, the original's name):
//! `Authorization: Bearer <token>` validated by a TokenReview
//! (`POST /apis/authentication.k8s.io/v1/tokenreviews`) against a
//! Kubernetes-compatible API, with the user and groups it returns mapped to a
//! role.
//!
//! Options:
//!
//! | option | meaning |
//! |---|---|
//! | `server_url` | the API server (`openshift_endpoint`, the original's option, is accepted too: only its scheme and host are used) |
//! | `token` | the credential Commissaire itself sends to create TokenReviews (needs the `system:auth-delegator` permission) |
//! | `certificate_path` + `certificate_key_path`, `certificate_ca_path`, `insecure_skip_tls_verify` | as for the container managers (verification on by default) |
//! | `read_write_users`, `read_write_groups`, `read_only_users`, `read_only_groups` | comma-separated lists (or JSON arrays) mapping users to roles; read-write wins |
//! | `role` | the role of an authenticated user no list names; absent: such users are refused when any list is given, read-write when none is |
//! | `cache_seconds` | how long a review's answer is remembered (default 10; 0 disables) |
//!
//! The original's `Bearer: <token>` header form is accepted as well. Answers
//! are cached by a SHA-256 of the token, never the token itself; a token is
//! never logged. An API that cannot be reached rejects the request (401) and
//! logs why; that answer is not cached.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use commissaire_services::containermgr::KubeOptions;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{AuthConfigError, Credentials, Identity, Role, Verdict, check_known_options, role_option, strip_scheme};

pub(crate) const NAME: &str = "kubetokenreview";
/// The original's plugin name, accepted for the same plugin.
pub(crate) const ALIAS: &str = "openshiftbearertokenauth";

const DEFAULT_CACHE_SECONDS: u64 = 10;
/// Entries kept at most; beyond that the cache is emptied (it is only a cache).
const CACHE_LIMIT: usize = 10_000;

const OPTIONS: &[&str] = &[
    "server_url",
    "openshift_endpoint",
    "token",
    "certificate_path",
    "certificate_key_path",
    "certificate_ca_path",
    "insecure_skip_tls_verify",
    "read_write_users",
    "read_write_groups",
    "read_only_users",
    "read_only_groups",
    "role",
    "cache_seconds",
];

fn invalid(option: &str, reason: impl Into<String>) -> AuthConfigError {
    AuthConfigError::InvalidOption { plugin: NAME, option: option.into(), reason: reason.into() }
}

/// A comma-separated string or an array of strings.
fn list_option(options: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, AuthConfigError> {
    match options.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            Ok(Some(s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_string).collect()))
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(|s| s.trim().to_string()).ok_or_else(|| invalid(name, "items must be strings")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(invalid(name, "must be a comma-separated string or a list of strings")),
    }
}

#[derive(Debug, Default)]
struct Mapping {
    read_write_users: Vec<String>,
    read_write_groups: Vec<String>,
    read_only_users: Vec<String>,
    read_only_groups: Vec<String>,
    /// For users no list names (`None`: refused).
    default: Option<Role>,
}

impl Mapping {
    fn role(&self, user: &str, groups: &[String]) -> Option<Role> {
        let named = |users: &[String], wanted: &[String]| {
            users.iter().any(|u| u == user) || groups.iter().any(|g| wanted.contains(g))
        };
        if named(&self.read_write_users, &self.read_write_groups) {
            Some(Role::ReadWrite)
        } else if named(&self.read_only_users, &self.read_only_groups) {
            Some(Role::ReadOnly)
        } else {
            self.default
        }
    }
}

/// What a review said, remembered for a short time.
#[derive(Debug, Clone)]
enum Answer {
    Accepted(Identity),
    Refused(&'static str),
}

pub(crate) struct TokenReviewAuth {
    options: KubeOptions,
    client: tokio::sync::OnceCell<Client>,
    mapping: Mapping,
    cache_for: Duration,
    cache: Mutex<HashMap<[u8; 32], (Instant, Answer)>>,
}

impl TokenReviewAuth {
    pub(crate) fn new(options: &Map<String, Value>) -> Result<Self, AuthConfigError> {
        check_known_options(NAME, options, OPTIONS)?;
        let mut kube_options = Map::new();
        for name in ["token", "certificate_path", "certificate_key_path", "certificate_ca_path"] {
            if let Some(v) = options.get(name) {
                kube_options.insert(name.into(), v.clone());
            }
        }
        let url = options.get("server_url").or_else(|| options.get("openshift_endpoint"));
        match url {
            Some(v) => {
                kube_options.insert("server_url".into(), v.clone());
            }
            None => {
                return Err(AuthConfigError::Plugin {
                    plugin: NAME,
                    reason: "option server_url (the Kubernetes API server) is required".into(),
                });
            }
        }
        // Options from the command line are strings.
        let insecure = match options.get("insecure_skip_tls_verify") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) if s.trim() == "true" => true,
            Some(Value::String(s)) if s.trim() == "false" => false,
            Some(_) => return Err(invalid("insecure_skip_tls_verify", "must be true or false")),
        };
        kube_options.insert("insecure_skip_tls_verify".into(), Value::Bool(insecure));
        let kube_options = KubeOptions::from_options(&kube_options)
            .map_err(|e| AuthConfigError::Plugin { plugin: NAME, reason: e })?;
        let lists = (
            list_option(options, "read_write_users")?,
            list_option(options, "read_write_groups")?,
            list_option(options, "read_only_users")?,
            list_option(options, "read_only_groups")?,
        );
        let any_list = lists.0.is_some() || lists.1.is_some() || lists.2.is_some() || lists.3.is_some();
        let default = match options.get("role") {
            None | Some(Value::Null) if any_list => None,
            _ => Some(role_option(NAME, options)?),
        };
        let mapping = Mapping {
            read_write_users: lists.0.unwrap_or_default(),
            read_write_groups: lists.1.unwrap_or_default(),
            read_only_users: lists.2.unwrap_or_default(),
            read_only_groups: lists.3.unwrap_or_default(),
            default,
        };
        let cache_seconds = match options.get("cache_seconds") {
            None | Some(Value::Null) => DEFAULT_CACHE_SECONDS,
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| invalid("cache_seconds", "must be 0 or more"))?,
            Some(Value::String(s)) => {
                s.trim().parse().map_err(|_| invalid("cache_seconds", format!("{s:?} is not a number of seconds")))?
            }
            Some(_) => return Err(invalid("cache_seconds", "must be a number of seconds")),
        };
        Ok(TokenReviewAuth {
            options: kube_options,
            client: tokio::sync::OnceCell::new(),
            mapping,
            cache_for: Duration::from_secs(cache_seconds),
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn cached(&self, key: &[u8; 32], now: Instant) -> Option<Answer> {
        let cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.get(key).filter(|(at, _)| now.duration_since(*at) < self.cache_for).map(|(_, a)| a.clone())
    }

    fn remember(&self, key: [u8; 32], now: Instant, answer: &Answer) {
        if self.cache_for.is_zero() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, (at, _)| now.duration_since(*at) < self.cache_for);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(key, (now, answer.clone()));
    }

    /// Asks the API; `Err` when it could not answer.
    async fn review(&self, token: &str) -> Result<Answer, String> {
        let client = self.client.get_or_try_init(|| async { self.options.client() }).await?;
        let reviews: Api<TokenReview> = Api::all(client.clone());
        let review = TokenReview {
            metadata: ObjectMeta::default(),
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: None },
            status: None,
        };
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| format!("TokenReview at {} failed: {e}", self.options.server_url))?;
        let Some(status) = answer.status.filter(|s| s.authenticated == Some(true)) else {
            return Ok(Answer::Refused("the token review did not authenticate the token"));
        };
        let user = status.user.unwrap_or_default();
        let name = user.username.unwrap_or_default();
        let groups = user.groups.unwrap_or_default();
        Ok(match self.mapping.role(&name, &groups) {
            Some(role) => Answer::Accepted(Identity { name, role, method: "bearer" }),
            None => Answer::Refused("the reviewed user has no role here"),
        })
    }

    pub(crate) async fn check(&self, creds: &Credentials<'_>) -> Verdict {
        let Some(header) = creds.authorization else { return Verdict::NotApplicable };
        // `Bearer <token>`, or the original's `Bearer: <token>`
        let token = strip_scheme(header, "bearer").or_else(|| strip_scheme(header, "bearer:"));
        let Some(token) = token else { return Verdict::NotApplicable };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        let answer = match self.cached(&key, now) {
            Some(answer) => answer,
            None => match self.review(token).await {
                Ok(answer) => {
                    self.remember(key, now, &answer);
                    answer
                }
                Err(reason) => {
                    tracing::warn!(%reason, "cannot review a bearer token");
                    return Verdict::Reject { method: "bearer", user: None, reason: "the token review failed" };
                }
            },
        };
        match answer {
            Answer::Accepted(identity) => Verdict::Accept(identity),
            Answer::Refused(reason) => Verdict::Reject { method: "bearer", user: None, reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn users_and_groups_map_to_roles() {
        let opts =
            json!({"server_url": "https://k:6443", "read_write_groups": "ops, admins", "read_only_users": ["bob"]});
        let auth = TokenReviewAuth::new(opts.as_object().expect("object")).expect("plugin");
        let m = &auth.mapping;
        assert_eq!(m.role("alice", &["admins".into()]), Some(Role::ReadWrite));
        assert_eq!(m.role("bob", &[]), Some(Role::ReadOnly));
        assert_eq!(m.role("eve", &["devs".into()]), None);
        let opts = json!({"server_url": "https://k:6443"});
        let auth = TokenReviewAuth::new(opts.as_object().expect("object")).expect("plugin");
        assert_eq!(auth.mapping.role("anyone", &[]), Some(Role::ReadWrite));
    }

    #[test]
    fn options_are_checked() {
        let err = TokenReviewAuth::new(&Map::new()).err().expect("no url");
        assert!(err.to_string().contains("server_url"), "{err}");
        let opts = json!({"server_url": "https://k", "cache_seconds": "soon"});
        let err = TokenReviewAuth::new(opts.as_object().expect("object")).err().expect("cache");
        assert!(err.to_string().contains("cache_seconds"), "{err}");
        let opts = json!({"server_url": "https://k", "tokn": "x"});
        let err = TokenReviewAuth::new(opts.as_object().expect("object")).err().expect("typo");
        assert!(err.to_string().contains("tokn"), "{err}");
    }

    fn creds(header: &str) -> Credentials<'_> {
        Credentials {
            authorization: Some(header),
            client_cert_cn: None,
            peer: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        }
    }

    fn authenticator(url: &str, extra: Value) -> crate::auth::Authenticator {
        let mut options = json!({"server_url": url, "token": "commissaire-sa", "read_write_groups": "operators", "read_only_groups": "viewers"});
        if let (Some(o), Some(e)) = (options.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        let spec =
            crate::auth::PluginSpec { name: ALIAS.into(), options: options.as_object().cloned().expect("object") };
        crate::auth::Authenticator::new(vec![spec]).expect("authenticator")
    }

    #[tokio::test]
    async fn tokens_are_reviewed_by_the_api_and_mapped_to_roles() {
        let kube = commissaire_fakekube::FakeKube::start().await.expect("fake kube");
        kube.require_token(Some("commissaire-sa"));
        kube.accept_token("alice-token", "alice", &["operators"]);
        kube.accept_token("bob-token", "bob", &["viewers"]);
        kube.accept_token("eve-token", "eve", &["strangers"]);
        let auth = authenticator(&kube.url(), json!({}));
        let reviews = || kube.request_lines().iter().filter(|l| l.ends_with("/tokenreviews")).count();

        match auth.authenticate(&creds("Bearer alice-token")).await {
            crate::auth::Outcome::Authenticated(id) => {
                assert_eq!((id.name.as_str(), id.role, id.method), ("alice", Role::ReadWrite, "bearer"));
            }
            other => panic!("alice: {other:?}"),
        }
        // the review carried the token in its spec, and Commissaire's own credential
        let review = kube.requests().into_iter().find(|r| r.path.ends_with("/tokenreviews")).expect("a review");
        assert_eq!(review.verb, "POST");
        assert_eq!(review.body.pointer("/spec/token"), Some(&json!("alice-token")));
        assert!(review.authorized);
        // answered from the cache the second time
        assert!(matches!(
            auth.authenticate(&creds("Bearer alice-token")).await,
            crate::auth::Outcome::Authenticated(_)
        ));
        assert_eq!(reviews(), 1);
        // the original's header form
        match auth.authenticate(&creds("Bearer: bob-token")).await {
            crate::auth::Outcome::Authenticated(id) => assert_eq!((id.name.as_str(), id.role), ("bob", Role::ReadOnly)),
            other => panic!("bob: {other:?}"),
        }
        // authenticated by the API but in no group with a role here; unknown token
        assert!(matches!(auth.authenticate(&creds("Bearer eve-token")).await, crate::auth::Outcome::Denied { .. }));
        assert!(matches!(auth.authenticate(&creds("Bearer nobody")).await, crate::auth::Outcome::Denied { .. }));
        // not a bearer header: not this plugin's business
        assert!(matches!(auth.authenticate(&creds("Basic YTph")).await, crate::auth::Outcome::Denied { .. }));
    }

    #[tokio::test]
    async fn an_unreachable_api_denies_and_is_not_cached() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        let auth = authenticator(&format!("http://{closed}"), json!({"cache_seconds": "60"}));
        assert!(matches!(auth.authenticate(&creds("Bearer alice-token")).await, crate::auth::Outcome::Denied { .. }));
    }
}
