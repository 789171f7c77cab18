//! The SSH transport: run a [`Command`] on a managed host over SSH, on russh.
//!
//! - **Keys stay in memory.** The private key (from HostCreds) is OpenSSH/PEM text in a
//!   [`Zeroizing`] string, parsed with `russh::keys::decode_secret_key`; it is never written to a
//!   file and never appears in an error or a `Debug` output.
//! - **Host keys: trust on first use.** Without a pinned key, any host key is accepted and
//!   returned in [`CommandOutput::host_key`] for the caller to pin. With one, a different key
//!   fails with [`TransportError::HostKeyChanged`] before authentication (nothing is sent).
//! - **Connection reuse.** One connection per (address, port, user, client key fingerprint) is
//!   kept and reused by later commands; it is dropped after [`SshConfig::idle_timeout`] without
//!   use, or at once when it fails. A failure to open a channel on a reused connection (the host
//!   went away meanwhile) is retried once on a new connection: nothing ran yet.
//! - **Bounds.** Connect (TCP + SSH handshake + authentication) and each command have their own
//!   timeouts; a global semaphore bounds the sessions (running commands) across all hosts, and a
//!   per-connection one keeps below sshd's `MaxSessions` (10 by default).
//! - **sudo.** For a user other than root the command runs as `sudo -n -- sh -c <quoted>`
//!   (`-n`: fail instead of prompting for a password).

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex as StdMutex, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use russh::{
    ChannelMsg, Disconnect, client,
    keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate, decode_secret_key},
};
use tokio::{
    net::TcpStream,
    sync::{Mutex as AsyncMutex, Semaphore},
};
use zeroize::Zeroizing;

use super::quote::{Command, shell_quote};

/// Limits and timeouts of an [`SshTransport`].
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// TCP connect + SSH handshake + authentication (default 10 s).
    pub connect_timeout: Duration,
    /// One command, from opening the channel until the remote side closes it (default 300 s).
    pub command_timeout: Duration,
    /// Sessions (running commands) at the same time, over all hosts (default 64).
    pub max_sessions: usize,
    /// A connection unused for this long is closed (default 60 s).
    pub idle_timeout: Duration,
    /// Sessions at the same time on one connection (default 10, OpenSSH's `MaxSessions`
    /// default; more would be refused by the server).
    pub max_sessions_per_connection: usize,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(300),
            max_sessions: 64,
            idle_timeout: Duration::from_secs(60),
            max_sessions_per_connection: 10,
        }
    }
}

/// Where and as whom to run a command.
#[derive(Clone)]
pub struct HostTarget {
    /// Host name or IP address.
    pub address: String,
    pub port: u16,
    /// Remote user; anyone but `root` runs commands through `sudo -n`.
    pub user: String,
    /// The private key, unencrypted OpenSSH (`-----BEGIN OPENSSH PRIVATE KEY-----`) or PEM
    /// text. Zeroed when dropped.
    pub private_key: Zeroizing<String>,
    /// The host's public key as an OpenSSH line (`ssh-ed25519 AAAA... [comment]`), or `None`
    /// on first contact (any key is accepted and returned for pinning).
    pub pinned_host_key: Option<String>,
}

impl HostTarget {
    /// A target on port 22 with nothing pinned yet.
    pub fn new(address: impl Into<String>, user: impl Into<String>, private_key: impl Into<String>) -> Self {
        HostTarget {
            address: address.into(),
            port: 22,
            user: user.into(),
            private_key: Zeroizing::new(private_key.into()),
            pinned_host_key: None,
        }
    }

    /// The same target with this host key pinned.
    pub fn pinned(mut self, host_key: impl Into<String>) -> Self {
        self.pinned_host_key = Some(host_key.into());
        self
    }
}

impl fmt::Debug for HostTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostTarget")
            .field("address", &self.address)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("private_key", &"<redacted>")
            .field("pinned_host_key", &self.pinned_host_key)
            .finish()
    }
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// `None` when the command was killed by a signal (see `exit_signal`).
    pub exit_status: Option<u32>,
    pub exit_signal: Option<String>,
    /// Output as text (invalid UTF-8 replaced by U+FFFD).
    pub stdout: String,
    pub stderr: String,
    /// The host key this connection was verified with, as an OpenSSH public key line: pin it
    /// on first contact.
    pub host_key: String,
}

impl CommandOutput {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.exit_status == Some(0)
    }
}

/// Why a command could not be run. No variant ever contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("host {address} is unreachable: {reason}")]
    Unreachable { address: String, reason: String },
    #[error(
        "the SSH host key of {address} has changed: expected {expected_fingerprint}, found {found_fingerprint}. \
         Nothing was sent to the host. This is what a man-in-the-middle attack looks like, or the host was \
         reinstalled; re-trust it through the API if the change is expected"
    )]
    HostKeyChanged { address: String, expected_fingerprint: String, found_fingerprint: String },
    #[error("authentication as {user}@{address} failed: the host does not accept the private key")]
    AuthenticationFailed { address: String, user: String },
    #[error("command on {address} did not finish within {timeout:?}")]
    CommandTimedOut { address: String, timeout: Duration },
    #[error(
        "the private key for {user}@{address} cannot be used: {reason} \
         (expected an unencrypted OpenSSH or PEM private key)"
    )]
    BadPrivateKey { address: String, user: String, reason: String },
    #[error("the pinned host key of {address} is not an OpenSSH public key line (e.g. `ssh-ed25519 AAAA...`)")]
    BadPinnedHostKey { address: String },
    #[error("command for {address} refused: {reason}")]
    InvalidCommand { address: String, reason: String },
    #[error("SSH error with {address}: {message}")]
    Protocol { address: String, message: String },
}

impl TransportError {
    /// The reason as a metrics label (a closed set, never an address).
    pub fn metric_reason(&self) -> &'static str {
        match self {
            TransportError::Unreachable { .. } => "unreachable",
            TransportError::HostKeyChanged { .. } => "host_key_changed",
            TransportError::AuthenticationFailed { .. } => "auth_failed",
            TransportError::CommandTimedOut { .. } => "timeout",
            TransportError::BadPrivateKey { .. } | TransportError::BadPinnedHostKey { .. } => "bad_key",
            TransportError::InvalidCommand { .. } => "refused",
            TransportError::Protocol { .. } => "protocol",
        }
    }
}

fn protocol(address: &str, what: &str, e: impl fmt::Display) -> TransportError {
    TransportError::Protocol { address: address.to_owned(), message: format!("{what}: {e}") }
}

/// A russh error while connecting: the connection going away (the host went
/// down half-way) is the host being unreachable; anything else is a protocol
/// error.
fn connect_error(address: &str, what: &str, e: russh::Error) -> TransportError {
    use russh::Error as E;
    match e {
        E::Disconnect | E::HUP | E::SendError | E::RecvError | E::IO(_) | E::ConnectionTimeout => {
            TransportError::Unreachable {
                address: address.to_owned(),
                reason: format!("the connection was lost during the {what} ({e})"),
            }
        }
        other => protocol(address, what, other),
    }
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The russh handler: records the host key it was shown and accepts it unless a different
/// one is pinned.
struct Client {
    pinned: Option<PublicKey>,
    seen: Arc<StdMutex<Option<PublicKey>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let key = server_key.public_key();
        let accept = self.pinned.as_ref().is_none_or(|p| p.key_data() == key.key_data());
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(key);
        }
        Ok(accept)
    }
}

/// One SSH connection in the cache.
struct Conn {
    handle: client::Handle<Client>,
    host_key: PublicKey,
    host_key_line: String,
    channels: Arc<Semaphore>,
    /// commands using it right now (the idle reaper leaves it alone while > 0)
    active: AtomicUsize,
    last_used: StdMutex<Instant>,
}

impl Conn {
    fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }
    fn idle_since(&self) -> Instant {
        self.last_used.lock().map(|t| *t).unwrap_or_else(|_| Instant::now())
    }
}

/// Marks a connection as in use for as long as it lives.
struct InUse(Arc<Conn>);
impl Drop for InUse {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct ConnKey {
    address: String,
    port: u16,
    user: String,
    key_fingerprint: String,
}

type Slot = Arc<AsyncMutex<Option<Arc<Conn>>>>;

struct Inner {
    config: SshConfig,
    russh_config: Arc<client::Config>,
    sessions: Arc<Semaphore>,
    conns: StdMutex<HashMap<ConnKey, Slot>>,
    opened: AtomicU64,
    in_use: AtomicUsize,
    peak: AtomicUsize,
}

/// Counts a running session for [`SshTransport::sessions_in_use`] / `peak_sessions`.
struct SessionCount<'a>(&'a Inner);
impl<'a> SessionCount<'a> {
    fn new(inner: &'a Inner) -> Self {
        let now = inner.in_use.fetch_add(1, Ordering::SeqCst) + 1;
        inner.peak.fetch_max(now, Ordering::SeqCst);
        SessionCount(inner)
    }
}
impl Drop for SessionCount<'_> {
    fn drop(&mut self) {
        self.0.in_use.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs commands on hosts over SSH. Cheap to clone; clones share connections and limits.
#[derive(Clone)]
pub struct SshTransport {
    inner: Arc<Inner>,
}

impl Default for SshTransport {
    fn default() -> Self {
        SshTransport::new(SshConfig::default())
    }
}

impl fmt::Debug for SshTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshTransport")
            .field("config", &self.inner.config)
            .field("connections_opened", &self.connections_opened())
            .finish()
    }
}

impl SshTransport {
    pub fn new(config: SshConfig) -> Self {
        let russh_config = client::Config {
            // detect a dead peer on an idle cached connection
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            nodelay: true,
            ..Default::default()
        };
        SshTransport {
            inner: Arc::new(Inner {
                sessions: Arc::new(Semaphore::new(config.max_sessions.max(1))),
                config,
                russh_config: Arc::new(russh_config),
                conns: StdMutex::new(HashMap::new()),
                opened: AtomicU64::new(0),
                in_use: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
            }),
        }
    }

    pub fn config(&self) -> &SshConfig {
        &self.inner.config
    }

    /// SSH connections opened (and authenticated) so far.
    pub fn connections_opened(&self) -> u64 {
        self.inner.opened.load(Ordering::SeqCst)
    }

    /// Sessions (commands) running right now.
    pub fn sessions_in_use(&self) -> usize {
        self.inner.in_use.load(Ordering::SeqCst)
    }

    /// The most sessions that ever ran at the same time.
    pub fn peak_sessions(&self) -> usize {
        self.inner.peak.load(Ordering::SeqCst)
    }

    /// Connections currently cached (open, or being opened or used right now).
    pub fn cached_connections(&self) -> usize {
        let conns = self.inner.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.values().filter(|slot| slot.try_lock().map(|c| c.is_some()).unwrap_or(true)).count()
    }

    /// Run `command` on `target`. A non-zero exit status is not an error: see
    /// [`CommandOutput::exit_status`].
    pub async fn run(&self, target: &HostTarget, command: &Command) -> Result<CommandOutput, TransportError> {
        let outcome = self.run_counted(target, command).await;
        if let Err(err) = &outcome {
            commissaire_core::metrics::get().ssh_failed(err.metric_reason());
        }
        outcome
    }

    async fn run_counted(&self, target: &HostTarget, command: &Command) -> Result<CommandOutput, TransportError> {
        let address = target.address.as_str();
        if command.has_nul() {
            return Err(TransportError::InvalidCommand {
                address: address.to_owned(),
                reason: "it contains a NUL byte, which no remote shell can receive".into(),
            });
        }
        let line = if target.user == "root" {
            command.to_shell()
        } else {
            format!("sudo -n -- sh -c {}", shell_quote(&command.to_shell()))
        };
        let key = decode_secret_key(&target.private_key, None).map_err(|e| TransportError::BadPrivateKey {
            address: address.to_owned(),
            user: target.user.clone(),
            // only the kind of problem: a parser message could quote part of the key
            reason: match e {
                russh::keys::Error::KeyIsEncrypted => "it is encrypted".to_owned(),
                russh::keys::Error::UnsupportedKeyType { .. } => "unsupported key type".to_owned(),
                _ => "it could not be parsed".to_owned(),
            },
        })?;
        let pinned = match &target.pinned_host_key {
            Some(line) => Some(
                PublicKey::from_openssh(line.trim())
                    .map_err(|_| TransportError::BadPinnedHostKey { address: address.to_owned() })?,
            ),
            None => None,
        };
        let conn_key = ConnKey {
            address: target.address.clone(),
            port: target.port,
            user: target.user.clone(),
            key_fingerprint: fingerprint(key.public_key()),
        };

        let _permit =
            self.inner.sessions.clone().acquire_owned().await.map_err(|e| protocol(address, "session limit", e))?;
        let _count = SessionCount::new(&self.inner);
        let _open = commissaire_core::metrics::get().ssh_session();
        let key = Arc::new(key);

        for attempt in 0.. {
            let slot = self.slot(&conn_key);
            let (conn, reused) = self.connection(&slot, target, &key, pinned.as_ref()).await?;
            let _use = InUse(conn.clone());
            let _channel_permit =
                conn.channels.clone().acquire_owned().await.map_err(|e| protocol(address, "channel limit", e))?;
            let mut channel = match conn.handle.channel_open_session().await {
                Ok(ch) => ch,
                Err(e) => {
                    invalidate(&slot, &conn).await;
                    if reused && attempt == 0 {
                        tracing::debug!(%address, error = %e, "cached SSH connection failed; reconnecting");
                        continue;
                    }
                    return Err(protocol(address, "opening a session", e));
                }
            };
            let timeout = self.inner.config.command_timeout;
            let result = tokio::time::timeout(timeout, async {
                channel.exec(true, line.as_bytes()).await?;
                let mut out = CommandOutput {
                    exit_status: None,
                    exit_signal: None,
                    stdout: String::new(),
                    stderr: String::new(),
                    host_key: conn.host_key_line.clone(),
                };
                let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
                while let Some(msg) = channel.wait().await {
                    match msg {
                        ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
                        ChannelMsg::ExtendedData { data, ext: 1 } => stderr.extend_from_slice(&data),
                        ChannelMsg::ExitStatus { exit_status } => out.exit_status = Some(exit_status),
                        ChannelMsg::ExitSignal { signal_name, .. } => {
                            out.exit_signal = Some(format!("{signal_name:?}"))
                        }
                        ChannelMsg::Failure => {
                            return Err(russh::Error::RequestDenied);
                        }
                        _ => {}
                    }
                }
                out.stdout = String::from_utf8_lossy(&stdout).into_owned();
                out.stderr = String::from_utf8_lossy(&stderr).into_owned();
                Ok::<_, russh::Error>(out)
            })
            .await;
            return match result {
                Ok(Ok(out)) => Ok(out),
                Ok(Err(e)) => {
                    invalidate(&slot, &conn).await;
                    Err(protocol(address, "running the command", e))
                }
                Err(_) => {
                    // the channel is closed; the connection itself is fine
                    let _ = channel.close().await;
                    Err(TransportError::CommandTimedOut { address: address.to_owned(), timeout })
                }
            };
        }
        unreachable!("the loop returns")
    }

    fn slot(&self, key: &ConnKey) -> Slot {
        let mut conns = self.inner.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.entry(key.clone()).or_default().clone()
    }

    /// The cached connection of `slot`, or a new one. Only one task connects per slot at a time,
    /// so concurrent commands to one host share one connection.
    async fn connection(
        &self,
        slot: &Slot,
        target: &HostTarget,
        key: &Arc<PrivateKey>,
        pinned: Option<&PublicKey>,
    ) -> Result<(Arc<Conn>, bool), TransportError> {
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            let usable = !conn.handle.is_closed() && pinned.is_none_or(|p| p.key_data() == conn.host_key.key_data());
            if usable {
                conn.active.fetch_add(1, Ordering::SeqCst);
                return Ok((conn.clone(), true));
            }
            let old = guard.take();
            if let Some(old) = old {
                tokio::spawn(async move {
                    let _ = old.handle.disconnect(Disconnect::ByApplication, "", "en").await;
                });
            }
        }
        let conn = Arc::new(self.connect(target, key, pinned).await?);
        self.inner.opened.fetch_add(1, Ordering::SeqCst);
        conn.active.fetch_add(1, Ordering::SeqCst);
        *guard = Some(conn.clone());
        drop(guard);
        self.spawn_idle_reaper(slot, &conn);
        Ok((conn, false))
    }

    async fn connect(
        &self,
        target: &HostTarget,
        key: &Arc<PrivateKey>,
        pinned: Option<&PublicKey>,
    ) -> Result<Conn, TransportError> {
        let address = target.address.as_str();
        let timeout = self.inner.config.connect_timeout;
        let tcp_connected = AtomicBool::new(false);
        let attempt = async {
            let tcp = TcpStream::connect((address, target.port)).await.map_err(|e| TransportError::Unreachable {
                address: address.to_owned(),
                reason: match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => format!("connection refused (port {})", target.port),
                    std::io::ErrorKind::TimedOut => "connection timed out".to_owned(),
                    _ => e.to_string(),
                },
            })?;
            tcp_connected.store(true, Ordering::SeqCst);
            let seen = Arc::new(StdMutex::new(None));
            let handler = Client { pinned: pinned.cloned(), seen: seen.clone() };
            let seen_key = || seen.lock().ok().and_then(|s| s.clone());
            let mut handle = match client::connect_stream(self.inner.russh_config.clone(), tcp, handler).await {
                Ok(h) => h,
                Err(e) => {
                    if let (Some(expected), Some(found)) = (pinned, seen_key())
                        && expected.key_data() != found.key_data()
                    {
                        return Err(TransportError::HostKeyChanged {
                            address: address.to_owned(),
                            expected_fingerprint: fingerprint(expected),
                            found_fingerprint: fingerprint(&found),
                        });
                    }
                    return Err(connect_error(address, "SSH handshake", e));
                }
            };
            let host_key = seen_key().ok_or_else(|| protocol(address, "SSH handshake", "no host key was presented"))?;
            let hash_alg = if key.algorithm().is_rsa() {
                handle.best_supported_rsa_hash().await.map_err(|e| protocol(address, "SSH handshake", e))?.flatten()
            } else {
                None
            };
            let auth = handle
                .authenticate_publickey(target.user.clone(), PrivateKeyWithHashAlg::new(key.clone(), hash_alg))
                .await
                .map_err(|e| connect_error(address, "authentication", e))?;
            if !auth.success() {
                // russh also answers "failure" when the session ended while it
                // waited: a host that went away during the login is unreachable,
                // not refusing the key.
                if handle.is_closed() {
                    return Err(TransportError::Unreachable {
                        address: address.to_owned(),
                        reason: "the connection was lost during the authentication".into(),
                    });
                }
                let _ = handle.disconnect(Disconnect::ByApplication, "", "en").await;
                return Err(TransportError::AuthenticationFailed {
                    address: address.to_owned(),
                    user: target.user.clone(),
                });
            }
            let host_key_line = host_key.to_openssh().map_err(|e| protocol(address, "encoding the host key", e))?;
            Ok(Conn {
                handle,
                host_key,
                host_key_line,
                channels: Arc::new(Semaphore::new(self.inner.config.max_sessions_per_connection.max(1))),
                active: AtomicUsize::new(0),
                last_used: StdMutex::new(Instant::now()),
            })
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Unreachable {
                address: address.to_owned(),
                reason: if tcp_connected.load(Ordering::SeqCst) {
                    format!("timed out after {timeout:?} during the SSH handshake (the server does not answer)")
                } else {
                    format!("connection timed out after {timeout:?}")
                },
            }),
        }
    }

    /// Close `conn` once it has been unused for `idle_timeout`, and forget it.
    fn spawn_idle_reaper(&self, slot: &Slot, conn: &Arc<Conn>) {
        let idle = self.inner.config.idle_timeout;
        let (weak_slot, weak_conn) = (Arc::downgrade(slot), Arc::downgrade(conn));
        let weak_inner: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let Some(conn) = weak_conn.upgrade() else { return };
                let deadline = conn.idle_since() + idle;
                drop(conn);
                tokio::time::sleep_until(deadline.into()).await;
                let Some(conn) = weak_conn.upgrade() else { return };
                if conn.handle.is_closed()
                    || (conn.active.load(Ordering::SeqCst) == 0 && conn.idle_since().elapsed() >= idle)
                {
                    if let Some(slot) = weak_slot.upgrade() {
                        invalidate(&slot, &conn).await;
                        // forget the slot too, unless someone is about to use it
                        if let Some(inner) = weak_inner.upgrade() {
                            let mut conns = inner.conns.lock().unwrap_or_else(|e| e.into_inner());
                            if Arc::strong_count(&slot) == 2 {
                                conns.retain(|_, s| !Arc::ptr_eq(s, &slot));
                            }
                        }
                    } else {
                        let _ = conn.handle.disconnect(Disconnect::ByApplication, "", "en").await;
                    }
                    return;
                }
            }
        });
    }
}

/// Drop `conn` from `slot` (if it is still the cached one) and close it.
async fn invalidate(slot: &Slot, conn: &Arc<Conn>) {
    let mut guard = slot.lock().await;
    if guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
        *guard = None;
    }
    drop(guard);
    let _ = conn.handle.disconnect(Disconnect::ByApplication, "", "en").await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = SshConfig::default();
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.command_timeout, Duration::from_secs(300));
        assert_eq!(c.max_sessions, 64);
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let t = HostTarget::new("h1", "root", "-----BEGIN OPENSSH PRIVATE KEY-----\nSECRETSECRET\n");
        let s = format!("{t:?}");
        assert!(!s.contains("SECRET"), "{s}");
        assert!(s.contains("<redacted>"));
    }

    #[tokio::test]
    async fn bad_private_key_is_reported_without_echoing_it() {
        let t = HostTarget::new(
            "127.0.0.1",
            "root",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nSECRETSECRET\n-----END OPENSSH PRIVATE KEY-----\n",
        );
        let err = SshTransport::default().run(&t, &Command::new("true")).await.expect_err("must fail");
        assert!(matches!(err, TransportError::BadPrivateKey { .. }), "{err:?}");
        assert!(!format!("{err} {err:?}").contains("SECRET"));
    }

    #[tokio::test]
    async fn nul_bytes_are_refused() {
        let t = HostTarget::new("127.0.0.1", "root", "x");
        let err = SshTransport::default().run(&t, &Command::new("echo").arg("a\0b")).await.expect_err("must fail");
        assert!(matches!(err, TransportError::InvalidCommand { .. }), "{err:?}");
    }
}
