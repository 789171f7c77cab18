//! `bearertokens`: `Authorization: Bearer <token>` against a file of token digests.
//!
//! File format: `{"<name>": {"token_sha256": "<hex sha256 of the token>", "role":
//! "read-only"}}` (`role` defaults to read-write). Only digests are stored, so the
//! file does not hold usable secrets. The file is re-read when it changes.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::reload::Reloadable;
use super::{AuthConfigError, Credentials, Identity, PluginContext, Role, Verdict, check_known_options, strip_scheme};

pub(crate) const NAME: &str = "bearertokens";

#[derive(Deserialize)]
struct TokenRecord {
    token_sha256: String,
    #[serde(default)]
    role: Role,
}

struct Token {
    name: String,
    digest: [u8; 32],
    role: Role,
}

pub(crate) struct BearerTokens {
    tokens: Reloadable<Vec<Token>>,
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim().as_bytes();
    if s.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

fn parse_tokens(bytes: &[u8]) -> Result<Vec<Token>, String> {
    let records: HashMap<String, TokenRecord> =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid tokens file: {e}"))?;
    let mut tokens: Vec<Token> = records
        .into_iter()
        .map(|(name, r)| match decode_hex32(&r.token_sha256) {
            Some(digest) => Ok(Token { name, digest, role: r.role }),
            None => Err(format!("token {name:?}: token_sha256 is not 64 hexadecimal digits")),
        })
        .collect::<Result<_, _>>()?;
    tokens.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tokens)
}

impl BearerTokens {
    pub(crate) fn new(options: &Map<String, Value>, ctx: &PluginContext) -> Result<Self, AuthConfigError> {
        check_known_options(NAME, options, &["filepath"])?;
        let path = match options.get("filepath") {
            Some(Value::String(p)) if !p.trim().is_empty() => PathBuf::from(p.trim()),
            Some(_) => {
                return Err(AuthConfigError::InvalidOption {
                    plugin: NAME,
                    option: "filepath".into(),
                    reason: "must be the path of the tokens file".into(),
                });
            }
            None => {
                return Err(AuthConfigError::Plugin {
                    plugin: NAME,
                    reason: "option filepath (the tokens file) is required".into(),
                });
            }
        };
        let tokens = Reloadable::load(path, "bearer tokens file", ctx.reload_check_interval, Box::new(parse_tokens))?;
        Ok(BearerTokens { tokens })
    }

    pub(crate) fn check(&self, creds: &Credentials<'_>) -> Verdict {
        let Some(token) = creds.authorization.and_then(|h| strip_scheme(h, "bearer")) else {
            return Verdict::NotApplicable;
        };
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let (tokens, _) = self.tokens.current();
        // Compare against every entry, in constant time, without stopping early.
        let mut found: Option<&Token> = None;
        for t in tokens.iter() {
            let eq: Choice = t.digest.ct_eq(&presented);
            if bool::from(eq) {
                found = Some(t);
            }
        }
        match found {
            Some(t) => Verdict::Accept(Identity { name: t.name.clone(), role: t.role, method: "bearer" }),
            None => Verdict::Reject { method: "bearer", user: None, reason: "unknown bearer token" },
        }
    }
}

/// Hex SHA-256 of a token, as written in the tokens file's `token_sha256`.
pub fn token_sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}
