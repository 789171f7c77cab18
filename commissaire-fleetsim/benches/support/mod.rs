//! What the fleet benchmarks share: the simulator as a child process.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command as Process, Stdio},
    time::{Duration, Instant},
};

use commissaire_core::{
    model::{Host, HostCreds, Model, Unknown},
    storage_client::StorageClient,
};
use commissaire_fleetsim::derived_key;
use russh::keys::ssh_key::LineEnding;
use serde_json::json;

pub const HOST_KEY_SEED: u64 = 31;
pub const CLIENT_KEY_SEED: u64 = 4242;

pub fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run `scripts/testbed up` and `eval \"$(scripts/testbed env)\"` first")
    })
}

/// Stops the child when dropped (SIGTERM, then SIGKILL after 10 s): a bench
/// that panics half-way leaves nothing running.
pub struct Kid(pub Child);
impl Drop for Kid {
    fn drop(&mut self) {
        let _ = Process::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `program args...` with the open files limit raised first (10,000 hosts are
/// 10,000 listeners and as many connections on each side).
pub fn with_files_limit(program: &str) -> Process {
    let mut p = Process::new("sh");
    p.arg("-c").arg("ulimit -n 65536 2>/dev/null || ulimit -n $(ulimit -Hn); exec \"$0\" \"$@\"").arg(program);
    p
}

/// The client key's OpenSSH private key text, its public line written to `dir/client.pub`.
pub fn client_key(dir: &Path) -> String {
    let client = derived_key(CLIENT_KEY_SEED, 0);
    std::fs::write(dir.join("client.pub"), client.public_key().to_openssh().expect("public key")).expect("write key");
    client.to_openssh(LineEnding::LF).expect("client key").to_string()
}

/// The host key line the simulator presents for host `index`.
pub fn host_key(index: usize) -> String {
    derived_key(HOST_KEY_SEED, index).public_key().to_openssh().expect("host key")
}

/// Starts `commissaire-fleetsim` with `hosts` from `first` (plus `extra`
/// flags) accepting the key of `client_key(dir)`; returns once every host listens.
pub fn start_fleet(dir: &Path, hosts: usize, first: &str, extra: &[&str]) -> Kid {
    let mut sim = with_files_limit(env!("CARGO_BIN_EXE_commissaire-fleetsim"));
    sim.args(["--hosts", &hosts.to_string(), "--first-address", first, "--key-seed", &HOST_KEY_SEED.to_string()])
        .arg("--authorized-key")
        .arg(dir.join("client.pub"))
        .args(extra)
        .stdout(Stdio::piped());
    let mut sim = Kid(sim.spawn().expect("start commissaire-fleetsim"));
    let mut ready = String::new();
    BufReader::new(sim.0.stdout.take().expect("stdout")).read_line(&mut ready).expect("read ready");
    assert!(ready.starts_with("ready"), "the simulator did not start: {ready:?}");
    sim
}

/// The `n` addresses from `first`.
pub fn addresses(first: &str, n: usize) -> Vec<String> {
    let base = u32::from(first.parse::<std::net::Ipv4Addr>().expect("address"));
    (0..n).map(|i| std::net::Ipv4Addr::from(base + i as u32).to_string()).collect()
}

/// The 1, 5 and 15 minute load averages.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Stores simulated host `index` at `address` with `status`: its credentials (the client key,
/// base64, as root) and the host with its host key pinned. `os` is left empty unless given.
pub async fn seed_host(storage: &StorageClient, index: usize, address: &str, key_base64: &str, status: &str, os: &str) {
    let creds = HostCreds::from_json(
        &json!({"address": address, "ssh_priv_key": key_base64, "remote_user": "root"}),
        Unknown::Reject,
    )
    .expect("creds");
    storage.save(&creds).await.expect("save creds");
    let mut host = Host::new(address);
    host.status = status.into();
    host.os = os.into();
    host.ssh_host_key = host_key(index);
    storage.save(&host).await.expect("save host");
}
