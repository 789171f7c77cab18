//! Secrets at rest: host credentials are sealed with XChaCha20-Poly1305 before they
//! reach any store, under a 256-bit key kept in a file the operator controls.
//!
//! A sealed value is JSON `{"v":1,"kid":<key id>,"nonce":<b64>,"ciphertext":<b64>}`.
//! The associated data binds a ciphertext to the record it belongs to (its store
//! key), so a sealed value copied to another host's record does not open.
//!
//! Rotation: a [`SecretsKey`] may also hold previous keys ([`SecretsKey::with_previous`]).
//! Values are always sealed with the current key; a value is opened with whichever
//! loaded key its `kid` names, so credentials stay readable while the storage
//! service reseals them ([`SecretsKey::needs_reseal`]).

use std::{fs, io::Write, path::Path};

use base64::{Engine, engine::general_purpose::STANDARD};
use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore},
};
use serde::{Deserialize, Serialize};

/// Why a key could not be loaded or a value could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "secrets key file {path} is missing; create one with `commissaire-storage-service --generate-secrets-key {path}` \
         (or `head -c 32 /dev/urandom | base64 > {path}; chmod 600 {path}`)"
    )]
    MissingKey { path: String },
    #[error("secrets key file {path} could not be read: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("secrets key file {path} must hold 32 bytes in base64 (one line)")]
    BadKey { path: String },
    #[error("sealed value is malformed: {0}")]
    Malformed(String),
    #[error(
        "sealed value was made with key {found}, but the loaded keys are {expected} \
         (add the old key with previous_secrets_key_files to read it)"
    )]
    WrongKey { found: String, expected: String },
    #[error("sealed value failed authentication (tampered, or sealed for another record)")]
    Authentication,
}

/// The key that seals and opens secrets, with the previous keys that only open.
#[derive(Clone)]
pub struct SecretsKey {
    cipher: XChaCha20Poly1305,
    id: String,
    /// Older keys (id, cipher), kept during a rotation to open what they sealed.
    previous: Vec<(String, XChaCha20Poly1305)>,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let previous: Vec<&str> = self.previous.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("SecretsKey").field("id", &self.id).field("previous", &previous).finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    v: u32,
    kid: String,
    nonce: String,
    ciphertext: String,
}

impl SecretsKey {
    fn from_bytes(bytes: &[u8; 32]) -> Self {
        let cipher = XChaCha20Poly1305::new(bytes.into());
        let id = key_id(&cipher);
        Self { cipher, id, previous: Vec::new() }
    }

    /// Adds `older` (a key being rotated out) as a key that opens but never seals.
    /// The same key as the current one is ignored.
    pub fn with_previous(mut self, older: SecretsKey) -> Self {
        if older.id != self.id && !self.previous.iter().any(|(id, _)| *id == older.id) {
            self.previous.push((older.id, older.cipher));
        }
        self
    }

    /// The ids of the previous keys, oldest last.
    pub fn previous_ids(&self) -> Vec<&str> {
        self.previous.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// Whether `sealed` was made with a key other than the current one (and so
    /// should be sealed again before that key is dropped). Malformed values are
    /// not resealable and answer `false`.
    pub fn needs_reseal(&self, sealed: &[u8]) -> bool {
        serde_json::from_slice::<Sealed>(sealed).is_ok_and(|s| s.kid != self.id)
    }

    /// Loads the key from `path` (32 bytes, base64 on one line).
    pub fn load(path: &Path) -> Result<Self, SecretsError> {
        let shown = path.display().to_string();
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(SecretsError::MissingKey { path: shown });
            }
            Err(err) => return Err(SecretsError::Unreadable { path: shown, reason: err.to_string() }),
        };
        let bytes = STANDARD.decode(text.trim()).map_err(|_| SecretsError::BadKey { path: shown.clone() })?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| SecretsError::BadKey { path: shown })?;
        Ok(Self::from_bytes(&bytes))
    }

    /// Writes a new random key to `path` (mode 0600, refusing to overwrite one).
    pub fn generate(path: &Path) -> Result<Self, SecretsError> {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let shown = path.display().to_string();
        let unreadable =
            |err: std::io::Error| SecretsError::Unreadable { path: shown.clone(), reason: err.to_string() };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(unreadable)?;
        }
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(unreadable)?;
        writeln!(file, "{}", STANDARD.encode(bytes)).map_err(unreadable)?;
        file.sync_all().map_err(unreadable)?;
        Ok(Self::from_bytes(&bytes))
    }

    /// Loads the key at `path`, creating it first if it does not exist (the
    /// all-in-one mode's first start).
    pub fn load_or_generate(path: &Path) -> Result<Self, SecretsError> {
        match Self::load(path) {
            Err(SecretsError::MissingKey { .. }) => Self::generate(path),
            other => other,
        }
    }

    /// Loads the current key from `current` and the keys being rotated out from
    /// `previous` (see [`SecretsKey::with_previous`]).
    pub fn load_with_previous(current: &Path, previous: &[std::path::PathBuf]) -> Result<Self, SecretsError> {
        previous.iter().try_fold(Self::load(current)?, |key, path| Ok(key.with_previous(Self::load(path)?)))
    }

    /// A short public identifier of the key (not secret), stored with each value.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plaintext` for the record named `context`.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: context.as_bytes() })
            // Encryption only fails for inputs beyond the cipher's length limit (256 GiB).
            .unwrap_or_default();
        let sealed = Sealed {
            v: 1,
            kid: self.id.clone(),
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(ciphertext),
        };
        serde_json::to_vec(&sealed).unwrap_or_default()
    }

    /// Opens a value sealed for the record named `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let sealed: Sealed = serde_json::from_slice(sealed).map_err(|e| SecretsError::Malformed(e.to_string()))?;
        if sealed.v != 1 {
            return Err(SecretsError::Malformed(format!("unknown version {}", sealed.v)));
        }
        let cipher = if sealed.kid == self.id {
            &self.cipher
        } else if let Some((_, cipher)) = self.previous.iter().find(|(id, _)| *id == sealed.kid) {
            cipher
        } else {
            let mut loaded = vec![self.id.as_str()];
            loaded.extend(self.previous_ids());
            return Err(SecretsError::WrongKey { found: sealed.kid, expected: loaded.join(", ") });
        };
        let nonce = STANDARD.decode(&sealed.nonce).map_err(|e| SecretsError::Malformed(e.to_string()))?;
        if nonce.len() != 24 {
            return Err(SecretsError::Malformed("nonce must be 24 bytes".into()));
        }
        let ciphertext = STANDARD.decode(&sealed.ciphertext).map_err(|e| SecretsError::Malformed(e.to_string()))?;
        cipher
            .decrypt(XNonce::from_slice(&nonce), Payload { msg: &ciphertext, aad: context.as_bytes() })
            .map_err(|_| SecretsError::Authentication)
    }
}

/// A key identifier derived from the key without revealing it: the first bytes of
/// the authentication tag of an empty message under a fixed nonce.
fn key_id(cipher: &XChaCha20Poly1305) -> String {
    let tag = cipher
        .encrypt(XNonce::from_slice(&[0u8; 24]), Payload { msg: &[], aad: b"commissaire key id" })
        .unwrap_or_default();
    tag.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_bound_to_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.key");
        let key = SecretsKey::load_or_generate(&path).expect("generate");
        let again = SecretsKey::load(&path).expect("reload");
        assert_eq!(key.id(), again.id());

        let sealed = key.seal("/commissaire/creds/10.0.0.1", b"PRIVATE KEY");
        assert!(!String::from_utf8_lossy(&sealed).contains("PRIVATE"));
        assert_eq!(again.open("/commissaire/creds/10.0.0.1", &sealed).expect("open"), b"PRIVATE KEY");
        assert!(matches!(key.open("/commissaire/creds/10.0.0.2", &sealed), Err(SecretsError::Authentication)));

        let other = SecretsKey::generate(&dir.path().join("other.key")).expect("generate");
        assert!(matches!(other.open("/commissaire/creds/10.0.0.1", &sealed), Err(SecretsError::WrongKey { .. })));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn previous_keys_open_but_never_seal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = SecretsKey::generate(&dir.path().join("old.key")).expect("generate");
        let new = SecretsKey::generate(&dir.path().join("new.key")).expect("generate");
        let context = "/commissaire/secrets/hosts/10.0.0.1";
        let sealed_old = old.seal(context, b"OLD");

        // Without the old key the value is refused, naming both ids.
        let err = new.open(context, &sealed_old).expect_err("old key not loaded");
        assert!(err.to_string().contains(old.id()) && err.to_string().contains(new.id()), "{err}");

        let ring = new.clone().with_previous(old.clone()).with_previous(old.clone());
        assert_eq!(ring.previous_ids(), vec![old.id()]);
        assert_eq!(ring.open(context, &sealed_old).expect("open with previous"), b"OLD");
        assert!(ring.needs_reseal(&sealed_old));
        let resealed = ring.seal(context, b"OLD");
        assert!(!ring.needs_reseal(&resealed));
        // Sealed with the current key: the new key alone opens it.
        assert_eq!(new.open(context, &resealed).expect("open"), b"OLD");
        assert!(!ring.needs_reseal(b"not json"));
        // The current key as "previous" is ignored.
        assert!(new.clone().with_previous(new.clone()).previous_ids().is_empty());
    }

    #[test]
    fn missing_key_says_how_to_make_one() {
        let err = SecretsKey::load(Path::new("/nonexistent/secrets.key")).expect_err("missing");
        assert!(err.to_string().contains("--generate-secrets-key"), "{err}");
    }
}
