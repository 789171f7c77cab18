//! `commctl user-data`: a cloud-init user-data document that makes a new
//! machine register itself with Commissaire on its first boot.
//!
//! A MIME `multipart/mixed` document with two parts, in the order cloud-init
//! processes them:
//! 1. `text/cloud-config`: the built-in one (or `--cloud-init FILE`), which
//!    installs the operator's `--authorized-key` public keys
//!    (`ssh_authorized_keys`) and sets a final message;
//! 2. `text/x-shellscript`: the first-boot script, which cloud-init runs once
//!    per instance (module `scripts_user`, after the cloud-config modules). It
//!    creates the remote user if needed (with passwordless sudo), generates the
//!    machine's own SSH key for Commissaire unless one exists, authorizes it,
//!    and registers the machine with `PUT /api/v0/host`, sending the private
//!    key (base64) and the cluster. The address is the one the server sees the
//!    request come from, unless `--address` fixes it; `--source-address` makes
//!    the request leave from a given local address.
//!
//! Every value reaches the script single-quoted; the JSON body is built here,
//! only the key's base64 (`[A-Za-z0-9+/=]`) is added on the machine.

use base64::Engine;
use serde_json::{Map, Value};

/// What the document says.
#[derive(Debug, Clone, Default)]
pub struct UserData {
    pub endpoint: String,
    pub cluster: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub remote_user: String,
    pub ssh_key_path: String,
    pub authorized_keys_path: String,
    /// Replaces the built-in cloud-config part.
    pub cloud_config: Option<String>,
    /// Public keys the built-in cloud-config installs (`ssh_authorized_keys`).
    pub authorized_keys: Vec<String>,
    /// The address to register (else the server uses the request's source).
    pub address: Option<String>,
    /// The local address the request leaves from (curl `--interface`).
    pub source_address: Option<String>,
    /// A PEM bundle the script trusts for an HTTPS endpoint.
    pub ca_pem: Option<String>,
}

/// `'…'` for a POSIX shell.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

impl UserData {
    /// The built-in cloud-config part.
    pub fn default_cloud_config(&self) -> String {
        let mut text = String::from("#cloud-config\n");
        if !self.authorized_keys.is_empty() {
            text.push_str("ssh_authorized_keys:\n");
            for key in &self.authorized_keys {
                text.push_str(&format!("  - {}\n", Value::String(key.trim().to_string())));
            }
        }
        text.push_str("final_message: \"Finished booting; registered with Commissaire\"\n");
        text
    }

    /// The start of the JSON body; the script appends the key and `"}`.
    pub fn body_prefix(&self) -> String {
        let mut body = Map::new();
        if let Some(address) = &self.address {
            body.insert("address".into(), Value::String(address.clone()));
        }
        body.insert("remote_user".into(), Value::String(self.remote_user.clone()));
        if let Some(cluster) = &self.cluster {
            body.insert("cluster".into(), Value::String(cluster.clone()));
        }
        let text = Value::Object(body).to_string();
        // `{…}` → `{…,"ssh_priv_key":"`
        format!("{},\"ssh_priv_key\":\"", &text[..text.len() - 1])
    }

    /// The first-boot script.
    pub fn script(&self) -> String {
        let q = |v: &Option<String>| shell_quote(v.as_deref().unwrap_or_default());
        let url = format!("{}/api/v0/host", self.endpoint.trim_end_matches('/'));
        let credentials = match (&self.username, &self.password) {
            (Some(user), Some(password)) => format!("{user}:{password}"),
            (Some(user), None) => format!("{user}:"),
            _ => String::new(),
        };
        let mut s = String::new();
        s.push_str("#!/bin/sh\n");
        s.push_str("# Registers this machine with Commissaire on its first boot (made by commctl user-data).\n");
        s.push_str("set -eu\numask 077\n");
        s.push_str(&format!("URL={}\n", shell_quote(&url)));
        s.push_str(&format!("CREDENTIALS={}\n", shell_quote(&credentials)));
        s.push_str(&format!("REMOTE_USER={}\n", shell_quote(&self.remote_user)));
        s.push_str(&format!("SSH_KEY_PATH={}\n", shell_quote(&self.ssh_key_path)));
        s.push_str(&format!("AUTHORIZED_KEYS_PATH={}\n", shell_quote(&self.authorized_keys_path)));
        s.push_str(&format!("SOURCE_ADDRESS={}\n", q(&self.source_address)));
        s.push_str(&format!("BODY_PREFIX={}\n", shell_quote(&self.body_prefix())));
        s.push_str(&format!("CA_PEM={}\n", q(&self.ca_pem)));
        s.push_str(SCRIPT_BODY);
        s
    }

    /// The whole multipart document, with this boundary.
    pub fn render_with_boundary(&self, boundary: &str) -> String {
        let cloud_config = self.cloud_config.clone().unwrap_or_else(|| self.default_cloud_config());
        let parts = [
            ("text/cloud-config", "cloud-config.txt", cloud_config),
            ("text/x-shellscript", "commissaire-register.sh", self.script()),
        ];
        let mut out = String::new();
        out.push_str(&format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\nMIME-Version: 1.0\n\n"));
        for (content_type, filename, content) in parts {
            out.push_str(&format!("--{boundary}\n"));
            out.push_str(&format!("Content-Type: {content_type}; charset=\"utf-8\"\n"));
            out.push_str("MIME-Version: 1.0\nContent-Transfer-Encoding: base64\n");
            out.push_str(&format!("Content-Disposition: attachment; filename=\"{filename}\"\n\n"));
            let encoded = base64::engine::general_purpose::STANDARD.encode(content.as_bytes());
            for line in encoded.as_bytes().chunks(76) {
                out.push_str(&String::from_utf8_lossy(line));
                out.push('\n');
            }
        }
        out.push_str(&format!("--{boundary}--\n"));
        out
    }

    /// The document with a random boundary (`===============<digits>==`, which
    /// base64 lines can never contain).
    pub fn render(&self) -> String {
        use rand::Rng;
        let digits: u64 = rand::thread_rng().gen_range(1_000_000_000_000_000..10_000_000_000_000_000);
        self.render_with_boundary(&format!("==============={digits}=="))
    }
}

/// The fixed part of the first-boot script.
const SCRIPT_BODY: &str = r#"
log() { echo "commissaire-register: $*" >&2; }

home_of() { getent passwd "$1" | cut -d: -f6; }

if [ "$REMOTE_USER" != root ]; then
    if ! id "$REMOTE_USER" >/dev/null 2>&1; then
        useradd -m "$REMOTE_USER"
    fi
    printf '%s ALL=(ALL) NOPASSWD: ALL\n' "$REMOTE_USER" > "/etc/sudoers.d/commissaire-$REMOTE_USER"
    chmod 0440 "/etc/sudoers.d/commissaire-$REMOTE_USER"
fi

# The machine's own key for Commissaire, authorized for the remote user.
mkdir -p "$(dirname "$SSH_KEY_PATH")" "$(dirname "$AUTHORIZED_KEYS_PATH")"
if [ ! -f "$SSH_KEY_PATH" ]; then
    ssh-keygen -q -t ed25519 -N '' -C "commissaire@$(hostname)" -f "$SSH_KEY_PATH"
fi
PUBLIC_KEY=$(ssh-keygen -y -f "$SSH_KEY_PATH")
touch "$AUTHORIZED_KEYS_PATH"
if ! grep -qxF "$PUBLIC_KEY" "$AUTHORIZED_KEYS_PATH"; then
    printf '%s\n' "$PUBLIC_KEY" >> "$AUTHORIZED_KEYS_PATH"
fi
chmod 0700 "$(dirname "$AUTHORIZED_KEYS_PATH")"
chmod 0600 "$AUTHORIZED_KEYS_PATH"
if [ "$REMOTE_USER" != root ]; then
    chown -R "$REMOTE_USER:" "$(dirname "$AUTHORIZED_KEYS_PATH")"
fi
command -v restorecon >/dev/null 2>&1 && restorecon -R "$(dirname "$AUTHORIZED_KEYS_PATH")" || true

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
printf '%s%s"}' "$BODY_PREFIX" "$(base64 -w0 < "$SSH_KEY_PATH")" > "$WORK/body"
# Credentials go to curl on a file, never on its command line.
: > "$WORK/curlrc"
if [ -n "$CREDENTIALS" ]; then
    printf 'user = "%s"\n' "$(printf '%s' "$CREDENTIALS" | sed 's/\\/\\\\/g; s/"/\\"/g')" >> "$WORK/curlrc"
fi
set -- --silent --show-error --config "$WORK/curlrc" --request PUT \
    --header 'Content-Type: application/json' --data-binary "@$WORK/body" \
    --output "$WORK/answer" --write-out '%{http_code}' --connect-timeout 10 --max-time 60
if [ -n "$SOURCE_ADDRESS" ]; then set -- "$@" --interface "$SOURCE_ADDRESS"; fi
if [ -n "$CA_PEM" ]; then printf '%s\n' "$CA_PEM" > "$WORK/ca.pem"; set -- "$@" --cacert "$WORK/ca.pem"; fi

attempt=1
while :; do
    code=$(curl "$@" "$URL" || true)
    case "$code" in
        201)
            log "registered with $URL"
            cat "$WORK/answer" >&2; echo >&2
            exit 0 ;;
        4??)
            log "the server refused the registration (HTTP $code): $(cat "$WORK/answer" 2>/dev/null)"
            exit 1 ;;
    esac
    if [ "$attempt" -ge 30 ]; then
        log "giving up after $attempt attempts (last answer: ${code:-none})"
        exit 1
    fi
    log "attempt $attempt: ${code:-no answer}; trying again in 10s"
    attempt=$((attempt + 1))
    sleep 10
done
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> UserData {
        UserData {
            endpoint: "https://c.example.com:8000/".into(),
            cluster: Some("prod".into()),
            username: Some("a".into()),
            password: Some("it's \"secret\"".into()),
            remote_user: "root".into(),
            ssh_key_path: "/root/.ssh/id_commissaire".into(),
            authorized_keys_path: "/root/.ssh/authorized_keys".into(),
            authorized_keys: vec!["ssh-ed25519 AAAAC3Nza operator@desk".into()],
            ..Default::default()
        }
    }

    /// The parts of a document, decoded, in order: (content type, text).
    fn parts(doc: &str) -> Vec<(String, String)> {
        let boundary = doc.split("boundary=\"").nth(1).and_then(|r| r.split('"').next()).expect("boundary");
        let delimiter = format!("--{boundary}");
        assert!(doc.trim_end().ends_with(&format!("{delimiter}--")), "closing delimiter");
        doc.split(&delimiter)
            .skip(1)
            .filter(|p| !p.starts_with("--"))
            .map(|part| {
                let (head, body) = part.split_once("\n\n").expect("headers and body");
                let content_type = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Type: "))
                    .and_then(|v| v.split(';').next())
                    .expect("content type");
                let b64: String = body.lines().collect();
                let text = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
                (content_type.to_string(), String::from_utf8(text).expect("utf-8"))
            })
            .collect()
    }

    #[test]
    fn cloud_config_first_then_the_script() {
        let doc = sample().render();
        assert!(doc.starts_with("Content-Type: multipart/mixed; boundary=\"==============="), "{doc}");
        let parts = parts(&doc);
        assert_eq!(
            parts.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
            ["text/cloud-config", "text/x-shellscript"]
        );
        assert!(parts[0].1.starts_with("#cloud-config\n"));
        assert!(parts[0].1.contains("ssh_authorized_keys:\n  - \"ssh-ed25519 AAAAC3Nza operator@desk\""));
        assert!(parts[1].1.starts_with("#!/bin/sh\n"));
        assert!(parts[1].1.contains("URL='https://c.example.com:8000/api/v0/host'"));
    }

    #[test]
    fn values_are_quoted_and_the_body_is_json() {
        let data = sample();
        let script = data.script();
        assert!(script.contains(r#"CREDENTIALS='a:it'\''s "secret"'"#), "{script}");
        let body = format!("{}{}\"}}", data.body_prefix(), "QUJD");
        let value: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(value, serde_json::json!({"remote_user": "root", "cluster": "prod", "ssh_priv_key": "QUJD"}));
        let fixed = UserData { address: Some("10.0.0.5".into()), cluster: None, ..sample() };
        let body = format!("{}{}\"}}", fixed.body_prefix(), "QUJD");
        let value: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(value, serde_json::json!({"address": "10.0.0.5", "remote_user": "root", "ssh_priv_key": "QUJD"}));
    }

    #[test]
    fn a_given_cloud_config_replaces_the_built_in_one() {
        let data = UserData { cloud_config: Some("#cloud-config\npackages: [python3]\n".into()), ..sample() };
        let parts = parts(&data.render());
        assert_eq!(parts[0].1, "#cloud-config\npackages: [python3]\n");
    }

    #[test]
    fn the_script_is_valid_shell() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sh");
        std::fs::write(&path, sample().script()).expect("write");
        let status = std::process::Command::new("sh").arg("-n").arg(&path).status().expect("sh");
        assert!(status.success());
    }
}
