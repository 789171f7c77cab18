//! `~/.commissaire.json` (or `--config FILE`, or `$COMMCTL_CONFIG`): where the
//! server is and who is asking.
//!
//! ```json
//! {"endpoint": ["https://c1:8000", "https://c2:8000"], "username": "a", "password": "a"}
//! ```
//!
//! `endpoint` is a URL or a list of URLs tried in order (the next one when a
//! connection fails). `password` may be left out (commctl then asks for it on
//! the terminal). `kubeconfig` names a kubeconfig file whose current context's
//! user credentials (a token, or a user name and password) are used instead of
//! `username`/`password`. `ca_file` names a PEM bundle trusted for HTTPS in
//! addition to the system's roots.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// The configuration file's members.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub endpoint: Option<Endpoints>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// `endpoint`: one URL or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Endpoints {
    One(String),
    Many(Vec<String>),
}

impl Endpoints {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Endpoints::One(url) => vec![url],
            Endpoints::Many(urls) => urls,
        }
    }
}

/// How requests authenticate.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Basic { username: String, password: String },
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    /// Never shows a password or a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => write!(f, "None"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}, <password>)"),
            Auth::Bearer(_) => write!(f, "Bearer(<token>)"),
        }
    }
}

/// The configuration commctl runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Endpoint URLs without a trailing `/`, in the order they are tried.
    pub endpoints: Vec<String>,
    pub auth: Auth,
    pub ca_file: Option<PathBuf>,
}

/// Where the configuration is read from: `--config`, else `$COMMCTL_CONFIG`,
/// else `~/.commissaire.json`. The flag and the variable must name a file that
/// exists; the default path may be absent.
pub fn config_path(flag: Option<&Path>) -> Option<(PathBuf, bool)> {
    if let Some(path) = flag {
        return Some((path.to_path_buf(), true));
    }
    if let Some(path) = std::env::var_os("COMMCTL_CONFIG").filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(path), true));
    }
    std::env::var_os("HOME").map(|home| (Path::new(&home).join(".commissaire.json"), false))
}

/// Reads the configuration file (an absent default file is an empty one).
pub fn read_config_file(path: &Path, explicit: bool) -> Result<ConfigFile> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(ConfigFile::default()),
        Err(err) => return Err(Error::usage(format!("cannot read the configuration file {}: {err}", path.display()))),
    };
    parse_config(&text).map_err(|e| Error::usage(format!("configuration file {}: {e}", path.display())))
}

/// Parses the configuration file's text.
pub fn parse_config(text: &str) -> Result<ConfigFile, String> {
    let file: ConfigFile = serde_json::from_str(text)
        .map_err(|e| format!("{e} (the file is JSON: double quotes only, no comma after the last member)"))?;
    if let Some(endpoints) = &file.endpoint {
        let list = endpoints.clone().into_vec();
        if list.is_empty() {
            return Err("\"endpoint\" is an empty list".into());
        }
        for url in &list {
            crate::client::Endpoint::parse(url).map_err(|e| format!("endpoint {url:?}: {e}"))?;
        }
    }
    Ok(file)
}

/// Strips trailing slashes from endpoint URLs.
pub fn normalise_endpoints(urls: Vec<String>) -> Vec<String> {
    urls.into_iter().map(|u| u.trim().trim_end_matches('/').to_string()).collect()
}

/// The credentials of a kubeconfig's current context: `token` (or
/// `tokenFile`) gives a bearer token, `username` + `password` HTTP Basic.
pub fn kubeconfig_auth(path: &Path) -> Result<Auth> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::usage(format!("cannot read the kubeconfig {}: {e}", path.display())))?;
    kubeconfig_auth_from(&text, path.parent()).map_err(|e| Error::usage(format!("kubeconfig {}: {e}", path.display())))
}

/// [`kubeconfig_auth`] on the file's text; `base` resolves a relative `tokenFile`.
pub fn kubeconfig_auth_from(text: &str, base: Option<&Path>) -> Result<Auth, String> {
    let doc: Value = yaml_serde::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    let context_name = doc.get("current-context").and_then(Value::as_str).ok_or("no current-context")?;
    let named = |list: &str, name: &str| -> Option<Value> {
        doc.get(list)?.as_array()?.iter().find(|item| item.get("name").and_then(Value::as_str) == Some(name)).cloned()
    };
    let context = named("contexts", context_name).ok_or_else(|| format!("no context named {context_name:?}"))?;
    let user_name = context
        .pointer("/context/user")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("context {context_name:?} names no user"))?;
    let user = named("users", user_name).ok_or_else(|| format!("no user named {user_name:?}"))?;
    let user = user.get("user").cloned().unwrap_or(Value::Null);
    if let Some(token) = user.get("token").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        return Ok(Auth::Bearer(token.to_string()));
    }
    if let Some(file) = user.get("tokenFile").and_then(Value::as_str) {
        let path = base.map(|b| b.join(file)).unwrap_or_else(|| PathBuf::from(file));
        let token = std::fs::read_to_string(&path).map_err(|e| format!("tokenFile {}: {e}", path.display()))?;
        return Ok(Auth::Bearer(token.trim().to_string()));
    }
    match (user.get("username").and_then(Value::as_str), user.get("password").and_then(Value::as_str)) {
        (Some(username), Some(password)) => {
            Ok(Auth::Basic { username: username.to_string(), password: password.to_string() })
        }
        _ => Err(format!("user {user_name:?} has neither a token nor a username and password")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_is_a_string_or_a_list() {
        let one = parse_config(r#"{"endpoint": "http://a:8000/", "username": "u"}"#).expect("valid");
        assert_eq!(normalise_endpoints(one.endpoint.expect("set").into_vec()), ["http://a:8000"]);
        let many = parse_config(r#"{"endpoint": ["http://a:8000", "https://b:8443/"]}"#).expect("valid");
        assert_eq!(normalise_endpoints(many.endpoint.expect("set").into_vec()), ["http://a:8000", "https://b:8443"]);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let err = parse_config(r#"{"endpoint": "http://a:8000",}"#).expect_err("trailing comma");
        assert!(err.contains("no comma after the last member"), "{err}");
        let err = parse_config(r#"{"endpiont": "http://a:8000"}"#).expect_err("typo");
        assert!(err.contains("endpiont"), "{err}");
        let err = parse_config(r#"{"endpoint": []}"#).expect_err("empty");
        assert!(err.contains("empty"), "{err}");
        let err = parse_config(r#"{"endpoint": "ftp://a"}"#).expect_err("scheme");
        assert!(err.contains("ftp://a"), "{err}");
    }

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
current-context: ops
contexts:
- name: dev
  context: {cluster: c, user: dev-user}
- name: ops
  context: {cluster: c, user: ops-user}
users:
- name: dev-user
  user: {username: d, password: p}
- name: ops-user
  user: {token: s3cret}
"#;

    #[test]
    fn kubeconfig_uses_the_current_context_user() {
        assert_eq!(kubeconfig_auth_from(KUBECONFIG, None), Ok(Auth::Bearer("s3cret".into())));
        let basic = KUBECONFIG.replace("current-context: ops", "current-context: dev");
        assert_eq!(kubeconfig_auth_from(&basic, None), Ok(Auth::Basic { username: "d".into(), password: "p".into() }));
        let missing = KUBECONFIG.replace("current-context: ops", "current-context: nope");
        assert!(kubeconfig_auth_from(&missing, None).expect_err("no context").contains("nope"));
    }

    #[test]
    fn kubeconfig_token_file_is_relative_to_the_kubeconfig() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("token"), "from-file\n").expect("write");
        let text = KUBECONFIG.replace("{token: s3cret}", "{tokenFile: token}");
        assert_eq!(kubeconfig_auth_from(&text, Some(dir.path())), Ok(Auth::Bearer("from-file".into())));
    }

    #[test]
    fn auth_debug_hides_secrets() {
        let shown = format!(
            "{:?} {:?}",
            Auth::Basic { username: "u".into(), password: "pw123".into() },
            Auth::Bearer("tok456".into())
        );
        assert!(!shown.contains("pw123") && !shown.contains("tok456"), "{shown}");
    }
}
