//! A fleet simulator: many SSH hosts in one process, each on its own loopback
//! address, for the tests and benchmarks of Commissaire at fleet scale. The
//! product never depends on it.
//!
//! Every simulated host listens on its own address (`127.20.0.1` onwards by
//! default) on port 22 (or another port), presents its own Ed25519 host key
//! (derived from a seed and its index, so a benchmark can pin it without
//! asking; or one shared key), accepts exactly one client public key, and
//! answers the commands the product sends (see [`shell`]) after a configurable
//! latency. A reboot (asked with `shutdown -r`, or by [`Fleet::reboot`]) drops
//! the host's sessions, closes its listener so connections are refused for
//! the reboot time, then comes back with a new boot id. A fraction of the
//! hosts can be down from the start (nothing listens) and another fraction can
//! fail every command (exit 1).

pub mod shell;

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use russh::{
    Channel, ChannelId,
    keys::{PrivateKey, PublicKey, ssh_key::private::Ed25519Keypair},
    server::{self, Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey},
};
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

pub use shell::{Action, HostView, Os, Reply};

/// How a fleet is made.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Hosts in the fleet.
    pub hosts: usize,
    /// Address of the first host; the others follow (`127.20.0.1`, `127.20.0.2`, ...).
    pub first_address: Ipv4Addr,
    pub port: u16,
    /// The only client key accepted (public-key authentication, any user).
    pub authorized_key: PublicKey,
    /// Host keys: derived from this seed and the host's index, or one for all.
    pub host_keys: HostKeys,
    /// Time before each command answers.
    pub latency: Duration,
    /// How long a rebooting host refuses connections.
    pub reboot_time: Duration,
    /// Fraction (0 to 1) of the hosts that are down from the start: nothing listens.
    pub down_fraction: f64,
    /// Fraction (0 to 1) of the hosts whose every command fails (exit 1).
    pub failing_fraction: f64,
    /// Picks which hosts are down or failing (the same seed, the same hosts).
    pub seed: u64,
    pub os: Os,
    /// Fraction (0 to 1) of the hosts that are OSTree-booted.
    pub ostree_fraction: f64,
}

impl FleetConfig {
    /// `hosts` Fedora hosts from `127.20.0.1` on port 22, accepting `authorized_key`,
    /// answering at once, 1 s reboots, none down or failing.
    pub fn new(hosts: usize, authorized_key: PublicKey) -> Self {
        FleetConfig {
            hosts,
            first_address: Ipv4Addr::new(127, 20, 0, 1),
            port: 22,
            authorized_key,
            host_keys: HostKeys::Derived { seed: 0 },
            latency: Duration::ZERO,
            reboot_time: Duration::from_secs(1),
            down_fraction: 0.0,
            failing_fraction: 0.0,
            seed: 0,
            os: Os::Fedora,
            ostree_fraction: 0.0,
        }
    }
}

/// Where the hosts' keys come from.
#[derive(Debug, Clone)]
pub enum HostKeys {
    /// Host `i`'s key is derived from `seed` and `i` ([`derived_key`]).
    Derived { seed: u64 },
    /// Every host presents this key.
    Shared(Arc<PrivateKey>),
}

/// Why the fleet cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("the fleet's addresses run past 127.255.255.254 ({hosts} hosts from {first})")]
    AddressRange { first: Ipv4Addr, hosts: usize },
    #[error(
        "cannot listen on {address}: {source} (port 22 needs root or CAP_NET_BIND_SERVICE; many hosts need a higher `ulimit -n`)"
    )]
    Listen { address: SocketAddr, source: std::io::Error },
}

/// The Ed25519 key derived from `seed` and `index`: the same on every run, so
/// a benchmark knows each host's key without connecting first.
pub fn derived_key(seed: u64, index: usize) -> PrivateKey {
    let digest = Sha256::new()
        .chain_update(b"commissaire-fleetsim host key")
        .chain_update(seed.to_be_bytes())
        .chain_update((index as u64).to_be_bytes())
        .finalize();
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&digest);
    PrivateKey::from(Ed25519Keypair::from_seed(&bytes))
}

/// A number in [0, 1) fixed by `seed`, `what` and `index`.
fn unit(seed: u64, what: &str, index: usize) -> f64 {
    let digest = Sha256::new()
        .chain_update(seed.to_be_bytes())
        .chain_update(what.as_bytes())
        .chain_update((index as u64).to_be_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// Counters over the whole fleet.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub auth_failures: AtomicU64,
    pub commands: AtomicU64,
    pub reboots: AtomicU64,
}

/// One simulated host.
pub struct SimHost {
    pub index: usize,
    pub address: SocketAddr,
    key: PrivateKey,
    config: Arc<server::Config>,
    down: bool,
    failing: bool,
    view: Mutex<HostView>,
    /// Cancelled when the host goes down: its sessions end.
    boot: Mutex<CancellationToken>,
    reboot: tokio::sync::Notify,
}

impl SimHost {
    /// The host key as an OpenSSH public key line (what the product pins).
    pub fn host_key_line(&self) -> String {
        self.key.public_key().to_openssh().unwrap_or_default()
    }

    pub fn boot_id(&self) -> String {
        self.lock_view().boot_id.clone()
    }

    /// Down from the start (nothing listens).
    pub fn is_down(&self) -> bool {
        self.down
    }

    /// Fails every command.
    pub fn is_failing(&self) -> bool {
        self.failing
    }

    fn lock_view(&self) -> std::sync::MutexGuard<'_, HostView> {
        self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn boot_token(&self) -> CancellationToken {
        self.boot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

struct Shared {
    authorized_key: PublicKey,
    latency: Duration,
    reboot_time: Duration,
    stats: Stats,
}

/// A running fleet; dropping it (or [`Fleet::stop`]) stops every host.
pub struct Fleet {
    hosts: Vec<Arc<SimHost>>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Binds every host that is not down and starts serving.
    pub async fn start(config: FleetConfig) -> Result<Fleet, FleetError> {
        let first = u32::from(config.first_address);
        if u64::from(first) + config.hosts as u64 > u64::from(u32::from(Ipv4Addr::new(127, 255, 255, 254))) {
            return Err(FleetError::AddressRange { first: config.first_address, hosts: config.hosts });
        }
        let shared = Arc::new(Shared {
            authorized_key: config.authorized_key.clone(),
            latency: config.latency,
            reboot_time: config.reboot_time,
            stats: Stats::default(),
        });
        let stop = CancellationToken::new();
        let mut fleet = Fleet { hosts: Vec::with_capacity(config.hosts), shared, stop, tasks: JoinSet::new() };
        for index in 0..config.hosts {
            let ip = Ipv4Addr::from(first + index as u32);
            let key = match &config.host_keys {
                HostKeys::Derived { seed } => derived_key(*seed, index),
                HostKeys::Shared(key) => (**key).clone(),
            };
            let server_config = server::Config {
                keys: vec![key.clone()],
                methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
                auth_rejection_time: Duration::from_millis(10),
                auth_rejection_time_initial: Some(Duration::ZERO),
                inactivity_timeout: Some(Duration::from_secs(900)),
                nodelay: true,
                ..Default::default()
            };
            let view = HostView {
                hostname: format!("sim-{index}"),
                os: config.os,
                ostree: unit(config.seed, "ostree", index) < config.ostree_fraction,
                boot_id: uuid::Uuid::new_v4().to_string(),
                cpus: 2 + (index % 4) as u32 * 2,
                memory_mb: 3_931 + (index % 4) as u64 * 4_096,
                space_bytes: 42_949_672_960,
            };
            let host = Arc::new(SimHost {
                index,
                address: SocketAddr::from((ip, config.port)),
                key,
                config: Arc::new(server_config),
                down: unit(config.seed, "down", index) < config.down_fraction,
                failing: unit(config.seed, "failing", index) < config.failing_fraction,
                view: Mutex::new(view),
                boot: Mutex::new(CancellationToken::new()),
                reboot: tokio::sync::Notify::new(),
            });
            if !host.down {
                let listener = TcpListener::bind(host.address)
                    .await
                    .map_err(|source| FleetError::Listen { address: host.address, source })?;
                fleet.tasks.spawn(serve(host.clone(), fleet.shared.clone(), listener, fleet.stop.clone()));
            }
            fleet.hosts.push(host);
        }
        Ok(fleet)
    }

    pub fn hosts(&self) -> &[Arc<SimHost>] {
        &self.hosts
    }

    pub fn host(&self, index: usize) -> Option<&Arc<SimHost>> {
        self.hosts.get(index)
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Reboots host `index` now, as `shutdown -r 0` would.
    pub fn reboot(&self, index: usize) {
        if let Some(host) = self.hosts.get(index) {
            host.reboot.notify_one();
        }
    }

    /// Stops every host and waits for their tasks.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A host's life: listen and serve until a reboot, then stay unreachable for
/// the reboot time and come back with a new boot id.
async fn serve(host: Arc<SimHost>, shared: Arc<Shared>, mut listener: TcpListener, stop: CancellationToken) {
    loop {
        let boot = host.boot_token();
        loop {
            tokio::select! {
                _ = stop.cancelled() => { boot.cancel(); return }
                _ = host.reboot.notified() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                        let handler = Handler { host: host.clone(), shared: shared.clone(), authenticated: false };
                        tokio::spawn(connection(host.config.clone(), stream, handler, boot.clone()));
                    }
                    Err(err) => {
                        // out of file descriptors, typically: back off rather than spin
                        tracing::warn!(address = %host.address, error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        // Down: sessions dropped, connections refused (nothing listens).
        shared.stats.reboots.fetch_add(1, Ordering::Relaxed);
        boot.cancel();
        drop(listener);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(shared.reboot_time) => {}
        }
        {
            let mut view = host.lock_view();
            view.boot_id = uuid::Uuid::new_v4().to_string();
        }
        *host.boot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = CancellationToken::new();
        listener = loop {
            match TcpListener::bind(host.address).await {
                Ok(l) => break l,
                Err(err) => {
                    tracing::warn!(address = %host.address, error = %err, "cannot listen again after the reboot");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        };
    }
}

/// One SSH connection, until it ends or the host goes down.
async fn connection(
    config: Arc<server::Config>,
    stream: tokio::net::TcpStream,
    handler: Handler,
    boot: CancellationToken,
) {
    let running = match server::run_stream(config, stream, handler).await {
        Ok(r) => r,
        Err(err) => {
            tracing::debug!(error = %err, "SSH session did not start");
            return;
        }
    };
    let handle = running.handle();
    tokio::select! {
        _ = running => {}
        _ = boot.cancelled() => {
            let _ = handle.disconnect(russh::Disconnect::ByApplication, "rebooting".into(), "en".into()).await;
        }
    }
}

struct Handler {
    host: Arc<SimHost>,
    shared: Arc<Shared>,
    authenticated: bool,
}

impl server::Handler for Handler {
    type Error = russh::Error;

    async fn auth_publickey_offered(&mut self, _user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        Ok(if offer.public_key.key_data() == self.shared.authorized_key.key_data() {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(&mut self, _user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        if key.public_key.key_data() == self.shared.authorized_key.key_data() {
            self.authenticated = true;
            Ok(Auth::Accept)
        } else {
            self.shared.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
            Ok(Auth::reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.authenticated {
            reply.accept().await;
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        self.shared.stats.commands.fetch_add(1, Ordering::Relaxed);
        let line = String::from_utf8_lossy(data).into_owned();
        let (host, shared, handle) = (self.host.clone(), self.shared.clone(), session.handle());
        // Answer from a task: a slow command never holds up the connection's other channels.
        tokio::spawn(async move {
            if !shared.latency.is_zero() {
                tokio::time::sleep(shared.latency).await;
            }
            let action = if host.failing {
                Action::Reply(Reply { stderr: "simulated failure\n".into(), status: 1, ..Reply::default() })
            } else {
                let view = host.lock_view().clone();
                shell::respond(&line, &view)
            };
            let (reply, reboot) = match action {
                Action::Reply(r) => (r, false),
                Action::Reboot(r) => (r, true),
            };
            if !reply.stdout.is_empty() {
                let _ = handle.data(channel, reply.stdout.into_bytes()).await;
            }
            if !reply.stderr.is_empty() {
                let _ = handle.extended_data(channel, 1, reply.stderr.into_bytes()).await;
            }
            let _ = handle.exit_status_request(channel, reply.status).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
            if reboot {
                host.reboot.notify_one();
            }
        });
        Ok(())
    }
}
