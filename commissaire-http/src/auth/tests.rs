use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use super::*;

/// Tests use cost-4 hashes: the rules are the same, the CPU bill is not.
fn hash4(password: &str) -> String {
    bcrypt::hash(password, 4).expect("hash")
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

const PEER: &str = "192.0.2.10";

fn creds(authorization: Option<&str>) -> Credentials<'_> {
    Credentials { authorization, client_cert_cn: None, peer: ip(PEER) }
}

fn options(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("options must be an object"),
    }
}

fn spec(name: &str, opts: Value) -> PluginSpec {
    PluginSpec { name: name.to_string(), options: options(opts) }
}

fn fast_reload() -> AuthOptions {
    AuthOptions { reload_check_interval: Duration::ZERO, ..AuthOptions::default() }
}

/// Replaces a file the way editors and configuration tools do (write + rename).
fn write_json(path: &Path, v: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, v.to_string()).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn users_file(dir: &Path, v: &Value) -> PathBuf {
    let p = dir.join("users.json");
    write_json(&p, v);
    p
}

fn basic_with_file(path: &Path) -> Authenticator {
    Authenticator::with_options(
        vec![spec("httpbasicauth", json!({"filepath": path.display().to_string()}))],
        fast_reload(),
    )
    .expect("authenticator")
}

fn identity(outcome: Outcome) -> Identity {
    match outcome {
        Outcome::Authenticated(id) => id,
        other => panic!("expected authenticated, got {other:?}"),
    }
}

fn is_denied(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Denied { .. })
}

// ---------------------------------------------------------------- plugin arguments

#[test]
fn plugin_arg_with_options() {
    let s = parse_plugin_arg("httpbasicauth:filepath=/etc/commissaire/users.json").expect("parse");
    assert_eq!(s.name, "httpbasicauth");
    assert_eq!(s.options["filepath"], json!("/etc/commissaire/users.json"));
}

#[test]
fn plugin_arg_value_may_contain_colons() {
    let s =
        parse_plugin_arg("keystone:url=https://keystone.example:5000/v3/auth/tokens,domain=Default").expect("parse");
    assert_eq!(s.name, "keystone");
    assert_eq!(s.options["url"], json!("https://keystone.example:5000/v3/auth/tokens"));
    assert_eq!(s.options["domain"], json!("Default"));
}

#[test]
fn plugin_arg_without_options_and_key_normalisation() {
    let s = parse_plugin_arg("httpauthclientcert").expect("parse");
    assert!(s.options.is_empty());
    let s = parse_plugin_arg("httpbasicauth:").expect("parse");
    assert!(s.options.is_empty());
    let s = parse_plugin_arg("httpbasicauth:cache-seconds=5,").expect("parse");
    assert_eq!(s.options["cache_seconds"], json!("5"));
    // A value may contain '='.
    let s = parse_plugin_arg("x:k=a=b").expect("parse");
    assert_eq!(s.options["k"], json!("a=b"));
}

#[test]
fn plugin_arg_errors() {
    let e = parse_plugin_arg("httpbasicauth:filepath=/x,oops").expect_err("no =");
    assert!(matches!(&e, AuthConfigError::OptionWithoutValue { item, .. } if item == "oops"));
    assert!(e.to_string().contains("\"oops\""), "{e}");
    assert!(parse_plugin_arg(":filepath=/x").is_err());
    assert!(parse_plugin_arg("p:=v").is_err());
    assert!(parse_plugin_arg("p:a=1,a=2").is_err());
}

#[test]
fn plugin_config_forms() {
    let array = json!([
        {"name": "httpbasicauth", "filepath": "/etc/users.json"},
        {"name": "httpauthclientcert", "cn": "admin", "role": "read-write"}
    ]);
    let specs = PluginSpec::from_config(&array).expect("array");
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[0].name, "httpbasicauth");
    assert_eq!(specs[0].options["filepath"], json!("/etc/users.json"));
    assert!(!specs[0].options.contains_key("name"));
    assert_eq!(specs[1].options["cn"], json!("admin"));

    let object = json!({"httpbasicauth": {"users": {"a": {"hash": "h"}}}, "httpauthclientcert": null});
    let specs = PluginSpec::from_config(&object).expect("object");
    assert_eq!(specs.len(), 2);
    let basic = specs.iter().find(|s| s.name == "httpbasicauth").expect("basic");
    assert_eq!(basic.options["users"], json!({"a": {"hash": "h"}}));

    assert!(PluginSpec::from_config(&Value::Null).expect("null").is_empty());
    assert!(PluginSpec::from_config(&json!([{"filepath": "/x"}])).is_err());
    assert!(PluginSpec::from_config(&json!(["httpbasicauth"])).is_err());
    assert!(PluginSpec::from_config(&json!("httpbasicauth")).is_err());
    assert!(PluginSpec::from_config(&json!({"httpbasicauth": "x"})).is_err());
}

#[test]
fn plugin_names_and_unknown_plugins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_file(dir.path(), &json!({}));
    let long = spec("commissaire_http.authentication.httpbasicauth", json!({"filepath": path.display().to_string()}));
    let cert = spec("commissaire_http.authentication.httpauthclientcert", json!({}));
    let a = Authenticator::new(vec![long, cert]).expect("long names");
    assert_eq!(a.plugin_names(), vec!["httpbasicauth", "httpauthclientcert"]);

    let e = Authenticator::new(vec![spec("keystonepasswordauth", json!({}))]).expect_err("unknown");
    let msg = e.to_string();
    assert!(msg.contains("keystonepasswordauth"), "{msg}");
    for known in ["httpbasicauth", "httpauthclientcert", "bearertokens"] {
        assert!(msg.contains(known), "{msg}");
    }

    let e = Authenticator::new(vec![spec("httpauthclientcert", json!({"cn": "a", "rol": "x"}))])
        .expect_err("unknown option");
    assert!(e.to_string().contains("rol"), "{e}");
    let e = Authenticator::new(vec![spec("httpauthclientcert", json!({"role": "admin"}))]).expect_err("bad role");
    assert!(e.to_string().contains("admin"), "{e}");
    assert!(Authenticator::new(vec![spec("httpbasicauth", json!({}))]).is_err());
    assert!(Authenticator::new(vec![spec("bearertokens", json!({}))]).is_err());
}

#[tokio::test]
async fn no_plugin_denies_everything() {
    let a = Authenticator::new(Vec::new()).expect("empty");
    assert!(a.is_empty());
    let header = basic("a", "a");
    let out = a.authenticate(&creds(Some(&header))).await;
    assert_eq!(out, Outcome::Denied { www_authenticate: "Bearer realm=\"commissaire\"".into() });
    let mut c = creds(None);
    c.client_cert_cn = Some("admin");
    assert!(is_denied(&a.authenticate(&c).await));
}

// ---------------------------------------------------------------- users files

#[tokio::test]
async fn original_users_file_format_and_roles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_file(
        dir.path(),
        &json!({
            "a": {"hash": hash4("a")},
            "viewer": {"hash": hash4("look"), "role": "read-only"},
            "ops": {"hash": hash4("pw"), "role": "read-write", "comment": "extra members are ignored"}
        }),
    );
    let auth = basic_with_file(&path);
    assert_eq!(auth.www_authenticate(), "Basic realm=\"commissaire\"");

    let id = identity(auth.authenticate(&creds(Some(&basic("a", "a")))).await);
    assert_eq!(id, Identity { name: "a".into(), role: Role::ReadWrite, method: "basic" });
    let id = identity(auth.authenticate(&creds(Some(&basic("viewer", "look")))).await);
    assert_eq!(id.role, Role::ReadOnly);
    assert!(!id.role.can_write());
    let id = identity(auth.authenticate(&creds(Some(&basic("ops", "pw")))).await);
    assert_eq!(id.role, Role::ReadWrite);
}

#[test]
fn role_serde_names() {
    assert_eq!(serde_json::to_value(Role::ReadOnly).expect("ser"), json!("read-only"));
    assert_eq!(serde_json::to_value(Role::ReadWrite).expect("ser"), json!("read-write"));
    let r: Role = serde_json::from_value(json!("read-only")).expect("de");
    assert_eq!(r, Role::ReadOnly);
    assert_eq!(Role::default(), Role::ReadWrite);
    assert_eq!(Role::ReadOnly.to_string(), "read-only");
}

#[test]
fn invalid_users_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: Vec<(&str, String)> = vec![
        ("broken.json", "{not json".into()),
        ("array.json", "[1, 2]".into()),
        ("nohash.json", json!({"a": {"password": "a"}}).to_string()),
        ("badhash.json", json!({"a": {"hash": "plaintext"}}).to_string()),
        ("badrole.json", json!({"a": {"hash": hash4("a"), "role": "admin"}}).to_string()),
    ];
    for (name, content) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        let e = Authenticator::new(vec![spec("httpbasicauth", json!({"filepath": path.display().to_string()}))])
            .expect_err(name);
        let msg = e.to_string();
        assert!(msg.contains(name), "{name}: {msg}");
    }
    let missing = dir.path().join("missing.json");
    let e = Authenticator::new(vec![spec("httpbasicauth", json!({"filepath": missing.display().to_string()}))])
        .expect_err("missing");
    assert!(e.to_string().contains("missing.json"), "{e}");
}

#[tokio::test]
async fn inline_users_and_file_entries_override_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_file(dir.path(), &json!({"a": {"hash": hash4("from-file")}}));
    let auth = Authenticator::new(vec![spec(
        "httpbasicauth",
        json!({
            "filepath": path.display().to_string(),
            "users": {
                "a": {"hash": hash4("inline")},
                "b": {"hash": hash4("bee"), "role": "read-only"}
            }
        }),
    )])
    .expect("authenticator");
    assert!(is_denied(&auth.authenticate(&creds(Some(&basic("a", "inline")))).await));
    identity(auth.authenticate(&creds(Some(&basic("a", "from-file")))).await);
    let b = identity(auth.authenticate(&creds(Some(&basic("b", "bee")))).await);
    assert_eq!(b.role, Role::ReadOnly);

    // Inline only.
    let inline =
        Authenticator::new(vec![spec("httpbasicauth", json!({"users": {"a": {"hash": hash4("a")}}}))]).expect("inline");
    identity(inline.authenticate(&creds(Some(&basic("a", "a")))).await);
}

// ---------------------------------------------------------------- basic auth

#[tokio::test]
async fn wrong_password_is_denied_and_right_one_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_file(dir.path(), &json!({"alice": {"hash": hash4("s3cret")}}));
    let auth = basic_with_file(&path);
    let out = auth.authenticate(&creds(Some(&basic("alice", "wrong")))).await;
    assert_eq!(out, Outcome::Denied { www_authenticate: "Basic realm=\"commissaire\"".into() });
    identity(auth.authenticate(&creds(Some(&basic("alice", "s3cret")))).await);
    let stats = auth.stats();
    assert_eq!(stats.denied, 1);
    assert_eq!(stats.authenticated, 1);
}

#[tokio::test]
async fn header_parsing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_file(dir.path(), &json!({"u": {"hash": hash4("pa:ss:word")}, "v": {"hash": hash4("")}}));
    let auth = basic_with_file(&path);
    // Password containing ':' (split at the first one).
    identity(auth.authenticate(&creds(Some(&basic("u", "pa:ss:word")))).await);
    // Scheme is case-insensitive.
    let payload = base64::engine::general_purpose::STANDARD.encode("u:pa:ss:word");
    identity(auth.authenticate(&creds(Some(&format!("bAsIc   {payload}")))).await);

    // Bad base64, no ':' and other schemes are "no credentials": no bcrypt at all.
    let before = auth.stats().bcrypt_verifications;
    for header in [
        "Basic !!!not-base64!!!".to_string(),
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("no-colon")),
        "Basic".to_string(),
        "Digest username=\"u\"".to_string(),
        basic("u", "pa:ss:word").replace("Basic ", "Basic"),
    ] {
        assert!(is_denied(&auth.authenticate(&creds(Some(&header))).await), "{header}");
    }
    assert!(is_denied(&auth.authenticate(&creds(None)).await));
    assert_eq!(auth.stats().bcrypt_verifications, before);
}

#[tokio::test]
async fn cache_makes_the_second_verification_free() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_file(dir.path(), &json!({"alice": {"hash": hash4("s3cret")}}));
    let auth = basic_with_file(&path);
    let header = basic("alice", "s3cret");
    identity(auth.authenticate(&creds(Some(&header))).await);
    assert_eq!(auth.stats().bcrypt_verifications, 1);
    for _ in 0..5 {
        identity(auth.authenticate(&creds(Some(&header))).await);
    }
    let stats = auth.stats();
    assert_eq!(stats.bcrypt_verifications, 1, "{stats:?}");
    assert_eq!(stats.cache_hits, 5);

    // The cache does not accept another password for the same user.
    assert!(is_denied(&auth.authenticate(&creds(Some(&basic("alice", "s3cre")))).await));
    assert_eq!(auth.stats().bcrypt_verifications, 2);
    // ... and a wrong attempt does not evict the right entry.
    identity(auth.authenticate(&creds(Some(&header))).await);
    assert_eq!(auth.stats().bcrypt_verifications, 2);
}

#[tokio::test]
async fn cache_can_be_disabled_and_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_file(dir.path(), &json!({"alice": {"hash": hash4("s3cret")}}));
    let header = basic("alice", "s3cret");
    let off = Authenticator::new(vec![spec(
        "httpbasicauth",
        json!({"filepath": path.display().to_string(), "cache_seconds": "0"}),
    )])
    .expect("authenticator");
    for _ in 0..3 {
        identity(off.authenticate(&creds(Some(&header))).await);
    }
    assert_eq!(off.stats().bcrypt_verifications, 3);
    assert_eq!(off.stats().cache_hits, 0);

    let short = Authenticator::new(vec![spec(
        "httpbasicauth",
        json!({"filepath": path.display().to_string(), "cache_seconds": 1}),
    )])
    .expect("authenticator");
    identity(short.authenticate(&creds(Some(&header))).await);
    identity(short.authenticate(&creds(Some(&header))).await);
    assert_eq!(short.stats().bcrypt_verifications, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    identity(short.authenticate(&creds(Some(&header))).await);
    assert_eq!(short.stats().bcrypt_verifications, 2);

    assert!(
        Authenticator::new(vec![spec(
            "httpbasicauth",
            json!({"filepath": path.display().to_string(), "cache_seconds": "soon"}),
        )])
        .is_err()
    );
}

#[tokio::test]
async fn changed_users_file_invalidates_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_file(dir.path(), &json!({"alice": {"hash": hash4("old")}}));
    let auth = basic_with_file(&path);
    let old = basic("alice", "old");
    identity(auth.authenticate(&creds(Some(&old))).await);
    identity(auth.authenticate(&creds(Some(&old))).await);
    assert_eq!(auth.stats().bcrypt_verifications, 1);

    // Password changed: rewrite the file with a new hash.
    write_json(&path, &json!({"alice": {"hash": hash4("new")}}));
    assert!(is_denied(&auth.authenticate(&creds(Some(&old))).await));
    assert_eq!(auth.stats().bcrypt_verifications, 2);
    identity(auth.authenticate(&creds(Some(&basic("alice", "new")))).await);
    identity(auth.authenticate(&creds(Some(&basic("alice", "new")))).await);
    assert_eq!(auth.stats().bcrypt_verifications, 3);

    // Rewritten in place (same inode, same size): still noticed.
    std::fs::write(&path, json!({"alice": {"hash": hash4("newer")}}).to_string()).expect("write");
    assert!(is_denied(&auth.authenticate(&creds(Some(&basic("alice", "new")))).await));
    identity(auth.authenticate(&creds(Some(&basic("alice", "newer")))).await);

    // Role changes are picked up too.
    write_json(&path, &json!({"alice": {"hash": hash4("newer"), "role": "read-only"}}));
    let id = identity(auth.authenticate(&creds(Some(&basic("alice", "newer")))).await);
    assert_eq!(id.role, Role::ReadOnly);
}

#[tokio::test]
async fn broken_users_file_on_reload_keeps_the_previous_users() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_file(dir.path(), &json!({"alice": {"hash": hash4("pw")}}));
    let auth = basic_with_file(&path);
    std::fs::write(&path, "{ half written").expect("write");
    identity(auth.authenticate(&creds(Some(&basic("alice", "pw")))).await);
    std::fs::remove_file(&path).expect("remove");
    identity(auth.authenticate(&creds(Some(&basic("alice", "pw")))).await);
    // Coming back with new contents is picked up.
    write_json(&path, &json!({"bob": {"hash": hash4("pw")}}));
    identity(auth.authenticate(&creds(Some(&basic("bob", "pw")))).await);
    assert!(is_denied(&auth.authenticate(&creds(Some(&basic("alice", "pw")))).await));
}

#[tokio::test]
async fn file_is_checked_at_most_once_per_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (alice, bob) = (hash4("pw"), hash4("pw"));
    let path = users_file(dir.path(), &json!({"alice": {"hash": alice}}));
    let auth = Authenticator::with_options(
        vec![spec("httpbasicauth", json!({"filepath": path.display().to_string()}))],
        AuthOptions { reload_check_interval: Duration::from_secs(1), ..AuthOptions::default() },
    )
    .expect("authenticator");
    write_json(&path, &json!({"bob": {"hash": bob}}));
    // Within the interval the old users are still in force...
    identity(auth.authenticate(&creds(Some(&basic("alice", "pw")))).await);
    tokio::time::sleep(Duration::from_millis(1050)).await;
    // ... after it, the new ones.
    identity(auth.authenticate(&creds(Some(&basic("bob", "pw")))).await);
    assert!(is_denied(&auth.authenticate(&creds(Some(&basic("alice", "pw")))).await));
}

#[tokio::test]
async fn unknown_user_still_spends_a_verification() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_file(dir.path(), &json!({"alice": {"hash": hash4("pw")}}));
    let auth = basic_with_file(&path);
    assert!(is_denied(&auth.authenticate(&creds(Some(&basic("mallory", "pw")))).await));
    assert_eq!(auth.stats().bcrypt_verifications, 1);
}

#[test]
fn dummy_hash_is_well_formed_with_the_users_cost() {
    let ctx = PluginContext {
        reload_check_interval: Duration::ZERO,
        counters: Arc::default(),
        bcrypt_slots: Arc::new(tokio::sync::Semaphore::new(1)),
    };
    let p = basic::BasicAuth::new(&options(json!({"users": {"a": {"hash": hash4("a")}}})), &ctx).expect("plugin");
    let dummy = p.dummy_hash_for_tests();
    let parts: bcrypt::HashParts = dummy.parse().expect("valid bcrypt syntax");
    assert_eq!(parts.get_cost(), 4);
    assert!(!bcrypt::verify("a", &dummy).expect("verifies"));
    assert!(!bcrypt::verify("", &dummy).expect("verifies"));

    let p = basic::BasicAuth::new(&options(json!({"users": {}})), &ctx).expect("plugin");
    let parts: bcrypt::HashParts = p.dummy_hash_for_tests().parse().expect("valid");
    assert_eq!(parts.get_cost(), HASH_COST);
}

#[test]
fn hash_password_is_bcrypt_2b_cost_12() {
    let h = hash_password("pa:ss word").expect("hash");
    assert!(h.starts_with("$2b$12$"), "{h}");
    assert!(bcrypt::verify("pa:ss word", &h).expect("verify"));
}

// ---------------------------------------------------------------- client certificates

#[tokio::test]
async fn client_certificate_cn_matching() {
    let any = Authenticator::new(vec![spec("httpauthclientcert", json!({}))]).expect("auth");
    assert_eq!(any.www_authenticate(), "Bearer realm=\"commissaire\"");
    let mut c = creds(None);
    c.client_cert_cn = Some("node-1.example");
    let id = identity(any.authenticate(&c).await);
    assert_eq!(id, Identity { name: "node-1.example".into(), role: Role::ReadWrite, method: "client-cert" });
    assert!(is_denied(&any.authenticate(&creds(None)).await));
    c.client_cert_cn = Some("");
    assert!(is_denied(&any.authenticate(&c).await));

    // First matching plugin wins: admin is read-write, any other verified cert read-only.
    let chain = Authenticator::new(vec![
        spec("httpauthclientcert", json!({"cn": "admin"})),
        spec("httpauthclientcert", json!({"role": "read-only"})),
    ])
    .expect("auth");
    c.client_cert_cn = Some("admin");
    assert_eq!(identity(chain.authenticate(&c).await).role, Role::ReadWrite);
    c.client_cert_cn = Some("monitor");
    assert_eq!(identity(chain.authenticate(&c).await).role, Role::ReadOnly);

    let only_admin = Authenticator::new(vec![spec("httpauthclientcert", json!({"cn": "admin"}))]).expect("auth");
    assert!(is_denied(&only_admin.authenticate(&c).await));
    c.client_cert_cn = Some("Admin");
    assert!(is_denied(&only_admin.authenticate(&c).await));
    c.client_cert_cn = Some("admin");
    identity(only_admin.authenticate(&c).await);
}

#[tokio::test]
async fn client_certificate_after_failed_basic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_file(dir.path(), &json!({"a": {"hash": hash4("a")}}));
    let auth = Authenticator::new(vec![
        spec("httpbasicauth", json!({"filepath": path.display().to_string()})),
        spec("httpauthclientcert", json!({})),
    ])
    .expect("auth");
    let header = basic("a", "wrong");
    let mut c = creds(Some(&header));
    c.client_cert_cn = Some("robot");
    let id = identity(auth.authenticate(&c).await);
    assert_eq!(id.method, "client-cert");
}

// ---------------------------------------------------------------- bearer tokens

fn tokens_file(dir: &Path, v: &Value) -> PathBuf {
    let p = dir.join("tokens.json");
    write_json(&p, v);
    p
}

#[tokio::test]
async fn bearer_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tokens_file(
        dir.path(),
        &json!({
            "ci": {"token_sha256": token_sha256_hex("tok-ci-123")},
            "grafana": {"token_sha256": token_sha256_hex("tok-ro-456").to_uppercase(), "role": "read-only"}
        }),
    );
    let auth = Authenticator::with_options(
        vec![spec("bearertokens", json!({"filepath": path.display().to_string()}))],
        fast_reload(),
    )
    .expect("auth");
    assert_eq!(auth.www_authenticate(), "Bearer realm=\"commissaire\"");

    let id = identity(auth.authenticate(&creds(Some("Bearer tok-ci-123"))).await);
    assert_eq!(id, Identity { name: "ci".into(), role: Role::ReadWrite, method: "bearer" });
    let id = identity(auth.authenticate(&creds(Some("bearer tok-ro-456"))).await);
    assert_eq!((id.name.as_str(), id.role), ("grafana", Role::ReadOnly));
    assert!(is_denied(&auth.authenticate(&creds(Some("Bearer tok-ci-12"))).await));
    assert!(is_denied(&auth.authenticate(&creds(Some("Bearer"))).await));
    assert!(is_denied(&auth.authenticate(&creds(Some(&basic("ci", "tok-ci-123")))).await));

    // Reload on change: a revoked token stops working, a new one starts.
    write_json(&path, &json!({"ci2": {"token_sha256": token_sha256_hex("tok-new")}}));
    assert!(is_denied(&auth.authenticate(&creds(Some("Bearer tok-ci-123"))).await));
    assert_eq!(identity(auth.authenticate(&creds(Some("Bearer tok-new"))).await).name, "ci2");
    assert_eq!(auth.stats().bcrypt_verifications, 0);
}

#[test]
fn invalid_tokens_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, content) in [
        ("t1.json", json!({"a": {"token_sha256": "abc"}}).to_string()),
        ("t2.json", json!({"a": {"token": "plain"}}).to_string()),
        ("t3.json", "nope".to_string()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        let e = Authenticator::new(vec![spec("bearertokens", json!({"filepath": path.display().to_string()}))])
            .expect_err(name);
        assert!(e.to_string().contains(name), "{e}");
    }
}

// ---------------------------------------------------------------- throttling

#[tokio::test]
async fn burst_of_failures_is_throttled_before_bcrypt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = users_file(dir.path(), &json!({"alice": {"hash": hash4("pw")}}));
    let auth = basic_with_file(&path);
    let attacker = ip("198.51.100.66");
    let bad = basic("alice", "guess");
    fn from(peer: IpAddr, header: &str) -> Credentials<'_> {
        Credentials { authorization: Some(header), client_cert_cn: None, peer }
    }
    let attempt = |header| from(attacker, header);
    // Default: 10 failures per 60 s are allowed.
    let mut hdrs = Vec::new();
    for i in 0..10 {
        hdrs.push(basic("alice", &format!("guess-{i}")));
    }
    for h in &hdrs {
        assert!(is_denied(&auth.authenticate(&attempt(h)).await));
    }
    assert_eq!(auth.stats().bcrypt_verifications, 10);

    let out = auth.authenticate(&attempt(&bad)).await;
    let Outcome::Throttled { retry_after } = out else { panic!("expected throttled, got {out:?}") };
    assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(60));
    // Even the right password is refused without running bcrypt.
    let good = basic("alice", "pw");
    assert!(matches!(auth.authenticate(&attempt(&good)).await, Outcome::Throttled { .. }));
    assert_eq!(auth.stats().bcrypt_verifications, 10);
    assert_eq!(auth.stats().throttled, 2);

    // Another address is not affected, and its success does not release the attacker.
    let other = Credentials { authorization: Some(&good), client_cert_cn: None, peer: ip("198.51.100.67") };
    identity(auth.authenticate(&other).await);
    assert!(matches!(auth.authenticate(&attempt(&bad)).await, Outcome::Throttled { .. }));
    // Requests without credentials do not count as failed logins.
    let quiet = Credentials { authorization: None, client_cert_cn: None, peer: ip("198.51.100.68") };
    for _ in 0..20 {
        assert!(is_denied(&auth.authenticate(&quiet).await));
    }
}

#[tokio::test]
async fn throttle_is_a_sliding_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tokens_file(dir.path(), &json!({"ci": {"token_sha256": token_sha256_hex("t")}}));
    let auth = Authenticator::with_options(
        vec![spec("bearertokens", json!({"filepath": path.display().to_string()}))],
        AuthOptions {
            throttle: ThrottleConfig { max_failures: 3, window: Duration::from_secs(1), max_tracked: 100 },
            ..AuthOptions::default()
        },
    )
    .expect("auth");
    for _ in 0..3 {
        assert!(is_denied(&auth.authenticate(&creds(Some("Bearer nope"))).await));
    }
    assert!(matches!(auth.authenticate(&creds(Some("Bearer t"))).await, Outcome::Throttled { .. }));
    tokio::time::sleep(Duration::from_millis(1050)).await;
    identity(auth.authenticate(&creds(Some("Bearer t"))).await);
}

// ---------------------------------------------------------------- logs

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn failures_are_logged_without_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = users_file(dir.path(), &json!({"alice": {"hash": hash4("pw")}}));
    let tokens = tokens_file(dir.path(), &json!({"ci": {"token_sha256": token_sha256_hex("t")}}));
    let auth = Authenticator::new(vec![
        spec("httpbasicauth", json!({"filepath": users.display().to_string()})),
        spec("bearertokens", json!({"filepath": tokens.display().to_string()})),
    ])
    .expect("auth");
    let buf = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(buf.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    auth.authenticate(&creds(Some(&basic("alice", "Sup3rSecretGuess")))).await;
    auth.authenticate(&creds(Some("Bearer TopSecretToken"))).await;
    let logs = String::from_utf8_lossy(&buf.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).to_string();
    assert!(logs.contains("alice"), "{logs}");
    assert!(logs.contains("basic") && logs.contains("bearer"), "{logs}");
    assert!(logs.contains(PEER), "{logs}");
    assert!(!logs.contains("Sup3rSecretGuess"), "{logs}");
    assert!(!logs.contains("TopSecretToken"), "{logs}");
    let encoded = basic("alice", "Sup3rSecretGuess");
    assert!(!logs.contains(encoded.trim_start_matches("Basic ")), "{logs}");
}
